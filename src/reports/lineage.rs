//! Text and JSON for `ckpt-diff index` and `ckpt-diff lineage`.
//!
//! JSON schema 1: `lineage`: `{"target", "matches": [..], "base", "nearest": [{"row",
//! "models": [[name, cosine]..]}], "groups": [{"group", "weights": [[name, w, err]..],
//! "explained", "delta_norm2"}], "parents", "explained", "is_merge", "merges_left_out",
//! "verified": null|{"groups", "rows", "mean", "lowest"}}`; `index`: `{"models": [..]}`.

use serde_json::json;

use super::{TextTable, bytes, sanitize};
use crate::index::Entry;
use crate::views::lineage::{LineageReport, Verified};

pub struct Document<'a> {
    pub target: String,
    pub matches: Vec<String>,
    pub report: &'a LineageReport,
    pub verified: Option<&'a Verified>,
}

pub fn json(d: &Document<'_>) -> String {
    let mut v = serde_json::to_value(d.report).expect("plain data");
    let o = v.as_object_mut().expect("a struct");
    o.insert("target".into(), json!(d.target));
    o.insert("matches".into(), json!(d.matches));
    o.insert("verified".into(), json!(d.verified));
    super::json::document("lineage", v)
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

pub fn text(d: &Document<'_>) -> String {
    let r = d.report;
    let mut s = format!(
        "target {}; deltas from {}\n",
        sanitize(&d.target),
        sanitize(&r.base)
    );
    for m in &d.matches {
        s.push_str(&format!("exact: {}\n", sanitize(m)));
    }
    s.push('\n');
    let mut t = TextTable::new(&["row", "nearest by delta cosine"], &[false, false]);
    for n in &r.nearest {
        let m: Vec<String> = n
            .models
            .iter()
            .map(|(name, c)| format!("{} {:.3}", sanitize(name), c))
            .collect();
        t.push(vec![n.row.clone(), m.join(", ")]);
    }
    s.push_str(&t.terminal());
    s.push('\n');
    let mut t = TextTable::new(
        &[
            "group",
            "recipe from the sketches (weight ± 3σ)",
            "explained",
        ],
        &[false, false, true],
    );
    for g in &r.groups {
        let w: Vec<String> = g
            .weights
            .iter()
            .filter(|(_, w, _)| *w > 0.005)
            .map(|(n, w, e)| format!("{} x {:.3} ± {:.3}", sanitize(n), w, e))
            .collect();
        let what = if g.delta_norm2 == 0.0 {
            "equal to the base".to_string()
        } else {
            w.join(" + ")
        };
        t.push(vec![g.group.clone(), what, pct(g.explained)]);
    }
    s.push_str(&t.terminal());
    s.push('\n');
    if r.is_merge {
        s.push_str(&format!(
            "a merge of indexed models: {} explain {} of its delta from {}\n",
            r.parents
                .iter()
                .map(|p| sanitize(p))
                .collect::<Vec<_>>()
                .join(", "),
            pct(r.explained),
            sanitize(&r.base)
        ));
    } else {
        s.push_str(&format!(
            "unexplained: the indexed models explain only {} of its delta from {} (a \
             fine-tune, or a merge of models not in the index)\n",
            pct(r.explained),
            sanitize(&r.base)
        ));
    }
    if !r.merges_left_out.is_empty() {
        s.push_str(&format!(
            "left out as merges of the others: {}\n",
            r.merges_left_out
                .iter()
                .map(|p| sanitize(p))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(v) = d.verified {
        s.push_str(&format!(
            "\nverified on the weights: the clone's similarity is {:.4}% (mean of {} rows), \
             lowest row {:.4}%; exact weights:\n",
            100.0 * v.mean,
            v.rows.len(),
            100.0 * v.lowest
        ));
        for (g, ws) in &v.groups {
            let w: Vec<String> = ws
                .iter()
                .map(|(n, w)| format!("{} x {:.4}", sanitize(n), w))
                .collect();
            s.push_str(&format!("  {g}: {}\n", w.join(" + ")));
        }
    }
    s
}

pub fn list(entries: &[Entry], as_json: bool) -> String {
    if as_json {
        return super::json::document("index", json!({ "models": entries }));
    }
    let mut t = TextTable::new(
        &[
            "name",
            "arch",
            "scale",
            "container",
            "bytes",
            "AutoV2",
            "path",
        ],
        &[false, false, true, false, true, false, false],
    );
    for e in entries {
        t.push(vec![
            sanitize(&e.name),
            e.arch.clone(),
            e.scale.to_string(),
            e.container.clone(),
            bytes(e.bytes),
            e.autov2.clone().unwrap_or_default().to_uppercase(),
            sanitize(&e.path),
        ]);
    }
    t.terminal()
}

pub fn stats(entries: &[Entry], db_bytes: u64, as_json: bool) -> String {
    let mut by_arch: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in entries {
        *by_arch.entry(e.arch.as_str()).or_default() += 1;
    }
    let per_model = if entries.is_empty() {
        0
    } else {
        db_bytes / entries.len() as u64
    };
    if as_json {
        return super::json::document(
            "index",
            json!({ "models": entries.len(), "by_arch": by_arch, "bytes": db_bytes,
                    "bytes_per_model": per_model }),
        );
    }
    let archs: Vec<String> = by_arch.iter().map(|(a, n)| format!("{a} x{n}")).collect();
    format!(
        "{} models ({}); index {} ({} per model)\n",
        entries.len(),
        archs.join(", "),
        bytes(db_bytes),
        bytes(per_model)
    )
}
