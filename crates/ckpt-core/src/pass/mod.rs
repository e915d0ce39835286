//! The engine: one parallel read of N checkpoints, tensor by tensor, feeding a visitor.
//!
//! A [`Plan`] lines up the union of the (canonical) keys of N open checkpoints. A [`Pass`]
//! splits the chosen entries into work items (element ranges of about 16 MiB of input),
//! runs [`Visit::visit`] on them in parallel on the rayon pool, and hands each result to
//! [`Absorb::absorb`] **in plan order**. So sums come out the same
//! whatever the thread count, memory holds only the results of a bounded stretch of items,
//! and no lock is taken in the inner loop.
//!
//! ```no_run
//! use ckpt_core::pass::{Pass, Plan};
//! use ckpt_read::Checkpoint;
//! let a = Checkpoint::open("a.safetensors")?;
//! let b = Checkpoint::open("b.safetensors")?;
//! let plan = Plan::new(vec![&a, &b]);
//! println!("{} keys", plan.entries().len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod progress;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

use crate::catalog::keys_of;
use ckpt_read::comfy::Sides;
use ckpt_read::dtype::{self, FloatFormat, ValueKind};
use ckpt_read::{Checkpoint, Dtype, Encoding, TensorEntry};
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

/// A request to stop: the caller keeps a clone (the command line sets it from its Ctrl-C
/// handler) and every [`Pass`] given it stops at its next item, with
/// [`PassError::Interrupted`].
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token nobody has cancelled yet.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks every pass holding this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
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
            let keys = keys_of(ckpt);
            for ((t, tensor), key) in ckpt.tensors().iter().enumerate().zip(keys) {
                let key = key.clone();
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

    /// The entries whose canonical key `keys` matches (all without `keys`) and that `keep`
    /// keeps, in plan order.
    pub fn select(&self, keys: Option<&regex::Regex>, keep: impl Fn(&str) -> bool) -> Vec<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| keys.is_none_or(|re| re.is_match(&e.key)) && keep(&e.key))
            .map(|(i, _)| i)
            .collect()
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
        let kinds: Vec<ValueKind> = tensors
            .iter()
            .map(|t| match t.encoding {
                // Codes a block encoding turns into floats are floats.
                Encoding::Block(_) | Encoding::Ggml(_) => ValueKind::Float(FloatFormat::F32),
                _ => dtype::value_kind(t.dtype),
            })
            .collect();
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
    /// The bytes of elements `start..start + len` of the tensor.
    pub bytes: &'a [u8],
    /// How the stored values give the tensor's values. Visitors read values through
    /// [`Slice::values_into`], the one place that decodes them.
    pub encoding: Encoding,
    /// The first element's index in its tensor (block encodings find their scales by it).
    pub start: usize,
    /// Its element count.
    pub count: usize,
    /// A block-encoded tensor's side tensors (scales, zero points, ... whole); empty
    /// otherwise.
    pub side: Sides<'a>,
}

