//! The engine: one parallel read of N checkpoints, tensor by tensor, feeding a visitor.
//!
//! A [`Plan`] lines up the union of the (canonical) keys of N open checkpoints. A [`Pass`]
//! splits the chosen entries into work items (element ranges of about 4 MiB of input),
//! runs [`Visitor::visit`] on them in parallel with rayon, and hands each result to
//! [`Visitor::absorb`] on the calling thread **in plan order**. So sums come out the same
//! whatever the thread count, memory holds only a window of items in flight, and no lock is
//! taken in the inner loop.
//!
//! ```no_run
//! use ckpt_diff::pass::{Pass, Plan};
//! use ckpt_diff::reader::Checkpoint;
//! let a = Checkpoint::open("a.safetensors")?;
//! let b = Checkpoint::open("b.safetensors")?;
//! let plan = Plan::new(vec![&a, &b]);
//! println!("{} keys", plan.entries().len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod progress;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use thiserror::Error;

use crate::catalog::canonical_key;
use crate::reader::dtype::{self, ValueKind};
use crate::reader::{Checkpoint, Dtype, TensorEntry};
pub use progress::{NoProgress, Progress};

/// Why a pass stopped early.
#[derive(Debug, Error)]
pub enum PassError {
    #[error("interrupted")]
    Interrupted,
    #[error("tensor '{key}': {message}")]
    Tensor { key: String, message: String },
    #[error("writing '{path}': {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks every running pass to stop at its next window (the Ctrl-C handler calls this).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// True once [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// One key of the union, and where each model holds it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The canonical key (aliases resolved).
    pub key: String,
    /// Per model: the index of the tensor in that checkpoint's [`Checkpoint::tensors`].
    pub sources: Vec<Option<usize>>,
}

/// How the models' tensors for one key relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// In every model, same shape, all floats: inner products are defined.
    Float,
    /// In every model, same shape, all integers (e.g. `position_ids`): compared exactly.
    Integer,
    /// In every model with one shape, but of types ckpt-diff does not compute with.
    Opaque,
    /// In every model with the same shape, but floats in some and integers in others.
    MixedKinds,
    /// Missing from at least one model.
    Missing,
    /// Shapes differ between models.
    ShapeMismatch,
}

/// The union of the keys of N checkpoints, in reading order.
pub struct Plan<'m> {
    models: Vec<&'m Checkpoint>,
    entries: Vec<Entry>,
    /// Raw names that resolved to a canonical key another tensor of the same file already
    /// had (the file holds both spellings); the first one by offset is used.
    pub shadowed: Vec<(usize, String)>,
}

impl<'m> Plan<'m> {
    /// Lines up the keys of `models`. Entries are ordered by the first model that has them,
    /// then by data offset, so the pass reads each file front to back.
    pub fn new(models: Vec<&'m Checkpoint>) -> Plan<'m> {
        let n = models.len();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut shadowed = Vec::new();
        for (m, ckpt) in models.iter().enumerate() {
            for (t, tensor) in ckpt.tensors().iter().enumerate() {
                let key = canonical_key(&tensor.name).into_owned();
                let e = *index.entry(key.clone()).or_insert_with(|| {
                    entries.push(Entry {
                        key,
                        sources: vec![None; n],
                    });
                    entries.len() - 1
                });
                if entries[e].sources[m].is_some() {
                    shadowed.push((m, tensor.name.clone()));
                } else {
                    entries[e].sources[m] = Some(t);
                }
            }
        }
        Plan {
            models,
            entries,
            shadowed,
        }
    }

    pub fn models(&self) -> &[&'m Checkpoint] {
        &self.models
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The tensor of `entry` in model `m`, if it has it.
    pub fn tensor(&self, entry: &Entry, m: usize) -> Option<&'m TensorEntry> {
        entry.sources[m].map(|t| &self.models[m].tensors()[t])
    }

    /// The shape of `entry` in the first model that has it.
    pub fn shape(&self, entry: &Entry) -> &'m [usize] {
        (0..self.models.len())
            .find_map(|m| self.tensor(entry, m))
            .map(|t| t.shape.as_slice())
            .unwrap_or(&[])
    }

    /// How the models' tensors for `entry` relate.
    pub fn kind(&self, entry: &Entry) -> EntryKind {
        let tensors: Vec<Option<&TensorEntry>> = (0..self.models.len())
            .map(|m| self.tensor(entry, m))
            .collect();
        if tensors.iter().any(Option::is_none) {
            return EntryKind::Missing;
        }
        let tensors: Vec<&TensorEntry> = tensors.into_iter().flatten().collect();
        if tensors.windows(2).any(|w| w[0].shape != w[1].shape) {
            return EntryKind::ShapeMismatch;
        }
        let kinds: Vec<ValueKind> = tensors.iter().map(|t| dtype::value_kind(t.dtype)).collect();
        if kinds.iter().all(|k| matches!(k, ValueKind::Float(_))) {
            EntryKind::Float
        } else if kinds.iter().all(|k| *k == ValueKind::Integer) {
            EntryKind::Integer
        } else if kinds.contains(&ValueKind::Opaque) {
            EntryKind::Opaque
        } else {
            EntryKind::MixedKinds
        }
    }
}

/// A slice of elements of one model's tensor.
#[derive(Clone, Copy, Debug)]
pub struct Slice<'a> {
    pub dtype: Dtype,
    /// The bytes of elements `start..end` of the tensor.
    pub bytes: &'a [u8],
}

