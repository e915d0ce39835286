//! Evaluates a merge plan tensor by tensor inside one pass, writing each output range as
//! soon as it is computed.
//!
//! For each output tensor the graph is evaluated in chunks of at most [`SUB`] elements:
//! element-wise graphs (linear combinations, DARE, train difference) stream through any
//! element range, so tensors are split into items like any other pass; graphs with a
//! per-tensor method (TIES, Model Stock, geometric median) take whole tensors, first
//! sweeping their inputs for the statistics they need (magnitude thresholds, cosines, the
//! median itself), then producing the output chunk by chunk. Memory per worker: a few
//! chunk buffers and its item's output bytes, plus for TIES one f32 magnitude buffer and for
//! the geometric median one f64 buffer of the tensor. One writer thread writes the pieces.
//!
//! The engine knows the graph's three kinds of node (inputs, linear combinations, registry
//! methods), not any method: each method evaluates itself through
//! [`NodeMethod`](super::methods::NodeMethod).

use std::collections::HashMap;

use super::methods::{Prepared, SUB, TensorInputs};
use super::plan::{MergePlan, Node};
use ckpt_core::kernels;
use ckpt_core::pass::{Absorb, EntryKind, Item, PassError, Plan, Slice, Visit};
use ckpt_core::writer::{OutputFile, Piece};
use ckpt_read::Encoding;
use ckpt_read::dtype::{self, FloatFormat};

/// Arithmetic precision of node results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Every node's result rounded to f32, as a float32 merge stores them.
    F32,
    /// f64 throughout.
    F64,
}

/// What float formats a merge writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Each tensor as its first input stores it (a scaled-fp8 input gives a scaled-fp8
    /// output, with a fresh scale).
    #[default]
    AsInputs,
    /// Every merged float in this format (values beyond its range saturate).
    Float(FloatFormat),
    /// ComfyUI's scaled fp8 in this FP8 format for the denoiser's linear weights (each
    /// with a fresh per-tensor scale: its largest magnitude maps to the format's largest
    /// value); every other float as its first input stores it, bf16 where that is fp8.
    ScaledFp8(FloatFormat),
    /// One of ComfyUI's per-layer formats for the denoiser's linear weights whose
    /// dimensions the format tiles (codes, scales and a `.comfy_quant` record, as
    /// comfy-kitchen quantizes them); every other float as its first input stores it, bf16
    /// where that is fp8 or quantized.
    PerLayer(ckpt_read::comfy::Code),
}

/// How one output tensor is made.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Evaluate the graph for this row.
    Merge {
        row: usize,
        format: FloatFormat,
        per_tensor: bool,
        /// Stored scaled: values divided by a per-tensor scale computed from the tensor
        /// (written to its `scale_weight`).
        scaled: bool,
        /// Quantized into this per-layer format (a whole-tensor item; `format` is then
        /// unused).
        quant: Option<ckpt_read::comfy::Code>,
    },
    /// Copy the bytes of input `model` unchanged (with its scale, when it has one).
    Copy { model: usize },
    /// Input `model`'s values, decoded from a block encoding (ComfyUI's per-layer formats)
    /// and stored in `format`: codes cannot be copied without their scales.
    Decode { model: usize, format: FloatFormat },
}

/// The per-tensor decisions, made before the first byte is read.
#[derive(Clone, Debug)]
pub struct OutputTensor {
    /// Index into the pass plan's entries.
    pub entry: usize,
    pub name: String,
    pub source: Source,
    /// Index in the output file.
    pub out_index: usize,
    /// The tensor's scale: computed (`Fresh`) or copied with its bytes (`Known`).
    pub scale: OutputScale,
    /// Index of its `scale_weight` in the output file, when it is scaled.
    pub scale_index: Option<usize>,
    /// Indices in the output file of a per-layer quantized tensor's other tensors
    /// (`weight_scale`, `weight_scale_2`, `comfy_quant`, as [`quant_parts`] names them).
    pub quant_indices: Vec<usize>,
    /// The ggml type it is written in, in a GGUF output.
    pub gguf: Option<ckpt_read::gguf::GgmlType>,
}

