//! ASimilarity tables, laid out as the original scripts print them: the blocks in order,
//! each at 4 decimals, and the total as the plain mean of the blocks shown.

use serde_json::json;

use super::{Block, Report, TextTable};
use crate::reports::sim::ModelLine;
use ckpt_core::catalog::Arch;
use ckpt_ops::views::asim::{AsimRow, Like};

/// The plain mean of the blocks' similarities (the scripts' "total").
pub(crate) fn total(rows: &[AsimRow]) -> f64 {
    rows.iter().map(|r| r.similarity).sum::<f64>() / rows.len().max(1) as f64
}

/// A similarity as the scripts print it (`%.4f%`; SuperMerger rounds to 3 decimals).
pub(crate) fn percent(x: f64, like: Like) -> String {
    format!("{:.*}%", like.decimals(), 100.0 * x)
}

/// ASimilarity of A and B (`sim --metric asim`).
pub(crate) struct Asim<'a> {
    pub models: &'a [ModelLine],
    pub arch: Arch,
    pub seed: u64,
    pub like: Like,
    pub rows: &'a [AsimRow],
}

impl Report for Asim<'_> {
    fn command(&self) -> &'static str {
        "sim"
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "metric": "asim",
            "arch": self.arch.id(),
            "seed": self.seed,
            "like": self.like,
            "models": self.models,
            "rows": self.rows,
            "total": total(self.rows),
        })
    }

    /// The two files, what was measured, and the table (with no newline after it, as it
    /// has always been printed).
    fn blocks(&self) -> Vec<Block> {
        let mut head = super::sim::heading(self.models);
        head.push_str(&format!(
            "ASimilarity like {}: cosine of the first self-attention's output on a random \
             input (torch.randn, seed {}), mean over rows; the total is the plain mean \
             of the blocks\n\n",
            match self.like {
                Like::Wkpark => "wkpark's scripts",
                Like::Supermerger => "SuperMerger",
            },
            self.seed
        ));
        vec![
            Block::Text(head),
            Block::Table(table(self.rows, total(self.rows), self.like)),
        ]
    }
}

fn table(rows: &[AsimRow], total: f64, like: Like) -> TextTable {
    let mut t = TextTable::new(&["block", "similarity", "channels"], &[false, true, true]);
    for r in rows {
        t.push(vec![
            r.block.clone(),
            percent(r.similarity, like),
            r.channels.to_string(),
        ]);
    }
    t.push(vec![
        format!("total ({} blocks)", rows.len()),
        percent(total, like),
        String::new(),
    ]);
    t
}
