//! `ckpt-diff convert` of a full-size SD1 fp32 `.ckpt` with EMA (made by PyTorch's
//! `torch.save`, nested under `state_dict` as SD's training code saved it) beside one plain
//! copy of the same bytes and beside PyTorch's `torch.load` + `safetensors.torch.save_file`,
//! measured in the same run, warm page cache. Writes reports/bench/convert.md.
//!
//!     cargo bench --bench convert_full     # needs target/bench-venv (benches/peers/setup.sh)

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};

use ckpt_core::pass::NoProgress;
use ckpt_ops::synth::{self, Layout, Synthetic};
use ckpt_read::dtype::FloatFormat;
use common::*;

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv/bin/python")
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers/ckpt_torch.py")
}

/// The full-size SD1 fp32 checkpoint with EMA and schedule buffers, as safetensors and as
/// the `.ckpt` torch.save makes of it (both kept in the bench folder between runs).
fn inputs() -> (PathBuf, PathBuf) {
    let dir = data_dir();
    let st = dir.join("sd1-f32-ema.safetensors");
    if !st.exists() {
        eprintln!("generating {} ...", st.display());
        let mut layout = Layout::new(arch("sd1"), 1, FloatFormat::F32);
        layout.ema = true;
        layout.scheduler = true;
        synth::write(
            &st,
            &layout,
            &Synthetic::base(arch("sd1"), 1),
            &[],
            &NoProgress,
            &Default::default(),
        )
        .unwrap();
    }
    let ckpt = dir.join("sd1-f32-ema.ckpt");
    if !ckpt.exists() {
        eprintln!("torch.save {} ...", ckpt.display());
        run_measured(&python(), &[s(&peer_script()), "make", s(&st), s(&ckpt)]);
    }
    (st, ckpt)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn main() {
    let (st, ckpt) = inputs();
    let size = std::fs::metadata(&ckpt).unwrap().len();
    let out = data_dir().join("convert-out.safetensors");
    let _ = std::fs::remove_file(&out);
    warm(&[&ckpt]);
    let copy = plain_copy(&ckpt, &out, None);
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ckpt-diff"));
    let ours = run_measured(&exe, &["convert", s(&ckpt), "-o", s(&out), "-q", "-f"]);
    let out_size = std::fs::metadata(&out).unwrap().len();
    let _ = std::fs::remove_file(&out);
    warm(&[&ckpt]);
    let no_ema = run_measured(
        &exe,
        &["convert", s(&ckpt), "-o", s(&out), "-q", "-f", "--drop-ema"],
    );
    let no_ema_size = std::fs::metadata(&out).unwrap().len();
    let _ = std::fs::remove_file(&out);
    warm(&[&ckpt]);
    let torch = run_measured(
        &python(),
        &[s(&peer_script()), "convert", s(&ckpt), s(&out)],
    );
    let _ = std::fs::remove_file(&out);
    let write_rate = disk_write_rate(&data_dir());

    let mut md = String::new();
    md.push_str(&format!(
        "# `convert`: a full-size SD1 fp32 `.ckpt` with EMA ({:.2} GB)\n\n\
         `cargo bench --bench convert_full`, warm page cache, this machine's disk writing \
         {write_rate:.2} GB/s with fsync in the same run. The `.ckpt` is `torch.save` of a \
         generated SD1 checkpoint (EMA and schedule buffers) nested under `state_dict`.\n\n\
         | what | seconds | GB/s (input) | peak anonymous memory | peak RSS |\n\
         |---|---|---|---|---|\n",
        gb(size)
    ));
    let row = |md: &mut String, what: &str, secs: f64, anon: Option<u64>, rss: Option<u64>| {
        let mb = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.0} MB", b as f64 / 1e6));
        md.push_str(&format!(
            "| {what} | {secs:.1} | {:.2} | {} | {} |\n",
            gb(size) / secs,
            mb(anon),
            mb(rss)
        ));
    };
    row(
        &mut md,
        "plain copy of the same bytes (read, write, fsync)",
        copy,
        None,
        None,
    );
    row(
        &mut md,
        &format!("ckpt-diff convert ({:.2} GB written)", gb(out_size)),
        ours.secs,
        Some(ours.peak_anon),
        Some(ours.peak_rss),
    );
    row(
        &mut md,
        &format!(
            "ckpt-diff convert --drop-ema ({:.2} GB written)",
            gb(no_ema_size)
        ),
        no_ema.secs,
        Some(no_ema.peak_anon),
        Some(no_ema.peak_rss),
    );
    row(
        &mut md,
        "PyTorch 2.5.1: torch.load + safetensors save_file",
        torch.secs,
        Some(torch.peak_anon),
        Some(torch.peak_rss),
    );
    md.push_str(
        "\nckpt-diff maps the `.ckpt` and streams its tensors (stored uncompressed in the zip, \
         so read in place) into the output; its anonymous memory is the pickle's values and \
         the write buffers, whatever the file size. PyTorch loads every tensor into memory \
         first.\n",
    );
    print!("{md}");
    let report = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/bench/convert.md");
    std::fs::write(report, &md).unwrap();
    // The inputs are 15 GB: delete them unless asked to keep them.
    if std::env::var_os(ckpt_read::env::BENCH_KEEP.name).is_none() {
        let _ = std::fs::remove_file(&st);
        let _ = std::fs::remove_file(&ckpt);
    }
}
