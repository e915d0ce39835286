//! Repairs what `validate` reports, into a new file (inputs are never written).
//!
//! Three steps: [`validate`] the file (one pass, for NaN and infinities), [`plan::plan`]
//! what to write from the findings and the options (pure), then [`execute`] the plan (one
//! pass over the file and the base, written through a temporary file and a rename).
//! Integer tensors keep their dtype; casts clamp values beyond the target's range to its
//! largest finite value instead of turning them into infinities.

pub(crate) mod plan;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::views::validate::validate;
use ckpt_core::catalog::{Detection, canonical_key, detect};
use ckpt_core::kernels;
use ckpt_core::pass::{Ignore, Item, Pass, PassError, Plan, Slice, Visit};
use ckpt_core::writer::{OutputFile, Piece, WriteError};
use ckpt_read::Checkpoint;
use ckpt_read::dtype::{self, FloatFormat};
pub use plan::{FixPlan, Options, Origin, Source, Unfixed};

/// Why a fix failed.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("the base '{base}' is not {arch} like the file")]
    BaseMismatch { base: String, arch: &'static str },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Pass(#[from] PassError),
}

/// What was done.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FixReport {
    pub output: String,
    pub actions: Vec<String>,
    /// Problems left as they were (no base to take them from).
    pub unfixed: Vec<Unfixed>,
}

/// Validates `ckpt`, plans its repair and writes it to `out`, taking missing or broken
/// tensors from `base`.
pub fn fix(
    ckpt: &Checkpoint,
    det: &Detection,
    base: Option<&Checkpoint>,
    out: &Path,
    opts: &Options,
    pass: &Pass<'_>,
) -> Result<FixReport, FixError> {
    ckpt_core::writer::refuse_existing(out, opts.overwrite)?;
    if let (Some(b), Some(a)) = (base, det.arch()) {
        let bd = detect(b);
        if bd.arch() != Some(a) || bd.scale != det.scale {
            return Err(FixError::BaseMismatch {
                base: b.display_name(),
                arch: a.label(),
            });
        }
    }
    let findings = validate(ckpt, det, pass)?;
    let input = plan::Input::of(ckpt, det, &findings);
    let planned = plan::plan(&input, base.map(|b| b.tensors()), opts);
    execute(&planned, ckpt, base, out, pass)?;
    Ok(FixReport {
        output: out.display().to_string(),
        actions: planned.actions,
        unfixed: planned.unfixed,
    })
}

/// Converts `ckpt` (any container) to one safetensors file `out`: every tensor as stored
/// (or cast to `opts.dtype`), less what the drop options name; nothing else is repaired.
/// Metadata: the input's (a torch checkpoint's `epoch`, `global_step`... as `ckpt_diff.*`),
/// plus `ckpt_diff.converted_from` (the container) and the actions taken.
pub fn convert(
    ckpt: &Checkpoint,
    det: &Detection,
    out: &Path,
    opts: &Options,
    pass: &Pass<'_>,
) -> Result<FixReport, FixError> {
    ckpt_core::writer::refuse_existing(out, opts.overwrite)?;
    let findings = crate::views::validate::validate_header(ckpt, det);
    let input = plan::Input::of(ckpt, det, &findings);
    let mut planned = plan::conversion(&input, opts);
    planned.metadata.push((
        "ckpt_diff.converted_from".into(),
        ckpt.provenance().id().to_string(),
    ));
    if !planned.actions.is_empty() {
        planned.metadata.push((
            "ckpt_diff.converted".into(),
            serde_json::to_string(&planned.actions).expect("strings"),
        ));
    }
    execute(&planned, ckpt, None, out, pass)?;
    let mut actions = vec![format!(
        "wrote {} tensors from the {} input",
        planned.tensors.len(),
        ckpt.provenance().id()
    )];
    actions.extend(planned.actions);
    if let Some(p) = ckpt.pickle()
        && !p.other.is_empty()
    {
        let keys: Vec<&str> = p.other.iter().map(|o| o.key.as_str()).collect();
        actions.push(format!("left out what is not weights: {}", keys.join(", ")));
    }
    Ok(FixReport {
        output: out.display().to_string(),
        actions,
        unfixed: planned.unfixed,
    })
}

