//! Content hashes per component, and the A1111 model toolkit's component "metric".
//!
//! **Component hashes.** For each component (U-Net, each text encoder, VAE) a BLAKE3 hash of
//! its tensors that does not depend on how the file spells or orders them: keys are
//! canonicalised (aliases resolved), the component's prefix is stripped (so the same CLIP-L
//! hashes equal inside an SD1 and an SDXL checkpoint), tensors are taken in name order, and
//! each contributes `name \0 dtype \0 shape \0 BLAKE3(data)`. `position_ids` is left out (a
//! buffer, often missing or repaired). Two forms: **exact** (stored bytes and dtype) and
//! **fp16** (every float rounded to fp16 first, dtype `F16`), so an fp32 file and its fp16
//! copy share the fp16 form.
//!
//! **Toolkit metric.** Σ(sigmoid(x) − 0.5) over a component's values rounded to fp16, as a
//! 4-digit number `n = ⌊|sum/baseline − 1| · scale⌋` (minus 5000 while ≥ 10000), printed
//! `UUUU/VVVV/CCCC`; `0000` is the original SD1 component, `----` an absent (or, for SDXL,
//! uncovered) one. Which tensors count and the baselines follow the toolkit exactly (data in
//! `catalog/data/toolkit-metric-*.tsv`). Sums are f64 where the toolkit sums in f32; results
//! agree except within a rounding step of a digit boundary.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Serialize;

use ckpt_core::catalog::{Arch, Component, Detection, ToolkitParts, canonical_key, component_of};
use ckpt_core::pass::{Absorb, Item, Pass, PassError, Plan, Slice, Visit};
use ckpt_read::Checkpoint;
use ckpt_read::dtype::{self, FloatFormat};

/// One component's hashes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComponentHash {
    pub component: Component,
    pub tensors: usize,
    pub params: u64,
    /// BLAKE3 over the stored bytes (64 hex).
    pub exact: String,
    /// BLAKE3 after rounding every float to fp16 (64 hex).
    pub fp16: String,
}

/// The toolkit's metric for one file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolkitMetric {
    /// `UUUU/VVVV/CCCC`.
    pub display: String,
    pub unet: Option<u32>,
    pub vae: Option<u32>,
    pub clip: Option<u32>,
    /// "the NAI VAE", "the SD-v1 CLIP", ...
    pub matches: Vec<String>,
}

/// Both results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Components {
    pub components: Vec<ComponentHash>,
    pub metric: ToolkitMetric,
}

/// The prefix a component's keys lose before hashing.
fn component_prefix(key: &str) -> &'static str {
    const PREFIXES: [&str; 6] = [
        "model.diffusion_model.",
        "cond_stage_model.transformer.",
        "cond_stage_model.model.",
        "conditioner.embedders.0.transformer.",
        "conditioner.embedders.1.model.",
        "first_stage_model.",
    ];
    PREFIXES
        .iter()
        .find(|p| key.starts_with(*p))
        .copied()
        .unwrap_or("")
}

/// Which toolkit metric a key counts toward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetricPart {
    Unet,
    Vae,
    Clip,
}

/// The toolkit's parts: the U-Net (the denoiser), the VAE (its encoder and decoder; the
/// baseline is SD's 4-channel VAE, so Flux's and SD3's 16-channel ones have none) and the
/// text encoder (its MLPs, OpenCLIP's last layer aside), where the architecture's spec
/// says the toolkit has them. A file of no known architecture gets the VAE part.
fn metric_part(arch: Option<Arch>, key: &str) -> Option<MetricPart> {
    let c = component_of(key);
    let parts = match arch {
        Some(a) => a.toolkit_metric()?,
        None => ToolkitParts {
            unet: false,
            vae: true,
            clip: None,
        },
    };
    let first_te = arch.and_then(|a| a.components().iter().copied().find(|c| c.is_text_encoder()));
    if parts.unet && c.is_denoiser() {
        Some(MetricPart::Unet)
    } else if parts.vae && c.is_vae() && (key.contains("encoder.") || key.contains("decoder.")) {
        Some(MetricPart::Vae)
    } else if parts.clip.is_some()
        && Some(c) == first_te
        && key.contains("mlp.")
        && !key.contains(".23.")
    {
        Some(MetricPart::Clip)
    } else {
        None
    }
}

