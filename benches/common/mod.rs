//! Shared pieces of the full-size benchmarks: generated inputs, the machine's memory
//! bandwidth measured in the same run, timing, and peak memory.

#![allow(dead_code)]

#[path = "../../tests/words.rs"]
mod words;
#[allow(unused_imports)] // not every benchmark writes a command line
pub(crate) use words::words;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ckpt_core::catalog::Arch;
use ckpt_core::pass::NoProgress;
use ckpt_ops::synth::{self, Layout, Synthetic};
use ckpt_read::dtype::FloatFormat;

/// Where full-size inputs live between runs: `$CKPT_DIFF_BENCH_DIR`, else
/// `target/bench-data` (kept so repeated runs do not regenerate gigabytes).
pub(crate) fn data_dir() -> PathBuf {
    let dir = std::env::var_os(ckpt_read::env::BENCH_DIR.name)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    std::fs::create_dir_all(&dir).expect("bench data dir");
    dir
}

/// A full-size generated checkpoint (created once): the base of `seed`, plus a delta of
/// `delta` (relative size) with seed `seed + 1000` when `delta > 0`.
pub(crate) fn model(arch: Arch, dtype: FloatFormat, seed: u64, delta: f64) -> PathBuf {
    generated(arch, dtype, &format!("s{seed}-d{delta}"), || {
        let m = Synthetic::base(arch, seed);
        if delta > 0.0 {
            m.plus_delta(seed + 1000, synth::uniform(arch, delta))
        } else {
            m
        }
    })
}

/// A full-size generated fine-tune of the base of seed 1 (created once): fine-tune `k`
/// has its own delta direction and per-block sizes, as real fine-tunes do.
pub(crate) fn finetune(arch: Arch, dtype: FloatFormat, k: usize) -> PathBuf {
    generated(arch, dtype, &format!("s1-ft{k}"), || {
        finetune_model(arch, k)
    })
}

/// The synthetic model of [`finetune`].
pub(crate) fn finetune_model(arch: Arch, k: usize) -> Synthetic {
    Synthetic::base(arch, 1).plus_delta(
        2000 + k as u64,
        ckpt_ops::synth::family::finetune_profile(arch, 1, k, 0.1),
    )
}

/// A full-size checkpoint of a synthetic model built by `make` (created once) under
/// `name`.
pub(crate) fn generated(
    arch: Arch,
    dtype: FloatFormat,
    name: &str,
    make: impl FnOnce() -> Synthetic,
) -> PathBuf {
    let path = data_dir().join(format!("{}-{name}.safetensors", prefix(arch, dtype)));
    if !path.exists() {
        eprintln!("generating {} ...", path.display());
        synth::write(
            &path,
            &Layout::new(arch, 1, dtype),
            &make(),
            &[],
            &NoProgress,
            &Default::default(),
        )
        .expect("synth");
    }
    path
}

/// A diffusion model alone as BFL ships it (bare keys, no text encoders or VAE) of the
/// catalog's architecture `id`, generated from `model` in `dtype` (created once) as
/// `<data dir>/<id>-<name>.safetensors`; with `keys`, only the keys that regular expression
/// finds (a model with fewer blocks, at full width).
pub(crate) fn diffuser(
    id: &str,
    dtype: FloatFormat,
    name: &str,
    model: &Synthetic,
    keys: Option<&str>,
) -> PathBuf {
    let path = data_dir().join(format!("{id}-{name}.safetensors"));
    if !path.exists() {
        let mut l = diffuser_layout(id, dtype);
        l.keys = keys.map(|k| regex::Regex::new(k).expect("key filter").into());
        eprintln!("generating {} ...", path.display());
        let t = Instant::now();
        synth::write(&path, &l, model, &[], &NoProgress, &Default::default()).expect("synth");
        eprintln!("  {:.0} s", t.elapsed().as_secs_f64());
    }
    path
}

