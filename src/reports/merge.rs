//! What `ckpt-diff merge` prints after writing its output.
//!
//! JSON schema 1: the [`Outcome`] fields (`output`, `arch`, `tensors`, `merged`, `copied`
//! as [key, why] pairs, `skipped`, `bytes`, `coefficients`, `inputs` as [name, sha256]
//! pairs, `plan` as below, `dry_run`, `seconds`) after `"schema": 1, "command": "merge"`.
//! `merge --dry-run --json` prints the plan alone (`"command": "merge-plan"`): the
//! [`Preflight`] fields (`output`, `arch`, `inputs`, `components` with what each reads and by
//! which methods, `copied`, `skipped`, `output_bytes`, `free_bytes`, `read_bytes`, `memory`,
//! `predicted_seconds`, `rate`, `kind`, `problems`).

use super::{Block, Report, TextTable, bytes, listed, with_why};
use ckpt_ops::merge::preflight::Preflight;
use ckpt_ops::merge::{Outcome, Problem, Remedy};

/// A problem as the command line says it: what is wrong, then the option that fixes it
/// where there is one (the library's problems name no option).
pub(crate) fn problem(p: &Problem) -> String {
    match p.remedy() {
        Some(Remedy::ReplaceOrRenameOutput) => {
            format!("{p}: pass --force to replace it, or choose another -o")
        }
        Some(Remedy::CreateFolderOrRenameOutput) => {
            format!("{p}: create it or choose another -o")
        }
        None => p.to_string(),
    }
}

/// The problems of a plan as one message (the error a refused merge exits with).
pub(crate) fn problems_text(plan: &Preflight) -> String {
    let mut s = format!(
        "{} problem{} found before reading any tensor data; nothing was written:",
        plan.problems.len(),
        if plan.problems.len() == 1 { "" } else { "s" }
    );
    for p in &plan.problems {
        s.push_str(&format!("\n  - {}", problem(p)));
    }
    s
}

/// What a merge wrote: the output, the per-block coefficients of a linear recipe, and the
/// keys copied or left out.
pub(crate) struct Merged<'a> {
    pub outcome: &'a Outcome,
    /// The output's size on disk.
    pub file_bytes: u64,
}

impl Report for Merged<'_> {
    fn command(&self) -> &'static str {
        "merge"
    }

    fn json(&self) -> serde_json::Value {
        super::json::value(self.outcome)
    }

    /// A summary in prose (no table).
    fn blocks(&self) -> Vec<Block> {
        let outcome = self.outcome;
        let mut s = format!(
            "wrote {} ({}, {}): {} tensors, {} merged\n",
            outcome.output,
            outcome.arch.label(),
            bytes(self.file_bytes),
            outcome.tensors,
            outcome.merged
        );
        if let Some(c) = &outcome.coefficients {
            s.push_str("coefficients (per block where they vary):\n");
            for line in c.lines() {
                s.push_str(&format!("  {line}\n"));
            }
        }
        s.push_str(&copied_and_skipped(&outcome.copied, &outcome.skipped));
        vec![Block::Text(s)]
    }

    /// What each component read and merged (the plan's table, every input named), and the
    /// keys copied unchanged or left out.
    fn tables(&self) -> Vec<TextTable> {
        let o = self.outcome;
        vec![
            components_table(&o.plan, usize::MAX),
            keys_table(&o.copied, &o.skipped),
        ]
    }
}

/// The keys copied unchanged (with why) and left out, as both the plan and the summary
/// list them.
fn copied_and_skipped(copied: &[(String, String)], skipped: &[String]) -> String {
    listed("copied unchanged", &with_why(copied), 5) + &listed("left out", skipped, 5)
}

/// Every key copied unchanged or left out: `key, status, why`.
fn keys_table(copied: &[(String, String)], skipped: &[String]) -> TextTable {
    let mut t = TextTable::new(&["key", "status", "why"], &[false, false, false]);
    for (k, why) in copied {
        t.push(vec![k.clone(), "copied unchanged".into(), why.clone()]);
    }
    for k in skipped {
        t.push(vec![k.clone(), "left out".into(), String::new()]);
    }
    t
}

