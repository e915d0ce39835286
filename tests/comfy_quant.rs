//! ComfyUI's per-layer quantization, read exactly: every format against comfy-kitchen
//! 0.2.40's own dequantization (`fixtures/comfy-quant/`, made by its eager backend), in
//! both carriers; what ckpt-diff writes, loaded by ComfyUI itself as ckpt-diff reads it
//! (`fixtures/comfy-quant/comfyui/`); and every way such a file can be damaged refused with
//! the layer named.

use std::path::{Path, PathBuf};

use ckpt_core::pass::Slice;
use ckpt_read::Checkpoint;

use crate::util::*;
use crate::words::words;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/comfy-quant")
        .join(name)
}

/// comfy-kitchen's float32 results, by `<format>.<layer>`.
fn goldens() -> std::collections::BTreeMap<String, RefTensor> {
    read_reference(&fixture("goldens.safetensors"))
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
}

/// The values ckpt-diff reads for a layer's weight, and its shape.
fn decoded(ckpt: &Checkpoint, layer: &str) -> (Vec<usize>, Vec<f64>) {
    let t = ckpt
        .get(&format!("{layer}.weight"))
        .unwrap_or_else(|| panic!("{}: no {layer}.weight", ckpt.display_name()));
    let mut v = vec![0.0; t.numel()];
    Slice::of(ckpt, t).values_into(&mut v);
    (t.shape.clone(), v)
}

const LAYERS: [&str; 2] = ["blocks.0.attn.qkv", "blocks.0.mlp.fc"];

/// The formats decoded bit for bit (one multiply, or two in a fixed order).
const EXACT: [&str; 7] = [
    "awq_w4a16",
    "float8_e4m3fn",
    "float8_e5m2",
    "nvfp4",
    "mxfp8",
    "int8_tensorwise",
    "int8_tensorwise-perrow",
];

/// The formats with a Hadamard un-rotation (a sum of 256 terms, in another order than
/// torch's matrix product): within 2^-20 of the layer's largest value.
const ROTATED: [&str; 3] = ["int8_tensorwise-convrot", "convrot_w4a4", "asym_w4a8_int8"];

/// `got` equals `want` within 2^-20 of `want`'s largest magnitude (the bar for a decode
/// that ends in a Hadamard un-rotation).
fn within_rotation_bound(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let amax = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        worst <= amax * 2f64.powi(-20),
        "{what}: off by {worst}, bound {}",
        amax * 2f64.powi(-20)
    );
}

/// `got` equals `want` bit for bit as float32.
fn same_f32_bits(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let wrong = got
        .iter()
        .zip(want)
        .filter(|(g, w)| (**g as f32).to_bits() != (**w as f32).to_bits())
        .count();
    assert_eq!(wrong, 0, "{what}: {wrong} values differ");
}

#[test]
fn every_format_equals_comfy_kitchen_in_both_carriers() {
    let goldens = goldens();
    for format in EXACT.iter().chain(&ROTATED) {
        for carrier in ["", ".meta"] {
            let file = format!("{format}{carrier}.safetensors");
            let ckpt = Checkpoint::open(fixture(&file)).expect("a readable file");
            let q = ckpt.comfy_quant().expect("per-layer quantization found");
            assert_eq!(q.layers.len(), 2, "{file}");
            // The bookkeeping is not among the tensors: the weights, biases and the norm.
            let names: Vec<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names.len(), 5, "{file}: {names:?}");
            for layer in LAYERS {
                let want = &goldens[&format!("{format}.{layer}")];
                let want_values = want.values.as_ref().expect("f32 golden");
                let (shape, got) = decoded(&ckpt, layer);
                assert_eq!(shape, want.shape, "{file} {layer}: logical shape");
                let what = format!("{file} {layer}");
                if EXACT.contains(format) {
                    same_f32_bits(&what, &got, want_values);
                } else {
                    within_rotation_bound(&what, &got, want_values);
                }
            }
        }
    }
}

