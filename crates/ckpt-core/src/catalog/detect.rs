//! Which architecture a file is, how sure we are, and which variant.
//!
//! Names alone cannot tell SD1 from SD2 (their U-Net keys are equal), so every file key is
//! checked against each layout by name *and* shape. The architecture whose layout explains
//! the most keys wins; the confidence says how many keys it explains and by how much it
//! beats the runner-up. Test checkpoints written by `ckpt-diff synth --scale S` divide
//! every dimension of 128 or more by `S`; detection finds that scale and says so.

use std::collections::HashSet;

use super::data::{self, Role};
use super::{Arch, Component, Layout, canonical_key, component_of, is_ema, keys_of};
use ckpt_read::Checkpoint;

/// Scales tried for scaled-down test checkpoints (1 = real size).
pub const SCALES: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Dimensions below this are never scaled (kernel sizes, channels, the 77 CLIP positions).
pub const SCALE_MIN_DIM: usize = 128;

/// A dimension of the real layout as a checkpoint scaled down by `scale` has it.
pub fn scaled_dim(d: usize, scale: u32) -> usize {
    if scale <= 1 || d < SCALE_MIN_DIM {
        d
    } else {
        d.div_ceil(scale as usize)
    }
}

/// A shape of the real layout, scaled down by `scale`.
pub fn scaled_shape(shape: &[usize], scale: u32) -> Vec<usize> {
    shape.iter().map(|&d| scaled_dim(d, scale)).collect()
}

/// How sure detection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    Low,
    Medium,
    High,
}

impl Level {
    pub fn id(self) -> &'static str {
        match self {
            Level::High => "high",
            Level::Medium => "medium",
            Level::Low => "low",
            Level::None => "none",
        }
    }
}

/// The evidence behind a detection.
#[derive(Clone, Debug, PartialEq)]
pub struct Confidence {
    pub level: Level,
    /// File keys (EMA copies aside) whose name and shape the chosen layout lists.
    pub matched: usize,
    /// File keys considered (EMA copies aside).
    pub considered: usize,
    /// File keys the layout lists under the same name with another shape.
    pub shape_mismatches: usize,
    /// The next best architecture and how many keys it explains.
    pub runner_up: Option<(Arch, usize)>,
}

/// A variant or property of a checkpoint worth naming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variant {
    /// A release variant the architecture's spec names (`[[variants]]`: SD's inpainting,
    /// pix2pix and depth U-Nets by their input channels, Flux.1 schnell, Fill, Canny/Depth).
    Release {
        id: &'static str,
        describe: &'static str,
    },
    /// `model_ema.*` weights present.
    Ema,
    /// DDPM schedule buffers present.
    Scheduler,
    /// The text encoder uses the old transformers names (no `text_model.`).
    OldClipNames,
    /// Optional text-encoder layers are absent (SDXL files pruned to what inference uses).
    PrunedTextEncoders,
    /// SDXL v-prediction markers (`v_pred`, `ztsnr`, `edm_vpred.*`).
    VPredMarkers,
    /// Components of a full checkpoint that the file lacks.
    MissingComponents(Vec<Component>),
    /// The denoiser alone (the common Flux download).
    DenoiserOnly,
    /// The file's components are laid out alike in these other architectures too (a text
    /// encoder or a VAE on its own), so it fits them as well.
    AlsoFits(Vec<Arch>),
    /// A text encoder or a VAE alone (a T5-XXL, a Qwen3-4B, a FLUX.2 AE file), as the
    /// best architecture labels it, and the architectures whose layout lists it with every
    /// key and shape of the file: the models that use it.
    ComponentAlone {
        component: Component,
        label: &'static str,
        used_by: Vec<Arch>,
    },
    /// DiT keys without the `model.diffusion_model.` prefix (BFL's and Chroma's naming).
    BareDiffuserKeys,
    /// A scaled-down test checkpoint (`ckpt-diff synth --scale S`).
    Scaled(u32),
}

