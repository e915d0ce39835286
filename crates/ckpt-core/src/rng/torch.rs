//! The random numbers PyTorch's CPU `torch.randn` draws after `torch.manual_seed(seed)`, bit
//! for bit, so that analyses defined by a seeded PyTorch script (ASimilarity) give the same
//! numbers here.
//!
//! PyTorch's CPU generator is the standard 32-bit Mersenne Twister seeded with the low 32 bits
//! of the seed. `randn` on a contiguous float32 tensor of n ≥ 16 elements first fills all n
//! with uniforms u = (draw & (2²⁴ − 1))·2⁻²⁴ (one 32-bit draw each), then turns every group of
//! 16 into normals by Box–Muller: for j < 8, r = √(−2·ln(1 − u[j])), θ = 2π·u[j+8],
//! out[j] = r·cos θ, out[j+8] = r·sin θ. When n is not a multiple of 16 the last 16 elements
//! are drawn again and transformed again.
//!
//! The logarithm, sine and cosine are not the C library's: on any CPU with AVX2 (the
//! `AVX2` and `AVX512` builds PyTorch dispatches to) they are the float Cephes polynomials of
//! `avx_mathfun.h`, which differ from correctly rounded results in the last bits. Both are
//! here: [`MathPath::Avx2`] (what users' machines run) and [`MathPath::Scalar`] (PyTorch with
//! `ATEN_CPU_CAPABILITY=default`). Golden values from a real PyTorch install check both
//! (`fixtures/asim/`).

use rand_mt::Mt;

/// Which of PyTorch's two Box–Muller code paths to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathPath {
    /// `normal_fill_16_AVX2`: float Cephes log/sincos (any x86 CPU with AVX2).
    Avx2,
    /// `normal_fill_16`: `std::log` in float, `std::cos/sin` of a double angle.
    Scalar,
}

/// PyTorch's CPU generator after `torch.manual_seed(seed)`.
pub struct TorchGenerator {
    mt: Mt,
    path: MathPath,
}

impl TorchGenerator {
    pub fn manual_seed(seed: u64, path: MathPath) -> TorchGenerator {
        // at::mt19937 keeps the low 32 bits of the seed.
        TorchGenerator {
            mt: Mt::new(seed as u32),
            path,
        }
    }

