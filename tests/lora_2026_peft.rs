//! PEFT LoRAs of the 2026 diffusion transformers as diffusers writes them, against what
//! diffusers and peft bake (`fixtures/lora-2026/`, made by `make_peft_goldens.py`): peft on
//! diffusers' own `ZImageTransformer2DModel`, `QwenImageTransformer2DModel` and
//! `Flux2Transformer2DModel` (klein 4B), each holding the base `synth` writes at 1/64 scale
//! (loaded through diffusers' single-file converters), saved by the family's
//! `save_lora_weights` (`transformer.` names, `lora_adapter_metadata` with r=4,
//! lora_alpha=8 and a regular-expression `target_modules`), loaded back by diffusers' path
//! and merged per layer (what `fuse_lora` and `merge_and_unload` do). The goldens name, per
//! module, the single-file tensor and rows diffusers' converter put under it (found from the
//! values), peft's scale, and the merged first and last rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::util::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/lora-2026")
        .join(name)
}

/// The f32 spacing at magnitude `m`.
fn f32_step(m: f64) -> f64 {
    2f64.powi(m.abs().max(f32::MIN_POSITIVE as f64).log2().floor() as i32 - 23)
}

/// The base the goldens were made on: `synth model --scale 64 --seed 1 --dtype f32 --bare`.
fn base(d: &Dir, arch: &str, scale: u64) -> PathBuf {
    let out = d.path(&format!("{arch}.base.safetensors"));
    run_ok(&[
        "synth",
        "model",
        s(&out),
        "-q",
        "--arch",
        arch,
        "--scale",
        &scale.to_string(),
        "--seed",
        "1",
        "--dtype",
        "f32",
        "--bare",
        "--components",
        "diffuser",
    ]);
    out
}