impl Variant {
    pub fn describe(&self) -> String {
        match self {
            Variant::Release { describe, .. } => describe.to_string(),
            Variant::Ema => "EMA weights present (model_ema.*)".into(),
            Variant::Scheduler => "scheduler buffers present".into(),
            Variant::OldClipNames => "text encoder uses the old key names (no text_model.)".into(),
            Variant::PrunedTextEncoders => {
                "text encoders pruned to the layers inference uses (optional keys absent)".into()
            }
            Variant::VPredMarkers => {
                "v-prediction (markers v_pred, ztsnr or edm_vpred.* present: loaders run it as v-pred)"
                    .into()
            }
            Variant::MissingComponents(cs) => {
                let names: Vec<&str> = cs.iter().map(|c| c.id()).collect();
                format!("components absent: {}", names.join(", "))
            }
            Variant::DenoiserOnly => "the denoiser alone (no text encoders, no VAE)".into(),
            Variant::AlsoFits(archs) => {
                let names: Vec<&str> = archs.iter().map(|a| a.label()).collect();
                format!("laid out as in {} too", names.join(", "))
            }
            Variant::ComponentAlone {
                component,
                label,
                used_by,
            } => {
                let names: Vec<&str> = used_by.iter().map(|a| a.label()).collect();
                let what = if component.is_text_encoder() {
                    "a text encoder"
                } else {
                    "a VAE"
                };
                format!(
                    "{what} alone ({label}), which {} use{}",
                    names.join(", "),
                    if used_by.len() == 1 { "s" } else { "" }
                )
            }
            Variant::BareDiffuserKeys => {
                "diffuser keys without the model.diffusion_model. prefix (as BFL's releases and extracted U-Nets name them)".into()
            }
            Variant::Scaled(s) => format!("scaled-down test checkpoint (1/{s} of real widths)"),
        }
    }

    /// Short id for JSON.
    pub fn id(&self) -> String {
        match self {
            Variant::Release { id, .. } => id.to_string(),
            Variant::Ema => "ema".into(),
            Variant::Scheduler => "scheduler".into(),
            Variant::OldClipNames => "old-clip-names".into(),
            Variant::PrunedTextEncoders => "pruned-text-encoders".into(),
            Variant::VPredMarkers => "v-pred-markers".into(),
            Variant::MissingComponents(_) => "missing-components".into(),
            Variant::DenoiserOnly => "denoiser-only".into(),
            Variant::AlsoFits(_) => "also-fits".into(),
            Variant::ComponentAlone { .. } => "component-alone".into(),
            Variant::BareDiffuserKeys => "bare-diffuser-keys".into(),
            Variant::Scaled(s) => format!("scaled-{s}"),
        }
    }
}

/// The verdict on one file.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    pub layout: Layout,
    /// 1 for real widths; `S` for a checkpoint scaled down by `S`.
    pub scale: u32,
    pub confidence: Confidence,
    pub variants: Vec<Variant>,
    /// For a file detection does not name: the architecture it resembles most, and why it
    /// is not that one ("looks like Flux.1 except ...").
    pub looks_like: Option<(Arch, String)>,
}

impl Detection {
    /// "sd1 (high confidence: 1131 of 1131 keys match by name and shape)".
    pub fn summary(&self) -> String {
        let c = &self.confidence;
        let what = match (self.layout, &self.looks_like) {
            (Layout::Known(a), _) => a.label().to_string(),
            (Layout::Generic, Some((a, why))) => {
                format!(
                    "unknown layout (rows by key prefix), looks like {} except {why}",
                    a.label()
                )
            }
            (Layout::Generic, None) => "unknown layout (rows by key prefix)".into(),
        };
        let mut s = format!(
            "{what}; {} confidence: {} of {} keys match by name and shape",
            c.level.id(),
            c.matched,
            c.considered
        );
        if let Some((a, n)) = c.runner_up {
            s.push_str(&format!("; runner-up {} matches {n}", a.id()));
        }
        s
    }

