//! AVX-512 kernels (F, DQ, BW, VL). Wider conversions halve the shuffle-port work that
//! bounds the AVX2 path on Intel cores. (AVX512-FP16's direct f16 -> f64 conversion was
//! tried and measured three times slower than going through f32.)
//!
//! Every function here is `unsafe`: it may only run on a CPU with the features named in its
//! `target_feature`; callers check with [`super::level`] first.

use std::arch::x86_64::*;

use super::portable;
use ckpt_read::dtype::FloatFormat;

/// Loads 8 f16 as f64 (through f32).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,f16c")]
unsafe fn load8_f16(p: *const u8) -> __m512d {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    unsafe { _mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))) }
}

/// Loads 8 bf16 as f64 (a bf16 is the top half of an f32).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,f16c")]
unsafe fn load8_bf16(p: *const u8) -> __m512d {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    unsafe {
        let wide =
            _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)));
        _mm512_cvtps_pd(_mm256_castsi256_ps(wide))
    }
}

/// Loads 8 f32 as f64.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,f16c")]
unsafe fn load8_f32(p: *const u8) -> __m512d {
    // SAFETY: the caller guarantees 32 readable bytes at `p`.
    unsafe { _mm512_cvtps_pd(_mm256_loadu_ps(p as *const f32)) }
}

/// Loads 8 stored elements as f64.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,f16c")]
unsafe fn load8(format: FloatFormat, p: *const u8) -> __m512d {
    // SAFETY: forwarded contract.
    unsafe {
        match format {
            FloatFormat::F16 => load8_f16(p),
            FloatFormat::BF16 => load8_bf16(p),
            _ => load8_f32(p),
        }
    }
}

macro_rules! gram2_body {
    ($format:expr, $a:expr, $b:expr, $load:expr) => {{
        let format: FloatFormat = $format;
        let (a, b): (&[u8], &[u8]) = ($a, $b);
        let size = format.size();
        let n = a.len() / size;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let z = _mm512_setzero_pd();
        // Two 8-element steps per iteration, each with its own (aa, ab, bb): six chains.
        let mut acc = [z; 6];
        let mut i = 0;
        // SAFETY: offsets stay below `n` elements.
        unsafe {
            while i + 16 <= n {
                // Hardware prefetchers stop at 4 KiB page boundaries; ask for the data
                // 2 KiB ahead of both streams (a prefetch never faults).
                _mm_prefetch::<_MM_HINT_T0>(pa.wrapping_add(i * size + 2048) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(i * size + 2048) as *const i8);
                let a0 = $load(pa.add(i * size));
                let b0 = $load(pb.add(i * size));
                let a1 = $load(pa.add((i + 8) * size));
                let b1 = $load(pb.add((i + 8) * size));
                acc[0] = _mm512_fmadd_pd(a0, a0, acc[0]);
                acc[1] = _mm512_fmadd_pd(a0, b0, acc[1]);
                acc[2] = _mm512_fmadd_pd(b0, b0, acc[2]);
                acc[3] = _mm512_fmadd_pd(a1, a1, acc[3]);
                acc[4] = _mm512_fmadd_pd(a1, b1, acc[4]);
                acc[5] = _mm512_fmadd_pd(b1, b1, acc[5]);
                i += 16;
            }
        }
        let mut out = [
            _mm512_reduce_add_pd(_mm512_add_pd(acc[0], acc[3])),
            _mm512_reduce_add_pd(_mm512_add_pd(acc[1], acc[4])),
            _mm512_reduce_add_pd(_mm512_add_pd(acc[2], acc[5])),
        ];
        portable::add_gram2_tail(format, a, b, i, &mut out);
        out
    }};
}

/// [⟨a,a⟩, ⟨a,b⟩, ⟨b,b⟩] from stored F16, BF16 or F32 bytes.
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, BW, VL and F16C; same element count in `a` and `b`.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,f16c")]
pub(super) unsafe fn gram2_stored(format: FloatFormat, a: &[u8], b: &[u8]) -> [f64; 3] {
    // One loop per format, so the format test stays out of the loop.
    match format {
        FloatFormat::F16 => gram2_body!(FloatFormat::F16, a, b, load8_f16),
        FloatFormat::BF16 => gram2_body!(FloatFormat::BF16, a, b, load8_bf16),
        _ => gram2_body!(FloatFormat::F32, a, b, load8_f32),
    }
}

/// Stored elements to f64.
///
/// # Safety
/// As for [`gram2_stored`]; `src.len() == dst.len() * format.size()`.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,f16c")]
pub(super) unsafe fn to_f64(format: FloatFormat, src: &[u8], dst: &mut [f64]) {
    let n = dst.len();
    let size = format.size();
    let mut i = 0;
    if matches!(
        format,
        FloatFormat::F16 | FloatFormat::BF16 | FloatFormat::F32
    ) {
        // SAFETY: offsets stay below `n` elements.
        unsafe {
            while i + 8 <= n {
                _mm512_storeu_pd(
                    dst.as_mut_ptr().add(i),
                    load8(format, src.as_ptr().add(i * size)),
                );
                i += 8;
            }
        }
    }
    // F64 and FP8 go the portable way (a copy and a table lookup).
    portable::to_f64(format, &src[i * size..], &mut dst[i..]);
}

/// y ← c·x (+ y when `accumulate`), x stored as F16, BF16 or F32.
///
/// # Safety
/// As for [`gram2_stored`]; `x.len() == y.len() * format.size()`.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,f16c")]
pub(super) unsafe fn axpy_stored(
    format: FloatFormat,
    c: f64,
    x: &[u8],
    y: &mut [f64],
    accumulate: bool,
) {
    let n = y.len();
    let size = format.size();
    let vc = _mm512_set1_pd(c);
    let mut i = 0;
    // SAFETY: offsets stay below `n` elements.
    unsafe {
        while i + 8 <= n {
            let v = load8(format, x.as_ptr().add(i * size));
            let py = y.as_mut_ptr().add(i);
            let out = if accumulate {
                _mm512_fmadd_pd(vc, v, _mm512_loadu_pd(py))
            } else {
                _mm512_mul_pd(vc, v)
            };
            _mm512_storeu_pd(py, out);
            i += 8;
        }
    }
    for j in i..n {
        let mut v = [0.0];
        portable::to_f64(format, &x[j * size..(j + 1) * size], &mut v);
        y[j] = if accumulate {
            c.mul_add(v[0], y[j])
        } else {
            c * v[0]
        };
    }
}

/// ⟨a, b⟩ of f64 slices.
///
/// # Safety
/// The CPU must support AVX-512 F; `a.len() == b.len()`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len();
    let mut acc = [_mm512_setzero_pd(); 4];
    let mut i = 0;
    // SAFETY: offsets stay below `n`.
    unsafe {
        while i + 32 <= n {
            for (k, lane) in acc.iter_mut().enumerate() {
                let x = _mm512_loadu_pd(a.as_ptr().add(i + 8 * k));
                let y = _mm512_loadu_pd(b.as_ptr().add(i + 8 * k));
                *lane = _mm512_fmadd_pd(x, y, *lane);
            }
            i += 32;
        }
    }
    let total = _mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3]));
    let mut s = _mm512_reduce_add_pd(total);
    for j in i..n {
        s = a[j].mul_add(b[j], s);
    }
    s
}