/// A full-size diffusion model alone (as [`diffuser`]) whose weights are the zeros of a
/// sparse file: the real header and sizes without the disk (created once) as
/// `<data dir>/<name>.safetensors`.
pub(crate) fn sparse_diffuser(id: &str, dtype: FloatFormat, name: &str, seed: u64) -> PathBuf {
    let path = data_dir().join(format!("{name}.safetensors"));
    if !path.exists() {
        let mut l = diffuser_layout(id, dtype);
        l.zero_data = true;
        let model = Synthetic::base(arch(id), seed);
        synth::write(&path, &l, &model, &[], &NoProgress, &Default::default()).expect("synth");
    }
    path
}

/// The layout of a diffusion model alone, BFL's bare keys.
fn diffuser_layout(id: &str, dtype: FloatFormat) -> Layout {
    let mut l = Layout::new(arch(id), 1, dtype);
    l.components = vec![ckpt_core::catalog::Component::named("diffuser").unwrap()];
    l.bare = true;
    l
}

/// Free bytes on the file system of `dir` (0 when unknown).
pub(crate) fn free_bytes(dir: &Path) -> u64 {
    ckpt_read::sys::free_space(dir).unwrap_or(0)
}

/// `n` SDXL checkpoints at full size with no weight data (sparse files: a plan's memory
/// bound for many inputs, without the disk), `dir/<name(i)>.safetensors`, created once.
pub(crate) fn zero_models(dir: &Path, n: usize, name: impl Fn(usize) -> String) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("{}.safetensors", name(i)));
            if !p.exists() {
                let mut l = Layout::new(arch("sdxl"), 1, FloatFormat::F16);
                l.zero_data = true;
                synth::write(
                    &p,
                    &l,
                    &Synthetic::base(arch("sdxl"), i as u64),
                    &[],
                    &NoProgress,
                    &Default::default(),
                )
                .expect("synth");
            }
            p
        })
        .collect()
}

fn prefix(arch: Arch, dtype: FloatFormat) -> String {
    format!(
        "{}-{}",
        arch.id(),
        ckpt_read::dtype::name(dtype.dtype()).to_lowercase()
    )
}

