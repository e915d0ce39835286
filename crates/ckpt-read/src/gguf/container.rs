//! The GGUF container (v3, and v2, which differs only in lacking big-endian files), read as
//! hostile input: every count is bounded by the bytes left (each entry has a minimum size),
//! strings and tensors lie within the file, nested arrays are depth-limited, shapes are
//! checked for overflow, the alignment is a power of two, tensors are aligned, in the data
//! region and disjoint, names are unique UTF-8. Only then is a [`Layout`] handed out.
//!
//! ```text
//! u32 magic "GGUF"  u32 version  u64 tensor_count  u64 kv_count
//! kv_count × { string key; u32 value_type; value }
//! tensor_count × { string name; u32 n_dims; u64 ne[n_dims]; u32 ggml_type; u64 offset }
//! zero padding to the alignment; then the data region (offsets count from its start)
//! ```
//!
//! Layout facts: `../shared/research/quant-formats-2026.md` B.1 (the GGUF spec and gguf-py
//! 0.19.0's `gguf_reader.py`); the reshape KV is city96's ComfyUI-GGUF convention (B.3).

use std::collections::{HashMap, HashSet};

use memmap2::Mmap;
use thiserror::Error;

use super::GgmlType;
use crate::ReadError;
use crate::dtype::Dtype;
use crate::layout::{Encoding, Layout, Provenance, Source, TensorEntry};

/// The alignment when the file has no `general.alignment` (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// ggml's limit on a tensor's dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Arrays nested deeper than this are refused (the spec allows arrays of arrays; no writer
/// nests them at all).
pub const MAX_ARRAY_DEPTH: usize = 4;

/// Most array elements kept from the KVs of one file: each becomes a [`Value`] in memory,
/// so a small file could otherwise claim gigabytes. An LLM tokenizer's three arrays of
/// 150k entries fit.
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 21;

/// The KV key giving a tensor's original shape when city96's converter stored it reshaped.
pub const ORIG_SHAPE_PREFIX: &str = "comfy.gguf.orig_shape.";

/// What is wrong with a GGUF file (the generic problems, a duplicate or overlapping tensor,
/// one past the end, use [`ReadError`]'s own variants).
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("it does not start with the GGUF magic number")]
    NotGguf,
    #[error("it is GGUF version 1 (before August 2023), whose counts are 32-bit")]
    Version1,
    #[error("it is GGUF version {version}; ckpt-diff reads versions 2 and 3")]
    UnknownVersion { version: u32 },
    #[error("it is a big-endian GGUF file; ckpt-diff reads little-endian ones")]
    BigEndian,
    #[error("the file ends inside {what} (at byte {at})")]
    Truncated { what: String, at: u64 },
    #[error(
        "the header claims {count} {what}, more than the {left} bytes left in the file can \
         hold: the file is truncated or damaged"
    )]
    CountTooLarge { what: String, count: u64, left: u64 },
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: String },
    #[error("KV '{key}' has value type {ty}, which GGUF does not define")]
    BadValueType { key: String, ty: u32 },
    #[error("KV '{key}' nests arrays more than {MAX_ARRAY_DEPTH} deep")]
    ArrayTooDeep { key: String },
    #[error("the KVs hold more than {MAX_ARRAY_ELEMENTS} array elements in all")]
    TooManyArrayElements,
    #[error("KV '{key}' appears twice")]
    DuplicateKey { key: String },
    #[error("general.alignment is {value}: it must be a u32 power of two")]
    BadAlignment { value: String },
    #[error("tensor '{name}' has {n_dims} dimensions; ggml tensors have at most {MAX_DIMS}")]
    TooManyDims { name: String, n_dims: u32 },
    #[error("tensor '{name}' has ggml type {ty}, which ckpt-diff does not read")]
    UnknownType { name: String, ty: String },
    #[error(
        "tensor '{name}' is {ty} with rows of {ne0} elements, not a whole number of its \
         {block}-element blocks"
    )]
    PartialBlock {
        name: String,
        ty: &'static str,
        ne0: u64,
        block: usize,
    },
    #[error(
        "tensor '{name}' starts at data offset {offset}, not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error("the original shape of '{name}' ({ORIG_SHAPE_PREFIX}{name}) {reason}")]
    BadOrigShape { name: String, reason: String },
}

