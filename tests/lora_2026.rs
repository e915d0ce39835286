//! LoRAs for the 2026 models in the dialects their trainers write (`fixtures/lora-2026/`:
//! the keys and shapes of a rank-16 LoRA over every module musubi-tuner, ai-toolkit and
//! diffusers/PEFT target, from `../shared/archs/lora-2026/`): each is taken for its own family,
//! never Flux.1's (whose module names Qwen-Image's diffusers names and FLUX.2's BFL names
//! also are), and every module patches the tensor (and rows) it trains.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::util::*;

/// A LoRA file with the keys and shapes of a fixture list, its data zeros (sparse: written
/// instantly whatever its size).
fn sparse_lora(d: &Dir, list: &str) -> PathBuf {
    sparse_lora_of(d, list, &list_rows(list))
}

/// (key, shape, dtype) of a fixtures/lora-2026 list.
fn list_rows(list: &str) -> Vec<(String, Vec<usize>, String)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/lora-2026/{list}.tsv")),
    )
    .unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let shape: Vec<usize> = serde_json::from_str(cols[1]).unwrap();
            (cols[0].to_string(), shape, cols[2].to_string())
        })
        .collect()
}

/// A sparse (zero) LoRA file of these tensors.
fn sparse_lora_of(d: &Dir, name: &str, rows: &[(String, Vec<usize>, String)]) -> PathBuf {
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for (key, shape, dtype) in rows {
        let size = match dtype.as_str() {
            "F32" => 4,
            _ => 2,
        };
        let bytes = shape.iter().product::<usize>() * size;
        header.insert(
            key.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + bytes]}),
        );
        at += bytes;
    }
    let text = serde_json::Value::Object(header).to_string();
    let path = d.path(&format!("{name}.safetensors"));
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.set_len((8 + text.len() + at) as u64).unwrap();
    path
}

#[test]
fn every_dialect_is_read_for_its_own_family() {
    let d = Dir::new();
    let cases = [
        ("z-image.musubi", "z-image", 210),
        ("z-image.aitk", "z-image", 210),
        ("z-image.peft", "z-image", 210),
        ("qwen-image.musubi", "qwen-image", 720),
        ("qwen-image.aitk", "qwen-image", 720),
        ("qwen-image.peft", "qwen-image", 720),
        ("flux2-klein-4b.musubi", "flux2-klein-4b", 80),
        ("flux2-klein-4b.aitk", "flux2-klein-4b", 80),
        ("flux2-klein-4b.peft", "flux2-klein-4b", 100),
    ];
    for (list, arch, modules) in cases {
        let lora = sparse_lora(&d, list);
        let r = run_json(&["inspect", s(&lora)]);
        assert_eq!(r["arch"], arch, "{list}");
        let m = r["modules"].as_array().unwrap();
        assert_eq!(m.len(), modules, "{list}");
        assert_eq!(r["unknown"], serde_json::json!([]), "{list}");
        for module in m {
            let stem = module["stem"].as_str().unwrap();
            let target = module["target"]
                .as_str()
                .unwrap_or_else(|| panic!("{list}: {stem}"));
            assert!(
                target.starts_with("model.diffusion_model."),
                "{list}: {stem}"
            );
            assert!(module["block"].is_string(), "{list}: {stem} has no block");
            // Z-Image's trainers split the fused q/k/v: each a third of `attention.qkv`.
            for (i, part) in ["to_q", "to_k", "to_v"].iter().enumerate() {
                if arch == "z-image"
                    && (stem.ends_with(part) || stem.ends_with(&format!("_{part}")))
                {
                    assert!(target.ends_with("attention.qkv.weight"), "{list}: {stem}");
                    assert_eq!(
                        module["rows"],
                        serde_json::json!({"Third": i}),
                        "{list}: {stem}"
                    );
                }
            }
            // FLUX.2's PEFT names for a single block's fused projection are `linear1` whole.
            if stem.ends_with("to_qkv_mlp_proj") {
                assert!(target.ends_with("linear1.weight"), "{list}: {stem}");
                assert!(module["rows"].is_null(), "{list}: {stem}");
            }
        }
    }
}

