//! `lora(FILE, strength)`: a LoRA's weight change, baked into a recipe like any other term
//! (`OUT = model + lora(a) x 0.8 + lora(b) x 0.5`). The term has no model inputs: for each
//! tensor it patches, its value is strength(block) · Σ over the file's modules that patch
//! that key of their ΔW (α/r · up · down for LoRA/LoCon, the Hadamard or Kronecker product
//! for LoHa/LoKr; see [`crate::lora`]), computed from the mapped factors chunk by chunk, and
//! 0 elsewhere. So N LoRAs cost one read of the model plus one of each LoRA, and the memory
//! a worker holds is one tensor's decoded factors per LoRA.
//!
//! `strength` takes block weights: one number, a list in SuperMerger's order (26 values for
//! SD1/SD2, 20 for SDXL, 61 for Flux), the named form, or LoRA Block Weight's 17-value (SD1)
//! and 12-value (SDXL) lists, whose blocks without a value get 0 as in its `to26`.

use std::collections::HashMap;
use std::sync::Arc;

use super::{
    Args, Build, BuiltNode, Key, Method, MethodError, NodeMethod, Prepared, TensorInputs, Weight,
    weight,
};
use crate::lora::{Delta, LoraFile};

pub(crate) const LORA: Method = Method {
    name: "lora",
    aliases: &[],
    usage: "lora(FILE, strength=1), FILE a LoRA bound by name (`L = my-lora.safetensors`)",
    models: (0, Some(0)),
    options: &[STRENGTH.opt],
    build: Build::Lora(build),
};

const STRENGTH: Key<Weight> = weight("strength", Some(1.0)).positional();

fn build(file: Arc<LoraFile>, args: &Args<'_>) -> Result<BuiltNode, MethodError> {
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    let mut largest = 0u64;
    for (i, m) in file.net.modules.iter().enumerate() {
        if let Some(t) = &m.target
            && m.not_computed.is_none()
        {
            by_key.entry(t.key.clone()).or_default().push(i);
            // Decoded factors: f64 of each of the module's tensors.
            let numel: u64 = m
                .parts
                .iter()
                .filter_map(|(_, n)| file.ckpt.get(n))
                .map(|t| t.shape.iter().product::<usize>() as u64)
                .sum();
            largest = largest.max(numel * 8);
        }
    }
    Ok(Arc::new(Bake {
        file,
        strength: args.get(&STRENGTH).clone(),
        by_key,
        largest,
    }))
}

#[derive(Debug)]
struct Bake {
    file: Arc<LoraFile>,
    strength: Vec<f64>,
    /// Checkpoint key → the modules that patch it.
    by_key: HashMap<String, Vec<usize>>,
    /// The largest module's decoded factors, in bytes.
    largest: u64,
}

/// A tensor's modules: the first row each patches and its factors.
type Patches = Vec<(usize, Delta)>;

impl NodeMethod for Bake {
    fn prepare(&self, t: &dyn TensorInputs) -> Prepared {
        let mut patches: Patches = Vec::new();
        let t_shape = t.shape();
        if self.strength[t.row()] != 0.0
            && let Some(modules) = self.by_key.get(t.key())
        {
            for &i in modules {
                let m = &self.file.net.modules[i];
                // The plan checked every module's shapes against the model before the pass.
                if let Ok(d) = Delta::of(&self.file.ckpt, m) {
                    let lo = m.target.as_ref().map_or(0, |t| t.row_range(t_shape).0);
                    patches.push((lo, d));
                }
            }
        }
        Box::new(patches)
    }

    fn touches(&self, key: &str, row: usize) -> bool {
        self.strength[row] != 0.0 && self.by_key.contains_key(key)
    }

    fn buffer_bytes(&self, _numel: usize, _models: usize) -> u64 {
        // The factors, the chunk it returns, and the block of rows a product fills.
        self.largest + 2 * (super::SUB as u64 * 8)
    }

    fn eval(
        &self,
        t: &dyn TensorInputs,
        prepared: &Prepared,
        start: usize,
        end: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0; end - start];
        let patches = prepared
            .downcast_ref::<Patches>()
            .expect("prepared by Bake");
        let c = self.strength[t.row()];
        for (lo, d) in patches {
            // The module's rows as tensor elements, intersected with the chunk.
            let (m0, m1) = (lo * d.cols, (lo + d.rows) * d.cols);
            let (s, e) = (start.max(m0), end.min(m1));
            if s < e {
                d.add_into(c, s - m0, e - m0, &mut out[s - start..e - start]);
            }
        }
        out
    }
}
