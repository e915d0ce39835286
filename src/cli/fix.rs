//! `ckpt-diff fix FILE -o OUT`: repairs what `validate` reports, then validates the result.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Outcome;
use super::common::{Global, Model, print};
use crate::fix::{Options, fix};
use crate::pass::Pass;
use crate::pass::progress::Bar;
use crate::reader::dtype::{FloatFormat, parse_user_float};
use crate::views::validate::validate;

#[derive(Debug, clap::Args)]
pub struct Args {
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
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, global: &Global) -> Result<Outcome> {
    let model = Model::open(&args.file)?;
    let base = args.base.as_ref().map(|b| Model::open(b)).transpose()?;
    let dtype = match &args.dtype {
        None => None,
        Some(d) => Some(
            parse_user_float(d)
                .filter(|f| matches!(f, FloatFormat::F16 | FloatFormat::BF16 | FloatFormat::F32))
                .with_context(|| format!("--dtype: '{d}' is not one of f16, bf16, f32"))?,
        ),
    };
    let opts = Options {
        dtype,
        drop_ema: args.drop_ema,
        drop_junk: args.drop_junk,
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
        &Pass::new(&bar),
    )?;
    drop(bar);
    let fixed = Model::open(&args.output)?;
    let after = validate(
        &fixed.ckpt,
        &fixed.detection,
        &Pass::new(&crate::pass::NoProgress),
    )?;
    if args.json {
        let v =
            serde_json::json!({ "schema": 1, "command": "fix", "fix": report, "validate": after });
        print(&(serde_json::to_string_pretty(&v)? + "\n"))?;
    } else {
        let mut s = format!("wrote {}\n", report.output);
        for a in &report.actions {
            s.push_str(&format!("  fixed: {a}\n"));
        }
        for u in &report.unfixed {
            s.push_str(&format!("  not fixed: {u}\n"));
        }
        s.push_str("validation of the result:\n");
        s.push_str(&super::validate::render(&after));
        print(&s)?;
    }
    Ok(Outcome::Exit(after.exit_code()))
}
