//! LoRA module names → the checkpoint key (and, for fused projections, the rows of it) each
//! patches, for the dialects in use: kohya's (LoRA, LoCon, and LyCORIS's LoHa/LoKr, which use
//! the same module names), diffusers/PEFT's dotted names, and for Flux also XLabs'.
//!
//! kohya names a module `lora_unet_<path>` or `lora_te[123]_<path>`, where `<path>` is the
//! patched layer's module path with `.` written `_`. Two U-Net paths are in use:
//! * the single-file (LDM/SGM) path: `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`
//!   for `model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight`
//!   (sd-scripts' SDXL U-Net has the original layout, its Flux networks use BFL's
//!   `double_blocks_0_img_attn_qkv`; ComfyUI's `model_lora_keys_unet` maps them from the
//!   model's own keys);
//! * the diffusers path: `lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`
//!   for the same layer (sd-scripts' SD1/SD2 networks, and SDXL files from diffusers-side
//!   trainers), through the diffusers → single-file renaming of `reader::diffusers`.
//!
//! diffusers/PEFT write the diffusers path with its dots, under `unet.`, `text_encoder.`,
//! `text_encoder_2.` or (Flux) `transformer.`; ComfyUI-style files write the single-file path
//! under `diffusion_model.`.
//!
//! Text encoders: `lora_te_` (SD1, SD2) and `lora_te1_`/`lora_te2_` (SDXL; Flux's CLIP-L is
//! `lora_te1_`, its T5 `lora_te3_`) are HF paths under the single file's prefix. OpenCLIP
//! towers (SD2, SDXL's second) fuse HF's `q_proj`/`k_proj`/`v_proj` into one
//! `attn.in_proj_weight`, so those modules patch a third of its rows each.
//!
//! Flux's fused projections are patched by row ranges too: diffusers' split `to_q/to_k/to_v`
//! are the thirds of `img_attn.qkv`, and a single block's `to_q/to_k/to_v/proj_mlp` are the
//! rows of `linear1` (3 × hidden, then the MLP), as diffusers'
//! `_convert_sd_scripts_to_ai_toolkit` splits them. XLabs names a double block's
//! `processor.{qkv,proj}_lora{1,2}` (1: image stream, 2: text stream) and a single block's
//! `processor.qkv_lora`/`proj_lora`, which diffusers' `_convert_xlabs_flux_lora_to_diffusers`
//! maps to `norm.linear` (the modulation) and `proj_out` (`linear2`).
//!
//! Underscores inside names (`to_q`, `proj_in`) make kohya's path ambiguous to split, so the
//! table is built the other way: every weight key of the architecture's catalog, written as
//! each dialect writes it.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::Arch;
use super::data::{Role, table};
use super::diffusers::{Family, openclip_layer, unet_prefixes, unet_rename};

/// What a LoRA module patches: a key of the checkpoint, whole or some of its rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Target {
    pub key: String,
    /// Which rows of the key's first dimension; `None`: all of it.
    pub rows: Option<Rows>,
}

/// Rows of a fused projection, by rule rather than number, so that they hold at any width
/// (the generated test models are narrower than the real ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Rows {
    /// The i-th third (q, k, v of a fused `in_proj_weight` or `qkv`).
    Third(usize),
    /// Rows i·h..(i+1)·h, h the key's input width (Flux single blocks' q, k, v in `linear1`).
    Hidden(usize),
    /// Rows from i·h to the end (the MLP part of `linear1`).
    AfterHidden(usize),
}

impl Rows {
    /// The row range in a key of `shape`.
    pub fn range(self, shape: &[usize]) -> (usize, usize) {
        let rows = shape.first().copied().unwrap_or(0);
        let h = shape.get(1).copied().unwrap_or(0);
        match self {
            Rows::Third(i) => (i * rows / 3, (i + 1) * rows / 3),
            Rows::Hidden(i) => (i * h, (i + 1) * h),
            Rows::AfterHidden(i) => (i * h, rows),
        }
    }
}

impl Target {
    /// The rows it patches in a key of `shape`.
    pub fn row_range(&self, shape: &[usize]) -> (usize, usize) {
        self.rows
            .map_or((0, shape.first().copied().unwrap_or(0)), |r| r.range(shape))
    }
}

