//! Pieces every subcommand uses: opening files, choosing the row layout, typed option
//! values, output formats and the one way a result is given ([`Global::emit`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::reports::{Format, Report};
use ckpt_core::catalog::{Arch, Detection, Grouping, Layout, SelectError, Selector, detect};
use ckpt_read::Checkpoint;
use ckpt_read::dtype::FloatFormat;

/// Options every command sees.
pub(super) struct Global {
    pub quiet: bool,
    /// Set by the Ctrl-C handler: every pass the command runs stops on it.
    pub cancel: ckpt_core::pass::Cancel,
    /// Where what is learned between runs is kept (none with `--no-cache`).
    pub cache: ckpt_ops::cache::Cache,
    /// Where results go: printed, or kept for the caller ([`super::embed`]).
    pub out: Output,
    /// Where progress goes besides the bars (the Python module's callback).
    pub watch: Option<std::sync::Arc<super::progress::Watch>>,
    /// The command line being run, the program first (reports say what made them).
    pub argv: Vec<String>,
}

/// Where a command's results go.
pub(super) enum Output {
    /// Printed on stdout in the format the options pick: the binary.
    Print,
    /// Kept as the `--json` documents, in order, whatever format the options pick: a
    /// caller in the same process ([`super::embed`]). A merge keeps its plan before its
    /// summary.
    Keep(std::sync::Mutex<Vec<serde_json::Value>>),
}

impl Global {
    /// A pass reporting to `progress` that stops on Ctrl-C.
    pub(super) fn pass<'p>(
        &self,
        progress: &'p dyn ckpt_core::pass::Progress,
    ) -> ckpt_core::pass::Pass<'p> {
        ckpt_core::pass::Pass::new(progress).cancel_on(&self.cancel)
    }

    /// A progress bar labelled `what` ("reading", "merging", ...) counting bytes.
    pub(super) fn bar(&self, what: &str) -> super::progress::Bar {
        super::progress::Bar::new(what, self.quiet).watched(self.watch.clone())
    }

    /// A progress bar that counts items (`unit`: "blocks", ...) instead of bytes.
    pub(super) fn counting(&self, what: &str, unit: &str) -> super::progress::Bar {
        super::progress::Bar::counting(what, unit, self.quiet).watched(self.watch.clone())
    }

    /// Prints `report` in the format the options ask for, or keeps its document: the one
    /// way a command gives its result.
    pub(super) fn emit(&self, report: &dyn Report, format: &FormatArgs) -> Result<()> {
        match &self.out {
            Output::Print => print(&crate::reports::render(report, format.format())),
            Output::Keep(docs) => {
                docs.lock().expect("not poisoned").push(report.document());
                Ok(())
            }
        }
    }

    /// Prints `report`, the `i`th of several inputs' printed as they come, as a
    /// [`Sequence`](crate::reports::Sequence) of them shows it (not for JSON: a sequence is
    /// one document, and a kept result is JSON).
    pub(super) fn emit_part(
        &self,
        report: &dyn Report,
        i: usize,
        format: &FormatArgs,
    ) -> Result<()> {
        match &self.out {
            Output::Print => print(&crate::reports::Sequence::part(report, i, format.format())),
            Output::Keep(_) => unreachable!("a kept result is one JSON document"),
        }
    }

    /// The merge's plan before its pass: on stderr as text (stdout keeps the summary), or
    /// kept before the summary.
    pub(super) fn show_plan(&self, plan: &dyn Report) {
        match &self.out {
            Output::Print if !self.quiet => {
                eprint!("{}", crate::reports::render(plan, Format::Table));
            }
            Output::Print => {}
            Output::Keep(docs) => docs.lock().expect("not poisoned").push(plan.document()),
        }
    }

    /// The command line being run, quoted so it can be pasted.
    pub(super) fn command_line(&self) -> String {
        crate::reports::html::command_line(&self.argv)
    }

    /// Whether results are kept as JSON (so a command builds its one JSON document).
    pub(super) fn keeps(&self) -> bool {
        matches!(self.out, Output::Keep(_))
    }
}

/// `--json`, `--csv`, `--markdown`: every command that prints a result takes them, and
/// [`emit`] prints in the format they pick.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct FormatArgs {
    /// Print JSON (schema in docs/output.md) instead of a table.
    #[arg(long, group = "format")]
    pub json: bool,
    /// Print CSV.
    #[arg(long, group = "format")]
    pub csv: bool,
    /// Print a Markdown table.
    #[arg(long, group = "format")]
    pub markdown: bool,
}

