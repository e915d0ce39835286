//! ASimilarity: the attention-output similarity behind the per-block tables mergers publish
//! ("OUT09 99.4821%"), reproduced as its PyTorch scripts compute it.
//!
//! For each scored block (a U-Net block with a transformer), with C its channel count:
//!
//! 1. X = `torch.randn(C, C)`: one draw per block, in the order the blocks are listed, from a
//!    generator seeded once (`torch.manual_seed(seed)`) before the first block. Both models
//!    see the same X. The scripts build three `nn.Linear(C, C)` layers for every model they
//!    evaluate, and each constructor draws its random initial weights from the same
//!    generator (C² draws) before the real weights are loaded: wkpark's scripts evaluate the
//!    reference right after each draw (3·C² draws skipped before the next block), SuperMerger
//!    evaluates both models there (6·C²). See [`Like`].
//! 2. Per model, from `transformer_blocks.0.attn1.to_{q,k,v}.weight` (C x C, read as f32):
//!    Q = X·Wqᵀ, K = X·Wkᵀ, V = X·Wvᵀ, and A = softmax over each row of Q·Kᵀ, with no
//!    1/√d scaling and no split into heads.
//! 3. O[i,k] = A[i,k]·s[k] with s[k] = Σⱼ V[j,k]: the original's einsum "ik,jk->ik" is not
//!    the product A·V but each row of A times the column sums of V.
//! 4. The block's similarity is the mean over the C rows of cos(O_A[i,:], O_B[i,:]); the
//!    total is the plain mean of the blocks shown.
//!
//! Matrix products are f32 with faer, as PyTorch's are f32 (or f64 on request: the exact
//! value, where two f32 implementations, PyTorch included, differ by up to ~1e-3 points on
//! blocks whose unscaled attention logits nearly tie). Two choices that differ only in
//! rounding: s comes from the column sums of X (s = (1ᵀX)·Wvᵀ, in f64) instead of from V,
//! and the row cosines are summed in f64.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use serde::Serialize;

use ckpt_core::catalog::selector::Term;
use ckpt_core::catalog::{Arch, Block, Grouping, Selector, canonical_key};
use ckpt_core::rng::torch::{MathPath, TorchGenerator};
use ckpt_read::Checkpoint;

/// The seed of the original scripts and of wkpark's tables.
pub const SEED: u64 = 114514;
/// The seed of SuperMerger's ASimilarity mode.
pub const SUPERMERGER_SEED: u64 = 2244096;

/// Whose numbers to reproduce: the scripts differ in what they draw between blocks, their
/// default seed and their rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Like {
    /// wkpark's sd-cosine-similarity (`similar.py`, `cosout.py`, `cosin.py`) and the
    /// original `qwerty.py`: seed 114514, 4 decimals, total = mean of the blocks.
    Wkpark,
    /// SuperMerger's ASimilarity mode: seed 2244096, all 16 blocks, 3 decimals, no total.
    Supermerger,
}

impl Like {
    pub fn default_seed(self) -> u64 {
        match self {
            Like::Wkpark => SEED,
            Like::Supermerger => SUPERMERGER_SEED,
        }
    }

    /// Models evaluated between two draws (each builds three `nn.Linear`).
    fn models_between_draws(self) -> usize {
        match self {
            Like::Wkpark => 1,
            Like::Supermerger => 2,
        }
    }

    /// Decimals of the printed percentages.
    pub fn decimals(self) -> usize {
        match self {
            Like::Wkpark => 4,
            Like::Supermerger => 3,
        }
    }
}

/// A block ASimilarity can score and where its self-attention lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AsimBlock {
    pub block: Block,
    /// e.g. `model.diffusion_model.input_blocks.1.1`.
    #[serde(skip)]
    pub prefix: String,
}

impl AsimBlock {
    fn key(&self, proj: &str) -> String {
        format!(
            "{}.transformer_blocks.0.attn1.to_{proj}.weight",
            self.prefix
        )
    }
}

/// The blocks with a transformer, in the scripts' order (IN, MID, OUT), as the
/// architecture's spec lists them (`[asim]`). SD1 and SD2: IN01, IN02, IN04, IN05, IN07,
/// IN08, M00, OUT03..OUT11. SDXL (not in the original scripts; the same computation on its
/// first transformer block): IN04, IN05, IN07, IN08, M00, OUT00..OUT05. None for DiTs:
/// ASimilarity is defined on the U-Net's transformers.
pub fn attention_blocks(arch: Arch) -> Vec<AsimBlock> {
    arch.asim_blocks()
        .into_iter()
        .map(|(block, prefix)| AsimBlock { block, prefix })
        .collect()
}

