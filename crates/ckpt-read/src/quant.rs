//! Quantized tensors inside safetensors files: what ckpt-diff reads, and what it refuses.
//!
//! **Scaled FP8** (ComfyUI's convention, `comfy/model_detection.py` and its fp8 ops): a
//! marker tensor `<prefix>scaled_fp8` says the file is scaled; each FP8 weight `X.weight`
//! then has a scalar `X.scale_weight`, and the weight is `X.weight · X.scale_weight`
//! (`X.scale_input`, for FP8 matrix products at run time, says nothing about the weight).
//! [`split_scaled_fp8`] attaches each scale to its weight ([`TensorEntry::scale`]) and takes
//! the marker and the scale tensors out of the tensor list, so every analysis sees the
//! weights and never the bookkeeping. A file read without its scales gives weights off by
//! the scale: the white images of stable-diffusion.cpp PR #1898.
//!
//! **bitsandbytes NF4/FP4** (Forge's and SuperMerger's `flux.nf4` files): 4-bit codes packed
//! in `uint8` with per-block `absmax` and a `quant_state.bitsandbytes__nf4` record. These
//! are refused with a message that says what they are ([`bitsandbytes`]).

use super::dtype::{self, FloatFormat};
use super::layout::TensorEntry;

/// What a scaled-FP8 file holds besides its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaledFp8 {
    /// The marker tensor's name (`model.diffusion_model.scaled_fp8`, `scaled_fp8`).
    pub marker: String,
    /// The FP8 format the marker names (ComfyUI reads its dtype; F32 means E4M3).
    pub format: FloatFormat,
    /// The header entries of the marker, the `X.scale_weight`s (each attached to its
    /// `X.weight`) and the `X.scale_input`s (which do not change the weights), in file
    /// order: to copy them as they are.
    pub hidden: Vec<TensorEntry>,
}

impl ScaledFp8 {
    /// How many weights carry a scale.
    pub fn scaled_weights(&self) -> usize {
        self.hidden
            .iter()
            .filter(|t| t.name.ends_with(SCALE_WEIGHT))
            .count()
    }
}

/// The name of a weight's scale: `X.weight` -> `X.scale_weight`.
pub fn scale_name(weight: &str) -> String {
    let layer = weight.strip_suffix(".weight").unwrap_or(weight);
    format!("{layer}{SCALE_WEIGHT}")
}

/// Why quantized tensors cannot be read.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantProblem {
    /// A scale that is not one finite, positive float.
    BadScale { name: String, reason: BadScale },
}

/// What is wrong with a scale tensor.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BadScale {
    #[error("it is {0}, not a float")]
    NotFloat(String),
    #[error("it has {0} values, not one")]
    NotOne(usize),
    #[error("its value {0} is not a finite positive number")]
    NotPositive(f64),
}

/// The suffix that names a layer's weight scale.
pub const SCALE_WEIGHT: &str = ".scale_weight";
/// The suffix of a layer's input scale.
pub const SCALE_INPUT: &str = ".scale_input";
/// The marker's name without its prefix.
pub const MARKER: &str = "scaled_fp8";

