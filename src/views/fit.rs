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
//! * **Greedy** (what mergers do by hand): at each step try every source with both
//!   operations, one α or one α per merge block, each α found by a bounded 1-D search
//!   (a grid, then golden-section refinement); keep the step that raises the objective
//!   most; stop after `max_steps` or when the gain is under `min_gain`.
//! * **Global**: per merge block, the affine least-squares fit of τ_T by the deltas
//!   (weights summing to 1 with the base's), solved from the normal equations G·w = r with
//!   faer: the best any linear recipe of these models can do, and its recipe.
//! * **Residuals**: per row, ‖τ_T − Σ wₖτₖ‖ / ‖τ_T‖ of the global fit: the part of the
//!   target's change from the base that no linear recipe of these sources explains (extra
//!   training, a missing source, a non-linear merge).

use faer::{Mat, Side};
use serde::Serialize;

use crate::catalog::{Block, Component, GroupInfo};
use crate::gram::Gram;

/// Model indices in the Gram: 0 base, 1 target, 2 start, 3.. sources.
pub const BASE: usize = 0;
pub const TARGET: usize = 1;
pub const START: usize = 2;
pub const FIRST_SOURCE: usize = 3;

/// What is maximised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Mean of the similarities of the region's rows (the published convention).
    Mean,
    /// Cosine of the region's parameters flattened.
    Flat,
}

/// The operation of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// C x (1-alpha) + M x alpha
    WeightedSum,
    /// C + (M - base) x alpha
    AddDifference,
}

/// The problem: rows, their Grams, which rows count, bounds.
pub struct Problem<'a> {
    pub rows: &'a [GroupInfo],
    /// Per row, the Gram centred on the base (index 0).
    pub grams: &'a [Gram],
    /// The merge blocks, in order; `block_of_row[r]` indexes it.
    pub blocks: Vec<Block>,
    pub block_of_row: Vec<usize>,
    /// Rows in the objective.
    pub region: Vec<bool>,
    pub objective: Objective,
    pub bounds: (f64, f64),
    pub per_block: bool,
    /// Number of deltas besides the target: start and sources.
    pub k: usize,
}

/// A model as coefficients on [τ_S, τ₁..τₖ], one vector per row.
pub type Coefs = Vec<Vec<f64>>;

/// One step found by the greedy search.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Index of the source (0-based among the sources).
    pub source: usize,
    pub op: Op,
    /// One α (len 1) or one per merge block.
    pub alpha: Vec<f64>,
    /// The objective after the step.
    pub objective: f64,
    /// Per row similarity after the step.
    pub rows: Vec<f64>,
}

