//! The architectures users hold, as data: one spec per architecture
//! (`data/archs/<id>.toml`: its names, components, blocks and block-weight lists, variants,
//! LoRA and diffusers names) beside its key layout (the TSVs), and the components of
//! single-file checkpoints (`data/components.toml`). Every layer asks the catalog; no code
//! outside it names an architecture. Adding one is adding its data files (ARCHITECTURE.md).
//!
//! * [`blocks`]: the one table that maps a key to its component and merge block;
//! * [`data`]: the key layouts;
//! * [`detect`]: which architecture a file is, how sure, and which variant;
//! * [`keys`]: what each key of a file is against its layout (EMA, missing, unknown, ...);
//! * [`Grouping`]: the rows an analysis reports (denoiser blocks, then each other component,
//!   then the rest), or groups by key prefix for layouts the catalog does not know;
//! * [`selector`]: the one language in which users choose rows (`OUT06..OUT11`, `te`, ...);
//! * [`lora`], [`diffusers`]: the names other tools give an architecture's modules.

pub mod blocks;
pub mod data;
pub mod detect;
pub mod diffusers;
pub mod keys;
pub mod lora;
pub(crate) mod registry;
pub mod releases;
pub mod selector;
pub(crate) mod spec;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

pub use blocks::{Block, Component, component_of};
pub use detect::{Confidence, Detection, Variant, detect};
pub use keys::{KeyCheck, is_ema};
pub use selector::{SelectError, Selector};

use registry::{ArchInfo, registry};

/// The prefix of every denoiser key in the single-file layouts (U-Net and DiT alike).
pub const DENOISER_PREFIX: &str = "model.diffusion_model.";

/// An architecture in the catalog (an index into its specs, in their `order`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch(pub(crate) u16);

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl fmt::Debug for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// The LoRA metadata standards' names of an architecture (`ss_base_model_version`,
/// `modelspec.architecture`).
#[derive(Clone, Copy, Debug)]
pub struct ModelSpec {
    pub ss_base_model_version: &'static str,
    pub architecture: &'static str,
    pub ss_v2: bool,
}

/// How city96's ComfyUI-GGUF tools write an architecture's denoiser (the spec's `[gguf]`).
#[derive(Clone, Copy, Debug)]
pub struct GgufRules {
    /// `general.architecture` (`flux`, `sdxl`, `lumina2`, ...).
    pub arch: &'static str,
    /// Substrings that keep a tensor unquantized.
    pub keep: &'static [String],
    /// Exact names that keep a tensor unquantized.
    pub keep_exact: &'static [String],
    /// Awkward rows are stored as rows of 256 with a `comfy.gguf.orig_shape` KV.
    pub reshape: bool,
}

impl GgufRules {
    /// Whether `name` (without `model.diffusion_model.`) is on the keep list.
    pub fn keeps(&self, name: &str) -> bool {
        self.keep.iter().any(|k| name.contains(k.as_str()))
            || self.keep_exact.iter().any(|k| k == name)
    }
}

/// The parts of the A1111 model toolkit's metric an architecture has: the U-Net's, the
/// VAE's, the text encoder's (with the names of its constants and known values).
#[derive(Clone, Copy, Debug)]
pub struct ToolkitParts {
    pub unet: bool,
    pub vae: bool,
    pub clip: Option<(&'static str, &'static str)>,
}

/// A release variant of an architecture (SD's inpainting U-Net, Flux.1 Fill, ...), as its spec
/// names it.
#[derive(Clone, Copy, Debug)]
pub struct ReleaseVariant {
    /// The id in JSON (`inpainting`, `flux-fill`).
    pub id: &'static str,
    /// Its name (`Inpainting`, `Fill`).
    pub name: &'static str,
    /// The name `synth --variant` takes, and others it accepts.
    pub synth: &'static str,
    pub aliases: &'static [String],
    pub describe: &'static str,
    /// It widens an input: (key, dimension, width).
    pub width: Option<(&'static str, usize, usize)>,
    /// It has no keys under this prefix.
    pub absent: Option<&'static str>,
    /// It has this key, which the base release does not.
    pub present: Option<&'static str>,
}

impl Arch {
    pub(crate) fn info(self) -> &'static ArchInfo {
        &registry().archs[self.0 as usize]
    }