/// Attaches scales to their FP8 weights and moves the marker and the scales out of
/// `tensors`, when the file has the marker. `data` gives a tensor's bytes.
pub fn split_scaled_fp8<'d>(
    tensors: &mut Vec<TensorEntry>,
    data: &dyn Fn(&TensorEntry) -> &'d [u8],
) -> Result<Option<ScaledFp8>, QuantProblem> {
    let Some(marker) = tensors
        .iter()
        .find(|t| t.name == MARKER || t.name.ends_with(&format!(".{MARKER}")))
    else {
        return Ok(None);
    };
    let format = match dtype::float_format(marker.dtype) {
        Some(FloatFormat::F8E5M2) => FloatFormat::F8E5M2,
        _ => FloatFormat::F8E4M3,
    };
    let marker_name = marker.name.clone();
    let mut scale_of: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    for t in tensors.iter() {
        if let Some(layer) = t.name.strip_suffix(SCALE_WEIGHT) {
            let value = scalar(t, data).map_err(|reason| QuantProblem::BadScale {
                name: t.name.clone(),
                reason,
            })?;
            scale_of.insert(format!("{layer}.weight"), value);
        }
    }
    let (hidden, kept): (Vec<TensorEntry>, Vec<TensorEntry>) = tensors.drain(..).partition(|t| {
        t.name == marker_name || t.name.ends_with(SCALE_WEIGHT) || t.name.ends_with(SCALE_INPUT)
    });
    *tensors = kept;
    let found = ScaledFp8 {
        marker: marker_name,
        format,
        hidden,
    };
    for t in tensors.iter_mut() {
        let fp8 = matches!(
            dtype::float_format(t.dtype),
            Some(FloatFormat::F8E4M3 | FloatFormat::F8E5M2)
        );
        if fp8 && let Some(&s) = scale_of.get(&t.name) {
            t.encoding = super::layout::Encoding::Scaled(s);
        }
    }
    Ok(Some(found))
}

/// The value of a one-element float tensor.
fn scalar<'d>(t: &TensorEntry, data: &dyn Fn(&TensorEntry) -> &'d [u8]) -> Result<f64, BadScale> {
    let format = dtype::float_format(t.dtype)
        .ok_or_else(|| BadScale::NotFloat(dtype::name(t.dtype).to_string()))?;
    if t.numel() != 1 {
        return Err(BadScale::NotOne(t.numel()));
    }
    let mut v = [0.0f64];
    format.decode_into(data(t), &mut v);
    if !(v[0].is_finite() && v[0] > 0.0) {
        return Err(BadScale::NotPositive(v[0]));
    }
    Ok(v[0])
}

/// The bitsandbytes 4-bit format a file is quantized with, if it is: `"NF4"` or `"FP4"`.
pub fn bitsandbytes(tensors: &[TensorEntry]) -> Option<&'static str> {
    tensors.iter().find_map(|t| {
        if t.name.contains("bitsandbytes__nf4") {
            Some("NF4")
        } else if t.name.contains("bitsandbytes__fp4") {
            Some("FP4")
        } else {
            None
        }
    })
}

/// Whether a file is quantized by nunchaku (SVDQuant W4A4 layers: `qweight` int4 or nvfp4
/// codes with `wscales`, a low-rank branch `proj_down`/`lora_down` and a smoothing vector;
/// AWQ W4A16 layers: `qweight` int32 with `wscales`, `wzeros`), by its tensors or the
/// `quantization_config` metadata its merged files carry.
pub fn nunchaku(tensors: &[TensorEntry], metadata: &[(String, String)]) -> bool {
    let svdquant_meta = metadata
        .iter()
        .any(|(k, v)| k == "quantization_config" && v.contains("svdquant"));
    let names: std::collections::HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    svdquant_meta
        || tensors.iter().any(|t| {
            t.name
                .strip_suffix(".qweight")
                .is_some_and(|layer| names.contains(format!("{layer}.wscales").as_str()))
        })
}

