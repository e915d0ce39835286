//! Model Stock (Jang et al. 2024): t·mean(Mᵢ) + (1-t)·base with t = N·cosθ / (1 + (N-1)·cosθ),
//! per tensor. cosθ is the mean of **all** pairwise cosines of the task vectors (the paper,
//! mergekit; sd-mecha uses consecutive pairs); a zero delta has cosine 0; the result is the
//! base when the denominator vanishes.

use std::sync::Arc;

use super::{
    Args, Build, BuiltNode, Method, MethodError, NodeMethod, Prepared, TensorInputs, sweep,
};
use ckpt_core::kernels;

pub(crate) const MODEL_STOCK: Method = Method {
    name: "model_stock",
    aliases: &[],
    usage: "model_stock(base, model1, model2, ...)",
    models: (3, None),
    options: &[],
    build: Build::Node {
        per_tensor: true,
        build,
    },
};

fn build(a: &Args<'_>) -> Result<BuiltNode, MethodError> {
    Ok(Arc::new(ModelStock {
        models: a.models - 1,
    }))
}

/// Argument 0 is the base, 1..=`models` the models.
#[derive(Debug)]
pub(crate) struct ModelStock {
    models: usize,
}

impl NodeMethod for ModelStock {
    /// The weight of the models' mean.
    fn prepare(&self, t: &dyn TensorInputs) -> Prepared {
        let nm = self.models;
        let mut gram = vec![0.0f64; nm * nm];
        sweep(t, |s, e| {
            let b = t.input(0, s, e);
            let deltas: Vec<Vec<f64>> = (1..=nm)
                .map(|m| {
                    let mut d = t.input(m, s, e);
                    kernels::sub_assign(&mut d, &b);
                    d
                })
                .collect();
            for i in 0..nm {
                for j in i..nm {
                    gram[i * nm + j] += kernels::dot(&deltas[i], &deltas[j]);
                }
            }
        });
        Box::new(stock_t(&gram, nm))
    }

    fn eval(&self, t: &dyn TensorInputs, state: &Prepared, start: usize, end: usize) -> Vec<f64> {
        let stock: f64 = *state.downcast_ref().expect("prepared by Model Stock");
        let b = t.input(0, start, end);
        let mut out: Vec<f64> = b.iter().map(|x| (1.0 - stock) * x).collect();
        let share = stock / self.models as f64;
        for m in 1..=self.models {
            kernels::axpy(share, &t.input(m, start, end), &mut out);
        }
        out
    }
}

/// Model Stock's t from the task vectors' Gram matrix (row-major nm x nm, upper filled).
pub(crate) fn stock_t(gram: &[f64], nm: usize) -> f64 {
    let mut sum = 0.0;
    let mut pairs = 0;
    for i in 0..nm {
        for j in i + 1..nm {
            let (ii, jj, ij) = (gram[i * nm + i], gram[j * nm + j], gram[i * nm + j]);
            sum += if ii == 0.0 || jj == 0.0 {
                0.0
            } else {
                ij / (ii * jj).sqrt()
            };
            pairs += 1;
        }
    }
    let cos = if pairs == 0 { 0.0 } else { sum / pairs as f64 };
    stock_factor(cos, nm)
}

/// Model Stock's t = N·cosθ / (1 + (N−1)·cosθ) for `n` models whose task vectors have mean
/// pairwise cosine `cos`; 0 when the denominator vanishes.
pub(crate) fn stock_factor(cos: f64, n: usize) -> f64 {
    let n = n as f64;
    let denom = 1.0 + (n - 1.0) * cos;
    if denom.abs() < 1e-12 {
        0.0
    } else {
        n * cos / denom
    }
}
