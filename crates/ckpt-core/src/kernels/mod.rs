//! The inner loops: reading stored floats as f64, dot products, Gram matrices, and the
//! element-wise arithmetic of merges. The only place that knows about AVX2/F16C/FMA.
//!
//! Accuracy by construction: every stored format converts to f64 exactly, the product of
//! two such values is exact in f64 (at most 2 x 53 bits are never needed: f32 x f32 needs
//! 48), and sums are accumulated in f64 lanes in a fixed order. So a dot product carries
//! only the rounding of f64 additions, whatever the thread count, and the SIMD and portable
//! paths differ only in the order of those additions.
//!
//! Dispatch happens once per call on a cached CPU check ([`level`]); set
//! `CKPT_DIFF_KERNELS=portable` to force the portable path (tests compare both). NaN policy:
//! NaN and infinities propagate through every kernel as IEEE arithmetic says; callers that
//! must not sum them (validation) count them first.
//!
//! ```
//! use ckpt_core::kernels;
//! let a = [1.0, 2.0, 3.0];
//! let b = [4.0, 5.0, 6.0];
//! assert_eq!(kernels::dot(&a, &b), 32.0);
//! ```

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_512;

use std::sync::OnceLock;

use ckpt_read::dtype::FloatFormat;

/// Elements per inner chunk: f64 rows of this length for a few models stay in L1/L2.
pub const CHUNK: usize = 2048;

/// Which implementation the kernels use on this machine, from slowest to fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 F/DQ/BW/VL (and AVX2).
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

/// Every level this CPU supports, slowest first (tests run each).
pub fn available_levels() -> Vec<Level> {
    let mut v = vec![Level::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            v.push(Level::Avx2);
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                v.push(Level::Avx512);
            }
        }
    }
    v
}

/// The kernel level for this process: the best the CPU has, capped by
/// `CKPT_DIFF_KERNELS=portable|avx2|avx512` if set.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = *available_levels()
            .last()
            .expect("portable is always available");
        let cap = match ckpt_read::env::KERNELS.get().as_deref() {
            Some("portable") => Level::Portable,
            Some("avx2") => Level::Avx2,
            Some("avx512") => Level::Avx512,
            _ => Level::Avx512,
        };
        best.min(cap)
    })
}

/// Converts stored little-endian elements of `format` to f64: `dst[i] = value(src[i])`.
///
/// `src` holds exactly `dst.len()` elements and may start at any address.
pub fn to_f64(format: FloatFormat, src: &[u8], dst: &mut [f64]) {
    to_f64_at(level(), format, src, dst)
}

/// [`to_f64`] by the portable code whatever the CPU, for tests that compare the paths.
pub fn portable_to_f64(format: FloatFormat, src: &[u8], dst: &mut [f64]) {
    assert_eq!(
        src.len(),
        dst.len() * format.size(),
        "to_f64: length mismatch"
    );
    portable::to_f64(format, src, dst)
}

fn to_f64_at(level: Level, format: FloatFormat, src: &[u8], dst: &mut [f64]) {
    assert_eq!(
        src.len(),
        dst.len() * format.size(),
        "to_f64: length mismatch"
    );
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a level is only used once `available_levels` found its CPU features.
        Level::Avx512 => unsafe { x86_512::to_f64(format, src, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::to_f64(format, src, dst) },
        _ => portable::to_f64(format, src, dst),
    }
}

/// The largest finite value of a format: where saturating conversions clamp.
pub fn largest_finite(format: FloatFormat) -> f64 {
    match format {
        FloatFormat::F16 => 65504.0,
        FloatFormat::BF16 => 3.3895313892515355e38,
        FloatFormat::F32 => f32::MAX as f64,
        FloatFormat::F64 => f64::MAX,
        FloatFormat::F8E4M3 | FloatFormat::F8E5M2 => portable::fp8_max(format),
    }
}

/// The scale a scaled-FP8 tensor whose largest magnitude is `amax` is stored with: `amax`
/// maps to the format's largest finite value. The scale is stored as an f32, so it is
/// rounded to one here (values are divided by the scale readers will multiply by) and
/// kept finite and positive, or readers refuse it or get Inf·0; past f32's range the values
/// saturate instead. 1 for an all-zero tensor.
pub fn fp8_scale(amax: f64, format: FloatFormat) -> f64 {
    let s = amax / largest_finite(format);
    if s > 0.0 && !s.is_nan() {
        s.clamp(f32::MIN_POSITIVE as f64, f32::MAX as f64) as f32 as f64
    } else {
        1.0
    }
}

