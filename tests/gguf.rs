//! GGUF files read exactly: every ggml type ckpt-diff reads against gguf-py 0.19.0's own
//! `gguf.quants.dequantize` of files its `GGUFWriter` wrote (`fixtures/gguf/`), city96's
//! reshaped tensors and stable-diffusion.cpp's KV-less files, through the one tensor view
//! and from the command line; and every way the container can be damaged refused with a
//! message and exit code 2, never a panic. See: issue #27.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt_core::pass::Slice;
use ckpt_read::gguf::{GgmlType, Value};
use ckpt_read::{Checkpoint, Dtype, Encoding};

use crate::util::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/gguf")
        .join(name)
}

/// gguf-py's float32 values, by `<file stem>/<tensor>`, in the logical shape.
fn goldens() -> BTreeMap<String, RefTensor> {
    read_reference(&fixture("goldens.safetensors"))
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
}

/// The goldens of one file, by tensor name.
fn goldens_of(stem: &str) -> BTreeMap<String, RefTensor> {
    let prefix = format!("{stem}/");
    goldens()
        .into_iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(&prefix)?.to_string(), t)))
        .collect()
}

/// `got` equals `want` bit for bit as float32 (every golden is an f32; ckpt-diff widens
/// its f32 results to f64 exactly).
fn assert_bits(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(*g as f32 as f64, *g, "{what}[{i}]: {g} is not an f32");
        assert_eq!(
            (*g as f32).to_bits(),
            (*w as f32).to_bits(),
            "{what}[{i}]: got {g}, gguf-py gives {w}"
        );
    }
}

/// Every tensor of `stem.gguf` decodes (whole, and in parts that start and end inside
/// blocks) to gguf-py's values, with its logical shape.
fn check_file(stem: &str) -> Checkpoint {
    let ckpt = Checkpoint::open(fixture(&format!("{stem}.gguf"))).unwrap();
    let want = goldens_of(stem);
    assert!(!want.is_empty(), "{stem}: no goldens");
    assert_eq!(ckpt.tensors().len(), want.len(), "{stem}: tensor count");
    for (name, w) in &want {
        let t = ckpt
            .get(name)
            .unwrap_or_else(|| panic!("{stem}: no tensor '{name}'"));
        assert_eq!(t.shape, w.shape, "{stem}/{name}: shape");
        let want = w.values.as_ref().unwrap();
        let mut got = vec![0.0; t.numel()];
        Slice::of(&ckpt, t).values_into(&mut got);
        assert_bits(&format!("{stem}/{name}"), &got, want);
        // Parts as the pass and visitors cut them: across block edges, one element, a part
        // of a part.
        let n = t.numel();
        let whole = Slice::of(&ckpt, t);
        let ranges = [
            (0, 1),
            (31, 33),
            (255, 257),
            (100, n.saturating_sub(100)),
            (n - 1, n),
        ];
        for (a, b) in ranges.into_iter().filter(|&(a, b)| a <= b && b <= n) {
            let mut v = vec![0.0; b - a];
            whole.part(a, b).values_into(&mut v);
            assert_bits(&format!("{stem}/{name}[{a}..{b}]"), &v, &want[a..b]);
        }
        if n < 610 {
            continue;
        }
        let inner = whole.part(40, n - 40).part(250, 530);
        let mut v = vec![0.0; 280];
        inner.values_into(&mut v);
        assert_bits(
            &format!("{stem}/{name} part of a part"),
            &v,
            &want[290..570],
        );
    }
    ckpt
}

#[test]
fn test_gguf_every_type_matches_gguf_py_bit_for_bit() {
    for ty in GgmlType::ALL {
        let stem = ty.name().to_lowercase();
        let ckpt = check_file(&stem);
        let info = ckpt.gguf().expect("GGUF provenance");
        assert_eq!(ckpt.provenance().id(), "gguf");
        assert_eq!(info.version, 3);
        assert_eq!(info.alignment, if ty == GgmlType::Q8_0 { 64 } else { 32 });
        for t in ckpt.tensors() {
            assert_eq!(info.ggml_type(&t.name), Some(ty), "{stem}/{}", t.name);
            assert!(t.is_float(), "{stem}/{}", t.name);
            let (dtype, encoding) = match ty {
                GgmlType::F32 => (Dtype::F32, Encoding::Plain),
                GgmlType::F16 => (Dtype::F16, Encoding::Plain),
                GgmlType::Bf16 => (Dtype::BF16, Encoding::Plain),
                q => (Dtype::U8, Encoding::Ggml(q)),
            };
            assert_eq!(
                (t.dtype, t.encoding),
                (dtype, encoding),
                "{stem}/{}",
                t.name
            );
            assert_eq!(Some(t.byte_len()), ty.bytes_for(t.numel()));
        }
    }
}

