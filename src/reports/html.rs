//! A report folder: `index.html` (one self-contained page: charts inlined as SVG, styles
//! inline, no network needed), `summary.md` (tables, and the charts as PNG files next to it),
//! and the PNGs.

use std::fmt::Write as _;
use std::path::Path;

use super::TextTable;
use super::chart::Chart;

/// A piece of a section.
pub(crate) enum Part {
    Text(String),
    Table(TextTable),
    Chart(Chart),
}

/// A headed section.
pub(crate) struct Section {
    pub heading: String,
    pub parts: Vec<Part>,
}

/// A whole report folder's page (`index.html`, `summary.md`).
pub(crate) struct Page {
    pub title: String,
    /// The command line that produced it.
    pub command: String,
    pub sections: Vec<Section>,
}

/// HTML-escapes untrusted text (file names, metadata).
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A command line (`argv`, the program first), quoted so it can be pasted.
pub(crate) fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_alphanumeric() || "-_./=:,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1600px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}\
code,pre{background:#f4f4f4;padding:2px 4px;border-radius:3px}\
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px}\
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f0f0f0}\
figure{margin:1em 0;overflow-x:auto}figcaption{color:#555;font-size:0.9em}svg{max-width:100%;height:auto}";

impl Page {
    /// The page.
    pub(crate) fn html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
            escape(&self.title)
        );
        let _ = writeln!(h, "<h1>{}</h1>", escape(&self.title));
        let _ = writeln!(
            h,
            "<p>Made with <code>{}</code> (ckpt-diff {}).</p>",
            escape(&self.command),
            env!("CARGO_PKG_VERSION")
        );
        for s in &self.sections {
            let _ = writeln!(h, "<h2>{}</h2>", escape(&s.heading));
            for p in &s.parts {
                match p {
                    Part::Text(t) => {
                        let _ = writeln!(h, "<p>{}</p>", escape(t));
                    }
                    Part::Table(t) => {
                        h.push_str("<table><tr>");
                        for c in &t.header {
                            let _ = write!(h, "<th>{}</th>", escape(c));
                        }
                        h.push_str("</tr>\n");
                        for row in &t.rows {
                            h.push_str("<tr>");
                            for (i, c) in row.iter().enumerate() {
                                let class = if t.right.get(i).copied().unwrap_or(false) {
                                    " class=\"num\""
                                } else {
                                    ""
                                };
                                let _ = write!(h, "<td{class}>{}</td>", escape(c));
                            }
                            h.push_str("</tr>\n");
                        }
                        h.push_str("</table>\n");
                    }
                    Part::Chart(c) => {
                        let _ = writeln!(
                            h,
                            "<figure>{}<figcaption>{}</figcaption></figure>",
                            strip_xml_header(&c.svg),
                            escape(&c.title)
                        );
                    }
                }
            }
        }
        h.push_str("</body></html>\n");
        h
    }

    /// The Markdown summary (charts as links to their PNG files).
    pub(crate) fn markdown(&self) -> String {
        let mut m = format!(
            "# {}\n\nMade with `{}` (ckpt-diff {}).\n",
            self.title,
            self.command,
            env!("CARGO_PKG_VERSION")
        );
        for s in &self.sections {
            let _ = write!(m, "\n## {}\n\n", s.heading);
            for p in &s.parts {
                match p {
                    Part::Text(t) => {
                        let _ = write!(m, "{t}\n\n");
                    }
                    Part::Table(t) => {
                        let _ = writeln!(m, "{}", t.markdown());
                    }
                    Part::Chart(c) => {
                        if let Some(png) = c.png.as_ref().and_then(|p| p.file_name()) {
                            let _ = write!(m, "![{}]({})\n\n", c.title, png.to_string_lossy());
                        }
                    }
                }
            }
        }
        m
    }

    /// Writes `index.html` and `summary.md` into `dir` (the PNGs are already there).
    pub(crate) fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        ckpt_core::writer::write_small(&dir.join("index.html"), self.html().as_bytes())?;
        ckpt_core::writer::write_small(&dir.join("summary.md"), self.markdown().as_bytes())
    }
}

fn strip_xml_header(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_untrusted_text() {
        assert_eq!(
            escape("<script>a&b</script>"),
            "&lt;script&gt;a&amp;b&lt;/script&gt;"
        );
        let r = Page {
            title: "t<".into(),
            command: "c".into(),
            sections: vec![Section {
                heading: "h".into(),
                parts: vec![Part::Text("<b>".into())],
            }],
        };
        let h = r.html();
        assert!(h.contains("t&lt;") && h.contains("&lt;b&gt;") && !h.contains("<b>"));
        assert!(!h.contains("http"), "self-contained: no external resource");
    }
}