/// Converts f64 values to stored little-endian `format`, correctly rounded (to nearest,
/// ties to even): `dst[i] = round(src[i])`.
pub fn from_f64(format: FloatFormat, src: &[f64], dst: &mut [u8]) {
    from_f64_at(level(), format, src, dst)
}

fn from_f64_at(level: Level, format: FloatFormat, src: &[f64], dst: &mut [u8]) {
    assert_eq!(
        dst.len(),
        src.len() * format.size(),
        "from_f64: length mismatch"
    );
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 is part of every level above portable.
        Level::Avx2 | Level::Avx512 => unsafe { x86::from_f64(format, src, dst) },
        _ => portable::from_f64(format, src, dst),
    }
}

/// ⟨a, b⟩ = Σ aᵢ bᵢ, accumulated in f64.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    dot_at(level(), a, b)
}

fn dot_at(level: Level, a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `to_f64_at`.
        Level::Avx512 => unsafe { x86_512::dot(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `to_f64_at`.
        Level::Avx2 => unsafe { x86::dot(a, b) },
        _ => portable::dot(a, b),
    }
}

/// ‖a − b‖² = Σ (aᵢ − bᵢ)², differences taken element by element (exact when aᵢ and bᵢ
/// are close), summed in f64.
pub fn dist2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "dist2: length mismatch");
    let mut lanes = [0.0f64; 8];
    let split = a.len() / 8 * 8;
    for (ca, cb) in a[..split].chunks_exact(8).zip(b[..split].chunks_exact(8)) {
        for l in 0..8 {
            let d = ca[l] - cb[l];
            lanes[l] += d * d;
        }
    }
    let mut s: f64 = lanes.iter().sum();
    for i in split..a.len() {
        let d = a[i] - b[i];
        s += d * d;
    }
    s
}

/// ‖a‖² = Σ aᵢ².
pub fn norm_l2_sqr(a: &[f64]) -> f64 {
    dot(a, a)
}

/// Index of (i, j), i ≤ j, in a packed upper-triangular n x n matrix stored row by row.
pub fn packed_index(n: usize, i: usize, j: usize) -> usize {
    debug_assert!(i <= j && j < n);
    i * n - i * (i + 1) / 2 + j
}

/// Length of a packed upper-triangular n x n matrix.
pub fn packed_len(n: usize) -> usize {
    n * (n + 1) / 2
}

/// Adds the Gram matrix of `rows` to `gram`: gram[i,j] += ⟨rowᵢ, rowⱼ⟩ for i ≤ j, packed
/// (see [`packed_index`]). All rows have the same length.
pub fn gram_upper_acc(rows: &[&[f64]], gram: &mut [f64]) {
    let n = rows.len();
    assert_eq!(gram.len(), packed_len(n), "gram: wrong packed length");
    if n == 2 {
        let [aa, ab, bb] = gram2(rows[0], rows[1]);
        gram[0] += aa;
        gram[1] += ab;
        gram[2] += bb;
        return;
    }
    for i in 0..n {
        for j in i..n {
            gram[packed_index(n, i, j)] += dot(rows[i], rows[j]);
        }
    }
}

/// [⟨a,a⟩, ⟨a,b⟩, ⟨b,b⟩] in one sweep (the two-model case of every comparison).
pub fn gram2(a: &[f64], b: &[f64]) -> [f64; 3] {
    gram2_at(level(), a, b)
}

fn gram2_at(level: Level, a: &[f64], b: &[f64]) -> [f64; 3] {
    assert_eq!(a.len(), b.len(), "gram2: length mismatch");
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 is part of every level above portable.
        Level::Avx2 | Level::Avx512 => unsafe { x86::gram2(a, b) },
        _ => portable::gram2(a, b),
    }
}

/// [⟨a,a⟩, ⟨a,b⟩, ⟨b,b⟩] straight from stored little-endian bytes, when both are of the
/// same format and a fused kernel exists for it (F16, BF16, F32 with AVX2 or AVX-512);
/// `None` otherwise, and the caller converts with [`to_f64`] and uses [`gram2`].
pub fn gram2_stored(format: FloatFormat, a: &[u8], b: &[u8]) -> Option<[f64; 3]> {
    gram2_stored_at(level(), format, a, b)
}

