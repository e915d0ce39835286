//! Writing LoRA files: `lora merge` (several LoRAs into one) and `lora convert` (one LoRA in
//! another key dialect), and the file writer `lora extract` shares.
//!
//! Merging groups the inputs' modules by what they patch (the key and rows; a module whose
//! name maps to nothing by its name) and, per group, either
//! * re-ranks: ΔW = Σ ratioᵢ·ΔWᵢ materialised in f64 (any network type, rank and alpha), its
//!   leading triplets kept, `lora_up` = U·diag(σ), `lora_down` = Vᵀ, clamped like
//!   extraction, alpha = rank — kohya's `svd_merge_lora.py`; or
//! * concatenates: `lora_up` = [ratio₁s₁B₁ | ratio₂s₂B₂ | …], `lora_down` = [A₁; A₂; …],
//!   alpha = Σrᵢ (scale 1), whose product is exactly Σ ratioᵢ·sᵢ·BᵢAᵢ (LoRA and LoCon only).
//!
//! Converting renames each module to the target dialect's name for what it patches, its scale
//! (from whichever source the reader took it: `.alpha`, diffusers' `lora_adapter_metadata`,
//! the rank) kept: kohya's as an `.alpha` of scale·rank, PEFT's folded into `lora_B`, with a
//! `lora_adapter_metadata` that gives every module its rank and scale 1. Where
//! the dialects cut a fused projection differently (Flux's `img_attn.qkv`: one kohya module,
//! three diffusers ones), modules are split (`lora_down` shared, `lora_up` cut by rows, as
//! diffusers' converter does) or fused (`lora_down` stacked, `lora_up` block-diagonal):
//! both exact.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::svd::{self, RankRule};
use super::{Delta, DeltaError, Kind, LoraError, Module, Network, Role};
use ckpt_core::catalog::Arch;
use ckpt_core::catalog::data::table;
use ckpt_core::catalog::lora::{Rows, Target, names_of};
use ckpt_core::writer::{OutputFile, TensorSpec};
use ckpt_read::Checkpoint;
use ckpt_read::dtype::FloatFormat;

/// A key dialect to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Dialect {
    /// `lora_unet_…`/`lora_te…_` names with `.lora_down.weight`, `.lora_up.weight`, `.alpha`.
    Kohya,
    /// diffusers/PEFT: `unet.…`, `text_encoder.…`, `transformer.…` with `.lora_A.weight`,
    /// `.lora_B.weight`, the scale folded into `lora_B`, and diffusers'
    /// `lora_adapter_metadata` saying each module's rank (scale 1).
    Peft,
}

impl Dialect {
    fn accepts(self, name: &str) -> bool {
        match self {
            // `lora_transformer_` (diffusers paths kohya-style, some trainers' Flux files)
            // is read, not written: sd-scripts writes Flux's BFL paths.
            Dialect::Kohya => name.starts_with("lora_unet_") || name.starts_with("lora_te"),
            Dialect::Peft => ["unet.", "text_encoder.", "text_encoder_2.", "transformer."]
                .iter()
                .any(|p| name.starts_with(p)),
        }
    }

    fn suffixes(self) -> (&'static str, &'static str) {
        match self {
            Dialect::Kohya => (".lora_up.weight", ".lora_down.weight"),
            Dialect::Peft => (".lora_B.weight", ".lora_A.weight"),
        }
    }
}

/// The name of a module patching `t` in `dialect`.
fn name_in(arch: Arch, t: &Target, dialect: Dialect) -> Option<&'static str> {
    names_of(arch, t)
        .iter()
        .find(|n| dialect.accepts(n))
        .map(String::as_str)
}

/// What a LoRA file written holds.
#[derive(Clone, Debug, Serialize)]
pub struct Written {
    pub output: String,
    pub arch: Option<String>,
    pub modules: usize,
    /// The ranks written and how many modules have each.
    pub ranks: Vec<(usize, usize)>,
    /// (module, why) for modules not written.
    pub not_written: Vec<(String, NotWritten)>,
    pub bytes: u64,
}

