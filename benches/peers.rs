//! ckpt-diff side by side with the tools users run today, on the same full-size files, in
//! one run, beside this machine's limits measured in the same run:
//!
//! * `sim` against a PyTorch script doing the same per-block cosine (`peers/sim_torch.py`);
//! * `merge` (weighted sum, add difference, a 3-step recipe) against sd-mecha 1.1.8
//!   (`peers/merge_mecha.py`), with the two outputs compared value by value;
//! * `hash` against hashlib + zlib + blake3 in Python (`peers/hash_py.py`), hashes compared.
//!
//!     just bench-peers            # or: cargo bench --bench peers
//!
//! The Python peers live in `target/bench-venv` (made by `peers/setup.sh` with pinned
//! versions; `CKPT_DIFF_BENCH_PYTHON` points at another interpreter instead). Inputs are
//! generated once into the bench data folder (`CKPT_DIFF_BENCH_DIR`, else
//! `target/bench-data`); the files this run generates and every merge output are deleted at
//! the end (`CKPT_DIFF_BENCH_KEEP=1` keeps the inputs). `CKPT_DIFF_BENCH_RUNS` (default 3)
//! runs per measurement; the median time is reported, and the largest peak memory. The
//! table goes to `reports/bench/peers.md` (and `.json`).

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};

use ckpt_core::catalog::Arch;
use ckpt_read::Checkpoint;
use ckpt_read::dtype::{FloatFormat, float_format};
use common::*;
use rayon::prelude::*;
use serde_json::{Value, json};
use sha2::Digest;

/// What bounds a task on this machine.
enum Limit {
    /// Reading `input_bytes` at memory bandwidth.
    Bandwidth,
    /// SHA-256 of the file alone on one thread, in seconds.
    ShaAlone(f64),
    /// Writing `out_bytes` with fsync at the disk's speed (or reading the inputs at memory
    /// bandwidth, if that is slower).
    Write { out_bytes: u64 },
}

/// The machine's limits, measured in the run.
struct Machine {
    bandwidth: f64,
    /// Every sequential write rate measured in the run: a virtual disk's speed moves from
    /// minute to minute (0.3 to 1.2 GB/s here), and its best is what the disk can do.
    writes: Vec<f64>,
}

impl Machine {
    fn best_write(&self) -> f64 {
        self.writes.iter().copied().fold(0.0, f64::max)
    }

    fn secs(&self, limit: &Limit, input_bytes: u64) -> f64 {
        let read = gb(input_bytes) / self.bandwidth;
        match *limit {
            Limit::Bandwidth => read,
            Limit::ShaAlone(secs) => secs,
            Limit::Write { out_bytes } => read.max(gb(out_bytes) / self.best_write()),
        }
    }

    fn describe(&self, limit: &Limit) -> String {
        match limit {
            Limit::Bandwidth => "reading the inputs at memory bandwidth".into(),
            Limit::ShaAlone(_) => {
                "SHA-256 of the file alone on one thread (the slowest of the hashes)".into()
            }
            Limit::Write { .. } => format!(
                "writing the output with fsync at the best disk write rate seen in the run \
                 ({:.2} GB/s)",
                self.best_write()
            ),
        }
    }
}

/// One measured tool on one task.
struct Line {
    task: String,
    tool: String,
    secs: f64,
    peak_rss: u64,
    peak_anon: u64,
    input_bytes: u64,
}

struct Comparison {
    ours: Line,
    peer: Line,
    /// The physical limit for this task.
    limit: Limit,
    /// How the outputs agree.
    check: String,
}

