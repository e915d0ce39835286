//! What a checkpoint was made of, from the index alone: exact file and component matches,
//! the nearest indexed models per row by delta cosine, and a non-negative recipe fitted per
//! block group from the sketches, with jackknife error bars and the share of the target's
//! delta it explains.
//!
//! Deltas are taken from a base (given, or the indexed model at the centre of the others).
//! Candidates that are themselves explained by other candidates (merges of them) are left
//! out, so a recipe names the models a merge was made from, not other merges of them.

use crate::index::{Entry, Index, IndexError, NewEntry};
use crate::sketch::{BUCKETS, Fingerprint, inner};
use ckpt_core::catalog::releases;

/// Fingerprints held at once while the index is streamed: the shortlist a recipe is fitted
/// from (each is `rows x 4096 x 8` bytes, under 1 MB).
const SHORTLIST: usize = 48;

/// Why a lineage cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(
        "the index holds {count} models of this architecture and scale ({arch}); the \
         candidate parents must be indexed"
    )]
    TooFewCandidates { count: usize, arch: &'static str },
}

/// The base deltas are taken from.
pub enum Base {
    /// An indexed candidate (see [`Candidates::indexed`]).
    Indexed(usize),
    /// A model outside the index, fingerprinted.
    File(Box<NewEntry>),
    /// An indexed official release of the target's architecture, else the indexed model at
    /// the centre of the others.
    Auto,
}

/// The indexed models a target may come from, and what it matches exactly.
pub struct Candidates<'i> {
    index: &'i Index,
    target: &'i NewEntry,
    /// Same architecture and scale, not the target itself.
    same: Vec<Entry>,
    /// Exact matches: an official release, the model toolkit's known components, files and
    /// components byte for byte.
    pub matches: Vec<String>,
}

/// A lineage found: the report, and each model it names with its path (the base first).
pub struct Explained {
    pub report: LineageReport,
    pub names: Vec<String>,
    pub paths: Vec<String>,
}

