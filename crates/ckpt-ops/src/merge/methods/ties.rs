//! TIES-merging (Yadav et al. 2023) with the options sd-mecha's `ties_sum_with_dropout` and
//! `ties_sum_extended` combine, in this order per tensor:
//!
//! 1. the task vectors δᵢ = Mᵢ − base;
//! 2. `drop=p`: DARE keeps each element with probability 1−p (DELLA, `della_eps=ε`, shifts
//!    that probability by the element's magnitude rank r of n: (r/n − (n+1)/2n)·ε);
//! 3. `k`: the top-k fraction of each dropped δᵢ by magnitude;
//! 4. `vote`: an elected sign per element, from Σ wᵢδᵢ (`magnitude`) or Σ wᵢ·sign(δᵢ)
//!    (`count`); the deltas that agree with it are the filtered deltas gᵢ;
//! 5. `combine`: the disjoint mean Σ wᵢgᵢ / Σ_agreeing wᵢ (`mean`), that mean times Model
//!    Stock's t (`stock`), or the weighted geometric median of the gᵢ (`median`, Weiszfeld);
//! 6. `rescale`: ÷ (1−p) when elements were dropped; × `lambda`; added to the base.
//!
//! ckpt-diff's conventions, and what `like=sd-mecha` changes to reproduce sd-mecha 1.1.8:
//!
//! | | ckpt-diff | `like=sd-mecha` |
//! |---|---|---|
//! | top-k kept | the ⌈k·n⌉ largest (ties at the threshold kept) | \|δ\| ≥ the max(⌊(1−k)·n⌋, 1)-th smallest |
//! | vote sum of 0 | counts as + | elects 0: the element stays the base |
//! | stock's t | per tensor, mean cosine over all pairs (the paper) | per row of the last axis, consecutive pairs |
//!
//! Magnitudes are ranked in f32 as both do. sd-mecha's `ties_sum_extended` applies the stock
//! factor when `apply_stock` is **false** and the plain mean when it is true (as its source
//! reads); `combine=mean` is its `apply_stock=True`, `combine=stock` its default. Dropout
//! masks come from ckpt-diff's keyed counter stream (seed, tensor name, model), not torch's
//! Bernoulli stream, so they never equal sd-mecha's but reproduce on any thread count.
//!
//! Memory per tensor being merged: one f32 magnitude buffer (top-k), one byte per element
//! for the elected sign (stock and median), one f64 per element for the median, and with
//! DELLA one bit per element and model; the inputs are read through their mappings, once
//! per sweep, so nothing grows with the number of models but the chunk buffers (N × 64 K
//! f64 per thread).

use std::sync::Arc;

use super::geomedian::weiszfeld;
use super::model_stock::stock_factor;
use super::{
    Args, Build, BuiltNode, Key, Method, MethodError, NodeMethod, Opt, PerModel, Prepared, Scalar,
    TensorInputs, choice, count, drop_probability, fraction, non_negative, per_model_weights,
    scalar, sweep, words,
};
use crate::merge::methods::dare::dare_stream;

/// The most the geometric median keeps of the filtered deltas (N × the tensor in f32) to
/// spare recomputing them on each of its sweeps.
pub(crate) const MEDIAN_CACHE_BYTES: usize = 1 << 30;

const K: Key<Scalar> = fraction("k", 1.0, "the fraction of each delta kept");
const LAMBDA: Key<Scalar> = scalar("lambda", 1.0);
const WEIGHTS: Key<PerModel> = per_model_weights(true);
const VOTE: Key<Vote> = choice("vote", "magnitude");
const COMBINE: Key<Combine> = choice("combine", "mean");
const DROP: Key<Scalar> = drop_probability("drop", 0.0);
const DELLA_EPS: Key<Scalar> = scalar("della_eps", 0.0);
const RESCALE: Key<bool> = choice("rescale", "true");
const SEED: Key<Scalar> = count("seed", 0.0);
const EPS: Key<Scalar> = non_negative("eps", 1e-6);
const MAXITER: Key<Scalar> = count("maxiter", 100.0);
const FTOL: Key<Scalar> = non_negative("ftol", 1e-12);
const COS_EPS: Key<Scalar> = non_negative("cos_eps", 1e-6);
const LIKE: Key<Like> = choice("like", "ckpt-diff");

