//! LoRAs at full size: extraction (rank 64) from an SD1.5 and an SDXL fp16 pair, beside
//! kohya's `extract_lora_from_models.py` (PyTorch on the CPU) on the same pair; and 20 SDXL
//! rank-32 LoRAs baked into a full-size SDXL in one pass, beside a plain two-input merge.
//!
//!     cargo bench --bench lora_full        (writes reports/bench/lora.md)
//!
//! The pairs are generated (a base and a fine-tune of it whose change has per-block
//! sizes); kohya's script runs from `target/sd-scripts` in `target/bench-venv`
//! (`benches/peers/setup.sh` makes both). Both sides write fp16 LoRAs of the same modules
//! (no convolutions); their kept energy is compared through `ckpt-diff l2` of the two
//! LoRAs (‖ΔW‖ at strength 1, from the factors). `CKPT_DIFF_BENCH_KOHYA=0` skips kohya,
//! `CKPT_DIFF_BENCH_KOHYA_SDXL=0` only on SDXL (it holds both models in memory: 14 GB in
//! fp16); `CKPT_DIFF_BENCH_ONLY=sd1|sdxl|bake|qwen` runs one part.
//!
//! `qwen`: a Qwen-Image bf16 pair at full width, beside musubi-tuner's
//! `qwen_extract_lora.py` (PyTorch on the CPU; `target/musubi-tuner`, cloned by setup.sh),
//! rank 16. A whole pair (2 × 41 GB) does not fit this machine's disk: the pair holds the
//! first 3 of the 60 transformer blocks and every module outside them, which both tools
//! read the same way (PyTorch's full SVD of 3072 x 12288 matrices on 2 cores takes minutes
//! per block). Both extract the same modules (musubi's choice: every
//! linear weight of the transformer blocks, `img_in`, `txt_in`, `proj_out`, `norm_out.linear`
//! and the timestep embedder).

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ckpt_core::catalog::data::table;
use ckpt_core::catalog::lora::extractable;
use ckpt_core::catalog::{Arch, Component};
use ckpt_core::pass::NoProgress;
use ckpt_ops::lora::write::{Dialect, Factors, Tensors};
use ckpt_ops::synth::{self, Layout, Synthetic};
use ckpt_read::dtype::FloatFormat;
use common::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ckpt-diff"))
}

fn venv_python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv/bin/python");
    p.exists().then_some(p)
}

fn sd_scripts() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sd-scripts");
    p.join("networks/extract_lora_from_models.py")
        .exists()
        .then_some(p)
}

