//! The weighted geometric median of the models, per tensor: Weiszfeld's iterations from the
//! weighted mean, stopping when the weighted sum of distances changes by less than 1e-12
//! relative, or after `maxiter` steps. Distances below `eps` count as `eps`.

use std::sync::Arc;

use super::{
    Args, Build, BuiltNode, Method, NodeMethod, Opt, OptKind, Prepared, Range, TensorInputs,
    per_model_weights, plain, sweep,
};
use crate::kernels;

pub const GEOMEDIAN: Method = Method {
    name: "geomedian",
    aliases: &["geometric_median"],
    usage: "geomedian(model, ..., eps=1e-6, maxiter=100, weights=(...))",
    models: (1, None),
    options: &[
        plain("eps", OptKind::Scalar, Some(1e-6)),
        Opt {
            range: Range {
                min: Some((1.0, true)),
                max: None,
                integer: true,
                meaning: "",
            },
            ..plain("maxiter", OptKind::Scalar, Some(100.0))
        },
        per_model_weights(false),
    ],
    build: Build::Node {
        per_tensor: true,
        build,
    },
};

fn build(a: &Args<'_>) -> Result<BuiltNode, String> {
    Ok(Arc::new(GeoMedian {
        weights: a.per_model("weights").to_vec(),
        eps: a.scalar("eps"),
        maxiter: a.scalar("maxiter") as usize,
    }))
}

/// One weight per model argument.
#[derive(Debug)]
pub struct GeoMedian {
    weights: Vec<f64>,
    eps: f64,
    maxiter: usize,
}

impl NodeMethod for GeoMedian {
    /// The median of the whole range.
    fn prepare(&self, t: &dyn TensorInputs) -> Prepared {
        let origin = t.range().start;
        let n = t.range().len();
        let weights = &self.weights;
        let models = 0..weights.len();
        let total: f64 = weights.iter().sum();
        // Start from the weighted mean.
        let mut z = vec![0.0f64; n];
        sweep(t, |s, e| {
            for (m, &w) in models.clone().zip(weights) {
                kernels::axpy(w / total, &t.input(m, s, e), &mut z[s - origin..e - origin]);
            }
        });
        let mut objective = f64::INFINITY;
        for _ in 0..self.maxiter {
            // Distances from the current estimate.
            let mut dist2 = vec![0.0f64; models.len()];
            sweep(t, |s, e| {
                let zc = &z[s - origin..e - origin];
                for (d2, m) in dist2.iter_mut().zip(models.clone()) {
                    let mut x = t.input(m, s, e);
                    kernels::sub_assign(&mut x, zc);
                    *d2 += kernels::norm_l2_sqr(&x);
                }
            });
            let dist: Vec<f64> = dist2.iter().map(|d| d.sqrt()).collect();
            let new_objective: f64 = dist.iter().zip(weights).map(|(d, w)| d * w).sum();
            let coef: Vec<f64> = dist
                .iter()
                .zip(weights)
                .map(|(d, w)| w / d.max(self.eps))
                .collect();
            let csum: f64 = coef.iter().sum();
            // Weiszfeld step, in place: z <- Σ cᵢ xᵢ / Σ cᵢ.
            sweep(t, |s, e| {
                let zc = &mut z[s - origin..e - origin];
                zc.iter_mut().for_each(|v| *v = 0.0);
                for (m, &c) in models.clone().zip(&coef) {
                    kernels::axpy(c / csum, &t.input(m, s, e), zc);
                }
            });
            if (objective - new_objective).abs() <= 1e-12 * new_objective.max(f64::MIN_POSITIVE) {
                break;
            }
            objective = new_objective;
        }
        Box::new((origin, z))
    }

    fn eval(&self, _: &dyn TensorInputs, state: &Prepared, start: usize, end: usize) -> Vec<f64> {
        let (origin, z): &(usize, Vec<f64>) = state.downcast_ref().expect("prepared by geomedian");
        z[start - origin..end - origin].to_vec()
    }
}
