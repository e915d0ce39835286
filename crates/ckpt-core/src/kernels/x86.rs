//! AVX2 + FMA + F16C kernels. Every function here is `unsafe` because it may only run on a
//! CPU with those features: callers check with [`super::level`] first.
//!
//! All loads and stores are unaligned (`loadu`/`storeu`): tensor data in a safetensors file
//! has no alignment guarantee.

use std::arch::x86_64::*;

use super::portable;
use ckpt_read::dtype::FloatFormat;

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `src.len() == dst.len() * format.size()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn to_f64(format: FloatFormat, src: &[u8], dst: &mut [f64]) {
    let (n, s, d) = (dst.len(), src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    // SAFETY (all blocks below): every pointer offset stays below `n` elements of `dst`
    // and `n * size` bytes of `src`, checked by the loop bounds.
    unsafe {
        match format {
            FloatFormat::F16 => {
                while i + 8 <= n {
                    let h = _mm_loadu_si128(s.add(2 * i) as *const __m128i);
                    store_f32x8_as_f64(d.add(i), _mm256_cvtph_ps(h));
                    i += 8;
                }
            }
            FloatFormat::BF16 => {
                while i + 8 <= n {
                    let h = _mm_loadu_si128(s.add(2 * i) as *const __m128i);
                    let wide = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
                    store_f32x8_as_f64(d.add(i), _mm256_castsi256_ps(wide));
                    i += 8;
                }
            }
            FloatFormat::F32 => {
                while i + 4 <= n {
                    let f = _mm_loadu_ps(s.add(4 * i) as *const f32);
                    _mm256_storeu_pd(d.add(i), _mm256_cvtps_pd(f));
                    i += 4;
                }
            }
            FloatFormat::F64 => {
                // Little-endian f64 bytes are the f64 values on x86-64.
                std::ptr::copy_nonoverlapping(s, d as *mut u8, 8 * n);
                i = n;
            }
            FloatFormat::F8E4M3 | FloatFormat::F8E5M2 => {}
        }
    }
    let size = format.size();
    portable::to_f64(format, &src[i * size..], &mut dst[i..]);
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_f32x8_as_f64(d: *mut f64, f: __m256) {
    // SAFETY: the caller guarantees 8 writable f64 at `d`.
    unsafe {
        _mm256_storeu_pd(d, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
        _mm256_storeu_pd(d.add(4), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(f)));
    }
}

/// f64 -> f32 with round-to-odd: truncate toward zero, and set the last bit when the
/// result is inexact. Rounding that to a format with at least two fewer significand bits
/// (f16: 11, bf16: 8, against f32's 24) gives the correctly rounded result, which a plain
/// f64 -> f32 -> f16 chain does not (it can round twice).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f64x4_to_f32_odd(x: __m256d) -> __m128i {
    let nearest = _mm256_cvtpd_ps(x);
    let back = _mm256_cvtps_pd(nearest);
    let inexact = _mm256_cmp_pd::<_CMP_NEQ_UQ>(back, x);
    let abs = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fff_ffff_ffff_ffff));
    let away = _mm256_cmp_pd::<_CMP_GT_OQ>(_mm256_and_pd(back, abs), _mm256_and_pd(x, abs));
    let narrow = |m: __m256d| -> __m128i {
        let idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(m), idx))
    };
    let one = _mm_set1_epi32(1);
    let bits = _mm_castps_si128(nearest);
    let toward_zero = _mm_sub_epi32(bits, _mm_and_si128(narrow(away), one));
    _mm_or_si128(toward_zero, _mm_and_si128(narrow(inexact), one))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `dst.len() == src.len() * format.size()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn from_f64(format: FloatFormat, src: &[f64], dst: &mut [u8]) {
    let (n, s, d) = (src.len(), src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    // SAFETY (all blocks below): offsets stay within `n` elements, as in `to_f64`.
    unsafe {
        match format {
            FloatFormat::F16 => {
                while i + 8 <= n {
                    let lo = f64x4_to_f32_odd(_mm256_loadu_pd(s.add(i)));
                    let hi = f64x4_to_f32_odd(_mm256_loadu_pd(s.add(i + 4)));
                    let f = _mm256_set_m128(_mm_castsi128_ps(hi), _mm_castsi128_ps(lo));
                    let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(f);
                    _mm_storeu_si128(d.add(2 * i) as *mut __m128i, h);
                    i += 8;
                }
            }
            FloatFormat::BF16 => {
                while i + 8 <= n {
                    let lo = f32_bits_to_bf16(f64x4_to_f32_odd(_mm256_loadu_pd(s.add(i))));
                    let hi = f32_bits_to_bf16(f64x4_to_f32_odd(_mm256_loadu_pd(s.add(i + 4))));
                    _mm_storeu_si128(d.add(2 * i) as *mut __m128i, _mm_packus_epi32(lo, hi));
                    i += 8;
                }
            }
            FloatFormat::F32 => {
                while i + 4 <= n {
                    let f = _mm256_cvtpd_ps(_mm256_loadu_pd(s.add(i)));
                    _mm_storeu_ps(d.add(4 * i) as *mut f32, f);
                    i += 4;
                }
            }
            FloatFormat::F64 => {
                std::ptr::copy_nonoverlapping(s as *const u8, d, 8 * n);
                i = n;
            }
            FloatFormat::F8E4M3 | FloatFormat::F8E5M2 => {}
        }
    }
    let size = format.size();
    portable::from_f64(format, &src[i..], &mut dst[i * size..]);
}

/// Rounds four f32 bit patterns to bf16 (nearest, ties to even; NaN stays a quiet NaN),
/// returned in the low 16 bits of each 32-bit lane.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_bits_to_bf16(bits: __m128i) -> __m128i {
    let lsb = _mm_and_si128(_mm_srli_epi32::<16>(bits), _mm_set1_epi32(1));
    let rounded = _mm_srli_epi32::<16>(_mm_add_epi32(
        bits,
        _mm_add_epi32(_mm_set1_epi32(0x7fff), lsb),
    ));
    let magnitude = _mm_and_si128(bits, _mm_set1_epi32(0x7fff_ffff));
    let is_nan = _mm_cmpgt_epi32(magnitude, _mm_set1_epi32(0x7f80_0000));
    let quiet = _mm_or_si128(_mm_srli_epi32::<16>(bits), _mm_set1_epi32(0x0040));
    _mm_blendv_epi8(rounded, quiet, is_nan)
}

