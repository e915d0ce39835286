//! Which component and which merge block a key belongs to: the one table every command asks.
//!
//! **Components** are data (`data/components.toml`): the prefix of a (canonical) key says
//! which part of a checkpoint it is, the longest prefix winning (so the U-Net's module
//! prefixes under `model.diffusion_model.` win over a DiT's `model.diffusion_model.`); a key
//! no prefix starts is `other`.
//!
//! **Blocks** are each architecture's data (`data/archs/<id>.toml`, `[blocks]`): rules on
//! the key after `model.diffusion_model.`, each giving a fixed block (`M00`, Flux's `IN`) or
//! a numbered one (`input_blocks.N.` -> `IN{N}`). The conventions: SuperMerger's for the
//! U-Net (its 26- and 20-value weight lists; sd-mecha differs only in sending
//! `time_embed`/`label_emb` to `BASE`), SuperMerger's `BLOCKIDFLUX` and ComfyUI's
//! `ModelMergeFlux1` for Flux.1 and Chroma, ComfyUI's `ModelMergeSD3_2B` /
//! `ModelMergeSD35_Large` for SD3/SD3.5. Rows outside the denoiser take the block their
//! component names in the data (`BASE`, Flux's `CLIP` and `T5`) or none.

use std::fmt;

use super::registry::{RuleBlock, intern, registry, split_number};
use super::spec::ComponentKind;
use super::{Arch, DENOISER_PREFIX};

/// A component of a checkpoint (an index into `components.toml`, in its order).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Component(pub(crate) u16);

