//! `ckpt-diff merge RECIPE -o OUT`, and the one-step shortcuts `merge ws` / `merge ad`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::Outcome;
use super::common::{FloatArg, FormatArgs, Global, floats};
use crate::reports;
use ckpt_ops::merge::recipe::writer::{Names, quote_path};
use ckpt_ops::merge::{self, Missing, Options, OutputFormat, Precision};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(super) struct Args {
    #[command(subcommand)]
    shortcut: Option<Shortcut>,
    /// Recipe file (the notation of published recipes; see docs/commands/merge.md).
    #[arg(required_unless_present = "text", conflicts_with = "text")]
    recipe: Option<PathBuf>,
    /// The recipe itself instead of a file: the same lines, with paths relative to the
    /// current folder.
    #[arg(long, value_name = "RECIPE")]
    text: Option<String>,
    /// With --text: the folder its relative paths are from (default: the current folder).
    #[arg(long, value_name = "DIR", requires = "text")]
    paths_from: Option<PathBuf>,
    #[command(flatten)]
    out: OutArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Shortcut {
    /// Weighted sum: A x (1-alpha) + B x alpha.
    Ws {
        a: PathBuf,
        b: PathBuf,
        #[arg(long, allow_hyphen_values = true, help = alpha_help())]
        alpha: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Add difference: A + (B - C) x alpha.
    Ad {
        a: PathBuf,
        b: PathBuf,
        c: PathBuf,
        /// As for `ws` (default 1).
        #[arg(long, default_value = "1", allow_hyphen_values = true)]
        alpha: String,
        #[command(flatten)]
        out: OutArgs,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct OutArgs {
    /// Output file (.safetensors, or .gguf: the diffusion model as city96's ComfyUI-GGUF
    /// tools write it); refused if it is one of the inputs.
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Write GGUF (a .gguf output) quantized to TYPE: F16, BF16, Q8_0, Q6_K, Q5_K_M,
    /// Q5_K_S, Q4_K_M, Q4_K_S, Q3_K_L, Q3_K_M, Q3_K_S, Q2_K, Q5_1, Q5_0, Q4_1, Q4_0 (Q5_K,
    /// Q4_K, Q3_K mean their _M mixes), from the merged values as f32. A .gguf output
    /// without --quant is F16/BF16 as city96's convert.py writes it.
    #[arg(long, value_name = "TYPE", value_parser = super::gguf::parse_quant)]
    quant: Option<ckpt_ops::gguf::Quant>,
    /// Write GGUF tensor names of 128 bytes or more, which ComfyUI-GGUF reads but ggml-based
    /// loaders (stable-diffusion.cpp, llama-quantize) refuse; without it they are refused,
    /// as city96's convert.py refuses them.
    #[arg(long)]
    allow_long_names: bool,
    /// Output float format: f16, bf16, f32, f64, f8_e4m3 or f8_e5m2 (values beyond the
    /// format saturate); scaled-fp8 (ComfyUI's older format: the denoiser's linear-layer
    /// weights in E4M3 with a fresh per-tensor scale); or one of ComfyUI's per-layer formats,
    /// comfy-fp8, comfy-f8_e5m2, int8, nvfp4, mxfp8 (the denoiser's linear weights quantized
    /// as comfy-kitchen does, with their scales and `.comfy_quant` records; other floats in
    /// bf16). Default: each tensor as in the first input (a scaled-fp8 input stays scaled
    /// fp8; per-layer quantized inputs give bf16).
    #[arg(long, value_parser = floats(MERGE_FLOATS), ignore_case = true)]
    dtype: Option<FloatArg>,
    /// Arithmetic precision: f64 (default) or f32 (node results rounded to f32).
    #[arg(long, value_enum, ignore_case = true, default_value_t = PrecisionArg::F64)]
    precision: PrecisionArg,
    /// Keys some input lacks: `first` takes them from the first model that has them;
    /// `skip` leaves them out. Either way they are listed.
    #[arg(long, value_enum, default_value_t = MissingArg::First)]
    missing: MissingArg,
    /// Do not compute the inputs' SHA-256 for the provenance metadata.
    #[arg(long)]
    no_input_hashes: bool,
    /// Replace OUT if it exists.
    #[arg(long, short)]
    force: bool,
    #[command(flatten)]
    format: FormatArgs,
    /// Open and check every input, print the plan (what each component reads, memory,
    /// output size, predicted time) and stop: no tensor is read, nothing is written.
    #[arg(long)]
    dry_run: bool,
}

/// The formats a merge writes.
const MERGE_FLOATS: &[FloatArg] = &[
    FloatArg::F16,
    FloatArg::Bf16,
    FloatArg::F32,
    FloatArg::F64,
    FloatArg::F8E4m3,
    FloatArg::F8E5m2,
    FloatArg::ScaledFp8,
    FloatArg::ScaledF8E5m2,
    FloatArg::ComfyFp8,
    FloatArg::ComfyF8E5m2,
    FloatArg::Nvfp4,
    FloatArg::Mxfp8,
    FloatArg::Int8,
];

/// `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PrecisionArg {
    #[value(aliases = ["fp32", "float32"])]
    F32,
    #[value(aliases = ["fp64", "float64"])]
    F64,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F64 => Precision::F64,
        }
    }
}

/// `--missing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MissingArg {
    First,
    Skip,
}