/// The names of the tensors besides its weight that a per-layer quantized weight `name`
/// (`L.weight`) has in the output, with their dtypes and shapes.
pub(crate) fn quant_parts(
    name: &str,
    code: ckpt_read::comfy::Code,
    shape: &[usize],
) -> Vec<(String, ckpt_read::Dtype, Vec<usize>)> {
    let layer = name.strip_suffix(".weight").unwrap_or(name);
    let mut parts: Vec<(String, ckpt_read::Dtype, Vec<usize>)> = code
        .stored(shape[0], shape[1])
        .into_iter()
        .skip(1)
        .map(|(suffix, dtype, shape)| (format!("{layer}.{suffix}"), dtype, shape))
        .collect();
    parts.push((
        format!("{layer}{}", ckpt_read::comfy::RECORD),
        ckpt_read::Dtype::U8,
        vec![code.record().len()],
    ));
    parts
}

/// Whether an output tensor is stored scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OutputScale {
    None,
    /// Computed from the merged values.
    Fresh,
    /// The scale of the copied input tensor.
    Known(f64),
}

/// The work of one merge: a [`Visit`] that computes output pieces and hands them to the
/// writer thread (one writer: concurrent writes to one file contend on its lock).
pub(crate) struct MergeWork<'a> {
    pub plan: &'a MergePlan,
    pub precision: Precision,
    /// By pass-plan entry.
    pub outputs: HashMap<usize, OutputTensor>,
    pub out: &'a OutputFile,
    pub writer: std::sync::mpsc::SyncSender<Piece>,
}

/// What a visit reports back: bytes written.
pub(crate) struct Written(pub u64);

/// Counts bytes written (the pass absorbs in order; nothing else to do).
#[derive(Default)]
pub(crate) struct WriteCount {
    pub bytes: u64,
}

impl Absorb<Written> for WriteCount {
    fn absorb(&mut self, _: &Plan<'_>, _: &Item, w: Written) -> Result<(), PassError> {
        self.bytes += w.0;
        Ok(())
    }
}

/// Evaluation context for one item.
struct Ctx<'c> {
    work: &'c MergeWork<'c>,
    key: &'c str,
    shape: &'c [usize],
    row: usize,
    /// Element index (in the tensor) where the input slices start.
    origin: usize,
    /// Element index where the item ends.
    end: usize,
    inputs: &'c [Option<Slice<'c>>],
    /// What each method node prepared for this item.
    prepared: HashMap<usize, Prepared>,
}

/// What a method node sees: the item, and its model arguments' values.
struct MethodInputs<'a, 'c> {
    ctx: &'a Ctx<'c>,
    children: &'a [usize],
}

impl TensorInputs for MethodInputs<'_, '_> {
    fn key(&self) -> &str {
        self.ctx.key
    }

    fn row(&self) -> usize {
        self.ctx.row
    }

    fn shape(&self) -> &[usize] {
        self.ctx.shape
    }

    fn range(&self) -> std::ops::Range<usize> {
        self.ctx.origin..self.ctx.end
    }

    fn input(&self, arg: usize, start: usize, end: usize) -> Vec<f64> {
        self.ctx.eval(self.children[arg], start, end)
    }
}

