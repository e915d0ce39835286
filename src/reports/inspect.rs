//! Text, Markdown, CSV and JSON for `ckpt-diff inspect`.
//!
//! JSON schema 1: `"schema": 1, "command": "inspect"`, then the [`InspectReport`] fields in
//! name order.

use super::{Block, Report, TextTable, bytes, listed, params, sanitize};
use ckpt_ops::views::inspect::InspectReport;

/// The pickle part: where the state dict was, what else the file held, and every global
/// with its verdict (a table).
fn pickle_part(p: &ckpt_ops::views::inspect::PickleReport) -> (String, TextTable) {
    use ckpt_read::pickle::Verdict;
    let mut s = String::new();
    let at = if p.state_dict_at.is_empty() {
        "the top level".to_string()
    } else {
        format!("'{}'", sanitize(&p.state_dict_at))
    };
    s.push_str(&format!(
        "pickle:        read without executing anything; state dict at {at}{}{}\n",
        if p.big_endian {
            "; big-endian storages"
        } else {
            ""
        },
        if p.copied_tensors > 0 {
            format!("; {} tensors copied out of place", p.copied_tensors)
        } else {
            String::new()
        }
    ));
    for o in &p.other_entries {
        s.push_str(&format!(
            "not weights:   {} ({}), left out of any output\n",
            sanitize(&o.key),
            sanitize(&o.what)
        ));
    }
    let dangerous = p
        .globals
        .iter()
        .filter(|g| g.verdict == Verdict::Dangerous)
        .count();
    if dangerous > 0 {
        s.push_str(&format!(
            "DANGER:        {dangerous} dangerous globals: torch.load would run them (ckpt-diff did not)\n"
        ));
    }
    let mut t = TextTable::new(
        &[
            "global",
            "verdict",
            "uses",
            &format!("first at byte (of {})", sanitize(&p.stream)),
        ],
        &[false, false, true, true],
    );
    for g in &p.globals {
        t.push(vec![
            sanitize(&g.dotted()),
            g.verdict.id().to_string(),
            g.count.to_string(),
            g.offset.to_string(),
        ]);
    }
    s.push('\n');
    (s, t)
}

/// `inspect` of a checkpoint.
pub(crate) struct Inspected(pub InspectReport);

impl Report for Inspected {
    fn command(&self) -> &'static str {
        "inspect"
    }

    /// The [`InspectReport`] fields in name order.
    fn json(&self) -> serde_json::Value {
        let mut v = super::json::value(&self.0);
        v.as_object_mut().expect("a struct").sort_keys();
        v
    }

    fn blocks(&self) -> Vec<Block> {
        blocks(&self.0, false)
    }

    /// As the terminal, the metadata as a list.
    fn markdown(&self) -> Vec<Block> {
        blocks(&self.0, true)
    }

    /// The terminal's text with its tables in CSV (as `inspect --csv` has always printed).
    fn csv(&self) -> String {
        super::text(&self.blocks(), TextTable::csv)
    }
}

