//! Text and JSON for `ckpt-diff index` and `ckpt-diff lineage`.
//!
//! JSON schema 1: `lineage`: `{"target", "matches": [..], "base", "nearest": [{"row",
//! "models": [[name, cosine]..]}], "groups": [{"group", "weights": [[name, w, err]..],
//! "explained", "delta_norm2"}], "parents", "explained", "is_merge", "merges_left_out",
//! "verified": null|{"groups", "rows", "mean", "lowest"}}`; `index`: `{"models": [..]}`.

use serde_json::json;

use super::{Block, Report, TextTable, bytes, sanitize};
use ckpt_ops::index::{Entry, Record};
use ckpt_ops::views::lineage::{LineageReport, Verified};

pub(crate) struct Document<'a> {
    pub target: String,
    pub matches: Vec<String>,
    pub report: &'a LineageReport,
    pub verified: Option<&'a Verified>,
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// The nearest indexed models per row.
fn nearest_table(r: &LineageReport) -> TextTable {
    let mut t = TextTable::new(&["row", "nearest by delta cosine"], &[false, false]);
    for n in &r.nearest {
        let m: Vec<String> = n
            .models
            .iter()
            .map(|(name, c)| format!("{} {:.3}", sanitize(name), c))
            .collect();
        t.push(vec![n.row.clone(), m.join(", ")]);
    }
    t
}

/// What the target is, in one sentence: a merge of which parents, or unexplained.
fn verdict(r: &LineageReport) -> String {
    if r.is_merge && r.parents.len() == 1 {
        format!(
            "one indexed model: {} explains {} of its delta from {}",
            sanitize(&r.parents[0]),
            pct(r.explained),
            sanitize(&r.base)
        )
    } else if r.is_merge {
        format!(
            "a merge of indexed models: {} explain {} of its delta from {}",
            r.parents
                .iter()
                .map(|p| sanitize(p))
                .collect::<Vec<_>>()
                .join(", "),
            pct(r.explained),
            sanitize(&r.base)
        )
    } else {
        format!(
            "unexplained: the indexed models explain only {} of its delta from {} (a \
             fine-tune, or a merge of models not in the index)",
            pct(r.explained),
            sanitize(&r.base)
        )
    }
}

impl Report for Document<'_> {
    fn command(&self) -> &'static str {
        "lineage"
    }

    /// The [`LineageReport`] fields, then the target, its exact matches and the
    /// verification.
    fn json(&self) -> serde_json::Value {
        let mut v = super::json::value(self.report);
        let o = v.as_object_mut().expect("a struct");
        o.insert("target".into(), json!(self.target));
        o.insert("matches".into(), json!(self.matches));
        o.insert("verified".into(), json!(self.verified));
        v
    }

    fn blocks(&self) -> Vec<Block> {
        let r = self.report;
        let mut s = format!(
            "target {}; deltas from {}\n",
            sanitize(&self.target),
            sanitize(&r.base)
        );
        for m in &self.matches {
            s.push_str(&format!("exact: {}\n", sanitize(m)));
        }
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
        let mut end = format!("\n{}\n", verdict(r));
        if !r.merges_left_out.is_empty() {
            end.push_str(&format!(
                "left out as merges of the others: {}\n",
                r.merges_left_out
                    .iter()
                    .map(|p| sanitize(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(v) = self.verified {
            end.push_str(&format!(
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
                end.push_str(&format!("  {g}: {}\n", w.join(" + ")));
            }
        }
        vec![
            Block::Text(s),
            Block::Table(nearest_table(r)),
            Block::text("\n"),
            Block::Table(t),
            Block::Text(end),
        ]
    }

    /// One value per cell: the nearest models per row (`row, rank, model, cosine`), the
    /// recipe (`group, model, weight, ± 3σ`), the share explained per group, and with
    /// `--verify` the clone's similarity per row.
    fn tables(&self) -> Vec<TextTable> {
        let r = self.report;
        let mut nearest = TextTable::new(
            &["row", "rank", "model", "delta cosine"],
            &[false, true, false, true],
        );
        for n in &r.nearest {
            for (i, (name, c)) in n.models.iter().enumerate() {
                nearest.push(vec![
                    n.row.clone(),
                    (i + 1).to_string(),
                    name.clone(),
                    format!("{c:.3}"),
                ]);
            }
        }
        let mut out = vec![nearest, recipe_table(r), explained_table(r)];
        out.extend(self.verified.map(verified_table));
        out
    }
}

/// The recipe from the sketches, a model per row: `group, model, weight, ± 3σ`.
fn recipe_table(r: &LineageReport) -> TextTable {
    let mut recipe = TextTable::new(
        &["group", "model", "weight", "± 3σ"],
        &[false, false, true, true],
    );
    for g in &r.groups {
        for (n, w, e) in g.weights.iter().filter(|(_, w, _)| *w > 0.005) {
            recipe.push(vec![
                g.group.clone(),
                n.clone(),
                format!("{w:.3}"),
                format!("{e:.3}"),
            ]);
        }
    }
    recipe
}

/// The share of the target's delta each group's recipe explains.
fn explained_table(r: &LineageReport) -> TextTable {
    let mut explained = TextTable::new(&["group", "explained"], &[false, true]);
    for g in &r.groups {
        explained.push(vec![g.group.clone(), pct(g.explained)]);
    }
    explained
}

/// The clone's similarity per row, as `--verify` measured it.
fn verified_table(v: &Verified) -> TextTable {
    let mut t = TextTable::new(&["row", "clone similarity"], &[false, true]);
    for (row, sim) in &v.rows {
        t.push(vec![row.clone(), format!("{:.4}%", 100.0 * sim)]);
    }
    t
}

/// `index ls`: the indexed models.
pub(crate) struct Listing<'a>(pub &'a [Entry]);

impl Report for Listing<'_> {
    fn command(&self) -> &'static str {
        "index"
    }

    fn json(&self) -> serde_json::Value {
        json!({ "models": self.0 })
    }

    /// The table (printed, as it always was, without a newline after it).
    fn blocks(&self) -> Vec<Block> {
        vec![Block::Table(self.table(false))]
    }

    /// The table with the values as `--json` has them: exact byte counts, AutoV2 in lower
    /// case.
    fn tables(&self) -> Vec<TextTable> {
        vec![self.table(true)]
    }
}

impl Listing<'_> {
    /// The models; `exact`: sizes in bytes and AutoV2 as stored, else as the terminal
    /// shows them (sizes in units, AutoV2 in upper case as Civitai shows it).
    fn table(&self, exact: bool) -> TextTable {
        let mut t = TextTable::new(
            &[
                "name",
                "arch",
                "scale",
                "container",
                "bytes",
                if exact { "autov2" } else { "AutoV2" },
                "path",
            ],
            &[false, false, true, false, true, false, false],
        );
        for e in self.0 {
            let r = &e.record;
            let autov2 = r.autov2.clone().unwrap_or_default();
            t.push(vec![
                r.name.clone(),
                Record::arch_name(r.arch).to_string(),
                r.scale.to_string(),
                r.container.clone(),
                if exact {
                    r.bytes.to_string()
                } else {
                    bytes(r.bytes)
                },
                if exact { autov2 } else { autov2.to_uppercase() },
                r.path.clone(),
            ]);
        }
        t
    }
}

/// `index stats`: how many models of each architecture, and the index's size.
pub(crate) struct Stats<'a> {
    pub entries: &'a [Entry],
    /// The index file's size.
    pub db_bytes: u64,
}

