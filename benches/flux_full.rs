//! `sim` and a two-input `merge` on full-size generated Flux.1 dev diffusers (BFL's
//! diffuser-only files, bare keys): an F8_E4M3 pair (2 x 11.9 GB) and a BF16 pair
//! (2 x 23.8 GB). Each figure stands beside the limit measured in the same run: memory
//! bandwidth where the pair fits in the page cache, the disk's sequential read where it
//! does not (this machine has 24 GiB: neither pair fits whole, see the page-cache column).
//!
//!     cargo bench --bench flux_full        # ~60 GB of disk at its peak, deleted at the end
//!
//! Writes reports/bench/flux.md. `CKPT_DIFF_BENCH_KEEP=1` keeps the generated inputs.
//! `CKPT_DIFF_BENCH_ARCH=flux2-klein-9b` (or another catalogued DiT) runs the same pairs on
//! that model's diffuser instead and writes reports/bench/<arch>.md (without the
//! every-command table, which is Flux.1's).
//!
//!     CKPT_DIFF_BENCH_ARCH=flux2-klein-9b cargo bench --bench flux_full   # ~60 GB at its peak

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};

use ckpt_ops::synth::{self, Synthetic};
use ckpt_read::dtype::FloatFormat;
use common::*;

/// The DiT the pairs are made of (`CKPT_DIFF_BENCH_ARCH`, Flux.1 dev by default).
fn bench_arch() -> String {
    std::env::var(ckpt_read::env::BENCH_ARCH.name).unwrap_or_else(|_| "flux".into())
}

/// Bytes of `paths` resident in the page cache (mincore over a fresh map).
fn cached_bytes(paths: &[&Path]) -> u64 {
    let page = 4096usize;
    paths
        .iter()
        .map(|p| {
            let f = std::fs::File::open(p).unwrap();
            // SAFETY: a read-only map, only its residency queried.
            let m = unsafe { memmap2::Mmap::map(&f).unwrap() };
            let pages = m.len().div_ceil(page);
            let mut vec = vec![0u8; pages];
            // SAFETY: `vec` has one byte per page of the mapping.
            let rc = unsafe {
                libc::mincore(m.as_ptr() as *mut libc::c_void, m.len(), vec.as_mut_ptr())
            };
            assert_eq!(rc, 0);
            vec.iter().filter(|b| *b & 1 == 1).count() as u64 * page as u64
        })
        .sum()
}

struct Row {
    what: String,
    secs: f64,
    input: u64,
    limit: (f64, &'static str),
    anon: u64,
    rss: u64,
    cached: u64,
}

fn pair(rows: &mut Vec<Row>, dtype: FloatFormat, label: &str, out_dtype: &str, bandwidth: f64) {
    let id = bench_arch();
    // The pair and an FP8 output must fit the disk (FLUX.2 klein 9B's BF16 pair is 36 GB).
    let params: u64 = ckpt_core::catalog::data::table(arch(&id))
        .keys
        .iter()
        .filter(|k| k.role == ckpt_core::catalog::data::Role::Denoiser)
        .map(|k| k.shape.iter().product::<usize>() as u64)
        .sum();
    let width = (ckpt_read::dtype::bit_size(dtype.dtype()) / 8) as u64;
    let need = params * (2 * width + 1) + 2_000_000_000;
    if free_bytes(&data_dir()) < need {
        eprintln!(
            "skipping the {label} pair: it needs {:.1} GB free, {:.1} GB are",
            gb(need),
            gb(free_bytes(&data_dir()))
        );
        return;
    }
    let base = Synthetic::base(arch(&id), 1);
    let ft = base.plus_delta(1001, synth::uniform(arch(&id), 0.1));
    let a = diffuser(&id, dtype, &format!("{label}-base"), &base, None);
    let b = diffuser(&id, dtype, &format!("{label}-ft"), &ft, None);
    let input = std::fs::metadata(&a).unwrap().len() + std::fs::metadata(&b).unwrap().len();
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    // A BF16 output beside its 47.6 GB of inputs may not fit this machine's disk: then FP8.
    let out_dtype = if out_dtype == "bf16" && free_bytes(&data_dir()) < input / 2 + 3_000_000_000 {
        "f8_e4m3"
    } else {
        out_dtype
    };
    let ram = total_memory();
    let fits = input < ram * 8 / 10;

    // The disk's sequential read, from an evicted cache, in this run.
    evict(&[&a, &b]);
    let disk = mmap_read_rate_once(&[&a, &b]);
    let limit = if fits {
        (bandwidth, "memory bandwidth")
    } else {
        (disk, "disk sequential read (mmap, evicted cache)")
    };

    // sim from an evicted cache (the pair does not fit), then again as it stands.
    evict(&[&a, &b]);
    for what in ["evicted cache", "again"] {
        let cached = if what == "again" {
            cached_bytes(&[&a, &b])
        } else {
            0
        };
        let (secs, rss, anon) = run_binary(&["sim", sa, sb, "--json"]);
        rows.push(Row {
            what: format!("sim, {label} pair, {what}"),
            secs,
            input,
            limit,
            anon,
            rss,
            cached,
        });
    }

    // merge: ws, output in `out_dtype`, input hashes off (they would read the pair twice).
    let out = data_dir().join(format!("{id}-merged.safetensors"));
    let so = out.to_str().unwrap();
    evict(&[&a, &b]);
    let (secs, rss, anon) = run_binary(&[
        "merge",
        "ws",
        sa,
        sb,
        "--alpha",
        "0.5",
        "-o",
        so,
        "--dtype",
        out_dtype,
        "--force",
        "-q",
        "--no-input-hashes",
    ]);
    let out_bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&out);
    rows.push(Row {
        what: format!(
            "merge ws 0.5, {label} pair -> {out_dtype} ({:.1} GB written)",
            gb(out_bytes)
        ),
        secs,
        input,
        limit,
        anon,
        rss,
        cached: 0,
    });
    eprintln!("disk read {disk:.2} GB/s; pair {:.1} GB", gb(input));
    if std::env::var_os(ckpt_read::env::BENCH_KEEP.name).is_none() {
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
    }
}