/// Writes `planned` into `out`: every tensor from its source, in one pass over the file
/// (model 0) and the base (model 1).
pub fn execute(
    planned: &FixPlan,
    ckpt: &Checkpoint,
    base: Option<&Checkpoint>,
    out: &Path,
    pass: &Pass<'_>,
) -> Result<(), FixError> {
    let mut models = vec![ckpt];
    models.extend(base);
    let plan = Plan::new(models);
    // The plan's names are the file's as the catalog reads them ([`canonical_keys`]); the
    // planned tensors keep a name no rule of its own renames ([`canonical_key`]): an LLM
    // text encoder saved alone keeps transformers' names. Both find the entry.
    let mut entry_of: HashMap<String, usize> = HashMap::new();
    for (i, e) in plan.entries().iter().enumerate() {
        entry_of.insert(e.key.clone(), i);
        if let Some(t) = e.sources[0] {
            entry_of
                .entry(canonical_key(&ckpt.tensors()[t].name).into_owned())
                .or_insert(i);
        }
    }
    let specs = planned.tensors.iter().map(|p| p.spec.clone()).collect();
    let mut inputs: Vec<&Path> = vec![ckpt.path()];
    inputs.extend(base.map(|b| b.path()));
    let file = OutputFile::create(out, specs, &planned.metadata, &inputs)?;

    // Each planned tensor: its index in the output, and the pass entry it is read from.
    let mut by_entry: HashMap<usize, Copy> = HashMap::new();
    let mut position_ids = Vec::new();
    let mut quantization = Vec::new();
    // Quantized weights: read whole, with the output indices of their scales and records.
    let mut whole = Vec::new();
    let mut parts_of: HashMap<usize, Vec<usize>> = HashMap::new();
    for p in &planned.tensors {
        let index = file
            .index_of(&p.spec.name)
            .expect("every spec is in the file");
        match &p.source {
            Source::PositionIds => position_ids.push(index),
            Source::Raw(t) => quantization.push((index, ckpt.data(t).to_vec())),
            // Written with their weight.
            Source::QuantPart => {}
            Source::Quantize {
                origin,
                code,
                parts,
            } => {
                let entry = entry_of[&p.spec.name];
                let copy = Copy {
                    index,
                    model: origin.model(),
                    cast: None,
                    patch_nonfinite: false,
                    dtype: p.spec.dtype,
                    quant: Some(*code),
                };
                let indices = parts
                    .iter()
                    .map(|n| file.index_of(n).expect("every spec is in the file"))
                    .collect();
                parts_of.insert(entry, indices);
                whole.push(entry);
                by_entry.insert(entry, copy);
            }
            Source::Tensor {
                origin,
                cast,
                patch_nonfinite,
            } => {
                let entry = entry_of[&p.spec.name];
                let copy = Copy {
                    index,
                    model: origin.model(),
                    cast: *cast,
                    patch_nonfinite: *patch_nonfinite,
                    dtype: p.spec.dtype,
                    quant: None,
                };
                by_entry.insert(entry, copy);
            }
        }
    }
    let entries: Vec<usize> = by_entry
        .keys()
        .copied()
        .filter(|e| !whole.contains(e))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let items: Vec<Item> = pass.items_with_whole(&plan, &entries, &whole);
    ckpt_core::writer::stream_pieces(&file, |tx| -> Result<(), FixError> {
        for &index in &position_ids {
            let bytes: Vec<u8> = (0..77i64).flat_map(|i| i.to_le_bytes()).collect();
            let _ = tx.send((index, 0, bytes));
        }
        for (index, bytes) in quantization {
            let _ = tx.send((index, 0, bytes));
        }
        let work = Work {
            copies: &by_entry,
            parts: &parts_of,
            writer: tx,
        };
        Ok(pass.run_items(&plan, &items, &work, &mut Ignore)?)
    })?;
    file.finish()?;
    Ok(())
}

