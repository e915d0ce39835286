//! Text and JSON for `ckpt-diff hash`.
//!
//! JSON schema 1: `{"schema":1, "command":"hash", "files":[{"path", "hashes":{...},
//! "claims":[{"key","claimed","actual","holds"}], "components": null|{...}}]}`.

use serde_json::json;

use super::{TextTable, bytes, params, sanitize};
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

/// `hash --json`.
pub(crate) fn document(files: &[FileReport]) -> String {
    let files: Vec<_> = files
        .iter()
        .map(|f| {
            let torch = f
                .container
                .as_deref()
                .is_some_and(|c| c.starts_with("torch"));
            let mut hashes = serde_json::to_value(&f.hashes).expect("plain data");
            if torch && let Some(h) = hashes.as_object_mut() {
                // Civitai defines AutoV3 for safetensors only.
                h.insert("autov3".into(), serde_json::Value::Null);
                h.insert("autov3_note".into(), json!("defined for safetensors only"));
            }
            json!({ "path": f.path, "container": f.container.as_deref().unwrap_or("safetensors"),
                    "hashes": hashes, "claims": f.claims, "components": f.components })
        })
        .collect();
    super::json::document("hash", json!({ "files": files }))
}

/// The tables, one file after another.
pub(crate) fn text(files: &[FileReport]) -> String {
    let texts: Vec<String> = files.iter().map(file_text).collect();
    texts.join("\n")
}

fn file_text(f: &FileReport) -> String {
    let Some(h) = &f.hashes else {
        let mut s = format!(
            "{} ({})\nfile hashes: n/a: a model of several files has none (hash each file)\n",
            sanitize(&f.path),
            f.container.as_deref().unwrap_or("folder")
        );
        if let Some(c) = &f.components {
            s.push('\n');
            s.push_str(&components_text(c));
        }
        return s;
    };
    let mut s = format!("{} ({})\n", sanitize(&f.path), bytes(h.bytes));
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
    let torch = f
        .container
        .as_deref()
        .is_some_and(|c| c.starts_with("torch"));
    match &h.autov3 {
        _ if torch => t.push(vec![
            "AutoV3".into(),
            "n/a: defined for safetensors only".into(),
            "(AutoV3 hashes the tensor data after a safetensors header)".into(),
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
    s.push_str(&t.terminal());
    s.push('\n');
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
    if let Some(r) = &f.components {
        s.push_str(&components_text(r));
    }
    s
}

fn components_text(r: &Components) -> String {
    let mut s = String::new();
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
    s.push_str(&ct.terminal());
    s.push('\n');
    let matches = if r.metric.matches.is_empty() {
        String::new()
    } else {
        format!(": {}", r.metric.matches.join(", "))
    };
    s.push_str(&format!(
        "model toolkit metric (UNET/VAE/CLIP): {}{matches}\n",
        r.metric.display
    ));
    s
}
