//! Inner products between N models, per report row and per tensor, from one pass.
//!
//! Every analysis of ckpt-diff is a function of Gram matrices: the cosine of two models is
//! G₀₁ / √(G₀₀ G₁₁); the L2 distance is √(G₀₀ + G₁₁ − 2G₀₁); the best linear recipe solves
//! normal equations in G. [`gather`] reads the models once and returns, for every row of a
//! [`Grouping`] (and every tensor on request), the N x N matrix of inner products summed
//! over the row's tensors, in f64.
//!
//! **Centering.** With `center = Some(c)`, the vectors are model c itself and the deltas
//! xᵢ − x_c of the others, computed element by element before any product. Distances
//! between nearly equal models then come from small exact differences instead of the
//! cancellation of large sums; [`Gram::uncentered`] recovers the raw products.

use serde::Serialize;

use crate::catalog::Grouping;
use crate::kernels::{self, CHUNK, packed_index, packed_len};
use crate::pass::{Absorb, EntryKind, Item, Pass, PassError, Plan, Slice, Visit};

/// A symmetric N x N matrix of inner products, stored packed (upper triangle by rows).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gram {
    pub n: usize,
    packed: Vec<f64>,
}

impl Gram {
    pub fn zeros(n: usize) -> Gram {
        Gram {
            n,
            packed: vec![0.0; packed_len(n)],
        }
    }

    /// Entry (i, j) = ⟨vᵢ, vⱼ⟩.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        let (i, j) = if i <= j { (i, j) } else { (j, i) };
        self.packed[packed_index(self.n, i, j)]
    }

    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        let (i, j) = if i <= j { (i, j) } else { (j, i) };
        self.packed[packed_index(self.n, i, j)] = v;
    }

    /// Adds another Gram matrix of the same size.
    pub fn add(&mut self, other: &Gram) {
        for (a, b) in self.packed.iter_mut().zip(&other.packed) {
            *a += b;
        }
    }

    fn add_packed(&mut self, other: &[f64]) {
        for (a, b) in self.packed.iter_mut().zip(other) {
            *a += b;
        }
    }

    /// The raw products ⟨xᵢ, xⱼ⟩ from a Gram centered on model `c` (vectors x_c and
    /// dᵢ = xᵢ − x_c): ⟨xᵢ, xⱼ⟩ = ⟨x_c + dᵢ, x_c + dⱼ⟩ with d_c = 0.
    pub fn uncentered(&self, c: usize) -> Gram {
        let mut out = Gram::zeros(self.n);
        let d = |i: usize, j: usize| -> f64 {
            match (i == c, j == c) {
                (true, true) => self.get(c, c),
                (true, false) => self.get(c, j) + self.get(c, c),
                (false, true) => self.get(i, c) + self.get(c, c),
                (false, false) => self.get(i, j) + self.get(i, c) + self.get(c, j) + self.get(c, c),
            }
        };
        for i in 0..self.n {
            for j in i..self.n {
                out.set(i, j, d(i, j));
            }
        }
        out
    }

    /// The products of the deltas xᵢ − x_c (for i, j ≠ c) from a Gram centered on `c`;
    /// row and column `c` hold zero.
    pub fn deltas(&self, c: usize) -> Gram {
        let mut out = self.clone();
        for j in 0..self.n {
            out.set(c, j, 0.0);
        }
        out
    }

    /// cos θ = ⟨vᵢ, vⱼ⟩ / (‖vᵢ‖ ‖vⱼ‖). Two zero vectors count as identical (1); a zero
    /// vector against a non-zero one scores 0.
    pub fn cosine(&self, i: usize, j: usize) -> f64 {
        cosine(self.get(i, i), self.get(i, j), self.get(j, j))
    }

    /// ‖vᵢ − vⱼ‖ = √(Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ), clamped at 0 against rounding.
    pub fn distance(&self, i: usize, j: usize) -> f64 {
        (self.get(i, i) + self.get(j, j) - 2.0 * self.get(i, j))
            .max(0.0)
            .sqrt()
    }
}

/// cos θ from ‖a‖², ⟨a,b⟩, ‖b‖² (see [`Gram::cosine`] for the zero-vector convention).
pub fn cosine(aa: f64, ab: f64, bb: f64) -> f64 {
    match (aa == 0.0, bb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        // √(aa·bb), not √aa·√bb: for a = b this gives exactly 1.
        _ => (ab / (aa * bb).sqrt()).clamp(-1.0, 1.0),
    }
}

/// What to gather.
#[derive(Clone, Copy, Debug, Default)]
pub struct GramSpec {
    /// Center on this model (see the module docs).
    pub center: Option<usize>,
    /// Keep one Gram per tensor too.
    pub per_tensor: bool,
    /// Also sum the squared differences Σ(xᵢ − xⱼ)² of every pair directly, element by
    /// element: exact for nearly equal models, where Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ cancels.
    pub distances: bool,
}

/// Sums for one report row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowSums {
    pub gram: Gram,
    /// Σ(xᵢ − xⱼ)² per pair (diagonal 0), when asked for.
    pub dist2: Option<Gram>,
    /// Elements summed (per model).
    pub params: u64,
    pub tensors: usize,
}

