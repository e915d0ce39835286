//! The linear methods: each is a per-row combination of its models, so a recipe of them
//! collapses to one combination of the input files.

use super::{
    Args, Build, Key, Method, MethodError, PerModel, Rows, Weight, per_model_weights, rows, weight,
};
use crate::merge::linear::{Combination, Profile};

/// `alpha`, given or 1.
const ALPHA_1: Key<Weight> = weight("alpha", Some(1.0)).positional();
/// `alpha`, which the call must give.
const ALPHA: Key<Weight> = weight("alpha", None).positional();
const BETA: Key<Weight> = weight("beta", None).positional();
const WEIGHTS: Key<PerModel> = per_model_weights(false);
const COMPONENT: Key<Rows> = rows("component").positional();

/// `ws(A, B, alpha)`: A·(1-α) + B·α, as `A x (1-alpha) + B x alpha`.
pub(crate) const WS: Method = Method {
    name: "ws",
    aliases: &["weighted_sum"],
    usage: "ws(A, B, alpha)",
    models: (2, Some(2)),
    options: &[ALPHA.opt],
    build: Build::Linear(ws),
};

fn ws(m: &[Combination], a: &Args<'_>) -> Result<Combination, MethodError> {
    let alpha = a.get(&ALPHA);
    let one_minus: Profile = alpha.iter().map(|x| 1.0 - x).collect();
    Ok(Combination::sum(&[(&m[0], &one_minus), (&m[1], alpha)]))
}

/// `ad(A, B, C, alpha=1)`: A + (B - C)·α.
pub(crate) const AD: Method = Method {
    name: "ad",
    aliases: &["add_difference"],
    usage: "ad(A, B, C, alpha=1)",
    models: (3, Some(3)),
    options: &[ALPHA_1.opt],
    build: Build::Linear(ad),
};

fn ad(m: &[Combination], a: &Args<'_>) -> Result<Combination, MethodError> {
    let alpha = a.get(&ALPHA_1);
    let neg: Profile = alpha.iter().map(|x| -x).collect();
    Ok(Combination::sum(&[
        (&m[0], &a.uniform(1.0)),
        (&m[1], alpha),
        (&m[2], &neg),
    ]))
}

/// `triple_sum(A, B, C, alpha, beta)`: (1-α-β)·A + α·B + β·C (SuperMerger's Triple sum).
pub(crate) const TRIPLE_SUM: Method = Method {
    name: "triple_sum",
    aliases: &[],
    usage: "triple_sum(A, B, C, alpha, beta)",
    models: (3, Some(3)),
    options: &[ALPHA.opt, BETA.opt],
    build: Build::Linear(triple_sum),
};

fn triple_sum(m: &[Combination], a: &Args<'_>) -> Result<Combination, MethodError> {
    let (alpha, beta) = (a.get(&ALPHA), a.get(&BETA));
    let rest: Profile = alpha.iter().zip(beta).map(|(x, y)| 1.0 - x - y).collect();
    Ok(Combination::sum(&[
        (&m[0], &rest),
        (&m[1], alpha),
        (&m[2], beta),
    ]))
}

/// `sum_twice(A, B, C, alpha, beta)`: (1-β)·((1-α)·A + α·B) + β·C (SuperMerger's Sum twice).
pub(crate) const SUM_TWICE: Method = Method {
    name: "sum_twice",
    aliases: &[],
    usage: "sum_twice(A, B, C, alpha, beta)",
    models: (3, Some(3)),
    options: &[ALPHA.opt, BETA.opt],
    build: Build::Linear(sum_twice),
};

fn sum_twice(m: &[Combination], a: &Args<'_>) -> Result<Combination, MethodError> {
    let (alpha, beta) = (a.get(&ALPHA), a.get(&BETA));
    let wa: Profile = alpha
        .iter()
        .zip(beta)
        .map(|(x, y)| (1.0 - y) * (1.0 - x))
        .collect();
    let wb: Profile = alpha.iter().zip(beta).map(|(x, y)| (1.0 - y) * x).collect();
    Ok(Combination::sum(&[
        (&m[0], &wa),
        (&m[1], &wb),
        (&m[2], beta),
    ]))
}

/// `avg(A, B, ..., weights=(...))`: Σ wᵢ·Mᵢ / Σ wᵢ, equal weights by default.
pub(crate) const AVG: Method = Method {
    name: "avg",
    aliases: &["n_average", "average"],
    usage: "avg(A, B, ..., weights=(1, 1, ...))",
    models: (1, None),
    options: &[WEIGHTS.opt],
    build: Build::Linear(avg),
};

fn avg(m: &[Combination], a: &Args<'_>) -> Result<Combination, MethodError> {
    let w = a.get(&WEIGHTS);
    let total: f64 = w.iter().sum();
    if total == 0.0 {
        return Err(MethodError::WeightsSumToZero);
    }
    let shares: Vec<Profile> = w.iter().map(|x| a.uniform(x / total)).collect();
    let parts: Vec<(&Combination, &[f64])> = m
        .iter()
        .zip(&shares)
        .map(|(m, s)| (m, s.as_slice()))
        .collect();
    Ok(Combination::sum(&parts))
}

/// `swap(A, B, te)`: A with B's rows where the selection says (a component, or blocks).
pub(crate) const SWAP: Method = Method {
    name: "swap",
    aliases: &[],
    usage: "swap(A, B, te): A with what the selection (unet, te, te1, te2, vae, OUT06..OUT11) names taken from B",
    models: (2, Some(2)),
    options: &[COMPONENT.opt],
    build: Build::Linear(swap),
};

fn swap(m: &[Combination], a: &Args<'_>) -> Result<Combination, MethodError> {
    let wb: Profile = a
        .get(&COMPONENT)
        .iter()
        .map(|&t| if t { 1.0 } else { 0.0 })
        .collect();
    let wa: Profile = wb.iter().map(|x| 1.0 - x).collect();
    Ok(Combination::sum(&[(&m[0], &wa), (&m[1], &wb)]))
}
