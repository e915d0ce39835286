//! The merge engine: recipes in the notation mergers write, evaluated tensor by tensor in
//! one streaming pass, written atomically with their provenance.
//!
//! ```text
//! recipe text --parse--> Recipe --open--> Inputs (every file opened, its architecture)
//!     --plan--> Planned (the graph resolved, what each output tensor is, the preflight:
//!               every problem at once, before any tensor is read)
//!     --execute--> output chunks written in place by one pass --> rename
//! ```
//!
//! [`run`] does the three steps; the command line calls them one by one to warn about the
//! inputs, show the plan and run the pass with its progress bar.
//!
//! * [`recipe`]: the language: syntax tree, lexer, parser (errors at line and column), and
//!   the writer of recipes ckpt-diff makes itself;
//! * [`methods`]: the registry of merge methods, one module per method;
//! * [`plan`]: resolution into linear combinations and method nodes;
//! * [`preflight`]: the plan shown before the pass; [`problem`]: what stops a merge;
//! * [`engine`]: per-tensor evaluation inside the pass;
//! * [`metadata`]: `sd_merge_recipe`, `sd_merge_models`, the recipe text.

pub(crate) mod engine;
mod execute;
mod inputs;
pub(crate) mod linear;
pub(crate) mod metadata;
pub mod methods;
pub mod plan;
pub mod preflight;
pub mod problem;
pub mod recipe;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::cache::Cache;
use crate::lora::LoraFile;
use ckpt_core::catalog::Arch;
use ckpt_core::pass::{Cancel, PassError, Plan, Progress};
use ckpt_core::writer::{TensorSpec, WriteError};
use ckpt_read::dtype::{self, FloatFormat};
use engine::{Decisions, OutputScale, Source};
pub use engine::{Missing, OutputFormat, Precision};
pub use inputs::{Inputs, open};
use plan::MergePlan;
pub use problem::{Problem, Remedy};
use recipe::Recipe;

/// Why a merge did not happen.
#[derive(Debug, Error)]
pub enum MergeError {
    // The place and the problem are the source's message: `{:#}` prints the chain once.
    #[error("recipe")]
    Parse(#[from] recipe::ParseError),
    #[error("recipe")]
    Plan(#[from] plan::PlanError),
    #[error("'{name}' is used but was not opened")]
    NotOpened { name: String },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufWriteError),
    /// Problems found before the pass (all of them), with the plan as far as it got.
    #[error(
        "{} problem{} found before reading any tensor data",
        .0.problems.len(),
        if .0.problems.len() == 1 { "" } else { "s" }
    )]
    Preflight(Box<preflight::Preflight>),
}

/// How to merge.
#[derive(Clone, Debug)]
pub struct Options {
    /// The float formats of the output.
    pub output: OutputFormat,
    pub precision: Precision,
    pub missing: Missing,
    /// Compute the inputs' SHA-256 for the provenance metadata (while merging).
    pub input_hashes: bool,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Write GGUF, the denoiser only, as city96's tools do (a `quant` of `None`: F16/BF16 as
    /// convert.py chooses from the dtype `output` gives each tensor).
    pub gguf: Option<crate::gguf::GgufOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            output: OutputFormat::AsInputs,
            precision: Precision::F64,
            missing: Missing::First,
            input_hashes: true,
            overwrite: false,
            gguf: None,
        }
    }
}

/// What a merge did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub output: String,
    pub arch: Arch,
    pub tensors: usize,
    pub merged: usize,
    /// Keys copied unchanged from one input (integer tensors are not listed), with why.
    pub copied: Vec<(String, String)>,
    pub skipped: Vec<String>,
    pub bytes: u64,
    /// The per-row coefficients of each input, for linear recipes.
    pub coefficients: Option<String>,
    /// The inputs' SHA-256 (null when not computed).
    pub inputs: Vec<(String, Option<String>)>,
    /// The plan shown before the pass.
    pub plan: preflight::Preflight,
    /// Only planned (`--dry-run`): nothing was read or written.
    pub dry_run: bool,
    /// Seconds the pass took (0 for a dry run).
    pub seconds: f64,
}

/// An input's SHA-256 for the provenance metadata: known (from the cache), or to be
/// computed while the merge runs, its place in the header held by a placeholder of the
/// same length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum InputHash {
    Known(String),
    Pending { placeholder: String },
}

