//! `ckpt-diff convert IN... -o OUT | --out-dir DIR`: any input ckpt-diff reads (torch
//! checkpoints, diffusers folders, sharded models, safetensors) to one `.safetensors` file
//! each, streamed, with `fix`'s drop options.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::Outcome;
use super::common::{FormatArgs, Global, Model, emit};
use super::progress::Bar;
use super::rewrite::RewriteArgs;
use ckpt_ops::fix::{FixReport, convert};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("destination").required(true)))]
pub(super) struct Args {
    /// Inputs: .ckpt/.pt/.pth/.bin torch checkpoints (never executed), diffusers folders,
    /// sharded models (folder or *.index.json), .safetensors.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output file (one input only).
    #[arg(short, long, group = "destination")]
    output: Option<PathBuf>,
    /// Output folder: each input becomes DIR/NAME.safetensors.
    #[arg(long, group = "destination")]
    out_dir: Option<PathBuf>,
    #[command(flatten)]
    rewrite: RewriteArgs,
    /// Replace outputs that exist.
    #[arg(long, short)]
    force: bool,
    #[command(flatten)]
    format: FormatArgs,
}

/// `DIR/NAME.safetensors` for an input file or folder.
fn output_in(dir: &Path, input: &Path) -> PathBuf {
    let name = if input.is_dir() {
        input.file_name()
    } else {
        input.file_stem()
    };
    let mut stem = name
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    // `model.safetensors.index.json` -> `model`.
    for suffix in [".safetensors.index", ".bin.index", ".index"] {
        if let Some(s) = stem.strip_suffix(suffix) {
            stem = s.to_string();
        }
    }
    dir.join(format!("{stem}.safetensors"))
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let outputs: Vec<PathBuf> = match (&args.output, &args.out_dir) {
        (Some(o), _) => {
            if args.inputs.len() != 1 {
                bail!(
                    "-o names one output but {} inputs were given; use --out-dir DIR",
                    args.inputs.len()
                );
            }
            vec![o.clone()]
        }
        (None, Some(d)) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create the folder '{}'", d.display()))?;
            args.inputs.iter().map(|i| output_in(d, i)).collect()
        }
        (None, None) => unreachable!("clap requires -o or --out-dir"),
    };
    let opts = args.rewrite.options(false, args.force);
    let mut reports: Vec<FixReport> = Vec::new();
    for (input, output) in args.inputs.iter().zip(&outputs) {
        let model = Model::open_for_rewrite(input, args.rewrite.keep_unmapped())?;
        args.rewrite.check_unmapped(&model.ckpt)?;
        let bar = Bar::new(&model.name(), global.quiet);
        let r = convert(
            &model.ckpt,
            &model.detection,
            output,
            &opts,
            &global.pass(&bar),
        )
        .with_context(|| format!("converting '{}'", input.display()))?;
        drop(bar);
        reports.push(r);
    }
    let files = args.inputs.iter().zip(&reports).collect();
    emit(&crate::reports::fix::Converted { files }, &args.format)?;
    Ok(Outcome::Ok)
}