/// sigmoid(x) − 0.5 for every f16 bit pattern (NaN counts 0).
fn sigmoid_table() -> &'static [f64] {
    static TABLE: OnceLock<Vec<f64>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| {
                let x = half::f16::from_bits(b).to_f64();
                if x.is_nan() {
                    0.0
                } else {
                    1.0 / (1.0 + (-x).exp()) - 0.5
                }
            })
            .collect()
    })
}

/// The BLAKE3 of a tensor's fp16 form (`None` when that is its stored form, whose hash the
/// caller has) and its toolkit-metric sum (when `metric`), streamed in chunks: a whole Flux
/// matrix (66 M values) never becomes one buffer.
fn fp16_form(s: &Slice<'_>, metric: bool) -> (Option<[u8; 32]>, f64) {
    const CHUNK: usize = 1 << 16;
    // Stored as fp16 already (values rounded to nearest even otherwise; scaled ones scaled
    // first).
    let direct = s.dtype == ckpt_read::Dtype::F16 && s.encoding.is_plain();
    if direct && !metric {
        return (None, 0.0);
    }
    let table = sigmoid_table();
    let mut hasher = blake3::Hasher::new();
    let mut sum = 0.0f64;
    let mut values = vec![0.0f64; CHUNK];
    let mut converted = vec![0u8; CHUNK * 2];
    let n = s.len();
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let part = s.part(start, end);
        let f16_bytes: &[u8] = if direct {
            part.bytes
        } else {
            let len = end - start;
            part.values_into(&mut values[..len]);
            ckpt_core::kernels::from_f64(
                FloatFormat::F16,
                &values[..len],
                &mut converted[..2 * len],
            );
            hasher.update(&converted[..2 * len]);
            &converted[..2 * len]
        };
        if metric {
            // One running sum in element order, as over the whole tensor at once.
            sum = f16_bytes.chunks_exact(2).fold(sum, |acc, c| {
                acc + table[u16::from_le_bytes([c[0], c[1]]) as usize]
            });
        }
    }
    ((!direct).then(|| *hasher.finalize().as_bytes()), sum)
}

struct Work {
    arch: Option<Arch>,
}

/// One tensor's part of the component hashes and the toolkit metric.
pub struct TensorHashes {
    exact: [u8; 32],
    fp16: [u8; 32],
    metric: f64,
}

/// Hashes one whole tensor (`key` as the plan spells it) for [`combine`].
pub fn hash_tensor(arch: Option<Arch>, key: &str, s: &Slice<'_>) -> TensorHashes {
    // A scaled tensor is its bytes and its scales: all go into its exact hash.
    let exact = match s.encoding {
        ckpt_read::Encoding::Plain => *blake3::hash(s.bytes).as_bytes(),
        ckpt_read::Encoding::Scaled(scale) => {
            let mut h = blake3::Hasher::new();
            h.update(s.bytes);
            h.update(&scale.to_le_bytes());
            *h.finalize().as_bytes()
        }
        // The blocks hold their scales; the type says how to read them.
        ckpt_read::Encoding::Ggml(ty) => {
            let mut h = blake3::Hasher::new();
            h.update(s.bytes);
            h.update(&ty.id().to_le_bytes());
            *h.finalize().as_bytes()
        }
        ckpt_read::Encoding::Block(b) => {
            let mut h = blake3::Hasher::new();
            h.update(s.bytes);
            h.update(&b.scale.to_le_bytes());
            for side in s.side.all() {
                h.update(side);
            }
            *h.finalize().as_bytes()
        }
    };
    let (fp16, metric) = if s.is_float() {
        let (fp16, metric) = fp16_form(s, metric_part(arch, key).is_some());
        (fp16.unwrap_or(exact), metric)
    } else {
        (exact, 0.0)
    };
    TensorHashes {
        exact,
        fp16,
        metric,
    }
}