/// A merge planned: everything the pass needs, checked.
pub struct Planned<'i> {
    inputs: &'i Inputs,
    out: PathBuf,
    options: Options,
    arch: Arch,
    merge: MergePlan,
    /// The models the merge reads, in its input order (indices into the opened inputs).
    models: Vec<usize>,
    pass_plan: Plan<'i>,
    decisions: Decisions,
    specs: Vec<TensorSpec>,
    /// The GGUF output planned, when the output is GGUF.
    gguf: Option<crate::gguf::GgufPlan>,
    hashes: Vec<Option<InputHash>>,
    metadata: Vec<(String, String)>,
    preflight: preflight::Preflight,
}

impl Planned<'_> {
    /// The plan to show before the pass.
    pub fn preflight(&self) -> &preflight::Preflight {
        &self.preflight
    }

    /// For a GGUF output: what it holds, in words (the denoiser-only note, the types).
    pub fn gguf_notes(&self) -> Vec<String> {
        self.gguf.as_ref().map_or_else(Vec::new, |g| {
            crate::gguf::describe(g, self.options.gguf.and_then(|o| o.quant))
        })
    }

    /// What a dry run reports: the plan, nothing read or written.
    pub fn dry_run(&self) -> Outcome {
        let inputs = self
            .models
            .iter()
            .map(|&m| (self.inputs.models[m].name.clone(), None))
            .collect();
        self.outcome(0, 0.0, inputs, true)
    }

    fn outcome(
        &self,
        bytes: u64,
        seconds: f64,
        inputs: Vec<(String, Option<String>)>,
        dry_run: bool,
    ) -> Outcome {
        Outcome {
            output: self.out.display().to_string(),
            arch: self.arch,
            tensors: self
                .gguf
                .as_ref()
                .map_or(self.decisions.outputs.len(), |g| g.tensors.len()),
            merged: self
                .decisions
                .outputs
                .iter()
                .filter(|o| matches!(o.source, Source::Merge { .. }))
                .count(),
            copied: self.decisions.copied.clone(),
            skipped: self.decisions.skipped.clone(),
            bytes,
            coefficients: self.merge.is_linear().then(|| self.merge.to_string()),
            inputs,
            plan: self.preflight.clone(),
            dry_run,
            seconds,
        }
    }
}

/// Runs `recipe` (paths relative to `base_dir`) into `out`: [`open`], [`plan`],
/// [`execute`].
pub fn run(
    recipe: &Recipe,
    base_dir: &Path,
    out: &Path,
    options: &Options,
    progress: &dyn Progress,
    cancel: &Cancel,
    cache: &Cache,
) -> Result<Outcome, MergeError> {
    let inputs = open(recipe, base_dir)?;
    let planned = plan(&inputs, out, options, cache)?;
    execute(planned, progress, cancel, cache)
}

pub use execute::execute;

