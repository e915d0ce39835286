//! `tgmd` (AstolfoMix-XL's TIES-GeoMedian with DROP) over many SDXL inputs: time and peak
//! anonymous memory as N grows, beside the bound the plan states and sd-mecha 1.1.8.
//!
//!     cargo bench --bench tgmd_full        (writes reports/bench/tgmd.md)
//!
//! * reduced width (1/8 of every dimension of 128 or more, 109 MB per file), a base and up
//!   to 116 fine-tunes, so 116 inputs fit this disk: N = 8, 29, 58, 116;
//! * full size: a base and 5 fine-tunes, 6 real SDXL fp16 files (41.6 GB);
//! * the plan's bound (`merge --dry-run --json`) for 116 full-size inputs, on weight-free
//!   sparse files with the real header (they need no disk and are never merged);
//! * sd-mecha 1.1.8 (its own `sd_mecha.merge` pipeline) on the 8-input reduced set, where
//!   it finishes within this bench's time; its rate there says what the larger sets would
//!   take it.
//!
//! Every run is AstolfoMix-XL's recipe: `tgmd(base, models)` (k=1, sign by magnitude, the
//! geometric median of the filtered deltas, 10% dropped without rescale, 100 Weiszfeld
//! steps at most, ftol 1e-20), float16 output.

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ckpt_core::pass::NoProgress;
use ckpt_ops::synth::{self, Layout, Synthetic};
use ckpt_read::dtype::FloatFormat;
use common::*;

const REDUCED: u32 = 8;

fn reduced(dir: &Path, k: usize) -> PathBuf {
    let p = dir.join(format!("m{k:03}.safetensors"));
    if !p.exists() {
        let model = if k == 0 {
            Synthetic::base(arch("sdxl"), 1)
        } else {
            finetune_model(arch("sdxl"), k)
        };
        let layout = Layout::new(arch("sdxl"), REDUCED, FloatFormat::F16);
        synth::write(&p, &layout, &model, &[], &NoProgress, &Default::default()).expect("synth");
    }
    p
}

/// A recipe file: `tgmd(base, models)` with the models in a list file.
fn recipe(dir: &Path, name: &str, base: &Path, models: &[PathBuf]) -> PathBuf {
    let list = dir.join(format!("{name}.txt"));
    let text: String = models
        .iter()
        .map(|m| format!("{}\n", m.display()))
        .collect();
    std::fs::write(&list, text).unwrap();
    let r = dir.join(format!("{name}.recipe"));
    std::fs::write(
        &r,
        format!(
            "base = \"{}\"\nms = list(\"{}\")\nOUT = tgmd(base, ms, seed=240603)\n",
            base.display(),
            list.display()
        ),
    )
    .unwrap();
    r
}

/// `ckpt-diff merge RECIPE -o OUT --force` with `extra`, measured.
fn run_merge(recipe: &Path, out: &Path, extra: &[&str]) -> Measured {
    let mut args = vec![
        "merge",
        recipe.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
    ];
    args.extend(extra);
    run_measured(Path::new(env!("CARGO_BIN_EXE_ckpt-diff")), &args)
}