impl<'i> Candidates<'i> {
    /// Reads the index's entries: the target's exact matches and its candidates.
    pub fn new(index: &'i Index, target: &'i NewEntry) -> Result<Candidates<'i>, IndexError> {
        let t = &target.record;
        let entries = index.entries()?;
        let mut matches = Vec::new();
        if let Some(r) = t.sha256.as_deref().and_then(releases::by_sha256) {
            matches.push(format!("the file is the official {} ({})", r.name, r.file));
        }
        for m in &target.toolkit_matches {
            matches.push(format!("{m} (by the model toolkit's known metric)"));
        }
        for e in &entries {
            let e = &e.record;
            if e.path == t.path {
                continue;
            }
            if t.sha256.is_some() && e.sha256 == t.sha256 {
                matches.push(format!("the file is byte-identical to {}", e.name));
            }
            for (c, exact, fp16) in &t.components {
                for (c2, e2, f2) in &e.components {
                    if c == c2 && exact == e2 {
                        matches.push(format!("the {c} is byte-identical to {}'s", e.name));
                    } else if c == c2 && fp16 == f2 {
                        matches.push(format!("the {c} equals {}'s in fp16 form", e.name));
                    }
                }
            }
        }
        let same = entries
            .into_iter()
            .filter(|e| {
                let e = &e.record;
                e.arch == t.arch && e.scale == t.scale && e.path != t.path
            })
            .filter(|e| t.sha256.is_none() || e.record.sha256 != t.sha256)
            .collect();
        Ok(Candidates {
            index,
            target,
            same,
            matches,
        })
    }

    /// The candidate named or at the path `what`, if there is one.
    pub fn indexed(&self, what: &str) -> Option<usize> {
        self.same
            .iter()
            .position(|e| e.record.name == what || e.record.path == what)
    }

    /// The base [`Base::Auto`] picks.
    fn auto_base(&self) -> Result<usize, LineageError> {
        let t = &self.target.record;
        if self.same.len() < 2 {
            return Err(LineageError::TooFewCandidates {
                count: self.same.len(),
                arch: crate::index::Record::arch_name(t.arch),
            });
        }
        let official = self.same.iter().position(|e| {
            e.record
                .sha256
                .as_deref()
                .and_then(releases::by_sha256)
                .is_some_and(|r| t.arch.is_some_and(|a| r.arch == a.id()))
        });
        if let Some(i) = official {
            return Ok(i);
        }
        let mut scan = CentreScan::new(self.index.fingerprint(self.same[0].id)?);
        for e in &self.same {
            scan.add(&self.index.fingerprint(e.id)?);
        }
        let mut best = (f64::INFINITY, 0);
        for (i, e) in self.same.iter().enumerate() {
            let s = scan.score(&self.index.fingerprint(e.id)?);
            if s < best.0 {
                best = (s, i);
            }
        }
        Ok(best.1)
    }

    /// The nearest models per row (`top` each) and the recipe fitted from a shortlist of
    /// the candidates, deltas taken from `base`.
    pub fn explain(&self, base: Base, top: usize) -> Result<Explained, LineageError> {
        let (base_name, base_path, base_fp, base_at) = match base {
            Base::File(e) => (e.record.name, e.record.path, e.fingerprint, None),
            Base::Indexed(i) => self.indexed_base(i)?,
            Base::Auto => self.indexed_base(self.auto_base()?)?,
        };
        let mut shortlist = Shortlist::new(&self.target.fingerprint, &base_fp, SHORTLIST);
        for (i, e) in self.same.iter().enumerate() {
            if Some(i) != base_at {
                shortlist.offer(i, self.index.fingerprint(e.id)?);
            }
        }
        let mut names = vec![base_name];
        let mut paths = vec![base_path];
        for &(_, i, _) in &shortlist.kept {
            names.push(self.same[i].record.name.clone());
            paths.push(self.same[i].record.path.clone());
        }
        let known: Vec<Known<'_>> = std::iter::once(&base_fp)
            .chain(shortlist.kept.iter().map(|k| &k.2))
            .zip(&names)
            .map(|(f, n)| Known {
                name: n,
                fingerprint: f,
            })
            .collect();
        let mut report = lineage(&self.target.fingerprint, &known, 0);
        for n in &mut report.nearest {
            n.models.truncate(top);
        }
        Ok(Explained {
            report,
            names,
            paths,
        })
    }

    fn indexed_base(
        &self,
        i: usize,
    ) -> Result<(String, String, Fingerprint, Option<usize>), IndexError> {
        let e = &self.same[i];
        Ok((
            e.record.name.clone(),
            e.record.path.clone(),
            self.index.fingerprint(e.id)?,
            Some(i),
        ))
    }
}

/// A model as the lineage sees it: its name and fingerprint.
pub struct Known<'a> {
    pub name: &'a str,
    pub fingerprint: &'a Fingerprint,
}

/// One group's fitted recipe.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupFit {
    /// `IN`, `M`, `OUT`, `D`, `S`, `J`, or a component row (`TE1`, `VAE`, ...).
    pub group: String,
    /// (candidate name, weight, error bar: three jackknife standard deviations).
    pub weights: Vec<(String, f64, f64)>,
    /// Share of the target's squared delta the recipe explains, 1 - |residual|^2 / |delta|^2.
    pub explained: f64,
    /// The target's squared delta norm in this group (0: the group equals the base).
    pub delta_norm2: f64,
}

/// The nearest candidates of one row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Nearest {
    pub row: String,
    /// (name, delta cosine), best first.
    pub models: Vec<(String, f64)>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LineageReport {
    pub base: String,
    pub nearest: Vec<Nearest>,
    pub groups: Vec<GroupFit>,
    /// Candidates with a weight beyond its error bar in some group, by total weight.
    pub parents: Vec<String>,
    /// Share of the whole delta explained (all groups together).
    pub explained: f64,
    /// Whether the target is explained as a merge of indexed models (explained >= 0.95).
    pub is_merge: bool,
    /// Candidates left out because other candidates explain them.
    pub merges_left_out: Vec<String>,
}

/// The recipe group of a row: a denoiser block's letters (`IN`, `M`, `OUT`, `D`, `S`, `J`),
/// else the row (`TE1`, `VAE`, ...).
pub fn group_of(label: &str, component: &str) -> String {
    if ckpt_core::catalog::Component::parse(component).is_some_and(|c| c.is_denoiser()) {
        label
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect()
    } else {
        label.to_string()
    }
}