/// Plans the merge of the opened inputs into `out`: resolves the recipe for their
/// architecture, decides what every output tensor is, lays out the output and its
/// provenance, and checks everything that can be checked before the pass (the output's place
/// and free space, every LoRA module against the models). Every problem is reported at once,
/// in [`MergeError::Preflight`]; nothing is read or written.
pub fn plan<'i>(
    inputs: &'i Inputs,
    out: &Path,
    options: &Options,
    cache: &Cache,
) -> Result<Planned<'i>, MergeError> {
    let mut problems = Vec::new();
    if ckpt_core::writer::refuse_existing(out, options.overwrite).is_err() {
        problems.push(Problem::OutputExists {
            path: out.to_path_buf(),
        });
    }
    problems.extend(inputs.problems.iter().cloned());
    // Without every input open there is no plan to make; report what was found so far.
    let Some(arch) = inputs.arch.filter(|_| inputs.all_opened()) else {
        return Err(MergeError::Preflight(Box::new(
            preflight::Preflight::failed(out, inputs.planned.clone(), problems),
        )));
    };
    // LoRAs named for another architecture (SD1 and SD2 share names: their shapes decide).
    let mut loras: HashMap<String, Arc<LoraFile>> = HashMap::new();
    for l in &inputs.loras {
        if let Some(own) = l.network.better_fit_than(arch) {
            problems.push(Problem::LoraForAnotherArchitecture {
                name: l.name.clone(),
                path: l.path.clone(),
                lora: own,
                models: arch,
            });
        }
        if let Some(f) = &l.file {
            loras.insert(l.name.clone(), Arc::clone(f));
        }
    }
    let mut merge = plan::resolve_with(&inputs.recipe, arch, &loras)?;
    compact(&mut merge);
    let models: Vec<usize> = merge
        .inputs
        .iter()
        .map(|i| {
            inputs
                .models
                .iter()
                .position(|m| m.name == i.name)
                .ok_or_else(|| MergeError::NotOpened {
                    name: i.name.clone(),
                })
        })
        .collect::<Result<_, _>>()?;
    let pass_plan = Plan::new(models.iter().map(|&m| &inputs.models[m].ckpt).collect());
    let mut decisions = engine::decide(&merge, &pass_plan, options.output, options.missing);
    let specs = output_specs(&pass_plan, &decisions);
    // GGUF: each output's dtype is the one convert.py would have seen.
    let gguf = match options.gguf {
        None => None,
        Some(gguf_options) => {
            let sources: Vec<crate::gguf::SourceTensor<'_>> = decisions
                .outputs
                .iter()
                .zip(&specs)
                .map(|(o, spec)| crate::gguf::SourceTensor {
                    key: &o.name,
                    shape: &spec.shape,
                    dtype: spec.dtype,
                    is_float: dtype::float_format(spec.dtype).is_some(),
                })
                .collect();
            let g = crate::gguf::plan::plan(arch, &sources, &gguf_options)
                .map_err(crate::gguf::GgufWriteError::from)?;
            // Only what the file holds is merged, planned and shown.
            let written: std::collections::HashSet<&str> =
                g.tensors.iter().map(|t| t.key.as_str()).collect();
            decisions
                .outputs
                .retain(|o| written.contains(o.name.as_str()));
            decisions
                .copied
                .retain(|(k, _)| written.contains(k.as_str()));
            decisions
                .skipped
                .retain(|k| k.starts_with(ckpt_core::catalog::DENOISER_PREFIX));
            Some(g)
        }
    };

    // Provenance, with placeholders where the SHA-256 will go.
    let hashes: Vec<Option<InputHash>> = models
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            options
                .input_hashes
                .then(|| match cache.sha256(&inputs.models[m].path) {
                    Some(h) => InputHash::Known(h),
                    None => InputHash::Pending {
                        placeholder: metadata::placeholder(i),
                    },
                })
        })
        .collect();
    let infos: Vec<metadata::InputInfo> = models
        .iter()
        .zip(&hashes)
        .map(|(&m, h)| {
            let m = &inputs.models[m];
            metadata::InputInfo {
                name: m.name.clone(),
                file: m.ckpt.display_name(),
                sha256: h.as_ref().map(|h| match h {
                    InputHash::Known(h) => h.clone(),
                    InputHash::Pending { placeholder } => placeholder.clone(),
                }),
                legacy_hash: crate::hash::legacy_hash(m.ckpt.bytes()),
                own_recipe: m.ckpt.metadata_value("sd_merge_recipe").map(str::to_string),
                own_models: m.ckpt.metadata_value("sd_merge_models").map(str::to_string),
            }
        })
        .collect();
    let dtype_label = match options.output {
        OutputFormat::AsInputs => "as first input".to_string(),
        OutputFormat::Float(f) => dtype::name(f.dtype()),
        OutputFormat::ScaledFp8(f) => format!("scaled {}", dtype::name(f.dtype())),
        OutputFormat::PerLayer(code) => format!("ComfyUI {} per layer", code.format()),
    };
    let precision_label = if options.precision == Precision::F32 {
        "f32"
    } else {
        "f64"
    };
    let meta = metadata::build(&inputs.recipe.text, &infos, &dtype_label, precision_label);

    // The plan, and the checks of the output's place, before any tensor is read.
    let mut plan_view = preflight::Preflight {
        output: out.display().to_string(),
        arch: Some(arch.label().to_string()),
        inputs: inputs.planned.clone(),
        ..Default::default()
    };
    let mut guarded: Vec<&Path> = models
        .iter()
        .map(|&m| inputs.models[m].path.as_path())
        .collect();
    guarded.extend(inputs.loras.iter().map(|l| l.path.as_path()));
    if ckpt_core::writer::refuse_input(out, &guarded).is_err() {
        problems.push(Problem::OutputIsInput {
            path: out.to_path_buf(),
        });
    }
    plan_view.loras = preflight::check_loras(&loras, &pass_plan, &decisions, &mut problems);
    let data: u64 = match &gguf {
        Some(g) => g
            .tensors
            .iter()
            .map(|t| t.out.byte_len().unwrap_or(0) as u64)
            .sum(),
        None => specs.iter().map(|t| t.byte_len() as u64).sum(),
    };
    let header = inputs.recipe.text.len() as u64 * 2 + 160 * specs.len() as u64 + 4096;
    preflight::describe(
        &mut plan_view,
        &merge,
        &pass_plan,
        &decisions,
        data + header,
        cache,
    );
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        problems.push(Problem::NoOutputFolder { dir });
    } else {
        plan_view.free_bytes = ckpt_read::sys::free_space(&dir);
        if let Some(free) = plan_view.free_bytes
            && free < plan_view.output_bytes
        {
            problems.push(Problem::NoSpace {
                dir,
                need: plan_view.output_bytes,
                free,
            });
        }
    }
    if !problems.is_empty() {
        plan_view.problems = problems;
        return Err(MergeError::Preflight(Box::new(plan_view)));
    }
    Ok(Planned {
        inputs,
        out: out.to_path_buf(),
        options: options.clone(),
        arch,
        merge,
        models,
        pass_plan,
        decisions,
        specs,
        gguf,
        hashes,
        metadata: meta,
        preflight: plan_view,
    })
}

