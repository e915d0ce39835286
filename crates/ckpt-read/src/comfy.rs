//! ComfyUI's per-layer ("mixed precision") quantization, read exactly.
//!
//! A layer `L` quantized by ComfyUI or comfy-kitchen is stored as `L.weight` (the codes),
//! `L.weight_scale` (one scale, a scale per row, or swizzled block scales), for nvfp4 also
//! `L.weight_scale_2` (the global scale), and a record of its format: a `L.comfy_quant`
//! tensor (the UTF-8 bytes of a JSON object such as `{"format": "nvfp4"}`) or an entry of
//! the JSON in the metadata key `_quantization_metadata` (`{"layers": {"L": {...}}}`). It
//! may also carry `L.input_scale` (the scale ComfyUI quantizes the layer's *input* with in
//! its fast fp8/nvfp4 matrix products: it never changes the weight) and
//! `L.pre_quant_scale` (ModelOpt's AWQ smoothing: the model multiplies the input by it
//! before the layer, so the weight it applies is `W[:, k] · pre_quant_scale[k]`, which is
//! what [`Block::decode`] gives). asym_w4a8_int8 keeps its scales in `L.weight_s_rel`,
//! `L.weight_s_channel`, `L.weight_codebook` and `L.weight_correction`.
//!
//! [`apply`] finds every such layer, checks its record and the shapes and dtypes of its
//! tensors against the format, gives its weight an [`Encoding::Block`] with the logical
//! shape, and takes the bookkeeping tensors out of the tensor list (kept in
//! [`ComfyQuant::hidden`] to copy them as they are). Anything it cannot decode exactly is
//! refused with the layer and the format named: a record that is not JSON (comfy-org's
//! issue #15567: a released file with 42 of 200 records zero-filled), a format that is
//! unknown, a scale of the wrong shape, a scale that is not finite.
//!
//! [`Block::decode`] computes the values exactly as comfy-kitchen 0.2.40's reference
//! (`eager`) backend does in float32, operation by operation, so the values agree bit for
//! bit (the tests check it against goldens that comfy-kitchen made,
//! `fixtures/comfy-quant/`). Sources: ComfyUI `comfy/ops.py` (`_load_quantized_module`),
//! `comfy/quant_ops.py` (`QUANT_ALGOS`), `comfy/utils.py` (`convert_old_quants`);
//! comfy-kitchen `tensor/{fp8,nvfp4,mxfp8,int8,int8_utils,w4a8_int8,w4a8_packed}.py`,
//! `backends/eager/{quantization,w4a8_int8}.py`, `float_utils.py`.

use std::collections::BTreeMap;

use super::dtype::{self, Dtype, FloatFormat};
use super::layout::{Encoding, TensorEntry};

/// The metadata key of the second carrier.
pub const METADATA_KEY: &str = "_quantization_metadata";
/// The suffix of a layer's format record.
pub const RECORD: &str = ".comfy_quant";

/// A layer's side tensor: its address range (in the layout's address space) and dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub begin: usize,
    pub end: usize,
    pub dtype: Dtype,
}

impl Part {
    /// No tensor.
    pub const NONE: Part = Part {
        begin: 0,
        end: 0,
        dtype: Dtype::F32,
    };

    fn of(t: &TensorEntry) -> Part {
        Part {
            begin: t.begin,
            end: t.end,
            dtype: t.dtype,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.begin
    }
}

/// The bytes of a layer's side tensors (empty where the format has none), as
/// [`Block::sides`] gives them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sides<'a> {
    pub scales: &'a [u8],
    pub zeros: &'a [u8],
    pub rows: &'a [u8],
    pub lut: &'a [u8],
    pub pre: &'a [u8],
}

impl<'a> Sides<'a> {
    /// Every side tensor's bytes (what an exact hash of the layer covers).
    pub fn all(&self) -> [&'a [u8]; 5] {
        [self.scales, self.zeros, self.rows, self.lut, self.pre]
    }
}

/// How one layer's stored values give its weight (see [`Block::decode`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Block {
    pub code: Code,
    /// The per-tensor scale: `weight_scale` of fp8 and of int8 tensorwise, `weight_scale_2`
    /// of nvfp4; 1 for the others.
    pub scale: f32,
    /// The per-row or per-block scales (asym_w4a8_int8: `weight_s_rel`, the group scales).
    pub scales: Part,
    /// awq_w4a16's zero points (same dtype and layout as its scales); asym_w4a8_int8's
    /// `weight_correction` (`[K/group, N]`, when the layer is asymmetric).
    pub zeros: Part,
    /// asym_w4a8_int8's `weight_s_channel`, a scale per row.
    pub rows: Part,
    /// asym_w4a8_int8's `weight_codebook` (16 floats), when its 4-bit codes index one.
    pub lut: Part,
    /// The layer's `pre_quant_scale` (a float per column), when it has one: the model
    /// multiplies the layer's input by it, so the weight it applies is the decoded one
    /// times it, column by column.
    pub pre: Part,
    /// Logical columns (the `K` of the `[N, K]` weight).
    pub cols: usize,
    /// Stored columns: `K` padded as the format pads it (the swizzled block-scale layout
    /// counts in them).
    pub stored_cols: usize,
}

/// The per-layer formats read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// `float8_e4m3fn`, `float8_e5m2`: `w = f32(q) · scale`.
    Fp8(FloatFormat),
    /// `int8_tensorwise` with one scale: `w = f32(q) · scale`.
    Int8,
    /// `int8_tensorwise` with a scale per row: `w = f32(q) · scale[row]`.
    Int8Rows,
    /// `int8_tensorwise` with `"convrot": true`: per row, then every `group` columns
    /// multiplied by the normalised Hadamard matrix `(H4 ⊗ H4 ⊗ …)/√group`.
    Int8Convrot { group: usize },
    /// `nvfp4`: E2M1 pairs (high nibble first), E4M3 block scales per 16 columns
    /// (swizzled), and the global scale.
    Nvfp4,
    /// `mxfp8`: E4M3 codes with E8M0 block scales per 32 columns (swizzled).
    Mxfp8,
    /// `convrot_w4a4`: signed int4 pairs (low nibble first) with a scale per row, then
    /// un-rotated as [`Code::Int8Convrot`].
    Int4Convrot { group: usize },
    /// `awq_w4a16`: unsigned int4 pairs (low nibble first), a scale and a zero point per
    /// `group` columns of a row, stored transposed (`[K/group, N]`):
    /// `w = f32(f32(q - 8) · scale) + zero`.
    Awq { group: usize },
    /// `asym_w4a8_int8`: a row of 4- or 6-bit codes is a K/2-byte plane of nibbles (low
    /// nibble the even column) followed, at 6 bits, by a K/4-byte plane of each code's top
    /// two bits. A code's value (its codebook entry, or `q - 2^(bits-1)`) times its group's
    /// scale is rounded to an int8 (ties to even, clamped to ±127); that times the row's
    /// scale, plus the group's correction, is un-rotated as [`Code::Int8Convrot`] in
    /// groups of `rot`.
    W4a8 {
        group: usize,
        rot: usize,
        bits: usize,
    },
}

