//! Finding the linear recipe that reproduces a target, from inner products alone.
//!
//! Every step of a linear recipe keeps the model in the affine span of the base B, the
//! start S and the sources Mᵢ: with deltas τ = model − B, a model is C = B + Σₖ cₖ·τₖ (one
//! coefficient vector per report row, since block weights differ by block). A weighted sum
//! toward Mᵢ maps c to (1−α)·c + α·eᵢ; an add difference `(Mᵢ − B) x α` maps it to c + α·eᵢ.
//! So the similarity of any candidate to the target T, in any row, follows from that row's
//! Gram matrix of [B, τ_T, τ_S, τ₁..τₖ] (gathered once, centred on B):
//!
//! ⟨C, T⟩ = ⟨B,B⟩ + ⟨B,τ_T⟩ + Σₖ cₖ(⟨τₖ,B⟩ + ⟨τₖ,τ_T⟩),  ‖C‖² = ⟨B,B⟩ + 2Σₖ cₖ⟨τₖ,B⟩ + cᵀGc.
//!
//! * **Greedy** (what mergers do by hand): at each step try every model (the start and the
//!   sources) with both operations, one α or one α per merge block; keep the steps that
//!   raise the objective most; stop after `max_steps` or when the gain is under
//!   `min_gain`. Each α comes from a bounded 1-D search (a grid, then golden-section
//!   refinement), and when a step is added all earlier α are re-optimised with it
//!   (coordinate ascent), so an early step is not locked in; a small beam keeps the best
//!   few sequences at each depth.
//! * **Global**: per merge block, the affine least-squares fit of τ_T by the deltas
//!   (weights summing to 1 with the base's), solved from the normal equations G·w = r with
//!   faer: the best any linear recipe of these models can do, and its recipe.
//! * **Residuals**: per row, ‖τ_T − Σ wₖτₖ‖ / ‖τ_T‖ of the global fit: the part of the
//!   target's change from the base that no linear recipe of these sources explains (extra
//!   training, a missing source, a non-linear merge).

//!
//! [`fit`] runs all three on the inner products of one pass and returns a [`FitResult`];
//! [`measure`] scores a built clone the same way.

mod problem;
pub mod recipe;

use serde::Serialize;

use ckpt_core::catalog::{Block, Grouping};
use ckpt_core::gram::{GramSpec, InnerProducts};
use ckpt_core::pass::{Pass, PassError, Plan};
use ckpt_read::Checkpoint;

/// The inner products a fit reads: every key of `models`, per row, in one pass (centred on
/// model 0, the base, when `center`; a clone measured against its target is not).
pub fn inner_products(
    models: &[&Checkpoint],
    grouping: &Grouping,
    center: bool,
    pass: &Pass<'_>,
) -> Result<InnerProducts, PassError> {
    let plan = Plan::new(models.to_vec());
    let all: Vec<usize> = (0..plan.entries().len()).collect();
    let spec = GramSpec {
        center: center.then_some(0),
        ..GramSpec::default()
    };
    ckpt_core::gram::gather(&plan, grouping, &all, spec, pass)
}
pub use problem::*;

/// Decimals of the weights a fitted recipe holds: predictions are those of the recipe as
/// written.
pub const RECIPE_DIGITS: i32 = 9;

/// What to fit and how.
#[derive(Clone, Debug)]
pub struct FitSpec {
    /// For each role (base, target, start, sources...), the index of its file in the pass
    /// (the start is often the base's file).
    pub phys: Vec<usize>,
    /// The rows whose similarity counts.
    pub region: Vec<bool>,
    pub objective: Objective,
    pub bounds: (f64, f64),
    pub per_block: bool,
    pub max_steps: usize,
    pub min_gain: f64,
    pub beam: usize,
}

/// Why there is nothing to fit.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(
        "fit needs a checkpoint of an architecture the catalog knows ({}) to map block weights",
        ckpt_core::catalog::Arch::ids()
    )]
    UnknownArchitecture,
    #[error("the region selects no rows these checkpoints have")]
    EmptyRegion,
}

/// What the search found. Per-row vectors are indexed like the grouping's rows.
#[derive(Clone, Debug, Serialize)]
pub struct FitResult {
    /// Row labels.
    pub rows: Vec<String>,
    /// The rows the files have tensors in (the others are left out of every report).
    pub present: Vec<usize>,
    /// The merge blocks, in SuperMerger's order; steps' per-block α are indexed like them.
    pub blocks: Vec<Block>,
    /// Per row, its entry in `blocks` (`None`: no entry weighs it, as Flux's VAE).
    pub block_of_row: Vec<Option<usize>>,
    /// The rows no entry of the block list weighs (a recipe names them to keep them).
    pub unweighted: Vec<String>,
    /// The rows in the objective (the asked region, present rows only).
    pub region: Vec<bool>,
    pub objective: Objective,
    pub start_objective: f64,
    pub start_rows: Vec<f64>,
    /// The greedy steps, α rounded to [`RECIPE_DIGITS`].
    pub steps: Vec<Step>,
    /// The model the steps build, as coefficients on [start, sources] per row.
    pub greedy: Coefs,
    pub greedy_objective: f64,
    pub greedy_rows: Vec<f64>,
    /// Per merge block, the global best's weights of [start, sources] (the base takes the
    /// rest), rounded to [`RECIPE_DIGITS`].
    pub global_weights: Vec<Vec<f64>>,
    pub global_objective: f64,
    pub global_rows: Vec<f64>,
    /// Per row, the share of the target's change that the global best does not explain.
    pub residuals: Vec<f64>,
    pub search_seconds: f64,
}

