//! DARE (Yu et al. 2024): drop each delta element with probability `p`, rescale the
//! survivors by 1/(1-p), then add Σ wᵢ·δᵢ·lambda to the base; `dare_ties` elects signs as
//! TIES does before summing the agreeing deltas (mergekit's default for dare_ties: summed,
//! not averaged).
//!
//! Masks come from a counter-based stream keyed by the seed, the tensor's name and the
//! model, so the same seed gives the same bytes on any thread count, and same-shaped tensors
//! get different masks (sd-mecha reuses one). The rescale is the paper's 1/(1-p) (mergekit
//! uses an L1 ratio).

use std::sync::Arc;

use super::{
    Args, Build, BuiltNode, Key, Method, MethodError, NodeMethod, Opt, PerModel, Prepared, Scalar,
    TensorInputs, count, disjoint, drop_probability, per_model_weights, scalar,
};
use ckpt_core::rng::counter::{Stream, key_hash, mix};

const P: Key<Scalar> = drop_probability("p", 0.9);
const SEED: Key<Scalar> = count("seed", 0.0);
const LAMBDA: Key<Scalar> = scalar("lambda", 1.0);
const WEIGHTS: Key<PerModel> = per_model_weights(true);
const OPTIONS: &[Opt] = &[P.opt, SEED.opt, LAMBDA.opt, WEIGHTS.opt];

pub const DARE: Method = Method {
    name: "dare",
    aliases: &[],
    usage: "dare(base, model, ..., p=0.9, seed=0, lambda=1, weights=(...))",
    models: (2, None),
    options: OPTIONS,
    build: Build::Node {
        per_tensor: false,
        build: |a| build(a, false),
    },
};

pub const DARE_TIES: Method = Method {
    name: "dare_ties",
    aliases: &[],
    usage: "dare_ties(base, model, ..., p=0.9, seed=0, lambda=1, weights=(...))",
    models: (2, None),
    options: OPTIONS,
    build: Build::Node {
        per_tensor: false,
        build: |a| build(a, true),
    },
};

fn build(a: &Args<'_>, ties: bool) -> Result<BuiltNode, MethodError> {
    Ok(Arc::new(Dare {
        weights: a.get(&WEIGHTS).to_vec(),
        p: a.get(&P),
        seed: a.get(&SEED) as u64,
        lambda: a.get(&LAMBDA),
        ties,
    }))
}

/// Argument 0 is the base, 1.. the models (one weight each).
#[derive(Debug)]
pub struct Dare {
    weights: Vec<f64>,
    p: f64,
    seed: u64,
    lambda: f64,
    ties: bool,
}

impl NodeMethod for Dare {
    fn eval(&self, t: &dyn TensorInputs, _: &Prepared, start: usize, end: usize) -> Vec<f64> {
        let b = t.input(0, start, end);
        let keep = 1.0 - self.p;
        let deltas: Vec<Vec<f64>> = (0..self.weights.len())
            .map(|j| {
                let stream = dare_stream(self.seed, t.key(), j);
                let mut d = t.input(j + 1, start, end);
                for (i, (x, y)) in d.iter_mut().zip(&b).enumerate() {
                    let kept = stream.uniform((start + i) as u64) < keep;
                    *x = if kept { (*x - y) / keep } else { 0.0 };
                }
                d
            })
            .collect();
        let mut out = b;
        for (i, o) in out.iter_mut().enumerate() {
            let merged = if self.ties {
                disjoint(deltas.iter().map(|d| d[i]), &self.weights, false)
            } else {
                deltas
                    .iter()
                    .zip(&self.weights)
                    .map(|(d, w)| w * d[i])
                    .sum()
            };
            *o += self.lambda * merged;
        }
        out
    }
}

/// The random stream deciding which elements of model `j`'s delta DARE keeps for one
/// tensor: element i is kept when `uniform(i) < 1 - p`. Keyed by seed, tensor name and
/// model, so masks do not depend on thread count, order, or which other tensors exist.
pub fn dare_stream(seed: u64, key: &str, model: usize) -> Stream {
    Stream::new(seed, key_hash(key) ^ mix(0xda4e_0000 + model as u64))
}