impl FormatArgs {
    pub(super) fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else if self.csv {
            Format::Csv
        } else if self.markdown {
            Format::Markdown
        } else {
            Format::Table
        }
    }
}

/// A float format a `--dtype` names; each command takes those it can write (its
/// [`floats`] list), with the aliases users write (`fp16`, `half`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum FloatArg {
    #[value(name = "f16", aliases = ["fp16", "float16", "half"])]
    F16,
    #[value(name = "bf16", aliases = ["bfloat16"])]
    Bf16,
    #[value(name = "f32", aliases = ["fp32", "float32", "float"])]
    F32,
    #[value(name = "f64", aliases = ["fp64", "float64", "double"])]
    F64,
    #[value(name = "f8_e4m3", aliases = ["fp8", "e4m3"])]
    F8E4m3,
    #[value(name = "f8_e5m2", aliases = ["e5m2"])]
    F8E5m2,
    // ComfyUI's scaled fp8: the denoiser's linear weights in E4M3 (or E5M2) with a
    // per-tensor scale.
    #[value(name = "scaled-fp8", aliases = ["scaled_fp8", "scaled-f8_e4m3", "fp8-scaled"])]
    ScaledFp8,
    #[value(name = "scaled-f8_e5m2")]
    ScaledF8E5m2,
    // ComfyUI's per-layer formats (comfy-kitchen's): the denoiser's linear weights as codes
    // with their scales and a `.comfy_quant` record.
    #[value(name = "comfy-fp8", aliases = ["float8_e4m3fn", "comfy-f8_e4m3"])]
    ComfyFp8,
    #[value(name = "comfy-f8_e5m2", aliases = ["float8_e5m2"])]
    ComfyF8E5m2,
    #[value(name = "nvfp4")]
    Nvfp4,
    #[value(name = "mxfp8")]
    Mxfp8,
    #[value(name = "int8", aliases = ["int8_tensorwise", "comfy-int8"])]
    Int8,
}

/// The formats a rewrite (`fix`, `convert`) and a LoRA's factors are stored in.
pub(super) const PLAIN_FLOATS: &[FloatArg] = &[FloatArg::F16, FloatArg::Bf16, FloatArg::F32];

impl FloatArg {
    /// The format of the values (the FP8 format of a scaled one).
    pub(super) fn format(self) -> FloatFormat {
        match self {
            FloatArg::F16 => FloatFormat::F16,
            FloatArg::Bf16 => FloatFormat::BF16,
            FloatArg::F32 => FloatFormat::F32,
            FloatArg::F64 => FloatFormat::F64,
            FloatArg::F8E4m3 | FloatArg::ScaledFp8 => FloatFormat::F8E4M3,
            FloatArg::F8E5m2 | FloatArg::ScaledF8E5m2 => FloatFormat::F8E5M2,
            // The layers a per-layer format does not take stay in bf16.
            FloatArg::ComfyFp8
            | FloatArg::ComfyF8E5m2
            | FloatArg::Nvfp4
            | FloatArg::Mxfp8
            | FloatArg::Int8 => FloatFormat::BF16,
        }
    }

    /// The ComfyUI per-layer format, for those.
    pub(super) fn per_layer(self) -> Option<ckpt_read::comfy::Code> {
        use ckpt_read::comfy::Code;
        match self {
            FloatArg::ComfyFp8 => Some(Code::Fp8(FloatFormat::F8E4M3)),
            FloatArg::ComfyF8E5m2 => Some(Code::Fp8(FloatFormat::F8E5M2)),
            FloatArg::Nvfp4 => Some(Code::Nvfp4),
            FloatArg::Mxfp8 => Some(Code::Mxfp8),
            FloatArg::Int8 => Some(Code::Int8),
            _ => None,
        }
    }

    /// ComfyUI's scaled fp8.
    pub(super) fn scaled(self) -> bool {
        matches!(self, FloatArg::ScaledFp8 | FloatArg::ScaledF8E5m2)
    }
}

/// clap's parser for a `--dtype` that takes the formats `allowed` (by name or alias, in any
/// case with `ignore_case`); `--help` lists their names.
pub(super) fn floats(
    allowed: &'static [FloatArg],
) -> impl clap::builder::TypedValueParser<Value = FloatArg> {
    use clap::ValueEnum;
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(allowed.iter().filter_map(|f| f.to_possible_value()))
        .map(|name| {
            <FloatArg as ValueEnum>::from_str(&name, true)
                .expect("a value clap matched in the list")
        })
}

