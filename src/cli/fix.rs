//! `ckpt-diff fix FILE -o OUT`: repairs what `validate` reports, then validates the result.

use std::path::PathBuf;

use anyhow::Result;

use super::Outcome;
use super::common::{FormatArgs, Global, Model};
use super::rewrite::{RewriteArgs, remedy, unfixed};
use crate::reports;
use ckpt_ops::fix::fix;
use ckpt_ops::views::validate::validate;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The checkpoint to repair (never modified).
    file: PathBuf,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// A complete checkpoint of the same architecture to take missing or broken tensors from.
    #[arg(long)]
    base: Option<PathBuf>,
    #[command(flatten)]
    rewrite: RewriteArgs,
    /// Also restore optional keys (pruned text-encoder layers) from --base.
    #[arg(long)]
    fill_optional: bool,
    /// Replace OUT if it exists.
    #[arg(long, short)]
    force: bool,
    #[command(flatten)]
    format: FormatArgs,
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let model = Model::open_for_rewrite(&args.file, args.rewrite.keep_unmapped())?;
    args.rewrite.check_unmapped(&model.ckpt)?;
    let base = args.base.as_ref().map(|b| Model::open(b)).transpose()?;
    let opts = args.rewrite.options(args.fill_optional, args.force);
    let bar = global.bar("fixing");
    let report = fix(
        &model.ckpt,
        &model.detection,
        base.as_ref().map(|b| &b.ckpt),
        &args.output,
        &opts,
        &global.pass(&bar),
    )?;
    drop(bar);
    let fixed = Model::open(&args.output)?;
    let after = validate(
        &fixed.ckpt,
        &fixed.detection,
        &global.pass(&ckpt_core::pass::NoProgress),
    )?;
    global.emit(
        &reports::fix::Fixed {
            report: &report,
            after: &after,
            remedy: &remedy,
            unfixed: &unfixed,
        },
        &args.format,
    )?;
    Ok(Outcome::Exit(after.exit_code()))
}
