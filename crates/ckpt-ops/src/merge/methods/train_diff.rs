//! SuperMerger's train difference: A + (B - C)·1.8·α·|B-A| / (|B-A| + |B-C|), element by
//! element (0 where the denominator is 0): the difference B - C added where B moved away
//! from A, scaled by how far it moved.

use std::sync::Arc;

use super::{
    Args, Build, BuiltNode, Key, Method, MethodError, NodeMethod, Prepared, TensorInputs, Weight,
    weight,
};
use crate::merge::linear::Profile;

pub(crate) const TRAIN_DIFF: Method = Method {
    name: "train_diff",
    aliases: &["train_difference"],
    usage: "train_diff(A, B, C, alpha=1): A + (B - C) where B differs from A",
    models: (3, Some(3)),
    options: &[ALPHA.opt],
    build: Build::Node {
        per_tensor: false,
        build,
    },
};

const ALPHA: Key<Weight> = weight("alpha", Some(1.0));

fn build(a: &Args<'_>) -> Result<BuiltNode, MethodError> {
    Ok(Arc::new(TrainDiff {
        alpha: a.get(&ALPHA).clone(),
    }))
}

/// The arguments are A, B, C.
#[derive(Debug)]
pub(crate) struct TrainDiff {
    alpha: Profile,
}

impl NodeMethod for TrainDiff {
    fn eval(&self, t: &dyn TensorInputs, _: &Prepared, start: usize, end: usize) -> Vec<f64> {
        let (va, vb, vc) = (
            t.input(0, start, end),
            t.input(1, start, end),
            t.input(2, start, end),
        );
        let alpha = self.alpha[t.row()];
        (0..end - start)
            .map(|i| {
                let (x, y, z) = (va[i], vb[i], vc[i]);
                let denom = (y - x).abs() + (y - z).abs();
                let scale = if denom == 0.0 {
                    0.0
                } else {
                    1.8 * alpha * (y - x).abs() / denom
                };
                x + (y - z) * scale
            })
            .collect()
    }
}