/// The options of `ties` and `tgmd`, which differ in the defaults of these four.
const fn options(combine: Opt, drop: Opt, rescale: Opt, ftol: Opt) -> [Opt; 14] {
    [
        K.opt,
        LAMBDA.opt,
        WEIGHTS.opt,
        VOTE.opt,
        combine,
        drop,
        DELLA_EPS.opt,
        rescale,
        SEED.opt,
        EPS.opt,
        MAXITER.opt,
        ftol,
        COS_EPS.opt,
        LIKE.opt,
    ]
}

const TIES_OPTIONS: [Opt; 14] = options(COMBINE.opt, DROP.opt, RESCALE.opt, FTOL.opt);
const TGMD_OPTIONS: [Opt; 14] = options(
    TGMD_COMBINE.opt,
    TGMD_DROP.opt,
    TGMD_RESCALE.opt,
    TGMD_FTOL.opt,
);

/// TGMD's defaults where they differ from `ties`'.
const TGMD_COMBINE: Key<Combine> = choice("combine", "median");
const TGMD_DROP: Key<Scalar> = drop_probability("drop", 0.1);
const TGMD_RESCALE: Key<bool> = choice("rescale", "false");
const TGMD_FTOL: Key<Scalar> = non_negative("ftol", 1e-20);

pub(crate) const TIES: Method = Method {
    name: "ties",
    aliases: &[],
    usage: "ties(base, model, ..., k=1, lambda=1, weights=(...), vote=magnitude|count, \
            combine=mean|stock|median, drop=0, della_eps=0, rescale=true, seed=0, eps=1e-6, \
            maxiter=100, ftol=1e-12, cos_eps=1e-6, like=ckpt-diff|sd-mecha)",
    models: (2, None),
    options: &TIES_OPTIONS,
    build: Build::Node {
        per_tensor: true,
        build,
    },
};

/// AstolfoMix-XL's TGMD ("TIES-GeoMedian with DROP", its 116-model recipe x116a-24060702):
/// no top-k (k=1), the sign elected by magnitude, the geometric median of the filtered
/// deltas, 10% dropped without rescale, Weiszfeld with eps 1e-6, 100 steps, ftol 1e-20.
pub(crate) const TGMD: Method = Method {
    name: "tgmd",
    aliases: &[],
    usage: "tgmd(base, model, ...): ties with k=1, vote=magnitude, combine=median, drop=0.1, \
            rescale=false, ftol=1e-20 (every ties option can be given)",
    models: (2, None),
    options: &TGMD_OPTIONS,
    build: Build::Node {
        per_tensor: true,
        build,
    },
};

fn build(a: &Args<'_>) -> Result<BuiltNode, MethodError> {
    // The keys of `ties` and `tgmd` differ only in their defaults: reading `ties`' reads
    // either's value.
    let drop = a.get(&DROP);
    let della_eps = a.get(&DELLA_EPS);
    if della_eps != 0.0 && drop == 0.0 {
        return Err(MethodError::Needs {
            given: "della_eps",
            needs: "drop",
            why: "shifts the drop probability",
        });
    }
    Ok(Arc::new(Ties {
        weights: a.get(&WEIGHTS).to_vec(),
        k: a.get(&K),
        lambda: a.get(&LAMBDA),
        vote: a.get(&VOTE),
        combine: a.get(&COMBINE),
        drop,
        della_eps,
        rescale: a.get(&RESCALE),
        seed: a.get(&SEED) as u64,
        eps: a.get(&EPS),
        maxiter: a.get(&MAXITER) as usize,
        ftol: a.get(&FTOL),
        cos_eps: a.get(&COS_EPS),
        mecha: a.get(&LIKE) == Like::SdMecha,
        median_cache: MEDIAN_CACHE_BYTES,
    }))
}

