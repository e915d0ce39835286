//! The recipes a fit found, in the notation `merge` runs: the greedy steps (one per line,
//! as mergers write them) and the global best (one weighted sum with per-block weights),
//! with paths relative to the recipe's folder where they can be. Each is a parsed
//! [`Recipe`], ready for the merge engine, whose text is what a recipe file holds.

use std::path::{Path, PathBuf};

use super::{FitResult, Op, RECIPE_DIGITS};
use crate::merge::recipe::writer::{Names, QuoteError, quote_path};
use crate::merge::recipe::{self, ParseError, Recipe};

/// The files of a fit, by role, as given on the command line.
pub struct Files<'a> {
    pub base: &'a Path,
    pub start: &'a Path,
    pub sources: &'a [PathBuf],
}

/// How the fit was asked for, as the user wrote it (for headings).
pub struct Asked<'a> {
    pub region: &'a str,
    pub objective: &'a str,
}

/// The recipes found, with the names they give the models.
pub struct Recipes {
    pub start_name: String,
    pub source_names: Vec<String>,
    /// One expression per greedy step.
    pub expressions: Vec<String>,
    /// One step per line, as mergers write them.
    pub greedy: Recipe,
    /// One weighted sum with per-block weights.
    pub global: Recipe,
}

/// Why a fitted recipe could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error(transparent)]
    Quote(#[from] QuoteError),
    /// A recipe this module wrote that does not parse (a bug).
    #[error("the fitted recipe: {0}")]
    Parse(#[from] ParseError),
}

/// Similarities near 100% differ in the fifth decimal: six are shown (as the report does).
fn pct(x: f64) -> String {
    format!("{:.6}%", x * 100.0)
}

/// A weight as recipe text, to the recipe's decimals.
fn number(x: f64) -> String {
    let s = format!("{:.*}", RECIPE_DIGITS as usize, x);
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

/// The greedy and the global recipe, with paths relative to `dir` (the recipe's folder,
/// canonical) where they can be.
pub fn recipes(
    f: &FitResult,
    files: &Files<'_>,
    target: &str,
    asked: &Asked<'_>,
    dir: &Path,
) -> Result<Recipes, RecipeError> {
    let mut names = Names::reserving(&["base", "start", "alpha", "OUT"]);
    let source_names: Vec<String> = files.sources.iter().map(|p| names.for_file(p)).collect();
    let mut bindings = format!("base = {}\n", quote_path(files.base, Some(dir))?);
    let start_is_base =
        std::fs::canonicalize(files.start).ok() == std::fs::canonicalize(files.base).ok();
    let start_name = if start_is_base { "base" } else { "start" }.to_string();
    if !start_is_base {
        bindings.push_str(&format!(
            "start = {}\n",
            quote_path(files.start, Some(dir))?
        ));
    }
    for (n, p) in source_names.iter().zip(files.sources) {
        bindings.push_str(&format!("{n} = {}\n", quote_path(p, Some(dir))?));
    }
    let header = |what: &str, obj: f64| {
        format!(
            "# {what} by ckpt-diff fit: target {target}, region {}, objective {}; predicted {}\n",
            asked.region,
            asked.objective,
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
    // Rows no block entry weighs (Flux's VAE) would be zero in a sum of weighted terms:
    // the start keeps them, by name.
    let weights = |w: &[f64], keep: bool| -> String {
        if f.unweighted.is_empty() {
            return alpha_text(w);
        }
        let mut parts: Vec<String> = f
            .blocks
            .iter()
            .zip(w)
            .map(|(b, v)| format!("{b}: {}", number(*v)))
            .collect();
        if keep {
            parts.extend(f.unweighted.iter().map(|row| format!("{row}: 1")));
        }
        format!("{{{}}}", parts.join(", "))
    };
    let mut terms = vec!["base x w_base".to_string()];
    let mut params = format!(
        "    w_base = {}\n",
        weights(&f.global_base_weights(), false)
    );
    let mut model_names = vec![start_name.clone()];
    model_names.extend(source_names.iter().cloned());
    for (i, n) in model_names.iter().enumerate() {
        let w: Vec<f64> = f.global_weights.iter().map(|b| b[i]).collect();
        let keep = i == 0 && !f.unweighted.is_empty();
        if w.iter().all(|x| *x == 0.0) && !keep {
            continue;
        }
        terms.push(format!("{n} x w_{i}"));
        params.push_str(&format!("    w_{i} = {}\n", weights(&w, keep)));
    }
    global.push_str(&format!("OUT = {}\n{params}", terms.join(" + ")));
    Ok(Recipes {
        start_name,
        source_names,
        expressions,
        greedy: recipe::parse(&greedy)?,
        global: recipe::parse(&global)?,
    })
}