impl Code {
    /// The `format` string of the record.
    pub fn format(self) -> &'static str {
        match self {
            Code::Fp8(FloatFormat::F8E5M2) => "float8_e5m2",
            Code::Fp8(_) => "float8_e4m3fn",
            Code::Int8 | Code::Int8Rows | Code::Int8Convrot { .. } => "int8_tensorwise",
            Code::Nvfp4 => "nvfp4",
            Code::Mxfp8 => "mxfp8",
            Code::Int4Convrot { .. } => "convrot_w4a4",
            Code::Awq { .. } => "awq_w4a16",
            Code::W4a8 { .. } => "asym_w4a8_int8",
        }
    }

    /// How a report names it: the format, and its scaling when the format has several.
    pub fn label(self) -> String {
        match self {
            Code::Int8 => "int8_tensorwise (one scale)".into(),
            Code::Int8Rows => "int8_tensorwise (a scale per row)".into(),
            Code::Int8Convrot { group } => format!("int8_tensorwise (convrot, groups of {group})"),
            Code::Int4Convrot { group } => format!("convrot_w4a4 (groups of {group})"),
            Code::Awq { group } => format!("awq_w4a16 (groups of {group})"),
            Code::W4a8 { group, rot, bits } => {
                format!("asym_w4a8_int8 ({bits}-bit, groups of {group}, convrot {rot})")
            }
            other => other.format().into(),
        }
    }
}

/// One quantized layer of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// The weight's name (`L.weight`).
    pub weight: String,
    pub code: Code,
    /// Bits the layer's weight takes per value, scales included.
    pub bits_per_weight: f64,
    /// The layer has a `pre_quant_scale` (its input is scaled before the layer).
    pub pre_quant_scale: bool,
    /// Its rows were stored padded (the bias says so) and nothing in the file gives its
    /// real columns: the stored ones may include padding, read as zeros.
    pub columns_unknown: bool,
    /// The weight's entry as the file stores it (codes, padded): to copy it as it is.
    pub stored: TensorEntry,
}

/// Where the layers' records were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// `.comfy_quant` tensors (what ComfyUI itself saves).
    Tensors,
    /// The `_quantization_metadata` metadata key (other converters).
    Metadata,
    Both,
}

/// What a file quantized per layer holds besides its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ComfyQuant {
    pub carrier: Carrier,
    /// The quantized layers, in file order.
    pub layers: Vec<Layer>,
    /// The records, scales and input scales taken out of the tensor list, in file order:
    /// to copy them as they are.
    pub hidden: Vec<TensorEntry>,
}

impl ComfyQuant {
    /// The stored entry of the quantized weight `name`, if it is one.
    pub fn stored(&self, name: &str) -> Option<&TensorEntry> {
        self.layers
            .iter()
            .find(|l| l.weight == name)
            .map(|l| &l.stored)
    }

    /// How many layers use each format, by [`Code::label`].
    pub fn formats(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for l in &self.layers {
            *out.entry(l.code.label()).or_insert(0) += 1;
        }
        out
    }
}

/// Why a per-layer quantized file cannot be read.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ComfyError {
    #[error("the metadata '{METADATA_KEY}' is not the JSON ComfyUI reads: {0}")]
    BadMetadata(String),
    #[error(
        "layer '{layer}': its quantization record is {len} zero bytes, not JSON (a damaged file)"
    )]
    ZeroRecord { layer: String, len: usize },
    #[error("layer '{layer}': its quantization record is not a JSON object: {reason}")]
    BadRecord { layer: String, reason: String },
    #[error("layer '{layer}': its quantization record names no format")]
    NoFormat { layer: String },
    #[error("layer '{layer}': quantization format '{format}' is not one ComfyUI defines")]
    UnknownFormat { layer: String, format: String },
    #[error("layer '{layer}' ({format}): {what}")]
    Inconsistent {
        layer: String,
        format: &'static str,
        what: String,
    },
}

/// Suffixes a quantized layer may hold besides its weight, taken out of the tensors.
const BOOKKEEPING: [&str; 10] = [
    ".weight_zeros",
    ".weight_s_rel",
    ".weight_s_channel",
    ".weight_codebook",
    ".weight_correction",
    ".weight_scale",
    ".weight_scale_2",
    RECORD,
    ".input_scale",
    ".pre_quant_scale",
];

/// Finds the per-layer quantized layers of a file (both carriers), checks them, encodes
/// their weights and takes their bookkeeping out of `tensors`. `None` when the file has
/// no record. `data` gives a tensor's bytes.
pub fn apply<'d>(
    tensors: &mut Vec<TensorEntry>,
    metadata: &[(String, String)],
    data: &dyn Fn(&TensorEntry) -> &'d [u8],
) -> Result<Option<ComfyQuant>, ComfyError> {
    let mut records: BTreeMap<String, String> = BTreeMap::new();
    let mut from_tensors = false;
    for t in tensors.iter() {
        if let Some(layer) = t.name.strip_suffix(RECORD) {
            from_tensors = true;
            let bytes = data(t);
            if !bytes.is_empty() && bytes.iter().all(|&b| b == 0) {
                return Err(ComfyError::ZeroRecord {
                    layer: layer.into(),
                    len: bytes.len(),
                });
            }
            let text = std::str::from_utf8(bytes).map_err(|e| ComfyError::BadRecord {
                layer: layer.into(),
                reason: format!("not UTF-8 ({e})"),
            })?;
            records.insert(layer.to_string(), text.to_string());
        }
    }
    let mut from_metadata = false;
    if let Some((_, json)) = metadata.iter().find(|(k, _)| k == METADATA_KEY) {
        from_metadata = true;
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ComfyError::BadMetadata(e.to_string()))?;
        let layers = value
            .get("layers")
            .and_then(|l| l.as_object())
            .ok_or_else(|| ComfyError::BadMetadata("it has no \"layers\" object".into()))?;
        // ComfyUI turns each entry into a record tensor, replacing one of the same name.
        for (layer, conf) in layers {
            records.insert(layer.clone(), conf.to_string());
        }
    }
    if records.is_empty() {
        return Ok(None);
    }
    let carrier = match (from_tensors, from_metadata) {
        (true, true) => Carrier::Both,
        (false, true) => Carrier::Metadata,
        _ => Carrier::Tensors,
    };
    let index: std::collections::HashMap<String, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut layers = Vec::new();
    let mut hide: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut encoded: Vec<(usize, TensorEntry)> = Vec::new();
    for (layer, text) in &records {
        let conf = Record::parse(layer, text)?;
        let get = |suffix: &str| index.get(&format!("{layer}{suffix}")).map(|&i| &tensors[i]);
        let found = Found {
            layer,
            weight: get(".weight"),
            scale: get(".weight_scale"),
            scale2: get(".weight_scale_2"),
            zeros: get(".weight_zeros"),
            s_rel: get(".weight_s_rel"),
            s_channel: get(".weight_s_channel"),
            codebook: get(".weight_codebook"),
            correction: get(".weight_correction"),
            pre: get(".pre_quant_scale"),
            bias: get(".bias"),
        };
        let (entry, code) = encode(&conf, &found, data)?;
        let weight = found.weight.expect("encode checked it");
        let scale_bytes = [
            found.scale,
            found.scale2,
            found.zeros,
            found.s_rel,
            found.s_channel,
            found.codebook,
            found.correction,
        ]
        .iter()
        .flatten()
        .map(|t| t.byte_len())
        .sum::<usize>();
        layers.push(Layer {
            weight: weight.name.clone(),
            code,
            bits_per_weight: (weight.byte_len() + scale_bytes) as f64 * 8.0
                / entry.numel().max(1) as f64,
            pre_quant_scale: get(".pre_quant_scale").is_some(),
            columns_unknown: matches!(code, Code::Nvfp4 | Code::Mxfp8)
                && entry.shape.first() != weight.shape.first()
                && entry
                    .encoding
                    .block()
                    .is_some_and(|b| b.cols == b.stored_cols),
            stored: weight.clone(),
        });
        for suffix in BOOKKEEPING {
            hide.insert(format!("{layer}{suffix}"));
        }
        encoded.push((index[&weight.name], entry));
    }
    for (i, entry) in encoded {
        tensors[i] = entry;
    }
    let (hidden, kept): (Vec<TensorEntry>, Vec<TensorEntry>) =
        tensors.drain(..).partition(|t| hide.contains(&t.name));
    *tensors = kept;
    layers.sort_by_key(|l| {
        tensors
            .iter()
            .position(|t| t.name == l.weight)
            .unwrap_or(usize::MAX)
    });
    Ok(Some(ComfyQuant {
        carrier,
        layers,
        hidden,
    }))
}

