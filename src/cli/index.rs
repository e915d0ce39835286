//! `ckpt-diff index add|ls|rm|stats`: the lineage index of a model library.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Outcome;
use super::common::{FormatArgs, Global, fingerprint, open_index, print};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    command: Command,
    /// The index database (default: ~/.cache/ckpt-diff/index.sqlite).
    #[arg(long, global = true)]
    index: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Fingerprint models into the index (one pass each; unchanged files are skipped).
    Add {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the indexed models.
    Ls {
        #[command(flatten)]
        format: FormatArgs,
    },
    /// Remove models by name or path.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Export the index as one Parquet table (one record per model and row, the sketch as a
    /// list of doubles) for DuckDB, Spark or pandas.
    Export {
        /// The Parquet file to write.
        #[arg(long, value_name = "FILE")]
        parquet: PathBuf,
    },
    /// Models, architectures and bytes per model.
    Stats {
        #[command(flatten)]
        format: FormatArgs,
    },
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let mut index = open_index(args.index.as_deref())?;
    match args.command {
        Command::Add { paths } => {
            let mut out = String::new();
            for p in &paths {
                let abs = std::path::absolute(p)?.display().to_string();
                let (bytes, mtime) = ckpt_ops::views::fingerprint::stamp(p)?;
                if index.unchanged(&abs, bytes, mtime)? {
                    out.push_str(&format!("unchanged  {}\n", p.display()));
                    continue;
                }
                let e = fingerprint(p, global)?;
                // Two files may share a name (`flux.safetensors` and `flux.gguf`): say so,
                // since `--base` and `index rm` then need the path.
                let namesakes: Vec<String> = index
                    .entries()?
                    .into_iter()
                    .filter(|x| x.record.name == e.record.name && x.record.path != e.record.path)
                    .map(|x| x.record.path)
                    .collect();
                index.add(&e)?;
                out.push_str(&format!(
                    "added      {} ({}, {} rows)\n",
                    p.display(),
                    ckpt_ops::index::Record::arch_name(e.record.arch),
                    e.fingerprint.rows.len()
                ));
                for other in namesakes {
                    out.push_str(&format!(
                        "  note: '{}' also names {other}; give `lineage --base` and \
                         `index rm` a path to tell them apart\n",
                        e.record.name
                    ));
                }
            }
            print(&crate::reports::sanitize(&out))?;
        }
        Command::Ls { format } => {
            let entries = index.entries()?;
            global.emit(&crate::reports::lineage::Listing(&entries), &format)?;
        }
        Command::Rm { names } => {
            let mut out = String::new();
            for n in &names {
                let k = index.remove(n)?;
                out.push_str(&format!("removed {k} entries named {n}\n"));
            }
            print(&crate::reports::sanitize(&out))?;
        }
        Command::Export { parquet } => {
            if parquet.exists() && !global.quiet {
                eprintln!("replacing '{}'", parquet.display());
            }
            let entries = index.entries()?;
            let bar = global.counting("exporting", "models");
            ckpt_core::pass::Progress::start(&bar, entries.len() as u64);
            let mut it = entries.into_iter();
            let records = ckpt_core::writer::write_streamed(&parquet, |file| -> Result<u64> {
                let mut out = std::io::BufWriter::new(file);
                let records = crate::reports::parquet::write(&mut out, || {
                    let e = it.next()?;
                    ckpt_core::pass::Progress::advance(&bar, 1);
                    Some(index.fingerprint(e.id).map(|fp| (e, fp)))
                })?;
                std::io::Write::flush(&mut out)?;
                Ok(records)
            })
            .with_context(|| format!("exporting to '{}'", parquet.display()))?;
            drop(bar);
            print(&crate::reports::sanitize(&format!(
                "wrote {} ({records} records: one per model and row)\n",
                parquet.display()
            )))?;
        }
        Command::Stats { format } => {
            let entries = index.entries()?;
            let stats = crate::reports::lineage::Stats {
                entries: &entries,
                db_bytes: index.file_bytes(),
            };
            global.emit(&stats, &format)?;
        }
    }
    Ok(Outcome::Ok)
}
