//! What a LoRA file holds (its network type, the base architecture, every module with the
//! checkpoint key it patches, its block, rank and alpha, and the training metadata kohya
//! writes), and how LoRAs compare with each other and with a checkpoint's change from a
//! base. The modules are read by [`crate::lora`]; those whose name maps to no key are listed,
//! never dropped.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::lora::{Delta, Module, Network};
use ckpt_core::catalog::{Arch, Grouping};
use ckpt_core::pass::Slice;
use ckpt_read::Checkpoint;

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
    /// How many modules take α from diffusers' `lora_adapter_metadata`.
    pub alphas_from_metadata: usize,
    /// Training metadata kohya writes (`ss_*`), summarised.
    pub training: Vec<(String, String)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoraModule {
    pub stem: String,
    pub kind: &'static str,
    pub rank: Option<usize>,
    pub alpha: Option<f64>,
    /// Where α comes from: `tensor` (its `.alpha`), `metadata` (diffusers'
    /// `lora_adapter_metadata`) or `rank` (neither: α = r).
    pub alpha_from: crate::lora::AlphaFrom,
    /// Its change is α/r (α/√r when rank-stabilised) times its factors' product.
    pub scale: Option<f64>,
    /// The checkpoint key it patches.
    pub target: Option<String>,
    /// The rows of that key, for a projection fused in it (q, k, v of `in_proj_weight`).
    pub rows: Option<ckpt_core::catalog::lora::Rows>,
    /// The report row (block or component) of that key.
    pub block: Option<String>,
    /// Why its weight change is not computed (Tucker convolutions, DoRA).
    pub not_computed: Option<&'static str>,
}

/// The file as a LoRA, if most of its tensors are LoRA module tensors.
pub fn read(ckpt: &Checkpoint) -> Option<LoraReport> {
    let net = Network::read(ckpt)?;
    Some(report(ckpt, &net))
}

