//! The key layouts of every architecture, compiled into the binary.
//!
//! The TSV files next to this module come from the project's shared facts (`data/README.md`
//! says where each comes from). SD1, SD2 and SDXL: `<arch>.tsv` lists the core keys with
//! shape and dtype, `<arch>.extra.tsv` the optional extras (EMA, scheduler buffers, v-pred
//! markers), and `<arch>.groups.tsv` the component, optional flag and aliases of each key.
//! Flux.1, Chroma and SD3/SD3.5: one `<arch>.tsv` of key, shape, dtype, component and the
//! bare name, copied (Flux dev, SD3 medium) or derived by `scripts/derive-layouts.py`
//! (Chroma, SD3.5 medium and large).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::Arch;
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

/// Where an architecture's layout comes from.
enum Sources {
    /// SD1/SD2/SDXL: core keys, extras, groups.
    Ldm {
        core: &'static str,
        extra: &'static str,
        groups: &'static str,
    },
    /// Key, shape, dtype, component, bare name.
    Mecha(&'static str),
}

fn sources(arch: Arch) -> Sources {
    match arch {
        Arch::Sd1 => Sources::Ldm {
            core: include_str!("data/sd1-ldm.tsv"),
            extra: include_str!("data/sd1-ldm.extra.tsv"),
            groups: include_str!("data/sd1-ldm.groups.tsv"),
        },
        Arch::Sd2 => Sources::Ldm {
            core: include_str!("data/sd2-ldm.tsv"),
            extra: include_str!("data/sd2-ldm.extra.tsv"),
            groups: include_str!("data/sd2-ldm.groups.tsv"),
        },
        Arch::Sdxl => Sources::Ldm {
            core: include_str!("data/sdxl-sgm.tsv"),
            extra: include_str!("data/sdxl-sgm.extra.tsv"),
            groups: include_str!("data/sdxl-sgm.groups.tsv"),
        },
        Arch::Flux => Sources::Mecha(include_str!("data/flux-dev.tsv")),
        Arch::Chroma => Sources::Mecha(include_str!("data/flux-chroma.tsv")),
        Arch::Sd3 => Sources::Mecha(include_str!("data/sd3-medium.tsv")),
        Arch::Sd35Medium => Sources::Mecha(include_str!("data/sd35-medium.tsv")),
        Arch::Sd35Large => Sources::Mecha(include_str!("data/sd35-large.tsv")),
    }
}

/// The layout of `arch` (parsed once, on first use).
pub fn table(arch: Arch) -> &'static ArchTable {
    static TABLES: [OnceLock<ArchTable>; Arch::ALL.len()] =
        [const { OnceLock::new() }; Arch::ALL.len()];
    let slot = Arch::ALL
        .iter()
        .position(|a| *a == arch)
        .expect("every arch is in ALL");
    TABLES[slot].get_or_init(|| match sources(arch) {
        Sources::Ldm {
            core,
            extra,
            groups,
        } => parse_ldm(core, extra, groups),
        Sources::Mecha(text) => parse_mecha(text),
    })
}