/// Why a module was not written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotWritten {
    #[error(transparent)]
    Factors(#[from] DeltaError),
    #[error("its modules change matrices of different shapes")]
    UnlikeShapes,
    /// A module without low-rank factors in a merge that concatenates them: re-ranking
    /// (an SVD of the summed ΔW) writes it.
    #[error("a {} module has no factors to concatenate", .0.label())]
    NoFactorsToConcat(Kind),
    /// A LoHa or LoKr module in a conversion, which writes LoRA factors as they are: only a
    /// merge that re-ranks it writes it (as LoRA).
    #[error("{} modules are written as LoRA only by a merge that re-ranks them", .0.label())]
    NotLowRank(Kind),
    #[error("its name patches no key of this architecture")]
    NoKey,
    #[error("{key} has no name in this dialect")]
    NoName { key: String },
    #[error("its slices do not cover the key")]
    SlicesUncovered,
}

impl Serialize for NotWritten {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One module's low-rank factors as written: `up` (rows×rank) and `down` (rank×cols, stored
/// with `kernel` = [in, kh, kw] when a convolution).
pub struct Factors<'a> {
    pub up: &'a [f64],
    pub down: &'a [f64],
    pub rows: usize,
    pub rank: usize,
    pub kernel: Option<&'a [usize]>,
}

impl<'a> Factors<'a> {
    pub const fn new(
        up: &'a [f64],
        down: &'a [f64],
        rows: usize,
        rank: usize,
        kernel: Option<&'a [usize]>,
    ) -> Self {
        Self {
            up,
            down,
            rows,
            rank,
            kernel,
        }
    }
}

/// Tensors to write: their specs and encoded bytes.
#[derive(Default)]
pub struct Tensors {
    pub items: Vec<(TensorSpec, Vec<u8>)>,
}

impl Tensors {
    /// Adds a tensor of `values` in `format`, saturating beyond its range.
    pub fn push(&mut self, name: String, shape: Vec<usize>, format: FloatFormat, values: &[f64]) {
        let max = ckpt_core::kernels::largest_finite(format);
        let clamped: Vec<f64> = values.iter().map(|v| v.clamp(-max, max)).collect();
        let mut bytes = vec![0u8; values.len() * format.size()];
        ckpt_core::kernels::from_f64(format, &clamped, &mut bytes);
        self.items.push((
            TensorSpec {
                name,
                dtype: format.dtype(),
                shape,
            },
            bytes,
        ));
    }

    /// A LoRA module: its factors, and alpha (none: the scale is folded into the factors).
    pub fn module(
        &mut self,
        stem: &str,
        dialect: Dialect,
        format: FloatFormat,
        f: Factors,
        alpha: Option<f64>,
    ) {
        let (su, sd) = dialect.suffixes();
        let (rows, rank) = (f.rows, f.rank);
        let cols = f.down.len() / rank.max(1);
        let (up_shape, down_shape) = match f.kernel {
            Some(k) => (vec![rows, rank, 1, 1], [&[rank][..], k].concat()),
            None => (vec![rows, rank], vec![rank, cols]),
        };
        self.push(format!("{stem}{su}"), up_shape, format, f.up);
        self.push(format!("{stem}{sd}"), down_shape, format, f.down);
        if let Some(a) = alpha {
            self.push(format!("{stem}.alpha"), Vec::new(), format, &[a]);
        }
    }

    /// Writes the file (tensors sorted by name) through the safe writer; its length.
    pub fn write(
        self,
        out: &Path,
        meta: &[(String, String)],
        inputs: &[&Path],
    ) -> Result<u64, ckpt_core::writer::WriteError> {
        let mut items = self.items;
        items.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let specs = items.iter().map(|(s, _)| s.clone()).collect();
        let file = OutputFile::create(out, specs, meta, inputs)?;
        for (i, (_, bytes)) in items.iter().enumerate() {
            file.write_tensor_bytes(i, 0, bytes)?;
        }
        let len = file.len();
        file.finish()?;
        Ok(len)
    }

