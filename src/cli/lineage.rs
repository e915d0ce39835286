//! `ckpt-diff lineage TARGET`: what a checkpoint was made of, from the index; `--verify`
//! reads the parents and measures the recipe exactly.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::Outcome;
use super::common::{Global, Model, print};
use super::index::{fingerprint_entry, open_index};
use ckpt_core::catalog::releases;
use ckpt_ops::views::lineage::{CentreScan, Known, Shortlist, lineage};

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
    #[arg(long)]
    json: bool,
    /// Also write a report folder (index.html with the family tree, summary.md) here.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

/// Fingerprints held at once while the index is streamed: the shortlist a recipe is fitted
/// from (each is `rows x 4096 x 8` bytes, under 1 MB).
const SHORTLIST: usize = 48;

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let index = open_index(args.index.as_deref())?;
    let target = fingerprint_entry(&args.target, global)?;
    let entries = index.entries()?;
    // Exact matches: official releases, the toolkit's known components, files, components.
    let mut matches = Vec::new();
    if let Some(r) = target.sha256.as_deref().and_then(releases::by_sha256) {
        matches.push(format!("the file is the official {} ({})", r.name, r.file));
    }
    for m in &target.toolkit_matches {
        matches.push(format!("{m} (by the model toolkit's known metric)"));
    }
    for e in &entries {
        if e.path == target.path {
            continue;
        }
        if target.sha256.is_some() && e.sha256 == target.sha256 {
            matches.push(format!("the file is byte-identical to {}", e.name));
        }
        for (c, exact, fp16) in &target.components {
            for (c2, e2, f2) in &e.components {
                if c == c2 && exact == e2 {
                    matches.push(format!("the {c} is byte-identical to {}'s", e.name));
                } else if c == c2 && fp16 == f2 {
                    matches.push(format!("the {c} equals {}'s in fp16 form", e.name));
                }
            }
        }
    }
    // Candidates: same architecture and scale, not the target itself.
    let same: Vec<&ckpt_ops::index::Entry> = entries
        .iter()
        .filter(|e| e.arch == target.arch && e.scale == target.scale && e.path != target.path)
        .filter(|e| target.sha256.is_none() || e.sha256 != target.sha256)
        .collect();
    // The base: as given, else an indexed official release of this architecture, else the
    // indexed model at the centre of the others.
    let official = || {
        same.iter().position(|e| {
            e.sha256
                .as_deref()
                .and_then(releases::by_sha256)
                .is_some_and(|r| r.arch == target.arch)
        })
    };
    let (base_name, base_path, base_fp, base_at) = match &args.base {
        Some(b) => match same.iter().position(|e| e.name == *b || e.path == *b) {
            Some(i) => (
                same[i].name.clone(),
                same[i].path.clone(),
                index.fingerprint(same[i].id)?,
                Some(i),
            ),
            None => {
                let p = PathBuf::from(b);
                if !p.exists() {
                    bail!(
                        "--base '{b}' is neither an indexed model (see `ckpt-diff index ls`) \
                         nor a file"
                    );
                }
                let e = fingerprint_entry(&p, global)?;
                (e.name, e.path, e.fingerprint, None)
            }
        },
        None => {
            if same.len() < 2 {
                bail!(
                    "the index holds {} models of this architecture and scale ({}); add the \
                     candidate parents with `ckpt-diff index add`",
                    same.len(),
                    target.arch
                );
            }
            let i = match official() {
                Some(i) => i,
                None => {
                    let mut scan = CentreScan::new(index.fingerprint(same[0].id)?);
                    for e in &same {
                        scan.add(&index.fingerprint(e.id)?);
                    }
                    let mut best = (f64::INFINITY, 0);
                    for (i, e) in same.iter().enumerate() {
                        let s = scan.score(&index.fingerprint(e.id)?);
                        if s < best.0 {
                            best = (s, i);
                        }
                    }
                    best.1
                }
            };
            (
                same[i].name.clone(),
                same[i].path.clone(),
                index.fingerprint(same[i].id)?,
                Some(i),
            )
        }
    };
    let mut shortlist = Shortlist::new(&target.fingerprint, &base_fp, SHORTLIST);
    for (i, e) in same.iter().enumerate() {
        if Some(i) != base_at {
            shortlist.offer(i, index.fingerprint(e.id)?);
        }
    }
    let mut names = vec![base_name];
    let mut paths = vec![base_path];
    for &(_, i, _) in &shortlist.kept {
        names.push(same[i].name.clone());
        paths.push(same[i].path.clone());
    }
    let known: Vec<Known<'_>> = std::iter::once(&base_fp)
        .chain(shortlist.kept.iter().map(|k| &k.2))
        .zip(&names)
        .map(|(f, n)| Known {
            name: n,
            fingerprint: f,
        })
        .collect();
    let base = 0;
    let mut report = lineage(&target.fingerprint, &known, base);
    for n in &mut report.nearest {
        n.models.truncate(args.top);
    }
    let verified = if args.verify && !report.parents.is_empty() {
        let parent_paths: Vec<PathBuf> = report
            .parents
            .iter()
            .map(|p| PathBuf::from(&paths[names.iter().position(|n| n == p).expect("a candidate")]))
            .collect();
        let mut models = vec![
            Model::open(&args.target)?,
            Model::open(&PathBuf::from(&paths[base]))?,
        ];
        for p in &parent_paths {
            models.push(Model::open(p)?);
        }
        let bar = super::progress::Bar::new("verifying", global.quiet);
        let ckpts: Vec<&ckpt_read::Checkpoint> = models.iter().map(|m| &m.ckpt).collect();
        let v = ckpt_ops::views::lineage::verify(&ckpts, &report, &global.pass(&bar))?;
        drop(bar);
        Some(v)
    } else {
        None
    };
    let doc = crate::reports::lineage::Document {
        target: args.target.display().to_string(),
        matches,
        report: &report,
        verified: verified.as_ref(),
    };
    print(&if args.json {
        crate::reports::lineage::json(&doc)
    } else {
        crate::reports::lineage::text(&doc)
    })?;
    if let Some(dir) = &args.report {
        crate::reports::lineage::write_report(&doc, dir)?;
        if !global.quiet {
            eprintln!("report: {}", dir.join("index.html").display());
        }
    }
    Ok(Outcome::Ok)
}