/// The facts, the tables of components and dtypes, the metadata and what the catalog
/// misses; `md` lists the metadata as Markdown items.
fn blocks(r: &InspectReport, md: bool) -> Vec<Block> {
    let mut b = Vec::new();
    let mut s = String::new();
    s.push_str(&format!("file:          {}\n", sanitize(&r.path)));
    s.push_str(&format!(
        "size:          {} ({} tensors, {} parameters, header {})\n",
        bytes(r.file_bytes),
        r.tensors,
        params(r.params),
        bytes(r.header_bytes)
    ));
    if r.container != "safetensors" {
        s.push_str(&format!("container:     {}\n", r.container));
    }
    for a in &r.assembled {
        s.push_str(&format!("assembled:     {}\n", sanitize(a)));
    }
    s.push_str(&format!("architecture:  {}\n", r.arch.summary));
    for v in &r.variants {
        s.push_str(&format!("variant:       {v}\n"));
    }
    if let Some(q) = &r.quantization {
        for (format, n) in &q.formats {
            let bits: Vec<f64> = q
                .layers
                .iter()
                .filter(|l| &l.format == format)
                .map(|l| l.bits_per_weight)
                .collect();
            let (lo, hi) = bits
                .iter()
                .fold((f64::MAX, 0.0f64), |(lo, hi), b| (lo.min(*b), hi.max(*b)));
            let range = if hi - lo < 0.005 {
                format!("{hi:.2}")
            } else {
                format!("{lo:.2} to {hi:.2}")
            };
            s.push_str(&format!(
                "quantized:     {n} layers {format}, {range} bits per weight (scales included)\n"
            ));
        }
        s.push_str(&format!("               records in {}\n", q.carrier));
        if q.pre_quant_scale > 0 {
            s.push_str(&format!(
                "               {} layers carry a pre_quant_scale: the model multiplies their \
                 input by it, so every command reads their weights times it, column by column\n",
                q.pre_quant_scale
            ));
        }
        if !q.columns_unknown.is_empty() {
            s.push_str(&format!(
                "warning:       {} layers were stored padded and the file does not record their \
                 real columns (ComfyUI takes them from the model): their stored columns may \
                 include padding, read as zeros: {}\n",
                q.columns_unknown.len(),
                q.columns_unknown.join(", ")
            ));
        }
    }
    if let Some(g) = &r.gguf {
        let arch = g.architecture.as_deref().map_or(
            "no general.architecture (stable-diffusion.cpp writes none)".to_string(),
            |a| format!("general.architecture {}", sanitize(a)),
        );
        s.push_str(&format!(
            "gguf:          v{}, alignment {}, {arch}
",
            g.version, g.alignment
        ));
        let types: Vec<String> = g.types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
        s.push_str(&format!(
            "ggml types:    {}
",
            types.join(" ")
        ));
        if g.reshaped > 0 {
            s.push_str(&format!(
                "               {} tensors stored flattened and read back in their original \
                 shapes (comfy.gguf.orig_shape.*)\n",
                g.reshaped
            ));
        }
    }
    if let Some(p) = &r.pickle {
        let (text, globals) = pickle_part(p);
        s.push_str(&text);
        b.push(Block::Text(std::mem::take(&mut s)));
        b.push(Block::Table(globals));
    }
    s.push('\n');
    b.push(Block::Text(std::mem::take(&mut s)));
    let mut t = TextTable::new(
        &["component", "what", "tensors", "params", "bytes", "dtypes"],
        &[false, false, true, true, true, false],
    );
    for c in &r.components {
        let dtypes: Vec<String> = c.dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect();
        t.push(vec![
            c.component.id().into(),
            c.label.clone(),
            c.tensors.to_string(),
            params(c.params),
            bytes(c.bytes),
            dtypes.join(" "),
        ]);
    }
    b.push(Block::Table(t));
    b.push(Block::text("\n"));
    let mut d = TextTable::new(
        &["dtype", "tensors", "params", "bytes"],
        &[false, true, true, true],
    );
    for x in &r.dtypes {
        d.push(vec![
            x.dtype.clone(),
            x.tensors.to_string(),
            params(x.params),
            bytes(x.bytes),
        ]);
    }
    b.push(Block::Table(d));
    if let Some(g) = &r.gguf {
        b.push(Block::text("\nwhat each row costs:\n"));
        let mut t = TextTable::new(
            &["row", "tensors", "params", "bytes", "bits/weight", "types"],
            &[false, true, true, true, true, false],
        );
        for row in &g.rows {
            let types: Vec<String> = row.types.iter().map(|(d, n)| format!("{d} x{n}")).collect();
            t.push(vec![
                sanitize(&row.row),
                row.tensors.to_string(),
                params(row.params),
                bytes(row.bytes),
                format!("{:.2}", row.bits_per_weight),
                types.join(" "),
            ]);
        }
        b.push(Block::Table(t));
    }
    s.push('\n');
    if r.metadata.is_empty() {
        s.push_str("metadata: none\n");
    } else {
        s.push_str(&format!("metadata ({} keys):\n", r.metadata.len()));
        for m in &r.metadata {
            let flat = m.value.replace('\n', "\\n");
            let value: String = flat.chars().take(120).collect();
            let more = if m.value.chars().count() > 120 || m.bytes > m.value.len() {
                format!(" ... ({})", bytes(m.bytes as u64))
            } else {
                String::new()
            };
            s.push_str(&format!(
                "  {}{}: {}{}\n",
                if md { "- " } else { "" },
                sanitize(&m.key),
                sanitize(&value),
                more
            ));
        }
    }
    if let Some(recipe) = &r.merge_recipe {
        s.push_str("merge recipe:\n");
        for line in recipe.lines() {
            s.push_str(&format!("  {}\n", sanitize(line)));
        }
    }
    if !r.merged_from.is_empty() {
        s.push_str(&format!("merged from ({}):\n", r.merged_from.len()));
        for (name, hash) in &r.merged_from {
            s.push_str(&format!(
                "  {} [{}]\n",
                sanitize(name),
                sanitize(&hash[..hash.len().min(10)])
            ));
        }
    }
    s.push_str(&listed(
        &format!("keys not in the {} catalog", r.arch.id),
        &r.unknown_keys,
        8,
    ));
    s.push_str(&listed("required keys missing", &r.missing_keys, 8));
    let mismatches: Vec<String> = r
        .shape_mismatches
        .iter()
        .map(|m| format!("{} {:?} (expected {:?})", m.key, m.actual, m.expected))
        .collect();
    s.push_str(&listed("shapes unlike the catalog", &mismatches, 5));
    if r.gap_bytes > 0 {
        s.push_str(&format!(
            "unused bytes in the data region: {}\n",
            bytes(r.gap_bytes)
        ));
    }
    b.push(Block::Text(s));
    b
}