impl From<MissingArg> for Missing {
    fn from(m: MissingArg) -> Missing {
        match m {
            MissingArg::First => Missing::First,
            MissingArg::Skip => Missing::Skip,
        }
    }
}

impl OutArgs {
    fn options(&self) -> Options {
        let output = match self.dtype {
            None => OutputFormat::AsInputs,
            Some(d) if d.scaled() => OutputFormat::ScaledFp8(d.format()),
            Some(d) if let Some(code) = d.per_layer() => OutputFormat::PerLayer(code),
            Some(d) => OutputFormat::Float(d.format()),
        };
        Options {
            output,
            precision: self.precision.into(),
            missing: self.missing.into(),
            input_hashes: !self.no_input_hashes,
            overwrite: self.force,
            gguf: None,
        }
    }
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let (text, base_dir, out) = match args.shortcut {
        Some(Shortcut::Ws { a, b, alpha, out }) => {
            let (bindings, names) = bindings(&[&a, &b])?;
            let text = format!(
                "{bindings}OUT = {} x (1-alpha) + {} x alpha\n    alpha = {}\n",
                names[0],
                names[1],
                alpha.trim()
            );
            (text, std::env::current_dir()?, out)
        }
        Some(Shortcut::Ad {
            a,
            b,
            c,
            alpha,
            out,
        }) => {
            let (bindings, names) = bindings(&[&a, &b, &c])?;
            let text = format!(
                "{bindings}OUT = {} + ({} - {}) x alpha\n    alpha = {}\n",
                names[0],
                names[1],
                names[2],
                alpha.trim()
            );
            (text, std::env::current_dir()?, out)
        }
        None if args.text.is_some() => (
            args.text.expect("checked"),
            match args.paths_from {
                Some(dir) => dir,
                None => std::env::current_dir()?,
            },
            args.out,
        ),
        None if args.paths_from.is_some() => {
            bail!("--paths-from goes with --text (a recipe file's paths are from its folder)")
        }
        None => {
            let path = args
                .recipe
                .expect("clap requires a recipe without a shortcut");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading recipe '{}'", path.display()))?;
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            (text, dir, args.out)
        }
    };
    let output = out
        .output
        .clone()
        .context("name the output file with -o OUT.safetensors")?;
    let mut options = out.options();
    options.gguf = super::gguf::choice(&output, out.quant, out.allow_long_names)?;
    if options.gguf.is_some()
        && matches!(
            options.output,
            OutputFormat::ScaledFp8(_) | OutputFormat::PerLayer(_)
        )
    {
        bail!(
            "a .gguf output is quantized with --quant; --dtype takes f16, bf16, f32 or f64 \
             there (the dtype convert.py would have seen)"
        );
    }
    let recipe = merge::recipe::parse(&text).context("in the recipe")?;
    let inputs = merge::open(&recipe, &base_dir)?;
    for m in &inputs.models {
        super::common::warn_dangerous(&m.ckpt);
    }
    let planned = match merge::plan(&inputs, &output, &options, &global.cache) {
        Ok(p) => p,
        Err(merge::MergeError::Preflight(plan)) => {
            // The plan as far as it got, then the problems as the error.
            if out.format.json || out.dry_run {
                global.emit(&reports::merge::Plan(&plan), &out.format)?;
            }
            bail!("{}", reports::merge::problems_text(&plan));
        }
        Err(e) => return Err(e.into()),
    };
    if out.dry_run {
        global.emit(&reports::merge::Plan(planned.preflight()), &out.format)?;
        return Ok(Outcome::Ok);
    }
    // The plan goes to stderr before the pass; stdout keeps the summary.
    global.show_plan(&reports::merge::Plan(planned.preflight()));
    if !global.quiet {
        for line in planned.gguf_notes() {
            eprintln!("{line}");
        }
    }
    let bar = global.bar("merging");
    let outcome = merge::execute(planned, &bar, &global.cancel, &global.cache)?;
    drop(bar);
    let file_bytes = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    global.emit(
        &reports::merge::Merged {
            outcome: &outcome,
            file_bytes,
        },
        &out.format,
    )?;
    Ok(Outcome::Ok)
}

/// `NAME = "path"` lines for the inputs of a shortcut (absolute paths, so the recipe stands
/// alone in the output's metadata), and the names.
fn bindings(paths: &[&PathBuf]) -> Result<(String, Vec<String>)> {
    let mut names = Names::reserving(&["OUT", "alpha"]);
    let mut text = String::new();
    let mut given = Vec::new();
    for p in paths {
        let name = names.for_file(p);
        text.push_str(&format!("{name} = {}\n", quote_path(p, None)?));
        given.push(name);
    }
    Ok((text, given))
}

/// The help of `--alpha`: the block-weight list's length per architecture, from the catalog.
fn alpha_help() -> String {
    let mut lengths: Vec<(usize, Vec<&str>)> = Vec::new();
    for a in ckpt_core::catalog::Arch::all() {
        let n = a.merge_blocks().len();
        match lengths.iter_mut().find(|(m, _)| *m == n) {
            Some((_, ids)) => ids.push(a.id()),
            None => lengths.push((n, vec![a.id()])),
        }
    }
    let lists: Vec<String> = lengths
        .iter()
        .map(|(n, ids)| format!("{n} ({})", ids.join(", ")))
        .collect();
    format!(
        "A number, the architecture's comma-separated block weights in SuperMerger's order \
         ({}), or a named form such as \"{{OUT06..OUT11: 0.15}}\"",
        lists.join(", ")
    )
}
