//! Which component and which merge block a key belongs to: the one table every command asks.
//!
//! **Components.** The prefix of a (canonical) key says which part of a checkpoint it is:
//!
//! | prefix | component |
//! |---|---|
//! | `model.diffusion_model.{input_blocks,middle_block,output_blocks,time_embed,label_emb,out}.` | `unet` (SD1/SD2/SDXL) |
//! | any other `model.diffusion_model.` | `diffuser` (Flux.1, Chroma, SD3/SD3.5) |
//! | `cond_stage_model.`, `conditioner.embedders.0.` | `te1` (CLIP ViT-L; SD2: OpenCLIP ViT-H) |
//! | `conditioner.embedders.1.` | `te2` (SDXL's OpenCLIP ViT-bigG) |
//! | `text_encoders.clip_l.`, `text_encoders.clip_g.`, `text_encoders.t5xxl.` | `clip_l`, `clip_g`, `t5xxl` |
//! | `first_stage_model.`, `vae.` | `vae` |
//!
//! **Blocks**, after `model.diffusion_model.`:
//!
//! * SD1/SD2/SDXL, SuperMerger's convention (its 26- and 20-value weight lists):
//!   `time_embed.`/`label_emb.` → `IN00`, `input_blocks.N.` → `IN{N}`, `middle_block.` → `M00`,
//!   `output_blocks.N.` → `OUT{N}`, `out.` → the last OUT block; every key outside the U-Net
//!   → `BASE`. sd-mecha differs only in sending `time_embed`/`label_emb` to `BASE`;
//!   SuperMerger between 2023-07 and 2025-11 sent SD1 `time_embed` to `OUT11`.
//! * Flux.1 and Chroma, SuperMerger's `BLOCKIDFLUX` and ComfyUI's `ModelMergeFlux1`:
//!   `double_blocks.N.` → `D{N}`, `single_blocks.N.` → `S{N}`, `img_in.`, `txt_in.`,
//!   `time_in.`, `vector_in.`, `guidance_in.` (and Chroma's `distilled_guidance_layer.`) →
//!   `IN`, `final_layer.` → `OUT`; CLIP-L → `CLIP`, T5-XXL → `T5`; the VAE has no block (not
//!   merged by block weights, as in SuperMerger).
//! * SD3/SD3.5, ComfyUI's `ModelMergeSD3_2B` / `ModelMergeSD35_Large`: `joint_blocks.N.` →
//!   `J{N}`, `pos_embed`, `x_embedder.`, `context_embedder.`, `y_embedder.`, `t_embedder.` →
//!   `IN`, `final_layer.` → `OUT`; everything outside the diffuser → `BASE`.

use std::fmt;

/// A component of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// The SD1/SD2/SDXL U-Net.
    Unet,
    /// The first (SD1/SD2: only) text encoder of SD1/SD2/SDXL.
    Te1,
    /// SDXL's second text encoder (OpenCLIP bigG).
    Te2,
    Vae,
    /// EMA copies, scheduler buffers, markers, and anything unrecognised.
    Other,
    /// The denoiser of a DiT (Flux.1, Chroma, SD3/SD3.5).
    Diffuser,
    ClipL,
    ClipG,
    #[serde(rename = "t5xxl")]
    T5xxl,
}

impl Component {
    pub const ALL: [Component; 9] = [
        Component::Unet,
        Component::Te1,
        Component::Te2,
        Component::Vae,
        Component::Other,
        Component::Diffuser,
        Component::ClipL,
        Component::ClipG,
        Component::T5xxl,
    ];

