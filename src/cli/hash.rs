//! `ckpt-diff hash FILE...`: file hashes as Civitai and A1111 show them, the claims a file's
//! metadata makes about itself, and (with `--components`) component hashes and the toolkit
//! metric.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::Outcome;
use super::common::{Global, print};
use crate::hash::{FileHashes, file_hashes};
use crate::pass::Pass;
use crate::pass::progress::Bar;
use crate::reader::{Checkpoint, RawFile};
use crate::reports::{self, TextTable};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files to hash (any file; safetensors files also get their claims checked).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Also hash each component (U-Net, text encoders, VAE), exact and fp16 forms, and
    /// compute the A1111 model toolkit's component metric.
    #[arg(long)]
    components: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A claim a file's metadata makes about its own hash.
#[derive(Debug, serde::Serialize)]
struct Claim {
    key: String,
    claimed: String,
    /// What the data hashes to, in the claim's own form.
    actual: String,
    holds: bool,
}

fn claims(ckpt: Option<&Checkpoint>, h: &FileHashes) -> Vec<Claim> {
    let Some(c) = ckpt else { return Vec::new() };
    let v3 = h.autov3.clone().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(claimed) = c.metadata_value("sshs_model_hash") {
        out.push(Claim {
            key: "sshs_model_hash".into(),
            claimed: claimed.into(),
            actual: v3.clone(),
            holds: claimed.eq_ignore_ascii_case(&v3),
        });
    }
    if let Some(claimed) = c.metadata_value("modelspec.hash_sha256") {
        let actual = format!("0x{v3}");
        out.push(Claim {
            key: "modelspec.hash_sha256".into(),
            claimed: claimed.into(),
            holds: claimed.eq_ignore_ascii_case(&actual),
            actual,
        });
    }
    out
}

pub fn run(args: Args, global: &Global) -> Result<Outcome> {
    let mut all_hold = true;
    let mut docs = Vec::new();
    for path in &args.files {
        let raw = RawFile::open(path)?;
        let ckpt = Checkpoint::open(path).ok();
        let bar = Bar::new("hashing", global.quiet);
        let h = file_hashes(&raw, &bar);
        drop(bar);
        let claims = claims(ckpt.as_ref(), &h);
        all_hold &= claims.iter().all(|c| c.holds);
        let components = match (&ckpt, args.components) {
            (Some(c), true) => {
                let det = crate::catalog::detect(c);
                let bar = Bar::new("components", global.quiet);
                let r = crate::views::components::components(c, &det, &Pass::new(&bar))?;
                Some(r)
            }
            _ => None,
        };
        if args.json {
            docs.push(json!({ "path": path.display().to_string(), "hashes": h, "claims": claims, "components": components }));
            continue;
        }
        let mut s = format!(
            "{} ({})\n",
            reports::sanitize(&path.display().to_string()),
            reports::bytes(h.bytes)
        );
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
        for c in &claims {
            if c.holds {
                s.push_str(&format!("metadata {} holds\n", c.key));
            } else {
                s.push_str(&format!(
                    "metadata {} does NOT hold: it claims {}, the data hashes to {}\n",
                    c.key,
                    reports::sanitize(&c.claimed),
                    c.actual
                ));
            }
        }
        if ckpt.is_some_and(|c| c.metadata_value("sshs_legacy_hash").is_some()) {
            s.push_str("metadata sshs_legacy_hash cannot be checked: it hashes kohya's in-memory copy, not this file\n");
        }
        if let Some(r) = &components {
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
                    reports::params(c.params),
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
        }
        docs.push(json!(s));
    }
    if args.json {
        let v = json!({ "schema": 1, "command": "hash", "files": docs });
        print(&(serde_json::to_string_pretty(&v)? + "\n"))?;
    } else {
        let texts: Vec<String> = docs
            .iter()
            .map(|d| d.as_str().unwrap_or_default().to_string())
            .collect();
        print(&texts.join("\n"))?;
    }
    Ok(if all_hold {
        Outcome::Ok
    } else {
        Outcome::Findings
    })
}
