//! The merge engine: recipes in the notation mergers write, evaluated tensor by tensor in
//! one streaming pass, written atomically with their provenance.
//!
//! ```text
//! recipe text --parse--> Recipe --resolve(arch)--> MergePlan (a graph over input files)
//!     --decide--> per-tensor sources --pass--> output chunks written in place --> rename
//! ```
//!
//! * [`recipe`]: the language: syntax tree, lexer, parser (errors at line and column), and
//!   the writer of recipes ckpt-diff makes itself;
//! * [`methods`]: the registry of merge methods, one module per method;
//! * [`plan`]: resolution into linear combinations and method nodes;
//! * [`engine`]: per-tensor evaluation inside the pass;
//! * [`metadata`]: `sd_merge_recipe`, `sd_merge_models`, the recipe text.

pub(crate) mod engine;
pub(crate) mod linear;
pub(crate) mod metadata;
pub mod methods;
pub mod plan;
pub mod preflight;
pub mod recipe;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

use std::sync::Arc;

use crate::lora::LoraFile;
use ckpt_core::catalog::{Arch, Detection, Layout, detect};
use ckpt_core::pass::{Cancel, Pass, PassError, Plan};
use ckpt_core::writer::{OutputFile, TensorSpec, WriteError};
use ckpt_read::dtype::{self, FloatFormat};
use ckpt_read::{Checkpoint, FileError};
use engine::{MergeWork, OutputScale, Source, WriteCount};
pub use engine::{Missing, OutputFormat, Precision};
use plan::MergePlan;
use recipe::Recipe;

