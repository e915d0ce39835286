//! `ckpt-diff l2` over 1 base + 8 full-size SD1.5 fp16 models (19 GB): time, input GB/s and
//! peak memory, first run (files evicted from the page cache) and second run.
//!
//!     cargo bench --bench l2_full

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use ckpt_read::dtype::FloatFormat;
use common::*;

fn main() {
    let base = model(arch("sd1"), FloatFormat::F16, 1, 0.0);
    let others: Vec<_> = (1..=8)
        .map(|k| finetune(arch("sd1"), FloatFormat::F16, k))
        .collect();
    let mut paths = vec![base.clone()];
    paths.extend(others.iter().cloned());
    let input: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    evict(&refs);
    let bandwidth = memory_bandwidth();
    let mut args: Vec<&str> = vec!["l2", "--base", base.to_str().unwrap()];
    args.extend(others.iter().map(|p| p.to_str().unwrap()));
    args.push("--json");
    let (cold, rss1, anon1) = run_binary(&args);
    let (warm, rss2, anon2) = run_binary(&args);
    println!(
        "## l2, SD1.5 fp16, 1 base + 8 models ({:.1} GB), {} threads\n",
        gb(input),
        rayon::current_num_threads()
    );
    println!("memory read bandwidth, same run: {bandwidth:.1} GB/s\n");
    println!("| run | time | input GB/s | peak RSS | peak anonymous RSS |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| first (files evicted from the page cache) | {cold:.1} s | {:.2} | {:.2} GB | {:.0} MB |",
        gb(input) / cold,
        gb(rss1),
        anon1 as f64 / 1e6
    );
    println!(
        "| second | {warm:.1} s | {:.2} | {:.2} GB | {:.0} MB |",
        gb(input) / warm,
        gb(rss2),
        anon2 as f64 / 1e6
    );
}