/// A layer's record, parsed.
struct Record {
    format: String,
    convrot: bool,
    convrot_group: usize,
    /// `group_size` (awq_w4a16, asym_w4a8_int8), when the record has it.
    group: Option<usize>,
}

impl Record {
    fn parse(layer: &str, text: &str) -> Result<Record, ComfyError> {
        let bad = |reason: String| ComfyError::BadRecord {
            layer: layer.into(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad(format!("it is {text}")))?;
        // Parameters may also sit under "params" (ComfyUI's reader accepts both).
        let param = |key: &str| {
            obj.get(key)
                .or_else(|| obj.get("params").and_then(|p| p.get(key)))
        };
        let format = param("format")
            .and_then(|f| f.as_str())
            .ok_or_else(|| ComfyError::NoFormat {
                layer: layer.into(),
            })?
            .to_string();
        let convrot = param("convrot").and_then(|v| v.as_bool()).unwrap_or(false);
        let convrot_group = param("convrot_groupsize")
            .and_then(|v| v.as_u64())
            .unwrap_or(256) as usize;
        let group = param("group_size")
            .and_then(|v| v.as_u64())
            .map(|g| g as usize);
        Ok(Record {
            format,
            convrot,
            convrot_group,
            group,
        })
    }
}

/// The tensors of one layer.
struct Found<'a> {
    layer: &'a str,
    weight: Option<&'a TensorEntry>,
    scale: Option<&'a TensorEntry>,
    scale2: Option<&'a TensorEntry>,
    zeros: Option<&'a TensorEntry>,
    s_rel: Option<&'a TensorEntry>,
    s_channel: Option<&'a TensorEntry>,
    codebook: Option<&'a TensorEntry>,
    correction: Option<&'a TensorEntry>,
    pre: Option<&'a TensorEntry>,
    bias: Option<&'a TensorEntry>,
}

