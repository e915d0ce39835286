//! A checkpoint's fingerprint: per row (block or component), the squared norm of its weights
//! and a count sketch of them, in f64.
//!
//! The count sketch of a vector `w` with `K` buckets is `S(w)[b] = sum over elements i with
//! h(i) = b of s(i) w_i`, where the bucket `h` and the sign `s` come from a hash of the
//! element's canonical key and index, with one fixed seed, so every model is sketched alike.
//! It is linear: `S(a - base) = S(a) - S(base)`, so the sketch of a delta from any base
//! chosen at query time is a difference of stored sketches. `<S(a), S(b)>` estimates `<a, b>`
//! without bias, with variance `(|a|^2 |b|^2 + <a,b>^2 - 2 sum_i a_i^2 b_i^2) / K`, at most
//! `(|a|^2 |b|^2 + <a,b>^2) / K` ([`inner_std_bound`]): with `K = 4096`, an inner product
//! divided by the exact norms is known to about +-0.016 x sqrt(1 + cos^2) (one standard
//! deviation).
//!
//! Sketching costs three table lookups and one add per weight ([`ElementHash`]), inside the
//! one pass of `views::fingerprint`; [`Rows`] absorbs the parts in plan order, so the
//! fingerprint does not depend on the thread count.

use ckpt_core::catalog::Grouping;
use ckpt_core::pass::{Plan, Slice};

/// Buckets per row.
pub const BUCKETS: usize = 4096;

/// The one seed every index uses (sketches made with different seeds cannot be compared).
pub const SEED: u64 = 0x6c69_6e65_6167_6532;

/// One row's fingerprint.
#[derive(Clone, Debug, PartialEq)]
pub struct RowSketch {
    /// The row label (`IN04`, `TE1`, `VAE`, ...).
    pub label: String,
    /// The component's id (`unet`, `te1`, ...).
    pub component: String,
    pub params: u64,
    /// Sum of squared weights, exact (f64).
    pub norm2: f64,
    /// The count sketch, [`BUCKETS`] values.
    pub sketch: Vec<f64>,
}

/// A checkpoint's fingerprint: one [`RowSketch`] per row of its grouping, in row order.
#[derive(Clone, Debug, PartialEq)]
pub struct Fingerprint {
    pub rows: Vec<RowSketch>,
}

/// splitmix64: a full-avalanche mix, for the per-tensor hash parameters.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of one tensor's element indices: simple tabulation over the index's four bytes,
/// `T0[i0] ^ T1[i1] ^ T2[i2] ^ T3[i3]`, 13 bits (12 for the bucket, 1 for the sign), the
/// tables filled from a full mix of the seed and the tensor's key. It is 3-wise independent
/// and concentrates like a fully random hash (Patrascu and Thorup, "The Power of Simple
/// Tabulation Hashing"), where a multiply-shift hash of consecutive indices gave errors past
/// three bounds four times too often; and it costs table lookups, not a mix per element (a
/// full mix per element made `index add` 5x slower than reading the file). Indices past
/// 2^32 fold their high word in, which no checkpoint's tensor needs.
#[derive(Clone, Debug)]
pub struct ElementHash {
    tables: [[u16; 256]; 4],
}

