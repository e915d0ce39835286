//! The key layouts of every architecture, read from the files its spec names
//! (`[layout]` in `data/archs/<id>.toml`), in one of three formats:
//!
//! * `ldm` (SD1, SD2, SDXL): `<arch>.tsv` lists the core keys with shape and dtype,
//!   `<arch>.extra.tsv` the optional extras (EMA, scheduler buffers, v-pred markers), and
//!   `<arch>.groups.tsv` the component, optional flag and aliases of each key;
//! * `mecha` (Flux.1, Chroma, SD3/SD3.5): one file of key, shape, dtype, component and the
//!   bare name, copied (Flux dev, SD3 medium) or derived by `scripts/derive-layouts.py`;
//! * `facts`: the shared facts' own format (`../shared/archs/`): a header, then key, shape
//!   as `[a, b]`, dtype as the release stores it, component, block; the denoiser's keys are
//!   bare and get `model.diffusion_model.`.
//!
//! `data/README.md` says where each file comes from.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::spec::{self, LayoutFormat, LayoutSpec};
use super::{Arch, DENOISER_PREFIX};
use ckpt_read::Dtype;

/// The A1111 model toolkit's metric: each part's baseline sum and scale.
pub const TOOLKIT_METRIC_CONSTANTS: &str = include_str!("data/toolkit-metric-constants.tsv");
/// The toolkit's metric values of known VAEs and text encoders.
pub const TOOLKIT_METRIC_KNOWN: &str = include_str!("data/toolkit-metric-known.tsv");

/// What the catalog knows about one key of an architecture.
#[derive(Clone, Debug)]
pub struct CatalogKey {
    pub name: String,
    /// The shape of the original full-size checkpoint.
    pub shape: Vec<usize>,
    /// The dtype of the full-precision reference file.
    pub dtype: Dtype,
    /// The data's component column: `unet` (or `diffuser`), `txt` (`clip_l`, `t5xxl`),
    /// `txt2` (`clip_g`), `vae`, `ema`, `scheduler`, `meta`.
    pub role: Role,
    /// May be absent from a valid file (pruned text-encoder layers, position ids, extras).
    pub optional: bool,
    /// In the core list (as opposed to the extras list).
    pub core: bool,
}

/// The role column of the layout data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The denoiser: U-Net or DiT.
    Denoiser,
    Txt,
    Txt2,
    Vae,
    Ema,
    Scheduler,
    Meta,
}

/// The layout of one architecture.
#[derive(Debug)]
pub struct ArchTable {
    pub keys: Vec<CatalogKey>,
    index: HashMap<String, usize>,
}

impl ArchTable {
    pub fn get(&self, name: &str) -> Option<&CatalogKey> {
        self.index.get(name).map(|&i| &self.keys[i])
    }

    /// Number of core keys (the full checkpoint without extras).
    pub fn core_len(&self) -> usize {
        self.keys.iter().filter(|k| k.core).count()
    }
}

/// The text of a layout file the spec names.
fn text(name: &Option<String>, field: &str, arch: Arch) -> &'static str {
    let name = name
        .as_deref()
        .unwrap_or_else(|| panic!("catalog data: {arch}'s [layout] has no {field}"));
    spec::file(name)
        .unwrap_or_else(|| panic!("catalog data: {arch} names {name}, which is missing"))
}

/// The layout of `arch` (parsed once, on first use).
pub fn table(arch: Arch) -> &'static ArchTable {
    static TABLES: OnceLock<Vec<OnceLock<ArchTable>>> = OnceLock::new();
    let slots = TABLES.get_or_init(|| Arch::all().iter().map(|_| OnceLock::new()).collect());
    slots[arch.0 as usize].get_or_init(|| {
        let l = &arch.info().spec.layout;
        let mut t = match l.format {
            LayoutFormat::Ldm => parse_ldm(
                text(&l.core, "core", arch),
                text(&l.extra, "extra", arch),
                text(&l.groups, "groups", arch),
            ),
            LayoutFormat::Mecha => parse_mecha(text(&l.file, "file", arch)),
            LayoutFormat::Facts => {
                let mut keys = parse_facts(text(&l.file, "file", arch), "");
                for w in &l.with {
                    keys.extend(parse_facts(
                        text(&Some(w.file.clone()), "file", arch),
                        &w.under,
                    ));
                }
                let index = index_of(&keys);
                ArchTable { keys, index }
            }
        };
        apply_roles(&mut t, l);
        t
    })
}