fn gram2_stored_at(level: Level, format: FloatFormat, a: &[u8], b: &[u8]) -> Option<[f64; 3]> {
    assert_eq!(a.len(), b.len(), "gram2_stored: length mismatch");
    if !matches!(
        format,
        FloatFormat::F16 | FloatFormat::BF16 | FloatFormat::F32
    ) {
        return None;
    }
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `to_f64_at`.
        Level::Avx512 => Some(unsafe { x86_512::gram2_stored(format, a, b) }),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `to_f64_at`.
        Level::Avx2 => Some(unsafe { x86::gram2_stored(format, a, b) }),
        _ => None,
    }
}

/// y ← c·x + (y if `accumulate`, else 0), with x read from stored little-endian `format`
/// elements: the inner loop of a linear merge, without a converted copy of x.
pub fn axpy_stored(format: FloatFormat, c: f64, x: &[u8], y: &mut [f64], accumulate: bool) {
    axpy_stored_at(level(), format, c, x, y, accumulate)
}

fn axpy_stored_at(
    level: Level,
    format: FloatFormat,
    c: f64,
    x: &[u8],
    y: &mut [f64],
    accumulate: bool,
) {
    assert_eq!(
        x.len(),
        y.len() * format.size(),
        "axpy_stored: length mismatch"
    );
    match (level, format) {
        #[cfg(target_arch = "x86_64")]
        (Level::Avx512, FloatFormat::F16 | FloatFormat::BF16 | FloatFormat::F32) => {
            // SAFETY: as in `to_f64_at`; the format is one the kernel handles.
            unsafe { x86_512::axpy_stored(format, c, x, y, accumulate) }
        }
        _ => {
            let mut tmp = [0.0f64; 256];
            for (xc, yc) in x.chunks(256 * format.size()).zip(y.chunks_mut(256)) {
                let t = &mut tmp[..yc.len()];
                to_f64_at(level, format, xc, t);
                if accumulate {
                    yc.iter_mut().zip(t.iter()).for_each(|(y, x)| *y += c * x);
                } else {
                    yc.iter_mut().zip(t.iter()).for_each(|(y, x)| *y = c * x);
                }
            }
        }
    }
}

/// a ← a − b.
pub fn sub_assign(a: &mut [f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "sub_assign: length mismatch");
    for (x, y) in a.iter_mut().zip(b) {
        *x -= y;
    }
}

