//! Text, Markdown, CSV and JSON for `ckpt-diff sim`.
//!
//! JSON schema 1:
//! `{"schema":1, "command":"sim", "metric":"cosine", "layout":"sd1", "models":[{"name","path",
//! "detection"}], "rows":[{"label","component","block"?,"similarity","params","tensors"}],
//! "totals":{"block_mean"?,"flat_unet"?,"flat_all"?:{"similarity","over"}},
//! "tensors"?:[{"key","row","similarity","params"}], "notes":{...}}`. Similarities are
//! fractions in [-1, 1]; tables show them as percentages with 4 decimals.

use serde::Serialize;

use super::{Block, Report, TextTable, first_few, params, percent};
use ckpt_core::catalog::{Arch, Component};
use ckpt_ops::views::sim::SimReport;

/// A compared file, as the report names it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ModelLine {
    pub name: String,
    pub path: String,
    pub detection: String,
}

/// `A: name (detection)` and `B: ...`, the lines that open a comparison.
pub(crate) fn heading(models: &[ModelLine]) -> String {
    let mut s = String::new();
    for (tag, m) in ["A", "B"].iter().zip(models) {
        s.push_str(&format!(
            "{tag}: {} ({})\n",
            super::sanitize(&m.name),
            m.detection
        ));
    }
    s
}

/// A comparison of A and B (`sim`, cosine).
pub(crate) struct Cosine<'a> {
    pub models: &'a [ModelLine],
    /// The layout's id (`sd1`, `unknown`).
    pub layout: &'a str,
    pub arch: Option<Arch>,
    pub report: &'a SimReport,
}

impl Report for Cosine<'_> {
    fn command(&self) -> &'static str {
        "sim"
    }

    fn json(&self) -> serde_json::Value {
        let r = self.report;
        serde_json::json!({
            "metric": "cosine",
            "layout": self.layout,
            "models": self.models,
            "rows": r.rows,
            "totals": r.totals,
            "tensors": r.tensors,
            "notes": r.notes,
        })
    }

    /// The two files, the rows' table, the tensors' (with `--per-tensor`), the notes.
    fn blocks(&self) -> Vec<Block> {
        let mut head = heading(self.models);
        head.push_str(
            "cosine similarity of the weights; a block's tensors are flattened into one vector\n\n",
        );
        let mut b = vec![
            Block::Text(head),
            Block::Table(table(self.report, self.arch)),
            Block::text("\n"),
        ];
        if !self.report.tensors.is_empty() {
            b.push(Block::text("\n"));
            b.push(Block::Table(tensor_table(self.report)));
            b.push(Block::text("\n"));
        }
        b.push(Block::Text(notes(self.report)));
        b
    }
}

fn row_label(label: &str, component: Component, arch: Option<Arch>) -> String {
    match (component, arch) {
        (c, Some(a)) if c.is_text_encoder() => {
            format!("{label} ({})", a.component_label(component))
        }
        _ => label.to_string(),
    }
}

fn table(report: &SimReport, arch: Option<Arch>) -> TextTable {
    let mut t = TextTable::new(
        &["block", "similarity", "params", "tensors"],
        &[false, true, true, true],
    );
    for row in &report.rows {
        t.push(vec![
            row_label(&row.label, row.component, arch),
            percent(row.similarity),
            params(row.params),
            row.tensors.to_string(),
        ]);
    }
    let totals = &report.totals;
    if let Some(m) = &totals.block_mean {
        t.push(vec![
            format!("mean of {} blocks", m.over),
            percent(m.similarity),
            String::new(),
            String::new(),
        ]);
    }
    if let Some(f) = &totals.flat_unet {
        t.push(vec![
            // A DiT's denoiser is named by its id; the U-Net by its label.
            match arch.map(Arch::denoiser) {
                Some(c) if c.id() != "unet" => format!("{}, flattened", c.id()),
                _ => "U-Net, flattened".to_string(),
            },
            percent(f.similarity),
            params(f.over),
            String::new(),
        ]);
    }
    if let Some(f) = &totals.flat_all {
        t.push(vec![
            "all rows shown, flattened".into(),
            percent(f.similarity),
            params(f.over),
            String::new(),
        ]);
    }
    t
}

