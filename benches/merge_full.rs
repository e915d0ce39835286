//! `merge` on full-size SDXL fp16 checkpoints: time and peak memory, beside this machine's
//! write limit measured in the same run.
//!
//!     cargo bench --bench merge_full
//!
//! * two real 6.9 GB SDXL files (generated once into target/bench-data): weighted sum, with
//!   and without the inputs' SHA-256 (the cache is emptied first, so they are computed);
//! * twenty inputs: 20 weight-free (sparse, zero) SDXL files with the real header, averaged.
//!   They have the real layout and sizes, so memory behaves as with real files, but need no
//!   disk (140 GB of real files would not fit on this machine).

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use ckpt_read::dtype::FloatFormat;
use common::*;

fn main() {
    let a = model(arch("sdxl"), FloatFormat::F16, 1, 0.0);
    let b = model(arch("sdxl"), FloatFormat::F16, 1, 0.1);
    let dir = data_dir();
    let out = dir.join("merged.safetensors");
    let in_bytes = std::fs::metadata(&a).unwrap().len() * 2;
    let write_rate = disk_write_rate(&dir);

    let cache = tempfile::tempdir().unwrap();
    // SAFETY (for the env var): set before any thread of this process reads it.
    unsafe { std::env::set_var("XDG_CACHE_HOME", cache.path()) };

    let (sa, sb, so) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    warm(&[&a, &b]);
    let ws = |extra: &[&str]| {
        let mut args = vec![
            "merge", "ws", sa, sb, "--alpha", "0.5", "-o", so, "--force", "-q",
        ];
        args.extend(extra);
        let r = run_binary(&args);
        let _ = std::fs::remove_file(&out);
        r
    };
    let (t_nohash, rss_nohash, anon_nohash) = ws(&["--no-input-hashes"]);
    let (t_hash, rss_hash, anon_hash) = ws(&[]);
    let (t_cached, _, _) = ws(&[]);

    // Twenty sparse inputs.
    let zeros = zero_models(&dir, 20, |i| format!("sdxl-zeros-{i}"));
    let recipe = dir.join("avg20.recipe");
    let mut text = String::new();
    for (i, p) in zeros.iter().enumerate() {
        text.push_str(&format!("M{i} = \"{}\"\n", p.display()));
    }
    let names: Vec<String> = (0..20).map(|i| format!("M{i}")).collect();
    text.push_str(&format!("OUT = avg({})\n", names.join(", ")));
    std::fs::write(&recipe, text).unwrap();
    let (t20, rss20, anon20) = run_binary(&[
        "merge",
        recipe.to_str().unwrap(),
        "-o",
        so,
        "--force",
        "-q",
        "--no-input-hashes",
    ]);
    let _ = std::fs::remove_file(&out);

    let out_gb = gb(in_bytes / 2);
    println!(
        "## merge, SDXL fp16 (6.94 GB per file), {} threads\n",
        rayon::current_num_threads()
    );
    println!(
        "disk write limit, same run: {write_rate:.2} GB/s (8 MiB writes + fsync) -> {:.1} s for one SDXL output\n",
        out_gb / write_rate
    );
    println!("| run | time | output GB/s | peak RSS | peak anonymous RSS |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| ws A B, 2 inputs, no input hashes | {t_nohash:.1} s | {:.2} | {:.2} GB | {:.0} MB |",
        out_gb / t_nohash,
        gb(rss_nohash),
        anon_nohash as f64 / 1e6
    );
    println!(
        "| ws A B, 2 inputs, SHA-256 of both computed meanwhile | {t_hash:.1} s | {:.2} | {:.2} GB | {:.0} MB |",
        out_gb / t_hash,
        gb(rss_hash),
        anon_hash as f64 / 1e6
    );
    println!(
        "| ws A B, 2 inputs, SHA-256 from the cache | {t_cached:.1} s | {:.2} | | |",
        out_gb / t_cached
    );
    println!(
        "| avg of 20 inputs (sparse zero-weight files) | {t20:.1} s | {:.2} | {:.2} GB | {:.0} MB |",
        out_gb / t20,
        gb(rss20),
        anon20 as f64 / 1e6
    );
}
