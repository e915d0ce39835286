//! The architectures users hold (SD1, SD2, SDXL, Flux.1, Chroma, SD3, SD3.5 medium and
//! large): their key layouts, the component and block of every key, and detection of a
//! file's architecture and variant from names and shapes.
//!
//! * [`blocks`]: the one table that maps a key to its component and merge block;
//! * [`data`]: the layouts, compiled in;
//! * [`detect`]: which architecture a file is, how sure, and which variant;
//! * [`keys`]: what each key of a file is against its layout (EMA, missing, unknown, ...);
//! * [`Grouping`]: the rows an analysis reports (U-Net blocks, then each text encoder, the
//!   VAE, the rest), or groups by key prefix for layouts the catalog does not know;
//! * [`selector`]: the one language in which users choose rows (`OUT06..OUT11`, `te`, ...).

pub(crate) mod blocks;
pub mod data;
pub mod detect;
pub mod diffusers;
pub mod keys;
pub mod lora;
pub mod releases;
pub mod selector;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

pub use blocks::{Block, Blocks, Component, DENOISER_PREFIX, block_of, component_of};
pub use detect::{Confidence, Detection, Variant, detect};
pub use keys::{KeyCheck, is_ema};
pub use selector::{SelectError, Selector};

/// An architecture in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// Stable Diffusion 1.x, LDM single-file layout (CLIP-L text encoder).
    Sd1,
    /// Stable Diffusion 2.x, LDM layout (OpenCLIP ViT-H text encoder). Same U-Net key names
    /// as SD1; told apart by shapes.
    Sd2,
    /// SDXL base, SGM layout (CLIP-L + OpenCLIP bigG).
    Sdxl,
    /// Flux.1 (dev, schnell, Fill/Canny/Depth), ComfyUI's single-file layout: the diffuser,
    /// CLIP-L, T5-XXL and the 16-channel VAE.
    Flux,
    /// Chroma: Flux.1's blocks with one distilled modulation network, T5-XXL only.
    Chroma,
    /// SD3 medium (2B): 24 joint blocks, CLIP-L, CLIP-G, T5-XXL, a 16-channel VAE.
    Sd3,
    /// SD3.5 medium (MMDiT-X): 24 joint blocks, a second self-attention in blocks 0..12.
    Sd35Medium,
    /// SD3.5 large: 38 joint blocks.
    Sd35Large,
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl Arch {
    pub const ALL: [Arch; 8] = [
        Arch::Sd1,
        Arch::Sd2,
        Arch::Sdxl,
        Arch::Flux,
        Arch::Chroma,
        Arch::Sd3,
        Arch::Sd35Medium,
        Arch::Sd35Large,
    ];

    /// Short id used on the command line and in JSON.
    pub fn id(self) -> &'static str {
        match self {
            Arch::Sd1 => "sd1",
            Arch::Sd2 => "sd2",
            Arch::Sdxl => "sdxl",
            Arch::Flux => "flux",
            Arch::Chroma => "chroma",
            Arch::Sd3 => "sd3",
            Arch::Sd35Medium => "sd35m",
            Arch::Sd35Large => "sd35l",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        match s.to_ascii_lowercase().as_str() {
            "sd1" | "sd15" | "sd1.5" | "sd-v1" | "sd1-ldm" => Some(Arch::Sd1),
            "sd2" | "sd21" | "sd2.1" | "sd-v2" | "sd2-ldm" => Some(Arch::Sd2),
            "sdxl" | "sd-xl" | "sdxl-sgm" | "xl" => Some(Arch::Sdxl),
            "flux" | "flux1" | "flux.1" | "flux-dev" | "flux-schnell" => Some(Arch::Flux),
            "chroma" => Some(Arch::Chroma),
            "sd3" | "sd3m" | "sd3-medium" => Some(Arch::Sd3),
            "sd35m" | "sd3.5m" | "sd3.5-medium" | "sd35-medium" => Some(Arch::Sd35Medium),
            "sd35l" | "sd3.5l" | "sd3.5-large" | "sd35-large" | "sd35" => Some(Arch::Sd35Large),
            _ => None,
        }
    }

    /// Human name.
    pub fn label(self) -> &'static str {
        match self {
            Arch::Sd1 => "SD1 (LDM)",
            Arch::Sd2 => "SD2 (LDM)",
            Arch::Sdxl => "SDXL base (SGM)",
            Arch::Flux => "Flux.1",
            Arch::Chroma => "Chroma (Flux.1 blocks)",
            Arch::Sd3 => "SD3 medium",
            Arch::Sd35Medium => "SD3.5 medium",
            Arch::Sd35Large => "SD3.5 large",
        }
    }

    /// The block structure of the denoiser.
    pub fn blocks(self) -> Blocks {
        match self {
            Arch::Sd1 | Arch::Sd2 => Blocks::Unet { depth: 12 },
            Arch::Sdxl => Blocks::Unet { depth: 9 },
            Arch::Flux | Arch::Chroma => Blocks::Flux {
                double: 19,
                single: 38,
            },
            Arch::Sd3 | Arch::Sd35Medium => Blocks::Mmdit { joint: 24 },
            Arch::Sd35Large => Blocks::Mmdit { joint: 38 },
        }
    }

    /// Number of U-Net input blocks, and of output blocks: 12 for SD1/SD2, 9 for SDXL; 0
    /// for DiTs.
    pub fn depth(self) -> u8 {
        match self.blocks() {
            Blocks::Unet { depth } => depth,
            _ => 0,
        }
    }

    /// The merge blocks in the order block-weight lists give them: SuperMerger's for the
    /// U-Net (26 for SD1/SD2, 20 for SDXL: `BASE, IN00.., M00, OUT..`) and for Flux (61:
    /// `CLIP, T5, IN, D00..D18, S00..S37, OUT`); for SD3 ComfyUI's grouping after `BASE`
    /// (`BASE, IN, J00.., OUT`: 27 for SD3/SD3.5 medium, 41 for SD3.5 large). Chroma has
    /// no CLIP: `T5, IN, D00..D18, S00..S37, OUT` (60).
    pub fn merge_blocks(self) -> Vec<Block> {
        match self.blocks() {
            Blocks::Unet { depth } => Block::merge_order(depth),
            Blocks::Flux { double, single } => {
                let mut v = if self == Arch::Chroma {
                    vec![Block::T5]
                } else {
                    vec![Block::Clip, Block::T5]
                };
                v.push(Block::Embed);
                v.extend((0..double).map(Block::Double));
                v.extend((0..single).map(Block::Single));
                v.push(Block::Final);
                v
            }
            Blocks::Mmdit { joint } => {
                let mut v = vec![Block::Base, Block::Embed];
                v.extend((0..joint).map(Block::Joint));
                v.push(Block::Final);
                v
            }
        }
    }

    /// The merge block a name denotes in this architecture (`OUT03`, `m00`, `D7`, and the
    /// DiT's `IN`, `OUT`, `CLIP`, `T5`), if the architecture has it.
    pub fn block_named(self, name: &str) -> Option<Block> {
        let upper = name.trim().to_ascii_uppercase();
        let order = self.merge_blocks();
        if let Some(b) = Block::parse(&upper).filter(|b| order.contains(b)) {
            return Some(b);
        }
        order.into_iter().find(|b| b.to_string() == upper)
    }

    /// The merge block whose weight applies to a row of `component` outside the denoiser:
    /// `BASE` for SD and SD3, Flux's `CLIP` and `T5`; `None` where no weight applies
    /// (Flux's VAE, as in SuperMerger: not merged by block weights).
    pub fn weight_block_of(self, component: Component) -> Option<Block> {
        match self.blocks() {
            Blocks::Flux { .. } => match component {
                Component::ClipL => Some(Block::Clip),
                Component::T5xxl => Some(Block::T5),
                _ => None,
            },
            _ => Some(Block::Base),
        }
    }

    /// The components a full checkpoint of this architecture has.
    pub fn components(self) -> &'static [Component] {
        match self {
            Arch::Sd1 | Arch::Sd2 => &[Component::Unet, Component::Te1, Component::Vae],
            Arch::Sdxl => &[
                Component::Unet,
                Component::Te1,
                Component::Te2,
                Component::Vae,
            ],
            Arch::Flux => &[
                Component::Diffuser,
                Component::ClipL,
                Component::T5xxl,
                Component::Vae,
            ],
            Arch::Chroma => &[Component::Diffuser, Component::T5xxl, Component::Vae],
            Arch::Sd3 | Arch::Sd35Medium | Arch::Sd35Large => &[
                Component::Diffuser,
                Component::ClipL,
                Component::ClipG,
                Component::T5xxl,
                Component::Vae,
            ],
        }
    }

    /// The denoiser's component (the U-Net or the DiT).
    pub fn denoiser(self) -> Component {
        self.components()[0]
    }

    /// What a component is in this architecture ("CLIP-L", "OpenCLIP-H", ...).
    pub fn component_label(self, c: Component) -> &'static str {
        match (self, c) {
            (_, Component::Unet) => "U-Net",
            (Arch::Sd2, Component::Te1) => "OpenCLIP ViT-H",
            (_, Component::Te1) => "CLIP ViT-L",
            (_, Component::Te2) => "OpenCLIP ViT-bigG",
            (_, Component::Vae) => "VAE",
            (_, Component::Other) => "other",
            (Arch::Chroma, Component::Diffuser) => "Chroma DiT",
            (Arch::Flux, Component::Diffuser) => "Flux.1 DiT",
            (_, Component::Diffuser) => "MMDiT",
            (_, Component::ClipL) => "CLIP ViT-L",
            (_, Component::ClipG) => "OpenCLIP ViT-bigG",
            (_, Component::T5xxl) => "T5-XXL encoder",
        }
    }

    /// The block of a (canonical) key of the denoiser, if a rule covers it.
    pub fn block_of(self, key: &str) -> Option<Block> {
        blocks::denoiser_block(key, self.blocks())
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// The canonical name of a key: the one the catalog lists.
///
/// Resolves the aliases real files use: the old transformers CLIP names without
/// `text_model.` (SD1 and SDXL CLIP-L), and EMA keys without `diffusion_model`.
pub fn canonical_key(key: &str) -> Cow<'_, str> {
    if let Some(k) = data::aliases().get(key) {
        return Cow::Owned(k.clone());
    }
    // DiT diffusers saved on their own (BFL's Flux files, Chroma, ComfyUI's diffusion_models
    // folder) name their keys without the single-file prefix.
    if blocks::is_bare_dit_key(key) {
        return Cow::Owned(format!("{DENOISER_PREFIX}{key}"));
    }
    // A T5-XXL encoder on its own (`t5xxl_fp16.safetensors`): transformers' names.
    if key.starts_with("encoder.block.")
        || key == "encoder.final_layer_norm.weight"
        || key == "shared.weight"
    {
        return Cow::Owned(format!("text_encoders.t5xxl.transformer.{key}"));
    }
    // The layout data lists the old CLIP names for SD1 only; SDXL files saved by old
    // tools carry the same rename under the first embedder.
    const OLD_CLIP: &str = "conditioner.embedders.0.transformer.";
    if let Some(rest) = key.strip_prefix(OLD_CLIP)
        && ["embeddings.", "encoder.", "final_layer_norm."]
            .iter()
            .any(|p| rest.starts_with(p))
    {
        return Cow::Owned(format!("{OLD_CLIP}text_model.{rest}"));
    }
    Cow::Borrowed(key)
}