/// Drops `paths` from the page cache (their pages are clean: the files were synced).
pub(crate) fn evict(paths: &[&Path]) {
    use std::os::unix::io::AsRawFd;
    for p in paths {
        let f = std::fs::File::open(p).expect("open");
        // SAFETY: a valid descriptor; the call only advises the kernel.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// Reads every byte of `paths` once so they sit in the page cache.
pub(crate) fn warm(paths: &[&Path]) {
    use std::io::Read;
    let mut buf = vec![0u8; 8 << 20];
    for p in paths {
        let mut f = std::fs::File::open(p).expect("open");
        while f.read(&mut buf).expect("read") > 0 {}
    }
}

/// Median of `runs` timings of `f`, in seconds.
pub(crate) fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Memory read bandwidth of this machine in GB/s: the best of several sums over a 2 GiB
/// buffer (far larger than the caches) on all threads, with the widest SIMD the CPU has.
pub(crate) fn memory_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = 2usize << 30;
    let buf = vec![1u8; n];
    let best = (0..5)
        .map(|_| {
            let s = Instant::now();
            let total: u64 = buf.par_chunks(4 << 20).map(sum_bytes).sum();
            std::hint::black_box(total);
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    n as f64 / best / 1e9
}

fn sum_bytes(x: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: checked above.
        return unsafe { sum_avx512(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: checked above.
        return unsafe { sum_avx2(x) };
    }
    x.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .fold(0, u64::wrapping_add)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(x: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); 4];
    let mut i = 0;
    while i + 256 <= x.len() {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds by the loop condition.
            *a = _mm512_add_epi64(*a, unsafe {
                _mm512_loadu_si512(x.as_ptr().add(i + 64 * k) as *const _)
            });
        }
        i += 256;
    }
    let t = _mm512_add_epi64(
        _mm512_add_epi64(acc[0], acc[1]),
        _mm512_add_epi64(acc[2], acc[3]),
    );
    _mm512_reduce_add_epi64(t) as u64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(x: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut i = 0;
    while i + 128 <= x.len() {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds by the loop condition.
            *a = _mm256_add_epi64(*a, unsafe {
                _mm256_loadu_si256(x.as_ptr().add(i + 32 * k) as *const _)
            });
        }
        i += 128;
    }
    let mut out = [0u64; 4];
    let t = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    // SAFETY: `out` holds 4 u64.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut _, t) };
    out.iter().fold(0, |a, b| a.wrapping_add(*b))
}

/// Bytes per second of reading `paths` through a memory map, all threads, no computing:
/// the ceiling for any mmap-based pass on this machine (page faults included). Best of 3.
pub(crate) fn mmap_read_rate(paths: &[&Path]) -> f64 {
    (0..3)
        .map(|_| mmap_read_rate_once(paths))
        .fold(0.0, f64::max)
}

/// One timed read of `paths` through memory maps (GB/s); from disk if they are not cached.
pub(crate) fn mmap_read_rate_once(paths: &[&Path]) -> f64 {
    use rayon::prelude::*;
    let files: Vec<std::fs::File> = paths
        .iter()
        .map(|p| std::fs::File::open(p).expect("open"))
        .collect();
    let s = Instant::now();
    // SAFETY: read-only maps of files nobody writes during the benchmark.
    let maps: Vec<memmap2::Mmap> = files
        .iter()
        .map(|f| unsafe { memmap2::Mmap::map(f).expect("map") })
        .collect();
    let chunk = 4 << 20;
    let n = maps
        .iter()
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
        .div_ceil(chunk);
    let total: u64 = (0..n)
        .into_par_iter()
        .map(|c| {
            maps.iter()
                .map(|m| sum_bytes(&m[(c * chunk).min(m.len())..((c + 1) * chunk).min(m.len())]))
                .sum::<u64>()
        })
        .sum();
    std::hint::black_box(total);
    let secs = s.elapsed().as_secs_f64();
    paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum::<u64>() as f64
        / secs
        / 1e9
}

/// Peak resident memory of finished child processes (ru_maxrss of RUSAGE_CHILDREN), bytes.
pub(crate) fn children_peak_rss() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct when it returns 0.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, ru.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: initialised by the successful call.
    unsafe { ru.assume_init() }.ru_maxrss as u64 * 1024
}

/// Runs the release binary with `args`; returns (seconds, peak RSS bytes, peak anonymous
/// RSS bytes). Anonymous RSS leaves out mapped file pages (the page cache).
pub(crate) fn run_binary(args: &[&str]) -> (f64, u64, u64) {
    run_binary_exiting(args, 0)
}

/// [`run_binary`] for commands that may exit 1 (`validate` and `fix` with warnings).
pub(crate) fn run_binary_status(args: &[&str]) -> (f64, u64, u64) {
    run_binary_exiting(args, 1)
}

fn run_binary_exiting(args: &[&str], worst: i32) -> (f64, u64, u64) {
    let exe = env!("CARGO_BIN_EXE_ckpt-diff");
    let start = Instant::now();
    let mut child = std::process::Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn ckpt-diff");
    let pid = child.id();
    let mut peak_anon = 0u64;
    let mut peak_rss = 0u64;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let code = status.code().unwrap_or(-1);
            assert!(
                (0..=worst).contains(&code),
                "ckpt-diff {args:?} failed ({code})"
            );
            break;
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let field = |name: &str| -> u64 {
                s.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            };
            peak_anon = peak_anon.max(field("RssAnon:"));
            peak_rss = peak_rss.max(field("VmRSS:"));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (start.elapsed().as_secs_f64(), peak_rss, peak_anon)
}

pub(crate) fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

/// Sequential write speed with fsync into `dir` (2 GiB), as a merge's output sees it, GB/s.
pub(crate) fn disk_write_rate(dir: &Path) -> f64 {
    disk_write_rate_of(dir, 2 << 30)
}

/// Sequential write speed with fsync of `bytes` (rounded to 8 MiB writes) into `dir`, GB/s.
/// A virtual disk's speed moves from minute to minute; measure beside what it limits.
pub(crate) fn disk_write_rate_of(dir: &Path, bytes: u64) -> f64 {
    use std::io::Write;
    let p = dir.join("write-test.bin");
    let buf = vec![0x5au8; 8 << 20];
    let n = (bytes / buf.len() as u64).max(1);
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&p).unwrap();
        for _ in 0..n {
            f.write_all(&buf).unwrap();
        }
        f.sync_all().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&p);
    (n * buf.len() as u64) as f64 / secs / 1e9
}

