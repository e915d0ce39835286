//! `ckpt-diff sim` against a naive per-block f64 loop over independently read tensors.

use std::collections::BTreeMap;
use std::path::Path;

use ckpt_core::catalog::Arch;
use ckpt_ops::synth::{self, Synthetic};
use ckpt_read::dtype::FloatFormat;

use crate::util::*;

#[derive(Default, Clone, Copy)]
struct Sums {
    aa: f64,
    ab: f64,
    bb: f64,
}

fn cos(s: Sums) -> f64 {
    s.ab / (s.aa * s.bb).sqrt()
}

/// Per-row sums by a straight loop over elements, in f64.
fn naive(a: &Path, b: &Path, arch: Arch) -> BTreeMap<String, Sums> {
    let ta = dequantized_map(a);
    let tb = dequantized_map(b);
    let mut rows: BTreeMap<String, Sums> = BTreeMap::new();
    for x in ta.values() {
        let Some(y) = tb.get(&x.name) else { continue };
        let (Some(va), Some(vb)) = (&x.values, &y.values) else {
            continue;
        };
        if x.shape != y.shape {
            continue;
        }
        let s = rows.entry(arch_row(arch, &x.name)).or_default();
        for i in 0..va.len() {
            s.aa += va[i] * va[i];
            s.ab += va[i] * vb[i];
            s.bb += vb[i] * vb[i];
        }
    }
    rows
}

pub(crate) fn check_against_naive(a: &Path, b: &Path, arch: Arch) {
    let want = naive(a, b, arch);
    let got = run_json(&["sim", s(a), s(b)]);
    let rows = got["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        want.len(),
        "one row per non-empty block/component"
    );
    let mut block_cos = Vec::new();
    let (mut unet, mut all) = (Sums::default(), Sums::default());
    for row in rows {
        let label = row["label"].as_str().unwrap();
        let w = want[label];
        let sim = row["similarity"].as_f64().unwrap();
        assert!(
            (sim - cos(w)).abs() <= 1e-9,
            "{arch:?} {label}: {sim} vs naive {}",
            cos(w)
        );
        all.aa += w.aa;
        all.ab += w.ab;
        all.bb += w.bb;
        if row["component"] == row_component(arch, "D00") {
            block_cos.push(cos(w));
            unet.aa += w.aa;
            unet.ab += w.ab;
            unet.bb += w.bb;
        }
    }
    let totals = &got["totals"];
    let mean = block_cos.iter().sum::<f64>() / block_cos.len() as f64;
    assert_eq!(totals["block_mean"]["over"], block_cos.len() as u64);
    assert!((totals["block_mean"]["similarity"].as_f64().unwrap() - mean).abs() <= 1e-9);
    assert!((totals["flat_unet"]["similarity"].as_f64().unwrap() - cos(unet)).abs() <= 1e-9);
    assert!((totals["flat_all"]["similarity"].as_f64().unwrap() - cos(all)).abs() <= 1e-9);
}

pub(crate) fn pair(
    dir: &Dir,
    arch: Arch,
    scale: u32,
    fa: FloatFormat,
    fb: FloatFormat,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = Synthetic::base(arch, 7);
    let ft = base.plus_delta(
        70,
        ckpt_ops::synth::family::finetune_profile(arch, 7, 2, 0.15),
    );
    let a = dir.model("a.safetensors", &layout(arch, scale, fa), &base);
    let b = dir.model("b.safetensors", &layout(arch, scale, fb), &ft);
    (a, b)
}

#[test]
fn sd1_f16_matches_naive_loop() {
    let d = Dir::new();
    let (a, b) = pair(&d, arch("sd1"), 16, FloatFormat::F16, FloatFormat::F16);
    check_against_naive(&a, &b, arch("sd1"));
}

#[test]
fn sd2_bf16_matches_naive_loop() {
    let d = Dir::new();
    let (a, b) = pair(&d, arch("sd2"), 16, FloatFormat::BF16, FloatFormat::BF16);
    check_against_naive(&a, &b, arch("sd2"));
}

#[test]
fn sdxl_f32_matches_naive_loop() {
    let d = Dir::new();
    let (a, b) = pair(&d, arch("sdxl"), 32, FloatFormat::F32, FloatFormat::F32);
    check_against_naive(&a, &b, arch("sdxl"));
}

