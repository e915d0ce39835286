//! `ckpt-diff fit --target T --base B --start S --sources M1 M2 ...`: the linear recipe that
//! reproduces a target, from one pass over the files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use super::Outcome;
use super::common::{
    BlockSet, FormatArgs, Global, Model, choose_grouping, open_all, parse_block_set,
};
use crate::reports::fit::{Applied, Fitted, Labels};
use ckpt_core::catalog::Grouping;
use ckpt_core::gram::InnerProducts;
use ckpt_ops::views::fit::recipe::{Asked, Files};
use ckpt_ops::views::fit::{
    BASE, FIRST_SOURCE, FitError, FitSpec, Objective, START, TARGET, fit, inner_products, measure,
};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The checkpoint to reproduce.
    #[arg(long)]
    target: PathBuf,
    /// The base the deltas are taken from (usually the SD base).
    #[arg(long)]
    base: PathBuf,
    /// Where the recipe starts (default: the base).
    #[arg(long)]
    start: Option<PathBuf>,
    /// Candidate source models.
    #[arg(long, required = true, num_args = 1..)]
    sources: Vec<PathBuf>,
    /// Write the recipe here (the notation `ckpt-diff merge` runs).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// One alpha per merge block instead of one alpha per step.
    #[arg(long)]
    per_block: bool,
    /// Allowed alpha range, LO:HI.
    #[arg(long, default_value = "0:1", value_name = "LO:HI", value_parser = parse_bounds)]
    bounds: (f64, f64),
    /// Rows whose similarity counts, comma-separated: blocks (OUT03), ranges (IN00..IN05)
    /// and groups (in, mid, out, unet, te, vae, base, all).
    #[arg(long, default_value = "unet", value_parser = parse_block_set)]
    region: BlockSet,
    /// mean: the mean of the block similarities (the published convention); flat: the
    /// cosine of the region's parameters flattened.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Mean)]
    objective: ObjectiveArg,
    /// Most greedy steps.
    #[arg(long, default_value_t = 6)]
    max_steps: usize,
    /// Sequences kept at each depth of the search (1: plain greedy).
    #[arg(long, default_value_t = 4)]
    beam: usize,
    /// Stop when a step gains less than this (similarity, a fraction).
    #[arg(long, default_value_t = 1e-6)]
    min_gain: f64,
    /// Write the global best (affine least squares per block) as the recipe instead of the
    /// greedy steps.
    #[arg(long)]
    global: bool,
    /// Build the clone into this file and measure its similarity to the target.
    #[arg(long, value_name = "OUT")]
    apply: Option<PathBuf>,
    /// Replace an existing recipe file or clone.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    format: FormatArgs,
}

/// `--objective`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ObjectiveArg {
    Mean,
    Flat,
}

impl ObjectiveArg {
    /// The name the option was given as (the recipe's comments quote it).
    fn name(self) -> &'static str {
        match self {
            ObjectiveArg::Mean => "mean",
            ObjectiveArg::Flat => "flat",
        }
    }
}

impl From<ObjectiveArg> for Objective {
    fn from(o: ObjectiveArg) -> Objective {
        match o {
            ObjectiveArg::Mean => Objective::Mean,
            ObjectiveArg::Flat => Objective::Flat,
        }
    }
}

/// The distinct files among `paths` (by canonical path), and the index of each path's file.
fn distinct(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<usize>) {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut keys: Vec<PathBuf> = Vec::new();
    let mut phys = Vec::new();
    for p in paths {
        let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        match keys.iter().position(|k| *k == key) {
            Some(i) => phys.push(i),
            None => {
                keys.push(key);
                files.push(p.clone());
                phys.push(files.len() - 1);
            }
        }
    }
    (files, phys)
}

/// clap's parser for `--bounds`: the range alphas are kept in.
fn parse_bounds(text: &str) -> std::result::Result<(f64, f64), String> {
    text.split_once(':')
        .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)))
        .filter(|(a, b)| a < b)
        .ok_or_else(|| "expected LO:HI with LO < HI, e.g. 0:1".to_string())
}

