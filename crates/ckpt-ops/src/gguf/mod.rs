//! GGUF output (issue #27 part 3): a denoiser written as city96's ComfyUI-GGUF tools write
//! it (`tools/convert.py`, then his patched `llama-quantize`), streamed.
//!
//! [`plan::plan`] decides every tensor's name, stored shape and ggml type and the KVs
//! (pure); [`open_output`] lays out the header (every tensor's byte size follows from its
//! type) and creates the file through [`OutputFile::create_raw`] (temporary sibling, free
//! space checked, inputs refused, synced and renamed by `finish`); then one pass fills each
//! tensor's region as its values arrive: [`encode_item`] quantizes one work item (items
//! start on multiples of 2048 elements, so on whole ggml blocks, and rows are whole blocks
//! by the plan). [`convert`] does it for one checkpoint; `merge` does it for merged values.
//!
//! Memory: a worker holds one item's values (at most [`SUB`] f64 and f32 values at a time)
//! and its encoded bytes (at most the item's element count times 4 bytes, F32 being the
//! widest type); the pass bounds items in flight (`Pass::ahead_bytes`, 256 MiB of input),
//! the writer thread four finished pieces. No tensor is held whole.
//!
//! ```no_run
//! # use ckpt_core::pass::{NoProgress, Pass};
//! # use ckpt_ops::gguf::{convert, GgufOptions, Quant};
//! let ckpt = ckpt_read::Checkpoint::open("flux1-dev.safetensors").unwrap();
//! let det = ckpt_core::catalog::detect(&ckpt);
//! let options = GgufOptions { quant: Quant::parse("Q4_K_M"), long_names: false };
//! convert(&ckpt, &det, "flux1-dev-Q4_K_M.gguf".as_ref(), &options, false, &Pass::new(&NoProgress)).unwrap();
//! ```

pub mod mix;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ckpt_core::catalog::{Detection, component_of};
use ckpt_core::pass::{Ignore, Item, Pass, PassError, Plan, Slice, Visit};
use ckpt_core::writer::{OutputFile, Piece, WriteError};
use ckpt_read::Checkpoint;
use ckpt_read::gguf::quantize::quantize;
use ckpt_read::gguf::write::{WriteHeaderError, header};
use ckpt_read::gguf::{GgmlType, Value};

use crate::fix::FixReport;
pub use mix::Quant;
pub use plan::{GGML_MAX_NAME, GgufOptions, GgufPlan, PlanError, SourceTensor};

/// Values converted and quantized at a time within an item (a multiple of 256, so of every
/// block).
pub const SUB: usize = 1 << 16;

/// Why a GGUF could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("the input's architecture is unknown; GGUF output needs one city96's tools name")]
    UnknownArch,
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Header(#[from] WriteHeaderError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Pass(#[from] PassError),
}

/// The output file laid out, and where each planned tensor goes: by source key, its index
/// in the file and its ggml type.
pub struct GgufOutput {
    pub file: OutputFile,
    pub targets: HashMap<String, (usize, GgmlType)>,
}

/// Lays out the header of `planned` (with `extra` KVs after its own) and creates the file.
pub fn open_output(
    planned: &GgufPlan,
    extra: Vec<(String, Value)>,
    out: &Path,
    inputs: &[&Path],
) -> Result<GgufOutput, GgufWriteError> {
    let mut kvs = planned.kvs.clone();
    kvs.extend(extra);
    let outs: Vec<_> = planned.tensors.iter().map(|t| t.out.clone()).collect();
    let h = header(&kvs, &outs, ckpt_read::gguf::container::DEFAULT_ALIGNMENT)?;
    let regions = outs
        .iter()
        .zip(&h.offsets)
        .map(|(t, &o)| (t.name.clone(), t.byte_len().expect("checked by header"), o))
        .collect();
    let file = OutputFile::create_raw(out, h.bytes, regions, h.data_len, inputs)?;
    let targets = planned
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.key.clone(), (i, t.out.ggml_type)))
        .collect();
    Ok(GgufOutput { file, targets })
}

/// Encodes elements `item.start..item.end` of a tensor as `ty`: `fill(start, end, values)`
/// gives the f64 values of a sub-range; they are rounded to f32 (the values city96's tools
/// quantize) and quantized. Returns the byte offset in the tensor's data and the bytes.
pub fn encode_item(
    ty: GgmlType,
    item: &Item,
    mut fill: impl FnMut(usize, usize, &mut [f64]),
) -> (usize, Vec<u8>) {
    let (block, size) = (ty.block_size(), ty.type_size());
    debug_assert!(item.start.is_multiple_of(block));
    let mut bytes = vec![0u8; ty.bytes_for(item.len()).expect("items are whole blocks")];
    let mut values = vec![0.0f64; SUB.min(item.len())];
    let mut x = vec![0.0f32; values.len()];
    let mut start = item.start;
    while start < item.end {
        let end = (start + SUB).min(item.end);
        let (v, x) = (&mut values[..end - start], &mut x[..end - start]);
        fill(start, end, v);
        for (o, v) in x.iter_mut().zip(v.iter()) {
            *o = *v as f32;
        }
        let at = (start - item.start) / block * size;
        let len = (end - start) / block * size;
        quantize(ty, x, &mut bytes[at..at + len]).expect("the plan keeps rows whole blocks");
        start = end;
    }
    (item.start / block * size, bytes)
}

