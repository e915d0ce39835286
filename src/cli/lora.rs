//! `ckpt-diff lora extract|merge|convert`: LoRAs from the difference of two checkpoints, LoRAs
//! merged into one, and LoRAs rewritten in another dialect. (Baking LoRAs into a model is a
//! recipe term, `lora(FILE, strength)`, of `merge`.)

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::Outcome;
use super::common::{FloatArg, FormatArgs, Global, Model, PLAIN_FLOATS, floats};
use ckpt_core::catalog::{Arch, Layout};
use ckpt_ops::lora::svd::RankRule;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// A LoRA from TUNED − BASE: per module the truncated SVD of the difference.
    Extract(ExtractArgs),
    /// LoRAs merged into one: re-ranked by SVD of the summed (or TIES-, DARE-merged) change,
    /// or concatenated.
    Merge(MergeArgs),
    /// A LoRA rewritten in another key dialect (kohya, peft).
    Convert(ConvertArgs),
}

/// A `--rank`: a number, or `auto` (per module the smallest reaching `--energy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RankArg {
    Fixed(usize),
    Auto,
}

/// clap's parser for a rank.
fn parse_rank(text: &str) -> Result<RankArg, String> {
    if text == "auto" {
        return Ok(RankArg::Auto);
    }
    match text.parse::<usize>() {
        Ok(r) if r > 0 => Ok(RankArg::Fixed(r)),
        _ => Err("a rank is a positive number or `auto`".into()),
    }
}

impl RankArg {
    /// The rule: this rank, or the smallest keeping `energy` (at most `max`).
    fn rule(self, energy: f64, max: Option<usize>) -> RankRule {
        match self {
            RankArg::Fixed(r) => RankRule::Fixed(r),
            RankArg::Auto => RankRule::Energy {
                share: energy,
                max: max.unwrap_or(usize::MAX),
            },
        }
    }
}

/// clap's parser for a share: a number in (0, 1].
fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err("expected a number in (0, 1]".into()),
    }
}

/// A LoRA of `lora merge` and its ratio: `path:ratio`, the ratio after the last colon when
/// it parses (Windows paths have colons of their own), else 1.
#[derive(Debug, Clone)]
struct Weighted {
    path: PathBuf,
    ratio: f64,
}

/// clap's parser for [`Weighted`] (any text is a path).
fn parse_weighted(spec: &str) -> Result<Weighted, std::convert::Infallible> {
    if let Some((p, r)) = spec.rsplit_once(':')
        && !p.is_empty()
        && let Ok(ratio) = r.parse::<f64>()
    {
        return Ok(Weighted {
            path: PathBuf::from(p),
            ratio,
        });
    }
    Ok(Weighted {
        path: PathBuf::from(spec),
        ratio: 1.0,
    })
}