/// The same module names at other widths are another family: a klein 4B LoRA is not Flux.1's
/// (its MLPs are wider), and a LoRA extracted from a generated (scaled-down) FLUX.2 klein or
/// Qwen-Image model is read for its own family at that scale.
#[test]
fn shapes_decide_between_families_that_share_names() {
    let d = Dir::new();
    for arch in ["flux2-klein-4b", "qwen-image", "z-image"] {
        let dir = d.path(arch);
        run_ok(&[
            "synth",
            "family",
            "-q",
            "--arch",
            arch,
            "--scale",
            "16",
            s(&dir),
        ]);
        let lora = d.path(&format!("{arch}-r4.safetensors"));
        run_ok(&[
            "lora",
            "extract",
            s(&dir.join("ft1.safetensors")),
            "--base",
            s(&dir.join("base.safetensors")),
            "--rank",
            "4",
            "-o",
            s(&lora),
            "-q",
        ]);
        let r = run_json(&["inspect", s(&lora)]);
        assert_eq!(r["arch"], arch);
        assert_eq!(r["unknown"], serde_json::json!([]), "{arch}");
        // The modules musubi-tuner's networks train: no modulation layer.
        for m in r["modules"].as_array().unwrap() {
            let stem = m["stem"].as_str().unwrap();
            assert!(
                !stem.contains("_mod_") && !stem.contains("modulation"),
                "{arch}: {stem}"
            );
        }
    }
}

/// The module names of a LoRA file (its tensors' names without their factor suffixes).
fn module_names(path: &Path) -> std::collections::BTreeSet<String> {
    let (tensors, _) = read_raw(path);
    tensors
        .iter()
        .filter_map(|t| {
            [
                ".lora_A.weight",
                ".lora_B.weight",
                ".lora_down.weight",
                ".lora_up.weight",
                ".alpha",
            ]
            .iter()
            .find_map(|suffix| t.name.strip_suffix(suffix))
            .map(str::to_string)
        })
        .collect()
}

/// `lora convert --to peft` of each trainer's list writes exactly the modules the facts'
/// PEFT list names (Z-Image's `to_out.0`, klein's split q/k/v), and back to kohya and to
/// PEFT again the same names.
#[test]
fn convert_to_peft_writes_the_names_peft_writes() {
    let d = Dir::new();
    for family in ["z-image", "qwen-image", "flux2-klein-4b"] {
        let want = module_names(&sparse_lora(&d, &format!("{family}.peft")));
        for dialect in ["musubi", "aitk"] {
            let input = sparse_lora(&d, &format!("{family}.{dialect}"));
            let peft = d.path(&format!("{family}.{dialect}.to-peft.safetensors"));
            run_ok(&[
                "lora",
                "convert",
                s(&input),
                "--to",
                "peft",
                "-o",
                s(&peft),
                "-q",
            ]);
            assert_eq!(module_names(&peft), want, "{family} {dialect} -> peft");
            let kohya = d.path(&format!("{family}.{dialect}.to-kohya.safetensors"));
            run_ok(&[
                "lora",
                "convert",
                s(&peft),
                "--to",
                "kohya",
                "-o",
                s(&kohya),
                "-q",
            ]);
            let again = d.path(&format!("{family}.{dialect}.again.safetensors"));
            run_ok(&[
                "lora",
                "convert",
                s(&kohya),
                "--to",
                "peft",
                "-o",
                s(&again),
                "-q",
            ]);
            assert_eq!(module_names(&again), want, "{family} {dialect} round trip");
        }
    }
}

