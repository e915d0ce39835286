//! `ckpt-diff synth model|family`: synthetic checkpoints with real key layouts.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Outcome;
use super::common::{FloatArg, Global, floats, print};
use ckpt_core::catalog::{Arch, Component};
use ckpt_ops::synth::{self, KeyFilter, Layout, Synthetic, Variant, family};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// One checkpoint: the base of --seed, plus any --delta.
    Model {
        /// Output file (safetensors).
        out: PathBuf,
        #[command(flatten)]
        layout: LayoutArgs,
        /// Add a delta: SEED:SIZE, the size relative to each weight's spread (repeatable).
        #[arg(long, value_name = "SEED:SIZE", value_parser = parse_delta)]
        delta: Vec<(u64, f64)>,
    },
    /// A family in DIR: base, fine-tunes, and merges of them, with family.json.
    Family {
        /// Output folder (created if needed).
        dir: PathBuf,
        #[command(flatten)]
        layout: LayoutArgs,
        /// Number of fine-tunes.
        #[arg(long, default_value_t = 3)]
        finetunes: usize,
        /// Typical size of a fine-tune's delta, relative to each weight's spread.
        #[arg(long, default_value_t = 0.1)]
        size: f64,
    },
}

#[derive(Debug, clap::Args)]
struct LayoutArgs {
    #[arg(long, default_value = "sd1", value_parser = parse_arch, help = super::common::arch_help())]
    arch: Arch,
    /// Divide every dimension of 128 or more by this (1 = real size: 2 GB for SD1 fp16).
    #[arg(long, default_value_t = 1)]
    scale: u32,
    /// Float dtype: f16, bf16, f32, f8_e4m3, f8_e5m2, or scaled-fp8 (ComfyUI's: the
    /// diffuser's matrices in F8_E4M3 with a per-tensor scale_weight, the rest in BF16).
    #[arg(long, default_value = "f16", value_parser = floats(SYNTH_FLOATS), ignore_case = true)]
    dtype: FloatArg,
    /// Seed of the base weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Release variant: base; inpainting, pix2pix or depth (SD's U-Net input channels);
    /// schnell, fill or control (Flux.1: no guidance embedding, Fill's or Canny/Depth's
    /// wider img_in); layered (Qwen-Image Layered's extra timestep embedding).
    #[arg(long, default_value = "base", value_parser = parse_variant)]
    variant: String,
    /// Components to write (comma-separated: unet, te1, te2, vae for SD; diffuser, clip_l,
    /// clip_g, t5xxl, vae for Flux and SD3; diffuser, qwen3_4b, qwen3_8b, qwen25_7b or
    /// mistral3_24b, vae for the 2026 models); default all.
    #[arg(long, value_delimiter = ',')]
    components: Vec<String>,
    /// Add EMA weights (SD1 only).
    #[arg(long)]
    ema: bool,
    /// Add the DDPM schedule buffers.
    #[arg(long)]
    scheduler: bool,
    /// Add SDXL v-prediction markers.
    #[arg(long)]
    vpred_markers: bool,
    /// Name the text encoder keys the old way (no `text_model.`).
    #[arg(long)]
    old_clip_names: bool,
    /// Leave out the optional text-encoder layers (a pruned SDXL file).
    #[arg(long)]
    prune_te: bool,
    /// Leave out position_ids.
    #[arg(long)]
    no_position_ids: bool,
    /// Write zeros for the weights (a sparse file, instant even at full size): for layout
    /// and detection tests.
    #[arg(long)]
    zeros: bool,
    /// Only the keys this regular expression finds (e.g. `attn1\.to_[qkv]`).
    #[arg(long, value_name = "REGEX", value_parser = regex::Regex::new)]
    keys: Option<regex::Regex>,
    /// Diffuser keys without `model.diffusion_model.` (Flux and SD3; BFL's own files).
    #[arg(long)]
    bare: bool,
}

/// The formats `synth` writes.
const SYNTH_FLOATS: &[FloatArg] = &[
    FloatArg::F16,
    FloatArg::Bf16,
    FloatArg::F32,
    FloatArg::F8E4m3,
    FloatArg::F8E5m2,
    FloatArg::ScaledFp8,
];

/// clap's parser for `--arch`: an architecture of the catalog, by id or alias.
fn parse_arch(text: &str) -> std::result::Result<Arch, String> {
    Arch::parse(text).ok_or_else(|| {
        format!(
            "unknown architecture; use one of {}",
            super::common::arch_ids()
        )
    })
}

