//! Fuzzing the torch and GGUF readers: mutated real pickles and zips (made by PyTorch, see
//! fixtures/torch/) and GGUF files (made by gguf-py, fixtures/gguf/) never panic, always
//! finish, and never allocate past a bound.
//!
//! A test binary of its own, so that its counting allocator sees this test only. Cases:
//! `PROPTEST_CASES` (default 100 000, split over the seeds).

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ckpt_read::gguf::{self, container};
use ckpt_read::pickle::{self, Limits};
use ckpt_read::torch::{self, StorageBytes};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Counts live and peak heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests measure the peak heap one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The most one read of an input of these sizes (25 KB) may hold at once: far below the
/// interpreter's limits (README), which a crafted small file cannot reach either, because
/// every value costs at least one input byte and lengths are checked against the input.
const PEAK_BOUND: usize = 64 << 20;

fn seed(name: &str) -> Vec<u8> {
    seed_in("torch", name)
}

fn seed_in(folder: &str, name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(folder)
            .join(name),
    )
    .unwrap()
}

/// Byte edits: flips, overwrites with boundary values, insertions, deletions, a cut.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Cut(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let byte = prop_oneof![any::<u8>(), Just(0u8), Just(0xff), Just(0x7f), Just(0x80)];
    let edit = prop_oneof![
        6 => (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<usize>(), prop::collection::vec(byte, 1..9)).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<usize>().prop_map(Edit::Cut),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if b.is_empty() {
            break;
        }
        match e {
            Edit::Set(i, v) => {
                let n = b.len();
                b[i % n] = *v;
            }
            Edit::Insert(i, v) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, v.iter().copied());
            }
            Edit::Delete(i, n) => {
                let at = i % b.len();
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
            Edit::Cut(i) => b.truncate(i % b.len()),
        }
    }
    b
}

static READ: AtomicUsize = AtomicUsize::new(0);

/// Reads `bytes` as the reader does; what it returns must point inside the input.
fn read(bytes: &[u8], zip: bool) {
    let Ok(f) = torch::read(bytes, zip) else {
        return;
    };
    READ.fetch_add(1, Ordering::Relaxed);
    for t in &f.tensors {
        let s = &f.storages[t.storage];
        if let StorageBytes::InPlace { begin, len } = s.bytes {
            assert!(begin + len <= bytes.len(), "{} past the input", t.name);
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn test_mutated_torch_files_never_panic_or_overallocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = cases();
    let zip = seed("tiny-zip.ckpt");
    let legacy = seed("tiny-legacy.ckpt");
    // The pickle alone (from the zip), and hand-written ones with every form of call.
    let pickles: Vec<Vec<u8>> = [
        "evil-inst.ckpt",
        "evil-obj.ckpt",
        "evil-newobj.ckpt",
        "evil-stack-global.ckpt",
    ]
    .iter()
    .map(|n| {
        let z = seed(n);
        let mut a = zip::ZipArchive::new(std::io::Cursor::new(z)).unwrap();
        let mut f = a.by_name("evil/data.pkl").unwrap();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v).unwrap();
        v
    })
    .collect();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut runner = TestRunner::new(Config {
        cases: cases / 3,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&edits(), |e| {
            read(&apply(zip.clone(), &e), true);
            Ok(())
        })
        .unwrap();
    runner
        .run(&edits(), |e| {
            read(&apply(legacy.clone(), &e), false);
            Ok(())
        })
        .unwrap();
    runner
        .run(&(0..pickles.len(), edits()), |(i, e)| {
            let b = apply(pickles[i].clone(), &e);
            let _ = pickle::parse(&b, 0, Limits::default());
            Ok(())
        })
        .unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(peak < PEAK_BOUND, "peak heap {peak} bytes");
    let read = READ.load(Ordering::Relaxed);
    eprintln!(
        "fuzz: {} cases, {read} mutated files still read, peak heap {} KiB",
        cases / 3 * 3,
        peak >> 10
    );
    // The mutations must leave many files readable, or the fuzzing tests only the first
    // checks.
    assert!(
        read as u32 > cases / 3 / 10,
        "only {read} mutated files were readable"
    );
}

static GGUF_READ: AtomicUsize = AtomicUsize::new(0);

/// Reads `bytes` as the GGUF reader does and decodes every tensor it accepts: each must lie
/// inside the input.
fn read_gguf(bytes: &[u8]) {
    let Ok(info) = container::parse(bytes) else {
        return;
    };
    let Ok(entries) = container::entries(&info) else {
        return;
    };
    GGUF_READ.fetch_add(1, Ordering::Relaxed);
    let data = &bytes[(info.data_start as usize).min(bytes.len())..];
    for t in &entries {
        assert!(t.end <= data.len(), "{} past the input", t.name);
        let ty = info.ggml_type(&t.name).expect("every entry has a type");
        let mut out = vec![0.0f64; t.numel()];
        gguf::decode_into(ty, &data[t.begin..t.end], 0, &mut out);
    }
}

#[test]
fn test_mutated_gguf_files_never_panic_or_overallocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = cases() / 4;
    let seeds: Vec<Vec<u8>> = ["city96.gguf", "sdcpp.gguf", "q4_k.gguf", "q8_0.gguf"]
        .iter()
        .map(|n| seed_in("gguf", n))
        .collect();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(0..seeds.len(), edits()), |(i, e)| {
            read_gguf(&apply(seeds[i].clone(), &e));
            Ok(())
        })
        .unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(peak < PEAK_BOUND, "peak heap {peak} bytes");
    let read = GGUF_READ.load(Ordering::Relaxed);
    eprintln!(
        "fuzz: {cases} GGUF cases, {read} mutated files still read, peak heap {} KiB",
        peak >> 10
    );
    assert!(
        read as u32 > cases / 10,
        "only {read} mutated GGUF files were readable"
    );
}