fn total_memory() -> u64 {
    ckpt_read::sys::physical_memory().unwrap_or(0)
}

/// Every other command on full-size FP8 diffusers whose weights are the zeros of sparse
/// files (the real header and sizes, no disk): time and peak anonymous memory, the bound
/// that must hold whatever the model's size.
fn every_command() -> String {
    let sparse = |name: &str, seed: u64| {
        sparse_diffuser(
            "flux",
            FloatFormat::F8E4M3,
            &format!("flux-dev-zeros-{name}"),
            seed,
        )
    };
    let (a, b) = (sparse("a", 1), sparse("b", 2));
    let out = data_dir().join("flux-zeros-out.safetensors");
    let (sa, sb, so) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("inspect", vec!["inspect", sa]),
        ("validate", vec!["validate", sa]),
        ("hash --components", vec!["hash", "--components", sa]),
        ("l2 --base A B", vec!["l2", "--base", sa, sb]),
        (
            "fit --target B --base A --sources A",
            vec!["fit", "--target", sb, "--base", sa, "--sources", sa],
        ),
        (
            "fix A --dtype bf16 (24 GB written)",
            vec!["fix", sa, "-o", so, "--dtype", "bf16", "--force"],
        ),
    ];
    let mut md = String::from(
        "\n### Every command, full-size FP8 diffuser (sparse zero weights: no disk)\n\n\
         | command | time | peak anonymous RSS |\n| --- | ---: | ---: |\n",
    );
    for (what, args) in runs {
        let (secs, _, anon) = run_binary_status(&args);
        let _ = std::fs::remove_file(&out);
        md.push_str(&format!(
            "| {what} | {secs:.1} s | {:.0} MB |\n",
            anon as f64 / 1e6
        ));
    }
    if std::env::var_os(ckpt_read::env::BENCH_KEEP.name).is_none() {
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
    }
    md
}

fn main() {
    let bandwidth = memory_bandwidth();
    let mut rows = Vec::new();
    // `CKPT_DIFF_BENCH_ONLY=commands` runs the last table alone.
    let only_commands =
        std::env::var(ckpt_read::env::BENCH_ONLY.name).is_ok_and(|v| v == "commands");
    if !only_commands {
        pair(&mut rows, FloatFormat::F8E4M3, "fp8", "f8_e4m3", bandwidth);
        pair(&mut rows, FloatFormat::BF16, "bf16", "bf16", bandwidth);
    }

    let id = bench_arch();
    let flux = id == "flux";
    let mut md = String::new();
    md.push_str(&format!(
        "## {} diffuser, full size, {} threads, {} kernels\n\n",
        if flux {
            "Flux.1 dev"
        } else {
            arch(&id).label()
        },
        rayon::current_num_threads(),
        ckpt_core::kernels::level().name()
    ));
    md.push_str(&format!(
        "memory bandwidth, same run: {bandwidth:.1} GB/s; RAM {:.1} GB\n\n",
        gb(total_memory())
    ));
    md.push_str("| run | time | input GB/s | limit, same run | share of limit | peak anonymous RSS | peak RSS | cached before |\n");
    md.push_str("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n");
    for r in &rows {
        let rate = gb(r.input) / r.secs;
        md.push_str(&format!(
            "| {} | {:.1} s | {rate:.2} | {:.2} GB/s ({}) | {:.0}% | {:.0} MB | {:.2} GB | {:.1} GB |\n",
            r.what,
            r.secs,
            r.limit.0,
            r.limit.1,
            100.0 * rate / r.limit.0,
            r.anon as f64 / 1e6,
            gb(r.rss),
            gb(r.cached),
        ));
    }
    if flux {
        md.push_str(&every_command());
    }
    println!("{md}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let name = if only_commands {
        "flux-commands.md".to_string()
    } else {
        format!("{id}.md")
    };
    std::fs::write(dir.join(name), md).unwrap();
}