/// What each output tensor is in the file: its name, dtype and shape; scaled tensors with
/// their `scale_weight`, and the file with ComfyUI's marker.
fn output_specs(pass_plan: &Plan<'_>, decisions: &Decisions) -> Vec<TensorSpec> {
    let mut specs: Vec<TensorSpec> = decisions
        .outputs
        .iter()
        .map(|o| {
            let entry = &pass_plan.entries()[o.entry];
            let (dtype, shape) = match &o.source {
                Source::Merge {
                    quant: Some(code), ..
                } => {
                    let shape = pass_plan.shape(entry);
                    let (_, dtype, stored) = code.stored(shape[0], shape[1]).remove(0);
                    (dtype, stored)
                }
                Source::Merge { format, .. } | Source::Decode { format, .. } => {
                    (format.dtype(), pass_plan.shape(entry).to_vec())
                }
                Source::Copy { model } => {
                    let t = pass_plan
                        .tensor(entry, *model)
                        .expect("copied from a holder");
                    (t.dtype, t.shape.clone())
                }
            };
            TensorSpec {
                name: o.name.clone(),
                dtype,
                shape,
            }
        })
        .collect();
    let scaled: Vec<(&str, FloatFormat)> = decisions
        .outputs
        .iter()
        .zip(&specs)
        .filter(|(o, _)| o.scale != OutputScale::None)
        .map(|(o, spec)| {
            let format = dtype::float_format(spec.dtype).expect("a scaled float");
            (o.name.as_str(), format)
        })
        .collect();
    let mut extra = Vec::new();
    for o in &decisions.outputs {
        if let Source::Merge {
            quant: Some(code), ..
        } = o.source
        {
            let shape = pass_plan.shape(&pass_plan.entries()[o.entry]);
            for (name, dtype, shape) in engine::quant_parts(&o.name, code, shape) {
                extra.push(TensorSpec { name, dtype, shape });
            }
        }
    }
    if let Some(&(_, format)) = scaled.first() {
        extra.push(TensorSpec {
            name: format!(
                "{}{}",
                ckpt_core::catalog::DENOISER_PREFIX,
                ckpt_read::quant::MARKER
            ),
            dtype: format.dtype(),
            shape: vec![0],
        });
    }
    for (name, _) in &scaled {
        extra.push(TensorSpec {
            name: ckpt_read::quant::scale_name(name),
            dtype: ckpt_read::Dtype::F32,
            shape: Vec::new(),
        });
    }
    specs.extend(extra);
    specs
}

/// A path from a recipe, relative to the recipe's folder unless absolute (`~/` expands).
pub fn resolve_path(base_dir: &Path, p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = ckpt_read::env::HOME.get_os()
    {
        return PathBuf::from(home).join(rest);
    }
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// Drops the inputs the output does not depend on, renumbering the rest.
fn compact(merge: &mut MergePlan) {
    let rows = merge.grouping.groups().len();
    let mut used = Vec::new();
    for r in 0..rows {
        merge.needed_inputs(merge.output, r, &mut used);
    }
    used.sort_unstable();
    let remap: HashMap<usize, usize> = used
        .iter()
        .enumerate()
        .map(|(new, &old)| (old, new))
        .collect();
    merge.inputs = used.iter().map(|&i| merge.inputs[i].clone()).collect();
    for n in &mut merge.nodes {
        if let plan::Node::Input(i) = n {
            // Unused inputs keep a dangling index; nothing reaches them.
            *i = remap.get(i).copied().unwrap_or(usize::MAX);
        }
    }
}
