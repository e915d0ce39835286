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
    diffusers_folder_named(twin, table, dir, |_, n| n.to_string());
}

/// [`diffusers_folder`] with each tensor's name in a component folder as `name(component,
/// table's name)` gives it.
fn diffusers_folder_named(
    twin: &Path,
    table: &serde_json::Value,
    dir: &Path,
    name: impl Fn(&str, &str) -> String,
) {
    let (tensors, _) = read_raw(twin);
    let mut parts: BTreeMap<String, Vec<RawTensor>> = BTreeMap::new();
    for t in tensors {
        let e = &table[&t.name];
        assert!(
            !e.is_null(),
            "the table has no diffusers name for {}",
            t.name
        );
        let component = e["component"].as_str().unwrap();
        let names: Vec<String> = e["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| name(component, n.as_str().unwrap()))
            .collect();
        let part = parts.entry(component.to_string()).or_default();
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

/// transformers 5 saves `CLIPTextModel` without the `text_model.` level
/// (`encoder.layers.0.self_attn.q_proj.weight`); fixtures/transformers5/keys.json holds the
/// names both versions write for the same tiny model (made by
/// fixtures/transformers5/make_fixtures.py).
fn transformers5_keys() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/transformers5/keys.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The prefix transformers 5 leaves out of `class`'s names where transformers 4 writes it
/// ("" when both write the same), read off the two key lists: every transformers-4 key must
/// be a transformers-5 key with that prefix, the same shape.
fn dropped_prefix(keys: &serde_json::Value, class: &str) -> String {
    let v4 = keys["transformers4"][class].as_object().unwrap();
    let v5 = keys["transformers5"][class].as_object().unwrap();
    assert_eq!(v4.len(), v5.len(), "{class}");
    let norm = v5
        .keys()
        .find(|k| k.ends_with("final_layer_norm.weight"))
        .unwrap();
    let old = v4
        .keys()
        .find(|k| k.ends_with("final_layer_norm.weight"))
        .unwrap();
    let prefix = old[..old.len() - norm.len()].to_string();
    for (k, shape) in v4 {
        let k5 = k.strip_prefix(prefix.as_str()).unwrap_or(k);
        assert_eq!(v5.get(k5), Some(shape), "{class}: {k} under transformers 5");
    }
    prefix
}

/// A transformers-4 name of `class` as transformers 5 saves it.
fn as_transformers5(keys: &serde_json::Value, class: &str, name: &str) -> String {
    let prefix = dropped_prefix(keys, class);
    name.strip_prefix(prefix.as_str())
        .unwrap_or(name)
        .to_string()
}

/// SD2's folder table: the U-Net and VAE as SD1's (the same names, other widths), the text
/// encoder as SDXL's OpenCLIP one (`conditioner.embedders.1.model.` is SD2's
/// `cond_stage_model.model.`) without the projection, which SD2's `CLIPTextModel` has not.
fn sd2_table(m: &serde_json::Value) -> serde_json::Value {
    let mut t = serde_json::Map::new();
    for (k, e) in m["sd1"].as_object().unwrap() {
        if !k.starts_with("cond_stage_model.") {
            t.insert(k.clone(), e.clone());
        }
    }
    for (k, e) in m["sdxl"].as_object().unwrap() {
        if let Some(rest) = k.strip_prefix("conditioner.embedders.1.model.")
            && rest != "text_projection"
        {
            let mut e = e.clone();
            e["component"] = "text_encoder".into();
            t.insert(format!("cond_stage_model.model.{rest}"), e);
        }
    }
    t.into()
}

/// A folder whose text encoders transformers 5 wrote reads as the one transformers 4 wrote:
/// SD1 (CLIP-L), SD2 (OpenCLIP-H, told from SD1 by its 23 layers under either naming),
/// SDXL's two (`CLIPTextModelWithProjection` under both namings: transformers 5.25 still
/// saves it with the level, and a flattened one reads too). `sim` has every text-encoder row
/// at 100% and nothing on one side only; `convert` writes the twin byte for byte.
// See: issue 26, item 3 (../shared/research/interop-2026.md, point 2).
#[test]
fn test_transformers5_text_encoders_read_as_transformers4() {
    let table = mapping();
    let keys = transformers5_keys();
    let dir = Dir::new();
    for arch in ["sd1", "sd2", "sdxl"] {
        let mut twin = twin(&dir, arch);
        let t = if arch == "sd2" {
            // SD2's single file has a text projection its diffusers folder has not.
            let cut = dir.path("sd2-cut.safetensors");
            crate::util::rewrite(&twin, &cut, |ts| {
                ts.retain(|t| t.name != "cond_stage_model.model.text_projection")
            });
            twin = cut;
            sd2_table(&table)
        } else {
            table[arch].clone()
        };
        for flat_te2 in [false, true] {
            if flat_te2 && arch != "sdxl" {
                continue;
            }
            let folder = dir.path(&format!("{arch}-tf5-{flat_te2}"));
            diffusers_folder_named(&twin, &t, &folder, |component, name| {
                match component {
                    "text_encoder" => as_transformers5(&keys, "CLIPTextModel", name),
                    "text_encoder_2" if flat_te2 => {
                        // A projection model flattened as transformers 5 flattens CLIPTextModel.
                        as_transformers5(&keys, "CLIPTextModel", name)
                    }
                    "text_encoder_2" => {
                        as_transformers5(&keys, "CLIPTextModelWithProjection", name)
                    }
                    _ => name.to_string(),
                }
            });
            let (te, _) = read_raw(&folder.join("text_encoder/model.safetensors"));
            assert!(
                te.iter().all(|t| !t.name.starts_with("text_model.")),
                "{arch}: {}",
                te[0].name
            );
            let v = run_json(&["inspect", s(&folder)]);
            assert_eq!(v["container"], "diffusers");
            assert_eq!(v["arch"]["id"], arch);
            let notes = v["assembled"].to_string();
            assert!(!notes.contains("no rule maps"), "{arch}: {notes}");
            assert!(
                notes.contains("text_encoder/: transformers 5 names"),
                "{notes}"
            );
            let sim = run_json(&["sim", s(&folder), s(&twin)]);
            let labels = crate::util::column(&sim["rows"], "label");
            assert!(
                labels.iter().any(|l| l.starts_with("TE")),
                "{arch}: {labels:?}"
            );
            assert_same_model(&folder, &twin);
        }
    }
}

/// A tensor of a component folder that no rule maps is listed, every name, in `inspect`'s
/// notes, and every command that opens the folder warns about it on stderr.
// See: issue 26, items 3 and 5: `convert` and `fix` refuse to lose them without `--unmapped drop`.
#[test]
fn test_unmapped_folder_tensors_are_listed_loudly() {
    let table = mapping();
    let dir = Dir::new();
    let twin = twin(&dir, "sd1");
    let folder = dir.path("sd1-extra");
    diffusers_folder(&twin, &table["sd1"], &folder);
    let te = folder.join("text_encoder/model.safetensors");
    let (mut tensors, _) = read_raw(&te);
    for name in ["adapter.scale", "vision_model.pre_layrnorm.weight"] {
        tensors.push(RawTensor {
            name: name.into(),
            dtype: "F32".into(),
            shape: vec![2],
            data: vec![0; 8],
        });
    }
    write_raw(&te, &tensors, &[], 0);
    let v = run_json(&["inspect", s(&folder)]);
    let notes = v["assembled"].to_string();
    assert!(
        notes.contains(
            "text_encoder/ holds 2 tensors that no rule maps to a single-file name; no \
             command reads them: adapter.scale, vision_model.pre_layrnorm.weight"
        ),
        "{notes}"
    );
    // convert and fix refuse to lose them unless told to drop them.
    let out = dir.path("extra.safetensors");
    for cmd in ["convert", "fix"] {
        let (code, _, err) = crate::util::run_code(&[cmd, s(&folder), "-o", s(&out), "-q", "-f"]);
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(
            err.contains("--unmapped drop") && err.contains("adapter.scale"),
            "{err}"
        );
        assert!(!out.exists(), "{cmd} wrote an output");
    }
    let convert = |how: &str| {
        crate::util::run_code(&[
            "convert",
            s(&folder),
            "-o",
            s(&out),
            "-q",
            "-f",
            "--unmapped",
            how,
        ])
    };
    let (code, _, err) = convert("drop");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("WARNING") && err.contains("vision_model.pre_layrnorm.weight"),
        "{err}"
    );
    let dropped = read_raw(&out).0;
    assert!(!dropped.iter().any(|t| t.name.contains("adapter.scale")));
    // Kept: written unchanged under the folder's name.
    let (code, _, err) = convert("keep");
    assert_eq!(code, 0, "{err}");
    let kept = read_raw(&out).0;
    for name in [
        "text_encoder/adapter.scale",
        "text_encoder/vision_model.pre_layrnorm.weight",
    ] {
        let t = kept
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(
            (t.dtype.as_str(), &t.shape, &t.data),
            ("F32", &vec![2], &vec![0u8; 8])
        );
    }
    assert_eq!(kept.len(), dropped.len() + 2);
    let (_, _, err) = crate::util::run_code(&["sim", s(&folder), s(&twin)]);
    assert!(err.contains("adapter.scale"), "{err}");
}

/// Z-Image's diffusers name for a single-file key, by the renaming `z_image_to_diffusers`
/// states (written here independently of the catalog's rules): q/k/v split out of `qkv`
/// (`None`: split), `out` -> `to_out.0`, `q_norm`/`k_norm` -> `norm_q`/`norm_k`, the embedder
/// and final layer under `all_*.2-1`.
fn z_image_diffusers_name(key: &str) -> Option<String> {
    if key.contains(".attention.qkv.") {
        return None;
    }
    let n = key
        .replace(".attention.out.", ".attention.to_out.0.")
        .replace(".attention.q_norm.", ".attention.norm_q.")
        .replace(".attention.k_norm.", ".attention.norm_k.");
    Some(if let Some(rest) = n.strip_prefix("x_embedder.") {
        format!("all_x_embedder.2-1.{rest}")
    } else if let Some(rest) = n.strip_prefix("final_layer.") {
        format!("all_final_layer.2-1.{rest}")
    } else {
        n
    })
}

/// Z-Image and Qwen-Image diffusers folders (`transformer/` in diffusers' names) read as
/// their single-file twins. The folder's names are checked against the facts' list of
/// diffusers names (`../shared/archs/z-image.diffusers.tsv`, in the catalog's data).
#[test]
fn test_2026_diffusers_folders_read_as_their_single_file_twins() {
    let dir = Dir::new();
    let facts = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/z-image.diffusers.tsv"),
    )
    .unwrap();
    let mut want: Vec<String> = facts
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    want.sort();
    for arch in ["z-image", "qwen-image"] {
        let twin = dir.path(&format!("{arch}.safetensors"));
        run_ok(&[
            "synth",
            "model",
            "-q",
            "--arch",
            arch,
            "--scale",
            "32",
            "--bare",
            "--components",
            "diffuser",
            s(&twin),
        ]);
        let (tensors, _) = read_raw(&twin);
        let mut out = Vec::new();
        for t in tensors {
            let name = if arch == "z-image" {
                z_image_diffusers_name(&t.name)
            } else {
                Some(t.name.clone())
            };
            match name {
                Some(name) => out.push(RawTensor { name, ..t }),
                None => {
                    let third = t.data.len() / 3;
                    let mut shape = t.shape.clone();
                    shape[0] /= 3;
                    for (i, part) in ["to_q", "to_k", "to_v"].iter().enumerate() {
                        out.push(RawTensor {
                            name: t.name.replace(".qkv.", &format!(".{part}.")),
                            shape: shape.clone(),
                            data: t.data[i * third..(i + 1) * third].to_vec(),
                            ..t.clone()
                        });
                    }
                }
            }
        }
        if arch == "z-image" {
            let mut names: Vec<String> = out.iter().map(|t| t.name.clone()).collect();
            names.sort();
            assert_eq!(names, want, "the diffusers names of the facts");
        }
        let folder = dir.path(&format!("{arch}-diffusers"));
        std::fs::create_dir_all(folder.join("transformer")).unwrap();
        write_raw(
            &folder.join("transformer/diffusion_pytorch_model.safetensors"),
            &out,
            &[],
            0,
        );
        let v = run_json(&["inspect", s(&folder)]);
        assert_eq!(v["container"], "diffusers", "{arch}");
        assert_eq!(v["arch"]["id"], arch, "{arch}: {}", v["arch"]["summary"]);
        assert_eq!(v["arch"]["confidence"], "high", "{arch}");
        assert!(!v["assembled"].to_string().contains("left out"), "{arch}");
        // The same tensors as the twin under ComfyUI's prefix: sim finds them identical.
        let sim = run_json(&["sim", s(&folder), s(&twin)]);
        for row in sim["rows"].as_array().unwrap() {
            assert_eq!(row["similarity"].as_f64(), Some(1.0), "{arch}: {row}");
        }
    }
}