/// The targets of `arch` that are slices of `key`, in row order.
pub fn slices_of(arch: Arch, key: &str) -> Vec<Target> {
    let Some(t) = tables(arch) else {
        return Vec::new();
    };
    let mut v: Vec<Target> = t
        .by_target
        .keys()
        .filter(|t| t.key == key && t.rows.is_some())
        .cloned()
        .collect();
    v.sort_by_key(|t| t.rows);
    v
}

/// An architecture's names both ways, built once.
struct Tables {
    by_stem: HashMap<String, Target>,
    /// Every name of a target, what sd-scripts writes first (see [`extractable`]), then
    /// shortest, then by name.
    by_target: HashMap<Target, Vec<String>>,
}

fn tables(arch: Arch) -> Option<&'static Tables> {
    let family = ARCHS.iter().position(|&a| a == arch)?;
    static TABLES: [OnceLock<Tables>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    Some(TABLES[family].get_or_init(|| {
        let by_stem = build(arch).0;
        let mut by_target: HashMap<Target, Vec<String>> = HashMap::new();
        for (stem, target) in &by_stem {
            by_target
                .entry(target.clone())
                .or_default()
                .push(stem.clone());
        }
        let written: HashMap<Target, String> = extractable_in(arch, &by_target)
            .into_iter()
            .map(|e| (e.target, e.stem))
            .collect();
        for (t, v) in by_target.iter_mut() {
            v.sort_by(|a, b| {
                let later = |s: &String| written.get(t) != Some(s);
                later(a)
                    .cmp(&later(b))
                    .then(a.len().cmp(&b.len()))
                    .then_with(|| a.cmp(b))
            });
        }
        Tables { by_stem, by_target }
    }))
}

/// The architectures a LoRA may be for, in the order detection prefers on a tie.
pub const ARCHS: [Arch; 4] = [Arch::Sd1, Arch::Sdxl, Arch::Sd2, Arch::Flux];

/// What a module stem (`lora_unet_..._to_q`, `unet.down_blocks....to_q`,
/// `double_blocks.0.processor.qkv_lora1`) patches in `arch` (SD1, SD2, SDXL, Flux).
pub fn target(arch: Arch, stem: &str) -> Option<&'static Target> {
    tables(arch)?.by_stem.get(stem)
}

/// Every name a module patching `t` may have in `arch`, in the dialects this table knows
/// (kohya's `lora_unet_`/`lora_te*_` in both U-Net paths, PEFT's dotted names, XLabs'),
/// what sd-scripts writes first.
pub fn names_of(arch: Arch, t: &Target) -> &'static [String] {
    tables(arch)
        .and_then(|x| x.by_target.get(t))
        .map_or(&[], Vec::as_slice)
}

/// A layer LoRA extraction writes a module for, as kohya's `extract_lora_from_models.py`
/// chooses them.
#[derive(Clone, Debug)]
pub struct Extractable {
    /// The module name written: what sd-scripts' networks write for the architecture (the
    /// diffusers U-Net path for SD1/SD2, the single-file path for SDXL and Flux; HF paths
    /// for text encoders).
    pub stem: String,
    pub target: Target,
    /// A part of a ResNet block, down- or upsampler (3×3 convolutions, `time_emb_proj`,
    /// `conv_shortcut`): kohya extracts those only when a convolution rank is given.
    pub resnet: bool,
    /// In a text encoder (kohya skips an encoder whose change is below `--min_diff`).
    pub text_encoder: bool,
}

/// Every layer extraction may write for `arch`, in catalog order: the U-Net's transformer
/// linears and 1×1 convolutions (`Transformer2DModel`), its ResNet parts, and the text
/// encoders' attention and MLP linears (`CLIPAttention`, `CLIPMLP`; OpenCLIP's fused
/// q/k/v as three modules); for Flux the double and single blocks' weights, as
/// `flux_extract_lora.py` takes them. Which of them have a matrix to factor is decided by
/// the model's shapes.
pub fn extractable(arch: Arch) -> Vec<Extractable> {
    tables(arch).map_or_else(Vec::new, |t| extractable_in(arch, &t.by_target))
}