impl Problem<'_> {
    /// Coefficient index (into `Coefs` rows) of model index `m` (2.. in the Gram).
    fn slot(m: usize) -> usize {
        m - START
    }

    /// The start model: all weight on τ_S.
    pub fn start(&self) -> Coefs {
        let mut c = vec![0.0; self.k];
        c[0] = 1.0;
        vec![c; self.rows.len()]
    }

    /// cos(C_r, T_r) in row r: the similarity `sim` would print.
    pub fn row_similarity(&self, r: usize, c: &[f64]) -> f64 {
        let (ct, cc, tt) = self.row_products(r, c);
        crate::gram::cosine(cc, ct, tt)
    }

    /// (⟨C,T⟩, ‖C‖², ‖T‖²) of a row.
    fn row_products(&self, r: usize, c: &[f64]) -> (f64, f64, f64) {
        let g = &self.grams[r];
        let bb = g.get(BASE, BASE);
        let bt = g.get(BASE, TARGET);
        let tt = bb + 2.0 * bt + g.get(TARGET, TARGET);
        let mut ct = bb + bt;
        let mut cc = bb;
        for (i, &ci) in c.iter().enumerate() {
            if ci == 0.0 {
                continue;
            }
            let mi = i + START;
            ct += ci * (g.get(mi, BASE) + g.get(mi, TARGET));
            cc += 2.0 * ci * g.get(mi, BASE);
            for (j, &cj) in c.iter().enumerate() {
                if cj != 0.0 {
                    cc += ci * cj * g.get(mi, j + START);
                }
            }
        }
        (ct, cc, tt)
    }

    /// The objective of a model over the region.
    pub fn objective_of(&self, c: &Coefs) -> f64 {
        let region: Vec<usize> = (0..self.rows.len()).filter(|&r| self.region[r]).collect();
        if region.is_empty() {
            return 0.0;
        }
        match self.objective {
            Objective::Mean => {
                region
                    .iter()
                    .map(|&r| self.row_similarity(r, &c[r]))
                    .sum::<f64>()
                    / region.len() as f64
            }
            Objective::Flat => {
                let (mut ct, mut cc, mut tt) = (0.0, 0.0, 0.0);
                for &r in &region {
                    let (a, b, t) = self.row_products(r, &c[r]);
                    ct += a;
                    cc += b;
                    tt += t;
                }
                crate::gram::cosine(cc, ct, tt)
            }
        }
    }

    /// Applies a step with per-row α.
    fn apply(
        &self,
        c: &Coefs,
        source: usize,
        op: Op,
        alpha_of_row: &dyn Fn(usize) -> f64,
    ) -> Coefs {
        let s = Self::slot(FIRST_SOURCE + source);
        c.iter()
            .enumerate()
            .map(|(r, row)| {
                let a = alpha_of_row(r);
                let mut out: Vec<f64> = match op {
                    Op::WeightedSum => row.iter().map(|x| x * (1.0 - a)).collect(),
                    Op::AddDifference => row.clone(),
                };
                out[s] += a;
                out
            })
            .collect()
    }

    /// Best α in the bounds for a 1-D objective: a grid of 41 points, then golden-section
    /// refinement around the best (to ~1e-10 of the range).
    fn maximise(&self, f: impl Fn(f64) -> f64) -> (f64, f64) {
        let (lo, hi) = self.bounds;
        let n = 40;
        let mut best = (lo, f(lo));
        for i in 1..=n {
            let x = lo + (hi - lo) * i as f64 / n as f64;
            let v = f(x);
            if v > best.1 {
                best = (x, v);
            }
        }
        let step = (hi - lo) / n as f64;
        let (mut a, mut b) = ((best.0 - step).max(lo), (best.0 + step).min(hi));
        let g = (5f64.sqrt() - 1.0) / 2.0;
        let mut x1 = b - g * (b - a);
        let mut x2 = a + g * (b - a);
        let (mut f1, mut f2) = (f(x1), f(x2));
        for _ in 0..60 {
            if f1 > f2 {
                b = x2;
                x2 = x1;
                f2 = f1;
                x1 = b - g * (b - a);
                f1 = f(x1);
            } else {
                a = x1;
                x1 = x2;
                f1 = f2;
                x2 = a + g * (b - a);
                f2 = f(x2);
            }
        }
        let x = (a + b) / 2.0;
        let v = f(x);
        if v >= best.1 { (x, v) } else { best }
    }

    /// The best α (or α per block) for one candidate step from `c`.
    fn best_step(&self, c: &Coefs, source: usize, op: Op) -> (Vec<f64>, Coefs, f64) {
        if !self.per_block {
            let (a, _) = self.maximise(|a| self.objective_of(&self.apply(c, source, op, &|_| a)));
            let next = self.apply(c, source, op, &|_| a);
            let obj = self.objective_of(&next);
            return (vec![a], next, obj);
        }
        // One α per merge block; blocks outside the region stay at 0 (untouched).
        let mut alpha = vec![0.0; self.blocks.len()];
        let sweeps = if self.objective == Objective::Flat {
            4
        } else {
            1
        };
        for _ in 0..sweeps {
            for b in 0..self.blocks.len() {
                let in_region =
                    (0..self.rows.len()).any(|r| self.block_of_row[r] == b && self.region[r]);
                if !in_region {
                    continue;
                }
                let (best, _) = self.maximise(|a| {
                    let mut trial = alpha.clone();
                    trial[b] = a;
                    self.objective_of(&self.apply(c, source, op, &|r| trial[self.block_of_row[r]]))
                });
                alpha[b] = best;
            }
        }
        let next = self.apply(c, source, op, &|r| alpha[self.block_of_row[r]]);
        let obj = self.objective_of(&next);
        (alpha, next, obj)
    }

    /// The greedy search from the start model.
    pub fn greedy(&self, sources: usize, max_steps: usize, min_gain: f64) -> (Vec<Step>, Coefs) {
        let mut c = self.start();
        let mut current = self.objective_of(&c);
        let mut steps = Vec::new();
        for _ in 0..max_steps {
            let mut best: Option<(usize, Op, Vec<f64>, Coefs, f64)> = None;
            for s in 0..sources {
                for op in [Op::WeightedSum, Op::AddDifference] {
                    let (alpha, next, obj) = self.best_step(&c, s, op);
                    if best.as_ref().is_none_or(|b| obj > b.4 + 1e-15) {
                        best = Some((s, op, alpha, next, obj));
                    }
                }
            }
            let Some((source, op, alpha, next, obj)) = best else {
                break;
            };
            if obj - current < min_gain {
                break;
            }
            current = obj;
            c = next;
            let rows = (0..self.rows.len())
                .map(|r| self.row_similarity(r, &c[r]))
                .collect();
            steps.push(Step {
                source,
                op,
                alpha,
                objective: obj,
                rows,
            });
        }
        (steps, c)
    }

    /// Per merge block, the affine least-squares weights of [start, sources] (the base
    /// takes 1 − their sum) that best reproduce the target's delta; then per row the model
    /// they give.
    pub fn global(&self) -> (Vec<Vec<f64>>, Coefs) {
        let k = self.k;
        let mut weights = Vec::new();
        for b in 0..self.blocks.len() {
            let rows: Vec<usize> = (0..self.rows.len())
                .filter(|&r| self.block_of_row[r] == b)
                .collect();
            let g = Mat::<f64>::from_fn(k, k, |i, j| {
                rows.iter()
                    .map(|&r| self.grams[r].get(i + START, j + START))
                    .sum()
            });
            let rhs: Vec<f64> = (0..k)
                .map(|i| {
                    rows.iter()
                        .map(|&r| self.grams[r].get(i + START, TARGET))
                        .sum()
                })
                .collect();
            weights.push(solve_psd(&g, &rhs));
        }
        let coefs = (0..self.rows.len())
            .map(|r| weights[self.block_of_row[r]].clone())
            .collect();
        (weights, coefs)
    }

    /// ‖τ_T − Σ cₖτₖ‖ / ‖τ_T‖ per row for a model.
    pub fn residuals(&self, c: &Coefs) -> Vec<f64> {
        (0..self.rows.len())
            .map(|r| {
                let g = &self.grams[r];
                let tt = g.get(TARGET, TARGET);
                let mut res = tt;
                for (i, &ci) in c[r].iter().enumerate() {
                    res -= 2.0 * ci * g.get(i + START, TARGET);
                    for (j, &cj) in c[r].iter().enumerate() {
                        res += ci * cj * g.get(i + START, j + START);
                    }
                }
                if tt > 0.0 {
                    (res.max(0.0) / tt).sqrt()
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// Solves G·w = r for a symmetric positive semi-definite G (a Gram matrix), through its
/// eigendecomposition: directions with eigenvalues below 1e-12 of the largest (sources that
/// are combinations of others) get no weight, so a rank-deficient set still gives the
/// minimum-norm least-squares answer.
pub fn solve_psd(g: &Mat<f64>, r: &[f64]) -> Vec<f64> {
    let n = r.len();
    let Ok(evd) = g.self_adjoint_eigen(Side::Lower) else {
        return vec![0.0; n];
    };
    let s = evd.S().column_vector();
    let u = evd.U();
    let top = (0..n).map(|i| s[i].abs()).fold(0.0, f64::max);
    let mut w = vec![0.0; n];
    for k in 0..n {
        if s[k] <= 1e-12 * top || top == 0.0 {
            continue;
        }
        let proj: f64 = (0..n).map(|i| u[(i, k)] * r[i]).sum::<f64>() / s[k];
        for (i, wi) in w.iter_mut().enumerate() {
            *wi += proj * u[(i, k)];
        }
    }
    w
}

/// The rows that a region names: `out`, `in`, `mid`, `unet`, `te`, `vae`, `all`
/// (comma-separated).
pub fn region_rows(rows: &[GroupInfo], spec: &str) -> Result<Vec<bool>, String> {
    let mut keep = vec![false; rows.len()];
    for part in spec.split(',').map(|p| p.trim().to_ascii_lowercase()) {
        for (r, g) in rows.iter().enumerate() {
            let hit = match part.as_str() {
                "out" => matches!(g.block, Some(Block::Out(_))),
                "in" => matches!(g.block, Some(Block::In(_))),
                "mid" => g.block == Some(Block::Mid),
                "unet" => g.block.is_some(),
                "te" => matches!(g.component, Component::Te1 | Component::Te2),
                "vae" => g.component == Component::Vae,
                "all" => g.component != Component::Other,
                other => {
                    return Err(format!(
                        "unknown region '{other}'; use out, in, mid, unet, te, vae or all"
                    ));
                }
            };
            keep[r] |= hit;
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psd_solver_handles_dependent_sources() {
        // Columns 0 and 1 equal: minimum-norm answer splits the weight.
        let g = Mat::<f64>::from_fn(2, 2, |_, _| 4.0);
        let w = solve_psd(&g, &[8.0, 8.0]);
        assert!((w[0] - 1.0).abs() < 1e-12 && (w[1] - 1.0).abs() < 1e-12);
        let g = Mat::<f64>::from_fn(2, 2, |i, j| if i == j { 2.0 } else { 0.5 });
        let w = solve_psd(&g, &[1.0, 3.0]);
        assert!(
            (2.0 * w[0] + 0.5 * w[1] - 1.0).abs() < 1e-12
                && (0.5 * w[0] + 2.0 * w[1] - 3.0).abs() < 1e-12
        );
    }
}
