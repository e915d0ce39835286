//! The catalog's tables, built once from the data files ([`super::spec`]) and checked as
//! they are built: every name an architecture's data uses must resolve (a component, a
//! block, a block of its weight list), so a mistake in the data fails the first test that
//! touches the catalog with a message that names the file and the field.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use super::spec::{self, ArchSpec, ComponentKind, ComponentSpec, RenameSpec};
use super::{Arch, Block, Component};

/// The whole catalog.
pub(crate) struct Registry {
    pub(crate) components: Vec<ComponentInfo>,
    /// In their `order`.
    pub(crate) archs: Vec<ArchInfo>,
    pub(crate) all: Vec<Arch>,
    /// Component prefixes, longest first.
    pub(crate) prefixes: Vec<(String, Component)>,
    /// The block-rule prefixes of every architecture whose denoiser may be stored bare.
    pub(crate) bare: Vec<String>,
    pub(crate) renames: Vec<RenameSpec>,
    /// (key prefixes of a component saved alone, the prefix that places them).
    pub(crate) standalone: Vec<(Vec<String>, String)>,
    /// Components whose files alone share their names with others', told apart by shapes.
    pub(crate) by_shape: Vec<ByShape>,
}

pub(crate) struct ComponentInfo {
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) kind: ComponentKind,
    pub(crate) aliases: Vec<String>,
}

/// A selector group a block belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockGroup {
    In,
    Mid,
    Out,
}

/// How a block rule names the block of a key.
#[derive(Clone, Debug)]
pub(crate) enum RuleBlock {
    Fixed(Block),
    /// `series` + the number after the prefix, below `count`.
    Series {
        series: String,
        count: u8,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub(crate) prefix: String,
    pub(crate) block: RuleBlock,
}

/// One architecture, resolved.
pub(crate) struct ArchInfo {
    pub(crate) spec: ArchSpec,
    /// (component, label, the block weighing its rows), the denoiser first.
    pub(crate) components: Vec<(Component, String, Option<Block>)>,
    pub(crate) component_ids: Vec<Component>,
    pub(crate) other_weight: Option<Block>,
    /// The block-weight list.
    pub(crate) order: Vec<Block>,
    /// The denoiser's blocks (those a rule gives).
    pub(crate) denoiser_blocks: HashSet<Block>,
    pub(crate) groups: HashMap<Block, BlockGroup>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) lbw: Vec<Vec<Block>>,
}

/// The registry (built on first use).
pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| match build() {
        Ok(r) => r,
        // The data is compiled in: a mistake in it is a bug of this build, which the
        // catalog's tests catch.
        Err(e) => panic!("catalog data: {e}"),
    })
}

/// A string that lives as long as the program (block labels are a few hundred, made once).
pub(crate) fn intern(s: &str) -> &'static str {
    static TABLE: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut t = TABLE
        .get_or_init(Default::default)
        .lock()
        .expect("never poisoned: nothing panics while it is held");
    if let Some(&x) = t.get(s) {
        return x;
    }
    let x: &'static str = Box::leak(s.to_string().into_boxed_str());
    t.insert(x);
    x
}

/// A mistake in the catalog's data files. They are compiled in, so a user never meets one:
/// the catalog's tests do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DataError {
    #[error("{file} is missing")]
    Missing { file: &'static str },
    #[error("{file}: {source}")]
    Toml {
        file: String,
        source: toml::de::Error,
    },
    #[error("components.toml: no component of kind `other`")]
    NoOther,
    #[error("{file}: no component '{id}' in components.toml")]
    UnknownComponent { file: String, id: String },
    #[error("two architectures are called '{word}'")]
    SameName { word: String },
    #[error("{file}: {field} names '{name}', which is not in [weights] order")]
    UnknownBlock {
        file: String,
        field: String,
        name: String,
    },
    #[error("{file}: {field}: {source}")]
    List {
        file: String,
        field: &'static str,
        source: ListError,
    },
    #[error("{file}: block group '{group}' is not in, mid or out")]
    Group { file: String, group: String },
    #[error("{file}: no components")]
    NoComponents { file: String },
}

