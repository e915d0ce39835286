//! `ckpt-diff validate FILE...`: structure, pruning, dtypes, NaN/Inf and position_ids.
//! Exit code: 0 clean, 1 warnings, 2 errors (the worst over all files).

use std::path::PathBuf;

use anyhow::Result;

use super::Outcome;
use super::common::{Global, Model, print};
use crate::pass::Pass;
use crate::pass::progress::Bar;
use crate::reports::{self, first_few};
use crate::views::validate::{Severity, ValidateReport, validate};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoints to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The text of one report.
pub fn render(r: &ValidateReport) -> String {
    let mut s = format!("{}\n  {}\n", reports::sanitize(&r.path), r.arch);
    if r.findings.is_empty() {
        s.push_str("  clean\n");
    }
    for f in &r.findings {
        let tag = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        s.push_str(&format!("  {tag}: {}\n", reports::sanitize(&f.message)));
        if !f.keys.is_empty() {
            s.push_str(&format!("    {}\n", first_few(&f.keys, 4)));
        }
        if let Some(fix) = &f.fix {
            s.push_str(&format!("    to fix: ckpt-diff {fix}\n"));
        }
    }
    s
}

pub fn run(args: Args, global: &Global) -> Result<Outcome> {
    let mut worst = 0u8;
    let mut reports_out = Vec::new();
    for path in &args.files {
        let model = Model::open(path)?;
        let bar = Bar::new("checking", global.quiet);
        let r = validate(&model.ckpt, &model.detection, &Pass::new(&bar))?;
        drop(bar);
        worst = worst.max(r.exit_code());
        if args.json {
            reports_out.push(serde_json::to_value(&r)?);
        } else {
            print(&render(&r))?;
        }
    }
    if args.json {
        let v = serde_json::json!({ "schema": 1, "command": "validate", "files": reports_out });
        print(&(serde_json::to_string_pretty(&v)? + "\n"))?;
    }
    Ok(Outcome::Exit(worst))
}
