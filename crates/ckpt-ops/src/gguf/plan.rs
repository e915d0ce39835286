//! What a GGUF file of a denoiser holds, decided before any value is read (pure): which
//! tensors, their names and stored shapes, each one's ggml type, and the KVs, as city96's
//! `tools/convert.py` followed by his patched `llama-quantize` writes them.
//!
//! * Only the denoiser, its keys without `model.diffusion_model.`, in name order (convert.py
//!   walks the safetensors file's sorted keys).
//! * sd1/sdxl (`reshape` in the catalog): a tensor of >= 2 dims, >= 512 elements, a multiple
//!   of 256 of them and a last dim that is not, is stored as `(n/256, 256)` with the KV
//!   `comfy.gguf.orig_shape.<name>`.
//! * Quantized (with a mix): a name ending in `weight`, not containing `_norm.weight`, not on
//!   the architecture's keep list, stored exactly 2-D as ggml counts dims (leading 1s do not
//!   count). Its type: the mix's, for its name group ([`Group::of`]). Rows that are not whole
//!   blocks of that type fall back to F16 (lcpp.patch does so for K types; llama-quantize
//!   would abort on a legacy type, ckpt-diff writes F16 there too).
//! * Not quantized: convert.py's type: BF16 from a BF16 source, else F16; F32 when the source
//!   is F32 or BF16 and the tensor is 1-D or has at most 1024 elements.
//! * Names of [`GGML_MAX_NAME`] bytes or more are refused ([`PlanError::NamesTooLong`]), as
//!   convert.py refuses them, unless [`GgufOptions::long_names`] lets them through.

use std::collections::BTreeMap;

use ckpt_core::catalog::{Arch, DENOISER_PREFIX, GgufRules};
use ckpt_read::Dtype;
use ckpt_read::gguf::write::{TensorOut, orig_shape_kv};
use ckpt_read::gguf::{GgmlType, Value};

use super::mix::{FTYPE_BF16, FTYPE_F16, Group, Quant};

/// ggml's limit on a tensor name, counting its terminating NUL, as the tools that load
/// diffusion GGUFs with ggml build it: stable-diffusion.cpp (`-DGGML_MAX_NAME=128` in its
/// CMakeLists.txt until 2026-07, 160 since; `ggml_extend.hpp` asserts at least 128) and
/// llama-quantize with city96's `lcpp.patch` (64 raised to 128). ggml's `gguf.cpp` refuses a
/// file holding a name of `GGML_MAX_NAME` bytes or more (`tensor name ... is too long`), and
/// city96's `convert.py` refuses names over 127 characters (`MAX_TENSOR_NAME_LENGTH`). gguf-py
/// and ComfyUI-GGUF, which reads with it, have no limit.
pub const GGML_MAX_NAME: usize = 128;

/// How a GGUF output is written: its `--quant` choice and whether names ggml-based loaders
/// refuse may be written anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GgufOptions {
    /// `None`: F16/BF16 as convert.py chooses.
    pub quant: Option<Quant>,
    /// Write tensor names of [`GGML_MAX_NAME`] bytes or more (ComfyUI-GGUF reads them;
    /// ggml-based loaders refuse the file).
    pub long_names: bool,
}

/// One input tensor offered to the plan.
#[derive(Clone, Debug)]
pub struct SourceTensor<'a> {
    /// Its canonical key (`model.diffusion_model.` for the denoiser).
    pub key: &'a str,
    pub shape: &'a [usize],
    /// The dtype convert.py would see (for a merge, the merge's output dtype).
    pub dtype: Dtype,
    pub is_float: bool,
}

/// One tensor of the GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    /// The source's canonical key.
    pub key: String,
    /// Its name and stored shape and type in the file.
    pub out: TensorOut,
    /// The shape before city96's reshape (equal to the stored one unless reshaped).
    pub shape: Vec<usize>,
    /// Quantizing was planned but the rows are not whole blocks: written F16.
    pub fell_back: Option<GgmlType>,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufPlan {
    pub tensors: Vec<PlannedTensor>,
    pub kvs: Vec<(String, Value)>,
    /// Tensors outside the denoiser, left out (city96 writes the denoiser only).
    pub left_out: usize,
    /// Denoiser tensors that are not floats, left out.
    pub not_float: Vec<String>,
    /// `general.architecture`.
    pub arch_name: &'static str,
    /// Names of [`GGML_MAX_NAME`] bytes or more written (with [`GgufOptions::long_names`]),
    /// with their lengths.
    pub long_names: Vec<(String, usize)>,
}

