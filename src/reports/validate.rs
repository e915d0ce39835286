//! Text, Markdown, CSV and JSON for `ckpt-diff validate` (and the validation `fix` prints of
//! its result).
//!
//! JSON schema 1: `{"schema":1, "command":"validate", "files":[{"path", "arch" (the
//! detection summary), "findings":[{"severity", "code", "message", "keys", "fix"?}]}]}`;
//! `keys` carry their notes (`name (3 NaN, 0 Inf)`), `fix` is the command that repairs the
//! finding. Findings are sorted errors first.
//!
//! CSV and Markdown: one table of findings, `file, severity, code, finding, keys, remedy`
//! (the JSON's `path`, `severity`, `code`, `message`, how many `keys` it lists, `fix`); a file
//! with no finding has one row of severity `clean`.

use serde_json::{Value, json};

use super::{Block, Report, TextTable, first_few, sanitize};
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

/// The verdicts on one or more files.
pub(crate) struct Validated<'a> {
    pub reports: &'a [ValidateReport],
    pub remedy: RemedyText<'a>,
}

impl Report for Validated<'_> {
    fn command(&self) -> &'static str {
        "validate"
    }

    fn json(&self) -> Value {
        let files: Vec<Value> = self.reports.iter().map(|r| value(r, self.remedy)).collect();
        json!({ "files": files })
    }

    /// Each file, its detection and its findings, in prose.
    fn blocks(&self) -> Vec<Block> {
        self.reports
            .iter()
            .map(|r| Block::Text(text(r, self.remedy)))
            .collect()
    }

    /// The findings table.
    fn markdown(&self) -> Vec<Block> {
        vec![Block::Table(findings(self.reports, self.remedy))]
    }

    fn tables(&self) -> Vec<TextTable> {
        vec![findings(self.reports, self.remedy)]
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

/// Every finding of every file, one row each (see the module documentation).
pub(crate) fn findings(reports: &[ValidateReport], remedy: RemedyText<'_>) -> TextTable {
    let mut t = TextTable::new(
        &["file", "severity", "code", "finding", "keys", "remedy"],
        &[false, false, false, false, true, false],
    );
    for r in reports {
        if r.findings.is_empty() {
            t.push(vec![
                r.path.clone(),
                "clean".into(),
                String::new(),
                String::new(),
                "0".into(),
                String::new(),
            ]);
        }
        for f in &r.findings {
            t.push(vec![
                r.path.clone(),
                tag(f.severity).into(),
                f.kind.code().into(),
                f.message.clone(),
                f.keys.len().to_string(),
                f.remedy.map(remedy).unwrap_or_default(),
            ]);
        }
    }
    t
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_file_has_one_row() {
        let clean = ValidateReport {
            path: "a.safetensors".into(),
            arch: "SD1".into(),
            findings: Vec::new(),
        };
        let t = findings(&[clean], &|_| String::new());
        assert_eq!(t.rows, [["a.safetensors", "clean", "", "", "0", ""]]);
    }
}
