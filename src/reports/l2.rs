//! Tables, CSV, JSON and the report folder for `ckpt-diff l2`.
//!
//! JSON schema 1: `{"schema":1, "command":"l2", "models":[base, ...], "rows":[{label,
//! component, block?, params}], "base_norm":[per row], "from_base":[[per row] per model],
//! "relative":[...], "row_delta_cosine":[[[...]]], "scopes":[{name, params, base_norm,
//! from_base, relative, distance, delta_cosine, mds:{coords, variance_explained, stress}}]}`.
//! Models in `from_base`, `relative` and the delta cosines exclude the base; distance
//! matrices include it first.
//!
//! CSV: long form, `kind,scope,row,model_a,model_b,value` with kind one of `from_base`,
//! `relative`, `distance`, `delta_cosine`.

use std::path::Path;

use super::chart::{self, ChartError};
use super::html::{Page, Part, Section};
use super::{Block, Report, TextTable, params};
use ckpt_ops::views::l2::L2Report;

/// Four significant digits, plain where readable.
pub(crate) fn sig(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if (1e-3..1e5).contains(&a) {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.3e}")
    }
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{}%", sig(x * 100.0))
    } else {
        "n/a".into()
    }
}

/// The tables shown on a terminal and in the report.
pub(crate) fn tables(r: &L2Report) -> Vec<(String, TextTable)> {
    let models = &r.models[1..];
    let mut out = Vec::new();
    // Per scope, distance from the base.
    let mut header: Vec<String> = vec!["model".into()];
    for s in &r.scopes {
        header.push(format!("{} distance", s.name));
    }
    for s in &r.scopes {
        header.push(format!("{} relative", s.name));
    }
    let mut t = TextTable::labelled(header);
    for (m, name) in models.iter().enumerate() {
        let mut row = vec![format!("{} {name}", m + 1)];
        row.extend(r.scopes.iter().map(|s| sig(s.from_base[m])));
        row.extend(r.scopes.iter().map(|s| pct(s.relative[m])));
        t.push(row);
    }
    out.push((
        "Distance from the base: ‖model − base‖ (L2), and relative to ‖base‖".into(),
        t,
    ));

    // Per block, relative distance (models as columns).
    let mut header = vec![
        "block".to_string(),
        "params".to_string(),
        "‖base‖".to_string(),
    ];
    header.extend((1..=models.len()).map(|i| format!("{i}")));
    let mut t = TextTable::labelled(header);
    for (k, row) in r.rows.iter().enumerate() {
        let mut cells = vec![row.label.clone(), params(row.params), sig(r.base_norm[k])];
        cells.extend((0..models.len()).map(|m| pct(r.relative[m][k])));
        t.push(cells);
    }
    out.push((
        "Per block: relative distance from the base, ‖Δ‖ / ‖base‖ (columns are the model numbers)"
            .into(),
        t,
    ));

    let all = r.scopes.last().expect("the all scope");
    let mut header = vec!["".to_string()];
    header.extend(r.models.iter().enumerate().map(|(i, _)| {
        if i == 0 {
            "base".to_string()
        } else {
            i.to_string()
        }
    }));
    let mut t = TextTable::labelled(header);
    for (i, row) in all.distance.iter().enumerate() {
        let mut cells = vec![if i == 0 { "base".into() } else { i.to_string() }];
        cells.extend(row.iter().map(|d| sig(*d)));
        t.push(cells);
    }
    out.push(("Pairwise distances, whole checkpoint".into(), t));
    let mut header = vec!["".to_string()];
    header.extend((1..=models.len()).map(|i| i.to_string()));
    let mut t = TextTable::labelled(header);
    for (i, row) in all.delta_cosine.iter().enumerate() {
        let mut cells = vec![(i + 1).to_string()];
        cells.extend(row.iter().map(|c| format!("{c:.4}")));
        t.push(cells);
    }
    out.push((
        "Cosine of the deltas (model − base), whole checkpoint: 1 = moved the same way".into(),
        t,
    ));
    out
}

/// `l2`: the distances of models from a base, per scope and block, and between them.
pub(crate) struct Distances<'a> {
    pub report: &'a L2Report,
    /// The base, named and described.
    pub base_line: &'a str,
}

