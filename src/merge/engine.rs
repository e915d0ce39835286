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

use std::collections::HashMap;

use super::plan::{MergePlan, Node};
use crate::kernels;
use crate::pass::{Absorb, EntryKind, Item, PassError, Plan, Slice, Visit};
use crate::reader::dtype::{self, FloatFormat};
use crate::rng::counter::{Stream, key_hash, mix};
use crate::writer::{OutputFile, Piece};

/// Elements evaluated at a time inside an item.
pub const SUB: usize = 1 << 16;

/// Arithmetic precision of node results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Every node's result rounded to f32, as a float32 merge stores them.
    F32,
    /// f64 throughout.
    F64,
}

/// How one output tensor is made.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Evaluate the graph for this row.
    Merge {
        row: usize,
        format: FloatFormat,
        per_tensor: bool,
    },
    /// Copy the bytes of input `model` unchanged.
    Copy { model: usize },
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
}

/// Statistics a per-tensor node computed in its preparing sweeps.
enum State {
    None,
    /// TIES: per model, the magnitude at or above which deltas are kept.
    Thresholds(Vec<f32>),
    /// Model Stock: the weight of the mean of the models.
    StockT(f64),
    /// The geometric median of the tensor.
    Median(Vec<f64>),
}

/// The work of one merge: a [`Visit`] that computes output pieces and hands them to the
/// writer thread (one writer: concurrent writes to one file contend on its lock).
pub struct MergeWork<'a> {
    pub plan: &'a MergePlan,
    pub precision: Precision,
    /// By pass-plan entry.
    pub outputs: HashMap<usize, OutputTensor>,
    pub out: &'a OutputFile,
    pub writer: std::sync::mpsc::SyncSender<Piece>,
}

/// What a visit reports back: bytes written.
pub struct Written(pub u64);

/// Counts bytes written (the pass absorbs in order; nothing else to do).
#[derive(Default)]
pub struct WriteCount {
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
    row: usize,
    /// Element index (in the tensor) where the input slices start.
    origin: usize,
    inputs: &'c [Option<Slice<'c>>],
    states: HashMap<usize, State>,
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
        match &out.source {
            Source::Copy { model } => {
                let s = inputs[*model].expect("copied from a model that has the tensor");
                let bits = dtype::bit_size(spec.dtype);
                send(item.start * bits / 8, s.bytes.to_vec())
            }
            Source::Merge { row, format, .. } => {
                let key = &plan.entries()[item.entry].key;
                let mut ctx = Ctx {
                    work: self,
                    key,
                    row: *row,
                    origin: item.start,
                    inputs,
                    states: HashMap::new(),
                };
                ctx.prepare(self.plan.output, item)?;
                let size = format.size();
                let mut bytes = vec![0u8; item.len() * size];
                let mut values = vec![0.0f64; SUB.min(item.len())];
                let mut start = item.start;
                while start < item.end {
                    let end = (start + SUB).min(item.end);
                    let values = &mut values[..end - start];
                    ctx.eval_into(self.plan.output, start, end, values);
                    let at = (start - item.start) * size;
                    kernels::from_f64(*format, values, &mut bytes[at..at + (end - start) * size]);
                    start = end;
                }
                send(item.start * size, bytes)
            }
        }
    }
}

