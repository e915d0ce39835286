//! Diffusers folders and sharded models read as one checkpoint. The folders are built from
//! generated single-file twins with the key table that sd-mecha's own conversion functions
//! produced (fixtures/diffusers/mapping.json, by fixtures/diffusers/make_mapping.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::util::{Dir, RawTensor, read_raw, run_json, run_ok, s, words, write_raw};

fn mapping() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/diffusers/mapping.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn element_size(dtype: &str) -> usize {
    match dtype {
        "F16" | "BF16" => 2,
        "F32" | "I32" => 4,
        "I64" | "F64" => 8,
        other => panic!("{other}"),
    }
}

/// Writes `twin` as a diffusers folder in `dir`, as the table says each key is kept.
fn diffusers_folder(twin: &Path, table: &serde_json::Value, dir: &Path) {
    let (tensors, _) = read_raw(twin);
    let mut parts: BTreeMap<String, Vec<RawTensor>> = BTreeMap::new();
    for t in tensors {
        let e = &table[&t.name];
        assert!(
            !e.is_null(),
            "the table has no diffusers name for {}",
            t.name
        );
        let names: Vec<String> = e["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        let part = parts
            .entry(e["component"].as_str().unwrap().to_string())
            .or_default();
        if names.len() == 3 {
            // Fused q, k, v: split into thirds along the first axis.
            let mut shape = t.shape.clone();
            shape[0] /= 3;
            let third = t.data.len() / 3;
            for (i, n) in names.iter().enumerate() {
                part.push(RawTensor {
                    name: n.clone(),
                    dtype: t.dtype.clone(),
                    shape: shape.clone(),
                    data: t.data[i * third..(i + 1) * third].to_vec(),
                });
            }
            continue;
        }
        let (shape, data) = if e["transpose"] == true {
            let (r, c) = (t.shape[0], t.shape[1]);
            let es = element_size(&t.dtype);
            let mut data = vec![0u8; t.data.len()];
            for i in 0..r {
                for j in 0..c {
                    let from = (i * c + j) * es;
                    let to = (j * r + i) * es;
                    data[to..to + es].copy_from_slice(&t.data[from..from + es]);
                }
            }
            (vec![c, r], data)
        } else if e["squeeze"] == true {
            (t.shape[..2].to_vec(), t.data.clone())
        } else {
            (t.shape.clone(), t.data.clone())
        };
        part.push(RawTensor {
            name: names[0].clone(),
            dtype: t.dtype,
            shape,
            data,
        });
    }
    for (component, tensors) in &parts {
        let folder = dir.join(component);
        std::fs::create_dir_all(&folder).unwrap();
        let file = if component.starts_with("text_encoder") {
            "model.safetensors"
        } else {
            "diffusion_pytorch_model.safetensors"
        };
        write_raw(&folder.join(file), tensors, &[], 0);
    }
    std::fs::write(
        dir.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.30.0"}"#,
    )
    .unwrap();
}

fn twin(dir: &Dir, arch: &str) -> PathBuf {
    let p = dir.path(&format!("{arch}.safetensors"));
    run_ok(&words(
        "synth model -q --arch {} --scale 32 --seed 4 {}",
        &[arch, s(&p)],
    ));
    p
}

fn assert_same_model(read: &Path, twin: &Path) {
    // sim: 100% on every row, nothing on one side only.
    let v = run_json(&["sim", s(read), s(twin)]);
    for row in v["rows"].as_array().unwrap() {
        let sim = row["similarity"].as_f64().unwrap();
        assert!(sim > 1.0 - 1e-12, "{}: {sim}", row["label"]);
    }
    for k in [
        "only_in_a",
        "only_in_b",
        "shape_mismatch",
        "integer_different",
    ] {
        assert_eq!(v["notes"][k], serde_json::json!([]), "{k}");
    }
    // Component hashes equal.
    let comps =
        |p: &Path| run_json(&["hash", "--components", s(p)])["files"][0]["components"].clone();
    assert_eq!(comps(read), comps(twin));
    // convert writes the twin's tensors, byte for byte.
    let out = twin.with_extension("converted.safetensors");
    run_ok(&["convert", s(read), "-o", s(&out), "-q", "-f"]);
    let (a, _) = read_raw(&out);
    let (b, _) = read_raw(twin);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.name, &x.dtype, &x.shape), (&y.name, &y.dtype, &y.shape));
        assert!(x.data == y.data, "{}", x.name);
    }
}

#[test]
fn test_diffusers_folders_read_as_their_single_file_twins() {
    let table = mapping();
    let dir = Dir::new();
    for arch in ["sdxl", "sd1"] {
        let twin = twin(&dir, arch);
        let folder = dir.path(&format!("{arch}-diffusers"));
        diffusers_folder(&twin, &table[arch], &folder);
        let v = run_json(&["inspect", s(&folder)]);
        assert_eq!(v["container"], "diffusers");
        assert_eq!(v["arch"]["id"], arch);
        let notes = v["assembled"].to_string();
        assert!(!notes.contains("left out"), "{arch}: {notes}");
        assert_same_model(&folder, &twin);
    }
}

#[test]
fn test_sharded_models_read_as_one_file() {
    let dir = Dir::new();
    let twin = twin(&dir, "sd1");
    let (tensors, _) = read_raw(&twin);
    let folder = dir.path("sharded");
    std::fs::create_dir_all(&folder).unwrap();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in tensors.chunks(tensors.len() / 3 + 1).enumerate() {
        let name = format!("model-{:05}-of-00003.safetensors", i + 1);
        write_raw(&folder.join(&name), chunk, &[], 0);
        for t in chunk {
            weight_map.insert(t.name.clone(), name.clone().into());
        }
    }
    let index = folder.join("model.safetensors.index.json");
    std::fs::write(
        &index,
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    // The index, or the folder holding it.
    assert_same_model(&index, &twin);
    let v = run_json(&["inspect", s(&folder)]);
    assert_eq!(v["container"], "sharded");
    // A part that is missing is an error naming it.
    std::fs::remove_file(folder.join("model-00002-of-00003.safetensors")).unwrap();
    let (code, _, err) = crate::util::run_code(&["inspect", s(&index)]);
    assert_eq!(code, 2);
    assert!(err.contains("model-00002-of-00003.safetensors"), "{err}");
}
