//! `inspect` on a LoRA file: the network, the base architecture, ranks and alphas, the
//! blocks touched, modules that patch nothing known, and kohya's training metadata; and
//! what the LoRA commands print (`sim` and `l2` of LoRAs, `lora extract|merge|convert`).
//!
//! JSON schema 1 (`"command": "inspect-lora"`): the [`LoraReport`] fields, `modules` each
//! with `stem`, `kind`, `rank`, `alpha`, `alpha_from` (`tensor`, `metadata` or `rank`),
//! `scale`, `target` (the checkpoint key) and `block`.

use super::{Block, Report, TextTable, bytes, json, listed, with_why};
use ckpt_ops::lora::extract::Extraction;
use ckpt_ops::lora::write::NotWritten;
use ckpt_ops::views::lora::{LoraDistances, LoraReport, LoraSim};

/// `inspect` of a LoRA file.
pub(crate) struct Inspected(pub LoraReport);

impl Inspected {
    /// Modules per block.
    fn blocks_table(&self) -> TextTable {
        let mut t = TextTable::new(&["block", "modules"], &[false, true]);
        for (b, n) in &self.0.blocks {
            t.push(vec![b.clone(), n.to_string()]);
        }
        t
    }
}

impl Report for Inspected {
    fn command(&self) -> &'static str {
        "inspect-lora"
    }

    fn json(&self) -> serde_json::Value {
        json::value(&self.0)
    }

    fn blocks(&self) -> Vec<Block> {
        let r = &self.0;
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
        let ranks: Vec<(String, usize)> =
            r.ranks.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        let alphas: Vec<(String, usize)> =
            r.alphas.iter().map(|(k, n)| (format!("{k}"), *n)).collect();
        s.push_str(&format!(
            "rank: {}\n",
            if ranks.is_empty() {
                "-".into()
            } else {
                list(&ranks)
            }
        ));
        s.push_str(&format!(
            "alpha: {}{}\n",
            if alphas.is_empty() {
                "-".into()
            } else {
                list(&alphas)
            },
            match r.alphas_from_metadata {
                0 => String::new(),
                n => format!(
                    " ({n} of {} modules from diffusers' lora_adapter_metadata)",
                    r.modules.len()
                ),
            }
        ));
        let mut b = vec![Block::Text(s)];
        if !r.blocks.is_empty() {
            b.push(Block::Table(self.blocks_table()));
            b.push(Block::text("\n"));
        }
        let mut s = listed(
            "modules that patch no key of this architecture",
            &r.unknown,
            5,
        );
        let not_computed: Vec<(String, String)> = r
            .modules
            .iter()
            .filter_map(|m| Some((m.stem.clone(), m.not_computed?.to_string())))
            .collect();
        s.push_str(&listed(
            "modules whose change is not computed (nor baked)",
            &with_why(&not_computed),
            5,
        ));
        for (k, v) in &r.training {
            s.push_str(&format!("{k}: {v}\n"));
        }
        b.push(Block::Text(s));
        b
    }

    /// The modules per block (a header alone when no block is touched).
    fn tables(&self) -> Vec<TextTable> {
        vec![self.blocks_table()]
    }
}

/// `sim` of two LoRA files: cosine of their weight changes per block.
pub(crate) struct Similarity<'a>(pub &'a LoraSim);

impl Report for Similarity<'_> {
    fn command(&self) -> &'static str {
        "sim-lora"
    }

    fn json(&self) -> serde_json::Value {
        json::value(self.0)
    }

    fn blocks(&self) -> Vec<Block> {
        let r = self.0;
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
        vec![
            Block::Text(format!(
                "{} vs {}: cosine of the weight changes (LoRA factors, not materialised)\n",
                r.a, r.b
            )),
            Block::Table(t),
            Block::Text(format!("\n{}", listed("not compared", &r.skipped, 5))),
        ]
    }
}