impl Stats<'_> {
    fn by_arch(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut by_arch: std::collections::BTreeMap<&str, usize> = Default::default();
        for e in self.entries {
            *by_arch.entry(Record::arch_name(e.record.arch)).or_default() += 1;
        }
        by_arch
    }

    fn per_model(&self) -> u64 {
        if self.entries.is_empty() {
            0
        } else {
            self.db_bytes / self.entries.len() as u64
        }
    }

    fn arch_table(&self) -> TextTable {
        let mut t = TextTable::new(&["arch", "models"], &[false, true]);
        for (a, n) in self.by_arch() {
            t.push(vec![a.to_string(), n.to_string()]);
        }
        t
    }
}

impl Report for Stats<'_> {
    fn command(&self) -> &'static str {
        "index"
    }

    fn json(&self) -> serde_json::Value {
        json!({ "models": self.entries.len(), "by_arch": self.by_arch(), "bytes": self.db_bytes,
                "bytes_per_model": self.per_model() })
    }

    /// One line.
    fn blocks(&self) -> Vec<Block> {
        let archs: Vec<String> = self
            .by_arch()
            .iter()
            .map(|(a, n)| format!("{a} x{n}"))
            .collect();
        vec![Block::Text(format!(
            "{} models ({}); index {} ({} per model)\n",
            self.entries.len(),
            archs.join(", "),
            bytes(self.db_bytes),
            bytes(self.per_model())
        ))]
    }

    /// The line, then the models per architecture as a table.
    fn markdown(&self) -> Vec<Block> {
        let mut b = self.blocks();
        b.push(Block::text("\n"));
        b.push(Block::Table(self.arch_table()));
        b
    }

    /// The totals in exact numbers (`models, bytes, bytes_per_model`), then the models per
    /// architecture.
    fn tables(&self) -> Vec<TextTable> {
        let mut totals =
            TextTable::new(&["models", "bytes", "bytes_per_model"], &[true, true, true]);
        totals.push(vec![
            self.entries.len().to_string(),
            self.db_bytes.to_string(),
            self.per_model().to_string(),
        ]);
        vec![totals, self.arch_table()]
    }
}