/// Checks a layer against its format and gives its weight's entry: logical shape, the
/// dtype of one code, the encoding.
fn encode<'a, 'd>(
    conf: &Record,
    f: &Found<'a>,
    data: &dyn Fn(&TensorEntry) -> &'d [u8],
) -> Result<(TensorEntry, Code), ComfyError> {
    let format: &'static str = match conf.format.as_str() {
        "float8_e4m3fn" => "float8_e4m3fn",
        "float8_e5m2" => "float8_e5m2",
        "nvfp4" => "nvfp4",
        "mxfp8" => "mxfp8",
        "int8_tensorwise" => "int8_tensorwise",
        "convrot_w4a4" => "convrot_w4a4",
        "awq_w4a16" => "awq_w4a16",
        "asym_w4a8_int8" => "asym_w4a8_int8",
        other => {
            return Err(ComfyError::UnknownFormat {
                layer: f.layer.into(),
                format: other.into(),
            });
        }
    };
    let wrong = |what: String| ComfyError::Inconsistent {
        layer: f.layer.into(),
        format,
        what,
    };
    let weight = f
        .weight
        .ok_or_else(|| wrong("the file has no weight for it".into()))?;
    let need = |t: Option<&'a TensorEntry>, what: &str| {
        t.ok_or_else(|| wrong(format!("the file has no {what} for it")))
    };
    // Every format but asym_w4a8_int8 keeps its scales in `weight_scale`.
    let scale = || need(f.scale, "weight_scale");
    let shape_of = |t: &TensorEntry| format!("{} {:?}", dtype::name(t.dtype), t.shape);
    let matrix = |t: &TensorEntry| -> Result<(usize, usize), ComfyError> {
        match t.shape[..] {
            [n, k] => Ok((n, k)),
            _ => Err(wrong(format!(
                "its weight is {}, not a matrix (ckpt-diff reads quantized linear layers)",
                shape_of(t)
            ))),
        }
    };
    let scalar = |t: &TensorEntry| -> Result<f32, ComfyError> {
        let value = match (dtype::float_format(t.dtype), t.numel()) {
            (Some(fmt), 1) => {
                let mut v = [0.0f64];
                fmt.decode_into(data(t), &mut v);
                v[0]
            }
            _ => {
                return Err(wrong(format!(
                    "'{}' is {}, not one float",
                    t.name,
                    shape_of(t)
                )));
            }
        };
        if !value.is_finite() || value < 0.0 {
            return Err(wrong(format!(
                "'{}' is {value}, not a finite scale",
                t.name
            )));
        }
        Ok(value as f32)
    };
    let need_dtype = |t: &TensorEntry, want: &[Dtype]| -> Result<(), ComfyError> {
        if want.contains(&t.dtype) {
            Ok(())
        } else {
            Err(wrong(format!(
                "'{}' is {}, where the format stores {}",
                t.name,
                dtype::name(t.dtype),
                want.iter()
                    .map(|d| dtype::name(*d))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )))
        }
    };
    // A scale per row: `n` finite floats.
    let row_scales = |t: &TensorEntry, n: usize| -> Result<(), ComfyError> {
        if t.numel() != n || dtype::float_format(t.dtype).is_none() {
            return Err(wrong(format!(
                "its weight_scale is {}, not one float per row of its {n} rows",
                shape_of(t)
            )));
        }
        finite_scales(t, data(t)).map_err(&wrong)
    };
    let block = |code: Code, scale: f32, scales: Part, cols: usize| Block {
        code,
        scale,
        scales,
        zeros: Part::NONE,
        rows: Part::NONE,
        lut: Part::NONE,
        pre: Part::NONE,
        cols,
        stored_cols: cols,
    };
    // Floats of the given shape, all finite.
    let floats = |t: &TensorEntry, shape: &[usize]| -> Result<(), ComfyError> {
        if t.shape != shape || dtype::float_format(t.dtype).is_none() {
            return Err(wrong(format!(
                "'{}' is {}, where the format stores floats {shape:?}",
                t.name,
                shape_of(t),
            )));
        }
        finite_scales(t, data(t)).map_err(&wrong)
    };
    // A ConvRot group: a power of 4 dividing the columns (the Hadamard matrix's size).
    let convrot = |g: usize, k: usize| -> Result<usize, ComfyError> {
        if is_power_of_four(g) && k.is_multiple_of(g) {
            Ok(g)
        } else {
            Err(wrong(format!(
                "convrot groups of {g} columns do not tile its {k} columns \
                 (the group must be a power of 4 dividing them)"
            )))
        }
    };
    let mut out = weight.clone();
    let code = match format {
        "float8_e4m3fn" | "float8_e5m2" => {
            let (want, fmt) = if format == "float8_e5m2" {
                (Dtype::F8_E5M2, FloatFormat::F8E5M2)
            } else {
                (Dtype::F8_E4M3, FloatFormat::F8E4M3)
            };
            need_dtype(weight, &[want])?;
            let (_, k) = matrix(weight)?;
            let code = Code::Fp8(fmt);
            out.encoding = Encoding::Block(block(code, scalar(scale()?)?, Part::NONE, k));
            code
        }
        "int8_tensorwise" => {
            need_dtype(weight, &[Dtype::I8])?;
            let scale = scale()?;
            let (n, k) = matrix(weight)?;
            let rows = scale.numel() > 1 || conf.convrot;
            let code = if conf.convrot {
                Code::Int8Convrot {
                    group: convrot(conf.convrot_group, k)?,
                }
            } else if rows {
                Code::Int8Rows
            } else {
                Code::Int8
            };
            out.encoding = Encoding::Block(match code {
                Code::Int8 => block(code, scalar(scale)?, Part::NONE, k),
                _ => {
                    row_scales(scale, n)?;
                    block(code, 1.0, Part::of(scale), k)
                }
            });
            code
        }
        "convrot_w4a4" => {
            need_dtype(weight, &[Dtype::I8, Dtype::U8])?;
            let scale = scale()?;
            let (n, half) = matrix(weight)?;
            let k = half * 2;
            let g = convrot(conf.convrot_group, k)?;
            row_scales(scale, n)?;
            let code = Code::Int4Convrot { group: g };
            out.dtype = Dtype::F4;
            out.shape = vec![n, k];
            out.encoding = Encoding::Block(block(code, 1.0, Part::of(scale), k));
            code
        }
        "awq_w4a16" => {
            need_dtype(weight, &[Dtype::I8, Dtype::U8])?;
            let scale = scale()?;
            let (n, half) = matrix(weight)?;
            let k = half * 2;
            let g = conf.group.unwrap_or(64);
            if g == 0 || k % g != 0 {
                return Err(wrong(format!(
                    "groups of {g} columns do not tile its {k} columns"
                )));
            }
            let zeros = need(f.zeros, "weight_zeros")?;
            floats(scale, &[k / g, n])?;
            floats(zeros, &[k / g, n])?;
            if zeros.dtype != scale.dtype {
                return Err(wrong("its scales and zero points differ in dtype".into()));
            }
            let code = Code::Awq { group: g };
            out.dtype = Dtype::F4;
            out.shape = vec![n, k];
            out.encoding = Encoding::Block(Block {
                zeros: Part::of(zeros),
                ..block(code, 1.0, Part::of(scale), k)
            });
            code
        }
        "asym_w4a8_int8" => {
            need_dtype(weight, &[Dtype::I8, Dtype::U8])?;
            let (n, width) = matrix(weight)?;
            let s_rel = need(f.s_rel, "weight_s_rel")?;
            let s_channel = need(f.s_channel, "weight_s_channel")?;
            let g = conf.group.unwrap_or(16);
            let rot = conf.convrot_group;
            // K from the group scales, the bits from the row's width (comfy-kitchen's
            // `_w4a8_geometry`).
            let groups = match s_rel.shape[..] {
                [rows, groups] if rows == n => groups,
                _ => {
                    return Err(wrong(format!(
                        "its weight_s_rel is {}, not a scale per group of each of its {n} rows",
                        shape_of(s_rel)
                    )));
                }
            };
            // (A group size too large to multiply out reads as no columns: refused below.)
            let k = groups.checked_mul(g).unwrap_or(0);
            let bits = match k {
                0 => 0,
                _ if width * 8 == k * 4 => 4,
                _ if width * 8 == k * 6 => 6,
                _ => 0,
            };
            if bits == 0 {
                return Err(wrong(format!(
                    "its rows of {width} bytes hold neither 4- nor 6-bit codes for the {k} \
                     columns its {groups} groups of {g} give"
                )));
            }
            if g < 4
                || !(16 % g == 0 || g.is_multiple_of(16))
                || !k.is_multiple_of(16)
                || !is_power_of_four(rot)
                || !k.is_multiple_of(rot)
                || (bits == 6 && (!k.is_multiple_of(32) || !g.is_multiple_of(16)))
            {
                return Err(wrong(format!(
                    "groups of {g} columns and convrot groups of {rot} do not fit its {k} \
                     columns at {bits} bits (comfy-kitchen needs K divisible by 16 and by \
                     both groups, a group of 4 or more dividing 16 or a multiple of it, a \
                     convrot group a power of 4, and at 6 bits K divisible by 32)"
                )));
            }
            // E4M3 group scales may be stored as bytes (ComfyUI views them as E4M3).
            let mut scales = Part::of(s_rel);
            if s_rel.dtype == Dtype::U8 {
                scales.dtype = Dtype::F8_E4M3;
            }
            if !matches!(scales.dtype, Dtype::F8_E4M3 | Dtype::F32) {
                need_dtype(s_rel, &[Dtype::F8_E4M3, Dtype::F32])?;
            }
            let as_e4m3 = TensorEntry {
                dtype: scales.dtype,
                ..s_rel.clone()
            };
            finite_scales(&as_e4m3, data(s_rel)).map_err(&wrong)?;
            floats(s_channel, &[n])?;
            let mut encoded = Block {
                rows: Part::of(s_channel),
                ..block(
                    Code::W4a8 {
                        group: g,
                        rot,
                        bits,
                    },
                    1.0,
                    scales,
                    k,
                )
            };
            if let Some(lut) = f.codebook {
                floats(lut, &[16])?;
                encoded.lut = Part::of(lut);
            }
            if let Some(c) = f.correction {
                floats(c, &[groups, n])?;
                encoded.zeros = Part::of(c);
            }
            if bits == 6 && !(encoded.lut.is_empty() && encoded.zeros.is_empty()) {
                return Err(wrong(
                    "its 6-bit codes are uniform and symmetric, yet it has a codebook or a \
                     correction"
                        .into(),
                ));
            }
            out.dtype = if bits == 4 { Dtype::F4 } else { Dtype::I8 };
            out.shape = vec![n, k];
            out.encoding = Encoding::Block(encoded);
            encoded.code
        }
        "nvfp4" | "mxfp8" => {
            let nv = format == "nvfp4";
            let scale = scale()?;
            let (np, stored) = matrix(weight)?;
            let (kp, block_cols, pad) = if nv {
                need_dtype(weight, &[Dtype::U8, Dtype::I8, Dtype::F4])?;
                // Two E2M1 codes per byte (a F4 tensor already counts them).
                let kp = if weight.dtype == Dtype::F4 {
                    stored
                } else {
                    stored * 2
                };
                (kp, 16, 16)
            } else {
                need_dtype(weight, &[Dtype::F8_E4M3])?;
                (stored, 32, 32)
            };
            if np % pad != 0 || kp % pad != 0 {
                return Err(wrong(format!(
                    "its weight holds {np}x{kp} values, not padded to multiples of {pad} as \
                     the format stores them"
                )));
            }
            need_dtype(
                scale,
                if nv {
                    &[Dtype::F8_E4M3, Dtype::U8]
                } else {
                    &[Dtype::F8_E8M0, Dtype::U8]
                },
            )?;
            let want = [np.div_ceil(128) * 128, (kp / block_cols).div_ceil(4) * 4];
            if scale.shape != want {
                return Err(wrong(format!(
                    "its block scales are {:?}, where a {np}x{kp} weight has {want:?}",
                    scale.shape
                )));
            }
            let global = if nv {
                scalar(need(f.scale2, "weight_scale_2")?)?
            } else {
                1.0
            };
            // The file keeps the padded data; a bias names the layer's real output rows,
            // a pre_quant_scale (a factor per input) its real columns.
            let n = match f.bias.map(|b| b.numel()) {
                Some(rows) if rows <= np && rows + pad > np && b_is_vector(f.bias) => rows,
                _ => np,
            };
            let k = match f.pre.map(|p| p.numel()) {
                Some(cols) if cols <= kp && cols + pad > kp && b_is_vector(f.pre) => cols,
                _ => kp,
            };
            out.dtype = if nv { Dtype::F4 } else { Dtype::F8_E4M3 };
            out.shape = vec![n, k];
            let row_bytes = if nv { kp / 2 } else { kp };
            out.end = out.begin + n * row_bytes;
            let code = if nv { Code::Nvfp4 } else { Code::Mxfp8 };
            out.encoding = Encoding::Block(Block {
                stored_cols: kp,
                ..block(code, global, Part::of(scale), k)
            });
            code
        }
        _ => unreachable!("formats matched above"),
    };
    if let (Some(pre), Encoding::Block(b)) = (f.pre, &mut out.encoding) {
        let k = b.cols;
        if pre.numel() != k || dtype::float_format(pre.dtype).is_none() {
            return Err(wrong(format!(
                "its pre_quant_scale is {}, not one float per column of its {k} columns",
                shape_of(pre)
            )));
        }
        finite_scales(pre, data(pre)).map_err(&wrong)?;
        b.pre = Part::of(pre);
    }
    Ok((out, code))
}

