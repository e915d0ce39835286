//! The search itself: a [`Problem`] of per-row Grams, the greedy beam search over steps,
//! the global best per block, and the residuals (see the parent module for the formulas).

use faer::{Mat, Side};
use serde::Serialize;

use ckpt_core::catalog::{Block, GroupInfo};
use ckpt_core::gram::Gram;

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
    /// The merge blocks, in order; `block_of_row[r]` indexes it (`None`: no entry of the
    /// block list weighs the row, as Flux's VAE; per-block α leave it as the start has it).
    pub blocks: Vec<Block>,
    pub block_of_row: Vec<Option<usize>>,
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

/// A step of a candidate sequence.
#[derive(Clone, Debug)]
struct Planned {
    source: usize,
    op: Op,
    /// One α, or one per merge block.
    alpha: Vec<f64>,
}

/// One step found by the greedy search.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The model the step moves toward: 0 is the start, 1.. the sources.
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
    /// The start model: all weight on τ_S.
    pub fn start(&self) -> Coefs {
        let mut c = vec![0.0; self.k];
        c[0] = 1.0;
        vec![c; self.rows.len()]
    }

    /// cos(C_r, T_r) in row r: the similarity `sim` would print.
    pub fn row_similarity(&self, r: usize, c: &[f64]) -> f64 {
        let (ct, cc, tt) = self.row_products(r, c);
        ckpt_core::gram::cosine(cc, ct, tt)
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
                ckpt_core::gram::cosine(cc, ct, tt)
            }
        }
    }

    /// The model a sequence of steps builds from the start, in row `r`.
    fn replay_row(&self, r: usize, steps: &[Planned]) -> Vec<f64> {
        let mut c = vec![0.0; self.k];
        c[0] = 1.0;
        for st in steps {
            let a = self.alpha_index(r).map_or(0.0, |i| st.alpha[i]);
            if st.op == Op::WeightedSum {
                c.iter_mut().for_each(|x| *x *= 1.0 - a);
            }
            c[st.source] += a;
        }
        c
    }

    /// Which α of a step applies to row `r` (none: the row keeps what it has).
    fn alpha_index(&self, r: usize) -> Option<usize> {
        if self.per_block {
            self.block_of_row[r]
        } else {
            Some(0)
        }
    }

    /// The model a sequence of steps builds from the start.
    fn replay(&self, steps: &[Planned]) -> Coefs {
        (0..self.rows.len())
            .map(|r| self.replay_row(r, steps))
            .collect()
    }

    /// Row `r`'s products along the line C₀ + α·C₁ in coefficient space.
    fn line(&self, r: usize, c0: &[f64], c1: &[f64]) -> Line {
        let g = &self.grams[r];
        let (ct, cc, tt) = self.row_products(r, c0);
        let (mut b, mut d, mut e) = (0.0, 0.0, 0.0);
        for (i, &x) in c1.iter().enumerate() {
            if x == 0.0 {
                continue;
            }
            let mi = i + START;
            b += x * (g.get(mi, BASE) + g.get(mi, TARGET));
            d += x * g.get(mi, BASE);
            for j in 0..self.k {
                let gij = g.get(mi, j + START);
                d += x * c0[j] * gij;
                e += x * c1[j] * gij;
            }
        }
        Line {
            a: ct,
            b,
            c: cc,
            d,
            e,
            t: tt,
        }
    }

    /// The best value of one α (step `j`, block or scalar slot `slot`) with every other α
    /// fixed. Every step is affine in each of its α, so along this coordinate each row's
    /// ⟨C,T⟩ is linear and ‖C‖² quadratic: the flattened cosine, and the mean over a single
    /// row, have their maximum in closed form; a mean over several rows is maximised by a
    /// bounded 1-D search on those closed-form curves.
    fn best_alpha(&self, steps: &mut [Planned], j: usize, slot: usize) -> Option<f64> {
        let affected: Vec<usize> = (0..self.rows.len())
            .filter(|&r| self.alpha_index(r) == Some(slot))
            .collect();
        if !affected.iter().any(|&r| self.region[r]) {
            return None;
        }
        let keep = steps[j].alpha[slot];
        let mut lines = Vec::new();
        for &r in affected.iter().filter(|&&r| self.region[r]) {
            steps[j].alpha[slot] = 0.0;
            let c0 = self.replay_row(r, steps);
            steps[j].alpha[slot] = 1.0;
            let c1: Vec<f64> = self
                .replay_row(r, steps)
                .iter()
                .zip(&c0)
                .map(|(a, b)| a - b)
                .collect();
            lines.push(self.line(r, &c0, &c1));
        }
        steps[j].alpha[slot] = keep;
        let (lo, hi) = self.bounds;
        let best = match self.objective {
            Objective::Flat => {
                let mut total = lines.iter().fold(Line::default(), |acc, l| acc.plus(l));
                for r in (0..self.rows.len())
                    .filter(|&r| self.region[r] && self.alpha_index(r) != Some(slot))
                {
                    let c = self.replay_row(r, steps);
                    let (ct, cc, tt) = self.row_products(r, &c);
                    total = total.plus(&Line {
                        a: ct,
                        c: cc,
                        t: tt,
                        ..Line::default()
                    });
                }
                total.best(lo, hi)
            }
            Objective::Mean if lines.len() == 1 => lines[0].best(lo, hi),
            Objective::Mean => maximise(lo, hi, |x| lines.iter().map(|l| l.cosine(x)).sum()),
        };
        Some(best)
    }

    /// Coordinate ascent on every α of a sequence (slots outside the region stay 0): each
    /// α in turn gets its best value with the others fixed, until no α moves by more than
    /// 1e-12 or `sweeps` passes are done.
    fn polish(&self, steps: &mut [Planned], sweeps: usize) {
        let width = steps.first().map_or(0, |s| s.alpha.len());
        for _ in 0..sweeps {
            let mut moved: f64 = 0.0;
            for j in 0..steps.len() {
                for slot in 0..width {
                    if let Some(best) = self.best_alpha(steps, j, slot) {
                        moved = moved.max((best - steps[j].alpha[slot]).abs());
                        steps[j].alpha[slot] = best;
                    }
                }
            }
            if moved <= 1e-12 {
                break;
            }
        }
    }

    /// Beam search over step sequences: at each depth every kept sequence is extended by
    /// every (model, operation), all α of the extended sequence are re-optimised together,
    /// and the `beam` best sequences go on. Stops after `max_steps` or when the best
    /// sequence gains less than `min_gain`. With `beam` 1 this is the greedy search mergers
    /// run by hand, but with earlier α corrected as later steps arrive.
    pub fn search(&self, max_steps: usize, min_gain: f64, beam: usize) -> Vec<Step> {
        let width = if self.per_block { self.blocks.len() } else { 1 };
        let mut kept: Vec<(Vec<Planned>, f64)> =
            vec![(Vec::new(), self.objective_of(&self.start()))];
        let mut best = kept[0].clone();
        for _ in 0..max_steps {
            let mut next: Vec<(Vec<Planned>, f64)> = Vec::new();
            for (seq, _) in &kept {
                for source in 0..self.k {
                    for op in [Op::WeightedSum, Op::AddDifference] {
                        // Moving toward the start itself only rescales the start's delta.
                        if source == 0 && op == Op::WeightedSum {
                            continue;
                        }
                        let mut trial = seq.clone();
                        trial.push(Planned {
                            source,
                            op,
                            alpha: vec![0.0; width],
                        });
                        self.polish(&mut trial, 200);
                        let obj = self.objective_of(&self.replay(&trial));
                        next.push((trial, obj));
                    }
                }
            }
            // Ties (equal to 1e-12, as reorderings of one recipe are) keep the order of
            // `next`, where sequences whose earlier steps gained more come first; and a
            // sequence that builds the same model as a better one is dropped, so the beam
            // holds different models.
            let tie = |x: f64| (x * 1e12).round();
            next.sort_by(|a, b| tie(b.1).total_cmp(&tie(a.1)));
            let mut chosen: Vec<(Vec<Planned>, f64)> = Vec::new();
            let mut models: Vec<Coefs> = Vec::new();
            for cand in next {
                if chosen.len() == beam.max(1) {
                    break;
                }
                let c = self.replay(&cand.0);
                if models.iter().any(|m| same_model(m, &c)) {
                    continue;
                }
                models.push(c);
                chosen.push(cand);
            }
            let next = chosen;
            let Some(top) = next.first().cloned() else {
                break;
            };
            if top.1 - best.1 < min_gain {
                break;
            }
            best = top;
            kept = next;
        }
        self.steps_of(&best.0)
    }

    /// The report of a sequence: after each step, the objective and every row.
    fn steps_of(&self, seq: &[Planned]) -> Vec<Step> {
        (0..seq.len())
            .map(|j| {
                let c = self.replay(&seq[..=j]);
                Step {
                    source: seq[j].source,
                    op: seq[j].op,
                    alpha: seq[j].alpha.clone(),
                    objective: self.objective_of(&c),
                    rows: (0..self.rows.len())
                        .map(|r| self.row_similarity(r, &c[r]))
                        .collect(),
                }
            })
            .collect()
    }

    /// The steps again with every α rounded to `digits` decimals (as a recipe file holds
    /// them), and the model they build, so predictions are those of the written recipe.
    pub fn rounded(&self, steps: &[Step], digits: i32) -> (Vec<Step>, Coefs) {
        let scale = 10f64.powi(digits);
        let seq: Vec<Planned> = steps
            .iter()
            .map(|s| Planned {
                source: s.source,
                op: s.op,
                alpha: s
                    .alpha
                    .iter()
                    .map(|a| (a * scale).round() / scale)
                    .collect(),
            })
            .collect();
        (self.steps_of(&seq), self.replay(&seq))
    }
    /// The best any linear recipe of these models can do, per merge block: the model in
    /// the span of B and the deltas closest in angle to T is T's orthogonal projection P·T
    /// on span{B, τ_S, τ₁..τₖ}; scaling by the inverse of its weight on B makes it an
    /// affine recipe B + Σ cₖτₖ with the same cosine. So the block's flattened cosine is at
    /// its maximum, with no bounds on the weights. Returns the weights of [start, sources]
    /// per block (the base takes 1 − their sum) and the model per row.
    pub fn global(&self) -> (Vec<Vec<f64>>, Coefs) {
        let k = self.k;
        // Basis index 0 is B, 1.. the deltas (Gram indices START..).
        let gram_index = |i: usize| if i == 0 { BASE } else { i - 1 + START };
        let mut weights = Vec::new();
        for b in 0..self.blocks.len() {
            let rows: Vec<usize> = (0..self.rows.len())
                .filter(|&r| self.block_of_row[r] == Some(b))
                .collect();
            let h = |i: usize, j: usize| -> f64 {
                rows.iter()
                    .map(|&r| self.grams[r].get(gram_index(i), gram_index(j)))
                    .sum()
            };
            // ⟨basis, T⟩ with T = B + τ_T.
            let rhs: Vec<f64> = (0..=k)
                .map(|i| {
                    rows.iter()
                        .map(|&r| {
                            let g = &self.grams[r];
                            g.get(gram_index(i), BASE) + g.get(gram_index(i), TARGET)
                        })
                        .sum()
                })
                .collect();
            // B dwarfs the deltas; scaling each basis vector to unit norm keeps the
            // eigen-solve's cut-off relative to each direction, not to B.
            let norm: Vec<f64> = (0..=k).map(|i| h(i, i).sqrt()).collect();
            let unit = |i: usize| if norm[i] > 0.0 { 1.0 / norm[i] } else { 0.0 };
            let g = Mat::<f64>::from_fn(k + 1, k + 1, |i, j| h(i, j) * unit(i) * unit(j));
            let r: Vec<f64> = (0..=k).map(|i| rhs[i] * unit(i)).collect();
            let w: Vec<f64> = solve_psd(&g, &r)
                .iter()
                .enumerate()
                .map(|(i, x)| x * unit(i))
                .collect();
            weights.push(if w[0] > 0.0 {
                w[1..].iter().map(|x| x / w[0]).collect()
            } else {
                // No B in the block (no tensors there): nothing to fit.
                vec![0.0; k]
            });
        }
        // A row no block weighs stays the start, as a recipe leaves it.
        let mut start = vec![0.0; k];
        start[0] = 1.0;
        let coefs = (0..self.rows.len())
            .map(|r| self.block_of_row[r].map_or(start.clone(), |b| weights[b].clone()))
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

/// A row's products along a line in coefficient space: ⟨C,T⟩ = a + bα,
/// ‖C‖² = c + 2dα + eα², ‖T‖² = t.
#[derive(Clone, Copy, Debug, Default)]
struct Line {
    a: f64,
    b: f64,
    c: f64,
    d: f64,
    e: f64,
    t: f64,
}

impl Line {
    fn plus(&self, o: &Line) -> Line {
        Line {
            a: self.a + o.a,
            b: self.b + o.b,
            c: self.c + o.c,
            d: self.d + o.d,
            e: self.e + o.e,
            t: self.t + o.t,
        }
    }

    fn cosine(&self, x: f64) -> f64 {
        let cc = self.c + x * (2.0 * self.d + x * self.e);
        ckpt_core::gram::cosine(cc, self.a + self.b * x, self.t)
    }

    /// The α in [lo, hi] maximising (a + bα)/√((c + 2dα + eα²)·t). The derivative's sign
    /// is that of b·q(α) − (a + bα)(d + eα) = (bc − ad) + (bd − ae)·α, linear in α: its
    /// one root and the two ends are the only candidates.
    fn best(&self, lo: f64, hi: f64) -> f64 {
        let mut candidates = vec![lo, hi];
        let slope = self.b * self.d - self.a * self.e;
        if slope != 0.0 {
            let root = (self.a * self.d - self.b * self.c) / slope;
            if root.is_finite() {
                candidates.push(root.clamp(lo, hi));
            }
        }
        candidates
            .into_iter()
            .map(|x| (x, self.cosine(x)))
            .fold((lo, f64::NEG_INFINITY), |best, (x, v)| {
                if v > best.1 { (x, v) } else { best }
            })
            .0
    }
}

/// The best x in [lo, hi] for a 1-D objective: a grid of 41 points, then golden-section
/// refinement around the best to ~1e-13 of the range.
fn maximise(lo: f64, hi: f64, f: impl Fn(f64) -> f64) -> f64 {
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
    for _ in 0..70 {
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
    if f(x) >= best.1 { x } else { best.0 }
}

/// The Gram of the roles (base, target, start, sources) from the Gram of the distinct
/// files, centred on the base (file 0): `phys[role]` is the role's file. A role other than
/// the base that is the base's file has a zero delta.
pub fn expand(g: &Gram, phys: &[usize]) -> Gram {
    let mut out = Gram::zeros(phys.len());
    let is_zero = |role: usize| role != BASE && phys[role] == phys[BASE];
    for i in 0..phys.len() {
        for j in i..phys.len() {
            let v = if is_zero(i) || is_zero(j) {
                0.0
            } else {
                g.get(phys[i], phys[j])
            };
            out.set(i, j, v);
        }
    }
    out
}

/// Whether two models have the same coefficients to 1e-9.
fn same_model(a: &Coefs, b: &Coefs) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-9))
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