/// The architectures ASimilarity is defined on, by label: `SD1 (LDM), SD2 (LDM) or ...`.
fn defined_on() -> String {
    let labels: Vec<&str> = Arch::all()
        .iter()
        .filter(|a| !a.asim_blocks().is_empty())
        .map(|a| a.label())
        .collect();
    match labels.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => labels.join(""),
    }
}

/// The architecture whose attention keys a checkpoint has (SD1 and SD2 share them), found
/// from the keys alone so files holding only those weights work too.
pub fn arch_of(ckpt: &Checkpoint) -> Option<Arch> {
    let has = |b: &AsimBlock| {
        ckpt.tensors()
            .iter()
            .any(|t| canonical_key(&t.name) == b.key("q"))
    };
    // Architectures that share the scored keys (SD1 and SD2) are found as the first.
    Arch::all().iter().copied().find(|&arch| {
        let blocks = attention_blocks(arch);
        !blocks.is_empty() && blocks.iter().all(has)
    })
}

/// The architecture both files are scored in: the one whose attention weights each file
/// has. SD1 and SD2 share the scored keys, so a file's detected architecture names the
/// table when it agrees with the keys; the keys alone decide otherwise (files holding only
/// these weights).
pub fn scored_arch(files: [(&Checkpoint, Option<Arch>); 2]) -> Result<Arch, AsimError> {
    let arch_of = |(ckpt, detected): (&Checkpoint, Option<Arch>)| {
        if let Some(a) = detected.filter(|a| a.asim_blocks().is_empty()) {
            return Err(AsimError::NoUnetAttention {
                file: ckpt.display_name(),
                arch: a.label(),
            });
        }
        let by_keys = arch_of(ckpt).ok_or_else(|| AsimError::NoAttentionWeights {
            file: ckpt.display_name(),
        })?;
        Ok(detected
            .filter(|a| attention_blocks(*a) == attention_blocks(by_keys))
            .unwrap_or(by_keys))
    };
    let arch = arch_of(files[0])?;
    if attention_blocks(arch_of(files[1])?) != attention_blocks(arch) {
        return Err(AsimError::DifferentUnets {
            file: files[1].0.display_name(),
            other: files[0].0.display_name(),
            this: arch_of(files[1])?.label(),
            that: arch.label(),
        });
    }
    Ok(arch)
}

/// The scored blocks a selector chooses, in model order. A block named alone must have a
/// transformer to score; groups and ranges take the scored blocks they cover.
pub fn select(arch: Arch, selector: &Selector) -> Result<Vec<AsimBlock>, String> {
    let all = attention_blocks(arch);
    let names: Vec<String> = all.iter().map(|b| b.block.to_string()).collect();
    for (term, text) in selector.terms(arch).map_err(|e| e.to_string())? {
        if let Term::Block(b) = term
            && !all.iter().any(|a| a.block == b)
        {
            return Err(format!(
                "block '{text}' has no transformer to score; ASimilarity scores {}",
                names.join(", ")
            ));
        }
    }
    let grouping = Grouping::for_arch(arch);
    let rows = selector.rows(&grouping).map_err(|e| e.to_string())?;
    let chosen: Vec<AsimBlock> = all
        .into_iter()
        .filter(|b| {
            grouping
                .groups()
                .iter()
                .zip(&rows)
                .any(|(g, &c)| c && g.block == Some(b.block))
        })
        .collect();
    if chosen.is_empty() {
        return Err(format!(
            "'{selector}' selects no block with a transformer; ASimilarity scores {}",
            names.join(", ")
        ));
    }
    Ok(chosen)
}

/// One scored block.
#[derive(Clone, Debug, Serialize)]
pub struct AsimRow {
    pub block: String,
    pub channels: usize,
    /// Mean over rows of the attention-output cosine, in [−1, 1].
    pub similarity: f64,
}

/// Why two files cannot be scored: a weight a block needs that a file lacks or holds in an
/// unusable form, or U-Nets that do not compare.
#[derive(Debug, thiserror::Error)]
pub enum AsimError {
    /// An architecture without the U-Net's self-attention layers (a DiT).
    #[error(
        "'{file}': ASimilarity is defined on the U-Net's self-attention layers ({}) and {arch} \
         has none",
        defined_on()
    )]
    NoUnetAttention { file: String, arch: &'static str },
    #[error(
        "'{file}': no self-attention weights of {} (transformer_blocks.0.attn1.to_q/k/v) in \
         every scored block",
        defined_on()
    )]
    NoAttentionWeights { file: String },
    #[error(
        "'{file}': its U-Net and that of '{other}' are different U-Nets (their attention blocks \
         differ: {this} and {that})"
    )]
    DifferentUnets {
        file: String,
        other: String,
        this: &'static str,
        that: &'static str,
    },
    #[error("'{file}': {block}: q, k and v differ in size")]
    QkvSizes { file: String, block: String },
    #[error("'{file}': {block}: {channels} channels where the reference has {reference}")]
    Channels {
        file: String,
        block: String,
        channels: usize,
        reference: usize,
    },
    #[error("'{file}': {block}: {channels} channels is too small to score")]
    TooSmall {
        file: String,
        block: String,
        channels: usize,
    },
    #[error("'{file}': no tensor {key}, which ASimilarity reads")]
    NoWeight { file: String, key: String },
    #[error("'{file}': {key} is {dtype}, not a float tensor")]
    NotFloat {
        file: String,
        key: String,
        dtype: String,
    },
    #[error("'{file}': {key} has shape {shape:?}, not C x C")]
    NotSquare {
        file: String,
        key: String,
        shape: Vec<usize>,
    },
}