/// The plan's numbers: (anonymous bound, mapped bound, read bytes).
fn plan(recipe: &Path, out: &Path) -> (u64, u64, u64) {
    let m = run_merge(recipe, out, &["--dry-run", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    (
        v["memory"]["anonymous"].as_u64().unwrap(),
        v["memory"]["mapped"].as_u64().unwrap(),
        v["read_bytes"].as_u64().unwrap(),
    )
}

fn merge(recipe: &Path, out: &Path) -> Measured {
    let m = run_merge(recipe, out, &["-q", "--no-input-hashes"]);
    let _ = std::fs::remove_file(out);
    m
}

fn main() {
    let data = data_dir();
    let mut report = String::new();
    let threads = rayon::current_num_threads();
    let cache = tempfile::tempdir().unwrap();
    // SAFETY (for the env var): set before any thread of this process reads it; the
    // children inherit it, so no earlier merge's rate predicts these.
    unsafe { std::env::set_var("XDG_CACHE_HOME", cache.path()) };
    writeln!(
        report,
        "## tgmd (AstolfoMix-XL's TGMD recipe), SDXL fp16, {threads} threads\n"
    )
    .unwrap();

    // Reduced width, N = 8 .. 116.
    let dir = data.join("tgmd-s8");
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("generating the reduced-width inputs ...");
    let base = reduced(&dir, 0);
    let models: Vec<PathBuf> = (1..=116).map(|k| reduced(&dir, k)).collect();
    let file = std::fs::metadata(&base).unwrap().len();
    let out = dir.join("out.safetensors");
    writeln!(
        report,
        "### reduced width (1/{REDUCED}), {:.0} MB per file\n",
        file as f64 / 1e6
    )
    .unwrap();
    writeln!(report, "| inputs (base + N) | input GB | time | s per input GB | peak anonymous | plan's bound | mapped bound |").unwrap();
    writeln!(report, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |").unwrap();
    let mut mecha_rate = None;
    for n in [8usize, 29, 58, 116] {
        let r = recipe(&dir, &format!("n{n}"), &base, &models[..n]);
        let (bound, mapped, _) = plan(&r, &out);
        let paths: Vec<&Path> = std::iter::once(base.as_path())
            .chain(models[..n].iter().map(|p| p.as_path()))
            .collect();
        warm(&paths);
        eprintln!("tgmd over {} reduced inputs ...", n + 1);
        let m = merge(&r, &out);
        let gb_in = (n + 1) as f64 * file as f64 / 1e9;
        writeln!(
            report,
            "| {} | {gb_in:.1} | {:.1} s | {:.1} | {:.0} MB | {:.0} MB | {:.0} MB |",
            n + 1,
            m.secs,
            m.secs / gb_in,
            m.peak_anon as f64 / 1e6,
            bound as f64 / 1e6,
            mapped as f64 / 1e6
        )
        .unwrap();
        if m.peak_anon > bound {
            writeln!(report, "| | | | | **above the bound** | | |").unwrap();
        }
        if n == 8 {
            mecha_rate = mecha(&base, &models[..n], &dir, gb_in, &mut report);
        }
    }
    writeln!(report).unwrap();
    if let Some(rate) = mecha_rate {
        writeln!(report, "{rate}\n").unwrap();
    }
    for m in &models {
        let _ = std::fs::remove_file(m);
    }
    let _ = std::fs::remove_file(&base);

    // The plan's bound for 116 full-size inputs (sparse weight-free files: no disk).
    let zdir = data.join("tgmd-zeros");
    std::fs::create_dir_all(&zdir).unwrap();
    let zeros = zero_models(&zdir, 117, |i| format!("z{i:03}"));
    let r = recipe(&zdir, "z116", &zeros[0], &zeros[1..]);
    let (bound116, mapped116, read116) = plan(&r, &zdir.join("out.safetensors"));
    writeln!(
        report,
        "### the plan's bound for 117 full-size SDXL inputs (base + 116)\n\n\
         reads {:.0} GB; peak anonymous at most **{:.2} GiB** ({threads} threads); input pages \
         mapped at once at most {:.2} GiB (page cache, reclaimable)\n",
        read116 as f64 / 1e9,
        bound116 as f64 / (1u64 << 30) as f64,
        mapped116 as f64 / (1u64 << 30) as f64
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&zdir);

    // Full size: a base and 5 fine-tunes.
    eprintln!("generating the full-size inputs ...");
    let fbase = model(arch("sdxl"), FloatFormat::F16, 1, 0.0);
    let fts: Vec<PathBuf> = (1..=5)
        .map(|k| finetune(arch("sdxl"), FloatFormat::F16, k))
        .collect();
    let fdir = data.join("tgmd-full");
    std::fs::create_dir_all(&fdir).unwrap();
    let fout = fdir.join("out.safetensors");
    let r = recipe(&fdir, "full6", &fbase, &fts);
    let (bound, mapped, read) = plan(&r, &fout);
    let paths: Vec<&Path> = std::iter::once(fbase.as_path())
        .chain(fts.iter().map(|p| p.as_path()))
        .collect();
    let in_bytes: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    evict(&paths);
    let read_rate = mmap_read_rate_once(&paths);
    eprintln!("tgmd over 6 full-size inputs ...");
    let m = merge(&r, &fout);
    writeln!(
        report,
        "### full size, 6 inputs (base + 5), {:.1} GB\n\n\
         | run | time | s per input GB | peak anonymous | plan's bound | mapped bound |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n\
         | tgmd | {:.1} s | {:.1} | {:.2} GB | {:.2} GB | {:.2} GB |\n\n\
         plain read of the same files, cold, same run: {read_rate:.2} GB/s ({:.1} s); the \
         merge read {:.1} GB of tensors\n",
        in_bytes as f64 / 1e9,
        m.secs,
        m.secs / (in_bytes as f64 / 1e9),
        m.peak_anon as f64 / 1e9,
        bound as f64 / 1e9,
        mapped as f64 / 1e9,
        in_bytes as f64 / 1e9 / read_rate,
        read as f64 / 1e9
    )
    .unwrap();
    if m.peak_anon > bound {
        writeln!(report, "**The peak was above the plan's bound.**\n").unwrap();
    }
    for p in std::iter::once(&fbase).chain(&fts) {
        let _ = std::fs::remove_file(p);
    }

    print!("{report}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/bench/tgmd.md");
    std::fs::write(&path, &report).unwrap();
    eprintln!("wrote {}", path.display());
}

/// sd-mecha's own pipeline on the same inputs, when the bench environment has it: a table
/// row, and a sentence on its rate.
fn mecha(
    base: &Path,
    models: &[PathBuf],
    dir: &Path,
    gb_in: f64,
    report: &mut String,
) -> Option<String> {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv/bin/python");
    if !py.exists() {
        return Some(
            "sd-mecha: not run (no target/bench-venv; benches/peers/setup.sh makes it)".into(),
        );
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers/tgmd_mecha.py");
    let out = dir.join("mecha.safetensors");
    let mut args: Vec<String> = vec![
        script.display().to_string(),
        "recipe".into(),
        out.display().to_string(),
        base.display().to_string(),
    ];
    args.extend(models.iter().map(|m| m.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    eprintln!("sd-mecha over {} reduced inputs ...", models.len() + 1);
    let m = run_measured(&py, &args);
    let _ = std::fs::remove_file(&out);
    writeln!(
        report,
        "| {} (sd-mecha 1.1.8) | {gb_in:.1} | {:.1} s | {:.1} | {:.0} MB | | |",
        models.len() + 1,
        m.secs,
        m.secs / gb_in,
        m.peak_anon as f64 / 1e6
    )
    .unwrap();
    Some(format!(
        "sd-mecha ran only on the 9-input set: at its rate there ({:.0} s per input GB), the \
         117-input reduced set would take it about {:.0} min and the 6 full-size inputs about \
         {:.0} min, beyond this bench's time.",
        m.secs / gb_in,
        m.secs / gb_in * 117.0 * 0.109 / 60.0,
        m.secs / gb_in * 41.6 / 60.0
    ))
}
