//! Renders results for people and scripts: terminal tables (comfy-table), Markdown, CSV and
//! JSON. Views build plain structs; only this module and the CLI turn them into text.
//!
//! Each command's result is a [`Report`]: its JSON body, and the [`Block`]s (prose and
//! [`TextTable`]s) a terminal shows; Markdown and CSV follow from them unless the command
//! says otherwise. [`render`] is the one place a format is chosen; the CLI prints what it
//! returns (`cli::common::emit`). docs/output.md lists what each command's formats hold.

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

/// A part of what a report shows: prose (its own newlines included), or a table, which
/// [`render`] draws for the terminal, as Markdown or as CSV.
pub(crate) enum Block {
    Text(String),
    Table(TextTable),
}

impl Block {
    pub(crate) fn text(s: impl Into<String>) -> Block {
        Block::Text(s.into())
    }
}

/// A command's result, as every format shows it. Each command that prints a result builds
/// one and hands it to [`render`] (through the CLI's `emit`), the one place that picks the
/// format.
pub(crate) trait Report {
    /// The `"command"` of the JSON envelope.
    fn command(&self) -> &'static str;

    /// The JSON body: an object, whose fields follow `schema` and `command` (see [`json`]).
    fn json(&self) -> serde_json::Value;

    /// What `--json` prints: the envelope around [`Report::json`]. (`inspect` of several
    /// files prints a list of documents instead.)
    fn document(&self) -> serde_json::Value {
        json::envelope(self.command(), self.json())
    }

    /// What a terminal shows: prose and tables.
    fn blocks(&self) -> Vec<Block>;

    /// What `--markdown` shows, its tables in Markdown: the terminal's blocks unless the
    /// command says otherwise.
    fn markdown(&self) -> Vec<Block> {
        self.blocks()
    }

    /// The tables `--csv` prints: those of the terminal's blocks unless the command says
    /// otherwise (where the terminal shortens values or has no table).
    fn tables(&self) -> Vec<TextTable> {
        self.blocks()
            .into_iter()
            .filter_map(|b| match b {
                Block::Table(t) => Some(t),
                Block::Text(_) => None,
            })
            .collect()
    }

    /// What `--csv` prints: the tables, each with its header row, a blank line between.
    fn csv(&self) -> String {
        let tables: Vec<String> = self.tables().iter().map(TextTable::csv).collect();
        tables.join("\n")
    }
}

/// Reports of several inputs, one after another (`inspect A B`): a blank line between
/// their texts (and CSVs); `--json` prints the list of their documents, or the document
/// alone for one input.
pub(crate) struct Sequence<'a> {
    pub command: &'static str,
    pub reports: Vec<Box<dyn Report + 'a>>,
}

/// What goes between the reports of a [`Sequence`] (but JSON's).
const BETWEEN: &str = "\n";

impl Sequence<'_> {
    fn joined(&self, part: impl Fn(&dyn Report) -> Vec<Block>) -> Vec<Block> {
        let mut out = Vec::new();
        for (i, r) in self.reports.iter().enumerate() {
            if i > 0 {
                out.push(Block::text(BETWEEN));
            }
            out.extend(part(r.as_ref()));
        }
        out
    }

    /// The `i`th report of a sequence as the sequence renders it in `format` (not JSON,
    /// which only the whole sequence has): what a command that prints each input's report
    /// as soon as it has it prints.
    pub(crate) fn part(r: &dyn Report, i: usize, format: Format) -> String {
        debug_assert!(format != Format::Json, "a JSON sequence is one document");
        let text = render(r, format);
        if i == 0 {
            text
        } else {
            format!("{BETWEEN}{text}")
        }
    }
}