    /// Every architecture, in the catalog's order.
    pub fn all() -> &'static [Arch] {
        &registry().all
    }

    /// Short id used on the command line and in JSON.
    pub fn id(self) -> &'static str {
        &self.info().spec.id
    }

    /// The architecture called `s` (its id or an alias, any case).
    pub fn parse(s: &str) -> Option<Arch> {
        let s = s.to_ascii_lowercase();
        Arch::all().iter().copied().find(|a| {
            let spec = &a.info().spec;
            spec.id == s || spec.aliases.iter().any(|x| x.eq_ignore_ascii_case(&s))
        })
    }

    /// Human name.
    pub fn label(self) -> &'static str {
        &self.info().spec.label
    }

    /// The merge blocks in the order block-weight lists give them (the spec's
    /// `[weights] order`): SuperMerger's for the U-Net (26 for SD1/SD2, 20 for SDXL) and for
    /// Flux (61), ComfyUI's grouping after `BASE` for SD3.
    pub fn merge_blocks(self) -> &'static [Block] {
        &self.info().order
    }

    /// The merge block a name denotes in this architecture (`OUT03`, `m00`, `D7`, and the
    /// DiT's `IN`, `OUT`, `CLIP`, `T5`), if the architecture has it.
    pub fn block_named(self, name: &str) -> Option<Block> {
        let info = self.info();
        let upper = name.trim().to_ascii_uppercase();
        let upper = info
            .spec
            .blocks
            .aliases
            .get(&upper)
            .cloned()
            .unwrap_or(upper);
        let found = |label: &str| info.order.iter().copied().find(|b| b.label() == label);
        found(&upper).or_else(|| {
            let (series, n) = registry::split_number(&upper)?;
            found(&format!("{series}{n:02}"))
        })
    }

    /// The merge block whose weight applies to a row of `component` outside the denoiser:
    /// what the spec gives the component (`BASE` for SD and SD3, Flux's `CLIP` and `T5`),
    /// else its `other` weight; `None` where no weight applies (Flux's VAE, as in
    /// SuperMerger: not merged by block weights).
    pub fn weight_block_of(self, component: Component) -> Option<Block> {
        let info = self.info();
        info.components
            .iter()
            .find(|(c, _, _)| *c == component)
            .map_or(info.other_weight, |(_, _, w)| *w)
    }

    /// The components a full checkpoint of this architecture has, the denoiser first.
    pub fn components(self) -> &'static [Component] {
        &self.info().component_ids
    }

    /// The denoiser's component (the U-Net or the DiT).
    pub fn denoiser(self) -> Component {
        self.components()[0]
    }

    /// What a component is in this architecture ("CLIP ViT-L", "OpenCLIP ViT-H", ...).
    pub fn component_label(self, c: Component) -> &'static str {
        self.info()
            .components
            .iter()
            .find(|(x, label, _)| *x == c && !label.is_empty())
            .map_or_else(|| c.label(), |(_, label, _)| label.as_str())
    }

    /// The block of a (canonical) key of the denoiser, if a rule covers it.
    pub fn block_of(self, key: &str) -> Option<Block> {
        blocks::denoiser_block(self, key)
    }

    /// Whether `b` is one of the denoiser's blocks (not `BASE`, `CLIP`, `T5`).
    pub fn is_denoiser_block(self, b: Block) -> bool {
        self.info().denoiser_blocks.contains(&b)
    }

    /// LoRA Block Weight's short lists for this architecture (each the blocks its values
    /// weigh, in order).
    pub fn lbw_orders(self) -> &'static [Vec<Block>] {
        &self.info().lbw
    }

    /// The names the LoRA metadata standards give this architecture, if they have one.
    pub fn modelspec(self) -> Option<ModelSpec> {
        self.info().spec.modelspec.as_ref().map(|m| ModelSpec {
            ss_base_model_version: &m.ss_base_model_version,
            architecture: &m.architecture,
            ss_v2: m.ss_v2,
        })
    }

    /// city96's GGUF conventions for this architecture, if it has them.
    pub fn gguf(self) -> Option<GgufRules> {
        self.info().spec.gguf.as_ref().map(|g| GgufRules {
            arch: &g.arch,
            keep: &g.keep,
            keep_exact: &g.keep_exact,
            reshape: g.reshape,
        })
    }

    /// ASimilarity's blocks (the spec's `[asim]`), each with the module of its first
    /// transformer; empty where ASimilarity is not defined (DiTs).
    pub fn asim_blocks(self) -> Vec<(Block, String)> {
        let Some(asim) = &self.info().spec.asim else {
            return Vec::new();
        };
        let list = registry::expand_list(&asim.blocks).expect("checked when the catalog loads");
        list.iter()
            .map(|label| {
                let module = match asim.modules.get(label.as_str()) {
                    Some(m) => m.clone(),
                    None => {
                        let (series, n) = registry::split_number(label).expect("a numbered block");
                        asim.modules[series].replace("{n}", &n.to_string())
                    }
                };
                (Block::new(label), module)
            })
            .collect()
    }

    /// Which parts of the A1111 model toolkit's component metric this architecture has.
    pub fn toolkit_metric(self) -> Option<ToolkitParts> {
        let t = self.info().spec.toolkit_metric.as_ref()?;
        Some(ToolkitParts {
            unet: t.unet,
            vae: t.vae,
            clip: t
                .clip
                .as_ref()
                .map(|c| (c.constants.as_str(), c.known.as_str())),
        })
    }

    /// The release variants the spec names (`[[variants]]`), in its order.
    pub fn variants(self) -> Vec<ReleaseVariant> {
        self.info()
            .spec
            .variants
            .iter()
            .map(|v| ReleaseVariant {
                id: &v.id,
                name: &v.name,
                synth: v.synth.as_deref().unwrap_or(&v.id),
                aliases: &v.aliases,
                describe: &v.describe,
                width: v.width.as_ref().map(|w| (w.key.as_str(), w.dim, w.value)),
                absent: v.absent.as_deref(),
                present: v.present.as_deref(),
            })
            .collect()
    }

    /// The generated family's block-weighted merge (`[synth]`): weights by selector, and the
    /// same as the family's recipe text says it.
    pub fn synth_mbw(self) -> (&'static [(String, f64)], &'static str) {
        let s = &self.info().spec.synth;
        (&s.mbw, &s.mbw_text)
    }

    /// Whether the layout lists EMA copies of the denoiser.
    pub fn has_ema(self) -> bool {
        data::table(self)
            .keys
            .iter()
            .any(|k| k.role == data::Role::Ema)
    }

    /// Whether the denoiser's keys may be stored bare (BFL's own files).
    pub fn bare_layout(self) -> bool {
        self.info().spec.layout.bare
    }

    /// The ids of every architecture, for messages: `sd1, sd2, ...`.
    pub fn ids() -> String {
        Arch::all()
            .iter()
            .map(|a| a.id())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The architecture `id` (tests name architectures by their ids).
#[cfg(test)]
pub(crate) fn arch(id: &str) -> Arch {
    Arch::parse(id).unwrap_or_else(|| panic!("no architecture {id}"))
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// The canonical name of a key: the one the catalog lists.
///
/// Resolves the aliases real files use: the old names the layouts list (SD1's CLIP keys
/// without `text_model.`, EMA keys without `diffusion_model`), the renames of
/// `components.toml` (the same for SDXL's first embedder), a DiT's keys stored bare (BFL's
/// Flux files, Chroma, ComfyUI's diffusion_models folder) and a component saved alone (a
/// T5-XXL encoder file under transformers' names).
pub fn canonical_key(key: &str) -> Cow<'_, str> {
    if let Some(k) = data::aliases().get(key) {
        return Cow::Owned(k.clone());
    }
    if blocks::is_bare_dit_key(key) {
        return Cow::Owned(format!("{DENOISER_PREFIX}{key}"));
    }
    let r = registry();
    for (prefixes, under) in &r.standalone {
        if prefixes.iter().any(|p| key.starts_with(p.as_str())) {
            return Cow::Owned(format!("{under}{key}"));
        }
    }
    for rename in &r.renames {
        if let Some(rest) = key.strip_prefix(rename.prefix.as_str())
            && rename.before.iter().any(|p| rest.starts_with(p.as_str()))
        {
            return Cow::Owned(format!("{}{}{rest}", rename.prefix, rename.insert));
        }
    }
    Cow::Borrowed(key)
}

/// The names a file's tensors go by in the catalog: [`canonical_key`] of each, except in a
/// file holding one LLM text encoder alone. Those (Qwen3-4B and -8B, Qwen2.5-VL-7B, Mistral-3
/// 24B) keep transformers' names (`model.layers.N...`), which they share, so no name says
/// which one a file is: the encoder whose layout explains most of the file's keys by name
/// and shape (at any scale detection tries), and at least half of them, puts them under its
/// all-in-one prefix (`text_encoders.qwen3_4b.transformer.`), as ComfyUI's `detect_te_model`
/// tells them apart by shapes. A file it explains no key of keeps [`canonical_key`]'s names.
pub fn canonical_keys(tensors: &[ckpt_read::TensorEntry]) -> Vec<Cow<'_, str>> {
    let alone = standalone(tensors);
    tensors
        .iter()
        .map(|t| match alone.and_then(|b| b.name(&t.name)) {
            Some(name) => Cow::Owned(name),
            None => canonical_key(&t.name),
        })
        .collect()
}

