//! LoRA module names → the checkpoint key each patches, for kohya's dialect (LoRA, LoCon,
//! and LyCORIS's LoHa/LoKr, which use the same module names).
//!
//! kohya names a module `lora_unet_<path>` or `lora_te[12]_<path>`, where `<path>` is the
//! patched layer's module path with `.` written `_`. Two U-Net paths are in use:
//! * the single-file (LDM/SGM) path: `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`
//!   for `model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight`
//!   (sd-scripts' SDXL U-Net has the original layout; ComfyUI's `model_lora_keys_unet` maps
//!   them from the model's own keys);
//! * the diffusers path: `lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`
//!   for the same layer (sd-scripts' SD1/SD2 networks, and SDXL files from diffusers-side
//!   trainers), through the diffusers → single-file renaming of `reader::diffusers`.
//!
//! Text encoders: `lora_te_` (SD1) and `lora_te1_` (SDXL's CLIP-L) are HF CLIP paths under
//! the single file's prefix. Underscores inside names (`to_q`, `proj_in`) make the path
//! ambiguous to split, so the table is built the other way: every weight key of the
//! architecture's catalog, written as kohya writes it.
//!
//! Not mapped yet (their modules are reported as unknown, never dropped): OpenCLIP text
//! encoders (SD2, SDXL's `lora_te2_`), whose q/k/v LoRAs patch row slices of a fused
//! `in_proj_weight`, and the Flux/SD3 dialects.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::Arch;
use super::data::{Role, table};
use crate::reader::diffusers::{Family, unet_prefixes, unet_rename};

/// The checkpoint key a kohya module stem patches (`lora_unet_..._to_q` →
/// `model.diffusion_model....to_q.weight`), for `arch` (SD1, SD2, SDXL).
pub fn target(arch: Arch, stem: &str) -> Option<&'static str> {
    let family = match arch {
        Arch::Sd1 => 0,
        Arch::Sd2 => 1,
        Arch::Sdxl => 2,
        _ => return None,
    };
    static TABLES: [OnceLock<HashMap<String, String>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    TABLES[family]
        .get_or_init(|| build(arch).0)
        .get(stem)
        .map(String::as_str)
}

const UNET: &str = "model.diffusion_model.";

/// The table, and any name two keys would share (none: kohya's names are unambiguous).
fn build(arch: Arch) -> (HashMap<String, String>, Vec<String>) {
    let family = match arch {
        Arch::Sdxl => Family::Sdxl,
        Arch::Sd2 => Family::Sd2,
        _ => Family::Sd1,
    };
    let te: &[(&str, &str)] = match arch {
        Arch::Sd1 => &[("cond_stage_model.transformer.", "lora_te_")],
        Arch::Sdxl => &[("conditioner.embedders.0.transformer.", "lora_te1_")],
        _ => &[],
    };
    let prefixes = unet_prefixes(family);
    let mut m: HashMap<String, String> = HashMap::new();
    let mut clashes = Vec::new();
    let mut add = |stem: String, key: &str| {
        if let Some(old) = m.insert(stem.clone(), key.to_string())
            && old != key
        {
            clashes.push(stem);
        }
    };
    for k in &table(arch).keys {
        let Some(path) = k.name.strip_suffix(".weight") else {
            continue;
        };
        if k.role == Role::Denoiser
            && let Some(rest) = path.strip_prefix(UNET)
        {
            add(format!("lora_unet_{}", rest.replace('.', "_")), &k.name);
            if let Some(hf) = unet_rename(&format!("{rest}."), &prefixes, false) {
                let hf = hf.trim_end_matches('.');
                add(format!("lora_unet_{}", hf.replace('.', "_")), &k.name);
            }
        }
        for (prefix, lora) in te {
            if let Some(rest) = path.strip_prefix(prefix) {
                add(format!("{lora}{}", rest.replace('.', "_")), &k.name);
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