/// How keys are grouped into report rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Known(Arch),
    /// An architecture the catalog does not know: rows by key prefix.
    Generic,
}

impl Layout {
    pub fn arch(self) -> Option<Arch> {
        match self {
            Layout::Known(a) => Some(a),
            Layout::Generic => None,
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Layout::Known(a) => a.id(),
            Layout::Generic => "unknown",
        }
    }
}

/// One report row.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupInfo {
    /// `IN00`, `M00`, `OUT11`, `D03`, `TE1`, `CLIP_L`, `VAE`, `OTHER`, or a key prefix.
    pub label: String,
    pub component: Component,
    /// The denoiser block, for denoiser rows.
    pub block: Option<Block>,
    /// The entry of the block-weight list that weighs this row (`BASE` for SD's text
    /// encoders, `CLIP` for Flux's), if one does.
    pub weight_block: Option<Block>,
}

/// The rows an analysis reports, and the row of every key.
#[derive(Clone, Debug)]
pub struct Grouping {
    layout: Layout,
    groups: Vec<GroupInfo>,
    /// Generic layouts: prefix -> row.
    by_prefix: HashMap<String, usize>,
}

impl Grouping {
    /// The denoiser's blocks in model order, then each other component, then the rest.
    pub fn for_arch(arch: Arch) -> Grouping {
        let mut groups: Vec<GroupInfo> = arch
            .merge_blocks()
            .into_iter()
            .filter(|b| b.in_denoiser())
            .map(|b| GroupInfo {
                label: b.to_string(),
                component: arch.denoiser(),
                block: Some(b),
                weight_block: Some(b),
            })
            .collect();
        for &c in arch.components().iter().filter(|c| !c.is_denoiser()) {
            groups.push(GroupInfo {
                label: c.id().to_uppercase(),
                component: c,
                block: None,
                weight_block: arch.weight_block_of(c),
            });
        }
        groups.push(GroupInfo {
            label: "OTHER".into(),
            component: Component::Other,
            block: None,
            weight_block: arch.weight_block_of(Component::Other),
        });
        Grouping {
            layout: Layout::Known(arch),
            groups,
            by_prefix: HashMap::new(),
        }
    }

