//! Element types of safetensors tensors, seen the way ckpt-diff uses them.
//!
//! The header's dtype strings are parsed into [`safetensors::Dtype`]; this module says
//! which of them ckpt-diff reads as floats (and how), which it keeps as integers, and
//! which it can only carry along byte for byte.

use std::sync::OnceLock;

use half::{bf16, f16};
pub use safetensors::Dtype;

/// How the values of a tensor are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// A floating-point type the kernels convert to f64 exactly.
    Float(FloatFormat),
    /// An integer or boolean type: kept as integers, never averaged or cast to float.
    Integer,
    /// A type ckpt-diff can copy but not compute with (sub-byte floats, complex, E8M0).
    Opaque,
}

/// The floating-point formats the kernels read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatFormat {
    F16,
    BF16,
    F32,
    F64,
    F8E4M3,
    F8E5M2,
}

impl FloatFormat {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatFormat::F8E4M3 | FloatFormat::F8E5M2 => 1,
            FloatFormat::F16 | FloatFormat::BF16 => 2,
            FloatFormat::F32 => 4,
            FloatFormat::F64 => 8,
        }
    }

    /// Decodes little-endian values of this format into `dst` (one per element of `src`),
    /// exactly: the reference every SIMD conversion of the kernels is tested against.
    pub fn decode_into(self, src: &[u8], dst: &mut [f64]) {
        match self {
            FloatFormat::F16 => {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = f16::from_le_bytes([c[0], c[1]]).to_f64();
                }
            }
            FloatFormat::BF16 => {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = bf16::from_le_bytes([c[0], c[1]]).to_f64();
                }
            }
            FloatFormat::F32 => {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
                }
            }
            FloatFormat::F64 => {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(8)) {
                    *d = f64::from_le_bytes(c.try_into().expect("8 bytes"));
                }
            }
            FloatFormat::F8E4M3 | FloatFormat::F8E5M2 => {
                let table = fp8_table(self);
                for (d, &b) in dst.iter_mut().zip(src) {
                    *d = table[b as usize];
                }
            }
        }
    }

    /// The safetensors dtype of this format.
    pub fn dtype(self) -> Dtype {
        match self {
            FloatFormat::F16 => Dtype::F16,
            FloatFormat::BF16 => Dtype::BF16,
            FloatFormat::F32 => Dtype::F32,
            FloatFormat::F64 => Dtype::F64,
            FloatFormat::F8E4M3 => Dtype::F8_E4M3,
            FloatFormat::F8E5M2 => Dtype::F8_E5M2,
        }
    }
}

/// Decoding tables for the two FP8 formats (E4M3 "fn": no infinities, 0x7f/0xff are NaN;
/// E5M2: IEEE-style with infinities).
fn fp8_table(format: FloatFormat) -> &'static [f64; 256] {
    static E4M3: OnceLock<[f64; 256]> = OnceLock::new();
    static E5M2: OnceLock<[f64; 256]> = OnceLock::new();
    let build = |e4m3: bool| {
        let mut t = [0.0; 256];
        for (b, v) in t.iter_mut().enumerate() {
            *v = fp8_decode(e4m3, b as u8);
        }
        t
    };
    match format {
        FloatFormat::F8E4M3 => E4M3.get_or_init(|| build(true)),
        _ => E5M2.get_or_init(|| build(false)),
    }
}

fn fp8_decode(e4m3: bool, b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (exp_bits, man_bits, bias) = if e4m3 { (4, 3, 7) } else { (5, 2, 15) };
    let exp = ((b >> man_bits) & ((1 << exp_bits) - 1)) as i32;
    let man = (b & ((1 << man_bits) - 1)) as f64;
    let max_exp = (1 << exp_bits) - 1;
    let scale = (1u32 << man_bits) as f64;
    if e4m3 && exp == max_exp && man as u8 == 7 {
        return f64::NAN;
    }
    if !e4m3 && exp == max_exp {
        return if man == 0.0 {
            sign * f64::INFINITY
        } else {
            f64::NAN
        };
    }
    if exp == 0 {
        sign * man / scale * 2f64.powi(1 - bias)
    } else {
        sign * (1.0 + man / scale) * 2f64.powi(exp - bias)
    }
}

/// How ckpt-diff reads values of `dtype`.
pub fn value_kind(dtype: Dtype) -> ValueKind {
    match dtype {
        Dtype::F16 => ValueKind::Float(FloatFormat::F16),
        Dtype::BF16 => ValueKind::Float(FloatFormat::BF16),
        Dtype::F32 => ValueKind::Float(FloatFormat::F32),
        Dtype::F64 => ValueKind::Float(FloatFormat::F64),
        Dtype::F8_E4M3 => ValueKind::Float(FloatFormat::F8E4M3),
        Dtype::F8_E5M2 => ValueKind::Float(FloatFormat::F8E5M2),
        Dtype::BOOL
        | Dtype::U8
        | Dtype::I8
        | Dtype::I16
        | Dtype::U16
        | Dtype::I32
        | Dtype::U32
        | Dtype::I64
        | Dtype::U64 => ValueKind::Integer,
        _ => ValueKind::Opaque,
    }
}

/// The float format of `dtype`, if ckpt-diff computes with it.
pub fn float_format(dtype: Dtype) -> Option<FloatFormat> {
    match value_kind(dtype) {
        ValueKind::Float(f) => Some(f),
        _ => None,
    }
}

/// Bits per element, as the safetensors format defines them.
pub fn bit_size(dtype: Dtype) -> usize {
    dtype.bitsize()
}

/// The name used in safetensors headers (`F16`, `BF16`, `I64`, ...).
pub fn name(dtype: Dtype) -> String {
    // The crate's Display is the header spelling; keep one place that relies on it.
    dtype.to_string()
}

/// Parses a header dtype string; `None` for names the safetensors format does not define.
pub fn parse(name: &str) -> Option<Dtype> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_round_trip() {
        for d in [
            Dtype::F16,
            Dtype::BF16,
            Dtype::F32,
            Dtype::I64,
            Dtype::F8_E4M3,
            Dtype::BOOL,
        ] {
            assert_eq!(parse(&name(d)), Some(d));
        }
        assert_eq!(parse("Q4_K"), None);
    }

    #[test]
    fn kinds() {
        assert_eq!(value_kind(Dtype::I64), ValueKind::Integer);
        assert_eq!(value_kind(Dtype::F4), ValueKind::Opaque);
        assert_eq!(float_format(Dtype::BF16), Some(FloatFormat::BF16));
        assert_eq!(FloatFormat::F8E5M2.size(), 1);
    }
}