/// A `--blocks` or `--region` value: the selector, its form checked when the options are
/// read (its names are checked against the files' architecture later), and its text as
/// given (reports and recipes quote it).
#[derive(Debug, Clone)]
pub(super) struct BlockSet {
    pub text: String,
    pub selector: Selector,
}

/// clap's parser for [`BlockSet`].
pub(super) fn parse_block_set(text: &str) -> std::result::Result<BlockSet, SelectError> {
    Ok(BlockSet {
        text: text.to_string(),
        selector: Selector::parse(text)?,
    })
}

/// An open checkpoint and what it is.
pub(super) struct Model {
    pub ckpt: Checkpoint,
    pub detection: Detection,
}

impl Model {
    /// Opens a checkpoint; a pickle that names dangerous globals gets a loud warning (its
    /// tensors are still read: nothing in it is executed).
    pub(super) fn open(path: &Path) -> Result<Model> {
        let model = Self::open_unwarned(path)?;
        warn_dangerous(&model.ckpt);
        Ok(model)
    }

    /// Opens a checkpoint without the dangerous-pickle warning (`validate` reports it as an
    /// error finding instead); tensors of a diffusers folder that no rule maps are warned
    /// about here.
    pub(super) fn open_unwarned(path: &Path) -> Result<Model> {
        let ckpt = ckpt_core::catalog::diffusers::open(path)?;
        warn_left_out(&ckpt);
        let detection = detect(&ckpt);
        Ok(Model { ckpt, detection })
    }

    /// [`Model::open`] for a rewrite: with `keep_unmapped`, a diffusers folder's tensors no
    /// rule maps are read too, under `<folder>/<name>` (`--unmapped keep`).
    pub(super) fn open_for_rewrite(path: &Path, keep_unmapped: bool) -> Result<Model> {
        if !keep_unmapped {
            return Self::open(path);
        }
        let ckpt = ckpt_core::catalog::diffusers::open_keeping_unmapped(path)?;
        warn_dangerous(&ckpt);
        let detection = detect(&ckpt);
        Ok(Model { ckpt, detection })
    }

    pub(super) fn name(&self) -> String {
        self.ckpt.display_name()
    }

    /// "SD1 (LDM), high confidence" for headings.
    pub(super) fn describe(&self) -> String {
        let d = &self.detection;
        let mut s = match d.layout {
            Layout::Known(a) => format!("{}, {} confidence", a.label(), d.confidence.level.id()),
            Layout::Generic => "unknown layout".to_string(),
        };
        if d.scale > 1 {
            s.push_str(&format!(", 1/{} scale test checkpoint", d.scale));
        }
        s
    }

    /// The file as a comparison report heads it.
    pub(super) fn line(&self) -> crate::reports::sim::ModelLine {
        crate::reports::sim::ModelLine {
            name: self.name(),
            path: self.ckpt.path().display().to_string(),
            detection: self.describe(),
        }
    }
}

/// Prints the warning for a pickle with dangerous globals, to stderr.
pub(super) fn warn_dangerous(ckpt: &Checkpoint) {
    let Some(p) = ckpt.pickle() else { return };
    let names: Vec<String> = p
        .dangerous()
        .map(|g| format!("{} (byte {} of {})", g.dotted(), g.offset, p.stream))
        .collect();
    if !names.is_empty() {
        eprintln!(
            "WARNING: '{}' is a malicious or unsafe pickle: it calls {}. torch.load would run \
             it; ckpt-diff executed nothing and reads only its tensors. Do not open this file \
             with other tools; `ckpt-diff convert` makes a safe .safetensors copy.",
            ckpt.path().display(),
            names.join(", ")
        );
    }
}

/// Prints a warning for each component folder of a diffusers pipeline holding tensors that
/// no rule maps (so no command reads them), to stderr; a long list is cut short, `inspect`
/// prints it whole.
pub(super) fn warn_left_out(ckpt: &Checkpoint) {
    const SHOWN: usize = 600;
    for note in ckpt_core::catalog::diffusers::left_out(ckpt) {
        let note = crate::reports::sanitize(note);
        let shown = match note.char_indices().nth(SHOWN) {
            Some((at, _)) => format!("{}, ... (`ckpt-diff inspect` lists them all)", &note[..at]),
            None => note,
        };
        eprintln!(
            "WARNING: '{}': {shown}. The results and outputs of this command do not include \
             them.",
            ckpt.path().display()
        );
    }
}

