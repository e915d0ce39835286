//! What `ckpt-diff fit` prints and writes: the recipes it found, in the notation `merge`
//! runs, the step table, the per-row table, and the JSON.
//!
//! JSON schema 1: `{"schema":1, "command":"fit", "models":{"base","target","start",
//! "sources"}, "region", "objective", "rows":[labels], "blocks":[...], "start_objective",
//! "steps":[{"source","op","expression","alpha","objective","rows"}], "greedy":{"objective",
//! "coefficients" (per block), "rows"}, "global":{"objective","weights","base_weight","rows"},
//! "residuals":[{"row","relative"}], "recipe", "seconds":{"pass","search"},
//! "apply":null|{"predicted","measured","rows"}}`. Per-row arrays cover the rows the files
//! have tensors in, in the order of `rows`.

use std::path::Path;

use serde_json::json;

use super::{Block, Report, TextTable, first_few};
use ckpt_core::catalog::Block as CatalogBlock;
use ckpt_ops::merge::plan::show;
use ckpt_ops::views::fit::recipe::{Asked, Recipes};
use ckpt_ops::views::fit::{FitResult, Step};

/// A row whose relative residual is above this is reported as not explained.
const UNEXPLAINED: f64 = 0.05;

/// The display names of the files (file names).
pub(crate) struct Labels {
    pub base: String,
    pub target: String,
    pub start: String,
    pub sources: Vec<String>,
}

/// A clone built from the recipe and measured against the target.
pub(crate) struct Applied<'a> {
    pub output: &'a Path,
    pub predicted: f64,
    pub measured: f64,
    pub rows: Vec<f64>,
}

/// Similarities near 100% differ in the fifth decimal: six are shown.
fn pct(x: f64) -> String {
    format!("{:.6}%", x * 100.0)
}

/// `IN04=0.3, OUT02=0.5, ...`: the blocks of a per-block alpha that are not 0, at most
/// `most` of them.
fn short_blocks(blocks: &[CatalogBlock], alpha: &[f64], most: usize) -> String {
    let parts: Vec<String> = blocks
        .iter()
        .zip(alpha)
        .filter(|(_, a)| **a != 0.0)
        .map(|(b, a)| format!("{b}={}", show(*a)))
        .collect();
    first_few(&parts, most)
}

/// Everything a fit's report shows.
pub(crate) struct Fitted<'a> {
    pub result: &'a FitResult,
    pub labels: &'a Labels,
    pub asked: &'a Asked<'a>,
    pub recipes: &'a Recipes,
    /// The recipe chosen (greedy or global), as written.
    pub recipe: &'a str,
    /// Where the recipe was written, if it was.
    pub written_to: Option<&'a Path>,
    pub applied: Option<&'a Applied<'a>>,
    pub pass_seconds: f64,
}

impl Fitted<'_> {
    /// The steps: the start, then each step's expression, alpha (per block: at most
    /// `most` blocks) and the region's similarity.
    fn steps_table(&self, most: usize) -> TextTable {
        let (f, recipes) = (self.result, self.recipes);
        let mut t = TextTable::new(
            &["step", "expression", "alpha", "region similarity"],
            &[false, false, false, true],
        );
        let start = format!("{}: {}", recipes.start_name, self.labels.start);
        t.push(vec![
            "0".into(),
            start,
            String::new(),
            pct(f.start_objective),
        ]);
        for (i, (st, e)) in f.steps.iter().zip(&recipes.expressions).enumerate() {
            let a = if st.alpha.len() == 1 {
                show(st.alpha[0])
            } else {
                format!("per block: {}", short_blocks(&f.blocks, &st.alpha, most))
            };
            t.push(vec![format!("S{}", i + 1), e.clone(), a, pct(st.objective)]);
        }
        t
    }

    /// Per row after each step, as the published step tables show them, with the global
    /// best and the share unexplained.
    fn rows_table(&self) -> TextTable {
        let f = self.result;
        let mut head: Vec<String> = vec!["row".into(), "start".into()];
        head.extend((1..=f.steps.len()).map(|i| format!("S{i}")));
        head.extend(["global best".into(), "unexplained".into()]);
        let mut rt = TextTable::labelled(head);
        for &r in &f.present {
            let mut cells = vec![f.rows[r].clone(), pct(f.start_rows[r])];
            cells.extend(f.steps.iter().map(|st| pct(st.rows[r])));
            cells.extend([pct(f.global_rows[r]), pct(f.residuals[r])]);
            rt.push(cells);
        }
        rt
    }
}

