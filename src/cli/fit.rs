//! `ckpt-diff fit --target T --base B --start S --sources M1 M2 ...`: the linear recipe that
//! reproduces a target, from one pass over the files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::Outcome;
use super::common::{Global, Model, choose_grouping, open_all, print};
use crate::catalog::{Arch, Block, Grouping, Selector};
use crate::gram::{GramSpec, gather};
use crate::merge::plan::show;
use crate::merge::recipe::writer::{Names, quote_path};
use crate::pass::progress::Bar;
use crate::pass::{Pass, Plan};
use crate::reports::{self, TextTable};
use crate::views::fit::{
    BASE, Coefs, FIRST_SOURCE, Objective, Op, Problem, START, Step, TARGET, expand,
};

#[derive(Debug, clap::Args)]
pub struct Args {
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
    #[arg(long, default_value = "0:1")]
    bounds: String,
    /// Rows whose similarity counts, comma-separated: blocks (OUT03), ranges (IN00..IN05)
    /// and groups (in, mid, out, unet, te, vae, base, all).
    #[arg(long, default_value = "unet")]
    region: String,
    /// mean: the mean of the block similarities (the published convention); flat: the
    /// cosine of the region's parameters flattened.
    #[arg(long, default_value = "mean")]
    objective: String,
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
    /// Print JSON.
    #[arg(long)]
    json: bool,
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

/// Similarities near 100% differ in the fifth decimal: six are shown.
fn pct(x: f64) -> String {
    format!("{:.6}%", x * 100.0)
}

/// Decimals of the weights in a fitted recipe.
const DIGITS: i32 = 9;

fn round(x: f64) -> f64 {
    let scale = 10f64.powi(DIGITS);
    (x * scale).round() / scale
}

/// A weight as recipe text, to `DIGITS` decimals.
fn number(x: f64) -> String {
    let s = format!("{:.*}", DIGITS as usize, x);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// Alphas as recipe text: one number, or the full block list in SuperMerger's order.
fn alpha_text(alpha: &[f64]) -> String {
    if alpha.len() == 1 {
        number(alpha[0])
    } else {
        format!(
            "({})",
            alpha
                .iter()
                .map(|a| number(*a))
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

fn parse_bounds(text: &str) -> Result<(f64, f64)> {
    text.split_once(':')
        .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)))
        .filter(|(a, b)| a < b)
        .context("--bounds: expected LO:HI with LO < HI, e.g. 0:1")
}

/// What the search found, ready to report.
struct Fitted {
    /// Row labels and whether the files have tensors there.
    rows: Vec<String>,
    present: Vec<usize>,
    blocks: Vec<Block>,
    start_objective: f64,
    start_rows: Vec<f64>,
    steps: Vec<Step>,
    greedy: Coefs,
    greedy_objective: f64,
    global_weights: Vec<Vec<f64>>,
    global_rows: Vec<f64>,
    global_objective: f64,
    residuals: Vec<f64>,
    pass_secs: f64,
    search_secs: f64,
}

/// The recipes as text, with the names they give the models.
struct Recipes {
    start_name: String,
    source_names: Vec<String>,
    /// One expression per greedy step.
    expressions: Vec<String>,
    greedy: String,
    global: String,
}

pub fn run(args: Args, global: &Global) -> Result<Outcome> {
    let bounds = parse_bounds(&args.bounds)?;
    let objective = match args.objective.as_str() {
        "mean" => Objective::Mean,
        "flat" => Objective::Flat,
        other => bail!("--objective: '{other}' is not mean or flat"),
    };
    for out in [&args.output, &args.apply].into_iter().flatten() {
        crate::writer::refuse_existing(out, args.force)?;
    }
    let start_path = args.start.clone().unwrap_or_else(|| args.base.clone());
    let mut paths = vec![args.base.clone(), args.target.clone(), start_path.clone()];
    paths.extend(args.sources.iter().cloned());
    // Each file is read once, whatever roles it plays (the start is often the base).
    let (files, phys) = distinct(&paths);
    let models = open_all(&files)?;
    let names: Vec<String> = (0..paths.len()).map(|l| models[phys[l]].name()).collect();
    let refs: Vec<&Model> = models.iter().collect();
    let grouping = choose_grouping(&refs, None, "fit")?;
    let Some(arch) = grouping.layout().arch() else {
        bail!("fit needs an SD1, SD2 or SDXL checkpoint to map block weights");
    };

    // The one pass.
    let t0 = Instant::now();
    let plan = Plan::new(models.iter().map(|m| &m.ckpt).collect());
    let all: Vec<usize> = (0..plan.entries().len()).collect();
    let bar = Bar::new("reading", global.quiet);
    let spec = GramSpec {
        center: Some(0),
        per_tensor: false,
        distances: false,
    };
    let inner = gather(&plan, &grouping, &all, spec, &Pass::new(&bar))?;
    drop(bar);
    let pass_secs = t0.elapsed().as_secs_f64();

    // The search, on the Grams alone.
    let t1 = Instant::now();
    let groups = grouping.groups().to_vec();
    let grams: Vec<_> = inner.rows.iter().map(|r| expand(&r.gram, &phys)).collect();
    let blocks = arch.merge_blocks();
    let block_of_row: Vec<usize> = groups
        .iter()
        .map(|g| {
            let block = g.block.unwrap_or(Block::Base);
            blocks
                .iter()
                .position(|b| *b == block)
                .expect("a merge block")
        })
        .collect();
    let mut region = Selector::parse(&args.region)
        .and_then(|s| s.rows(&grouping))
        .context("--region")?;
    let present: Vec<usize> = (0..groups.len())
        .filter(|&r| inner.rows[r].tensors > 0)
        .collect();
    for (r, keep) in region.iter_mut().enumerate() {
        *keep &= present.contains(&r);
    }
    if !region.iter().any(|&k| k) {
        bail!(
            "--region {} selects no rows these checkpoints have",
            args.region
        );
    }
    let problem = Problem {
        rows: &groups,
        grams: &grams,
        blocks: blocks.clone(),
        block_of_row,
        region,
        objective,
        bounds,
        per_block: args.per_block,
        k: 1 + args.sources.len(),
    };
    let start = problem.start();
    // The recipe holds DIGITS decimals; predictions are those of the recipe as written.
    let found = problem.search(args.max_steps, args.min_gain, args.beam);
    let (steps, greedy) = problem.rounded(&found, DIGITS);
    let global_weights: Vec<Vec<f64>> = problem
        .global()
        .0
        .iter()
        .map(|w| w.iter().map(|x| round(*x)).collect())
        .collect();
    let global_coefs: Coefs = problem
        .block_of_row
        .iter()
        .map(|&b| global_weights[b].clone())
        .collect();
    let row_sim = |c: &Coefs| -> Vec<f64> {
        (0..groups.len())
            .map(|r| problem.row_similarity(r, &c[r]))
            .collect()
    };
    let start_objective = problem.objective_of(&start);
    let fitted = Fitted {
        rows: groups.iter().map(|g| g.label.clone()).collect(),
        present,
        blocks,
        start_objective,
        start_rows: row_sim(&start),
        greedy_objective: steps.last().map_or(start_objective, |s| s.objective),
        steps,
        global_rows: row_sim(&global_coefs),
        global_objective: problem.objective_of(&global_coefs),
        residuals: problem.residuals(&global_coefs),
        greedy,
        global_weights,
        pass_secs,
        search_secs: t1.elapsed().as_secs_f64(),
    };

    let recipes = recipes(&args, &start_path, &names[TARGET], &fitted)?;
    let recipe = if args.global {
        &recipes.global
    } else {
        &recipes.greedy
    };
    if let Some(o) = &args.output {
        crate::writer::write_small(o, recipe.as_bytes())
            .with_context(|| format!("writing '{}'", o.display()))?;
    }

    // The clone, built and measured.
    let predicted = if args.global {
        fitted.global_objective
    } else {
        fitted.greedy_objective
    };
    let applied = match &args.apply {
        Some(out) => Some(apply(
            recipe,
            &recipe_dir(&args)?,
            out,
            &args.target,
            &problem,
            global,
        )?),
        None => None,
    };

    if args.json {
        let at = |v: &[f64]| -> Vec<f64> { fitted.present.iter().map(|&r| v[r]).collect() };
        let source_name = |s: &Step| {
            if s.source == 0 {
                recipes.start_name.clone()
            } else {
                recipes.source_names[s.source - 1].clone()
            }
        };
        let steps: Vec<_> = fitted
            .steps
            .iter()
            .zip(&recipes.expressions)
            .map(|(s, e)| {
                json!({ "source": source_name(s), "op": s.op, "expression": e, "alpha": s.alpha,
                        "objective": s.objective, "rows": at(&s.rows) })
            })
            .collect();
        let base_weight: Vec<f64> = fitted
            .global_weights
            .iter()
            .map(|w| 1.0 - w.iter().sum::<f64>())
            .collect();
        let residuals: Vec<_> = fitted
            .present
            .iter()
            .map(|&r| json!({ "row": fitted.rows[r], "relative": fitted.residuals[r] }))
            .collect();
        let v = json!({
            "schema": 1,
            "command": "fit",
            "models": { "base": names[BASE], "target": names[TARGET], "start": names[START],
                        "sources": names[FIRST_SOURCE..] },
            "region": args.region,
            "objective": objective,
            "rows": fitted.present.iter().map(|&r| &fitted.rows[r]).collect::<Vec<_>>(),
            "blocks": fitted.blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
            "start_objective": fitted.start_objective,
            "steps": steps,
            "greedy": { "objective": fitted.greedy_objective,
                        "coefficients": coef_by_block(&fitted.greedy, &problem),
                        "rows": at(&row_sim(&fitted.greedy)) },
            "global": { "objective": fitted.global_objective, "weights": fitted.global_weights,
                        "base_weight": base_weight, "rows": at(&fitted.global_rows) },
            "residuals": residuals,
            "recipe": recipe,
            "seconds": { "pass": fitted.pass_secs, "search": fitted.search_secs },
            "apply": applied.as_ref().map(|(m, rows)| {
                json!({ "predicted": predicted, "measured": m, "rows": at(rows) })
            }),
        });
        print(&(serde_json::to_string_pretty(&v)? + "\n"))?;
        return Ok(Outcome::Ok);
    }

    let mut s = text_report(&args, &names, &fitted, &recipes);
    if let Some(o) = &args.output {
        s.push_str(&format!(
            "recipe written to {} (run it with: ckpt-diff merge {} -o clone.safetensors)\n",
            o.display(),
            o.display()
        ));
    } else {
        s.push_str(&format!("\n{recipe}"));
    }
    if let (Some((measured, _)), Some(out)) = (&applied, &args.apply) {
        s.push_str(&format!(
            "clone written to {}: measured {} vs predicted {} (difference {:.2e})\n",
            out.display(),
            pct(*measured),
            pct(predicted),
            (measured - predicted).abs()
        ));
    }
    print(&s)?;
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

/// The greedy recipe (one step per line, as mergers write them) and the global one (one
/// weighted sum with per-block weights).
fn recipes(args: &Args, start_path: &Path, target: &str, f: &Fitted) -> Result<Recipes> {
    let source_paths: Vec<&Path> = args.sources.iter().map(PathBuf::as_path).collect();
    let mut names = Names::reserving(&["base", "start", "alpha", "OUT"]);
    let source_names: Vec<String> = source_paths.iter().map(|p| names.for_file(p)).collect();
    let dir = recipe_dir(args)?;
    let mut bindings = format!("base = {}\n", quote_path(&args.base, Some(&dir))?);
    let start_is_base =
        std::fs::canonicalize(start_path).ok() == std::fs::canonicalize(&args.base).ok();
    let start_name = if start_is_base { "base" } else { "start" }.to_string();
    if !start_is_base {
        bindings.push_str(&format!(
            "start = {}\n",
            quote_path(start_path, Some(&dir))?
        ));
    }
    for (n, p) in source_names.iter().zip(&args.sources) {
        bindings.push_str(&format!("{n} = {}\n", quote_path(p, Some(&dir))?));
    }
    let header = |what: &str, obj: f64| {
        format!(
            "# {what} by ckpt-diff fit: target {target}, region {}, objective {}; predicted {}\n",
            args.region,
            args.objective,
            pct(obj)
        )
    };

    let mut greedy = header("greedy steps", f.greedy_objective) + &bindings;
    let mut previous = start_name.clone();
    let mut expressions = Vec::new();
    for (i, s) in f.steps.iter().enumerate() {
        let name = format!("S{}", i + 1);
        let src = if s.source == 0 {
            &start_name
        } else {
            &source_names[s.source - 1]
        };
        let expr = match s.op {
            Op::WeightedSum => format!("{previous} x (1-alpha) + {src} x alpha"),
            Op::AddDifference => format!("{previous} + ({src} - base) x alpha"),
        };
        greedy.push_str(&format!(
            "{name} = {expr}\n    alpha = {}\n",
            alpha_text(&s.alpha)
        ));
        expressions.push(expr);
        previous = name;
    }
    if f.steps.is_empty() {
        greedy.push_str(&format!("OUT = {start_name} x 1\n"));
    }

    let mut global = header(
        "global best (closest in angle, per block)",
        f.global_objective,
    ) + &bindings;
    let base_w: Vec<f64> = f
        .global_weights
        .iter()
        .map(|w| 1.0 - w.iter().sum::<f64>())
        .collect();
    let mut terms = vec!["base x w_base".to_string()];
    let mut params = format!("    w_base = {}\n", alpha_text(&base_w));
    let mut model_names = vec![start_name.clone()];
    model_names.extend(source_names.iter().cloned());
    for (i, n) in model_names.iter().enumerate() {
        let w: Vec<f64> = f.global_weights.iter().map(|b| b[i]).collect();
        if w.iter().all(|x| *x == 0.0) {
            continue;
        }
        terms.push(format!("{n} x w_{i}"));
        params.push_str(&format!("    w_{i} = {}\n", alpha_text(&w)));
    }
    global.push_str(&format!("OUT = {}\n{params}", terms.join(" + ")));
    Ok(Recipes {
        start_name,
        source_names,
        expressions,
        greedy,
        global,
    })
}

/// The step table, the per-row table (after each step, global best, residual) and the
/// rows no linear recipe explains.
fn text_report(args: &Args, names: &[String], f: &Fitted, recipes: &Recipes) -> String {
    let mut s = format!(
        "target {}; start {}; {} sources; region {}, objective {}\n\
         read in {:.2} s; search in {:.3} s\n\n",
        names[TARGET],
        names[START],
        args.sources.len(),
        args.region,
        args.objective,
        f.pass_secs,
        f.search_secs
    );
    let mut t = TextTable::new(
        &["step", "expression", "alpha", "region similarity"],
        &[false, false, false, true],
    );
    let start = format!("{}: {}", recipes.start_name, names[START]);
    t.push(vec![
        "0".into(),
        start,
        String::new(),
        pct(f.start_objective),
    ]);
    for (i, (st, e)) in f.steps.iter().zip(&recipes.expressions).enumerate() {
        let a = if st.alpha.len() == 1 {
            show(st.alpha[0])
        } else {
            format!("per block: {}", short_blocks(&f.blocks, &st.alpha))
        };
        t.push(vec![format!("S{}", i + 1), e.clone(), a, pct(st.objective)]);
    }
    s.push_str(&t.terminal());
    s.push_str(&format!(
        "\nthe best any linear recipe of these models reaches: {} (the steps: {})\n\n",
        pct(f.global_objective),
        pct(f.greedy_objective)
    ));

    // Per row after each step, as the published step tables show them.
    let mut head: Vec<String> = vec!["row".into(), "start".into()];
    head.extend((1..=f.steps.len()).map(|i| format!("S{i}")));
    head.extend(["global best".into(), "unexplained".into()]);
    let mut rt = TextTable::labelled(head);
    let mut worst: Vec<(f64, String)> = Vec::new();
    for &r in &f.present {
        let mut cells = vec![f.rows[r].clone(), pct(f.start_rows[r])];
        cells.extend(f.steps.iter().map(|st| pct(st.rows[r])));
        cells.extend([pct(f.global_rows[r]), pct(f.residuals[r])]);
        rt.push(cells);
        worst.push((f.residuals[r], f.rows[r].clone()));
    }
    s.push_str(&rt.terminal());
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    let flagged: Vec<String> = worst
        .iter()
        .filter(|(r, _)| *r > UNEXPLAINED)
        .map(|(r, l)| format!("{l} ({})", pct(*r)))
        .collect();
    s.push_str(
        "\nunexplained: the share of the target's change from the base that no linear recipe \
         of these models reproduces (the global best's residual).\n",
    );
    if flagged.is_empty() {
        s.push_str("every row is explained to within 5%\n");
    } else {
        s.push_str(&format!(
            "not explained (over 5%: extra training, a missing source, or a non-linear merge): {}\n",
            reports::first_few(&flagged, 8)
        ));
    }
    s
}

/// A row whose relative residual is above this is reported as not explained.
const UNEXPLAINED: f64 = 0.05;

/// Coefficients per merge block (the first row of each block), for JSON.
fn coef_by_block(c: &Coefs, p: &Problem<'_>) -> Vec<Vec<f64>> {
    (0..p.blocks.len())
        .map(|b| {
            (0..p.rows.len())
                .find(|&r| p.block_of_row[r] == b)
                .map(|r| c[r].clone())
                .unwrap_or_default()
        })
        .collect()
}

fn short_blocks(blocks: &[Block], alpha: &[f64]) -> String {
    let parts: Vec<String> = blocks
        .iter()
        .zip(alpha)
        .filter(|(_, a)| **a != 0.0)
        .map(|(b, a)| format!("{b}={}", show(*a)))
        .collect();
    reports::first_few(&parts, 4)
}

/// Merges the recipe into `out` and measures the result against the target with the
/// problem's objective. Returns (objective, per-row similarity).
fn apply(
    recipe: &str,
    dir: &Path,
    out: &Path,
    target: &Path,
    problem: &Problem<'_>,
    global: &Global,
) -> Result<(f64, Vec<f64>)> {
    let parsed = crate::merge::recipe::parse(recipe).context("the fitted recipe")?;
    // Existing files were refused (or --force given) before the pass.
    let options = crate::merge::Options {
        overwrite: true,
        input_hashes: false,
        ..Default::default()
    };
    let bar = Bar::new("merging", global.quiet);
    crate::merge::run(&parsed, dir, out, &options, &bar)?;
    drop(bar);
    let models = open_all(&[out.to_path_buf(), target.to_path_buf()])?;
    let arch: Arch = models[0]
        .detection
        .arch()
        .context("the clone's architecture")?;
    let grouping = Grouping::for_arch(arch);
    let plan = Plan::new(models.iter().map(|m| &m.ckpt).collect());
    let all: Vec<usize> = (0..plan.entries().len()).collect();
    let bar = Bar::new("measuring", global.quiet);
    let inner = gather(
        &plan,
        &grouping,
        &all,
        GramSpec::default(),
        &Pass::new(&bar),
    )?;
    drop(bar);
    let rows: Vec<f64> = inner.rows.iter().map(|r| r.gram.cosine(0, 1)).collect();
    let region: Vec<usize> = (0..rows.len()).filter(|&r| problem.region[r]).collect();
    let measured = match problem.objective {
        Objective::Mean => region.iter().map(|&r| rows[r]).sum::<f64>() / region.len() as f64,
        Objective::Flat => {
            let sum = inner.sum_rows(region.iter().copied());
            sum.gram.cosine(0, 1)
        }
    };
    Ok((measured, rows))
}