impl<'a> Slice<'a> {
    /// A slice of elements `start..end` of `t`, whose data is `data` (the whole tensor's)
    /// in a checkpoint whose bytes `ckpt` gives.
    pub fn new(ckpt: &'a Checkpoint, t: &TensorEntry, start: usize, end: usize) -> Slice<'a> {
        let data = ckpt.data(t);
        let (from, to) = t.byte_range(start, end);
        let side = match t.encoding {
            Encoding::Block(b) => b.sides(|begin, end| ckpt.bytes_at(begin, end)),
            _ => Sides::default(),
        };
        Slice {
            dtype: t.dtype,
            bytes: &data[from..to],
            encoding: t.encoding,
            start,
            count: end - start,
            side,
        }
    }

    /// A plain slice of stored values (no tensor behind it).
    pub fn plain(dtype: Dtype, bytes: &'a [u8]) -> Slice<'a> {
        Slice {
            dtype,
            bytes,
            encoding: Encoding::Plain,
            start: 0,
            count: bytes.len() * 8 / dtype::bit_size(dtype),
            side: Sides::default(),
        }
    }

    /// Its element count.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Elements `start..end` of the slice (indices relative to it).
    pub fn part(&self, start: usize, end: usize) -> Slice<'a> {
        let (from, to) = match self.encoding {
            Encoding::Block(b) => {
                let base = b.code_range(self.start, self.start).0;
                let (f, t) = b.code_range(self.start + start, self.start + end);
                (f - base, t - base)
            }
            // Whole blocks: the part's bytes start at the block holding its first element.
            Encoding::Ggml(ty) => {
                let base = ckpt_read::gguf::byte_range(ty, self.start, self.start).0;
                let (f, t) = ckpt_read::gguf::byte_range(ty, self.start + start, self.start + end);
                (f - base, t - base)
            }
            _ => {
                let size = dtype::bit_size(self.dtype) / 8;
                (start * size, end * size)
            }
        };
        Slice {
            bytes: &self.bytes[from..to],
            start: self.start + start,
            count: end - start,
            ..*self
        }
    }

    /// A whole tensor of `ckpt`.
    pub fn of(ckpt: &'a Checkpoint, t: &TensorEntry) -> Slice<'a> {
        Slice::new(ckpt, t, 0, t.numel())
    }

    /// Whether its values are floats (a float dtype, or codes a block encoding decodes).
    pub fn is_float(&self) -> bool {
        self.encoding.needs_decoding() || dtype::float_format(self.dtype).is_some()
    }

    /// The stored values times one factor, when the encoding is element-wise: fast paths
    /// that work on stored bytes use it, and decode through [`Slice::values_into`]
    /// otherwise.
    pub fn stored(&self) -> Option<(FloatFormat, f64)> {
        Some((dtype::float_format(self.dtype)?, self.encoding.factor()?))
    }

    /// The float values of the slice, decoded: `out[i] = stored[i] · scale` for a scaled
    /// tensor, comfy-kitchen's float32 values for a block-encoded one, gguf-py's float32
    /// values for a ggml-quantized one.
    pub fn values_into(&self, out: &mut [f64]) {
        match self.encoding {
            Encoding::Block(b) => return b.decode(self.bytes, &self.side, self.start, out),
            Encoding::Ggml(ty) => {
                return ckpt_read::gguf::decode_into(ty, self.bytes, self.start, out);
            }
            Encoding::Plain | Encoding::Scaled(_) => {}
        }
        let format = dtype::float_format(self.dtype).expect("values of a float slice");
        crate::kernels::to_f64(format, self.bytes, out);
        match self.encoding {
            Encoding::Scaled(s) => out.iter_mut().for_each(|x| *x *= s),
            Encoding::Plain | Encoding::Block(_) | Encoding::Ggml(_) => {}
        }
    }
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

/// The work a pass does on each item, on worker threads.
///
/// `visit` only reads `&self`; it runs once per item, items taken in plan order by
/// whichever worker is free. An `Err` stops the pass.
pub trait Visit: Sync {
    type Partial: Send;

    fn visit(
        &self,
        plan: &Plan<'_>,
        item: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<Self::Partial, PassError>;
}

/// What receives the results, strictly in plan order, one at a time (on whichever worker
/// finished the oldest item). An `Err` stops the pass (items already in flight finish;
/// their results are dropped).
pub trait Absorb<P> {
    fn absorb(&mut self, plan: &Plan<'_>, item: &Item, partial: P) -> Result<(), PassError>;
}

/// The absorber of visitors that return nothing (their work is a side effect, such as a
/// piece sent to a writer).
pub struct Ignore;

impl Absorb<()> for Ignore {
    fn absorb(&mut self, _: &Plan<'_>, _: &Item, _: ()) -> Result<(), PassError> {
        Ok(())
    }
}

/// Runs visitors over plans. Holds no state between runs.
pub struct Pass<'p> {
    progress: &'p dyn Progress,
    cancel: Cancel,
    item_bytes: usize,
    ahead_bytes: usize,
    release: Release,
}

/// Whether a pass hands back the file pages it has read (see [`Checkpoint::release`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// When the pass reads more than three quarters of physical memory: then the page
    /// cache cannot hold the inputs beside everything else, and unmapped pages are cheaper
    /// for the kernel to reclaim. Below that, releasing only costs time: the page-table
    /// teardown took two SDXL files from 0.57 s to 0.68 s.
    Auto,
    Always,
    Never,
}

impl<'p> Pass<'p> {
    /// A pass reporting to `progress`, which nothing cancels (see [`Pass::cancel_on`]).
    pub fn new(progress: &'p dyn Progress) -> Pass<'p> {
        Pass {
            progress,
            cancel: Cancel::new(),
            item_bytes: 16 << 20,
            ahead_bytes: 256 << 20,
            release: Release::Auto,
        }
    }

    /// Stops at the next item once `cancel` is cancelled.
    pub fn cancel_on(mut self, cancel: &Cancel) -> Self {
        self.cancel = cancel.clone();
        self
    }

    /// The token this pass stops on.
    pub fn cancel_token(&self) -> &Cancel {
        &self.cancel
    }

    /// Bytes of input per work item (default 16 MiB); smaller values are for tests.
    pub fn item_bytes(mut self, bytes: usize) -> Self {
        self.item_bytes = bytes.max(1);
        self
    }

    /// How far (in input bytes) workers may run ahead of the oldest result not yet
    /// absorbed (default 256 MiB): bounds the results held in memory.
    pub fn ahead_bytes(mut self, bytes: usize) -> Self {
        self.ahead_bytes = bytes.max(1);
        self
    }

    /// When to hand back read pages (default [`Release::Auto`]).
    pub fn release(mut self, release: Release) -> Self {
        self.release = release;
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
            // Items start on a multiple of every block encoding's alignment (a convrot
            // group), so each decodes on its own.
            let unit = (0..plan.models().len())
                .filter_map(|m| plan.tensor(entry, m))
                .map(|t| t.encoding.alignment())
                .fold(crate::kernels::CHUNK, lcm);
            let step = (self.item_bytes / bytes_per_elem).max(unit);
            let step = step / unit * unit;
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

    /// The work items for `streamed` entries (in pieces, as [`Pass::items`]) and `whole`
    /// ones (one item each: per-tensor methods, quantizers), in plan order.
    pub fn items_with_whole(
        &self,
        plan: &Plan<'_>,
        streamed: &[usize],
        whole: &[usize],
    ) -> Vec<Item> {
        let mut items = self.items(plan, streamed);
        for &e in whole {
            let numel: usize = plan.shape(&plan.entries()[e]).iter().product();
            items.push(Item {
                entry: e,
                start: 0,
                end: numel,
                numel,
            });
        }
        items.sort_by_key(|it| (it.entry, it.start));
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
            .map(|t| {
                let (from, to) = t.byte_range(item.start, item.end);
                (to - from) as u64
            })
            .sum()
    }

    /// Visits `entries` of `plan`: in parallel, absorbed in order.
    pub fn run<V: Visit, A: Absorb<V::Partial> + Send>(
        &self,
        plan: &Plan<'_>,
        entries: &[usize],
        visit: &V,
        absorb: &mut A,
    ) -> Result<(), PassError> {
        let items = self.items(plan, entries);
        self.run_items(plan, &items, visit, absorb)
    }

    /// Visits the given items (from [`Pass::items`]).
    ///
    /// One rayon task per thread takes items in order from a shared counter. A finished
    /// result goes into an in-order queue; whichever task finishes the oldest pending item
    /// absorbs every result that is now next in line (a lock per item, never in the inner
    /// loop). A task waits while its item starts more than `ahead_bytes` past the oldest
    /// unabsorbed one, so memory stays bounded and every file is read front to back. The
    /// oldest item is always being computed by a task that is not waiting, so this cannot
    /// deadlock, also when called from inside a rayon pool. There is no barrier between
    /// batches: a slow item delays the absorbing, not the other workers.
    pub fn run_items<V: Visit, A: Absorb<V::Partial> + Send>(
        &self,
        plan: &Plan<'_>,
        items: &[Item],
        visit: &V,
        absorb: &mut A,
    ) -> Result<(), PassError> {
        use std::collections::BTreeMap;
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Condvar, Mutex};

        let sizes: Vec<u64> = items
            .iter()
            .map(|it| Self::item_input_bytes(plan, it))
            .collect();
        // starts[i]: input bytes before item i.
        let mut starts = Vec::with_capacity(items.len() + 1);
        let mut at = 0u64;
        for s in &sizes {
            starts.push(at);
            at += s;
        }
        starts.push(at);
        self.progress.start(at);
        let release_pages = match self.release {
            Release::Always => true,
            Release::Never => false,
            Release::Auto => reads_past_memory(at),
        };

        struct Queue<'a, A, P> {
            absorb: &'a mut A,
            /// Results that finished before their turn.
            early: BTreeMap<usize, Result<P, PassError>>,
            /// The oldest item not yet absorbed.
            want: usize,
            outcome: Result<(), PassError>,
        }
        let queue = Mutex::new(Queue {
            absorb,
            early: BTreeMap::new(),
            want: 0,
            outcome: Ok(()),
        });
        let moved = Condvar::new();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let ahead = self.ahead_bytes as u64;

        rayon::scope(|scope| {
            for _ in 0..rayon::current_num_threads() {
                scope.spawn(|_| {
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            return;
                        }
                        {
                            let mut q = queue.lock().expect("never poisoned: no panics while held");
                            while i > q.want
                                && starts[i] - starts[q.want] > ahead
                                && !stop.load(Ordering::Relaxed)
                            {
                                q = moved.wait(q).expect("never poisoned");
                            }
                        }
                        let result = if self.cancel.is_cancelled() {
                            Err(PassError::Interrupted)
                        } else {
                            visit.visit(plan, &items[i], &slices(plan, &items[i]))
                        };
                        let mut q = queue.lock().expect("never poisoned");
                        q.early.insert(i, result);
                        while q.outcome.is_ok() {
                            let want = q.want;
                            let Some(r) = q.early.remove(&want) else {
                                break;
                            };
                            match r.and_then(|p| q.absorb.absorb(plan, &items[want], p)) {
                                Ok(()) => {
                                    self.progress.advance(sizes[want]);
                                    test_hold(starts[want + 1], &self.cancel);
                                    if release_pages {
                                        release(plan, &items[want]);
                                    }
                                    q.want += 1;
                                }
                                Err(e) => {
                                    q.outcome = Err(e);
                                    stop.store(true, Ordering::Relaxed);
                                }
                            }
                        }
                        drop(q);
                        moved.notify_all();
                    }
                });
            }
        });
        let queue = queue.into_inner().expect("never poisoned");
        queue.outcome?;
        self.progress.finish();
        Ok(())
    }
}

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

/// Whether reading `bytes` would take more than three quarters of physical memory: then
/// passes hand their pages back as they go.
pub fn reads_past_memory(bytes: u64) -> bool {
    ckpt_read::sys::physical_memory().is_some_and(|ram| bytes > ram / 4 * 3)
}

/// Releases the file pages an absorbed item read (see [`Checkpoint::release_tensor`]).
fn release(plan: &Plan<'_>, item: &Item) {
    let entry = &plan.entries()[item.entry];
    for (m, ckpt) in plan.models().iter().enumerate() {
        if let Some(t) = plan.tensor(entry, m) {
            let (from, to) = t.byte_range(item.start, item.end);
            ckpt.release_tensor(t, from, to);
        }
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
            Some(Slice::new(plan.models()[m], t, item.start, item.end))
        })
        .collect()
}