/// Name endings that mark a tensor as quantization state, not a weight, with the format
/// that writes them. A file that still holds one after every rule that decodes such state
/// has run is refused: reading it as a weight would be silently wrong.
pub const STATE_SUFFIXES: [(&str, &str); 25] = [
    (
        ".weight_scale",
        "ComfyUI per-layer quantization (a weight scale without its format record)",
    ),
    (
        ".weight_scale_2",
        "ComfyUI nvfp4 (a global scale without its format record)",
    ),
    (".comfy_quant", "ComfyUI per-layer quantization"),
    (
        ".input_scale",
        "an fp8/nvfp4 activation scale without its layer's format record",
    ),
    (
        ".pre_quant_scale",
        "ModelOpt AWQ smoothing without its layer's format record",
    ),
    (".scale_weight", "scaled fp8 without its scaled_fp8 marker"),
    (".scale_input", "scaled fp8 without its scaled_fp8 marker"),
    (
        ".qweight",
        "packed int4/int32 codes (nunchaku, AWQ or GPTQ)",
    ),
    (".wscales", "nunchaku SVDQuant"),
    (".wzeros", "nunchaku or AWQ zero points"),
    (".wcscales", "nunchaku SVDQuant nvfp4"),
    (".wtscale", "nunchaku SVDQuant nvfp4"),
    (".smooth_factor", "nunchaku SVDQuant"),
    (".smooth_factor_orig", "nunchaku SVDQuant"),
    (".proj_down", "nunchaku SVDQuant (its low-rank branch)"),
    (".proj_up", "nunchaku SVDQuant (its low-rank branch)"),
    (".absmax", "bitsandbytes"),
    (".quant_map", "bitsandbytes"),
    (".nested_absmax", "bitsandbytes"),
    (".nested_quant_map", "bitsandbytes"),
    (".weight_zeros", "ComfyUI awq_w4a16"),
    (".weight_s_rel", "ComfyUI asym_w4a8_int8"),
    (".weight_s_channel", "ComfyUI asym_w4a8_int8"),
    (".weight_codebook", "ComfyUI asym_w4a8_int8"),
    (".weight_correction", "ComfyUI asym_w4a8_int8"),
];

/// The first tensor whose name marks quantization state (see [`STATE_SUFFIXES`], and any
/// name holding `.quant_state.`), with the format that writes it.
pub fn quant_state(tensors: &[TensorEntry]) -> Option<(&str, &'static str)> {
    tensors.iter().find_map(|t| {
        if t.name.contains(".quant_state.") {
            return Some((t.name.as_str(), "bitsandbytes"));
        }
        STATE_SUFFIXES
            .iter()
            .find(|(suffix, _)| t.name.ends_with(suffix))
            .map(|(_, what)| (t.name.as_str(), *what))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dtype;

    fn t(name: &str, dtype: Dtype, shape: &[usize], begin: usize, end: usize) -> TensorEntry {
        TensorEntry {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            begin,
            end,
            encoding: Default::default(),
        }
    }

    #[test]
    fn scales_attach_to_their_fp8_weights() {
        let data: Vec<u8> = [0.5f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat();
        let mut h = vec![
            t("m.scaled_fp8", Dtype::F8_E4M3, &[0], 8, 8),
            t("m.a.weight", Dtype::F8_E4M3, &[2], 8, 8),
            t("m.a.scale_weight", Dtype::F32, &[], 0, 4),
            t("m.a.scale_input", Dtype::F32, &[], 4, 8),
            t("m.a.bias", Dtype::BF16, &[2], 8, 8),
        ];
        let q = split_scaled_fp8(&mut h, &|t: &TensorEntry| &data[t.begin..t.end])
            .unwrap()
            .unwrap();
        let hidden: Vec<&str> = q.hidden.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            hidden,
            ["m.scaled_fp8", "m.a.scale_weight", "m.a.scale_input"]
        );
        assert_eq!(q.scaled_weights(), 1);
        let names: Vec<&str> = h.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["m.a.weight", "m.a.bias"]);
        assert_eq!(h[0].encoding, super::super::layout::Encoding::Scaled(0.5));
        assert!(h[1].encoding.is_plain());
    }

    const ZERO: [u8; 4] = [0; 4];

    #[test]
    fn no_marker_no_change_and_bad_scales_are_refused() {
        let mut h = vec![t("a.scale_weight", Dtype::F32, &[], 0, 4)];
        assert_eq!(
            split_scaled_fp8(&mut h, &|t: &TensorEntry| &ZERO[t.begin..t.end]),
            Ok(None)
        );
        h.push(t("scaled_fp8", Dtype::F32, &[0], 4, 4));
        let e = split_scaled_fp8(&mut h, &|t: &TensorEntry| &ZERO[t.begin..t.end]).unwrap_err();
        assert!(matches!(e, QuantProblem::BadScale { .. }));
    }
}