/// The spec's optional prefixes and sampling buffers.
fn apply_roles(t: &mut ArchTable, l: &LayoutSpec) {
    for k in &mut t.keys {
        if l.optional.iter().any(|p| k.name.starts_with(p.as_str())) {
            k.optional = true;
        }
        if l.scheduler.contains(&k.name) {
            k.role = Role::Scheduler;
        }
    }
}

/// Every alias the layouts list, mapped to its canonical key.
pub fn aliases() -> &'static HashMap<String, String> {
    static ALIASES: OnceLock<HashMap<String, String>> = OnceLock::new();
    ALIASES.get_or_init(|| {
        let mut map = HashMap::new();
        for &arch in Arch::all() {
            let l = &arch.info().spec.layout;
            let (text, skip, column) = match l.format {
                LayoutFormat::Ldm => (text(&l.groups, "groups", arch), 1, 5),
                LayoutFormat::Mecha => (text(&l.file, "file", arch), 0, 4),
                LayoutFormat::Facts => continue,
            };
            for line in text.lines().skip(skip) {
                let cols: Vec<&str> = line.split('\t').collect();
                if let (Some(key), Some(list)) = (cols.first(), cols.get(column)) {
                    for alias in list.split(',').filter(|a| !a.is_empty()) {
                        map.insert(alias.to_string(), key.to_string());
                    }
                }
            }
        }
        map
    })
}

/// One `key, shape, dtype, ...` line: the key, its shape and its dtype.
fn key_shape_dtype(line: &str) -> (String, Vec<usize>, Dtype) {
    let mut cols = line.split('\t');
    let name = cols.next().expect("key column").to_string();
    let shape = cols.next().expect("shape column");
    let shape = shape.trim_start_matches('[').trim_end_matches(']');
    let shape = if shape.is_empty() {
        Vec::new()
    } else {
        shape
            .split(',')
            .map(|d| d.trim().parse().expect("numeric shape"))
            .collect()
    };
    let dtype = match cols.next().expect("dtype column") {
        "float32" | "F32" => Dtype::F32,
        "float16" | "F16" => Dtype::F16,
        "bfloat16" | "BF16" => Dtype::BF16,
        "int64" | "I64" => Dtype::I64,
        "int32" | "I32" => Dtype::I32,
        other => panic!("catalog data: unexpected dtype {other}"),
    };
    (name, shape, dtype)
}

fn index_of(keys: &[CatalogKey]) -> HashMap<String, usize> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| (k.name.clone(), i))
        .collect()
}

fn parse_mecha(text: &str) -> ArchTable {
    let mut keys = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (name, shape, dtype) = key_shape_dtype(line);
        let role = match line.split('\t').nth(3).expect("component column") {
            "diffuser" => Role::Denoiser,
            "clip_l" | "t5xxl" => Role::Txt,
            "clip_g" => Role::Txt2,
            "vae" => Role::Vae,
            other => panic!("catalog data: unexpected component {other}"),
        };
        keys.push(CatalogKey {
            optional: false,
            name,
            shape,
            dtype,
            role,
            core: true,
        });
    }
    let index = index_of(&keys);
    ArchTable { keys, index }
}

