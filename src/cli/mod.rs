//! The command line: clap definitions, one module per subcommand, and the mapping of errors
//! to messages and exit codes.
//!
//! Exit codes: 0 success; 1 a check found something (`validate` warnings, a hash that does
//! not hold); 2 usage, input or I/O error; 130 interrupted (temporary files removed).

mod common;
mod convert;
pub mod embed;
mod fit;
mod fix;
mod gguf;
mod hash;
mod index;
mod inspect;
mod l2;
mod lineage;
mod lora;
mod merge;
pub(crate) mod progress;
mod rewrite;
mod sim;
mod synth;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes: 0 success; 1 a check found something; 2 usage, input or I/O error; 130 interrupted.";

/// The `--help` header: what ckpt-diff does, with the catalog's architectures (a new one is
/// listed without editing this) and the input formats.
fn about() -> String {
    let archs: Vec<&str> = ckpt_core::catalog::Arch::all()
        .iter()
        .map(|a| a.label().split(" (").next().unwrap_or(a.label()))
        .collect();
    format!(
        "Analyze, diff and merge diffusion-model checkpoints ({}; safetensors, torch pickles, \
         diffusers folders, sharded files): block similarity, L2 maps, hashes, validation, \
         streamed merges, LoRAs and recipe fitting.",
        archs.join(", ")
    )
}

// The help header is `about()`: the catalog's architectures, not a fixed list.
#[derive(Debug, Parser)]
#[command(name = "ckpt-diff", version, about = about(), after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Hide progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Worker threads (default: one per core).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Neither read nor write ckpt-diff's cache (the SHA-256 of unchanged inputs, the merge
    /// rates the plan predicts times from).
    #[arg(long, global = true)]
    no_cache: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cosine similarity of two checkpoints, block by block.
    Sim(sim::Args),
    /// Architecture, variant, components, dtypes and metadata of a checkpoint.
    Inspect(inspect::Args),
    /// L2 distances of models from a base per block, pairwise matrices, maps, a report.
    L2(l2::Args),
    /// Merge checkpoints from a recipe (or `merge ws A B`, `merge ad A B C`), in one pass.
    Merge(merge::Args),
    /// File hashes as Civitai and A1111 show them; component hashes with --components.
    Hash(hash::Args),
    /// Check structure, pruning, dtypes, NaN/Inf and position_ids (exit 0 clean, 1
    /// warnings, 2 errors).
    Validate(validate::Args),
    /// Repair what validate reports, into a new file.
    Fix(fix::Args),
    /// Convert torch checkpoints (read without executing them), diffusers folders and
    /// sharded models to single .safetensors files.
    Convert(convert::Args),
    /// Find the linear recipe that reproduces a target from candidate sources.
    Fit(fit::Args),
    /// The lineage index of a model library: `index add PATH...`, `ls`, `rm`, `stats`.
    Index(index::Args),
    /// What a checkpoint was made of, from the index (exact matches, nearest models, a
    /// recipe with error bars); `--verify` checks it on the weights.
    Lineage(lineage::Args),
    /// LoRAs: `lora extract TUNED --base BASE`, `lora merge L1:0.7 L2:0.5`, `lora convert`.
    /// (`inspect`, `sim` and `l2` read LoRAs too; recipes bake them with `lora(FILE)`.)
    Lora(lora::Args),
    /// Write synthetic checkpoints with the real key layouts of the catalog's architectures
    /// (test data).
    Synth(synth::Args),
}

/// What a subcommand reports back to `main`.
pub(crate) enum Outcome {
    Ok,
    /// A check found something worth a non-zero exit (code 1).
    Findings,
    /// A command-specific exit code (`validate`: 0 clean, 1 warnings, 2 errors).
    Exit(u8),
}

/// The binary's entry: Ctrl-C cancels the running pass, then [`main_from`].
pub(crate) fn run() -> ExitCode {
    let cancel = ckpt_core::pass::Cancel::new();
    let on_interrupt = cancel.clone();
    let _ = ctrlc::set_handler(move || on_interrupt.cancel());
    ExitCode::from(main_from(std::env::args_os(), &cancel))
}

/// The command line as the binary runs it: parses `argv` (the program name first), runs
/// the command, prints its result and errors; returns the exit code. `cancel` stops the
/// running pass (the binary's Ctrl-C handler, or the Python launcher's).
pub(crate) fn main_from(
    argv: impl IntoIterator<Item = std::ffi::OsString>,
    cancel: &ckpt_core::pass::Cancel,
) -> u8 {
    let argv: Vec<std::ffi::OsString> = argv.into_iter().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            // What `Cli::parse` does, returning instead of exiting: help and version on
            // stdout (code 0), usage errors on stderr (code 2).
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    let global = cli.global(cancel.clone(), common::Output::Print, None, &argv);
    match execute(cli.command, &global) {
        Ok(outcome) => outcome.code(),
        Err(e) => report_error(&e, &global.cancel),
    }
}