/// What each component reads, by which methods, and how many keys it merges and copies;
/// a component reading more than `most` inputs names the first and the last.
fn components_table(plan: &Preflight, most: usize) -> TextTable {
    let mut t = TextTable::new(
        &["component", "reads", "method", "merged", "copied"],
        &[false, false, false, true, true],
    );
    for c in &plan.components {
        let reads = if c.reads.len() > most {
            format!(
                "{} inputs: {}, ..., {}",
                c.reads.len(),
                c.reads[0],
                c.reads[c.reads.len() - 1]
            )
        } else if c.reads.is_empty() {
            "-".into()
        } else {
            c.reads.join(", ")
        };
        t.push(vec![
            c.component.clone(),
            reads,
            c.methods.join(", "),
            c.merged.to_string(),
            c.copied.to_string(),
        ]);
    }
    t
}

/// The plan shown before a pass (`merge --dry-run` prints only this): the inputs, what each
/// component reads, sizes, memory, the predicted time, and any problem.
pub(crate) struct Plan<'a>(pub &'a Preflight);

impl Report for Plan<'_> {
    fn command(&self) -> &'static str {
        "merge-plan"
    }

    /// The [`Preflight`] fields, the problems as the command line says them (with the
    /// option that fixes each).
    fn json(&self) -> serde_json::Value {
        let mut doc = super::json::value(self.0);
        doc["problems"] = self
            .0
            .problems
            .iter()
            .map(problem)
            .collect::<Vec<_>>()
            .into();
        doc
    }

    fn blocks(&self) -> Vec<Block> {
        let plan = self.0;
        let total: u64 = plan.inputs.iter().map(|i| i.bytes).sum();
        let mut b = vec![Block::Text(format!(
            "plan: {} from {} input{} ({}){}\n",
            plan.output,
            plan.inputs.len(),
            if plan.inputs.len() == 1 { "" } else { "s" },
            bytes(total),
            plan.arch
                .as_ref()
                .map(|a| format!(", {a}"))
                .unwrap_or_default()
        ))];
        let mut s = String::new();
        if !plan.components.is_empty() {
            b.push(Block::Table(components_table(plan, 6)));
            s.push('\n');
            for l in &plan.loras {
                s.push_str(&format!(
                    "LoRA '{}' ({}): {} of {} modules baked\n",
                    l.name, l.network, l.baked, l.modules
                ));
                s.push_str(&listed("  not baked", &with_why(&l.not_baked), 3));
            }
            s.push_str(&format!(
                "output: {}{}; reads {} of tensors\n",
                bytes(plan.output_bytes),
                plan.free_bytes
                    .map(|f| format!(" ({} free there)", bytes(f)))
                    .unwrap_or_default(),
                bytes(plan.read_bytes)
            ));
            let m = &plan.memory;
            s.push_str(&format!(
                "memory: at most {} anonymous on {} thread{}{}; {} of input pages mapped at once\n",
                bytes(m.anonymous),
                m.threads,
                if m.threads == 1 { "" } else { "s" },
                m.largest_whole
                    .as_ref()
                    .map(|k| format!(" (largest tensor taken whole: {k})"))
                    .unwrap_or_default(),
                bytes(m.mapped)
            ));
            s.push_str(&match (plan.predicted_seconds, &plan.rate) {
                (Some(secs), Some((rate, kind))) if *kind == plan.kind => format!(
                    "time: about {} (at {}/s, this machine's last {kind} merge)\n",
                    ckpt_core::units::duration(secs),
                    bytes(*rate as u64)
                ),
                (Some(secs), Some((rate, kind))) => format!(
                    "time: at least {} (the read alone at {}/s, this machine's last {kind} merge; no {} merge measured yet)\n",
                    ckpt_core::units::duration(secs),
                    bytes(*rate as u64),
                    plan.kind
                ),
                _ => format!(
                    "time: not predicted yet (this machine has measured no {} merge; this one will be recorded)\n",
                    plan.kind
                ),
            });
        }
        s.push_str(&copied_and_skipped(&plan.copied, &plan.skipped));
        for p in &plan.problems {
            s.push_str(&format!("problem: {}\n", problem(p)));
        }
        b.push(Block::Text(s));
        b
    }

    /// What each component reads (every input named), and the keys copied unchanged or
    /// left out.
    fn tables(&self) -> Vec<TextTable> {
        vec![
            components_table(self.0, usize::MAX),
            keys_table(&self.0.copied, &self.0.skipped),
        ]
    }
}