/// Why a merge did not happen.
#[derive(Debug, Error)]
pub enum MergeError {
    // The place and the problem are the source's message: `{:#}` prints the chain once.
    #[error("recipe")]
    Parse(#[from] recipe::ParseError),
    #[error("recipe")]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Open(#[from] FileError),
    #[error("{0}")]
    Inputs(String),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Pass(#[from] PassError),
    /// Problems found before the pass (all of them), with the plan as far as it got.
    #[error("{}", .0.problems_text())]
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
    /// Called with each input once it is open, before any tensor is read (the CLI warns
    /// about dangerous pickles there).
    pub on_open: fn(&Checkpoint),
    /// Called with the plan once every check passed, before the pass.
    pub on_plan: fn(&preflight::Preflight),
    /// Stop after the plan: open and check everything, read no tensor, write nothing.
    pub dry_run: bool,
    /// Stops the merge at its next tensor piece once cancelled (nothing is written).
    pub cancel: Cancel,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            output: OutputFormat::AsInputs,
            precision: Precision::F64,
            missing: Missing::First,
            input_hashes: true,
            overwrite: false,
            on_open: |_| {},
            on_plan: |_| {},
            dry_run: false,
            cancel: Cancel::new(),
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

/// An input model, opened.
struct Opened {
    name: String,
    path: PathBuf,
    ckpt: Checkpoint,
    detection: Detection,
}

/// Runs `recipe` (paths relative to `base_dir`) into `out`.
pub fn run(
    recipe: &Recipe,
    base_dir: &Path,
    out: &Path,
    options: &Options,
    progress: &dyn ckpt_core::pass::Progress,
) -> Result<Outcome, MergeError> {
    let mut problems = Vec::new();
    if let Err(e) = ckpt_core::writer::refuse_existing(out, options.overwrite) {
        problems.push(format!(
            "{e}: pass --force to replace it, or choose another -o"
        ));
    }
    let recipe = &recipe::expand_lists(recipe, base_dir)?;
    // Open every file the steps mention (all of them, to report every problem at once),
    // to learn the architecture.
    let mentioned = plan::referenced_inputs(recipe);
    let mut opened: HashMap<String, Opened> = HashMap::new();
    let mut lora_files = Vec::new();
    let mut planned = Vec::new();
    let mut unopened = 0;
    for &i in &mentioned {
        let b = &recipe.bindings[i];
        let path = resolve_path(base_dir, &b.path);
        match ckpt_core::catalog::diffusers::open(&path) {
            Ok(ckpt) if let Some(net) = crate::lora::Network::read(&ckpt) => {
                planned.push(preflight::PlannedInput {
                    name: b.name.clone(),
                    path: path.display().to_string(),
                    bytes: ckpt.bytes().len() as u64,
                    arch: "LoRA".into(),
                });
                lora_files.push((b.name.clone(), path, ckpt, net));
            }
            Ok(ckpt) => {
                (options.on_open)(&ckpt);
                let detection = detect(&ckpt);
                planned.push(preflight::PlannedInput {
                    name: b.name.clone(),
                    path: path.display().to_string(),
                    bytes: ckpt.bytes().len() as u64,
                    arch: match detection.layout {
                        Layout::Known(a) => a.label().to_string(),
                        Layout::Generic => "unknown".into(),
                    },
                });
                opened.insert(
                    b.name.clone(),
                    Opened {
                        name: b.name.clone(),
                        path,
                        ckpt,
                        detection,
                    },
                );
            }
            Err(e) => {
                unopened += 1;
                problems.push(format!("'{}': {:#}", b.name, anyhow::Error::new(e)));
            }
        }
    }
    let arch = match common_arch(recipe, &opened) {
        Ok(a) => Some(a),
        Err(mut more) => {
            problems.append(&mut more);
            None
        }
    };
    // Without every input open there is no plan to make; report what was found so far.
    let Some(arch) = arch.filter(|_| unopened == 0) else {
        return Err(MergeError::Preflight(Box::new(
            preflight::Preflight::failed(out, planned, problems),
        )));
    };
    // LoRAs, their modules mapped to the models' architecture.
    let mut loras: HashMap<String, Arc<LoraFile>> = HashMap::new();
    let mut lora_paths: Vec<PathBuf> = Vec::new();
    for (name, path, ckpt, own) in lora_files {
        lora_paths.push(path.clone());
        // Named for another architecture (SD1 and SD2 share names: their shapes decide).
        if let Some(own) = own.better_fit_than(arch) {
            problems.push(format!(
                "'{name}' ({}) is a LoRA for {} but the models are {}: bake it into a model of \
                 its architecture",
                path.display(),
                own.label(),
                arch.label()
            ));
        }
        let net = crate::lora::Network::read_for(&ckpt, Some(arch)).expect("read above");
        loras.insert(name.clone(), Arc::new(LoraFile { name, ckpt, net }));
    }
    let mut merge = plan::resolve_with(recipe, arch, &loras)?;
    compact(&mut merge);
    let models: Vec<&Opened> = merge
        .inputs
        .iter()
        .map(|i| {
            opened.get(&i.name).ok_or_else(|| {
                MergeError::Inputs(format!("'{}' is used but was not opened", i.name))
            })
        })
        .collect::<Result<_, _>>()?;
    let pass_plan = Plan::new(models.iter().map(|m| &m.ckpt).collect());

    // What each output tensor is.
    let decisions = engine::decide(&merge, &pass_plan, options.output, options.missing);
    let mut specs: Vec<TensorSpec> = decisions
        .outputs
        .iter()
        .map(|o| {
            let entry = &pass_plan.entries()[o.entry];
            let shape = pass_plan.shape(entry).to_vec();
            let dtype = match &o.source {
                Source::Merge { format, .. } => format.dtype(),
                Source::Copy { model } => {
                    pass_plan
                        .tensor(entry, *model)
                        .expect("copied from a holder")
                        .dtype
                }
            };
            let shape = match &o.source {
                Source::Copy { model } => pass_plan
                    .tensor(entry, *model)
                    .expect("holder")
                    .shape
                    .clone(),
                _ => shape,
            };
            TensorSpec {
                name: o.name.clone(),
                dtype,
                shape,
            }
        })
        .collect();
    // Scaled tensors: each with its `scale_weight`, and the file with ComfyUI's marker.
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
    if let Some(&(_, format)) = scaled.first() {
        specs.push(TensorSpec {
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
        specs.push(TensorSpec {
            name: ckpt_read::quant::scale_name(name),
            dtype: ckpt_read::Dtype::F32,
            shape: Vec::new(),
        });
    }

    // Provenance, with placeholders where the SHA-256 will go.
    let infos: Vec<metadata::InputInfo> = models
        .iter()
        .enumerate()
        .map(|(i, m)| metadata::InputInfo {
            name: m.name.clone(),
            file: m.ckpt.display_name(),
            sha256: options.input_hashes.then(|| {
                crate::hash::sha256_cached_only(&m.path).unwrap_or_else(|| metadata::placeholder(i))
            }),
            legacy_hash: crate::hash::legacy_hash(m.ckpt.bytes()),
            own_recipe: m.ckpt.metadata_value("sd_merge_recipe").map(str::to_string),
            own_models: m.ckpt.metadata_value("sd_merge_models").map(str::to_string),
        })
        .collect();
    let dtype_label = match options.output {
        OutputFormat::AsInputs => "as first input".to_string(),
        OutputFormat::Float(f) => dtype::name(f.dtype()),
        OutputFormat::ScaledFp8(f) => format!("scaled {}", dtype::name(f.dtype())),
    };
    let precision_label = if options.precision == Precision::F32 {
        "f32"
    } else {
        "f64"
    };
    let meta = metadata::build(&recipe.text, &infos, &dtype_label, precision_label);
    let input_paths: Vec<&Path> = models.iter().map(|m| m.path.as_path()).collect();

    // The plan, and the checks of the output's place, before any tensor is read.
    let mut plan_view = preflight::Preflight {
        output: out.display().to_string(),
        arch: Some(arch.label().to_string()),
        inputs: planned,
        ..Default::default()
    };
    let mut guarded: Vec<&Path> = input_paths.clone();
    guarded.extend(lora_paths.iter().map(PathBuf::as_path));
    if let Err(e) = ckpt_core::writer::refuse_input(out, &guarded) {
        problems.push(format!("{e}"));
    }
    plan_view.loras = preflight::check_loras(&loras, &pass_plan, &decisions, &mut problems);
    let data: u64 = specs.iter().map(|t| t.byte_len() as u64).sum();
    let header = recipe.text.len() as u64 * 2 + 160 * specs.len() as u64 + 4096;
    preflight::describe(
        &mut plan_view,
        &merge,
        &pass_plan,
        &decisions,
        data + header,
    );
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        problems.push(format!(
            "the output's folder '{}' does not exist: create it or choose another -o",
            dir.display()
        ));
    } else {
        plan_view.free_bytes = ckpt_read::sys::free_space(&dir);
        if let Some(free) = plan_view.free_bytes
            && free < plan_view.output_bytes
        {
            problems.push(format!(
                "not enough free space in '{}': the output needs {} bytes and {free} are free; \
                 free some space or write elsewhere",
                dir.display(),
                plan_view.output_bytes
            ));
        }
    }
    if !problems.is_empty() {
        plan_view.problems = problems;
        return Err(MergeError::Preflight(Box::new(plan_view)));
    }
    (options.on_plan)(&plan_view);
    let outcome = |bytes: u64, seconds: f64, inputs, plan| Outcome {
        output: out.display().to_string(),
        arch,
        tensors: decisions.outputs.len(),
        merged: decisions
            .outputs
            .iter()
            .filter(|o| matches!(o.source, Source::Merge { .. }))
            .count(),
        copied: decisions.copied.clone(),
        skipped: decisions.skipped.clone(),
        bytes,
        coefficients: merge.is_linear().then(|| merge.to_string()),
        inputs,
        plan,
        dry_run: options.dry_run,
        seconds,
    };
    if options.dry_run {
        let inputs = models.iter().map(|m| (m.name.clone(), None)).collect();
        return Ok(outcome(0, 0.0, inputs, plan_view));
    }
    let started = std::time::Instant::now();
    let mut output = OutputFile::create(out, specs, &meta, &input_paths)?;

    let mut outputs = HashMap::new();
    let mut whole = Vec::new();
    let mut chunked = Vec::new();
    for mut o in decisions.outputs.iter().cloned() {
        o.out_index = output.index_of(&o.name).expect("every spec is in the file");
        if o.scale != OutputScale::None {
            o.scale_index = output.index_of(&ckpt_read::quant::scale_name(&o.name));
        }
        match o.source {
            Source::Merge {
                per_tensor: true, ..
            } => whole.push(o.entry),
            _ => chunked.push(o.entry),
        }
        outputs.insert(o.entry, o);
    }
    // Items: per-tensor methods take whole tensors; everything else streams in pieces.
    let mut pass = Pass::new(progress)
        .cancel_on(&options.cancel)
        .item_bytes(8 << 20);
    let mut items = pass.items(&pass_plan, &chunked);
    for &e in &whole {
        let numel: usize = pass_plan.shape(&pass_plan.entries()[e]).iter().product();
        items.push(ckpt_core::pass::Item {
            entry: e,
            start: 0,
            end: numel,
            numel,
        });
    }
    items.sort_by_key(|it| (it.entry, it.start));
    let mut count = WriteCount::default();
    // A merge hands every input page back as soon as it is merged, whatever the size: it
    // waits on the disk, so unmapping costs it nothing measurable, and its resident memory
    // stays its buffers (0.2 GB) instead of every input mapped (6.4 GB for three SD1.5
    // files), which is what users read in their task manager.
    pass = pass.release(ckpt_core::pass::Release::Always);

    // Hash the inputs that are not cached, on their own threads, while the merge runs; one
    // more thread writes the output.
    let hashes: Vec<Option<String>> =
        std::thread::scope(|scope| -> Result<Vec<Option<String>>, MergeError> {
            let handles: Vec<_> = models
                .iter()
                .zip(&infos)
                .map(|(m, info)| {
                    let needs = info.sha256.as_deref().is_some_and(|h| h.starts_with("@@"));
                    let known = info.sha256.clone();
                    scope.spawn(move || {
                        if needs {
                            Some(crate::hash::sha256_checkpoint_cached(
                                &m.path, &m.ckpt, true,
                            ))
                        } else {
                            known
                        }
                    })
                })
                .collect();
            ckpt_core::writer::stream_pieces(&output, |tx| {
                let work = MergeWork {
                    plan: &merge,
                    precision: options.precision,
                    outputs,
                    out: &output,
                    writer: tx,
                };
                pass.run_items(&pass_plan, &items, &work, &mut count)
                    .map_err(MergeError::from)
            })?;
            Ok(handles
                .into_iter()
                .map(|h| h.join().expect("hashing does not panic"))
                .collect())
        })?;
    for (i, h) in hashes.iter().enumerate() {
        if let Some(h) = h {
            output.patch_header(&metadata::placeholder(i), h)?;
        }
    }
    output.finish()?;
    let seconds = started.elapsed().as_secs_f64();
    preflight::rates::record(&plan_view.kind, plan_view.read_bytes, seconds);
    let inputs = models
        .iter()
        .zip(hashes)
        .map(|(m, h)| (m.name.clone(), h))
        .collect();
    Ok(outcome(count.bytes, seconds, inputs, plan_view))
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

/// The one architecture every opened input has, or every input that does not share it.
fn common_arch(recipe: &Recipe, opened: &HashMap<String, Opened>) -> Result<Arch, Vec<String>> {
    let mut problems = Vec::new();
    // (architecture, scale) -> the inputs of it, in binding order.
    let mut kinds: Vec<((Arch, u32), Vec<&str>)> = Vec::new();
    for b in &recipe.bindings {
        let Some(m) = opened.get(&b.name) else {
            continue;
        };
        let Layout::Known(arch) = m.detection.layout else {
            problems.push(format!(
                "'{}' ({}) is not a checkpoint of an architecture ckpt-diff recognises ({}); \
                 merges need one architecture to map block weights",
                m.name,
                m.path.display(),
                Arch::ids()
            ));
            continue;
        };
        let kind = (arch, m.detection.scale);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, names)) => names.push(&m.name),
            None => kinds.push((kind, vec![&m.name])),
        }
    }
    if kinds.len() > 1 {
        let parts: Vec<String> = kinds
            .iter()
            .map(|((a, scale), names)| {
                let width = if *scale > 1 {
                    format!(" at 1/{scale} width")
                } else {
                    String::new()
                };
                format!(
                    "{} {} {}{width}",
                    names.join(", "),
                    if names.len() == 1 { "is" } else { "are" },
                    a.label()
                )
            })
            .collect();
        problems.push(format!(
            "a recipe merges checkpoints of one architecture, but {}: leave out the others or \
             merge each architecture in its own recipe",
            parts.join("; ")
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    kinds
        .first()
        .map(|((a, _), _)| *a)
        .ok_or_else(|| vec!["the recipe uses no model file".to_string()])
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
