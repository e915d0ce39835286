//! The architecture specs as the data files write them (`data/archs/*.toml`,
//! `data/components.toml`), deserialized once. [`super::registry`] checks them and turns
//! them into the tables every layer reads; nothing else looks at these types.
//!
//! Every data file under `data/` is compiled in by the build script (`build.rs`), so adding
//! an architecture is adding its files: no line of code names them.

use std::collections::BTreeMap;

use serde::Deserialize;

include!(concat!(env!("OUT_DIR"), "/catalog_files.rs"));

/// The text of a data file compiled in, by its path under `data/`.
pub(crate) fn file(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Every data file whose path starts with `dir`, in name order.
pub(crate) fn files_under(dir: &str) -> impl Iterator<Item = (&'static str, &'static str)> {
    FILES
        .iter()
        .filter(move |(n, _)| n.starts_with(dir))
        .copied()
}

/// `components.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComponentsFile {
    pub(crate) component: Vec<ComponentSpec>,
    #[serde(default)]
    pub(crate) rename: Vec<RenameSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComponentSpec {
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) kind: ComponentKind,
    #[serde(default)]
    pub(crate) prefixes: Vec<String>,
    #[serde(default)]
    pub(crate) aliases: Vec<String>,
    pub(crate) standalone: Option<StandaloneSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ComponentKind {
    Denoiser,
    TextEncoder,
    Vae,
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StandaloneSpec {
    pub(crate) prefixes: Vec<String>,
    pub(crate) under: String,
    /// Other components' files alone have the same names (the LLM text encoders share
    /// transformers' `model.layers.N...`): which one a file is, its shapes decide
    /// ([`super::canonical_keys`]), never a name alone.
    #[serde(default)]
    pub(crate) by_shape: bool,
    /// `by_shape` components: the renames a loader applies to such a file's names first
    /// (a name's first prefix found is replaced), before `under` goes in front.
    #[serde(default)]
    pub(crate) replace: Vec<(String, String)>,
    /// `by_shape` components: only when the layout places every key of the file (a VAE
    /// alone has the names of other VAEs with other latent widths: a near fit is another).
    #[serde(default)]
    pub(crate) whole: bool,
}

/// An old spelling: `prefix` + one of `before` gets `insert` between them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameSpec {
    pub(crate) prefix: String,
    pub(crate) insert: String,
    pub(crate) before: Vec<String>,
}

/// One `archs/<id>.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArchSpec {
    pub(crate) id: String,
    /// Where the architecture stands among the others: the order of `--arch` lists, and
    /// who wins a tie in detection.
    pub(crate) order: u32,
    #[serde(default)]
    pub(crate) aliases: Vec<String>,
    pub(crate) label: String,
    pub(crate) layout: LayoutSpec,
    pub(crate) components: Vec<ArchComponent>,
    #[serde(default)]
    pub(crate) toolkit_metric: Option<ToolkitMetricSpec>,
    pub(crate) weights: WeightsSpec,
    pub(crate) blocks: BlocksSpec,
    #[serde(default)]
    pub(crate) markers: Vec<String>,
    #[serde(default)]
    pub(crate) variants: Vec<VariantSpec>,
    pub(crate) asim: Option<AsimSpec>,
    pub(crate) modelspec: Option<ModelspecSpec>,
    pub(crate) lora: Option<LoraSpec>,
    pub(crate) diffusers: Option<DiffusersSpec>,
    pub(crate) synth: SynthSpec,
    /// How city96's tools write the denoiser as GGUF (`convert --quant`).
    pub(crate) gguf: Option<GgufSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LayoutSpec {
    pub(crate) format: LayoutFormat,
    /// `ldm`: the core keys, the extras and the groups file.
    pub(crate) core: Option<String>,
    pub(crate) extra: Option<String>,
    pub(crate) groups: Option<String>,
    /// `mecha` and `facts`: the one file.
    pub(crate) file: Option<String>,
    /// Key prefixes a valid file may lack.
    #[serde(default)]
    pub(crate) optional: Vec<String>,
    /// Keys that are sampling buffers, not weights.
    #[serde(default)]
    pub(crate) scheduler: Vec<String>,
    /// The denoiser's keys may be stored without `model.diffusion_model.`.
    #[serde(default)]
    pub(crate) bare: bool,
    /// `facts`: the layouts of the other components, each a facts file of its own (a text
    /// encoder or a VAE several models share) whose keys go under a prefix.
    #[serde(default)]
    pub(crate) with: Vec<WithSpec>,
}

/// A component's layout file and the prefix of its keys in an all-in-one checkpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WithSpec {
    pub(crate) file: String,
    pub(crate) under: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LayoutFormat {
    /// `key, shape, dtype` files plus `key, component, mecha_component, block, optional,
    /// aliases` groups (SD1, SD2, SDXL).
    Ldm,
    /// `key, shape, dtype, component, bare name` (sd-mecha's configs).
    Mecha,
    /// The shared facts' format: a header, then `key, [shape], dtype, component, block` with
    /// the denoiser's keys bare.
    Facts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArchComponent {
    pub(crate) id: String,
    pub(crate) label: Option<String>,
    /// The block-weight entry that weighs the component's rows.
    pub(crate) weight: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolkitMetricSpec {
    #[serde(default)]
    pub(crate) unet: bool,
    #[serde(default)]
    pub(crate) vae: bool,
    pub(crate) clip: Option<ToolkitClip>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolkitClip {
    pub(crate) constants: String,
    pub(crate) known: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WeightsSpec {
    /// The block-weight entry of the `other` row.
    pub(crate) other: Option<String>,
    /// The block-weight list, written as a selector of blocks and ranges.
    pub(crate) order: String,
    /// LoRA Block Weight's short lists.
    #[serde(default)]
    pub(crate) lbw: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlocksSpec {
    #[serde(default)]
    pub(crate) aliases: BTreeMap<String, String>,
    pub(crate) rules: Vec<BlockRuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlockRuleSpec {
    /// After `model.diffusion_model.`.
    pub(crate) prefix: String,
    /// The block, or with `count` the numbered series (`IN` + the number after the prefix).
    pub(crate) block: String,
    pub(crate) count: Option<u8>,
    /// The selector group the block belongs to: `in`, `mid` or `out`.
    pub(crate) group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VariantSpec {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) describe: String,
    /// The name `synth --variant` takes (default: the id), and other names it accepts.
    pub(crate) synth: Option<String>,
    #[serde(default)]
    pub(crate) aliases: Vec<String>,
    /// The variant widens an input: `key`'s dimension `dim` is `value`.
    pub(crate) width: Option<WidthSpec>,
    /// The variant has no keys under this prefix (while the denoiser is there).
    pub(crate) absent: Option<String>,
    /// The variant has this key, which the base release does not (an optional key of the
    /// layout).
    pub(crate) present: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WidthSpec {
    pub(crate) key: String,
    pub(crate) dim: usize,
    pub(crate) value: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AsimSpec {
    pub(crate) blocks: String,
    /// The module of a block's first transformer, by block series (`{n}`: its number).
    pub(crate) modules: BTreeMap<String, String>,
}

/// `[gguf]`: city96's ComfyUI-GGUF conventions for the architecture (`tools/convert.py`,
/// `tools/lcpp.patch`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GgufSpec {
    /// `general.architecture`: the name city96's loader accepts (`IMG_ARCH_LIST`).
    pub(crate) arch: String,
    /// Names containing one of these (after `model.diffusion_model.`) are never quantized.
    #[serde(default)]
    pub(crate) keep: Vec<String>,
    /// Names equal to one of these are never quantized.
    #[serde(default)]
    pub(crate) keep_exact: Vec<String>,
    /// convert.py's `shape_fix` (sd1, sdxl): awkward rows stored as rows of 256.
    #[serde(default)]
    pub(crate) reshape: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelspecSpec {
    pub(crate) ss_base_model_version: String,
    pub(crate) architecture: String,
    /// kohya's `ss_v2` (SD2's networks).
    #[serde(default)]
    pub(crate) ss_v2: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoraSpec {
    /// The order LoRA detection prefers on a tie.
    pub(crate) order: u32,
    /// What extraction writes for the denoiser: `diffusers` or `single` module paths.
    pub(crate) extract: ExtractNames,
    /// Only the denoiser's modules under these prefixes are extracted.
    #[serde(default)]
    pub(crate) extract_only: Vec<String>,
    /// Nor those whose path holds one of these (the modulation layers musubi-tuner's
    /// extractors leave out).
    #[serde(default)]
    pub(crate) extract_skip: Vec<String>,
    /// Metadata that makes this architecture win a tie.
    #[serde(default)]
    pub(crate) prefer_when: Vec<MetadataTest>,
    /// The prefixes of the denoiser's diffusers module names (`[diffusers] modules`).
    pub(crate) diffusers: Option<LoraDiffusersNames>,
    #[serde(default)]
    pub(crate) text_encoders: Vec<LoraTextEncoder>,
    /// More names of a module (a trainer's own dialect).
    #[serde(default)]
    pub(crate) names: Vec<ModuleName>,
    /// The prefix PEFT writes before the single-file module path, for an architecture
    /// whose single-file names are its diffusers names (Qwen-Image: `transformer.`).
    pub(crate) peft_single: Option<String>,
    /// Kohya-style prefixes read, never written, over the denoiser's diffusers module names
    /// (SimpleTuner's LyCORIS files: `lycoris_`, which ComfyUI reads too).
    #[serde(default)]
    pub(crate) kohya_also: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ExtractNames {
    Diffusers,
    Single,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetadataTest {
    pub(crate) key: String,
    /// Equal, ignoring case.
    pub(crate) equals: Option<String>,
    pub(crate) starts_with: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoraDiffusersNames {
    pub(crate) peft: String,
    pub(crate) kohya: String,
    /// More dotted prefixes of the diffusers path (ai-toolkit's `diffusion_model.` over
    /// Z-Image's diffusers names).
    #[serde(default)]
    pub(crate) also: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoraTextEncoder {
    pub(crate) component: String,
    /// The single file's prefix of the encoder's HF module paths.
    pub(crate) under: String,
    pub(crate) kohya: String,
    /// More kohya prefixes read for it, never written (diffusers' `convert_state_dict_to_kohya`
    /// writes `lora_te1_` for SD1's and SD2's one encoder).
    #[serde(default)]
    pub(crate) kohya_also: Vec<String>,
    pub(crate) peft: String,
    /// An OpenCLIP tower: HF's q/k/v are thirds of its fused `in_proj_weight`.
    #[serde(default)]
    pub(crate) openclip: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModuleName {
    pub(crate) module: String,
    pub(crate) name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiffusersSpec {
    /// Which pipeline spec is tried first when a folder could be several.
    pub(crate) priority: Option<u32>,
    /// What a pipeline folder must hold to be this architecture.
    #[serde(default)]
    pub(crate) markers: Vec<FolderMarker>,
    /// The pipeline's component folders, in reading order.
    #[serde(default)]
    pub(crate) folders: Vec<FolderSpec>,
    /// The U-Net's structure, for the `ldm-unet` names.
    pub(crate) unet: Option<UnetSpec>,
    /// The denoiser's modules under diffusers' names, module by module.
    #[serde(default)]
    pub(crate) modules: Vec<ModuleRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FolderMarker {
    pub(crate) folder: String,
    /// A tensor name prefix the folder's weights must have (without it: the folder itself).
    pub(crate) prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FolderSpec {
    pub(crate) folder: String,
    /// `ldm-unet`, `clip`, `openclip`, `ldm-vae` or `modules` (the `[diffusers] modules`).
    pub(crate) names: String,
    /// The single file's prefix of the component.
    pub(crate) under: String,
    /// OpenCLIP: the text projection is there (SDXL), stored transposed.
    #[serde(default)]
    pub(crate) projection: bool,
    /// A tensor no rule maps whose name, under `under`, is a key of the architecture's
    /// layout is that key (diffusers keeps most of Z-Image's and all of Qwen-Image's names).
    #[serde(default)]
    pub(crate) known_as_is: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UnetSpec {
    pub(crate) levels: usize,
    pub(crate) down_attention: Vec<usize>,
    pub(crate) up_attention: Vec<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModuleRule {
    /// The single file's module path (`{n}`: a block number).
    pub(crate) module: String,
    /// Diffusers' module path(s): one, or the parts a fused projection is split into.
    pub(crate) names: Vec<String>,
    /// How the parts split the module's rows: `thirds` or `hidden` (each part the key's
    /// input width, the last the rest).
    pub(crate) rows: Option<RowSplit>,
    /// Parameter names that differ (`{ scale = "weight" }`: the module's `.scale` is
    /// diffusers' `.weight`).
    #[serde(default)]
    pub(crate) params: BTreeMap<String, String>,
    /// The halves of the first dimension are swapped in diffusers' tensor.
    #[serde(default)]
    pub(crate) swap_halves: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RowSplit {
    Thirds,
    Hidden,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SynthSpec {
    /// The generated family's block-weighted merge: weights by selector.
    pub(crate) mbw: Vec<(String, f64)>,
    /// The same, as the family's recipe text says it.
    pub(crate) mbw_text: String,
}