/// `lora extract`: the energy each block keeps, the ranks, what was left out.
pub(crate) struct Extracted<'a>(pub &'a Extraction);

impl Report for Extracted<'_> {
    fn command(&self) -> &'static str {
        "lora-extract"
    }

    fn json(&self) -> serde_json::Value {
        json::value(self.0)
    }

    fn blocks(&self) -> Vec<Block> {
        let r = self.0;
        let mut ranks: std::collections::BTreeMap<usize, usize> = Default::default();
        for m in &r.modules {
            *ranks.entry(m.rank).or_default() += 1;
        }
        let ranks: Vec<String> = ranks.iter().map(|(k, n)| format!("{k} ({n})")).collect();
        let head = format!(
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
        let mut s = String::from("\n");
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
        s.push_str(&listed("not extracted", &with_why(&r.skipped), 3));
        vec![Block::Text(head), Block::Table(t), Block::Text(s)]
    }
}
/// Why a module was not written, with the option that writes it where there is one.
fn not_written(w: &NotWritten) -> String {
    match w {
        NotWritten::NoFactorsToConcat(_) => format!("{w}: merge with --rank"),
        NotWritten::NotLowRank(kind) => format!(
            "{} modules are written only by `lora merge --rank` (as LoRA)",
            kind.label()
        ),
        _ => w.to_string(),
    }
}

/// `lora merge` and `lora convert`: what was written, and what was not.
pub(crate) struct Written<'a>(pub &'a ckpt_ops::lora::write::Written);

impl Report for Written<'_> {
    fn command(&self) -> &'static str {
        "lora-write"
    }

    fn json(&self) -> serde_json::Value {
        let mut v = json::value(self.0);
        v["not_written"] = serde_json::json!(
            self.0
                .not_written
                .iter()
                .map(|(m, w)| [m.clone(), not_written(w)])
                .collect::<Vec<_>>()
        );
        v
    }

    /// A sentence and the modules not written (no table).
    fn blocks(&self) -> Vec<Block> {
        let r = self.0;
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
        let not: Vec<(String, String)> = r
            .not_written
            .iter()
            .map(|(m, w)| (m.clone(), not_written(w)))
            .collect();
        s.push_str(&listed("not written", &with_why(&not), 5));
        vec![Block::Text(s)]
    }

    /// The modules per rank, and every module not written with why.
    fn tables(&self) -> Vec<TextTable> {
        let r = self.0;
        let mut ranks = TextTable::new(&["rank", "modules"], &[true, true]);
        for (k, n) in &r.ranks {
            ranks.push(vec![k.to_string(), n.to_string()]);
        }
        let mut not = TextTable::new(&["module", "why not written"], &[false, false]);
        for (m, why) in &r.not_written {
            not.push(vec![m.clone(), not_written(why)]);
        }
        vec![ranks, not]
    }
}

/// `l2` of LoRAs: ‖ΔW‖ per block, and the distances between them.
pub(crate) struct Distances<'a>(pub &'a LoraDistances);

impl Report for Distances<'_> {
    fn command(&self) -> &'static str {
        "l2-lora"
    }

    fn json(&self) -> serde_json::Value {
        json::value(self.0)
    }

    fn blocks(&self) -> Vec<Block> {
        let r = self.0;
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
        let mut out = vec![
            Block::text(
                "LoRAs: ‖ΔW‖ per block at strength 1 (the L2 distance from any model they are baked into)\n",
            ),
            Block::Table(t),
            Block::text("\n"),
        ];
        if r.names.len() > 1 {
            let mut t = TextTable::new(&head, &right);
            for (i, name) in r.names.iter().enumerate() {
                let mut row = vec![name.clone()];
                row.extend(r.pairwise[i].iter().map(|x| format!("{x:.6}")));
                t.push(row);
            }
            out.push(Block::text("‖ΔW_a − ΔW_b‖:\n"));
            out.push(Block::Table(t));
            out.push(Block::text("\n"));
        }
        out
    }
}
