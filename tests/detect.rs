//! Architecture detection on full-shape generated checkpoints (sparse zero-weight files:
//! the header is the real one, the data costs no disk).

use ckpt_diff::catalog::{Arch, Component};
use ckpt_diff::reader::dtype::FloatFormat;
use ckpt_diff::synth::{Layout, Synthetic, UnetVariant};

use crate::util::*;

fn full(arch: Arch) -> Layout {
    let mut l = layout(arch, 1, FloatFormat::F16);
    l.zero_data = true;
    l
}

fn inspect(d: &Dir, name: &str, l: &Layout) -> serde_json::Value {
    let p = d.model(name, l, &Synthetic::base(l.arch, 0));
    run_json(&["inspect", s(&p)])
}

fn variants(j: &serde_json::Value) -> Vec<String> {
    j["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn full_shape_architectures() {
    let d = Dir::new();
    for (arch, id, params) in [
        (Arch::Sd1, "sd1", 1_066_235_384u64),
        (Arch::Sd2, "sd2", 1_303_597_228),
        (Arch::Sdxl, "sdxl", 3_468_837_945),
    ] {
        let j = inspect(&d, &format!("{id}.safetensors"), &full(arch));
        assert_eq!(j["arch"]["id"], id);
        assert_eq!(
            j["arch"]["confidence"], "high",
            "{id}: {}",
            j["arch"]["summary"]
        );
        assert_eq!(j["arch"]["scale"], 1);
        assert_eq!(j["params"], params, "{id}: real parameter count");
        assert_eq!(j["arch"]["matched_keys"], j["tensors"]);
        assert!(j["unknown_keys"].as_array().unwrap().is_empty());
        assert!(j["missing_keys"].as_array().unwrap().is_empty());
        assert!(variants(&j).is_empty(), "{id}: {:?}", variants(&j));
    }
}

#[test]
fn sd2_unet_alone_is_told_from_sd1_by_shapes() {
    let d = Dir::new();
    for (arch, id) in [(Arch::Sd1, "sd1"), (Arch::Sd2, "sd2")] {
        let mut l = full(arch);
        l.components = vec![Component::Unet];
        let j = inspect(&d, &format!("{id}-unet.safetensors"), &l);
        assert_eq!(j["arch"]["id"], id, "{}", j["arch"]["summary"]);
        assert_ne!(j["arch"]["confidence"], "none");
        assert!(variants(&j).iter().any(|v| v.contains("components absent")));
    }
}

#[test]
fn inpainting_and_pix2pix_unets() {
    let d = Dir::new();
    for (arch, variant, word) in [
        (Arch::Sd1, UnetVariant::Inpainting, "inpainting"),
        (Arch::Sd2, UnetVariant::Inpainting, "inpainting"),
        (Arch::Sd1, UnetVariant::Pix2Pix, "pix2pix"),
        (Arch::Sd2, UnetVariant::Depth, "depth"),
    ] {
        let mut l = full(arch);
        l.variant = variant;
        let j = inspect(&d, &format!("{word}-{}.safetensors", arch.id()), &l);
        assert_eq!(j["arch"]["id"], arch.id());
        assert_eq!(j["arch"]["confidence"], "high");
        assert!(
            variants(&j).iter().any(|v| v.contains(word)),
            "{:?}",
            variants(&j)
        );
        assert!(j["shape_mismatches"].as_array().unwrap().is_empty());
    }
}

#[test]
fn old_clip_key_names() {
    let d = Dir::new();
    for arch in [Arch::Sd1, Arch::Sdxl] {
        let mut l = full(arch);
        l.old_clip_names = true;
        let j = inspect(&d, &format!("old-{}.safetensors", arch.id()), &l);
        assert_eq!(j["arch"]["id"], arch.id());
        assert_eq!(j["arch"]["confidence"], "high");
        assert!(
            variants(&j).iter().any(|v| v.contains("old key names")),
            "{:?}",
            variants(&j)
        );
        assert!(
            j["unknown_keys"].as_array().unwrap().is_empty(),
            "aliases resolve to catalog keys"
        );
    }
}

#[test]
fn extras_and_pruned_text_encoders() {
    let d = Dir::new();
    let mut l = full(Arch::Sd1);
    l.ema = true;
    l.scheduler = true;
    let j = inspect(&d, "ema.safetensors", &l);
    assert_eq!(j["arch"]["id"], "sd1");
    let v = variants(&j);
    assert!(
        v.iter().any(|x| x.contains("EMA")) && v.iter().any(|x| x.contains("scheduler")),
        "{v:?}"
    );

    let mut l = full(Arch::Sdxl);
    l.prune_text_encoders = true;
    l.vpred_markers = true;
    let j = inspect(&d, "pruned.safetensors", &l);
    assert_eq!(j["arch"]["id"], "sdxl");
    assert_eq!(j["arch"]["confidence"], "high");
    let v = variants(&j);
    assert!(
        v.iter().any(|x| x.contains("pruned")) && v.iter().any(|x| x.contains("v-prediction")),
        "{v:?}"
    );
    assert!(
        j["missing_keys"].as_array().unwrap().is_empty(),
        "pruned layers are optional, not missing"
    );
}

#[test]
fn scaled_test_checkpoints_say_so() {
    let d = Dir::new();
    let j = inspect(
        &d,
        "small.safetensors",
        &layout(Arch::Sdxl, 32, FloatFormat::BF16),
    );
    assert_eq!(j["arch"]["id"], "sdxl");
    assert_eq!(j["arch"]["scale"], 32);
    assert_eq!(j["arch"]["confidence"], "high");
}

#[test]
fn unknown_layouts_fall_back_to_prefix_rows() {
    let d = Dir::new();
    let p = d.path("flux.safetensors");
    let mut bytes = Vec::new();
    let header = r#"{"double_blocks.0.img_attn.qkv.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"double_blocks.1.img_attn.qkv.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]},"img_in.weight":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}}"#;
    bytes.extend((header.len() as u64).to_le_bytes());
    bytes.extend(header.as_bytes());
    for i in 0..10u32 {
        bytes.extend((i as f32 + 1.0).to_le_bytes());
    }
    std::fs::write(&p, &bytes).unwrap();
    let j = run_json(&["inspect", s(&p)]);
    assert_eq!(j["arch"]["id"], "unknown");
    let sim = run_json(&["sim", s(&p), s(&p)]);
    let labels: Vec<&str> = sim["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["double_blocks.0", "double_blocks.1", "img_in"]);
}