    /// Rows by key prefix for the given (canonical) keys, in natural order.
    pub fn generic<'a>(keys: impl IntoIterator<Item = &'a str>) -> Grouping {
        let mut prefixes: Vec<String> = keys.into_iter().map(generic_prefix).collect();
        prefixes.sort_by(|a, b| natural_cmp(a, b));
        prefixes.dedup();
        let groups: Vec<GroupInfo> = prefixes
            .iter()
            .map(|p| GroupInfo {
                label: p.clone(),
                component: component_of(p),
                block: None,
                weight_block: None,
            })
            .collect();
        let by_prefix = prefixes
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p, i))
            .collect();
        Grouping {
            layout: Layout::Generic,
            groups,
            by_prefix,
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn groups(&self) -> &[GroupInfo] {
        &self.groups
    }

    /// The row of a canonical key.
    pub fn group_of(&self, key: &str) -> usize {
        match self.layout {
            Layout::Generic => self.by_prefix[&generic_prefix(key)],
            Layout::Known(arch) => {
                let component = component_of(key);
                let wanted = if component == arch.denoiser() {
                    match arch.block_of(key) {
                        Some(b) => return self.index_of_block(b).unwrap_or(self.other()),
                        None => Component::Other,
                    }
                } else {
                    component
                };
                self.groups
                    .iter()
                    .position(|g| g.block.is_none() && g.component == wanted)
                    .unwrap_or(self.other())
            }
        }
    }

    fn index_of_block(&self, b: Block) -> Option<usize> {
        self.groups.iter().position(|g| g.block == Some(b))
    }

    fn other(&self) -> usize {
        self.groups.len() - 1
    }
}

