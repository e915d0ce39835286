//! LoRAs as diffusers writes them, against what diffusers and peft apply
//! (fixtures/transformers5, made by fixtures/transformers5/make_fixtures.py): the scale each
//! module takes from `lora_adapter_metadata` (r, lora_alpha, rank_pattern, alpha_pattern) or,
//! without it, diffusers' default lora_alpha = r; text-encoder modules under transformers 5's
//! names (PEFT's and `convert_state_dict_to_kohya`'s); and `lora convert` keeping the scale.
// See: issue 26, items 3 and 4 (../shared/research/interop-2026.md, points 3 and 4).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::util::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/transformers5")
        .join(name)
}

fn goldens() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("goldens.json")).unwrap()).unwrap()
}

/// The patched weights before the LoRA, as the script sets them: exact in f32.
fn base_at(i: usize, j: usize) -> f32 {
    ((i as i64 * 7919 + j as i64 * 104729) % 2001 - 1000) as f32 / 1024.0
}

fn base_weight(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|e| base_at(e / cols, e % cols))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A full-size SD1 holding only the patched keys (`synth --keys`, detected as SD1), each
/// set to the script's base weight, whose SHA-256 the goldens pin.
fn base_model(dir: &Dir, modules: &serde_json::Map<String, serde_json::Value>) -> PathBuf {
    let keys: Vec<String> = modules
        .values()
        .map(|m| m["key"].as_str().unwrap().to_string())
        .collect();
    let pattern = keys
        .iter()
        .map(|k| regex::escape(k))
        .collect::<Vec<_>>()
        .join("|");
    let synth = dir.path("sd1-part.safetensors");
    run_ok(&[
        "synth",
        "model",
        "-q",
        "--arch",
        "sd1",
        "--dtype",
        "f32",
        "--keys",
        &pattern,
        s(&synth),
    ]);
    let base = dir.path("sd1-base.safetensors");
    rewrite(&synth, &base, |ts| {
        assert_eq!(ts.len(), keys.len(), "synth --keys");
        for t in ts.iter_mut() {
            let m = modules
                .values()
                .find(|m| m["key"] == t.name.as_str())
                .unwrap();
            let w = base_weight(t.shape[0], t.shape[1]);
            let sha: String = sha2::Sha256::digest(f32_bytes(&w))
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(sha, m["base_sha256"].as_str().unwrap(), "{}", t.name);
            t.data = f32_bytes(&w);
        }
    });
    base
}

/// `lora` baked into `base` at strength 1, as its tensors.
fn baked(dir: &Dir, base: &Path, lora: &Path, name: &str) -> BTreeMap<String, RefTensor> {
    reference_map(&bake(dir, base, lora, name))
}

/// The f32 spacing at magnitude `m`.
fn f32_step(m: f64) -> f64 {
    2f64.powi(m.abs().max(f32::MIN_POSITIVE as f64).log2().floor() as i32 - 23)
}

/// A module's factors as the PEFT fixture holds them (every file here carries the same
/// ones): B (rows × r) and A (r × cols).
struct Factors {
    b: Vec<f64>,
    a: Vec<f64>,
    r: usize,
    cols: usize,
}

fn factors(module: &str) -> Factors {
    let map = reference_map(&fixture("sd1-peft-meta.safetensors"));
    let a = &map[&format!("{module}.lora_A.weight")];
    let b = &map[&format!("{module}.lora_B.weight")];
    Factors {
        b: b.values.clone().unwrap(),
        a: a.values.clone().unwrap(),
        r: a.shape[0],
        cols: a.shape[1],
    }
}

/// The merged rows of `module` in `file`'s goldens (F32 in goldens.safetensors).
fn golden_rows(file: &str, module: &str) -> Vec<f64> {
    let stem = file.strip_suffix(".safetensors").unwrap();
    let map = reference_map(&fixture("goldens.safetensors"));
    map[&format!("{stem}/{module}.merged")]
        .values
        .clone()
        .unwrap()
}