/// # Safety
/// The CPU must support AVX2 and FMA; `a.len() == b.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_pd(); 4];
    let mut i = 0;
    // SAFETY: offsets stay below `n`.
    unsafe {
        while i + 16 <= n {
            for (k, lane) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_pd(pa.add(i + 4 * k));
                let y = _mm256_loadu_pd(pb.add(i + 4 * k));
                *lane = _mm256_fmadd_pd(x, y, *lane);
            }
            i += 16;
        }
    }
    let total = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
    let mut s = hsum(total);
    for j in i..n {
        s = a[j].mul_add(b[j], s);
    }
    s
}

/// # Safety
/// The CPU must support AVX2 and FMA; `a.len() == b.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gram2(a: &[f64], b: &[f64]) -> [f64; 3] {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let z = _mm256_setzero_pd();
    let (mut aa0, mut ab0, mut bb0, mut aa1, mut ab1, mut bb1) = (z, z, z, z, z, z);
    let mut i = 0;
    // SAFETY: offsets stay below `n`.
    unsafe {
        while i + 8 <= n {
            let x0 = _mm256_loadu_pd(pa.add(i));
            let y0 = _mm256_loadu_pd(pb.add(i));
            let x1 = _mm256_loadu_pd(pa.add(i + 4));
            let y1 = _mm256_loadu_pd(pb.add(i + 4));
            aa0 = _mm256_fmadd_pd(x0, x0, aa0);
            ab0 = _mm256_fmadd_pd(x0, y0, ab0);
            bb0 = _mm256_fmadd_pd(y0, y0, bb0);
            aa1 = _mm256_fmadd_pd(x1, x1, aa1);
            ab1 = _mm256_fmadd_pd(x1, y1, ab1);
            bb1 = _mm256_fmadd_pd(y1, y1, bb1);
            i += 8;
        }
    }
    let mut out = [
        hsum(_mm256_add_pd(aa0, aa1)),
        hsum(_mm256_add_pd(ab0, ab1)),
        hsum(_mm256_add_pd(bb0, bb1)),
    ];
    for j in i..n {
        out[0] = a[j].mul_add(a[j], out[0]);
        out[1] = a[j].mul_add(b[j], out[1]);
        out[2] = b[j].mul_add(b[j], out[2]);
    }
    out
}

