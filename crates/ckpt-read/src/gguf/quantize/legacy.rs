//! gguf-py 0.19.0's legacy quantizers (`quants.py` `Q8_0`, `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`
//! `.quantize_blocks`), their float operations in numpy's order, and the numpy casts they
//! depend on.

use super::f16_bits;

/// numpy's float32 -> uint8 / int8 cast on x86-64, as gguf-py applies it before `clip`: the
/// integer part truncated through a 32-bit conversion, so NaN and |v| >= 2^31 (where the
/// conversion returns 0x80000000) give 0 and anything else its low byte (300.0 -> 44,
/// -1.0 -> 255).
fn numpy_byte(v: f32) -> u8 {
    if v.abs() < 2_147_483_648.0 {
        v as i32 as u8
    } else {
        0
    }
}

/// `numpy_byte(np_roundf(v))`: gguf-py's `np_roundf` (round half away from zero, as
/// `floor(a) + floor(2 (a - floor(a)))` with the sign put back; NaN and infinities give NaN)
/// cast to a byte. Computed on the truncated integer and the exact remainder, without the
/// libm calls `floor` costs on baseline x86-64.
fn numpy_round_byte(v: f32) -> u8 {
    if v.is_nan() || v.abs() >= 2_147_483_648.0 {
        return 0;
    }
    let whole = v as i32;
    // Exact: `whole` is 0 or within a factor 2 of v (Sterbenz), or v is already whole.
    let frac = v - whole as f32;
    let rounded = if frac >= 0.5 {
        whole + 1
    } else if frac <= -0.5 {
        whole - 1
    } else {
        whole
    };
    rounded as u8
}

/// The value of largest magnitude, the first on ties, a NaN if there is one (numpy's
/// `argmax(abs(x))` counts NaN as the largest).
fn signed_absmax(x: &[f32; 32]) -> f32 {
    let mut best = x[0];
    for &v in &x[1..] {
        if best.is_nan() {
            break;
        }
        if v.is_nan() || v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

/// numpy's `max` and `min` of a block (a NaN anywhere makes both NaN).
fn max_min(x: &[f32; 32]) -> (f32, f32) {
    let (mut max, mut min) = (x[0], x[0]);
    for &v in &x[1..] {
        if v.is_nan() || max.is_nan() {
            max = f32::NAN;
            min = f32::NAN;
        } else {
            max = if v > max { v } else { max };
            min = if v < min { v } else { min };
        }
    }
    (max, min)
}

/// `1 / d`, or 0 when `d` is 0 (gguf-py's `np.where(d == 0, 0, 1 / d)`).
fn inverse_or_zero(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// Q8_0: `d = amax / 127`, `q = round_away(x / d)`.
pub(super) fn q8_0_block(x: &[f32; 32], y: &mut [u8; 34]) {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a.is_nan() || amax.is_nan() {
            amax = f32::NAN;
        } else if a > amax {
            amax = a;
        }
    }
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    y[..2].copy_from_slice(&f16_bits(d));
    for (q, &v) in y[2..].iter_mut().zip(x) {
        *q = numpy_round_byte(v * id);
    }
}

/// Codes of the symmetric 4/5-bit types: `clip(trunc(x * id + offset), 0, top)`.
fn symmetric_codes(x: &[f32; 32], id: f32, offset: f32, top: u8) -> [u8; 32] {
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        // `numpy_byte` truncates, as gguf-py's `np.trunc` does.
        *q = numpy_byte(v * id + offset).min(top);
    }
    q
}

/// Codes of the 4/5-bit types with a minimum: `clip(trunc((x - min) * id + 0.5), 0, top)`.
fn offset_codes(x: &[f32; 32], min: f32, id: f32, top: u8) -> [u8; 32] {
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = numpy_byte((v - min) * id + 0.5).min(top);
    }
    q
}

/// Values 0..16 in the low nibbles, 16..32 in the high ones.
fn pack_nibbles(q: &[u8; 32], out: &mut [u8]) {
    for (j, o) in out[..16].iter_mut().enumerate() {
        *o = (q[j] & 0x0f) | (q[j + 16] << 4);
    }
}