/// Delta sketches `fp - base` per row.
fn delta(fp: &Fingerprint, base: &Fingerprint) -> Vec<Vec<f64>> {
    fp.rows
        .iter()
        .zip(&base.rows)
        .map(|(a, b)| a.sketch.iter().zip(&b.sketch).map(|(x, y)| x - y).collect())
        .collect()
}

/// Bucket groups of the jackknife.
const FOLDS: usize = 16;

/// Per fold `f` (and `FOLDS` for all buckets), the inner product of two delta rows over the
/// buckets outside fold `f`.
fn folded(a: &[f64], b: &[f64]) -> [f64; FOLDS + 1] {
    let per = BUCKETS / FOLDS;
    let mut part = [0.0f64; FOLDS + 1];
    for f in 0..FOLDS {
        part[f] = inner(&a[f * per..(f + 1) * per], &b[f * per..(f + 1) * per]);
    }
    let total: f64 = part[..FOLDS].iter().sum();
    for p in part.iter_mut().take(FOLDS) {
        *p = total - *p;
    }
    part[FOLDS] = total;
    part
}

/// Non-negative least squares `min |t - sum w_i m_i|^2, w >= 0` from the normal equations
/// (`g` = Gram of the candidates, `b` = their products with the target), by projected
/// coordinate descent (exact for the small, well-posed systems here).
pub fn nnls(g: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut w = vec![0.0f64; n];
    for _ in 0..2000 {
        let mut moved = 0.0f64;
        for i in 0..n {
            if g[i][i] <= 0.0 {
                continue;
            }
            let grad: f64 = (0..n).map(|j| g[i][j] * w[j]).sum::<f64>() - b[i];
            let next = (w[i] - grad / g[i][i]).max(0.0);
            moved = moved.max((next - w[i]).abs());
            w[i] = next;
        }
        if moved < 1e-13 {
            break;
        }
    }
    w
}

/// `|t|^2 - 2 w.b + w G w`: the residual of a fit.
fn residual(tt: f64, g: &[Vec<f64>], b: &[f64], w: &[f64]) -> f64 {
    let n = w.len();
    let mut r = tt;
    for i in 0..n {
        r -= 2.0 * w[i] * b[i];
        for j in 0..n {
            r += w[i] * g[i][j] * w[j];
        }
    }
    r.max(0.0)
}

/// Products per group over the rows of each group: `[group][fold]`.
struct GroupProducts {
    names: Vec<String>,
    rows: Vec<Vec<usize>>,
}

impl GroupProducts {
    fn new(fp: &Fingerprint) -> GroupProducts {
        let mut names: Vec<String> = Vec::new();
        let mut rows: Vec<Vec<usize>> = Vec::new();
        for (i, r) in fp.rows.iter().enumerate() {
            if r.label == "OTHER" || r.params == 0 {
                continue;
            }
            let g = group_of(&r.label, &r.component);
            match names.iter().position(|n| *n == g) {
                Some(k) => rows[k].push(i),
                None => {
                    names.push(g);
                    rows.push(vec![i]);
                }
            }
        }
        GroupProducts { names, rows }
    }

    fn product(&self, g: usize, a: &[Vec<f64>], b: &[Vec<f64>]) -> [f64; FOLDS + 1] {
        let mut out = [0.0; FOLDS + 1];
        for &r in &self.rows[g] {
            let p = folded(&a[r], &b[r]);
            for (o, x) in out.iter_mut().zip(p) {
                *o += x;
            }
        }
        out
    }
}