/// Every alias the layouts list, mapped to its canonical key.
pub fn aliases() -> &'static HashMap<String, String> {
    static ALIASES: OnceLock<HashMap<String, String>> = OnceLock::new();
    ALIASES.get_or_init(|| {
        let mut map = HashMap::new();
        for arch in Arch::ALL {
            let (text, skip, column) = match sources(arch) {
                Sources::Ldm { groups, .. } => (groups, 1, 5),
                Sources::Mecha(text) => (text, 0, 4),
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
    let shape = if shape.is_empty() {
        Vec::new()
    } else {
        shape
            .split(',')
            .map(|d| d.parse().expect("numeric shape"))
            .collect()
    };
    let dtype = match cols.next().expect("dtype column") {
        "float32" => Dtype::F32,
        "float16" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "int64" => Dtype::I64,
        "int32" => Dtype::I32,
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

/// Keys a valid file of a DiT layout may lack: Flux.1 schnell has no guidance embedding;
/// the sampling buffer of SD3 checkpoints is recomputed by loaders.
fn optional_in_mecha(key: &str) -> bool {
    key.starts_with("model.diffusion_model.guidance_in.") || key == "model.model_sampling.sigmas"
}

fn parse_mecha(text: &str) -> ArchTable {
    let mut keys = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (name, shape, dtype) = key_shape_dtype(line);
        let role = if name == "model.model_sampling.sigmas" {
            Role::Scheduler
        } else {
            match line.split('\t').nth(3).expect("component column") {
                "diffuser" => Role::Denoiser,
                "clip_l" | "t5xxl" => Role::Txt,
                "clip_g" => Role::Txt2,
                "vae" => Role::Vae,
                other => panic!("catalog data: unexpected component {other}"),
            }
        };
        keys.push(CatalogKey {
            optional: optional_in_mecha(&name),
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
    use crate::catalog::Component;
    use crate::catalog::blocks::{Block, block_of};

    #[test]
    fn counts_match_the_data_readme() {
        assert_eq!(table(Arch::Sd1).core_len(), 1131);
        assert_eq!(table(Arch::Sd2).core_len(), 1228);
        assert_eq!(table(Arch::Sdxl).core_len(), 2515);
        let params = |a: Arch| -> usize {
            table(a)
                .keys
                .iter()
                .filter(|k| k.core)
                .map(|k| k.shape.iter().product::<usize>())
                .sum()
        };
        assert_eq!(params(Arch::Sd1), 1_066_235_384);
        assert_eq!(params(Arch::Sd2), 1_303_597_228);
        assert_eq!(params(Arch::Sdxl), 3_468_837_945);
    }

    /// The block table agrees with the block column of the layout data everywhere the two
    /// conventions agree (the data follows sd-mecha: time_embed/label_emb in BASE, SDXL VAE
    /// in a VAE slot).
    #[test]
    fn block_table_matches_layout_data() {
        for arch in [Arch::Sd1, Arch::Sd2, Arch::Sdxl] {
            let Sources::Ldm { groups, .. } = sources(arch) else {
                unreachable!()
            };
            let mut checked = 0;
            for line in groups.lines().skip(1) {
                let cols: Vec<&str> = line.split('\t').collect();
                let (key, data_block) = (cols[0], cols[3]);
                if key.contains("time_embed") || key.contains("label_emb") || data_block == "VAE" {
                    continue;
                }
                let ours = block_of(key, arch.depth()).expect("every catalog key has a block");
                assert_eq!(ours.to_string(), data_block, "{key}");
                checked += 1;
            }
            assert!(checked > 1000);
        }
        assert_eq!(
            block_of("model.diffusion_model.time_embed.0.weight", 12),
            Some(Block::In(0))
        );
    }

    #[test]
    fn unet_keys_per_block_match_the_data_readme() {
        let count = |arch: Arch, b: Block| {
            table(arch)
                .keys
                .iter()
                .filter(|k| k.core && k.role == Role::Denoiser)
                .filter(|k| block_of(&k.name, arch.depth()) == Some(b))
                .count()
        };
        // README lists BASE 4 (time_embed) separately; we put those in IN00 (2 + 4 = 6).
        assert_eq!(count(Arch::Sd1, Block::In(0)), 6);
        assert_eq!(count(Arch::Sd1, Block::Out(11)), 42);
        assert_eq!(count(Arch::Sdxl, Block::In(0)), 2 + 8);
        assert_eq!(count(Arch::Sdxl, Block::Mid), 226);
        assert_eq!(count(Arch::Sdxl, Block::Out(8)), 16);
    }

    /// The DiT layouts: key counts of the shared facts (flux-dev 1439, sd3-medium 1672),
    /// every diffuser key with a block, the parameter counts of the released models.
    #[test]
    fn dit_layouts() {
        let count = |a: Arch, c: Component| {
            table(a)
                .keys
                .iter()
                .filter(|k| crate::catalog::component_of(&k.name) == c)
                .count()
        };
        assert_eq!(table(Arch::Flux).core_len(), 1439);
        assert_eq!(table(Arch::Sd3).core_len(), 1672);
        assert_eq!(count(Arch::Flux, Component::Diffuser), 780);
        assert_eq!(count(Arch::Flux, Component::T5xxl), 219);
        assert_eq!(count(Arch::Sd3, Component::ClipG), 518);
        for arch in [
            Arch::Flux,
            Arch::Chroma,
            Arch::Sd3,
            Arch::Sd35Medium,
            Arch::Sd35Large,
        ] {
            for k in &table(arch).keys {
                if crate::catalog::component_of(&k.name) == Component::Diffuser {
                    assert!(arch.block_of(&k.name).is_some(), "{arch}: {}", k.name);
                }
            }
        }
        let params = |a: Arch| -> usize {
            table(a)
                .keys
                .iter()
                .filter(|k| crate::catalog::component_of(&k.name) == Component::Diffuser)
                .map(|k| k.shape.iter().product::<usize>())
                .sum()
        };
        // Flux.1-dev's transformer: 11.9 B parameters; SD3 medium's MMDiT 2.03 B (its
        // model card says 2B); SD3.5 large 8.06 B ("8.1 billion"); SD3.5 medium 2.24 B
        // ("2.5 billion" with its text encoders' projection layers counted differently).
        assert_eq!(params(Arch::Flux), 11_901_408_320);
        assert!((2_000_000_000..2_100_000_000).contains(&params(Arch::Sd3)));
        assert!((8_000_000_000..8_200_000_000).contains(&params(Arch::Sd35Large)));
        assert!((2_200_000_000..2_600_000_000).contains(&params(Arch::Sd35Medium)));
    }

    #[test]
    fn aliases_point_at_catalog_keys() {
        let a = aliases();
        assert!(a.len() > 800);
        for (alias, key) in a {
            assert!(
                Arch::ALL.iter().any(|&arch| table(arch).get(key).is_some()),
                "{alias} -> {key}"
            );
        }
    }
}