impl GgufError {
    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            GgufError::Version1 | GgufError::UnknownVersion { .. } | GgufError::BigEndian => {
                "convert the model again with a current tool (city96's ComfyUI-GGUF convert.py, \
                 stable-diffusion.cpp's `-M convert`), or use its safetensors release"
            }
            GgufError::UnknownType { .. } => {
                "ckpt-diff reads GGUF tensors in F32, F16, BF16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, \
                 Q6_K, Q5_K, Q4_K, Q3_K, Q2_K, IQ4_NL and IQ4_XS: use a file quantized to one of \
                 those, or the model's safetensors release"
            }
            GgufError::Truncated { .. } => {
                "download or copy the file again; an interrupted transfer leaves it short"
            }
            _ => {
                "the file is damaged or was not written by a GGUF writer: download it again; if \
                 llama.cpp or ComfyUI-GGUF loads it, please report it with the message above"
            }
        }
    }
}

/// The type of a KV value (GGUF `gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// The type of an id in the file.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Its id in the file.
    pub fn id(self) -> u32 {
        (0..=12)
            .find(|&i| ValueType::from_id(i) == Some(self))
            .expect("every type has an id")
    }

    /// The name gguf-py gives it (`UINT32`, `STRING`, ...).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }

    /// The fewest bytes a value of this type takes (a string its length, an array its
    /// element type and count).
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A KV value as the file stores it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// A string (invalid UTF-8 replaced, as values are only shown).
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Its type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Array(_, items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// One tensor info as the file declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// Dimensions, fastest-varying first (the numpy shape is them reversed).
    pub ne: Vec<u64>,
    /// Offset in the data region.
    pub offset: u64,
}

/// What a GGUF file says besides its tensors' bytes: kept in the checkpoint's
/// [`Provenance::Gguf`] (see [`crate::Checkpoint::gguf`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GgufInfo {
    pub version: u32,
    /// The data alignment in force (`general.alignment`, or 32).
    pub alignment: u64,
    /// Where the data region starts in the file.
    pub data_start: u64,
    /// Every KV, in file order.
    pub kvs: Vec<(String, Value)>,
    /// Every tensor info, in file order.
    pub tensors: Vec<TensorInfo>,
}

impl GgufInfo {
    /// The value of KV `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The ggml type tensor `name` is stored in.
    pub fn ggml_type(&self, name: &str) -> Option<GgmlType> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.ggml_type)
    }

    /// `general.architecture`, if the file says it (stable-diffusion.cpp's files do not).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}

/// The names of ggml type ids, those not read included, for messages (gguf-py 0.19.0
/// `GGMLQuantizationType`; 4, 5, 31-33 and 36-38 are ids ggml has since removed).
fn type_label(id: u32) -> String {
    let name = match GgmlType::from_id(id) {
        Some(t) => t.name(),
        None => match id {
            4 => "Q4_2",
            5 => "Q4_3",
            9 => "Q8_1",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            21 => "IQ3_S",
            22 => "IQ2_S",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            31 => "Q4_0_4_4",
            32 => "Q4_0_4_8",
            33 => "Q4_0_8_8",
            34 => "TQ1_0",
            35 => "TQ2_0",
            36 => "IQ4_NL_4_4",
            37 => "IQ4_NL_4_8",
            38 => "IQ4_NL_8_8",
            39 => "MXFP4",
            40 => "NVFP4",
            41 => "Q1_0",
            _ => return format!("id {id} (unknown)"),
        },
    };
    format!("{name} ({id})")
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(GgufError::Truncated {
                what: what(),
                at: self.at as u64,
            });
        }
        let s = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of entries of at least `min_size` bytes each, checked against the bytes left.
    fn count(&mut self, min_size: u64, what: impl Fn() -> String) -> Result<u64, GgufError> {
        let count = self.u64(&what)?;
        let left = self.left();
        if count > left / min_size {
            return Err(GgufError::CountTooLarge {
                what: what(),
                count,
                left,
            });
        }
        Ok(count)
    }

    /// A string's bytes (u64 length, then the bytes).
    fn string_bytes(&mut self, what: impl Fn() -> String) -> Result<&'a [u8], GgufError> {
        let len = self.u64(&what)?;
        self.take(len, what)
    }

    /// A string that must be UTF-8 (a key, a tensor name).
    fn name(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let b = self.string_bytes(&what)?;
        String::from_utf8(b.to_vec()).map_err(|_| GgufError::NotUtf8 { what: what() })
    }
}

