//! The GGUF header a writer lays out before any tensor data: KVs, tensor infos with their
//! offsets, zero padding to the alignment (issue #27 part 3).
//!
//! Everything a header holds is known before the first value is quantized (a tensor's byte
//! size follows from its type and element count), so a writer lays it out first, writes it,
//! then fills each tensor's region as its values arrive. [`header`] returns the bytes and
//! each tensor's offset in the data region; the file is `bytes`, then every tensor at
//! `bytes.len() + offset`, the regions padded with zeros to the alignment.
//!
//! Layout: `../shared/research/quant-formats-2026.md` B.1 (GGUF v3, little-endian; gguf-py
//! 0.19.0's `GGUFWriter` writes tensors in the order given, each aligned).
//!
//! ```
//! use ckpt_read::gguf::write::{header, TensorOut};
//! use ckpt_read::gguf::{GgmlType, Value};
//!
//! let kvs = vec![("general.architecture".to_string(), Value::String("flux".into()))];
//! let tensors = vec![TensorOut { name: "a.weight".into(), shape: vec![4, 32], ggml_type: GgmlType::Q8_0 }];
//! let h = header(&kvs, &tensors, 32).unwrap();
//! assert_eq!(h.bytes.len() % 32, 0);
//! assert_eq!(h.offsets, vec![0]);
//! assert_eq!(h.data_len, 4 * 34);
//! ```

use super::{GgmlType, Value, ValueType};

/// One tensor of the file to write.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorOut {
    pub name: String,
    /// The stored shape, outermost first (numpy's order; the file stores it reversed).
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
}

impl TensorOut {
    /// Its element count.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Its bytes in the file, `None` when its rows are not whole blocks of its type.
    pub fn byte_len(&self) -> Option<usize> {
        let row = self.shape.last().copied().unwrap_or(1);
        if !row.is_multiple_of(self.ggml_type.block_size()) {
            return None;
        }
        self.ggml_type.bytes_for(self.numel())
    }
}

/// A laid-out header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// The header, padded with zeros to the alignment: the data region starts after it.
    pub bytes: Vec<u8>,
    /// Each tensor's offset in the data region, in the order given.
    pub offsets: Vec<u64>,
    /// The data region's length (the last tensor's end, unpadded).
    pub data_len: u64,
}

/// Why a header cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteHeaderError {
    #[error("tensor '{name}' has rows of {row} values, not whole {ty} blocks of {block}")]
    NotWholeBlocks {
        name: String,
        row: usize,
        ty: &'static str,
        block: usize,
    },
    #[error("tensor '{name}' has {dims} dimensions; GGUF holds at most 4")]
    TooManyDims { name: String, dims: usize },
    #[error("the alignment {0} is not a power of two")]
    BadAlignment(u64),
    #[error("KV '{key}' is an array mixing types")]
    MixedArray { key: String },
}

/// Lays out a GGUF v3 header: `kvs` in order, then `tensors` in order, each tensor's data
/// at the next multiple of `alignment` (pass 32, the default, unless a `general.alignment`
/// KV says otherwise).
pub fn header(
    kvs: &[(String, Value)],
    tensors: &[TensorOut],
    alignment: u64,
) -> Result<Header, WriteHeaderError> {
    if !alignment.is_power_of_two() {
        return Err(WriteHeaderError::BadAlignment(alignment));
    }
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        string(&mut b, key);
        b.extend(value.value_type().id().to_le_bytes());
        put_value(&mut b, key, value)?;
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut at = 0u64;
    for t in tensors {
        if t.shape.len() > 4 {
            return Err(WriteHeaderError::TooManyDims {
                name: t.name.clone(),
                dims: t.shape.len(),
            });
        }
        let len = t
            .byte_len()
            .ok_or_else(|| WriteHeaderError::NotWholeBlocks {
                name: t.name.clone(),
                row: t.shape.last().copied().unwrap_or(1),
                ty: t.ggml_type.name(),
                block: t.ggml_type.block_size(),
            })?;
        string(&mut b, &t.name);
        // A 0-D tensor is stored as one element of one dimension, as gguf-py does.
        let ne: Vec<u64> = if t.shape.is_empty() {
            vec![1]
        } else {
            t.shape.iter().rev().map(|&d| d as u64).collect()
        };
        b.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            b.extend(d.to_le_bytes());
        }
        b.extend(t.ggml_type.id().to_le_bytes());
        b.extend(at.to_le_bytes());
        offsets.push(at);
        at = (at + len as u64).next_multiple_of(alignment);
    }
    let data_len = match (tensors.last(), offsets.last()) {
        (Some(t), Some(&o)) => o + t.byte_len().expect("checked above") as u64,
        _ => 0,
    };
    while !(b.len() as u64).is_multiple_of(alignment) {
        b.push(0);
    }
    Ok(Header {
        bytes: b,
        offsets,
        data_len,
    })
}