#[test]
fn test_gguf_city96_reshaped_tensors_read_in_their_original_shape() {
    let ckpt = check_file("city96");
    let conv = ckpt.get("input_blocks.1.0.in_layers.2.weight").unwrap();
    assert_eq!(conv.shape, [32, 8, 3, 3]);
    assert_eq!(conv.encoding, Encoding::Ggml(GgmlType::Q8_0));
    let skip = ckpt.get("input_blocks.1.0.skip_connection.weight").unwrap();
    assert_eq!(skip.shape, [20, 64, 1, 1]);
    assert_eq!(skip.dtype, Dtype::F16);
    assert_eq!(
        ckpt.get("middle_block.1.proj_in.weight").unwrap().shape,
        [16, 256]
    );
    let info = ckpt.gguf().unwrap();
    assert_eq!(info.architecture(), Some("sdxl"));
    assert_eq!(
        info.get("general.quantization_version"),
        Some(&Value::U32(2))
    );
    assert_eq!(
        info.get("comfy.gguf.orig_shape.input_blocks.1.0.in_layers.2.weight")
            .map(|v| v.to_string())
            .as_deref(),
        Some("[32, 8, 3, 3]")
    );
    // The stored shape stays in the tensor info.
    let ti = info.tensors.iter().find(|t| t.name == conv.name).unwrap();
    assert_eq!(ti.ne, [256, 9]);
}

#[test]
fn test_gguf_sdcpp_file_without_kvs_keeps_full_names() {
    let ckpt = check_file("sdcpp");
    let info = ckpt.gguf().unwrap();
    assert!(info.kvs.is_empty(), "{:?}", info.kvs);
    assert_eq!(info.architecture(), None);
    let conv = ckpt
        .get("model.diffusion_model.input_blocks.0.0.weight")
        .unwrap();
    assert_eq!(conv.shape, [32, 4, 3, 3]);
    assert!(ckpt.get("first_stage_model.decoder.conv_in.bias").is_some());
}

#[test]
fn test_gguf_inspect_and_convert_from_the_command_line() {
    let d = Dir::new();
    for stem in ["q4_k", "iq4_xs", "q5_0", "bf16", "city96", "sdcpp"] {
        let input = fixture(&format!("{stem}.gguf"));
        let report = run_json(&["inspect", s(&input)]);
        assert_eq!(report["container"], "gguf", "{stem}: {report}");
        let out = d.path(&format!("{stem}.safetensors"));
        run_ok(&["convert", s(&input), "-o", s(&out), "--dtype", "f32"]);
        // A bare U-Net (city96's names) is written under the single-file names.
        let got: BTreeMap<String, RefTensor> = read_reference(&out)
            .into_iter()
            .map(|t| {
                let name = match stem {
                    "city96" => t.name.strip_prefix("model.diffusion_model.").unwrap(),
                    _ => &t.name,
                };
                (name.to_string(), t)
            })
            .collect();
        let want = goldens_of(stem);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{stem}: names"
        );
        for (name, w) in &want {
            let g = &got[name];
            assert_eq!(g.shape, w.shape, "{stem}/{name}: shape");
            assert_bits(
                &format!("convert {stem}/{name}"),
                g.values.as_ref().unwrap(),
                w.values.as_ref().unwrap(),
            );
        }
    }
}

/// A GGUF file built field by field, for the damaged ones.
struct Gguf {
    version: u32,
    counts: Option<(u64, u64)>,
    kvs: Vec<u8>,
    n_kvs: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: usize,
}