    /// The short name used on the command line and in JSON.
    pub fn id(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::Te1 => "te1",
            Component::Te2 => "te2",
            Component::Vae => "vae",
            Component::Other => "other",
            Component::Diffuser => "diffuser",
            Component::ClipL => "clip_l",
            Component::ClipG => "clip_g",
            Component::T5xxl => "t5xxl",
        }
    }

    pub fn parse(s: &str) -> Option<Component> {
        Component::ALL
            .into_iter()
            .find(|c| c.id().eq_ignore_ascii_case(s))
    }

    /// The network that denoises: the U-Net or the DiT.
    pub fn is_denoiser(self) -> bool {
        matches!(self, Component::Unet | Component::Diffuser)
    }

    /// A text encoder.
    pub fn is_text_encoder(self) -> bool {
        matches!(
            self,
            Component::Te1
                | Component::Te2
                | Component::ClipL
                | Component::ClipG
                | Component::T5xxl
        )
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// A merge block: SuperMerger's names for the U-Net, SuperMerger's and ComfyUI's for DiTs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Block {
    /// Every row outside the denoiser (SD1/SD2/SDXL, SD3).
    Base,
    In(u8),
    Mid,
    Out(u8),
    /// A DiT's input embeddings (`IN`).
    Embed,
    /// Flux's double-stream blocks (`D00`..).
    Double(u8),
    /// Flux's single-stream blocks (`S00`..).
    Single(u8),
    /// SD3's joint blocks (`J00`..).
    Joint(u8),
    /// A DiT's final layer (`OUT`).
    Final,
    /// Flux's CLIP-L text encoder (`CLIP`).
    Clip,
    /// Flux's T5-XXL text encoder (`T5`).
    T5,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Block::Base => f.write_str("BASE"),
            Block::In(n) => write!(f, "IN{n:02}"),
            Block::Mid => f.write_str("M00"),
            Block::Out(n) => write!(f, "OUT{n:02}"),
            Block::Embed => f.write_str("IN"),
            Block::Double(n) => write!(f, "D{n:02}"),
            Block::Single(n) => write!(f, "S{n:02}"),
            Block::Joint(n) => write!(f, "J{n:02}"),
            Block::Final => f.write_str("OUT"),
            Block::Clip => f.write_str("CLIP"),
            Block::T5 => f.write_str("T5"),
        }
    }
}

impl serde::Serialize for Block {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Block {
    /// Parses a numbered block: `IN00` (also `IN0`), `M00` (also `MID`), `OUT11`, `D03`,
    /// `S37`, `J12`, and `BASE`; case-insensitive. The DiT's `IN`, `OUT`, `CLIP` and `T5`
    /// are names an architecture resolves ([`crate::catalog::Arch::block_named`]), since
    /// `IN` and `OUT` are also the groups of the U-Net's blocks.
    pub fn parse(s: &str) -> Option<Block> {
        let u = s.trim().to_ascii_uppercase();
        match u.as_str() {
            "BASE" => return Some(Block::Base),
            "M00" | "MID" | "MID00" | "MID0" | "M0" => return Some(Block::Mid),
            _ => {}
        }
        let num = |rest: &str| rest.parse::<u8>().ok().filter(|_| !rest.is_empty());
        for (prefix, make) in [
            ("IN", Block::In as fn(u8) -> Block),
            ("OUT", Block::Out),
            ("D", Block::Double),
            ("S", Block::Single),
            ("J", Block::Joint),
        ] {
            if let Some(rest) = u.strip_prefix(prefix)
                && rest.bytes().all(|b| b.is_ascii_digit())
            {
                return num(rest).map(make);
            }
        }
        None
    }

    /// The blocks of a U-Net with `depth` input and output blocks, in SuperMerger's order:
    /// `BASE, IN00..IN{depth-1}, M00, OUT00..OUT{depth-1}`.
    pub fn merge_order(depth: u8) -> Vec<Block> {
        let mut v = vec![Block::Base];
        v.extend((0..depth).map(Block::In));
        v.push(Block::Mid);
        v.extend((0..depth).map(Block::Out));
        v
    }

    /// Whether the block is part of the denoiser (as opposed to `BASE`, `CLIP`, `T5`).
    pub fn in_denoiser(self) -> bool {
        !matches!(self, Block::Base | Block::Clip | Block::T5)
    }
}

/// The block structure of an architecture's denoiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocks {
    /// SD1/SD2/SDXL: `depth` input and output blocks.
    Unet { depth: u8 },
    /// Flux.1 and Chroma: double- and single-stream blocks.
    Flux { double: u8, single: u8 },
    /// SD3/SD3.5: joint blocks.
    Mmdit { joint: u8 },
}

/// How a prefix rule assigns a block.
#[derive(Clone, Copy, Debug)]
enum BlockRule {
    /// Always this block.
    Fixed(Block),
    /// `IN{N}` with N the number right after the prefix.
    InNumbered,
    /// `OUT{N}` with N the number right after the prefix.
    OutNumbered,
    /// The last output block of the U-Net.
    LastOut,
    DoubleNumbered,
    SingleNumbered,
    JointNumbered,
}

/// The prefix of every denoiser key in the single-file layouts (U-Net and DiT alike).
pub const DENOISER_PREFIX: &str = "model.diffusion_model.";

/// The U-Net convention, as data. Prefixes are disjoint.
const UNET_TABLE: &[(&str, BlockRule)] = &[
    ("time_embed.", BlockRule::Fixed(Block::In(0))),
    ("label_emb.", BlockRule::Fixed(Block::In(0))),
    ("input_blocks.", BlockRule::InNumbered),
    ("middle_block.", BlockRule::Fixed(Block::Mid)),
    ("output_blocks.", BlockRule::OutNumbered),
    ("out.", BlockRule::LastOut),
];

