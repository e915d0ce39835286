//! Dequantization of the ggml block types to f32, bit for bit as gguf-py 0.19.0's
//! `gguf.quants.dequantize` computes it: every product and difference in f32, in the order
//! `quants.py` writes it (`../shared/research/quant-formats-2026.md` B.2 lists each layout
//! and order).
//!
//! [`dequantize`] turns whole blocks into f32 values; [`decode_into`] gives any element
//! range of a tensor as f64 (what `pass::Slice::values_into` hands visitors), decoding one
//! block at a time into a buffer on the stack, so a 30 GB file costs no allocation.
//!
//! ```
//! use ckpt_read::gguf::{GgmlType, dequantize};
//! // One Q8_0 block: d = 0.5 (f16 0x3800), then 32 signed codes.
//! let mut block = vec![0x00, 0x38];
//! block.extend((0..32).map(|i| (i as i8 - 16) as u8));
//! let mut out = [0f32; 32];
//! dequantize(GgmlType::Q8_0, &block, &mut out);
//! assert_eq!(out[0], -8.0);
//! assert_eq!(out[31], 7.5);
//! ```

use half::f16;

use super::GgmlType;

/// IQ4_NL's and IQ4_XS's non-linear code book (`IQ4_NL.kvalues`).
const KVALUES: [f32; 16] = [
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0,
    89.0, 113.0,
];

/// The f16 at `b[at..at + 2]`, widened (exactly) to f32.
#[inline]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Decodes whole blocks of type `ty`: `bytes` holds `k` blocks (`k · type_size` bytes) and
/// `out` receives their `k · block_size` values.
///
/// # Panics
/// When the lengths are not those of the same whole number of blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    assert!(
        bytes.len().is_multiple_of(ts) && out.len() == bytes.len() / ts * bs,
        "{} bytes are not the blocks of {} {} values",
        bytes.len(),
        out.len(),
        ty.name()
    );
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        GgmlType::Bf16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        _ => {
            let block = block_fn(ty);
            for (b, o) in bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
                block(b, o);
            }
        }
    }
}

/// The byte range, within a tensor's data, of the blocks holding elements `start..end`.
pub fn byte_range(ty: GgmlType, start: usize, end: usize) -> (usize, usize) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    (start / bs * ts, end.div_ceil(bs) * ts)
}

/// Elements `start..start + out.len()` of a tensor of type `ty`, widened exactly to f64:
/// `bytes` are the blocks that hold them, as [`byte_range`] gives them (so the first block
/// is the one holding element `start`).
pub fn decode_into(ty: GgmlType, bytes: &[u8], start: usize, out: &mut [f64]) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if bs == 1 {
        let mut buf = [0f32; 256];
        for (o, b) in out.chunks_mut(256).zip(bytes.chunks(256 * ts)) {
            dequantize(ty, &b[..o.len() * ts], &mut buf[..o.len()]);
            for (d, s) in o.iter_mut().zip(&buf) {
                *d = *s as f64;
            }
        }
        return;
    }
    let block = block_fn(ty);
    let mut buf = [0f32; 256];
    let mut skip = start % bs;
    let mut done = 0;
    for b in bytes.chunks_exact(ts) {
        if done == out.len() {
            break;
        }
        block(b, &mut buf[..bs]);
        let take = (bs - skip).min(out.len() - done);
        for (d, s) in out[done..done + take]
            .iter_mut()
            .zip(&buf[skip..skip + take])
        {
            *d = *s as f64;
        }
        done += take;
        skip = 0;
    }
    assert_eq!(done, out.len(), "the bytes hold the elements asked for");
}

type BlockFn = fn(&[u8], &mut [f32]);

/// The decoder of one block of a quantized type.
fn block_fn(ty: GgmlType) -> BlockFn {
    match ty {
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q2K => q2_k,
        GgmlType::Q3K => q3_k,
        GgmlType::Q4K => q4_k,
        GgmlType::Q5K => q5_k,
        GgmlType::Q6K => q6_k,
        GgmlType::Iq4Nl => iq4_nl,
        GgmlType::Iq4Xs => iq4_xs,
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => {
            unreachable!("float types have no blocks")
        }
    }
}

/// The 4-bit code of element `e` (0..32) of a 16-byte nibble plane: low nibbles first.
#[inline]
fn nibble(qs: &[u8], e: usize) -> u8 {
    if e < 16 { qs[e] & 15 } else { qs[e - 16] >> 4 }
}

/// Q8_0: `d:f16, qs[32]:i8`, `x = q · d`.
fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = (q as i8 as f32) * d;
    }
}

/// Q4_0: `d:f16, qs[16]`, `x = d · (q − 8)`.
fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let qs = &b[2..18];
    for (e, o) in out.iter_mut().enumerate() {
        *o = d * ((nibble(qs, e) as i32 - 8) as f32);
    }
}