fn runs() -> usize {
    std::env::var(ckpt_read::env::BENCH_RUNS.name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// `runs` measurements after `warmup` discarded ones: the median time, the largest peaks,
/// the last stdout.
///
/// A warm-up run matters on this virtual machine even after the inputs were read once:
/// page-cache pages that the host has not yet backed, or that are still being written back
/// after generation, make the next run several times slower (measured 0.62 s warm against
/// 7.3 s and 3.8 s for the two runs after a cold read of two SDXL files).
fn measure(
    task: &str,
    tool: &str,
    input_bytes: u64,
    warmup: usize,
    mut run: impl FnMut() -> Measured,
) -> (Line, String) {
    for _ in 0..warmup {
        run();
    }
    let mut all: Vec<Measured> = (0..runs()).map(|_| run()).collect();
    let peak_rss = all.iter().map(|m| m.peak_rss).max().unwrap_or(0);
    let peak_anon = all.iter().map(|m| m.peak_anon).max().unwrap_or(0);
    all.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    let mid = all.len() / 2;
    let stdout = all.last().map(|m| m.stdout.clone()).unwrap_or_default();
    eprintln!("  {task} / {tool}: {:.2} s", all[mid].secs);
    (
        Line {
            task: task.into(),
            tool: tool.into(),
            secs: all[mid].secs,
            peak_rss,
            peak_anon,
            input_bytes,
        },
        stdout,
    )
}

fn ckpt_diff() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ckpt-diff"))
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers")
}

/// The Python interpreter with the peers installed (set up on first use).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os(ckpt_read::env::BENCH_PYTHON.name) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        eprintln!("installing the Python peers into {} ...", venv.display());
        let ok = std::process::Command::new(peers_dir().join("setup.sh"))
            .arg(&venv)
            .status()
            .expect("run benches/peers/setup.sh")
            .success();
        assert!(ok, "benches/peers/setup.sh failed");
    }
    py
}

fn size(paths: &[&Path]) -> u64 {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Per-row similarities of `sim --json`.
fn ours_sim(stdout: &str) -> Vec<(String, f64)> {
    let v: Value = serde_json::from_str(stdout).expect("sim JSON");
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["label"].as_str()?.to_string(), r["similarity"].as_f64()?)))
        .collect()
}

fn compare_sim(ours: &str, peer: &str) -> String {
    let peer: Value = serde_json::from_str(peer).expect("peer JSON");
    let mut worst: f64 = 0.0;
    let mut n = 0;
    for (row, sim) in ours_sim(ours) {
        if let Some(p) = peer[&row].as_f64() {
            worst = worst.max((sim - p).abs());
            n += 1;
        }
    }
    format!("{n} rows; largest difference {:.1e} points", 100.0 * worst)
}

fn compare_hashes(ours: &str, peer: &str) -> String {
    let ours: Value = serde_json::from_str(ours).expect("hash JSON");
    let h = &ours["files"][0]["hashes"];
    let peer: Value = serde_json::from_str(peer).expect("peer JSON");
    let keys = [
        "a1111_legacy",
        "sha256",
        "autov2",
        "autov3",
        "blake3",
        "crc32",
    ];
    let differ: Vec<&str> = keys.iter().copied().filter(|k| h[*k] != peer[*k]).collect();
    if differ.is_empty() {
        format!("all {} hashes equal", keys.len())
    } else {
        format!("DIFFER: {}", differ.join(", "))
    }
}

/// Value-by-value comparison of two merge outputs: float tensors present in both are
/// compared as numbers (largest absolute difference, largest distance in f16 steps when
/// both are f16); the rest is listed.
fn compare_outputs(ours: &Path, peer: &Path) -> String {
    let (a, b) = (
        Checkpoint::open(ours).unwrap(),
        Checkpoint::open(peer).unwrap(),
    );
    let mut notes = Vec::new();
    let pairs: Vec<_> = a
        .tensors()
        .iter()
        .filter_map(|t| match b.get(&t.name) {
            Some(u) => Some((t, u)),
            None => {
                notes.push(format!("{} only in ckpt-diff's", t.name));
                None
            }
        })
        .collect();
    let only_peer = b
        .tensors()
        .iter()
        .filter(|t| a.get(&t.name).is_none())
        .count();
    if only_peer > 0 {
        notes.push(format!("{only_peer} keys only in the peer's"));
    }
    let results: Vec<Option<(f64, u32)>> = pairs
        .par_iter()
        .map(|(t, u)| {
            let (ft, fu) = (float_format(t.dtype)?, float_format(u.dtype)?);
            let to = |f: FloatFormat, bytes: &[u8], n: usize| {
                let mut v = vec![0.0f64; n];
                ckpt_core::kernels::to_f64(f, bytes, &mut v);
                v
            };
            let n = t.numel();
            let (x, y) = (to(ft, a.data(t), n), to(fu, b.data(u), n));
            let abs = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max);
            let steps = if ft == FloatFormat::F16 && fu == FloatFormat::F16 {
                // f16 values in order as integers: the distance is the count of f16 steps.
                let key = |h: u16| -> i32 {
                    if h & 0x8000 != 0 {
                        -((h & 0x7fff) as i32)
                    } else {
                        h as i32
                    }
                };
                a.data(t)
                    .chunks_exact(2)
                    .zip(b.data(u).chunks_exact(2))
                    .map(|(p, q)| {
                        let (p, q) = (
                            u16::from_le_bytes([p[0], p[1]]),
                            u16::from_le_bytes([q[0], q[1]]),
                        );
                        key(p).abs_diff(key(q))
                    })
                    .max()
                    .unwrap_or(0)
            } else {
                0
            };
            Some((abs, steps))
        })
        .collect();
    for ((t, u), r) in pairs.iter().zip(&results) {
        if r.is_none() || t.dtype != u.dtype {
            notes.push(format!(
                "{}: {:?} in ckpt-diff's, {:?} in the peer's",
                t.name, t.dtype, u.dtype
            ));
        }
    }
    let compared: Vec<(f64, u32)> = results.into_iter().flatten().collect();
    let abs = compared.iter().map(|r| r.0).fold(0.0, f64::max);
    let steps = compared.iter().map(|r| r.1).max().unwrap_or(0);
    let mut out = format!(
        "{} tensors; largest difference {abs:.1e} ({steps} f16 step{})",
        compared.len(),
        if steps == 1 { "" } else { "s" }
    );
    if !notes.is_empty() {
        out.push_str(&format!("; {}", notes.join("; ")));
    }
    out
}