/// The index the options name; by default `index.sqlite` in ckpt-diff's cache folder
/// (`$XDG_CACHE_HOME/ckpt-diff`, else `~/.cache/ckpt-diff`, `%LOCALAPPDATA%/ckpt-diff` on
/// Windows).
pub(super) fn open_index(path: Option<&Path>) -> Result<ckpt_ops::index::Index> {
    let p = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ckpt_read::sys::cache_dir().join("index.sqlite"));
    Ok(ckpt_ops::index::Index::open(&p)?)
}

/// Fingerprints the model at `path` for the index (`index add`, `lineage`), with a
/// progress bar.
pub(super) fn fingerprint(path: &Path, global: &Global) -> Result<ckpt_ops::index::NewEntry> {
    let model = Model::open(path)?;
    let bar = global.bar("fingerprinting");
    Ok(ckpt_ops::views::fingerprint::index_entry(
        path,
        &model.ckpt,
        &model.detection,
        &global.pass(&bar),
    )?)
}

/// Opens every path, in parallel (header reads only).
pub(super) fn open_all(paths: &[PathBuf]) -> Result<Vec<Model>> {
    use rayon::prelude::*;
    paths.par_iter().map(|p| Model::open(p)).collect()
}

/// `--arch` values: an architecture id, or `generic` for rows by key prefix (layouts the
/// catalog does not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ArchArg {
    Known(Arch),
    Generic,
}

/// clap's parser for `--arch`.
pub(super) fn parse_arch_arg(s: &str) -> std::result::Result<ArchArg, String> {
    if s.eq_ignore_ascii_case("generic") {
        return Ok(ArchArg::Generic);
    }
    Arch::parse(s).map(ArchArg::Known).ok_or_else(|| {
        format!(
            "unknown architecture '{s}'; use one of {}, or generic",
            arch_ids()
        )
    })
}

/// The ids `--arch` takes, for messages.
pub(super) fn arch_ids() -> String {
    Arch::ids()
}

/// The help of a `--arch` that picks the rows (generated from the catalog).
pub(super) fn arch_rows_help() -> String {
    format!(
        "Row layout ({}, or generic for rows by key prefix); detected from the files by default",
        Arch::ids()
    )
}

/// The help of a `--arch` that names the architecture to write (generated from the catalog).
pub(super) fn arch_help() -> String {
    let ids: Vec<&str> = Arch::all().iter().map(|a| a.id()).collect();
    match ids.split_last() {
        Some((last, rest)) => format!("Architecture: {} or {last}", rest.join(", ")),
        None => "Architecture".into(),
    }
}

/// The rows to report for `models`: their common architecture, or the forced one.
pub(super) fn choose_grouping(
    models: &[&Model],
    forced: Option<ArchArg>,
    command: &str,
) -> Result<Grouping> {
    let generic = |models: &[&Model]| {
        let keys: Vec<String> = models
            .iter()
            .flat_map(|m| {
                m.ckpt
                    .tensors()
                    .iter()
                    .map(|t| ckpt_core::catalog::canonical_key(&t.name).into_owned())
            })
            .collect();
        Grouping::generic(keys.iter().map(String::as_str))
    };
    match forced {
        Some(ArchArg::Known(a)) => return Ok(Grouping::for_arch(a)),
        Some(ArchArg::Generic) => return Ok(generic(models)),
        None => {}
    }
    let first = models[0];
    for m in &models[1..] {
        if m.detection.layout != first.detection.layout {
            // `fit` needs the block map of one architecture; the others can fall back.
            let hint = if command == "fit" {
                "Use a base and sources of the target's architecture"
            } else {
                "Pass `--arch generic` to compare them by key prefix anyway"
            };
            bail!(
                "'{}' is {} and '{}' is {}; `{command}` compares checkpoints of one architecture. \
                 {hint}",
                first.name(),
                describe_layout(first.detection.layout),
                m.name(),
                describe_layout(m.detection.layout),
            );
        }
        if m.detection.scale != first.detection.scale {
            bail!(
                "'{}' and '{}' have different widths (scale 1/{} vs 1/{}): their tensors cannot be compared",
                first.name(),
                m.name(),
                first.detection.scale,
                m.detection.scale
            );
        }
    }
    Ok(match first.detection.layout {
        Layout::Known(a) => Grouping::for_arch(a),
        Layout::Generic => generic(models),
    })
}

fn describe_layout(l: Layout) -> &'static str {
    match l {
        Layout::Known(a) => a.label(),
        Layout::Generic => "of a layout ckpt-diff does not know",
    }
}

/// Writes a command's output to stdout; a closed pipe is not an error.
pub(super) fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to standard output"),
    }
}
