//! What `index add` stores of a model, in one read of its tensors: the component hashes and
//! toolkit metric ([`components`](super::components)) and the per-row count sketches
//! ([`sketch`](crate::sketch)), each tensor visited once by both.

use std::collections::BTreeMap;

use super::components::{Components, TensorHashes, combine, hash_tensor, whole_items};
use crate::sketch::{BUCKETS, Fingerprint, Rows, sketch_slice, sketched};
use ckpt_core::catalog::{Detection, Grouping};
use ckpt_core::pass::{Absorb, Item, Pass, PassError, Plan, Slice, Visit};
use ckpt_core::rng::counter::key_hash;
use ckpt_read::Checkpoint;

struct Work<'a> {
    det: &'a Detection,
    seed: u64,
    sketch: &'a [bool],
}

struct Partial {
    hashes: TensorHashes,
    /// (squared norm, sketch) of a float tensor.
    sketch: Option<(f64, Vec<f64>)>,
}

impl Visit for Work<'_> {
    type Partial = Partial;

    fn visit(
        &self,
        plan: &Plan<'_>,
        item: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<Partial, PassError> {
        let s = inputs[0].expect("one model");
        let key = &plan.entries()[item.entry].key;
        let hashes = hash_tensor(self.det.arch(), key, &s);
        let sketch = self.sketch[item.entry].then(|| {
            let mut sk = vec![0.0f64; BUCKETS];
            let n2 = sketch_slice(self.seed, key_hash(key), 0, &s, &mut sk);
            (n2, sk)
        });
        Ok(Partial { hashes, sketch })
    }
}

struct Sums {
    row_of: Vec<usize>,
    hashes: BTreeMap<usize, TensorHashes>,
    rows: Rows,
}

impl Absorb<Partial> for Sums {
    fn absorb(&mut self, _: &Plan<'_>, item: &Item, p: Partial) -> Result<(), PassError> {
        if let Some((n2, sk)) = &p.sketch {
            self.rows
                .add(self.row_of[item.entry], item.len() as u64, *n2, sk);
        }
        self.hashes.insert(item.entry, p.hashes);
        Ok(())
    }
}

/// Component hashes and the fingerprint of `ckpt` by the rows of `grouping`, in one pass.
pub fn fingerprint(
    ckpt: &Checkpoint,
    det: &Detection,
    grouping: &Grouping,
    seed: u64,
    pass: &Pass<'_>,
) -> Result<(Components, Fingerprint), PassError> {
    let plan = Plan::new(vec![ckpt]);
    let sketch: Vec<bool> = (0..plan.entries().len())
        .map(|e| sketched(&plan, e))
        .collect();
    let mut sums = Sums {
        row_of: plan
            .entries()
            .iter()
            .map(|e| grouping.group_of(&e.key))
            .collect(),
        hashes: BTreeMap::new(),
        rows: Rows::new(grouping),
    };
    let work = Work {
        det,
        seed,
        sketch: &sketch,
    };
    pass.run_items(&plan, &whole_items(&plan), &work, &mut sums)?;
    Ok((combine(&plan, det, &sums.hashes), sums.rows.finish()))
}