/// Flux.1 and Chroma.
const FLUX_TABLE: &[(&str, BlockRule)] = &[
    ("double_blocks.", BlockRule::DoubleNumbered),
    ("single_blocks.", BlockRule::SingleNumbered),
    ("img_in.", BlockRule::Fixed(Block::Embed)),
    ("txt_in.", BlockRule::Fixed(Block::Embed)),
    ("time_in.", BlockRule::Fixed(Block::Embed)),
    ("vector_in.", BlockRule::Fixed(Block::Embed)),
    ("guidance_in.", BlockRule::Fixed(Block::Embed)),
    ("distilled_guidance_layer.", BlockRule::Fixed(Block::Embed)),
    ("final_layer.", BlockRule::Fixed(Block::Final)),
];

/// SD3/SD3.5.
const MMDIT_TABLE: &[(&str, BlockRule)] = &[
    ("joint_blocks.", BlockRule::JointNumbered),
    ("pos_embed", BlockRule::Fixed(Block::Embed)),
    ("x_embedder.", BlockRule::Fixed(Block::Embed)),
    ("context_embedder.", BlockRule::Fixed(Block::Embed)),
    ("y_embedder.", BlockRule::Fixed(Block::Embed)),
    ("t_embedder.", BlockRule::Fixed(Block::Embed)),
    ("final_layer.", BlockRule::Fixed(Block::Final)),
];

/// Whether a key (after [`DENOISER_PREFIX`]) is one of the U-Net's modules.
fn is_unet_module(rest: &str) -> bool {
    UNET_TABLE.iter().any(|(p, _)| rest.starts_with(p))
}

/// Whether a key is a DiT diffuser key stored bare, as the original releases (BFL's Flux
/// files, Chroma) name them; [`crate::catalog::canonical_key`] adds [`DENOISER_PREFIX`].
pub(crate) fn is_bare_dit_key(key: &str) -> bool {
    FLUX_TABLE
        .iter()
        .chain(MMDIT_TABLE)
        .any(|(p, _)| key.starts_with(p))
}

/// Component prefixes of the single-file layouts (the denoiser's is decided by what follows
/// it, see [`component_of`]).
const COMPONENT_TABLE: &[(&str, Component)] = &[
    ("cond_stage_model.", Component::Te1),
    ("conditioner.embedders.0.", Component::Te1),
    ("conditioner.embedders.1.", Component::Te2),
    ("first_stage_model.", Component::Vae),
    ("text_encoders.clip_l.", Component::ClipL),
    ("text_encoders.clip_g.", Component::ClipG),
    ("text_encoders.t5xxl.", Component::T5xxl),
    ("vae.", Component::Vae),
];

/// The component of a (canonical) key.
pub fn component_of(key: &str) -> Component {
    if let Some(rest) = key.strip_prefix(DENOISER_PREFIX) {
        return if is_unet_module(rest) {
            Component::Unet
        } else {
            Component::Diffuser
        };
    }
    COMPONENT_TABLE
        .iter()
        .find(|(p, _)| key.starts_with(p))
        .map(|&(_, c)| c)
        .unwrap_or(Component::Other)
}

/// The block of a (canonical) denoiser key for a denoiser of this structure; `None` for a
/// key no rule covers (or numbered past the architecture's blocks) and for keys outside
/// the denoiser.
pub(crate) fn denoiser_block(key: &str, blocks: Blocks) -> Option<Block> {
    let rest = key.strip_prefix(DENOISER_PREFIX)?;
    let table = match blocks {
        Blocks::Unet { .. } => UNET_TABLE,
        Blocks::Flux { .. } => FLUX_TABLE,
        Blocks::Mmdit { .. } => MMDIT_TABLE,
    };
    let (prefix, rule) = table.iter().find(|(p, _)| rest.starts_with(p))?;
    let after = &rest[prefix.len()..];
    let number = |limit: u8| -> Option<u8> {
        let digits = after.split('.').next()?;
        digits.parse::<u8>().ok().filter(|&n| n < limit)
    };
    match (*rule, blocks) {
        (BlockRule::Fixed(b), _) => Some(b),
        (BlockRule::InNumbered, Blocks::Unet { depth }) => number(depth).map(Block::In),
        (BlockRule::OutNumbered, Blocks::Unet { depth }) => number(depth).map(Block::Out),
        (BlockRule::LastOut, Blocks::Unet { depth }) => Some(Block::Out(depth - 1)),
        (BlockRule::DoubleNumbered, Blocks::Flux { double, .. }) => {
            number(double).map(Block::Double)
        }
        (BlockRule::SingleNumbered, Blocks::Flux { single, .. }) => {
            number(single).map(Block::Single)
        }
        (BlockRule::JointNumbered, Blocks::Mmdit { joint }) => number(joint).map(Block::Joint),
        _ => None,
    }
}