/// asym_w4a8_int8 in each of comfy-kitchen's storage variants (`make_w4a8.py`): the decode
/// within the rotation bound, and bit for bit before the un-rotation (the codebook or
/// uniform levels, the group scales rounded to int8, the channel scale, the correction).
#[test]
fn every_w4a8_variant_equals_comfy_kitchen() {
    let goldens: std::collections::BTreeMap<String, RefTensor> =
        read_reference(&fixture("goldens-w4a8.safetensors"))
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
    let layer = "blocks.0.mlp.fc";
    let variants = [
        (
            "asym_w4a8_int8",
            "asym_w4a8_int8 (4-bit, groups of 16, convrot 256)",
        ),
        (
            "w4a8-asym",
            "asym_w4a8_int8 (4-bit, groups of 16, convrot 256)",
        ),
        (
            "w4a8-uniform",
            "asym_w4a8_int8 (4-bit, groups of 16, convrot 256)",
        ),
        (
            "w4a8-6bit",
            "asym_w4a8_int8 (6-bit, groups of 32, convrot 256)",
        ),
        (
            "w4a8-g64",
            "asym_w4a8_int8 (4-bit, groups of 64, convrot 64)",
        ),
    ];
    for (stem, label) in variants {
        let ckpt = Checkpoint::open(fixture(&format!("{stem}.safetensors"))).unwrap();
        let q = ckpt.comfy_quant().expect("per-layer quantization found");
        let found = q
            .layers
            .iter()
            .find(|l| l.weight == format!("{layer}.weight"));
        assert_eq!(
            found.map(|l| l.code.label()).as_deref(),
            Some(label),
            "{stem}"
        );
        let (shape, got) = decoded(&ckpt, layer);
        assert_eq!(shape, [32, 256], "{stem}");
        if let Some(want) = goldens.get(&format!("{stem}.{layer}")) {
            within_rotation_bound(stem, &got, want.values.as_ref().unwrap());
        }
        // Before the un-rotation: the same layer with rotation groups of one (the identity).
        let t = ckpt.get(&format!("{layer}.weight")).unwrap();
        let mut b = t.encoding.block().unwrap();
        let ckpt_read::comfy::Code::W4a8 { group, bits, .. } = b.code else {
            panic!("{stem}: {:?}", b.code)
        };
        b.code = ckpt_read::comfy::Code::W4a8 {
            group,
            rot: 1,
            bits,
        };
        let slice = Slice::of(&ckpt, t);
        let mut pre = vec![0.0; t.numel()];
        b.decode(slice.bytes, &slice.side, 0, &mut pre);
        let want = &goldens[&format!("pre_{stem}.{layer}")];
        same_f32_bits(
            &format!("{stem} before the rotation"),
            &pre,
            want.values.as_ref().unwrap(),
        );
    }
    // From the command line: copied as stored (codes, scales, codebook, correction and
    // record byte for byte), and decoded to F32 as comfy-kitchen decodes.
    let d = Dir::new();
    for stem in ["w4a8-asym", "w4a8-uniform", "w4a8-6bit", "w4a8-g64"] {
        let input = fixture(&format!("{stem}.safetensors"));
        let out = d.path(&format!("{stem}.safetensors"));
        let (code, stdout, stderr) = run_code(&["convert", s(&input), "-o", s(&out)]);
        assert_eq!(code, 0, "{stem}: {stdout}{stderr}");
        assert_eq!(
            tensors_of(&out),
            tensors_of(&input),
            "{stem}: kept as stored"
        );
        let f32_out = d.path(&format!("{stem}-f32.safetensors"));
        let (code, stdout, stderr) =
            run_code(&["convert", s(&input), "-o", s(&f32_out), "--dtype", "f32"]);
        assert_eq!(code, 0, "{stem}: {stdout}{stderr}");
        let got = reference_map(&f32_out);
        assert_eq!(
            got.len(),
            2,
            "{stem}: the weight and its bias, nothing else"
        );
        let want = &goldens[&format!("{stem}.{layer}")];
        let weight = &got[&format!("{layer}.weight")];
        within_rotation_bound(
            &format!("{stem} converted"),
            weight.values.as_ref().unwrap(),
            want.values.as_ref().unwrap(),
        );
    }
}