/// The family tree as an SVG: the target on top, its parents in the middle (each edge
/// labelled with the parent's weight per group), the base they are deltas from at the
/// bottom, and the candidates left out as merges of the others at the side, greyed.
pub(crate) fn family_tree(d: &Document<'_>) -> String {
    use super::html::escape;
    let r = d.report;
    let parents: Vec<&String> = r.parents.iter().collect();
    let box_w = 200.0;
    let gap = 40.0;
    let n = parents.len().max(1) as f64;
    let side = if r.merges_left_out.is_empty() {
        0.0
    } else {
        240.0
    };
    let width = (n * (box_w + gap) + gap).max(box_w + 2.0 * gap) + side;
    let tree_w = width - side;
    let (top, mid, bottom) = (30.0, 190.0, 330.0);
    let height = bottom + 80.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n"
    );
    let node = |s: &mut String, x: f64, y: f64, label: &str, sub: &str, fill: &str| {
        s.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{box_w}\" height=\"44\" rx=\"6\" \
             fill=\"{fill}\" stroke=\"#555\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{}</text>\n",
            x - box_w / 2.0,
            y + 18.0,
            escape(label),
            y + 35.0,
            escape(sub)
        ));
    };
    let cx = tree_w / 2.0;
    let target_name = std::path::Path::new(&d.target)
        .file_name()
        .map_or(d.target.clone(), |f| f.to_string_lossy().into_owned());
    let verdict = if r.is_merge {
        format!("a merge: {} explained", pct(r.explained))
    } else {
        format!("unexplained: {} explained", pct(r.explained))
    };
    node(&mut s, cx, top, &target_name, &verdict, "#fde9c9");
    let xs: Vec<f64> = (0..parents.len())
        .map(|i| {
            gap + box_w / 2.0 + i as f64 * (box_w + gap) + (tree_w - n * (box_w + gap) - gap) / 2.0
        })
        .collect();
    for (p, &x) in parents.iter().zip(&xs) {
        // The parent's weight per group, as the sketches fitted it.
        let w: Vec<String> = r
            .groups
            .iter()
            .filter_map(|g| {
                g.weights
                    .iter()
                    .find(|(name, _, _)| name == *p)
                    .filter(|(_, w, _)| *w > 0.005)
                    .map(|(_, w, _)| format!("{} {w:.2}", g.group))
            })
            .collect();
        s.push_str(&format!(
            "<line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{mid:.1}\" stroke=\"#1f77b4\" \
             stroke-width=\"2\"/>\n",
            top + 44.0
        ));
        for (k, chunk) in w.chunks(3).enumerate() {
            s.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#1f77b4\">{}</text>\n",
                mid - 40.0 + 14.0 * k as f64 - 14.0 * (w.len().div_ceil(3) as f64 - 1.0),
                escape(&chunk.join(" · "))
            ));
        }
        node(&mut s, x, mid, p, "parent", "#dbe9f6");
        s.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{bottom:.1}\" stroke=\"#999\" \
             stroke-dasharray=\"4 3\"/>\n",
            mid + 44.0
        ));
    }
    node(
        &mut s,
        cx,
        bottom,
        &r.base,
        "base (deltas are taken from it)",
        "#eeeeee",
    );
    if !r.merges_left_out.is_empty() {
        let x0 = tree_w + 20.0;
        s.push_str(&format!(
            "<text x=\"{x0:.1}\" y=\"{:.1}\" fill=\"#777\">left out as merges of the others:</text>\n",
            mid - 10.0
        ));
        for (i, m) in r.merges_left_out.iter().enumerate().take(12) {
            s.push_str(&format!(
                "<text x=\"{x0:.1}\" y=\"{:.1}\" fill=\"#777\">{}</text>\n",
                mid + 8.0 + 16.0 * i as f64,
                escape(m)
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

/// The report folder: `index.html` with the family tree, the matches, the recipe, the
/// nearest models and the verification; `summary.md` with the same tables.
pub(crate) fn write_report(
    d: &Document<'_>,
    dir: &std::path::Path,
    command: &str,
) -> std::io::Result<()> {
    use super::html::{Page, Part, Section};
    let r = d.report;
    let mut sections = vec![Section {
        heading: "Family tree".into(),
        parts: vec![
            Part::Chart(super::chart::Chart {
                title: format!(
                    "{}: parents and their fitted weights per group, deltas from {}",
                    d.target, r.base
                ),
                svg: family_tree(d),
                png: None,
            }),
            Part::Text(verdict(r)),
        ],
    }];
    if !d.matches.is_empty() {
        sections.push(Section {
            heading: "Exact matches".into(),
            parts: d.matches.iter().map(|m| Part::Text(m.clone())).collect(),
        });
    }
    sections.push(Section {
        heading: "Recipe from the sketches".into(),
        parts: vec![
            Part::Table(recipe_table(r)),
            Part::Table(explained_table(r)),
        ],
    });
    sections.push(Section {
        heading: "Nearest indexed models per row".into(),
        parts: vec![Part::Table(nearest_table(r))],
    });
    if let Some(v) = d.verified {
        sections.push(Section {
            heading: "Verified on the weights".into(),
            parts: vec![
                Part::Text(format!(
                    "The clone's similarity: {:.4}% (mean of {} rows), lowest row {:.4}%.",
                    100.0 * v.mean,
                    v.rows.len(),
                    100.0 * v.lowest
                )),
                Part::Table(verified_table(v)),
            ],
        });
    }
    Page {
        title: format!("Lineage of {}", d.target),
        command: command.to_string(),
        sections,
    }
    .write(dir)
}