fn gstring(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl Gguf {
    fn new() -> Gguf {
        Gguf {
            version: 3,
            counts: None,
            kvs: Vec::new(),
            n_kvs: 0,
            infos: Vec::new(),
            n_tensors: 0,
            data: 0,
        }
    }

    fn kv_u32(mut self, key: &str, v: u32) -> Gguf {
        self.kvs.extend(gstring(key));
        self.kvs.extend(4u32.to_le_bytes());
        self.kvs.extend(v.to_le_bytes());
        self.n_kvs += 1;
        self
    }

    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Gguf {
        self.infos.extend(gstring(name));
        self.infos.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    fn write(&self, d: &Dir, name: &str) -> PathBuf {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        let (t, k) = self.counts.unwrap_or((self.n_tensors, self.n_kvs));
        b.extend(t.to_le_bytes());
        b.extend(k.to_le_bytes());
        b.extend(&self.kvs);
        b.extend(&self.infos);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(vec![0x11; self.data]);
        let p = d.path(name);
        std::fs::write(&p, b).unwrap();
        p
    }
}

/// `inspect` and `convert` refuse the file with code 2, naming it and saying `needle`.
fn refused(p: &Path, needle: &str) {
    let d = Dir::new();
    let out_file = d.path("out.safetensors");
    for args in [
        vec!["inspect", s(p)],
        vec!["convert", s(p), "-o", s(&out_file)],
    ] {
        let (code, _, err) = run_code(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(p.file_name().unwrap().to_str().unwrap()),
            "{args:?} names the file: {err}"
        );
        assert!(err.contains(needle), "{args:?} says '{needle}': {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!out_file.exists());
}

#[test]
fn test_gguf_damaged_files_refused() {
    let d = Dir::new();
    // Truncated: the real file cut inside its data, then inside its header.
    let bytes = std::fs::read(fixture("q4_k.gguf")).unwrap();
    let p = d.path("cut-data.gguf");
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    refused(&p, "the file is truncated");
    let p = d.path("cut-header.gguf");
    std::fs::write(&p, &bytes[..60]).unwrap();
    refused(&p, "the file is truncated or damaged");

    let mut g = Gguf::new().tensor("a", &[32], 0, 0);
    g.data = 128;
    g.counts = Some((u64::MAX / 2, 0));
    refused(&g.write(&d, "huge-count.gguf"), "more than the");

    let mut g = Gguf::new()
        .kv_u32("general.alignment", 24)
        .tensor("a", &[32], 0, 0);
    g.data = 128;
    refused(&g.write(&d, "bad-alignment.gguf"), "power of two");

    let mut g = Gguf::new().tensor("a", &[32], 0, 8);
    g.data = 256;
    refused(
        &g.write(&d, "misaligned.gguf"),
        "not a multiple of the alignment",
    );

    let mut g = Gguf::new()
        .tensor("a", &[32], 0, 0)
        .tensor("b", &[32], 0, 64);
    g.data = 256;
    refused(&g.write(&d, "overlap.gguf"), "share bytes");

    let mut g = Gguf::new().tensor("a", &[256, 4], 16, 0);
    g.data = 4096;
    refused(&g.write(&d, "iq2.gguf"), "IQ2_XXS (16)");
    let (_, _, err) = run_code(&["inspect", s(&d.path("iq2.gguf"))]);
    assert!(err.contains("Q4_K"), "the hint lists the types read: {err}");

    let mut g = Gguf::new().tensor("a", &[32], 0, 0);
    g.data = 128;
    g.version = 1;
    refused(&g.write(&d, "v1.gguf"), "version 1");

    let mut g = Gguf::new()
        .tensor("a", &[32], 0, 0)
        .tensor("a", &[32], 0, 128);
    g.data = 256;
    refused(&g.write(&d, "dup.gguf"), "twice");
}

/// `inspect` reports a GGUF's container, the ggml type of each tensor (under its type's
/// name, not as bytes) and what each row costs in bits per weight, and lists its KVs.
#[test]
fn test_gguf_inspect_reports_types_and_bits_per_weight() {
    let p = fixture("city96.gguf");
    let j = run_json(&["inspect", s(&p)]);
    let g = &j["gguf"];
    assert_eq!(g["version"], 3);
    assert_eq!(g["alignment"], 32);
    assert_eq!(g["architecture"], "sdxl");
    assert_eq!(g["reshaped"], 2);
    // The types as gguf-py names them, counted from the file's own tensor infos.
    let ckpt = Checkpoint::open(&p).unwrap();
    let info = ckpt.gguf().unwrap();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for t in &info.tensors {
        *want.entry(t.ggml_type.name().to_string()).or_default() += 1;
    }
    let got: BTreeMap<String, u64> = g["types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(got, want);
    assert!(
        want.contains_key("Q4_K") && want.contains_key("Q8_0"),
        "{want:?}"
    );
    // Bits per weight of each row: its blocks' bytes over its elements, by the type sizes.
    let mut rows_bytes = 0u64;
    for row in g["rows"].as_array().unwrap() {
        let (bytes, params) = (
            row["bytes"].as_u64().unwrap(),
            row["params"].as_u64().unwrap(),
        );
        let bpw = row["bits_per_weight"].as_f64().unwrap();
        assert!(
            (bpw - bytes as f64 * 8.0 / params as f64).abs() < 1e-12,
            "{row}"
        );
        rows_bytes += bytes;
    }
    let expected: u64 = info
        .tensors
        .iter()
        .map(|t| {
            let n: u64 = t.ne.iter().product();
            (n / t.ggml_type.block_size() as u64) * t.ggml_type.type_size() as u64
        })
        .sum();
    assert_eq!(rows_bytes, expected);
    // The Q4_K tensor alone is a row at 4.5 bits per weight (144 bytes per 256 weights).
    assert!(
        g["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["types"]["Q4_K"] == 1 && r["bits_per_weight"] == 4.5),
        "{g}"
    );
    let dtypes: Vec<&str> = column(&j["dtypes"], "dtype");
    assert!(
        dtypes.contains(&"Q4_K") && !dtypes.contains(&"U8"),
        "{dtypes:?}"
    );
    let keys: Vec<&str> = column(&j["metadata"], "key");
    assert!(keys.contains(&"general.architecture"), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with("comfy.gguf.orig_shape.")),
        "{keys:?}"
    );
    assert_eq!(j["header_bytes"].as_u64().unwrap(), info.data_start);
}

/// `hash` of a GGUF: the whole-file hashes, and AutoV3 as Civitai's scanner computes it for
/// a file with no safetensors header (SHA-256 from byte 8), said so.
#[test]
fn test_gguf_hash_says_what_autov3_is() {
    use sha2::{Digest, Sha256};
    let p = fixture("q8_0.gguf");
    let bytes = std::fs::read(&p).unwrap();
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let j = run_json(&["hash", s(&p)]);
    let h = &j["files"][0]["hashes"];
    assert_eq!(j["files"][0]["container"], "gguf");
    assert_eq!(h["sha256"], hex(&Sha256::digest(&bytes)));
    assert_eq!(h["autov3"], hex(&Sha256::digest(&bytes[8..])));
    assert!(h["autov3_note"].as_str().unwrap().contains("byte 8"), "{h}");
}

/// `validate` says what a GGUF holds and does not call its F32 norms and mixed types a
/// defect (its writers keep them so), nor suggest storing its floats in one format.
#[test]
fn test_gguf_validate_names_the_types_and_suggests_nothing() {
    let p = fixture("city96.gguf");
    let (_, out, _) = run_code(&["validate", s(&p), "--json"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let codes: Vec<&str> = column(&j["files"][0]["findings"], "code");
    assert!(codes.contains(&"gguf"), "{codes:?}");
    assert!(
        !codes.contains(&"mixed-dtypes") && !codes.contains(&"wasteful-dtype"),
        "{codes:?}"
    );
    let gguf = find_row(&j["files"][0]["findings"], "code", "gguf");
    assert!(
        gguf["message"].as_str().unwrap().contains("Q4_K x1"),
        "{gguf}"
    );
}

/// A GGUF of a catalogued model against its source, the question users ask (what did
/// quantization cost, per block): the architecture is detected from city96's bare names, the
/// rows of `sim source gguf` are those of `sim source f32`, where `f32` is the GGUF converted
/// back (its values are gguf-py's, `test_gguf_every_type_matches_gguf_py_bit_for_bit`), and
/// `inspect` gives each block's bits per weight.
#[test]
fn test_gguf_sim_against_its_source_by_block() {
    let d = Dir::new();
    let src = flux_scale_8(&d, "flux.safetensors", "3");
    let gguf = d.path("flux-q8.gguf");
    run_ok(&["convert", s(&src), "-o", s(&gguf), "--quant", "Q8_0", "-q"]);
    let back = d.path("flux-q8-f32.safetensors");
    run_ok(&["convert", s(&gguf), "-o", s(&back), "--dtype", "f32", "-q"]);
    let rows = |b: &Path| -> Vec<(String, f64)> {
        let j = run_json(&["sim", s(&src), s(b)]);
        j["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["label"].as_str().unwrap().to_string(),
                    r["similarity"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (got, want) = (rows(&gguf), rows(&back));
    assert!(got.iter().any(|(l, _)| l == "D00") && got.iter().any(|(l, _)| l == "S37"));
    assert_eq!(got, want);
    // Q8_0 costs little, and something: no block is identical to its source.
    for (label, sim) in got.iter().filter(|(l, _)| l.starts_with('D')) {
        assert!(*sim > 0.999 && *sim < 1.0, "{label}: {sim}");
    }
    let j = run_json(&["inspect", s(&gguf)]);
    assert_eq!(j["arch"]["id"], "flux", "{}", j["arch"]["summary"]);
    assert_eq!(j["gguf"]["architecture"], "flux");
    let row = find_row(&j["gguf"]["rows"], "row", "D00");
    assert!(row["types"]["Q8_0"].as_u64().unwrap() > 0, "{row}");
}

/// A merge with a GGUF input reads its values decoded: `merge ws` of a Q8_0 GGUF and a
/// safetensors file writes the same tensors, byte for byte, as the same merge of the GGUF
/// converted back to f32.
#[test]
fn test_gguf_merge_input_reads_decoded_values() {
    let d = Dir::new();
    let (a, b) = (
        flux_scale_8(&d, "a.safetensors", "3"),
        flux_scale_8(&d, "b.safetensors", "4"),
    );
    let gguf = d.path("a.gguf");
    run_ok(&["convert", s(&a), "-o", s(&gguf), "--quant", "Q8_0", "-q"]);
    let back = d.path("a32.safetensors");
    run_ok(&["convert", s(&gguf), "-o", s(&back), "--dtype", "f32", "-q"]);
    let merge = |x: &Path, out: &str| -> BTreeMap<String, Vec<u8>> {
        let o = d.path(out);
        run_ok(&[
            "merge",
            "ws",
            s(x),
            s(&b),
            "--alpha",
            "0.3",
            "-o",
            s(&o),
            "--dtype",
            "f32",
            "-q",
        ]);
        read_raw(&o)
            .0
            .into_iter()
            .map(|t| (t.name, t.data))
            .collect()
    };
    let (got, want) = (
        merge(&gguf, "m1.safetensors"),
        merge(&back, "m2.safetensors"),
    );
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "the merge of the GGUF differs from the merge of its f32 values"
    );
    // A LoRA baked into the GGUF, likewise.
    let lora = d.path("l.safetensors");
    run_ok(&[
        "lora",
        "extract",
        s(&b),
        "--base",
        s(&a),
        "--rank",
        "4",
        "-o",
        s(&lora),
        "-q",
    ]);
    let baked = |x: &Path, name: &str| -> BTreeMap<String, Vec<u8>> {
        let o = bake(&d, x, &lora, name);
        read_raw(&o)
            .0
            .into_iter()
            .map(|t| (t.name, t.data))
            .collect()
    };
    let (got, want) = (baked(&gguf, "bg"), baked(&back, "bf"));
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "the LoRA baked into the GGUF differs from the f32 bake"
    );
}

/// A generated Flux.1 checkpoint at 1/8 of the real widths (rows of 384: whole Q8_0 blocks).
fn flux_scale_8(d: &Dir, name: &str, seed: &str) -> PathBuf {
    let p = d.path(name);
    run_ok(&[
        "synth",
        "model",
        "--arch",
        "flux",
        "--scale",
        "8",
        "--seed",
        seed,
        "-q",
        s(&p),
    ]);
    p
}