impl Visit for Work {
    type Partial = TensorHashes;

    fn visit(
        &self,
        plan: &Plan<'_>,
        item: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<TensorHashes, PassError> {
        let s = inputs[0].expect("one model");
        Ok(hash_tensor(self.arch, &plan.entries()[item.entry].key, &s))
    }
}

#[derive(Default)]
struct Collected(BTreeMap<usize, TensorHashes>);

impl Absorb<TensorHashes> for Collected {
    fn absorb(&mut self, _: &Plan<'_>, item: &Item, r: TensorHashes) -> Result<(), PassError> {
        self.0.insert(item.entry, r);
        Ok(())
    }
}

/// One item per whole tensor of model 0: each is hashed in one stream.
pub fn whole_items(plan: &Plan<'_>) -> Vec<Item> {
    (0..plan.entries().len())
        .map(|e| {
            let numel: usize = plan.shape(&plan.entries()[e]).iter().product();
            Item {
                entry: e,
                start: 0,
                end: numel,
                numel,
            }
        })
        .collect()
}

/// Component hashes and the toolkit metric of `ckpt`, in one pass over its tensors.
pub fn components(
    ckpt: &Checkpoint,
    det: &Detection,
    pass: &Pass<'_>,
) -> Result<Components, PassError> {
    let plan = Plan::new(vec![ckpt]);
    let items = whole_items(&plan);
    let mut got = Collected::default();
    pass.run_items(&plan, &items, &Work { arch: det.arch() }, &mut got)?;
    Ok(combine(&plan, det, &got.0))
}

/// The components of `plan`'s model 0 from every tensor's [`hash_tensor`], by entry.
pub fn combine(
    plan: &Plan<'_>,
    det: &Detection,
    got: &BTreeMap<usize, TensorHashes>,
) -> Components {
    // Combine per component in name order.
    let mut per: BTreeMap<Component, Vec<(String, usize)>> = BTreeMap::new();
    let mut metric = [0.0f64; 3];
    for (e, entry) in plan.entries().iter().enumerate() {
        let key = canonical_key(&entry.key).into_owned();
        if let Some(part) = metric_part(det.arch(), &key) {
            metric[part as usize] += got[&e].metric;
        }
        if key.ends_with("position_ids") {
            continue;
        }
        let stripped = key[component_prefix(&key).len()..].to_string();
        per.entry(component_of(&key))
            .or_default()
            .push((stripped, e));
    }
    let mut components = Vec::new();
    for (component, mut tensors) in per {
        tensors.sort();
        let mut exact = blake3::Hasher::new();
        let mut fp16 = blake3::Hasher::new();
        let mut params = 0u64;
        for (name, e) in &tensors {
            let t = plan.tensor(&plan.entries()[*e], 0).expect("its own tensor");
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            let r = &got[e];
            let fp16_dtype = if t.is_float() {
                "F16".to_string()
            } else {
                dtype::name(t.dtype)
            };
            for (h, dt, digest) in [
                (&mut exact, dtype::name(t.dtype), &r.exact),
                (&mut fp16, fp16_dtype, &r.fp16),
            ] {
                h.update(name.as_bytes());
                h.update(b"\0");
                h.update(dt.as_bytes());
                h.update(b"\0");
                h.update(shape.join(",").as_bytes());
                h.update(b"\0");
                h.update(digest);
            }
            params += t.numel() as u64;
        }
        components.push(ComponentHash {
            component,
            tensors: tensors.len(),
            params,
            exact: exact.finalize().to_hex().to_string(),
            fp16: fp16.finalize().to_hex().to_string(),
        });
    }
    Components {
        components,
        metric: toolkit_metric(det.arch(), metric),
    }
}

/// Baseline sum and scale of each metric part (toolkit-metric-constants.tsv).
fn constants(arch: Option<Arch>, part: MetricPart) -> (f64, f64) {
    let text = ckpt_core::catalog::data::TOOLKIT_METRIC_CONSTANTS;
    let want = match part {
        MetricPart::Unet => "UNET",
        MetricPart::Vae => "VAE",
        MetricPart::Clip => arch
            .and_then(|a| a.toolkit_metric()?.clip)
            .map_or("CLIP (v1)", |(constants, _)| constants),
    };
    text.lines()
        .skip(1)
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|c| c[0] == want)
        .map(|c| {
            (
                c[1].parse().expect("numeric baseline"),
                c[2].parse().expect("numeric scale"),
            )
        })
        .expect("every part has constants")
}

