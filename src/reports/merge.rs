//! What `ckpt-diff merge` prints after writing its output.
//!
//! JSON schema 1: the [`Outcome`] fields (`output`, `arch`, `tensors`, `merged`, `copied`
//! as [key, why] pairs, `skipped`, `bytes`, `coefficients`, `inputs` as [name, sha256]
//! pairs) after `"schema": 1, "command": "merge"`.

use super::{bytes, first_few};
use crate::merge::Outcome;

/// The summary: what was written, the per-block coefficients of a linear recipe, and the
/// keys copied or left out. `file_bytes` is the output's size on disk.
pub fn text(outcome: &Outcome, file_bytes: u64) -> String {
    let mut s = format!(
        "wrote {} ({}, {}): {} tensors, {} merged\n",
        outcome.output,
        outcome.arch.label(),
        bytes(file_bytes),
        outcome.tensors,
        outcome.merged
    );
    if let Some(c) = &outcome.coefficients {
        s.push_str("coefficients (per block where they vary):\n");
        for line in c.lines() {
            s.push_str(&format!("  {line}\n"));
        }
    }
    if !outcome.copied.is_empty() {
        let items: Vec<String> = outcome
            .copied
            .iter()
            .map(|(k, why)| format!("{k} ({why})"))
            .collect();
        s.push_str(&format!(
            "copied unchanged ({}): {}\n",
            items.len(),
            first_few(&items, 5)
        ));
    }
    if !outcome.skipped.is_empty() {
        s.push_str(&format!(
            "left out ({}): {}\n",
            outcome.skipped.len(),
            first_few(&outcome.skipped, 5)
        ));
    }
    s
}

/// `merge --json`.
pub fn document(outcome: &Outcome) -> String {
    super::json::document("merge", outcome)
}
