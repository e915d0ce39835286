//! Renders results for people and scripts: terminal tables (comfy-table), Markdown, CSV and
//! JSON. Views build plain structs; only this module and the CLI turn them into text.

pub(crate) mod asim;
pub(crate) mod chart;
pub(crate) mod fit;
pub(crate) mod fix;
pub(crate) mod hash;
pub(crate) mod html;
pub(crate) mod inspect;
pub(crate) mod json;
pub(crate) mod l2;
pub(crate) mod lineage;
pub(crate) mod lora;
pub(crate) mod merge;
pub(crate) mod parquet;
pub(crate) mod sim;
pub(crate) mod validate;

use comfy_table::{CellAlignment, ContentArrangement, Table, presets};

/// The output format the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Markdown,
    Csv,
    Json,
}

/// A table independent of its rendering.
#[derive(Clone, Debug, Default)]
pub(crate) struct TextTable {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Columns aligned to the right (numbers).
    pub right: Vec<bool>,
}

impl TextTable {
    pub(crate) fn new(header: &[&str], right: &[bool]) -> TextTable {
        TextTable {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            right: right.to_vec(),
        }
    }

    /// A table of labelled rows: the first column left-aligned, every other one (numbers)
    /// right-aligned.
    pub(crate) fn labelled(header: Vec<String>) -> TextTable {
        TextTable {
            right: (0..header.len()).map(|i| i > 0).collect(),
            header,
            rows: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Box-drawn table for a terminal.
    pub(crate) fn terminal(&self) -> String {
        let mut t = Table::new();
        t.load_style(presets::UTF8_FULL_CONDENSED);
        t.set_content_arrangement(ContentArrangement::Disabled);
        t.set_header(self.header.clone());
        for row in &self.rows {
            t.add_row(row.iter().map(|c| sanitize(c)).collect::<Vec<_>>());
        }
        for (i, right) in self.right.iter().enumerate() {
            if *right && let Some(col) = t.column_mut(i) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        t.to_string()
    }

    /// GitHub-flavoured Markdown.
    pub(crate) fn markdown(&self) -> String {
        let esc = |s: &str| sanitize(s).replace('|', "\\|");
        let mut out = format!(
            "| {} |\n",
            self.header
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        out.push('|');
        for i in 0..self.header.len() {
            out.push_str(if self.right.get(i).copied().unwrap_or(false) {
                " ---: |"
            } else {
                " --- |"
            });
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&format!(
                "| {} |\n",
                row.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            ));
        }
        out
    }

    /// RFC 4180 CSV.
    pub(crate) fn csv(&self) -> String {
        let field = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let line = |cells: &[String]| cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(",");
        let mut out = line(&self.header);
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// Makes untrusted text (tensor names, metadata) safe for a terminal: control characters
/// and bidirectional overrides become `\u{..}` escapes.
pub(crate) fn sanitize(s: &str) -> String {
    let bad = |c: char| {
        c.is_control() && c != '\n'
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if bad(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A fraction as a percentage with 4 decimals, the published precision: `99.4821%`.
pub(crate) fn percent(x: f64) -> String {
    format!("{:.4}%", x * 100.0)
}

pub(crate) use ckpt_core::units::{bytes, params};

/// `label (count): the first n items` and a newline, or nothing for an empty list.
pub(crate) fn listed(label: &str, items: &[String], n: usize) -> String {
    if items.is_empty() {
        return String::new();
    }
    format!("{label} ({}): {}\n", items.len(), first_few(items, n))
}

/// At most `n` items of a list, then "... and K more".
pub(crate) fn first_few(items: &[String], n: usize) -> String {
    let mut s = items
        .iter()
        .take(n)
        .map(|i| sanitize(i))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > n {
        s.push_str(&format!(", ... and {} more", items.len() - n));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(percent(0.994821), "99.4821%");
        assert_eq!(params(859_520_964), "859.52M");
        assert_eq!(bytes(2_132_000_000), "2.13 GB");
        assert_eq!(sanitize("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(sanitize("x\u{202e}y"), "x\\u{202e}y");
    }

    #[test]
    fn csv_quotes() {
        let mut t = TextTable::new(&["a", "b"], &[false, true]);
        t.push(vec!["x,y".into(), "1".into()]);
        assert_eq!(t.csv(), "a,b\n\"x,y\",1\n");
        assert!(t.markdown().contains("| --- | ---: |"));
    }
}
