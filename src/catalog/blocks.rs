//! Which component and which merge block a key belongs to: the one table every command asks.
//!
//! ckpt-diff follows SuperMerger's block convention (the one its 26- and 20-value weight
//! lists use, and bbc-mc's original block-weighted merge before it):
//!
//! | key prefix (after `model.diffusion_model.`) | block |
//! |---|---|
//! | `time_embed.`, `label_emb.` (SDXL)          | `IN00` |
//! | `input_blocks.N.`                           | `IN{N:02}` |
//! | `middle_block.`                             | `M00` |
//! | `output_blocks.N.`                          | `OUT{N:02}` |
//! | `out.` (final norm and conv)                | the last OUT block (`OUT11`, SDXL `OUT08`) |
//! | any key outside the U-Net (text encoders, VAE, extras) | `BASE` |
//!
//! sd-mecha differs only in sending `time_embed`/`label_emb` to `BASE` (and SDXL's VAE to a
//! `VAE` slot); SuperMerger between 2023-07 and 2025-11 sent SD1 `time_embed` to `OUT11`.
//! Analyses show the non-U-Net part of `BASE` split by component (TE1, TE2, VAE, other).

use std::fmt;

/// A component of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Unet,
    /// The first (SD1/SD2: only) text encoder.
    Te1,
    /// SDXL's second text encoder (OpenCLIP bigG).
    Te2,
    Vae,
    /// EMA copies, scheduler buffers, markers, and anything unrecognised.
    Other,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Unet,
        Component::Te1,
        Component::Te2,
        Component::Vae,
        Component::Other,
    ];

    /// The short name used on the command line and in JSON.
    pub fn id(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::Te1 => "te1",
            Component::Te2 => "te2",
            Component::Vae => "vae",
            Component::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Component> {
        Component::ALL
            .into_iter()
            .find(|c| c.id().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// A merge block in SuperMerger's naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Block {
    Base,
    In(u8),
    Mid,
    Out(u8),
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Block::Base => f.write_str("BASE"),
            Block::In(n) => write!(f, "IN{n:02}"),
            Block::Mid => f.write_str("M00"),
            Block::Out(n) => write!(f, "OUT{n:02}"),
        }
    }
}

impl serde::Serialize for Block {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Block {
    /// Parses `BASE`, `IN00`, `M00` (also `MID`, `MID00`), `OUT11`; case-insensitive.
    pub fn parse(s: &str) -> Option<Block> {
        let u = s.trim().to_ascii_uppercase();
        match u.as_str() {
            "BASE" => return Some(Block::Base),
            "M00" | "MID" | "MID00" | "MID0" | "M0" => return Some(Block::Mid),
            _ => {}
        }
        let num = |rest: &str| rest.parse::<u8>().ok().filter(|_| !rest.is_empty());
        if let Some(rest) = u.strip_prefix("IN") {
            return num(rest).map(Block::In);
        }
        if let Some(rest) = u.strip_prefix("OUT") {
            return num(rest).map(Block::Out);
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
}

/// How a prefix rule assigns a block.
#[derive(Clone, Copy, Debug)]
enum BlockRule {
    /// Always `IN00`.
    FirstIn,
    /// `IN{N}` with N the number right after the prefix.
    InNumbered,
    Mid,
    /// `OUT{N}` with N the number right after the prefix.
    OutNumbered,
    /// The last output block of the architecture.
    LastOut,
}

const UNET_PREFIX: &str = "model.diffusion_model.";

/// The block convention, as data. Order matters only for readability: prefixes are disjoint.
const BLOCK_TABLE: &[(&str, BlockRule)] = &[
    ("time_embed.", BlockRule::FirstIn),
    ("label_emb.", BlockRule::FirstIn),
    ("input_blocks.", BlockRule::InNumbered),
    ("middle_block.", BlockRule::Mid),
    ("output_blocks.", BlockRule::OutNumbered),
    ("out.", BlockRule::LastOut),
];

/// Component prefixes of the LDM/SGM single-file layout.
const COMPONENT_TABLE: &[(&str, Component)] = &[
    (UNET_PREFIX, Component::Unet),
    ("cond_stage_model.", Component::Te1),
    ("conditioner.embedders.0.", Component::Te1),
    ("conditioner.embedders.1.", Component::Te2),
    ("first_stage_model.", Component::Vae),
];

/// The component of a (canonical) key.
pub fn component_of(key: &str) -> Component {
    COMPONENT_TABLE
        .iter()
        .find(|(p, _)| key.starts_with(p))
        .map(|&(_, c)| c)
        .unwrap_or(Component::Other)
}

/// The merge block of a (canonical) key, for a U-Net with `depth` input/output blocks
/// (12 for SD1/SD2, 9 for SDXL). Returns `None` for a U-Net key that no rule covers.
pub fn block_of(key: &str, depth: u8) -> Option<Block> {
    let Some(rest) = key.strip_prefix(UNET_PREFIX) else {
        return Some(Block::Base);
    };
    let (prefix, rule) = BLOCK_TABLE.iter().find(|(p, _)| rest.starts_with(p))?;
    let after = &rest[prefix.len()..];
    let number = || -> Option<u8> {
        let digits = after.split('.').next()?;
        digits.parse::<u8>().ok().filter(|&n| n < depth)
    };
    match rule {
        BlockRule::FirstIn => Some(Block::In(0)),
        BlockRule::InNumbered => number().map(Block::In),
        BlockRule::Mid => Some(Block::Mid),
        BlockRule::OutNumbered => number().map(Block::Out),
        BlockRule::LastOut => Some(Block::Out(depth - 1)),
    }
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
    fn names_round_trip() {
        for b in Block::merge_order(12) {
            assert_eq!(Block::parse(&b.to_string()), Some(b));
        }
        assert_eq!(Block::parse("mid"), Some(Block::Mid));
        assert_eq!(Block::parse("IN"), None);
        assert_eq!(
            component_of("conditioner.embedders.1.model.ln_final.weight"),
            Component::Te2
        );
        assert_eq!(component_of("model_ema.decay"), Component::Other);
    }
}
