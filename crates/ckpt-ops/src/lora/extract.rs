//! `lora extract`: a LoRA from the difference of two checkpoints, module by module, as
//! kohya's `extract_lora_from_models.py` makes it, but with a truncated SVD instead of a
//! full one (see [`super::svd`]).
//!
//! Per module (the layers [`ckpt_core::catalog::lora::extractable`] lists, ResNet parts only
//! with a convolution rank): ΔW = tuned − base (differences in f64, held in f32 as kohya's
//! `float()` holds them), flattened to out × (in·k·k); its
//! leading r triplets U·diag(σ)·Vᵀ; `lora_up` = U·diag(σ), `lora_down` = Vᵀ, both clamped
//! at ±q where q is the `clamp_quantile` quantile of their values together (torch's
//! `quantile`, linear interpolation, of the signed values, as kohya's code computes it);
//! `alpha` = r, so the scale is 1. A text encoder whose largest change is at most
//! `min_diff` is left out whole, as kohya does.
//!
//! Memory: the finished factors, encoded (the output's size), plus per worker thread one
//! module's ΔW in f32 and its sketches (for SDXL's largest linear, 10240 × 1280, 52 MB,
//! and a basis of 518 columns as tall).

use std::collections::BTreeMap;
use std::path::Path;

use faer::Mat;
use rayon::prelude::*;
use serde::Serialize;

use super::LoraError;
use super::svd::{self, RankRule, Real};
use super::write::{Dialect, Factors, Tensors, factors_of};
use ckpt_core::catalog::lora::{Extractable, extractable};
use ckpt_core::catalog::{Arch, Grouping};
use ckpt_core::pass::Slice;
use ckpt_read::Checkpoint;
use ckpt_read::dtype::FloatFormat;