/// A list of blocks and ranges that is not one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListError {
    #[error("'{0}': not a range")]
    NotARange(String),
    #[error("'{0}': not a range of one series")]
    TwoSeries(String),
}

/// A component saved alone under names other components' files share (`by_shape` in
/// components.toml).
#[derive(Debug)]
pub(crate) struct ByShape {
    pub(crate) prefixes: Vec<String>,
    pub(crate) under: String,
    pub(crate) replace: Vec<(String, String)>,
    pub(crate) whole: bool,
    pub(crate) component: Component,
}

impl ByShape {
    /// The all-in-one name of a file's key, if the key is one of the component's names.
    pub(crate) fn name(&self, key: &str) -> Option<String> {
        if !self.prefixes.iter().any(|p| key.starts_with(p.as_str())) {
            return None;
        }
        let key = self
            .replace
            .iter()
            .find_map(|(from, to)| {
                key.strip_prefix(from.as_str())
                    .map(|rest| format!("{to}{rest}"))
            })
            .unwrap_or_else(|| key.to_string());
        Some(format!("{}{key}", self.under))
    }
}

fn build() -> Result<Registry, DataError> {
    let text = spec::file("components.toml").ok_or(DataError::Missing {
        file: "components.toml",
    })?;
    let file: spec::ComponentsFile = toml::from_str(text).map_err(|source| DataError::Toml {
        file: "components.toml".into(),
        source,
    })?;
    let mut prefixes = Vec::new();
    let mut standalone = Vec::new();
    let mut by_shape = Vec::new();
    let components: Vec<ComponentInfo> = file
        .component
        .into_iter()
        .enumerate()
        .map(|(i, c): (usize, ComponentSpec)| {
            let id = Component(i as u16);
            prefixes.extend(c.prefixes.iter().map(|p| (p.clone(), id)));
            match c.standalone {
                Some(s) if s.by_shape => by_shape.push(ByShape {
                    prefixes: s.prefixes,
                    under: s.under,
                    replace: s.replace,
                    whole: s.whole,
                    component: id,
                }),
                Some(s) => standalone.push((s.prefixes, s.under)),
                None => {}
            }
            ComponentInfo {
                id: c.id,
                label: c.label,
                kind: c.kind,
                aliases: c.aliases,
            }
        })
        .collect();
    if !components.iter().any(|c| c.kind == ComponentKind::Other) {
        return Err(DataError::NoOther);
    }
    prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let component = |id: &str, file: &str| -> Result<Component, DataError> {
        components
            .iter()
            .position(|c| c.id == id)
            .map(|i| Component(i as u16))
            .ok_or_else(|| DataError::UnknownComponent {
                file: file.into(),
                id: id.into(),
            })
    };

    let mut specs: Vec<(String, ArchSpec)> = Vec::new();
    for (name, text) in spec::files_under("archs/") {
        let s: ArchSpec = toml::from_str(text).map_err(|source| DataError::Toml {
            file: name.into(),
            source,
        })?;
        specs.push((name.to_string(), s));
    }
    specs.sort_by_key(|(_, s)| s.order);
    let mut archs = Vec::new();
    let mut bare = Vec::new();
    for (name, s) in specs {
        let arch = arch_info(&name, s, &component)?;
        if arch.spec.layout.bare {
            bare.extend(arch.rules.iter().map(|r| r.prefix.clone()));
        }
        archs.push(arch);
    }
    let mut seen = HashSet::new();
    for a in &archs {
        for word in std::iter::once(&a.spec.id).chain(&a.spec.aliases) {
            if !seen.insert(word.to_ascii_lowercase()) {
                return Err(DataError::SameName { word: word.clone() });
            }
        }
    }
    bare.sort();
    bare.dedup();
    Ok(Registry {
        components,
        all: (0..archs.len()).map(|i| Arch(i as u16)).collect(),
        archs,
        prefixes,
        bare,
        renames: file.rename,
        standalone,
        by_shape,
    })
}

/// A block of the architecture's list, by the name the data writes.
fn block_in(order: &[Block], name: &str, file: &str, field: &str) -> Result<Block, DataError> {
    order
        .iter()
        .copied()
        .find(|b| b.label() == name)
        .ok_or_else(|| DataError::UnknownBlock {
            file: file.into(),
            field: field.into(),
            name: name.into(),
        })
}

