//! Text and JSON for `ckpt-diff validate` (and the validation `fix` prints of its result).
//!
//! JSON schema 1: `{"schema":1, "command":"validate", "files":[{"path", "arch" (the
//! detection summary), "findings":[{"severity", "code", "message", "keys", "fix"?}]}]}`;
//! `keys` carry their notes (`name (3 NaN, 0 Inf)`), `fix` is the command that repairs the
//! finding. Findings are sorted errors first.

use serde_json::{Value, json};

use super::{first_few, sanitize};
use ckpt_ops::views::validate::{Finding, Remedy, Severity, ValidateReport};

/// How the caller words a remedy (the CLI, which knows its own options).
pub(crate) type RemedyText<'a> = &'a dyn Fn(Remedy) -> String;

fn tag(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// The text of one report.
pub(crate) fn text(r: &ValidateReport, remedy: RemedyText<'_>) -> String {
    let mut s = format!("{}\n  {}\n", sanitize(&r.path), r.arch);
    if r.findings.is_empty() {
        s.push_str("  clean\n");
    }
    for f in &r.findings {
        s.push_str(&format!(
            "  {}: {}\n",
            tag(f.severity),
            sanitize(&f.message)
        ));
        let keys = f.annotated_keys();
        if !keys.is_empty() {
            s.push_str(&format!("    {}\n", first_few(&keys, 4)));
        }
        if let Some(r) = f.remedy {
            s.push_str(&format!("    to fix: ckpt-diff {}\n", remedy(r)));
        }
    }
    s
}

fn finding(f: &Finding, remedy: RemedyText<'_>) -> Value {
    let mut v = json!({
        "severity": tag(f.severity),
        "code": f.kind.code(),
        "message": f.message,
        "keys": f.annotated_keys(),
    });
    if let Some(r) = f.remedy {
        v["fix"] = remedy(r).into();
    }
    v
}

/// One report as JSON.
pub(crate) fn value(r: &ValidateReport, remedy: RemedyText<'_>) -> Value {
    json!({
        "path": r.path,
        "arch": r.arch,
        "findings": r.findings.iter().map(|f| finding(f, remedy)).collect::<Vec<_>>(),
    })
}

/// Every file's report, as `validate --json` prints them.
pub(crate) fn document(reports: &[ValidateReport], remedy: RemedyText<'_>) -> String {
    let files: Vec<Value> = reports.iter().map(|r| value(r, remedy)).collect();
    super::json::document("validate", json!({ "files": files }))
}