impl Report for Distances<'_> {
    fn command(&self) -> &'static str {
        "l2"
    }

    fn json(&self) -> serde_json::Value {
        super::json::value(self.report)
    }

    /// The base and the models, then the tables (past 13 models, the first table only), and
    /// the map's fit.
    fn blocks(&self) -> Vec<Block> {
        let r = self.report;
        let mut s = format!("base: {}\nmodels:\n", self.base_line);
        for (i, m) in r.models.iter().enumerate().skip(1) {
            s.push_str(&format!("  {i} {}\n", super::sanitize(m)));
        }
        let mut b = vec![Block::Text(s)];
        let many = r.models.len() > 13;
        for (k, (title, t)) in tables(r).into_iter().enumerate() {
            if many && k >= 1 {
                continue;
            }
            b.push(Block::Text(format!("\n{title}\n")));
            b.push(Block::Table(t));
            b.push(Block::text("\n"));
        }
        let mut s = String::new();
        if many {
            s.push_str("\n(per-block values, matrices and maps for this many models: --json, --csv, or --report DIR)\n");
        }
        let all = r.scopes.last().expect("all");
        s.push_str(&format!(
            "\nmap of the whole-checkpoint distances (classical MDS): 2 axes explain {:.1}% of the variance, stress {:.4}\n",
            all.mds.variance_explained * 100.0,
            all.mds.stress
        ));
        b.push(Block::Text(s));
        b
    }

    /// Every value in long form (see the module documentation).
    fn csv(&self) -> String {
        csv(self.report)
    }
}

fn csv(r: &L2Report) -> String {
    let mut s = String::from("kind,scope,row,model_a,model_b,value\n");
    let q = |x: &str| {
        if x.contains([',', '"']) {
            format!("\"{}\"", x.replace('"', "\"\""))
        } else {
            x.to_string()
        }
    };
    for (m, name) in r.models.iter().enumerate().skip(1) {
        for (k, row) in r.rows.iter().enumerate() {
            s.push_str(&format!(
                "from_base,{},{},{},{},{:e}\n",
                row.component.id(),
                row.label,
                q(name),
                q(&r.models[0]),
                r.from_base[m - 1][k]
            ));
            s.push_str(&format!(
                "relative,{},{},{},{},{:e}\n",
                row.component.id(),
                row.label,
                q(name),
                q(&r.models[0]),
                r.relative[m - 1][k]
            ));
        }
    }
    for sc in &r.scopes {
        for (i, a) in r.models.iter().enumerate() {
            for (j, b) in r.models.iter().enumerate().skip(i + 1) {
                s.push_str(&format!(
                    "distance,{},,{},{},{:e}\n",
                    sc.name,
                    q(a),
                    q(b),
                    sc.distance[i][j]
                ));
            }
        }
        for (i, a) in r.models.iter().enumerate().skip(1) {
            for (j, b) in r.models.iter().enumerate().skip(i + 1) {
                s.push_str(&format!(
                    "delta_cosine,{},,{},{},{:e}\n",
                    sc.name,
                    q(a),
                    q(b),
                    sc.delta_cosine[i - 1][j - 1]
                ));
            }
        }
    }
    s
}

