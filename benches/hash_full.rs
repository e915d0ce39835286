//! `ckpt-diff hash` on a full-size SDXL fp16 file (6.94 GB, warm page cache) beside each of
//! its algorithms alone on one thread, measured in the same run.
//!
//!     cargo bench --bench hash_full

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::time::Instant;

use ckpt_read::RawFile;
use ckpt_read::dtype::FloatFormat;
use common::*;
use sha2::Digest;

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    let p = model(arch("sdxl"), FloatFormat::F16, 1, 0.0);
    warm(&[&p]);
    let file = RawFile::open(&p).unwrap();
    let data = file.bytes();
    let v3_from = ckpt_ops::hash::autov3_start(data).unwrap() as usize;
    let size = gb(data.len() as u64);
    let alone = [
        (
            "SHA-256, whole file (SHA256, AutoV2)",
            time(|| {
                std::hint::black_box(sha2::Sha256::digest(data));
            }),
        ),
        (
            "SHA-256, data region (AutoV3)",
            time(|| {
                std::hint::black_box(sha2::Sha256::digest(&data[v3_from..]));
            }),
        ),
        (
            "BLAKE3, one thread",
            time(|| {
                std::hint::black_box(blake3::hash(data));
            }),
        ),
        (
            "CRC32",
            time(|| {
                std::hint::black_box(crc32fast::hash(data));
            }),
        ),
    ];
    let slowest = alone.iter().map(|(_, t)| *t).fold(0.0, f64::max);
    let sum: f64 = alone.iter().map(|(_, t)| t).sum();
    let ps = p.to_str().unwrap();
    let _ = run_binary(&["hash", ps, "--json"]);
    let cmd = median_secs(3, || {
        run_binary(&["hash", ps, "--json"]);
    });
    println!(
        "## hash, SDXL fp16 ({size:.2} GB), warm page cache, {} threads\n",
        rayon::current_num_threads()
    );
    println!("| what | time | GB/s |");
    println!("| --- | ---: | ---: |");
    for (name, t) in &alone {
        println!("| {name}, alone | {t:.2} s | {:.2} |", size / t);
    }
    println!(
        "| sum of the algorithms one after another | {sum:.2} s | {:.2} |",
        size / sum
    );
    println!(
        "| **`ckpt-diff hash FILE`** (all six hashes, median of 3) | **{cmd:.2} s** | **{:.2}** |",
        size / cmd
    );
    println!(
        "\nratio to the slowest algorithm alone: {:.2}x (to their sum: {:.2}x)",
        cmd / slowest,
        cmd / sum
    );
}
