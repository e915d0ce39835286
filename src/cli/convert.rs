//! `ckpt-diff convert IN... -o OUT | --out-dir DIR`: any input ckpt-diff reads (torch
//! checkpoints, diffusers folders, sharded models, safetensors) to one `.safetensors` file
//! each, streamed, with `fix`'s drop options; or, to a `.gguf` output (`--quant TYPE`), the
//! denoiser as city96's ComfyUI-GGUF tools write it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::Outcome;
use super::common::{FormatArgs, Global, Model};
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
    /// Output folder: each input becomes DIR/NAME.safetensors (DIR/NAME-TYPE.gguf with
    /// --quant).
    #[arg(long, group = "destination")]
    out_dir: Option<PathBuf>,
    /// Write GGUF (a .gguf output) as city96's ComfyUI-GGUF tools do: the diffusion model
    /// only, quantized to TYPE: F16, BF16, Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q4_K_M, Q4_K_S,
    /// Q3_K_L, Q3_K_M, Q3_K_S, Q2_K, Q5_1, Q5_0, Q4_1, Q4_0 (Q5_K, Q4_K, Q3_K mean their _M
    /// mixes). A .gguf output without --quant is F16/BF16 as convert.py writes it.
    #[arg(long, value_name = "TYPE", value_parser = super::gguf::parse_quant)]
    quant: Option<ckpt_ops::gguf::Quant>,
    /// Write GGUF tensor names of 128 bytes or more, which ComfyUI-GGUF reads but ggml-based
    /// loaders (stable-diffusion.cpp, llama-quantize) refuse; without it they are refused,
    /// as city96's convert.py refuses them.
    #[arg(long)]
    allow_long_names: bool,
    #[command(flatten)]
    rewrite: RewriteArgs,
    /// Replace outputs that exist.
    #[arg(long, short)]
    force: bool,
    #[command(flatten)]
    format: FormatArgs,
}

/// `DIR/NAME.safetensors` (`DIR/NAME-TYPE.gguf` with `--quant`) for an input file or folder.
fn output_in(dir: &Path, input: &Path, quant: Option<ckpt_ops::gguf::Quant>) -> PathBuf {
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
    match quant {
        Some(q) => dir.join(format!("{stem}-{}.gguf", q.name())),
        None => dir.join(format!("{stem}.safetensors")),
    }
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
            args.inputs
                .iter()
                .map(|i| output_in(d, i, args.quant))
                .collect()
        }
        (None, None) => unreachable!("clap requires -o or --out-dir"),
    };
    let opts = args.rewrite.options(false, args.force);
    let mut ggufs = Vec::new();
    for output in &outputs {
        ggufs.push(super::gguf::choice(
            output,
            args.quant,
            args.allow_long_names,
        )?);
    }
    let rewrites = opts.dtype.is_some()
        || opts.quant.is_some()
        || opts.drop_ema
        || opts.drop_unknown
        || opts.drop_scheduler;
    if ggufs.iter().any(Option::is_some) && rewrites {
        bail!("--dtype and the drop options rewrite safetensors; a .gguf output takes --quant");
    }
    let mut reports: Vec<FixReport> = Vec::new();
    for ((input, output), gguf) in args.inputs.iter().zip(&outputs).zip(ggufs) {
        let model = Model::open_for_rewrite(input, args.rewrite.keep_unmapped())?;
        args.rewrite.check_unmapped(&model.ckpt)?;
        let bar = global.bar(&model.name());
        if let Some(gguf) = gguf {
            let r = ckpt_ops::gguf::convert(
                &model.ckpt,
                &model.detection,
                output,
                &gguf,
                args.force,
                &global.pass(&bar),
            )
            .with_context(|| format!("converting '{}' to GGUF", input.display()))?;
            drop(bar);
            reports.push(r);
            continue;
        }
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
    global.emit(&crate::reports::fix::Converted { files }, &args.format)?;
    Ok(Outcome::Ok)
}
