//! TIES-merging (Yadav et al. 2023): keep the top `k` fraction of each task vector by
//! magnitude, elect a sign per element from the weighted sum, average the agreeing weighted
//! deltas, scale by `lambda`, add to the base.
//!
//! Choices: the sign is elected from Σ wᵢδᵢ (0 counts as +); magnitudes are ranked in f32;
//! every value equal to the threshold is kept; the mean is over the agreeing deltas'
//! weights (mergekit's `normalize: true`).

use std::sync::Arc;

use super::{
    Args, Build, BuiltNode, Method, NodeMethod, Opt, OptKind, Prepared, Range, TensorInputs,
    disjoint, per_model_weights, plain, sweep,
};

pub const TIES: Method = Method {
    name: "ties",
    aliases: &[],
    usage: "ties(base, model, ..., k=1, lambda=1, weights=(...))",
    models: (2, None),
    options: &[
        Opt {
            range: Range {
                min: Some((0.0, false)),
                max: Some((1.0, true)),
                integer: false,
                meaning: "the fraction of each delta kept",
            },
            ..plain("k", OptKind::Scalar, Some(1.0))
        },
        plain("lambda", OptKind::Scalar, Some(1.0)),
        per_model_weights(true),
    ],
    build: Build::Node {
        per_tensor: true,
        build,
    },
};

fn build(a: &Args<'_>) -> Result<BuiltNode, String> {
    Ok(Arc::new(Ties {
        weights: a.per_model("weights").to_vec(),
        k: a.scalar("k"),
        lambda: a.scalar("lambda"),
    }))
}

/// Argument 0 is the base, 1.. the models (one weight each).
#[derive(Debug)]
pub struct Ties {
    weights: Vec<f64>,
    k: f64,
    lambda: f64,
}

impl NodeMethod for Ties {
    /// Per model, the magnitude at or above which its deltas are kept.
    fn prepare(&self, t: &dyn TensorInputs) -> Prepared {
        let origin = t.range().start;
        let mut thresholds = Vec::with_capacity(self.weights.len());
        let mut mags = vec![0f32; t.range().len()];
        for m in 1..=self.weights.len() {
            sweep(t, |s, e| {
                let (x, b) = (t.input(m, s, e), t.input(0, s, e));
                for i in 0..e - s {
                    mags[s - origin + i] = (x[i] - b[i]).abs() as f32;
                }
            });
            thresholds.push(magnitude_threshold(&mut mags, self.k));
        }
        Box::new(thresholds)
    }

    fn eval(&self, t: &dyn TensorInputs, state: &Prepared, start: usize, end: usize) -> Vec<f64> {
        let thresholds: &Vec<f32> = state.downcast_ref().expect("prepared by TIES");
        let b = t.input(0, start, end);
        let deltas: Vec<Vec<f64>> = (1..=self.weights.len())
            .zip(thresholds)
            .map(|(m, &th)| {
                let mut d = t.input(m, start, end);
                for (x, y) in d.iter_mut().zip(&b) {
                    *x -= y;
                    if ((*x).abs() as f32) < th {
                        *x = 0.0;
                    }
                }
                d
            })
            .collect();
        let mut out = b;
        for (i, o) in out.iter_mut().enumerate() {
            *o += self.lambda * disjoint(deltas.iter().map(|d| d[i]), &self.weights, true);
        }
        out
    }
}

/// The magnitude threshold that keeps the top `k` fraction: the ⌈k·n⌉-th largest value
/// (at least one element). Values at or above it are kept (ties at the threshold are all
/// kept). Reorders `mags`.
pub fn magnitude_threshold(mags: &mut [f32], k: f64) -> f32 {
    if mags.is_empty() || k >= 1.0 {
        return 0.0;
    }
    let keep = ((k * mags.len() as f64).ceil() as usize).clamp(1, mags.len());
    let idx = mags.len() - keep;
    let (_, t, _) = mags.select_nth_unstable_by(idx, f32::total_cmp);
    *t
}
