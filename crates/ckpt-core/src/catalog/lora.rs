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
//!   trainers), through the diffusers → single-file renaming of [`super::diffusers`].
//!
//! diffusers/PEFT write the diffusers path with its dots, under `unet.`, `text_encoder.`,
//! `text_encoder_2.` or (Flux) `transformer.`; ComfyUI-style files write the single-file path
//! under `diffusion_model.`.
//!
//! Text encoders: `lora_te_` (SD1, SD2) and `lora_te1_`/`lora_te2_` (SDXL; Flux's CLIP-L is
//! `lora_te1_`, its T5 `lora_te3_`) are HF paths under the single file's prefix. OpenCLIP
//! towers (SD2, SDXL's second) fuse HF's `q_proj`/`k_proj`/`v_proj` into one
//! `attn.in_proj_weight`, so those modules patch a third of its rows each. A CLIP text
//! model's path comes under both transformers namings: transformers 4's
//! `text_model.encoder.layers.0.self_attn.q_proj` and transformers 5's
//! `encoder.layers.0.self_attn.q_proj` (no `text_model.` level), so PEFT's
//! `text_encoder.encoder.layers.0.self_attn.q_proj` and diffusers' `convert_state_dict_to_kohya`
//! of it, `lora_te1_encoder_layers_0_self_attn_q_proj` (`lora_te1_` for SD1's and SD2's
//! encoder too: the spec's `kohya_also`), patch what the transformers-4 names patch. Those
//! other names are aliases: read, never written ([`names_of`] lists them last, extraction
//! writes none), since the transformers-4 names are the ones every loader maps (diffusers
//! drops `text_model.` itself when the model has no such level).
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

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use super::data::{Role, table};
use super::diffusers::{module_names, openclip_layer, unet_prefixes, unet_rename};
use super::spec::{ExtractNames, LoraSpec};
use super::{Arch, DENOISER_PREFIX};

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
    /// Every name of a target, what sd-scripts writes first (see [`extractable`]), then the
    /// names that are not aliases, then shortest, then by name.
    by_target: HashMap<Target, Vec<String>>,
    /// The names read but never written.
    aliases: HashSet<String>,
}

/// The names of a table, and which of them are aliases (read, never written).
struct Built {
    by_stem: HashMap<String, Target>,
    aliases: HashSet<String>,
    /// Any name two targets would share (none: the dialects are unambiguous).
    clashes: Vec<String>,
}

fn tables(arch: Arch) -> Option<&'static Tables> {
    spec(arch)?;
    static TABLES: OnceLock<Vec<OnceLock<Tables>>> = OnceLock::new();
    let slots = TABLES.get_or_init(|| Arch::all().iter().map(|_| OnceLock::new()).collect());
    Some(slots[arch.0 as usize].get_or_init(|| {
        let Built {
            by_stem,
            aliases,
            clashes,
        } = build(arch);
        // A name of two targets is a mistake in the catalog (the tests check every spec).
        debug_assert!(clashes.is_empty(), "{arch:?}: {clashes:?}");
        let mut by_target: HashMap<Target, Vec<String>> = HashMap::new();
        for (stem, target) in &by_stem {
            by_target
                .entry(target.clone())
                .or_default()
                .push(stem.clone());
        }
        let written: HashMap<Target, String> = extractable_in(arch, &by_target, &aliases)
            .into_iter()
            .map(|e| (e.target, e.stem))
            .collect();
        for (t, v) in by_target.iter_mut() {
            v.sort_by(|a, b| {
                let later = |s: &String| written.get(t) != Some(s);
                later(a)
                    .cmp(&later(b))
                    .then(aliases.contains(a).cmp(&aliases.contains(b)))
                    .then(a.len().cmp(&b.len()))
                    .then_with(|| a.cmp(b))
            });
        }
        Tables {
            by_stem,
            by_target,
            aliases,
        }
    }))
}

/// The architecture's LoRA spec, if LoRAs are read for it.
fn spec(arch: Arch) -> Option<&'static LoraSpec> {
    arch.info().spec.lora.as_ref()
}

