//! The GGUF quantizers: f32 values in, ggml blocks out (issue #27).
//!
//! [`quantize`] encodes a whole number of blocks of one [`GgmlType`]. It is single-threaded,
//! pure and allocates nothing (each block works on the stack), so a writer parallelises over
//! rows and calls it once per row.
//!
//! Two oracles fix the bytes, both checked by `tests/gguf_quant.rs` on
//! `fixtures/gguf-quant/`:
//!
//! * F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 equal gguf-py 0.19.0's `gguf.quants.quantize` bit
//!   for bit, its float operations in its order: the scale from the block's extreme (`max / -8`
//!   for Q4_0, `(max - min) / 15` for Q4_1, `amax / 127` for Q8_0), its inverse (0 when the
//!   scale is 0), then `trunc(x * id + 8.5)` (Q4_0, Q5_0 with 16.5), `trunc((x - min) * id + 0.5)`
//!   (Q4_1, Q5_1) or `np_roundf(x * id)` (round half away from zero, Q8_0), the cast to a byte
//!   as numpy does it on x86-64 (NaN and |v| >= 2^31 give 0, else the low byte of the integer
//!   part), clipped to the code range; scales stored as f16 rounded to nearest even.
//! * Q2_K..Q6_K follow llama.cpp's reference quantizers (`quantize_row_qN_K_ref` in
//!   `ggml/src/ggml-quants.c`, no importance matrix): per sub-block a least-squares scale
//!   (`make_qx_quants` for Q6_K, `make_q3_quants` for Q3_K, the scale-and-min search
//!   `make_qkx2_quants` for Q2_K, Q4_K, Q5_K), the sub-block scales quantized to 4, 6 or 8 bits
//!   against one f16 super-block scale, then every value requantized with the stored scales.
//!   The f32 operations run in the reference's order and Rust never fuses a multiply-add, so
//!   the bytes equal the reference's built without FMA contraction (x86-64 baseline `gcc -O2`).
//!
//! IQ4_NL and IQ4_XS follow llama.cpp's `quantize_iq4_nl` / `quantize_iq4_xs` (what
//! llama-quantize writes without an importance matrix), checked the same way.
//!
//! NaN policy: no input panics. For F16, BF16 and the legacy types a quiet NaN gives gguf-py's
//! bytes; the K and IQ4 types promise nothing about blocks holding NaN or infinities.
//!
//! ```
//! use ckpt_read::gguf::{quantize::quantize, GgmlType};
//!
//! let src: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
//! let mut dst = vec![0u8; GgmlType::Q8_0.bytes_for(src.len()).unwrap()];
//! quantize(GgmlType::Q8_0, &src, &mut dst).unwrap();
//! assert_eq!(dst.len(), 68);
//! ```

use half::f16;

use super::GgmlType;

/// Why [`quantize`] refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantizeError {
    /// The input is not a whole number of the type's blocks.
    #[error("{len} values are not a whole number of {ty} blocks of {block}")]
    NotWholeBlocks {
        /// The type asked for (its ggml name).
        ty: &'static str,
        /// Values given.
        len: usize,
        /// Values per block.
        block: usize,
    },
    /// The output buffer does not have the size the input needs.
    #[error("{ty} of {len} values takes {want} bytes, the output has {got}")]
    WrongOutputSize {
        /// The type asked for (its ggml name).
        ty: &'static str,
        /// Values given.
        len: usize,
        /// Bytes the blocks take.
        want: usize,
        /// Bytes given.
        got: usize,
    },
}

