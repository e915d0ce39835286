//! Plain-Rust kernels: the fallback on any CPU, and the reference the SIMD paths are
//! tested against.
use half::{bf16, f16};

use ckpt_read::dtype::FloatFormat;

pub(super) fn to_f64(format: FloatFormat, src: &[u8], dst: &mut [f64]) {
    format.decode_into(src, dst)
}

pub(super) fn from_f64(format: FloatFormat, src: &[f64], dst: &mut [u8]) {
    match format {
        // Not `f16::from_f64`: it drops the low 32 mantissa bits before rounding, so it
        // misrounds values just above a tie. Round to odd in f32 first, then to nearest.
        FloatFormat::F16 => {
            for (c, &x) in dst.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&f16::from_f32(f64_to_f32_odd(x)).to_le_bytes());
            }
        }
        FloatFormat::BF16 => {
            for (c, &x) in dst.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&bf16::from_f32(f64_to_f32_odd(x)).to_le_bytes());
            }
        }
        FloatFormat::F32 => {
            for (c, &x) in dst.chunks_exact_mut(4).zip(src) {
                c.copy_from_slice(&(x as f32).to_le_bytes());
            }
        }
        FloatFormat::F64 => {
            for (c, &x) in dst.chunks_exact_mut(8).zip(src) {
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
        FloatFormat::F8E4M3 | FloatFormat::F8E5M2 => {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = fp8_round(format, x);
            }
        }
    }
}

/// f64 -> f32 rounding to odd (truncate, then set the last bit if inexact): the first
/// step of a correctly rounded f64 -> f16/bf16 conversion.
pub(super) fn f64_to_f32_odd(x: f64) -> f32 {
    // Without branches, so that loops over it vectorise: an inexact result steps towards
    // zero if rounding went away from it, then sets its last bit.
    let nearest = x as f32;
    let back = nearest as f64;
    let inexact = back != x;
    let bits = nearest.to_bits() - (inexact && back.abs() > x.abs()) as u32;
    f32::from_bits(bits | inexact as u32)
}

/// Eight independent lanes summed in a fixed order. Plain multiply-add, not `mul_add`:
/// without hardware FMA that is a slow libm call. (Products of stored f16/bf16/f32 values
/// are exact in f64 either way.)
pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let split = a.len() / 8 * 8;
    for (ca, cb) in a[..split].chunks_exact(8).zip(b[..split].chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += ca[l] * cb[l];
        }
    }
    let mut s = lanes.iter().sum::<f64>();
    for i in split..a.len() {
        s += a[i] * b[i];
    }
    s
}

pub(super) fn gram2(a: &[f64], b: &[f64]) -> [f64; 3] {
    [dot(a, a), dot(a, b), dot(b, b)]
}

/// Adds to `out` the [`gram2`] of the stored elements from `from` on: the tail a SIMD loop
/// leaves.
pub(super) fn add_gram2_tail(
    format: FloatFormat,
    a: &[u8],
    b: &[u8],
    from: usize,
    out: &mut [f64; 3],
) {
    let n = a.len() / format.size();
    if from >= n {
        return;
    }
    let size = format.size();
    let mut ta = vec![0.0; n - from];
    let mut tb = vec![0.0; n - from];
    to_f64(format, &a[from * size..], &mut ta);
    to_f64(format, &b[from * size..], &mut tb);
    let [aa, ab, bb] = gram2(&ta, &tb);
    out[0] += aa;
    out[1] += ab;
    out[2] += bb;
}

/// The largest finite value of an FP8 format: 448 (E4M3), 57344 (E5M2).
pub(super) fn fp8_max(format: FloatFormat) -> f64 {
    match format {
        FloatFormat::F8E4M3 => 448.0,
        _ => 57344.0,
    }
}

/// Nearest FP8 code (ties to the even code), saturating at the largest finite value (never
/// an infinity); NaN stays NaN.
///
/// `x` is first rounded to odd into f32: with 20 or more bits to spare, rounding that to
/// nearest-even gives the code nearest to `x` itself (round-to-odd keeps "above or below the
/// midpoint" intact), and the rest is integer work on the f32 bits: the slow part of a merge
/// to FP8 was this function while it worked in f64 with `powi`.
pub(super) fn fp8_round(format: FloatFormat, x: f64) -> u8 {
    // (mantissa bits, exponent bias, NaN code, largest finite code, the f32 whose ulp is the
    // subnormal step 2^(1 - bias - man_bits): adding it rounds to that step, ties to even).
    let (man_bits, bias, nan, max_code, magic) = match format {
        FloatFormat::F8E4M3 => (3u32, 7u32, 0x7fu8, 0x7eu32, 16384.0f32),
        _ => (2, 15, 0x7e, 0x7b, 128.0),
    };
    let bits = f64_to_f32_odd(x).to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let a = bits & 0x7fff_ffff;
    // Subnormal: the count of steps, by the hardware's own rounding of the sum; 2^man_bits
    // steps is the smallest normal's code, as it should be.
    let subnormal = (f32::from_bits(a) + magic)
        .to_bits()
        .wrapping_sub(magic.to_bits());
    // Normal: round the f32 mantissa to man_bits (a carry moves to the next binade), then
    // rebias the exponent.
    let drop = 23 - man_bits;
    let rounded = a + ((1 << (drop - 1)) - 1) + ((a >> drop) & 1);
    let normal = (rounded >> drop).wrapping_sub((127 - bias) << man_bits);
    // f32 bits of the smallest normal FP8 value, 2^(1 - bias).
    let code = if a < (127 + 1 - bias) << 23 {
        subnormal
    } else {
        normal.min(max_code)
    };
    if x.is_nan() { nan } else { sign | code as u8 }
}