/// A unit of parallel work: elements `start..end` of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    /// Index into [`Plan::entries`].
    pub entry: usize,
    pub start: usize,
    pub end: usize,
    /// Element count of the whole tensor (so visitors know the first and last item).
    pub numel: usize,
}

impl Item {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// True for the item that starts the tensor.
    pub fn is_first(&self) -> bool {
        self.start == 0
    }
}

/// What a pass feeds.
///
/// `visit` runs on worker threads, once per item, and must only read `&self`; `absorb`
/// runs on the calling thread in plan order with the result. An `Err` from either stops
/// the pass (items already in flight finish; their results are dropped).
pub trait Visitor: Sync {
    type Partial: Send;

    fn visit(
        &self,
        plan: &Plan<'_>,
        item: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<Self::Partial, PassError>;

    fn absorb(
        &mut self,
        plan: &Plan<'_>,
        item: &Item,
        partial: Self::Partial,
    ) -> Result<(), PassError>;
}

/// Runs visitors over plans. Holds no state between runs.
pub struct Pass<'p> {
    progress: &'p dyn Progress,
    item_bytes: usize,
    window_bytes: usize,
}

impl<'p> Pass<'p> {
    /// A pass reporting to `progress`.
    pub fn new(progress: &'p dyn Progress) -> Pass<'p> {
        Pass {
            progress,
            item_bytes: 4 << 20,
            window_bytes: 64 << 20,
        }
    }

    /// Bytes of input per work item (default 4 MiB); smaller values are for tests.
    pub fn item_bytes(mut self, bytes: usize) -> Self {
        self.item_bytes = bytes.max(1);
        self
    }

    /// The work items for `entries` of `plan`, in plan order.
    pub fn items(&self, plan: &Plan<'_>, entries: &[usize]) -> Vec<Item> {
        let mut items = Vec::new();
        for &e in entries {
            let entry = &plan.entries()[e];
            let numel: usize = plan.shape(entry).iter().product();
            let bytes_per_elem: usize = (0..plan.models().len())
                .filter_map(|m| plan.tensor(entry, m))
                .map(|t| dtype::bit_size(t.dtype).div_ceil(8))
                .sum::<usize>()
                .max(1);
            let step = (self.item_bytes / bytes_per_elem).max(crate::kernels::CHUNK);
            let step = step / crate::kernels::CHUNK * crate::kernels::CHUNK;
            if numel == 0 {
                items.push(Item {
                    entry: e,
                    start: 0,
                    end: 0,
                    numel,
                });
                continue;
            }
            let mut start = 0;
            while start < numel {
                let end = (start + step).min(numel);
                items.push(Item {
                    entry: e,
                    start,
                    end,
                    numel,
                });
                start = end;
            }
        }
        items
    }

    /// Bytes a run over `items` reads from all models.
    pub fn input_bytes(plan: &Plan<'_>, items: &[Item]) -> u64 {
        items
            .iter()
            .map(|it| Self::item_input_bytes(plan, it))
            .sum()
    }

    fn item_input_bytes(plan: &Plan<'_>, item: &Item) -> u64 {
        let entry = &plan.entries()[item.entry];
        (0..plan.models().len())
            .filter_map(|m| plan.tensor(entry, m))
            .map(|t| (item.len() * dtype::bit_size(t.dtype) / 8) as u64)
            .sum()
    }

    /// Visits `entries` of `plan`: in parallel, absorbed in order.
    pub fn run<V: Visitor>(
        &self,
        plan: &Plan<'_>,
        entries: &[usize],
        visitor: &mut V,
    ) -> Result<(), PassError> {
        let items = self.items(plan, entries);
        self.run_items(plan, &items, visitor)
    }

    /// Visits the given items (from [`Pass::items`]).
    pub fn run_items<V: Visitor>(
        &self,
        plan: &Plan<'_>,
        items: &[Item],
        visitor: &mut V,
    ) -> Result<(), PassError> {
        self.progress.start(Self::input_bytes(plan, items));
        let mut rest = items;
        while !rest.is_empty() {
            if interrupted() {
                return Err(PassError::Interrupted);
            }
            let mut take = 0;
            let mut bytes = 0u64;
            while take < rest.len() && (take < 2 || bytes < self.window_bytes as u64) {
                bytes += Self::item_input_bytes(plan, &rest[take]);
                take += 1;
            }
            let (window, tail) = rest.split_at(take);
            let shared: &V = visitor;
            let partials: Vec<Result<V::Partial, PassError>> = window
                .par_iter()
                .map(|item| {
                    let inputs = slices(plan, item);
                    shared.visit(plan, item, &inputs)
                })
                .collect();
            for (item, partial) in window.iter().zip(partials) {
                visitor.absorb(plan, item, partial?)?;
            }
            self.progress.advance(bytes);
            rest = tail;
        }
        self.progress.finish();
        Ok(())
    }
}

/// The input slices of one item: per model, the bytes of the element range.
pub fn slices<'a>(plan: &Plan<'a>, item: &Item) -> Vec<Option<Slice<'a>>> {
    let entry = &plan.entries()[item.entry];
    (0..plan.models().len())
        .map(|m| {
            let t = plan.tensor(entry, m)?;
            let numel = t.numel();
            if item.end > numel {
                // Shape differs from the plan's: visitors that read it asked for trouble.
                return None;
            }
            let bits = dtype::bit_size(t.dtype);
            let data = plan.models()[m].data(t);
            let bytes = &data[item.start * bits / 8..item.end * bits / 8];
            Some(Slice {
                dtype: t.dtype,
                bytes,
            })
        })
        .collect()
}