/// The report of a network read from `ckpt`.
pub fn report(ckpt: &Checkpoint, net: &Network) -> LoraReport {
    let arch = net.arch;
    let grouping = arch.map(Grouping::for_arch);
    let modules: Vec<LoraModule> = net
        .modules
        .iter()
        .map(|m| LoraModule {
            stem: m.stem.clone(),
            kind: m.kind.label(),
            rank: m.rank,
            alpha: m.alpha,
            alpha_from: m.alpha_from,
            scale: m.rank.map(|_| m.scale()),
            target: m.target.as_ref().map(|t| t.key.clone()),
            rows: m.target.as_ref().and_then(|t| t.rows),
            block: m.block.clone(),
            not_computed: m.not_computed,
        })
        .collect();
    let unknown = net.unknown().map(|m| m.stem.clone()).collect();
    let mut blocks: Vec<(String, usize, usize)> = Vec::new();
    if grouping.is_some() {
        for m in &net.modules {
            if let (Some(b), Some(order)) = (&m.block, m.row) {
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
    LoraReport {
        file: ckpt.display_name(),
        bytes: ckpt.file_len(),
        network: net.network(),
        arch,
        modules,
        unknown,
        blocks: blocks.into_iter().map(|(b, _, n)| (b, n)).collect(),
        ranks: ranks.into_iter().collect(),
        alphas,
        alphas_from_metadata: net
            .modules
            .iter()
            .filter(|m| m.alpha_from == crate::lora::AlphaFrom::Metadata)
            .count(),
        training: training(ckpt),
    }
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

/// ⟨ΔW_x, ΔW_y⟩ of two modules' changes to the same target. Two low-rank forms use
/// s₁s₂ Σᵢⱼ (B₁ᵀB₂)ᵢⱼ (A₁A₂ᵀ)ᵢⱼ, r₁×r₂ products instead of out×in; any other pair (LoHa,
/// LoKr) materialises the module's ΔW, which is as large as its target.
fn module_inner(x: &Delta, y: &Delta) -> Option<f64> {
    if x.rows != y.rows || x.cols != y.cols {
        return None;
    }
    if let (Some((bx, ax)), Some((by, ay))) = (x.low_rank(), y.low_rank()) {
        let mut sum = 0.0;
        for i in 0..bx.cols {
            for j in 0..by.cols {
                let bb: f64 = (0..bx.rows)
                    .map(|o| bx.data[o * bx.cols + i] * by.data[o * by.cols + j])
                    .sum();
                sum += bb * ckpt_core::kernels::dot(ax.row(i), ay.row(j));
            }
        }
        return Some(x.scale * y.scale * sum);
    }
    Some(ckpt_core::kernels::dot(&x.full(), &y.full()))
}

pub fn similarity(a: &Checkpoint, ra: &Network, b: &Checkpoint, rb: &Network) -> LoraSim {
    let mut rows: BTreeMap<(usize, String), SimRow> = BTreeMap::new();
    let mut skipped = Vec::new();
    let by_target =
        |r: &Network| -> BTreeMap<(String, Option<ckpt_core::catalog::lora::Rows>), Module> {
            r.modules
                .iter()
                .filter_map(|m| m.target.clone().map(|t| ((t.key, t.rows), m.clone())))
                .collect()
        };
    let (ma, mb) = (by_target(ra), by_target(rb));
    let mut targets: Vec<&(String, Option<ckpt_core::catalog::lora::Rows>)> =
        ma.keys().chain(mb.keys()).collect();
    targets.sort();
    targets.dedup();
    for target in targets {
        let (x, y) = (ma.get(target), mb.get(target));
        let m = x.or(y).expect("in one of them");
        let block = m.block.clone().unwrap_or_default();
        let row = rows
            .entry((m.row.unwrap_or(usize::MAX), block.clone()))
            .or_insert_with(|| SimRow {
                block: block.clone(),
                ..Default::default()
            });
        let mut delta = |ckpt: &Checkpoint, m: Option<&Module>| -> Option<Delta> {
            let m = m?;
            Delta::of(ckpt, m)
                .map_err(|e| skipped.push(e.to_string()))
                .ok()
        };
        let fx = delta(a, x);
        let fy = delta(b, y);
        if let Some(f) = &fx {
            row.norm2_a += module_inner(f, f).unwrap_or(0.0);
        }
        if let Some(f) = &fy {
            row.norm2_b += module_inner(f, f).unwrap_or(0.0);
        }
        if let (Some(f), Some(g)) = (&fx, &fy) {
            match module_inner(f, g) {
                Some(v) => {
                    row.inner += v;
                    row.shared += 1;
                }
                None => skipped.push(format!("{} (factors of unlike shapes)", target.0)),
            }
        }
    }
    finish(a.display_name(), b.display_name(), rows, skipped)
}

/// A LoRA against a checkpoint's change from a base (`tuned − base`), per block: for each
/// module, ⟨s·B·A, D⟩ = s·Σₒ Σₖ B[o,k]·⟨A[k,:], D[o,:]⟩ over D's rows as they are read, so
/// neither ΔW nor D is held whole. Only the keys the LoRA patches are compared: the
/// checkpoint's change elsewhere is not in the norm.
pub fn against_delta(
    lora: &Checkpoint,
    net: &Network,
    tuned: &Checkpoint,
    base: &Checkpoint,
) -> LoraSim {
    let mut rows: BTreeMap<(usize, String), SimRow> = BTreeMap::new();
    let mut skipped = Vec::new();
    for m in &net.modules {
        let Some(t) = &m.target else { continue };
        let d = match Delta::of(lora, m) {
            Ok(d) => d,
            Err(e) => {
                skipped.push(e.to_string());
                continue;
            }
        };
        let (Some(tt), Some(tb)) = (tuned.get(&t.key), base.get(&t.key)) else {
            skipped.push(format!("{}: {} is not in both checkpoints", m.stem, t.key));
            continue;
        };
        if tt.shape != tb.shape {
            skipped.push(format!("{}: the checkpoints' shapes differ", t.key));
            continue;
        }
        if let Err(e) = crate::lora::check_shape(m, (d.rows, d.cols), &tt.shape) {
            skipped.push(e.to_string());
            continue;
        }
        if !tt.is_float() || !tb.is_float() {
            skipped.push(format!("{}: not a float tensor", t.key));
            continue;
        }
        let block = m.block.clone().unwrap_or_default();
        let row = rows
            .entry((m.row.unwrap_or(usize::MAX), block.clone()))
            .or_insert_with(|| SimRow {
                block,
                ..Default::default()
            });
        let cols = d.cols;
        let (lo, _) = t.row_range(&tt.shape);
        let (mut vt, mut vb) = (vec![0.0; cols], vec![0.0; cols]);
        let mut dw = vec![0.0; cols];
        let (st, sb) = (Slice::of(tuned, tt), Slice::of(base, tb));
        for o in 0..d.rows {
            let at = (lo + o) * cols;
            st.part(at, at + cols).values_into(&mut vt);
            sb.part(at, at + cols).values_into(&mut vb);
            vt.iter_mut().zip(&vb).for_each(|(x, y)| *x -= y);
            dw.fill(0.0);
            d.add_into(1.0, o * cols, (o + 1) * cols, &mut dw);
            row.inner += ckpt_core::kernels::dot(&dw, &vt);
            row.norm2_b += ckpt_core::kernels::dot(&vt, &vt);
        }
        row.norm2_a += module_inner(&d, &d).unwrap_or(0.0);
        row.shared += 1;
    }
    finish(
        lora.display_name(),
        format!("{} − {}", tuned.display_name(), base.display_name()),
        rows,
        skipped,
    )
}

fn finish(
    a: String,
    b: String,
    rows: BTreeMap<(usize, String), SimRow>,
    mut skipped: Vec<String>,
) -> LoraSim {
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
        a,
        b,
        rows: out,
        total,
        skipped,
    }
}

/// `l2` of LoRAs: each one's ‖ΔW‖ per block (its L2 distance from any model it is baked
/// into at strength 1) and, between every two, ‖ΔW_a − ΔW_b‖ = √(‖a‖² + ‖b‖² − 2⟨a, b⟩), all
/// from the factors.
#[derive(Clone, Debug, Serialize)]
pub struct LoraDistances {
    pub names: Vec<String>,
    /// (block, ‖ΔW‖ of each LoRA there), in model order.
    pub rows: Vec<(String, Vec<f64>)>,
    pub total: Vec<f64>,
    /// ‖ΔW_a − ΔW_b‖ over every block, a×b.
    pub pairwise: Vec<Vec<f64>>,
}

pub fn distances(loras: &[(&Checkpoint, &Network)]) -> LoraDistances {
    let n = loras.len();
    let names: Vec<String> = loras.iter().map(|(c, _)| c.display_name()).collect();
    let mut blocks: BTreeMap<(usize, String), Vec<f64>> = BTreeMap::new();
    let mut norm2 = vec![0.0; n];
    for (i, (c, net)) in loras.iter().enumerate() {
        // A LoRA against itself: the norms, per block.
        let s = similarity(c, net, c, net);
        for r in &s.rows {
            let order = net
                .modules
                .iter()
                .find(|m| m.block.as_deref() == Some(&r.block))
                .and_then(|m| m.row)
                .unwrap_or(usize::MAX);
            blocks
                .entry((order, r.block.clone()))
                .or_insert_with(|| vec![0.0; n])[i] = r.norm2_a.sqrt();
        }
        norm2[i] = s.total.norm2_a;
    }
    let mut pairwise = vec![vec![0.0; n]; n];
    for a in 0..n {
        for b in a + 1..n {
            let s = similarity(loras[a].0, loras[a].1, loras[b].0, loras[b].1);
            let d = (norm2[a] + norm2[b] - 2.0 * s.total.inner).max(0.0).sqrt();
            pairwise[a][b] = d;
            pairwise[b][a] = d;
        }
    }
    LoraDistances {
        names,
        rows: blocks.into_iter().map(|((_, b), v)| (b, v)).collect(),
        total: norm2.iter().map(|x| x.sqrt()).collect(),
        pairwise,
    }
}