words! {
    /// How the sign of an element is elected.
    pub(crate) enum Vote {
        /// From Σ wᵢδᵢ.
        Magnitude = "magnitude",
        /// From Σ wᵢ·sign(δᵢ).
        Count = "count",
    }
}

words! {
    /// How the agreeing deltas are combined.
    pub(crate) enum Combine {
        Mean = "mean",
        Stock = "stock",
        Median = "median",
    }
}

words! {
    /// Whose conventions (see the module's table).
    pub(crate) enum Like {
        CkptDiff = "ckpt-diff",
        SdMecha = "sd-mecha",
    }
}

/// Argument 0 is the base, 1.. the models (one weight each).
#[derive(Debug)]
pub(crate) struct Ties {
    weights: Vec<f64>,
    k: f64,
    lambda: f64,
    vote: Vote,
    combine: Combine,
    drop: f64,
    della_eps: f64,
    rescale: bool,
    seed: u64,
    eps: f64,
    maxiter: usize,
    ftol: f64,
    cos_eps: f64,
    /// sd-mecha's conventions (see the module's table).
    mecha: bool,
    /// [`MEDIAN_CACHE_BYTES`] (a field so that tests take the other path too).
    median_cache: usize,
}

/// What [`Ties::prepare`] gathers over a tensor.
struct State {
    origin: usize,
    /// Per model, the magnitude at or above which its (dropped) deltas are kept.
    thresholds: Vec<f32>,
    /// With DELLA, per model, which elements survive the drop (one bit each).
    della: Option<Vec<Vec<u64>>>,
    /// The elected sign per element (stock and median).
    signs: Option<Vec<i8>>,
    stock: Stock,
    median: Option<Vec<f64>>,
}

enum Stock {
    None,
    /// One t for the tensor.
    Tensor(f64),
    /// One t per row of the last axis (`last` elements each).
    Rows {
        last: usize,
        t: Vec<f64>,
    },
}

impl Ties {
    fn models(&self) -> usize {
        self.weights.len()
    }

    /// Model `i`'s delta over `s..e`, dropped and cut to its top k (before the vote).
    fn delta(
        &self,
        t: &dyn TensorInputs,
        st: &State,
        i: usize,
        s: usize,
        base: &[f64],
    ) -> Vec<f64> {
        let e = s + base.len();
        let mut d = t.input(i + 1, s, e);
        for (x, b) in d.iter_mut().zip(base) {
            *x -= b;
        }
        if self.drop > 0.0 {
            match &st.della {
                Some(bits) => {
                    let bits = &bits[i];
                    for (j, x) in d.iter_mut().enumerate() {
                        let at = s + j - st.origin;
                        if bits[at / 64] >> (at % 64) & 1 == 0 {
                            *x = 0.0;
                        }
                    }
                }
                None => {
                    let stream = dare_stream(self.seed, t.key(), i);
                    let keep = 1.0 - self.drop;
                    for (j, x) in d.iter_mut().enumerate() {
                        if stream.uniform((s + j) as u64) >= keep {
                            *x = 0.0;
                        }
                    }
                }
            }
        }
        let th = st.thresholds[i];
        if th > 0.0 {
            for x in d.iter_mut() {
                if (x.abs() as f32) < th {
                    *x = 0.0;
                }
            }
        }
        d
    }

    /// The elected sign of one element from the models' deltas there.
    fn elect(&self, deltas: impl Iterator<Item = f64>) -> i8 {
        let total: f64 = deltas
            .zip(&self.weights)
            .map(|(d, w)| match self.vote {
                Vote::Magnitude => w * d,
                Vote::Count => w * sign(d) as f64,
            })
            .sum();
        if self.mecha {
            sign(total)
        } else if total >= 0.0 {
            1
        } else {
            -1
        }
    }

