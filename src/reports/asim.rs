//! ASimilarity tables, laid out as the original scripts print them: the blocks in order,
//! each at 4 decimals, and the total as the plain mean of the blocks shown.

use serde_json::json;

use super::{Format, TextTable, sanitize};
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

pub(crate) fn render(
    models: &[ModelLine],
    arch: Arch,
    seed: u64,
    like: Like,
    rows: &[AsimRow],
    format: Format,
) -> String {
    let total = total(rows);
    match format {
        Format::Json => {
            let v = json!({
                "metric": "asim",
                "arch": arch.id(),
                "seed": seed,
                "like": like,
                "models": models,
                "rows": rows,
                "total": total,
            });
            super::json::document("sim", v)
        }
        Format::Csv => table(rows, total, like).csv(),
        Format::Markdown | Format::Table => {
            let mut s = String::new();
            for (tag, m) in ["A", "B"].iter().zip(models) {
                s.push_str(&format!("{tag}: {} ({})\n", sanitize(&m.name), m.detection));
            }
            s.push_str(&format!(
                "ASimilarity like {}: cosine of the first self-attention's output on a random \
                 input (torch.randn, seed {seed}), mean over rows; the total is the plain mean \
                 of the blocks\n\n",
                match like {
                    Like::Wkpark => "wkpark's scripts",
                    Like::Supermerger => "SuperMerger",
                }
            ));
            let t = table(rows, total, like);
            s.push_str(&if format == Format::Markdown {
                t.markdown()
            } else {
                t.terminal()
            });
            s
        }
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
