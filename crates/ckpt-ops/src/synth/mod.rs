//! Synthetic checkpoints with the real key layouts of every architecture in the catalog,
//! deterministic from a seed: for tests, benchmarks and demos, since no real model can be downloaded here.
//!
//! A synthetic model is a linear combination, row by row (U-Net block, text encoder, VAE),
//! of a random **base** and random **deltas**:
//!
//! ```text
//! x[key][j] = b(row)·(mean(key) + std(key)·z₀(key, j)) + Σₖ cₖ(row)·std(key)·zₖ(key, j)
//! ```
//!
//! where each z is a counter-based normal stream. Fine-tunes are the base plus one delta
//! with a per-row size; merges of synthetic models are again synthetic models
//! ([`Synthetic::lincomb`]), so a planted recipe's exact result is known. Shapes are real or
//! scaled down (every dimension ≥ 128 divided by `scale`), dtypes F16/BF16/F32, and
//! integer tensors (`position_ids`) stay int64 with their exact values.

pub mod family;

use rayon::prelude::*;
use serde::Serialize;

use ckpt_core::catalog::data::{self, Role};
use ckpt_core::catalog::detect::scaled_shape;
use ckpt_core::catalog::keys::EMA_PREFIX;
use ckpt_core::catalog::{Arch, Component, DENOISER_PREFIX, Grouping, canonical_key, component_of};
use ckpt_core::kernels;
use ckpt_core::pass::{Cancel, PassError, Progress};
use ckpt_core::rng::counter::{Stream, key_hash};
use ckpt_core::writer::quantizable;
use ckpt_core::writer::{OutputFile, TensorSpec, WriteError};
use ckpt_read::Dtype;
use ckpt_read::dtype::FloatFormat;
use ckpt_read::quant::{MARKER, scale_name};

/// The release variant: the base release, or one its architecture's spec names (SD's
/// inpainting, pix2pix and depth U-Nets; Flux.1 schnell, Fill and Canny/Depth), generated
/// as the spec's rule says (a wider input, keys left out). Recorded by its name (`Base`,
/// `Inpainting`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    name: &'static str,
    /// The input it widens: (key, dimension, width).
    width: Option<(&'static str, usize, usize)>,
    /// The keys it leaves out.
    absent: Option<&'static str>,
    /// The key it adds (one the base release does not have).
    present: Option<&'static str>,
}

impl Serialize for Variant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

impl Variant {
    /// The base release.
    pub const BASE: Variant = Variant {
        name: "Base",
        width: None,
        absent: None,
        present: None,
    };

    /// The variant `synth --variant` calls `word` in `arch`.
    pub fn named(arch: Arch, word: &str) -> Option<Variant> {
        if word == "base" {
            return Some(Variant::BASE);
        }
        arch.variants()
            .into_iter()
            .find(|v| v.synth == word || v.aliases.iter().any(|a| a == word))
            .map(|v| Variant {
                name: v.name,
                width: v.width,
                absent: v.absent,
                present: v.present,
            })
    }

