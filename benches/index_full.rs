//! `index add` of 8 full-size SD1.5 fp16 files (2.1 GB each) beside one plain read of them,
//! cold (evicted from the page cache) and warm; the index's bytes per model; and `lineage`
//! query time with 10^3 and 10^4 indexed models (the 8 real ones plus generated
//! fingerprints: copies of a real one with their own random deltas).
//!
//!     cargo bench --bench index_full        (writes reports/bench/index.md)
//!
//! Needs about 17 GB for the inputs and 10 GB for the 10^4-model index (deleted at the end).

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::fmt::Write;
use std::path::{Path, PathBuf};

use ckpt_ops::index::{Entry, Index, NewEntry, Record};
use ckpt_ops::sketch::Fingerprint;
use ckpt_read::dtype::FloatFormat;
use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// xorshift64*: fast noise for generated fingerprints (no statistics are asked of it).
fn noise(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let x = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
    (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

/// Grows the index at `ix` to `n` entries with copies of `template` (its arch, scale and
/// size) whose fingerprint is `fp` plus each copy's own random delta of a tenth of the
/// template's bucket size.
fn grow(ix: &Path, template: &Entry, fp: &Fingerprint, n: usize) {
    let mut index = Index::open(ix).unwrap();
    let have = index.entries().unwrap().len();
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ have as u64;
    for i in have..n {
        let mut e = NewEntry {
            record: Record {
                path: format!("/generated/m{i}.safetensors"),
                name: format!("generated-{i}"),
                mtime: 0,
                sha256: None,
                autov2: None,
                autov3: None,
                blake3: None,
                components: Vec::new(),
                ..template.record.clone()
            },
            toolkit_matches: Vec::new(),
            fingerprint: fp.clone(),
        };
        for r in &mut e.fingerprint.rows {
            let scale = (r.norm2 / r.sketch.len() as f64).sqrt() * 0.1;
            r.sketch
                .iter_mut()
                .for_each(|x| *x += scale * noise(&mut state));
        }
        index.add(&e).unwrap();
    }
}

fn main() {
    let paths: Vec<PathBuf> = (1..=8)
        .map(|k| finetune(arch("sd1"), FloatFormat::F16, k))
        .collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let bytes: u64 = refs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let dir = data_dir().join("index-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = String::new();
    writeln!(out, "# `index add` and `lineage` at scale\n").unwrap();
    writeln!(
        out,
        "`cargo bench --bench index_full`, on this machine ({} cores); inputs: 8 generated \
         full-size SD1.5 fp16 fine-tunes, {:.2} GB in all.\n",
        std::thread::available_parallelism().unwrap(),
        gb(bytes)
    )
    .unwrap();
    // Cold: both from the disk.
    evict(&refs);
    let cold_read = mmap_read_rate_once(&refs);
    evict(&refs);
    let ix = dir.join("ix.sqlite");
    let mut args = vec!["index", "--index", s(&ix), "add", "-q"];
    args.extend(refs.iter().map(|p| s(p)));
    let (cold_add, _, cold_anon) = run_binary(&args);
    // Warm: both from the page cache.
    warm(&refs);
    let warm_read = mmap_read_rate(&refs);
    let ix2 = dir.join("ix2.sqlite");
    let mut args2 = vec!["index", "--index", s(&ix2), "add", "-q"];
    args2.extend(refs.iter().map(|p| s(p)));
    let (warm_add, _, warm_anon) = run_binary(&args2);
    let per_model = std::fs::metadata(&ix).unwrap().len() as f64 / 8.0;
    writeln!(out, "| | seconds | GB/s | peak anonymous memory |").unwrap();
    writeln!(out, "| --- | ---: | ---: | ---: |").unwrap();
    for (what, secs, anon) in [
        (
            "one plain read (mmap, all threads), cold",
            gb(bytes) / cold_read,
            None,
        ),
        ("`index add` of the 8, cold", cold_add, Some(cold_anon)),
        (
            "one plain read (mmap, all threads), warm",
            gb(bytes) / warm_read,
            None,
        ),
        ("`index add` of the 8, warm", warm_add, Some(warm_anon)),
    ] {
        writeln!(
            out,
            "| {what} | {secs:.1} | {:.2} | {} |",
            gb(bytes) / secs,
            anon.map_or(String::new(), |a| format!("{:.0} MB", a as f64 / 1e6))
        )
        .unwrap();
    }
    let again = run_binary(&args).0;
    writeln!(
        out,
        "\nRe-adding the 8 unchanged files: {again:.2} s. The index holds {:.0} KB per SD1 \
         model (28 rows x 4096 buckets x 8 bytes, plus hashes and SQLite's pages).\n",
        per_model / 1e3
    )
    .unwrap();
    // Queries.
    let index = Index::open(&ix).unwrap();
    let first = index.entries().unwrap().swap_remove(0);
    let first_fp = index.fingerprint(first.id).unwrap();
    drop(index);
    // The target's own fingerprinting (one read of 2.1 GB) is part of every query.
    let target = s(refs[0]);
    let one = dir.join("one.sqlite");
    let (fp_secs, _, _) = run_binary(&["index", "--index", s(&one), "add", "-q", target]);
    writeln!(
        out,
        "`lineage` on one 2.1 GB target (warm), streaming the index (the target's own \
         fingerprint, {fp_secs:.1} s, is part of each):\n"
    )
    .unwrap();
    writeln!(
        out,
        "| indexed models | index size | `--base` given | default base (two centre scans) | peak anonymous memory |"
    )
    .unwrap();
    writeln!(out, "| ---: | ---: | ---: | ---: | ---: |").unwrap();
    for n in [1000usize, 10_000] {
        grow(&ix, &first, &first_fp, n);
        let size = std::fs::metadata(&ix).unwrap().len();
        let base = "generated-10";
        let (with_base, _, anon) = run_binary(&[
            "lineage",
            target,
            "--index",
            s(&ix),
            "--base",
            base,
            "--json",
            "-q",
        ]);
        let (default_base, _, anon2) =
            run_binary(&["lineage", target, "--index", s(&ix), "--json", "-q"]);
        writeln!(
            out,
            "| {n} | {:.2} GB | {with_base:.1} s | {default_base:.1} s | {:.0} MB |",
            gb(size),
            anon.max(anon2) as f64 / 1e6
        )
        .unwrap();
        eprintln!("{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let report = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/bench/index.md");
    std::fs::write(&report, &out).unwrap();
    print!("{out}");
}