/// clap's parser for `--variant`: a variant some architecture of the catalog has (whether
/// `--arch` has it is checked with the other options).
fn parse_variant(text: &str) -> std::result::Result<String, String> {
    if Arch::all()
        .iter()
        .any(|&a| Variant::named(a, text).is_some())
    {
        Ok(text.to_string())
    } else {
        Err(format!(
            "unknown variant; use {}",
            Variant::names().join(", ")
        ))
    }
}

/// clap's parser for `--delta SEED:SIZE`.
fn parse_delta(text: &str) -> std::result::Result<(u64, f64), String> {
    let (seed, size) = text.split_once(':').ok_or("expected SEED:SIZE")?;
    let seed = seed.parse().map_err(|_| "bad seed: expected SEED:SIZE")?;
    let size = size.parse().map_err(|_| "bad size: expected SEED:SIZE")?;
    Ok((seed, size))
}

impl LayoutArgs {
    fn layout(&self) -> Result<Layout> {
        let arch = self.arch;
        if self.scale == 0 || !self.scale.is_power_of_two() || self.scale > 64 {
            bail!("--scale must be a power of two between 1 and 64");
        }
        let mut layout = Layout::new(arch, self.scale, self.dtype.format());
        layout.scaled_fp8 = self.dtype.scaled();
        layout.variant = Variant::named(arch, &self.variant).with_context(|| {
            format!(
                "--variant {}: {} has no such variant",
                self.variant,
                arch.label()
            )
        })?;
        if self.bare && !arch.bare_layout() {
            bail!("--bare: {} keys always carry their prefix", arch.label());
        }
        layout.bare = self.bare;
        if !self.components.is_empty() {
            layout.components = self
                .components
                .iter()
                .map(|c| {
                    Component::parse(c)
                        .filter(|c| *c != Component::other() && arch.components().contains(c))
                        .with_context(|| {
                            let names: Vec<&str> =
                                arch.components().iter().map(|c| c.id()).collect();
                            format!(
                                "--components: '{c}' is not a component of {}; use {}",
                                arch.label(),
                                names.join(", ")
                            )
                        })
                })
                .collect::<Result<_>>()?;
        }
        if self.ema && !arch.has_ema() {
            bail!("--ema: the catalog lists no EMA keys for {}", arch.label());
        }
        layout.ema = self.ema;
        layout.scheduler = self.scheduler;
        layout.vpred_markers = self.vpred_markers;
        layout.old_clip_names = self.old_clip_names;
        layout.prune_text_encoders = self.prune_te;
        layout.position_ids = !self.no_position_ids;
        layout.zero_data = self.zeros;
        layout.keys = self.keys.clone().map(KeyFilter::from);
        Ok(layout)
    }
}

pub(super) fn run(args: Args, global: &Global) -> Result<Outcome> {
    match args.what {
        What::Model { out, layout, delta } => {
            let seed = layout.seed;
            let layout = layout.layout()?;
            let mut model = Synthetic::base(layout.arch, seed);
            for &(s, size) in &delta {
                model = model.plus_delta(s, synth::uniform(layout.arch, size));
            }
            let bar = global.bar("writing");
            synth::write(&out, &layout, &model, &[], &bar, &global.cancel)?;
            drop(bar);
            if !global.quiet {
                eprintln!(
                    "wrote {} ({})",
                    out.display(),
                    crate::reports::bytes(std::fs::metadata(&out)?.len())
                );
            }
        }
        What::Family {
            dir,
            layout,
            finetunes,
            size,
        } => {
            let seed = layout.seed;
            let layout = layout.layout()?;
            let bar =
                |name: &str| -> Box<dyn ckpt_core::pass::Progress> { Box::new(global.bar(name)) };
            let members =
                family::write_family(&dir, &layout, seed, finetunes, size, &bar, &global.cancel)?;
            let json =
                crate::reports::json::document("synth", family::manifest(&layout, seed, &members));
            let path = dir.join("family.json");
            ckpt_core::writer::write_small(&path, json.as_bytes())
                .with_context(|| format!("writing '{}'", path.display()))?;
            if !global.quiet {
                let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                print(&format!(
                    "wrote {} checkpoints to {}: {}\n",
                    members.len(),
                    dir.display(),
                    names.join(", ")
                ))?;
            }
        }
    }
    Ok(Outcome::Ok)
}