/// A fit of `target` on `cands` in group `g`: weights, jackknife error bars, explained share.
fn fit_group(
    gp: &GroupProducts,
    g: usize,
    target: &[Vec<f64>],
    cands: &[&Vec<Vec<f64>>],
) -> (Vec<f64>, Vec<f64>, f64, f64) {
    let n = cands.len();
    let tt = gp.product(g, target, target);
    let tb: Vec<[f64; FOLDS + 1]> = cands.iter().map(|c| gp.product(g, c, target)).collect();
    let mut gg = vec![vec![[0.0; FOLDS + 1]; n]; n];
    for i in 0..n {
        for j in i..n {
            let p = gp.product(g, cands[i], cands[j]);
            gg[i][j] = p;
            gg[j][i] = p;
        }
    }
    let solve = |f: usize| -> Vec<f64> {
        let gm: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..n).map(|j| gg[i][j][f]).collect())
            .collect();
        let bv: Vec<f64> = tb.iter().map(|x| x[f]).collect();
        nnls(&gm, &bv)
    };
    let w = solve(FOLDS);
    let folds: Vec<Vec<f64>> = (0..FOLDS).map(solve).collect();
    let err: Vec<f64> = (0..n)
        .map(|i| {
            let mean = folds.iter().map(|f| f[i]).sum::<f64>() / FOLDS as f64;
            let var = folds.iter().map(|f| (f[i] - mean).powi(2)).sum::<f64>() * (FOLDS - 1) as f64
                / FOLDS as f64;
            3.0 * var.sqrt()
        })
        .collect();
    let gm: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| gg[i][j][FOLDS]).collect())
        .collect();
    let bv: Vec<f64> = tb.iter().map(|x| x[FOLDS]).collect();
    let res = residual(tt[FOLDS], &gm, &bv, &w);
    (w, err, res, tt[FOLDS])
}

/// Share of `c`'s delta that the others explain, fitted per group.
fn explained_by(gp: &GroupProducts, c: &[Vec<f64>], others: &[&Vec<Vec<f64>>]) -> f64 {
    let (mut res, mut total) = (0.0, 0.0);
    for g in 0..gp.names.len() {
        let (_, _, r, t) = fit_group(gp, g, c, others);
        res += r;
        total += t;
    }
    if total == 0.0 { 0.0 } else { 1.0 - res / total }
}

/// Cosine of two whole deltas (all rows together) from their row sketches.
fn whole_cosine(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let (mut aa, mut ab, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        aa += inner(x, x);
        ab += inner(x, y);
        bb += inner(y, y);
    }
    ckpt_core::gram::cosine(aa, ab, bb)
}

/// Delta cosine of two rows' sketches.
fn cosine(a: &[f64], b: &[f64]) -> f64 {
    ckpt_core::gram::cosine(inner(a, a), inner(a, b), inner(b, b))
}

/// The most candidates a recipe is fitted over (the nearest by delta cosine).
const MAX_CANDIDATES: usize = 24;