    /// The PEFT modules written, with their ranks.
    fn peft_modules(&self) -> impl Iterator<Item = (&str, usize)> {
        self.items.iter().filter_map(|(s, _)| {
            let stem = s.name.strip_suffix(".lora_A.weight")?;
            Some((stem, *s.shape.first()?))
        })
    }

    fn ranks(&self) -> Vec<(usize, usize)> {
        let mut m: BTreeMap<usize, usize> = BTreeMap::new();
        for (s, _) in &self.items {
            if s.name.ends_with(".lora_down.weight") || s.name.ends_with(".lora_A.weight") {
                *m.entry(s.shape[0]).or_default() += 1;
            }
        }
        m.into_iter().collect()
    }
}

/// A LoRA input of `lora merge`.
pub struct Source<'a> {
    pub ckpt: &'a Checkpoint,
    pub net: &'a Network,
    pub ratio: f64,
}

pub enum MergeHow {
    /// Each module's changes summed (or merged by `method`), then re-ranked by SVD.
    Svd {
        rank: RankRule,
        conv_rank: RankRule,
        clamp_quantile: f64,
        method: Option<super::methods::DeltaMethod>,
    },
    Concat,
}

/// The `[in, kh, kw]` of a module's down factor when it is a convolution: from its own
/// tensors, else from the catalog's key when the widths agree.
fn kernel_of(arch: Option<Arch>, ckpt: &Checkpoint, m: &Module, cols: usize) -> Option<Vec<usize>> {
    let own = m
        .part(Role::Down)
        .or(m.part(Role::LokrW2))
        .and_then(|n| ckpt.get(n))
        .filter(|t| t.shape.len() == 4)
        .map(|t| t.shape[1..].to_vec());
    own.or_else(|| {
        let key = &m.target.as_ref()?.key;
        let k = table(arch?).keys.iter().find(|k| &k.name == key)?;
        (k.shape.len() == 4 && k.shape[1..].iter().product::<usize>() == cols)
            .then(|| k.shape[1..].to_vec())
    })
}

/// The group a module belongs to when merging: what it patches, or its own name.
fn identity(m: &Module) -> String {
    match &m.target {
        Some(t) => format!("{}#{:?}", t.key, t.rows),
        None => format!("name:{}", m.stem),
    }
}

/// The kohya name a merged group is written under.
fn kohya_name(arch: Option<Arch>, m: &Module) -> String {
    m.target
        .as_ref()
        .and_then(|t| arch.and_then(|a| name_in(a, t, Dialect::Kohya)))
        .map_or_else(|| m.stem.clone(), str::to_string)
}

