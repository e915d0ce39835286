//! `ckpt-diff index add|ls|rm|stats`: the lineage index of a model library.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Outcome;
use super::common::{Global, Model, print};
use super::progress::Bar;
use ckpt_core::catalog::Grouping;
use ckpt_ops::index::{Index, NewEntry};

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
        #[arg(long)]
        json: bool,
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
        #[arg(long)]
        json: bool,
    },
}

/// The index the options name; by default `index.sqlite` in ckpt-diff's cache folder
/// (`$XDG_CACHE_HOME/ckpt-diff`, else `~/.cache/ckpt-diff`, `%LOCALAPPDATA%/ckpt-diff` on
/// Windows).
pub(super) fn open_index(path: Option<&Path>) -> Result<Index> {
    let p = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ckpt_read::sys::cache_dir().join("index.sqlite"));
    Ok(Index::open(&p)?)
}

/// Size and modification time (seconds) of a file, or of every file in a folder.
fn stamp(path: &Path) -> Result<(u64, i64)> {
    let meta = std::fs::metadata(path).with_context(|| format!("'{}'", path.display()))?;
    let secs = |m: &std::fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64)
    };
    if !meta.is_dir() {
        return Ok((meta.len(), secs(&meta)));
    }
    let (mut bytes, mut latest) = (0u64, 0i64);
    for e in std::fs::read_dir(path)?.flatten() {
        let (b, t) = stamp(&e.path())?;
        bytes += b;
        latest = latest.max(t);
    }
    Ok((bytes, latest))
}

/// Fingerprints one model: file hashes, component hashes and the sketch, in one read (the
/// file hashes stream the mapped file on their own threads while the pass visits its
/// tensors, so each page comes from the disk once).
pub(super) fn fingerprint_entry(path: &Path, global: &Global) -> Result<NewEntry> {
    let model = Model::open(path)?;
    let (bytes, mtime) = stamp(path)?;
    let raw = if model.ckpt.provenance().is_one_file() {
        Some(ckpt_read::RawFile::open(path)?)
    } else {
        None
    };
    let grouping = match model.detection.arch() {
        Some(a) => Grouping::for_arch(a),
        None => Grouping::generic(model.ckpt.tensors().iter().map(|t| t.name.as_str())),
    };
    let bar = Bar::new("fingerprinting", global.quiet);
    let (hashes, got) = std::thread::scope(|scope| {
        let hashes = raw.as_ref().map(|raw| {
            scope.spawn(|| ckpt_ops::hash::file_hashes(raw, &ckpt_core::pass::progress::NoProgress))
        });
        let got = ckpt_ops::views::fingerprint::fingerprint(
            &model.ckpt,
            &model.detection,
            &grouping,
            ckpt_ops::sketch::SEED,
            &global.pass(&bar),
        );
        let hashes = hashes.map(|h| h.join().expect("hashing does not panic"));
        (hashes, got)
    });
    let (comps, fingerprint) = got?;
    drop(bar);
    let torch = !matches!(
        model.ckpt.provenance(),
        ckpt_read::Provenance::Safetensors { .. }
    );
    Ok(NewEntry {
        path: std::path::absolute(path)?.display().to_string(),
        name: model.name().trim_end_matches(".safetensors").to_string(),
        bytes,
        mtime,
        sha256: hashes.as_ref().map(|h| h.sha256.clone()),
        autov2: hashes.as_ref().map(|h| h.autov2.clone()),
        autov3: hashes
            .as_ref()
            .and_then(|h| if torch { None } else { h.autov3.clone() }),
        blake3: hashes.as_ref().map(|h| h.blake3.clone()),
        arch: model.detection.layout.id().to_string(),
        scale: model.detection.scale,
        container: model.ckpt.provenance().id().to_string(),
        components: comps
            .components
            .iter()
            .map(|c| {
                (
                    c.component.id().to_string(),
                    c.exact.clone(),
                    c.fp16.clone(),
                )
            })
            .collect(),
        toolkit_matches: comps.metric.matches.clone(),
        fingerprint,
    })
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let mut index = open_index(args.index.as_deref())?;
    match args.command {
        Command::Add { paths } => {
            let mut out = String::new();
            for p in &paths {
                let abs = std::path::absolute(p)?.display().to_string();
                let (bytes, mtime) = stamp(p)?;
                if index.unchanged(&abs, bytes, mtime)? {
                    out.push_str(&format!("unchanged  {}\n", p.display()));
                    continue;
                }
                let e = fingerprint_entry(p, global)?;
                index.add(&e)?;
                out.push_str(&format!(
                    "added      {} ({}, {} rows)\n",
                    p.display(),
                    e.arch,
                    e.fingerprint.rows.len()
                ));
            }
            print(&crate::reports::sanitize(&out))?;
        }
        Command::Ls { json } => {
            let entries = index.entries()?;
            print(&crate::reports::lineage::list(&entries, json))?;
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
            let bar = Bar::counting("exporting", "models", global.quiet);
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
        Command::Stats { json } => {
            let entries = index.entries()?;
            print(&crate::reports::lineage::stats(
                &entries,
                index.file_bytes(),
                json,
            ))?;
        }
    }
    Ok(Outcome::Ok)
}
