//! `fit` with 1 target + 8 full-size SD1.5 fp16 sources (and the base): the one pass
//! beside one plain read of the same files, and the search timed on its own.
//!
//!     cargo bench --bench fit_full
//!
//! The target is planted: S1 = ft1 x 0.6 + ft2 x 0.4; S2 = S1 + (ft5 - base) x 0.3, so the
//! run also shows the recipe coming back at full size.

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::Path;

use ckpt_ops::synth::{Synthetic, uniform};
use ckpt_read::dtype::FloatFormat;
use common::*;

fn main() {
    let (arch, f16) = (arch("sd1"), FloatFormat::F16);
    let base = model(arch, f16, 1, 0.0);
    let sources: Vec<_> = (1..=8).map(|k| finetune(arch, f16, k)).collect();
    let target = generated(arch, f16, "fit-target", || {
        let b = Synthetic::base(arch, 1);
        let (f1, f2, f5) = (
            finetune_model(arch, 1),
            finetune_model(arch, 2),
            finetune_model(arch, 5),
        );
        Synthetic::lincomb(&[
            (uniform(arch, 0.6), &f1),
            (uniform(arch, 0.4), &f2),
            (uniform(arch, 0.3), &f5),
            (uniform(arch, -0.3), &b),
        ])
    });
    let mut paths = vec![base.clone(), target.clone()];
    paths.extend(sources.iter().cloned());
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let input: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    let mut args: Vec<&str> = vec![
        "fit",
        "--target",
        target.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "--start",
        sources[0].to_str().unwrap(),
        "--sources",
    ];
    args.extend(sources[1..].iter().map(|p| p.to_str().unwrap()));
    args.extend(["--per-block", "--json", "-q"]);

    let bandwidth = memory_bandwidth();
    // Cold: the files come from disk.
    evict(&refs);
    let cold_read = input as f64 / 1e9 / mmap_read_rate_once(&refs);
    evict(&refs);
    let (cold, out_cold) = run_json(&args);
    // Warm: the files are in the page cache (they fit in RAM here).
    warm(&refs);
    let warm_read = input as f64 / 1e9 / mmap_read_rate(&refs);
    let (warm_t, out) = run_json(&args);
    let secs = |v: &serde_json::Value, k: &str| v["seconds"][k].as_f64().unwrap();

    println!(
        "## fit, SD1.5 fp16: base + target + 8 sources ({:.1} GB), {} threads\n",
        gb(input),
        rayon::current_num_threads()
    );
    println!("memory read bandwidth, same run: {bandwidth:.1} GB/s\n");
    println!(
        "| run | one plain read of the files | fit: whole command | of which the pass | of which the search |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (what, read, total, v) in [
        (
            "first (evicted from the page cache)",
            cold_read,
            cold,
            &out_cold,
        ),
        ("second (in the page cache)", warm_read, warm_t, &out),
    ] {
        println!(
            "| {what} | {read:.1} s | {total:.1} s | {:.1} s | {:.3} s |",
            secs(v, "pass"),
            secs(v, "search")
        );
    }
    let steps: Vec<String> = out["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["expression"].as_str().unwrap().to_string())
        .collect();
    println!(
        "\nfound: {} -> {:.4}% (global best {:.4}%)",
        steps.join("; "),
        100.0 * out["greedy"]["objective"].as_f64().unwrap(),
        100.0 * out["global"]["objective"].as_f64().unwrap()
    );
}

/// (seconds, parsed stdout) of the release binary.
fn run_json(args: &[&str]) -> (f64, serde_json::Value) {
    let exe = env!("CARGO_BIN_EXE_ckpt-diff");
    let start = std::time::Instant::now();
    let out = std::process::Command::new(exe)
        .args(args)
        .output()
        .expect("run ckpt-diff");
    let t = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (t, serde_json::from_slice(&out.stdout).expect("JSON"))
}