/// Reads the value of KV `key`, of type `ty`, at `depth` arrays deep; `budget` is the
/// array elements still allowed.
fn read_value(
    c: &mut Cursor<'_>,
    key: &str,
    ty: ValueType,
    depth: usize,
    budget: &mut u64,
) -> Result<Value, GgufError> {
    let what = || format!("the value of KV '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.array::<1>(what)?[0]),
        ValueType::I8 => Value::I8(c.array::<1>(what)?[0] as i8),
        ValueType::Bool => Value::Bool(c.array::<1>(what)?[0] != 0),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(what)?)),
        ValueType::U32 => Value::U32(c.u32(what)?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(what)?)),
        ValueType::U64 => Value::U64(c.u64(what)?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(what)?)),
        ValueType::String => Value::String(String::from_utf8_lossy(c.string_bytes(what)?).into()),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::ArrayTooDeep { key: key.into() });
            }
            let id = c.u32(what)?;
            let elem = ValueType::from_id(id).ok_or_else(|| GgufError::BadValueType {
                key: key.into(),
                ty: id,
            })?;
            let count = c.count(elem.min_size(), || format!("elements in KV '{key}'"))?;
            if count > *budget {
                return Err(GgufError::TooManyArrayElements);
            }
            *budget -= count;
            // Grown as read: the count is bounded by the bytes, not by memory.
            let mut items = Vec::with_capacity(count.min(4096) as usize);
            for _ in 0..count {
                items.push(read_value(c, key, elem, depth + 1, budget)?);
            }
            Value::Array(elem, items)
        }
    })
}

/// Parses and checks a GGUF file's header: its KVs and tensor infos, every tensor inside
/// the data region of a file of `bytes.len()` bytes.
pub fn parse(bytes: &[u8]) -> Result<GgufInfo, ReadError> {
    let mut c = Cursor { bytes, at: 0 };
    if c.array::<4>(|| "the magic number".into())? != *b"GGUF" {
        return Err(GgufError::NotGguf.into());
    }
    let version = c.u32(|| "the version".into())?;
    match version {
        2 | 3 => {}
        1 => return Err(GgufError::Version1.into()),
        v if v.swap_bytes() <= 3 => return Err(GgufError::BigEndian.into()),
        v => return Err(GgufError::UnknownVersion { version: v }.into()),
    }
    // Each tensor info takes at least 24 bytes (name length, n_dims, type, offset), each
    // KV at least 13 (key length, type, one byte).
    let tensor_count = c.count(24, || "tensors".into())?;
    let kv_count = c.count(13, || "KVs".into())?;
    let mut kvs: Vec<(String, Value)> = Vec::with_capacity(kv_count.min(4096) as usize);
    let mut keys = HashSet::new();
    let mut budget = MAX_ARRAY_ELEMENTS;
    for i in 0..kv_count {
        let key = c.name(|| format!("the key of KV {i}"))?;
        let id = c.u32(|| format!("the type of KV '{key}'"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| GgufError::BadValueType {
            key: key.clone(),
            ty: id,
        })?;
        let value = read_value(&mut c, &key, ty, 0, &mut budget)?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey { key }.into());
        }
        kvs.push((key, value));
    }
    let alignment = match kvs.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
        Some((_, v)) => {
            return Err(GgufError::BadAlignment {
                value: format!("{v} ({})", v.value_type().name()),
            }
            .into());
        }
    };
    let mut tensors = Vec::with_capacity(tensor_count.min(4096) as usize);
    for i in 0..tensor_count {
        let name = c.name(|| format!("the name of tensor {i}"))?;
        let n_dims = c.u32(|| format!("the dimensions of tensor '{name}'"))?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { name, n_dims }.into());
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(c.u64(|| format!("the shape of tensor '{name}'"))?);
        }
        let id = c.u32(|| format!("the type of tensor '{name}'"))?;
        let offset = c.u64(|| format!("the offset of tensor '{name}'"))?;
        let Some(ggml_type) = GgmlType::from_id(id) else {
            return Err(GgufError::UnknownType {
                name,
                ty: type_label(id),
            }
            .into());
        };
        tensors.push(TensorInfo {
            name,
            ggml_type,
            ne,
            offset,
        });
    }
    let header_end = c.at as u64;
    let data_start = header_end.div_ceil(alignment) * alignment;
    let data_len = (bytes.len() as u64).saturating_sub(data_start);
    let info = GgufInfo {
        version,
        alignment,
        data_start,
        kvs,
        tensors,
    };
    check_tensors(&info, data_len)?;
    Ok(info)
}