/// Every golden row of every module of `file` against the baked model (`want_rows`: peft's
/// merged rows), and against W + s·B·A computed here in f64 from the fixture's factors (the
/// independent oracle). ckpt-diff sums in f64 and rounds once, so it is within one f32
/// step of the exact value; peft multiplies and adds in f32 (ΔW = s·(B·A) rounded, then W +
/// ΔW rounded), so it is within that arithmetic's error bound of it, and ckpt-diff within
/// the same bound of peft: (r+2)·2⁻²⁴·(|W| + s·Σₖ|Bᵢₖ·Aₖⱼ|) + one step of the result.
/// Returns the largest difference from peft in f32 steps at that magnitude.
fn assert_baked_as_peft(
    baked: &BTreeMap<String, RefTensor>,
    file: &str,
    modules: &serde_json::Map<String, serde_json::Value>,
    want_rows: impl Fn(&str) -> Vec<f64>,
) -> f64 {
    let mut worst = 0f64;
    for (module, g) in modules {
        let key = g["key"].as_str().unwrap();
        let scale = g["scale"].as_f64().unwrap();
        let f = factors(module);
        let t = &baked[key];
        let cols = t.shape[1];
        assert_eq!(cols, f.cols, "{module}");
        let got = t.values.as_ref().unwrap();
        let want = want_rows(module);
        let rows: Vec<usize> = g["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(want.len(), rows.len() * cols, "{module}");
        let mut changed = 0;
        for (i, &row) in rows.iter().enumerate() {
            for j in 0..cols {
                let w = base_at(row, j) as f64;
                let terms: Vec<f64> = (0..f.r)
                    .map(|k| scale * f.b[row * f.r + k] * f.a[k * cols + j])
                    .collect();
                let exact = w + terms.iter().sum::<f64>();
                let (ours, theirs) = (got[row * cols + j], want[i * cols + j]);
                assert!(
                    (ours - exact).abs() <= f32_step(exact),
                    "{file}: {module} [{row}, {j}]: ckpt-diff {ours} vs exact {exact}"
                );
                let magnitude = w.abs() + terms.iter().map(|t| t.abs()).sum::<f64>();
                let bound = (f.r + 2) as f64 * 2f64.powi(-24) * magnitude + f32_step(exact);
                assert!(
                    (ours - theirs).abs() <= bound,
                    "{file}: {module} [{row}, {j}]: ckpt-diff {ours} vs peft {theirs} \
                     (exact {exact})"
                );
                worst = worst.max((ours - theirs).abs() / f32_step(magnitude));
                changed += usize::from(ours != w);
            }
        }
        assert!(
            changed > rows.len() * cols / 2,
            "{file}: {module} barely changed"
        );
    }
    worst
}

/// ckpt-diff takes each module's scale from `lora_adapter_metadata` as peft does (r=4 and
/// lora_alpha=8: scale 2; `rank_pattern` r=2: scale 4; `alpha_pattern` α=2 by a name's end:
/// 0.5; a regular-expression key α=4: 1), and without metadata lora_alpha = r (scale 1, the
/// file as diffusers' SD training script saves it, its text encoder under
/// `.lora_linear_layer.`); `inspect` says where α comes from; the bake equals peft's merge
/// within one f32 step, every module's text-encoder name in transformers 5's form.
#[test]
fn test_diffusers_lora_metadata_scales_modules_as_peft_does() {
    let g = goldens();
    let dir = Dir::new();
    let meta = g["files"]["sd1-peft-meta.safetensors"].as_object().unwrap();
    let base = base_model(&dir, meta);
    for (file, from) in [
        ("sd1-peft-meta.safetensors", "metadata"),
        ("sd1-peft-plain.safetensors", "rank"),
    ] {
        let modules = g["files"][file].as_object().unwrap();
        let v = run_json(&["inspect", s(&fixture(file))]);
        assert_eq!(v["arch"], "sd1", "{file}");
        assert_eq!(v["unknown"], serde_json::json!([]), "{file}");
        let inspected = v["modules"].as_array().unwrap();
        assert_eq!(inspected.len(), modules.len(), "{file}");
        for (module, want) in modules {
            let m = inspected
                .iter()
                .find(|m| m["target"] == want["key"])
                .unwrap_or_else(|| panic!("{file}: nothing patches {}", want["key"]));
            assert_eq!(m["scale"], want["scale"], "{file}: {module}");
            assert_eq!(m["rank"], want["r"], "{file}: {module}");
            assert_eq!(m["alpha_from"], from, "{file}: {module}");
            assert_eq!(m["not_computed"], serde_json::Value::Null);
        }
        let text = run_ok(&["inspect", s(&fixture(file))]);
        assert_eq!(
            text.contains("5 of 5 modules from diffusers' lora_adapter_metadata"),
            from == "metadata",
            "{text}"
        );
        let baked = baked(&dir, &base, &fixture(file), file);
        let worst = assert_baked_as_peft(&baked, file, modules, |m| golden_rows(file, m));
        println!("{file}: ckpt-diff vs peft, largest difference {worst:.2} f32 steps");
    }
}

/// diffusers' `convert_state_dict_to_kohya` of a PEFT LoRA over a transformers-5 text
/// encoder: `lora_te1_encoder_layers_0_self_attn_q_proj` (`lora_te1_` for SD1's one encoder
/// too) and `lora_unet_down_blocks_0_..._to_q`, each `.alpha` = its rank (the metadata's
/// scale is not carried: the kohya file is diffusers' default, scale 1). Every module maps
/// to the key the PEFT name patches, and bakes as the file without metadata does.
#[test]
fn test_kohya_names_of_transformers5_text_encoders_map() {
    let g = goldens();
    let dir = Dir::new();
    let plain = g["files"]["sd1-peft-plain.safetensors"]
        .as_object()
        .unwrap();
    let file = fixture("sd1-kohya-from-peft.safetensors");
    let v = run_json(&["inspect", s(&file)]);
    assert_eq!(v["unknown"], serde_json::json!([]), "{v}");
    let stems: Vec<&str> = column(&v["modules"], "stem");
    assert!(
        stems.contains(&"lora_te1_encoder_layers_0_self_attn_q_proj"),
        "{stems:?}"
    );
    for want in plain.values() {
        let m = v["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["target"] == want["key"])
            .unwrap_or_else(|| panic!("nothing patches {}", want["key"]));
        assert_eq!(m["alpha_from"], "tensor");
        assert_eq!(m["scale"], 1.0);
    }
    let base = base_model(&dir, plain);
    let baked = baked(&dir, &base, &file, "kohya");
    assert_baked_as_peft(&baked, "sd1-kohya-from-peft", plain, |m| {
        golden_rows("sd1-peft-plain.safetensors", m)
    });
}

/// A Python with diffusers and peft: the golden environment's, if it was made here.
fn diffusers_python() -> Option<String> {
    let py = format!(
        "{}/target/golden-venv/bin/python",
        env!("CARGO_MANIFEST_DIR")
    );
    std::process::Command::new(&py)
        .args(["-c", "import diffusers, peft, transformers, torch"])
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(py)
}

/// `lora convert` keeps every module's metadata scale: `--to kohya` writes `.alpha` =
/// scale·rank, `--to peft` folds the scale into `lora_B` and writes `lora_adapter_metadata`
/// giving each module its rank and scale 1 (text-encoder names without `text_model.`, which
/// match under both transformers namings). Both bake as peft merges the original; and
/// diffusers itself, where the golden environment is, applies the PEFT output as it applies
/// the original.
#[test]
fn test_lora_convert_keeps_the_scale_diffusers_applies() {
    let g = goldens();
    let name = "sd1-peft-meta.safetensors";
    let modules = g["files"][name].as_object().unwrap();
    let dir = Dir::new();
    let base = base_model(&dir, modules);
    let kohya = dir.path("to-kohya.safetensors");
    let peft = dir.path("to-peft.safetensors");
    for (to, out) in [("kohya", &kohya), ("peft", &peft)] {
        run_ok(&[
            "lora",
            "convert",
            s(&fixture(name)),
            "--to",
            to,
            "-o",
            s(out),
            "--dtype",
            "f32",
            "-q",
        ]);
        let baked = baked(&dir, &base, out, to);
        assert_baked_as_peft(&baked, name, modules, |m| golden_rows(name, m));
    }
    // kohya: alpha / rank is the golden scale.
    let (tensors, _) = read_raw(&kohya);
    let v = run_json(&["inspect", s(&kohya)]);
    for want in modules.values() {
        let m = find_row(&v["modules"], "target", &want["key"]);
        assert_eq!(m["alpha_from"], "tensor");
        let scale = m["scale"].as_f64().unwrap();
        assert!(
            (scale - want["scale"].as_f64().unwrap()).abs() < 1e-12,
            "{m}"
        );
    }
    assert!(tensors.iter().any(|t| t.name.ends_with(".alpha")));
    // peft: the metadata's rank for each module and scale 1; names as the reader writes them.
    let (_, meta) = read_raw(&peft);
    let json: serde_json::Value = serde_json::from_str(
        &meta
            .iter()
            .find(|(k, _)| k == "lora_adapter_metadata")
            .expect("lora_adapter_metadata written")
            .1,
    )
    .unwrap();
    assert_eq!(json["unet.r"], 4, "{json}");
    assert_eq!(json["unet.lora_alpha"], 4, "{json}");
    assert_eq!(
        json["unet.rank_pattern"],
        serde_json::json!({
            r"down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn1\.to_k": 2
        })
    );
    assert_eq!(json["unet.alpha_pattern"], json["unet.rank_pattern"]);
    assert_eq!(
        json["text_encoder.target_modules"],
        serde_json::json!([
            "encoder.layers.0.self_attn.k_proj",
            "encoder.layers.0.self_attn.q_proj"
        ])
    );
    let v = run_json(&["inspect", s(&peft)]);
    for m in v["modules"].as_array().unwrap() {
        assert_eq!(
            (&m["alpha_from"], &m["scale"]),
            (&"metadata".into(), &1.0.into()),
            "{m}"
        );
    }
    // diffusers' own reading of the PEFT output.
    let Some(py) = diffusers_python() else {
        say_skipped(
            "test_lora_convert_keeps_the_scale_diffusers_applies: diffusers applying the \
             converted file (no target/golden-venv with diffusers and peft; \
             fixtures/README.md says how to make it)",
        );
        return;
    };
    let script = fixture("make_fixtures.py");
    let out = std::process::Command::new(&py)
        .args([s(&script), "apply", s(&peft)])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let baked = baked(&dir, &base, &peft, "peft-again");
    let mut flat: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
    for (module, a) in applied.as_object().unwrap() {
        // The converted file names the text encoder with `text_model.`; diffusers drops it
        // for a transformers-5 model, which is what the script loads into.
        let want = &modules[module];
        assert_eq!(a["key"], want["key"], "{module}");
        assert_eq!(
            a["scale"], 1.0,
            "{module}: diffusers' scale of the converted file"
        );
        assert_eq!(a["r"], want["r"], "{module}");
        // The oracle's factors are the original ones: B·s folded, scale 1, is s·B·A.
        let mut a = a.clone();
        a["scale"] = want["scale"].clone();
        flat.insert(module.clone(), a);
    }
    assert_eq!(flat.len(), modules.len());
    assert_baked_as_peft(&baked, "to-peft (diffusers)", &flat, |m| {
        flat[m]["merged"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    });
}