/// The architectures a LoRA may be for, in the order detection prefers on a tie (their
/// specs' `[lora] order`).
pub fn archs() -> Vec<Arch> {
    let mut v: Vec<Arch> = Arch::all()
        .iter()
        .copied()
        .filter(|&a| spec(a).is_some())
        .collect();
    v.sort_by_key(|&a| spec(a).map_or(0, |l| l.order));
    v
}

/// Whether a LoRA file's metadata says it is for `arch` (kohya's `ss_v2` and
/// `ss_base_model_version` tell SD2 from SD1, whose module names are the same): the spec's
/// `prefer_when`, which decides a tie.
pub fn preferred_by(arch: Arch, metadata: &dyn Fn(&str) -> Option<String>) -> bool {
    spec(arch).is_some_and(|l| {
        l.prefer_when.iter().any(|t| {
            metadata(&t.key).is_some_and(|v| {
                t.equals.as_ref().is_none_or(|e| v.eq_ignore_ascii_case(e))
                    && t.starts_with
                        .as_ref()
                        .is_none_or(|p| v.starts_with(p.as_str()))
            })
        })
    })
}

/// Whether a LoRA module's `down` (`[rank, in, ...]`) and `up` (`[out, rank, ...]`) shapes fit
/// what `stem` patches in `arch` at a checkpoint scaled down by `scale` (the rows of a fused
/// projection's part). Families that share module names (FLUX.2 and Flux.1, or the FLUX.2
/// sizes) differ here.
pub fn fits(arch: Arch, stem: &str, down: &[usize], up: &[usize], scale: u32) -> bool {
    let Some(t) = target(arch, stem) else {
        return false;
    };
    let Some(key) = table(arch).get(&t.key) else {
        return false;
    };
    let shape = super::detect::scaled_shape(&key.shape, scale);
    let (lo, hi) = t.row_range(&shape);
    let inputs: usize = shape.iter().skip(1).product();
    let (Some(&rank), Some(&out)) = (down.first(), up.first()) else {
        return false;
    };
    let down_in: usize = down.iter().skip(1).product();
    up.get(1) == Some(&rank) && out == hi - lo && down_in == inputs
}

/// What a module stem (`lora_unet_..._to_q`, `unet.down_blocks....to_q`,
/// `double_blocks.0.processor.qkv_lora1`) patches in `arch` (any architecture whose spec has
/// a `[lora]` table).
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
    let Some(t) = tables(arch) else {
        return Vec::new();
    };
    // Extraction writes none of the aliases.
    extractable_in(arch, &t.by_target, &t.aliases)
}