fn arch_of(m: &Model, path: &Path) -> Result<Arch> {
    match m.detection.layout {
        Layout::Known(a) if ckpt_core::catalog::lora::archs().contains(&a) => Ok(a),
        Layout::Known(a) => bail!(
            "{}: {} has no LoRA name table yet ({} do)",
            path.display(),
            a.label(),
            ckpt_core::catalog::lora::archs()
                .iter()
                .map(|a| a.label())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Layout::Generic => bail!(
            "{}: not a checkpoint of an architecture ckpt-diff recognises",
            path.display()
        ),
    }
}

/// Where a LoRA command writes, in what format, and how it reports.
#[derive(Debug, clap::Args)]
struct OutArgs {
    /// The LoRA file to write.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// The factors' format: f16, bf16 or f32.
    #[arg(long, default_value = "f16", value_parser = floats(PLAIN_FLOATS), ignore_case = true)]
    dtype: FloatArg,
    /// Replace OUT if it exists.
    #[arg(long, short)]
    force: bool,
    #[command(flatten)]
    format: FormatArgs,
}

#[derive(Debug, clap::Args)]
pub(super) struct ExtractArgs {
    /// The fine-tuned (or merged) checkpoint.
    tuned: PathBuf,
    /// The checkpoint it was made from.
    #[arg(long)]
    base: PathBuf,
    /// Rank of linear layers and 1×1 convolutions, or `auto`: per module the smallest rank
    /// whose singular values hold `--energy` of the change.
    #[arg(long, default_value = "4", value_parser = parse_rank)]
    rank: RankArg,
    /// Rank of 3×3 convolutions (a LoCon); without it ResNet layers are not extracted, as
    /// kohya's script does.
    #[arg(long, value_parser = parse_rank)]
    conv_rank: Option<RankArg>,
    /// With `auto`: the share of ‖ΔW‖² each module keeps.
    #[arg(long, default_value_t = 0.9, value_parser = parse_share)]
    energy: f64,
    /// With `auto`: the largest rank any module gets.
    #[arg(long)]
    max_rank: Option<usize>,
    /// Clamp both factors at this quantile of their values (kohya's 0.99); 1 turns it off.
    #[arg(long, default_value_t = 0.99, value_parser = parse_share)]
    clamp_quantile: f64,
    /// A text encoder whose largest change is at most this is not extracted; U-Net modules
    /// below it are listed.
    #[arg(long, default_value_t = 0.01)]
    min_diff: f64,
    /// Krylov iterations of the truncated SVD: more keep more of the optimum's energy on
    /// flat spectra, each costing about one more pass over the module's matrix.
    #[arg(long, default_value_t = ckpt_ops::lora::svd::ITERATIONS)]
    iterations: usize,
    /// Seed of the SVD's random sketch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    out: OutArgs,
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    match args.command {
        Command::Extract(a) => extract(a, global),
        Command::Merge(a) => merge(a, global),
        Command::Convert(a) => convert(a, global),
    }
}

fn extract(a: ExtractArgs, global: &Global) -> Result<Outcome> {
    ckpt_core::writer::refuse_existing(&a.out.output, a.out.force)?;
    let rank = a.rank.rule(a.energy, a.max_rank);
    let conv_rank = a.conv_rank.map(|r| r.rule(a.energy, a.max_rank));
    let tuned = Model::open(&a.tuned)?;
    let base = Model::open(&a.base)?;
    let arch = arch_of(&tuned, &a.tuned)?;
    let base_arch = arch_of(&base, &a.base)?;
    if arch != base_arch {
        bail!(
            "{} is {} but --base {} is {}: extract from a model and its own base",
            a.tuned.display(),
            arch.label(),
            a.base.display(),
            base_arch.label()
        );
    }
    let opts = ckpt_ops::lora::extract::Options {
        rank,
        conv_rank,
        clamp_quantile: a.clamp_quantile,
        min_diff: a.min_diff,
        format: a.out.dtype.format(),
        iterations: a.iterations,
        seed: a.seed,
        tuned_name: tuned.ckpt.display_name(),
        base_name: base.ckpt.display_name(),
    };
    let bar = global.bar("extracting");
    let r = ckpt_ops::lora::extract::extract(
        &tuned.ckpt,
        &base.ckpt,
        arch,
        &opts,
        &a.out.output,
        &[a.tuned.as_path(), a.base.as_path()],
        &bar,
    )?;
    drop(bar);
    global.emit(&crate::reports::lora::Extracted(&r), &a.out.format)?;
    Ok(Outcome::Ok)
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("how").required(true).args(["rank", "concat"])))]
pub(super) struct MergeArgs {
    /// LoRA files with their ratios: `a.safetensors:0.7 b.safetensors:0.5` (ratio 1 when
    /// left out).
    #[arg(required = true, value_parser = parse_weighted)]
    inputs: Vec<Weighted>,
    /// Re-rank every module to this rank by SVD of the summed change (`auto`: by
    /// `--energy`), as kohya's `svd_merge_lora.py`; any mix of ranks, alphas and LyCORIS
    /// types.
    #[arg(long, value_parser = parse_rank)]
    rank: Option<RankArg>,
    /// Rank of 3×3 convolutions (default: `--rank`).
    #[arg(long, value_parser = parse_rank)]
    conv_rank: Option<RankArg>,
    /// Concatenate the factors instead: exact, the ranks add up (LoRA and LoCon only).
    #[arg(long, conflicts_with_all = ["rank", "conv_rank"])]
    concat: bool,
    /// With `auto`: the share of ‖ΔW‖² each module keeps.
    #[arg(long, default_value_t = 0.9, value_parser = parse_share)]
    energy: f64,
    /// With `--rank`: clamp the factors at this quantile (svd_merge_lora's 0.99); 1: off.
    #[arg(long, default_value_t = 0.99, value_parser = parse_share)]
    clamp_quantile: f64,
    /// With `--rank`: merge each module's changes by this method of the merge registry
    /// instead of summing them: ties, tgmd, dare, dare_ties (against the zero change) or
    /// geomedian; each LoRA's ratio scales its change first.
    #[arg(long, requires = "rank")]
    method: Option<String>,
    /// An option of `--method`, `KEY=VALUE` (repeatable): `k=0.3`, `vote=count`, `p=0.5`...
    #[arg(long = "opt", value_name = "KEY=VALUE", requires = "method", value_parser = parse_opt)]
    opts: Vec<(String, String)>,
    #[command(flatten)]
    out: OutArgs,
}