/// Generated inputs: (path, generated by this run).
struct Inputs {
    a: PathBuf,
    b: PathBuf,
    c: PathBuf,
    made: Vec<PathBuf>,
}

fn inputs(arch: Arch) -> Inputs {
    let f16 = FloatFormat::F16;
    // What the data folder held before tells which inputs this run generates.
    let existed: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .expect("bench data dir")
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    let a = model(arch, f16, 1, 0.0);
    let b = model(arch, f16, 1, 0.1);
    let c = finetune(arch, f16, 1);
    let made: Vec<PathBuf> = [&a, &b, &c]
        .into_iter()
        .filter(|p| !existed.contains(p))
        .cloned()
        .collect();
    if !made.is_empty() {
        // Write the new files out now, so that writeback does not run under the timings.
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
    }
    Inputs { a, b, c, made }
}

/// Drops `paths` from the page cache and reads them back in.
fn recache(paths: &[&Path]) {
    use std::os::fd::AsRawFd;
    for p in paths {
        let f = std::fs::File::open(p).expect("open");
        // SAFETY: a valid descriptor; the advice only drops clean cached pages.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    warm(paths);
}

fn main() {
    let py = python();
    let dir = data_dir();
    let mut machine = Machine {
        bandwidth: memory_bandwidth(),
        writes: vec![disk_write_rate(&dir)],
    };
    eprintln!(
        "memory bandwidth {:.1} GB/s, disk write {:.2} GB/s",
        machine.bandwidth, machine.writes[0]
    );
    let mut rows: Vec<Comparison> = Vec::new();
    let mut made = Vec::new();
    let script = |name: &str| peers_dir().join(name).to_str().unwrap().to_string();

    for arch in [arch("sd1"), arch("sdxl")] {
        let label = if arch.id() == "sd1" { "SD1.5" } else { "SDXL" };
        let inp = inputs(arch);
        made.extend(inp.made.iter().cloned());
        let (a, b, c) = (inp.a.as_path(), inp.b.as_path(), inp.c.as_path());
        // Start every run from the same page cache: whatever history left these files in
        // small folios (generation writes them with `write`) would slow every mapping of
        // them (0.76 s against 0.57 s for `sim` on the SDXL pair), so they are dropped and
        // read once afresh.
        recache(&[a, b, c]);

        // sim
        let task = format!("sim A B ({label})");
        let bytes = size(&[a, b]);
        warm(&[a, b]);
        let (ours, out_ours) = measure(&task, "ckpt-diff", bytes, 1, || {
            run_measured(&ckpt_diff(), &["sim", s(a), s(b), "--json", "-q"])
        });
        let (peer, out_peer) = measure(&task, "PyTorch script", bytes, 1, || {
            run_measured(&py, &[&script("sim_torch.py"), s(a), s(b)])
        });
        rows.push(Comparison {
            ours,
            peer,
            limit: Limit::Bandwidth,
            check: compare_sim(&out_ours, &out_peer),
        });

        // hash
        let task = format!("hash A ({label})");
        let bytes = size(&[a]);
        warm(&[a]);
        let sha_alone = {
            let file = ckpt_read::RawFile::open(a).unwrap();
            median_secs(runs(), || {
                std::hint::black_box(sha2::Sha256::digest(file.bytes()));
            })
        };
        let (ours, out_ours) = measure(&task, "ckpt-diff", bytes, 1, || {
            run_measured(&ckpt_diff(), &["hash", s(a), "--json", "-q"])
        });
        let (peer, out_peer) = measure(&task, "hashlib + zlib + blake3", bytes, 1, || {
            run_measured(&py, &[&script("hash_py.py"), s(a)])
        });
        rows.push(Comparison {
            ours,
            peer,
            limit: Limit::ShaAlone(sha_alone),
            check: compare_hashes(&out_ours, &out_peer),
        });

        // merges
        let recipe = dir.join(format!("peers-{}.recipe", arch.id()));
        std::fs::write(
            &recipe,
            format!(
                "A = \"{}\"\nB = \"{}\"\nC = \"{}\"\nS1 = A x 0.6 + B x 0.4\nS2 = S1 + (C - A) x 0.5\nOUT = S2 x 0.7 + B x 0.3\n",
                s(a),
                s(b),
                s(c)
            ),
        )
        .unwrap();
        let out_ours = dir.join("peers-ours.safetensors");
        let out_peer = dir.join("peers-mecha.safetensors");
        let merges: [(&str, Vec<String>, Vec<&Path>); 3] = [
            (
                "weighted sum A x 0.7 + B x 0.3",
                ["merge", "ws", s(a), s(b), "--alpha", "0.3"]
                    .map(String::from)
                    .to_vec(),
                vec![a, b],
            ),
            (
                "add difference A + (C - B) x 0.5",
                ["merge", "ad", s(a), s(c), s(b), "--alpha", "0.5"]
                    .map(String::from)
                    .to_vec(),
                vec![a, c, b],
            ),
            (
                "3-step recipe (ws, ad, ws)",
                ["merge", s(&recipe)].map(String::from).to_vec(),
                vec![a, b, c],
            ),
        ];
        let peer_kinds = [
            vec!["ws", s(a), s(b)],
            vec!["ad", s(a), s(c), s(b)],
            vec!["recipe3", s(a), s(b), s(c)],
        ];
        for ((what, ours_args, ins), peer_args) in merges.iter().zip(&peer_kinds) {
            let task = format!("merge: {what} ({label})");
            let bytes = size(ins);
            warm(ins);
            let mut args: Vec<&str> = ours_args.iter().map(String::as_str).collect();
            args.extend(["-o", s(&out_ours), "--force", "-q", "--no-input-hashes"]);
            let (ours, _) = measure(&task, "ckpt-diff", bytes, 1, || {
                run_measured(&ckpt_diff(), &args)
            });
            // The disk's speed again, for the output's size (see `Machine::writes`).
            let out_bytes = std::fs::metadata(&out_ours).unwrap().len();
            let write_now = disk_write_rate_of(&dir, out_bytes);
            eprintln!("  disk write now: {write_now:.2} GB/s");
            machine.writes.push(write_now);
            let mut pargs = vec![
                script("merge_mecha.py"),
                peer_args[0].to_string(),
                s(&out_peer).to_string(),
            ];
            pargs.extend(peer_args[1..].iter().map(|p| p.to_string()));
            let pargs: Vec<&str> = pargs.iter().map(String::as_str).collect();
            let (peer, _) = measure(&task, "sd-mecha 1.1.8", bytes, 0, || {
                let _ = std::fs::remove_file(&out_peer);
                run_measured(&py, &pargs)
            });
            rows.push(Comparison {
                ours,
                peer,
                limit: Limit::Write { out_bytes },
                check: compare_outputs(&out_ours, &out_peer),
            });
            let _ = std::fs::remove_file(&out_ours);
            let _ = std::fs::remove_file(&out_peer);
        }
        let _ = std::fs::remove_file(&recipe);
    }

    report(&rows, &machine);
    if std::env::var_os(ckpt_read::env::BENCH_KEEP.name).is_none() {
        for p in &made {
            let _ = std::fs::remove_file(p);
            eprintln!("removed {}", p.display());
        }
    }
}

/// Whether a comparison meets the target issue #8 set for its kind of task.
fn target(r: &Comparison, m: &Machine) -> (String, bool) {
    let speedup = r.peer.secs / r.ours.secs;
    let of_limit = r.ours.secs / m.secs(&r.limit, r.ours.input_bytes);
    match r.limit {
        Limit::Bandwidth => (
            format!("≥10x the peer ({speedup:.1}x) and ≤2x the limit ({of_limit:.2}x)"),
            speedup >= 10.0 && of_limit <= 2.0,
        ),
        Limit::ShaAlone(_) => (
            format!("≤1.2x SHA-256 alone ({of_limit:.2}x)"),
            of_limit <= 1.2,
        ),
        Limit::Write { .. } => (
            format!(
                "≥3x the peer ({speedup:.1}x) and less peak RSS ({:.2} GB vs {:.2} GB)",
                gb(r.ours.peak_rss),
                gb(r.peer.peak_rss)
            ),
            speedup >= 3.0 && r.ours.peak_rss < r.peer.peak_rss,
        ),
    }
}

fn report(rows: &[Comparison], machine: &Machine) {
    let bandwidth = machine.bandwidth;
    let writes: Vec<String> = machine.writes.iter().map(|w| format!("{w:.2}")).collect();
    let writes = writes.join(", ");
    let mut md = String::new();
    md.push_str(&format!(
        "## ckpt-diff beside the tools users run today\n\n\
         Full-size generated fp16 checkpoints (SD1.5 2.13 GB, SDXL 6.94 GB), warm page cache, \
         {} cores; median of {} runs; peak RSS is the kernel's count (mapped file pages \
         included), anonymous RSS leaves those out. This machine, same run: memory read \
         bandwidth {bandwidth:.1} GB/s; sequential disk write with fsync {writes} GB/s \
         (measured at the start and beside each merge).\n\n\
         | task | tool | time | input GB/s | peak RSS | peak anon. RSS | vs peer | vs limit | outputs |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
        rayon::current_num_threads(),
        runs()
    ));
    let mut json_rows = Vec::new();
    for r in rows {
        for (line, is_ours) in [(&r.ours, true), (&r.peer, false)] {
            let vs_peer = if is_ours {
                format!("**{:.1}x faster**", r.peer.secs / r.ours.secs)
            } else {
                String::new()
            };
            md.push_str(&format!(
                "| {} | {} | {:.2} s | {:.2} | {:.2} GB | {:.2} GB | {vs_peer} | {:.2}x | {} |\n",
                if is_ours { line.task.as_str() } else { "" },
                line.tool,
                line.secs,
                gb(line.input_bytes) / line.secs,
                gb(line.peak_rss),
                gb(line.peak_anon),
                line.secs / machine.secs(&r.limit, line.input_bytes),
                if is_ours { r.check.as_str() } else { "" },
            ));
            json_rows.push(json!({
                "task": line.task, "tool": line.tool, "seconds": line.secs,
                "peak_rss": line.peak_rss, "peak_anon_rss": line.peak_anon,
                "input_bytes": line.input_bytes,
                "limit_seconds": machine.secs(&r.limit, line.input_bytes),
                "limit": machine.describe(&r.limit), "check": r.check,
            }));
        }
    }
    md.push_str("\nLimits: ");
    let mut seen: Vec<String> = Vec::new();
    for r in rows {
        let d = machine.describe(&r.limit);
        if !seen.contains(&d) {
            seen.push(d);
        }
    }
    md.push_str(&seen.join("; "));
    md.push_str(".\n\n| task | target | met |\n| --- | --- | --- |\n");
    let mut json_targets = Vec::new();
    for r in rows {
        let (what, met) = target(r, machine);
        md.push_str(&format!(
            "| {} | {what} | {} |\n",
            r.ours.task,
            if met { "yes" } else { "**no**" }
        ));
        json_targets.push(json!({ "task": r.ours.task, "target": what, "met": met }));
    }
    md.push_str("\nRegenerate: `just bench-peers` (`cargo bench --bench peers`).\n");
    print!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("peers.md"), &md).unwrap();
    let v = json!({
        "memory_bandwidth_gbs": bandwidth,
        "disk_write_gbs": machine.writes,
        "rows": json_rows,
        "targets": json_targets,
    });
    std::fs::write(
        out.join("peers.json"),
        serde_json::to_string_pretty(&v).unwrap() + "\n",
    )
    .unwrap();
}