/// Loads 8 stored elements as two f64x4 halves.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_as_f64(format: FloatFormat, p: *const u8) -> (__m256d, __m256d) {
    // SAFETY: the caller guarantees 8 readable elements of `format` at `p`.
    unsafe {
        let f = match format {
            FloatFormat::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            FloatFormat::BF16 => {
                let h = _mm_loadu_si128(p as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            }
            _ => {
                let lo = _mm256_cvtps_pd(_mm_loadu_ps(p as *const f32));
                let hi = _mm256_cvtps_pd(_mm_loadu_ps((p as *const f32).add(4)));
                return (lo, hi);
            }
        };
        (
            _mm256_cvtps_pd(_mm256_castps256_ps128(f)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(f)),
        )
    }
}

/// [⟨a,a⟩, ⟨a,b⟩, ⟨b,b⟩] straight from stored bytes of one format (F16, BF16 or F32):
/// conversion and the three f64 FMAs happen in registers, with no buffer in between.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `a` and `b` hold the same number of elements of
/// `format`, which is F16, BF16 or F32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gram2_stored(format: FloatFormat, a: &[u8], b: &[u8]) -> [f64; 3] {
    let size = format.size();
    let n = a.len() / size;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let z = _mm256_setzero_pd();
    // Two groups of (aa, ab, bb) accumulators for each half of an 8-element step, and two
    // steps per iteration: 12 independent FMA chains hide the FMA latency.
    let mut acc = [z; 12];
    let mut i = 0;
    // SAFETY: offsets stay below `n` elements.
    unsafe {
        while i + 16 <= n {
            for step in 0..2 {
                let at = (i + 8 * step) * size;
                let (a0, a1) = load8_as_f64(format, pa.add(at));
                let (b0, b1) = load8_as_f64(format, pb.add(at));
                let k = 6 * step;
                acc[k] = _mm256_fmadd_pd(a0, a0, acc[k]);
                acc[k + 1] = _mm256_fmadd_pd(a0, b0, acc[k + 1]);
                acc[k + 2] = _mm256_fmadd_pd(b0, b0, acc[k + 2]);
                acc[k + 3] = _mm256_fmadd_pd(a1, a1, acc[k + 3]);
                acc[k + 4] = _mm256_fmadd_pd(a1, b1, acc[k + 4]);
                acc[k + 5] = _mm256_fmadd_pd(b1, b1, acc[k + 5]);
            }
            i += 16;
        }
    }
    let sum = |o: usize| {
        hsum(_mm256_add_pd(
            _mm256_add_pd(acc[o], acc[o + 3]),
            _mm256_add_pd(acc[o + 6], acc[o + 9]),
        ))
    };
    let mut out = [sum(0), sum(1), sum(2)];
    portable::add_gram2_tail(format, a, b, i, &mut out);
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256d) -> f64 {
    let lo = _mm256_castpd256_pd128(v);
    let hi = _mm256_extractf128_pd::<1>(v);
    let pair = _mm_add_pd(lo, hi);
    let swapped = _mm_unpackhi_pd(pair, pair);
    _mm_cvtsd_f64(_mm_add_sd(pair, swapped))
}