impl Visit for MergeWork<'_> {
    type Partial = Written;

    fn visit(
        &self,
        plan: &Plan<'_>,
        item: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<Written, PassError> {
        let out = &self.outputs[&item.entry];
        let spec = &self.out.tensors()[out.out_index];
        let send = |offset: usize, bytes: Vec<u8>| -> Result<Written, PassError> {
            let n = bytes.len() as u64;
            // A closed channel means the writer failed; its error is reported at the end.
            let _ = self.writer.send((out.out_index, offset, bytes));
            Ok(Written(n))
        };
        let send_scale = |scale: f64| {
            if let Some(index) = out.scale_index {
                let _ = self
                    .writer
                    .send((index, 0, (scale as f32).to_le_bytes().to_vec()));
            }
        };
        if let Some(ty) = out.gguf {
            // GGUF: the values as f32, quantized item by item (items are whole blocks).
            let (offset, bytes) = match &out.source {
                Source::Copy { model } | Source::Decode { model, .. } => {
                    let s = inputs[*model].expect("copied from a model that has the tensor");
                    crate::gguf::encode_item(ty, item, |start, end, v| {
                        s.part(start - item.start, end - item.start).values_into(v)
                    })
                }
                Source::Merge { row, .. } => {
                    let ctx = Ctx::new(self, plan, item, *row, inputs);
                    crate::gguf::encode_item(ty, item, |start, end, v| {
                        ctx.eval_into(self.plan.output, start, end, v)
                    })
                }
            };
            return send(offset, bytes);
        }
        match &out.source {
            Source::Copy { model } => {
                let s = inputs[*model].expect("copied from a model that has the tensor");
                if let (OutputScale::Known(scale), true) = (out.scale, item.is_first()) {
                    send_scale(scale);
                }
                let bits = dtype::bit_size(spec.dtype);
                send(item.start * bits / 8, s.bytes.to_vec())
            }
            Source::Decode { model, format } => {
                let s = inputs[*model].expect("decoded from a model that has the tensor");
                let mut values = vec![0.0f64; item.len()];
                s.values_into(&mut values);
                let mut bytes = vec![0u8; item.len() * format.size()];
                kernels::from_f64(*format, &values, &mut bytes);
                send(item.start * format.size(), bytes)
            }
            Source::Merge {
                row,
                quant: Some(code),
                ..
            } => {
                let shape = plan.shape(&plan.entries()[item.entry]);
                let ctx = Ctx::new(self, plan, item, *row, inputs);
                // The whole tensor in float32, the precision comfy-kitchen quantizes from
                // (4 bytes per value of the largest weight, per worker).
                let mut x = vec![0f32; item.len()];
                let mut values = vec![0.0f64; SUB.min(item.len())];
                let mut start = item.start;
                while start < item.end {
                    let end = (start + SUB).min(item.end);
                    let v = &mut values[..end - start];
                    ctx.eval_into(self.plan.output, start, end, v);
                    for (o, v) in x[start - item.start..end - item.start].iter_mut().zip(v) {
                        *o = *v as f32;
                    }
                    start = end;
                }
                let q = ckpt_read::comfy::quantize(*code, &x, shape[0], shape[1]);
                let mut written = 0u64;
                let mut parts = q.tensors.into_iter().map(|t| t.3);
                let weight = parts.next().expect("a weight");
                written += weight.len() as u64;
                let _ = self.writer.send((out.out_index, 0, weight));
                let extra = parts.chain(std::iter::once(q.record.into_bytes()));
                for (index, bytes) in out.quant_indices.iter().zip(extra) {
                    written += bytes.len() as u64;
                    let _ = self.writer.send((*index, 0, bytes));
                }
                Ok(Written(written))
            }
            Source::Merge {
                row,
                format,
                scaled,
                ..
            } => {
                let ctx = Ctx::new(self, plan, item, *row, inputs);
                let size = format.size();
                let mut bytes = vec![0u8; item.len() * size];
                let mut values = vec![0.0f64; SUB.min(item.len())];
                // A scaled tensor (a whole-tensor item) is evaluated twice: once for its
                // largest magnitude, which sets the scale, then to store it.
                let scale = if *scaled {
                    let mut amax = 0.0f64;
                    let mut start = item.start;
                    while start < item.end {
                        let end = (start + SUB).min(item.end);
                        let values = &mut values[..end - start];
                        ctx.eval_into(self.plan.output, start, end, values);
                        amax = values.iter().fold(amax, |m, v| m.max(v.abs()));
                        start = end;
                    }
                    let s = kernels::fp8_scale(amax, *format);
                    send_scale(s);
                    s
                } else {
                    1.0
                };
                let max = kernels::largest_finite(*format);
                let mut start = item.start;
                while start < item.end {
                    let end = (start + SUB).min(item.end);
                    let values = &mut values[..end - start];
                    ctx.eval_into(self.plan.output, start, end, values);
                    if scale != 1.0 {
                        values.iter_mut().for_each(|v| *v /= scale);
                    }
                    // Saturate: finite inputs never give an infinity (NaN stays NaN).
                    values.iter_mut().for_each(|v| *v = v.clamp(-max, max));
                    let at = (start - item.start) * size;
                    kernels::from_f64(*format, values, &mut bytes[at..at + (end - start) * size]);
                    start = end;
                }
                send(item.start * size, bytes)
            }
        }
    }
}