/// The shared facts' format: a header line, then key, `[shape]`, dtype, component, block.
/// The denoiser's keys (`diffusion_model`) are bare.
fn parse_facts(text: &str, under: &str) -> Vec<CatalogKey> {
    let mut keys = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
        let (name, shape, dtype) = key_shape_dtype(line);
        let role = match line.split('\t').nth(3).expect("component column") {
            "diffusion_model" => Role::Denoiser,
            // A VAE (Flux.1's AE, which Z-Image decodes with; FLUX.2's; Qwen-Image's).
            "vae" => Role::Vae,
            // A text encoder of components.toml (Qwen3-4B, Mistral-3 24B, ...).
            other if super::Component::parse(other).is_some_and(|c| c.is_text_encoder()) => {
                Role::Txt
            }
            other => panic!("catalog data: unexpected component {other}"),
        };
        let name = match role {
            Role::Denoiser => format!("{DENOISER_PREFIX}{name}"),
            _ => format!("{under}{name}"),
        };
        keys.push(CatalogKey {
            name,
            shape,
            dtype,
            role,
            optional: false,
            core: true,
        });
    }
    keys
}

fn parse_ldm(core: &str, extra: &str, groups: &str) -> ArchTable {
    let mut keys = Vec::new();
    for (text, core) in [(core, true), (extra, false)] {
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (name, shape, dtype) = key_shape_dtype(line);
            keys.push(CatalogKey {
                name,
                shape,
                dtype,
                role: Role::Denoiser,
                optional: false,
                core,
            });
        }
    }
    let index = index_of(&keys);
    for line in groups.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let Some(&i) = index.get(cols[0]) else {
            continue;
        };
        keys[i].role = match cols[1] {
            "unet" => Role::Denoiser,
            "txt" => Role::Txt,
            "txt2" => Role::Txt2,
            "vae" => Role::Vae,
            "ema" => Role::Ema,
            "scheduler" => Role::Scheduler,
            "meta" => Role::Meta,
            other => panic!("catalog data: unexpected component {other}"),
        };
        keys[i].optional = cols[4] == "1";
    }
    ArchTable { keys, index }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Block, Component, component_of};

    fn arch(id: &str) -> Arch {
        Arch::parse(id).unwrap()
    }

    fn component(id: &str) -> Component {
        Component::named(id).unwrap()
    }

    /// Every spec loads, names files that exist, and every key of its layout has a component
    /// the spec lists (or none, for extras), and a block when it is the denoiser's.
    #[test]
    fn every_spec_loads_and_explains_its_layout() {
        assert!(Arch::all().len() >= 8);
        for &a in Arch::all() {
            let t = table(a);
            assert!(t.core_len() > 0, "{a}");
            for k in t
                .keys
                .iter()
                .filter(|k| k.core && k.role != Role::Scheduler)
            {
                let c = component_of(&k.name);
                assert!(a.components().contains(&c), "{a}: {} is {c}", k.name);
                if c == a.denoiser() {
                    assert!(
                        a.block_of(&k.name).is_some(),
                        "{a}: {} has no block",
                        k.name
                    );
                }
            }
        }
    }

    /// nvfp4 and mxfp8 pad a weight's columns to 16 and 32 and the file does not record
    /// the real count (ComfyUI takes it from the model): no catalogued architecture has a
    /// matrix that would be padded (every 2-D weight's dimensions are multiples of 32), so
    /// a quantized layer of a catalogued model never needs its columns guessed. (Linear
    /// layers only: embedding tables are not quantized in those formats.) One exception,
    /// listed: the MLP of Qwen2.5-VL's vision tower is 3420 wide, so a file quantizing it
    /// in nvfp4 or mxfp8 without its `pre_quant_scale` gets the `columns_unknown` warning.
    /// ckpt-diff's writer quantizes the denoiser only.
    #[test]
    fn no_catalogued_matrix_needs_padding_in_the_block_formats() {
        let mut exceptions = std::collections::BTreeSet::new();
        for &a in Arch::all() {
            for k in &table(a).keys {
                if k.name.ends_with(".weight")
                    && k.shape.len() == 2
                    && !k.name.contains("embedding")
                    && k.role != Role::Vae
                    && !k.shape.iter().all(|d| d % 32 == 0)
                {
                    exceptions.insert(k.name.split(".blocks.").nth(1).map_or_else(
                        || format!("{a}: {}", k.name),
                        |rest| format!("{a}: {}", rest.trim_start_matches(char::is_numeric)),
                    ));
                }
            }
        }
        let expected: std::collections::BTreeSet<String> = [
            "qwen-image: .mlp.down_proj.weight",
            "qwen-image: .mlp.gate_proj.weight",
            "qwen-image: .mlp.up_proj.weight",
        ]
        .map(String::from)
        .into();
        assert_eq!(exceptions, expected);
    }

    #[test]
    fn counts_match_the_data_readme() {
        assert_eq!(table(arch("sd1")).core_len(), 1131);
        assert_eq!(table(arch("sd2")).core_len(), 1228);
        assert_eq!(table(arch("sdxl")).core_len(), 2515);
        let params = |a: Arch| -> usize {
            table(a)
                .keys
                .iter()
                .filter(|k| k.core)
                .map(|k| k.shape.iter().product::<usize>())
                .sum()
        };
        assert_eq!(params(arch("sd1")), 1_066_235_384);
        assert_eq!(params(arch("sd2")), 1_303_597_228);
        assert_eq!(params(arch("sdxl")), 3_468_837_945);
    }

    /// The block table agrees with the block column of the layout data everywhere the two
    /// conventions agree (the data follows sd-mecha: time_embed/label_emb in BASE, SDXL VAE
    /// in a VAE slot; keys outside the U-Net in BASE).
    #[test]
    fn block_table_matches_layout_data() {
        for id in ["sd1", "sd2", "sdxl"] {
            let a = arch(id);
            let groups = text(&a.info().spec.layout.groups, "groups", a);
            let mut checked = 0;
            for line in groups.lines().skip(1) {
                let cols: Vec<&str> = line.split('\t').collect();
                let (key, data_block) = (cols[0], cols[3]);
                if key.contains("time_embed") || key.contains("label_emb") || data_block == "VAE" {
                    continue;
                }
                let ours = if component_of(key) == a.denoiser() {
                    a.block_of(key).expect("every catalog key has a block")
                } else {
                    a.weight_block_of(component_of(key))
                        .expect("SD weighs every row")
                };
                assert_eq!(ours.to_string(), data_block, "{key}");
                checked += 1;
            }
            assert!(checked > 1000);
        }
        assert_eq!(
            arch("sd1").block_of("model.diffusion_model.time_embed.0.weight"),
            Some(Block::new("IN00"))
        );
    }

    #[test]
    fn unet_keys_per_block_match_the_data_readme() {
        let count = |a: Arch, b: &str| {
            table(a)
                .keys
                .iter()
                .filter(|k| k.core && k.role == Role::Denoiser)
                .filter(|k| a.block_of(&k.name) == Some(Block::new(b)))
                .count()
        };
        // README lists BASE 4 (time_embed) separately; we put those in IN00 (2 + 4 = 6).
        assert_eq!(count(arch("sd1"), "IN00"), 6);
        assert_eq!(count(arch("sd1"), "OUT11"), 42);
        assert_eq!(count(arch("sdxl"), "IN00"), 2 + 8);
        assert_eq!(count(arch("sdxl"), "M00"), 226);
        assert_eq!(count(arch("sdxl"), "OUT08"), 16);
    }

    /// The DiT layouts: key counts of the shared facts (flux-dev 1439, sd3-medium 1672), the
    /// parameter counts of the released models.
    #[test]
    fn dit_layouts() {
        let count = |a: Arch, c: &str| {
            table(a)
                .keys
                .iter()
                .filter(|k| component_of(&k.name) == component(c))
                .count()
        };
        assert_eq!(table(arch("flux")).core_len(), 1439);
        assert_eq!(table(arch("sd3")).core_len(), 1672);
        assert_eq!(count(arch("flux"), "diffuser"), 780);
        assert_eq!(count(arch("flux"), "t5xxl"), 219);
        assert_eq!(count(arch("sd3"), "clip_g"), 518);
        let params = |a: Arch| -> usize {
            table(a)
                .keys
                .iter()
                .filter(|k| component_of(&k.name) == component("diffuser"))
                .map(|k| k.shape.iter().product::<usize>())
                .sum()
        };
        // Flux.1-dev's transformer: 11.9 B parameters; SD3 medium's MMDiT 2.03 B (its
        // model card says 2B); SD3.5 large 8.06 B ("8.1 billion"); SD3.5 medium 2.24 B
        // ("2.5 billion" with its text encoders' projection layers counted differently).
        assert_eq!(params(arch("flux")), 11_901_408_320);
        assert!((2_000_000_000..2_100_000_000).contains(&params(arch("sd3"))));
        assert!((8_000_000_000..8_200_000_000).contains(&params(arch("sd35l"))));
        assert!((2_200_000_000..2_600_000_000).contains(&params(arch("sd35m"))));
    }

    #[test]
    fn aliases_point_at_catalog_keys() {
        let a = aliases();
        assert!(a.len() > 800);
        for (alias, key) in a {
            assert!(
                Arch::all()
                    .iter()
                    .any(|&arch| table(arch).get(key).is_some()),
                "{alias} -> {key}"
            );
        }
    }
}

