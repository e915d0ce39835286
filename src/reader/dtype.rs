//! Element types of safetensors tensors, seen the way ckpt-diff uses them.
//!
//! The header's dtype strings are parsed into [`safetensors::Dtype`]; this module says
//! which of them ckpt-diff reads as floats (and how), which it keeps as integers, and
//! which it can only carry along byte for byte.

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

/// Parses a user-facing dtype name such as `f16`, `fp16`, `half`, `bf16`, `f32`, `float32`.
pub fn parse_user_float(name: &str) -> Option<FloatFormat> {
    match name.to_ascii_lowercase().as_str() {
        "f16" | "fp16" | "float16" | "half" => Some(FloatFormat::F16),
        "bf16" | "bfloat16" => Some(FloatFormat::BF16),
        "f32" | "fp32" | "float32" | "float" => Some(FloatFormat::F32),
        "f64" | "fp64" | "float64" | "double" => Some(FloatFormat::F64),
        "f8_e4m3" | "fp8" | "e4m3" => Some(FloatFormat::F8E4M3),
        "f8_e5m2" | "e5m2" => Some(FloatFormat::F8E5M2),
        _ => None,
    }
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
