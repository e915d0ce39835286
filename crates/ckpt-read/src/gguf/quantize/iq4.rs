//! llama.cpp's IQ4 quantizers (`quantize_iq4_nl`, `quantize_iq4_xs` without importance
//! weights: what llama-quantize writes; `quantize_row_iq4_nl_ref` tries no scales and gives
//! other bytes).

use super::f16_bits;
use super::kquant::{GROUP_MAX_EPS, nearest_int, signed_max};

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
pub(super) fn iq4_nl_block(x: &[f32; 32], y: &mut [u8; 18]) {
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
pub(super) fn iq4_xs_block(x: &[f32; 256], y: &mut [u8; 136]) {
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
