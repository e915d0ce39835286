//! Per-block cosine similarity of two checkpoints, from their inner products.
//!
//! For each report row (U-Net block, text encoder, VAE) the similarity is the cosine of
//! the two models with all of the row's tensors laid end to end:
//! cos = Σ⟨aₖ, bₖ⟩ / √(Σ‖aₖ‖² · Σ‖bₖ‖²), summed over the row's tensors k. Totals follow the
//! two conventions people quote: the plain mean of the block percentages (published tables:
//! "total output blocks similarity 95.4978%") and the cosine of all parameters flattened.

use serde::Serialize;

use ckpt_core::catalog::{Block, Component, Grouping};
use ckpt_core::gram::{GramSpec, InnerProducts};
use ckpt_core::pass::{EntryKind, Pass, PassError, Plan};
use ckpt_read::Checkpoint;

/// Compares `models` row by row in one pass over the keys `keys` matches (all without it)
/// whose rows `chosen` keeps: the cosines of [`report`].
pub fn measure(
    models: &[&Checkpoint],
    grouping: &Grouping,
    keys: Option<&regex::Regex>,
    chosen: &[bool],
    per_tensor: bool,
    pass: &Pass<'_>,
) -> Result<SimReport, PassError> {
    let plan = Plan::new(models.to_vec());
    let entries = plan.select(keys, |key| chosen[grouping.group_of(key)]);
    let spec = GramSpec {
        per_tensor,
        ..GramSpec::default()
    };
    let inner = ckpt_core::gram::gather(&plan, grouping, &entries, spec, pass)?;
    Ok(report(&plan, grouping, &entries, &inner, chosen))
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct SimRow {
    pub label: String,
    pub component: Component,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<Block>,
    /// Cosine similarity, between -1 and 1.
    pub similarity: f64,
    pub params: u64,
    pub tensors: usize,
}

/// A total and what it is over.
#[derive(Clone, Debug, Serialize)]
pub struct Total {
    pub similarity: f64,
    /// Rows (for the mean) or parameters (for the flattened cosine) it is over.
    pub over: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Plain mean of the U-Net block similarities shown (the published convention).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_mean: Option<Total>,
    /// Cosine of the U-Net blocks shown, all parameters flattened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flat_unet: Option<Total>,
    /// Cosine of every row shown, flattened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flat_all: Option<Total>,
}

/// One tensor, with `--per-tensor`.
#[derive(Clone, Debug, Serialize)]
pub struct TensorRow {
    pub key: String,
    pub row: String,
    pub similarity: f64,
    pub params: u64,
}

/// A key left out of the sums.
#[derive(Clone, Debug, Serialize)]
pub struct ShapeNote {
    pub key: String,
    pub shape_a: Vec<usize>,
    pub shape_b: Vec<usize>,
}

/// What was not compared, and integer tensors compared exactly.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Notes {
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub shape_mismatch: Vec<ShapeNote>,
    /// Integer tensors (e.g. `position_ids`): equal in both files.
    pub integer_equal: Vec<String>,
    /// Integer tensors whose values or dtype differ.
    pub integer_different: Vec<String>,
    /// Tensors of types that are not compared (sub-byte floats, complex, float vs int).
    pub not_compared: Vec<String>,
}

impl Notes {
    pub fn is_empty(&self) -> bool {
        self.only_in_a.is_empty()
            && self.only_in_b.is_empty()
            && self.shape_mismatch.is_empty()
            && self.integer_different.is_empty()
            && self.not_compared.is_empty()
    }
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub rows: Vec<SimRow>,
    pub totals: Totals,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tensors: Vec<TensorRow>,
    pub notes: Notes,
}

/// Builds the report from the inner products of models 0 (A) and 1 (B).
///
/// `entries` are the plan entries the user asked about (after the key and row selection);
/// the notes cover those. `chosen` says which rows to show, indexed like the grouping.
pub fn report(
    plan: &Plan<'_>,
    grouping: &Grouping,
    entries: &[usize],
    inner: &InnerProducts,
    chosen: &[bool],
) -> SimReport {
    let raw = |g: &ckpt_core::gram::Gram| match inner.center {
        Some(c) => g.uncentered(c),
        None => g.clone(),
    };
    let mut rows = Vec::new();
    let mut shown = Vec::new();
    for (r, group) in grouping.groups().iter().enumerate() {
        let sums = &inner.rows[r];
        if sums.tensors == 0 || !chosen[r] {
            continue;
        }
        shown.push(r);
        rows.push(SimRow {
            label: group.label.clone(),
            component: group.component,
            block: group.block,
            similarity: raw(&sums.gram).cosine(0, 1),
            params: sums.params,
            tensors: sums.tensors,
        });
    }

    let unet_rows: Vec<usize> = shown
        .iter()
        .copied()
        .filter(|&r| grouping.groups()[r].block.is_some())
        .collect();
    let mut totals = Totals::default();
    if !unet_rows.is_empty() {
        let block_sims: Vec<f64> = rows
            .iter()
            .filter(|row| row.block.is_some())
            .map(|row| row.similarity)
            .collect();
        totals.block_mean = Some(Total {
            similarity: block_sims.iter().sum::<f64>() / block_sims.len() as f64,
            over: block_sims.len() as u64,
        });
        let sum = inner.sum_rows(unet_rows.iter().copied());
        totals.flat_unet = Some(Total {
            similarity: raw(&sum.gram).cosine(0, 1),
            over: sum.params,
        });
    }
    if shown.len() > unet_rows.len() && !shown.is_empty() {
        let sum = inner.sum_rows(shown.iter().copied());
        totals.flat_all = Some(Total {
            similarity: raw(&sum.gram).cosine(0, 1),
            over: sum.params,
        });
    }

    let tensors = inner
        .tensors
        .iter()
        .filter(|t| shown.contains(&t.row))
        .map(|t| TensorRow {
            key: plan.entries()[t.entry].key.clone(),
            row: grouping.groups()[t.row].label.clone(),
            similarity: raw(&t.gram).cosine(0, 1),
            params: t.params,
        })
        .collect();

    let mut notes = Notes::default();
    for &e in entries {
        let entry = &plan.entries()[e];
        match plan.kind(entry) {
            EntryKind::Float | EntryKind::Integer => {}
            EntryKind::Missing => {
                if entry.sources[0].is_some() {
                    notes.only_in_a.push(entry.key.clone());
                } else {
                    notes.only_in_b.push(entry.key.clone());
                }
            }
            EntryKind::ShapeMismatch => notes.shape_mismatch.push(ShapeNote {
                key: entry.key.clone(),
                shape_a: plan
                    .tensor(entry, 0)
                    .map(|t| t.shape.clone())
                    .unwrap_or_default(),
                shape_b: plan
                    .tensor(entry, 1)
                    .map(|t| t.shape.clone())
                    .unwrap_or_default(),
            }),
            EntryKind::Opaque | EntryKind::MixedKinds => notes.not_compared.push(entry.key.clone()),
        }
    }
    for &(e, equal) in &inner.integer_entries {
        let key = plan.entries()[e].key.clone();
        if equal {
            notes.integer_equal.push(key);
        } else {
            notes.integer_different.push(key);
        }
    }
    SimReport {
        rows,
        totals,
        tensors,
        notes,
    }
}