impl<'c> Ctx<'c> {
    /// The context of one item of `row`, its methods prepared.
    fn new(
        work: &'c MergeWork<'c>,
        plan: &'c Plan<'_>,
        item: &Item,
        row: usize,
        inputs: &'c [Option<Slice<'c>>],
    ) -> Ctx<'c> {
        let entry = &plan.entries()[item.entry];
        let mut ctx = Ctx {
            work,
            key: &entry.key,
            shape: plan.shape(entry),
            row,
            origin: item.start,
            end: item.end,
            inputs,
            prepared: HashMap::new(),
        };
        ctx.prepare(work.plan.output);
        ctx
    }

    fn round(&self, mut v: Vec<f64>) -> Vec<f64> {
        if self.work.precision == Precision::F32 {
            v.iter_mut().for_each(|x| *x = *x as f32 as f64);
        }
        v
    }

    /// Runs the preparing sweeps of every method node under `node` this row reads,
    /// children first.
    fn prepare(&mut self, node: usize) {
        if self.prepared.contains_key(&node) {
            return;
        }
        let plan = self.work.plan;
        for c in plan.needed_children(&plan.nodes[node], self.row) {
            self.prepare(c);
        }
        if let Node::Method {
            method, children, ..
        } = &plan.nodes[node]
        {
            let inputs = MethodInputs {
                ctx: self,
                children,
            };
            let prepared = method.prepare(&inputs);
            self.prepared.insert(node, prepared);
        }
    }

    /// The stored bytes of input `i` for tensor elements `start..end`, their format, and
    /// the scale that turns them into values; `None` for a block-encoded input, whose
    /// values only [`Slice::values_into`] gives.
    fn stored(&self, i: usize, start: usize, end: usize) -> Option<(FloatFormat, &[u8], f64)> {
        let s = self.input(i, start, end);
        let (format, scale) = s.stored()?;
        Some((format, s.bytes, scale))
    }

    /// Input `i`'s slice of tensor elements `start..end`.
    fn input(&self, i: usize, start: usize, end: usize) -> Slice<'_> {
        let s = self.inputs[i].expect("an input the row needs is present");
        s.part(start - self.origin, end - self.origin)
    }

    /// Writes the values of `node` over tensor elements `start..end` into `out`. Linear
    /// combinations of inputs read the stored bytes straight into the sum.
    fn eval_into(&self, node: usize, start: usize, end: usize, out: &mut [f64]) {
        let plan = self.work.plan;
        match &plan.nodes[node] {
            Node::Input(i) => {
                self.input(*i, start, end).values_into(out);
                return;
            }
            Node::Linear(combination) => {
                let mut first = true;
                for (n, p) in &combination.terms {
                    let c = p[self.row];
                    if c == 0.0 {
                        continue;
                    }
                    if let Node::Method { method, .. } = &plan.nodes[*n]
                        && !method.touches(self.key, self.row)
                    {
                        continue;
                    }
                    if let Node::Input(i) = plan.nodes[*n]
                        && let Some((format, bytes, scale)) = self.stored(i, start, end)
                    {
                        kernels::axpy_stored(format, c * scale, bytes, out, !first);
                    } else {
                        let v = self.eval(*n, start, end);
                        if first {
                            out.iter_mut().zip(&v).for_each(|(o, x)| *o = c * x);
                        } else {
                            kernels::axpy(c, &v, out);
                        }
                    }
                    first = false;
                }
                if first {
                    out.fill(0.0);
                }
            }
            _ => out.copy_from_slice(&self.eval(node, start, end)),
        }
        if self.work.precision == Precision::F32 {
            out.iter_mut().for_each(|x| *x = *x as f32 as f64);
        }
    }

    /// The values of `node` over tensor elements `start..end`.
    fn eval(&self, node: usize, start: usize, end: usize) -> Vec<f64> {
        let len = end - start;
        let plan = self.work.plan;
        let v = match &plan.nodes[node] {
            Node::Input(_) => {
                let mut out = vec![0.0; len];
                self.eval_into(node, start, end, &mut out);
                return out; // Stored values need no rounding.
            }
            Node::Linear(_) => {
                let mut acc = vec![0.0; len];
                self.eval_into(node, start, end, &mut acc);
                return acc; // Already rounded.
            }
            Node::Method {
                method, children, ..
            } => {
                let inputs = MethodInputs {
                    ctx: self,
                    children,
                };
                method.eval(&inputs, &self.prepared[&node], start, end)
            }
        };
        self.round(v)
    }
}

