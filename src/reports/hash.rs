//! Text, Markdown, CSV and JSON for `ckpt-diff hash`.
//!
//! JSON schema 1: `{"schema":1, "command":"hash", "files":[{"path", "hashes":{...},
//! "claims":[{"key","claimed","actual","holds"}], "components": null|{...}}]}`.

/// What AutoV3 is for a GGUF file.
const GGUF_AUTOV3: &str = "AutoV3 is defined on safetensors (the data after the JSON header); for \
    a GGUF, Civitai's scanner reads the magic and version as a header length of 16 MiB or more \
    and hashes from byte 8, which is this value";

use serde_json::json;

use super::{Block, Report, TextTable, bytes, params, sanitize};
use ckpt_ops::hash::{Claim, FileHashes};
use ckpt_ops::views::components::Components;

/// One file's hashes and what its metadata claims.
pub(crate) struct FileReport {
    pub path: String,
    /// `None` for a folder or sharded model (several files).
    pub hashes: Option<FileHashes>,
    /// The container, when it is not safetensors (`torch-zip`, `diffusers`, ...).
    pub container: Option<String>,
    pub claims: Vec<Claim>,
    /// The file claims kohya's `sshs_legacy_hash`, which cannot be checked.
    pub legacy_claim: bool,
    /// With `--components`.
    pub components: Option<Components>,
}

/// `hash` of one or more files.
pub(crate) struct Hashes<'a>(pub &'a [FileReport]);

impl Report for Hashes<'_> {
    fn command(&self) -> &'static str {
        "hash"
    }

    fn json(&self) -> serde_json::Value {
        let files: Vec<_> = self
            .0
            .iter()
            .map(|f| {
                let mut hashes = super::json::value(&f.hashes);
                if f.torch()
                    && let Some(h) = hashes.as_object_mut()
                {
                    // Civitai defines AutoV3 for safetensors only.
                    h.insert("autov3".into(), serde_json::Value::Null);
                    h.insert("autov3_note".into(), json!("defined for safetensors only"));
                }
                if f.container() == "gguf"
                    && let Some(h) = hashes.as_object_mut()
                {
                    h.insert("autov3_note".into(), json!(GGUF_AUTOV3));
                }
                json!({ "path": f.path, "container": f.container(),
                        "hashes": hashes, "claims": f.claims, "components": f.components })
            })
            .collect();
        json!({ "files": files })
    }

    /// Each file's hashes, claims and components, a blank line between files.
    fn blocks(&self) -> Vec<Block> {
        let mut b = Vec::new();
        for (i, f) in self.0.iter().enumerate() {
            if i > 0 {
                b.push(Block::text("\n"));
            }
            b.extend(file_blocks(f));
        }
        b
    }

    /// One table of every file's hashes (a row per file, all digits, as in `--json`), then
    /// with `--components` one of every file's component hashes.
    fn tables(&self) -> Vec<TextTable> {
        let with_metric = self.0.iter().any(|f| f.components.is_some());
        let mut head = vec![
            "file",
            "container",
            "bytes",
            "autov1",
            "autov2",
            "sha256",
            "autov3",
            "blake3",
            "crc32",
            "a1111_legacy",
        ];
        if with_metric {
            head.push("toolkit_metric");
        }
        let right: Vec<bool> = head.iter().map(|h| *h == "bytes").collect();
        let mut files = TextTable::new(&head, &right);
        let mut components = TextTable::new(
            &["file", "component", "tensors", "params", "exact", "fp16"],
            &[false, false, true, true, false, false],
        );
        for f in self.0 {
            let mut row = vec![f.path.clone(), f.container().to_string()];
            match &f.hashes {
                Some(h) => row.extend([
                    h.bytes.to_string(),
                    h.autov1.clone().unwrap_or_default(),
                    h.autov2.clone(),
                    h.sha256.clone(),
                    h.autov3.clone().filter(|_| !f.torch()).unwrap_or_default(),
                    h.blake3.clone(),
                    h.crc32.clone(),
                    h.a1111_legacy.clone(),
                ]),
                None => row.extend(std::iter::repeat_n(String::new(), 8)),
            }
            if with_metric {
                row.push(
                    f.components
                        .as_ref()
                        .map(|c| c.metric.display.clone())
                        .unwrap_or_default(),
                );
            }
            files.push(row);
            for c in f.components.iter().flat_map(|c| &c.components) {
                components.push(vec![
                    f.path.clone(),
                    c.component.id().into(),
                    c.tensors.to_string(),
                    c.params.to_string(),
                    c.exact.clone(),
                    c.fp16.clone(),
                ]);
            }
        }
        let mut out = vec![files];
        if with_metric {
            out.push(components);
        }
        out
    }
}