/// Merges `sources` into one LoRA at `out`.
pub fn merge(
    sources: &[Source<'_>],
    how: &MergeHow,
    format: FloatFormat,
    out: &Path,
    inputs: &[&Path],
) -> Result<Written, LoraError> {
    let arch = sources.iter().find_map(|s| s.net.arch);
    if let Some(other) = sources
        .iter()
        .find(|s| s.net.arch.is_some_and(|a| Some(a) != arch))
    {
        return Err(LoraError::DifferentModels {
            a: arch.map_or("?", |a| a.label()),
            b: other.net.arch.map_or("?", |a| a.label()),
        });
    }
    // Groups in first-seen order.
    let mut groups: Vec<(String, Vec<(usize, &Module)>)> = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        for m in &s.net.modules {
            let id = identity(m);
            match groups.iter_mut().find(|(g, _)| *g == id) {
                Some((_, v)) => v.push((i, m)),
                None => groups.push((id, vec![(i, m)])),
            }
        }
    }
    let mut t = Tensors::default();
    let mut not_written = Vec::new();
    for (_, members) in &groups {
        let (first_src, first) = members[0];
        let name = kohya_name(arch, first);
        let deltas: Vec<(f64, &Module, Result<Delta, DeltaError>)> = members
            .iter()
            .map(|&(i, m)| (sources[i].ratio, m, Delta::of(sources[i].ckpt, m)))
            .collect();
        if let Some((_, m, Err(e))) = deltas.iter().find(|(_, _, d)| d.is_err()) {
            not_written.push((m.stem.clone(), e.clone().into()));
            continue;
        }
        let deltas: Vec<(f64, &Module, Delta)> = deltas
            .into_iter()
            .map(|(r, m, d)| (r, m, d.expect("checked")))
            .collect();
        let (rows, cols) = (deltas[0].2.rows, deltas[0].2.cols);
        if deltas
            .iter()
            .any(|(_, _, d)| d.rows != rows || d.cols != cols)
        {
            not_written.push((name, NotWritten::UnlikeShapes));
            continue;
        }
        let kernel = kernel_of(arch, sources[first_src].ckpt, first, cols);
        match how {
            MergeHow::Concat => {
                if let Some((_, m, _)) = deltas.iter().find(|(_, _, d)| d.low_rank().is_none()) {
                    not_written.push((m.stem.clone(), NotWritten::NoFactorsToConcat(m.kind)));
                    continue;
                }
                let rank: usize = deltas
                    .iter()
                    .map(|(_, _, d)| d.low_rank().expect("checked").0.cols)
                    .sum();
                let mut up = vec![0.0; rows * rank];
                let mut down = Vec::with_capacity(rank * cols);
                let mut at = 0;
                for (ratio, _, d) in &deltas {
                    let (b, a) = d.low_rank().expect("checked");
                    for o in 0..rows {
                        for k in 0..b.cols {
                            up[o * rank + at + k] = ratio * d.scale * b.data[o * b.cols + k];
                        }
                    }
                    down.extend_from_slice(&a.data);
                    at += b.cols;
                }
                let f = Factors::new(&up, &down, rows, rank, kernel.as_deref());
                t.module(&name, Dialect::Kohya, format, f, Some(rank as f64));
            }
            MergeHow::Svd {
                rank,
                conv_rank,
                clamp_quantile,
                method,
            } => {
                let changes = deltas.iter().map(|(ratio, _, d)| {
                    let mut full = d.full();
                    full.iter_mut().for_each(|x| *x *= ratio);
                    full
                });
                let merged: Vec<f64> = match method {
                    Some(m) => {
                        let changes: Vec<Vec<f64>> = changes.collect();
                        m.apply(&name, [rows, cols], &changes)
                            .map_err(|why| LoraError::Method {
                                module: name.clone(),
                                why,
                            })?
                    }
                    None => changes.fold(vec![0.0; rows * cols], |mut acc, c| {
                        acc.iter_mut().zip(&c).for_each(|(a, x)| *a += x);
                        acc
                    }),
                };
                let sum = faer::Mat::<svd::Real>::from_fn(rows, cols, |o, j| {
                    merged[o * cols + j] as svd::Real
                });
                let is_kxk = kernel.as_ref().is_some_and(|k| k[1] * k[2] > 1);
                let rule = if is_kxk { *conv_rank } else { *rank };
                let seed = ckpt_core::rng::counter::key_hash(&name);
                let (tr, _) =
                    svd::truncate(sum.as_ref(), rule, svd::ITERATIONS, seed).map_err(|source| {
                        LoraError::Svd {
                            module: name.clone(),
                            source,
                        }
                    })?;
                let (up, down) = factors_of(&tr, *clamp_quantile);
                let r = tr.s.len();
                let f = Factors::new(&up, &down, rows, r, kernel.as_deref());
                t.module(&name, Dialect::Kohya, format, f, Some(r as f64));
            }
        }
    }
    let meta = vec![
        ("ss_network_module".to_string(), "networks.lora".to_string()),
        (
            "ss_training_comment".to_string(),
            format!(
                "merged by ckpt-diff {} from {} LoRAs ({})",
                env!("CARGO_PKG_VERSION"),
                sources.len(),
                match how {
                    MergeHow::Concat => "concatenated".to_string(),
                    MergeHow::Svd { method: None, .. } => "re-ranked by SVD".to_string(),
                    MergeHow::Svd {
                        method: Some(m), ..
                    } => format!("merged by {}, re-ranked by SVD", m.name()),
                }
            ),
        ),
    ];
    let ranks = t.ranks();
    let modules = ranks.iter().map(|(_, n)| n).sum();
    let bytes = t.write(out, &meta, inputs)?;
    Ok(Written {
        output: out.display().to_string(),
        arch: arch.map(|a| a.label().to_string()),
        modules,
        ranks,
        not_written,
        bytes,
    })
}