fn string(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, key: &str, v: &Value) -> Result<(), WriteHeaderError> {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.extend(x.to_le_bytes()),
        Value::U16(x) => b.extend(x.to_le_bytes()),
        Value::I16(x) => b.extend(x.to_le_bytes()),
        Value::U32(x) => b.extend(x.to_le_bytes()),
        Value::I32(x) => b.extend(x.to_le_bytes()),
        Value::F32(x) => b.extend(x.to_le_bytes()),
        Value::Bool(x) => b.push(u8::from(*x)),
        Value::String(s) => string(b, s),
        Value::U64(x) => b.extend(x.to_le_bytes()),
        Value::I64(x) => b.extend(x.to_le_bytes()),
        Value::F64(x) => b.extend(x.to_le_bytes()),
        Value::Array(ty, items) => {
            if items.iter().any(|i| i.value_type() != *ty) {
                return Err(WriteHeaderError::MixedArray {
                    key: key.to_string(),
                });
            }
            b.extend(ty.id().to_le_bytes());
            b.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(b, key, i)?;
            }
        }
    }
    Ok(())
}

/// The KV city96's loader reads to restore a reshaped tensor: `comfy.gguf.orig_shape.<name>`
/// = ARRAY of INT32, the original dims outermost first.
pub fn orig_shape_kv(name: &str, shape: &[usize]) -> (String, Value) {
    (
        format!("{}{name}", super::container::ORIG_SHAPE_PREFIX),
        Value::Array(
            ValueType::I32,
            shape.iter().map(|&d| Value::I32(d as i32)).collect(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::container::parse;

    #[test]
    fn the_reader_reads_what_is_laid_out() {
        let kvs = vec![
            (
                "general.architecture".to_string(),
                Value::String("sdxl".into()),
            ),
            ("general.quantization_version".to_string(), Value::U32(2)),
            orig_shape_kv("c.weight", &[4, 4, 4, 4, 4]),
        ];
        let tensors = vec![
            TensorOut {
                name: "a".into(),
                shape: vec![3],
                ggml_type: GgmlType::F32,
            },
            TensorOut {
                name: "c.weight".into(),
                shape: vec![4, 256],
                ggml_type: GgmlType::Q4K,
            },
        ];
        let h = header(&kvs, &tensors, 32).unwrap();
        assert_eq!(h.offsets, vec![0, 32]);
        assert_eq!(h.data_len, 32 + 4 * 144);
        let mut file = h.bytes.clone();
        file.resize(file.len() + h.data_len as usize, 0);
        let info = parse(&file).unwrap();
        assert_eq!(info.kvs, kvs);
        assert_eq!(info.tensors[1].ne, vec![256, 4]);
        assert_eq!(info.tensors[1].ggml_type, GgmlType::Q4K);
        assert_eq!(info.data_start, h.bytes.len() as u64);
    }

    #[test]
    fn rows_must_be_whole_blocks() {
        let t = TensorOut {
            name: "x".into(),
            shape: vec![256, 3],
            ggml_type: GgmlType::Q8_0,
        };
        assert!(matches!(
            header(&[], &[t], 32),
            Err(WriteHeaderError::NotWholeBlocks { row: 3, .. })
        ));
    }
}
