//! `ckpt-diff lineage TARGET`: what a checkpoint was made of, from the index; `--verify`
//! reads the parents and measures the recipe exactly.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::Outcome;
use super::common::{FormatArgs, Global, Model, fingerprint, open_index};
use ckpt_ops::views::lineage::{Base, Candidates, Explained};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The checkpoint to explain (read once; it need not be indexed).
    target: PathBuf,
    /// The base deltas are taken from: an indexed name or path, or a file (default: the
    /// indexed model at the centre of the others).
    #[arg(long)]
    base: Option<String>,
    /// Nearest models shown per row.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Read the parents and the base, fit the recipe exactly and measure the clone.
    #[arg(long)]
    verify: bool,
    /// The index database (default: ~/.cache/ckpt-diff/index.sqlite).
    #[arg(long)]
    index: Option<PathBuf>,
    #[command(flatten)]
    format: FormatArgs,
    /// Also write a report folder (index.html with the family tree, summary.md) here.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let index = open_index(args.index.as_deref())?;
    let target = fingerprint(&args.target, global)?;
    let candidates = Candidates::new(&index, &target)?;
    // The base: an indexed model named or at the path given, else that file, else chosen
    // from the index.
    let base = match &args.base {
        Some(b) => match candidates.indexed(b) {
            Some(i) => Base::Indexed(i),
            None => {
                let p = PathBuf::from(b);
                if !p.exists() {
                    bail!(
                        "--base '{b}' is neither an indexed model (see `ckpt-diff index ls`) \
                         nor a file"
                    );
                }
                Base::File(Box::new(fingerprint(&p, global)?))
            }
        },
        None => Base::Auto,
    };
    let Explained {
        report,
        names,
        paths,
    } = candidates.explain(base, args.top)?;
    let verified = if args.verify && !report.parents.is_empty() {
        let parent_paths: Vec<PathBuf> = report
            .parents
            .iter()
            .map(|p| PathBuf::from(&paths[names.iter().position(|n| n == p).expect("a candidate")]))
            .collect();
        let mut models = vec![
            Model::open(&args.target)?,
            Model::open(&PathBuf::from(&paths[0]))?,
        ];
        for p in &parent_paths {
            models.push(Model::open(p)?);
        }
        let bar = global.bar("verifying");
        let ckpts: Vec<&ckpt_read::Checkpoint> = models.iter().map(|m| &m.ckpt).collect();
        let v = ckpt_ops::views::lineage::verify(&ckpts, &report, &global.pass(&bar))?;
        drop(bar);
        Some(v)
    } else {
        None
    };
    let doc = crate::reports::lineage::Document {
        target: args.target.display().to_string(),
        matches: candidates.matches.clone(),
        report: &report,
        verified: verified.as_ref(),
    };
    global.emit(&doc, &args.format)?;
    if let Some(dir) = &args.report {
        crate::reports::lineage::write_report(&doc, dir, &global.command_line())?;
        if !global.quiet {
            eprintln!("report: {}", dir.join("index.html").display());
        }
    }
    Ok(Outcome::Ok)
}
