//! Architecture detection on full-shape generated checkpoints (sparse zero-weight files:
//! the header is the real one, the data costs no disk).

use ckpt_core::catalog::{Arch, Component};
use ckpt_ops::synth::{Layout, Synthetic, Variant};
use ckpt_read::dtype::FloatFormat;

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
        (arch("sd1"), "sd1", 1_066_235_384u64),
        (arch("sd2"), "sd2", 1_303_597_228),
        (arch("sdxl"), "sdxl", 3_468_837_945),
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
    for (arch, id) in [(arch("sd1"), "sd1"), (arch("sd2"), "sd2")] {
        let mut l = full(arch);
        l.components = vec![Component::named("unet").unwrap()];
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
        (arch("sd1"), variant("inpainting"), "inpainting"),
        (arch("sd2"), variant("inpainting"), "inpainting"),
        (arch("sd1"), variant("pix2pix"), "pix2pix"),
        (arch("sd2"), variant("depth"), "depth"),
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
    for arch in [arch("sd1"), arch("sdxl")] {
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
    let mut l = full(arch("sd1"));
    l.ema = true;
    l.scheduler = true;
    let j = inspect(&d, "ema.safetensors", &l);
    assert_eq!(j["arch"]["id"], "sd1");
    let v = variants(&j);
    assert!(
        v.iter().any(|x| x.contains("EMA")) && v.iter().any(|x| x.contains("scheduler")),
        "{v:?}"
    );

    let mut l = full(arch("sdxl"));
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
        &layout(arch("sdxl"), 32, FloatFormat::BF16),
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
    let labels: Vec<&str> = column(&sim["rows"], "label");
    // Bare DiT module names read as the canonical (ComfyUI) ones.
    assert_eq!(
        labels,
        [
            "model.diffusion_model.double_blocks.0",
            "model.diffusion_model.double_blocks.1",
            "model.diffusion_model.img_in"
        ]
    );
}

fn dit(arch: Arch, variant: Variant, components: &[Component], bare: bool) -> Layout {
    let mut l = full(arch);
    l.dtype = FloatFormat::BF16;
    l.variant = variant;
    if !components.is_empty() {
        l.components = components.to_vec();
    }
    l.bare = bare;
    l
}

/// Every Flux and SD3 release, whole and as the diffuser-only download, with ComfyUI's
/// prefix and bare (BFL's naming): the architecture, a high confidence, every key known,
/// and the variant named.
#[test]
fn full_shape_dit_releases() {
    let d = Dir::new();
    let diffuser = [Component::named("diffuser").unwrap()];
    let cases: Vec<(Layout, &str, Option<&str>)> = vec![
        (dit(arch("flux"), variant("base"), &[], false), "flux", None),
        (
            dit(arch("flux"), variant("schnell"), &[], false),
            "flux",
            Some("schnell"),
        ),
        (
            dit(arch("flux"), variant("fill"), &[], false),
            "flux",
            Some("Fill"),
        ),
        (
            dit(arch("flux"), variant("control"), &[], false),
            "flux",
            Some("Canny or Depth"),
        ),
        (
            dit(arch("flux"), variant("base"), &diffuser, true),
            "flux",
            Some("without the model.diffusion_model. prefix"),
        ),
        (
            dit(arch("flux"), variant("base"), &diffuser, false),
            "flux",
            Some("denoiser alone"),
        ),
        (
            dit(arch("flux"), variant("schnell"), &diffuser, true),
            "flux",
            Some("schnell"),
        ),
        (
            dit(arch("flux"), variant("fill"), &diffuser, true),
            "flux",
            Some("Fill"),
        ),
        (
            dit(arch("chroma"), variant("base"), &[], false),
            "chroma",
            None,
        ),
        (
            dit(arch("chroma"), variant("base"), &diffuser, true),
            "chroma",
            Some("denoiser alone"),
        ),
        (dit(arch("sd3"), variant("base"), &[], false), "sd3", None),
        (
            dit(arch("sd3"), variant("base"), &diffuser, false),
            "sd3",
            Some("denoiser alone"),
        ),
        (
            dit(arch("sd35m"), variant("base"), &[], false),
            "sd35m",
            None,
        ),
        (
            dit(arch("sd35m"), variant("base"), &diffuser, true),
            "sd35m",
            Some("denoiser alone"),
        ),
        (
            dit(arch("sd35l"), variant("base"), &[], false),
            "sd35l",
            None,
        ),
        (
            dit(arch("sd35l"), variant("base"), &diffuser, true),
            "sd35l",
            Some("denoiser alone"),
        ),
        // The 2026 models whole (the DiT, the LLM text encoder under
        // `text_encoders.<name>.transformer.`, the VAE under `vae.`) and their diffusers, with
        // the prefix and bare.
        (
            dit(arch("z-image"), variant("base"), &[], false),
            "z-image",
            None,
        ),
        (
            dit(arch("z-image"), variant("base"), &diffuser, true),
            "z-image",
            Some("without the model.diffusion_model. prefix"),
        ),
        (
            dit(arch("qwen-image"), variant("base"), &[], false),
            "qwen-image",
            None,
        ),
        (
            dit(arch("qwen-image"), variant("layered"), &diffuser, true),
            "qwen-image",
            Some("Layered"),
        ),
        (
            dit(arch("flux2-dev"), variant("base"), &[], false),
            "flux2-dev",
            None,
        ),
        (
            dit(arch("flux2-klein-9b"), variant("base"), &diffuser, true),
            "flux2-klein-9b",
            Some("without the model.diffusion_model. prefix"),
        ),
        (
            dit(arch("flux2-klein-4b"), variant("base"), &[], false),
            "flux2-klein-4b",
            None,
        ),
        (
            dit(arch("flux2-klein-9b"), variant("base"), &[], false),
            "flux2-klein-9b",
            None,
        ),
        (
            dit(arch("flux2-dev"), variant("base"), &diffuser, false),
            "flux2-dev",
            Some("denoiser alone"),
        ),
    ];
    for (i, (l, id, word)) in cases.iter().enumerate() {
        let j = inspect(&d, &format!("{i}-{id}.safetensors"), l);
        let what = format!("case {i} ({id}, {:?}, bare {})", l.variant, l.bare);
        assert_eq!(j["arch"]["id"], *id, "{what}: {}", j["arch"]["summary"]);
        assert_eq!(
            j["arch"]["confidence"], "high",
            "{what}: {}",
            j["arch"]["summary"]
        );
        assert_eq!(j["arch"]["matched_keys"], j["tensors"], "{what}");
        assert!(j["unknown_keys"].as_array().unwrap().is_empty(), "{what}");
        assert!(j["missing_keys"].as_array().unwrap().is_empty(), "{what}");
        assert!(
            j["shape_mismatches"].as_array().unwrap().is_empty(),
            "{what}"
        );
        let v = variants(&j);
        match word {
            Some(w) => assert!(v.iter().any(|x| x.contains(w)), "{what}: {v:?}"),
            None => assert!(v.is_empty(), "{what}: {v:?}"),
        }
        // A dev file is no schnell, a base Flux no Fill.
        if l.variant == variant("base") {
            assert!(
                !v.iter()
                    .any(|x| x.contains("schnell") || x.contains("Fill") || x.contains("Canny")),
                "{what}: {v:?}"
            );
        }
    }
    // Flux.1 dev's transformer has 11,901,408,320 parameters (BFL's release).
    let j = inspect(
        &d,
        "flux-dev-diffuser.safetensors",
        &dit(arch("flux"), variant("base"), &diffuser, true),
    );
    assert_eq!(j["params"], 11_901_408_320u64);
}

/// A file with only a text encoder is recognised as one, and says it could belong to more
/// than one release.
#[test]
fn text_encoder_alone() {
    let d = Dir::new();
    let j = inspect(
        &d,
        "t5.safetensors",
        &dit(
            arch("flux"),
            variant("base"),
            &[Component::named("t5xxl").unwrap()],
            false,
        ),
    );
    let v = variants(&j);
    assert_ne!(j["arch"]["confidence"], "none", "{}", j["arch"]["summary"]);
    assert!(v.iter().any(|x| x.contains("components absent")), "{v:?}");
    assert!(
        v.iter()
            .any(|x| x.contains("chroma") || x.contains("Chroma") || x.contains("SD3")),
        "a T5-XXL alone fits Flux, Chroma and SD3 alike: {v:?}"
    );
}

/// The 2026 models' LLM text encoders, each in a file of its own under transformers' names
/// (`model.layers.N...`, which all four share): told apart by their shapes, every key
/// placed, and the note names the models that use it. The output head is `lm_head.` as
/// transformers writes it (ComfyUI's `model.lm_head.` in an all-in-one file), and a
/// Qwen2.5-VL file may have transformers 5's names (`model.language_model.`,
/// `model.visual.`). (Scaled by 16: the names and the ratios of the shapes are the real
/// ones.)
#[test]
fn llm_text_encoders_alone() {
    let d = Dir::new();
    let cases = [
        (
            "z-image",
            "qwen3_4b",
            "Qwen3-4B",
            &["z-image", "flux2-klein-4b"][..],
            false,
        ),
        (
            "flux2-klein-9b",
            "qwen3_8b",
            "Qwen3-8B",
            &["flux2-klein-9b"][..],
            false,
        ),
        (
            "qwen-image",
            "qwen25_7b",
            "Qwen2.5-VL-7B",
            &["qwen-image"][..],
            false,
        ),
        (
            "qwen-image",
            "qwen25_7b",
            "Qwen2.5-VL-7B",
            &["qwen-image"][..],
            true,
        ),
        (
            "flux2-dev",
            "mistral3_24b",
            "Mistral-3 24B",
            &["flux2-dev"][..],
            false,
        ),
    ];
    for (id, component, label, used_by, tf5) in cases {
        let mut l = layout(arch(id), 16, FloatFormat::BF16);
        l.components = vec![Component::named(component).unwrap()];
        let all_in_one = d.model(
            &format!("{component}-aio.safetensors"),
            &l,
            &Synthetic::base(l.arch, 0),
        );
        let alone = d.path(&format!("{component}-{tf5}.safetensors"));
        let prefix = format!("text_encoders.{component}.transformer.");
        rewrite(&all_in_one, &alone, |ts| {
            for t in ts.iter_mut() {
                let name = t.name.strip_prefix(&prefix).expect("prefixed");
                let name = name.replace("model.lm_head.", "lm_head.");
                t.name = match (
                    tf5,
                    name.strip_prefix("model."),
                    name.strip_prefix("visual."),
                ) {
                    (true, Some(rest), _) => format!("model.language_model.{rest}"),
                    (true, _, Some(rest)) => format!("model.visual.{rest}"),
                    _ => name,
                };
            }
            ts.sort_by(|a, b| a.name.cmp(&b.name));
        });
        let j = run_json(&["inspect", s(&alone)]);
        let what = format!(
            "{component} (transformers 5: {tf5}): {}",
            j["arch"]["summary"]
        );
        assert!(
            used_by.contains(&j["arch"]["id"].as_str().unwrap()),
            "{what}"
        );
        assert_eq!(j["arch"]["matched_keys"], j["tensors"], "{what}");
        assert!(j["unknown_keys"].as_array().unwrap().is_empty(), "{what}");
        let v = variants(&j);
        let labels: Vec<&str> = used_by.iter().map(|a| arch(a).label()).collect();
        let note = format!(
            "a text encoder alone ({label}), which {} use{}",
            labels.join(", "),
            if used_by.len() == 1 { "s" } else { "" }
        );
        assert!(v.contains(&note), "{what}: {v:?}");
        // Its tensors line up with the same encoder in an all-in-one file: identical
        // weights compare equal, row by row.
        let tensors = j["tensors"].clone();
        let j = run_json(&["sim", s(&alone), s(&all_in_one)]);
        let row = find_row(&j["rows"], "label", component.to_uppercase().as_str());
        assert_eq!(row["similarity"], 1.0, "{component}: {row}");
        assert_eq!(row["tensors"], tensors, "{component}: {row}");
        assert!(
            j["notes"]["only_in_a"].as_array().unwrap().is_empty(),
            "{component}"
        );
        // `fix` keeps the names it was given (ComfyUI loads such a file by them); it exits 1
        // for the components a whole checkpoint would have.
        let fixed = d.path(&format!("{component}-{tf5}-fixed.safetensors"));
        run_code(&["fix", s(&alone), "-o", s(&fixed)]);
        let names = |p: &std::path::Path| -> Vec<String> {
            read_raw(p).0.into_iter().map(|t| t.name).collect()
        };
        assert_eq!(names(&fixed), names(&alone), "{component}");
    }
}

/// A 2026 model's VAE saved alone under its bare names (ComfyUI's `vae/` files; BFL's FLUX.2
/// `ae.safetensors`, whose 1x1 convolutions sit in the encoder and decoder) is read under
/// `vae.` and named with the models that use it; an SD VAE alone, whose names are the AE's
/// with 4 latent channels, is not taken for one.
#[test]
fn vaes_alone() {
    let d = Dir::new();
    let cases = [
        (
            "qwen-image",
            "Qwen-Image VAE (Wan 2.1 layout)",
            &["qwen-image"][..],
            false,
        ),
        (
            "flux2-klein-4b",
            "FLUX.2 AE",
            &["flux2-dev", "flux2-klein-9b", "flux2-klein-4b"][..],
            false,
        ),
        (
            "flux2-klein-4b",
            "FLUX.2 AE",
            &["flux2-dev", "flux2-klein-9b", "flux2-klein-4b"][..],
            true,
        ),
        (
            "z-image",
            "Flux.1 AE",
            &["flux", "z-image", "chroma"][..],
            false,
        ),
    ];
    for (id, label, used_by, bfl) in cases {
        let mut l = layout(arch(id), 16, FloatFormat::BF16);
        l.components = vec![Component::named("vae").unwrap()];
        let whole = d.model(
            &format!("{id}-vae-aio.safetensors"),
            &l,
            &Synthetic::base(l.arch, 0),
        );
        let alone = d.path(&format!("{id}-{bfl}-vae.safetensors"));
        rewrite(&whole, &alone, |ts| {
            for t in ts.iter_mut() {
                let name = t.name.strip_prefix("vae.").expect("under vae.").to_string();
                t.name = match (
                    bfl,
                    name.strip_prefix("quant_conv."),
                    name.strip_prefix("post_quant_conv."),
                ) {
                    (true, Some(rest), _) => format!("encoder.quant_conv.{rest}"),
                    (true, _, Some(rest)) => format!("decoder.post_quant_conv.{rest}"),
                    _ => name,
                };
            }
        });
        let j = run_json(&["inspect", s(&alone)]);
        let what = format!("{id} (BFL: {bfl}): {}", j["arch"]["summary"]);
        assert!(
            used_by.contains(&j["arch"]["id"].as_str().unwrap()),
            "{what}"
        );
        assert_eq!(j["arch"]["matched_keys"], j["tensors"], "{what}");
        let v = variants(&j);
        let labels: Vec<&str> = used_by.iter().map(|a| arch(a).label()).collect();
        assert!(
            v.iter()
                .any(|x| x.starts_with(&format!("a VAE alone ({label}), which"))
                    && labels.iter().all(|l| x.contains(l))),
            "{what}: {v:?}"
        );
    }
    // SD1's VAE alone keeps its bare names and is no architecture's.
    let mut l = layout(arch("sd1"), 16, FloatFormat::BF16);
    l.components = vec![Component::named("vae").unwrap()];
    let whole = d.model("sd1-vae-aio.safetensors", &l, &Synthetic::base(l.arch, 0));
    let alone = d.path("sd1-vae.safetensors");
    rewrite(&whole, &alone, |ts| {
        for t in ts.iter_mut() {
            t.name = t
                .name
                .strip_prefix("first_stage_model.")
                .unwrap()
                .to_string();
        }
    });
    let j = run_json(&["inspect", s(&alone)]);
    assert_eq!(j["arch"]["id"], "unknown", "{}", j["arch"]["summary"]);
}

/// `validate` on a schnell file does not call the guidance embedding it never had pruned.
#[test]
fn schnell_is_not_a_pruned_dev() {
    let d = Dir::new();
    let p = d.model(
        "schnell.safetensors",
        &dit(
            arch("flux"),
            variant("schnell"),
            &[Component::named("diffuser").unwrap()],
            true,
        ),
        &Synthetic::base(arch("flux"), 0),
    );
    let (_, text, _) = run_code(&["validate", s(&p), "--json"]);
    assert!(!text.contains("guidance_in"), "{text}");
    assert!(text.contains("schnell"), "{text}");
}

/// A bare SDXL U-Net (keys without `model.diffusion_model.`, as city96's SDXL GGUFs and
/// extracted U-Nets hold them) is SDXL, read as the checkpoint's U-Net.
#[test]
fn bare_sdxl_unet_is_recognised() {
    let d = Dir::new();
    let sdxl = arch("sdxl");
    let full = d.model(
        "full.safetensors",
        &layout(sdxl, 32, FloatFormat::BF16),
        &ckpt_ops::synth::Synthetic::base(sdxl, 4),
    );
    let bare = d.path("bare.safetensors");
    rewrite(&full, &bare, |tensors| {
        tensors.retain(|t| t.name.starts_with("model.diffusion_model."));
        for t in tensors.iter_mut() {
            t.name = t.name["model.diffusion_model.".len()..].to_string();
        }
    });
    let r = run_json(&["inspect", s(&bare)]);
    assert_eq!(r["arch"]["id"], "sdxl", "{}", r["arch"]);
    assert_eq!(r["arch"]["confidence"], "high", "{}", r["arch"]);
    assert!(r["unknown_keys"].as_array().unwrap().is_empty());
    // Its U-Net rows equal the full file's.
    let sim = run_json(&["sim", s(&bare), s(&full)]);
    let unet_rows: Vec<_> = sim["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["component"] == "unet")
        .collect();
    assert!(unet_rows.len() >= 19, "{}", sim["rows"]);
    for row in unet_rows {
        assert_eq!(row["similarity"].as_f64().unwrap(), 1.0, "{row}");
    }
}
