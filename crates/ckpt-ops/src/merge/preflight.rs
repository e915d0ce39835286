//! The plan a merge shows before its pass: every input opened and checked (architecture,
//! keys missing or of another shape, dtypes, the output's place and free space), what each
//! component reads, the estimated peak memory, the output size, and the time predicted
//! from the rate this machine measured on earlier merges. Problems found here are all
//! reported at once, before any tensor data is read, so none costs a half-done pass.
//!
//! The memory estimate (the README states the same bound) per worker thread is the larger
//! of
//! * a streamed item: its 8 MiB of output and (N + 2) chunks of 64 Ki f64 (the inputs'
//!   values being combined), and
//! * the largest tensor a per-tensor method merges: its output bytes, the method's own
//!   buffers per element ([`NodeMethod::buffer_bytes`](super::methods::NodeMethod::buffer_bytes)), and the chunks;
//!
//! plus four finished pieces waiting for the writer. Nothing grows with the number of
//! tensors; with N inputs only the chunks (and DELLA's bits) do. The inputs' pages are
//! mapped, not copied: while a tensor is merged its N stored copies are resident as page
//! cache, which the OS reclaims under pressure (reported as `mapped`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::engine::{Decisions, Source};
use super::methods::SUB;
use super::plan::{MergePlan, Node};
use super::problem::Problem;
use crate::cache::Cache;
use crate::lora::LoraFile;
use ckpt_core::pass::Plan;

/// What the merge will do, or why it will not.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Preflight {
    pub output: String,
    /// The inputs' architecture, when they agree.
    pub arch: Option<String>,
    pub inputs: Vec<PlannedInput>,
    pub components: Vec<ComponentPlan>,
    /// Keys copied unchanged from one input, with why.
    pub copied: Vec<(String, String)>,
    pub skipped: Vec<String>,
    /// Bytes of the output file (header estimated).
    pub output_bytes: u64,
    /// Free bytes where the output goes, if the OS says.
    pub free_bytes: Option<u64>,
    /// Tensor bytes the pass reads from the inputs (once each).
    pub read_bytes: u64,
    pub memory: Memory,
    /// Seconds predicted at the rate this machine measured for merges of the same kind.
    pub predicted_seconds: Option<f64>,
    /// That rate (input bytes per second) and the kind it was measured for.
    pub rate: Option<(f64, String)>,
    /// The kind of merge, as rates are recorded: `linear` or the methods' names.
    pub kind: String,
    /// The LoRAs baked, and which of their modules are not.
    pub loras: Vec<PlannedLora>,
    /// Everything that stops the merge.
    pub problems: Vec<Problem>,
}

/// A LoRA file a recipe bakes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlannedLora {
    pub name: String,
    pub network: String,
    pub modules: usize,
    /// Modules whose change goes into the output.
    pub baked: usize,
    /// (module, why not).
    pub not_baked: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PlannedInput {
    pub name: String,
    pub path: String,
    pub bytes: u64,
    pub arch: String,
}

/// One component (text encoder, VAE, the denoiser) and what it reads.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ComponentPlan {
    pub component: String,
    /// The inputs its merged tensors read.
    pub reads: Vec<String>,
    /// The methods evaluated for it (`linear` for a combination).
    pub methods: Vec<String>,
    pub merged: usize,
    pub copied: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    /// Peak anonymous memory, estimated.
    pub anonymous: u64,
    /// Input pages resident at once while tensors are merged (page cache).
    pub mapped: u64,
    pub threads: usize,
    /// The largest tensor a per-tensor method takes whole, if any.
    pub largest_whole: Option<String>,
}

impl Preflight {
    /// A plan that could not be made past opening the inputs.
    pub fn failed(output: &Path, inputs: Vec<PlannedInput>, problems: Vec<Problem>) -> Self {
        Preflight {
            output: output.display().to_string(),
            inputs,
            problems,
            ..Default::default()
        }
    }
}