/// Bit 4 of each code, code `i` in bit `i` of a little-endian u32.
fn high_bits(q: &[u8; 32]) -> [u8; 4] {
    let mut qh = 0u32;
    for (i, &v) in q.iter().enumerate() {
        qh |= u32::from((v >> 4) & 1) << i;
    }
    qh.to_le_bytes()
}

/// Q4_0: `d = max / -8` (`max` the signed value of largest magnitude), `q = x / d + 8`.
pub(super) fn q4_0_block(x: &[f32; 32], y: &mut [u8; 18]) {
    let d = signed_absmax(x) / -8.0;
    let q = symmetric_codes(x, inverse_or_zero(d), 8.5, 15);
    y[..2].copy_from_slice(&f16_bits(d));
    pack_nibbles(&q, &mut y[2..]);
}

/// Q4_1: `d = (max - min) / 15`, `m = min`, `q = (x - min) / d`.
pub(super) fn q4_1_block(x: &[f32; 32], y: &mut [u8; 20]) {
    let (max, min) = max_min(x);
    let d = (max - min) / 15.0;
    let q = offset_codes(x, min, inverse_or_zero(d), 15);
    y[..2].copy_from_slice(&f16_bits(d));
    y[2..4].copy_from_slice(&f16_bits(min));
    pack_nibbles(&q, &mut y[4..]);
}

/// Q5_0: `d = max / -16`, `q = x / d + 16`.
pub(super) fn q5_0_block(x: &[f32; 32], y: &mut [u8; 22]) {
    let d = signed_absmax(x) / -16.0;
    let q = symmetric_codes(x, inverse_or_zero(d), 16.5, 31);
    y[..2].copy_from_slice(&f16_bits(d));
    y[2..6].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut y[6..]);
}

/// Q5_1: `d = (max - min) / 31`, `m = min`, `q = (x - min) / d`.
pub(super) fn q5_1_block(x: &[f32; 32], y: &mut [u8; 24]) {
    let (max, min) = max_min(x);
    let d = (max - min) / 31.0;
    let q = offset_codes(x, min, inverse_or_zero(d), 31);
    y[..2].copy_from_slice(&f16_bits(d));
    y[2..4].copy_from_slice(&f16_bits(min));
    y[4..8].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut y[8..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy 2.4's `astype(np.uint8)` of these float32s on x86-64 (measured; gguf-py casts
    /// before it clips, so out-of-range codes depend on it).
    #[test]
    fn byte_cast_is_numpys() {
        let values = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            300.0,
            -1.0,
            1e10,
            -1e10,
            256.0,
            -129.0,
            16.5,
        ];
        let numpy = [0u8, 0, 0, 44, 255, 0, 0, 0, 127, 16];
        for (v, want) in values.into_iter().zip(numpy) {
            assert_eq!(numpy_byte(v), want, "{v}");
        }
    }

    /// `numpy_round_byte` against gguf-py's `np_roundf` as written (`floor(a) + floor(2 (a -
    /// floor(a)))`, signed), then the cast.
    #[test]
    fn rounding_is_gguf_pys_np_roundf() {
        let np_roundf = |n: f32| {
            let a = n.abs();
            let b = a.floor() + (2.0 * (a - a.floor())).floor();
            n.signum() * b
        };
        let mut values = vec![
            0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, 126.5, -127.5, 127.49999, 0.49999997,
        ];
        values.extend([
            f32::NAN,
            f32::INFINITY,
            -3e9,
            2.5e9,
            16_777_217.0,
            8_388_609.5,
            -4e6 - 0.5,
        ]);
        let mut state = 7u32;
        for _ in 0..100_000 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            values.push((state as i32) as f32 / 2f32.powi((state % 31) as i32));
        }
        for v in values {
            assert_eq!(numpy_round_byte(v), numpy_byte(np_roundf(v)), "{v}");
        }
    }
}