fn b_is_vector(t: Option<&TensorEntry>) -> bool {
    t.is_some_and(|t| t.shape.len() == 1)
}

fn is_power_of_four(g: usize) -> bool {
    g.is_power_of_two() && g.trailing_zeros().is_multiple_of(2)
}

/// Checks that every per-row scale is a finite number.
fn finite_scales(t: &TensorEntry, bytes: &[u8]) -> Result<(), String> {
    let fmt = dtype::float_format(t.dtype).expect("checked float");
    let mut v = vec![0.0f64; t.numel()];
    fmt.decode_into(bytes, &mut v);
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(format!("'{}' holds {} at row {i}", t.name, v[i])),
        None => Ok(()),
    }
}

/// The E2M1 values of the 16 four-bit codes.
const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// The byte of the swizzled (cuBLAS block-scaling) scale layout that holds the scale of
/// row `r`, block column `c`, for a scale matrix of `block_cols` logical columns.
pub fn swizzled(r: usize, c: usize, block_cols: usize) -> usize {
    let n_cb = block_cols.div_ceil(4);
    let (rb, i) = (r / 128, r % 128);
    let (a, b) = (i / 32, i % 32);
    let (cb, j) = (c / 4, c % 4);
    (rb * n_cb + cb) * 512 + b * 16 + a * 4 + j
}

fn f32_of(fmt: FloatFormat, bytes: &[u8], i: usize) -> f32 {
    let size = fmt.size();
    let mut v = [0.0f64];
    fmt.decode_into(&bytes[i * size..(i + 1) * size], &mut v);
    v[0] as f32
}