/// Checks every module of every LoRA against the model before the pass: a module whose
/// factors do not fit the key it patches is a problem (a LoRA for another model); one whose
/// name maps to no key, whose key the models lack or whose key is copied rather than
/// merged is listed as not baked.
pub fn check_loras(
    loras: &HashMap<String, Arc<LoraFile>>,
    pass_plan: &Plan<'_>,
    decisions: &Decisions,
    problems: &mut Vec<Problem>,
) -> Vec<PlannedLora> {
    let shapes: HashMap<&str, &[usize]> = pass_plan
        .entries()
        .iter()
        .map(|e| (e.key.as_str(), pass_plan.shape(e)))
        .collect();
    let merged: HashMap<&str, bool> = decisions
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), matches!(o.source, Source::Merge { .. })))
        .collect();
    let mut names: Vec<&String> = loras.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let f = &loras[name];
        let mut planned = PlannedLora {
            name: name.clone(),
            network: f.net.network(),
            modules: f.net.modules.len(),
            ..Default::default()
        };
        let mut misfits = Vec::new();
        for m in &f.net.modules {
            let Some(t) = &m.target else {
                planned.not_baked.push((
                    m.stem.clone(),
                    "its name patches no key of this architecture".into(),
                ));
                continue;
            };
            let Some(shape) = shapes.get(t.key.as_str()) else {
                planned
                    .not_baked
                    .push((m.stem.clone(), format!("the models have no {}", t.key)));
                continue;
            };
            match crate::lora::dims(&f.ckpt, m).and_then(|d| crate::lora::check_shape(m, d, shape))
            {
                Err(e) if m.not_computed.is_some() => {
                    planned.not_baked.push((m.stem.clone(), e.to_string()))
                }
                Err(e) => misfits.push(e.to_string()),
                Ok(()) if merged.get(t.key.as_str()) != Some(&true) => planned
                    .not_baked
                    .push((m.stem.clone(), format!("{} is copied, not merged", t.key))),
                Ok(()) => planned.baked += 1,
            }
        }
        if !misfits.is_empty() {
            problems.push(Problem::LoraMisfits {
                name: name.clone(),
                count: misfits.len(),
                first: misfits[0].clone(),
            });
        }
        out.push(planned);
    }
    out
}

