//! `ckpt-diff hash FILE...`: file hashes as Civitai and A1111 show them, the claims a file's
//! metadata makes about itself, and (with `--components`) component hashes and the toolkit
//! metric.

use std::path::PathBuf;

use anyhow::Result;

use super::Outcome;
use super::common::{FormatArgs, Global};
use crate::reports;
use ckpt_ops::hash::file_hashes;
use ckpt_read::{Provenance, RawFile};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Files to hash (any file; safetensors files also get their claims checked).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Also hash each component (U-Net, text encoders, VAE), exact and fp16 forms, and
    /// compute the A1111 model toolkit's component metric.
    #[arg(long)]
    components: bool,
    #[command(flatten)]
    format: FormatArgs,
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let mut all_hold = true;
    let mut files = Vec::new();
    for path in &args.files {
        let ckpt = ckpt_core::catalog::diffusers::open(path).ok();
        let container = ckpt
            .as_ref()
            .map(|c| c.provenance().clone())
            .filter(|p| !matches!(p, Provenance::Safetensors { .. }));
        let several = container.as_ref().is_some_and(|c| !c.is_one_file());
        if several && !args.components {
            anyhow::bail!(
                "'{}' is a model of several files, which has no file hash: hash each file, or \
                 give --components for its component hashes",
                path.display()
            );
        }
        let h = if several {
            None
        } else {
            let raw = RawFile::open(path)?;
            let bar = global.bar("hashing");
            Some(file_hashes(&raw, &bar))
        };
        let claims = match &h {
            Some(h) => ckpt_ops::hash::claims(ckpt.as_ref(), h),
            None => Vec::new(),
        };
        all_hold &= claims.iter().all(|c| c.holds);
        let components = match (&ckpt, args.components) {
            (Some(c), true) => {
                let det = ckpt_core::catalog::detect(c);
                let bar = global.bar("components");
                let r = ckpt_ops::views::components::components(c, &det, &global.pass(&bar))?;
                Some(r)
            }
            _ => None,
        };
        files.push(reports::hash::FileReport {
            path: path.display().to_string(),
            hashes: h,
            container: container.map(|c| c.id().to_string()),
            claims,
            legacy_claim: ckpt.is_some_and(|c| c.metadata_value("sshs_legacy_hash").is_some()),
            components,
        });
    }
    global.emit(&reports::hash::Hashes(&files), &args.format)?;
    Ok(if all_hold {
        Outcome::Ok
    } else {
        Outcome::Findings
    })
}