/// A list written as blocks and ranges (`BASE, IN00..IN11, M00`), expanded.
pub(crate) fn expand_list(text: &str) -> Result<Vec<String>, ListError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match item.split_once("..") {
            None => out.push(item.to_string()),
            Some((a, b)) => {
                let not_range = || ListError::NotARange(item.to_string());
                let (sa, na) = split_number(a).ok_or_else(not_range)?;
                let (sb, nb) = split_number(b).ok_or_else(not_range)?;
                if sa != sb || na > nb {
                    return Err(ListError::TwoSeries(item.to_string()));
                }
                out.extend((na..=nb).map(|n| format!("{sa}{n:02}")));
            }
        }
    }
    Ok(out)
}

/// `IN07` -> (`IN`, 7).
pub(crate) fn split_number(label: &str) -> Option<(&str, u8)> {
    let at = label.find(|c: char| c.is_ascii_digit())?;
    let (series, digits) = label.split_at(at);
    if series.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((series, digits.parse().ok()?))
}

fn arch_info(
    file: &str,
    spec: ArchSpec,
    component: &dyn Fn(&str, &str) -> Result<Component, DataError>,
) -> Result<ArchInfo, DataError> {
    let list = |field: &'static str| {
        move |source| DataError::List {
            file: file.into(),
            field,
            source,
        }
    };
    let order: Vec<Block> = expand_list(&spec.weights.order)
        .map_err(list("[weights] order"))?
        .iter()
        .map(|l| Block::new(l))
        .collect();
    let mut rules = Vec::new();
    let mut denoiser_blocks = HashSet::new();
    let mut groups = HashMap::new();
    for r in &spec.blocks.rules {
        let group = match r.group.as_deref() {
            None => None,
            Some("in") => Some(BlockGroup::In),
            Some("mid") => Some(BlockGroup::Mid),
            Some("out") => Some(BlockGroup::Out),
            Some(g) => {
                return Err(DataError::Group {
                    file: file.into(),
                    group: g.into(),
                });
            }
        };
        let made: Vec<Block> = match r.count {
            Some(n) => (0..n)
                .map(|i| Block::new(&format!("{}{i:02}", r.block)))
                .collect(),
            None => vec![Block::new(&r.block)],
        };
        for b in &made {
            block_in(&order, b.label(), file, "a block rule")?;
            denoiser_blocks.insert(*b);
            if let Some(g) = group {
                groups.insert(*b, g);
            }
        }
        rules.push(Rule {
            prefix: r.prefix.clone(),
            block: match r.count {
                Some(count) => RuleBlock::Series {
                    series: r.block.clone(),
                    count,
                },
                None => RuleBlock::Fixed(made[0]),
            },
        });
    }
    let weight = |name: &Option<String>, field: &str| -> Result<Option<Block>, DataError> {
        name.as_deref()
            .map(|n| block_in(&order, n, file, field))
            .transpose()
    };
    let mut components = Vec::new();
    for c in &spec.components {
        components.push((
            component(&c.id, file)?,
            c.label.clone().unwrap_or_default(),
            weight(&c.weight, "a component's weight")?,
        ));
    }
    if components.is_empty() {
        return Err(DataError::NoComponents { file: file.into() });
    }
    let other_weight = weight(&spec.weights.other, "[weights] other")?;
    let lbw = spec
        .weights
        .lbw
        .iter()
        .map(|l| {
            expand_list(l)
                .map_err(list("[weights] lbw"))?
                .iter()
                .map(|b| block_in(&order, b, file, "[weights] lbw"))
                .collect()
        })
        .collect::<Result<Vec<Vec<Block>>, DataError>>()?;
    for (alias, to) in &spec.blocks.aliases {
        block_in(&order, to, file, &format!("block alias {alias}"))?;
    }
    if let Some(l) = &spec.lora {
        for t in &l.text_encoders {
            component(&t.component, file)?;
        }
    }
    Ok(ArchInfo {
        spec,
        component_ids: components.iter().map(|(c, _, _)| *c).collect(),
        components,
        other_weight,
        order,
        denoiser_blocks,
        groups,
        rules,
        lbw,
    })
}