/// Fills the plan of a merge that resolved: components, sizes, memory, time.
pub fn describe(
    pf: &mut Preflight,
    merge: &MergePlan,
    pass_plan: &Plan<'_>,
    decisions: &Decisions,
    output_bytes: u64,
    cache: &Cache,
) {
    let groups = merge.grouping.groups();
    let mut by_component: BTreeMap<usize, ComponentPlan> = BTreeMap::new();
    let order: Vec<String> = {
        let mut seen = Vec::new();
        for g in groups {
            let c = g.component.id().to_uppercase();
            if !seen.contains(&c) {
                seen.push(c);
            }
        }
        seen
    };
    let mut read_bytes = 0u64;
    let threads = rayon::current_num_threads().max(1);
    let chunk = SUB as u64 * 8;
    let mut per_thread = (8u64 << 20) + (merge.inputs.len() as u64 + 2) * chunk;
    let mut largest_piece = 8u64 << 20;
    let mut mapped = 0u64;
    let mut largest_whole: Option<(u64, String)> = None;
    for o in &decisions.outputs {
        let entry = &pass_plan.entries()[o.entry];
        let row = merge.grouping.group_of(&entry.key);
        let label = groups[row].component.id().to_uppercase();
        let at = order.iter().position(|c| *c == label).unwrap_or(0);
        let cp = by_component.entry(at).or_insert_with(|| ComponentPlan {
            component: label,
            ..Default::default()
        });
        match &o.source {
            Source::Copy { model } | Source::Decode { model, .. } => {
                cp.copied += 1;
                if let Some(t) = pass_plan.tensor(entry, *model) {
                    read_bytes += t.byte_len() as u64;
                }
            }
            Source::Merge {
                format, per_tensor, ..
            } => {
                cp.merged += 1;
                let mut needed = Vec::new();
                merge.needed_inputs(merge.output, row, &mut needed);
                let numel: u64 = pass_plan.shape(entry).iter().product::<usize>() as u64;
                let mut stored = 0u64;
                for &m in &needed {
                    let name = &merge.inputs[m].name;
                    if !cp.reads.contains(name) {
                        cp.reads.push(name.clone());
                    }
                    if let Some(t) = pass_plan.tensor(entry, m) {
                        stored += t.byte_len() as u64;
                    }
                }
                read_bytes += stored;
                let mut methods = Vec::new();
                let mut buffers = 0u64;
                method_names(merge, merge.output, row, &mut methods, &mut buffers, numel);
                for m in methods {
                    if !cp.methods.contains(&m) {
                        cp.methods.push(m);
                    }
                }
                if !*per_tensor {
                    // A streamed item: its output, the chunks, and the methods' buffers (a
                    // LoRA's decoded factors).
                    let need = (8u64 << 20) + (needed.len() as u64 + 2) * chunk + buffers;
                    per_thread = per_thread.max(need);
                }
                if *per_tensor {
                    let out = numel * format.size() as u64;
                    let need = out + buffers + (needed.len() as u64 + 2) * chunk;
                    per_thread = per_thread.max(need);
                    largest_piece = largest_piece.max(out);
                    mapped = mapped.max(stored);
                    if largest_whole.as_ref().is_none_or(|(n, _)| numel > *n) {
                        largest_whole = Some((numel, entry.key.clone()));
                    }
                }
            }
        }
    }
    for cp in by_component.values_mut() {
        if cp.methods.is_empty() {
            let what = if cp.merged == 0 {
                "copied"
            } else {
                "one input as is"
            };
            cp.methods.push(what.into());
        }
    }
    pf.components = by_component.into_values().collect();
    pf.copied = decisions.copied.clone();
    pf.skipped = decisions.skipped.clone();
    pf.output_bytes = output_bytes;
    pf.read_bytes = read_bytes;
    // Binary, headers and index structures: a fixed allowance.
    let fixed = 64u64 << 20;
    pf.memory = Memory {
        anonymous: fixed + threads as u64 * per_thread + 4 * largest_piece,
        mapped: threads as u64 * mapped,
        threads,
        largest_whole: largest_whole.map(|(_, k)| k),
    };
    pf.kind = kind(merge);
    // The rate of the same kind; else, as a lower bound, a linear merge's (the read alone).
    let known = cache
        .rate(&pf.kind)
        .map(|r| (r, pf.kind.clone()))
        .or_else(|| cache.rate("linear").map(|r| (r, "linear".to_string())));
    if let Some((rate, kind)) = known {
        pf.predicted_seconds = Some(read_bytes as f64 / rate);
        pf.rate = Some((rate, kind));
    }
}

/// The methods evaluated under `node` for `row`, and the buffers per tensor they keep.
fn method_names(
    merge: &MergePlan,
    node: usize,
    row: usize,
    out: &mut Vec<String>,
    buffers: &mut u64,
    numel: u64,
) {
    let n = &merge.nodes[node];
    match n {
        Node::Input(_) => {}
        // A combination that only passes one model through (a component-wise step's
        // selection) is not a method of its own.
        Node::Linear(c) => {
            let terms: Vec<f64> = c
                .terms
                .iter()
                .map(|(_, p)| p[row])
                .filter(|v| *v != 0.0)
                .collect();
            let passes = terms.len() == 1 && terms[0] == 1.0;
            if !passes && !out.iter().any(|m| m == "linear") {
                out.push("linear".into());
            }
        }
        Node::Method { name, method, .. } => {
            out.push((*name).to_string());
            *buffers += method.buffer_bytes(numel as usize, merge.inputs.len());
        }
    }
    for c in merge.needed_children(n, row) {
        method_names(merge, c, row, out, buffers, numel);
    }
}

/// The kind of merge a rate is recorded under: the methods' names, or `linear`.
fn kind(merge: &MergePlan) -> String {
    let mut names: Vec<&str> = merge
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Method { name, .. } => Some(*name),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "linear".into()
    } else {
        names.join("+")
    }
}
