//! Text, Markdown, CSV and JSON for `ckpt-diff fix` (what was done, what was left, and the
//! validation of the result) and `ckpt-diff convert` (each input's output and actions).
//!
//! JSON schema 1: `{"schema":1, "command":"fix", "fix":{"output", "actions":[...],
//! "unfixed":[...]}, "validate":{...}}` (`validate` as one file of `validate --json`);
//! `{"schema":1, "command":"convert", "converted":[{"input", "output", "actions"}]}`.
//!
//! CSV and Markdown: `fix` a table `status, action` (`fixed` or `not fixed`), then the
//! result's findings as `validate` tabulates them; `convert` one table `input, output,
//! action`, a row per action (an input converted as it was has one row with no action).

use std::path::PathBuf;

use serde_json::json;

use super::validate::RemedyText;
use super::{Block, Report, TextTable, sanitize};
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

impl Fixed<'_> {
    /// What was fixed and what was not.
    fn actions(&self) -> TextTable {
        let mut t = TextTable::new(&["status", "action"], &[false, false]);
        for a in &self.report.actions {
            t.push(vec!["fixed".into(), a.clone()]);
        }
        for u in &self.report.unfixed {
            t.push(vec!["not fixed".into(), (self.unfixed)(u)]);
        }
        t
    }

    fn findings(&self) -> TextTable {
        super::validate::findings(std::slice::from_ref(self.after), self.remedy)
    }
}

impl Report for Fixed<'_> {
    fn command(&self) -> &'static str {
        "fix"
    }

    fn json(&self) -> serde_json::Value {
        let fix = json!({
            "output": self.report.output,
            "actions": self.report.actions,
            "unfixed": self.report.unfixed.iter().map(self.unfixed).collect::<Vec<_>>(),
        });
        let validate = super::validate::value(self.after, self.remedy);
        json!({ "fix": fix, "validate": validate })
    }

    fn blocks(&self) -> Vec<Block> {
        let mut s = format!("wrote {}\n", self.report.output);
        for a in &self.report.actions {
            s.push_str(&format!("  fixed: {a}\n"));
        }
        for u in &self.report.unfixed {
            s.push_str(&format!("  not fixed: {}\n", (self.unfixed)(u)));
        }
        s.push_str("validation of the result:\n");
        s.push_str(&super::validate::text(self.after, self.remedy));
        vec![Block::Text(s)]
    }

    /// The output, the actions' table, and the result's findings table.
    fn markdown(&self) -> Vec<Block> {
        vec![
            Block::Text(format!("wrote {}\n\n", self.report.output)),
            Block::Table(self.actions()),
            Block::text("\nvalidation of the result:\n\n"),
            Block::Table(self.findings()),
        ]
    }

    fn tables(&self) -> Vec<TextTable> {
        vec![self.actions(), self.findings()]
    }
}

/// `convert`: each input, where it went and what was done on the way.
pub(crate) struct Converted<'a> {
    /// Each input with its report.
    pub files: Vec<(&'a PathBuf, &'a FixReport)>,
}

impl Converted<'_> {
    fn table(&self) -> TextTable {
        let mut t = TextTable::new(&["input", "output", "action"], &[false, false, false]);
        for (input, r) in &self.files {
            let input = input.display().to_string();
            if r.actions.is_empty() {
                t.push(vec![input.clone(), r.output.clone(), String::new()]);
            }
            for a in &r.actions {
                t.push(vec![input.clone(), r.output.clone(), a.clone()]);
            }
        }
        t
    }
}

impl Report for Converted<'_> {
    fn command(&self) -> &'static str {
        "convert"
    }

    fn json(&self) -> serde_json::Value {
        let converted: Vec<_> = self
            .files
            .iter()
            .map(|(i, r)| {
                json!({
                    "input": i.display().to_string(),
                    "output": r.output,
                    "actions": r.actions,
                })
            })
            .collect();
        json!({ "converted": converted })
    }

    /// `input -> output`, then the actions indented.
    fn blocks(&self) -> Vec<Block> {
        let mut s = String::new();
        for (i, r) in &self.files {
            s.push_str(&format!("{} -> {}\n", i.display(), r.output));
            for a in &r.actions {
                s.push_str(&format!("  {a}\n"));
            }
        }
        vec![Block::Text(sanitize(&s))]
    }

    /// The table.
    fn markdown(&self) -> Vec<Block> {
        vec![Block::Table(self.table())]
    }

    fn tables(&self) -> Vec<TextTable> {
        vec![self.table()]
    }
}