/// `lora_up` = U·diag(σ) and `lora_down` = Vᵀ (row-major), both clamped at the
/// `clamp_quantile` quantile of their values (1: not clamped).
pub fn factors_of(t: &svd::Truncated, clamp_quantile: f64) -> (Vec<f64>, Vec<f64>) {
    let r = t.s.len();
    let (m, n) = (t.u.nrows(), t.v.nrows());
    let mut up = Vec::with_capacity(m * r);
    for i in 0..m {
        for k in 0..r {
            up.push(t.u[(i, k)] as f64 * t.s[k]);
        }
    }
    let mut down = Vec::with_capacity(r * n);
    for k in 0..r {
        for j in 0..n {
            down.push(t.v[(j, k)] as f64);
        }
    }
    if clamp_quantile < 1.0 {
        let all: Vec<f64> = up.iter().chain(&down).copied().collect();
        let hi = svd::quantile(&all, clamp_quantile);
        for x in up.iter_mut().chain(down.iter_mut()) {
            *x = x.clamp(-hi, hi);
        }
    }
    (up, down)
}

/// A LoRA module's factors with its scale folded into `up`: (up rows×r, down r×cols).
fn folded(d: &Delta) -> Option<(Vec<f64>, Vec<f64>, usize)> {
    let (b, a) = d.low_rank()?;
    Some((
        b.data.iter().map(|x| x * d.scale).collect(),
        a.data.clone(),
        b.cols,
    ))
}