    /// Every name `synth --variant` takes, in the catalog's order.
    pub fn names() -> Vec<&'static str> {
        let mut names = vec!["base"];
        for v in Arch::all().iter().flat_map(|a| a.variants()) {
            if !names.contains(&v.synth) {
                names.push(v.synth);
            }
        }
        names
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The layout of a synthetic file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Layout {
    pub arch: Arch,
    /// 1 = real shapes; S divides every dimension ≥ 128 by S.
    pub scale: u32,
    #[serde(serialize_with = "ser_format")]
    pub dtype: FloatFormat,
    pub variant: Variant,
    /// Components written (others are left out).
    pub components: Vec<Component>,
    pub ema: bool,
    pub scheduler: bool,
    pub vpred_markers: bool,
    /// Text encoder keys under the old transformers names (no `text_model.`).
    pub old_clip_names: bool,
    /// Leave out the optional text-encoder layers (as pruned SDXL files do).
    pub prune_text_encoders: bool,
    pub position_ids: bool,
    /// Leave float data as zeros (a sparse file, written instantly): for tests of layout
    /// and detection on full-size shapes.
    pub zero_data: bool,
    /// Only the keys this regular expression finds (e.g. just the attention weights an
    /// analysis reads, at full size).
    pub keys: Option<KeyFilter>,
    /// Diffuser keys without `model.diffusion_model.` (BFL's own Flux files).
    #[serde(skip_serializing_if = "is_false")]
    pub bare: bool,
    /// ComfyUI's scaled FP8: the diffuser's matrices in `dtype` (an FP8 format) with a
    /// per-tensor `scale_weight`, everything else in BF16, and the `scaled_fp8` marker.
    #[serde(skip_serializing_if = "is_false")]
    pub scaled_fp8: bool,
}

/// A regular expression over key names, valid by construction.
#[derive(Clone, Debug)]
pub struct KeyFilter(regex::Regex);

impl KeyFilter {
    pub fn is_match(&self, key: &str) -> bool {
        self.0.is_match(key)
    }
}

impl From<regex::Regex> for KeyFilter {
    fn from(re: regex::Regex) -> KeyFilter {
        KeyFilter(re)
    }
}

impl PartialEq for KeyFilter {
    fn eq(&self, other: &KeyFilter) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Serialize for KeyFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

fn ser_format<S: serde::Serializer>(f: &FloatFormat, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ckpt_read::dtype::name(f.dtype()))
}

impl Layout {
    /// A full checkpoint of `arch` at `scale` in `dtype`, without extras.
    pub fn new(arch: Arch, scale: u32, dtype: FloatFormat) -> Layout {
        Layout {
            arch,
            scale,
            dtype,
            variant: Variant::BASE,
            components: arch.components().to_vec(),
            ema: false,
            scheduler: false,
            vpred_markers: false,
            old_clip_names: false,
            prune_text_encoders: false,
            position_ids: true,
            zero_data: false,
            keys: None,
            bare: false,
            scaled_fp8: false,
        }
    }
}

/// Per-row coefficients, indexed like the rows of [`Grouping::for_arch`].
pub type Profile = Vec<f64>;

/// A synthetic model: a base and deltas, each with per-row coefficients.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Synthetic {
    pub arch: Arch,
    pub base_seed: u64,
    pub base_coef: Profile,
    /// (seed, coefficients) of each delta, by increasing seed.
    pub deltas: Vec<(u64, Profile)>,
}

impl Synthetic {
    /// The base model itself.
    pub fn base(arch: Arch, seed: u64) -> Synthetic {
        Synthetic {
            arch,
            base_seed: seed,
            base_coef: vec![1.0; rows(arch)],
            deltas: Vec::new(),
        }
    }

    /// This model plus a delta of the given per-row size.
    pub fn plus_delta(&self, seed: u64, size: Profile) -> Synthetic {
        let delta = Synthetic {
            arch: self.arch,
            base_seed: self.base_seed,
            base_coef: vec![0.0; rows(self.arch)],
            deltas: vec![(seed, size)],
        };
        Synthetic::lincomb(&[
            (vec![1.0; rows(self.arch)], self),
            (vec![1.0; rows(self.arch)], &delta),
        ])
    }

    /// Σₖ pₖ ⊙ modelₖ, row by row. All models must share the base seed.
    pub fn lincomb(parts: &[(Profile, &Synthetic)]) -> Synthetic {
        let arch = parts[0].1.arch;
        let n = rows(arch);
        let base_seed = parts[0].1.base_seed;
        let mut base_coef = vec![0.0; n];
        let mut deltas: Vec<(u64, Profile)> = Vec::new();
        for (p, m) in parts {
            assert_eq!(
                m.base_seed, base_seed,
                "synthetic models of different bases"
            );
            for r in 0..n {
                base_coef[r] += p[r] * m.base_coef[r];
            }
            for (seed, c) in &m.deltas {
                let slot = match deltas.iter().position(|(s, _)| s == seed) {
                    Some(i) => i,
                    None => {
                        deltas.push((*seed, vec![0.0; n]));
                        deltas.len() - 1
                    }
                };
                for r in 0..n {
                    deltas[slot].1[r] += p[r] * c[r];
                }
            }
        }
        deltas.sort_by_key(|(s, _)| *s);
        Synthetic {
            arch,
            base_seed,
            base_coef,
            deltas,
        }
    }
}

/// Number of rows of an architecture's grouping.
pub fn rows(arch: Arch) -> usize {
    Grouping::for_arch(arch).groups().len()
}

/// A profile with `value` on every row.
pub fn uniform(arch: Arch, value: f64) -> Profile {
    vec![value; rows(arch)]
}