impl RowSums {
    fn zeros(n: usize, distances: bool) -> RowSums {
        RowSums {
            gram: Gram::zeros(n),
            dist2: distances.then(|| Gram::zeros(n)),
            params: 0,
            tensors: 0,
        }
    }
}

/// Sums for one tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorSums {
    /// Index into the plan's entries.
    pub entry: usize,
    pub row: usize,
    pub gram: Gram,
    pub dist2: Option<Gram>,
    pub params: u64,
}

/// Everything [`gather`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct InnerProducts {
    pub n: usize,
    pub center: Option<usize>,
    /// Indexed like [`Grouping::groups`].
    pub rows: Vec<RowSums>,
    /// In plan order; empty unless asked for.
    pub tensors: Vec<TensorSums>,
    /// Float entries that were summed.
    pub float_entries: Vec<usize>,
    /// Integer entries present everywhere with one shape, and whether all models hold
    /// the same values and dtype.
    pub integer_entries: Vec<(usize, bool)>,
}

impl InnerProducts {
    /// The sum of the Gram matrices of the given rows.
    pub fn sum_rows(&self, rows: impl IntoIterator<Item = usize>) -> RowSums {
        let mut total =
            RowSums::zeros(self.n, self.rows.first().is_some_and(|r| r.dist2.is_some()));
        for r in rows {
            total.gram.add(&self.rows[r].gram);
            if let (Some(t), Some(d)) = (&mut total.dist2, &self.rows[r].dist2) {
                t.add(d);
            }
            total.params += self.rows[r].params;
            total.tensors += self.rows[r].tensors;
        }
        total
    }
}

/// Reads the plan's models once and returns their inner products per row of `grouping`.
/// `entries` selects the plan entries to read; entries that are not comparable (missing,
/// other shapes, opaque types) are skipped, and the caller reports them.
pub fn gather(
    plan: &Plan<'_>,
    grouping: &Grouping,
    entries: &[usize],
    spec: GramSpec,
    pass: &Pass<'_>,
) -> Result<InnerProducts, PassError> {
    let n = plan.models().len();
    let mut float_entries = Vec::new();
    let mut integer = Vec::new();
    for &e in entries {
        match plan.kind(&plan.entries()[e]) {
            EntryKind::Float => float_entries.push(e),
            EntryKind::Integer => integer.push(e),
            _ => {}
        }
    }
    let mut row_of_entry = vec![usize::MAX; plan.entries().len()];
    for &e in float_entries.iter().chain(&integer) {
        row_of_entry[e] = grouping.group_of(&plan.entries()[e].key);
    }
    let work = GramWork {
        n,
        center: spec.center,
        distances: spec.distances,
    };
    let mut sums = GramSums {
        n,
        per_tensor: spec.per_tensor,
        distances: spec.distances,
        row_of_entry,
        rows: vec![RowSums::zeros(n, spec.distances); grouping.groups().len()],
        tensors: Vec::new(),
        integer_entries: Vec::new(),
    };
    let selected: Vec<usize> = {
        let mut all: Vec<usize> = float_entries.iter().chain(&integer).copied().collect();
        all.sort_unstable();
        all
    };
    pass.run(plan, &selected, &work, &mut sums)?;
    Ok(InnerProducts {
        n,
        center: spec.center,
        rows: sums.rows,
        tensors: sums.tensors,
        float_entries,
        integer_entries: sums.integer_entries,
    })
}

/// The per-item work: inner products of one element range of every model.
struct GramWork {
    n: usize,
    center: Option<usize>,
    distances: bool,
}

/// The running sums, per row and per tensor, absorbed in plan order.
struct GramSums {
    n: usize,
    per_tensor: bool,
    distances: bool,
    row_of_entry: Vec<usize>,
    rows: Vec<RowSums>,
    tensors: Vec<TensorSums>,
    integer_entries: Vec<(usize, bool)>,
}

enum Partial {
    /// Packed Gram, and packed squared distances when asked for.
    Float(Vec<f64>, Option<Vec<f64>>),
    /// Integer tensors: do all models hold the same bytes and dtype in this item?
    Integer(bool),
}

impl Visit for GramWork {
    type Partial = Partial;