fn parse_opt(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

#[derive(Debug, clap::Args)]
pub(super) struct ConvertArgs {
    /// The LoRA to rewrite.
    input: PathBuf,
    /// The dialect to write: `kohya` (lora_unet_/lora_te_ names, lora_down/lora_up, an
    /// alpha carrying each module's scale) or `peft` (diffusers' unet./text_encoder./
    /// transformer. names, lora_A/lora_B, the scale folded into lora_B, and
    /// lora_adapter_metadata giving each module its rank, so diffusers applies the same
    /// change).
    #[arg(long)]
    to: ckpt_ops::lora::write::Dialect,
    #[command(flatten)]
    out: OutArgs,
}

/// Opens a LoRA file, or says what it is instead.
fn open_lora(path: &Path) -> Result<(ckpt_read::Checkpoint, ckpt_ops::lora::Network)> {
    let ckpt = ckpt_core::catalog::diffusers::open(path)?;
    let net = ckpt_ops::lora::Network::read(&ckpt).with_context(|| {
        format!(
            "{} is not a LoRA file (its tensors are not LoRA module tensors)",
            path.display()
        )
    })?;
    Ok((ckpt, net))
}

fn merge(a: MergeArgs, global: &Global) -> Result<Outcome> {
    ckpt_core::writer::refuse_existing(&a.out.output, a.out.force)?;
    let mut files = Vec::new();
    for w in &a.inputs {
        let (ckpt, net) = open_lora(&w.path)?;
        files.push((ckpt, net));
    }
    let how = match a.rank {
        None => ckpt_ops::lora::write::MergeHow::Concat,
        Some(rank) => ckpt_ops::lora::write::MergeHow::Svd {
            rank: rank.rule(a.energy, None),
            conv_rank: a.conv_rank.unwrap_or(rank).rule(a.energy, None),
            clamp_quantile: a.clamp_quantile,
            method: match &a.method {
                None => None,
                Some(name) => Some(
                    ckpt_ops::lora::methods::DeltaMethod::new(name, &a.opts)
                        .map_err(|e| anyhow::anyhow!("--method {name}: {e}"))?,
                ),
            },
        },
    };
    let inputs: Vec<&Path> = a.inputs.iter().map(|w| w.path.as_path()).collect();
    let sources: Vec<ckpt_ops::lora::write::Source<'_>> = files
        .iter()
        .zip(&a.inputs)
        .map(|((ckpt, net), w)| ckpt_ops::lora::write::Source {
            ckpt,
            net,
            ratio: w.ratio,
        })
        .collect();
    let r =
        ckpt_ops::lora::write::merge(&sources, &how, a.out.dtype.format(), &a.out.output, &inputs)?;
    global.emit(&crate::reports::lora::Written(&r), &a.out.format)?;
    Ok(Outcome::Ok)
}

fn convert(a: ConvertArgs, global: &Global) -> Result<Outcome> {
    ckpt_core::writer::refuse_existing(&a.out.output, a.out.force)?;
    let (ckpt, net) = open_lora(&a.input)?;
    let r = ckpt_ops::lora::write::convert(
        &ckpt,
        &net,
        a.to,
        a.out.dtype.format(),
        &a.out.output,
        &[a.input.as_path()],
    )?;
    global.emit(&crate::reports::lora::Written(&r), &a.out.format)?;
    Ok(Outcome::Ok)
}