/// musubi-tuner's Z-Image converter (`convert_z_image_lora_to_comfy.py`) fuses a LoRA's
/// split q/k/v into ComfyUI's `attention_qkv` by stacking the downs, placing the ups
/// block-diagonally and multiplying alpha by 3 (the rank is 3 times larger): that fused
/// module bakes the same change as the split ones it came from.
#[test]
fn musubi_fused_qkv_bakes_as_its_split_modules() {
    let d = Dir::new();
    let base = d.path("base.safetensors");
    run_ok(&[
        "synth",
        "model",
        "-q",
        "--arch",
        "z-image",
        "--scale",
        "32",
        "--dtype",
        "f32",
        s(&base),
    ]);
    let (dim, rank, alpha) = (120usize, 4usize, 8.0f32);
    let value = |seed: usize, i: usize| ((i * 7 + seed * 5) % 13) as f32 / 50.0 - 0.12;
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let tensor = |name: String, shape: Vec<usize>, data: Vec<u8>| RawTensor {
        name,
        dtype: "F32".into(),
        shape,
        data,
    };
    let stem = "lora_unet_layers_0_attention_";
    let downs: Vec<Vec<f32>> = (0..3)
        .map(|p| (0..rank * dim).map(|i| value(p, i)).collect())
        .collect();
    let ups: Vec<Vec<f32>> = (0..3)
        .map(|p| (0..dim * rank).map(|i| value(p + 3, i)).collect())
        .collect();
    let mut split = Vec::new();
    for (p, part) in ["to_q", "to_k", "to_v"].iter().enumerate() {
        split.push(tensor(
            format!("{stem}{part}.lora_down.weight"),
            vec![rank, dim],
            f32s(&downs[p]),
        ));
        split.push(tensor(
            format!("{stem}{part}.lora_up.weight"),
            vec![dim, rank],
            f32s(&ups[p]),
        ));
        split.push(tensor(
            format!("{stem}{part}.alpha"),
            vec![],
            f32s(&[alpha]),
        ));
    }
    let down: Vec<f32> = downs.concat();
    let mut up = vec![0f32; 3 * dim * 3 * rank];
    for p in 0..3 {
        for o in 0..dim {
            for r in 0..rank {
                up[(p * dim + o) * 3 * rank + p * rank + r] = ups[p][o * rank + r];
            }
        }
    }
    let fused = vec![
        tensor(
            format!("{stem}qkv.lora_down.weight"),
            vec![3 * rank, dim],
            f32s(&down),
        ),
        tensor(
            format!("{stem}qkv.lora_up.weight"),
            vec![3 * dim, 3 * rank],
            f32s(&up),
        ),
        tensor(format!("{stem}qkv.alpha"), vec![], f32s(&[alpha * 3.0])),
    ];
    let mut baked = Vec::new();
    for (name, tensors) in [("split", split), ("fused", fused)] {
        let lora = d.path(&format!("{name}.safetensors"));
        write_raw(&lora, &tensors, &[], 0);
        baked.push(reference_map(&bake(&d, &base, &lora, name)));
    }
    let key = "model.diffusion_model.layers.0.attention.qkv.weight";
    let before = reference_map(&base);
    let (a, b, w) = (&baked[0][key], &baked[1][key], &before[key]);
    let (a, b, w) = (
        a.values.as_ref().unwrap(),
        b.values.as_ref().unwrap(),
        w.values.as_ref().unwrap(),
    );
    assert!(
        a.iter().zip(w).any(|(x, y)| x != y),
        "the split LoRA changed the layer"
    );
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-6 * (1.0 + x.abs()),
            "qkv[{i}]: split {x}, fused {y}"
        );
    }
}

/// SimpleTuner's LyCORIS files name a module `lycoris_` + its diffusers path with `_`
/// (`lora_down`/`lora_up`/`alpha`), as ComfyUI reads them: each family's PEFT list renamed so
/// is read for the same family, every module onto the same tensor and rows as its PEFT name.
#[test]
fn lycoris_names_are_read_as_the_peft_names() {
    let d = Dir::new();
    for family in ["z-image", "qwen-image", "flux2-klein-4b"] {
        let peft = list_rows(&format!("{family}.peft"));
        let mut stems = std::collections::BTreeSet::new();
        let mut lycoris: Vec<(String, Vec<usize>, String)> = peft
            .iter()
            .map(|(key, shape, dtype)| {
                let path = key.strip_prefix("transformer.").unwrap();
                let (module, factor) = path
                    .strip_suffix(".lora_A.weight")
                    .map(|m| (m, "lora_down"))
                    .or_else(|| path.strip_suffix(".lora_B.weight").map(|m| (m, "lora_up")))
                    .unwrap();
                let stem = format!("lycoris_{}", module.replace('.', "_"));
                stems.insert(stem.clone());
                (
                    format!("{stem}.{factor}.weight"),
                    shape.clone(),
                    dtype.clone(),
                )
            })
            .collect();
        for stem in &stems {
            lycoris.push((format!("{stem}.alpha"), vec![], "F32".into()));
        }
        let targets = |p: &Path| -> Vec<(String, serde_json::Value)> {
            let r = run_json(&["inspect", s(p)]);
            assert_eq!(r["arch"], family, "{}", p.display());
            assert_eq!(r["unknown"], serde_json::json!([]), "{}", p.display());
            let mut t: Vec<(String, serde_json::Value)> = r["modules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m["target"].as_str().unwrap().to_string(), m["rows"].clone()))
                .collect();
            t.sort_by(|a, b| (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string())));
            t
        };
        let want = targets(&sparse_lora(&d, &format!("{family}.peft")));
        let got = targets(&sparse_lora_of(&d, &format!("{family}.lycoris"), &lycoris));
        assert_eq!(got.len(), stems.len(), "{family}");
        assert_eq!(got, want, "{family}");
    }
}