/// For each family: `inspect` reads the file as the family's, every module mapped (none
/// unknown) to the single-file tensor and rows diffusers holds it in, at peft's scale; the
/// bake changes exactly those tensors and equals peft's merge on the sampled rows within
/// peft's own f32 rounding (and ckpt-diff within one step of the exact f64 value).
#[test]
fn peft_loras_of_the_2026_models_bake_as_diffusers_merges_them() {
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("peft-goldens.json")).unwrap())
            .unwrap();
    let scale = g["scale"].as_u64().unwrap();
    let golden = reference_map(&fixture("peft-goldens.safetensors"));
    let d = Dir::new();
    for (arch, fam) in g["families"].as_object().unwrap() {
        let modules = fam["modules"].as_object().unwrap();
        let lora = fixture(fam["file"].as_str().unwrap());
        let base = base(&d, arch, scale);
        let base_raw = raw_map(&base);
        let base_map = reference_map(&base);

        // The base is the one the goldens were made on.
        for m in modules.values() {
            let key = m["key"].as_str().unwrap();
            let sha: String = sha2::Sha256::digest(&base_raw[key].data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(sha, m["base_sha256"].as_str().unwrap(), "{arch}: {key}");
        }

        // Every module read for this family, patching what diffusers holds it in.
        let r = run_json(&["inspect", s(&lora)]);
        assert_eq!(r["arch"], arch.as_str(), "{arch}");
        assert_eq!(r["unknown"], serde_json::json!([]), "{arch}");
        let read = r["modules"].as_array().unwrap();
        assert_eq!(read.len(), modules.len(), "{arch}");
        for module in read {
            let stem = module["stem"].as_str().unwrap();
            let m = &modules[stem];
            let key = m["key"].as_str().unwrap();
            assert_eq!(
                module["target"].as_str(),
                Some(format!("model.diffusion_model.{key}").as_str()),
                "{arch}: {stem}"
            );
            let (row0, n_rows) = (
                m["row0"].as_u64().unwrap() as usize,
                m["n_rows"].as_u64().unwrap() as usize,
            );
            let key_rows = base_map[key].shape[0];
            let rows = if n_rows == key_rows {
                serde_json::Value::Null
            } else {
                assert_eq!(key_rows, 3 * n_rows, "{arch}: {stem}");
                serde_json::json!({"Third": row0 / n_rows})
            };
            assert_eq!(module["rows"], rows, "{arch}: {stem} rows {row0}..");
            assert_eq!(module["rank"], m["r"], "{arch}: {stem}");
            assert_eq!(
                module["scale"].as_f64(),
                m["scale"].as_f64(),
                "{arch}: {stem}"
            );
            assert!(module["block"].is_string(), "{arch}: {stem}");
            assert!(module["not_computed"].is_null(), "{arch}: {stem}");
        }

        // The bake: the patched tensors only, each row as peft merges it.
        // `merge` writes the checkpoint's full names (`model.diffusion_model.` before each).
        let baked: BTreeMap<String, RefTensor> = reference_map(&bake(&d, &base, &lora, arch))
            .into_iter()
            .map(|(k, t)| {
                let bare = k.strip_prefix("model.diffusion_model.").unwrap_or_else(|| {
                    panic!("{arch}: {k}");
                });
                (bare.to_string(), t)
            })
            .collect();
        let factors = reference_map(&lora);
        let patched: BTreeSet<&str> = modules
            .values()
            .map(|m| m["key"].as_str().unwrap())
            .collect();
        assert_eq!(baked.len(), base_map.len(), "{arch}");
        for (key, t) in &base_map {
            if !patched.contains(key.as_str()) {
                assert_eq!(baked[key].values, t.values, "{arch}: {key} changed");
            }
        }
        let mut worst = 0f64;
        let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
        for (module, m) in modules {
            let key = m["key"].as_str().unwrap();
            let row0 = m["row0"].as_u64().unwrap() as usize;
            let s_ = m["scale"].as_f64().unwrap();
            let r = m["r"].as_u64().unwrap() as usize;
            *by_key.entry(key).or_default() += m["n_rows"].as_u64().unwrap() as usize;
            let a = &factors[&format!("{module}.lora_A.weight")];
            let b = &factors[&format!("{module}.lora_B.weight")];
            let (av, bv) = (a.values.as_ref().unwrap(), b.values.as_ref().unwrap());
            assert_eq!(a.shape[0], r, "{arch}: {module}");
            let cols = a.shape[1];
            let w = base_map[key].values.as_ref().unwrap();
            let got = baked[key].values.as_ref().unwrap();
            assert_eq!(baked[key].shape[1], cols, "{arch}: {module}");
            let want = golden[&format!("{arch}/{module}.merged")]
                .values
                .as_ref()
                .unwrap();
            for (i, row) in m["rows"].as_array().unwrap().iter().enumerate() {
                let row = row.as_u64().unwrap() as usize;
                let at = row0 + row;
                for j in 0..cols {
                    let w0 = w[at * cols + j];
                    let terms: Vec<f64> = (0..r)
                        .map(|k| s_ * bv[row * r + k] * av[k * cols + j])
                        .collect();
                    let exact = w0 + terms.iter().sum::<f64>();
                    let (ours, theirs) = (got[at * cols + j], want[i * cols + j]);
                    assert!(
                        (ours - exact).abs() <= f32_step(exact),
                        "{arch}: {module} [{at}, {j}]: ckpt-diff {ours} vs exact {exact}"
                    );
                    let magnitude = w0.abs() + terms.iter().map(|t| t.abs()).sum::<f64>();
                    let steps = (ours - theirs).abs() / f32_step(magnitude);
                    assert!(
                        steps <= 2.0,
                        "{arch}: {module} [{at}, {j}]: ckpt-diff {ours} vs peft {theirs} \
                         ({steps} f32 steps; exact {exact})"
                    );
                    worst = worst.max(steps);
                }
                assert_ne!(
                    &got[at * cols..(at + 1) * cols],
                    &w[at * cols..(at + 1) * cols],
                    "{arch}: {module} row {at} not patched"
                );
            }
        }
        // The modules cover each patched tensor's rows once (thirds of q/k/v, whole linear1).
        for (key, n) in by_key {
            assert_eq!(n, base_map[key].shape[0], "{arch}: {key}");
        }
        println!(
            "{arch}: {} modules, ckpt-diff vs peft: largest difference {worst:.2} f32 steps",
            modules.len()
        );
    }
}
