//! ckpt-diff's views and operations: each turns one pass over its inputs into a plain
//! result that the command line renders. Nothing here prints.
//!
//! * [`views`]: similarity, L2 maps, fitting, validation, inspection, component hashes;
//! * [`merge`]: the recipe language, its plan and the streamed merge;
//! * [`lora`]: LoRA networks read, baked, extracted, merged and converted;
//! * [`fix`]: repairs planned from validation's findings;
//! * [`hash`], [`sketch`], [`index`]: file hashes, fingerprints and the lineage index;
//! * [`cache`]: what is kept between runs, where the caller says;
//! * [`synth`]: synthetic checkpoints with the real layouts (test data).

pub mod cache;
pub mod fix;
pub mod gguf;
pub mod hash;
pub mod index;
pub mod lora;
pub mod merge;
pub mod sketch;
pub mod synth;
pub mod views;

/// The architecture `id` (tests name architectures by their catalog ids).
#[cfg(test)]
pub(crate) fn arch(id: &str) -> ckpt_core::catalog::Arch {
    ckpt_core::catalog::Arch::parse(id).unwrap_or_else(|| panic!("no architecture {id}"))
}
