//! What stops a merge before its pass, typed like validation's findings: each problem says
//! what is wrong and with what; the command line adds what to do where that names one of its
//! options ([`Problem::remedy`]).

use std::fmt;
use std::path::PathBuf;

use ckpt_core::catalog::Arch;
use ckpt_core::writer::WriteError;

/// One problem found before any tensor data is read.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// The output file exists (and replacing it was not asked for).
    OutputExists { path: PathBuf },
    /// The output is one of the inputs.
    OutputIsInput { path: PathBuf },
    /// The output's folder does not exist.
    NoOutputFolder { dir: PathBuf },
    /// The output does not fit in the free space where it goes.
    NoSpace { dir: PathBuf, need: u64, free: u64 },
    /// An input could not be opened (the reader's error, as its message).
    CannotOpen { name: String, error: String },
    /// An input is of no architecture the catalog knows.
    UnknownArchitecture { name: String, path: PathBuf },
    /// The inputs are of several architectures (or widths): each with its inputs.
    MixedArchitectures {
        groups: Vec<(Arch, u32, Vec<String>)>,
    },
    /// The recipe names no model file.
    NoModels,
    /// A LoRA whose module names fit another architecture better than the models'.
    LoraForAnotherArchitecture {
        name: String,
        path: PathBuf,
        lora: Arch,
        models: Arch,
    },
    /// A LoRA some of whose modules do not fit the keys they patch.
    LoraMisfits {
        name: String,
        count: usize,
        first: String,
    },
}

/// What to do about a problem, where the fix is one of the command line's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// Replace the existing output, or write another.
    ReplaceOrRenameOutput,
    /// Create the folder, or write elsewhere.
    CreateFolderOrRenameOutput,
}

impl Problem {
    /// What to do, when the command line's options are the fix.
    pub fn remedy(&self) -> Option<Remedy> {
        match self {
            Problem::OutputExists { .. } => Some(Remedy::ReplaceOrRenameOutput),
            Problem::NoOutputFolder { .. } => Some(Remedy::CreateFolderOrRenameOutput),
            _ => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The writer's own refusals, said before any data is read.
            Problem::OutputExists { path } => WriteError::Exists { path: path.clone() }.fmt(f),
            Problem::OutputIsInput { path } => {
                WriteError::OutputIsInput { path: path.clone() }.fmt(f)
            }
            Problem::NoOutputFolder { dir } => {
                write!(f, "the output's folder '{}' does not exist", dir.display())
            }
            Problem::NoSpace { dir, need, free } => write!(
                f,
                "not enough free space in '{}': the output needs {need} bytes and {free} are \
                 free; free some space or write elsewhere",
                dir.display()
            ),
            Problem::CannotOpen { name, error } => write!(f, "'{name}': {error}"),
            Problem::UnknownArchitecture { name, path } => write!(
                f,
                "'{name}' ({}) is not a checkpoint of an architecture ckpt-diff recognises \
                 ({}); merges need one architecture to map block weights",
                path.display(),
                Arch::ids()
            ),
            Problem::MixedArchitectures { groups } => {
                let parts: Vec<String> = groups
                    .iter()
                    .map(|(a, scale, names)| {
                        let width = if *scale > 1 {
                            format!(" at 1/{scale} width")
                        } else {
                            String::new()
                        };
                        format!(
                            "{} {} {}{width}",
                            names.join(", "),
                            if names.len() == 1 { "is" } else { "are" },
                            a.label()
                        )
                    })
                    .collect();
                write!(
                    f,
                    "a recipe merges checkpoints of one architecture, but {}: leave out the \
                     others or merge each architecture in its own recipe",
                    parts.join("; ")
                )
            }
            Problem::NoModels => f.write_str("the recipe uses no model file"),
            Problem::LoraForAnotherArchitecture {
                name,
                path,
                lora,
                models,
            } => write!(
                f,
                "'{name}' ({}) is a LoRA for {} but the models are {}: bake it into a model of \
                 its architecture",
                path.display(),
                lora.label(),
                models.label()
            ),
            Problem::LoraMisfits { name, count, first } => write!(
                f,
                "'{name}': {count} of its modules do not fit the model ({first}{}); is it a \
                 LoRA for another model?",
                if *count > 1 { ", ..." } else { "" }
            ),
        }
    }
}

impl serde::Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