/// [`extractable`] from the names of every target (the table is being built when
/// [`tables`] asks, so it passes them), leaving out `aliases`.
fn extractable_in(
    arch: Arch,
    by_target: &HashMap<Target, Vec<String>>,
    aliases: &HashSet<String>,
) -> Vec<Extractable> {
    let Some(lora) = spec(arch) else {
        return Vec::new();
    };
    let prefixes = unet_names(arch);
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
            && let Some(rest) = path.strip_prefix(DENOISER_PREFIX)
        {
            if !lora.extract_only.is_empty()
                && !lora
                    .extract_only
                    .iter()
                    .any(|p| rest.starts_with(p.as_str()))
            {
                continue;
            }
            if lora.extract_skip.iter().any(|p| rest.contains(p.as_str())) {
                continue;
            }
            let ldm = format!("lora_unet_{}", rest.replace('.', "_"));
            // An LDM U-Net: kohya takes its transformers, and its ResNet parts with a
            // convolution rank (told by their diffusers names).
            let (stem, resnet) = match &prefixes {
                None => (ldm, false),
                Some(prefixes) => {
                    let Some(hf) = unet_rename(&format!("{rest}."), prefixes, false) else {
                        continue;
                    };
                    let hf = hf.trim_end_matches('.');
                    let resnet = hf.contains(".resnets.") || hf.contains("samplers.");
                    if !resnet && !hf.contains(".attentions.") {
                        continue;
                    }
                    let diffusers = format!("lora_unet_{}", hf.replace('.', "_"));
                    match lora.extract {
                        ExtractNames::Diffusers => (diffusers, resnet),
                        ExtractNames::Single => (ldm, resnet),
                    }
                }
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
        if !lora.extract_only.is_empty() {
            continue;
        }
        // Text encoders: the kohya stems of this key (three for a fused in_proj).
        let mut stems: Vec<(&Target, &str)> = by_target
            .iter()
            .filter(|(t, _)| t.key == k.name)
            .flat_map(|(t, v)| v.iter().map(move |s| (t, s.as_str())))
            .filter(|(_, s)| s.starts_with("lora_te") && !aliases.contains(*s))
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

/// The diffusers renaming of the architecture's LDM U-Net, if it has one.
fn unet_names(arch: Arch) -> Option<Vec<(String, String)>> {
    let unet = arch.info().spec.diffusers.as_ref()?.unet.as_ref()?;
    Some(unet_prefixes(unet))
}

/// The name `pattern` (with at most one `{n}`) gives a module path, if it matches.
fn pattern_name(module: &str, name: &str, path: &str) -> Option<String> {
    match module.split_once("{n}") {
        None => (module == path).then(|| name.to_string()),
        Some((pre, post)) => {
            let n = path.strip_prefix(pre)?.strip_suffix(post)?;
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| name.replace("{n}", n))
        }
    }
}

/// The HF paths of a CLIP text model's module under transformers 4's naming (`path`, with
/// `text_model.`) and transformers 5's (without it, when `path` has it).
fn clip_paths(path: &str) -> impl Iterator<Item = (&str, bool)> {
    std::iter::once((path, false)).chain(path.strip_prefix("text_model.").map(|p| (p, true)))
}

/// The table, and which names are aliases.
fn build(arch: Arch) -> Built {
    let Some(lora) = spec(arch) else {
        return Built {
            by_stem: HashMap::new(),
            aliases: HashSet::new(),
            clashes: Vec::new(),
        };
    };
    let modules = arch
        .info()
        .spec
        .diffusers
        .as_ref()
        .map_or(&[][..], |d| d.modules.as_slice());
    let prefixes = unet_names(arch);
    let keys = &table(arch).keys;
    let shape_of: HashMap<&str, &[usize]> = keys
        .iter()
        .map(|k| (k.name.as_str(), k.shape.as_slice()))
        .collect();
    let mut m: HashMap<String, Target> = HashMap::new();
    let mut clashes = Vec::new();
    let mut aliases = HashSet::new();
    // `alias`: a name read but never written.
    let mut add_as = |stem: String, key: &str, rows: Option<Rows>, alias: bool| {
        let t = Target {
            key: key.to_string(),
            rows,
        };
        if alias {
            aliases.insert(stem.clone());
        }
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
            && let Some(rest) = path.strip_prefix(DENOISER_PREFIX)
        {
            add_as(kohya("lora_unet_", rest), &k.name, None, false);
            add_as(format!("diffusion_model.{rest}"), &k.name, None, false);
            let diffusers_names = module_names(modules, rest);
            if let Some(peft) = &lora.peft_single {
                // Read, but where diffusers names the module otherwise, never written.
                let renamed = !diffusers_names.is_empty();
                add_as(format!("{peft}{rest}"), &k.name, None, renamed);
                if !renamed {
                    for also in &lora.kohya_also {
                        add_as(kohya(also, rest), &k.name, None, true);
                    }
                }
            }
            if let Some(names) = &lora.diffusers {
                for (name, rows) in diffusers_names {
                    add_as(format!("{}{name}", names.peft), &k.name, rows, false);
                    add_as(kohya(&names.kohya, &name), &k.name, rows, false);
                    for also in &names.also {
                        add_as(format!("{also}{name}"), &k.name, rows, false);
                    }
                    for also in &lora.kohya_also {
                        add_as(kohya(also, &name), &k.name, rows, true);
                    }
                }
            } else if let Some(prefixes) = &prefixes
                && let Some(hf) = unet_rename(&format!("{rest}."), prefixes, false)
            {
                let hf = hf.trim_end_matches('.');
                add_as(kohya("lora_unet_", hf), &k.name, None, false);
                add_as(format!("unet.{hf}"), &k.name, None, false);
            }
            for n in &lora.names {
                if let Some(name) = pattern_name(&n.module, &n.name, rest) {
                    add_as(name, &k.name, None, false);
                }
            }
        }
        for te in &lora.text_encoders {
            let Some(rest) = path.strip_prefix(te.under.as_str()) else {
                continue;
            };
            if !te.openclip {
                for (path, flat) in clip_paths(rest) {
                    add_as(kohya(&te.kohya, path), &k.name, None, flat);
                    add_as(format!("{}{path}", te.peft), &k.name, None, flat);
                    for also in &te.kohya_also {
                        add_as(kohya(also, path), &k.name, None, true);
                    }
                }
            }
        }
    }
    // OpenCLIP towers: each HF layer name through the diffusers reader's renaming.
    for te in &lora.text_encoders {
        if !te.openclip {
            continue;
        }
        let (prefix, lora, peft) = (te.under.as_str(), te.kohya.as_str(), te.peft.as_str());
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
                for (path, flat) in clip_paths(&path) {
                    add_as(kohya(lora, path), &key, rows, flat);
                    add_as(format!("{peft}{path}"), &key, rows, flat);
                    for also in &te.kohya_also {
                        add_as(kohya(also, path), &key, rows, true);
                    }
                }
            }
        }
    }
    Built {
        by_stem: m,
        aliases,
        clashes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every U-Net key written as diffusers names it reads back as itself through the
    /// diffusers reader's renaming read forwards (which tests/diffusers.rs checks against
    /// diffusers' converter), and no two keys of any architecture share a LoRA name.
    #[test]
    fn diffusers_paths_invert_the_readers_renaming() {
        for &arch in Arch::all() {
            let Built {
                by_stem: m,
                clashes,
                ..
            } = build(arch);
            assert!(
                clashes.is_empty(),
                "{arch:?}: names two keys share: {clashes:?}"
            );
            let Some(prefixes) = unet_names(arch) else {
                continue;
            };
            let mut n = 0;
            for k in &table(arch).keys {
                let Some(rest) = k.name.strip_prefix(DENOISER_PREFIX) else {
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
            assert!(m.len() > n, "{arch:?}: {} names for {n} keys", m.len());
        }
        // LoRA detection prefers SD1 to SDXL to SD2 to Flux.1 on a tie (later
        // architectures come after them).
        let order: Vec<&str> = archs().iter().map(|a| a.id()).collect();
        let at = |id: &str| order.iter().position(|x| *x == id).unwrap();
        assert!(at("sd1") < at("sdxl") && at("sdxl") < at("sd2") && at("sd2") < at("flux"));
    }

    /// A text-encoder module under transformers 5's names (no `text_model.`), PEFT's or
    /// `convert_state_dict_to_kohya`'s (`lora_te1_` for SD1's one encoder too), patches what
    /// its transformers-4 name patches; those names are read only: written names and
    /// extraction stay transformers 4's.
    #[test]
    fn transformers5_text_encoder_names_are_aliases() {
        let sd1 = Arch::parse("sd1").unwrap();
        let want = target(sd1, "lora_te_text_model_encoder_layers_3_self_attn_q_proj").unwrap();
        for alias in [
            "text_encoder.encoder.layers.3.self_attn.q_proj",
            "lora_te_encoder_layers_3_self_attn_q_proj",
            "lora_te1_encoder_layers_3_self_attn_q_proj",
            "lora_te1_text_model_encoder_layers_3_self_attn_q_proj",
        ] {
            assert_eq!(target(sd1, alias), Some(want), "{alias}");
        }
        assert_eq!(
            &names_of(sd1, want)[..2],
            [
                "lora_te_text_model_encoder_layers_3_self_attn_q_proj",
                "text_encoder.text_model.encoder.layers.3.self_attn.q_proj"
            ]
        );
        let sdxl = Arch::parse("sdxl").unwrap();
        let k = target(sdxl, "text_encoder_2.encoder.layers.3.self_attn.k_proj").unwrap();
        assert_eq!(
            (k.key.as_str(), k.rows),
            (
                "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight",
                Some(Rows::Third(1))
            )
        );
        assert_eq!(
            target(sdxl, "lora_te2_encoder_layers_3_self_attn_k_proj"),
            Some(k)
        );
        for arch in [sd1, sdxl, Arch::parse("sd2").unwrap()] {
            let aliases = build(arch).aliases;
            assert!(!aliases.is_empty());
            for e in extractable(arch) {
                assert!(!aliases.contains(&e.stem), "{arch:?} extracts {}", e.stem);
            }
        }
    }
}