/// Encodes `src` (a whole number of `t`'s blocks) into `dst` (exactly `t.bytes_for(src.len())`
/// bytes), in the layout a GGUF tensor of type `t` stores.
pub fn quantize(t: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantizeError> {
    let want = t
        .bytes_for(src.len())
        .ok_or(QuantizeError::NotWholeBlocks {
            ty: t.name(),
            len: src.len(),
            block: t.block_size(),
        })?;
    if dst.len() != want {
        return Err(QuantizeError::WrongOutputSize {
            ty: t.name(),
            len: src.len(),
            want,
            got: dst.len(),
        });
    }
    match t {
        GgmlType::F32 => each_block(src, dst, |x: &[f32; 1], y: &mut [u8; 4]| {
            *y = x[0].to_le_bytes()
        }),
        GgmlType::F16 => each_block(src, dst, |x: &[f32; 1], y: &mut [u8; 2]| {
            *y = f16::from_f32(x[0]).to_le_bytes()
        }),
        GgmlType::Bf16 => each_block(src, dst, |x: &[f32; 1], y: &mut [u8; 2]| {
            *y = bf16_bits(x[0]).to_le_bytes()
        }),
        GgmlType::Q8_0 => each_block(src, dst, q8_0_block),
        GgmlType::Q4_0 => each_block(src, dst, q4_0_block),
        GgmlType::Q4_1 => each_block(src, dst, q4_1_block),
        GgmlType::Q5_0 => each_block(src, dst, q5_0_block),
        GgmlType::Q5_1 => each_block(src, dst, q5_1_block),
        GgmlType::Q2K => each_block(src, dst, q2_k_block),
        GgmlType::Q3K => each_block(src, dst, q3_k_block),
        GgmlType::Q4K => each_block(src, dst, q4_k_block),
        GgmlType::Q5K => each_block(src, dst, q5_k_block),
        GgmlType::Q6K => each_block(src, dst, q6_k_block),
        GgmlType::Iq4Nl => each_block(src, dst, iq4_nl_block),
        GgmlType::Iq4Xs => each_block(src, dst, iq4_xs_block),
    }
    Ok(())
}

/// Runs `encode` on each block of `N` values and its `B` output bytes (the lengths are
/// checked by the caller).
fn each_block<const N: usize, const B: usize>(
    src: &[f32],
    dst: &mut [u8],
    mut encode: impl FnMut(&[f32; N], &mut [u8; B]),
) {
    let (blocks, _) = src.as_chunks::<N>();
    let (outs, _) = dst.as_chunks_mut::<B>();
    for (x, y) in blocks.iter().zip(outs) {
        encode(x, y);
    }
}

// ----------------------------------------------------------------------------------------
// Float casts

/// ggml's and gguf-py's f32 -> bf16: a NaN made quiet (sign and top 7 mantissa bits kept, bit
/// 6 set), everything else rounded to nearest even on the bits (so a value past the largest
/// bf16 becomes infinity). See gguf-py `quants.py` `BF16.quantize_blocks`.
fn bf16_bits(x: f32) -> u16 {
    let mut n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u16
}

/// The f16 of `x`, rounded to nearest even (numpy's `astype(float16)`, ggml's
/// `GGML_FP32_TO_FP16`), as its bits.
fn f16_bits(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// The f32 value of the f16 just stored (the K quantizers requantize with the stored scale).
fn f16_value(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

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

// ----------------------------------------------------------------------------------------
// gguf-py's legacy quantizers

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
fn q8_0_block(x: &[f32; 32], y: &mut [u8; 34]) {
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
fn q4_0_block(x: &[f32; 32], y: &mut [u8; 18]) {
    let d = signed_absmax(x) / -8.0;
    let q = symmetric_codes(x, inverse_or_zero(d), 8.5, 15);
    y[..2].copy_from_slice(&f16_bits(d));
    pack_nibbles(&q, &mut y[2..]);
}

/// Q4_1: `d = (max - min) / 15`, `m = min`, `q = (x - min) / d`.
fn q4_1_block(x: &[f32; 32], y: &mut [u8; 20]) {
    let (max, min) = max_min(x);
    let d = (max - min) / 15.0;
    let q = offset_codes(x, min, inverse_or_zero(d), 15);
    y[..2].copy_from_slice(&f16_bits(d));
    y[2..4].copy_from_slice(&f16_bits(min));
    pack_nibbles(&q, &mut y[4..]);
}

/// Q5_0: `d = max / -16`, `q = x / d + 16`.
fn q5_0_block(x: &[f32; 32], y: &mut [u8; 22]) {
    let d = signed_absmax(x) / -16.0;
    let q = symmetric_codes(x, inverse_or_zero(d), 16.5, 31);
    y[..2].copy_from_slice(&f16_bits(d));
    y[2..6].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut y[6..]);
}

/// Q5_1: `d = (max - min) / 31`, `m = min`, `q = (x - min) / d`.
fn q5_1_block(x: &[f32; 32], y: &mut [u8; 24]) {
    let (max, min) = max_min(x);
    let d = (max - min) / 31.0;
    let q = offset_codes(x, min, inverse_or_zero(d), 31);
    y[..2].copy_from_slice(&f16_bits(d));
    y[2..4].copy_from_slice(&f16_bits(min));
    y[4..8].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut y[8..]);
}

// ----------------------------------------------------------------------------------------
// llama.cpp's K quantizers (ggml-quants.c, the `_ref` functions without importance weights)

/// Groups of this size or smaller in magnitude are all-zero groups (`GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Rounds to the nearest integer, ties to even, by adding 1.5 * 2^23 and reading the
/// mantissa (ggml's `nearest_int`; exact for |v| <= 2^22 - 1, the only range it is used on).
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let shifted = v + 12_582_912.0;
    (shifted.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The value of largest magnitude in `x` (the first on ties) and that magnitude.
#[inline(always)]
fn signed_max<const N: usize>(x: &[f32; N]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric codes for 16 values, `l in [-nmax, nmax)`, stored `+ nmax`, with the scale that
/// minimises Σ x² (x - s l)² over 19 trial inverse scales `-(nmax + 0.1 k) / max`,
/// k = 0, ±1..±9 (`make_qx_quants` with `rmse_type = 1`; Q6_K). Returns the scale.
fn symmetric_scale_search(nmax: i32, x: &[f32; 16], codes: &mut [u8; 16]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        *codes = [0; 16];
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = -nmax_f / max;
    let (mut sum_wxl, mut sum_wl2) = (0.0f32, 0.0f32);
    for (c, &v) in codes.iter_mut().zip(x) {
        let l = clamp(nearest_int(iscale * v));
        *c = (l + nmax) as u8;
        let w = v * v;
        let lf = l as f32;
        sum_wxl += w * v * lf;
        sum_wl2 += w * lf * lf;
    }
    let mut scale = if sum_wl2 != 0.0 {
        sum_wxl / sum_wl2
    } else {
        0.0
    };
    let mut best = scale * sum_wxl;
    for step in (-9..=9).filter(|&s| s != 0) {
        iscale = -(nmax_f + 0.1 * step as f32) / max;
        let (mut sum_wxl, mut sum_wl2) = (0.0f32, 0.0f32);
        for &v in x {
            let lf = clamp(nearest_int(iscale * v)) as f32;
            let w = v * v;
            sum_wxl += w * v * lf;
            sum_wl2 += w * lf * lf;
        }
        if sum_wl2 > 0.0 && sum_wxl * sum_wxl > best * sum_wl2 {
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = (clamp(nearest_int(iscale * v)) + nmax) as u8;
            }
            scale = sum_wxl / sum_wl2;
            best = scale * sum_wxl;
        }
    }
    scale
}

/// Symmetric 3-bit codes for 16 values (`l in [-4, 4)`, stored `+ 4`), refined one value at a
/// time for up to 5 rounds while that raises (Σ w x l)² / Σ w l², w = x² (`make_q3_quants`
/// with `do_rmse`; Q3_K). Returns the least-squares scale of the final codes.
fn q3_scale_search(x: &[f32; 16], codes: &mut [u8; 16]) -> f32 {
    const NMAX: i32 = 4;
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        *codes = [0; 16];
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-NMAX, NMAX - 1);
    let iscale = -(NMAX as f32) / max;
    let mut l = [0i32; 16];
    let (mut sum_wxl, mut sum_wl2) = (0.0f32, 0.0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        *li = clamp(nearest_int(iscale * v));
        let w = v * v;
        let lf = *li as f32;
        sum_wxl += w * v * lf;
        sum_wl2 += w * lf * lf;
    }
    for _round in 0..5 {
        let mut changed = false;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let old = *li as f32;
            let mut slx = sum_wxl - w * v * old;
            if slx > 0.0 {
                let mut sl2 = sum_wl2 - w * old * old;
                let new_l = clamp(nearest_int(v * sl2 / slx));
                if new_l != *li {
                    let nf = new_l as f32;
                    slx += w * v * nf;
                    sl2 += w * nf * nf;
                    if sl2 > 0.0 && slx * slx * sum_wl2 > sum_wxl * sum_wxl * sl2 {
                        *li = new_l;
                        sum_wxl = slx;
                        sum_wl2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (c, &li) in codes.iter_mut().zip(&l) {
        *c = (li + NMAX) as u8;
    }
    if sum_wl2 > 0.0 {
        sum_wxl / sum_wl2
    } else {
        0.0
    }
}

/// The trial grid of [`scale_min_search`]: inverse scales `(nmax + rmin + rdelta k) / (max -
/// min)` for k = 0..=steps, and whether the error is absolute (else squared).
struct ScaleMinGrid {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    steps: i32,
    absolute_error: bool,
}

/// Asymmetric codes `l in [0, nmax]` for `x ≈ scale l - m` (m >= 0), the pair found by
/// weighted least squares on each trial grid point's codes, keeping the one of least weighted
/// error (`make_qkx2_quants`; Q2_K, Q4_K, Q5_K). Returns `(scale, m)`. The minimum a trial
/// improves on is the one the next trials start from, as in the reference.
#[inline(always)]
fn scale_min_search<const N: usize>(
    grid: &ScaleMinGrid,
    x: &[f32; N],
    weights: &[f32; N],
    codes: &mut [u8; N],
) -> (f32, f32) {
    let nmax = grid.nmax;
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        *codes = [0; N];
        return (0.0, -min);
    }
    let error = |d: f32| if grid.absolute_error { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..N {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        codes[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * error(diff);
    }
    let mut trial = [0u8; N];
    for step in 0..=grid.steps {
        iscale = (grid.rmin + grid.rdelta * step as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..N {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            trial[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..N {
                let diff = this_scale * trial[i] as f32 + this_min - x[i];
                cur_error += weights[i] * error(diff);
            }
            if cur_error < best_error {
                *codes = trial;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Four 2-bit codes per byte: byte `32 h + l` holds codes `128 h + 32 k + l` in bits `2k`.
fn pack_2bit(codes: &[u8; 256], qs: &mut [u8]) {
    for h in 0..2 {
        for l in 0..32 {
            let c = |k: usize| codes[128 * h + 32 * k + l];
            qs[32 * h + l] = c(0) | (c(1) << 2) | (c(2) << 4) | (c(3) << 6);
        }
    }
}

/// Q2_K (84 B: `scales[16], qs[64], d, dmin`): 16 sub-blocks of 16, each `x ≈ dl q - ml` with
/// 4-bit `dl / d` and `ml / dmin`.
fn q2_k_block(x: &[f32; 256], y: &mut [u8; 84]) {
    const GRID: ScaleMinGrid = ScaleMinGrid {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        steps: 15,
        absolute_error: true,
    };
    let (subs, _) = x.as_chunks::<16>();
    let mut codes = [0u8; 256];
    let mut scales = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, sub) in subs.iter().enumerate() {
        let mut weights = [0.0f32; 16];
        for (w, &v) in weights.iter_mut().zip(sub) {
            *w = v.abs();
        }
        let part: &mut [u8; 16] = (&mut codes[16 * j..16 * j + 16]).try_into().unwrap();
        (scales[j], mins[j]) = scale_min_search(&GRID, sub, &weights, part);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let mut packed = [0u8; 16];
    let d = if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (p, &s) in packed.iter_mut().zip(&scales) {
            *p = nearest_int(iscale * s) as u8;
        }
        f16_bits(max_scale / 15.0)
    } else {
        f16_bits(0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (p, &m) in packed.iter_mut().zip(&mins) {
            *p |= (nearest_int(iscale * m) << 4) as u8;
        }
        f16_bits(max_min / 15.0)
    } else {
        f16_bits(0.0)
    };
    let (d_value, dmin_value) = (f16_value(d), f16_value(dmin));
    for (j, sub) in subs.iter().enumerate() {
        let dl = d_value * f32::from(packed[j] & 0x0f);
        if dl == 0.0 {
            continue;
        }
        let ml = dmin_value * f32::from(packed[j] >> 4);
        for (c, &v) in codes[16 * j..16 * j + 16].iter_mut().zip(sub) {
            *c = nearest_int((v + ml) / dl).clamp(0, 3) as u8;
        }
    }
    y[..16].copy_from_slice(&packed);
    pack_2bit(&codes, &mut y[16..80]);
    y[80..82].copy_from_slice(&d);
    y[82..84].copy_from_slice(&dmin);
}

/// Q3_K (110 B: `hmask[32], qs[64], scales[12], d`): 16 sub-blocks of 16, `x ≈ d (sc - 32) q`
/// with 6-bit `sc` and `q in [-4, 4)`.
fn q3_k_block(x: &[f32; 256], y: &mut [u8; 110]) {
    let (subs, _) = x.as_chunks::<16>();
    let mut codes = [0u8; 256];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for (j, sub) in subs.iter().enumerate() {
        let part: &mut [u8; 16] = (&mut codes[16 * j..16 * j + 16]).try_into().unwrap();
        scales[j] = q3_scale_search(sub, part);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    let mut packed = [0u8; 12];
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &s) in scales.iter().enumerate() {
            // The reference stores the rounded value in an i8 before clamping.
            let l = i32::from(nearest_int(iscale * s) as i8).clamp(-32, 31) + 32;
            if j < 8 {
                packed[j] = (l & 0x0f) as u8;
            } else {
                packed[j - 8] |= ((l & 0x0f) << 4) as u8;
            }
            packed[8 + j % 4] |= ((l >> 4) << (2 * (j / 4))) as u8;
        }
        f16_bits(1.0 / iscale)
    } else {
        f16_bits(0.0)
    };
    let d_value = f16_value(d);
    for (j, sub) in subs.iter().enumerate() {
        let low = if j < 8 {
            packed[j] & 0x0f
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        let sc = i32::from(low | (high << 4)) - 32;
        let dl = d_value * sc as f32;
        if dl == 0.0 {
            continue;
        }
        for (c, &v) in codes[16 * j..16 * j + 16].iter_mut().zip(sub) {
            *c = (nearest_int(v / dl).clamp(-4, 3) + 4) as u8;
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    hmask.fill(0);
    for (e, c) in codes.iter_mut().enumerate() {
        if *c > 3 {
            hmask[e % 32] |= 1 << (e / 32);
            *c -= 4;
        }
    }
    pack_2bit(&codes, &mut rest[..64]);
    rest[64..76].copy_from_slice(&packed);
    rest[76..78].copy_from_slice(&d);
}

/// The 8 sub-block (scale, min) pairs of Q4_K / Q5_K, each 6 bits, in ggml's 12 bytes:
/// sub-blocks 0..4 in the low 6 bits of bytes 0..4 (scale) and 4..8 (min); 4..8 as nibbles of
/// bytes 8..12 with their top 2 bits in the top bits of bytes 0..8 (`get_scale_min_k4`).
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[..4].copy_from_slice(&ls[..4]);
    s[4..8].copy_from_slice(&lm[..4]);
    for j in 4..8 {
        s[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
        s[j - 4] |= (ls[j] >> 4) << 6;
        s[j] |= (lm[j] >> 4) << 6;
    }
    s
}

/// The scale and min codes of sub-block `j` from the 12 bytes (`get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// What Q4_K and Q5_K share: 8 sub-blocks of 32, `x ≈ (d sc) q - dmin m` with 6-bit `sc, m`
/// and `q in [0, nmax]`. Returns the codes, `d`, `dmin` and the 12 scale bytes.
fn scale_min_super_block(
    grid: &ScaleMinGrid,
    x: &[f32; 256],
) -> ([u8; 256], [u8; 2], [u8; 2], [u8; 12]) {
    let (subs, _) = x.as_chunks::<32>();
    let mut codes = [0u8; 256];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, sub) in subs.iter().enumerate() {
        let mut sum_x2 = 0.0f32;
        for &v in sub {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0.0f32; 32];
        for (w, &v) in weights.iter_mut().zip(sub) {
            *w = av_x + v.abs();
        }
        let part: &mut [u8; 32] = (&mut codes[32 * j..32 * j + 32]).try_into().unwrap();
        (scales[j], mins[j]) = scale_min_search(grid, sub, &weights, part);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // The reference stores the rounded values in u8s before taking the minimum.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f16_bits(max_scale / 63.0);
    let dmin = f16_bits(max_min / 63.0);
    let (d_value, dmin_value) = (f16_value(d), f16_value(dmin));
    for (j, sub) in subs.iter().enumerate() {
        let (sc, m) = scale_min_k4(j, &packed);
        let dl = d_value * f32::from(sc);
        if dl == 0.0 {
            continue;
        }
        let ml = dmin_value * f32::from(m);
        for (c, &v) in codes[32 * j..32 * j + 32].iter_mut().zip(sub) {
            *c = nearest_int((v + ml) / dl).clamp(0, grid.nmax) as u8;
        }
    }
    (codes, d, dmin, packed)
}

/// Q4_K (144 B: `d, dmin, scales[12], qs[128]`).
fn q4_k_block(x: &[f32; 256], y: &mut [u8; 144]) {
    const GRID: ScaleMinGrid = ScaleMinGrid {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        steps: 20,
        absolute_error: false,
    };
    let (codes, d, dmin, packed) = scale_min_super_block(&GRID, x);
    y[..2].copy_from_slice(&d);
    y[2..4].copy_from_slice(&dmin);
    y[4..16].copy_from_slice(&packed);
    for h in 0..4 {
        for l in 0..32 {
            y[16 + 32 * h + l] = codes[64 * h + l] | (codes[64 * h + 32 + l] << 4);
        }
    }
}

/// Q5_K (176 B: `d, dmin, scales[12], qh[32], qs[128]`): Q4_K's nibbles plus bit 4 of code
/// `e` in bit `e / 32` of `qh[e % 32]`.
fn q5_k_block(x: &[f32; 256], y: &mut [u8; 176]) {
    const GRID: ScaleMinGrid = ScaleMinGrid {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        steps: 15,
        absolute_error: false,
    };
    let (codes, d, dmin, packed) = scale_min_super_block(&GRID, x);
    y[..2].copy_from_slice(&d);
    y[2..4].copy_from_slice(&dmin);
    y[4..16].copy_from_slice(&packed);
    let (qh, qs) = y[16..].split_at_mut(32);
    qh.fill(0);
    for h in 0..4 {
        for l in 0..32 {
            let (lo, hi) = (codes[64 * h + l], codes[64 * h + 32 + l]);
            qh[l] |= ((lo >> 4) << (2 * h)) | ((hi >> 4) << (2 * h + 1));
            qs[32 * h + l] = (lo & 0x0f) | ((hi & 0x0f) << 4);
        }
    }
}

/// Q6_K (210 B: `ql[128], qh[64], scales[16]: i8, d`): 16 sub-blocks of 16,
/// `x ≈ d sc (q - 32)` with 8-bit signed `sc` and 6-bit `q`.
fn q6_k_block(x: &[f32; 256], y: &mut [u8; 210]) {
    let (subs, _) = x.as_chunks::<16>();
    let mut codes = [0u8; 256];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for (j, sub) in subs.iter().enumerate() {
        let part: &mut [u8; 16] = (&mut codes[16 * j..16 * j + 16]).try_into().unwrap();
        scales[j] = symmetric_scale_search(32, sub, part);
        if scales[j].abs() > max_abs_scale {
            max_abs_scale = scales[j].abs();
            max_scale = scales[j];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16_bits(1.0 / iscale);
    let mut sc = [0i8; 16];
    for (q, &s) in sc.iter_mut().zip(&scales) {
        *q = nearest_int(iscale * s).min(127) as i8;
    }
    let d_value = f16_value(d);
    for (j, sub) in subs.iter().enumerate() {
        let dl = d_value * f32::from(sc[j]);
        if dl == 0.0 {
            continue;
        }
        for (c, &v) in codes[16 * j..16 * j + 16].iter_mut().zip(sub) {
            *c = (nearest_int(v / dl).clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, rest) = y.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    for h in 0..2 {
        for l in 0..32 {
            let c = |k: usize| codes[128 * h + 32 * k + l];
            ql[64 * h + l] = (c(0) & 0x0f) | ((c(2) & 0x0f) << 4);
            ql[64 * h + 32 + l] = (c(1) & 0x0f) | ((c(3) & 0x0f) << 4);
            qh[32 * h + l] =
                (c(0) >> 4) | ((c(1) >> 4) << 2) | ((c(2) >> 4) << 4) | ((c(3) >> 4) << 6);
        }
    }
    for (b, &s) in rest[..16].iter_mut().zip(&sc) {
        *b = s as u8;
    }
    rest[16..18].copy_from_slice(&d);
}

// ----------------------------------------------------------------------------------------
// llama.cpp's IQ4 quantizers (`quantize_iq4_nl`, `quantize_iq4_xs` without importance
// weights, what llama-quantize writes; `quantize_row_iq4_nl_ref` tries no scales and differs)

/// The 16 non-uniform levels of IQ4_NL and IQ4_XS (`kvalues_iq4nl`).
const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The index of the level nearest `x` (the upper one on ties), by bisection as ggml's
/// `best_index_int8` does it.
#[inline(always)]
fn nearest_iq4_level(x: f32) -> u8 {
    let level = |i: usize| f32::from(IQ4_LEVELS[i]);
    if x <= level(0) {
        return 0;
    }
    if x >= level(15) {
        return 15;
    }
    let (mut low, mut high) = (0usize, 15usize);
    while high - low > 1 {
        let mid = (low + high) / 2;
        if x < level(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    if x - level(high - 1) < level(high) - x {
        (high - 1) as u8
    } else {
        high as u8
    }
}

/// The scale of one group of 32 for the IQ4 levels, weights x²: the least-squares scale of
/// the codes at `max / 127`, then of the codes at each inverse scale `(k - 127) / max`,
/// k = -7..=7, kept when it explains more of Σ w x q (`quantize_row_iq4_nl_impl`, ntry 7).
/// Leaves the codes of the first trial in `codes`; returns 0 for an all-zero group.
fn iq4_group_scale(x: &[f32; 32], codes: &mut [u8; 32]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let first = f32::from(IQ4_LEVELS[0]);
    let id = 1.0 / (-max / first);
    let (mut sum_wqx, mut sum_wq2) = (0.0f32, 0.0f32);
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = nearest_iq4_level(id * v);
        let q = f32::from(IQ4_LEVELS[usize::from(*c)]);
        let w = v * v;
        sum_wqx += w * q * v;
        sum_wq2 += w * q * q;
    }
    let mut d = if sum_wq2 > 0.0 {
        sum_wqx / sum_wq2
    } else {
        0.0
    };
    let mut best = d * sum_wqx;
    for step in -7..=7 {
        let id = (step + i32::from(IQ4_LEVELS[0])) as f32 / max;
        let (mut sum_wqx, mut sum_wq2) = (0.0f32, 0.0f32);
        for &v in x {
            let q = f32::from(IQ4_LEVELS[usize::from(nearest_iq4_level(id * v))]);
            let w = v * v;
            sum_wqx += w * q * v;
            sum_wq2 += w * q * q;
        }
        if sum_wq2 > 0.0 && sum_wqx * sum_wqx > best * sum_wq2 {
            d = sum_wqx / sum_wq2;
            best = d * sum_wqx;
        }
    }
    d
}

/// Two codes a byte: byte `j` of each 16 holds codes `j` (low) and `j + 16` (high) of its 32.
fn pack_iq4(codes: &[u8], qs: &mut [u8]) {
    for (group, out) in codes.chunks_exact(32).zip(qs.chunks_exact_mut(16)) {
        for j in 0..16 {
            out[j] = group[j] | (group[j + 16] << 4);
        }
    }
}

/// IQ4_NL (18 B: `d, qs[16]`): `x ≈ d K[q]`.
fn iq4_nl_block(x: &[f32; 32], y: &mut [u8; 18]) {
    let mut codes = [0u8; 32];
    let d = iq4_group_scale(x, &mut codes);
    y[..2].copy_from_slice(&f16_bits(d));
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = nearest_iq4_level(id * v);
    }
    pack_iq4(&codes, &mut y[2..]);
}

/// IQ4_XS (136 B: `d, scales_h: u16, scales_l[4], qs[128]`): 8 groups of 32,
/// `x ≈ d (ls - 32) K[q]` with 6-bit `ls`.
fn iq4_xs_block(x: &[f32; 256], y: &mut [u8; 136]) {
    let (groups, _) = x.as_chunks::<32>();
    let mut codes = [0u8; 256];
    let mut scales = [0.0f32; 8];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for (g, group) in groups.iter().enumerate() {
        let part: &mut [u8; 32] = (&mut codes[32 * g..32 * g + 32]).try_into().unwrap();
        scales[g] = iq4_group_scale(group, part);
        if scales[g].abs() > amax_scale {
            amax_scale = scales[g].abs();
            max_scale = scales[g];
        }
    }
    // The codes use the f32 super-block scale; only the stored one is rounded to f16.
    let d = -max_scale / 32.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let mut scales_l = [0u8; 4];
    for (g, group) in groups.iter().enumerate() {
        let l = nearest_int(id * scales[g]).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for (c, &v) in codes[32 * g..32 * g + 32].iter_mut().zip(group) {
            *c = nearest_iq4_level(idl * v);
        }
        let stored = (l + 32) as u8;
        scales_l[g / 2] |= (stored & 0x0f) << (4 * (g % 2));
        scales_h |= u16::from(stored >> 4) << (2 * g);
    }
    y[..2].copy_from_slice(&f16_bits(d));
    y[2..4].copy_from_slice(&scales_h.to_le_bytes());
    y[4..8].copy_from_slice(&scales_l);
    pack_iq4(&codes, &mut y[8..]);
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
