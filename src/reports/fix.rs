//! Text and JSON for `ckpt-diff fix`: what was done, what was left, and the validation of
//! the result.
//!
//! JSON schema 1: `{"schema":1, "command":"fix", "fix":{"output", "actions":[...],
//! "unfixed":[...]}, "validate":{...}}` (`validate` as one file of `validate --json`).

use serde_json::json;

use super::validate::RemedyText;
use ckpt_ops::fix::{FixReport, Unfixed};
use ckpt_ops::views::validate::ValidateReport;

/// How the caller words a problem fix left (the CLI names the option that repairs it).
pub(crate) type UnfixedText<'a> = &'a dyn Fn(&Unfixed) -> String;

/// A fix and the validation of its result, with the caller's wording of remedies.
pub(crate) struct Fixed<'a> {
    pub report: &'a FixReport,
    pub after: &'a ValidateReport,
    pub remedy: RemedyText<'a>,
    pub unfixed: UnfixedText<'a>,
}

pub(crate) fn text(f: &Fixed<'_>) -> String {
    let Fixed {
        report,
        after,
        remedy,
        unfixed,
    } = *f;
    let mut s = format!("wrote {}\n", report.output);
    for a in &report.actions {
        s.push_str(&format!("  fixed: {a}\n"));
    }
    for u in &report.unfixed {
        s.push_str(&format!("  not fixed: {}\n", unfixed(u)));
    }
    s.push_str("validation of the result:\n");
    s.push_str(&super::validate::text(after, remedy));
    s
}

pub(crate) fn document(f: &Fixed<'_>) -> String {
    let fix = json!({
        "output": f.report.output,
        "actions": f.report.actions,
        "unfixed": f.report.unfixed.iter().map(f.unfixed).collect::<Vec<_>>(),
    });
    let validate = super::validate::value(f.after, f.remedy);
    super::json::document("fix", json!({ "fix": fix, "validate": validate }))
}