    pub fn arch(&self) -> Option<Arch> {
        self.layout.arch()
    }
}

struct Score {
    arch: Arch,
    scale: u32,
    matched: usize,
    shape_mismatches: usize,
}

/// Detects the architecture of an open checkpoint from its header alone.
pub fn detect(ckpt: &Checkpoint) -> Detection {
    let keys: Vec<(String, &[usize])> = ckpt
        .tensors()
        .iter()
        .zip(keys_of(ckpt))
        .filter(|(t, _)| !is_ema(&t.name))
        .map(|(t, key)| (key.clone(), t.shape.as_slice()))
        .collect();
    let considered = keys.len();

    let mut scores: Vec<Score> = Arch::all()
        .iter()
        .map(|&arch| {
            SCALES
                .iter()
                .map(|&scale| score(arch, scale, &keys))
                .max_by_key(|s| (s.matched, std::cmp::Reverse(s.scale)))
                .expect("at least one scale")
        })
        .collect();
    // A marker is a key only its architecture has (FLUX.2's shared modulation, which
    // Flux.1 lacks): a file with every marker of some architectures is one of them.
    let names: HashSet<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let marked: Vec<Arch> = Arch::all()
        .iter()
        .copied()
        .filter(|a| {
            let m = &a.info().spec.markers;
            !m.is_empty() && m.iter().all(|k| names.contains(k.as_str()))
        })
        .collect();
    if !marked.is_empty() {
        scores.retain(|s| marked.contains(&s.arch));
    }
    scores.sort_by_key(|s| std::cmp::Reverse(s.matched));
    let best = &scores[0];
    let runner_up = scores
        .get(1)
        .filter(|s| s.matched > 0)
        .map(|s| (s.arch, s.matched));

    let fraction = if considered == 0 {
        0.0
    } else {
        best.matched as f64 / considered as f64
    };
    let margin = best.matched - runner_up.map_or(0, |(_, n)| n);
    // A layout that explains every key beats one that does not, by however few keys (SD3
    // medium and SD3.5 medium differ in 26 of 1672).
    let clear_winner =
        margin as f64 >= 0.02 * considered as f64 || (best.matched == considered && margin > 0);
    // A text encoder or a VAE on its own is laid out alike in several architectures: a tie
    // among them is no doubt about what the file is.
    let tied: Vec<Arch> = scores[1..]
        .iter()
        .filter(|s| s.matched == best.matched && s.matched > 0)
        .map(|s| s.arch)
        .collect();
    let component_file =
        !tied.is_empty() && keys.iter().all(|(k, _)| !component_of(k).is_denoiser());
    let level = if fraction >= 0.95 && clear_winner && best.shape_mismatches * 100 <= considered {
        Level::High
    } else if (fraction >= 0.95 && component_file) || (fraction >= 0.6 && clear_winner) {
        // A text encoder alone fits every release that shares it: sure of the keys, not of
        // the release.
        Level::Medium
    } else if fraction >= 0.2 && margin > 0 {
        Level::Low
    } else {
        Level::None
    };
    let confidence = Confidence {
        level,
        matched: best.matched,
        considered,
        shape_mismatches: best.shape_mismatches,
        runner_up,
    };
    // An architecture is named only when names and shapes agree: a file whose keys carry
    // its names with other shapes (a new size of a known family), or that it explains
    // only in part, is read generically, with what it resembles and why it is not that.
    let contradicted = best.shape_mismatches * 20 > considered;
    // Nor, among the sizes of one family (several architectures with the file's markers),
    // one whose denoiser the file holds only in part (more than 1 in 20 of its keys
    // missing), which may be another size: FLUX.2 klein 9B widened by half has FLUX.2 dev's
    // names and shapes, and a third of dev's blocks are not there. (A part of a model with
    // no sibling, such as a few SD1 layers, is still named.)
    let has_denoiser = keys.iter().any(|(k, _)| component_of(k).is_denoiser());
    let denoiser: Vec<&str> = data::table(best.arch)
        .keys
        .iter()
        .filter(|k| k.role == Role::Denoiser && k.core && !k.optional)
        .map(|k| k.name.as_str())
        .collect();
    let missing = if has_denoiser {
        denoiser.iter().filter(|k| !names.contains(*k)).count()
    } else {
        0
    };
    let partial = marked.len() > 1 && missing * 20 > denoiser.len();
    if level <= Level::Low || contradicted || partial {
        let looks_like = (best.matched + best.shape_mismatches > 0).then(|| {
            let mut why = Vec::new();
            if partial {
                why.push(format!(
                    "{missing} of its {} denoiser keys are missing",
                    denoiser.len()
                ));
            }
            if best.shape_mismatches > 0 {
                why.push(format!(
                    "{} keys have its names but other shapes",
                    best.shape_mismatches
                ));
            }
            let unexplained = considered - best.matched - best.shape_mismatches;
            if unexplained > 0 {
                why.push(format!("{unexplained} keys are not in its layout"));
            }
            if why.is_empty() {
                why.push(format!("only {} of {considered} keys match", best.matched));
            }
            (best.arch, why.join(" and "))
        });
        return Detection {
            layout: Layout::Generic,
            scale: 1,
            confidence: Confidence {
                level: level.min(Level::Low),
                ..confidence
            },
            variants: Vec::new(),
            looks_like,
        };
    }
    let mut variants = variants(ckpt, best.arch, best.scale);
    let components: HashSet<Component> = keys.iter().map(|(k, _)| component_of(k)).collect();
    if let [c] = components.into_iter().collect::<Vec<_>>()[..]
        && !c.is_denoiser()
        && c != Component::other()
    {
        variants.push(Variant::ComponentAlone {
            component: c,
            label: best.arch.component_label(c),
            used_by: std::iter::once(best.arch)
                .chain(tied.iter().copied())
                .collect(),
        });
    }
    if component_file {
        variants.push(Variant::AlsoFits(tied));
    }
    Detection {
        layout: Layout::Known(best.arch),
        scale: best.scale,
        confidence,
        variants,
        looks_like: None,
    }
}