/// Reads one C x C projection weight as f32.
fn weight(ckpt: &Checkpoint, key: &str) -> Result<(usize, Vec<f32>), AsimError> {
    let file = || ckpt.display_name();
    let t = ckpt
        .tensors()
        .iter()
        .find(|t| canonical_key(&t.name) == key)
        .ok_or_else(|| AsimError::NoWeight {
            file: file(),
            key: key.into(),
        })?;
    if !t.is_float() {
        return Err(AsimError::NotFloat {
            file: file(),
            key: key.into(),
            dtype: format!("{:?}", t.dtype),
        });
    }
    let not_square = || AsimError::NotSquare {
        file: file(),
        key: key.into(),
        shape: t.shape.clone(),
    };
    let (rows, cols) = match t.shape[..] {
        [r, c] | [r, c, 1, 1] => (r, c),
        _ => return Err(not_square()),
    };
    if rows != cols {
        return Err(not_square());
    }
    let mut wide = vec![0.0f64; rows * cols];
    ckpt_core::pass::Slice::of(ckpt, t).values_into(&mut wide);
    Ok((rows, wide.into_iter().map(|x| x as f32).collect()))
}

/// The float type the matrix products run in.
trait Real: faer::traits::RealField + Copy + Default + Send + Sync + 'static {
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
}

impl Real for f32 {
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> f32 {
        f32::exp(self)
    }
}

impl Real for f64 {
    fn from_f64(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> f64 {
        f64::exp(self)
    }
}

/// A row-major C x C buffer as a faer matrix.
fn mat<T: Real>(c: usize, data: &[f32]) -> Mat<T> {
    Mat::from_fn(c, c, |i, j| T::from_f64(data[i * c + j] as f64))
}

/// a·bᵀ.
fn times_transpose<T: Real>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> Mat<T> {
    let mut out = Mat::<T>::zeros(a.nrows(), b.nrows());
    matmul(
        out.as_mut(),
        Accum::Replace,
        a,
        b.transpose(),
        T::from_f64(1.0),
        Par::rayon(0),
    );
    out
}

/// O = softmax_rows(Q·Kᵀ) ⊙ s of one model for input X.
fn attention_output<T: Real>(x: MatRef<'_, T>, ones_x: &[f64], w: [&[f32]; 3], c: usize) -> Mat<T> {
    let q = times_transpose(x, mat::<T>(c, w[0]).as_ref());
    let k = times_transpose(x, mat::<T>(c, w[1]).as_ref());
    let logits = times_transpose(q.as_ref(), k.as_ref());
    // s[k] = Σⱼ V[j,k] = Σₘ (Σⱼ X[j,m])·Wv[k,m].
    let s: Vec<T> = (0..c)
        .map(|kk| {
            T::from_f64(
                (0..c)
                    .map(|m| ones_x[m] * w[2][kk * c + m] as f64)
                    .sum::<f64>(),
            )
        })
        .collect();
    let mut out = Mat::<T>::zeros(c, c);
    for i in 0..c {
        let max = (0..c)
            .map(|j| logits[(i, j)])
            .fold(
                T::from_f64(f64::NEG_INFINITY),
                |a, b| if b > a { b } else { a },
            );
        let e: Vec<T> = (0..c).map(|j| (logits[(i, j)] - max).exp()).collect();
        let sum = e.iter().fold(T::from_f64(0.0), |a, b| a + *b);
        for j in 0..c {
            out[(i, j)] = e[j] / sum * s[j];
        }
    }
    out
}

/// The block's similarity: the mean over rows of the row cosines of the two outputs.
fn block_similarity<T: Real>(draw: &[f32], wa: [&[f32]; 3], wb: [&[f32]; 3], c: usize) -> f64 {
    let x = mat::<T>(c, draw);
    let ones_x: Vec<f64> = (0..c)
        .map(|m| (0..c).map(|j| draw[j * c + m] as f64).sum())
        .collect();
    let oa = attention_output(x.as_ref(), &ones_x, wa, c);
    let ob = attention_output(x.as_ref(), &ones_x, wb, c);
    (0..c)
        .map(|i| row_cosine(oa.as_ref(), ob.as_ref(), i))
        .sum::<f64>()
        / c as f64
}

/// The float type of the matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// As PyTorch computes it (the scripts run in float32).
    F32,
    /// The exact value of the same computation, to about 1e-12: the same on every
    /// machine, where float32 results differ in the fourth decimal on blocks whose
    /// attention logits nearly tie.
    F64,
}