impl Report for Fitted<'_> {
    fn command(&self) -> &'static str {
        "fit"
    }

    fn json(&self) -> serde_json::Value {
        let (f, recipes) = (self.result, self.recipes);
        let at = |v: &[f64]| -> Vec<f64> { f.present.iter().map(|&r| v[r]).collect() };
        let source_name = |s: &Step| {
            if s.source == 0 {
                recipes.start_name.clone()
            } else {
                recipes.source_names[s.source - 1].clone()
            }
        };
        let steps: Vec<_> = f
            .steps
            .iter()
            .zip(&recipes.expressions)
            .map(|(s, e)| {
                json!({ "source": source_name(s), "op": s.op, "expression": e, "alpha": s.alpha,
                        "objective": s.objective, "rows": at(&s.rows) })
            })
            .collect();
        let residuals: Vec<_> = f
            .present
            .iter()
            .map(|&r| json!({ "row": f.rows[r], "relative": f.residuals[r] }))
            .collect();
        json!({
            "models": { "base": self.labels.base, "target": self.labels.target,
                        "start": self.labels.start, "sources": self.labels.sources },
            "region": self.asked.region,
            "objective": f.objective,
            "rows": f.present.iter().map(|&r| &f.rows[r]).collect::<Vec<_>>(),
            "blocks": f.blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
            "start_objective": f.start_objective,
            "steps": steps,
            "greedy": { "objective": f.greedy_objective,
                        "coefficients": f.greedy_by_block(),
                        "rows": at(&f.greedy_rows) },
            "global": { "objective": f.global_objective, "weights": f.global_weights,
                        "base_weight": f.global_base_weights(), "rows": at(&f.global_rows) },
            "residuals": residuals,
            "recipe": self.recipe,
            "seconds": { "pass": self.pass_seconds, "search": f.search_seconds },
            "apply": self.applied.map(|a| {
                json!({ "predicted": a.predicted, "measured": a.measured, "rows": at(&a.rows) })
            }),
        })
    }

    /// The step table, the per-row table (after each step, global best, residual), the
    /// rows no linear recipe explains, then where the recipe went and the clone's
    /// measurement.
    fn blocks(&self) -> Vec<Block> {
        let f = self.result;
        let head = format!(
            "target {}; start {}; {} sources; region {}, objective {}\n\
             read in {:.2} s; search in {:.3} s\n\n",
            self.labels.target,
            self.labels.start,
            self.labels.sources.len(),
            self.asked.region,
            self.asked.objective,
            self.pass_seconds,
            f.search_seconds
        );
        let best = format!(
            "\nthe best any linear recipe of these models reaches: {} (the steps: {})\n\n",
            pct(f.global_objective),
            pct(f.greedy_objective)
        );
        let mut worst: Vec<(f64, String)> = f
            .present
            .iter()
            .map(|&r| (f.residuals[r], f.rows[r].clone()))
            .collect();
        worst.sort_by(|a, b| b.0.total_cmp(&a.0));
        let flagged: Vec<String> = worst
            .iter()
            .filter(|(r, _)| *r > UNEXPLAINED)
            .map(|(r, l)| format!("{l} ({})", pct(*r)))
            .collect();
        let mut s = String::from(
            "\nunexplained: the share of the target's change from the base that no linear recipe \
             of these models reproduces (the global best's residual).\n",
        );
        if flagged.is_empty() {
            s.push_str("every row is explained to within 5%\n");
        } else {
            s.push_str(&format!(
                "not explained (over 5%: extra training, a missing source, or a non-linear merge): {}\n",
                first_few(&flagged, 8)
            ));
        }
        match self.written_to {
            Some(o) => s.push_str(&format!(
                "recipe written to {} (run it with: ckpt-diff merge {} -o clone.safetensors)\n",
                o.display(),
                o.display()
            )),
            None => s.push_str(&format!("\n{}", self.recipe)),
        }
        if let Some(a) = self.applied {
            s.push_str(&format!(
                "clone written to {}: measured {} vs predicted {} (difference {:.2e})\n",
                a.output.display(),
                pct(a.measured),
                pct(a.predicted),
                (a.measured - a.predicted).abs()
            ));
        }
        vec![
            Block::Text(head),
            Block::Table(self.steps_table(4)),
            Block::Text(best),
            Block::Table(self.rows_table()),
            Block::Text(s),
        ]
    }

    /// The steps (every block of a per-block alpha) and the rows.
    fn tables(&self) -> Vec<TextTable> {
        vec![self.steps_table(usize::MAX), self.rows_table()]
    }
}