/// Writes the report folder: charts (PNG + inline SVG), tables, `index.html`, `summary.md`.
pub(crate) fn write_report(
    r: &L2Report,
    dir: &Path,
    base_line: &str,
    log: bool,
    command: &str,
) -> Result<(), ChartError> {
    std::fs::create_dir_all(dir).map_err(|e| ChartError {
        what: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let models: Vec<String> = r.models[1..].to_vec();
    let rows: Vec<String> = r.rows.iter().map(|x| x.label.clone()).collect();
    let mut sections = Vec::new();
    let mut intro = Section {
        heading: "Inputs".into(),
        parts: vec![Part::Text(format!("Base: {base_line}"))],
    };
    let mut t = TextTable::new(&["#", "model"], &[true, false]);
    for (i, m) in models.iter().enumerate() {
        t.push(vec![(i + 1).to_string(), m.clone()]);
    }
    intro.parts.push(Part::Table(t));
    sections.push(intro);

    let series_abs: Vec<(String, Vec<f64>)> = models
        .iter()
        .cloned()
        .zip(r.from_base.iter().cloned())
        .collect();
    let series_rel: Vec<(String, Vec<f64>)> = models
        .iter()
        .cloned()
        .zip(
            r.relative
                .iter()
                .map(|v| v.iter().map(|x| x * 100.0).collect()),
        )
        .collect();
    let abs = chart::lines(
        "Distance from the base per block",
        &rows,
        &series_abs,
        if log {
            "‖model − base‖ (L2, log scale)"
        } else {
            "‖model − base‖ (L2)"
        },
        log,
        Some(&dir.join("from-base.png")),
    )?;
    let rel = chart::lines(
        "Distance from the base per block, relative to the base",
        &rows,
        &series_rel,
        "‖model − base‖ / ‖base‖ (%)",
        false,
        Some(&dir.join("from-base-relative.png")),
    )?;
    let heat = chart::heatmap(
        "Relative distance from the base, models x blocks",
        &models
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{} {m}", i + 1))
            .collect::<Vec<_>>(),
        &rows,
        &r.relative
            .iter()
            .map(|v| v.iter().map(|x| x * 100.0).collect())
            .collect::<Vec<_>>(),
        "‖model − base‖ / ‖base‖, %",
        &|x| format!("{x:.2}"),
        Some(&dir.join("heatmap-blocks.png")),
    )?;
    let mut s = Section {
        heading: "Distance from the base".into(),
        parts: Vec::new(),
    };
    let all_tables = tables(r);
    s.parts.push(Part::Table(all_tables[0].1.clone()));
    s.parts.push(Part::Chart(abs));
    s.parts.push(Part::Chart(rel));
    s.parts.push(Part::Chart(heat));
    s.parts.push(Part::Table(all_tables[1].1.clone()));
    sections.push(s);

    let mut s = Section {
        heading: "Maps: how far the models are from each other".into(),
        parts: Vec::new(),
    };
    s.parts.push(Part::Text(
        "Each map places the models (base included) so that the distance between two points is, as nearly as two \
         dimensions allow, the L2 distance between the two checkpoints (classical multidimensional scaling of the \
         distance matrix). Axes are in L2 units; the share of variance the two axes carry and the stress (0 = every \
         distance exact) are printed on each map."
            .into(),
    ));
    let everyone: Vec<String> = std::iter::once(format!("{} (base)", r.models[0]))
        .chain(models.iter().cloned())
        .collect();
    let marks: Vec<String> = std::iter::once("B".to_string())
        .chain((1..=models.len()).map(|i| i.to_string()))
        .collect();
    for sc in &r.scopes {
        let title = if sc.name == "all" {
            "Map of the models, whole checkpoint".to_string()
        } else {
            format!("Map of the models, {}", sc.name)
        };
        let sub = format!(
            "2 axes explain {:.1}% of the variance; stress {:.4}",
            sc.mds.variance_explained * 100.0,
            sc.mds.stress
        );
        s.parts.push(Part::Chart(chart::map(
            &title,
            &marks,
            &everyone,
            &sc.mds.coords,
            &sub,
            Some(&dir.join(format!("map-{}.png", sc.name))),
        )?));
    }
    let all = r.scopes.last().expect("all");
    let labels: Vec<String> = marks
        .iter()
        .zip(&everyone)
        .map(|(k, m)| format!("{k} {m}"))
        .collect();
    s.parts.push(Part::Chart(chart::heatmap(
        "Pairwise L2 distance, whole checkpoint",
        &labels,
        &marks,
        &all.distance,
        "‖model i − model j‖ (L2)",
        &sig,
        Some(&dir.join("heatmap-distance.png")),
    )?));
    s.parts.push(Part::Table(all_tables[2].1.clone()));
    s.parts.push(Part::Table(all_tables[3].1.clone()));
    sections.push(s);

    let report = Page {
        title: "L2 distances from the base".into(),
        command: command.to_string(),
        sections,
    };
    report.write(dir).map_err(|e| ChartError {
        what: dir.display().to_string(),
        message: e.to_string(),
    })
}
