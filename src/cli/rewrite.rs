//! What `fix` and `convert` share: the options of a rewrite into a new file, and the
//! wording of the commands that repair what `validate` finds (which `validate` and `fix`
//! print).

use super::common::{FloatArg, floats};

/// The formats `fix` and `convert` write.
const REWRITE_FLOATS: &[FloatArg] = &[
    FloatArg::F16,
    FloatArg::Bf16,
    FloatArg::F32,
    FloatArg::ComfyFp8,
    FloatArg::ComfyF8E5m2,
    FloatArg::Int8,
    FloatArg::Nvfp4,
    FloatArg::Mxfp8,
];
use ckpt_ops::fix::{Options, Unfixed};
use ckpt_ops::views::validate::Remedy;

/// The options of a rewrite (`fix`, `convert`).
#[derive(Debug, Clone, clap::Args)]
pub(super) struct RewriteArgs {
    /// Store floats as f16, bf16 or f32 (values beyond the range are clamped), or the
    /// denoiser's linear weights in one of ComfyUI's per-layer formats, comfy-fp8,
    /// comfy-f8_e5m2, int8, nvfp4 or mxfp8 (quantized as comfy-kitchen does; the other
    /// floats as stored, bf16 where they were quantized).
    #[arg(long, value_parser = floats(REWRITE_FLOATS), ignore_case = true)]
    dtype: Option<FloatArg>,
    /// Leave out the EMA copy of the U-Net.
    #[arg(long)]
    drop_ema: bool,
    /// Leave out keys the architecture does not have.
    #[arg(long)]
    drop_junk: bool,
    /// Leave out DDPM schedule buffers.
    #[arg(long)]
    drop_scheduler: bool,
    /// A diffusers folder's tensors that no rule maps to a single-file name: without this
    /// option the rewrite is refused (they would be lost); `drop` writes the file without
    /// them, listed; `keep` writes them unchanged under `<folder>/<name>`.
    #[arg(long, value_enum)]
    unmapped: Option<UnmappedArg>,
}

/// `--unmapped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum UnmappedArg {
    /// Write the file without them (they stay listed).
    Drop,
    /// Write them unchanged under `<folder>/<name>`.
    Keep,
}

impl RewriteArgs {
    /// Whether inputs are opened keeping a folder's unmapped tensors (`--unmapped keep`).
    pub(super) fn keep_unmapped(&self) -> bool {
        self.unmapped == Some(UnmappedArg::Keep)
    }

    /// Refuses to rewrite `ckpt` when it is a diffusers folder holding tensors that no rule
    /// maps, unless `--unmapped drop` said to leave them out.
    pub(super) fn check_unmapped(&self, ckpt: &ckpt_read::Checkpoint) -> anyhow::Result<()> {
        let notes: Vec<&str> = ckpt_core::catalog::diffusers::left_out(ckpt).collect();
        if notes.is_empty() || self.unmapped.is_some() {
            return Ok(());
        }
        anyhow::bail!(
            "'{}': {}; the output would lose them. Give --unmapped keep to write them \
             unchanged under '<folder>/<name>' (no loader reads them there), or --unmapped \
             drop to write the file without them",
            ckpt.path().display(),
            crate::reports::sanitize(&notes.join("; "))
        )
    }
}

impl RewriteArgs {
    /// The library's options: these, with `fill_optional` and `overwrite` of the command.
    pub(super) fn options(&self, fill_optional: bool, overwrite: bool) -> Options {
        let quant = self.dtype.and_then(FloatArg::per_layer);
        Options {
            dtype: self.dtype.filter(|_| quant.is_none()).map(FloatArg::format),
            quant,
            drop_ema: self.drop_ema,
            drop_unknown: self.drop_junk,
            drop_scheduler: self.drop_scheduler,
            fill_optional,
            overwrite,
        }
    }
}

/// The command that repairs a finding (what `validate` prints after "to fix:").
pub(super) fn remedy(r: Remedy) -> String {
    match r {
        Remedy::StoreFloatsInOneFormat => "fix --dtype f16 (or bf16, f32) stores them all in one",
        Remedy::StoreFloatsAsF16 => "fix --dtype f16",
        Remedy::Rewrite => "fix rewrites the file without them",
        Remedy::RewriteMetadata => "fix stores them as strings",
        Remedy::PatchNonFinite => {
            "fix --base BASE takes those values from BASE (without --base they become 0)"
        }
        Remedy::AddComponents => "fix --base FULL.safetensors copies them in",
        Remedy::AddMissing => "fix --base BASE.safetensors copies them from a complete checkpoint",
        Remedy::FillOptional => "fix --base BASE --fill-optional restores them",
        Remedy::ReplaceShapes => {
            "fix --base BASE.safetensors takes those tensors from a complete checkpoint"
        }
        Remedy::DropEma => "fix --drop-ema",
        Remedy::DropUnknown => "fix --drop-junk",
        Remedy::DropScheduler => "fix --drop-scheduler",
        Remedy::InsertPositionIds => "fix inserts it (int64 0..76)",
        Remedy::ResetPositionIds => "fix resets it to int64 0..76",
        Remedy::RenameKeys => "fix renames them to the current names",
        Remedy::Convert => "convert FILE -o OUT.safetensors writes its tensors as safetensors",
    }
    .to_string()
}

/// A problem `fix` left, and the option that would have repaired it.
pub(super) fn unfixed(u: &Unfixed) -> String {
    match u {
        Unfixed::WrongShape { key, shape } => {
            format!("{key} has shape {shape:?}; give --base to replace it")
        }
        Unfixed::Missing { key } => format!("{key} is missing; give --base to add it"),
    }
}