/// Why a GGUF cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("city96's GGUF tools have no name for {0}")]
    NoGgufArch(&'static str),
    #[error("the input has no denoiser tensor to write")]
    NoDenoiser,
    #[error("tensor '{name}' has {dims} dimensions; GGUF holds at most 4")]
    TooManyDims { name: String, dims: usize },
    #[error(
        "tensor names of {GGML_MAX_NAME} bytes or more, which ggml-based loaders \
         (stable-diffusion.cpp, llama-quantize with city96's patch) refuse, as city96's \
         convert.py does: {}",
        list_names(.names)
    )]
    NamesTooLong { names: Vec<(String, usize)> },
}

/// `'a' (130 bytes), 'b' (129 bytes) and 3 more`.
pub fn list_names(names: &[(String, usize)]) -> String {
    let shown: Vec<String> = names
        .iter()
        .take(3)
        .map(|(n, len)| format!("'{n}' ({len} bytes)"))
        .collect();
    let more = names.len().saturating_sub(3);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Elements a tensor needs for convert.py to consider it for F16/BF16 rather than F32
/// (`QUANTIZATION_THRESHOLD`), and for the reshape.
const F32_MAX_ELEMENTS: usize = 1024;
const RESHAPE_MIN_ELEMENTS: usize = 512;
const RESHAPE_ROW: usize = 256;

/// Plans the GGUF file of `arch`'s denoiser among `sources` as `options` say.
pub fn plan(
    arch: Arch,
    sources: &[SourceTensor<'_>],
    options: &GgufOptions,
) -> Result<GgufPlan, PlanError> {
    let quant = options.quant;
    let rules = arch.gguf().ok_or(PlanError::NoGgufArch(arch.label()))?;
    let mut left_out = 0;
    let mut not_float = Vec::new();
    let mut chosen: Vec<(&str, &SourceTensor<'_>)> = Vec::new();
    for s in sources {
        match s.key.strip_prefix(DENOISER_PREFIX) {
            None => left_out += 1,
            Some(name) if !s.is_float => not_float.push(name.to_string()),
            Some(name) => chosen.push((name, s)),
        }
    }
    if chosen.is_empty() {
        return Err(PlanError::NoDenoiser);
    }
    chosen.sort_by(|a, b| a.0.cmp(b.0));
    let long_names: Vec<(String, usize)> = chosen
        .iter()
        .filter(|(name, _)| name.len() >= GGML_MAX_NAME)
        .map(|(name, _)| (name.to_string(), name.len()))
        .collect();
    if !long_names.is_empty() && !options.long_names {
        return Err(PlanError::NamesTooLong { names: long_names });
    }
    let mut tensors = Vec::with_capacity(chosen.len());
    let mut orig_kvs = Vec::new();
    let mut i_v = 0;
    for (name, s) in chosen {
        if s.shape.len() > 4 {
            return Err(PlanError::TooManyDims {
                name: name.to_string(),
                dims: s.shape.len(),
            });
        }
        let stored = stored_shape(&rules, s.shape);
        if stored != s.shape {
            orig_kvs.push(orig_shape_kv(name, s.shape));
        }
        let plain = unquantized_type(s.dtype, &stored, quant);
        let mut fell_back = None;
        let ggml_type = match quant {
            Some(Quant::Mix(mix)) if quantizable(&rules, name, &stored) => {
                let group = Group::of(name);
                let t = mix.type_of(group, i_v);
                if group == Some(Group::V) {
                    i_v += 1;
                }
                let row = stored.last().copied().unwrap_or(1);
                if row.is_multiple_of(t.block_size()) {
                    t
                } else {
                    fell_back = Some(t);
                    GgmlType::F16
                }
            }
            _ => plain,
        };
        tensors.push(PlannedTensor {
            key: s.key.to_string(),
            out: TensorOut {
                name: name.to_string(),
                shape: stored,
                ggml_type,
            },
            shape: s.shape.to_vec(),
            fell_back,
        });
    }
    let ftype = match quant {
        Some(q) => q.ftype(),
        None => main_float_ftype(&tensors, sources),
    };
    let mut kvs = vec![
        (
            "general.architecture".to_string(),
            Value::String(rules.arch.to_string()),
        ),
        ("general.quantization_version".to_string(), Value::U32(2)),
        ("general.file_type".to_string(), Value::U32(ftype)),
    ];
    kvs.extend(orig_kvs);
    Ok(GgufPlan {
        tensors,
        kvs,
        left_out,
        not_float,
        arch_name: rules.arch,
        long_names,
    })
}

/// city96's `shape_fix`: awkward rows of sd1/sdxl stored as rows of 256.
fn stored_shape(rules: &GgufRules, shape: &[usize]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let last = shape.last().copied().unwrap_or(1);
    if rules.reshape
        && shape.len() >= 2
        && n >= RESHAPE_MIN_ELEMENTS
        && n.is_multiple_of(RESHAPE_ROW)
        && !last.is_multiple_of(RESHAPE_ROW)
    {
        vec![n / RESHAPE_ROW, RESHAPE_ROW]
    } else {
        shape.to_vec()
    }
}

/// ggml's `ggml_n_dims`: dims up to the last (innermost-first) that is not 1, at least 1.
fn ggml_n_dims(shape: &[usize]) -> usize {
    // Numpy order: leading 1s are ggml's trailing ones.
    shape
        .iter()
        .position(|&d| d != 1)
        .map_or(1, |i| shape.len() - i)
        .max(1)
}

/// lcpp.patch's eligibility (the mix then picks the type).
fn quantizable(rules: &GgufRules, name: &str, stored: &[usize]) -> bool {
    name.ends_with("weight")
        && ggml_n_dims(stored) == 2
        && !name.contains("_norm.weight")
        && !rules.keeps(name)
}

/// convert.py's type for a tensor it does not quantize, or the `--quant F16/BF16` type.
fn unquantized_type(source: Dtype, stored: &[usize], quant: Option<Quant>) -> GgmlType {
    let n: usize = stored.iter().product();
    if matches!(source, Dtype::F32 | Dtype::BF16) && (stored.len() <= 1 || n <= F32_MAX_ELEMENTS) {
        return GgmlType::F32;
    }
    match quant {
        Some(Quant::Float(t)) => t,
        _ if source == Dtype::BF16 => GgmlType::Bf16,
        _ => GgmlType::F16,
    }
}

/// convert.py's `general.file_type` without quantization: MOSTLY_BF16 when most parameters
/// are BF16, else MOSTLY_F16.
fn main_float_ftype(tensors: &[PlannedTensor], _: &[SourceTensor<'_>]) -> u32 {
    let mut by_type: BTreeMap<u32, usize> = BTreeMap::new();
    for t in tensors {
        *by_type.entry(t.out.ggml_type.id()).or_default() += t.out.numel();
    }
    let bf16 = by_type.get(&GgmlType::Bf16.id()).copied().unwrap_or(0);
    let f16 = by_type.get(&GgmlType::F16.id()).copied().unwrap_or(0);
    if bf16 > f16 { FTYPE_BF16 } else { FTYPE_F16 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch;

    fn src<'a>(key: &'a str, shape: &'a [usize], dtype: Dtype) -> SourceTensor<'a> {
        SourceTensor {
            key,
            shape,
            dtype,
            is_float: true,
        }
    }

    #[test]
    fn ggml_counts_dims_without_leading_ones() {
        assert_eq!(ggml_n_dims(&[1, 3072]), 1);
        assert_eq!(ggml_n_dims(&[3072, 64]), 2);
        assert_eq!(ggml_n_dims(&[1, 1, 8, 4]), 2);
        assert_eq!(ggml_n_dims(&[320, 4, 1, 1]), 4);
        assert_eq!(ggml_n_dims(&[]), 1);
    }

    #[test]
    fn sdxl_reshapes_awkward_rows_and_keeps_its_list() {
        let conv = [320usize, 320, 3, 3];
        let sources = [
            src(
                "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                &conv,
                Dtype::F16,
            ),
            src(
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 4, 3, 3],
                Dtype::F16,
            ),
            src("model.diffusion_model.out.0.bias", &[320], Dtype::F32),
            src("first_stage_model.decoder.conv_in.weight", &[4], Dtype::F32),
        ];
        let q = GgufOptions {
            quant: Quant::parse("Q4_K_M"),
            long_names: false,
        };
        let p = plan(arch("sdxl"), &sources, &q).unwrap();
        assert_eq!(p.left_out, 1);
        assert_eq!(p.arch_name, "sdxl");
        let t = &p.tensors[1];
        assert_eq!(t.out.name, "input_blocks.1.0.in_layers.2.weight");
        assert_eq!(t.out.shape, vec![3600, 256]);
        assert_eq!(t.out.ggml_type, GgmlType::Q4K);
        // 11520 elements, a multiple of 256: reshaped, but on the keep list.
        assert_eq!(p.tensors[0].out.shape, vec![45, 256]);
        assert_eq!(p.tensors[0].out.ggml_type, GgmlType::F16);
        assert_eq!(p.tensors[2].out.ggml_type, GgmlType::F32);
        assert!(
            p.kvs
                .iter()
                .any(|(k, _)| k == "comfy.gguf.orig_shape.input_blocks.1.0.in_layers.2.weight")
        );
    }

    /// Flux.1 at full size (the tests' generated files are too narrow for fused QKV rows of
    /// 256): the types lcpp.patch gives, written out by hand.
    #[test]
    fn flux_full_size_mixes() {
        let cases: [(&str, &[usize], [GgmlType; 2]); 6] = [
            (
                "double_blocks.0.img_attn.qkv.weight",
                &[9216, 3072],
                [GgmlType::Q5K, GgmlType::Q4K],
            ),
            (
                "double_blocks.0.img_mlp.2.weight",
                &[3072, 12288],
                [GgmlType::Q4K, GgmlType::Q3K],
            ),
            (
                "single_blocks.0.linear1.weight",
                &[21504, 3072],
                [GgmlType::Q4K, GgmlType::Q3K],
            ),
            (
                "final_layer.linear.weight",
                &[64, 3072],
                [GgmlType::Bf16, GgmlType::Bf16],
            ),
            (
                "img_in.weight",
                &[3072, 64],
                [GgmlType::Bf16, GgmlType::Bf16],
            ),
            (
                "double_blocks.0.img_attn.norm.key_norm.scale",
                &[128],
                [GgmlType::F32, GgmlType::F32],
            ),
        ];
        let keys: Vec<String> = cases
            .iter()
            .map(|c| format!("model.diffusion_model.{}", c.0))
            .collect();
        let sources: Vec<SourceTensor<'_>> = cases
            .iter()
            .zip(&keys)
            .map(|(c, k)| src(k, c.1, Dtype::BF16))
            .collect();
        for (m, mix) in ["Q4_K_M", "Q3_K_M"].into_iter().enumerate() {
            let q = GgufOptions {
                quant: Quant::parse(mix),
                long_names: false,
            };
            let p = plan(arch("flux"), &sources, &q).unwrap();
            for (name, _, want) in &cases {
                let t = p.tensors.iter().find(|t| t.out.name == *name).unwrap();
                assert_eq!(t.out.ggml_type, want[m], "{mix} {name}");
            }
        }
    }

    /// A name of 127 bytes passes; one of 128 is refused, named with its length, unless
    /// long names are let through (then the plan lists it).
    #[test]
    fn names_of_ggml_max_name_bytes_are_refused() {
        let ok = format!("model.diffusion_model.{}", "a".repeat(GGML_MAX_NAME - 1));
        let long = format!("model.diffusion_model.{}", "b".repeat(GGML_MAX_NAME));
        let shape = [4usize, 4];
        let sources = [
            src("model.diffusion_model.img_in.weight", &shape, Dtype::F16),
            src(&ok, &shape, Dtype::F16),
        ];
        let mut opts = GgufOptions::default();
        assert!(
            plan(arch("flux"), &sources, &opts)
                .unwrap()
                .long_names
                .is_empty()
        );
        let sources = [
            sources[0].clone(),
            sources[1].clone(),
            src(&long, &shape, Dtype::F16),
        ];
        let err = plan(arch("flux"), &sources, &opts).unwrap_err();
        let bs = "b".repeat(GGML_MAX_NAME);
        assert_eq!(
            err,
            PlanError::NamesTooLong {
                names: vec![(bs.clone(), GGML_MAX_NAME)]
            }
        );
        assert!(
            err.to_string().contains(&format!("'{bs}' (128 bytes)")),
            "{err}"
        );
        opts.long_names = true;
        let p = plan(arch("flux"), &sources, &opts).unwrap();
        assert_eq!(p.long_names, vec![(bs.clone(), GGML_MAX_NAME)]);
        assert!(p.tensors.iter().any(|t| t.out.name == bs));
    }
}