impl ElementHash {
    pub fn new(seed: u64, key: u64) -> ElementHash {
        let mut tables = [[0u16; 256]; 4];
        let base = mix(seed ^ key);
        for (t, table) in tables.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (mix(base ^ ((t as u64) << 8 | v as u64)) >> 51) as u16;
            }
        }
        ElementHash { tables }
    }

    #[inline]
    fn high(&self, index: u64) -> u16 {
        let i = (index ^ (index >> 32)) as u32;
        self.tables[1][(i >> 8) as usize & 255]
            ^ self.tables[2][(i >> 16) as usize & 255]
            ^ self.tables[3][(i >> 24) as usize]
    }

    #[inline]
    fn split(h: u16) -> (usize, f64) {
        let b = (h >> 1) as usize & (BUCKETS - 1);
        (b, if h & 1 == 0 { 1.0 } else { -1.0 })
    }

    /// Bucket and sign of element `index`.
    #[inline]
    pub fn bucket(&self, index: u64) -> (usize, f64) {
        let low = self.tables[0][((index ^ (index >> 32)) & 255) as usize];
        Self::split(low ^ self.high(index))
    }

    /// Adds `s(i) x_i` into the buckets for the elements `first..first + values.len()`;
    /// returns their squared norm. The three high bytes' part is looked up once per 256.
    pub fn add_into(&self, first: u64, values: &[f64], sketch: &mut [f64]) -> f64 {
        let mut norm2 = 0.0f64;
        let mut i = 0usize;
        while i < values.len() {
            let at = first + i as u64;
            // A run never crosses a multiple of 256 (nor so 2^32): the high bytes and the
            // folded-in high word are the same for all of it.
            let run = (256 - (at & 255) as usize).min(values.len() - i);
            let high = self.high(at);
            let (low0, fold) = ((at & 255) as usize, ((at >> 32) & 255) as usize);
            for (j, &x) in values[i..i + run].iter().enumerate() {
                let (b, s) = Self::split(self.tables[0][(low0 + j) ^ fold] ^ high);
                sketch[b] += s * x;
                norm2 += x * x;
            }
            i += run;
        }
        norm2
    }
}

/// The sketch estimate of `<a, b>` from two sketches.
pub fn inner(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The standard deviation bound of [`inner`]'s error: `sqrt((|a|^2 |b|^2 + <a,b>^2) / K)`.
pub fn inner_std_bound(norm2_a: f64, norm2_b: f64, dot: f64) -> f64 {
    ((norm2_a * norm2_b + dot * dot) / BUCKETS as f64).sqrt()
}

/// Adds the sketch of `slice` (elements `first..` of the tensor whose key hashes to `key`)
/// into `sketch`; returns the slice's squared norm. Values are read in chunks, so a whole
/// large tensor never becomes one f64 buffer.
pub fn sketch_slice(seed: u64, key: u64, first: u64, slice: &Slice<'_>, sketch: &mut [f64]) -> f64 {
    const CHUNK: usize = 4096;
    let n = slice.len();
    let mut values = [0.0f64; CHUNK];
    let mut norm2 = 0.0f64;
    let hash = ElementHash::new(seed, key);
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        let v = &mut values[..len];
        slice.part(start, start + len).values_into(v);
        norm2 += hash.add_into(first + start as u64, v, sketch);
        start += len;
    }
    norm2
}

/// The rows of a fingerprint being summed (in plan order, so the result does not depend on
/// the thread count).
pub struct Rows {
    rows: Vec<RowSketch>,
}

impl Rows {
    pub fn new(grouping: &Grouping) -> Rows {
        Rows {
            rows: grouping
                .groups()
                .iter()
                .map(|g| RowSketch {
                    label: g.label.clone(),
                    component: g.component.id().to_string(),
                    params: 0,
                    norm2: 0.0,
                    sketch: vec![0.0; BUCKETS],
                })
                .collect(),
        }
    }

    /// Adds one part's squared norm and sketch to row `row`.
    pub fn add(&mut self, row: usize, params: u64, norm2: f64, sketch: &[f64]) {
        let r = &mut self.rows[row];
        r.params += params;
        r.norm2 += norm2;
        for (a, b) in r.sketch.iter_mut().zip(sketch) {
            *a += b;
        }
    }

    pub fn finish(self) -> Fingerprint {
        Fingerprint { rows: self.rows }
    }
}

