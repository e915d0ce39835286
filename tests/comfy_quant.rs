//! ComfyUI's per-layer quantization, read exactly: every format against comfy-kitchen
//! 0.2.40's own dequantization (`fixtures/comfy-quant/`, made by its eager backend), in
//! both carriers; and every way such a file can be damaged refused with the layer named.

use std::path::{Path, PathBuf};

use ckpt_core::pass::Slice;
use ckpt_read::Checkpoint;

use crate::util::*;

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
const EXACT: [&str; 6] = [
    "float8_e4m3fn",
    "float8_e5m2",
    "nvfp4",
    "mxfp8",
    "int8_tensorwise",
    "int8_tensorwise-perrow",
];

/// The formats with a Hadamard un-rotation (a sum of 256 terms, in another order than
/// torch's matrix product): within 2^-20 of the layer's largest value.
const ROTATED: [&str; 2] = ["int8_tensorwise-convrot", "convrot_w4a4"];

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
                if EXACT.contains(format) {
                    let wrong = got
                        .iter()
                        .zip(want_values)
                        .filter(|(g, w)| (**g as f32).to_bits() != (**w as f32).to_bits())
                        .count();
                    assert_eq!(wrong, 0, "{file} {layer}: {wrong} values differ");
                } else {
                    let amax = want_values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    let worst = got
                        .iter()
                        .zip(want_values)
                        .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
                    assert!(
                        worst <= amax * 2f64.powi(-20),
                        "{file} {layer}: off by {worst}, bound {}",
                        amax * 2f64.powi(-20)
                    );
                }
            }
        }
    }
}

#[test]
fn padded_layers_keep_their_rows_from_the_bias() {
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