    fn visit(
        &self,
        _plan: &Plan<'_>,
        item: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<Partial, PassError> {
        let inputs: Vec<Slice<'_>> = inputs
            .iter()
            .map(|s| s.expect("comparable entries are present everywhere"))
            .collect();
        if inputs.iter().any(|s| !s.is_float()) {
            let first = &inputs[0];
            let same = inputs
                .iter()
                .all(|s| s.dtype == first.dtype && s.bytes == first.bytes);
            return Ok(Partial::Integer(same));
        }
        let n = self.n;
        // Two models of one format, uncentered: the fused kernel reads the bytes directly
        // (and scaled tensors' products take their scales after).
        if n == 2
            && self.center.is_none()
            && !self.distances
            && let (Some((fa, sa)), Some((fb, sb))) = (inputs[0].stored(), inputs[1].stored())
            && fa == fb
            && let Some(g) = kernels::gram2_stored(fa, inputs[0].bytes, inputs[1].bytes)
        {
            let g = if sa == 1.0 && sb == 1.0 {
                g.to_vec()
            } else {
                vec![g[0] * sa * sa, g[1] * sa * sb, g[2] * sb * sb]
            };
            return Ok(Partial::Float(g, None));
        }
        let mut rows = vec![0.0f64; n * CHUNK];
        let mut gram = vec![0.0f64; packed_len(n)];
        let mut dist2 = self.distances.then(|| vec![0.0f64; packed_len(n)]);
        let mut start = 0;
        while start < item.len() {
            let len = CHUNK.min(item.len() - start);
            for (m, slice) in inputs.iter().enumerate() {
                slice
                    .part(start, start + len)
                    .values_into(&mut rows[m * CHUNK..m * CHUNK + len]);
            }
            if let Some(c) = self.center {
                let (before, rest) = rows.split_at_mut(c * CHUNK);
                let (center, after) = rest.split_at_mut(CHUNK);
                let center = &center[..len];
                for row in before.chunks_mut(CHUNK).chain(after.chunks_mut(CHUNK)) {
                    kernels::sub_assign(&mut row[..len], center);
                }
            }
            let refs: Vec<&[f64]> = rows.chunks(CHUNK).map(|r| &r[..len]).collect();
            kernels::gram_upper_acc(&refs, &mut gram);
            if let Some(d) = &mut dist2 {
                // Centered rows hold x_c and dᵢ = xᵢ − x_c: the distance to c is ‖dᵢ‖ (in
                // the Gram already), between others ‖dᵢ − dⱼ‖.
                for i in 0..n {
                    for j in i + 1..n {
                        if self.center == Some(i) || self.center == Some(j) {
                            continue;
                        }
                        d[packed_index(n, i, j)] += kernels::dist2(refs[i], refs[j]);
                    }
                }
            }
            start += len;
        }
        if let (Some(d), Some(c)) = (&mut dist2, self.center) {
            for j in (0..n).filter(|&j| j != c) {
                let (a, b) = (c.min(j), c.max(j));
                d[packed_index(n, a, b)] = gram[packed_index(n, j, j)];
            }
        }
        Ok(Partial::Float(gram, dist2))
    }
}

impl Absorb<Partial> for GramSums {
    fn absorb(&mut self, _plan: &Plan<'_>, item: &Item, partial: Partial) -> Result<(), PassError> {
        let row = self.row_of_entry[item.entry];
        match partial {
            Partial::Integer(same) => {
                if item.is_first() {
                    self.integer_entries.push((item.entry, same));
                } else if !same {
                    self.integer_entries
                        .last_mut()
                        .expect("first item came first")
                        .1 = false;
                }
            }
            Partial::Float(packed, dist2) => {
                let sums = &mut self.rows[row];
                sums.gram.add_packed(&packed);
                if let (Some(t), Some(d)) = (&mut sums.dist2, &dist2) {
                    t.add_packed(d);
                }
                sums.params += item.len() as u64;
                if item.is_first() {
                    sums.tensors += 1;
                }
                if self.per_tensor {
                    if item.is_first() {
                        let dist2 = self.distances.then(|| Gram::zeros(self.n));
                        self.tensors.push(TensorSums {
                            entry: item.entry,
                            row,
                            gram: Gram::zeros(self.n),
                            dist2,
                            params: 0,
                        });
                    }
                    let t = self.tensors.last_mut().expect("first item came first");
                    t.gram.add_packed(&packed);
                    if let (Some(t), Some(d)) = (&mut t.dist2, &dist2) {
                        t.add_packed(d);
                    }
                    t.params += item.len() as u64;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncentering_recovers_raw_products() {
        // x0 = (1,2), x1 = (3,5), x2 = (-1,4); centered on 1: v1 = x1, d0 = (-2,-3), d2 = (-4,-1).
        let xs = [[1.0, 2.0], [3.0, 5.0], [-1.0, 4.0]];
        let v = [[-2.0, -3.0], [3.0, 5.0], [-4.0, -1.0]];
        let mut g = Gram::zeros(3);
        for i in 0..3 {
            for j in i..3 {
                g.set(i, j, v[i][0] * v[j][0] + v[i][1] * v[j][1]);
            }
        }
        let raw = g.uncentered(1);
        for i in 0..3 {
            for j in 0..3 {
                assert_eq!(raw.get(i, j), xs[i][0] * xs[j][0] + xs[i][1] * xs[j][1]);
            }
        }
    }

    #[test]
    fn cosine_conventions() {
        assert_eq!(cosine(0.0, 0.0, 0.0), 1.0);
        assert_eq!(cosine(0.0, 0.0, 4.0), 0.0);
        assert_eq!(cosine(2.0, 2.0, 2.0), 1.0);
        assert_eq!(cosine(4.0, -6.0, 9.0), -1.0);
    }
}