/// [`canonical_keys`] of an opened checkpoint's tensors, computed once per checkpoint and
/// kept with it ([`ckpt_read::Checkpoint::derived_names`]): detection, [`KeyCheck::of`], the
/// pass's [`crate::pass::Plan`] and `inspect` each ask for them, and [`canonical_keys`] tries
/// every layout at every scale for a file holding a text encoder alone.
pub fn keys_of(ckpt: &ckpt_read::Checkpoint) -> &[String] {
    ckpt.derived_names(|tensors| {
        canonical_keys(tensors)
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    })
}

/// The shared-name component a file holds alone (see [`canonical_keys`]).
fn standalone(tensors: &[ckpt_read::TensorEntry]) -> Option<&'static registry::ByShape> {
    let r = registry();
    let mut best: Option<(usize, &registry::ByShape)> = None;
    for b in &r.by_shape {
        let names: Vec<(String, &[usize])> = tensors
            .iter()
            .filter_map(|t| b.name(&t.name).map(|n| (n, t.shape.as_slice())))
            .collect();
        if names.is_empty() {
            continue;
        }
        // The most keys any layout listing the component places, at any scale.
        let matched = Arch::all()
            .iter()
            .filter(|a| a.components().contains(&b.component))
            .flat_map(|&a| detect::SCALES.iter().map(move |&scale| (a, scale)))
            .map(|(a, scale)| {
                let table = data::table(a);
                names
                    .iter()
                    .filter(|(key, shape)| {
                        table
                            .get(key)
                            .is_some_and(|k| detect::shape_matches(key, &k.shape, shape, scale))
                    })
                    .count()
            })
            .max()
            .unwrap_or(0);
        let enough = if b.whole {
            matched == tensors.len()
        } else {
            matched > 0 && matched * 2 >= tensors.len()
        };
        if enough && best.is_none_or(|(n, _)| matched > n) {
            best = Some((matched, b));
        }
    }
    best.map(|(_, b)| b)
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
            .iter()
            .copied()
            .filter(|&b| arch.is_denoiser_block(b))
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
            component: Component::other(),
            block: None,
            weight_block: arch.weight_block_of(Component::other()),
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
                        None => Component::other(),
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
        let g = Grouping::for_arch(Arch::parse("sd1").unwrap());
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
        let xl = Grouping::for_arch(Arch::parse("sdxl").unwrap());
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