    /// Whether a delta agrees with the elected sign.
    fn agrees(&self, d: f64, elected: i8) -> bool {
        if self.mecha {
            sign(d) == elected
        } else {
            d != 0.0 && sign(d) == elected
        }
    }

    /// Every model's delta over `s..e` and the elected signs there.
    fn chunk(
        &self,
        t: &dyn TensorInputs,
        st: &State,
        s: usize,
        base: &[f64],
    ) -> (Vec<Vec<f64>>, Vec<i8>) {
        let deltas: Vec<Vec<f64>> = (0..self.models())
            .map(|i| self.delta(t, st, i, s, base))
            .collect();
        let signs = match &st.signs {
            Some(signs) => signs[s - st.origin..s - st.origin + base.len()].to_vec(),
            None => (0..base.len())
                .map(|j| self.elect(deltas.iter().map(|d| d[j])))
                .collect(),
        };
        (deltas, signs)
    }

    /// A delta at `s..` filtered: zero where it disagrees with the elected sign.
    fn filter(&self, st: &State, s: usize, mut d: Vec<f64>) -> Vec<f64> {
        let signs = st
            .signs
            .as_ref()
            .expect("signs are stored for stock and median");
        for (j, x) in d.iter_mut().enumerate() {
            if !self.agrees(*x, signs[s - st.origin + j]) {
                *x = 0.0;
            }
        }
        d
    }

    /// DELLA's survivors: per model, each element is kept with probability
    /// 1 − p + (r/n − (n+1)/2n)·ε, r its ordinal magnitude rank (1 = smallest).
    fn della_bits(&self, t: &dyn TensorInputs) -> Vec<Vec<u64>> {
        let range = t.range();
        let n = range.len();
        let (origin, nf) = (range.start, n as f64);
        let mut order: Vec<(f32, u32)> = Vec::with_capacity(n);
        (0..self.models())
            .map(|i| {
                order.clear();
                sweep(t, |s, e| {
                    let (x, b) = (t.input(i + 1, s, e), t.input(0, s, e));
                    for j in 0..e - s {
                        order.push((((x[j] - b[j]).abs()) as f32, (s + j - origin) as u32));
                    }
                });
                // Ordinal ranks: equal magnitudes in order of position (scipy's "ordinal").
                order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let stream = dare_stream(self.seed, t.key(), i);
                let mut bits = vec![0u64; n.div_ceil(64)];
                for (r, &(_, at)) in order.iter().enumerate() {
                    let shift = ((r + 1) as f64 / nf - (nf + 1.0) / (2.0 * nf)) * self.della_eps;
                    let keep = (1.0 - self.drop + shift).clamp(0.0, 1.0);
                    let at = at as usize;
                    if stream.uniform((origin + at) as u64) < keep {
                        bits[at / 64] |= 1 << (at % 64);
                    }
                }
                bits
            })
            .collect()
    }

    /// Model Stock's t over the filtered deltas: per tensor from the mean cosine of all
    /// pairs, Σ_{i<j} uᵢ·uⱼ = (‖Σ uᵢ‖² − Σ ‖uᵢ‖²) / 2 with uᵢ = gᵢ/‖gᵢ‖, two sweeps of N
    /// instead of N² products; or, like sd-mecha, per row of the last axis from consecutive
    /// pairs.
    fn stock(&self, t: &dyn TensorInputs, st: &State) -> Stock {
        let n = self.models();
        if self.mecha {
            return self.stock_rows(t, st);
        }
        let mut norm2 = vec![0.0f64; n];
        sweep(t, |s, e| {
            let base = t.input(0, s, e);
            for (i, acc) in norm2.iter_mut().enumerate() {
                let g = self.filter(st, s, self.delta(t, st, i, s, &base));
                *acc += ckpt_core::kernels::norm_l2_sqr(&g);
            }
        });
        let inv: Vec<f64> = norm2
            .iter()
            .map(|&v| if v > 0.0 { 1.0 / v.sqrt() } else { 0.0 })
            .collect();
        let mut sum_u2 = 0.0f64;
        sweep(t, |s, e| {
            let base = t.input(0, s, e);
            let mut u = vec![0.0f64; e - s];
            for (i, &c) in inv.iter().enumerate() {
                if c != 0.0 {
                    ckpt_core::kernels::axpy(
                        c,
                        &self.filter(st, s, self.delta(t, st, i, s, &base)),
                        &mut u,
                    );
                }
            }
            sum_u2 += ckpt_core::kernels::norm_l2_sqr(&u);
        });
        let unit = inv.iter().filter(|&&c| c != 0.0).count() as f64;
        let pairs = (n * (n - 1)) as f64;
        let cos = if pairs == 0.0 {
            0.0
        } else {
            (sum_u2 - unit) / pairs
        };
        Stock::Tensor(stock_factor(cos, n))
    }