/// The GGUF planned for `ckpt`'s denoiser, and the pass plan it reads.
pub fn plan_checkpoint<'c>(
    ckpt: &'c Checkpoint,
    det: &Detection,
    options: &GgufOptions,
) -> Result<(Plan<'c>, GgufPlan), GgufWriteError> {
    let arch = det.arch().ok_or(GgufWriteError::UnknownArch)?;
    let pass_plan = Plan::new(vec![ckpt]);
    let sources: Vec<SourceTensor<'_>> = pass_plan
        .entries()
        .iter()
        .filter_map(|e| {
            let t = pass_plan.tensor(e, 0)?;
            Some(SourceTensor {
                key: &e.key,
                shape: pass_plan.shape(e),
                dtype: t.dtype,
                is_float: t.is_float(),
            })
        })
        .collect();
    let planned = plan::plan(arch, &sources, options)?;
    Ok((pass_plan, planned))
}

/// What a GGUF plan did, in words: the denoiser-only note and the types written.
pub fn describe(planned: &GgufPlan, quant: Option<Quant>) -> Vec<String> {
    let mut types: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &planned.tensors {
        *types.entry(t.out.ggml_type.name()).or_default() += 1;
    }
    let counts: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let mut lines = vec![format!(
        "wrote {} tensors as GGUF ({}, {}): {}",
        planned.tensors.len(),
        planned.arch_name,
        quant.map_or("F16/BF16 as convert.py", Quant::name),
        counts.join(", ")
    )];
    if planned.left_out > 0 {
        lines.push(format!(
            "wrote the diffusion model only; {} text-encoder/VAE tensors left out",
            planned.left_out
        ));
    }
    if !planned.not_float.is_empty() {
        lines.push(format!(
            "left out {} tensors that are not floats: {}",
            planned.not_float.len(),
            planned.not_float.join(", ")
        ));
    }
    let fell: Vec<String> = planned
        .tensors
        .iter()
        .filter_map(|t| {
            t.fell_back.map(|q| {
                format!(
                    "{} (rows of {} are not whole {} blocks)",
                    t.out.name,
                    t.out.shape.last().copied().unwrap_or(1),
                    q.name()
                )
            })
        })
        .collect();
    if !fell.is_empty() {
        let more = if fell.len() > 3 {
            format!(" and {} more", fell.len() - 3)
        } else {
            String::new()
        };
        lines.push(format!(
            "{} tensors written F16 instead, their rows not whole blocks of their type: {}{more}",
            fell.len(),
            fell[..fell.len().min(3)].join(", ")
        ));
    }
    if !planned.long_names.is_empty() {
        lines.push(format!(
            "WARNING: wrote tensor names of {GGML_MAX_NAME} bytes or more, which \
             ComfyUI-GGUF reads but ggml-based loaders (stable-diffusion.cpp, llama-quantize) \
             refuse: {}",
            plan::list_names(&planned.long_names)
        ));
    }
    let reshaped = planned
        .tensors
        .iter()
        .filter(|t| t.out.shape != t.shape)
        .count();
    if reshaped > 0 {
        lines.push(format!(
            "stored {reshaped} tensors as rows of 256 with comfy.gguf.orig_shape KVs (city96's sd1/sdxl reshape)"
        ));
    }
    lines
}

/// Converts `ckpt`'s denoiser to a GGUF file `out` as `options` say, in one pass.
pub fn convert(
    ckpt: &Checkpoint,
    det: &Detection,
    out: &Path,
    options: &GgufOptions,
    overwrite: bool,
    pass: &Pass<'_>,
) -> Result<FixReport, GgufWriteError> {
    ckpt_core::writer::refuse_existing(out, overwrite)?;
    let (pass_plan, planned) = plan_checkpoint(ckpt, det, options)?;
    let extra = vec![(
        "ckpt_diff.converted_from".to_string(),
        Value::String(ckpt.provenance().id().to_string()),
    )];
    let output = open_output(&planned, extra, out, &[ckpt.path()])?;
    let mut targets: HashMap<usize, (usize, GgmlType)> = HashMap::new();
    for (e, entry) in pass_plan.entries().iter().enumerate() {
        if let Some(&t) = output.targets.get(&entry.key) {
            targets.insert(e, t);
        }
    }
    let mut entries: Vec<usize> = targets.keys().copied().collect();
    entries.sort_unstable();
    let items = pass.items(&pass_plan, &entries);
    ckpt_core::writer::stream_pieces(&output.file, |tx| -> Result<(), GgufWriteError> {
        let work = Encode {
            targets: &targets,
            writer: tx,
        };
        Ok(pass.run_items(&pass_plan, &items, &work, &mut Ignore)?)
    })?;
    output.file.finish()?;
    debug_assert!(
        planned
            .tensors
            .iter()
            .all(|t| component_of(&t.key).is_denoiser())
    );
    Ok(FixReport {
        output: out.display().to_string(),
        actions: describe(&planned, options.quant),
        unfixed: Vec::new(),
    })
}

/// The visitor of [`convert`]: each item's values, encoded.
struct Encode<'a> {
    /// By pass-plan entry: the output index and type.
    targets: &'a HashMap<usize, (usize, GgmlType)>,
    writer: std::sync::mpsc::SyncSender<Piece>,
}

impl Visit for Encode<'_> {
    type Partial = ();

    fn visit(
        &self,
        _: &Plan<'_>,
        item: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<(), PassError> {
        let (index, ty) = self.targets[&item.entry];
        let src = inputs[0].expect("the one model has every entry");
        let (offset, bytes) = encode_item(ty, item, |start, end, v| {
            src.part(start - item.start, end - item.start)
                .values_into(v)
        });
        // A closed channel means the writer failed; its error is reported at the end.
        let _ = self.writer.send((index, offset, bytes));
        Ok(())
    }
}