/// Decides, for every entry of the pass plan, what the output holds.
pub struct Decisions {
    pub outputs: Vec<OutputTensor>,
    /// Keys copied unchanged from one input because some needed input lacked them or had
    /// another shape (with the reason).
    pub copied: Vec<(String, String)>,
    /// Keys left out (missing policy `skip`).
    pub skipped: Vec<String>,
}

/// What to do with keys that some needed input lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Take the tensor from the first input (in binding order) that has it.
    First,
    /// Leave it out of the output.
    Skip,
}

/// The output decision for each pass-plan entry, in the formats `output` asks for.
pub(crate) fn decide(
    merge: &MergePlan,
    pass_plan: &Plan<'_>,
    output: OutputFormat,
    missing: Missing,
) -> Decisions {
    let mut outputs = Vec::new();
    let mut copied = Vec::new();
    let mut skipped = Vec::new();
    for (e, entry) in pass_plan.entries().iter().enumerate() {
        let row = merge.grouping.group_of(&entry.key);
        let mut needed = Vec::new();
        merge.needed_inputs(merge.output, row, &mut needed);
        needed.sort_unstable();
        let first_having = (0..pass_plan.models().len())
            .find(|&m| entry.sources[m].is_some())
            .expect("every entry is in some model");
        let tensor = |m: usize| pass_plan.tensor(entry, m);
        let all_floats_here = needed
            .iter()
            .all(|&m| tensor(m).is_some_and(|t| t.is_float()));
        let shapes_agree = needed
            .windows(2)
            .all(|w| match (tensor(w[0]), tensor(w[1])) {
                (Some(a), Some(b)) => a.shape == b.shape,
                _ => false,
            });
        let present = needed.iter().all(|&m| tensor(m).is_some());
        let kind = pass_plan.kind(entry);
        let integer = tensor(first_having).is_some_and(|t| !t.is_float());
        let source = if integer || matches!(kind, EntryKind::Integer | EntryKind::Opaque) {
            // Integer and opaque tensors (position_ids) are never averaged.
            Some(Source::Copy {
                model: needed
                    .iter()
                    .copied()
                    .find(|&m| tensor(m).is_some())
                    .unwrap_or(first_having),
            })
        } else if !needed.is_empty() && present && shapes_agree && all_floats_here {
            let first = tensor(needed[0]).expect("present");
            // Block-encoded inputs (ComfyUI's per-layer formats) give bf16, the dtype
            // ComfyUI computes them in.
            let stored = dtype::float_format(first.dtype)
                .filter(|_| !first.encoding.needs_decoding())
                .unwrap_or(FloatFormat::BF16);
            let unscaled = |f: FloatFormat| match f {
                FloatFormat::F8E4M3 | FloatFormat::F8E5M2 => FloatFormat::BF16,
                other => other,
            };
            let (format, scaled) = match output {
                OutputFormat::AsInputs => (stored, matches!(first.encoding, Encoding::Scaled(_))),
                OutputFormat::Float(f) => (f, false),
                OutputFormat::ScaledFp8(f)
                    if ckpt_core::writer::quantizable(&entry.key, &first.shape) =>
                {
                    (f, true)
                }
                OutputFormat::ScaledFp8(_) | OutputFormat::PerLayer(_) => (unscaled(stored), false),
            };
            let quant = match output {
                OutputFormat::PerLayer(code)
                    if ckpt_core::writer::quantizable(&entry.key, &first.shape)
                        && first.shape.iter().all(|d| d % code.tile() == 0) =>
                {
                    Some(code)
                }
                _ => None,
            };
            Some(Source::Merge {
                row,
                format,
                // A scale needs the whole tensor before its first value is stored.
                per_tensor: scaled || quant.is_some() || merge.has_per_tensor(merge.output, row),
                scaled,
                quant,
            })
        } else {
            let reason = if needed.is_empty() {
                "no input has a weight for its block".to_string()
            } else if !present {
                let lacking: Vec<&str> = needed
                    .iter()
                    .filter(|&&m| tensor(m).is_none())
                    .map(|&m| merge.inputs[m].name.as_str())
                    .collect();
                format!("missing from {}", lacking.join(", "))
            } else {
                "shapes or types differ between inputs".to_string()
            };
            match missing {
                Missing::Skip => {
                    skipped.push(entry.key.clone());
                    None
                }
                Missing::First => {
                    let from = needed
                        .iter()
                        .copied()
                        .find(|&m| tensor(m).is_some())
                        .unwrap_or(first_having);
                    copied.push((
                        entry.key.clone(),
                        format!("{reason}; taken from {}", merge.inputs[from].name),
                    ));
                    Some(Source::Copy { model: from })
                }
            }
        };
        // Codes cannot be copied without their scales: a block-encoded tensor is decoded.
        let source = source.map(|s| match s {
            Source::Copy { model }
                if tensor(model).is_some_and(|t| t.encoding.needs_decoding()) =>
            {
                Source::Decode {
                    model,
                    format: match output {
                        OutputFormat::Float(f) => f,
                        _ => FloatFormat::BF16,
                    },
                }
            }
            other => other,
        });
        if let Some(source) = source {
            let scale = match &source {
                Source::Merge { scaled: true, .. } => OutputScale::Fresh,
                Source::Merge { .. } | Source::Decode { .. } => OutputScale::None,
                Source::Copy { model } => {
                    tensor(*model).map_or(OutputScale::None, |t| match t.encoding {
                        Encoding::Scaled(s) => OutputScale::Known(s),
                        Encoding::Plain | Encoding::Block(_) | Encoding::Ggml(_) => {
                            OutputScale::None
                        }
                    })
                }
            };
            outputs.push(OutputTensor {
                entry: e,
                name: entry.key.clone(),
                source,
                out_index: usize::MAX,
                scale,
                scale_index: None,
                quant_indices: Vec::new(),
                gguf: None,
            });
        }
    }
    Decisions {
        outputs,
        copied,
        skipped,
    }
}
