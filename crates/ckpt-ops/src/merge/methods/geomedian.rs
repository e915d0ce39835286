//! The weighted geometric median of the models, per tensor: Weiszfeld's iterations from the
//! weighted mean, stopping when the weighted sum of distances changes by less than 1e-12
//! relative, or after `maxiter` steps. Distances below `eps` count as `eps`.

use std::sync::Arc;

use super::{
    Args, Build, BuiltNode, Key, Method, MethodError, NodeMethod, PerModel, Prepared, Range,
    Scalar, TensorInputs, per_model_weights, scalar, sweep,
};

const EPS: Key<Scalar> = scalar("eps", 1e-6);
const MAXITER: Key<Scalar> = scalar("maxiter", 100.0).within(Range {
    min: Some((1.0, true)),
    max: None,
    integer: true,
    meaning: "",
});
const WEIGHTS: Key<PerModel> = per_model_weights(false);
use ckpt_core::kernels;

pub(crate) const GEOMEDIAN: Method = Method {
    name: "geomedian",
    aliases: &["geometric_median"],
    usage: "geomedian(model, ..., eps=1e-6, maxiter=100, weights=(...))",
    models: (1, None),
    options: &[EPS.opt, MAXITER.opt, WEIGHTS.opt],
    build: Build::Node {
        per_tensor: true,
        build,
    },
};

fn build(a: &Args<'_>) -> Result<BuiltNode, MethodError> {
    Ok(Arc::new(GeoMedian {
        weights: a.get(&WEIGHTS).to_vec(),
        eps: a.get(&EPS),
        maxiter: a.get(&MAXITER) as usize,
    }))
}

/// One weight per model argument.
#[derive(Debug)]
pub(crate) struct GeoMedian {
    weights: Vec<f64>,
    eps: f64,
    maxiter: usize,
}

impl NodeMethod for GeoMedian {
    fn buffer_bytes(&self, numel: usize, _: usize) -> u64 {
        8 * numel as u64
    }

    /// The median of the whole range.
    fn prepare(&self, t: &dyn TensorInputs) -> Prepared {
        let origin = t.range().start;
        let z = weiszfeld(
            t,
            &self.weights,
            self.eps,
            self.maxiter,
            1e-12,
            |m, s, e| t.input(m, s, e),
        );
        Box::new((origin, z))
    }

    fn eval(&self, _: &dyn TensorInputs, state: &Prepared, start: usize, end: usize) -> Vec<f64> {
        let (origin, z): &(usize, Vec<f64>) = state.downcast_ref().expect("prepared by geomedian");
        z[start - origin..end - origin].to_vec()
    }
}

/// The weighted geometric median of `weights.len()` points over `t`'s range, point `i`'s
/// values over `s..e` given by `point(i, s, e)`: Weiszfeld's iterations from the weighted
/// mean, zᵗ⁺¹ = Σ cᵢxᵢ / Σ cᵢ with cᵢ = wᵢ / max(‖xᵢ − zᵗ‖, eps), stopping after `maxiter`
/// steps or when the objective Σ wᵢ‖xᵢ − z‖ changes by at most `ftol` relative (sd-mecha's
/// rule). Each step is two sweeps of the points (distances, then the new estimate); the
/// only buffer is the estimate itself, one f64 per element.
pub(crate) fn weiszfeld(
    t: &dyn TensorInputs,
    weights: &[f64],
    eps: f64,
    maxiter: usize,
    ftol: f64,
    point: impl Fn(usize, usize, usize) -> Vec<f64>,
) -> Vec<f64> {
    let origin = t.range().start;
    let n = t.range().len();
    let total: f64 = weights.iter().sum();
    let mut z = vec![0.0f64; n];
    sweep(t, |s, e| {
        for (m, &w) in weights.iter().enumerate() {
            kernels::axpy(w / total, &point(m, s, e), &mut z[s - origin..e - origin]);
        }
    });
    let distances = |z: &[f64]| -> Vec<f64> {
        let mut d2 = vec![0.0f64; weights.len()];
        sweep(t, |s, e| {
            let zc = &z[s - origin..e - origin];
            for (m, acc) in d2.iter_mut().enumerate() {
                *acc += kernels::dist2(&point(m, s, e), zc);
            }
        });
        d2.into_iter().map(f64::sqrt).collect()
    };
    let objective = |d: &[f64]| -> f64 { d.iter().zip(weights).map(|(d, w)| d * w).sum() };
    let mut dist = distances(&z);
    let mut value = objective(&dist);
    for _ in 0..maxiter {
        let coef: Vec<f64> = dist
            .iter()
            .zip(weights)
            .map(|(d, w)| w / d.max(eps))
            .collect();
        let csum: f64 = coef.iter().sum();
        sweep(t, |s, e| {
            let zc = &mut z[s - origin..e - origin];
            zc.fill(0.0);
            for (m, &c) in coef.iter().enumerate() {
                kernels::axpy(c / csum, &point(m, s, e), zc);
            }
        });
        dist = distances(&z);
        let previous = std::mem::replace(&mut value, objective(&dist));
        if (previous - value).abs() <= ftol * value {
            break;
        }
    }
    z
}