/// [`extractable`] from the names of every target (the table is being built when
/// [`tables`] asks, so it passes them).
fn extractable_in(arch: Arch, by_target: &HashMap<Target, Vec<String>>) -> Vec<Extractable> {
    let family = match arch {
        Arch::Sdxl => Family::Sdxl,
        Arch::Sd2 => Family::Sd2,
        _ => Family::Sd1,
    };
    let prefixes = unet_prefixes(family);
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for k in &table(arch).keys {
        let Some(path) = k.name.strip_suffix(".weight") else {
            continue;
        };
        if k.shape.len() < 2 {
            continue;
        }
        if k.role == Role::Denoiser
            && let Some(rest) = path.strip_prefix(UNET)
        {
            let ldm = format!("lora_unet_{}", rest.replace('.', "_"));
            let (stem, resnet) = if arch == Arch::Flux {
                if !(rest.starts_with("double_blocks.") || rest.starts_with("single_blocks.")) {
                    continue;
                }
                (ldm, false)
            } else {
                let Some(hf) = unet_rename(&format!("{rest}."), &prefixes, false) else {
                    continue;
                };
                let hf = hf.trim_end_matches('.');
                let resnet = hf.contains(".resnets.") || hf.contains("samplers.");
                if !resnet && !hf.contains(".attentions.") {
                    continue;
                }
                let diffusers = format!("lora_unet_{}", hf.replace('.', "_"));
                (if arch == Arch::Sdxl { ldm } else { diffusers }, resnet)
            };
            out.push(Extractable {
                stem,
                target: Target {
                    key: k.name.clone(),
                    rows: None,
                },
                resnet,
                text_encoder: false,
            });
            continue;
        }
        if arch == Arch::Flux {
            continue;
        }
        // Text encoders: the kohya stems of this key (three for a fused in_proj).
        let mut stems: Vec<(&Target, &str)> = by_target
            .iter()
            .filter(|(t, _)| t.key == k.name)
            .flat_map(|(t, v)| v.iter().map(move |s| (t, s.as_str())))
            .filter(|(_, s)| s.starts_with("lora_te"))
            .filter(|(_, s)| s.contains("_self_attn_") || s.contains("_mlp_"))
            .collect();
        stems.sort_by_key(|(t, _)| t.rows);
        for (t, stem) in stems {
            if seen.insert(stem.to_string()) {
                out.push(Extractable {
                    stem: stem.to_string(),
                    target: t.clone(),
                    resnet: false,
                    text_encoder: true,
                });
            }
        }
    }
    out
}

const UNET: &str = "model.diffusion_model.";

/// Flux's diffusers names for a BFL block path (`double_blocks.0.img_attn.qkv`), with the
/// row split of fused projections as (name, share of rows) — shares in units of `hidden`
/// (the key's input width), `None` for the rest of the rows.
fn flux_diffusers(path: &str) -> Vec<(String, Option<usize>)> {
    let whole = |n: &str| vec![(n.to_string(), None)];
    let split = |names: &[&str]| -> Vec<(String, Option<usize>)> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), Some(i)))
            .collect()
    };
    if let Some(rest) = path.strip_prefix("double_blocks.") {
        let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let b = format!("transformer_blocks.{n}");
        let at = |s: &str| format!("{b}.{s}");
        return match tail {
            "img_attn.qkv" => split(&[&at("attn.to_q"), &at("attn.to_k"), &at("attn.to_v")]),
            "txt_attn.qkv" => split(&[
                &at("attn.add_q_proj"),
                &at("attn.add_k_proj"),
                &at("attn.add_v_proj"),
            ]),
            "img_attn.proj" => whole(&at("attn.to_out.0")),
            "txt_attn.proj" => whole(&at("attn.to_add_out")),
            "img_mlp.0" => whole(&at("ff.net.0.proj")),
            "img_mlp.2" => whole(&at("ff.net.2")),
            "txt_mlp.0" => whole(&at("ff_context.net.0.proj")),
            "txt_mlp.2" => whole(&at("ff_context.net.2")),
            "img_mod.lin" => whole(&at("norm1.linear")),
            "txt_mod.lin" => whole(&at("norm1_context.linear")),
            _ => Vec::new(),
        };
    }
    if let Some(rest) = path.strip_prefix("single_blocks.") {
        let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let b = format!("single_transformer_blocks.{n}");
        let at = |s: &str| format!("{b}.{s}");
        return match tail {
            "linear1" => {
                let mut v = split(&[&at("attn.to_q"), &at("attn.to_k"), &at("attn.to_v")]);
                v.push((at("proj_mlp"), None));
                v
            }
            "linear2" => whole(&at("proj_out")),
            "modulation.lin" => whole(&at("norm.linear")),
            _ => Vec::new(),
        };
    }
    match path {
        "img_in" => whole("x_embedder"),
        "txt_in" => whole("context_embedder"),
        "time_in.in_layer" => whole("time_text_embed.timestep_embedder.linear_1"),
        "time_in.out_layer" => whole("time_text_embed.timestep_embedder.linear_2"),
        "vector_in.in_layer" => whole("time_text_embed.text_embedder.linear_1"),
        "vector_in.out_layer" => whole("time_text_embed.text_embedder.linear_2"),
        "guidance_in.in_layer" => whole("time_text_embed.guidance_embedder.linear_1"),
        "guidance_in.out_layer" => whole("time_text_embed.guidance_embedder.linear_2"),
        "final_layer.linear" => whole("proj_out"),
        // `norm_out.linear` holds final_layer.adaLN_modulation.1's halves swapped: not a
        // row range, so not mapped (such modules are listed as unknown).
        _ => Vec::new(),
    }
}