impl FitResult {
    /// The greedy coefficients per merge block (those of the block's first row).
    pub fn greedy_by_block(&self) -> Vec<Vec<f64>> {
        (0..self.blocks.len())
            .map(|b| {
                (0..self.rows.len())
                    .find(|&r| self.block_of_row[r] == Some(b))
                    .map(|r| self.greedy[r].clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The base's weight in the global best, per block.
    pub fn global_base_weights(&self) -> Vec<f64> {
        self.global_weights
            .iter()
            .map(|w| 1.0 - w.iter().sum::<f64>())
            .collect()
    }
}

/// Fits the target from the inner products of the distinct files (centred on the base,
/// file 0), per `spec`.
pub fn fit(
    grouping: &Grouping,
    inner: &InnerProducts,
    spec: &FitSpec,
) -> Result<FitResult, FitError> {
    let t0 = std::time::Instant::now();
    let arch = grouping
        .layout()
        .arch()
        .ok_or(FitError::UnknownArchitecture)?;
    let groups = grouping.groups();
    let grams: Vec<_> = inner
        .rows
        .iter()
        .map(|r| expand(&r.gram, &spec.phys))
        .collect();
    let blocks = arch.merge_blocks().to_vec();
    let block_of_row: Vec<Option<usize>> = groups
        .iter()
        .map(|g| {
            let block = g.weight_block?;
            Some(
                blocks
                    .iter()
                    .position(|b| *b == block)
                    .expect("a merge block"),
            )
        })
        .collect();
    let unweighted = groups
        .iter()
        .filter(|g| g.weight_block.is_none())
        .map(|g| g.label.clone())
        .collect();
    let present: Vec<usize> = (0..groups.len())
        .filter(|&r| inner.rows[r].tensors > 0)
        .collect();
    let region: Vec<bool> = (0..groups.len())
        .map(|r| spec.region[r] && present.contains(&r))
        .collect();
    if !region.contains(&true) {
        return Err(FitError::EmptyRegion);
    }
    let problem = Problem {
        rows: groups,
        grams: &grams,
        blocks: blocks.clone(),
        block_of_row: block_of_row.clone(),
        region: region.clone(),
        objective: spec.objective,
        bounds: spec.bounds,
        per_block: spec.per_block,
        k: spec.phys.len() - START,
    };
    let start = problem.start();
    let found = problem.search(spec.max_steps, spec.min_gain, spec.beam);
    let (steps, greedy) = problem.rounded(&found, RECIPE_DIGITS);
    let scale = 10f64.powi(RECIPE_DIGITS);
    let global_weights: Vec<Vec<f64>> = problem
        .global()
        .0
        .iter()
        .map(|w| w.iter().map(|x| (x * scale).round() / scale).collect())
        .collect();
    let mut start_coefs = vec![0.0; spec.phys.len() - START];
    start_coefs[0] = 1.0;
    let global_coefs: Coefs = block_of_row
        .iter()
        .map(|b| b.map_or(start_coefs.clone(), |b| global_weights[b].clone()))
        .collect();
    let row_sim = |c: &Coefs| -> Vec<f64> {
        (0..groups.len())
            .map(|r| problem.row_similarity(r, &c[r]))
            .collect()
    };
    let start_objective = problem.objective_of(&start);
    Ok(FitResult {
        rows: groups.iter().map(|g| g.label.clone()).collect(),
        present,
        blocks,
        start_objective,
        start_rows: row_sim(&start),
        greedy_objective: steps.last().map_or(start_objective, |s| s.objective),
        greedy_rows: row_sim(&greedy),
        steps,
        global_rows: row_sim(&global_coefs),
        global_objective: problem.objective_of(&global_coefs),
        residuals: problem.residuals(&global_coefs),
        greedy,
        global_weights,
        block_of_row,
        unweighted,
        region,
        objective: spec.objective,
        search_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A built clone scored against the target (the pass's models 0 and 1) as the fit scored
/// it: (the objective over `region`, the similarity of every row).
pub fn measure(inner: &InnerProducts, region: &[bool], objective: Objective) -> (f64, Vec<f64>) {
    let rows: Vec<f64> = inner.rows.iter().map(|r| r.gram.cosine(0, 1)).collect();
    let chosen: Vec<usize> = (0..rows.len()).filter(|&r| region[r]).collect();
    let measured = match objective {
        Objective::Mean => chosen.iter().map(|&r| rows[r]).sum::<f64>() / chosen.len() as f64,
        Objective::Flat => inner.sum_rows(chosen.iter().copied()).gram.cosine(0, 1),
    };
    (measured, rows)
}
