//! What a LoRA file holds: its network type, the base architecture, every module with the
//! checkpoint key it patches, its block, rank and alpha, and the training metadata kohya
//! writes (`ss_*`). Modules whose name maps to no key are listed, never dropped.
//!
//! A module is the tensors sharing a stem before their role suffix: `.lora_down.weight`,
//! `.lora_up.weight`, `.alpha` (LoRA; LoCon when the down weight is a k×k convolution),
//! `.hada_w1_a` ... (LoHa), `.lokr_w1` ... (LoKr). The rank is the down weight's first
//! dimension (LoHa: `hada_w1_b`'s; LoKr: none when its factors are full), and alpha defaults
//! to the rank when the file has none (kohya's rule: scale alpha/rank = 1).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{Arch, Grouping, lora};
use crate::reader::Checkpoint;
use crate::reader::dtype;

#[derive(Clone, Debug, Serialize)]
pub struct LoraReport {
    pub file: String,
    pub bytes: u64,
    /// `LoRA`, `LoCon`, `LoHa`, `LoKr`, or a mix (`LoRA+LoHa`).
    pub network: String,
    /// The architecture whose keys the most modules patch.
    pub arch: Option<Arch>,
    pub modules: Vec<LoraModule>,
    /// Module stems that patch no key of that architecture.
    pub unknown: Vec<String>,
    /// Blocks and components touched, in model order, with their module counts.
    pub blocks: Vec<(String, usize)>,
    /// The ranks present and how many modules have each.
    pub ranks: Vec<(usize, usize)>,
    /// The alphas present and how many modules have each.
    pub alphas: Vec<(f64, usize)>,
    /// Training metadata kohya writes (`ss_*`), summarised.
    pub training: Vec<(String, String)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoraModule {
    pub stem: String,
    pub kind: &'static str,
    pub rank: Option<usize>,
    pub alpha: Option<f64>,
    /// The checkpoint key it patches.
    pub target: Option<String>,
    /// The report row (block or component) of that key.
    pub block: Option<String>,
}

/// Suffixes of each network's tensors, and the network they mark.
const ROLES: &[(&str, &str)] = &[
    (".lora_down.weight", "LoRA"),
    (".lora_up.weight", "LoRA"),
    (".lora_mid.weight", "LoRA"),
    (".alpha", ""),
    (".hada_w1_a", "LoHa"),
    (".hada_w1_b", "LoHa"),
    (".hada_w2_a", "LoHa"),
    (".hada_w2_b", "LoHa"),
    (".hada_t1", "LoHa"),
    (".hada_t2", "LoHa"),
    (".lokr_w1", "LoKr"),
    (".lokr_w1_a", "LoKr"),
    (".lokr_w1_b", "LoKr"),
    (".lokr_w2", "LoKr"),
    (".lokr_w2_a", "LoKr"),
    (".lokr_w2_b", "LoKr"),
    (".lokr_t2", "LoKr"),
];

/// The file as a LoRA, if most of its tensors are LoRA module tensors.
pub fn read(ckpt: &Checkpoint) -> Option<LoraReport> {
    let mut stems: BTreeMap<String, Vec<(&str, &crate::reader::header::TensorEntry)>> =
        BTreeMap::new();
    let mut other = 0usize;
    for t in ckpt.tensors() {
        match ROLES.iter().find(|(suffix, _)| t.name.ends_with(suffix)) {
            Some((suffix, _)) => stems
                .entry(t.name[..t.name.len() - suffix.len()].to_string())
                .or_default()
                .push((suffix, t)),
            None => other += 1,
        }
    }
    if stems.is_empty() || other > stems.len() {
        return None;
    }
    // The architecture whose table names the most stems.
    let arch = [Arch::Sd1, Arch::Sdxl, Arch::Sd2]
        .into_iter()
        .map(|a| {
            (
                stems
                    .keys()
                    .filter(|s| lora::target(a, s).is_some())
                    .count(),
                a,
            )
        })
        .filter(|(n, _)| *n > 0)
        .max_by_key(|(n, _)| *n)
        .map(|(_, a)| a);
    let grouping = arch.map(Grouping::for_arch);
    let mut modules = Vec::new();
    let mut unknown = Vec::new();
    let mut kinds: Vec<&str> = Vec::new();
    for (stem, parts) in &stems {
        let part = |s: &str| parts.iter().find(|(x, _)| *x == s).map(|(_, t)| *t);
        let kind = if let Some(down) = part(".lora_down.weight") {
            if down.shape.len() == 4 && down.shape[2] * down.shape[3] > 1 {
                "LoCon"
            } else {
                "LoRA"
            }
        } else if part(".hada_w1_a").is_some() {
            "LoHa"
        } else if parts.iter().any(|(s, _)| s.starts_with(".lokr")) {
            "LoKr"
        } else {
            "alpha only"
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
        let rank = match kind {
            "LoRA" | "LoCon" => part(".lora_down.weight").and_then(|t| t.shape.first().copied()),
            "LoHa" => part(".hada_w1_b").and_then(|t| t.shape.first().copied()),
            "LoKr" => part(".lokr_w2_b")
                .or(part(".lokr_w1_b"))
                .and_then(|t| t.shape.first().copied()),
            _ => None,
        };
        let alpha = part(".alpha")
            .and_then(|t| scalar(ckpt, t))
            .or(rank.map(|r| r as f64));
        let target = arch.and_then(|a| lora::target(a, stem)).map(str::to_string);
        let block = match (&target, &grouping) {
            (Some(key), Some(g)) => Some(g.groups()[g.group_of(key)].label.clone()),
            _ => None,
        };
        if target.is_none() {
            unknown.push(stem.clone());
        }
        modules.push(LoraModule {
            stem: stem.clone(),
            kind,
            rank,
            alpha,
            target,
            block,
        });
    }
    let mut blocks: Vec<(String, usize, usize)> = Vec::new();
    if let Some(g) = &grouping {
        for m in &modules {
            if let Some(b) = &m.block {
                let order = g
                    .groups()
                    .iter()
                    .position(|x| &x.label == b)
                    .unwrap_or(usize::MAX);
                match blocks.iter_mut().find(|(x, _, _)| x == b) {
                    Some((_, _, n)) => *n += 1,
                    None => blocks.push((b.clone(), order, 1)),
                }
            }
        }
    }
    blocks.sort_by_key(|(_, order, _)| *order);
    let mut ranks: BTreeMap<usize, usize> = BTreeMap::new();
    for r in modules.iter().filter_map(|m| m.rank) {
        *ranks.entry(r).or_default() += 1;
    }
    let mut alphas: Vec<(f64, usize)> = Vec::new();
    for a in modules.iter().filter_map(|m| m.alpha) {
        match alphas.iter_mut().find(|(x, _)| *x == a) {
            Some((_, n)) => *n += 1,
            None => alphas.push((a, 1)),
        }
    }
    alphas.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(LoraReport {
        file: ckpt.display_name(),
        bytes: ckpt.file_len(),
        network: kinds.join("+"),
        arch,
        modules,
        unknown,
        blocks: blocks.into_iter().map(|(b, _, n)| (b, n)).collect(),
        ranks: ranks.into_iter().collect(),
        alphas,
        training: training(ckpt),
    })
}

/// A one-element float tensor's value.
fn scalar(ckpt: &Checkpoint, t: &crate::reader::header::TensorEntry) -> Option<f64> {
    let format = dtype::float_format(t.dtype)?;
    let bytes = ckpt.data(t);
    if bytes.len() != format.size() {
        return None;
    }
    let mut v = [0.0f64];
    crate::kernels::to_f64(format, bytes, &mut v);
    Some(v[0])
}

/// kohya's `ss_*` metadata: the values people look for, the tag frequencies summarised.
fn training(ckpt: &Checkpoint) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for key in [
        "ss_network_module",
        "ss_network_dim",
        "ss_network_alpha",
        "ss_base_model_version",
        "ss_sd_model_name",
        "ss_sd_model_hash",
        "ss_new_sd_model_hash",
        "ss_resolution",
        "ss_num_epochs",
        "ss_epoch",
        "ss_steps",
        "ss_learning_rate",
        "ss_output_name",
        "ss_training_started_at",
    ] {
        if let Some(v) = ckpt.metadata_value(key) {
            out.push((key.to_string(), v.to_string()));
        }
    }
    if let Some(freq) = ckpt.metadata_value("ss_tag_frequency")
        && let Ok(serde_json::Value::Object(dirs)) = serde_json::from_str(freq)
    {
        let mut tags: BTreeMap<String, u64> = BTreeMap::new();
        for (_, counts) in dirs {
            if let serde_json::Value::Object(c) = counts {
                for (tag, n) in c {
                    *tags.entry(tag.trim().to_string()).or_default() += n.as_u64().unwrap_or(0);
                }
            }
        }
        let mut top: Vec<(String, u64)> = tags.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let shown: Vec<String> = top
            .iter()
            .take(10)
            .map(|(t, n)| format!("{t} ({n})"))
            .collect();
        out.push((
            "ss_tag_frequency".into(),
            format!("{} tags; most frequent: {}", top.len(), shown.join(", ")),
        ));
    }
    out
}

/// The cosine similarity of two LoRAs' weight changes, per block and in total, without
/// materialising any ΔW: for modules ΔW = s·B·A (B the up factor out×r, A the down factor
/// r×(in·k·k), s = alpha/rank), ⟨ΔW₁, ΔW₂⟩ = s₁s₂·Σ (B₁ᵀB₂) ⊙ (A₁A₂ᵀ), r₁×r₂ products
/// instead of out×in.
#[derive(Clone, Debug, Serialize)]
pub struct LoraSim {
    pub a: String,
    pub b: String,
    pub rows: Vec<SimRow>,
    pub total: SimRow,
    /// Modules not compared (a network other than LoRA/LoCon, or factors of unlike shapes).
    pub skipped: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SimRow {
    pub block: String,
    /// ⟨ΔW_a, ΔW_b⟩ summed over the block's modules.
    pub inner: f64,
    pub norm2_a: f64,
    pub norm2_b: f64,
    /// inner / √(norm2_a·norm2_b); 0 when either is 0.
    pub cosine: f64,
    /// Modules of the block in both files.
    pub shared: usize,
}

/// A LoRA/LoCon module's factors as f64: (B out×r, A r×cols, r, cols, s).
struct Factors {
    up: Vec<f64>,
    down: Vec<f64>,
    rank: usize,
    rows: usize,
    cols: usize,
    scale: f64,
}

fn factors(ckpt: &Checkpoint, m: &LoraModule) -> Option<Factors> {
    if !matches!(m.kind, "LoRA" | "LoCon") {
        return None;
    }
    let get = |suffix: &str| -> Option<(Vec<usize>, Vec<f64>)> {
        let t = ckpt.get(&format!("{}{suffix}", m.stem))?;
        let format = dtype::float_format(t.dtype)?;
        let mut v = vec![0.0f64; t.shape.iter().product()];
        crate::kernels::to_f64(format, ckpt.data(t), &mut v);
        Some((t.shape.clone(), v))
    };
    if ckpt.get(&format!("{}.lora_mid.weight", m.stem)).is_some() {
        return None; // Tucker-decomposed convolutions: not handled yet.
    }
    let (ds, down) = get(".lora_down.weight")?;
    let (us, up) = get(".lora_up.weight")?;
    let rank = *ds.first()?;
    let cols: usize = ds[1..].iter().product();
    let rows = *us.first()?;
    if us.get(1) != Some(&rank) || us[2..].iter().product::<usize>() != 1 || rank == 0 {
        return None;
    }
    Some(Factors {
        up,
        down,
        rank,
        rows,
        cols,
        scale: m.alpha.unwrap_or(rank as f64) / rank as f64,
    })
}

/// ⟨s₁B₁A₁, s₂B₂A₂⟩ = s₁s₂ Σᵢⱼ (B₁ᵀB₂)ᵢⱼ (A₁A₂ᵀ)ᵢⱼ.
fn factor_inner(x: &Factors, y: &Factors) -> Option<f64> {
    if x.rows != y.rows || x.cols != y.cols {
        return None;
    }
    let mut sum = 0.0;
    for i in 0..x.rank {
        for j in 0..y.rank {
            let bb: f64 = (0..x.rows)
                .map(|o| x.up[o * x.rank + i] * y.up[o * y.rank + j])
                .sum();
            let aa = crate::kernels::dot(
                &x.down[i * x.cols..(i + 1) * x.cols],
                &y.down[j * y.cols..(j + 1) * y.cols],
            );
            sum += bb * aa;
        }
    }
    Some(x.scale * y.scale * sum)
}

pub fn similarity(a: &Checkpoint, ra: &LoraReport, b: &Checkpoint, rb: &LoraReport) -> LoraSim {
    let arch = ra.arch.or(rb.arch);
    let grouping = arch.map(Grouping::for_arch);
    let order = |block: &str| {
        grouping
            .as_ref()
            .and_then(|g| g.groups().iter().position(|x| x.label == block))
            .unwrap_or(usize::MAX)
    };
    let mut rows: BTreeMap<(usize, String), SimRow> = BTreeMap::new();
    let mut skipped = Vec::new();
    let by_target = |r: &LoraReport| -> BTreeMap<String, LoraModule> {
        r.modules
            .iter()
            .filter_map(|m| m.target.clone().map(|t| (t, m.clone())))
            .collect()
    };
    let (ma, mb) = (by_target(ra), by_target(rb));
    let mut targets: Vec<&String> = ma.keys().chain(mb.keys()).collect();
    targets.sort();
    targets.dedup();
    for target in targets {
        let (x, y) = (ma.get(target), mb.get(target));
        let block = x.or(y).and_then(|m| m.block.clone()).unwrap_or_default();
        let row = rows
            .entry((order(&block), block.clone()))
            .or_insert_with(|| SimRow {
                block: block.clone(),
                ..Default::default()
            });
        let fx = x.map(|m| (m, factors(a, m)));
        let fy = y.map(|m| (m, factors(b, m)));
        for (m, f) in fx.iter().chain(fy.iter()) {
            if f.is_none() {
                skipped.push(m.stem.clone());
            }
        }
        let fx = fx.and_then(|(_, f)| f);
        let fy = fy.and_then(|(_, f)| f);
        if let Some(f) = &fx {
            row.norm2_a += factor_inner(f, f).unwrap_or(0.0);
        }
        if let Some(f) = &fy {
            row.norm2_b += factor_inner(f, f).unwrap_or(0.0);
        }
        if let (Some(f), Some(g)) = (&fx, &fy) {
            match factor_inner(f, g) {
                Some(v) => {
                    row.inner += v;
                    row.shared += 1;
                }
                None => skipped.push(format!("{target} (factors of unlike shapes)")),
            }
        }
    }
    let cos = |r: &mut SimRow| {
        let d = (r.norm2_a * r.norm2_b).sqrt();
        r.cosine = if d > 0.0 { r.inner / d } else { 0.0 };
    };
    let mut total = SimRow {
        block: "total".into(),
        ..Default::default()
    };
    let mut out: Vec<SimRow> = rows.into_values().collect();
    for r in &mut out {
        total.inner += r.inner;
        total.norm2_a += r.norm2_a;
        total.norm2_b += r.norm2_b;
        total.shared += r.shared;
        cos(r);
    }
    cos(&mut total);
    skipped.sort();
    skipped.dedup();
    LoraSim {
        a: ra.file.clone(),
        b: rb.file.clone(),
        rows: out,
        total,
        skipped,
    }
}