    /// sd-mecha's t: for each row of the last axis, the mean over consecutive pairs of
    /// torch's cosine (x·y / (max(‖x‖, ε)·max(‖y‖, ε))), then N·c / (1 + (N−1)·c).
    fn stock_rows(&self, t: &dyn TensorInputs, st: &State) -> Stock {
        let n = self.models();
        let range = t.range();
        let last = t.shape().last().copied().unwrap_or(1).max(1);
        let rows = range.len() / last;
        let mut out = vec![0.0f64; rows];
        // Whole rows per chunk, so each row's sums finish inside one chunk.
        let per = (super::SUB / last).max(1) * last;
        let mut s = range.start;
        while s < range.end {
            let e = (s + per).min(range.end);
            let base = t.input(0, s, e);
            let g: Vec<Vec<f64>> = (0..n)
                .map(|i| self.filter(st, s, self.delta(t, st, i, s, &base)))
                .collect();
            for row in (s - range.start..e - range.start).step_by(last) {
                let at = row - (s - range.start);
                let seg = |i: usize| &g[i][at..at + last];
                let norms: Vec<f64> = (0..n)
                    .map(|i| {
                        ckpt_core::kernels::norm_l2_sqr(seg(i))
                            .sqrt()
                            .max(self.cos_eps)
                    })
                    .collect();
                let cos = if n < 2 {
                    f64::NAN
                } else {
                    (0..n - 1)
                        .map(|i| {
                            ckpt_core::kernels::dot(seg(i), seg(i + 1)) / (norms[i] * norms[i + 1])
                        })
                        .sum::<f64>()
                        / (n - 1) as f64
                };
                let nf = n as f64;
                out[row / last] = nf * cos / (1.0 + (nf - 1.0) * cos);
            }
            s = e;
        }
        Stock::Rows { last, t: out }
    }
}

fn sign(x: f64) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

impl NodeMethod for Ties {
    /// f32 magnitudes (top-k), the elected sign (stock, median), the f64 median and its
    /// f32 copy of the filtered deltas while that fits its cap, and with DELLA one bit per
    /// model plus the rank order (8 bytes) while it is built.
    fn buffer_bytes(&self, numel: usize, models: usize) -> u64 {
        let n = numel as u64;
        let mut bytes = 0;
        if self.k < 1.0 {
            bytes += 4 * n;
        }
        if self.combine != Combine::Mean {
            bytes += n;
        }
        if self.combine == Combine::Median {
            let cache = 4 * n * models as u64;
            bytes += 8 * n
                + if cache <= MEDIAN_CACHE_BYTES as u64 {
                    cache
                } else {
                    0
                };
        }
        if self.drop > 0.0 && self.della_eps != 0.0 {
            bytes += n * models as u64 / 8 + 8 * n;
        }
        bytes
    }