/// The byte size of a tensor, checking its shape (`None`: the element count or byte size
/// overflows).
fn tensor_bytes(t: &TensorInfo) -> Result<Option<u64>, GgufError> {
    let Some(n) = t.ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)) else {
        return Ok(None);
    };
    let (bs, ts) = (
        t.ggml_type.block_size() as u64,
        t.ggml_type.type_size() as u64,
    );
    let ne0 = t.ne.first().copied().unwrap_or(1);
    if !ne0.is_multiple_of(bs) {
        return Err(GgufError::PartialBlock {
            name: t.name.clone(),
            ty: t.ggml_type.name(),
            ne0,
            block: bs as usize,
        });
    }
    Ok((n / bs).checked_mul(ts))
}

/// Checks the tensor infos: unique names, sizes, alignment, inside the data region of
/// `data_len` bytes, no two sharing bytes.
fn check_tensors(info: &GgufInfo, data_len: u64) -> Result<(), ReadError> {
    let mut names = HashSet::new();
    let mut spans = Vec::with_capacity(info.tensors.len());
    for (i, t) in info.tensors.iter().enumerate() {
        if !names.insert(t.name.as_str()) {
            return Err(ReadError::DuplicateName {
                name: t.name.clone(),
            });
        }
        let overflow = || ReadError::ShapeOverflow {
            name: t.name.clone(),
        };
        // Sizes must also fit the address space (usize) to be sliced.
        let len = tensor_bytes(t)?
            .filter(|&l| usize::try_from(l).is_ok())
            .ok_or_else(overflow)?;
        if t.ne.iter().any(|&d| usize::try_from(d).is_err()) {
            return Err(overflow());
        }
        if !t.offset.is_multiple_of(info.alignment) {
            return Err(GgufError::Misaligned {
                name: t.name.clone(),
                offset: t.offset,
                alignment: info.alignment,
            }
            .into());
        }
        let end = t.offset.checked_add(len).ok_or_else(overflow)?;
        if end > data_len {
            return Err(ReadError::OffsetsPastEnd {
                name: t.name.clone(),
                end,
                data_len,
            });
        }
        spans.push((t.offset, end, i));
    }
    // Empty tensors share no bytes wherever they point.
    spans.retain(|&(begin, end, _)| begin < end);
    spans.sort_unstable();
    for w in spans.windows(2) {
        let ((_, end, a), (begin, _, b)) = (w[0], w[1]);
        if begin < end {
            return Err(ReadError::Overlap {
                first: info.tensors[a].name.clone(),
                second: info.tensors[b].name.clone(),
            });
        }
    }
    Ok(())
}

/// The logical shape of tensor `t`: its `ne` reversed (numpy order), or city96's original
/// shape when the file gives one (a reshape of contiguous data keeps element order).
fn logical_shape(t: &TensorInfo, orig: &HashMap<&str, &Value>) -> Result<Vec<usize>, GgufError> {
    // Checked to fit usize in `check_tensors`.
    let stored: Vec<usize> = t.ne.iter().rev().map(|&d| d as usize).collect();
    let Some(v) = orig.get(t.name.as_str()) else {
        return Ok(stored);
    };
    let bad = |reason: String| GgufError::BadOrigShape {
        name: t.name.clone(),
        reason,
    };
    let Value::Array(ValueType::I32, items) = v else {
        return Err(bad(format!(
            "is {}, not an ARRAY of INT32",
            match v {
                Value::Array(e, _) => format!("an ARRAY of {}", e.name()),
                other => other.value_type().name().to_string(),
            }
        )));
    };
    let mut shape = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::I32(d) if *d >= 0 => shape.push(*d as usize),
            other => return Err(bad(format!("has the dimension {other}"))),
        }
    }
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let stored_numel: usize = stored.iter().product();
    if numel != Some(stored_numel) {
        return Err(bad(format!(
            "is {shape:?}, which does not hold the {stored_numel} elements stored as {stored:?}"
        )));
    }
    Ok(shape)
}