/// How one output tensor is made from a model's tensor.
#[derive(Clone, Copy, Debug)]
struct Copy {
    /// Its index in the output file.
    index: usize,
    model: usize,
    cast: Option<FloatFormat>,
    patch_nonfinite: bool,
    dtype: ckpt_read::Dtype,
    /// Quantized into this per-layer format (a whole-tensor item).
    quant: Option<ckpt_read::comfy::Code>,
}

struct Work<'a> {
    copies: &'a HashMap<usize, Copy>,
    /// Per quantized entry: the output indices of its scales and record.
    parts: &'a HashMap<usize, Vec<usize>>,
    writer: std::sync::mpsc::SyncSender<Piece>,
}

impl Visit for Work<'_> {
    type Partial = ();

    fn visit(
        &self,
        plan: &Plan<'_>,
        item: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<(), PassError> {
        let o = &self.copies[&item.entry];
        let src = inputs[o.model].expect("the source has the tensor");
        if let Some(code) = o.quant {
            // The whole tensor in float32 (4 bytes per value of the largest weight, per
            // worker), quantized as comfy-kitchen does.
            let mut values = vec![0.0f64; src.len()];
            src.values_into(&mut values);
            let x: Vec<f32> = values.iter().map(|v| *v as f32).collect();
            drop(values);
            let shape = &plan.shape(&plan.entries()[item.entry]);
            let q = ckpt_read::comfy::quantize(code, &x, shape[0], shape[1]);
            let mut bytes = q.tensors.into_iter().map(|t| t.3);
            let _ = self
                .writer
                .send((o.index, 0, bytes.next().expect("a weight")));
            let rest = bytes.chain(std::iter::once(q.record.into_bytes()));
            for (&index, b) in self.parts[&item.entry].iter().zip(rest) {
                let _ = self.writer.send((index, 0, b));
            }
            return Ok(());
        }
        let offset = item.start * dtype::bit_size(o.dtype) / 8;
        if o.cast.is_none() && !o.patch_nonfinite {
            let _ = self.writer.send((o.index, offset, src.bytes.to_vec()));
            return Ok(());
        }
        let fout = o
            .cast
            .or(dtype::float_format(src.dtype))
            .expect("casts and patches are floats");
        // The base's values where this one is not finite (the base is model 1), else 0.
        let base = inputs.get(1).copied().flatten().filter(|b| {
            o.patch_nonfinite && b.bytes.len() / dtype::bit_size(b.dtype) * 8 == item.len()
        });
        let max = kernels::largest_finite(fout);
        let mut out = vec![0u8; item.len() * fout.size()];
        // In sub-chunks: an item of FP8 values is 16 M of them, 128 MB as f64.
        const SUB: usize = 1 << 16;
        let mut v = vec![0.0; SUB.min(item.len())];
        let mut bv = vec![0.0; if base.is_some() { v.len() } else { 0 }];
        let mut start = 0;
        while start < item.len() {
            let end = (start + SUB).min(item.len());
            let v = &mut v[..end - start];
            src.part(start, end).values_into(v);
            if o.patch_nonfinite {
                let bv = base.map(|b| {
                    let bv = &mut bv[..end - start];
                    b.part(start, end).values_into(bv);
                    &*bv
                });
                for (i, x) in v.iter_mut().enumerate() {
                    if !x.is_finite() {
                        *x = bv.map(|b| b[i]).filter(|y| y.is_finite()).unwrap_or(0.0);
                    }
                }
            }
            // Written back in the stored format, a scaled tensor keeps its scale.
            if o.cast.is_none()
                && let ckpt_read::Encoding::Scaled(s) = src.encoding
                && s != 1.0
            {
                v.iter_mut().for_each(|x| *x /= s);
            }
            v.iter_mut().for_each(|x| *x = x.clamp(-max, max));
            let size = fout.size();
            kernels::from_f64(fout, v, &mut out[start * size..end * size]);
            start = end;
        }
        let _ = self.writer.send((o.index, offset, out));
        Ok(())
    }
}