/// One plain read of all of `src` (8 MiB reads) writing its first `write` bytes into `dst`
/// (the whole file when `write` is `None`), then fsync, in seconds; `dst` is deleted. The
/// floor for any conversion that reads `src` and writes that many bytes.
pub(crate) fn plain_copy(src: &Path, dst: &Path, write: Option<u64>) -> f64 {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut r = std::fs::File::open(src).unwrap();
    let mut w = std::fs::File::create(dst).unwrap();
    let mut left = write.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let m = (n as u64).min(left) as usize;
        w.write_all(&buf[..m]).unwrap();
        left -= m as u64;
    }
    w.sync_all().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(dst);
    secs
}

/// One run of a program: wall time, peak RSS (the kernel's own count, `ru_maxrss`), peak
/// anonymous RSS (polled every 5 ms: memory that is not mapped file pages), stdout.
pub(crate) struct Measured {
    pub secs: f64,
    pub peak_rss: u64,
    pub peak_anon: u64,
    pub stdout: String,
}

/// Runs `program args` to completion and measures it; panics with its stderr if it fails.
// The child is reaped by `wait4` below, which also returns its resource usage.
#[allow(clippy::zombie_processes)]
pub(crate) fn run_measured(program: &Path, args: &[&str]) -> Measured {
    use std::io::Read;
    let start = Instant::now();
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(program);
    // A pre-exec hook makes the standard library fork instead of vfork/posix_spawn. With
    // vfork the child execs from this process's address space, and Linux carries that
    // address space's high-water RSS into the child's `ru_maxrss`: every child then reported
    // at least this harness's own peak (the files it mapped to compare outputs), measured
    // 2.0 GB for `/bin/true`. A forked child starts its own count.
    // SAFETY: the hook does nothing, so it is async-signal-safe.
    unsafe { command.pre_exec(|| Ok(())) };
    let mut child = command
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut peak_anon = 0u64;
    let (status, ru) = loop {
        let mut status = 0;
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `pid` is our child; wait4 fills `status` and `ru` when it returns the pid.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, ru.as_mut_ptr()) };
        if rc == pid {
            // SAFETY: filled by the successful call.
            break (status, unsafe { ru.assume_init() });
        }
        assert!(rc == 0, "wait4 failed");
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let anon = s
                .lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
            peak_anon = peak_anon.max(anon);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let secs = start.elapsed().as_secs_f64();
    let stdout = reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{} {args:?} failed:\n{stderr}",
        program.display()
    );
    Measured {
        secs,
        peak_rss: ru.ru_maxrss as u64 * 1024,
        peak_anon,
        stdout,
    }
}

/// The architecture `id` (benchmarks name architectures by their catalog ids).
#[allow(dead_code)]
pub(crate) fn arch(id: &str) -> ckpt_core::catalog::Arch {
    ckpt_core::catalog::Arch::parse(id).unwrap_or_else(|| panic!("no architecture {id}"))
}
