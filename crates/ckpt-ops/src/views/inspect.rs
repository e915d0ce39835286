//! What a checkpoint is: architecture and variant, components, dtypes, sizes, metadata, and
//! the keys the catalog does not expect. Reads the header only.

use std::collections::BTreeMap;

use serde::Serialize;

use ckpt_core::catalog::detect::Detection;
use ckpt_core::catalog::{Component, Grouping, KeyCheck, component_of, keys_of};
use ckpt_read::{Checkpoint, dtype};

#[derive(Clone, Debug, Serialize)]
pub struct ArchInfo {
    /// `sd1`, `sd2`, `sdxl` or `unknown`.
    pub id: String,
    pub label: String,
    pub confidence: String,
    pub matched_keys: usize,
    pub considered_keys: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_up: Option<(String, usize)>,
    pub scale: u32,
    pub summary: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ComponentInfo {
    pub component: Component,
    pub label: String,
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
    /// dtype -> tensor count.
    pub dtypes: BTreeMap<String, usize>,
    /// Bits per weight: what the component costs (`bytes · 8 / params`).
    pub bits_per_weight: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DtypeInfo {
    pub dtype: String,
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MetadataEntry {
    pub key: String,
    /// The value, cut to 300 characters.
    pub value: String,
    pub bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ShapeIssue {
    pub key: String,
    pub expected: Vec<usize>,
    pub actual: Vec<usize>,
}

/// A file's per-layer quantization (ComfyUI's formats).
#[derive(Clone, Debug, Serialize)]
pub struct QuantInfo {
    /// Where the layers' records are: `comfy_quant tensors`, `_quantization_metadata`, or
    /// both.
    pub carrier: String,
    /// Format (with its scaling) -> layer count.
    pub formats: BTreeMap<String, usize>,
    pub layers: Vec<QuantLayer>,
    /// Layers with a `pre_quant_scale` (the model multiplies their input by it; the weights
    /// are read times it, column by column).
    pub pre_quant_scale: usize,
    /// Layers stored padded whose real columns the file does not give (their stored
    /// columns may include padding, read as zeros), by weight name.
    pub columns_unknown: Vec<String>,
}

/// One quantized layer.
#[derive(Clone, Debug, Serialize)]
pub struct QuantLayer {
    pub weight: String,
    pub format: String,
    pub shape: Vec<usize>,
    /// Bits per weight, scales included.
    pub bits_per_weight: f64,
}

/// A GGUF file's container facts and what its quantization costs, row by row.
#[derive(Clone, Debug, Serialize)]
pub struct GgufReport {
    pub version: u32,
    pub alignment: u64,
    /// `general.architecture` (city96's files name one; stable-diffusion.cpp's have no
    /// metadata at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Tensors city96's loader reshapes back (`comfy.gguf.orig_shape.*`).
    pub reshaped: usize,
    /// ggml type -> tensor count.
    pub types: BTreeMap<String, usize>,
    /// The report rows (the architecture's blocks, or key prefixes): bits per weight and
    /// the types in each.
    pub rows: Vec<BitsRow>,
}

/// What one report row costs.
#[derive(Clone, Debug, Serialize)]
pub struct BitsRow {
    pub row: String,
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
    pub bits_per_weight: f64,
    /// ggml type -> tensor count.
    pub types: BTreeMap<String, usize>,
}

/// What a torch checkpoint's pickle held besides tensors.
#[derive(Clone, Debug, Serialize)]
pub struct PickleReport {
    /// Where offsets count from (`archive/data.pkl`, or the file for a legacy checkpoint).
    pub stream: String,
    /// Every global the pickle names, with its verdict, like a pickle scanner's.
    pub globals: Vec<ckpt_read::pickle::GlobalUse>,
    /// Top-level entries outside the state dict (never written by `convert` or `fix`).
    pub other_entries: Vec<ckpt_read::torch::OtherEntry>,
    /// Where the state dict was ("" for the top level).
    pub state_dict_at: String,
    pub big_endian: bool,
    /// Tensors that could not be used in place and were copied once.
    pub copied_tensors: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    pub path: String,
    /// `safetensors`, `torch-zip`, `torch-legacy`, `diffusers`, `sharded` or `gguf`.
    pub container: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pickle: Option<PickleReport>,
    /// How a folder or sharded model was assembled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assembled: Vec<String>,
    pub file_bytes: u64,
    pub header_bytes: u64,
    pub tensors: usize,
    pub params: u64,
    pub arch: ArchInfo,
    pub variants: Vec<String>,
    /// Per-layer quantization, when the file has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantInfo>,
    /// A GGUF file's container and the cost of its types by row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgufReport>,
    pub components: Vec<ComponentInfo>,
    pub dtypes: Vec<DtypeInfo>,
    pub metadata: Vec<MetadataEntry>,
    /// Keys the detected architecture's catalog does not list.
    pub unknown_keys: Vec<String>,
    /// Required (non-optional, core) catalog keys the file lacks, for the components it has.
    pub missing_keys: Vec<String>,
    pub shape_mismatches: Vec<ShapeIssue>,
    /// Data-region bytes no tensor covers.
    pub gap_bytes: u64,
    /// The merge recipe a merger recorded: ckpt-diff's recipe text, or the A1111 /
    /// SuperMerger `sd_merge_recipe` summarised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_recipe: Option<String>,
    /// Models the file was merged from (`sd_merge_models`: name and SHA-256), ancestors
    /// included.
    pub merged_from: Vec<(String, String)>,
}

pub fn inspect(ckpt: &Checkpoint, det: &Detection) -> InspectReport {
    let mut components: BTreeMap<Component, ComponentInfo> = BTreeMap::new();
    let mut dtypes: BTreeMap<String, DtypeInfo> = BTreeMap::new();
    let arch = det.arch();
    let quant = ckpt.comfy_quant();
    let layer = |name: &str| quant.and_then(|q| q.layers.iter().find(|l| l.weight == name));
    for (t, key) in ckpt.tensors().iter().zip(keys_of(ckpt)) {
        let c = component_of(key);
        let numel = t.numel() as u64;
        // A quantized layer counts its codes and scales, under its format's name.
        let (bytes, d) = match layer(&t.name) {
            Some(l) => (
                (l.bits_per_weight * numel as f64 / 8.0).round() as u64,
                l.code.format().to_string(),
            ),
            None => (t.byte_len() as u64, type_name(t)),
        };
        let info = components.entry(c).or_insert_with(|| ComponentInfo {
            component: c,
            label: arch
                .map(|a| a.component_label(c))
                .unwrap_or(c.id())
                .to_string(),
            tensors: 0,
            params: 0,
            bytes: 0,
            dtypes: BTreeMap::new(),
            bits_per_weight: 0.0,
        });
        info.tensors += 1;
        info.params += numel;
        info.bytes += bytes;
        *info.dtypes.entry(d.clone()).or_default() += 1;
        let di = dtypes.entry(d.clone()).or_insert_with(|| DtypeInfo {
            dtype: d,
            tensors: 0,
            params: 0,
            bytes: 0,
        });
        di.tensors += 1;
        di.params += numel;
        di.bytes += bytes;
    }

    for c in components.values_mut() {
        c.bits_per_weight = bits(c.bytes, c.params);
    }
    let gguf = ckpt.gguf().map(|g| gguf_report(ckpt, det, g));

    let (unknown_keys, missing_keys, shape_mismatches) = match arch {
        Some(a) => {
            let keys = KeyCheck::of(ckpt, a, det.scale);
            let shapes = keys
                .wrong_shape
                .into_iter()
                .map(|w| ShapeIssue {
                    key: w.name,
                    expected: w.expected,
                    actual: w.actual,
                })
                .collect();
            (keys.unknown, keys.missing_required, shapes)
        }
        None => Default::default(),
    };

    // A GGUF file's metadata are its key-values (each array shown by its type and length
    // past the first elements).
    let gguf_kvs: Vec<(String, String)> = ckpt
        .gguf()
        .map(|g| {
            g.kvs
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let metadata = ckpt
        .metadata()
        .iter()
        .chain(gguf_kvs.iter())
        .map(|(k, v)| MetadataEntry {
            key: k.clone(),
            value: if v.chars().count() > 300 {
                format!("{}…", v.chars().take(300).collect::<String>())
            } else {
                v.clone()
            },
            bytes: v.len(),
        })
        .collect();

    let c = &det.confidence;
    InspectReport {
        path: ckpt.path().display().to_string(),
        container: ckpt.provenance().id().to_string(),
        pickle: ckpt.pickle().map(|p| PickleReport {
            stream: p.stream.clone(),
            globals: p.globals.clone(),
            other_entries: p.other.clone(),
            state_dict_at: p.state_dict_at.clone(),
            big_endian: p.big_endian,
            copied_tensors: p.copied,
        }),
        assembled: ckpt.notes().to_vec(),
        file_bytes: ckpt.file_len(),
        header_bytes: ckpt.gguf().map_or(ckpt.header_len(), |g| g.data_start),
        tensors: ckpt.tensors().len(),
        params: ckpt.tensors().iter().map(|t| t.numel() as u64).sum(),
        arch: ArchInfo {
            id: det.layout.id().to_string(),
            label: arch
                .map(|a| a.label())
                .unwrap_or("unknown layout")
                .to_string(),
            confidence: c.level.id().to_string(),
            matched_keys: c.matched,
            considered_keys: c.considered,
            runner_up: c.runner_up.map(|(a, n)| (a.id().to_string(), n)),
            scale: det.scale,
            summary: det.summary(),
        },
        variants: det
            .variants
            .iter()
            .map(|v| v.describe())
            .chain(ckpt.scaled_fp8().map(|q| {
                format!(
                    "scaled FP8 ({}): {} weights stored in {} with a per-tensor scale_weight, read dequantized",
                    q.marker,
                    q.scaled_weights(),
                    ckpt_read::dtype::name(q.format.dtype())
                )
            }))
            .chain(quant.map(|q| {
                let formats: Vec<String> = q
                    .formats()
                    .iter()
                    .map(|(f, n)| format!("{n} {f}"))
                    .collect();
                format!(
                    "quantized per layer as ComfyUI stores it ({}), read decoded",
                    formats.join(", ")
                )
            }))
            .collect(),
        gguf,
        quantization: quant.map(|q| QuantInfo {
            carrier: match q.carrier {
                ckpt_read::comfy::Carrier::Tensors => "comfy_quant tensors",
                ckpt_read::comfy::Carrier::Metadata => "_quantization_metadata",
                ckpt_read::comfy::Carrier::Both => "comfy_quant tensors and _quantization_metadata",
            }
            .to_string(),
            formats: q.formats(),
            layers: q
                .layers
                .iter()
                .map(|l| QuantLayer {
                    weight: l.weight.clone(),
                    format: l.code.label(),
                    shape: ckpt.get(&l.weight).map(|t| t.shape.clone()).unwrap_or_default(),
                    bits_per_weight: l.bits_per_weight,
                })
                .collect(),
            pre_quant_scale: q.layers.iter().filter(|l| l.pre_quant_scale).count(),
            columns_unknown: q
                .layers
                .iter()
                .filter(|l| l.columns_unknown)
                .map(|l| l.weight.clone())
                .collect(),
        }),
        components: components.into_values().collect(),
        dtypes: dtypes.into_values().collect(),
        metadata,
        unknown_keys,
        missing_keys,
        shape_mismatches,
        gap_bytes: ckpt.gap_bytes(),
        merge_recipe: merge_recipe(ckpt),
        merged_from: merged_from(ckpt),
    }
}

/// The recorded recipe: ckpt-diff's own text, or a summary of an `sd_merge_recipe`.
fn merge_recipe(ckpt: &Checkpoint) -> Option<String> {
    if let Some(text) = ckpt.metadata_value("ckpt_diff.recipe") {
        return Some(text.trim_end().to_string());
    }
    let v: serde_json::Value =
        serde_json::from_str(ckpt.metadata_value("sd_merge_recipe")?).ok()?;
    let get = |k: &str| {
        v.get(k).map(|x| {
            x.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| x.to_string())
        })
    };
    let mut parts = Vec::new();
    for key in [
        "type",
        "interp_method",
        "mode",
        "multiplier",
        "base_alpha",
        "weights_alpha",
        "calcmode",
        "model_a",
        "model_b",
        "model_c",
        "primary_model_hash",
        "secondary_model_hash",
        "tertiary_model_hash",
    ] {
        if let Some(val) = get(key).filter(|x| x != "null" && !x.is_empty()) {
            parts.push(format!("{key}: {val}"));
        }
    }
    (!parts.is_empty()).then(|| parts.join("\n"))
}

fn merged_from(ckpt: &Checkpoint) -> Vec<(String, String)> {
    let Some(text) = ckpt.metadata_value("sd_merge_models") else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) else {
        return Vec::new();
    };
    map.iter()
        .map(|(hash, v)| {
            (
                v.get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("?")
                    .to_string(),
                hash.clone(),
            )
        })
        .collect()
}

/// The name of a tensor's stored type: its dtype, or its ggml type (`Q4_K`).
fn type_name(t: &ckpt_read::TensorEntry) -> String {
    match t.encoding {
        ckpt_read::Encoding::Ggml(ty) => ty.name().to_string(),
        _ => dtype::name(t.dtype),
    }
}

fn bits(bytes: u64, params: u64) -> f64 {
    if params == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / params as f64
    }
}

/// The GGUF part of the report: the container, and bits per weight by report row.
fn gguf_report(ckpt: &Checkpoint, det: &Detection, g: &ckpt_read::gguf::GgufInfo) -> GgufReport {
    let keys = keys_of(ckpt);
    let grouping = match det.arch() {
        Some(a) => Grouping::for_arch(a),
        None => Grouping::generic(keys.iter().map(String::as_str)),
    };
    let mut rows: Vec<BitsRow> = grouping
        .groups()
        .iter()
        .map(|g| BitsRow {
            row: g.label.clone(),
            tensors: 0,
            params: 0,
            bytes: 0,
            bits_per_weight: 0.0,
            types: BTreeMap::new(),
        })
        .collect();
    let mut types = BTreeMap::new();
    for (t, key) in ckpt.tensors().iter().zip(keys) {
        let r = &mut rows[grouping.group_of(key)];
        r.tensors += 1;
        r.params += t.numel() as u64;
        r.bytes += t.byte_len() as u64;
        *r.types.entry(type_name(t)).or_default() += 1;
        *types.entry(type_name(t)).or_default() += 1;
    }
    rows.retain(|r| r.tensors > 0);
    for r in &mut rows {
        r.bits_per_weight = bits(r.bytes, r.params);
    }
    GgufReport {
        version: g.version,
        alignment: g.alignment,
        architecture: g.architecture().map(str::to_string),
        reshaped: g
            .kvs
            .iter()
            .filter(|(k, _)| k.starts_with("comfy.gguf.orig_shape."))
            .count(),
        types,
        rows,
    }
}
