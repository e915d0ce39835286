//! `ckpt-diff validate FILE...`: structure, pruning, dtypes, NaN/Inf and position_ids.
//! Exit code: 0 clean, 1 warnings, 2 errors (the worst over all files).

use std::path::PathBuf;

use anyhow::Result;

use super::Outcome;
use super::common::{Global, Model, print};
use super::progress::Bar;
use crate::reports;
use ckpt_ops::views::validate::validate;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Checkpoints to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let mut results = Vec::new();
    for path in &args.files {
        let model = Model::open_unwarned(path)?;
        let bar = Bar::new("checking", global.quiet);
        let r = validate(&model.ckpt, &model.detection, &global.pass(&bar))?;
        drop(bar);
        if !args.json {
            print(&reports::validate::text(&r, &super::fix::remedy))?;
        }
        results.push(r);
    }
    if args.json {
        print(&reports::validate::document(&results, &super::fix::remedy))?;
    }
    let worst = results.iter().map(|r| r.exit_code()).max().unwrap_or(0);
    Ok(Outcome::Exit(worst))
}