    fn prepare(&self, t: &dyn TensorInputs) -> Prepared {
        let range = t.range();
        let origin = range.start;
        let mut st = State {
            origin,
            thresholds: vec![0.0; self.models()],
            della: None,
            signs: None,
            stock: Stock::None,
            median: None,
        };
        if self.drop > 0.0 && self.della_eps != 0.0 {
            st.della = Some(self.della_bits(t));
        }
        if self.k < 1.0 {
            let mut mags = vec![0f32; range.len()];
            for i in 0..self.models() {
                sweep(t, |s, e| {
                    let base = t.input(0, s, e);
                    let d = self.delta(t, &st, i, s, &base);
                    for (m, x) in mags[s - origin..e - origin].iter_mut().zip(&d) {
                        *m = x.abs() as f32;
                    }
                });
                st.thresholds[i] = if self.mecha {
                    mecha_threshold(&mut mags, self.k)
                } else {
                    magnitude_threshold(&mut mags, self.k)
                };
            }
        }
        if self.combine != Combine::Mean {
            let mut signs = vec![0i8; range.len()];
            sweep(t, |s, e| {
                let base = t.input(0, s, e);
                let (_, elected) = self.chunk(t, &st, s, &base);
                signs[s - origin..e - origin].copy_from_slice(&elected);
            });
            st.signs = Some(signs);
        }
        match self.combine {
            Combine::Mean => {}
            Combine::Stock => st.stock = self.stock(t, &st),
            Combine::Median => {
                let weights = if self.mecha {
                    vec![1.0; self.models()]
                } else {
                    self.weights.clone()
                };
                let st_ref = &st;
                let n = range.len();
                // Weiszfeld sweeps the filtered deltas twice a step; when they fit the
                // budget they are kept as f32 (exact for fp16 and bf16 inputs, whose
                // differences need at most 24 bits when the two are close), else each sweep
                // recomputes them from the mapped inputs.
                let cache: Option<Vec<f32>> =
                    (self.models() * n * 4 <= self.median_cache).then(|| {
                        let mut c = vec![0f32; self.models() * n];
                        sweep(t, |s, e| {
                            let base = t.input(0, s, e);
                            for i in 0..self.models() {
                                let g = self.filter(st_ref, s, self.delta(t, st_ref, i, s, &base));
                                let at = i * n + s - origin;
                                for (c, v) in c[at..at + e - s].iter_mut().zip(&g) {
                                    *c = *v as f32;
                                }
                            }
                        });
                        c
                    });
                // Weiszfeld asks for every model's chunk in turn: the base's values are
                // decoded once per chunk, not once per model.
                let base = std::cell::RefCell::new((usize::MAX, Vec::new()));
                let z =
                    weiszfeld(
                        t,
                        &weights,
                        self.eps,
                        self.maxiter,
                        self.ftol,
                        |i, s, e| match &cache {
                            Some(c) => c[i * n + s - origin..i * n + e - origin]
                                .iter()
                                .map(|&v| v as f64)
                                .collect(),
                            None => {
                                let mut b = base.borrow_mut();
                                if b.0 != s {
                                    *b = (s, t.input(0, s, e));
                                }
                                self.filter(st_ref, s, self.delta(t, st_ref, i, s, &b.1))
                            }
                        },
                    );
                st.median = Some(z);
            }
        }
        Box::new(st)
    }

    fn eval(&self, t: &dyn TensorInputs, state: &Prepared, start: usize, end: usize) -> Vec<f64> {
        let st: &State = state.downcast_ref().expect("prepared by TIES");
        let base = t.input(0, start, end);
        let merged: Vec<f64> = match &st.median {
            Some(z) => z[start - st.origin..end - st.origin].to_vec(),
            None => {
                let (deltas, signs) = self.chunk(t, st, start, &base);
                (0..base.len())
                    .map(|j| {
                        let (mut num, mut den) = (0.0, 0.0);
                        for (d, w) in deltas.iter().zip(&self.weights) {
                            if self.agrees(d[j], signs[j]) {
                                num += w * d[j];
                                den += w;
                            }
                        }
                        let mean = if den == 0.0 { 0.0 } else { num / den };
                        let factor = match &st.stock {
                            Stock::None => 1.0,
                            Stock::Tensor(v) => *v,
                            Stock::Rows { last, t } => t[(start + j - st.origin) / last],
                        };
                        let v = factor * mean;
                        // sd-mecha's nan_to_num: an infinite or undefined t gives 0.
                        if v.is_finite() { v } else { 0.0 }
                    })
                    .collect()
            }
        };
        let scale = if self.drop > 0.0 && self.rescale {
            self.lambda / (1.0 - self.drop)
        } else {
            self.lambda
        };
        base.iter()
            .zip(&merged)
            .map(|(b, m)| b + scale * m)
            .collect()
    }
}