fn score(arch: Arch, scale: u32, keys: &[(String, &[usize])]) -> Score {
    let table = data::table(arch);
    let mut matched = 0;
    let mut shape_mismatches = 0;
    for (name, shape) in keys {
        let Some(k) = table.get(name) else { continue };
        if shape_matches(name, &k.shape, shape, scale) {
            matched += 1;
        } else {
            shape_mismatches += 1;
        }
    }
    Score {
        arch,
        scale,
        matched,
        shape_mismatches,
    }
}

/// The widths the spec's variants give a key (the U-Net's first conv has 5, 8 or 9 input
/// channels in the depth, pix2pix and inpainting variants; Flux's `img_in` 128 or 384 in
/// Canny/Depth and Fill), as (dimension, widths); any architecture's variants count.
fn input_widths(name: &str) -> Vec<(usize, usize)> {
    Arch::all()
        .iter()
        .flat_map(|a| &a.info().spec.variants)
        .filter_map(|v| v.width.as_ref())
        .filter(|w| w.key == name)
        .map(|w| (w.dim, w.value))
        .collect()
}

/// Does `actual` equal the catalog shape `expected` at this scale? Input layers may take
/// the widths of their model's variants ([`input_widths`]).
pub fn shape_matches(name: &str, expected: &[usize], actual: &[usize], scale: u32) -> bool {
    if expected.len() != actual.len() {
        return false;
    }
    if expected
        .iter()
        .zip(actual)
        .all(|(&e, &a)| scaled_dim(e, scale) == a)
    {
        return true;
    }
    let widths = input_widths(name);
    expected
        .iter()
        .zip(actual)
        .enumerate()
        .all(|(i, (&e, &a))| {
            scaled_dim(e, scale) == a
                || widths
                    .iter()
                    .any(|&(dim, w)| dim == i && scaled_dim(w, scale) == a)
        })
}