#[derive(Clone, Debug)]
pub struct Options {
    /// Rank of linear layers and 1×1 convolutions.
    pub rank: RankRule,
    /// Rank of k×k convolutions; `None`: ResNet parts are not extracted.
    pub conv_rank: Option<RankRule>,
    /// Quantile at which the factors are clamped; 1: no clamp.
    pub clamp_quantile: f64,
    /// A text encoder whose largest change is at most this is not extracted.
    pub min_diff: f64,
    /// The factors' float format.
    pub format: FloatFormat,
    /// Krylov iterations of the SVD ([`svd::ITERATIONS`] by default).
    pub iterations: usize,
    pub seed: u64,
    /// Metadata values: the files' names.
    pub tuned_name: String,
    pub base_name: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Extraction {
    pub output: String,
    pub arch: String,
    pub modules: Vec<ExtractedModule>,
    pub blocks: Vec<BlockEnergy>,
    /// Modules whose largest change is at most `min_diff`.
    pub below_min_diff: Vec<String>,
    /// Text encoders left out (their largest change is at most `min_diff`).
    pub text_encoders_skipped: Vec<String>,
    /// (module, why) for layers not extracted: missing, other shapes, not floats.
    pub skipped: Vec<(String, String)>,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExtractedModule {
    pub stem: String,
    pub key: String,
    pub rows: Option<ckpt_core::catalog::lora::Rows>,
    pub block: String,
    pub rank: usize,
    /// ‖ΔW‖²_F.
    pub energy: f64,
    /// Σᵢ<r σᵢ², before the clamp.
    pub retained: f64,
    pub max_abs: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlockEnergy {
    pub block: String,
    pub modules: usize,
    pub energy: f64,
    pub retained: f64,
    /// retained / energy (1 when the block did not change).
    pub share: f64,
}

/// Why a layer is not extracted.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Skip {
    #[error("{key} is not in both checkpoints")]
    NotInBoth { key: String },
    #[error("{key}: {tuned:?} against {base:?}")]
    Shapes {
        key: String,
        tuned: Vec<usize>,
        base: Vec<usize>,
    },
    #[error("{key} is not a float tensor")]
    NotFloat { key: String },
    #[error("{key} has {rows} rows, fewer than {needed}")]
    FewRows {
        key: String,
        rows: usize,
        needed: usize,
    },
    #[error(transparent)]
    Svd(#[from] svd::SvdError),
}

/// One module's ΔW, or why it has none.
fn delta(
    tuned: &Checkpoint,
    base: &Checkpoint,
    ex: &Extractable,
) -> Result<(Mat<Real>, Vec<usize>, f64), Skip> {
    let key = &ex.target.key;
    let (Some(t), Some(b)) = (tuned.get(key), base.get(key)) else {
        return Err(Skip::NotInBoth { key: key.clone() });
    };
    if t.shape != b.shape {
        return Err(Skip::Shapes {
            key: key.clone(),
            tuned: t.shape.clone(),
            base: b.shape.clone(),
        });
    }
    if !t.is_float() || !b.is_float() {
        return Err(Skip::NotFloat { key: key.clone() });
    }
    let rows = t.shape[0];
    let cols: usize = t.shape[1..].iter().product();
    let (lo, hi) = ex.target.row_range(&t.shape);
    if hi > rows {
        return Err(Skip::FewRows {
            key: key.clone(),
            rows,
            needed: hi,
        });
    }
    let (st, sb) = (Slice::of(tuned, t), Slice::of(base, b));
    let (mut vt, mut vb) = (vec![0.0f64; cols], vec![0.0f64; cols]);
    let mut d = Mat::<Real>::zeros(hi - lo, cols);
    let mut max_abs = 0.0f64;
    for r in lo..hi {
        let at = r * cols;
        st.part(at, at + cols).values_into(&mut vt);
        sb.part(at, at + cols).values_into(&mut vb);
        for j in 0..cols {
            let x = vt[j] - vb[j];
            max_abs = max_abs.max(x.abs());
            d[(r - lo, j)] = x as Real;
        }
    }
    let mut shape = t.shape.clone();
    shape[0] = hi - lo;
    Ok((d, shape, max_abs))
}

/// A finished module: its tensors and its report line.
struct Done {
    tensors: Tensors,
    line: ExtractedModule,
}

fn factor(
    ex: &Extractable,
    d: Mat<Real>,
    shape: &[usize],
    max_abs: f64,
    rule: RankRule,
    opts: &Options,
    block: String,
) -> Result<Done, Skip> {
    let key_hash = ckpt_core::rng::counter::key_hash(&ex.stem);
    let (t, energy) = svd::truncate(d.as_ref(), rule, opts.iterations, opts.seed ^ key_hash)?;
    let r = t.s.len();
    let m = d.nrows();
    drop(d);
    let (up, down) = factors_of(&t, opts.clamp_quantile);
    let kernel = (shape.len() == 4).then(|| &shape[1..]);
    let mut tensors = Tensors::default();
    tensors.module(
        &ex.stem,
        Dialect::Kohya,
        opts.format,
        Factors::new(&up, &down, m, r, kernel),
        Some(r as f64),
    );
    Ok(Done {
        tensors,
        line: ExtractedModule {
            stem: ex.stem.clone(),
            key: ex.target.key.clone(),
            rows: ex.target.rows,
            block,
            rank: r,
            energy,
            retained: t.s.iter().map(|s| s * s).sum(),
            max_abs,
        },
    })
}

fn rule_label(r: RankRule) -> String {
    match r {
        RankRule::Fixed(r) => r.to_string(),
        RankRule::Energy { share, .. } => format!("auto (energy {share})"),
    }
}

/// Extracts `tuned − base` into the LoRA file `out`.
pub fn extract(
    tuned: &Checkpoint,
    base: &Checkpoint,
    arch: Arch,
    opts: &Options,
    out: &Path,
    inputs: &[&Path],
    progress: &dyn ckpt_core::pass::Progress,
) -> Result<Extraction, LoraError> {
    let started = std::time::Instant::now();
    let grouping = Grouping::for_arch(arch);
    let label = |key: &str| grouping.groups()[grouping.group_of(key)].label.clone();
    let mut skipped = Vec::new();
    // The layers to factor: ResNet parts only with a convolution rank.
    let layers: Vec<Extractable> = extractable(arch)
        .into_iter()
        .filter(|ex| !ex.resnet || opts.conv_rank.is_some())
        .collect();
    // Text encoders first: kohya leaves out one whose largest change is at most min_diff.
    let mut te_max: BTreeMap<String, f64> = BTreeMap::new();
    for ex in layers.iter().filter(|e| e.text_encoder) {
        if let Ok((_, _, m)) = delta(tuned, base, ex) {
            let e = te_max.entry(label(&ex.target.key)).or_insert(0.0);
            *e = e.max(m);
        }
    }
    let te_skipped: Vec<String> = te_max
        .iter()
        .filter(|(_, m)| **m <= opts.min_diff)
        .map(|(l, _)| l.clone())
        .collect();
    let layers: Vec<Extractable> = layers
        .into_iter()
        .filter(|ex| !(ex.text_encoder && te_skipped.contains(&label(&ex.target.key))))
        .collect();
    let total: u64 = layers
        .iter()
        .filter_map(|ex| tuned.get(&ex.target.key))
        .map(|t| 2 * (t.end - t.begin) as u64)
        .sum();
    progress.start(total);
    let results: Vec<Result<Done, (String, Skip)>> = layers
        .par_iter()
        .map(|ex| {
            let (d, shape, max_abs) = delta(tuned, base, ex).map_err(|e| (ex.stem.clone(), e))?;
            if let Some(t) = tuned.get(&ex.target.key) {
                progress.advance(2 * (t.end - t.begin) as u64);
            }
            let kernel = shape.len() == 4 && shape[2] * shape[3] > 1;
            let rule = if kernel {
                opts.conv_rank
                    .expect("k×k convolutions are only listed with a rank")
            } else {
                opts.rank
            };
            factor(ex, d, &shape, max_abs, rule, opts, label(&ex.target.key))
                .map_err(|e| (ex.stem.clone(), e))
        })
        .collect();
    progress.finish();
    let mut tensors = Tensors::default();
    let mut modules = Vec::new();
    for r in results {
        match r {
            Ok(done) => {
                tensors.items.extend(done.tensors.items);
                modules.push(done.line);
            }
            Err((stem, why)) => skipped.push((stem, why.to_string())),
        }
    }
    if modules.is_empty() {
        return Err(LoraError::NothingToExtract {
            layers: layers.len(),
            arch: arch.label(),
            first: skipped
                .first()
                .map_or("none listed", |(_, why)| why.as_str())
                .to_string(),
        });
    }
    // kohya's `ss_base_model_version` and the modelspec architecture (the spec's
    // `[modelspec]`; extraction runs only where the spec reads LoRAs, which names them).
    let names = arch.modelspec().unwrap_or(ckpt_core::catalog::ModelSpec {
        ss_base_model_version: arch.id(),
        architecture: arch.id(),
        ss_v2: false,
    });
    let ranks: Vec<usize> = modules.iter().map(|m| m.rank).collect();
    let dim = ranks.iter().copied().max().unwrap_or(0);
    let mut meta: Vec<(String, String)> = vec![
        ("ss_network_module".into(), "networks.lora".into()),
        ("ss_network_dim".into(), dim.to_string()),
        ("ss_network_alpha".into(), dim.to_string()),
        ("ss_v2".into(), names.ss_v2.to_string()),
        (
            "ss_base_model_version".into(),
            names.ss_base_model_version.into(),
        ),
        (
            "ss_training_comment".into(),
            format!(
                "extracted by ckpt-diff {}: {} - {}, rank {}{}",
                env!("CARGO_PKG_VERSION"),
                opts.tuned_name,
                opts.base_name,
                rule_label(opts.rank),
                opts.conv_rank
                    .map(|r| format!(", conv rank {}", rule_label(r)))
                    .unwrap_or_default()
            ),
        ),
        ("modelspec.sai_model_spec".into(), "1.0.0".into()),
        ("modelspec.architecture".into(), names.architecture.into()),
        (
            "modelspec.implementation".into(),
            "https://github.com/kohya-ss/sd-scripts".into(),
        ),
        (
            "modelspec.title".into(),
            out.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    ];
    if let Some(c) = opts.conv_rank {
        let c = match c {
            RankRule::Fixed(r) => r.to_string(),
            RankRule::Energy { .. } => dim.to_string(),
        };
        meta.push((
            "ss_network_args".into(),
            format!("{{\"conv_dim\": \"{c}\", \"conv_alpha\": \"{c}\"}}"),
        ));
    }
    let len = tensors.write(out, &meta, inputs)?;
    // Energy per block, in model order.
    let mut blocks: Vec<BlockEnergy> = Vec::new();
    let mut order_of: Vec<(usize, String)> = Vec::new();
    for m in &modules {
        let row = grouping.group_of(&m.key);
        match blocks.iter_mut().find(|b| b.block == m.block) {
            Some(b) => {
                b.modules += 1;
                b.energy += m.energy;
                b.retained += m.retained;
            }
            None => {
                order_of.push((row, m.block.clone()));
                blocks.push(BlockEnergy {
                    block: m.block.clone(),
                    modules: 1,
                    energy: m.energy,
                    retained: m.retained,
                    share: 0.0,
                });
            }
        }
    }
    for b in &mut blocks {
        b.share = if b.energy > 0.0 {
            b.retained / b.energy
        } else {
            1.0
        };
    }
    blocks.sort_by_key(|b| {
        order_of
            .iter()
            .find(|(_, l)| *l == b.block)
            .map_or(usize::MAX, |(r, _)| *r)
    });
    let below_min_diff = modules
        .iter()
        .filter(|m| m.max_abs <= opts.min_diff)
        .map(|m| m.stem.clone())
        .collect();
    Ok(Extraction {
        output: out.display().to_string(),
        arch: arch.label().to_string(),
        modules,
        blocks,
        below_min_diff,
        text_encoders_skipped: te_skipped,
        skipped,
        bytes: len,
        seconds: started.elapsed().as_secs_f64(),
    })
}
