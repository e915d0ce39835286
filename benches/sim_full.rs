//! `sim` on two full-size SD1.5 fp16 checkpoints, warm cache, beside this machine's memory
//! bandwidth and mmap read rate measured in the same run.
//!
//!     cargo bench --bench sim_full
//!
//! Inputs are generated once into target/bench-data (4.3 GB). Prints a Markdown table. The
//! files are first evicted from the page cache and read once by `ckpt-diff sim` (timed: the
//! cold figure); the warm figures follow.

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use ckpt_core::catalog::Grouping;
use ckpt_core::gram::{GramSpec, gather};
use ckpt_core::pass::{NoProgress, Pass, Plan};
use ckpt_read::Checkpoint;
use ckpt_read::dtype::FloatFormat;
use common::*;

fn main() {
    let a = model(arch("sd1"), FloatFormat::F16, 1, 0.0);
    let b = model(arch("sd1"), FloatFormat::F16, 1, 0.1);
    let input = std::fs::metadata(&a).unwrap().len() + std::fs::metadata(&b).unwrap().len();
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());

    // Start from a known page-cache state: evicted, then read once by ckpt-diff itself (as
    // after a user's first run). That first run is the cold, from-disk figure.
    evict(&[&a, &b]);
    let (cold, _, _) = run_binary(&["sim", sa, sb, "--json"]);

    let bandwidth = memory_bandwidth();
    let mmap_rate = mmap_read_rate(&[&a, &b]);

    // The whole command, as users run it (process start, header checks, detection, table).
    let mut peak = (0, 0);
    let cli = median_secs(7, || {
        let (_, rss, anon) = run_binary(&["sim", sa, sb, "--json"]);
        peak = (peak.0.max(rss), peak.1.max(anon));
    });

    // The pass alone, in process.
    let (ca, cb) = (Checkpoint::open(&a).unwrap(), Checkpoint::open(&b).unwrap());
    let plan = Plan::new(vec![&ca, &cb]);
    let grouping = Grouping::for_arch(arch("sd1"));
    let all: Vec<usize> = (0..plan.entries().len()).collect();
    let pass = Pass::new(&NoProgress);
    let in_process = median_secs(7, || {
        gather(&plan, &grouping, &all, GramSpec::default(), &pass).unwrap();
    });

    // The same with fresh mappings each time (page faults included), as a command has.
    drop(plan);
    let fresh = median_secs(7, || {
        let (ca, cb) = (Checkpoint::open(&a).unwrap(), Checkpoint::open(&b).unwrap());
        let plan = Plan::new(vec![&ca, &cb]);
        gather(&plan, &grouping, &all, GramSpec::default(), &pass).unwrap();
    });

    let kernels = ckpt_core::kernels::level().name();
    println!(
        "## sim, SD1.5 fp16 x 2 ({:.2} GB), warm page cache, {} threads, {kernels} kernels\n",
        gb(input),
        rayon::current_num_threads()
    );
    println!("| measure | time | input GB/s | share of memory bandwidth |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| memory read bandwidth (2 GiB buffer, all threads) | | {bandwidth:.1} | 100% |");
    println!(
        "| `ckpt-diff sim` cold: files evicted from the page cache, read from disk | {cold:.3} s | {:.1} | |",
        gb(input) / cold
    );
    println!(
        "| mmap read of both files, no compute (ceiling for this design) | {:.3} s | {mmap_rate:.1} | {:.0}% |",
        gb(input) / mmap_rate,
        100.0 * mmap_rate / bandwidth
    );
    println!(
        "| `ckpt-diff sim A B --json` (whole command, median of 7) | {cli:.3} s | {:.1} | {:.0}% |",
        gb(input) / cli,
        100.0 * gb(input) / cli / bandwidth
    );
    println!(
        "| the pass alone, in process (median of 7) | {in_process:.3} s | {:.1} | {:.0}% |",
        gb(input) / in_process,
        100.0 * gb(input) / in_process / bandwidth
    );
    println!(
        "| the pass on fresh mappings (open + pass + unmap, median of 7) | {fresh:.3} s | {:.1} | {:.0}% |",
        gb(input) / fresh,
        100.0 * gb(input) / fresh / bandwidth
    );
    println!(
        "\npeak RSS of the command {:.2} GB, of which anonymous (not page cache) {:.1} MB",
        gb(peak.0),
        peak.1 as f64 / 1e6
    );
}