impl Cli {
    /// The options every command sees, for output to `out`.
    fn global(
        &self,
        cancel: ckpt_core::pass::Cancel,
        out: common::Output,
        watch: Option<std::sync::Arc<progress::Watch>>,
        argv: &[std::ffi::OsString],
    ) -> common::Global {
        if let Some(n) = self.threads
            && let Err(e) = rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build_global()
        {
            eprintln!("ckpt-diff: warning: could not set {n} threads: {e}");
        }
        common::Global {
            quiet: self.quiet || watch.is_some(),
            cancel,
            cache: if self.no_cache {
                ckpt_ops::cache::Cache::none()
            } else {
                ckpt_ops::cache::Cache::at(ckpt_read::sys::cache_dir())
            },
            out,
            watch,
            argv: argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        }
    }
}

impl Outcome {
    fn code(&self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Findings => 1,
            Outcome::Exit(code) => *code,
        }
    }
}

fn execute(command: Command, global: &common::Global) -> anyhow::Result<Outcome> {
    match command {
        Command::Sim(args) => sim::run(args, global),
        Command::Inspect(args) => inspect::run(args, global),
        Command::L2(args) => l2::run(args, global),
        Command::Merge(args) => merge::run(args, global),
        Command::Synth(args) => synth::run(args, global),
        Command::Hash(args) => hash::run(args, global),
        Command::Validate(args) => validate::run(args, global),
        Command::Fix(args) => fix::run(args, global),
        Command::Convert(args) => convert::run(args, global),
        Command::Fit(args) => fit::run(args, global),
        Command::Index(args) => index::run(args, global),
        Command::Lineage(args) => lineage::run(args, global),
        Command::Lora(args) => lora::run(args, global),
    }
}

/// Whether `e` is the pass stopping on `cancel`.
fn interrupted(e: &anyhow::Error, cancel: &ckpt_core::pass::Cancel) -> bool {
    cancel.is_cancelled()
        || e.chain().any(|c| {
            matches!(
                c.downcast_ref(),
                Some(ckpt_core::pass::PassError::Interrupted)
            )
        })
}

fn report_error(e: &anyhow::Error, cancel: &ckpt_core::pass::Cancel) -> u8 {
    if interrupted(e, cancel) {
        eprintln!("ckpt-diff: interrupted; nothing was written");
        return 130;
    }
    if e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) {
        return 0;
    }
    eprintln!(
        "ckpt-diff: error: {}",
        crate::reports::sanitize(&format!("{e:#}"))
    );
    if let Some(hint) = e.chain().find_map(hint) {
        eprintln!("ckpt-diff: hint: {hint}");
    }
    2
}

/// The output error `e` is or wraps (the operations' errors hold it transparently).
fn write_error<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e ckpt_core::writer::WriteError> {
    use ckpt_ops::{fix::FixError, lora::LoraError, merge::MergeError, synth::SynthError};
    if let Some(w) = e.downcast_ref() {
        return Some(w);
    }
    match (
        e.downcast_ref(),
        e.downcast_ref(),
        e.downcast_ref(),
        e.downcast_ref(),
    ) {
        (Some(LoraError::Write(w)), ..)
        | (_, Some(FixError::Write(w)), ..)
        | (_, _, Some(MergeError::Write(w)), _)
        | (.., Some(SynthError::Write(w))) => Some(w),
        _ => None,
    }
}

/// What to do about an error, where the CLI knows: the library's errors are typed and name
/// no option; the options are this layer's.
/// The GGUF planning error `e` is or wraps (held transparently by the writers' errors).
fn gguf_plan_error<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e ckpt_ops::gguf::PlanError> {
    use ckpt_ops::gguf::GgufWriteError;
    if let Some(p) = e.downcast_ref() {
        return Some(p);
    }
    match (e.downcast_ref(), e.downcast_ref()) {
        (Some(GgufWriteError::Plan(p)), _)
        | (_, Some(ckpt_ops::merge::MergeError::Gguf(GgufWriteError::Plan(p)))) => Some(p),
        _ => None,
    }
}

fn hint(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    if let Some(f) = e.downcast_ref::<ckpt_read::FileError>() {
        return f.kind.hint();
    }
    if let Some(ckpt_core::catalog::diffusers::OpenError::File(f)) = e.downcast_ref() {
        return f.kind.hint();
    }
    if let Some(ckpt_core::writer::WriteError::Exists { .. }) = write_error(e) {
        return Some("pass --force to replace it");
    }
    if let Some(ckpt_ops::views::asim::AsimError::NoUnetAttention { .. }) = e.downcast_ref() {
        return Some("the weight cosine (`sim` without --metric asim) compares it block by block");
    }
    if let Some(ckpt_ops::gguf::PlanError::NamesTooLong { .. }) = gguf_plan_error(e) {
        return Some(
            "rename them, or pass --allow-long-names to write them anyway (ComfyUI-GGUF \
             reads them; stable-diffusion.cpp and llama-quantize refuse the file)",
        );
    }
    if let Some(ckpt_ops::index::IndexError::Schema { .. }) = e.downcast_ref() {
        return Some(
            "delete it (or use --index NEW) and run `ckpt-diff index add` on the models again",
        );
    }
    if let Some(ckpt_ops::views::lineage::LineageError::TooFewCandidates { .. }) = e.downcast_ref()
    {
        return Some("add the candidate parents with `ckpt-diff index add`");
    }
    None
}