/// The lineage of `target` among `known`, deltas from `known[base]`.
pub fn lineage(target: &Fingerprint, known: &[Known<'_>], base: usize) -> LineageReport {
    let base_fp = known[base].fingerprint;
    let dt = delta(target, base_fp);
    let gp = GroupProducts::new(target);
    let others: Vec<usize> = (0..known.len()).filter(|&i| i != base).collect();
    let deltas: Vec<Vec<Vec<f64>>> = others
        .iter()
        .map(|&i| delta(known[i].fingerprint, base_fp))
        .collect();
    // Nearest per row.
    let nearest: Vec<Nearest> = target
        .rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.params > 0 && r.label != "OTHER")
        .map(|(ri, r)| {
            let mut m: Vec<(String, f64)> = others
                .iter()
                .zip(&deltas)
                .map(|(&i, d)| (known[i].name.to_string(), cosine(&dt[ri], &d[ri])))
                .collect();
            m.sort_by(|a, b| b.1.total_cmp(&a.1));
            m.truncate(3);
            Nearest {
                row: r.label.clone(),
                models: m,
            }
        })
        .collect();
    // Candidates: the nearest by whole-delta cosine.
    let whole: Vec<f64> = deltas.iter().map(|d| whole_cosine(&dt, d)).collect();
    let mut order: Vec<usize> = (0..others.len()).collect();
    order.sort_by(|&a, &b| whole[b].total_cmp(&whole[a]));
    order.truncate(MAX_CANDIDATES);
    // Leave out candidates that the other candidates explain (merges of them).
    let mut kept: Vec<usize> = Vec::new();
    let mut merges_left_out = Vec::new();
    for &c in &order {
        let rest: Vec<&Vec<Vec<f64>>> = order
            .iter()
            .filter(|&&o| o != c)
            .map(|&o| &deltas[o])
            .collect();
        if !rest.is_empty() && explained_by(&gp, &deltas[c], &rest) >= 0.99 {
            merges_left_out.push(known[others[c]].name.to_string());
        } else {
            kept.push(c);
        }
    }
    let cands: Vec<&Vec<Vec<f64>>> = kept.iter().map(|&c| &deltas[c]).collect();
    let mut groups = Vec::new();
    let (mut res, mut total) = (0.0, 0.0);
    let mut weight_of = vec![0.0f64; kept.len()];
    let mut significant = vec![false; kept.len()];
    for g in 0..gp.names.len() {
        let (w, err, r, t) = fit_group(&gp, g, &dt, &cands);
        res += r;
        total += t;
        for i in 0..w.len() {
            weight_of[i] += w[i];
            if w[i] > err[i] && w[i] > 0.02 {
                significant[i] = true;
            }
        }
        let mut weights: Vec<(String, f64, f64)> = kept
            .iter()
            .zip(w.iter().zip(&err))
            .filter(|(_, (w, _))| **w > 0.0)
            .map(|(&c, (&w, &e))| (known[others[c]].name.to_string(), w, e))
            .collect();
        weights.sort_by(|a, b| b.1.total_cmp(&a.1));
        groups.push(GroupFit {
            group: gp.names[g].clone(),
            weights,
            explained: if t == 0.0 { 1.0 } else { 1.0 - r / t },
            delta_norm2: t,
        });
    }
    let explained = if total == 0.0 { 1.0 } else { 1.0 - res / total };
    let mut parents: Vec<(String, f64)> = kept
        .iter()
        .enumerate()
        .filter(|(i, _)| significant[*i])
        .map(|(i, &c)| (known[others[c]].name.to_string(), weight_of[i]))
        .collect();
    parents.sort_by(|a, b| b.1.total_cmp(&a.1));
    let is_merge = explained >= 0.95;
    LineageReport {
        base: known[base].name.to_string(),
        nearest,
        groups,
        parents: if is_merge {
            parents.into_iter().map(|(n, _)| n).collect()
        } else {
            Vec::new()
        },
        explained,
        is_merge,
        merges_left_out,
    }
}

/// The exact check of a lineage: the recipe refitted on the parents' weights themselves, and
/// the clone's similarity to the target per row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verified {
    /// Per group: (parent, exact weight).
    pub groups: Vec<(String, Vec<(String, f64)>)>,
    /// Per row: the cosine similarity of the clone `base + sum w (parent - base)` and the
    /// target.
    pub rows: Vec<(String, f64)>,
    /// The mean over the rows (the published convention), and the lowest row.
    pub mean: f64,
    pub lowest: f64,
}

