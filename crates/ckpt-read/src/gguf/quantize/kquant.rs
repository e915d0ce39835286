//! llama.cpp's K quantizers (`ggml/src/ggml-quants.c` `quantize_row_q{2..6}_K_ref`, no
//! importance matrix), their f32 operations in the reference's order.

use super::{f16_bits, f16_value};

/// Groups of this size or smaller in magnitude are all-zero groups (`GROUP_MAX_EPS`).
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// Rounds to the nearest integer, ties to even, by adding 1.5 * 2^23 and reading the
/// mantissa (ggml's `nearest_int`; exact for |v| <= 2^22 - 1, the only range it is used on).
#[inline(always)]
pub(super) fn nearest_int(v: f32) -> i32 {
    let shifted = v + 12_582_912.0;
    (shifted.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The value of largest magnitude in `x` (the first on ties) and that magnitude.
#[inline(always)]
pub(super) fn signed_max<const N: usize>(x: &[f32; N]) -> (f32, f32) {
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
pub(super) fn q2_k_block(x: &[f32; 256], y: &mut [u8; 84]) {
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
pub(super) fn q3_k_block(x: &[f32; 256], y: &mut [u8; 110]) {
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
pub(super) fn q4_k_block(x: &[f32; 256], y: &mut [u8; 144]) {
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
pub(super) fn q5_k_block(x: &[f32; 256], y: &mut [u8; 176]) {
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
pub(super) fn q6_k_block(x: &[f32; 256], y: &mut [u8; 210]) {
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