/// Scores `blocks` between `a` (the reference) and `b`, drawing X from `seed`.
pub fn asim(
    a: &Checkpoint,
    b: &Checkpoint,
    blocks: &[AsimBlock],
    seed: u64,
    like: Like,
    precision: Precision,
    mut progress: impl FnMut(usize),
) -> Result<Vec<AsimRow>, AsimError> {
    // The whole selection draws from one generator, block after block.
    let mut rng = TorchGenerator::manual_seed(seed, MathPath::Avx2);
    let mut rows = Vec::new();
    for (n, blk) in blocks.iter().enumerate() {
        let load = |ckpt: &Checkpoint| -> Result<(usize, [Vec<f32>; 3]), AsimError> {
            let (c, q) = weight(ckpt, &blk.key("q"))?;
            let (ck, k) = weight(ckpt, &blk.key("k"))?;
            let (cv, v) = weight(ckpt, &blk.key("v"))?;
            if ck != c || cv != c {
                return Err(AsimError::QkvSizes {
                    file: ckpt.display_name(),
                    block: blk.block.to_string(),
                });
            }
            Ok((c, [q, k, v]))
        };
        let (c, wa) = load(a)?;
        let (cb, wb) = load(b)?;
        if cb != c {
            return Err(AsimError::Channels {
                file: b.display_name(),
                block: blk.block.to_string(),
                channels: cb,
                reference: c,
            });
        }
        let draw = rng.randn(c * c).ok_or_else(|| AsimError::TooSmall {
            file: a.display_name(),
            block: blk.block.to_string(),
            channels: c,
        })?;
        // The scripts' nn.Linear constructors draw their throwaway initial weights here.
        rng.skip_uniform(3 * c * c * like.models_between_draws());
        let (wa, wb) = ([&wa[0][..], &wa[1], &wa[2]], [&wb[0][..], &wb[1], &wb[2]]);
        let mean = match precision {
            Precision::F32 => block_similarity::<f32>(&draw, wa, wb, c),
            Precision::F64 => block_similarity::<f64>(&draw, wa, wb, c),
        };
        rows.push(AsimRow {
            block: blk.block.to_string(),
            channels: c,
            similarity: mean,
        });
        progress(n + 1);
    }
    Ok(rows)
}

/// `torch.cosine_similarity` of row i (eps 1e-8 on each norm).
fn row_cosine<T: Real>(a: MatRef<'_, T>, b: MatRef<'_, T>, i: usize) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for j in 0..a.ncols() {
        let (x, y) = (a[(i, j)].to_f64(), b[(i, j)].to_f64());
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt().max(1e-8) * bb.sqrt().max(1e-8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch(id: &str) -> Arch {
        Arch::parse(id).unwrap()
    }

    fn names(blocks: &[AsimBlock]) -> Vec<String> {
        blocks.iter().map(|b| b.block.to_string()).collect()
    }

    fn select(arch: Arch, text: &str) -> Result<Vec<AsimBlock>, String> {
        super::select(arch, &Selector::parse(text).map_err(|e| e.to_string())?)
    }

    #[test]
    fn selections_follow_the_scripts_order() {
        assert_eq!(select(arch("sd1"), "all").unwrap().len(), 16);
        assert_eq!(
            names(&select(arch("sd1"), "out,in").unwrap())[..3],
            ["IN01", "IN02", "IN04"]
        );
        assert_eq!(
            names(&select(arch("sd1"), "OUT03..OUT05,mid").unwrap()),
            ["M00", "OUT03", "OUT04", "OUT05"]
        );
        assert_eq!(
            names(&select(arch("sdxl"), "in").unwrap()),
            ["IN04", "IN05", "IN07", "IN08"]
        );
        assert_eq!(select(arch("sdxl"), "all").unwrap().len(), 11);
        assert!(
            select(arch("sd1"), "IN03")
                .unwrap_err()
                .contains("no transformer")
        );
        assert!(select(arch("sd1"), "OUT05..OUT03").is_err());
        assert!(select(arch("sd1"), "").is_err());
        // Ranges and groups take the scored blocks they cover; alone, a text encoder
        // covers none.
        assert_eq!(
            names(&select(arch("sd1"), "IN00..IN03").unwrap()),
            ["IN01", "IN02"]
        );
        assert!(
            select(arch("sd1"), "te")
                .unwrap_err()
                .contains("no block with a transformer")
        );
    }
}
