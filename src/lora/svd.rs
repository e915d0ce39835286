//! The truncated SVD of a weight change, as LoRA extraction and re-ranking need it: the
//! leading k singular triplets of an m×n matrix, by the randomized range finder with power
//! iterations (Halko, Martinsson and Tropp 2011, algorithms 4.4 and 5.1), every step a faer
//! product, QR or small SVD. kohya's scripts run a full `torch.linalg.svd` per module
//! (O(mn·min(m,n))); this costs O(mn·(k+p)·(2q+2)), and falls back to faer's exact thin SVD
//! when the sketch would not be much smaller than the matrix.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

use crate::rng::counter::Stream;

/// Columns added to the sketch beyond the rank kept.
pub const OVERSAMPLE: usize = 10;
/// Power iterations: each sharpens the sketch by the ratio of kept to dropped σ, squared.
pub const POWER: usize = 3;

/// The leading singular triplets of a matrix: A ≈ U·diag(s)·Vᵀ.
pub struct Truncated {
    /// m×k, orthonormal columns.
    pub u: Mat<f64>,
    /// k singular values, largest first.
    pub s: Vec<f64>,
    /// n×k, orthonormal columns.
    pub v: Mat<f64>,
}

fn product(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// An orthonormal basis of the columns of `y` (its thin QR's Q).
fn orthonormal(y: &Mat<f64>) -> Mat<f64> {
    y.qr().compute_thin_Q()
}

/// The exact thin SVD, its first `k` triplets.
fn exact(a: MatRef<'_, f64>, k: usize) -> Result<Truncated, String> {
    let svd = a
        .thin_svd()
        .map_err(|e| format!("the SVD did not converge ({e:?})"))?;
    let k = k.min(a.nrows()).min(a.ncols());
    let s: Vec<f64> = (0..k).map(|i| svd.S()[i]).collect();
    Ok(Truncated {
        u: svd.U().subcols(0, k).to_owned(),
        s,
        v: svd.V().subcols(0, k).to_owned(),
    })
}

/// The leading `k` singular triplets of `a` (seeded: the same input gives the same
/// factors on every run).
pub fn leading(a: MatRef<'_, f64>, k: usize, seed: u64) -> Result<Truncated, String> {
    let (m, n) = (a.nrows(), a.ncols());
    let small = m.min(n);
    let l = (k + OVERSAMPLE).min(small);
    // A sketch as wide as half the matrix saves little over the exact SVD.
    if 2 * l >= small {
        return exact(a, k);
    }
    let omega_stream = Stream::new(seed, (m as u64) << 32 | n as u64);
    let omega = Mat::<f64>::from_fn(n, l, |i, j| omega_stream.normal((i * l + j) as u64));
    let mut q = orthonormal(&product(a, omega.as_ref()));
    for _ in 0..POWER {
        let z = orthonormal(&product(a.transpose(), q.as_ref()));
        q = orthonormal(&product(a, z.as_ref()));
    }
    // B = Qᵀ·A is l×n; its SVD gives A's leading triplets through Q.
    let b = product(q.transpose(), a);
    let small_svd = exact(b.as_ref(), k)?;
    Ok(Truncated {
        u: product(q.as_ref(), small_svd.u.as_ref()),
        s: small_svd.s,
        v: small_svd.v,
    })
}

/// ‖A‖²_F.
pub fn energy(a: MatRef<'_, f64>) -> f64 {
    let mut e = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            e += a[(i, j)] * a[(i, j)];
        }
    }
    e
}

/// How many leading triplets to keep: a fixed rank, or the smallest reaching a share of
/// the energy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankRule {
    Fixed(usize),
    /// The smallest r with Σᵢ<r σᵢ² ≥ share·‖A‖², at most `max`.
    Energy {
        share: f64,
        max: usize,
    },
}

/// The leading triplets `rule` keeps, and ‖A‖²_F. With an energy rule the sketch grows
/// (doubling from 16) until its triplets reach the share or it holds every one.
pub fn truncate(a: MatRef<'_, f64>, rule: RankRule, seed: u64) -> Result<(Truncated, f64), String> {
    let total = energy(a);
    let small = a.nrows().min(a.ncols());
    match rule {
        RankRule::Fixed(r) => Ok((leading(a, r.min(small), seed)?, total)),
        RankRule::Energy { share, max } => {
            let cap = max.min(small).max(1);
            let mut k = 16.min(cap);
            loop {
                let t = leading(a, k, seed)?;
                let mut acc = 0.0;
                let reached = t.s.iter().position(|s| {
                    acc += s * s;
                    acc >= share * total
                });
                match reached {
                    Some(i) => return Ok((keep(t, i + 1), total)),
                    None if k >= cap => return Ok((t, total)),
                    None => k = (2 * k).min(cap),
                }
            }
        }
    }
}

/// The first `r` triplets.
fn keep(t: Truncated, r: usize) -> Truncated {
    Truncated {
        u: t.u.subcols(0, r).to_owned(),
        s: t.s[..r].to_vec(),
        v: t.v.subcols(0, r).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A planted A = Σ σᵢ uᵢvᵢᵀ with orthonormal u, v (from QR of seeded noise).
    fn planted(m: usize, n: usize, sigma: &[f64]) -> Mat<f64> {
        let st = Stream::new(7, 1);
        let k = sigma.len();
        let u = orthonormal(&Mat::from_fn(m, k, |i, j| st.normal((i * k + j) as u64)));
        let v = orthonormal(&Mat::from_fn(n, k, |i, j| {
            st.normal((1 << 40) + (i * k + j) as u64)
        }));
        Mat::from_fn(m, n, |i, j| {
            (0..k).map(|t| sigma[t] * u[(i, t)] * v[(j, t)]).sum()
        })
    }

    #[test]
    fn randomized_finds_the_planted_singular_values() {
        let sigma: Vec<f64> = (0..60).map(|i| 10.0 * 0.8f64.powi(i)).collect();
        let a = planted(300, 200, &sigma);
        let t = leading(a.as_ref(), 8, 1).unwrap();
        for (got, want) in t.s.iter().zip(&sigma) {
            assert!((got - want).abs() <= 1e-8 * want, "{got} vs {want}");
        }
        // U·diag(s)·Vᵀ is the best rank-8 approximation: the residual is the tail.
        let approx = product(
            product(
                t.u.as_ref(),
                Mat::from_fn(8, 8, |i, j| if i == j { t.s[i] } else { 0.0 }).as_ref(),
            )
            .as_ref(),
            t.v.transpose(),
        );
        let resid = energy((&a - &approx).as_ref());
        let tail: f64 = sigma[8..].iter().map(|s| s * s).sum();
        assert!((resid - tail).abs() <= 1e-6 * tail, "{resid} vs {tail}");
    }

    #[test]
    fn energy_rule_keeps_the_smallest_rank_reaching_the_share() {
        let sigma: Vec<f64> = (0..40).map(|i| 0.9f64.powi(i)).collect();
        let a = planted(120, 90, &sigma);
        let total: f64 = sigma.iter().map(|s| s * s).sum();
        let mut acc = 0.0;
        let want = sigma
            .iter()
            .position(|s| {
                acc += s * s;
                acc >= 0.9 * total
            })
            .unwrap()
            + 1;
        let (t, e) = truncate(
            a.as_ref(),
            RankRule::Energy {
                share: 0.9,
                max: usize::MAX,
            },
            3,
        )
        .unwrap();
        assert_eq!(t.s.len(), want);
        assert!((e - total).abs() <= 1e-9 * total);
    }
}