/// A profile from block weights: each row takes the weight of its entry in the block list
/// (`BASE` for SD's text encoders and VAE); rows no entry weighs (Flux's VAE) take `BASE`'s.
pub fn profile_from_blocks(
    arch: Arch,
    weight: impl Fn(ckpt_core::catalog::Block) -> f64,
) -> Profile {
    Grouping::for_arch(arch)
        .groups()
        .iter()
        .map(|g| weight(g.weight_block.unwrap_or(ckpt_core::catalog::Block::BASE)))
        .collect()
}

/// What generates one tensor.
#[derive(Clone, Debug)]
enum Source {
    /// A weight: `key` (canonical, for the streams), its row, and its statistics.
    Float {
        key_hash: u64,
        row: usize,
        mean: f64,
        std: f64,
        /// Stored divided by this tensor's scale ([`fp8_scale`]): scaled FP8.
        scaled: bool,
    },
    /// The `scale_weight` of a scaled weight with these statistics.
    Scale { row: usize, mean: f64, std: f64 },
    /// 0, 1, 2, ... as int64 (`position_ids`).
    Arange,
    /// DDPM schedule buffers, computed for the tensor's length.
    Schedule(&'static str),
    /// A fixed float value.
    Constant(f64),
    /// An integer scalar or empty marker, all zeros.
    IntZeros,
}

/// One output tensor and how to make it.
#[derive(Clone, Debug)]
struct Planned {
    spec: TensorSpec,
    source: Source,
}

/// The tensors of `layout`: catalog keys, filtered, renamed and scaled as asked.
fn plan_tensors(layout: &Layout) -> Vec<Planned> {
    let table = data::table(layout.arch);
    let grouping = Grouping::for_arch(layout.arch);
    let reverse_alias: std::collections::HashMap<&str, &str> = data::aliases()
        .iter()
        .map(|(alias, key)| (key.as_str(), alias.as_str()))
        .collect();
    // Keys some variant adds: written for that variant only.
    let added: Vec<&str> = layout
        .arch
        .variants()
        .iter()
        .filter_map(|v| v.present)
        .collect();
    let mut out = Vec::new();
    for k in &table.keys {
        if layout.keys.as_ref().is_some_and(|re| !re.is_match(&k.name)) {
            continue;
        }
        let wanted = match k.role {
            Role::Ema => layout.ema,
            Role::Scheduler => layout.scheduler,
            Role::Meta => layout.vpred_markers,
            _ => layout.components.contains(&component_of(&k.name)),
        };
        if !wanted {
            continue;
        }
        let is_position_ids = k.name.ends_with("position_ids");
        if is_position_ids && !layout.position_ids {
            continue;
        }
        if layout.prune_text_encoders
            && k.optional
            && k.core
            && matches!(k.role, Role::Txt | Role::Txt2)
            && !is_position_ids
        {
            continue;
        }
        if layout.variant.absent.is_some_and(|p| k.name.starts_with(p)) {
            continue;
        }
        if added.contains(&k.name.as_str()) && layout.variant.present != Some(k.name.as_str()) {
            continue;
        }
        let mut shape = scaled_shape(&k.shape, layout.scale);
        if let Some((key, dim, width)) = layout.variant.width
            && k.name == key
        {
            shape[dim] = width;
        }
        let mut name = k.name.clone();
        if layout.bare && layout.arch.bare_layout() {
            name = name
                .strip_prefix(DENOISER_PREFIX)
                .unwrap_or(&name)
                .to_string();
        }
        if layout.old_clip_names && matches!(k.role, Role::Txt) {
            if let Some(alias) = reverse_alias.get(k.name.as_str()) {
                name = alias.to_string();
            } else if let Some(rest) = k
                .name
                .strip_prefix("conditioner.embedders.0.transformer.text_model.")
            {
                name = format!("conditioner.embedders.0.transformer.{rest}");
            }
        }
        let (mut dtype, mut source) = source_of(layout, &k.name, k.dtype, &shape, &grouping);
        if layout.scaled_fp8
            && let Source::Float {
                row,
                mean,
                std,
                scaled,
                ..
            } = &mut source
        {
            if quantizable(&k.name, &shape) {
                *scaled = true;
                out.push(Planned {
                    spec: TensorSpec {
                        name: scale_name(&name),
                        dtype: Dtype::F32,
                        shape: Vec::new(),
                    },
                    source: Source::Scale {
                        row: *row,
                        mean: *mean,
                        std: *std,
                    },
                });
            } else {
                dtype = Dtype::BF16;
            }
        }
        out.push(Planned {
            spec: TensorSpec { name, dtype, shape },
            source,
        });
    }
    if layout.scaled_fp8 {
        let prefix = if layout.bare { "" } else { DENOISER_PREFIX };
        out.push(Planned {
            spec: TensorSpec {
                name: format!("{prefix}{MARKER}"),
                dtype: layout.dtype.dtype(),
                shape: vec![0],
            },
            source: Source::IntZeros,
        });
    }
    out
}

/// The largest |value| a weight of `row` with these statistics can take: the counter
/// normal is a centred sum of four 16-bit uniforms, so |z| ≤ √12.
fn bound(model: &Synthetic, row: usize, mean: f64, std: f64) -> f64 {
    let z = 12f64.sqrt();
    let b = model.base_coef[row].abs();
    let deltas: f64 = model.deltas.iter().map(|(_, c)| c[row].abs()).sum();
    b * (mean.abs() + std * z) + deltas * std * z
}

/// A scaled weight's `scale_weight`: its bound maps to the format's largest finite value,
/// so no stored value saturates.
fn fp8_scale(model: &Synthetic, layout: &Layout, row: usize, mean: f64, std: f64) -> f64 {
    kernels::fp8_scale(bound(model, row, mean, std), layout.dtype)
}

fn source_of(
    layout: &Layout,
    key: &str,
    catalog_dtype: Dtype,
    shape: &[usize],
    grouping: &Grouping,
) -> (Dtype, Source) {
    let float = layout.dtype.dtype();
    if catalog_dtype == Dtype::I64 || catalog_dtype == Dtype::I32 {
        let source = if key.ends_with("position_ids") {
            Source::Arange
        } else {
            Source::IntZeros
        };
        return (catalog_dtype, source);
    }
    const SCHEDULE: [&str; 13] = [
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "betas",
        "log_one_minus_alphas_cumprod",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "posterior_variance",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "logvar",
    ];
    if let Some(name) = SCHEDULE.iter().find(|n| **n == key) {
        return (float, Source::Schedule(name));
    }
    match key {
        "model_ema.decay" => return (float, Source::Constant(0.9999)),
        "edm_vpred.sigma_min" => return (float, Source::Constant(0.002)),
        "edm_vpred.sigma_max" => return (float, Source::Constant(120.0)),
        k if k.ends_with("logit_scale") => return (float, Source::Constant(100f64.ln())),
        _ => {}
    }
    // EMA weights mirror the U-Net weight they shadow (same streams, same row).
    let stream_key = grouping
        .layout()
        .arch()
        .and_then(|a| ema_source(a, key))
        .unwrap_or_else(|| key.to_string());
    let row = grouping.group_of(&stream_key);
    let (mean, std) = statistics(&stream_key, shape);
    (
        float,
        Source::Float {
            key_hash: key_hash(&stream_key),
            row,
            mean,
            std,
            scaled: false,
        },
    )
}

/// The U-Net key an EMA key shadows (`model_ema.diffusion_modelinput_blocks00bias` ->
/// `model.diffusion_model.input_blocks.0.0.bias`).
fn ema_source(arch: Arch, key: &str) -> Option<String> {
    type Map = std::collections::HashMap<String, String>;
    static MAPS: std::sync::OnceLock<Vec<std::sync::OnceLock<Map>>> = std::sync::OnceLock::new();
    let maps = MAPS.get_or_init(|| Arch::all().iter().map(|_| Default::default()).collect());
    let slot = Arch::all().iter().position(|a| *a == arch)?;
    let map = maps[slot].get_or_init(|| {
        let mut m = std::collections::HashMap::new();
        for k in &data::table(arch).keys {
            if let Some(rest) = k.name.strip_prefix("model.diffusion_model.") {
                m.insert(
                    format!("{EMA_PREFIX}diffusion_model{}", rest.replace('.', "")),
                    k.name.clone(),
                );
            }
        }
        m
    });
    map.get(canonical_key(key).as_ref()).cloned()
}

/// Mean and spread of a weight: matrices and convs ~ N(0, 1/fan_in); norm scales near 1;
/// biases small.
fn statistics(key: &str, shape: &[usize]) -> (f64, f64) {
    match shape.len() {
        0 => (0.0, 0.02),
        1 if key.ends_with(".weight") => (1.0, 0.05),
        1 => (0.0, 0.02),
        _ => {
            let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
            (0.0, 1.0 / (fan_in as f64).sqrt())
        }
    }
}

/// Writes `model` with `layout` to `path` (atomically), with `metadata` added to the
/// generator's own.
pub fn write(
    path: &std::path::Path,
    layout: &Layout,
    model: &Synthetic,
    metadata: &[(String, String)],
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(), SynthError> {
    assert_eq!(
        layout.arch, model.arch,
        "layout and model of different architectures"
    );
    let planned = plan_tensors(layout);
    let mut meta = vec![
        ("format".to_string(), "pt".to_string()),
        (
            "ckpt_diff.synth".to_string(),
            serde_json::json!({ "layout": layout, "model": model }).to_string(),
        ),
    ];
    meta.extend(metadata.iter().cloned());
    let specs: Vec<TensorSpec> = planned.iter().map(|p| p.spec.clone()).collect();
    // Zero weights are never written: the sparse file needs room for the rest only.
    let written = layout.zero_data.then(|| {
        planned
            .iter()
            .filter(|p| !matches!(p.source, Source::Float { .. }))
            .map(|p| p.spec.byte_len() as u64)
            .sum()
    });
    let out = OutputFile::create_sparse(path, specs, &meta, &[], written)?;
    let by_name: std::collections::HashMap<&str, &Planned> =
        planned.iter().map(|p| (p.spec.name.as_str(), p)).collect();

    const ITEM: usize = 1 << 20;
    let mut items = Vec::new();
    for (i, spec) in out.tensors().iter().enumerate() {
        let float_weight = matches!(by_name[spec.name.as_str()].source, Source::Float { .. });
        if layout.zero_data && float_weight {
            continue; // The sized temporary file already reads as zeros.
        }
        let numel = spec.numel();
        let mut start = 0;
        while start < numel {
            items.push((i, start, (start + ITEM).min(numel)));
            start += ITEM;
        }
    }
    let total: u64 = out.tensors().iter().map(|t| t.byte_len() as u64).sum();
    progress.start(total);
    let done = std::sync::atomic::AtomicU64::new(0);
    items
        .par_iter()
        .try_for_each(|&(i, start, end)| -> Result<(), SynthError> {
            if cancel.is_cancelled() {
                return Err(SynthError::Pass(PassError::Interrupted));
            }
            let spec = &out.tensors()[i];
            let planned = by_name[spec.name.as_str()];
            let bytes = generate(model, layout, planned, start, end);
            out.write_tensor_bytes(
                i,
                start * ckpt_read::dtype::bit_size(spec.dtype) / 8,
                &bytes,
            )?;
            progress.advance(bytes.len() as u64);
            let n = bytes.len() as u64;
            let so_far = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
            ckpt_core::pass::test_hold(so_far, cancel);
            Ok(())
        })?;
    progress.finish();
    out.finish()?;
    Ok(())
}

/// Elements `start..end` of one tensor, encoded in its dtype.
fn generate(
    model: &Synthetic,
    layout: &Layout,
    planned: &Planned,
    start: usize,
    end: usize,
) -> Vec<u8> {
    let spec = &planned.spec;
    let n = end - start;
    let format = ckpt_read::dtype::float_format(spec.dtype).unwrap_or(layout.dtype);
    match &planned.source {
        Source::Arange => (start..end)
            .flat_map(|j| (j as i64).to_le_bytes())
            .collect(),
        Source::IntZeros => vec![0u8; n * ckpt_read::dtype::bit_size(spec.dtype) / 8],
        Source::Constant(v) => encode(format, &vec![*v; n]),
        Source::Schedule(name) => {
            let len = spec.numel();
            let all = schedule(name, len);
            encode(format, &all[start..end])
        }
        Source::Scale { row, mean, std } => {
            encode(format, &[fp8_scale(model, layout, *row, *mean, *std)])
        }
        Source::Float {
            key_hash,
            row,
            mean,
            std,
            scaled,
        } => {
            let inverse = if *scaled {
                1.0 / fp8_scale(model, layout, *row, *mean, *std)
            } else {
                1.0
            };
            let base = Stream::new(model.base_seed, *key_hash);
            let deltas: Vec<(Stream, f64)> = model
                .deltas
                .iter()
                .filter(|(_, c)| c[*row] != 0.0)
                .map(|(seed, c)| (Stream::new(*seed, *key_hash), c[*row] * std))
                .collect();
            let b = model.base_coef[*row];
            let values: Vec<f64> = (start..end)
                .map(|j| {
                    let j = j as u64;
                    let mut x = b * (mean + std * base.normal(j));
                    for (s, c) in &deltas {
                        x += c * s.normal(j);
                    }
                    x * inverse
                })
                .collect();
            encode(format, &values)
        }
    }
}

fn encode(format: FloatFormat, values: &[f64]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * format.size()];
    kernels::from_f64(format, values, &mut out);
    out
}

/// The DDPM buffers of Stable Diffusion's scaled-linear schedule, for `t` steps.
fn schedule(name: &str, t: usize) -> Vec<f64> {
    let t = t.max(2);
    let (lo, hi) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let betas: Vec<f64> = (0..t)
        .map(|i| (lo + (hi - lo) * i as f64 / (t - 1) as f64).powi(2))
        .collect();
    let mut acp = Vec::with_capacity(t);
    let mut prod = 1.0;
    for b in &betas {
        prod *= 1.0 - b;
        acp.push(prod);
    }
    let prev: Vec<f64> = std::iter::once(1.0)
        .chain(acp[..t - 1].iter().copied())
        .collect();
    let pv: Vec<f64> = (0..t)
        .map(|i| betas[i] * (1.0 - prev[i]) / (1.0 - acp[i]))
        .collect();
    (0..t)
        .map(|i| match name {
            "betas" => betas[i],
            "alphas_cumprod" => acp[i],
            "alphas_cumprod_prev" => prev[i],
            "sqrt_alphas_cumprod" => acp[i].sqrt(),
            "sqrt_one_minus_alphas_cumprod" => (1.0 - acp[i]).sqrt(),
            "log_one_minus_alphas_cumprod" => (1.0 - acp[i]).ln(),
            "sqrt_recip_alphas_cumprod" => 1.0 / acp[i].sqrt(),
            "sqrt_recipm1_alphas_cumprod" => (1.0 / acp[i] - 1.0).sqrt(),
            "posterior_variance" => pv[i],
            "posterior_log_variance_clipped" => pv[if i == 0 { 1 } else { i }].max(1e-20).ln(),
            "posterior_mean_coef1" => betas[i] * prev[i].sqrt() / (1.0 - acp[i]),
            "posterior_mean_coef2" => (1.0 - prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - acp[i]),
            _ => 0.0, // logvar
        })
        .collect()
}

/// Why a synthetic file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error("'{}': {source}", path.display())]
    Folder {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch(id: &str) -> Arch {
        Arch::parse(id).unwrap()
    }
    use ckpt_read::Checkpoint;

    #[test]
    fn scaled_sd1_has_every_catalog_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let layout = Layout::new(arch("sd1"), 32, FloatFormat::F16);
        write(
            &path,
            &layout,
            &Synthetic::base(arch("sd1"), 1),
            &[],
            &ckpt_core::pass::NoProgress,
            &Default::default(),
        )
        .unwrap();
        let c = Checkpoint::open(&path).unwrap();
        assert_eq!(c.tensors().len(), 1131);
        let pos = c
            .get("cond_stage_model.transformer.text_model.embeddings.position_ids")
            .unwrap();
        assert_eq!(pos.dtype, Dtype::I64);
        let ids: Vec<i64> = c
            .data(pos)
            .chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(ids, (0..77).collect::<Vec<i64>>());
        assert_eq!(
            c.get("model.diffusion_model.input_blocks.0.0.weight")
                .unwrap()
                .shape,
            vec![10, 4, 3, 3]
        );
    }

    #[test]
    fn lincomb_combines_rows() {
        let base = Synthetic::base(arch("sd1"), 1);
        let a = base.plus_delta(10, uniform(arch("sd1"), 0.1));
        let b = base.plus_delta(11, uniform(arch("sd1"), 0.2));
        let n = rows(arch("sd1"));
        let m = Synthetic::lincomb(&[(vec![0.25; n], &a), (vec![0.75; n], &b)]);
        assert_eq!(m.base_coef, vec![1.0; n]);
        assert_eq!(
            m.deltas,
            vec![(10, vec![0.025; n]), (11, vec![0.15000000000000002; n])]
        );
    }
}