/// The 2026 models whole (diffuser, LLM text encoder, VAE) by their rows: Qwen-Image's
/// sliders, Z-Image's refiners and layers, FLUX.2's shared modulation as its own row.
#[test]
fn models_2026_match_naive_loop() {
    for (id, scale) in [("qwen-image", 64), ("z-image", 32), ("flux2-klein-4b", 32)] {
        let d = Dir::new();
        let (a, b) = pair(&d, arch(id), scale, FloatFormat::BF16, FloatFormat::BF16);
        check_against_naive(&a, &b, arch(id));
    }
}

#[test]
fn mixed_dtypes_match_naive_loop() {
    let d = Dir::new();
    let (a, b) = pair(&d, arch("sd1"), 16, FloatFormat::F16, FloatFormat::F32);
    check_against_naive(&a, &b, arch("sd1"));
    let (a, b) = pair(&d, arch("sdxl"), 32, FloatFormat::BF16, FloatFormat::F16);
    check_against_naive(&a, &b, arch("sdxl"));
}

#[test]
fn portable_kernels_agree() {
    let d = Dir::new();
    let (a, b) = pair(&d, arch("sd1"), 16, FloatFormat::BF16, FloatFormat::F32);
    let fast = run_json(&["sim", s(&a), s(&b)]);
    let out = ckpt_diff()
        .env(ckpt_read::env::KERNELS.name, "portable")
        .args(["sim", s(&a), s(&b), "--json"])
        .output()
        .unwrap();
    let portable: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (x, y) in fast["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(portable["rows"].as_array().unwrap())
    {
        let (x, y) = (
            x["similarity"].as_f64().unwrap(),
            y["similarity"].as_f64().unwrap(),
        );
        assert!((x - y).abs() <= 1e-12);
    }
}

#[test]
fn a_model_is_identical_to_itself() {
    let d = Dir::new();
    let m = d.model(
        "m.safetensors",
        &layout(arch("sdxl"), 32, FloatFormat::F16),
        &Synthetic::base(arch("sdxl"), 3),
    );
    let text = run_ok(&["sim", s(&m), s(&m)]);
    let percentages: Vec<&str> = text
        .split_whitespace()
        .filter(|w| w.ends_with('%'))
        .collect();
    assert!(percentages.len() >= 19 + 3 + 3, "{text}");
    assert!(percentages.iter().all(|p| *p == "100.0000%"), "{text}");
    let json = run_json(&["sim", s(&m), s(&m)]);
    for row in json["rows"].as_array().unwrap() {
        assert_eq!(row["similarity"].as_f64().unwrap(), 1.0);
    }
}

#[test]
fn similarity_is_symmetric() {
    let d = Dir::new();
    let (a, b) = pair(&d, arch("sd1"), 16, FloatFormat::F16, FloatFormat::BF16);
    let ab = run_json(&["sim", s(&a), s(&b)]);
    let ba = run_json(&["sim", s(&b), s(&a)]);
    assert_eq!(ab["rows"], ba["rows"]);
    assert_eq!(ab["totals"], ba["totals"]);
}

#[test]
fn blocks_and_keys_restrict_rows_and_totals() {
    let d = Dir::new();
    let (a, b) = pair(&d, arch("sd1"), 16, FloatFormat::F16, FloatFormat::F16);
    let all = run_json(&["sim", s(&a), s(&b)]);
    let out = run_json(&["sim", s(&a), s(&b), "--blocks", "out"]);
    // Every row a selection shows has its number in the full table.
    let same_as_full = |chosen: &serde_json::Value| {
        for r in chosen["rows"].as_array().unwrap() {
            let full = find_row(&all["rows"], "label", &r["label"]);
            assert_eq!(full["similarity"], r["similarity"]);
        }
    };
    let labels: Vec<&str> = column(&out["rows"], "label");
    assert_eq!(
        labels,
        (0..12).map(|i| format!("OUT{i:02}")).collect::<Vec<_>>()
    );
    let sims: Vec<f64> = out["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["similarity"].as_f64().unwrap())
        .collect();
    let mean = sims.iter().sum::<f64>() / 12.0;
    assert!((out["totals"]["block_mean"]["similarity"].as_f64().unwrap() - mean).abs() < 1e-15);
    // The OUT rows are the same numbers as in the full table.
    same_as_full(&out);
    // The one selector language: blocks, ranges and groups, rows as in the full table.
    let picked = run_json(&["sim", s(&a), s(&b), "--blocks", "IN04,OUT03..OUT05,te,base"]);
    let labels: Vec<&str> = column(&picked["rows"], "label");
    assert_eq!(labels, ["IN04", "OUT03", "OUT04", "OUT05", "TE1", "VAE"]);
    same_as_full(&picked);
    let (code, _, err) = run_code(&["sim", s(&a), s(&b), "--blocks", "OUT05..OUT03"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--blocks") && err.contains("runs backwards"),
        "{err}"
    );
    let attn = run_json(&words(
        "sim {} {} --keys {} --per-tensor",
        &[s(&a), s(&b), r"attn2\.to_k"],
    ));
    let tensors = attn["tensors"].as_array().unwrap();
    assert_eq!(
        tensors.len(),
        16,
        "one cross-attention to_k per SD1 transformer"
    );
    assert!(
        tensors
            .iter()
            .all(|t| t["key"].as_str().unwrap().ends_with("attn2.to_k.weight"))
    );
}

#[test]
fn missing_keys_and_other_shapes_are_notes_not_errors() {
    let d = Dir::new();
    let full = d.model(
        "full.safetensors",
        &layout(arch("sd1"), 16, FloatFormat::F16),
        &Synthetic::base(arch("sd1"), 1),
    );
    let mut partial = layout(arch("sd1"), 16, FloatFormat::F16);
    partial.components = vec![ckpt_core::catalog::Component::named("unet").unwrap()];
    partial.variant = variant("inpainting");
    let unet = d.model(
        "unet.safetensors",
        &partial,
        &Synthetic::base(arch("sd1"), 1),
    );
    let json = run_json(&["sim", s(&full), s(&unet)]);
    let notes = &json["notes"];
    assert_eq!(notes["only_in_a"].as_array().unwrap().len(), 197 + 248);
    assert_eq!(
        notes["shape_mismatch"][0]["key"],
        "model.diffusion_model.input_blocks.0.0.weight"
    );
    assert_eq!(
        notes["shape_mismatch"][0]["shape_b"],
        serde_json::json!([20, 9, 3, 3])
    );
    // Same seed: every compared U-Net tensor is identical.
    for row in json["rows"].as_array().unwrap() {
        assert_eq!(row["similarity"].as_f64().unwrap(), 1.0, "{}", row["label"]);
    }
    let text = run_ok(&["sim", s(&full), s(&unet)]);
    assert!(text.contains("445 keys only in A"), "{text}");
    assert!(text.contains("keys with different shapes"), "{text}");
}

#[test]
fn different_architectures_are_a_clear_error() {
    let d = Dir::new();
    let sd1 = d.model(
        "sd1.safetensors",
        &layout(arch("sd1"), 32, FloatFormat::F16),
        &Synthetic::base(arch("sd1"), 1),
    );
    let xl = d.model(
        "xl.safetensors",
        &layout(arch("sdxl"), 32, FloatFormat::F16),
        &Synthetic::base(arch("sdxl"), 1),
    );
    let out = ckpt_diff().args(["sim", s(&sd1), s(&xl)]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sd1.safetensors") && err.contains("SDXL"),
        "{err}"
    );
    assert!(err.contains("--arch generic"), "{err}");
    // Forced generic grouping compares what the two share (the CLIP-L is the same layout).
    let json = run_json(&["sim", s(&sd1), s(&xl), "--arch", "generic"]);
    assert_eq!(json["layout"], "unknown");
}

#[test]
fn table_markdown_and_csv_carry_the_same_numbers() {
    let d = Dir::new();
    let (a, b) = pair(&d, arch("sd1"), 32, FloatFormat::F16, FloatFormat::F16);
    let json = run_json(&["sim", s(&a), s(&b)]);
    let out09 = find_row(&json["rows"], "label", "OUT09");
    let pct = format!("{:.4}%", out09["similarity"].as_f64().unwrap() * 100.0);
    for flag in [None, Some("--markdown"), Some("--csv")] {
        let mut args = vec!["sim", s(&a), s(&b)];
        args.extend(flag);
        let text = run_ok(&args);
        let line = text
            .lines()
            .find(|l| l.contains("OUT09"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains(&pct), "{flag:?}: {line} lacks {pct}");
    }
    let _ = synth::rows(arch("sd1"));
}

#[test]
fn flux_and_sd3_match_naive_loop() {
    let d = Dir::new();
    let (a, b) = pair(&d, arch("flux"), 16, FloatFormat::BF16, FloatFormat::BF16);
    check_against_naive(&a, &b, arch("flux"));
    let (a, b) = pair(&d, arch("sd35m"), 32, FloatFormat::F16, FloatFormat::BF16);
    check_against_naive(&a, &b, arch("sd35m"));
}

/// A scaled-FP8 Flux base of `seed` and a BF16 fine-tune of it (delta of relative `size`).
fn scaled_and_bf16(d: &Dir, seed: u64, size: f64) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut scaled = layout(arch("flux"), 16, FloatFormat::F8E4M3);
    scaled.scaled_fp8 = true;
    let base = Synthetic::base(arch("flux"), seed);
    let q = d.model("scaled.safetensors", &scaled, &base);
    let ft = base.plus_delta(seed * 10, synth::uniform(arch("flux"), size));
    let b = d.model(
        "bf16.safetensors",
        &layout(arch("flux"), 16, FloatFormat::BF16),
        &ft,
    );
    (q, b)
}

/// FP8 weights, plain and scaled, read through the independent decoder (and, scaled, each
/// weight times its `scale_weight`).
#[test]
fn fp8_files_match_naive_loop() {
    let d = Dir::new();
    let (a, b) = pair(
        &d,
        arch("chroma"),
        32,
        FloatFormat::F8E4M3,
        FloatFormat::F8E5M2,
    );
    check_against_naive(&a, &b, arch("chroma"));
    let (a, b) = scaled_and_bf16(&d, 5, 0.2);
    check_against_naive(&a, &b, arch("flux"));
}

/// A scaled-FP8 file and its twin dequantized here into BF16 give the same similarities
/// and distances, within BF16's rounding.
#[test]
fn scaled_fp8_and_its_bf16_twin_agree() {
    let d = Dir::new();
    let (q, other) = scaled_and_bf16(&d, 8, 0.3);
    let twin = d.path("twin.safetensors");
    let values = dequantized_map(&q);
    rewrite(&q, &twin, |tensors| {
        tensors.retain(|t| values.contains_key(&t.name));
        for t in tensors.iter_mut() {
            if let Some(v) = &values[&t.name].values {
                t.dtype = "BF16".into();
                t.data = v
                    .iter()
                    .flat_map(|x| half::bf16::from_f64(*x).to_le_bytes())
                    .collect();
            }
        }
    });
    let sq = run_json(&["sim", s(&q), s(&other)]);
    let st = run_json(&["sim", s(&twin), s(&other)]);
    let (rq, rt) = (
        sq["rows"].as_array().unwrap(),
        st["rows"].as_array().unwrap(),
    );
    assert_eq!(rq.len(), rt.len());
    for (x, y) in rq.iter().zip(rt) {
        assert_eq!(x["label"], y["label"]);
        let (a, b) = (
            x["similarity"].as_f64().unwrap(),
            y["similarity"].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 1e-4, "{}: {a} vs {b}", x["label"]);
    }
    let lq = run_json(&["l2", "--base", s(&other), s(&q)]);
    let lt = run_json(&["l2", "--base", s(&other), s(&twin)]);
    let (fq, ft) = (
        lq["from_base"][0].as_array().unwrap(),
        lt["from_base"][0].as_array().unwrap(),
    );
    for (k, (a, b)) in fq.iter().zip(ft).enumerate() {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        // BF16 keeps 8 significant bits: each value moves by at most 2^-9 of itself.
        assert!(
            (a - b).abs() <= 2f64.powi(-8) * a.abs().max(b.abs()),
            "l2 row {k}: {a} vs {b}"
        );
    }
}

#[test]
fn asim_says_a_dit_has_no_unet_attention() {
    let d = Dir::new();
    let (a, b) = pair(&d, arch("flux"), 32, FloatFormat::BF16, FloatFormat::BF16);
    let (code, _, err) = run_code(&["sim", "--metric", "asim", s(&a), s(&b)]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("Flux.1 has none") && err.contains("without --metric asim"),
        "{err}"
    );
}
