//! `sim` of a full-size Flux.1 dev diffuser in ComfyUI's per-layer nvfp4 and fp8 against its
//! BF16 twin, beside a plain read of the same bytes (the limit, same run) and beside the
//! peer: comfy-kitchen's eager dequantization of the same file in Python, with the sums
//! `sim` needs (`benches/peers/ck_dequant.py`). Both report the overall cosine: they must
//! agree.
//!
//!     cargo bench --bench quant_full     # ~37 GB of disk at its peak, deleted at the end
//!
//! The peer runs when `CKPT_DIFF_PYTHON` names a Python with torch and comfy-kitchen
//! 0.2.40. Writes reports/bench/quant.md. `CKPT_DIFF_BENCH_KEEP=1` keeps the inputs.

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};

use ckpt_ops::synth::Synthetic;
use ckpt_read::dtype::FloatFormat;
use common::*;

fn bf16_diffuser() -> PathBuf {
    diffuser(
        "flux",
        FloatFormat::BF16,
        "dev-bf16-base",
        &Synthetic::base(arch("flux"), 1),
        None,
    )
}

fn cosine(json: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("sim --json");
    let t = &v["totals"];
    t["flat_all"]["similarity"]
        .as_f64()
        .or_else(|| t["flat_unet"]["similarity"].as_f64())
        .unwrap_or(f64::NAN)
}

fn main() {
    let exe = Path::new(env!("CARGO_BIN_EXE_ckpt-diff"));
    let python = std::env::var_os(ckpt_read::env::PYTHON.name).map(PathBuf::from);
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/ck_dequant.py");
    let bf16 = bf16_diffuser();
    let mut md = format!(
        "## Flux.1 dev diffuser, full size, ComfyUI per-layer formats, {} threads, {} kernels\n\n\
         | run | time | input GB | input GB/s | plain read, same run | peak anonymous RSS | peak RSS | cosine |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        rayon::current_num_threads(),
        ckpt_core::kernels::level().name()
    );
    for format in ["nvfp4", "comfy-fp8"] {
        let q = data_dir().join(format!("flux-dev-{format}.safetensors"));
        // A quantized file kept from an earlier run is reused (no convert row then).
        let reused = q.exists();
        let convert = (!reused).then(|| {
            run_measured(
                exe,
                &[
                    "convert",
                    bf16.to_str().unwrap(),
                    "-o",
                    q.to_str().unwrap(),
                    "--dtype",
                    format,
                    "--force",
                    "-q",
                ],
            )
        });
        let input = std::fs::metadata(&q).unwrap().len() + std::fs::metadata(&bf16).unwrap().len();
        let paths: [&Path; 2] = [&q, &bf16];
        evict(&paths);
        let read = mmap_read_rate_once(&paths);
        let mut row = |what: String, m: &Measured, cos: Option<f64>| {
            md.push_str(&format!(
                "| {what} | {:.1} s | {:.1} | {:.2} | {read:.2} GB/s | {:.0} MB | {:.2} GB | {} |\n",
                m.secs,
                gb(input),
                gb(input) / m.secs,
                m.peak_anon as f64 / 1e6,
                gb(m.peak_rss),
                cos.map_or("".into(), |c| format!("{c:.6}")),
            ));
        };
        if let Some(convert) = &convert {
            row(
                format!(
                    "convert bf16 -> {format} ({:.1} GB)",
                    gb(std::fs::metadata(&q).unwrap().len())
                ),
                convert,
                None,
            );
        }
        let args = ["sim", q.to_str().unwrap(), bf16.to_str().unwrap(), "--json"];
        evict(&paths);
        let m = run_measured(exe, &args);
        row(
            format!("sim {format} vs bf16, evicted cache"),
            &m,
            Some(cosine(&m.stdout)),
        );
        let m = run_measured(exe, &args);
        row(
            format!("sim {format} vs bf16, again"),
            &m,
            Some(cosine(&m.stdout)),
        );
        if let Some(py) = &python {
            evict(&paths);
            let m = run_measured(
                py,
                &[
                    peer.to_str().unwrap(),
                    q.to_str().unwrap(),
                    bf16.to_str().unwrap(),
                ],
            );
            let cos = m
                .stdout
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.trim_end_matches(';').parse().ok());
            row(
                format!("peer: comfy-kitchen eager dequant + sums, {format}, evicted cache"),
                &m,
                cos,
            );
        }
        if std::env::var_os(ckpt_read::env::BENCH_KEEP.name).is_none() {
            let _ = std::fs::remove_file(&q);
        }
    }
    println!("{md}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("quant.md"), md).unwrap();
    if std::env::var_os(ckpt_read::env::BENCH_KEEP.name).is_none() {
        let _ = std::fs::remove_file(&bf16);
    }
}