fn variants(ckpt: &Checkpoint, arch: Arch, scale: u32) -> Vec<Variant> {
    let table = data::table(arch);
    let mut out = Vec::new();
    let canonical = keys_of(ckpt);
    let names: HashSet<String> = canonical.iter().cloned().collect();
    let stored = |key: &str| {
        ckpt.tensors()
            .iter()
            .zip(canonical)
            .find(|(_, k)| *k == key)
            .map(|(t, _)| t)
    };
    let denoiser = names.iter().any(|n| component_of(n) == arch.denoiser());
    for v in &arch.info().spec.variants {
        let found = match (&v.width, &v.absent, &v.present) {
            (Some(w), _, _) => stored(&w.key).is_some_and(|t| {
                t.shape.len() > w.dim && t.shape[w.dim] == scaled_dim(w.value, scale)
            }),
            (None, Some(prefix), _) => {
                denoiser && !names.iter().any(|n| n.starts_with(prefix.as_str()))
            }
            (None, None, Some(key)) => names.contains(key.as_str()),
            (None, None, None) => false,
        };
        if found {
            out.push(Variant::Release {
                id: &v.id,
                describe: &v.describe,
            });
        }
    }
    if ckpt
        .tensors()
        .iter()
        .any(|t| super::blocks::is_bare_dit_key(&t.name))
    {
        out.push(Variant::BareDiffuserKeys);
    }
    if ckpt.tensors().iter().any(|t| is_ema(&t.name)) {
        out.push(Variant::Ema);
    }
    let has_role = |role: Role| {
        table
            .keys
            .iter()
            .any(|k| k.role == role && names.contains(&k.name))
    };
    if has_role(Role::Scheduler) {
        out.push(Variant::Scheduler);
    }
    if ckpt.tensors().iter().any(|t| {
        component_of(&t.name).is_text_encoder() && canonical_key(&t.name) != t.name.as_str()
    }) {
        out.push(Variant::OldClipNames);
    }
    let pruned = table.keys.iter().any(|k| {
        k.core
            && k.optional
            && matches!(k.role, Role::Txt | Role::Txt2)
            && !k.name.ends_with("position_ids")
            && !names.contains(&k.name)
            && names
                .iter()
                .any(|n| component_of(n) == component_of(&k.name))
    });
    if pruned {
        out.push(Variant::PrunedTextEncoders);
    }
    if has_role(Role::Meta) || names.contains("v_pred") || names.contains("ztsnr") {
        out.push(Variant::VPredMarkers);
    }
    let missing: Vec<Component> = arch
        .components()
        .iter()
        .copied()
        .filter(|&c| !names.iter().any(|n| component_of(n) == c))
        .collect();
    let denoiser = arch.denoiser();
    if missing.len() + 1 == arch.components().len() && !missing.contains(&denoiser) {
        out.push(Variant::DenoiserOnly);
    }
    if !missing.is_empty() {
        out.push(Variant::MissingComponents(missing));
    }
    if scale > 1 {
        out.push(Variant::Scaled(scale));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_small_dims() {
        assert_eq!(scaled_shape(&[320, 4, 3, 3], 16), vec![20, 4, 3, 3]);
        assert_eq!(scaled_shape(&[1, 77], 16), vec![1, 77]);
        assert_eq!(scaled_shape(&[49408, 768], 16), vec![3088, 48]);
        assert_eq!(scaled_shape(&[1000], 16), vec![63]);
    }

    #[test]
    fn conv_in_channels_are_a_variant_not_a_mismatch() {
        const CONV_IN: &str = "model.diffusion_model.input_blocks.0.0.weight";
        assert!(shape_matches(CONV_IN, &[320, 4, 3, 3], &[320, 9, 3, 3], 1));
        assert!(!shape_matches(CONV_IN, &[320, 4, 3, 3], &[320, 7, 3, 3], 1));
        assert!(!shape_matches("x", &[320, 4, 3, 3], &[320, 9, 3, 3], 1));
    }
}
