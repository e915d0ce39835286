//! `inspect` on a LoRA file: the network, the base architecture, ranks and alphas, the
//! blocks touched, modules that patch nothing known, and kohya's training metadata.
//!
//! JSON schema 1 (`"command": "inspect-lora"`): the [`LoraReport`] fields, `modules` each
//! with `stem`, `kind`, `rank`, `alpha`, `target` (the checkpoint key) and `block`.

use super::{TextTable, bytes, listed};
use ckpt_ops::views::lora::LoraReport;

pub(crate) fn text(r: &LoraReport) -> String {
    let mut s = format!(
        "{} ({}): a {} file for {}, {} modules\n",
        r.file,
        bytes(r.bytes),
        r.network,
        r.arch.map_or("an unknown architecture", |a| a.label()),
        r.modules.len()
    );
    let list = |v: &[(String, usize)]| -> String {
        v.iter()
            .map(|(x, n)| format!("{x} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ranks: Vec<(String, usize)> = r.ranks.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    let alphas: Vec<(String, usize)> = r.alphas.iter().map(|(k, n)| (format!("{k}"), *n)).collect();
    s.push_str(&format!(
        "rank: {}\n",
        if ranks.is_empty() {
            "-".into()
        } else {
            list(&ranks)
        }
    ));
    s.push_str(&format!(
        "alpha: {}\n",
        if alphas.is_empty() {
            "-".into()
        } else {
            list(&alphas)
        }
    ));
    if !r.blocks.is_empty() {
        let mut t = TextTable::new(&["block", "modules"], &[false, true]);
        for (b, n) in &r.blocks {
            t.push(vec![b.clone(), n.to_string()]);
        }
        s.push_str(&t.terminal());
        s.push('\n');
    }
    s.push_str(&listed(
        "modules that patch no key of this architecture",
        &r.unknown,
        5,
    ));
    for (k, v) in &r.training {
        s.push_str(&format!("{k}: {v}\n"));
    }
    s
}

pub(crate) fn document(r: &LoraReport) -> String {
    super::json::document("inspect-lora", r)
}

/// `sim` of two LoRA files: cosine of their weight changes per block.
pub(crate) fn sim_text(r: &ckpt_ops::views::lora::LoraSim) -> String {
    let mut s = format!(
        "{} vs {}: cosine of the weight changes (LoRA factors, not materialised)\n",
        r.a, r.b
    );
    let mut t = TextTable::new(
        &["block", "cosine", "‖ΔW‖ a", "‖ΔW‖ b", "shared modules"],
        &[false, true, true, true, true],
    );
    for row in r.rows.iter().chain(std::iter::once(&r.total)) {
        t.push(vec![
            row.block.clone(),
            format!("{:.6}", row.cosine),
            format!("{:.6}", row.norm2_a.sqrt()),
            format!("{:.6}", row.norm2_b.sqrt()),
            row.shared.to_string(),
        ]);
    }
    s.push_str(&t.terminal());
    s.push('\n');
    s.push_str(&listed("not compared", &r.skipped, 5));
    s
}

pub(crate) fn sim_document(r: &ckpt_ops::views::lora::LoraSim) -> String {
    super::json::document("sim-lora", r)
}

/// `lora extract`: the energy each block keeps, the ranks, what was left out.
pub(crate) fn extract_text(r: &ckpt_ops::lora::extract::Extraction) -> String {
    let mut ranks: std::collections::BTreeMap<usize, usize> = Default::default();
    for m in &r.modules {
        *ranks.entry(m.rank).or_default() += 1;
    }
    let ranks: Vec<String> = ranks.iter().map(|(k, n)| format!("{k} ({n})")).collect();
    let mut s = format!(
        "{}: {} modules of {} ({}) in {:.1} s; rank: {}\n",
        r.output,
        r.modules.len(),
        r.arch,
        bytes(r.bytes),
        r.seconds,
        ranks.join(", ")
    );
    let mut t = TextTable::new(
        &["block", "modules", "energy kept", "‖ΔW‖"],
        &[false, true, true, true],
    );
    for b in &r.blocks {
        t.push(vec![
            b.block.clone(),
            b.modules.to_string(),
            format!("{:.2}%", 100.0 * b.share),
            format!("{:.4}", b.energy.sqrt()),
        ]);
    }
    s.push_str(&t.terminal());
    s.push('\n');
    s.push_str(&listed(
        "text encoders left out (their largest change is at most --min-diff)",
        &r.text_encoders_skipped,
        3,
    ));
    s.push_str(&listed(
        "modules whose largest change is at most --min-diff",
        &r.below_min_diff,
        5,
    ));
    let skipped: Vec<String> = r
        .skipped
        .iter()
        .map(|(m, why)| format!("{m} ({why})"))
        .collect();
    s.push_str(&listed("not extracted", &skipped, 3));
    s
}

pub(crate) fn extract_document(r: &ckpt_ops::lora::extract::Extraction) -> String {
    super::json::document("lora-extract", r)
}

/// `lora merge` and `lora convert`: what was written, and what was not.
pub(crate) fn written_text(r: &ckpt_ops::lora::write::Written) -> String {
    let ranks: Vec<String> = r.ranks.iter().map(|(k, n)| format!("{k} ({n})")).collect();
    let mut s = format!(
        "{}: {} modules{} ({}); rank: {}\n",
        r.output,
        r.modules,
        r.arch
            .as_ref()
            .map(|a| format!(" for {a}"))
            .unwrap_or_default(),
        bytes(r.bytes),
        ranks.join(", ")
    );
    let not: Vec<String> = r
        .not_written
        .iter()
        .map(|(m, why)| format!("{m} ({why})"))
        .collect();
    s.push_str(&listed("not written", &not, 5));
    s
}

pub(crate) fn written_document(r: &ckpt_ops::lora::write::Written) -> String {
    super::json::document("lora-write", r)
}

/// `l2` of LoRAs: ‖ΔW‖ per block, and the distances between them.
pub(crate) fn l2_text(r: &ckpt_ops::views::lora::LoraDistances) -> String {
    let mut s = String::from(
        "LoRAs: ‖ΔW‖ per block at strength 1 (the L2 distance from any model they are baked into)\n",
    );
    let mut head = vec!["block"];
    head.extend(r.names.iter().map(String::as_str));
    let right: Vec<bool> = (0..head.len()).map(|i| i > 0).collect();
    let mut t = TextTable::new(&head, &right);
    for (b, v) in r
        .rows
        .iter()
        .chain(std::iter::once(&("total".to_string(), r.total.clone())))
    {
        let mut row = vec![b.clone()];
        row.extend(v.iter().map(|x| format!("{x:.6}")));
        t.push(row);
    }
    s.push_str(&t.terminal());
    s.push('\n');
    if r.names.len() > 1 {
        let mut t = TextTable::new(&head, &right);
        for (i, name) in r.names.iter().enumerate() {
            let mut row = vec![name.clone()];
            row.extend(r.pairwise[i].iter().map(|x| format!("{x:.6}")));
            t.push(row);
        }
        s.push_str("‖ΔW_a − ΔW_b‖:\n");
        s.push_str(&t.terminal());
        s.push('\n');
    }
    s
}

pub(crate) fn l2_document(r: &ckpt_ops::views::lora::LoraDistances) -> String {
    super::json::document("l2-lora", r)
}