/// kohya's script on the pair, measured (its peak RSS: it holds no file mapped).
fn kohya(base: &Path, tuned: &Path, out: &Path, sdxl: bool) -> Option<Measured> {
    let (py, dir) = (venv_python()?, sd_scripts()?);
    let script = dir.join("networks/extract_lora_from_models.py");
    let mut args = vec![
        script.to_str().unwrap().to_string(),
        "--model_org".into(),
        base.to_str().unwrap().into(),
        "--model_tuned".into(),
        tuned.to_str().unwrap().into(),
        "--save_to".into(),
        out.to_str().unwrap().into(),
        "--dim".into(),
        "64".into(),
        "--device".into(),
        "cpu".into(),
        "--save_precision".into(),
        "fp16".into(),
    ];
    if sdxl {
        // Without it the two SDXL models load in fp32: 27 GB, more than this machine has.
        args.extend(["--sdxl".into(), "--load_precision".into(), "fp16".into()]);
    }
    // SAFETY (env): set before the child starts, read by it only.
    unsafe {
        std::env::set_var(
            "PYTHONPATH",
            format!("{}:{}", dir.display(), dir.join("networks").display()),
        );
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Some(run_measured(&py, &refs))
}

/// ‖ΔW‖ of each LoRA file at strength 1 (total over blocks), by `ckpt-diff l2`.
fn norms(base: &Path, loras: &[&Path]) -> Vec<f64> {
    let mut args = vec!["l2", "--base", base.to_str().unwrap(), "--json"];
    args.extend(loras.iter().map(|p| p.to_str().unwrap()));
    let m = run_measured(bin(), &args);
    let v: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    v["total"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn extract_pair(arch: Arch, label: &str, report: &mut String) {
    let base = model(arch, FloatFormat::F16, 1, 0.0);
    let tuned = finetune(arch, FloatFormat::F16, 1);
    let dir = data_dir();
    let ours = dir.join(format!("{label}-ours.safetensors"));
    let theirs = dir.join(format!("{label}-kohya.safetensors"));
    let input = std::fs::metadata(&base).unwrap().len() * 2;
    warm(&[&base, &tuned]);
    eprintln!("{label}: ckpt-diff lora extract --rank 64 ...");
    let m = run_measured(
        bin(),
        &words(
            "lora extract {} --base {} --rank 64 -o {} --force -q --json",
            &[
                tuned.to_str().unwrap(),
                base.to_str().unwrap(),
                ours.to_str().unwrap(),
            ],
        ),
    );
    let v: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    let modules = v["modules"].as_array().unwrap();
    let energy: f64 = modules.iter().map(|x| x["energy"].as_f64().unwrap()).sum();
    let retained: f64 = modules
        .iter()
        .map(|x| x["retained"].as_f64().unwrap())
        .sum();
    writeln!(
        report,
        "### {label} fp16 pair ({:.1} GB read), rank 64\n\n\
         | tool | time | peak anonymous | peak RSS | modules | ‖ΔW‖ of the LoRA |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |",
        input as f64 / 1e9
    )
    .unwrap();
    let run_kohya = std::env::var(ckpt_read::env::BENCH_KOHYA.name).as_deref() != Ok("0")
        && (arch.id() != "sdxl"
            || std::env::var(ckpt_read::env::BENCH_KOHYA_SDXL.name).as_deref() != Ok("0"));
    let k = if run_kohya {
        eprintln!("{label}: kohya's extract_lora_from_models.py --dim 64 (PyTorch CPU) ...");
        kohya(&base, &tuned, &theirs, arch.id() == "sdxl")
    } else {
        None
    };
    let paths: Vec<&Path> = if k.is_some() {
        vec![&ours, &theirs]
    } else {
        vec![&ours]
    };
    let n = norms(&base, &paths);
    writeln!(
        report,
        "| ckpt-diff | {:.1} s | {:.0} MB | {:.0} MB | {} | {:.4} |",
        m.secs,
        m.peak_anon as f64 / 1e6,
        m.peak_rss as f64 / 1e6,
        modules.len(),
        n[0]
    )
    .unwrap();
    match &k {
        Some(k) => {
            writeln!(
                report,
                "| kohya `extract_lora_from_models.py` | {:.1} s | {:.0} MB | {:.0} MB | | {:.4} |\n\n\
                 ckpt-diff is **{:.1}×** faster. Energy kept (Σσ² of the kept ranks over ‖ΔW‖², \
                 before the clamp): {:.4}% by ckpt-diff's report; the two LoRAs' norms compare \
                 the kept energy after the clamp and fp16 rounding.\n",
                k.secs,
                k.peak_anon as f64 / 1e6,
                k.peak_rss as f64 / 1e6,
                n[1],
                k.secs / m.secs,
                100.0 * retained / energy
            )
            .unwrap();
        }
        None => writeln!(
            report,
            "\nkohya's script: not run (no target/bench-venv or target/sd-scripts, or \
             CKPT_DIFF_BENCH_KOHYA_SDXL=0). Energy kept: {:.4}%.\n",
            100.0 * retained / energy
        )
        .unwrap(),
    }
    let _ = std::fs::remove_file(&ours);
    let _ = std::fs::remove_file(&theirs);
}

fn musubi() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/musubi-tuner/src");
    p.join("musubi_tuner/qwen_extract_lora.py")
        .exists()
        .then_some(p)
}

/// The Qwen-Image pair of `qwen`: base and fine-tune 1, blocks 0-2 and the rest (bf16).
fn qwen_pair() -> (PathBuf, PathBuf) {
    let a = arch("qwen-image");
    let mut l = Layout::new(a, 1, FloatFormat::BF16);
    l.components = vec![Component::named("diffuser").unwrap()];
    let re = r"^model\.diffusion_model\.(transformer_blocks\.[0-2]\.|img_in|txt_in|txt_norm|time_text_embed|norm_out|proj_out)";
    l.keys = Some(regex::Regex::new(re).unwrap().into());
    let path = |name: &str| data_dir().join(format!("qwen-image-b3-bf16-{name}.safetensors"));
    let (base, tuned) = (path("s1"), path("ft1"));
    for (p, m) in [
        (&base, Synthetic::base(a, 1)),
        (&tuned, finetune_model(a, 1)),
    ] {
        if !p.exists() {
            eprintln!("generating {} ...", p.display());
            synth::write(p, &l, &m, &[], &NoProgress, &Default::default()).unwrap();
        }
    }
    (base, tuned)
}

fn qwen(report: &mut String) {
    let (base, tuned) = qwen_pair();
    let dir = data_dir();
    let ours = dir.join("qwen-ours.safetensors");
    let theirs = dir.join("qwen-musubi.safetensors");
    let input = std::fs::metadata(&base).unwrap().len() * 2;
    warm(&[&base, &tuned]);
    eprintln!("Qwen-Image: ckpt-diff lora extract --rank 16 ...");
    let (b, t, o) = (
        base.to_str().unwrap(),
        tuned.to_str().unwrap(),
        ours.to_str().unwrap(),
    );
    let m = run_measured(
        bin(),
        &[
            "lora", "extract", t, "--base", b, "--rank", "16", "-o", o, "--force", "-q", "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    let modules = v["modules"].as_array().unwrap();
    writeln!(
        report,
        "### Qwen-Image bf16 pair, blocks 0-2 and the embedders ({:.1} GB read), rank 16\n\n\
         | tool | time | peak anonymous | peak RSS | modules |\n| --- | ---: | ---: | ---: | ---: |\n\
         | ckpt-diff | {:.1} s | {:.0} MB | {:.0} MB | {} |",
        input as f64 / 1e9,
        m.secs,
        m.peak_anon as f64 / 1e6,
        m.peak_rss as f64 / 1e6,
        modules.len()
    )
    .unwrap();
    let peer = venv_python().zip(musubi()).map(|(py, src)| {
        eprintln!("Qwen-Image: musubi-tuner's qwen_extract_lora.py --dim 16 (PyTorch CPU) ...");
        // SAFETY (env): set before the child starts, read by it only.
        unsafe { std::env::set_var("PYTHONPATH", &src) };
        let script = src.join("musubi_tuner/qwen_extract_lora.py");
        let args = [
            script.to_str().unwrap(),
            "--model_org",
            b,
            "--model_tuned",
            t,
            "--save_to",
            theirs.to_str().unwrap(),
            "--dim",
            "16",
            "--device",
            "cpu",
            "--save_precision",
            "bf16",
        ];
        run_measured(&py, &args)
    });
    match peer {
        Some(k) => {
            let n = ckpt_read::Checkpoint::open(&theirs)
                .map(|c| c.tensors().len() / 3)
                .unwrap_or(0);
            writeln!(
                report,
                "| musubi-tuner `qwen_extract_lora.py` | {:.1} s | {:.0} MB | {:.0} MB | {n} |\n\n\
                 ckpt-diff is **{:.1}×** faster.\n",
                k.secs,
                k.peak_anon as f64 / 1e6,
                k.peak_rss as f64 / 1e6,
                k.secs / m.secs
            )
            .unwrap();
        }
        None => writeln!(
            report,
            "\nmusubi-tuner's script: not run (no target/bench-venv or target/musubi-tuner).\n"
        )
        .unwrap(),
    }
    for p in [&ours, &theirs, &base, &tuned] {
        let _ = std::fs::remove_file(p);
    }
}

/// A rank-32 SDXL LoRA of every module kohya's networks train (the U-Net's transformer
/// layers, both text encoders' attention and MLP), random factors of a realistic size.
fn sdxl_lora(path: &Path, seed: u64) {
    if path.exists() {
        return;
    }
    let keys = &table(arch("sdxl")).keys;
    let stream = ckpt_core::rng::counter::Stream::new(seed, 77);
    let mut t = Tensors::default();
    let mut at = 0u64;
    for ex in extractable(arch("sdxl")).into_iter().filter(|e| !e.resnet) {
        let k = keys.iter().find(|k| k.name == ex.target.key).unwrap();
        let rows = ex.target.row_range(&k.shape);
        let rows = rows.1 - rows.0;
        let cols: usize = k.shape[1..].iter().product();
        let r = 32;
        let mut draw = |n: usize, s: f64| -> Vec<f64> {
            let v = (0..n).map(|i| s * stream.normal(at + i as u64)).collect();
            at += n as u64;
            v
        };
        let down = draw(r * cols, 1.0 / (cols as f64).sqrt());
        let up = draw(rows * r, 1e-3);
        let kernel = (k.shape.len() == 4).then(|| &k.shape[1..]);
        let f = Factors::new(&up, &down, rows, r, kernel);
        t.module(&ex.stem, Dialect::Kohya, FloatFormat::F16, f, Some(16.0));
    }
    t.write(path, &[("ss_network_dim".into(), "32".into())], &[])
        .expect("write LoRA");
}

fn bake(report: &mut String) {
    let dir = data_dir().join("lora-bake");
    std::fs::create_dir_all(&dir).unwrap();
    let base = model(arch("sdxl"), FloatFormat::F16, 1, 0.0);
    let other = finetune(arch("sdxl"), FloatFormat::F16, 1);
    eprintln!("generating 20 SDXL rank-32 LoRAs ...");
    let loras: Vec<PathBuf> = (0..20)
        .map(|i| {
            let p = dir.join(format!("l{i:02}.safetensors"));
            sdxl_lora(&p, i);
            p
        })
        .collect();
    let lora_bytes: u64 = loras
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let mut recipe = format!("M = \"{}\"\n", base.display());
    let mut expr = "M".to_string();
    for (i, p) in loras.iter().enumerate() {
        recipe.push_str(&format!("L{i} = \"{}\"\n", p.display()));
        expr.push_str(&format!(" + lora(L{i}) x 0.05"));
    }
    recipe.push_str(&format!("OUT = {expr}\n"));
    let r = dir.join("bake.recipe");
    std::fs::write(&r, recipe).unwrap();
    let out = dir.join("out.safetensors");
    let plan = run_measured(
        bin(),
        &words(
            "merge {} -o {} --force --dry-run --json",
            &[r.to_str().unwrap(), out.to_str().unwrap()],
        ),
    );
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let bound = v["memory"]["anonymous"].as_u64().unwrap();
    let mut paths: Vec<&Path> = vec![&base, &other];
    paths.extend(loras.iter().map(PathBuf::as_path));
    warm(&paths);
    eprintln!("baking 20 LoRAs in one pass ...");
    let baked = run_measured(
        bin(),
        &words(
            "merge {} -o {} --force -q --no-input-hashes",
            &[r.to_str().unwrap(), out.to_str().unwrap()],
        ),
    );
    let _ = std::fs::remove_file(&out);
    warm(&paths);
    eprintln!("plain two-input merge ...");
    let plain = run_measured(
        bin(),
        &words(
            "merge ws {} {} --alpha 0.5 -o {} --force -q --no-input-hashes",
            &[
                base.to_str().unwrap(),
                other.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
        ),
    );
    let _ = std::fs::remove_file(&out);
    writeln!(
        report,
        "### 20 SDXL rank-32 LoRAs baked into a full-size SDXL fp16, one pass\n\n\
         The LoRAs: {:.2} GB together, every U-Net transformer layer and both text encoders' \
         attention and MLP (kohya's SDXL network), alpha 16.\n\n\
         | merge | time | peak anonymous | plan's bound |\n| --- | ---: | ---: | ---: |\n\
         | `M + lora(L0) x 0.05 + ... + lora(L19) x 0.05` | {:.1} s | {:.0} MB | {:.0} MB |\n\
         | `ws(M, F, 0.5)` (two checkpoints) | {:.1} s | {:.0} MB | |\n\n\
         Twenty one-at-a-time bakes would read and write the model twenty times: at the plain \
         merge's rate, about {:.0} s.\n",
        lora_bytes as f64 / 1e9,
        baked.secs,
        baked.peak_anon as f64 / 1e6,
        bound as f64 / 1e6,
        plain.secs,
        plain.peak_anon as f64 / 1e6,
        20.0 * plain.secs
    )
    .unwrap();
    for p in &loras {
        let _ = std::fs::remove_file(p);
    }
}

fn main() {
    let threads = rayon::current_num_threads();
    let mut report = format!("## LoRA extraction and baking, full size, {threads} threads\n\n");
    let only = std::env::var(ckpt_read::env::BENCH_ONLY.name).unwrap_or_default();
    if only.is_empty() || only == "sd1" {
        extract_pair(arch("sd1"), "SD1.5", &mut report);
    }
    if only.is_empty() || only == "sdxl" {
        extract_pair(arch("sdxl"), "SDXL", &mut report);
    }
    if only.is_empty() || only == "bake" {
        bake(&mut report);
    }
    if only.is_empty() || only == "qwen" {
        qwen(&mut report);
    }
    print!("{report}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/bench/lora.md");
    let name = if only.is_empty() {
        out
    } else {
        out.with_file_name(format!("lora-{only}.md"))
    };
    std::fs::write(&name, report).unwrap();
    eprintln!("wrote {}", name.display());
}