#[cfg(test)]
mod models_2026 {
    use super::*;
    use crate::catalog::Grouping;

    /// The 2026 models' diffusers: the published parameter counts (the base release, without
    /// a variant's extra key), and their rows in the order the spec gives.
    #[test]
    fn the_2026_models_are_data() {
        let cases: [(&str, usize, &[&str], usize); 5] = [
            (
                "z-image",
                6_154_908_736,
                &["X_EMBEDDER", "PAD_TOKENS", "CAP_EMBEDDER"],
                1 + 4 + 4 + 30,
            ),
            (
                "qwen-image",
                20_430_401_088,
                &["IMG_IN", "TXT_NORM", "TXT_IN"],
                4 + 60 + 2,
            ),
            (
                "flux2-dev",
                32_223_281_152,
                &["IN", "MOD", "D00"],
                2 + 8 + 48 + 1,
            ),
            (
                "flux2-klein-9b",
                9_078_581_248,
                &["IN", "MOD", "D00"],
                2 + 8 + 24 + 1,
            ),
            (
                "flux2-klein-4b",
                3_875_544_576,
                &["IN", "MOD", "D00"],
                2 + 5 + 20 + 1,
            ),
        ];
        for (id, params, first, rows) in cases {
            let a = Arch::parse(id).unwrap();
            let added: Vec<&str> = a.variants().iter().filter_map(|v| v.present).collect();
            let count: usize = table(a)
                .keys
                .iter()
                .filter(|k| k.role == Role::Denoiser && !added.contains(&k.name.as_str()))
                .map(|k| k.shape.iter().product::<usize>())
                .sum();
            assert_eq!(count, params, "{id}");
            let labels: Vec<String> = Grouping::for_arch(a)
                .groups()
                .iter()
                .map(|g| g.label.clone())
                .collect();
            assert_eq!(&labels[..3], first, "{id}");
            // Every row of the block list, plus the `other` row no key falls into.
            assert!(labels.len() >= rows, "{id}: {labels:?}");
        }
        // Qwen-Image's `norm_out` is a row of its own, not the first slider's.
        let q = Arch::parse("qwen-image").unwrap();
        assert_eq!(
            q.block_of("model.diffusion_model.norm_out.linear.weight")
                .map(|b| b.label()),
            Some("NORM_OUT")
        );
    }
}