/// The inner products of every key of `models` (centred on model 0 when `center`), with a
/// progress bar labelled `what`.
fn pass(
    models: &[Model],
    grouping: &Grouping,
    what: &str,
    center: bool,
    global: &Global,
) -> Result<InnerProducts> {
    let ckpts: Vec<&ckpt_read::Checkpoint> = models.iter().map(|m| &m.ckpt).collect();
    let bar = global.bar(what);
    Ok(inner_products(
        &ckpts,
        grouping,
        center,
        &global.pass(&bar),
    )?)
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let objective = Objective::from(args.objective);
    for out in [&args.output, &args.apply].into_iter().flatten() {
        ckpt_core::writer::refuse_existing(out, args.force)?;
    }
    let start_path = args.start.clone().unwrap_or_else(|| args.base.clone());
    let mut paths = vec![args.base.clone(), args.target.clone(), start_path.clone()];
    paths.extend(args.sources.iter().cloned());
    // Each file is read once, whatever roles it plays (the start is often the base).
    let (files, phys) = distinct(&paths);
    let models = open_all(&files)?;
    let names: Vec<String> = (0..paths.len()).map(|l| models[phys[l]].name()).collect();
    let grouping = choose_grouping(&models.iter().collect::<Vec<_>>(), None, "fit")?;
    if grouping.layout().arch().is_none() {
        return Err(FitError::UnknownArchitecture.into());
    }
    let region = args.region.selector.rows(&grouping).context("--region")?;

    let t0 = Instant::now();
    let inner = pass(&models, &grouping, "reading", true, global)?;
    let pass_seconds = t0.elapsed().as_secs_f64();
    let spec = FitSpec {
        phys,
        region,
        objective,
        bounds: args.bounds,
        per_block: args.per_block,
        max_steps: args.max_steps,
        min_gain: args.min_gain,
        beam: args.beam,
    };
    let result =
        fit(&grouping, &inner, &spec).with_context(|| format!("--region {}", args.region.text))?;

    let labels = Labels {
        base: names[BASE].clone(),
        target: names[TARGET].clone(),
        start: names[START].clone(),
        sources: names[FIRST_SOURCE..].to_vec(),
    };
    let asked = Asked {
        region: &args.region.text,
        objective: args.objective.name(),
    };
    let dir = recipe_dir(&args)?;
    let files = Files {
        base: &args.base,
        start: &start_path,
        sources: &args.sources,
    };
    let recipes =
        ckpt_ops::views::fit::recipe::recipes(&result, &files, &labels.target, &asked, &dir)?;
    let (recipe, predicted) = match args.global {
        true => (&recipes.global, result.global_objective),
        false => (&recipes.greedy, result.greedy_objective),
    };
    if let Some(o) = &args.output {
        ckpt_core::writer::write_small(o, recipe.text.as_bytes())
            .with_context(|| format!("writing '{}'", o.display()))?;
    }

    // The clone, built and measured: the merge engine runs the recipe found.
    let applied = match &args.apply {
        Some(out) => {
            // Existing files were refused (or --force given) before the pass.
            let options = ckpt_ops::merge::Options {
                overwrite: true,
                input_hashes: false,
                ..Default::default()
            };
            let bar = global.bar("merging");
            ckpt_ops::merge::run(
                recipe,
                &dir,
                out,
                &options,
                &bar,
                &global.cancel,
                &global.cache,
            )
            .map_err(|e| match e {
                ckpt_ops::merge::MergeError::Preflight(plan) => {
                    anyhow::anyhow!("{}", crate::reports::merge::problems_text(&plan))
                }
                e => e.into(),
            })?;
            drop(bar);
            let pair = open_all(&[out.clone(), args.target.clone()])?;
            let inner = pass(&pair, &grouping, "measuring", false, global)?;
            let (measured, rows) = measure(&inner, &result.region, objective);
            Some(Applied {
                output: out,
                predicted,
                measured,
                rows,
            })
        }
        None => None,
    };

    let report = Fitted {
        result: &result,
        labels: &labels,
        asked: &asked,
        recipes: &recipes,
        recipe: &recipe.text,
        written_to: args.output.as_deref(),
        applied: applied.as_ref(),
        pass_seconds,
    };
    global.emit(&report, &args.format)?;
    Ok(Outcome::Ok)
}

/// The folder the recipe's paths are relative to: that of `-o`, else the current one.
fn recipe_dir(args: &Args) -> Result<PathBuf> {
    let dir = match args.output.as_deref().and_then(Path::parent) {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::canonicalize(&dir).with_context(|| format!("the recipe's folder '{}'", dir.display()))
}