impl Component {
    fn info(self) -> &'static super::registry::ComponentInfo {
        &registry().components[self.0 as usize]
    }

    /// Every component, in report order.
    pub fn all() -> impl Iterator<Item = Component> {
        (0..registry().components.len()).map(|i| Component(i as u16))
    }

    /// The short name used on the command line and in JSON.
    pub fn id(self) -> &'static str {
        &self.info().id
    }

    /// What it is, unless an architecture names it otherwise.
    pub fn label(self) -> &'static str {
        &self.info().label
    }

    /// The component named `s` (its id or an alias, any case).
    pub fn parse(s: &str) -> Option<Component> {
        Component::all().find(|c| {
            let i = c.info();
            i.id.eq_ignore_ascii_case(s) || i.aliases.iter().any(|a| a.eq_ignore_ascii_case(s))
        })
    }

    /// The component whose id is `id` (exactly).
    pub fn named(id: &str) -> Option<Component> {
        Component::all().find(|c| c.id() == id)
    }

    /// Keys no component prefix starts: EMA copies, schedule buffers, anything unknown.
    pub fn other() -> Component {
        Component::all()
            .find(|c| c.info().kind == ComponentKind::Other)
            .expect("the registry checked that there is one")
    }

    /// The network that denoises: the U-Net or the DiT.
    pub fn is_denoiser(self) -> bool {
        self.info().kind == ComponentKind::Denoiser
    }

    /// A text encoder.
    pub fn is_text_encoder(self) -> bool {
        self.info().kind == ComponentKind::TextEncoder
    }

    /// The VAE.
    pub fn is_vae(self) -> bool {
        self.info().kind == ComponentKind::Vae
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl serde::Serialize for Component {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// A merge block, by its label (`IN00`, `M00`, `OUT11`, `D03`, Flux's `IN`, `BASE`): what an
/// architecture's data names it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block(&'static str);

impl Block {
    /// Every row outside the denoiser in the SD and SD3 lists.
    pub const BASE: Block = Block("BASE");

    /// The block labelled `label`.
    pub fn new(label: &str) -> Block {
        Block(intern(label))
    }

    pub fn label(self) -> &'static str {
        self.0
    }

    /// The number of a numbered block (`OUT07` -> 7).
    pub fn number(self) -> Option<u8> {
        split_number(self.0).map(|(_, n)| n)
    }

    /// Whether `name` has the form of a block (any case): `BASE`, a numbered block of some
    /// architecture's series (`D07`, `IN3`, also `D19`, which Flux.1 then refuses), another
    /// numbered label (`M00`) or a block alias (`MID`). A DiT's `IN`, `OUT`, `CLIP` and `T5`
    /// are names an architecture resolves ([`Arch::block_named`]), since `IN` and `OUT` are
    /// also the groups of the U-Net's blocks.
    pub fn is_block_name(name: &str) -> bool {
        let upper = name.trim().to_ascii_uppercase();
        upper == Block::BASE.0
            || Arch::all().iter().any(|a| {
                let info = a.info();
                info.spec.blocks.aliases.contains_key(&upper)
                    || info
                        .order
                        .iter()
                        .any(|b| b.0 == upper && b.number().is_some())
                    || info.rules.iter().any(|r| match &r.block {
                        RuleBlock::Series { series, .. } => {
                            split_number(&upper).is_some_and(|(s, _)| s == series.as_str())
                        }
                        RuleBlock::Fixed(_) => false,
                    })
            })
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl serde::Serialize for Block {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// Whether a key is a DiT diffuser key stored bare, as the original releases (BFL's Flux
/// files, Chroma) name them; [`crate::catalog::canonical_key`] adds [`DENOISER_PREFIX`].
pub fn is_bare_dit_key(key: &str) -> bool {
    registry().bare.iter().any(|p| key.starts_with(p.as_str()))
}

/// The component of a (canonical) key.
pub fn component_of(key: &str) -> Component {
    registry()
        .prefixes
        .iter()
        .find(|(p, _)| key.starts_with(p.as_str()))
        .map_or_else(Component::other, |&(_, c)| c)
}

/// The block of a (canonical) denoiser key of `arch`; `None` for a key no rule covers (or
/// numbered past the architecture's blocks) and for keys outside the denoiser.
pub(crate) fn denoiser_block(arch: Arch, key: &str) -> Option<Block> {
    let rest = key.strip_prefix(DENOISER_PREFIX)?;
    let rule = arch
        .info()
        .rules
        .iter()
        .find(|r| rest.starts_with(r.prefix.as_str()))?;
    match &rule.block {
        RuleBlock::Fixed(b) => Some(*b),
        RuleBlock::Series { series, count } => {
            let after = &rest[rule.prefix.len()..];
            let n = after.split('.').next()?.parse::<u8>().ok()?;
            (n < *count).then(|| Block::new(&format!("{series}{n:02}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch(id: &str) -> Arch {
        Arch::parse(id).unwrap()
    }

    #[test]
    fn convention() {
        let k = |s: &str| format!("model.diffusion_model.{s}");
        let sd1 = arch("sd1");
        let xl = arch("sdxl");
        let b = |a: Arch, key: &str| a.block_of(key).map(|b| b.to_string());
        assert_eq!(b(sd1, &k("time_embed.0.weight")).as_deref(), Some("IN00"));
        assert_eq!(b(xl, &k("label_emb.0.0.weight")).as_deref(), Some("IN00"));
        assert_eq!(
            b(sd1, &k("input_blocks.10.0.emb_layers.1.bias")).as_deref(),
            Some("IN10")
        );
        assert_eq!(
            b(sd1, &k("middle_block.1.proj_in.weight")).as_deref(),
            Some("M00")
        );
        assert_eq!(
            b(sd1, &k("output_blocks.3.1.norm.bias")).as_deref(),
            Some("OUT03")
        );
        assert_eq!(b(sd1, &k("out.2.weight")).as_deref(), Some("OUT11"));
        assert_eq!(b(xl, &k("out.0.bias")).as_deref(), Some("OUT08"));
        // `to_out.` and `proj_out` must not look like the final `out.`.
        assert_eq!(
            b(
                sd1,
                &k("output_blocks.11.1.transformer_blocks.0.attn1.to_out.0.weight")
            )
            .as_deref(),
            Some("OUT11")
        );
        assert_eq!(b(sd1, "first_stage_model.decoder.conv_out.weight"), None);
        assert_eq!(b(sd1, &k("input_blocks.12.0.op.weight")), None);
    }

    #[test]
    fn dit_blocks() {
        let k = |s: &str| format!("model.diffusion_model.{s}");
        let flux = arch("flux");
        let b = |a: Arch, key: &str| a.block_of(key).map(|b| b.to_string());
        assert_eq!(
            b(flux, &k("double_blocks.18.img_attn.qkv.weight")).as_deref(),
            Some("D18")
        );
        assert_eq!(b(flux, &k("double_blocks.19.x")), None);
        assert_eq!(
            b(flux, &k("single_blocks.0.linear1.weight")).as_deref(),
            Some("S00")
        );
        assert_eq!(
            b(flux, &k("guidance_in.in_layer.bias")).as_deref(),
            Some("IN")
        );
        assert_eq!(
            b(flux, &k("distilled_guidance_layer.norms.0.scale")).as_deref(),
            Some("IN")
        );
        assert_eq!(
            b(flux, &k("final_layer.linear.weight")).as_deref(),
            Some("OUT")
        );
        let sd3 = arch("sd3");
        assert_eq!(
            b(sd3, &k("joint_blocks.23.context_block.attn.qkv.weight")).as_deref(),
            Some("J23")
        );
        assert_eq!(b(sd3, &k("pos_embed")).as_deref(), Some("IN"));
        assert_eq!(b(sd3, "vae.decoder.conv_in.weight"), None);
    }

    #[test]
    fn components() {
        let c = |key: &str| component_of(key).id();
        assert_eq!(c("conditioner.embedders.1.model.ln_final.weight"), "te2");
        assert_eq!(c("model_ema.decay"), "other");
        assert_eq!(
            c("model.diffusion_model.double_blocks.0.img_mod.lin.bias"),
            "diffuser"
        );
        assert_eq!(c("model.diffusion_model.input_blocks.0.0.weight"), "unet");
        assert_eq!(c("text_encoders.t5xxl.transformer.shared.weight"), "t5xxl");
        assert_eq!(c("vae.encoder.conv_in.weight"), "vae");
        assert_eq!(Component::parse("T5"), Component::named("t5xxl"));
        assert!(Block::is_block_name("d7") && Block::is_block_name("M00"));
        assert!(!Block::is_block_name("S") && !Block::is_block_name("X1"));
        assert!(!Block::is_block_name("IN") && Block::is_block_name("mid"));
    }
}