fn tensor_table(report: &SimReport) -> TextTable {
    let mut t = TextTable::new(
        &["tensor", "block", "similarity", "params"],
        &[false, false, true, true],
    );
    for r in &report.tensors {
        t.push(vec![
            r.key.clone(),
            r.row.clone(),
            percent(r.similarity),
            params(r.params),
        ]);
    }
    t
}

fn notes(report: &SimReport) -> String {
    let n = &report.notes;
    let mut s = String::new();
    let mut line = |text: String| s.push_str(&format!("note: {text}\n"));
    if !n.integer_equal.is_empty() {
        line(format!(
            "integer tensors compared exactly, equal: {}",
            first_few(&n.integer_equal, 3)
        ));
    }
    if !n.integer_different.is_empty() {
        line(format!(
            "integer tensors that DIFFER: {}",
            first_few(&n.integer_different, 5)
        ));
    }
    if !n.only_in_a.is_empty() {
        line(format!(
            "{} keys only in A, left out: {}",
            n.only_in_a.len(),
            first_few(&n.only_in_a, 5)
        ));
    }
    if !n.only_in_b.is_empty() {
        line(format!(
            "{} keys only in B, left out: {}",
            n.only_in_b.len(),
            first_few(&n.only_in_b, 5)
        ));
    }
    if !n.shape_mismatch.is_empty() {
        let items: Vec<String> = n
            .shape_mismatch
            .iter()
            .map(|m| format!("{} {:?} vs {:?}", m.key, m.shape_a, m.shape_b))
            .collect();
        line(format!(
            "{} keys with different shapes, left out: {}",
            items.len(),
            first_few(&items, 5)
        ));
    }
    if !n.not_compared.is_empty() {
        line(format!(
            "{} keys of types not compared: {}",
            n.not_compared.len(),
            first_few(&n.not_compared, 5)
        ));
    }
    s
}

/// Writes a report folder for a comparison: the table, a per-block chart, notes.
pub(crate) fn write_report(
    models: &[ModelLine],
    arch: Option<Arch>,
    report: &SimReport,
    dir: &std::path::Path,
    command: &str,
) -> Result<(), super::chart::ChartError> {
    use super::html::{Page, Part, Section};
    std::fs::create_dir_all(dir).map_err(|e| super::chart::ChartError {
        what: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let labels: Vec<String> = report.rows.iter().map(|r| r.label.clone()).collect();
    let values: Vec<f64> = report.rows.iter().map(|r| r.similarity * 100.0).collect();
    let name = format!("{} vs {}", models[0].name, models[1].name);
    let chart = super::chart::lines(
        "Cosine similarity per block",
        &labels,
        &[(name, values)],
        "similarity (%)",
        false,
        Some(&dir.join("similarity.png")),
    )?;
    let mut inputs = TextTable::new(&["", "file", "detected"], &[false, false, false]);
    for (tag, m) in ["A", "B"].iter().zip(models) {
        inputs.push(vec![tag.to_string(), m.name.clone(), m.detection.clone()]);
    }
    let mut parts = vec![Part::Table(inputs)];
    parts.push(Part::Text(
        "Cosine similarity of the weights; a block's tensors are flattened into one vector.".into(),
    ));
    parts.push(Part::Table(table(report, arch)));
    parts.push(Part::Chart(chart));
    let n = notes(report);
    if !n.is_empty() {
        parts.push(Part::Text(n));
    }
    let r = Page {
        title: "Block similarity".into(),
        command: command.to_string(),
        sections: vec![Section {
            heading: "Comparison".into(),
            parts,
        }],
    };
    r.write(dir).map_err(|e| super::chart::ChartError {
        what: dir.display().to_string(),
        message: e.to_string(),
    })
}