/// Whether an entry of `plan` is sketched: a float tensor of model 0.
pub fn sketched(plan: &Plan<'_>, entry: usize) -> bool {
    plan.tensor(&plan.entries()[entry], 0)
        .is_some_and(|t| t.is_float())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_buckets_are_balanced_and_signs_fair() {
        let mut count = vec![0u32; BUCKETS];
        let mut plus = 0;
        let n = 400_000u64;
        let h = ElementHash::new(SEED, 7);
        for i in 0..n {
            let (b, s) = h.bucket(i);
            count[b] += 1;
            plus += (s > 0.0) as u64;
        }
        let mean = n as f64 / BUCKETS as f64;
        let max = *count.iter().max().unwrap() as f64;
        assert!(max < mean + 6.0 * mean.sqrt(), "{max} vs {mean}");
        let frac = plus as f64 / n as f64;
        assert!((frac - 0.5).abs() < 0.005, "{frac}");
    }

    #[test]
    fn test_add_into_equals_element_by_element() {
        let h = ElementHash::new(SEED, 99);
        let values: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        for first in [0u64, 200, 255, (1 << 32) - 300, 1 << 40] {
            let mut fast = vec![0.0; BUCKETS];
            let n2 = h.add_into(first, &values, &mut fast);
            let mut naive = vec![0.0; BUCKETS];
            for (j, &x) in values.iter().enumerate() {
                let (b, s) = h.bucket(first + j as u64);
                naive[b] += s * x;
            }
            assert_eq!(fast, naive, "first {first}");
            let want: f64 = values.iter().map(|x| x * x).sum();
            assert!((n2 - want).abs() < 1e-9);
        }
    }

    fn sketch_of(seed: u64, key: u64, v: &[f64]) -> Vec<f64> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let slice = Slice::plain(ckpt_read::Dtype::F64, &bytes);
        let mut sk = vec![0.0; BUCKETS];
        let n2 = sketch_slice(seed, key, 0, &slice, &mut sk);
        let naive: f64 = v.iter().map(|x| x * x).sum();
        assert!((n2 - naive).abs() <= 1e-9 * naive);
        sk
    }

    /// The README's bound, over 600 seeds: the inner-product estimate's RMS error is the
    /// variance formula's standard deviation (within the 10% a 600-sample RMS allows) and
    /// never more than 10% above the stated bound, and it is beyond three bounds in fewer
    /// than 1% of seeds (a Gaussian would give 0.27%).
    // The test says on stderr how far inside the bound the estimates fell.
    #[allow(clippy::print_stderr)]
    #[test]
    fn test_inner_product_error_bound_holds_over_many_seeds() {
        let n = 30_000usize;
        // Two correlated vectors (cosine about 0.6) with uneven magnitudes, as weights are.
        let stream = ckpt_core::rng::counter::Stream::new(11, 12);
        let g = |i: u64| {
            let u1 = stream.uniform(2 * i).max(1e-300);
            let u2 = stream.uniform(2 * i + 1);
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let a: Vec<f64> = (0..n as u64)
            .map(|i| g(i) * (1.0 + (i % 7) as f64))
            .collect();
        let b: Vec<f64> = (0..n as u64)
            .map(|i| 0.6 * a[i as usize] + 0.8 * g(n as u64 + i) * (1.0 + (i % 7) as f64))
            .collect();
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let (na, nb) = (
            a.iter().map(|x| x * x).sum::<f64>(),
            b.iter().map(|x| x * x).sum::<f64>(),
        );
        let bound = inner_std_bound(na, nb, dot);
        let cross: f64 = a.iter().zip(&b).map(|(x, y)| x * x * y * y).sum();
        let exact_std = ((na * nb + dot * dot - 2.0 * cross) / BUCKETS as f64).sqrt();
        assert!(exact_std <= bound);
        let seeds = 600u64;
        let (mut sq, mut beyond) = (0.0f64, 0);
        for seed in 0..seeds {
            let est = inner(&sketch_of(seed, 5, &a), &sketch_of(seed, 5, &b));
            let err = est - dot;
            sq += err * err;
            beyond += (err.abs() > 3.0 * bound) as u32;
        }
        let rms = (sq / seeds as f64).sqrt();
        eprintln!(
            "rms / formula {:.3}, rms / bound {:.3}, {beyond} of {seeds} beyond 3 bounds",
            rms / exact_std,
            rms / bound
        );
        assert!(
            (rms / exact_std - 1.0).abs() < 0.1,
            "rms {rms} vs the formula's {exact_std}"
        );
        assert!(rms <= 1.1 * bound, "rms {rms} vs bound {bound}");
        assert!(beyond < 6, "{beyond} of {seeds} beyond 3 sigma");
    }
}
