//! What each key of a file is, against its architecture's layout, from the header alone:
//! the one classification `inspect`, `validate` and `fix` share.
//!
//! A key is **EMA** (the `model_ema.` copy of the U-Net, whatever the catalog lists for the
//! architecture), a **schedule buffer**, another key the layout lists (checked for shape),
//! or **unknown**. Keys the layout lists that the file lacks are **missing** (required or
//! optional) when their component is present, or belong to an **absent component**.

use std::collections::{BTreeSet, HashSet};

use super::data::{self, Role};
use super::detect::{scaled_shape, shape_matches};
use super::{Arch, Component, canonical_keys, component_of, keys_of};
use ckpt_read::{Checkpoint, TensorEntry};

/// The prefix of EMA copies in LDM/SGM checkpoints (`model_ema.diffusion_model...`).
pub const EMA_PREFIX: &str = "model_ema.";

/// Whether a key (as written in the file) belongs to the EMA copy of the U-Net.
pub fn is_ema(key: &str) -> bool {
    key.starts_with(EMA_PREFIX)
}

/// The role of a (canonical) key in `arch`: the layout's role when it lists the key; EMA
/// for any EMA copy (the layouts list EMA keys for SD1 only); `None` for keys it does not
/// know.
pub fn role(arch: Arch, key: &str) -> Option<Role> {
    match data::table(arch).get(key) {
        Some(k) => Some(k.role),
        None if is_ema(key) => Some(Role::Ema),
        None => None,
    }
}

/// A tensor whose shape the layout does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrongShape {
    /// The name as written in the file.
    pub name: String,
    pub canonical: String,
    pub actual: Vec<usize>,
    /// The layout's shape at the file's scale.
    pub expected: Vec<usize>,
}

/// Every key of a file, sorted by what it is. Names are as written in the file, except the
/// missing keys, which the file does not have (the layout's canonical names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyCheck {
    /// Components with at least one key in the file.
    pub present: BTreeSet<Component>,
    /// Components of a full checkpoint of the architecture that the file lacks.
    pub absent_components: Vec<Component>,
    /// Required keys (in layout order) missing from components the file has.
    pub missing_required: Vec<String>,
    /// Optional keys (pruned text-encoder layers) missing from components the file has.
    pub missing_optional: Vec<String>,
    pub ema: Vec<String>,
    pub scheduler: Vec<String>,
    pub unknown: Vec<String>,
    /// Listed keys (EMA aside) whose shape differs from the layout's.
    pub wrong_shape: Vec<WrongShape>,
    /// Keys written under an old name (`canonical_key` renames them).
    pub old_names: Vec<String>,
}

impl KeyCheck {
    /// Classifies an opened checkpoint's tensors against `arch` at `scale`, by the canonical
    /// keys kept with it ([`keys_of`]).
    pub fn of(ckpt: &Checkpoint, arch: Arch, scale: u32) -> KeyCheck {
        Self::with_keys(ckpt.tensors(), keys_of(ckpt), arch, scale)
    }

    /// Classifies `tensors` (in file order) against `arch` at `scale`.
    pub fn new(tensors: &[TensorEntry], arch: Arch, scale: u32) -> KeyCheck {
        let keys: Vec<String> = canonical_keys(tensors)
            .into_iter()
            .map(|k| k.into_owned())
            .collect();
        Self::with_keys(tensors, &keys, arch, scale)
    }

    /// Classifies `tensors` whose canonical keys are `keys`.
    fn with_keys(tensors: &[TensorEntry], keys: &[String], arch: Arch, scale: u32) -> KeyCheck {
        let table = data::table(arch);
        let mut c = KeyCheck::default();
        let mut names = HashSet::new();
        for (t, key) in tensors.iter().zip(keys) {
            c.present.insert(component_of(key));
            if key != &t.name {
                c.old_names.push(t.name.clone());
            }
            match role(arch, key) {
                Some(Role::Ema) => c.ema.push(t.name.clone()),
                Some(Role::Scheduler) => c.scheduler.push(t.name.clone()),
                None => c.unknown.push(t.name.clone()),
                Some(_) => {
                    let k = table.get(key).expect("listed");
                    if !shape_matches(&k.name, &k.shape, &t.shape, scale) {
                        c.wrong_shape.push(WrongShape {
                            name: t.name.clone(),
                            canonical: key.to_string(),
                            actual: t.shape.clone(),
                            expected: scaled_shape(&k.shape, scale),
                        });
                    }
                }
            }
            names.insert(key.clone());
        }
        c.absent_components = arch
            .components()
            .iter()
            .copied()
            .filter(|x| !c.present.contains(x))
            .collect();
        for k in table.keys.iter().filter(|k| k.core) {
            if c.present.contains(&component_of(&k.name)) && !names.contains(&k.name) {
                if k.optional {
                    c.missing_optional.push(k.name.clone());
                } else {
                    c.missing_required.push(k.name.clone());
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::arch;
    use ckpt_read::Dtype;

    fn entry(name: &str, shape: &[usize]) -> TensorEntry {
        TensorEntry {
            name: name.into(),
            dtype: Dtype::F16,
            shape: shape.to_vec(),
            begin: 0,
            end: 0,
            encoding: Default::default(),
        }
    }

    #[test]
    fn sorts_every_key() {
        let conv = "model.diffusion_model.input_blocks.0.0.weight";
        let file = [
            entry(conv, &[320, 4, 3, 3]),
            entry("model.diffusion_model.out.2.weight", &[4, 320, 3, 9]),
            entry("model_ema.decay", &[]),
            entry("model_ema.diffusion_modelout2weight", &[4, 320, 3, 3]),
            entry("betas", &[1000]),
            entry("lora_unet_down.weight", &[4]),
            entry(
                "cond_stage_model.transformer.embeddings.position_embedding.weight",
                &[77, 768],
            ),
        ];
        let c = KeyCheck::new(&file, arch("sd1"), 1);
        assert_eq!(c.ema.len(), 2);
        assert_eq!(c.scheduler, ["betas"]);
        assert_eq!(c.unknown, ["lora_unet_down.weight"]);
        assert_eq!(c.wrong_shape.len(), 1);
        assert_eq!(c.wrong_shape[0].expected, [4, 320, 3, 3]);
        assert_eq!(c.old_names.len(), 1);
        assert_eq!(c.absent_components, [Component::named("vae").unwrap()]);
        // The U-Net and CLIP-L are present: everything else of them is missing.
        assert_eq!(c.missing_required.len(), 686 - 2 + 197 - 1 - 1);
        assert_eq!(
            c.missing_optional,
            ["cond_stage_model.transformer.text_model.embeddings.position_ids"]
        );
        // An SDXL EMA copy is EMA too, though the SDXL layout lists no EMA keys.
        let xl = KeyCheck::new(&[entry("model_ema.decay", &[])], arch("sdxl"), 1);
        assert_eq!((xl.ema.len(), xl.unknown.len()), (1, 0));
    }
}
