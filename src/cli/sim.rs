//! `ckpt-diff sim A B`: per-block cosine similarity.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Outcome;
use super::common::{
    ArchArg, BlockSet, FormatArgs, Global, Model, choose_grouping, open_all, parse_arch_arg,
    parse_block_set,
};
use crate::reports::sim::{Cosine, ModelLine};
use ckpt_core::catalog::Layout;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Model A, the reference.
    a: PathBuf,
    /// Model B.
    b: PathBuf,
    /// Rows to show, comma-separated: blocks (IN04, M00, OUT11), ranges (OUT03..OUT10) and
    /// groups (in, mid, out, unet, te, te1, te2, vae, other, base, all). Totals are over the
    /// rows shown. With `--metric asim` the random draws follow the selection, as in the
    /// original scripts.
    #[arg(long, default_value = "all", value_name = "SET", value_parser = parse_block_set)]
    blocks: BlockSet,
    /// cosine: the cosine of the weights, per block. asim: ASimilarity, the
    /// attention-output similarity behind published tables (random input; see README).
    #[arg(long, value_enum, default_value_t = Metric::Cosine)]
    metric: Metric,
    /// With `--metric asim`: whose numbers to reproduce (they differ in their random
    /// draws, default seed and rounding).
    /// [default: wkpark]
    #[arg(long, value_enum, requires = "metric")]
    like: Option<ckpt_ops::views::asim::Like>,
    /// With `--metric asim`: f32 computes as PyTorch does; f64 gives the exact value of the
    /// same computation (identical on every machine).
    /// [default: f32]
    #[arg(long, value_enum, requires = "metric")]
    precision: Option<ckpt_ops::views::asim::Precision>,
    /// With `--metric asim`: seed of the random input (default 114514 like wkpark's scripts,
    /// 2244096 like SuperMerger).
    #[arg(long, requires = "metric")]
    seed: Option<u64>,
    /// Only compare keys matching this regular expression (canonical key names).
    #[arg(long, value_name = "REGEX", value_parser = regex::Regex::new)]
    keys: Option<regex::Regex>,
    /// Also list the similarity of every tensor.
    #[arg(long)]
    per_tensor: bool,
    #[arg(long, value_parser = parse_arch_arg, help = super::common::arch_rows_help())]
    arch: Option<ArchArg>,
    /// With a LoRA and a checkpoint: the checkpoint's base. The LoRA's change is compared
    /// with the checkpoint's change from it, on the keys the LoRA patches.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Also write a report folder (index.html, summary.md, a chart) here.
    #[arg(long, value_name = "DIR")]
    report: Option<std::path::PathBuf>,
    #[command(flatten)]
    format: FormatArgs,
}

/// What `sim` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Metric {
    Cosine,
    Asim,
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    if args.metric == Metric::Asim {
        return run_asim(&args, global);
    }
    // clap requires a --metric for these; what it cannot check is which one.
    if args.seed.is_some() || args.like.is_some() || args.precision.is_some() {
        anyhow::bail!("--seed, --like and --precision go with --metric asim");
    }
    let models = open_all(&[args.a.clone(), args.b.clone()])?;
    // Two LoRA files: their weight changes compared from the factors.
    let loras: Vec<_> = models
        .iter()
        .map(|m| ckpt_ops::lora::Network::read(&m.ckpt))
        .collect();
    if let [Some(la), Some(lb)] = &loras[..] {
        let r = ckpt_ops::views::lora::similarity(&models[0].ckpt, la, &models[1].ckpt, lb);
        global.emit(&crate::reports::lora::Similarity(&r), &args.format)?;
        return Ok(Outcome::Ok);
    }
    if let Some(i) = loras.iter().position(Option::is_some) {
        let Some(base) = &args.base else {
            anyhow::bail!(
                "one input is a LoRA and the other a checkpoint: give the checkpoint's base \
                 with --base to compare the LoRA with the checkpoint's change from it"
            );
        };
        let base = Model::open(base)?;
        let net = loras[i].as_ref().expect("found");
        let r = ckpt_ops::views::lora::against_delta(
            &models[i].ckpt,
            net,
            &models[1 - i].ckpt,
            &base.ckpt,
        );
        global.emit(&crate::reports::lora::Similarity(&r), &args.format)?;
        return Ok(Outcome::Ok);
    }
    if args.base.is_some() {
        anyhow::bail!("--base goes with a LoRA compared with a checkpoint's change");
    }
    let refs: Vec<&Model> = models.iter().collect();
    let grouping = choose_grouping(&refs, args.arch, "sim")?;
    // Layouts the catalog does not know have rows by key prefix: every one is shown.
    let chosen = match grouping.layout() {
        Layout::Generic => vec![true; grouping.groups().len()],
        Layout::Known(_) => args.blocks.selector.rows(&grouping).context("--blocks")?,
    };
    let ckpts: Vec<&ckpt_read::Checkpoint> = models.iter().map(|m| &m.ckpt).collect();
    let bar = global.bar("reading");
    let result = ckpt_ops::views::sim::measure(
        &ckpts,
        &grouping,
        args.keys.as_ref(),
        &chosen,
        args.per_tensor,
        &global.pass(&bar),
    )?;
    drop(bar);
    let lines: Vec<ModelLine> = models.iter().map(Model::line).collect();
    let report = Cosine {
        models: &lines,
        layout: grouping.layout().id(),
        arch: grouping.layout().arch(),
        report: &result,
    };
    global.emit(&report, &args.format)?;
    if let Some(dir) = &args.report {
        crate::reports::sim::write_report(
            &lines,
            grouping.layout().arch(),
            &result,
            dir,
            &global.command_line(),
        )?;
        if !global.quiet {
            eprintln!("report: {}", dir.join("index.html").display());
        }
    }
    Ok(Outcome::Ok)
}

/// `sim --metric asim`.
fn run_asim(args: &Args, global: &Global) -> Result<Outcome> {
    use ckpt_ops::views::asim;
    if args.keys.is_some() || args.per_tensor || args.report.is_some() || args.arch.is_some() {
        anyhow::bail!(
            "--keys, --per-tensor, --report and --arch go with --metric cosine; \
             ASimilarity reads the attention weights of fixed blocks"
        );
    }
    let models = open_all(&[args.a.clone(), args.b.clone()])?;
    let arch = asim::scored_arch([
        (&models[0].ckpt, models[0].detection.arch()),
        (&models[1].ckpt, models[1].detection.arch()),
    ])?;
    let like = args.like.unwrap_or(asim::Like::Wkpark);
    let precision = args.precision.unwrap_or(asim::Precision::F32);
    let seed = args.seed.unwrap_or(like.default_seed());
    let blocks = asim::select(arch, &args.blocks.selector)
        .map_err(anyhow::Error::msg)
        .context("--blocks")?;
    let bar = global.counting("asim", "blocks");
    ckpt_core::pass::progress::Progress::start(&bar, blocks.len() as u64);
    let rows = asim::asim(
        &models[0].ckpt,
        &models[1].ckpt,
        &blocks,
        seed,
        like,
        precision,
        |_| ckpt_core::pass::progress::Progress::advance(&bar, 1),
    )?;
    drop(bar);
    let lines: Vec<ModelLine> = models.iter().map(Model::line).collect();
    global.emit(
        &crate::reports::asim::Asim {
            models: &lines,
            arch,
            seed,
            like,
            rows: &rows,
        },
        &args.format,
    )?;
    Ok(Outcome::Ok)
}