/// Rewrites one LoRA in `dialect`.
pub fn convert(
    ckpt: &Checkpoint,
    net: &Network,
    dialect: Dialect,
    format: FloatFormat,
    out: &Path,
    inputs: &[&Path],
) -> Result<Written, LoraError> {
    let Some(arch) = net.arch else {
        return Err(LoraError::NoArchitecture);
    };
    let mut t = Tensors::default();
    let mut not_written = Vec::new();
    // Slices of one key the dialect names only whole: fused once all are read.
    type Part = (Rows, Vec<f64>, Vec<f64>, usize, Option<Vec<usize>>);
    let mut to_fuse: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for m in &net.modules {
        let Some(target) = &m.target else {
            not_written.push((m.stem.clone(), NotWritten::NoKey));
            continue;
        };
        let d = match Delta::of(ckpt, m) {
            Ok(d) => d,
            Err(e) => {
                not_written.push((m.stem.clone(), e.into()));
                continue;
            }
        };
        let kernel = kernel_of(Some(arch), ckpt, m, d.cols);
        let low = folded(&d);
        if m.kind != Kind::LoRA && m.kind != Kind::LoCon {
            not_written.push((m.stem.clone(), NotWritten::NotLowRank(m.kind)));
            continue;
        }
        let (up, down, r) = low.expect("LoRA and LoCon are low-rank");
        if let Some(name) = name_in(arch, target, dialect) {
            // kohya keeps the factors as they are, with an alpha that carries the scale
            // (α/r whatever gave it: the `.alpha`, diffusers' metadata, rsLoRA's α/√r);
            // PEFT folds the scale into the factors.
            match dialect {
                Dialect::Kohya => {
                    let (b, a) = d.low_rank().expect("low-rank");
                    let f = Factors::new(&b.data, &a.data, d.rows, r, kernel.as_deref());
                    // α itself where α/r is the scale (exact), else scale·r.
                    let alpha = match m.alpha {
                        Some(a) if !m.rslora => a,
                        _ => d.scale * r as f64,
                    };
                    t.module(name, dialect, format, f, Some(alpha));
                }
                Dialect::Peft => {
                    let f = Factors::new(&up, &down, d.rows, r, kernel.as_deref());
                    t.module(name, dialect, format, f, None);
                }
            }
            continue;
        }
        let whole = Target {
            key: target.key.clone(),
            rows: None,
        };
        if let Some(order) = target.rows
            && name_in(arch, &whole, dialect).is_some()
        {
            to_fuse
                .entry(target.key.clone())
                .or_default()
                .push((order, up, down, r, kernel));
            continue;
        }
        // A whole key the dialect names by slices: cut `up` by rows, share `down`.
        let split = split_names(arch, &target.key, &[d.rows, d.cols], dialect);
        let covered: usize = split.iter().map(|(_, (a, b))| b - a).sum();
        if target.rows.is_none() && !split.is_empty() && covered == d.rows {
            for (name, (a, b)) in split {
                let f = Factors::new(&up[a * r..b * r], &down, b - a, r, kernel.as_deref());
                t.module(
                    &name,
                    dialect,
                    format,
                    f,
                    (dialect == Dialect::Kohya).then_some(r as f64),
                );
            }
            continue;
        }
        not_written.push((
            m.stem.clone(),
            NotWritten::NoName {
                key: target.key.clone(),
            },
        ));
    }
    for (key, mut parts) in to_fuse {
        parts.sort_by_key(|p| p.0);
        let whole = Target {
            key: key.clone(),
            rows: None,
        };
        let name = name_in(arch, &whole, dialect).expect("checked when collected");
        let rows: usize = parts.iter().map(|(_, up, _, r, _)| up.len() / r).sum();
        let rank: usize = parts.iter().map(|p| p.3).sum();
        // Every slice the architecture cuts the key into, each once.
        let want: Vec<Rows> = ckpt_core::catalog::lora::slices_of(arch, &key)
            .into_iter()
            .filter_map(|t| t.rows)
            .collect();
        let have: Vec<Rows> = parts.iter().map(|p| p.0).collect();
        if have != want {
            not_written.push((name.to_string(), NotWritten::SlicesUncovered));
            continue;
        }
        let mut up = vec![0.0; rows * rank];
        let mut down = Vec::new();
        let (mut row_at, mut rank_at) = (0, 0);
        for (_, u, dn, r, _) in &parts {
            let n = u.len() / r;
            for o in 0..n {
                for k in 0..*r {
                    up[(row_at + o) * rank + rank_at + k] = u[o * r + k];
                }
            }
            down.extend_from_slice(dn);
            row_at += n;
            rank_at += r;
        }
        let kernel = parts[0].4.clone();
        let f = Factors::new(&up, &down, rows, rank, kernel.as_deref());
        t.module(
            name,
            dialect,
            format,
            f,
            (dialect == Dialect::Kohya).then_some(rank as f64),
        );
    }
    let mut meta = vec![(
        "ss_training_comment".to_string(),
        format!(
            "converted by ckpt-diff {} from {}",
            env!("CARGO_PKG_VERSION"),
            ckpt.display_name()
        ),
    )];
    // diffusers reads each module's rank and scale from its metadata when the file has it,
    // else takes lora_alpha = r with one rank for all: the metadata says every module's rank
    // and scale 1, so diffusers applies exactly the folded factors.
    if dialect == Dialect::Peft
        && let Some(json) = super::config::folded_metadata(t.peft_modules())
    {
        meta.push((super::config::METADATA_KEY.to_string(), json));
    }
    let ranks = t.ranks();
    let modules = ranks.iter().map(|(_, n)| n).sum();
    let bytes = t.write(out, &meta, inputs)?;
    Ok(Written {
        output: out.display().to_string(),
        arch: Some(arch.label().to_string()),
        modules,
        ranks,
        not_written,
        bytes,
    })
}

/// The dialect's names for row slices of `key` (of `shape`), in row order: (name, rows).
fn split_names(
    arch: Arch,
    key: &str,
    shape: &[usize],
    dialect: Dialect,
) -> Vec<(String, (usize, usize))> {
    let mut out: Vec<(String, (usize, usize))> = Vec::new();
    for t in ckpt_core::catalog::lora::slices_of(arch, key) {
        if let (Some(rows), Some(name)) = (t.rows, name_in(arch, &t, dialect)) {
            out.push((name.to_string(), rows.range(shape)));
        }
    }
    out.sort_by_key(|(_, r)| *r);
    out
}