impl Block {
    /// Its side tensors' bytes, each as `bytes(begin, end)` gives the address range (empty
    /// where the format has none).
    pub fn sides<'a>(&self, bytes: impl Fn(usize, usize) -> &'a [u8]) -> Sides<'a> {
        let of = |p: Part| {
            if p.is_empty() {
                &[][..]
            } else {
                bytes(p.begin, p.end)
            }
        };
        Sides {
            scales: of(self.scales),
            zeros: of(self.zeros),
            rows: of(self.rows),
            lut: of(self.lut),
            pre: of(self.pre),
        }
    }

    /// Decodes elements `start..start + out.len()` (row-major, logical shape) of a layer:
    /// `codes` are the bytes of exactly those elements (as [`Block::code_range`] gives
    /// them), `side` the whole side tensors. The values are comfy-kitchen's float32
    /// results, widened exactly.
    pub fn decode(&self, codes: &[u8], side: &Sides<'_>, start: usize, out: &mut [f64]) {
        let k = self.cols;
        let (scales, zeros) = (side.scales, side.zeros);
        match self.code {
            Code::Fp8(fmt) => {
                fmt.decode_into(codes, out);
                for v in out.iter_mut() {
                    *v = ((*v as f32) * self.scale) as f64;
                }
            }
            Code::Int8 => {
                for (v, &q) in out.iter_mut().zip(codes) {
                    *v = ((q as i8 as f32) * self.scale) as f64;
                }
            }
            Code::Int8Rows | Code::Int8Convrot { .. } => {
                let fmt = dtype::float_format(self.scales.dtype).expect("checked float");
                let mut row = usize::MAX;
                let mut s = 0f32;
                for (i, (v, &q)) in out.iter_mut().zip(codes).enumerate() {
                    let r = (start + i) / k;
                    if r != row {
                        row = r;
                        s = f32_of(fmt, scales, r);
                    }
                    *v = ((q as i8 as f32) * s) as f64;
                }
                if let Code::Int8Convrot { group } = self.code {
                    debug_assert_eq!(start % group, 0, "items start on a group");
                    for g in out.chunks_mut(group) {
                        unrotate(g);
                    }
                }
            }
            Code::Awq { group } => {
                let fmt = dtype::float_format(self.scales.dtype).expect("checked float");
                let n = scales.len() / fmt.size() / (k / group);
                for (i, v) in out.iter_mut().enumerate() {
                    let e = start + i;
                    let (r, c) = (e / k, e % k);
                    let byte = codes[(i + start % 2) / 2];
                    let q = if e.is_multiple_of(2) {
                        byte & 15
                    } else {
                        byte >> 4
                    };
                    let at = (c / group) * n + r;
                    let s = f32_of(fmt, scales, at);
                    let z = f32_of(fmt, zeros, at);
                    *v = ((q as f32 - 8.0) * s + z) as f64;
                }
            }
            Code::Int4Convrot { group } => {
                let fmt = dtype::float_format(self.scales.dtype).expect("checked float");
                debug_assert_eq!(start % group, 0, "items start on a group");
                for (i, v) in out.iter_mut().enumerate() {
                    let e = start + i;
                    let byte = codes[(i + start % 2) / 2];
                    // Low nibble first, signed.
                    let nibble = if e.is_multiple_of(2) {
                        byte & 15
                    } else {
                        byte >> 4
                    };
                    let q = ((nibble << 4) as i8 >> 4) as f32;
                    *v = (q * f32_of(fmt, scales, e / k)) as f64;
                }
                for g in out.chunks_mut(group) {
                    unrotate(g);
                }
            }
            Code::W4a8 { group, rot, bits } => {
                self.decode_w4a8(codes, side, start, out, group, bits);
                debug_assert_eq!(start % rot, 0, "items start on a group");
                for g in out.chunks_mut(rot) {
                    unrotate(g);
                }
            }
            Code::Nvfp4 => {
                let block_cols = self.stored_cols / 16;
                let e4m3 = e4m3_table();
                // The slice's bytes start at `base`; element (r, c) is code r·Kp + c.
                let base = self.code_range(start, start).0;
                // Runs of one block (16 columns of a row) share one scale.
                let mut i = 0;
                while i < out.len() {
                    let e = start + i;
                    let (r, c) = (e / k, e % k);
                    let run = (16 - c % 16).min(k - c).min(out.len() - i);
                    let s = e4m3[scales[swizzled(r, c / 16, block_cols)] as usize];
                    let total = self.scale * s;
                    let first = r * self.stored_cols + c;
                    for (j, v) in out[i..i + run].iter_mut().enumerate() {
                        let code = first + j;
                        let byte = codes[code / 2 - base];
                        let nibble = if code.is_multiple_of(2) {
                            byte >> 4
                        } else {
                            byte & 15
                        };
                        *v = (E2M1[nibble as usize] * total) as f64;
                    }
                    i += run;
                }
            }
            Code::Mxfp8 => {
                let block_cols = self.stored_cols / 32;
                let e4m3 = e4m3_table();
                let base = self.code_range(start, start).0;
                let mut i = 0;
                while i < out.len() {
                    let e = start + i;
                    let (r, c) = (e / k, e % k);
                    let run = (32 - c % 32).min(k - c).min(out.len() - i);
                    let code = scales[swizzled(r, c / 32, block_cols)];
                    // comfy-kitchen's e8m0_to_f32: the code is the f32 exponent field, so
                    // 0 gives 0.0 and 255 gives +inf.
                    let s = f32::from_bits((code as u32) << 23);
                    let first = r * self.stored_cols + c - base;
                    for (v, &q) in out[i..i + run].iter_mut().zip(&codes[first..]) {
                        *v = (e4m3[q as usize] * s) as f64;
                    }
                    i += run;
                }
            }
        }
        // The weight the model applies: the input is scaled first (comfy-kitchen's
        // dequantization leaves this out).
        if let Some(fmt) = dtype::float_format(self.pre.dtype).filter(|_| !self.pre.is_empty()) {
            for (i, v) in out.iter_mut().enumerate() {
                *v = ((*v as f32) * f32_of(fmt, side.pre, (start + i) % k)) as f64;
            }
        }
    }

    /// asym_w4a8_int8 before its un-rotation: comfy-kitchen's
    /// `_dequant_int4_grouped_to_int8` and `_dequantize_w4a8_int8_weight_from_int8`.
    fn decode_w4a8(
        &self,
        codes: &[u8],
        side: &Sides<'_>,
        start: usize,
        out: &mut [f64],
        group: usize,
        bits: usize,
    ) {
        let k = self.cols;
        let row_bytes = k * bits / 8;
        let base = self.code_range(start, start).0;
        // The codebook's 16 levels, when the codes index one (checked: 16 floats).
        let lut: Option<[f32; 16]> = dtype::float_format(self.lut.dtype)
            .filter(|_| !self.lut.is_empty())
            .map(|fmt| std::array::from_fn(|i| f32_of(fmt, side.lut, i)));
        let groups = k / group;
        let s_fmt = dtype::float_format(self.scales.dtype).expect("checked float");
        let ch_fmt = dtype::float_format(self.rows.dtype).expect("checked float");
        let n = side.rows.len() / ch_fmt.size();
        let c_fmt = dtype::float_format(self.zeros.dtype).filter(|_| !self.zeros.is_empty());
        let offset = (1u32 << (bits - 1)) as f32;
        // The scales of the group being decoded (a new row is a new group).
        let mut at = usize::MAX;
        let (mut s_rel, mut channel, mut correction) = (0f32, 0f32, 0f32);
        for (i, v) in out.iter_mut().enumerate() {
            let e = start + i;
            let (r, c) = (e / k, e % k);
            let row = r * row_bytes - base;
            let byte = codes[row + c / 2];
            let mut q = if c.is_multiple_of(2) {
                byte & 15
            } else {
                byte >> 4
            };
            if bits == 6 {
                q |= ((codes[row + k / 2 + c / 4] >> (2 * (c % 4))) & 3) << 4;
            }
            let value = match &lut {
                Some(levels) => levels[q as usize],
                None => q as f32 - offset,
            };
            let g = r * groups + c / group;
            if g != at {
                at = g;
                s_rel = f32_of(s_fmt, side.scales, g);
                channel = f32_of(ch_fmt, side.rows, r);
                correction = c_fmt.map_or(0.0, |fmt| f32_of(fmt, side.zeros, (c / group) * n + r));
            }
            // Through an integer, as torch's int8 is: a negative value rounded to zero is +0.
            let int8 = (value * s_rel).round_ties_even().clamp(-127.0, 127.0) as i32 as f32;
            let w = int8 * channel;
            *v = match c_fmt {
                Some(_) => w + correction,
                None => w,
            } as f64;
        }
    }

    /// The byte range of elements `start..end` within the weight's stored bytes (for
    /// 6-bit asym_w4a8_int8, whose rows keep two planes, the whole rows holding them).
    pub fn code_range(&self, start: usize, end: usize) -> (usize, usize) {
        match self.code {
            // Logical columns fewer than the stored ones: whole stored rows.
            Code::Nvfp4 | Code::Mxfp8 if self.cols != self.stored_cols => {
                let k = self.cols;
                let row_bytes = match self.code {
                    Code::Nvfp4 => self.stored_cols / 2,
                    _ => self.stored_cols,
                };
                (start / k * row_bytes, end.div_ceil(k) * row_bytes)
            }
            Code::Nvfp4 | Code::Int4Convrot { .. } | Code::Awq { .. } => {
                (start / 2, end.div_ceil(2))
            }
            Code::W4a8 { bits: 4, .. } => (start / 2, end.div_ceil(2)),
            Code::W4a8 { bits, .. } => {
                let (k, row_bytes) = (self.cols, self.cols * bits / 8);
                (start / k * row_bytes, end.div_ceil(k) * row_bytes)
            }
            _ => (start, end),
        }
    }

    /// The elements a work item must start on (a multiple of it): a convrot group, or two
    /// nvfp4 codes (one byte).
    pub fn alignment(&self) -> usize {
        match self.code {
            Code::Int8Convrot { group }
            | Code::Int4Convrot { group }
            | Code::W4a8 { rot: group, .. } => group,
            Code::Nvfp4 | Code::Awq { .. } => 2,
            _ => 1,
        }
    }
}

