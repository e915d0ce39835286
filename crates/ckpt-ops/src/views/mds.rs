//! Classical (Torgerson) multidimensional scaling: a 2-D map of models whose positions mean
//! distance, from their distance matrix.
//!
//! B = −½·J·D²·J with J = I − 11ᵀ/n (double centring); the coordinates on axis k are
//! vₖ·√λₖ for the two largest eigenvalues λₖ of B (eigenvectors vₖ, via faer). When the
//! points truly lie in a plane the map reproduces every distance exactly. The map reports
//! how much it explains: the share of the positive eigenvalues the two axes carry, and
//! Kruskal's stress-1 √(Σ(dᵢⱼ − d̂ᵢⱼ)² / Σdᵢⱼ²) between the true and the mapped distances.

use faer::{Mat, Side};
use serde::Serialize;

/// A 2-D map.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mds {
    /// One point per model, in the units of the distances.
    pub coords: Vec<[f64; 2]>,
    /// (λ₁ + λ₂) / Σ positive λ, in [0, 1].
    pub variance_explained: f64,
    /// Kruskal's stress-1 of the mapped distances (0 = exact).
    pub stress: f64,
}

/// Maps the points whose pairwise distances are `d` (symmetric, zero diagonal).
pub(crate) fn classical_mds(d: &[Vec<f64>]) -> Mds {
    let n = d.len();
    if n < 2 {
        return Mds {
            coords: vec![[0.0, 0.0]; n],
            variance_explained: 1.0,
            stress: 0.0,
        };
    }
    let d2 = |i: usize, j: usize| d[i][j] * d[i][j];
    let row_mean: Vec<f64> = (0..n)
        .map(|i| (0..n).map(|j| d2(i, j)).sum::<f64>() / n as f64)
        .collect();
    let all_mean = row_mean.iter().sum::<f64>() / n as f64;
    let b = Mat::<f64>::from_fn(n, n, |i, j| {
        -0.5 * (d2(i, j) - row_mean[i] - row_mean[j] + all_mean)
    });
    let (values, vectors): (Vec<f64>, Vec<Vec<f64>>) = match b.self_adjoint_eigen(Side::Lower) {
        Ok(evd) => {
            let s = evd.S().column_vector();
            let u = evd.U();
            (
                (0..n).map(|k| s[k]).collect(),
                (0..n)
                    .map(|k| (0..n).map(|i| u[(i, k)]).collect())
                    .collect(),
            )
        }
        Err(_) => (vec![0.0; n], vec![vec![0.0; n]; n]),
    };
    // Eigenvalues come in nondecreasing order: the last two are the largest.
    let mut coords = vec![[0.0f64; 2]; n];
    for axis in 0..2 {
        let k = n - 1 - axis;
        let scale = values[k].max(0.0).sqrt();
        let mut col: Vec<f64> = vectors[k].iter().map(|v| v * scale).collect();
        // A deterministic orientation: the first point (the base) on the negative side.
        let pivot = if col[0].abs() > 1e-12 * scale.max(1.0) {
            col[0]
        } else {
            *col.iter()
                .max_by(|a, b| a.abs().total_cmp(&b.abs()))
                .expect("n >= 2")
                * -1.0
        };
        if pivot > 0.0 {
            col.iter_mut().for_each(|v| *v = -*v);
        }
        for (point, v) in coords.iter_mut().zip(&col) {
            point[axis] = *v;
        }
    }
    let positive: f64 = values.iter().filter(|v| **v > 0.0).sum();
    let explained = if positive > 0.0 {
        (values[n - 1].max(0.0) + values[n - 2].max(0.0)) / positive
    } else {
        1.0
    };
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..n {
        for j in i + 1..n {
            let mapped = ((coords[i][0] - coords[j][0]).powi(2)
                + (coords[i][1] - coords[j][1]).powi(2))
            .sqrt();
            num += (d[i][j] - mapped).powi(2);
            den += d[i][j].powi(2);
        }
    }
    Mds {
        coords,
        variance_explained: explained.min(1.0),
        stress: if den > 0.0 { (num / den).sqrt() } else { 0.0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(p: &[[f64; 2]]) -> Vec<Vec<f64>> {
        p.iter()
            .map(|a| {
                p.iter()
                    .map(|b| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn planar_points_are_reproduced() {
        let pts = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.5, 2.0], [-2.0, 1.0]];
        let m = classical_mds(&dist(&pts));
        let mapped = dist(&m.coords);
        let truth = dist(&pts);
        for i in 0..pts.len() {
            for j in 0..pts.len() {
                assert!((mapped[i][j] - truth[i][j]).abs() < 1e-9, "{i},{j}");
            }
        }
        assert!(m.stress < 1e-12);
        assert!((m.variance_explained - 1.0).abs() < 1e-12);
    }

    #[test]
    fn three_dimensions_lose_some() {
        let d = vec![
            vec![0.0, 1.0, 1.0, 1.0],
            vec![1.0, 0.0, 1.0, 1.0],
            vec![1.0, 1.0, 0.0, 1.0],
            vec![1.0, 1.0, 1.0, 0.0],
        ];
        let m = classical_mds(&d); // a regular tetrahedron
        assert!((m.variance_explained - 2.0 / 3.0).abs() < 1e-9);
        assert!(m.stress > 0.01);
    }
}
