//! The Python module beside the command line on the same full-size files: `sim` and a
//! merge of two SD1.5 fp16 checkpoints, each run as `ckpt-diff ...` and as a Python process
//! calling `ckpt_diff.sim(...)` / `ckpt_diff.merge(...)`, alternating, warm page cache.
//!
//!     maturin build --release -o target/wheels-release
//!     python3 -m venv target/bench-py && target/bench-py/bin/pip install target/wheels-release/*.whl numpy
//!     CKPT_DIFF_BENCH_PYTHON=target/bench-py/bin/python cargo bench --bench python_full
//!
//! Inputs are the ones `sim_full` generates (target/bench-data, 4.3 GB); each merge writes a
//! 2.1 GB output, deleted after it is timed. Prints a Markdown table: wall time of the whole
//! process (the interpreter's start and `import ckpt_diff` included), the call alone as
//! Python's clock saw it, and peak anonymous memory (not mapped file pages), with the
//! interpreter that only imports the module as the baseline of what the module adds.

// Benchmarks report what they measure; the shared helpers call libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};

use ckpt_read::dtype::FloatFormat;
use common::*;

/// Alternating runs of each side.
const RUNS: usize = 9;

fn main() {
    let Some(python) = std::env::var_os("CKPT_DIFF_BENCH_PYTHON").map(PathBuf::from) else {
        eprintln!(
            "python_full: set CKPT_DIFF_BENCH_PYTHON to a Python with the release wheel \
             installed (see the file's header); skipped"
        );
        return;
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_ckpt-diff"));
    let a = model(arch("sd1"), FloatFormat::F16, 1, 0.0);
    let b = model(arch("sd1"), FloatFormat::F16, 1, 0.1);
    let input = std::fs::metadata(&a).unwrap().len() + std::fs::metadata(&b).unwrap().len();
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    let out = data_dir().join("python-bench-out.safetensors");
    let so = out.to_str().unwrap();
    warm(&[&a, &b]);

    // The interpreter with the module imported and nothing run: what Python itself takes.
    let baseline = run_measured(&python, &["-c", "import ckpt_diff"]);

    let sim_py = "import sys, time, ckpt_diff\n\
                  t = time.perf_counter()\n\
                  r = ckpt_diff.sim(sys.argv[1], sys.argv[2])\n\
                  print(time.perf_counter() - t)";
    let merge_py = "import sys, time, ckpt_diff\n\
                    t = time.perf_counter()\n\
                    ckpt_diff.merge(f'A = \"{sys.argv[1]}\"\\nB = \"{sys.argv[2]}\"\\nOUT = A x 0.7 + B x 0.3\\n', sys.argv[3], dtype='f16', no_input_hashes=True)\n\
                    print(time.perf_counter() - t)";
    let recipe = data_dir().join("python-bench.recipe");
    std::fs::write(
        &recipe,
        format!("A = \"{sa}\"\nB = \"{sb}\"\nOUT = A x 0.7 + B x 0.3\n"),
    )
    .unwrap();
    let sr = recipe.to_str().unwrap();

    let mut rows = Vec::new();
    for (what, cli_args, py_args, writes) in [
        (
            "sim A B",
            vec!["sim", sa, sb, "--json"],
            vec!["-c", sim_py, sa, sb],
            false,
        ),
        (
            "merge A x 0.7 + B x 0.3, f16",
            vec![
                "merge",
                sr,
                "-o",
                so,
                "--dtype",
                "f16",
                "--no-input-hashes",
                "--json",
                "-q",
            ],
            vec!["-c", merge_py, sa, sb, so],
            true,
        ),
    ] {
        let (mut cli, mut py, mut call) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cli_anon, mut py_anon) = (0u64, 0u64);
        for _ in 0..RUNS {
            let m = run_measured(exe, &cli_args);
            cli.push(m.secs);
            cli_anon = cli_anon.max(m.peak_anon);
            if writes {
                std::fs::remove_file(&out).unwrap();
            }
            let m = run_measured(&python, &py_args);
            py.push(m.secs);
            py_anon = py_anon.max(m.peak_anon);
            call.push(m.stdout.trim().parse::<f64>().expect("the call's seconds"));
            if writes {
                std::fs::remove_file(&out).unwrap();
            }
        }
        rows.push((
            what,
            median(&mut cli),
            median(&mut py),
            median(&mut call),
            cli_anon,
            py_anon,
        ));
    }
    let _ = std::fs::remove_file(&recipe);

    println!(
        "## The Python module beside the command line: SD1.5 fp16 x 2 ({:.2} GB), warm page \
         cache, {} threads, median of {RUNS} alternating runs\n",
        gb(input),
        rayon::current_num_threads()
    );
    println!(
        "| command | `ckpt-diff` | Python process | the call alone | Python / CLI | peak anon CLI | peak anon Python | Python's own (import only) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (what, cli, py, call, cli_anon, py_anon) in rows {
        println!(
            "| {what} | {cli:.3} s | {py:.3} s | {call:.3} s | {:+.1}% (call {:+.1}%) | {:.0} MB | {:.0} MB | {:.0} MB |",
            100.0 * (py / cli - 1.0),
            100.0 * (call / cli - 1.0),
            cli_anon as f64 / 1e6,
            py_anon as f64 / 1e6,
            baseline.peak_anon as f64 / 1e6
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