/// The float32 values of the 256 E4M3 codes.
fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|b| f32_of(FloatFormat::F8E4M3, &[b as u8], 0)))
}

/// Multiplies a group of `4^m` values by the normalised Hadamard matrix
/// `(H4 ⊗ … ⊗ H4)/√n`, `H4 = [[1,1,1,-1],[1,1,-1,1],[1,-1,1,1],[-1,1,1,1]]` (symmetric and
/// orthogonal, so it undoes comfy-kitchen's rotation), in f64 with one rounding to f32 at
/// the end. The factored product takes 4·log4(n) additions per value where the matrix
/// product takes n; comfy-kitchen's matrix product sums in another order, so the two agree
/// within a few f32 steps (the tests allow 2^-20 of the layer's largest value).
pub fn unrotate(g: &mut [f64]) {
    let n = g.len();
    let mut stride = 1;
    while stride < n {
        let span = stride * 4;
        for base in (0..n).step_by(span) {
            for j in 0..stride {
                let i = base + j;
                let (a, b, c, d) = (g[i], g[i + stride], g[i + 2 * stride], g[i + 3 * stride]);
                g[i] = a + b + c - d;
                g[i + stride] = a + b - c + d;
                g[i + 2 * stride] = a - b + c + d;
                g[i + 3 * stride] = -a + b + c + d;
            }
        }
        stride = span;
    }
    let norm = (n as f64).sqrt();
    for v in g.iter_mut() {
        *v = ((*v / norm) as f32) as f64;
    }
}

/// One layer quantized into a per-layer format: the tensors ComfyUI stores for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    /// `(suffix, dtype, shape, bytes)`: `weight`, `weight_scale`, for nvfp4
    /// `weight_scale_2`, in that order.
    pub tensors: Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)>,
    /// The layer's record, the JSON ComfyUI writes into `.comfy_quant`.
    pub record: String,
}

/// The formats ckpt-diff writes.
pub const WRITTEN: [Code; 5] = [
    Code::Fp8(FloatFormat::F8E4M3),
    Code::Fp8(FloatFormat::F8E5M2),
    Code::Int8,
    Code::Nvfp4,
    Code::Mxfp8,
];

impl Code {
    /// The multiple both dimensions of a weight must be for the format to store it without
    /// padding (the file does not record a padded layer's logical columns).
    pub fn tile(self) -> usize {
        match self {
            Code::Nvfp4 => 16,
            Code::Mxfp8 => 32,
            _ => 1,
        }
    }

    /// The record ComfyUI writes for the format (`json.dumps` of `{"format": ...}`, with
    /// its default separators).
    pub fn record(self) -> String {
        format!("{{\"format\": \"{}\"}}", self.format())
    }

    /// The dtypes and shapes of the tensors [`quantize`] gives for an `[n, k]` weight.
    pub fn stored(self, n: usize, k: usize) -> Vec<(&'static str, Dtype, Vec<usize>)> {
        let (np, kp) = (
            n.next_multiple_of(self.tile()),
            k.next_multiple_of(self.tile()),
        );
        let blocked = |block: usize| vec![np.div_ceil(128) * 128, (kp / block).div_ceil(4) * 4];
        match self {
            Code::Fp8(f) => vec![
                ("weight", f.dtype(), vec![n, k]),
                ("weight_scale", Dtype::F32, vec![]),
            ],
            Code::Int8 => vec![
                ("weight", Dtype::I8, vec![n, k]),
                ("weight_scale", Dtype::F32, vec![]),
            ],
            Code::Nvfp4 => vec![
                ("weight", Dtype::U8, vec![np, kp / 2]),
                ("weight_scale", Dtype::F8_E4M3, blocked(16)),
                ("weight_scale_2", Dtype::F32, vec![]),
            ],
            Code::Mxfp8 => vec![
                ("weight", Dtype::F8_E4M3, vec![np, kp]),
                ("weight_scale", Dtype::F8_E8M0, blocked(32)),
            ],
            other => unreachable!("{other:?} is not written"),
        }
    }
}

/// Rounds `v` to the nearest value of a small float format (`exp` exponent bits, `man`
/// mantissa bits, `bias`), ties to the even code, subnormals included, the sign taken
/// from `v`'s sign bit (as torch's conversions do). `v` must be within the format's
/// finite range (callers clamp); NaN gives the all-ones code.
fn round_small(v: f32, exp: u32, man: u32, bias: i32) -> u8 {
    let sign = ((v.to_bits() >> 31) as u8) << (exp + man);
    if v.is_nan() {
        return ((1u32 << (exp + man + 1)) - 1) as u8;
    }
    let a = v.abs();
    let min_exp = 1 - bias;
    // The exponent from the bits (a float32 subnormal is below every code but zero's
    // neighbour: its exponent field reads as -127, clamped up like any small value).
    let e = (((a.to_bits() >> 23) & 0xff) as i32 - 127).max(min_exp);
    // The step between codes at this exponent (a power of two, so `a / step` is exact),
    // and the code count from 2^e (or from 0 for subnormals).
    let pow2 = |p: i32| f32::from_bits(((p + 127) as u32) << 23);
    let step = pow2(e - man as i32);
    let q = (a / step).round_ties_even();
    let (field, mant) = if a < pow2(min_exp) {
        // Subnormal (q may reach the first normal, which the same bits encode).
        (0u32, q as u32)
    } else {
        let m = q as u32 - (1 << man);
        if m == 1 << man {
            ((e + bias + 1) as u32, 0)
        } else {
            ((e + bias) as u32, m)
        }
    };
    sign | ((field << man) | mant) as u8
}

