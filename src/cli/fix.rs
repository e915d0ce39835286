//! `ckpt-diff fix FILE -o OUT`: repairs what `validate` reports, then validates the result.
//! Also the one place that says which option of `fix` repairs which finding.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Outcome;
use super::common::{FormatArgs, Global, Model, emit};
use super::progress::Bar;
use crate::reports;
use ckpt_ops::fix::{Options, Unfixed, fix};
use ckpt_ops::views::validate::{Remedy, validate};
use ckpt_read::dtype::{FloatFormat, parse_user_float};

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
    /// Store floats as f16, bf16 or f32 (values beyond the range are clamped).
    #[arg(long)]
    dtype: Option<String>,
    /// Drop the EMA copy of the U-Net.
    #[arg(long)]
    drop_ema: bool,
    /// Drop keys the architecture does not have.
    #[arg(long)]
    drop_junk: bool,
    /// Drop DDPM schedule buffers.
    #[arg(long)]
    drop_scheduler: bool,
    /// Also restore optional keys (pruned text-encoder layers) from --base.
    #[arg(long)]
    fill_optional: bool,
    /// Replace OUT if it exists.
    #[arg(long, short)]
    force: bool,
    #[command(flatten)]
    format: FormatArgs,
}

/// The `fix` command that repairs a finding (what `validate` prints after "to fix:").
pub(super) fn remedy(r: Remedy) -> String {
    match r {
        Remedy::StoreFloatsInOneFormat => "fix --dtype f16 (or bf16, f32) stores them all in one",
        Remedy::StoreFloatsAsF16 => "fix --dtype f16",
        Remedy::Rewrite => "fix rewrites the file without them",
        Remedy::RewriteMetadata => "fix stores them as strings",
        Remedy::PatchNonFinite => {
            "fix --base BASE takes those values from BASE (without --base they become 0)"
        }
        Remedy::AddComponents => "fix --base FULL.safetensors copies them in",
        Remedy::AddMissing => "fix --base BASE.safetensors copies them from a complete checkpoint",
        Remedy::FillOptional => "fix --base BASE --fill-optional restores them",
        Remedy::ReplaceShapes => {
            "fix --base BASE.safetensors takes those tensors from a complete checkpoint"
        }
        Remedy::DropEma => "fix --drop-ema",
        Remedy::DropUnknown => "fix --drop-junk",
        Remedy::DropScheduler => "fix --drop-scheduler",
        Remedy::InsertPositionIds => "fix inserts it (int64 0..76)",
        Remedy::ResetPositionIds => "fix resets it to int64 0..76",
        Remedy::RenameKeys => "fix renames them to the current names",
        Remedy::Convert => "convert FILE -o OUT.safetensors writes its tensors as safetensors",
    }
    .to_string()
}

/// The `--dtype` of a rewrite (`fix`, `convert`): f16, bf16 or f32.
pub(super) fn rewrite_dtype(dtype: Option<&str>) -> Result<Option<FloatFormat>> {
    dtype
        .map(|d| {
            parse_user_float(d)
                .filter(|f| matches!(f, FloatFormat::F16 | FloatFormat::BF16 | FloatFormat::F32))
                .with_context(|| format!("--dtype: '{d}' is not one of f16, bf16, f32"))
        })
        .transpose()
}

/// A problem `fix` left, and the option that would have repaired it.
pub(super) fn unfixed(u: &Unfixed) -> String {
    match u {
        Unfixed::WrongShape { key, shape } => {
            format!("{key} has shape {shape:?}; give --base to replace it")
        }
        Unfixed::Missing { key } => format!("{key} is missing; give --base to add it"),
    }
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let model = Model::open(&args.file)?;
    let base = args.base.as_ref().map(|b| Model::open(b)).transpose()?;
    let dtype = rewrite_dtype(args.dtype.as_deref())?;
    let opts = Options {
        dtype,
        drop_ema: args.drop_ema,
        drop_unknown: args.drop_junk,
        drop_scheduler: args.drop_scheduler,
        fill_optional: args.fill_optional,
        overwrite: args.force,
    };
    let bar = Bar::new("fixing", global.quiet);
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
    emit(
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