impl FileReport {
    /// A torch file (AutoV3 is defined for safetensors only).
    fn torch(&self) -> bool {
        self.container
            .as_deref()
            .is_some_and(|c| c.starts_with("torch"))
    }

    /// The container's id, `safetensors` by default.
    fn container(&self) -> &str {
        self.container.as_deref().unwrap_or("safetensors")
    }
}

fn file_blocks(f: &FileReport) -> Vec<Block> {
    let Some(h) = &f.hashes else {
        let mut b = vec![Block::Text(format!(
            "{} ({})\nfile hashes: n/a: a model of several files has none (hash each file)\n",
            sanitize(&f.path),
            f.container.as_deref().unwrap_or("folder")
        ))];
        if let Some(c) = &f.components {
            b.push(Block::text("\n"));
            b.extend(components_blocks(c));
        }
        return b;
    };
    let head = format!("{} ({})\n", sanitize(&f.path), bytes(h.bytes));
    let mut t = TextTable::new(
        &["hash", "value (as Civitai shows it)", "bytes hashed"],
        &[false, false, false],
    );
    let up = |x: &str| x.to_uppercase();
    t.push(vec![
        "AutoV1".into(),
        h.autov1
            .as_deref()
            .map(up)
            .unwrap_or_else(|| "n/a: file under 2 MiB".into()),
        format!("64 KiB at 1 MiB (A1111 legacy hash: {})", h.a1111_legacy),
    ]);
    t.push(vec!["AutoV2".into(), up(&h.autov2), "whole file".into()]);
    t.push(vec!["SHA256".into(), up(&h.sha256), "whole file".into()]);
    match &h.autov3 {
        _ if f.torch() => t.push(vec![
            "AutoV3".into(),
            "n/a: defined for safetensors only".into(),
            "(AutoV3 hashes the tensor data after a safetensors header)".into(),
        ]),
        Some(v3) if f.container() == "gguf" => t.push(vec![
            "AutoV3".into(),
            up(&v3[..12]),
            "from byte 8, as Civitai's scanner hashes a GGUF (no safetensors header)".into(),
        ]),
        Some(v3) => t.push(vec![
            "AutoV3".into(),
            up(&v3[..12]),
            format!(
                "after byte {} (header); all 64 digits in --json",
                h.autov3_from
            ),
        ]),
        None => t.push(vec![
            "AutoV3".into(),
            "n/a: file under 8 bytes".into(),
            String::new(),
        ]),
    }
    t.push(vec!["BLAKE3".into(), up(&h.blake3), "whole file".into()]);
    t.push(vec![
        "CRC32".into(),
        up(&h.crc32),
        "whole file (little-endian bytes, Civitai's order)".into(),
    ]);
    let mut s = String::from("\n");
    for c in &f.claims {
        if c.holds {
            s.push_str(&format!("metadata {} holds\n", c.key));
        } else {
            s.push_str(&format!(
                "metadata {} does NOT hold: it claims {}, the data hashes to {}\n",
                c.key,
                sanitize(&c.claimed),
                c.actual
            ));
        }
    }
    if f.legacy_claim {
        s.push_str("metadata sshs_legacy_hash cannot be checked: it hashes kohya's in-memory copy, not this file\n");
    }
    let mut b = vec![Block::Text(head), Block::Table(t), Block::Text(s)];
    if let Some(r) = &f.components {
        b.extend(components_blocks(r));
    }
    b
}

/// The component hashes (first 16 digits) and the toolkit's metric.
fn components_blocks(r: &Components) -> [Block; 2] {
    let mut ct = TextTable::new(
        &[
            "component",
            "tensors",
            "params",
            "exact (BLAKE3)",
            "fp16 form (BLAKE3)",
        ],
        &[false, true, true, false, false],
    );
    for c in &r.components {
        ct.push(vec![
            c.component.id().into(),
            c.tensors.to_string(),
            params(c.params),
            c.exact[..16].to_string(),
            c.fp16[..16].to_string(),
        ]);
    }
    let matches = if r.metric.matches.is_empty() {
        String::new()
    } else {
        format!(": {}", r.metric.matches.join(", "))
    };
    [
        Block::Table(ct),
        Block::Text(format!(
            "\nmodel toolkit metric (UNET/VAE/CLIP): {}{matches}\n",
            r.metric.display
        )),
    ]
}
