//! What `ckpt-diff merge` prints after writing its output.
//!
//! JSON schema 1: the [`Outcome`] fields (`output`, `arch`, `tensors`, `merged`, `copied`
//! as [key, why] pairs, `skipped`, `bytes`, `coefficients`, `inputs` as [name, sha256]
//! pairs, `plan` as below, `dry_run`, `seconds`) after `"schema": 1, "command": "merge"`.
//! `merge --dry-run --json` prints the plan alone (`"command": "merge-plan"`): the
//! [`Preflight`] fields (`output`, `arch`, `inputs`, `components` with what each reads and by
//! which methods, `copied`, `skipped`, `output_bytes`, `free_bytes`, `read_bytes`, `memory`,
//! `predicted_seconds`, `rate`, `kind`, `problems`).

use super::{TextTable, bytes, listed};
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

/// The summary: what was written, the per-block coefficients of a linear recipe, and the
/// keys copied or left out. `file_bytes` is the output's size on disk.
pub(crate) fn text(outcome: &Outcome, file_bytes: u64) -> String {
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
    s.push_str(&copied_and_skipped(&outcome.copied, &outcome.skipped));
    s
}

/// The keys copied unchanged (with why) and left out, as both the plan and the summary
/// list them.
fn copied_and_skipped(copied: &[(String, String)], skipped: &[String]) -> String {
    let items: Vec<String> = copied
        .iter()
        .map(|(k, why)| format!("{k} ({why})"))
        .collect();
    listed("copied unchanged", &items, 5) + &listed("left out", skipped, 5)
}

/// `merge --json`.
pub(crate) fn document(outcome: &Outcome) -> String {
    super::json::document("merge", outcome)
}

/// The plan shown before a pass (`merge --dry-run` prints only this): the inputs, what each
/// component reads, sizes, memory, the predicted time, and any problem.
pub(crate) fn plan_text(plan: &Preflight) -> String {
    let total: u64 = plan.inputs.iter().map(|i| i.bytes).sum();
    let mut s = format!(
        "plan: {} from {} input{} ({}){}\n",
        plan.output,
        plan.inputs.len(),
        if plan.inputs.len() == 1 { "" } else { "s" },
        bytes(total),
        plan.arch
            .as_ref()
            .map(|a| format!(", {a}"))
            .unwrap_or_default()
    );
    if !plan.components.is_empty() {
        let mut t = TextTable::new(
            &["component", "reads", "method", "merged", "copied"],
            &[false, false, false, true, true],
        );
        for c in &plan.components {
            let reads = if c.reads.len() > 6 {
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
        s.push_str(&t.terminal());
        s.push('\n');
        for l in &plan.loras {
            s.push_str(&format!(
                "LoRA '{}' ({}): {} of {} modules baked\n",
                l.name, l.network, l.baked, l.modules
            ));
            let not: Vec<String> = l
                .not_baked
                .iter()
                .map(|(m, why)| format!("{m} ({why})"))
                .collect();
            s.push_str(&listed("  not baked", &not, 3));
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
    s
}

/// `merge --dry-run --json`: the [`Preflight`] fields.
pub(crate) fn plan_document(plan: &Preflight) -> String {
    let mut doc = super::json::envelope("merge-plan", plan);
    // The problems as the command line says them (with the option that fixes each).
    doc["problems"] = plan.problems.iter().map(problem).collect::<Vec<_>>().into();
    let mut s = serde_json::to_string_pretty(&doc).expect("plain data");
    s.push('\n');
    s
}
