//! `ckpt-diff inspect FILE...`

use std::path::PathBuf;

use anyhow::Result;

use super::Outcome;
use super::common::{FormatArgs, Global, Model};
use crate::reports::{self, Format, Report, Sequence};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Checkpoints or LoRAs to describe: safetensors or PyTorch files, diffusers folders, sharded
    /// models.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    format: FormatArgs,
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    // Text, Markdown and CSV print each file's report as soon as it is read; JSON is one
    // document (a list of them for several files) at the end.
    let format = match global.keeps() {
        true => Format::Json,
        false => args.format.format(),
    };
    let mut held: Vec<Box<dyn Report>> = Vec::new();
    for (i, path) in args.files.iter().enumerate() {
        let model = Model::open(path)?;
        let report: Box<dyn Report> = match ckpt_ops::views::lora::read(&model.ckpt) {
            Some(lora) => Box::new(reports::lora::Inspected(lora)),
            None => Box::new(reports::inspect::Inspected(
                ckpt_ops::views::inspect::inspect(&model.ckpt, &model.detection),
            )),
        };
        if format == Format::Json {
            held.push(report);
        } else {
            global.emit_part(report.as_ref(), i, &args.format)?;
        }
    }
    if format == Format::Json {
        global.emit(
            &Sequence {
                command: "inspect",
                reports: held,
            },
            &args.format,
        )?;
    }
    Ok(Outcome::Ok)
}
