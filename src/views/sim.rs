//! Per-block cosine similarity of two checkpoints, from their inner products.
//!
//! For each report row (U-Net block, text encoder, VAE) the similarity is the cosine of
//! the two models with all of the row's tensors laid end to end:
//! cos = Σ⟨aₖ, bₖ⟩ / √(Σ‖aₖ‖² · Σ‖bₖ‖²), summed over the row's tensors k. Totals follow the
//! two conventions people quote: the plain mean of the block percentages (published tables:
//! "total output blocks similarity 95.4978%") and the cosine of all parameters flattened.

use serde::Serialize;

use crate::catalog::{Block, Component, GroupInfo, Grouping};
use crate::gram::InnerProducts;
use crate::pass::{EntryKind, Plan};

/// Which rows to show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowFilter {
    pub input: bool,
    pub mid: bool,
    pub output: bool,
    pub text_encoders: bool,
    pub vae: bool,
    pub other: bool,
}

impl RowFilter {
    pub const ALL: RowFilter = RowFilter {
        input: true,
        mid: true,
        output: true,
        text_encoders: true,
        vae: true,
        other: true,
    };

    /// Parses a comma-separated list of `in`, `mid`, `out`, `unet`, `te`, `vae`, `other`,
    /// `all`.
    pub fn parse(s: &str) -> Result<RowFilter, String> {
        let mut f = RowFilter::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.to_ascii_lowercase().as_str() {
                "in" | "input" => f.input = true,
                "mid" | "middle" | "m00" => f.mid = true,
                "out" | "output" => f.output = true,
                "unet" => {
                    f.input = true;
                    f.mid = true;
                    f.output = true;
                }
                "te" | "text" | "clip" => f.text_encoders = true,
                "vae" => f.vae = true,
                "other" => f.other = true,
                "all" => f = RowFilter::ALL,
                other => {
                    return Err(format!(
                        "unknown block set '{other}'; use in, mid, out, unet, te, vae, other or all \
                         (comma-separated)"
                    ));
                }
            }
        }
        Ok(f)
    }

    /// Does this filter keep `group`? Generic layouts (rows by prefix) are always kept.
    pub fn keeps(&self, group: &GroupInfo, generic: bool) -> bool {
        if generic {
            return true;
        }
        match (group.component, group.block) {
            (Component::Unet, Some(Block::In(_))) => self.input,
            (Component::Unet, Some(Block::Mid)) => self.mid,
            (Component::Unet, Some(Block::Out(_))) => self.output,
            (Component::Te1 | Component::Te2, _) => self.text_encoders,
            (Component::Vae, _) => self.vae,
            _ => self.other,
        }
    }
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
/// `entries` are the plan entries the user asked about (after `--keys` and `--blocks`);
/// the notes cover those.
pub fn report(
    plan: &Plan<'_>,
    grouping: &Grouping,
    entries: &[usize],
    inner: &InnerProducts,
    filter: RowFilter,
) -> SimReport {
    let generic = grouping.layout() == crate::catalog::Layout::Generic;
    let raw = |g: &crate::gram::Gram| match inner.center {
        Some(c) => g.uncentered(c),
        None => g.clone(),
    };
    let mut rows = Vec::new();
    let mut shown = Vec::new();
    for (r, group) in grouping.groups().iter().enumerate() {
        let sums = &inner.rows[r];
        if sums.tensors == 0 || !filter.keeps(group, generic) {
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
