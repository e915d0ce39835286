//! `ckpt-diff sim A B`: per-block cosine similarity.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Outcome;
use super::common::{ArchArg, FormatArgs, Global, Model, choose_grouping, open_all, print};
use crate::catalog::Layout;
use crate::gram::{GramSpec, gather};
use crate::pass::progress::Bar;
use crate::pass::{Pass, Plan};
use crate::reports::sim::ModelLine;
use crate::views::sim::{RowFilter, report};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model A, the reference.
    a: PathBuf,
    /// Model B.
    b: PathBuf,
    /// Rows to show: in, mid, out, unet, te, vae, other or all, comma-separated. Totals are
    /// over the rows shown.
    #[arg(long, default_value = "all", value_name = "SET")]
    blocks: String,
    /// Only compare keys matching this regular expression (canonical key names).
    #[arg(long, value_name = "REGEX")]
    keys: Option<String>,
    /// Also list the similarity of every tensor.
    #[arg(long)]
    per_tensor: bool,
    /// Row layout; detected from the files by default.
    #[arg(long, value_enum)]
    arch: Option<ArchArg>,
    /// Also write a report folder (index.html, summary.md, a chart) here.
    #[arg(long, value_name = "DIR")]
    report: Option<std::path::PathBuf>,
    #[command(flatten)]
    format: FormatArgs,
}

pub fn run(args: Args, global: &Global) -> Result<Outcome> {
    let filter = RowFilter::parse(&args.blocks)
        .map_err(anyhow::Error::msg)
        .context("--blocks")?;
    let keys = args
        .keys
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .context("--keys is not a valid regular expression")?;
    let models = open_all(&[args.a.clone(), args.b.clone()])?;
    let refs: Vec<&Model> = models.iter().collect();
    let grouping = choose_grouping(&refs, args.arch, "sim")?;
    let plan = Plan::new(models.iter().map(|m| &m.ckpt).collect());
    let generic = grouping.layout() == Layout::Generic;
    let entries: Vec<usize> = plan
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, e)| keys.as_ref().is_none_or(|re| re.is_match(&e.key)))
        .filter(|(_, e)| filter.keeps(&grouping.groups()[grouping.group_of(&e.key)], generic))
        .map(|(i, _)| i)
        .collect();

    let bar = Bar::new("reading", global.quiet);
    let pass = Pass::new(&bar);
    let inner = gather(
        &plan,
        &grouping,
        &entries,
        GramSpec {
            center: None,
            per_tensor: args.per_tensor,
            distances: false,
        },
        &pass,
    )?;
    drop(bar);
    let result = report(&plan, &grouping, &entries, &inner, filter);
    let lines: Vec<ModelLine> = models
        .iter()
        .map(|m| ModelLine {
            name: m.name(),
            path: m.ckpt.path().display().to_string(),
            detection: m.describe(),
        })
        .collect();
    let text = crate::reports::sim::render(
        &lines,
        grouping.layout().id(),
        grouping.layout().arch(),
        &result,
        args.format.format(),
    );
    print(&text)?;
    if let Some(dir) = &args.report {
        crate::reports::sim::write_report(&lines, grouping.layout().arch(), &result, dir)?;
        if !global.quiet {
            eprintln!("report: {}", dir.join("index.html").display());
        }
    }
    Ok(Outcome::Ok)
}