/// The merge block of a (canonical) SD1/SD2/SDXL key, for a U-Net with `depth` input/output
/// blocks (12 for SD1/SD2, 9 for SDXL): its U-Net block, or `BASE` outside the U-Net.
/// Returns `None` for a U-Net key that no rule covers.
pub fn block_of(key: &str, depth: u8) -> Option<Block> {
    if !key.starts_with(DENOISER_PREFIX) {
        return Some(Block::Base);
    }
    denoiser_block(key, Blocks::Unet { depth })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convention() {
        let k = |s: &str| format!("model.diffusion_model.{s}");
        assert_eq!(block_of(&k("time_embed.0.weight"), 12), Some(Block::In(0)));
        assert_eq!(block_of(&k("label_emb.0.0.weight"), 9), Some(Block::In(0)));
        assert_eq!(
            block_of(&k("input_blocks.10.0.emb_layers.1.bias"), 12),
            Some(Block::In(10))
        );
        assert_eq!(
            block_of(&k("middle_block.1.proj_in.weight"), 12),
            Some(Block::Mid)
        );
        assert_eq!(
            block_of(&k("output_blocks.3.1.norm.bias"), 12),
            Some(Block::Out(3))
        );
        assert_eq!(block_of(&k("out.2.weight"), 12), Some(Block::Out(11)));
        assert_eq!(block_of(&k("out.0.bias"), 9), Some(Block::Out(8)));
        // `to_out.` and `proj_out` must not look like the final `out.`.
        assert_eq!(
            block_of(
                &k("output_blocks.11.1.transformer_blocks.0.attn1.to_out.0.weight"),
                12
            ),
            Some(Block::Out(11))
        );
        assert_eq!(
            block_of("first_stage_model.decoder.conv_out.weight", 12),
            Some(Block::Base)
        );
        assert_eq!(block_of(&k("input_blocks.12.0.op.weight"), 12), None);
    }

    #[test]
    fn dit_blocks() {
        let k = |s: &str| format!("model.diffusion_model.{s}");
        let flux = Blocks::Flux {
            double: 19,
            single: 38,
        };
        assert_eq!(
            denoiser_block(&k("double_blocks.18.img_attn.qkv.weight"), flux),
            Some(Block::Double(18))
        );
        assert_eq!(denoiser_block(&k("double_blocks.19.x"), flux), None);
        assert_eq!(
            denoiser_block(&k("single_blocks.0.linear1.weight"), flux),
            Some(Block::Single(0))
        );
        assert_eq!(
            denoiser_block(&k("guidance_in.in_layer.bias"), flux),
            Some(Block::Embed)
        );
        assert_eq!(
            denoiser_block(&k("distilled_guidance_layer.norms.0.scale"), flux),
            Some(Block::Embed)
        );
        assert_eq!(
            denoiser_block(&k("final_layer.linear.weight"), flux),
            Some(Block::Final)
        );
        let sd3 = Blocks::Mmdit { joint: 24 };
        assert_eq!(
            denoiser_block(&k("joint_blocks.23.context_block.attn.qkv.weight"), sd3),
            Some(Block::Joint(23))
        );
        assert_eq!(denoiser_block(&k("pos_embed"), sd3), Some(Block::Embed));
        assert_eq!(denoiser_block("vae.decoder.conv_in.weight", sd3), None);
    }

    #[test]
    fn names_round_trip() {
        for b in Block::merge_order(12) {
            assert_eq!(Block::parse(&b.to_string()), Some(b));
        }
        for b in [Block::Double(3), Block::Single(37), Block::Joint(0)] {
            assert_eq!(Block::parse(&b.to_string()), Some(b));
        }
        assert_eq!(Block::parse("mid"), Some(Block::Mid));
        assert_eq!(Block::parse("d7"), Some(Block::Double(7)));
        assert_eq!(Block::parse("IN"), None);
        assert_eq!(Block::parse("S"), None);
        assert_eq!(
            component_of("conditioner.embedders.1.model.ln_final.weight"),
            Component::Te2
        );
        assert_eq!(component_of("model_ema.decay"), Component::Other);
        assert_eq!(
            component_of("model.diffusion_model.double_blocks.0.img_mod.lin.bias"),
            Component::Diffuser
        );
        assert_eq!(
            component_of("model.diffusion_model.input_blocks.0.0.weight"),
            Component::Unet
        );
        assert_eq!(
            component_of("text_encoders.t5xxl.transformer.shared.weight"),
            Component::T5xxl
        );
        assert_eq!(component_of("vae.encoder.conv_in.weight"), Component::Vae);
    }
}