impl Ctx<'_> {
    fn round(&self, mut v: Vec<f64>) -> Vec<f64> {
        if self.work.precision == Precision::F32 {
            v.iter_mut().for_each(|x| *x = *x as f32 as f64);
        }
        v
    }

    /// Runs the preparing sweeps of every per-tensor node under `node`, children first.
    fn prepare(&mut self, node: usize, item: &Item) -> Result<(), PassError> {
        if self.states.contains_key(&node) {
            return Ok(());
        }
        for c in self.needed_children(node) {
            self.prepare(c, item)?;
        }
        let n = item.numel;
        let state = match &self.work.plan.nodes[node] {
            Node::Ties {
                base, models, k, ..
            } => {
                let mut thresholds = Vec::with_capacity(models.len());
                let mut mags = vec![0f32; n];
                for &m in models {
                    self.sweep(item, |ctx, s, e| {
                        let (x, b) = (ctx.eval(m, s, e), ctx.eval(*base, s, e));
                        for i in 0..e - s {
                            mags[s - item.start + i] = (x[i] - b[i]).abs() as f32;
                        }
                    });
                    thresholds.push(magnitude_threshold(&mut mags, *k));
                }
                State::Thresholds(thresholds)
            }
            Node::ModelStock { base, models } => {
                let nm = models.len();
                let mut gram = vec![0.0f64; nm * nm];
                self.sweep(item, |ctx, s, e| {
                    let b = ctx.eval(*base, s, e);
                    let deltas: Vec<Vec<f64>> = models
                        .iter()
                        .map(|&m| {
                            let mut d = ctx.eval(m, s, e);
                            kernels::sub_assign(&mut d, &b);
                            d
                        })
                        .collect();
                    for i in 0..nm {
                        for j in i..nm {
                            gram[i * nm + j] += kernels::dot(&deltas[i], &deltas[j]);
                        }
                    }
                });
                State::StockT(stock_t(&gram, nm))
            }
            Node::GeoMedian {
                models,
                weights,
                eps,
                maxiter,
            } => State::Median(self.geometric_median(item, models, weights, *eps, *maxiter)),
            _ => State::None,
        };
        self.states.insert(node, state);
        Ok(())
    }

    /// The children a node reads for this row (a linear node skips zero coefficients).
    fn needed_children(&self, node: usize) -> Vec<usize> {
        match &self.work.plan.nodes[node] {
            Node::Linear(terms) => terms
                .iter()
                .filter(|(_, p)| p[self.row] != 0.0)
                .map(|(n, _)| *n)
                .collect(),
            other => other.children(),
        }
    }

    /// Calls `f(ctx, start, end)` over the item in chunks of [`SUB`] elements.
    fn sweep(&self, item: &Item, mut f: impl FnMut(&Self, usize, usize)) {
        let mut s = item.start;
        while s < item.end {
            let e = (s + SUB).min(item.end);
            f(self, s, e);
            s = e;
        }
    }

    fn geometric_median(
        &self,
        item: &Item,
        models: &[usize],
        weights: &[f64],
        eps: f64,
        maxiter: usize,
    ) -> Vec<f64> {
        let n = item.len();
        let total: f64 = weights.iter().sum();
        // Start from the weighted mean.
        let mut z = vec![0.0f64; n];
        self.sweep(item, |ctx, s, e| {
            for (&m, &w) in models.iter().zip(weights) {
                kernels::axpy(
                    w / total,
                    &ctx.eval(m, s, e),
                    &mut z[s - item.start..e - item.start],
                );
            }
        });
        let mut objective = f64::INFINITY;
        for _ in 0..maxiter {
            // Distances from the current estimate.
            let mut dist2 = vec![0.0f64; models.len()];
            self.sweep(item, |ctx, s, e| {
                let zc = &z[s - item.start..e - item.start];
                for (d2, &m) in dist2.iter_mut().zip(models) {
                    let mut x = ctx.eval(m, s, e);
                    kernels::sub_assign(&mut x, zc);
                    *d2 += kernels::norm_l2_sqr(&x);
                }
            });
            let dist: Vec<f64> = dist2.iter().map(|d| d.sqrt()).collect();
            let new_objective: f64 = dist.iter().zip(weights).map(|(d, w)| d * w).sum();
            let coef: Vec<f64> = dist
                .iter()
                .zip(weights)
                .map(|(d, w)| w / d.max(eps))
                .collect();
            let csum: f64 = coef.iter().sum();
            // Weiszfeld step, in place: z <- Σ cᵢ xᵢ / Σ cᵢ.
            self.sweep(item, |ctx, s, e| {
                let zc = &mut z[s - item.start..e - item.start];
                zc.iter_mut().for_each(|v| *v = 0.0);
                for (&m, &c) in models.iter().zip(&coef) {
                    kernels::axpy(c / csum, &ctx.eval(m, s, e), zc);
                }
            });
            if (objective - new_objective).abs() <= 1e-12 * new_objective.max(f64::MIN_POSITIVE) {
                break;
            }
            objective = new_objective;
        }
        z
    }

    /// The stored bytes of input `i` for tensor elements `start..end`, and their format.
    fn stored(&self, i: usize, start: usize, end: usize) -> (FloatFormat, &[u8]) {
        let s = self.inputs[i].expect("an input the row needs is present");
        let format = dtype::float_format(s.dtype).expect("merged tensors are floats");
        let size = format.size();
        let at = start - self.origin;
        (format, &s.bytes[at * size..(at + end - start) * size])
    }

    /// Writes the values of `node` over tensor elements `start..end` into `out`. Linear
    /// combinations of inputs read the stored bytes straight into the sum.
    fn eval_into(&self, node: usize, start: usize, end: usize, out: &mut [f64]) {
        let plan = self.work.plan;
        match &plan.nodes[node] {
            Node::Input(i) => {
                let (format, bytes) = self.stored(*i, start, end);
                kernels::to_f64(format, bytes, out);
                return;
            }
            Node::Linear(terms) => {
                let mut first = true;
                for (n, p) in terms {
                    let c = p[self.row];
                    if c == 0.0 {
                        continue;
                    }
                    if let Node::Input(i) = plan.nodes[*n] {
                        let (format, bytes) = self.stored(i, start, end);
                        kernels::axpy_stored(format, c, bytes, out, !first);
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
            Node::Input(i) => {
                let s = self.inputs[*i].expect("an input the row needs is present");
                let format = dtype::float_format(s.dtype).expect("merged tensors are floats");
                let size = format.size();
                let at = start - self.origin;
                let mut out = vec![0.0; len];
                kernels::to_f64(format, &s.bytes[at * size..(at + len) * size], &mut out);
                return out; // Stored values need no rounding.
            }
            Node::Linear(_) => {
                let mut acc = vec![0.0; len];
                self.eval_into(node, start, end, &mut acc);
                return acc; // Already rounded.
            }
            Node::Ties {
                base,
                models,
                weights,
                lambda,
                ..
            } => {
                let Some(State::Thresholds(t)) = self.states.get(&node) else {
                    unreachable!("prepared")
                };
                let b = self.eval(*base, start, end);
                let deltas: Vec<Vec<f64>> = models
                    .iter()
                    .zip(t)
                    .map(|(&m, &th)| {
                        let mut d = self.eval(m, start, end);
                        for (x, y) in d.iter_mut().zip(&b) {
                            *x -= y;
                            if ((*x).abs() as f32) < th {
                                *x = 0.0;
                            }
                        }
                        d
                    })
                    .collect();
                let mut out = b;
                for i in 0..len {
                    out[i] += lambda * disjoint(deltas.iter().map(|d| d[i]), weights, true);
                }
                out
            }
            Node::Dare {
                base,
                models,
                weights,
                p,
                seed,
                lambda,
                ties,
            } => {
                let b = self.eval(*base, start, end);
                let keep = 1.0 - p;
                let deltas: Vec<Vec<f64>> = models
                    .iter()
                    .enumerate()
                    .map(|(j, &m)| {
                        let stream = dare_stream(*seed, self.key, j);
                        let mut d = self.eval(m, start, end);
                        for (i, (x, y)) in d.iter_mut().zip(&b).enumerate() {
                            let kept = stream.uniform((start + i) as u64) < keep;
                            *x = if kept { (*x - y) / keep } else { 0.0 };
                        }
                        d
                    })
                    .collect();
                let mut out = b;
                for i in 0..len {
                    let merged = if *ties {
                        disjoint(deltas.iter().map(|d| d[i]), weights, false)
                    } else {
                        deltas.iter().zip(weights).map(|(d, w)| w * d[i]).sum()
                    };
                    out[i] += lambda * merged;
                }
                out
            }
            Node::ModelStock { base, models } => {
                let Some(State::StockT(t)) = self.states.get(&node) else {
                    unreachable!("prepared")
                };
                let b = self.eval(*base, start, end);
                let mut out: Vec<f64> = b.iter().map(|x| (1.0 - t) * x).collect();
                let share = t / models.len() as f64;
                for &m in models {
                    kernels::axpy(share, &self.eval(m, start, end), &mut out);
                }
                out
            }
            Node::GeoMedian { .. } => {
                let Some(State::Median(z)) = self.states.get(&node) else {
                    unreachable!("prepared")
                };
                let at = start - self.origin;
                z[at..at + len].to_vec()
            }
            Node::TrainDiff { a, b, c, alpha } => {
                let (va, vb, vc) = (
                    self.eval(*a, start, end),
                    self.eval(*b, start, end),
                    self.eval(*c, start, end),
                );
                let alpha = alpha[self.row];
                (0..len)
                    .map(|i| {
                        let (x, y, z) = (va[i], vb[i], vc[i]);
                        let denom = (y - x).abs() + (y - z).abs();
                        let scale = if denom == 0.0 {
                            0.0
                        } else {
                            1.8 * alpha * (y - x).abs() / denom
                        };
                        x + (y - z) * scale
                    })
                    .collect()
            }
        };
        self.round(v)
    }
}

/// TIES' disjoint merge of one element: the sign of Σ wᵢδᵢ (0 counts as +) is elected; the
/// deltas that agree with it (non-zero, same sign) are summed weighted, then divided by
/// their weights' sum when `mean`.
pub fn disjoint(deltas: impl Iterator<Item = f64> + Clone, weights: &[f64], mean: bool) -> f64 {
    let total: f64 = deltas.clone().zip(weights).map(|(d, w)| w * d).sum();
    let positive = total >= 0.0;
    let (mut sum, mut wsum) = (0.0, 0.0);
    for (d, w) in deltas.zip(weights) {
        if d != 0.0 && (d > 0.0) == positive {
            sum += w * d;
            wsum += w;
        }
    }
    if !mean {
        sum
    } else if wsum == 0.0 {
        0.0
    } else {
        sum / wsum
    }
}

/// The magnitude threshold that keeps the top `k` fraction: the ⌈k·n⌉-th largest value
/// (at least one element). Values at or above it are kept (ties at the threshold are all
/// kept). Reorders `mags`.
pub fn magnitude_threshold(mags: &mut [f32], k: f64) -> f32 {
    if mags.is_empty() || k >= 1.0 {
        return 0.0;
    }
    let keep = ((k * mags.len() as f64).ceil() as usize).clamp(1, mags.len());
    let idx = mags.len() - keep;
    let (_, t, _) = mags.select_nth_unstable_by(idx, f32::total_cmp);
    *t
}

/// Model Stock's t from the task vectors' Gram matrix (row-major nm x nm, upper filled):
/// t = N·cosθ / (1 + (N-1)·cosθ), cosθ the mean pairwise cosine (a zero delta counts as
/// cosine 0); 0 (the base) when the denominator vanishes.
pub fn stock_t(gram: &[f64], nm: usize) -> f64 {
    let mut sum = 0.0;
    let mut pairs = 0;
    for i in 0..nm {
        for j in i + 1..nm {
            let (ii, jj, ij) = (gram[i * nm + i], gram[j * nm + j], gram[i * nm + j]);
            sum += if ii == 0.0 || jj == 0.0 {
                0.0
            } else {
                ij / (ii * jj).sqrt()
            };
            pairs += 1;
        }
    }
    let cos = if pairs == 0 { 0.0 } else { sum / pairs as f64 };
    let n = nm as f64;
    let denom = 1.0 + (n - 1.0) * cos;
    if denom.abs() < 1e-12 {
        0.0
    } else {
        n * cos / denom
    }
}

/// The random stream deciding which elements of model `j`'s delta DARE keeps for one
/// tensor: keyed by seed, tensor name and model, so masks do not depend on thread count,
/// order, or which other tensors exist, and same-shaped tensors get different masks.
pub fn dare_stream(seed: u64, key: &str, model: usize) -> Stream {
    Stream::new(seed, key_hash(key) ^ mix(0xda4e_0000 + model as u64))
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

/// The inputs `node` reads for `row`, recursively.
pub fn needed_inputs(plan: &MergePlan, node: usize, row: usize, out: &mut Vec<usize>) {
    match &plan.nodes[node] {
        Node::Input(i) => {
            if !out.contains(i) {
                out.push(*i);
            }
        }
        Node::Linear(terms) => {
            for (n, p) in terms {
                if p[row] != 0.0 {
                    needed_inputs(plan, *n, row, out);
                }
            }
        }
        other => {
            for c in other.children() {
                needed_inputs(plan, c, row, out);
            }
        }
    }
}

/// Whether the graph under `node` has a per-tensor method for `row`.
pub fn has_per_tensor(plan: &MergePlan, node: usize, row: usize) -> bool {
    let n = &plan.nodes[node];
    if n.per_tensor() {
        return true;
    }
    match n {
        Node::Linear(terms) => terms
            .iter()
            .any(|(c, p)| p[row] != 0.0 && has_per_tensor(plan, *c, row)),
        other => other
            .children()
            .into_iter()
            .any(|c| has_per_tensor(plan, c, row)),
    }
}

/// The output decision for each pass-plan entry. `dtype` forces the output float format;
/// otherwise each tensor keeps the format of the first needed input that has it.
pub fn decide(
    merge: &MergePlan,
    pass_plan: &Plan<'_>,
    dtype_out: Option<FloatFormat>,
    missing: Missing,
) -> Decisions {
    let mut outputs = Vec::new();
    let mut copied = Vec::new();
    let mut skipped = Vec::new();
    for (e, entry) in pass_plan.entries().iter().enumerate() {
        let row = merge.grouping.group_of(&entry.key);
        let mut needed = Vec::new();
        needed_inputs(merge, merge.output, row, &mut needed);
        needed.sort_unstable();
        let first_having = (0..pass_plan.models().len())
            .find(|&m| entry.sources[m].is_some())
            .expect("every entry is in some model");
        let tensor = |m: usize| pass_plan.tensor(entry, m);
        let all_floats_here = needed
            .iter()
            .all(|&m| tensor(m).is_some_and(|t| dtype::float_format(t.dtype).is_some()));
        let shapes_agree = needed
            .windows(2)
            .all(|w| match (tensor(w[0]), tensor(w[1])) {
                (Some(a), Some(b)) => a.shape == b.shape,
                _ => false,
            });
        let present = needed.iter().all(|&m| tensor(m).is_some());
        let kind = pass_plan.kind(entry);
        let integer = tensor(first_having).is_some_and(|t| dtype::float_format(t.dtype).is_none());
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
            let format =
                dtype_out.unwrap_or_else(|| dtype::float_format(first.dtype).expect("float"));
            Some(Source::Merge {
                row,
                format,
                per_tensor: has_per_tensor(merge, merge.output, row),
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
        if let Some(source) = source {
            outputs.push(OutputTensor {
                entry: e,
                name: entry.key.clone(),
                source,
                out_index: usize::MAX,
            });
        }
    }
    Decisions {
        outputs,
        copied,
        skipped,
    }
}
