//! `ckpt-diff validate FILE...`: structure, pruning, dtypes, NaN/Inf and position_ids.
//! Exit code: 0 clean, 1 warnings, 2 errors (the worst over all files).

use std::path::PathBuf;

use anyhow::Result;

use super::Outcome;
use super::common::{FormatArgs, Global, Model};
use super::rewrite::remedy;
use crate::reports::validate::Validated;
use ckpt_ops::views::validate::validate;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Checkpoints to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    format: FormatArgs,
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    // The text of several files is each file's in turn: it is printed as each is checked.
    // The other formats are one document (one table) over every file.
    let streamed = args.format.format() == crate::reports::Format::Table;
    let mut results = Vec::new();
    for path in &args.files {
        let model = Model::open_unwarned(path)?;
        let bar = global.bar("checking");
        let r = validate(&model.ckpt, &model.detection, &global.pass(&bar))?;
        drop(bar);
        if streamed {
            global.emit(
                &Validated {
                    reports: std::slice::from_ref(&r),
                    remedy: &remedy,
                },
                &args.format,
            )?;
        }
        results.push(r);
    }
    if !streamed {
        global.emit(
            &Validated {
                reports: &results,
                remedy: &remedy,
            },
            &args.format,
        )?;
    }
    let worst = results.iter().map(|r| r.exit_code()).max().unwrap_or(0);
    Ok(Outcome::Exit(worst))
}
