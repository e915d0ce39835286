//! `ckpt-diff l2 --base BASE M1 M2 ...`: distances from a base, matrices, maps, a report.

use std::path::PathBuf;

use anyhow::Result;

use super::Outcome;
use super::common::{
    ArchArg, FormatArgs, Global, Model, choose_grouping, open_all, parse_arch_arg,
};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The reference model (usually the SD base the others were trained or merged from).
    #[arg(long)]
    base: PathBuf,
    /// The models to place relative to the base.
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// Write a report folder (index.html, summary.md, charts as PNG) here, e.g.
    /// reports/my-models.
    #[arg(long, alias = "out", value_name = "DIR")]
    report: Option<PathBuf>,
    /// Log scale for the absolute-distance chart.
    #[arg(long)]
    log: bool,
    /// Only keys matching this regular expression (canonical key names).
    #[arg(long, value_name = "REGEX", value_parser = regex::Regex::new)]
    keys: Option<regex::Regex>,
    #[arg(long, value_parser = parse_arch_arg, help = super::common::arch_rows_help())]
    arch: Option<ArchArg>,
    #[command(flatten)]
    format: FormatArgs,
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    let mut paths = vec![args.base.clone()];
    paths.extend(args.models.iter().cloned());
    let models = open_all(&paths)?;
    // LoRAs: their distance from any base they are baked into is ‖ΔW‖, from the factors.
    let nets: Vec<Option<ckpt_ops::lora::Network>> = models[1..]
        .iter()
        .map(|m| ckpt_ops::lora::Network::read(&m.ckpt))
        .collect();
    if nets.iter().all(Option::is_some) {
        let pairs: Vec<(&ckpt_read::Checkpoint, &ckpt_ops::lora::Network)> = models[1..]
            .iter()
            .zip(&nets)
            .map(|(m, n)| (&m.ckpt, n.as_ref().expect("all")))
            .collect();
        let r = ckpt_ops::views::lora::distances(&pairs);
        global.emit(&crate::reports::lora::Distances(&r), &args.format)?;
        return Ok(Outcome::Ok);
    }
    if nets.iter().any(Option::is_some) {
        anyhow::bail!(
            "`l2` places either checkpoints or LoRAs relative to the base, not both: run it \
             once for each"
        );
    }
    let refs: Vec<&Model> = models.iter().collect();
    let grouping = choose_grouping(&refs, args.arch, "l2")?;
    let ckpts: Vec<&ckpt_read::Checkpoint> = models.iter().map(|m| &m.ckpt).collect();
    let names: Vec<String> = models.iter().map(|m| m.name()).collect();
    let bar = global.bar("reading");
    let report = ckpt_ops::views::l2::measure(
        &ckpts,
        names,
        &grouping,
        args.keys.as_ref(),
        &global.pass(&bar),
    )?;
    drop(bar);
    let base_line = format!("{} ({})", models[0].name(), models[0].describe());
    global.emit(
        &crate::reports::l2::Distances {
            report: &report,
            base_line: &base_line,
        },
        &args.format,
    )?;
    if let Some(dir) = &args.report {
        crate::reports::l2::write_report(
            &report,
            dir,
            &base_line,
            args.log,
            &global.command_line(),
        )?;
        if !global.quiet {
            eprintln!("report: {}", dir.join("index.html").display());
        }
    }
    Ok(Outcome::Ok)
}