/// Reads `models` = [target, base, parents...] in one pass and fits the recipe exactly.
pub fn verify(
    models: &[&ckpt_read::Checkpoint],
    report: &LineageReport,
    pass: &ckpt_core::pass::Pass<'_>,
) -> Result<Verified, ckpt_core::pass::PassError> {
    use ckpt_core::catalog::{Grouping, detect};
    use ckpt_core::gram::{GramSpec, gather};
    let plan = ckpt_core::pass::Plan::new(models.to_vec());
    let grouping = match detect(models[0]).arch() {
        Some(a) => Grouping::for_arch(a),
        None => Grouping::generic(plan.entries().iter().map(|e| e.key.as_str())),
    };
    let entries: Vec<usize> = (0..plan.entries().len()).collect();
    let spec = GramSpec {
        center: None,
        per_tensor: false,
        distances: false,
    };
    let ip = gather(&plan, &grouping, &entries, spec, pass)?;
    let k = models.len() - 2;
    let (t, b) = (0usize, 1usize);
    // Rows per recipe group, as the sketch fit grouped them.
    let mut group_rows: Vec<(String, Vec<usize>)> = Vec::new();
    for (r, g) in grouping.groups().iter().enumerate() {
        if g.label == "OTHER" || ip.rows[r].gram.get(t, t) == 0.0 {
            continue;
        }
        let name = group_of(&g.label, g.component.id());
        match group_rows.iter_mut().find(|(n, _)| *n == name) {
            Some((_, rows)) => rows.push(r),
            None => group_rows.push((name, vec![r])),
        }
    }
    let mut groups = Vec::new();
    let mut rows = Vec::new();
    for (name, rs) in &group_rows {
        let g = ip.sum_rows(rs.iter().copied()).gram;
        // Delta products from the raw ones: <x_i - b, x_j - b>.
        let d = |i: usize, j: usize| g.get(i, j) - g.get(i, b) - g.get(j, b) + g.get(b, b);
        let gm: Vec<Vec<f64>> = (0..k)
            .map(|i| (0..k).map(|j| d(i + 2, j + 2)).collect())
            .collect();
        let bv: Vec<f64> = (0..k).map(|i| d(i + 2, t)).collect();
        let w = nnls(&gm, &bv);
        groups.push((
            name.clone(),
            report
                .parents
                .iter()
                .cloned()
                .zip(w.iter().copied())
                .collect(),
        ));
        // The clone's coefficients on [target, base, parents].
        let mut a = vec![0.0f64; models.len()];
        a[b] = 1.0 - w.iter().sum::<f64>();
        a[2..k + 2].copy_from_slice(&w[..k]);
        for &r in rs {
            let gr = &ip.rows[r].gram;
            let tc: f64 = (0..a.len()).map(|j| a[j] * gr.get(t, j)).sum();
            let cc: f64 = (0..a.len())
                .flat_map(|i| (0..a.len()).map(move |j| (i, j)))
                .map(|(i, j)| a[i] * a[j] * gr.get(i, j))
                .sum();
            rows.push((
                grouping.groups()[r].label.clone(),
                ckpt_core::gram::cosine(gr.get(t, t), tc, cc),
            ));
        }
    }
    let mean = rows.iter().map(|(_, s)| s).sum::<f64>() / rows.len().max(1) as f64;
    let lowest = rows.iter().map(|(_, s)| *s).fold(1.0, f64::min);
    Ok(Verified {
        groups,
        rows,
        mean,
        lowest,
    })
}

/// The model at the centre of the others (a base sits at the centre of its fine-tunes): the
/// smallest sum of squared sketch distances to all, found in two streamed scans with
/// `O(1)` fingerprints in memory. With `y = x - pivot`,
/// `sum_j |y_i - y_j|^2 = n |y_i|^2 - 2 <y_i, sum_j y_j> + sum_j |y_j|^2`; taking deltas from
/// a pivot first keeps the terms at the scale of the differences, not of the weights.
pub struct CentreScan {
    pivot: Fingerprint,
    sum: Vec<Vec<f64>>,
    sum_sq: f64,
    n: usize,
}

impl CentreScan {
    pub fn new(pivot: Fingerprint) -> CentreScan {
        let sum = pivot
            .rows
            .iter()
            .map(|r| vec![0.0; r.sketch.len()])
            .collect();
        CentreScan {
            pivot,
            sum,
            sum_sq: 0.0,
            n: 0,
        }
    }

    /// First scan: every model once.
    pub fn add(&mut self, fp: &Fingerprint) {
        for (s, y) in self.sum.iter_mut().zip(delta(fp, &self.pivot)) {
            self.sum_sq += inner(&y, &y);
            for (a, b) in s.iter_mut().zip(&y) {
                *a += b;
            }
        }
        self.n += 1;
    }

    /// Second scan: a model's sum of squared distances to all (the smallest is the centre).
    pub fn score(&self, fp: &Fingerprint) -> f64 {
        let mut out = self.sum_sq;
        for (s, y) in self.sum.iter().zip(delta(fp, &self.pivot)) {
            out += self.n as f64 * inner(&y, &y) - 2.0 * inner(&y, s);
        }
        out
    }
}

/// The `keep` models nearest the target by whole-delta cosine, offered one at a time (with
/// the caller's id for each) so only `keep` fingerprints are held (the index is streamed
/// past it).
pub struct Shortlist<'a> {
    target: Vec<Vec<f64>>,
    base: &'a Fingerprint,
    keep: usize,
    /// (cosine, id, fingerprint), best first.
    pub kept: Vec<(f64, usize, Fingerprint)>,
}