/// The layout of a mapped GGUF file whose header [`parse`] checked. F32, F16 and BF16
/// tensors are plain tensors of those dtypes; quantized ones have dtype `U8` (their bytes
/// are blocks, not elements: nothing may read them as values of a dtype) and
/// [`Encoding::Ggml`], which `pass::Slice::values_into` decodes.
pub fn layout(map: Mmap, info: GgufInfo) -> Result<Layout, ReadError> {
    let tensors = entries(&info)?;
    let start = (info.data_start as usize).min(map.len());
    let len = map.len() - start;
    Ok(Layout {
        sources: vec![Source::new(map, 0, start, len)],
        file: Some(0),
        tensors,
        metadata: Vec::new(),
        provenance: Provenance::Gguf(Box::new(info)),
        notes: Vec::new(),
    })
}

/// The tensor entries of a checked header (see [`layout`]), in the order of their data
/// offsets, with their byte ranges in the data region.
pub fn entries(info: &GgufInfo) -> Result<Vec<TensorEntry>, ReadError> {
    let orig: HashMap<&str, &Value> = info
        .kvs
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(ORIG_SHAPE_PREFIX)?, v)))
        .collect();
    let mut tensors = Vec::with_capacity(info.tensors.len());
    for t in &info.tensors {
        let shape = logical_shape(t, &orig)?;
        let begin = t.offset as usize;
        let len = tensor_bytes(t)?.expect("checked") as usize;
        let (dtype, encoding) = match t.ggml_type {
            GgmlType::F32 => (Dtype::F32, Encoding::Plain),
            GgmlType::F16 => (Dtype::F16, Encoding::Plain),
            GgmlType::Bf16 => (Dtype::BF16, Encoding::Plain),
            q => (Dtype::U8, Encoding::Ggml(q)),
        };
        tensors.push(TensorEntry {
            name: t.name.clone(),
            dtype,
            shape,
            begin,
            end: begin + len,
            encoding,
        });
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF file built field by field.
    struct Builder {
        version: u32,
        kvs: Vec<Vec<u8>>,
        tensors: Vec<Vec<u8>>,
        /// Overrides the counts written.
        counts: Option<(u64, u64)>,
        data: Vec<u8>,
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(s);
        b
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                version: 3,
                kvs: Vec::new(),
                tensors: Vec::new(),
                counts: None,
                data: Vec::new(),
            }
        }

        /// A KV whose type id and value bytes are given raw.
        fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Builder {
            let mut b = string(key.as_bytes());
            b.extend(ty.to_le_bytes());
            b.extend_from_slice(value);
            self.kvs.push(b);
            self
        }

        fn tensor(mut self, name: &[u8], ne: &[u64], ty: u32, offset: u64) -> Builder {
            let mut b = string(name);
            b.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            self.tensors.push(b);
            self
        }

        fn data(mut self, n: usize) -> Builder {
            self.data = vec![0; n];
            self
        }

        fn bytes(&self) -> Vec<u8> {
            let mut b = b"GGUF".to_vec();
            b.extend(self.version.to_le_bytes());
            let (t, k) = self
                .counts
                .unwrap_or((self.tensors.len() as u64, self.kvs.len() as u64));
            b.extend(t.to_le_bytes());
            b.extend(k.to_le_bytes());
            for kv in &self.kvs {
                b.extend(kv);
            }
            for t in &self.tensors {
                b.extend(t);
            }
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
            b.extend(&self.data);
            b
        }

        fn parse(&self) -> Result<GgufInfo, ReadError> {
            parse(&self.bytes())
        }
    }

    fn gguf_err(r: Result<GgufInfo, ReadError>) -> GgufError {
        match r {
            Err(ReadError::Gguf(e)) => e,
            other => panic!("expected a GGUF error, got {other:?}"),
        }
    }

    fn u32le(v: u32) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    #[test]
    fn test_gguf_reads_kvs_and_tensors() {
        let mut arr = u32le(5);
        arr.extend(2u64.to_le_bytes());
        arr.extend(3i32.to_le_bytes());
        arr.extend(4i32.to_le_bytes());
        let info = Builder::new()
            .kv("general.architecture", 8, &string(b"flux"))
            .kv("comfy.gguf.orig_shape.a", 9, &arr)
            .tensor(b"a", &[32, 2], 8, 0)
            .tensor(b"b", &[3], 0, 96)
            .data(108)
            .parse()
            .unwrap();
        assert_eq!(info.version, 3);
        assert_eq!(info.alignment, 32);
        assert_eq!(info.architecture(), Some("flux"));
        assert_eq!(
            info.get("comfy.gguf.orig_shape.a"),
            Some(&Value::Array(
                ValueType::I32,
                vec![Value::I32(3), Value::I32(4)]
            ))
        );
        assert_eq!(info.ggml_type("a"), Some(GgmlType::Q8_0));
        assert_eq!(info.tensors[1].ne, vec![3]);
    }

    #[test]
    fn test_gguf_version_2_read_and_1_refused() {
        let mut b = Builder::new().tensor(b"a", &[4], 0, 0).data(16);
        b.version = 2;
        assert_eq!(b.parse().unwrap().version, 2);
        b.version = 1;
        assert!(matches!(gguf_err(b.parse()), GgufError::Version1));
        b.version = 3u32.swap_bytes();
        assert!(matches!(gguf_err(b.parse()), GgufError::BigEndian));
        b.version = 4;
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::UnknownVersion { version: 4 }
        ));
    }

    #[test]
    fn test_gguf_huge_counts_refused() {
        let mut b = Builder::new();
        b.counts = Some((u64::MAX, 0));
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::CountTooLarge { .. }
        ));
        b.counts = Some((0, 1 << 40));
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::CountTooLarge { .. }
        ));
        // An array claiming more u32 elements than bytes remain.
        let mut arr = u32le(4);
        arr.extend((1u64 << 60).to_le_bytes());
        let b = Builder::new().kv("k", 9, &arr);
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::CountTooLarge { .. }
        ));
    }

    #[test]
    fn test_gguf_string_past_end_refused() {
        let mut v = (1u64 << 50).to_le_bytes().to_vec();
        v.extend(b"abc");
        let b = Builder::new().kv("k", 8, &v);
        assert!(matches!(gguf_err(b.parse()), GgufError::Truncated { .. }));
        let mut bytes = Builder::new().kv("k", 4, &u32le(1)).bytes();
        bytes.truncate(38);
        assert!(matches!(
            gguf_err(parse(&bytes)),
            GgufError::Truncated { .. }
        ));
    }

    #[test]
    fn test_gguf_nested_arrays_depth_limited() {
        // ARRAY of ARRAY of ... five deep, each with one element.
        let mut v = Vec::new();
        for _ in 0..5 {
            v.extend(u32le(9));
            v.extend(1u64.to_le_bytes());
        }
        v.extend(u32le(0));
        v.extend(0u64.to_le_bytes());
        // The whole value is there: the nesting is what is refused.
        let b = Builder::new().kv("deep", 9, &v);
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::ArrayTooDeep { .. }
        ));
    }

    #[test]
    fn test_gguf_bad_value_type_and_duplicate_key_refused() {
        let b = Builder::new().kv("k", 13, &[0; 8]);
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::BadValueType { ty: 13, .. }
        ));
        let b = Builder::new().kv("k", 0, &[1]).kv("k", 0, &[2]);
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::DuplicateKey { .. }
        ));
    }

    #[test]
    fn test_gguf_bad_alignment_refused() {
        let b = Builder::new().kv("general.alignment", 4, &u32le(48));
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::BadAlignment { .. }
        ));
        let b = Builder::new().kv("general.alignment", 4, &u32le(0));
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::BadAlignment { .. }
        ));
        let b = Builder::new().kv("general.alignment", 10, &64u64.to_le_bytes());
        let e = gguf_err(b.parse());
        assert!(e.to_string().contains("UINT64"), "{e}");
    }

    #[test]
    fn test_gguf_misaligned_offset_refused() {
        let b = Builder::new().tensor(b"a", &[4], 0, 16).data(64);
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::Misaligned { offset: 16, .. }
        ));
        // With general.alignment = 16 the same offset is fine.
        let b = Builder::new()
            .kv("general.alignment", 4, &u32le(16))
            .tensor(b"a", &[4], 0, 16)
            .data(64);
        assert_eq!(b.parse().unwrap().alignment, 16);
    }

    #[test]
    fn test_gguf_tensor_past_end_refused() {
        let b = Builder::new().tensor(b"a", &[64], 0, 0).data(255);
        assert!(matches!(
            b.parse(),
            Err(ReadError::OffsetsPastEnd { end: 256, .. })
        ));
    }

    #[test]
    fn test_gguf_overlapping_tensors_refused() {
        let b = Builder::new()
            .tensor(b"a", &[16], 0, 0)
            .tensor(b"b", &[16], 0, 32)
            .data(128);
        assert!(matches!(b.parse(), Err(ReadError::Overlap { .. })));
        // Empty tensors share no bytes.
        let b = Builder::new()
            .tensor(b"a", &[16], 0, 0)
            .tensor(b"e", &[0, 4], 0, 32)
            .data(64);
        assert!(b.parse().is_ok());
    }

    #[test]
    fn test_gguf_duplicate_and_non_utf8_names_refused() {
        let b = Builder::new()
            .tensor(b"a", &[4], 0, 0)
            .tensor(b"a", &[4], 0, 32)
            .data(64);
        assert!(matches!(b.parse(), Err(ReadError::DuplicateName { .. })));
        let b = Builder::new().tensor(b"a\xff", &[4], 0, 0).data(16);
        assert!(matches!(gguf_err(b.parse()), GgufError::NotUtf8 { .. }));
    }

    #[test]
    fn test_gguf_shapes_checked() {
        let b = Builder::new().tensor(b"a", &[1, 1, 1, 1, 1], 0, 0).data(4);
        assert!(matches!(
            gguf_err(b.parse()),
            GgufError::TooManyDims { n_dims: 5, .. }
        ));
        let b = Builder::new().tensor(b"a", &[1 << 32, 1 << 32], 0, 0);
        assert!(matches!(b.parse(), Err(ReadError::ShapeOverflow { .. })));
        let b = Builder::new().tensor(b"a", &[1 << 62, 4], 0, 0);
        assert!(matches!(b.parse(), Err(ReadError::ShapeOverflow { .. })));
        let b = Builder::new().tensor(b"a", &[48, 2], 12, 0).data(1024);
        let e = gguf_err(b.parse());
        assert!(
            matches!(
                e,
                GgufError::PartialBlock {
                    ne0: 48,
                    block: 256,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn test_gguf_unknown_type_named() {
        let b = Builder::new().tensor(b"a", &[256], 16, 0).data(1024);
        let e = gguf_err(b.parse());
        assert_eq!(
            e.to_string(),
            "tensor 'a' has ggml type IQ2_XXS (16), which ckpt-diff does not read"
        );
        let b = Builder::new().tensor(b"a", &[256], 99, 0).data(1024);
        assert!(gguf_err(b.parse()).to_string().contains("id 99 (unknown)"));
    }

    #[test]
    fn test_gguf_orig_shape_checked() {
        let t = TensorInfo {
            name: "a".into(),
            ggml_type: GgmlType::Q8_0,
            ne: vec![256, 9],
            offset: 0,
        };
        let good = Value::Array(
            ValueType::I32,
            [32, 8, 3, 3].into_iter().map(Value::I32).collect(),
        );
        let orig = HashMap::from([("a", &good)]);
        assert_eq!(logical_shape(&t, &orig).unwrap(), vec![32, 8, 3, 3]);
        assert_eq!(logical_shape(&t, &HashMap::new()).unwrap(), vec![9, 256]);
        let wrong_numel = Value::Array(ValueType::I32, vec![Value::I32(5)]);
        let wrong_type = Value::Array(ValueType::I64, vec![Value::I64(2304)]);
        let negative = Value::Array(ValueType::I32, vec![Value::I32(-2304)]);
        for v in [&wrong_numel, &wrong_type, &negative, &Value::U32(1)] {
            let e = logical_shape(&t, &HashMap::from([("a", v)])).unwrap_err();
            assert!(matches!(e, GgufError::BadOrigShape { .. }), "{e}");
        }
    }
}
