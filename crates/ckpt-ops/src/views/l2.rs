//! L2 distances of many models from a base, per block and component, their pairwise
//! distance matrices, the cosines of their deltas, and 2-D maps, from one pass.
//!
//! The pass is centred on the base (model 0): the base's norm and every model's delta
//! dᵢ = Mᵢ − base come from exact element-wise differences, and the pairwise squared
//! distances Σ(Mᵢ − Mⱼ)² are summed directly, so models that are nearly equal get exact
//! distances (no Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ cancellation). Per block or component:
//!
//! * distance from the base ‖Mᵢ − B‖, and relative to the base ‖Mᵢ − B‖ / ‖B‖;
//! * delta cosine cos(dᵢ, dⱼ): do two fine-tunes move the base the same way?
//! * the pairwise distance matrix (base included) per component and for the whole file,
//!   and its classical MDS map.

use serde::Serialize;

use crate::views::mds::{Mds, classical_mds};
use ckpt_core::catalog::{Block, Component, Grouping};
use ckpt_core::gram::{Gram, GramSpec, InnerProducts, RowSums};
use ckpt_core::pass::{Pass, PassError, Plan};
use ckpt_read::Checkpoint;

/// Places `models[1..]` relative to the base `models[0]` in one pass over the keys `keys`
/// matches (all without it): the distances and maps of [`report`], `names` naming the
/// models.
pub fn measure(
    models: &[&Checkpoint],
    names: Vec<String>,
    grouping: &Grouping,
    keys: Option<&regex::Regex>,
    pass: &Pass<'_>,
) -> Result<L2Report, PassError> {
    let plan = Plan::new(models.to_vec());
    let entries = plan.select(keys, |_| true);
    let spec = GramSpec {
        center: Some(0),
        per_tensor: false,
        distances: true,
    };
    let inner = ckpt_core::gram::gather(&plan, grouping, &entries, spec, pass)?;
    Ok(report(names, grouping, &inner))
}

/// A report row (U-Net block or component).
#[derive(Clone, Debug, Serialize)]
pub struct RowMeta {
    pub label: String,
    pub component: Component,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<Block>,
    pub params: u64,
}

/// A component, or the whole checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Scope {
    /// `unet`, `te1`, `te2`, `vae` or `all`.
    pub name: String,
    pub params: u64,
    /// ‖B‖ over the scope.
    pub base_norm: f64,
    /// ‖Mᵢ − B‖ for each model (the base is not listed).
    pub from_base: Vec<f64>,
    /// ‖Mᵢ − B‖ / ‖B‖.
    pub relative: Vec<f64>,
    /// Pairwise distances, base first (N x N, symmetric).
    pub distance: Vec<Vec<f64>>,
    /// cos(dᵢ, dⱼ) between the models' deltas (base excluded).
    pub delta_cosine: Vec<Vec<f64>>,
    /// The distance matrix as a 2-D map.
    pub mds: Mds,
}

/// Everything `l2` computes.
#[derive(Clone, Debug, Serialize)]
pub struct L2Report {
    /// Base first, then the models, as given.
    pub models: Vec<String>,
    pub rows: Vec<RowMeta>,
    /// Per row: ‖B_row‖.
    pub base_norm: Vec<f64>,
    /// [model][row]: ‖M_row − B_row‖ (models without the base).
    pub from_base: Vec<Vec<f64>>,
    /// [model][row]: ‖M_row − B_row‖ / ‖B_row‖.
    pub relative: Vec<Vec<f64>>,
    /// [row][i][j]: cos of the deltas of models i and j in that row.
    pub row_delta_cosine: Vec<Vec<Vec<f64>>>,
    /// Per component with parameters, then `all`.
    pub scopes: Vec<Scope>,
}

fn distances(sums: &RowSums, n: usize) -> Vec<Vec<f64>> {
    let d2 = sums.dist2.as_ref().expect("l2 gathers distances");
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    if i == j {
                        0.0
                    } else {
                        d2.get(i, j).max(0.0).sqrt()
                    }
                })
                .collect()
        })
        .collect()
}

/// cos(dᵢ, dⱼ) for the models 1..n of a Gram centred on model 0.
fn delta_cosines(g: &Gram, n: usize) -> Vec<Vec<f64>> {
    (1..n)
        .map(|i| (1..n).map(|j| g.cosine(i, j)).collect())
        .collect()
}

/// Builds the report from inner products gathered with centre 0 and distances.
pub fn report(models: Vec<String>, grouping: &Grouping, inner: &InnerProducts) -> L2Report {
    let n = inner.n;
    assert_eq!(inner.center, Some(0), "l2 centres on the base");
    let shown: Vec<usize> = (0..grouping.groups().len())
        .filter(|&r| inner.rows[r].tensors > 0)
        .collect();
    let rows: Vec<RowMeta> = shown
        .iter()
        .map(|&r| {
            let g = &grouping.groups()[r];
            RowMeta {
                label: g.label.clone(),
                component: g.component,
                block: g.block,
                params: inner.rows[r].params,
            }
        })
        .collect();
    let base_norm: Vec<f64> = shown
        .iter()
        .map(|&r| inner.rows[r].gram.get(0, 0).max(0.0).sqrt())
        .collect();
    let from_base: Vec<Vec<f64>> = (1..n)
        .map(|m| {
            shown
                .iter()
                .map(|&r| distances(&inner.rows[r], n)[0][m])
                .collect()
        })
        .collect();
    let relative: Vec<Vec<f64>> = from_base
        .iter()
        .map(|row| {
            row.iter()
                .zip(&base_norm)
                .map(|(d, b)| if *b > 0.0 { d / b } else { f64::NAN })
                .collect()
        })
        .collect();
    let row_delta_cosine = shown
        .iter()
        .map(|&r| delta_cosines(&inner.rows[r].gram, n))
        .collect();

    let mut scopes = Vec::new();
    // One scope per component, in the architecture's order (every one the catalog has for
    // layouts it does not know), then the whole file.
    let components: Vec<Component> = match grouping.layout().arch() {
        Some(arch) => arch.components().to_vec(),
        None => Component::all()
            .filter(|c| *c != Component::other())
            .collect(),
    };
    let mut scope_rows: Vec<(String, Vec<usize>)> = components
        .iter()
        .map(|c| {
            (
                c.id().to_string(),
                shown
                    .iter()
                    .copied()
                    .filter(|&r| grouping.groups()[r].component == *c)
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    scope_rows.push(("all".into(), shown.clone()));
    for (name, rs) in scope_rows {
        let sums = inner.sum_rows(rs);
        let distance = distances(&sums, n);
        let base_norm = sums.gram.get(0, 0).max(0.0).sqrt();
        let from_base: Vec<f64> = (1..n).map(|m| distance[0][m]).collect();
        let relative = from_base
            .iter()
            .map(|d| {
                if base_norm > 0.0 {
                    d / base_norm
                } else {
                    f64::NAN
                }
            })
            .collect();
        let mds = classical_mds(&distance);
        scopes.push(Scope {
            name,
            params: sums.params,
            base_norm,
            from_base,
            relative,
            delta_cosine: delta_cosines(&sums.gram, n),
            distance,
            mds,
        });
    }
    L2Report {
        models,
        rows,
        base_norm,
        from_base,
        relative,
        row_delta_cosine,
        scopes,
    }
}