/// A layer with ModelOpt's `pre_quant_scale` reads as the weight the model applies: the
/// decoded weight (comfy-kitchen's golden) times the scale, column by column, in float32.
/// Decoded output carries that weight and no scale; a scale of the wrong length is refused.
#[test]
fn pre_quant_scale_is_folded_into_the_weight() {
    let d = Dir::new();
    let qkv = "blocks.0.attn.qkv";
    let k = 512;
    // Scales exact in BF16, from 0.5 to 1.4375.
    let pre: Vec<f32> = (0..k).map(|c| 0.5 + (c % 16) as f32 / 16.0).collect();
    let bf16: Vec<u8> = pre
        .iter()
        .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    let file = edited(&d, "nvfp4.safetensors", "pre.safetensors", |t| {
        t.push(RawTensor {
            name: format!("{qkv}.pre_quant_scale"),
            dtype: "BF16".into(),
            shape: vec![k],
            data: bf16.clone(),
        })
    });
    let golden = &goldens()[&format!("nvfp4.{qkv}")];
    let want: Vec<f64> = golden
        .values
        .as_ref()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, w)| ((*w as f32) * pre[i % k]) as f64)
        .collect();
    let ckpt = Checkpoint::open(&file).unwrap();
    let (_, got) = decoded(&ckpt, qkv);
    same_f32_bits("pre_quant_scale folded", &got, &want);
    let r = run_json(&["inspect", s(&file)]);
    assert_eq!(r["quantization"]["pre_quant_scale"], 1, "{r}");
    // Decoded: the weight the model applies, and no scale left to apply twice.
    let out = d.path("f32.safetensors");
    let (code, stdout, stderr) = run_code(&["convert", s(&file), "-o", s(&out), "--dtype", "f32"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let written = reference_map(&out);
    assert!(
        !written.keys().any(|n| n.ends_with("pre_quant_scale")),
        "{:?}",
        written.keys()
    );
    same_f32_bits(
        "converted",
        written[&format!("{qkv}.weight")].values.as_ref().unwrap(),
        &want,
    );
    // One float per column, or refused.
    let short = d.path("short.safetensors");
    rewrite(&file, &short, |t| {
        set(t, &format!("{qkv}.pre_quant_scale"), |r| {
            r.shape = vec![256];
            r.data.truncate(512)
        })
    });
    let (code, _, stderr) = run_code(&["sim", s(&short), s(&short)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("not one float per column of its 512 columns"),
        "{stderr}"
    );
}

#[test]
fn padded_layers_keep_their_rows_from_the_bias_and_columns_from_a_pre_quant_scale() {
    let goldens = goldens();
    for format in ["nvfp4", "mxfp8"] {
        let ckpt = Checkpoint::open(fixture(&format!("{format}-padded.safetensors"))).unwrap();
        let want = &goldens[&format!("{format}-padded.blocks.0.odd")];
        let want_values = want.values.as_ref().unwrap();
        let (shape, got) = decoded(&ckpt, "blocks.0.odd");
        // Rows come back from the bias; the file does not record the logical columns
        // (ComfyUI takes them from the model definition), so the padded ones stay, zero.
        assert_eq!(shape[0], want.shape[0], "{format}: rows");
        let (k, stored_k) = (want.shape[1], shape[1]);
        assert!(stored_k >= k && stored_k - k < 32, "{format}: {shape:?}");
        for r in 0..shape[0] {
            for c in 0..stored_k {
                let g = got[r * stored_k + c];
                if c < k {
                    assert_eq!(
                        (g as f32).to_bits(),
                        (want_values[r * k + c] as f32).to_bits(),
                        "{format} [{r},{c}]"
                    );
                } else {
                    assert_eq!(g, 0.0, "{format} padding [{r},{c}]");
                }
            }
        }
        // A pre_quant_scale (a factor per input column) names the real columns: with one
        // of ones the layer reads as comfy-kitchen's logical [100, 200] weight, from the
        // command line too.
        let d = Dir::new();
        let file = edited(
            &d,
            &format!("{format}-padded.safetensors"),
            "pre.safetensors",
            |t| {
                t.push(RawTensor {
                    name: "blocks.0.odd.pre_quant_scale".into(),
                    dtype: "BF16".into(),
                    shape: vec![k],
                    data: [0x80, 0x3f].repeat(k),
                })
            },
        );
        let ckpt = Checkpoint::open(&file).unwrap();
        let (shape, got) = decoded(&ckpt, "blocks.0.odd");
        assert_eq!(shape, want.shape, "{format}: the logical shape");
        // inspect says which layers' columns are not known, and only those.
        let unknown =
            |f: &Path| run_json(&["inspect", s(f)])["quantization"]["columns_unknown"].clone();
        let padded = fixture(&format!("{format}-padded.safetensors"));
        assert_eq!(unknown(&padded), serde_json::json!(["blocks.0.odd.weight"]));
        assert_eq!(unknown(&file), serde_json::json!([]));
        same_f32_bits(&format!("{format} with its columns"), &got, want_values);
        let out = d.path("f32.safetensors");
        let (code, stdout, stderr) =
            run_code(&["convert", s(&file), "-o", s(&out), "--dtype", "f32"]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        let written = &reference_map(&out)["blocks.0.odd.weight"];
        assert_eq!(written.shape, want.shape, "{format}: written");
        same_f32_bits(
            &format!("{format} written"),
            written.values.as_ref().unwrap(),
            want_values,
        );
    }
}

#[test]
fn the_swizzled_scale_layout_is_comfy_kitchens() {
    let text = std::fs::read_to_string(fixture("nvfp4-swizzle.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entries = v["entries"].as_array().expect("a list of entries");
    assert!(entries.len() >= 20);
    let block_cols = 512 / 16;
    for e in entries {
        let get = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{k} in {e}")) as usize;
        let (r, c, at) = (get("row"), get("block_col"), get("byte_offset"));
        assert_eq!(
            ckpt_read::comfy::swizzled(r, c, block_cols),
            at,
            "({r}, {c})"
        );
    }
}

/// A Flux base in BF16, the same base with its blocks' linear weights in ComfyUI's
/// per-row int8 (written by the test's own quantizer), and a BF16 fine-tune of the base.
fn quantized_flux(d: &Dir) -> (PathBuf, PathBuf, PathBuf) {
    let flux = arch("flux");
    let base = ckpt_ops::synth::Synthetic::base(flux, 11);
    let ft = base.plus_delta(
        110,
        ckpt_ops::synth::family::finetune_profile(flux, 11, 2, 0.15),
    );
    let l = layout(flux, 16, ckpt_read::dtype::FloatFormat::BF16);
    let bf16 = d.model("base.safetensors", &l, &base);
    let tuned = d.model("ft.safetensors", &l, &ft);
    let q = d.path("base-int8.safetensors");
    comfy_int8(&bf16, &q, true, |name| name.contains("_blocks."));
    (bf16, q, tuned)
}

/// Names, dtypes, shapes and bytes of every tensor of a file.
fn tensors_of(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    read_raw(path)
        .0
        .into_iter()
        .map(|t| (t.name, t.dtype, t.shape, t.data))
        .collect()
}

#[test]
fn sim_l2_and_inspect_read_the_layers_decoded() {
    let d = Dir::new();
    let (_, q, ft) = quantized_flux(&d);
    // Similarities per block equal a naive loop over the independently decoded values.
    crate::sim::check_against_naive(&q, &ft, arch("flux"));
    let r = run_json(&["inspect", s(&q)]);
    assert_eq!(r["arch"]["id"], "flux", "{}", r["arch"]);
    assert_eq!(r["arch"]["confidence"], "high", "{}", r["arch"]);
    let layers = r["quantization"]["layers"]
        .as_array()
        .expect("layers listed");
    let planted = read_raw(&q)
        .0
        .iter()
        .filter(|t| t.name.ends_with(".comfy_quant"))
        .count();
    assert_eq!(layers.len(), planted);
    assert!(
        layers
            .iter()
            .all(|l| l["format"] == "int8_tensorwise (a scale per row)")
    );
    assert!(r["unknown_keys"].as_array().unwrap().is_empty(), "{r}");
    // l2 from the BF16 fine-tune: the same as from a BF16 twin of the decoded file.
    let twin = d.path("twin.safetensors");
    let values = dequantized_map(&q);
    rewrite(&q, &twin, |tensors| {
        tensors.retain(|t| values.contains_key(&t.name));
        for t in tensors.iter_mut() {
            if let Some(v) = &values[&t.name].values {
                t.dtype = "F32".into();
                t.data = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
            }
        }
    });
    let lq = run_json(&["l2", "--base", s(&ft), s(&q)]);
    let lt = run_json(&["l2", "--base", s(&ft), s(&twin)]);
    assert_eq!(lq["from_base"], lt["from_base"]);
}

#[test]
fn convert_and_fix_keep_every_tensor_or_decode_it() {
    let d = Dir::new();
    let (_, q, _) = quantized_flux(&d);
    let input = tensors_of(&q);
    // As stored: every tensor, byte for byte (codes, scales and records).
    for cmd in ["convert", "fix"] {
        let out = d.path(&format!("{cmd}.safetensors"));
        let (code, stdout, stderr) = run_code(&[cmd, s(&q), "-o", s(&out)]);
        assert!(
            code == 0 || cmd == "fix" && code == 1,
            "{cmd}: {stdout}{stderr}"
        );
        assert_eq!(tensors_of(&out), input, "{cmd} kept every tensor as it is");
    }
    let out = d.path("junk.safetensors");
    let (code, stdout, stderr) = run_code(&["fix", s(&q), "-o", s(&out), "--drop-junk"]);
    assert!(code <= 1, "{stdout}{stderr}");
    assert_eq!(tensors_of(&out), input, "the scales are not junk");
    // Cast: the weights decoded, no scale or record left.
    let out = d.path("f32.safetensors");
    let (code, stdout, stderr) = run_code(&["convert", s(&q), "-o", s(&out), "--dtype", "f32"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let want = dequantized_map(&q);
    let got = reference_map(&out);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        assert_eq!(got[k].values, w.values, "{k}");
    }
}

#[test]
fn merge_validate_lora_and_index_read_the_layers() {
    let d = Dir::new();
    let (bf16, q, ft) = quantized_flux(&d);
    // A weighted sum with a quantized input: the decoded values, stored in bf16.
    let out = d.path("merged.safetensors");
    run_ok(&words(
        "merge ws {} {} --alpha 0.5 -o {} -q",
        &[s(&q), s(&ft), s(&out)],
    ));
    let (a, b, m) = (dequantized_map(&q), reference_map(&ft), reference_map(&out));
    assert_eq!(m.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &m {
        let (Some(got), Some(x), Some(y)) = (&t.values, &a[k].values, &b[k].values) else {
            continue;
        };
        for i in 0..got.len() {
            // Rounded once to bf16 (8 significant bits): within half a step of the exact sum.
            let exact = 0.5 * x[i] + 0.5 * y[i];
            let step = 2f64.powi(exact.abs().max(1e-30).log2().floor() as i32 - 7);
            assert!(
                (got[i] - exact).abs() <= step / 2.0,
                "{k}[{i}]: {} for {exact}",
                got[i]
            );
        }
    }
    let (code, stdout, stderr) = run_code(&["validate", s(&q), "--json"]);
    assert!(code <= 1, "{stdout}{stderr}");
    assert!(stdout.contains("per layer"), "{stdout}");
    let lora = d.path("lora.safetensors");
    run_ok(&words(
        "lora extract {} --base {} --rank 4 -o {} -q",
        &[s(&q), s(&bf16), s(&lora)],
    ));
    let index = d.path("index.sqlite");
    run_ok(&words("index add {} --index {} -q", &[s(&q), s(&index)]));
}

/// A copy of fixture `name` with `edit` applied to its tensors (and its metadata kept).
fn edited(d: &Dir, name: &str, out: &str, edit: impl FnOnce(&mut Vec<RawTensor>)) -> PathBuf {
    let p = d.path(out);
    rewrite(&fixture(name), &p, edit);
    p
}

fn set(tensors: &mut [RawTensor], name: &str, f: impl FnOnce(&mut RawTensor)) {
    f(tensors
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no {name}")));
}

/// Every way a quantized file can be unreadable, and what the refusal must say: each
/// command that reads tensors exits 2 naming the problem, never 0 with codes read as
/// weights or scales dropped.
#[test]
fn damaged_unknown_and_foreign_quantization_is_refused_by_every_command() {
    let d = Dir::new();
    let qkv = "blocks.0.attn.qkv";
    let fc = "blocks.0.mlp.fc";
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            // Comfy-Org issue #15567: records filled with zero bytes.
            edited(
                &d,
                "int8_tensorwise.safetensors",
                "zeros.safetensors",
                |t| set(t, &format!("{qkv}.comfy_quant"), |r| r.data.fill(0)),
            ),
            "29 zero bytes",
        ),
        (
            edited(
                &d,
                "int8_tensorwise.safetensors",
                "unknown.safetensors",
                |t| {
                    set(t, &format!("{qkv}.comfy_quant"), |r| {
                        r.data = br#"{"format": "float3_e1m1"}"#.to_vec();
                        r.shape = vec![r.data.len()];
                    })
                },
            ),
            "'float3_e1m1' is not one ComfyUI defines",
        ),
        (
            edited(&d, "w4a8-6bit.safetensors", "w4a8-lut.safetensors", |t| {
                t.push(RawTensor {
                    name: format!("{fc}.weight_codebook"),
                    dtype: "F32".into(),
                    shape: vec![16],
                    data: vec![0; 64],
                });
            }),
            "its 6-bit codes are uniform and symmetric, yet it has a codebook",
        ),
        (
            edited(
                &d,
                "asym_w4a8_int8.safetensors",
                "w4a8-srel.safetensors",
                |t| set(t, &format!("{fc}.weight_s_rel"), |r| r.data[3] = 0x7f),
            ),
            "'blocks.0.mlp.fc.weight_s_rel' holds NaN",
        ),
        (
            edited(
                &d,
                "asym_w4a8_int8.safetensors",
                "w4a8-width.safetensors",
                |t| {
                    set(t, &format!("{fc}.weight_s_rel"), |r| {
                        r.shape = vec![32, 8];
                        r.data.truncate(256)
                    })
                },
            ),
            "hold neither 4- nor 6-bit codes",
        ),
        (
            edited(&d, "awq_w4a16.safetensors", "awq-zeros.safetensors", |t| {
                t.retain(|x| x.name != format!("{qkv}.weight_zeros"))
            }),
            "the file has no weight_zeros for it",
        ),
        (
            edited(
                &d,
                "int8_tensorwise.safetensors",
                "norecord.safetensors",
                |t| t.retain(|x| !x.name.ends_with(".comfy_quant")),
            ),
            "quantization state",
        ),
        (
            edited(&d, "int8_tensorwise.safetensors", "nan.safetensors", |t| {
                set(t, &format!("{qkv}.weight_scale"), |r| {
                    r.data = f32::NAN.to_le_bytes().to_vec()
                })
            }),
            "not a finite scale",
        ),
        (
            edited(
                &d,
                "int8_tensorwise-perrow.safetensors",
                "rows.safetensors",
                |t| {
                    set(t, &format!("{qkv}.weight_scale"), |r| {
                        r.data[8..12].copy_from_slice(&f32::INFINITY.to_le_bytes())
                    })
                },
            ),
            "holds inf at row 2",
        ),
        (
            edited(&d, "nvfp4.safetensors", "shape.safetensors", |t| {
                set(t, &format!("{qkv}.weight_scale"), |r| {
                    r.shape = vec![128, 32];
                    r.data.truncate(128 * 32);
                })
            }),
            "its block scales are [128, 32], where a 144x512 weight has [256, 32]",
        ),
        (
            edited(&d, "float8_e4m3fn.safetensors", "dtype.safetensors", |t| {
                set(t, &format!("{qkv}.weight"), |r| r.dtype = "F8_E5M2".into())
            }),
            "is F8_E5M2, where the format stores F8_E4M3",
        ),
        (
            edited(
                &d,
                "int8_tensorwise.safetensors",
                "nunchaku.safetensors",
                |t| {
                    t.retain(|x| !x.name.contains("attn"));
                    t.push(RawTensor {
                        name: "transformer_blocks.0.qkv_proj.qweight".into(),
                        dtype: "I8".into(),
                        shape: vec![8, 4],
                        data: vec![0; 32],
                    });
                    t.push(RawTensor {
                        name: "transformer_blocks.0.qkv_proj.wscales".into(),
                        dtype: "BF16".into(),
                        shape: vec![1, 8],
                        data: vec![0; 16],
                    });
                },
            ),
            "nunchaku",
        ),
        (
            edited(&d, "int8_tensorwise.safetensors", "bnb.safetensors", |t| {
                t.push(RawTensor {
                    name: "blocks.0.x.weight.absmax".into(),
                    dtype: "F32".into(),
                    shape: vec![2],
                    data: vec![0; 8],
                });
            }),
            "bitsandbytes",
        ),
    ];
    for (file, says) in &cases {
        let f = s(file);
        let out = d.path("out.safetensors");
        let o = s(&out);
        let runs: Vec<Vec<&str>> = vec![
            vec!["inspect", f],
            vec!["validate", f],
            vec!["sim", f, f],
            vec!["l2", "--base", f, f],
            vec!["convert", f, "-o", o],
            vec!["fix", f, "-o", o],
            vec!["merge", "ws", f, f, "--alpha", "0.5", "-o", o],
            vec!["lora", "extract", f, "--base", f, "-o", o],
        ];
        for args in runs {
            let (code, stdout, stderr) = run_code(&args);
            assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
            assert!(
                stderr.contains(says),
                "{args:?} should say {says:?}: {stderr}"
            );
            assert!(!out.exists(), "{args:?} wrote an output");
        }
    }
}

/// A layer with no rows decodes to nothing, without a panic.
#[test]
fn empty_layers_read_as_empty() {
    let d = Dir::new();
    let p = edited(
        &d,
        "int8_tensorwise.safetensors",
        "empty.safetensors",
        |t| {
            set(t, "blocks.0.attn.qkv.weight", |r| {
                r.shape = vec![0, 512];
                r.data.clear();
            })
        },
    );
    let r = run_json(&["inspect", s(&p)]);
    assert_eq!(r["quantization"]["layers"].as_array().unwrap().len(), 2);
    run_ok(&["sim", s(&p), s(&p)]);
}

/// ckpt-diff's quantizers give comfy-kitchen's codes and scales, byte for byte, for the same
/// float32 values (`from-f32.safetensors`: `QuantizedTensor.from_float` on the sources).
#[test]
fn quantizing_equals_comfy_kitchen_byte_for_byte() {
    use ckpt_read::comfy::{Code, quantize};
    use ckpt_read::dtype::FloatFormat;
    let want = raw_map(&fixture("from-f32.safetensors"));
    let sources = goldens();
    for (name, code) in [
        ("float8_e4m3fn", Code::Fp8(FloatFormat::F8E4M3)),
        ("float8_e5m2", Code::Fp8(FloatFormat::F8E5M2)),
        ("int8_tensorwise", Code::Int8),
        ("nvfp4", Code::Nvfp4),
        ("mxfp8", Code::Mxfp8),
    ] {
        for layer in LAYERS {
            let src = &sources[&format!("source.{layer}")];
            let x = src.f32_values();
            let q = quantize(code, &x, src.shape[0], src.shape[1]);
            assert_eq!(q.record, format!("{{\"format\": \"{name}\"}}"));
            for (suffix, dtype, shape, bytes) in &q.tensors {
                let w = &want[format!("{name}.{layer}.{suffix}").as_str()];
                assert_eq!(
                    (ckpt_read::dtype::name(*dtype), shape),
                    (w.dtype.clone(), &w.shape),
                    "{name} {layer}.{suffix}"
                );
                let differ = bytes.iter().zip(&w.data).filter(|(a, b)| a != b).count();
                assert_eq!(differ, 0, "{name} {layer}.{suffix}: {differ} bytes differ");
            }
            assert_eq!(
                q.tensors.len(),
                want.keys()
                    .filter(|k| k.starts_with(&format!("{name}.{layer}.")))
                    .count()
            );
        }
    }
}

/// `merge --dtype int8|nvfp4|...` writes the denoiser's linear weights as ComfyUI stores
/// them: for int8 the codes and scale computed here from the exact merge (one scale, codes
/// rounded half to even), for every format a file ckpt-diff reads back close to the exact
/// merge, with every other tensor in bf16 and nothing left out.
#[test]
fn merge_writes_the_per_layer_formats() {
    let d = Dir::new();
    let (bf16, _, ft) = quantized_flux(&d);
    let (a, b) = (reference_map(&bf16), reference_map(&ft));
    for (dtype, format, tolerance) in [
        ("int8", "int8_tensorwise", 0.02),
        ("comfy-fp8", "float8_e4m3fn", 0.05),
        ("nvfp4", "nvfp4", 0.2),
        ("mxfp8", "mxfp8", 0.05),
    ] {
        let out = d.path(&format!("m-{dtype}.safetensors"));
        run_ok(&words(
            "merge ws {} {} --alpha 0.5 --dtype {} -o {} -q",
            &[s(&bf16), s(&ft), dtype, s(&out)],
        ));
        let raw = raw_map(&out);
        let ckpt = Checkpoint::open(&out).unwrap();
        let mut quantized = 0;
        for (k, ta) in &a {
            let (Some(x), Some(y)) = (&ta.values, &b[k].values) else {
                continue;
            };
            let exact: Vec<f32> = x
                .iter()
                .zip(y)
                .map(|(x, y)| (0.5 * x + 0.5 * y) as f32)
                .collect();
            let layer = k.strip_suffix(".weight").unwrap_or(k);
            let Some(record) = raw.get(format!("{layer}.comfy_quant").as_str()) else {
                // Not quantized: bf16 of the exact merge.
                let t = &raw[k.as_str()];
                assert_eq!(t.dtype, "BF16", "{dtype} {k}");
                continue;
            };
            quantized += 1;
            assert!(
                k.contains("_blocks.") || k.contains("_in.") || k.contains("final_layer"),
                "{k}"
            );
            assert_eq!(
                std::str::from_utf8(&record.data).unwrap(),
                format!("{{\"format\": \"{format}\"}}")
            );
            if dtype == "int8" {
                let amax = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = (amax / 127.0).max(1e-30);
                let t = &raw[format!("{layer}.weight_scale").as_str()];
                assert_eq!(t.data, scale.to_le_bytes(), "{k}: scale");
                let codes: Vec<u8> = exact
                    .iter()
                    .map(|v| (v / scale).round_ties_even().clamp(-128.0, 127.0) as i8 as u8)
                    .collect();
                assert_eq!(raw[k.as_str()].data, codes, "{k}: codes");
            }
            // Read back: within the format's error of the exact merge (relative L2).
            let (_, got) = decoded(&ckpt, layer);
            let err: f64 = got
                .iter()
                .zip(&exact)
                .map(|(g, e)| (g - *e as f64).powi(2))
                .sum();
            let norm: f64 = exact.iter().map(|e| (*e as f64).powi(2)).sum();
            assert!(
                (err / norm).sqrt() < tolerance,
                "{dtype} {k}: relative error {}",
                (err / norm).sqrt()
            );
        }
        assert!(quantized > 100, "{dtype}: {quantized} layers quantized");
        let r = run_json(&["inspect", s(&out)]);
        assert_eq!(r["arch"]["id"], "flux");
        assert_eq!(
            r["quantization"]["layers"].as_array().unwrap().len(),
            quantized
        );
    }
}

/// `convert --dtype int8` and `fix --dtype nvfp4` write the same formats: int8 codes checked
/// against a computation here, and a quantized file converted again is decoded first.
#[test]
fn convert_and_fix_write_the_per_layer_formats() {
    let d = Dir::new();
    let (bf16, q, _) = quantized_flux(&d);
    let a = reference_map(&bf16);
    let out = d.path("int8.safetensors");
    run_ok(&words(
        "convert {} -o {} --dtype int8 -q",
        &[s(&bf16), s(&out)],
    ));
    let raw = raw_map(&out);
    let mut quantized = 0;
    for (k, t) in &a {
        let layer = k.strip_suffix(".weight").unwrap_or(k);
        if !raw.contains_key(format!("{layer}.comfy_quant").as_str()) {
            assert_eq!(
                raw[k.as_str()].data.len(),
                t.shape.iter().product::<usize>() * 2
            );
            continue;
        }
        quantized += 1;
        let x = t.f32_values();
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = (amax / 127.0).max(1e-30);
        assert_eq!(
            raw[format!("{layer}.weight_scale").as_str()].data,
            scale.to_le_bytes()
        );
        let codes: Vec<u8> = x
            .iter()
            .map(|v| (v / scale).round_ties_even().clamp(-128.0, 127.0) as i8 as u8)
            .collect();
        assert_eq!(raw[k.as_str()].data, codes, "{k}");
    }
    assert!(quantized > 100);
    // A per-row int8 file into nvfp4: decoded, then quantized; no old scale left.
    let out = d.path("nvfp4.safetensors");
    let (code, stdout, stderr) = run_code(&["fix", s(&q), "-o", s(&out), "--dtype", "nvfp4"]);
    assert!(code <= 1, "{stdout}{stderr}");
    let r = run_json(&["inspect", s(&out)]);
    assert_eq!(r["arch"]["id"], "flux");
    let layers = r["quantization"]["layers"].as_array().unwrap();
    assert!(layers.iter().all(|l| l["format"] == "nvfp4"));
    assert!(layers.len() > 100);
    let sim = run_json(&["sim", s(&out), s(&bf16)]);
    for row in sim["rows"].as_array().unwrap() {
        assert!(row["similarity"].as_f64().unwrap() > 0.98, "{row}");
    }
}

/// A layer's exact hash covers every tensor its values come from: two awq_w4a16 files that
/// differ only in a zero point hash differently.
#[test]
fn component_hashes_cover_every_side_tensor() {
    let d = Dir::new();
    let a = fixture("awq_w4a16.safetensors");
    let b = edited(&d, "awq_w4a16.safetensors", "zeros.safetensors", |t| {
        set(t, "blocks.0.mlp.fc.weight_zeros", |r| r.data[0] ^= 1)
    });
    let exact = |f: &Path| {
        run_json(&["hash", "--components", s(f)])["files"][0]["components"]["components"][0]
            ["exact"]
            .clone()
    };
    assert!(exact(&a).is_string());
    assert_ne!(exact(&a), exact(&b));
}

/// What `fixtures/comfy-quant/comfyui_load.py` recorded of ComfyUI's loads.
fn comfyui_goldens() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("comfyui/goldens.json")).unwrap()).unwrap()
}

/// ComfyUI itself loaded what ckpt-diff writes: `fixtures/comfy-quant/comfyui_load.py` ran
/// `convert comfyui/source.safetensors --dtype F` for each per-layer format, loaded each file
/// with ComfyUI's own loader (Comfy-Org/ComfyUI 4f874c5e, `load_diffusion_model_state_dict`:
/// SD3 detected from the shapes, every quantized layer through `mixed_precision_ops`, no
/// missing or unexpected key; its `state_dict()` gives back the file's quantized tensors byte
/// for byte) and recorded the SHA-256 of every file tensor and of every weight ComfyUI holds,
/// quantized ones dequantized by ComfyUI in float32. Here the same command must still write
/// the same bytes, and `fix --dtype` the same tensors (else the golden is stale: re-run the
/// script), and ckpt-diff must read each weight as the same float32 bits.
#[test]
fn comfyui_loads_the_written_files_as_ckpt_diff_reads_them() {
    use ckpt_ops::hash::sha256_hex;
    let golden = comfyui_goldens();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = root.join(golden["source"].as_str().unwrap());
    assert_eq!(
        sha256_hex(&std::fs::read(&source).unwrap()),
        golden["source_sha256"],
        "the committed source is not the one ComfyUI's goldens were made from"
    );
    let d = Dir::new();
    let formats = golden["formats"].as_object().unwrap();
    assert_eq!(formats.len(), 5);
    for (dtype, g) in formats {
        let load = &g["comfyui_load"];
        assert_eq!(load["model_config"], "SD3", "{dtype}");
        assert_eq!(load["compute_dtype"], "float32", "{dtype}");
        assert_eq!(load["missing"], serde_json::json!([]), "{dtype}");
        assert_eq!(load["unexpected"], serde_json::json!([]), "{dtype}");
        // ComfyUI's own state_dict() of the loaded model gave back the file's tensors.
        assert_eq!(load["resaved_differ"], serde_json::json!([]), "{dtype}");

        // (a) The recorded commands, on the committed source, write the same tensors (and
        // convert the same file).
        let want = g["tensors"].as_object().unwrap();
        let run_recorded = |key: &str, out: &Path| {
            let args: Vec<String> = g[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| match w.as_str().unwrap() {
                    w if w == golden["source"] => s(&source).to_string(),
                    w if w.ends_with(".safetensors") => s(out).to_string(),
                    w => w.to_string(),
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            // fix exits 1: it warns that the architecture is none it knows.
            let (code, stdout, stderr) = run_code(&args);
            assert!(code <= 1, "ckpt-diff {args:?}: {stdout}{stderr}");
            let stored = raw_map(out);
            let mut changed: Vec<String> = want
                .iter()
                .filter(|(name, w)| {
                    stored.get(name.as_str()).is_none_or(|t| {
                        t.dtype != w["dtype"]
                            || serde_json::json!(t.shape) != w["shape"]
                            || sha256_hex(&t.data) != w["sha256"]
                    })
                })
                .map(|(name, _)| name.clone())
                .collect();
            changed.extend(stored.keys().filter(|k| !want.contains_key(*k)).cloned());
            assert!(
                changed.is_empty(),
                "{dtype} {key}: ckpt-diff no longer writes the tensors ComfyUI loaded \
                 (re-run fixtures/comfy-quant/comfyui_load.py); changed: {changed:?}"
            );
        };
        let out = d.path(&format!("{dtype}.safetensors"));
        run_recorded("command", &out);
        assert_eq!(
            sha256_hex(&std::fs::read(&out).unwrap()),
            g["file_sha256"],
            "{dtype}: same tensors, other header or metadata"
        );
        run_recorded("fix_command", &d.path(&format!("{dtype}-fix.safetensors")));

        // (b) ckpt-diff reads every weight as the float32 bits ComfyUI holds.
        let ckpt = Checkpoint::open(&out).unwrap();
        let weights = g["weights"].as_object().unwrap();
        let mut ours: Vec<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
        ours.sort_unstable();
        let mut comfy_names: Vec<&str> = weights.keys().map(String::as_str).collect();
        comfy_names.sort_unstable();
        assert_eq!(ours, comfy_names, "{dtype}: the tensors ComfyUI holds");
        let quantized: Vec<(&str, &str)> = weights
            .iter()
            .filter_map(|(k, w)| Some((k.as_str(), w["format"].as_str()?)))
            .collect();
        let q = ckpt.comfy_quant().expect("per-layer quantization found");
        assert_eq!(
            q.layers
                .iter()
                .map(|l| (l.weight.as_str(), l.code.format()))
                .collect::<std::collections::BTreeMap<_, _>>(),
            quantized.iter().copied().collect(),
            "{dtype}: the quantized layers"
        );
        assert!(quantized.len() >= 14, "{dtype}: {} layers", quantized.len());
        let mut differ = Vec::new();
        for t in ckpt.tensors() {
            let w = &weights[&t.name];
            let mut v = vec![0.0; t.numel()];
            Slice::of(&ckpt, t).values_into(&mut v);
            let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
            if serde_json::json!(t.shape) != w["shape"] || sha256_hex(&bytes) != w["sha256_f32"] {
                differ.push(t.name.clone());
            }
        }
        assert!(
            differ.is_empty(),
            "{dtype}: ckpt-diff reads these weights otherwise than ComfyUI loads them \
             (fixtures/comfy-quant/comfyui_load.py shows the values): {differ:?}"
        );
    }
}

/// `merge --dtype`, layer by layer (no ComfyUI model has the catalog's small widths, so
/// ComfyUI cannot build the whole merged model): `comfyui_load.py` merged two synthetic
/// Flux.1 diffusers and loaded each quantized layer with ComfyUI's
/// `mixed_precision_ops(...).Linear` (no missing or unexpected key), dequantized it in
/// float32 and kept one SHA-256 over the merge's tensors and one over ComfyUI's layers. The
/// same commands must write the same tensors, and ckpt-diff must read every layer as ComfyUI
/// did.
#[test]
fn comfyui_loads_the_merged_layers_as_ckpt_diff_reads_them() {
    use ckpt_ops::hash::sha256_hex;
    let golden = comfyui_goldens();
    let merge = &golden["merge"];
    let d = Dir::new();
    let run_here = |words: &serde_json::Value| {
        let args: Vec<String> = words
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let w = w.as_str().unwrap();
                if w.ends_with(".safetensors") {
                    s(&d.path(w)).to_string()
                } else {
                    w.to_string()
                }
            })
            .collect();
        run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    for words in merge["inputs"].as_array().unwrap() {
        run_here(words);
    }
    let formats = merge["formats"].as_object().unwrap();
    assert_eq!(formats.len(), 5);
    let m = d.path("m.safetensors");
    for (dtype, g) in formats {
        run_here(&g["command"]);
        let lines: String = raw_map(&m)
            .iter()
            .map(|(k, t)| format!("{k} {} {:?} {}\n", t.dtype, t.shape, sha256_hex(&t.data)))
            .collect();
        assert_eq!(
            sha256_hex(lines.as_bytes()),
            g["tensors_sha256"],
            "{dtype}: merge no longer writes the tensors ComfyUI loaded \
             (re-run fixtures/comfy-quant/comfyui_load.py)"
        );
        let ckpt = Checkpoint::open(&m).unwrap();
        let q = ckpt.comfy_quant().expect("per-layer quantization found");
        assert_eq!(q.layers.len(), g["quantized_layers"], "{dtype}");
        assert!(q.layers.iter().all(|l| l.code.format() == g["format"]));
        // Layers in the order of their names, as the script hashed them.
        let mut layers: Vec<&str> = q
            .layers
            .iter()
            .map(|l| l.weight.strip_suffix(".weight").unwrap())
            .collect();
        layers.sort_unstable();
        let mut digest = Vec::new();
        for layer in layers {
            let name = format!("{layer}.weight");
            let (shape, v) = decoded(&ckpt, layer);
            digest.extend(format!("{name} {shape:?}\n").bytes());
            digest.extend(v.iter().flat_map(|x| (*x as f32).to_le_bytes()));
        }
        assert_eq!(
            sha256_hex(&digest),
            g["comfyui_sha256_f32"],
            "{dtype}: ckpt-diff reads the merged layers otherwise than ComfyUI loads them \
             (fixtures/comfy-quant/comfyui_load.py names them)"
        );
        drop(ckpt);
        std::fs::remove_file(&m).unwrap();
    }
}