impl<'a> Shortlist<'a> {
    pub fn new(target: &Fingerprint, base: &'a Fingerprint, keep: usize) -> Shortlist<'a> {
        Shortlist {
            target: delta(target, base),
            base,
            keep,
            kept: Vec::new(),
        }
    }

    pub fn offer(&mut self, id: usize, fp: Fingerprint) {
        let c = whole_cosine(&self.target, &delta(&fp, self.base));
        let at = self.kept.partition_point(|k| k.0 >= c);
        if at < self.keep {
            self.kept.insert(at, (c, id, fp));
            self.kept.truncate(self.keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_nnls_recovers_a_nonnegative_solution() {
        // t = 0.3 a + 0.7 b, c orthogonal to both.
        let g = vec![
            vec![1.0, 0.2, 0.0],
            vec![0.2, 1.0, 0.0],
            vec![0.0, 0.0, 1.0],
        ];
        let b = vec![0.3 + 0.7 * 0.2, 0.3 * 0.2 + 0.7, 0.0];
        let w = nnls(&g, &b);
        assert!((w[0] - 0.3).abs() < 1e-9 && (w[1] - 0.7).abs() < 1e-9 && w[2].abs() < 1e-12);
        // A negative least-squares solution is clipped to 0.
        let w = nnls(&[vec![1.0]], &[-2.0]);
        assert_eq!(w, vec![0.0]);
    }

    fn random_fp(seed: u64, rows: usize) -> Fingerprint {
        let st = ckpt_core::rng::counter::Stream::new(seed, 1);
        Fingerprint {
            rows: (0..rows)
                .map(|r| crate::sketch::RowSketch {
                    label: format!("IN{r:02}"),
                    component: "unet".into(),
                    params: 1,
                    norm2: 1.0,
                    sketch: (0..BUCKETS)
                        .map(|b| 10.0 + st.uniform((r * BUCKETS + b) as u64))
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn test_centre_scan_equals_the_pairwise_sums() {
        let fps: Vec<Fingerprint> = (0..7).map(|s| random_fp(s, 3)).collect();
        // The naive definition: every pair's squared sketch distance.
        let naive: Vec<f64> = fps
            .iter()
            .map(|a| {
                fps.iter()
                    .map(|b| {
                        a.rows
                            .iter()
                            .zip(&b.rows)
                            .flat_map(|(x, y)| x.sketch.iter().zip(&y.sketch))
                            .map(|(p, q)| (p - q) * (p - q))
                            .sum::<f64>()
                    })
                    .sum()
            })
            .collect();
        let mut scan = CentreScan::new(fps[3].clone());
        fps.iter().for_each(|f| scan.add(f));
        for (f, want) in fps.iter().zip(&naive) {
            let got = scan.score(f);
            assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
        }
    }

    #[test]
    fn test_shortlist_keeps_the_nearest() {
        let base = random_fp(0, 2);
        let target = random_fp(1, 2);
        let mut all = Vec::new();
        let mut sl = Shortlist::new(&target, &base, 3);
        for s in 2..12 {
            let fp = random_fp(s, 2);
            let d = delta(&fp, &base);
            let t = delta(&target, &base);
            let c = ckpt_core::gram::cosine(
                t.iter().map(|x| inner(x, x)).sum(),
                t.iter().zip(&d).map(|(x, y)| inner(x, y)).sum(),
                d.iter().map(|x| inner(x, x)).sum(),
            );
            all.push((c, s as usize));
            sl.offer(s as usize, fp);
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        let want: Vec<usize> = all[..3].iter().map(|x| x.1).collect();
        let got: Vec<usize> = sl.kept.iter().map(|x| x.1).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn test_groups() {
        assert_eq!(group_of("IN04", "unet"), "IN");
        assert_eq!(group_of("M00", "unet"), "M");
        assert_eq!(group_of("OUT11", "unet"), "OUT");
        assert_eq!(group_of("S12", "diffuser"), "S");
        assert_eq!(group_of("TE1", "te1"), "TE1");
        assert_eq!(group_of("VAE", "vae"), "VAE");
    }
}
