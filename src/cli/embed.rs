//! The command line called from the same process (the Python module, `crates/ckpt-py`):
//! the same parsing, commands and reports as the binary, with the results kept as the
//! documents `--json` prints instead of printed, progress told to a [`Watch`], the pass
//! stopped by a [`Cancel`] the caller holds, and errors returned as values that say what
//! kind they are.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};

use clap::Parser;

pub use super::progress::Watch;
pub use ckpt_core::pass::Cancel;

use super::Cli;
use super::common::Output;

/// What a command gave back.
#[derive(Debug)]
pub struct Returned {
    /// The documents `--json` would print, in order: one per command (`merge` keeps its
    /// plan, then its summary).
    pub documents: Vec<serde_json::Value>,
    /// The exit code the binary would end with: 0, or 1 when a check found something
    /// (`validate` warnings, a hash that does not hold), 2 for `validate` errors.
    pub code: u8,
}

/// Why a command failed, as the binary would say it.
#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    /// The binary's message, without its `ckpt-diff: error: ` prefix.
    pub message: String,
    /// What to do about it, where the command line knows.
    pub hint: Option<String>,
}

/// The kinds of failure a caller tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The arguments, a recipe, or an input's content: something the caller gave is wrong.
    BadInput,
    /// Reading or writing a file failed (missing, unreadable, no space).
    Io,
    /// The input is in a format ckpt-diff knows and deliberately does not read (4-bit
    /// bitsandbytes, nunchaku, quantization state no rule decodes).
    RefusedFormat,
    /// The cancel token was set: the pass stopped and nothing was written.
    Interrupted,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Runs the command `args` names (without the program name, e.g. `["sim", "a.safetensors",
/// "b.safetensors"]`) and keeps its results. Progress goes to `watch` (no bar is drawn);
/// `cancel` stops the running pass. Nothing is printed on stdout; warnings the binary
/// prints on stderr (an unsafe pickle, tensors a diffusers folder leaves out) still are.
pub fn call(
    args: impl IntoIterator<Item = OsString>,
    cancel: &Cancel,
    watch: Option<Arc<Watch>>,
) -> Result<Returned, Failure> {
    let argv: Vec<OsString> = std::iter::once(OsString::from("ckpt-diff"))
        .chain(args)
        .collect();
    let cli = Cli::try_parse_from(&argv).map_err(|e| Failure {
        kind: FailureKind::BadInput,
        message: e.render().to_string().trim_end().to_string(),
        hint: None,
    })?;
    let global = cli.global(cancel.clone(), Output::Keep(Mutex::default()), watch, &argv);
    let outcome = super::execute(cli.command, &global);
    let documents = match global.out {
        Output::Keep(docs) => docs.into_inner().unwrap_or_else(|p| p.into_inner()),
        Output::Print => unreachable!("kept"),
    };
    match outcome {
        Ok(o) => Ok(Returned {
            documents,
            code: o.code(),
        }),
        Err(e) => Err(failure(&e, cancel)),
    }
}

/// The command line exactly as the binary runs it (`argv` with the program name first):
/// prints, exits with the binary's codes. The Python package's `ckpt-diff` command is this.
pub fn main(argv: impl IntoIterator<Item = OsString>, cancel: &Cancel) -> u8 {
    super::main_from(argv, cancel)
}

fn failure(e: &anyhow::Error, cancel: &Cancel) -> Failure {
    let kind = if super::interrupted(e, cancel) {
        FailureKind::Interrupted
    } else if e.chain().any(refused) {
        FailureKind::RefusedFormat
    } else if e.chain().any(is_io) {
        FailureKind::Io
    } else {
        FailureKind::BadInput
    };
    Failure {
        kind,
        message: match kind {
            FailureKind::Interrupted => "interrupted; nothing was written".to_string(),
            _ => crate::reports::sanitize(&format!("{e:#}")),
        },
        hint: e.chain().find_map(super::hint).map(str::to_string),
    }
}

fn read_error<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e ckpt_read::ReadError> {
    if let Some(f) = e.downcast_ref::<ckpt_read::FileError>() {
        return Some(&f.kind);
    }
    if let Some(ckpt_core::catalog::diffusers::OpenError::File(f)) = e.downcast_ref() {
        return Some(&f.kind);
    }
    None
}

fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    use ckpt_read::ReadError as R;
    matches!(
        read_error(e),
        Some(R::Bitsandbytes { .. } | R::Nunchaku | R::QuantState { .. })
    )
}

fn is_io(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(read_error(e), Some(ckpt_read::ReadError::Io(_)))
        || e.downcast_ref::<std::io::Error>().is_some()
        || matches!(
            super::write_error(e),
            Some(
                ckpt_core::writer::WriteError::NoSpace { .. }
                    | ckpt_core::writer::WriteError::Io { .. }
            )
        )
}
