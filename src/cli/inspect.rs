//! `ckpt-diff inspect FILE...`

use std::path::PathBuf;

use anyhow::Result;

use super::Outcome;
use super::common::{FormatArgs, Global, Model, print};
use crate::reports::{self, Format};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Checkpoints to describe (.safetensors).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    format: FormatArgs,
}

pub(super) fn run(args: Args, _global: &Global) -> Result<Outcome> {
    let format = args.format.format();
    let mut reports_json = Vec::new();
    for (i, path) in args.files.iter().enumerate() {
        let model = Model::open(path)?;
        if let Some(lora) = ckpt_ops::views::lora::read(&model.ckpt) {
            if format == Format::Json {
                reports_json.push(serde_json::from_str::<serde_json::Value>(
                    &reports::lora::document(&lora),
                )?);
            } else {
                if i > 0 {
                    print("\n")?;
                }
                print(&reports::lora::text(&lora))?;
            }
            continue;
        }
        let report = ckpt_ops::views::inspect::inspect(&model.ckpt, &model.detection);
        if format == Format::Json {
            reports_json.push(serde_json::from_str::<serde_json::Value>(
                &reports::inspect::render(&report, Format::Json),
            )?);
            continue;
        }
        if i > 0 {
            print("\n")?;
        }
        print(&reports::inspect::render(&report, format))?;
    }
    if format == Format::Json {
        let text = if reports_json.len() == 1 {
            serde_json::to_string_pretty(&reports_json[0])?
        } else {
            serde_json::to_string_pretty(&reports_json)?
        };
        print(&format!("{text}\n"))?;
    }
    Ok(Outcome::Ok)
}