/// Q4_1: `d:f16, m:f16, qs[16]`, `x = d · q + m`.
fn q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qs = &b[4..20];
    for (e, o) in out.iter_mut().enumerate() {
        *o = d * (nibble(qs, e) as f32) + m;
    }
}

/// The 5-bit code of element `e`: the nibble and bit `e` of `qh` as bit 4.
#[inline]
fn five_bits(qh: u32, qs: &[u8], e: usize) -> u8 {
    nibble(qs, e) | ((((qh >> e) & 1) as u8) << 4)
}

/// Q5_0: `d:f16, qh:u32, qs[16]`, `x = d · (q − 16)`.
fn q5_0(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for (e, o) in out.iter_mut().enumerate() {
        *o = d * ((five_bits(qh, qs, e) as i32 - 16) as f32);
    }
}

/// Q5_1: `d:f16, m:f16, qh:u32, qs[16]`, `x = d · q + m`.
fn q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for (e, o) in out.iter_mut().enumerate() {
        *o = d * (five_bits(qh, qs, e) as f32) + m;
    }
}

/// Q2_K: `scales[16], qs[64], d:f16, dmin:f16`; per 16 elements `dl = d · (s & 15)`,
/// `ml = dmin · (s >> 4)`, `x = dl · q − ml`.
fn q2_k(b: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (half(b, 80), half(b, 82));
    for (s, o) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * ((scales[s] & 15) as f32);
        let ml = dmin * ((scales[s] >> 4) as f32);
        // Elements 16s..16s+16 share h = e/128, k = (e%128)/32 and run j over one half.
        let e0 = 16 * s;
        let (h, k, j0) = (e0 / 128, (e0 % 128) / 32, e0 % 32);
        let plane = &qs[32 * h + j0..32 * h + j0 + 16];
        for (x, &q) in o.iter_mut().zip(plane) {
            *x = dl * (((q >> (2 * k)) & 3) as f32) - ml;
        }
    }
}

/// Q3_K: `hmask[32], qs[64], scales[12], d:f16`; 6-bit signed scales per 16 elements,
/// `x = (d · sc) · q` with `q = low2 − (hbit ? 0 : 4)`.
fn q3_k(b: &[u8], out: &mut [f32]) {
    let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
    let d = half(b, 108);
    for (s, o) in out.chunks_exact_mut(16).enumerate() {
        let lo = if s < 8 {
            scales[s] & 15
        } else {
            scales[s - 8] >> 4
        };
        let hi = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
        let sc = (lo | (hi << 4)) as i32 - 32;
        let dl = d * (sc as f32);
        let e0 = 16 * s;
        let (h, k, j0) = (e0 / 128, (e0 % 128) / 32, e0 % 32);
        for (i, x) in o.iter_mut().enumerate() {
            let (e, j) = (e0 + i, j0 + i);
            let low = ((qs[32 * h + j] >> (2 * k)) & 3) as i32;
            let hbit = (hmask[e % 32] >> (e / 32)) & 1;
            let q = low - if hbit == 1 { 0 } else { 4 };
            *x = dl * (q as f32);
        }
    }
}

/// Q4_K's and Q5_K's eight 6-bit scales and mins, from their 12 packed bytes.
#[inline]
fn scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for i in 0..4 {
        sc[i] = s[i] & 63;
        m[i] = s[i + 4] & 63;
        sc[i + 4] = (s[i + 8] & 15) | ((s[i] >> 6) << 4);
        m[i + 4] = (s[i + 8] >> 4) | ((s[i + 4] >> 6) << 4);
    }
    (sc, m)
}

/// Q4_K: `d:f16, dmin:f16, scales[12], qs[128]`; per 32 elements
/// `x = (d · sc) · q − (dmin · m)`.
fn q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (sc, m) = scales_mins(&b[4..16]);
    let qs = &b[16..144];
    for (s, o) in out.chunks_exact_mut(32).enumerate() {
        let dl = d * (sc[s] as f32);
        let ml = dmin * (m[s] as f32);
        let plane = &qs[32 * (s / 2)..32 * (s / 2) + 32];
        let shift = 4 * (s % 2);
        for (x, &q) in o.iter_mut().zip(plane) {
            *x = dl * (((q >> shift) & 15) as f32) - ml;
        }
    }
}

/// Q5_K: Q4_K with a fifth bit per element from `qh[32]`.
fn q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (sc, m) = scales_mins(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (s, o) in out.chunks_exact_mut(32).enumerate() {
        let dl = d * (sc[s] as f32);
        let ml = dmin * (m[s] as f32);
        let plane = &qs[32 * (s / 2)..32 * (s / 2) + 32];
        let shift = 4 * (s % 2);
        for ((x, &q), &h) in o.iter_mut().zip(plane).zip(qh) {
            let q = ((q >> shift) & 15) | (((h >> s) & 1) << 4);
            *x = dl * (q as f32) - ml;
        }
    }
}