/// The test suite's hold point (see [`ckpt_read::env::HOLD_AFTER_BYTES`]): with the
/// `test-hooks` feature and `CKPT_DIFF_HOLD_AFTER_BYTES=N` set, once `done` reaches N bytes
/// this says so on stderr and waits until `cancel` is cancelled, so the interrupt test sends
/// Ctrl-C at exactly that point instead of after a guessed delay. Without the feature
/// (release builds) it does nothing. Long work that is not a pass calls it as it advances.
#[inline]
pub fn test_hold(done: u64, cancel: &Cancel) {
    #[cfg(feature = "test-hooks")]
    test_hooks::hold(done, cancel);
    #[cfg(not(feature = "test-hooks"))]
    let _ = (done, cancel);
}

/// Hooks the test suite needs in the binary it runs, compiled only with the `test-hooks`
/// feature (which `cargo test` turns on through a dev-dependency; releases leave it out).
#[cfg(feature = "test-hooks")]
mod test_hooks {
    /// What the hold prints (the interrupt test waits for it).
    pub const HOLDING: &str = "ckpt-diff: holding until interrupted";

    /// See [`super::test_hold`].
    pub(super) fn hold(done: u64, cancel: &super::Cancel) {
        let Some(after) = ckpt_read::env::HOLD_AFTER_BYTES
            .get()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return;
        };
        if done < after {
            return;
        }
        static SAID: std::sync::Once = std::sync::Once::new();
        // The hook talks to the test that runs the binary, on stderr.
        #[allow(clippy::print_stderr)]
        SAID.call_once(|| eprintln!("{HOLDING}"));
        while !cancel.is_cancelled() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

#[cfg(feature = "test-hooks")]
pub use test_hooks::HOLDING;