/// XLabs' names for a BFL block path.
fn flux_xlabs(path: &str) -> Vec<String> {
    let (blocks, rest) = match path.split_once('.') {
        Some((b @ ("double_blocks" | "single_blocks"), r)) => (b, r),
        _ => return Vec::new(),
    };
    let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
    let p = |s: &str| vec![format!("{blocks}.{n}.processor.{s}")];
    match (blocks, tail) {
        ("double_blocks", "img_attn.qkv") => p("qkv_lora1"),
        ("double_blocks", "img_attn.proj") => p("proj_lora1"),
        ("double_blocks", "txt_attn.qkv") => p("qkv_lora2"),
        ("double_blocks", "txt_attn.proj") => p("proj_lora2"),
        ("single_blocks", "modulation.lin") => p("qkv_lora"),
        ("single_blocks", "linear2") => p("proj_lora"),
        _ => Vec::new(),
    }
}

/// The table, and any name two targets would share (none: the dialects are unambiguous).
fn build(arch: Arch) -> (HashMap<String, Target>, Vec<String>) {
    let family = match arch {
        Arch::Sdxl => Family::Sdxl,
        Arch::Sd2 => Family::Sd2,
        _ => Family::Sd1,
    };
    // (single-file prefix, kohya prefix, PEFT prefix, OpenCLIP) of each text encoder.
    let te: &[(&str, &str, &str, bool)] = match arch {
        Arch::Sd1 => &[(
            "cond_stage_model.transformer.",
            "lora_te_",
            "text_encoder.",
            false,
        )],
        Arch::Sd2 => &[("cond_stage_model.model.", "lora_te_", "text_encoder.", true)],
        Arch::Sdxl => &[
            (
                "conditioner.embedders.0.transformer.",
                "lora_te1_",
                "text_encoder.",
                false,
            ),
            (
                "conditioner.embedders.1.model.",
                "lora_te2_",
                "text_encoder_2.",
                true,
            ),
        ],
        Arch::Flux => &[
            (
                "text_encoders.clip_l.transformer.",
                "lora_te1_",
                "text_encoder.",
                false,
            ),
            (
                "text_encoders.t5xxl.transformer.",
                "lora_te3_",
                "text_encoder_2.",
                false,
            ),
        ],
        _ => &[],
    };
    let prefixes = unet_prefixes(family);
    let keys = &table(arch).keys;
    let shape_of: HashMap<&str, &[usize]> = keys
        .iter()
        .map(|k| (k.name.as_str(), k.shape.as_slice()))
        .collect();
    let mut m: HashMap<String, Target> = HashMap::new();
    let mut clashes = Vec::new();
    let mut add = |stem: String, key: &str, rows: Option<Rows>| {
        let t = Target {
            key: key.to_string(),
            rows,
        };
        if let Some(old) = m.insert(stem.clone(), t.clone())
            && old != t
        {
            clashes.push(stem);
        }
    };
    let kohya = |prefix: &str, path: &str| format!("{prefix}{}", path.replace('.', "_"));
    for k in keys {
        let Some(path) = k.name.strip_suffix(".weight") else {
            continue;
        };
        if k.role == Role::Denoiser
            && let Some(rest) = path.strip_prefix(UNET)
        {
            add(kohya("lora_unet_", rest), &k.name, None);
            add(format!("diffusion_model.{rest}"), &k.name, None);
            if arch == Arch::Flux {
                let single = rest.starts_with("single_blocks.");
                for (name, share) in flux_diffusers(rest) {
                    let range = match share {
                        Some(i) if single => Some(Rows::Hidden(i)),
                        Some(i) => Some(Rows::Third(i)),
                        None if name.ends_with("proj_mlp") => Some(Rows::AfterHidden(3)),
                        None => None,
                    };
                    add(format!("transformer.{name}"), &k.name, range);
                    add(kohya("lora_transformer_", &name), &k.name, range);
                }
                for name in flux_xlabs(rest) {
                    add(name, &k.name, None);
                }
            } else if let Some(hf) = unet_rename(&format!("{rest}."), &prefixes, false) {
                let hf = hf.trim_end_matches('.');
                add(kohya("lora_unet_", hf), &k.name, None);
                add(format!("unet.{hf}"), &k.name, None);
            }
        }
        for &(prefix, lora, peft, openclip) in te {
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            if !openclip {
                add(kohya(lora, rest), &k.name, None);
                add(format!("{peft}{rest}"), &k.name, None);
            }
        }
    }
    // OpenCLIP towers: each HF layer name through the diffusers reader's renaming.
    for &(prefix, lora, peft, openclip) in te {
        if !openclip {
            continue;
        }
        for n in 0.. {
            let probe = format!("{prefix}transformer.resblocks.{n}.attn.in_proj_weight");
            if !shape_of.contains_key(probe.as_str()) {
                break;
            }
            for hf in [
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
                "self_attn.out_proj.weight",
                "mlp.fc1.weight",
                "mlp.fc2.weight",
            ] {
                let (tail, third) = openclip_layer(hf);
                let key = format!("{prefix}transformer.resblocks.{n}.{tail}");
                if !shape_of.contains_key(key.as_str()) {
                    continue;
                }
                let rows = third.map(Rows::Third);
                let path = format!("text_model.encoder.layers.{n}.{}", &hf[..hf.len() - 7]);
                add(kohya(lora, &path), &key, rows);
                add(format!("{peft}{path}"), &key, rows);
            }
        }
    }
    (m, clashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every U-Net key written as diffusers names it reads back as itself through the
    /// diffusers reader's renaming read forwards (which tests/diffusers.rs checks against diffusers'
    /// converter), and no two keys share a LoRA name.
    #[test]
    fn diffusers_paths_invert_the_readers_renaming() {
        for (arch, family) in [
            (Arch::Sd1, Family::Sd1),
            (Arch::Sd2, Family::Sd2),
            (Arch::Sdxl, Family::Sdxl),
        ] {
            let prefixes = unet_prefixes(family);
            let mut n = 0;
            for k in &table(arch).keys {
                let Some(rest) = k.name.strip_prefix(UNET) else {
                    continue;
                };
                let hf = unet_rename(rest, &prefixes, false)
                    .unwrap_or_else(|| panic!("{arch:?}: {} has no diffusers name", k.name));
                assert_eq!(
                    unet_rename(&hf, &prefixes, true).as_deref(),
                    Some(rest),
                    "{hf}"
                );
                n += 1;
            }
            assert!(n > 600, "{arch:?}: only {n} U-Net keys");
            let (m, clashes) = build(arch);
            assert!(
                clashes.is_empty(),
                "{arch:?}: names two keys share: {clashes:?}"
            );
            assert!(m.len() > n, "{arch:?}: {} names for {n} keys", m.len());
        }
    }
}
