//! The first step of a merge: every file the recipe names, opened (all of them, so every
//! problem is found at once), each a model or a LoRA, and the one architecture the models
//! share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::preflight::PlannedInput;
use super::problem::Problem;
use super::recipe::{self, Recipe};
use super::{MergeError, resolve_path};
use crate::lora::{LoraFile, Network};
use ckpt_core::catalog::{Arch, Detection, Layout, detect};
use ckpt_read::Checkpoint;

/// A model input, opened.
pub struct Model {
    /// The recipe's name for it.
    pub name: String,
    pub path: PathBuf,
    pub ckpt: Checkpoint,
    pub detection: Detection,
}

/// A LoRA input, opened.
pub(crate) struct Lora {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    /// Its modules as its own names say (the architecture they fit best).
    pub(crate) network: Network,
    /// The file with its modules mapped to the models' architecture (when there is one).
    pub(crate) file: Option<Arc<LoraFile>>,
}

/// Every file a recipe names, opened.
pub struct Inputs {
    /// The recipe, its lists expanded.
    pub(crate) recipe: Recipe,
    /// The models, in the order the recipe binds them.
    pub models: Vec<Model>,
    pub(crate) loras: Vec<Lora>,
    /// What the plan shows of each input.
    pub(crate) planned: Vec<PlannedInput>,
    /// The models' one architecture, if they share one.
    pub(crate) arch: Option<Arch>,
    /// What was wrong with the inputs.
    pub(crate) problems: Vec<Problem>,
}

impl Inputs {
    /// Whether every model input opened (no [`Problem::CannotOpen`]).
    pub(crate) fn all_opened(&self) -> bool {
        !self
            .problems
            .iter()
            .any(|p| matches!(p, Problem::CannotOpen { .. }))
    }
}

/// Opens every file `recipe` uses (paths relative to `base_dir`): a LoRA when most of its
/// tensors are LoRA module tensors, else a model, its architecture detected. A file that
/// cannot be opened, or models of several architectures, are problems for [`super::plan`]
/// to report with the rest; only a recipe whose lists cannot be read is an error here.
pub fn open(recipe: &Recipe, base_dir: &std::path::Path) -> Result<Inputs, MergeError> {
    let recipe = recipe::expand_lists(recipe, base_dir)?;
    let mut models = Vec::new();
    let mut lora_files = Vec::new();
    let mut planned = Vec::new();
    let mut problems = Vec::new();
    for i in super::plan::referenced_inputs(&recipe) {
        let b = &recipe.bindings[i];
        let path = resolve_path(base_dir, &b.path);
        match ckpt_core::catalog::diffusers::open(&path) {
            Ok(ckpt) if let Some(network) = Network::read(&ckpt) => {
                planned.push(PlannedInput {
                    name: b.name.clone(),
                    path: path.display().to_string(),
                    bytes: ckpt.bytes().len() as u64,
                    arch: "LoRA".into(),
                });
                lora_files.push((b.name.clone(), path, ckpt, network));
            }
            Ok(ckpt) => {
                let detection = detect(&ckpt);
                planned.push(PlannedInput {
                    name: b.name.clone(),
                    path: path.display().to_string(),
                    bytes: ckpt.bytes().len() as u64,
                    arch: match detection.layout {
                        Layout::Known(a) => a.label().to_string(),
                        Layout::Generic => "unknown".into(),
                    },
                });
                models.push(Model {
                    name: b.name.clone(),
                    path,
                    ckpt,
                    detection,
                });
            }
            Err(e) => {
                problems.push(Problem::CannotOpen {
                    name: b.name.clone(),
                    error: error_chain(&e),
                });
            }
        }
    }
    let arch = match common_arch(&recipe, &models) {
        Ok(a) => Some(a),
        Err(mut more) => {
            problems.append(&mut more);
            None
        }
    };
    // The LoRAs' modules mapped to the models' architecture.
    let loras = lora_files
        .into_iter()
        .map(|(name, path, ckpt, network)| {
            let file = arch.map(|a| {
                let net = Network::read_for(&ckpt, Some(a)).expect("read above");
                Arc::new(LoraFile {
                    name: name.clone(),
                    ckpt,
                    net,
                })
            });
            Lora {
                name,
                path,
                network,
                file,
            }
        })
        .collect();
    Ok(Inputs {
        recipe,
        models,
        loras,
        planned,
        arch,
        problems,
    })
}

/// An error and its sources, as `{:#}` prints an error chain: `outer: inner: ...`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(&format!(": {c}"));
        source = c.source();
    }
    s
}

/// The one architecture every opened model has, or the problems of those that do not share
/// it.
fn common_arch(recipe: &Recipe, models: &[Model]) -> Result<Arch, Vec<Problem>> {
    let by_name: HashMap<&str, &Model> = models.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut problems = Vec::new();
    // (architecture, scale) -> the inputs of it, in binding order.
    let mut kinds: Vec<(Arch, u32, Vec<String>)> = Vec::new();
    for b in &recipe.bindings {
        let Some(m) = by_name.get(b.name.as_str()) else {
            continue;
        };
        let Layout::Known(arch) = m.detection.layout else {
            problems.push(Problem::UnknownArchitecture {
                name: m.name.clone(),
                path: m.path.clone(),
            });
            continue;
        };
        let scale = m.detection.scale;
        match kinds.iter_mut().find(|(a, s, _)| *a == arch && *s == scale) {
            Some((_, _, names)) => names.push(m.name.clone()),
            None => kinds.push((arch, scale, vec![m.name.clone()])),
        }
    }
    if kinds.len() > 1 {
        problems.push(Problem::MixedArchitectures {
            groups: kinds.clone(),
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    kinds
        .first()
        .map(|(a, _, _)| *a)
        .ok_or_else(|| vec![Problem::NoModels])
}