impl Report for Sequence<'_> {
    fn command(&self) -> &'static str {
        self.command
    }

    /// The list of the reports' documents.
    fn json(&self) -> serde_json::Value {
        self.reports.iter().map(|r| r.document()).collect()
    }

    fn document(&self) -> serde_json::Value {
        match &self.reports[..] {
            [one] => one.document(),
            _ => self.json(),
        }
    }

    fn blocks(&self) -> Vec<Block> {
        self.joined(|r| r.blocks())
    }

    fn markdown(&self) -> Vec<Block> {
        self.joined(|r| r.markdown())
    }

    fn tables(&self) -> Vec<TextTable> {
        self.reports.iter().flat_map(|r| r.tables()).collect()
    }

    fn csv(&self) -> String {
        let parts: Vec<String> = self.reports.iter().map(|r| r.csv()).collect();
        parts.join(BETWEEN)
    }
}

/// `r` in the format asked for.
pub(crate) fn render(r: &dyn Report, format: Format) -> String {
    match format {
        Format::Json => json::pretty(&r.document()),
        Format::Csv => r.csv(),
        Format::Markdown => text(&r.markdown(), TextTable::markdown),
        Format::Table => text(&r.blocks(), TextTable::terminal),
    }
}

/// Blocks as text, each table drawn by `table`.
pub(crate) fn text(blocks: &[Block], table: fn(&TextTable) -> String) -> String {
    let mut s = String::new();
    for b in blocks {
        match b {
            Block::Text(t) => s.push_str(t),
            Block::Table(t) => s.push_str(&table(t)),
        }
    }
    s
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

/// Each item with why it is listed: `item (why)`.
pub(crate) fn with_why(items: &[(String, String)]) -> Vec<String> {
    items
        .iter()
        .map(|(item, why)| format!("{item} ({why})"))
        .collect()
}

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

    /// Prose, a table, prose, a table.
    struct Two;

    impl Report for Two {
        fn command(&self) -> &'static str {
            "two"
        }

        fn json(&self) -> serde_json::Value {
            serde_json::json!({ "n": 2 })
        }

        fn blocks(&self) -> Vec<Block> {
            let mut t = TextTable::new(&["a", "b"], &[false, true]);
            t.push(vec!["x".into(), "1".into()]);
            vec![
                Block::text("one:\n"),
                Block::Table(t.clone()),
                Block::text("\ntwo:\n"),
                Block::Table(t),
            ]
        }
    }

    #[test]
    fn render_picks_the_tables_drawing_per_format() {
        let terminal = render(&Two, Format::Table);
        assert!(terminal.starts_with("one:\n┌") && terminal.contains("┘\ntwo:\n┌"));
        assert_eq!(
            render(&Two, Format::Markdown),
            "one:\n| a | b |\n| --- | ---: |\n| x | 1 |\n\ntwo:\n| a | b |\n| --- | ---: |\n| x | 1 |\n"
        );
        assert_eq!(render(&Two, Format::Csv), "a,b\nx,1\n\na,b\nx,1\n");
        assert_eq!(
            render(&Two, Format::Json),
            "{\n  \"schema\": 1,\n  \"command\": \"two\",\n  \"n\": 2\n}\n"
        );
    }

    #[test]
    fn a_sequence_is_its_parts_with_a_blank_line_between() {
        let seq = Sequence {
            command: "two",
            reports: vec![Box::new(Two), Box::new(Two)],
        };
        for format in [Format::Table, Format::Markdown, Format::Csv] {
            let parts = Sequence::part(&Two, 0, format) + &Sequence::part(&Two, 1, format);
            assert_eq!(render(&seq, format), parts, "{format:?}");
        }
        let json: serde_json::Value = serde_json::from_str(&render(&seq, Format::Json)).unwrap();
        assert_eq!(json.as_array().map(Vec::len), Some(2));
        let one = Sequence {
            command: "two",
            reports: vec![Box::new(Two)],
        };
        assert_eq!(render(&one, Format::Json), render(&Two, Format::Json));
    }

    #[test]
    fn csv_quotes() {
        let mut t = TextTable::new(&["a", "b"], &[false, true]);
        t.push(vec!["x,y".into(), "1".into()]);
        assert_eq!(t.csv(), "a,b\n\"x,y\",1\n");
        assert!(t.markdown().contains("| --- | ---: |"));
    }
}
