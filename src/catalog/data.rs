//! The key layouts of SD1, SD2 and SDXL, compiled into the binary.
//!
//! The TSV files next to this module are copied verbatim from the project's shared facts
//! (`data/README.md` says where they come from): `<arch>.tsv` lists the core keys with
//! shape and dtype, `<arch>.extra.tsv` the optional extras (EMA, scheduler buffers, v-pred
//! markers), and `<arch>.groups.tsv` the component, optional flag and aliases of each key.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::Arch;
use crate::reader::Dtype;

/// What the catalog knows about one key of an architecture.
#[derive(Clone, Debug)]
pub struct CatalogKey {
    pub name: String,
    /// The shape of the original full-size checkpoint.
    pub shape: Vec<usize>,
    /// The dtype of the full-precision reference file.
    pub dtype: Dtype,
    /// The data's component column: `unet`, `txt`, `txt2`, `vae`, `ema`, `scheduler`, `meta`.
    pub role: Role,
    /// May be absent from a valid file (pruned text-encoder layers, position ids, extras).
    pub optional: bool,
    /// In the core list (as opposed to the extras list).
    pub core: bool,
}

/// The role column of the layout data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Unet,
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

struct Sources {
    core: &'static str,
    extra: &'static str,
    groups: &'static str,
}

fn sources(arch: Arch) -> Sources {
    match arch {
        Arch::Sd1 => Sources {
            core: include_str!("data/sd1-ldm.tsv"),
            extra: include_str!("data/sd1-ldm.extra.tsv"),
            groups: include_str!("data/sd1-ldm.groups.tsv"),
        },
        Arch::Sd2 => Sources {
            core: include_str!("data/sd2-ldm.tsv"),
            extra: include_str!("data/sd2-ldm.extra.tsv"),
            groups: include_str!("data/sd2-ldm.groups.tsv"),
        },
        Arch::Sdxl => Sources {
            core: include_str!("data/sdxl-sgm.tsv"),
            extra: include_str!("data/sdxl-sgm.extra.tsv"),
            groups: include_str!("data/sdxl-sgm.groups.tsv"),
        },
    }
}

/// The layout of `arch` (parsed once, on first use).
pub fn table(arch: Arch) -> &'static ArchTable {
    static TABLES: [OnceLock<ArchTable>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match arch {
        Arch::Sd1 => &TABLES[0],
        Arch::Sd2 => &TABLES[1],
        Arch::Sdxl => &TABLES[2],
    };
    slot.get_or_init(|| parse(sources(arch)))
}

/// Every alias the layouts list, mapped to its canonical key.
pub fn aliases() -> &'static HashMap<String, String> {
    static ALIASES: OnceLock<HashMap<String, String>> = OnceLock::new();
    ALIASES.get_or_init(|| {
        let mut map = HashMap::new();
        for arch in Arch::ALL {
            for line in sources(arch).groups.lines().skip(1) {
                let cols: Vec<&str> = line.split('\t').collect();
                if let (Some(key), Some(list)) = (cols.first(), cols.get(5)) {
                    for alias in list.split(',').filter(|a| !a.is_empty()) {
                        map.insert(alias.to_string(), key.to_string());
                    }
                }
            }
        }
        map
    })
}

fn parse(src: Sources) -> ArchTable {
    let mut keys = Vec::new();
    for (text, core) in [(src.core, true), (src.extra, false)] {
        for line in text.lines().filter(|l| !l.is_empty()) {
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
                "int64" => Dtype::I64,
                "int32" => Dtype::I32,
                other => panic!("catalog data: unexpected dtype {other}"),
            };
            keys.push(CatalogKey {
                name,
                shape,
                dtype,
                role: Role::Unet,
                optional: false,
                core,
            });
        }
    }
    let index: HashMap<String, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.name.clone(), i))
        .collect();
    for line in src.groups.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let Some(&i) = index.get(cols[0]) else {
            continue;
        };
        keys[i].role = match cols[1] {
            "unet" => Role::Unet,
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
        for arch in Arch::ALL {
            let groups = sources(arch).groups;
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
                .filter(|k| k.core && k.role == Role::Unet)
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

    #[test]
    fn aliases_point_at_catalog_keys() {
        let a = aliases();
        assert!(a.len() > 800);
        for (alias, key) in a {
            assert!(table(Arch::Sd1).get(key).is_some(), "{alias} -> {key}");
        }
    }
}