/// The magnitude threshold that keeps the top `k` fraction: the ⌈k·n⌉-th largest value
/// (at least one element). Values at or above it are kept (ties at the threshold are all
/// kept). Reorders `mags`.
pub(crate) fn magnitude_threshold(mags: &mut [f32], k: f64) -> f32 {
    if mags.is_empty() || k >= 1.0 {
        return 0.0;
    }
    let keep = ((k * mags.len() as f64).ceil() as usize).clamp(1, mags.len());
    let idx = mags.len() - keep;
    let (_, t, _) = mags.select_nth_unstable_by(idx, f32::total_cmp);
    *t
}

/// sd-mecha's threshold (`filter_top_k`): the max(⌊(1−k)·n⌋, 1)-th smallest magnitude;
/// values at or above it are kept. Reorders `mags`.
pub(crate) fn mecha_threshold(mags: &mut [f32], k: f64) -> f32 {
    if mags.is_empty() {
        return 0.0;
    }
    let kth = (((1.0 - k) * mags.len() as f64) as usize).max(1);
    let (_, t, _) = mags.select_nth_unstable_by(kth.min(mags.len()) - 1, f32::total_cmp);
    *t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor of `inputs[0]` (the base) and the models, over several chunks.
    struct Fake {
        inputs: Vec<Vec<f64>>,
    }

    impl TensorInputs for Fake {
        fn key(&self) -> &str {
            "t.weight"
        }
        fn row(&self) -> usize {
            0
        }
        fn shape(&self) -> &[usize] {
            &[]
        }
        fn range(&self) -> std::ops::Range<usize> {
            0..self.inputs[0].len()
        }
        fn input(&self, arg: usize, start: usize, end: usize) -> Vec<f64> {
            self.inputs[arg][start..end].to_vec()
        }
    }

    /// The median with the filtered deltas kept in f32 and recomputed on every sweep: the
    /// same estimate, to the f32 rounding of the kept copy.
    #[test]
    fn median_without_its_cache_is_the_same_median() {
        let n = 3 * super::super::SUB + 17;
        let stream = ckpt_core::rng::counter::Stream::new(3, 7);
        let inputs: Vec<Vec<f64>> = (0..5)
            .map(|m| (0..n).map(|j| stream.normal((m * n + j) as u64)).collect())
            .collect();
        let t = Fake { inputs };
        let ties = |cache: usize| Ties {
            weights: vec![1.0, 2.0, 1.0, 0.5],
            k: 0.5,
            lambda: 1.0,
            vote: Vote::Magnitude,
            combine: Combine::Median,
            drop: 0.2,
            della_eps: 0.0,
            rescale: true,
            seed: 1,
            eps: 1e-6,
            maxiter: 50,
            ftol: 1e-15,
            cos_eps: 1e-6,
            mecha: false,
            median_cache: cache,
        };
        let (cached, direct) = (ties(usize::MAX), ties(0));
        let (a, b) = (cached.prepare(&t), direct.prepare(&t));
        let (a, b) = (cached.eval(&t, &a, 0, n), direct.eval(&t, &b, 0, n));
        let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (j, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * scale,
                "[{j}]: cached {x}, recomputed {y}"
            );
        }
        assert!(
            a.iter().zip(&t.inputs[0]).any(|(x, b)| x != b),
            "the median moved nothing"
        );
    }
}