/// y ← y + α·x.
pub fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// The oracle: a straight loop with Neumaier-compensated f64 summation of the products
    /// (exact here: the inputs are f32 values), so its own error is far below the kernel's.
    fn dot_oracle(a: &[f64], b: &[f64]) -> f64 {
        let (mut s, mut c) = (0.0f64, 0.0f64);
        for i in 0..a.len() {
            let p = a[i] * b[i];
            let t = s + p;
            c += if s.abs() >= p.abs() {
                (s - t) + p
            } else {
                (p - t) + s
            };
            s = t;
        }
        s + c
    }

    /// Σ|aᵢbᵢ|: the scale a summation error is measured against.
    fn abs_dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum::<f64>() + 1e-300
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                match i % 97 {
                    0 => 65504.0,
                    1 => -65504.0,
                    2 => 0.0,
                    3 => -0.0,
                    4 => 1e-7, // an f16 subnormal
                    _ => u * 4.0,
                }
            })
            .collect()
    }

    fn encode(format: FloatFormat, v: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &x in v {
            match format {
                FloatFormat::F16 => out.extend(f16::from_f32(x).to_le_bytes()),
                FloatFormat::BF16 => out.extend(bf16::from_f32(x).to_le_bytes()),
                FloatFormat::F32 => out.extend(x.to_le_bytes()),
                FloatFormat::F64 => out.extend((x as f64).to_le_bytes()),
                _ => unreachable!(),
            }
        }
        out
    }

    fn decode_oracle(format: FloatFormat, bytes: &[u8]) -> Vec<f64> {
        match format {
            FloatFormat::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            FloatFormat::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            FloatFormat::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            FloatFormat::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            _ => unreachable!(),
        }
    }

    const LENGTHS: [usize; 7] = [0, 1, 7, 17, 1023, 4099, 1_000_003];

    #[test]
    fn conversions_are_exact_at_every_level() {
        for format in [
            FloatFormat::F16,
            FloatFormat::BF16,
            FloatFormat::F32,
            FloatFormat::F64,
        ] {
            for n in LENGTHS {
                let v = values(n, n as u64 + 1);
                // Offset by one byte so that the data is unaligned, as in real files.
                let mut bytes = vec![0u8];
                bytes.extend(encode(format, &v));
                let src = &bytes[1..];
                let want = decode_oracle(format, src);
                for level in available_levels() {
                    let mut got = vec![0.0; n];
                    to_f64_at(level, format, src, &mut got);
                    assert!(bitwise_eq(&got, &want), "{format:?} n={n} {level:?}");
                }
            }
        }
    }

    fn bitwise_eq(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn dots_agree_with_the_oracle() {
        // f64 summation over n terms: error below n·ε·Σ|aᵢbᵢ| in the worst case.
        for n in LENGTHS {
            let a: Vec<f64> = values(n, 3).iter().map(|&x| x as f64).collect();
            let b: Vec<f64> = values(n, 5).iter().map(|&x| x as f64 * 0.5).collect();
            let bound = |x: &[f64], y: &[f64]| (n as f64 + 1.0) * f64::EPSILON * abs_dot(x, y);
            let want = dot_oracle(&a, &b);
            for got in [dot(&a, &b), portable::dot(&a, &b)] {
                assert!(
                    (got - want).abs() <= bound(&a, &b),
                    "n={n}: {got} vs {want}"
                );
            }
            for [aa, ab, bb] in [gram2(&a, &b), portable::gram2(&a, &b)] {
                assert!(
                    (aa - dot_oracle(&a, &a)).abs() <= bound(&a, &a),
                    "gram2 aa n={n}"
                );
                assert!((ab - want).abs() <= bound(&a, &b), "gram2 ab n={n}");
                assert!(
                    (bb - dot_oracle(&b, &b)).abs() <= bound(&b, &b),
                    "gram2 bb n={n}"
                );
            }
        }
        // Typical error is far below the bound: check a realistic case tightly.
        let a: Vec<f64> = (0..100_000u64)
            .map(|i| ((i * 7919) % 1000) as f64 / 997.0 - 0.5)
            .collect();
        let b: Vec<f64> = (0..100_000u64)
            .map(|i| ((i * 104_729) % 1000) as f64 / 991.0 - 0.5)
            .collect();
        let want = dot_oracle(&a, &b);
        assert!((dot(&a, &b) - want).abs() <= 1e-12 * abs_dot(&a, &b));
    }

    #[test]
    fn fused_gram2_agrees_with_the_oracle() {
        for format in [FloatFormat::F16, FloatFormat::BF16, FloatFormat::F32] {
            for n in LENGTHS {
                let va = values(n, 11);
                let vb: Vec<f32> = values(n, 13).iter().map(|x| x * 0.25).collect();
                // Unaligned starts, as in files.
                let mut ba = vec![7u8];
                ba.extend(encode(format, &va));
                let mut bb = vec![0u8, 1, 2];
                bb.extend(encode(format, &vb));
                let (sa, sb) = (&ba[1..], &bb[3..]);
                let (da, db) = (decode_oracle(format, sa), decode_oracle(format, sb));
                for level in available_levels() {
                    let Some([aa, ab, bb2]) = gram2_stored_at(level, format, sa, sb) else {
                        assert_eq!(level, Level::Portable);
                        continue;
                    };
                    let bound =
                        |x: &[f64], y: &[f64]| (n as f64 + 1.0) * f64::EPSILON * abs_dot(x, y);
                    assert!(
                        (aa - dot_oracle(&da, &da)).abs() <= bound(&da, &da),
                        "{format:?} n={n} {level:?}"
                    );
                    assert!(
                        (ab - dot_oracle(&da, &db)).abs() <= bound(&da, &db),
                        "{format:?} n={n} {level:?}"
                    );
                    assert!(
                        (bb2 - dot_oracle(&db, &db)).abs() <= bound(&db, &db),
                        "{format:?} n={n} {level:?}"
                    );
                    // Identical inputs give identical sums: cos(a, a) is exactly 1.
                    let [x, y, z] = gram2_stored_at(level, format, sa, sa).unwrap();
                    assert!(x == y && y == z);
                }
            }
        }
    }

    #[test]
    fn axpy_stored_agrees_at_every_level() {
        for format in [
            FloatFormat::F16,
            FloatFormat::BF16,
            FloatFormat::F32,
            FloatFormat::F64,
        ] {
            for n in [0usize, 1, 7, 17, 1023, 4099] {
                let v = values(n, 21);
                let mut bytes = vec![1u8];
                bytes.extend(encode(format, &v));
                let x = decode_oracle(format, &bytes[1..]);
                let y0: Vec<f64> = (0..n).map(|i| i as f64 * 0.25).collect();
                for level in available_levels() {
                    for accumulate in [false, true] {
                        let mut y = y0.clone();
                        axpy_stored_at(level, format, -0.375, &bytes[1..], &mut y, accumulate);
                        for i in 0..n {
                            let want = -0.375 * x[i] + if accumulate { y0[i] } else { 0.0 };
                            assert!(
                                (y[i] - want).abs() <= 1e-15 * want.abs().max(1.0),
                                "{format:?} n={n} {level:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gram_of_three_rows() {
        let rows: Vec<Vec<f64>> = (0..3)
            .map(|s| values(1000, s).iter().map(|&x| x as f64).collect())
            .collect();
        let refs: Vec<&[f64]> = rows.iter().map(|r| r.as_slice()).collect();
        let mut g = vec![0.0; 6];
        gram_upper_acc(&refs, &mut g);
        for i in 0..3 {
            for j in i..3 {
                let w = dot_oracle(&rows[i], &rows[j]);
                assert!((g[packed_index(3, i, j)] - w).abs() <= 1e-12 * w.abs().max(1.0));
            }
        }
    }

    #[test]
    fn nan_propagates() {
        let a = [1.0, f64::NAN, 2.0];
        assert!(dot(&a, &a).is_nan());
    }

    /// Correctly rounded f64 -> 16-bit float, from first principles: non-negative finite
    /// values of both formats are ordered like their bit patterns, so find the neighbours
    /// by binary search and compare with their exact midpoint.
    fn round_oracle(x: f64, max_bits: u16, to_f64: impl Fn(u16) -> f64) -> u16 {
        let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
        let m = x.abs();
        let (mut lo, mut hi) = (0u16, max_bits);
        if m >= to_f64(max_bits) {
            let next = 2.0 * to_f64(max_bits) - to_f64(max_bits - 1);
            let mid = (to_f64(max_bits) + next) / 2.0;
            // At or above the midpoint to the next power: infinity (ties go to the even code).
            return sign | if m >= mid { max_bits + 1 } else { max_bits };
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if to_f64(mid) <= m { lo = mid } else { hi = mid }
        }
        let mid = (to_f64(lo) + to_f64(hi)) / 2.0;
        let pick = if m < mid {
            lo
        } else if m > mid {
            hi
        } else if lo % 2 == 0 {
            lo
        } else {
            hi
        };
        sign | pick
    }

    #[test]
    fn rounding_to_storage_is_correct() {
        let mut v: Vec<f64> = values(4099, 9)
            .iter()
            .map(|&x| x as f64 * 1.000_123_4)
            .collect();
        // Just above a tie after the f32 step: a double rounding would go down.
        v.extend([
            1.0 + 2f64.powi(-11) + 2f64.powi(-40),
            -(1.0 + 2f64.powi(-8) + 2f64.powi(-40)),
        ]);
        v.extend([65519.9, 65520.0, 1e-9, -3e-8, 0.0, -0.0, 1e300]);
        for n in [0usize, 1, 7, 17, 1023, v.len()] {
            let v = &v[v.len() - n..];
            for format in [
                FloatFormat::F16,
                FloatFormat::BF16,
                FloatFormat::F32,
                FloatFormat::F64,
            ] {
                let want: Vec<u8> = v
                    .iter()
                    .flat_map(|&x| match format {
                        FloatFormat::F16 => round_oracle(x, 0x7bff, |b| f16::from_bits(b).to_f64())
                            .to_le_bytes()
                            .to_vec(),
                        FloatFormat::BF16 => {
                            round_oracle(x, 0x7f7f, |b| bf16::from_bits(b).to_f64())
                                .to_le_bytes()
                                .to_vec()
                        }
                        FloatFormat::F32 => (x as f32).to_le_bytes().to_vec(),
                        _ => x.to_le_bytes().to_vec(),
                    })
                    .collect();
                for level in available_levels() {
                    let mut got = vec![0u8; n * format.size()];
                    from_f64_at(level, format, v, &mut got);
                    assert_eq!(got, want, "{format:?} n={n} {level:?}");
                }
            }
        }
        let mut two = [0u8; 2];
        from_f64(
            FloatFormat::F16,
            &[1.0 + 2f64.powi(-11) + 2f64.powi(-40)],
            &mut two,
        );
        assert_eq!(u16::from_le_bytes(two), 0x3c01);
    }

    /// The encoder against the nearest-value search it replaced (every code's neighbourhood
    /// and every midpoint between codes), and round trips of every code.
    #[test]
    fn fp8_round_matches_nearest_search() {
        fn nearest(format: FloatFormat, x: f64) -> u8 {
            let mut table = [0.0; 256];
            let codes: Vec<u8> = (0..=255).collect();
            to_f64(format, &codes, &mut table);
            if x.is_nan() {
                return if format == FloatFormat::F8E4M3 {
                    0x7f
                } else {
                    0x7e
                };
            }
            let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
            let (mut best, mut err) = (0u8, f64::INFINITY);
            for code in 0u8..0x80 {
                let v = table[code as usize];
                if !v.is_finite() {
                    continue;
                }
                let e = (v - x.abs()).abs();
                if e < err || (e == err && code % 2 == 0) {
                    (best, err) = (code, e);
                }
            }
            best | sign
        }
        for format in [FloatFormat::F8E4M3, FloatFormat::F8E5M2] {
            let mut values = [0.0; 256];
            let codes: Vec<u8> = (0..=255).collect();
            to_f64(format, &codes, &mut values);
            let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
            // Far beyond the largest value the search's errors all round to one number; the
            // saturation is checked on its own below.
            let mut probes = vec![0.0, -0.0, 1e-30, -1e-30];
            for &v in &finite {
                probes.extend([v, v * (1.0 + 1e-9), v * (1.0 - 1e-9)]);
            }
            let mut sorted = finite.clone();
            sorted.sort_by(f64::total_cmp);
            for w in sorted.windows(2) {
                let mid = (w[0] + w[1]) / 2.0;
                probes.extend([mid, mid + mid.abs() * 1e-12, mid - mid.abs() * 1e-12]);
            }
            // And values spread over every binade, subnormals and saturation included.
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..20_000 {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let frac = (state >> 11) as f64 / (1u64 << 53) as f64;
                let exp = ((state >> 3) % 48) as i32 - 26;
                let sign = if state & 1 == 1 { -1.0 } else { 1.0 };
                probes.push(sign * (1.0 + frac) * 2f64.powi(exp));
            }
            for &x in &probes {
                let (got, want) = (portable::fp8_round(format, x), nearest(format, x));
                assert_eq!(got, want, "{format:?} {x:e}");
            }
            for (code, &v) in values.iter().enumerate() {
                if v.is_finite() && !(v == 0.0 && code == 0x80) {
                    assert_eq!(
                        portable::fp8_round(format, v) as usize,
                        code,
                        "{format:?} {v}"
                    );
                }
            }
            // Saturation: an infinity becomes the largest finite code, never an infinity.
            let max_code = if format == FloatFormat::F8E4M3 {
                0x7e
            } else {
                0x7b
            };
            assert_eq!(portable::fp8_round(format, f64::INFINITY), max_code);
            assert_eq!(
                portable::fp8_round(format, f64::NEG_INFINITY),
                0x80 | max_code
            );
            for big in [1e30, f64::MAX, portable::fp8_max(format) * 1.01] {
                assert_eq!(portable::fp8_round(format, big), max_code);
            }
        }
    }

    #[test]
    fn fp8_tables() {
        // E4M3: 0x38 = 1.0, 0x7e = 448 (max), 0x7f = NaN. E5M2: 0x3c = 1.0, 0x7b = 57344.
        let mut out = [0.0; 4];
        to_f64(FloatFormat::F8E4M3, &[0x38, 0x7e, 0xb8, 0x01], &mut out);
        assert_eq!(out, [1.0, 448.0, -1.0, 2f64.powi(-9)]);
        to_f64(FloatFormat::F8E5M2, &[0x3c, 0x7b, 0xbc, 0x01], &mut out);
        assert_eq!(out, [1.0, 57344.0, -1.0, 2f64.powi(-16)]);
        let mut nan = [0.0];
        to_f64(FloatFormat::F8E4M3, &[0x7f], &mut nan);
        assert!(nan[0].is_nan());
    }
}