/// Q6_K: `ql[128], qh[64], scales[16]:i8, d:f16`; per 16 elements `x = (d · sc) · q`,
/// `q = (low4 | high2 << 4) − 32`.
fn q6_k(b: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for (s, o) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * (scales[s] as i8 as f32);
        let e0 = 16 * s;
        let (h, r0) = (e0 / 128, e0 % 128);
        for (i, x) in o.iter_mut().enumerate() {
            let r = r0 + i;
            let lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 15;
            let hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
            let q = (lo | (hi << 4)) as i32 - 32;
            *x = dl * (q as f32);
        }
    }
}

/// IQ4_NL: `d:f16, qs[16]`, `x = d · K[nibble]`.
fn iq4_nl(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let qs = &b[2..18];
    for (e, o) in out.iter_mut().enumerate() {
        *o = d * KVALUES[nibble(qs, e) as usize];
    }
}

/// IQ4_XS: `d:f16, scales_h:u16, scales_l[4], qs[128]`; per 32 elements a 6-bit scale
/// `ls`, `x = (d · (ls − 32)) · K[nibble]`.
fn iq4_xs(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (s, o) in out.chunks_exact_mut(32).enumerate() {
        let low = (scales_l[s / 2] >> (4 * (s % 2))) & 15;
        let high = ((scales_h >> (2 * s)) & 3) as u8;
        let ls = (low | (high << 4)) as i32 - 32;
        let dl = d * (ls as f32);
        let plane = &qs[16 * s..16 * s + 16];
        for (e, x) in o.iter_mut().enumerate() {
            *x = dl * KVALUES[nibble(plane, e) as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Q4_K block whose every field a test sets by hand.
    fn q4k_block(d: f32, dmin: f32, scales: [u8; 12], qs: impl Fn(usize) -> u8) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(f16::from_f32(d).to_le_bytes());
        b.extend(f16::from_f32(dmin).to_le_bytes());
        b.extend(scales);
        b.extend((0..128).map(qs));
        b
    }

    #[test]
    fn q4_k_scales_and_nibbles_land_where_the_layout_says() {
        // Sub-block 5: sc = (scales[9] & 15) | (scales[1] >> 6) << 4 = 3 | 2 << 4 = 35,
        // m = (scales[9] >> 4) | (scales[5] >> 6) << 4 = 1 | 1 << 4 = 17.
        let mut scales = [0u8; 12];
        scales[1] = 0b1000_0000;
        scales[5] = 0b0100_0000;
        scales[9] = 0x13;
        // Element 5·32 + 7 = 167 is the high nibble of qs[32·2 + 7].
        let b = q4k_block(0.5, 0.25, scales, |i| if i == 71 { 0x90 } else { 0 });
        let mut out = [0f32; 256];
        dequantize(GgmlType::Q4K, &b, &mut out);
        assert_eq!(out[167], 0.5 * 35.0 * 9.0 - 0.25 * 17.0);
        assert_eq!(out[166], -0.25 * 17.0);
    }

    #[test]
    fn decode_into_starts_inside_a_block() {
        let mut b = vec![0x00, 0x3c]; // d = 1
        b.extend((0..32).map(|i| i as u8));
        b.extend([0x00, 0x40]); // d = 2
        b.extend((0..32).map(|i| (100 + i) as u8));
        let mut all = [0f32; 64];
        dequantize(GgmlType::Q8_0, &b, &mut all);
        let (from, to) = byte_range(GgmlType::Q8_0, 30, 35);
        assert_eq!((from, to), (0, 68));
        let mut out = [0f64; 5];
        decode_into(GgmlType::Q8_0, &b[from..to], 30, &mut out);
        assert_eq!(out, [30.0, 31.0, 200.0, 202.0, 204.0]);
        let (from, to) = byte_range(GgmlType::Q8_0, 33, 34);
        decode_into(GgmlType::Q8_0, &b[from..to], 33, &mut out[..1]);
        assert_eq!(out[0], 202.0);
    }

    #[test]
    fn float_types_decode_exactly() {
        let mut out = [0f64; 2];
        decode_into(GgmlType::Bf16, &[0x80, 0x3f, 0x00, 0xc0], 0, &mut out);
        assert_eq!(out, [1.0, -2.0]);
        decode_into(GgmlType::F16, &[0x00, 0x3c, 0x00, 0x7c], 0, &mut out);
        assert_eq!(out, [1.0, f64::INFINITY]);
    }
}