/// The generic row of a key: its dotted segments up to and including the first numeric
/// one (`double_blocks.3`), at most four; or its first two segments.
fn generic_prefix(key: &str) -> String {
    // The denoiser's wrapper says nothing about the module: rows start below it.
    if let Some(rest) = key.strip_prefix(DENOISER_PREFIX).filter(|r| !r.is_empty()) {
        return format!("{DENOISER_PREFIX}{}", generic_prefix(rest));
    }
    let segments: Vec<&str> = key.split('.').collect();
    let last = segments.len().saturating_sub(1).max(1);
    let end = match segments
        .iter()
        .take(4)
        .position(|s| s.parse::<u64>().is_ok())
    {
        Some(i) => i + 1,
        None => 2,
    };
    segments[..end.min(last).max(1)].join(".")
}

/// Orders strings with embedded numbers by value: `b.2 < b.10`.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for ((da, sa), (db, sb)) in pa.iter().zip(pb.iter()) {
        let ord = if *da && *db {
            let (na, nb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            na.len().cmp(&nb.len()).then(na.cmp(nb))
        } else {
            sa.cmp(sb)
        };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_key("cond_stage_model.transformer.encoder.layers.0.mlp.fc1.bias"),
            "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.bias"
        );
        assert_eq!(
            canonical_key("conditioner.embedders.0.transformer.final_layer_norm.weight"),
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"
        );
        assert_eq!(
            canonical_key("model_ema.input_blocks00bias"),
            "model_ema.diffusion_modelinput_blocks00bias"
        );
        assert_eq!(
            canonical_key("first_stage_model.encoder.conv_in.bias"),
            "first_stage_model.encoder.conv_in.bias"
        );
    }

    #[test]
    fn arch_rows() {
        let g = Grouping::for_arch(Arch::Sd1);
        let labels: Vec<&str> = g.groups().iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels.len(), 25 + 3);
        assert_eq!(&labels[..2], &["IN00", "IN01"]);
        assert_eq!(&labels[25..], &["TE1", "VAE", "OTHER"]);
        assert_eq!(
            labels[g.group_of("model.diffusion_model.out.2.bias")],
            "OUT11"
        );
        assert_eq!(
            labels[g.group_of("first_stage_model.decoder.conv_in.bias")],
            "VAE"
        );
        assert_eq!(labels[g.group_of("model_ema.decay")], "OTHER");
        assert_eq!(
            labels[g.group_of("conditioner.embedders.1.model.ln_final.bias")],
            "OTHER"
        );
        let xl = Grouping::for_arch(Arch::Sdxl);
        assert_eq!(xl.groups().len(), 19 + 4);
    }

    #[test]
    fn generic_rows() {
        let keys = [
            "double_blocks.10.img_attn.qkv.weight",
            "double_blocks.2.img_mod.lin.bias",
            "img_in.weight",
            "final_layer.linear.bias",
            "x",
        ];
        let g = Grouping::generic(keys);
        let labels: Vec<&str> = g.groups().iter().map(|g| g.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "double_blocks.2",
                "double_blocks.10",
                "final_layer.linear",
                "img_in",
                "x"
            ]
        );
        assert_eq!(g.group_of("img_in.weight"), 3);
    }
}