    /// A uniform in [0, 1) with 24 random bits, as `uniform_real_distribution<float>`.
    fn uniform(&mut self) -> f32 {
        (self.mt.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Advances the generator past `n` 32-bit draws: what initialising a float tensor of n
    /// elements with `uniform_` consumes (as `nn.Linear`'s constructor does).
    pub fn skip_uniform(&mut self, n: usize) {
        for _ in 0..n {
            self.mt.next_u32();
        }
    }

    /// `torch.randn(n)` (any shape of n elements; row-major). PyTorch draws tensors of
    /// fewer than 16 elements another way, which is not reproduced: `None` then.
    pub fn randn(&mut self, n: usize) -> Option<Vec<f32>> {
        if n < 16 {
            return None;
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform()).collect();
        for i in (0..n - 15).step_by(16) {
            self.normal_16(&mut data[i..i + 16]);
        }
        if !n.is_multiple_of(16) {
            let tail = n - 16;
            for x in &mut data[tail..] {
                *x = self.uniform();
            }
            self.normal_16(&mut data[tail..]);
        }
        Some(data)
    }

    fn normal_16(&self, d: &mut [f32]) {
        for j in 0..8 {
            let (u1, u2) = (1.0 - d[j], d[j + 8]);
            let (a, b) = match self.path {
                MathPath::Avx2 => {
                    let radius = (-2.0f32 * cephes::log(u1)).sqrt();
                    let theta = (2.0 * std::f64::consts::PI) as f32 * u2;
                    let (sin, cos) = cephes::sincos(theta);
                    (radius * cos, radius * sin)
                }
                MathPath::Scalar => {
                    // Float throughout: θ is computed in double, then stored as float.
                    let radius = (-2.0f32 * u1.ln()).sqrt();
                    let theta = (2.0 * std::f64::consts::PI * u2 as f64) as f32;
                    (radius * theta.cos(), radius * theta.sin())
                }
            };
            d[j] = a;
            d[j + 8] = b;
        }
    }
}

/// The float Cephes approximations of `avx_mathfun.h` (Julien Pommier's SSE/AVX port of
/// Cephes), one lane at a time with the same operations in the same order and the same bit
/// tricks for the exponent and signs. PyTorch's build lets the compiler fuse a product into
/// the sum that uses it (GCC's default contraction), so those steps are `mul_add` here:
/// with separate roundings about one value in a hundred differs in its last bit.
// The constants as the original writes them (rounded to f32 by the compiler, as by C's).
#[allow(clippy::excessive_precision, clippy::approx_constant)]
mod cephes {
    const SQRTHF: f32 = 0.707106781186547524;
    const LOG_P: [f32; 9] = [
        7.0376836292E-2,
        -1.1514610310E-1,
        1.1676998740E-1,
        -1.2420140846E-1,
        1.4249322787E-1,
        -1.6668057665E-1,
        2.0000714765E-1,
        -2.4999993993E-1,
        3.3333331174E-1,
    ];
    const LOG_Q1: f32 = -2.12194440e-4;
    const LOG_Q2: f32 = 0.693359375;
    const MIN_NORM_POS: f32 = f32::from_bits(0x0080_0000);

    /// ln(x) for x > 0 (x ≤ 0 gives NaN, as the original's invalid mask).
    pub(super) fn log(x: f32) -> f32 {
        if x <= 0.0 {
            return f32::NAN;
        }
        let x = x.max(MIN_NORM_POS);
        let bits = x.to_bits();
        let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
        // The mantissa as a number in [0.5, 1).
        let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
        let below = x < SQRTHF;
        let tmp = if below { x } else { 0.0 };
        x -= 1.0;
        e -= if below { 1.0 } else { 0.0 };
        x += tmp;
        let z = x * x;
        let mut y = LOG_P[0];
        for p in &LOG_P[1..] {
            y = y.mul_add(x, *p);
        }
        y *= x;
        y = y.mul_add(z, e * LOG_Q1);
        y = (-z).mul_add(0.5, y);
        x += y;
        e.mul_add(LOG_Q2, x)
    }

    const FOPI: f32 = 1.27323954473516;
    const DP1: f32 = -0.78515625;
    const DP2: f32 = -2.4187564849853515625e-4;
    const DP3: f32 = -3.77489497744594108e-8;
    const SIN_P: [f32; 3] = [-1.9515295891E-4, 8.3321608736E-3, -1.6666654611E-1];
    const COS_P: [f32; 3] = [
        2.443315711809948E-005,
        -1.388731625493765E-003,
        4.166664568298827E-002,
    ];
    const SIGN: u32 = 0x8000_0000;

    /// (sin x, cos x).
    pub(super) fn sincos(x: f32) -> (f32, f32) {
        let mut sign_sin = x.to_bits() & SIGN;
        let mut x = x.abs();
        // The octant, rounded up to even.
        let j = (((x * FOPI) as i32) + 1) & !1;
        let y = j as f32;
        let swap_sin = ((j & 4) as u32) << 29;
        // In octants 2, 3 (mod 4) sine and cosine swap polynomials.
        let swap = (j & 2) != 0;
        // Extended-precision reduction: x - y·π/4 in three parts.
        x = y.mul_add(DP1, x);
        x = y.mul_add(DP2, x);
        x = y.mul_add(DP3, x);
        let sign_cos = ((!(j - 2) & 4) as u32) << 29;
        sign_sin ^= swap_sin;

        let z = x * x;
        let mut c = COS_P[0].mul_add(z, COS_P[1]);
        c = c.mul_add(z, COS_P[2]);
        c *= z;
        c = c.mul_add(z, -(z * 0.5));
        c += 1.0;

        let mut s = SIN_P[0].mul_add(z, SIN_P[1]);
        s = s.mul_add(z, SIN_P[2]);
        s *= z;
        s = s.mul_add(x, x);

        // The original selects with masks and adds a zero (so -0 becomes +0).
        let (sin, cos) = if swap {
            (c + 0.0, 0.0 + s)
        } else {
            (0.0 + s, c + 0.0)
        };
        (
            f32::from_bits(sin.to_bits() ^ sign_sin),
            f32::from_bits(cos.to_bits() ^ sign_cos),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cephes_is_close_to_libm() {
        for i in 1..10_000 {
            let x = i as f32 / 10_000.0;
            assert!((cephes::log(x) - x.ln()).abs() <= 2e-7 * x.ln().abs().max(1.0));
            let t = x * std::f32::consts::TAU;
            let (s, c) = cephes::sincos(t);
            assert!(
                (s - t.sin()).abs() < 3e-7 && (c - t.cos()).abs() < 3e-7,
                "{t}"
            );
        }
    }
}