fn to_e4m3(v: f32) -> u8 {
    round_small(v, 4, 3, 7)
}

/// Quantizes an `[n, k]` float32 weight into `code`'s format as comfy-kitchen 0.2.40's
/// quantizers do (`QuantizedTensor.from_float` on float32 input, eager backend), operation
/// for operation, so the codes are the same bytes. Where comfy-kitchen gives NaN codes (an
/// all-zero tensor or block divided by its zero scale) the zeros are written as zeros.
/// nvfp4 and mxfp8 pad the weight with zeros to their tile, as comfy-kitchen does.
pub fn quantize(code: Code, x: &[f32], n: usize, k: usize) -> Quantized {
    assert_eq!(x.len(), n * k, "quantize: {n}x{k} values");
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let stored = code.stored(n, k);
    let mut tensors: Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut push = |i: usize, bytes: Vec<u8>| {
        let (suffix, dtype, shape) = stored[i].clone();
        tensors.push((suffix, dtype, shape, bytes));
    };
    match code {
        Code::Fp8(f) => {
            let (max, e, m, bias) = match f {
                FloatFormat::F8E5M2 => (57344f32, 5, 2, 15),
                _ => (448f32, 4, 3, 7),
            };
            let scale = amax / max;
            let inv = 1.0 / scale;
            let codes = x
                .iter()
                .map(|&v| {
                    let t = if scale == 0.0 { 0.0 } else { v * inv };
                    round_small(t.clamp(-max, max), e, m, bias)
                })
                .collect();
            push(0, codes);
            push(1, scale.to_le_bytes().to_vec());
        }
        Code::Int8 => {
            let scale = (amax / 127.0).max(1e-30);
            let codes = x
                .iter()
                .map(|&v| (v / scale).round_ties_even().clamp(-128.0, 127.0) as i8 as u8)
                .collect();
            push(0, codes);
            push(1, scale.to_le_bytes().to_vec());
        }
        Code::Nvfp4 | Code::Mxfp8 => {
            let nv = code == Code::Nvfp4;
            let block = if nv { 16 } else { 32 };
            let (np, kp) = (
                n.next_multiple_of(code.tile()),
                k.next_multiple_of(code.tile()),
            );
            let at = |r: usize, c: usize| if r < n && c < k { x[r * k + c] } else { 0.0 };
            let blocks = kp / block;
            let scale_shape = &stored[1].2;
            let mut scales = vec![0u8; scale_shape[0] * scale_shape[1]];
            let pts = amax / 2688.0;
            let mut codes = vec![0u8; if nv { np * kp / 2 } else { np * kp }];
            let mut values = [0f32; 32];
            for r in 0..np {
                for b in 0..blocks {
                    let vals = &mut values[..block];
                    for (j, v) in vals.iter_mut().enumerate() {
                        *v = at(r, b * block + j);
                    }
                    let bmax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let (scale_code, divisor) = if nv {
                        let sbs = if pts == 0.0 { 0.0 } else { (bmax / 6.0) / pts };
                        let sc = to_e4m3(sbs.min(448.0));
                        (sc, pts * e4m3_table()[sc as usize])
                    } else if bmax == 0.0 {
                        (0, 0.0)
                    } else {
                        let s = (bmax / 448.0).max(f32::from_bits(0x0040_0000));
                        let e = ((s as f64).log2() as f32).ceil() as i32 + 127;
                        let c = e.clamp(0, 254) as u8;
                        (c, f32::from_bits((c as u32) << 23))
                    };
                    scales[swizzled(r, b, blocks)] = scale_code;
                    for (j, &v) in vals.iter().enumerate() {
                        let col = b * block + j;
                        let d = if divisor == 0.0 { 0.0 } else { v / divisor };
                        if nv {
                            let c = round_small(d.clamp(-6.0, 6.0), 2, 1, 1);
                            let byte = &mut codes[(r * kp + col) / 2];
                            if col.is_multiple_of(2) {
                                *byte |= c << 4;
                            } else {
                                *byte |= c;
                            }
                        } else {
                            codes[r * kp + col] = to_e4m3(d.clamp(-448.0, 448.0));
                        }
                    }
                }
            }
            push(0, codes);
            push(1, scales);
            if nv {
                push(2, pts.to_le_bytes().to_vec());
            }
        }
        other => unreachable!("{other:?} is not written"),
    }
    Quantized {
        tensors,
        record: code.record(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_formats_round_to_nearest_even_as_their_tables_say() {
        // Every E4M3 and E2M1 code's value maps back to the code; midpoints go to the even
        // code.
        for c in 0..=255u8 {
            let v = e4m3_table()[c as usize];
            if v.is_finite() {
                assert_eq!(to_e4m3(v), c, "{v}");
            }
        }
        for (c, v) in E2M1.iter().enumerate() {
            assert_eq!(round_small(*v, 2, 1, 1), c as u8, "{v}");
        }
        assert_eq!(round_small(0.25, 2, 1, 1), 0);
        assert_eq!(round_small(0.75, 2, 1, 1), 2);
        assert_eq!(round_small(5.0, 2, 1, 1), 6);
        assert_eq!(round_small(-2.5, 2, 1, 1), 12);
        // E4M3's smallest subnormal is 2^-9: half of it ties to zero, more rounds up.
        assert_eq!(to_e4m3(2f32.powi(-10)), 0);
        assert_eq!(to_e4m3(2f32.powi(-10) * 1.01), 1);
        assert_eq!(to_e4m3(448.0), 0x7e);
    }

    #[test]
    fn hadamard_is_orthogonal_and_its_own_inverse() {
        let x: Vec<f64> = (0..256)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 8.0)
            .collect();
        let mut y = x.clone();
        unrotate(&mut y);
        // Against the matrix written out: H[i][j] = prod over base-4 digits of H4.
        let h4 = [
            [1., 1., 1., -1.],
            [1., 1., -1., 1.],
            [1., -1., 1., 1.],
            [-1., 1., 1., 1.],
        ];
        for (i, yi) in y.iter().enumerate() {
            let mut s = 0.0;
            for (j, xj) in x.iter().enumerate() {
                let (mut a, mut b, mut h) = (i, j, 1.0);
                for _ in 0..4 {
                    h *= h4[a % 4][b % 4];
                    a /= 4;
                    b /= 4;
                }
                s += h * xj;
            }
            assert!((s / 16.0 - yi).abs() < 1e-5, "{i}: {} vs {yi}", s / 16.0);
        }
        let mut back = y.clone();
        unrotate(&mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn swizzle_matches_the_blocked_layout() {
        // Row 0, columns 0..4 are the first four bytes; row 32 starts at byte 4; row 1 at
        // byte 16; the next row block starts after every column block of the first.
        assert_eq!(swizzled(0, 3, 8), 3);
        assert_eq!(swizzled(32, 0, 8), 4);
        assert_eq!(swizzled(1, 0, 8), 16);
        assert_eq!(swizzled(0, 4, 8), 512);
        assert_eq!(swizzled(128, 0, 8), 1024);
    }
}