/// The toolkit's normalisation of a sum to 4 digits.
pub fn metric_digits(sum: f64, baseline: f64, scale: f64) -> Option<u32> {
    if sum == 0.0 {
        return None;
    }
    let mut n = ((sum / baseline - 1.0).abs() * scale).floor();
    while n >= 10000.0 {
        n -= 5000.0;
    }
    Some(n as u32)
}

fn toolkit_metric(arch: Option<Arch>, sums: [f64; 3]) -> ToolkitMetric {
    let parts = [MetricPart::Unet, MetricPart::Vae, MetricPart::Clip];
    let values: Vec<Option<u32>> = parts
        .iter()
        .map(|&p| {
            let (baseline, scale) = constants(arch, p);
            metric_digits(sums[p as usize], baseline, scale)
        })
        .collect();
    let show = |v: Option<u32>| {
        v.map(|n| format!("{n:04}"))
            .unwrap_or_else(|| "----".into())
    };
    let known = ckpt_core::catalog::data::TOOLKIT_METRIC_KNOWN;
    let mut matches = Vec::new();
    for line in known.lines().skip(1) {
        let c: Vec<&str> = line.split('\t').collect();
        let (table, name, value) = (c[0], c[1], c[2].parse::<i64>().expect("numeric"));
        let clip_table = arch
            .and_then(|a| a.toolkit_metric()?.clip)
            .map(|(_, known)| known);
        let ours = match table {
            "VAE" => values[1],
            t if Some(t) == clip_table => values[2],
            _ => None,
        };
        if let Some(v) = ours
            && (v as i64 - value).abs() <= 1
        {
            let what = if table == "VAE" { "VAE" } else { "CLIP" };
            matches.push(format!("the {name} {what}"));
        }
    }
    ToolkitMetric {
        display: format!(
            "{}/{}/{}",
            show(values[0]),
            show(values[1]),
            show(values[2])
        ),
        unet: values[0],
        vae: values[1],
        clip: values[2],
        matches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        // At the baseline: 0000. The toolkit's own table: 0.2982 away from the VAE baseline
        // (scale 10000) reads 2982.
        assert_eq!(metric_digits(17870.7051, 17870.7051, 10000.0), Some(0));
        assert_eq!(
            metric_digits(17870.7051 * (1.0 + 0.29825), 17870.7051, 10000.0),
            Some(2982)
        );
        // Past 9999, 5000 comes off until it fits.
        assert_eq!(
            metric_digits(2.0 * 17870.7051, 17870.7051, 10000.0),
            Some(5000)
        );
        assert_eq!(metric_digits(0.0, 17870.7051, 10000.0), None);
    }

    #[test]
    fn sigmoid_table_matches_the_function() {
        let t = sigmoid_table();
        let one = half::f16::from_f32(1.0).to_bits() as usize;
        assert!((t[one] - (1.0 / (1.0 + (-1.0f64).exp()) - 0.5)).abs() < 1e-15);
        assert_eq!(t[0], 0.0);
    }
}
