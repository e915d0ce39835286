//! LoRA networks: what a LoRA file's modules are, what each patches, and the weight change
//! ΔW each one makes, computed from its factors a few rows at a time.
//!
//! A module is the tensors sharing a stem before their role suffix:
//! * LoRA (kohya `.lora_down.weight`/`.lora_up.weight`, PEFT `.lora_A.weight`/
//!   `.lora_B.weight`, XLabs and old diffusers `.down.weight`/`.up.weight`), and LoCon when
//!   the down weight is a k×k convolution (its up weight 1×1): ΔW = (α/r)·up·down, the down
//!   weight flattened to r × (in·k·k);
//! * LoHa (`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`):
//!   ΔW = (α/r)·(w1a·w1b) ⊙ (w2a·w2b), r the rows of `hada_w1_b`;
//! * LoKr (`lokr_w1` or `lokr_w1_a`·`lokr_w1_b`, `lokr_w2` or `lokr_w2_a`·`lokr_w2_b`):
//!   ΔW = s·(W1 ⊗ W2), s = α/r with r the rows of the last factored `_b` (`w2_b`, else
//!   `w1_b`), and s = 1 when both are full matrices;
//!
//! with α the module's `.alpha`, as ComfyUI's `weight_adapter` and LyCORIS compute them;
//! when the file has no `.alpha` for it, α and r are what diffusers' LoRA metadata
//! (`lora_adapter_metadata`, see [`config`]) gives the module, as peft applies them (α/√r
//! with `use_rslora`); with neither, α = r (scale 1), as diffusers and ComfyUI take it.
//! Tucker-decomposed convolutions (`lora_mid`, `hada_t1`, `lokr_t2`) and DoRA's
//! `dora_scale` are recognised and listed as not computable rather than computed wrongly, and
//! so are modules the metadata does not adapt or gives another rank than their factors have.

pub mod config;
pub mod extract;
pub mod methods;
pub mod svd;
pub mod write;

use std::collections::BTreeMap;

use serde::Serialize;

use ckpt_core::catalog::lora::{self, Target};
use ckpt_core::catalog::{Arch, Grouping};
use ckpt_read::header::TensorEntry;
use ckpt_read::{Checkpoint, dtype};

/// A module's network type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Kind {
    LoRA,
    LoCon,
    LoHa,
    LoKr,
    /// Only an `.alpha`, or parts of no network.
    Incomplete,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::LoRA => "LoRA",
            Kind::LoCon => "LoCon",
            Kind::LoHa => "LoHa",
            Kind::LoKr => "LoKr",
            Kind::Incomplete => "incomplete",
        }
    }
}

/// What a tensor of a LoRA module is, by its suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `lora_down`, `lora_A`, `down`: r × in (× kernel).
    Down,
    /// `lora_up`, `lora_B`, `up`: out × r.
    Up,
    /// `lora_mid`: a Tucker core.
    Mid,
    Alpha,
    DoraScale,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1A,
    LokrW1B,
    LokrW2,
    LokrW2A,
    LokrW2B,
    LokrT2,
}

impl Role {
    /// The role as messages name it (`down`, `hada_w1_a`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Down => "down",
            Role::Up => "up",
            Role::Mid => "mid",
            Role::Alpha => "alpha",
            Role::DoraScale => "dora_scale",
            Role::HadaW1A => "hada_w1_a",
            Role::HadaW1B => "hada_w1_b",
            Role::HadaW2A => "hada_w2_a",
            Role::HadaW2B => "hada_w2_b",
            Role::HadaT1 => "hada_t1",
            Role::HadaT2 => "hada_t2",
            Role::LokrW1 => "lokr_w1",
            Role::LokrW1A => "lokr_w1_a",
            Role::LokrW1B => "lokr_w1_b",
            Role::LokrW2 => "lokr_w2",
            Role::LokrW2A => "lokr_w2_a",
            Role::LokrW2B => "lokr_w2_b",
            Role::LokrT2 => "lokr_t2",
        }
    }

    /// A factor or core of a LoKr.
    fn is_lokr(self) -> bool {
        matches!(
            self,
            Role::LokrW1
                | Role::LokrW1A
                | Role::LokrW1B
                | Role::LokrW2
                | Role::LokrW2A
                | Role::LokrW2B
                | Role::LokrT2
        )
    }
}

/// The tensors whose module has a ΔW computed elsewhere than here, with why, in the order the
/// reasons are checked (a Tucker core before DoRA).
const NOT_COMPUTED: [(Role, &str); 4] = [
    (Role::Mid, "a Tucker-decomposed convolution (lora_mid)"),
    (Role::HadaT1, "a Tucker-decomposed LoHa (hada_t1)"),
    (Role::LokrT2, "a Tucker-decomposed LoKr (lokr_t2)"),
    (
        Role::DoraScale,
        "DoRA (dora_scale), whose change depends on the model's weight",
    ),
];

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Suffixes of each role's tensors, longest first where one ends another.
const ROLES: &[(&str, Role)] = &[
    (".lora_down.weight", Role::Down),
    (".lora_up.weight", Role::Up),
    (".lora_A.weight", Role::Down),
    (".lora_B.weight", Role::Up),
    (".lora.down.weight", Role::Down),
    (".lora.up.weight", Role::Up),
    // diffusers' older names of a text encoder's factors (`convert_state_dict_to_diffusers`,
    // which its SD training scripts save).
    (".lora_linear_layer.down.weight", Role::Down),
    (".lora_linear_layer.up.weight", Role::Up),
    (".down.weight", Role::Down),
    (".up.weight", Role::Up),
    (".lora_mid.weight", Role::Mid),
    (".alpha", Role::Alpha),
    (".dora_scale", Role::DoraScale),
    (".hada_w1_a", Role::HadaW1A),
    (".hada_w1_b", Role::HadaW1B),
    (".hada_w2_a", Role::HadaW2A),
    (".hada_w2_b", Role::HadaW2B),
    (".hada_t1", Role::HadaT1),
    (".hada_t2", Role::HadaT2),
    (".lokr_w1_a", Role::LokrW1A),
    (".lokr_w1_b", Role::LokrW1B),
    (".lokr_w1", Role::LokrW1),
    (".lokr_w2_a", Role::LokrW2A),
    (".lokr_w2_b", Role::LokrW2B),
    (".lokr_w2", Role::LokrW2),
    (".lokr_t2", Role::LokrT2),
];

/// Why a LoRA cannot be extracted, merged or converted.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(
        "no module to extract: the checkpoints share none of the {layers} layers a LoRA of \
         {arch} patches ({first})"
    )]
    NothingToExtract {
        layers: usize,
        arch: &'static str,
        /// Why the first layer could not be extracted ("none listed" when there is none).
        first: String,
    },
    #[error("the LoRAs are for different models ({a} and {b}): merge LoRAs of one architecture")]
    DifferentModels { a: &'static str, b: &'static str },
    #[error("the LoRA's modules patch no key of a known architecture: nothing to rename")]
    NoArchitecture,
    #[error("{module}: {source}")]
    Svd {
        module: String,
        source: svd::SvdError,
    },
    #[error("{module}: {why}")]
    Method { module: String, why: String },
    #[error(transparent)]
    Write(#[from] ckpt_core::writer::WriteError),
}

/// Why a module's ΔW cannot be read from its file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("{stem} is {why}")]
    NotComputed { stem: String, why: &'static str },
    #[error("{stem} has no {role} tensor")]
    NoPart { stem: String, role: Role },
    #[error("{stem} has no factors")]
    NoFactors { stem: String },
    #[error("{name} is missing")]
    Missing { name: String },
    #[error("{name} is {dtype}, not a float")]
    NotFloat { name: String, dtype: String },
    #[error("{name}: its bytes do not match its shape")]
    Truncated { name: String },
    #[error("a factor with no dimensions")]
    NoDimensions,
    #[error("factors of {}×{} and {}×{} do not multiply", .a.0, .a.1, .b.0, .b.1)]
    DoNotMultiply {
        a: (usize, usize),
        b: (usize, usize),
    },
    #[error("{stem}: up has {up_cols} columns but down has rank {rank}")]
    Rank {
        stem: String,
        up_cols: usize,
        rank: usize,
    },
    #[error("{stem}: LoHa factors of unlike shapes")]
    UnlikeLoha { stem: String },
    #[error("{stem}: lokr_w2's shape is not a kernel")]
    NotAKernel { stem: String },
    #[error("{stem}: its factors' shapes do not fit each other")]
    Unfit { stem: String },
    #[error(
        "{stem} changes a {rows}×{cols} matrix but {key}{} is {shape:?}",
        .slice.map(|(lo, hi)| format!(" rows {lo}..{hi}")).unwrap_or_default()
    )]
    KeyShape {
        stem: String,
        rows: usize,
        cols: usize,
        key: String,
        slice: Option<(usize, usize)>,
        shape: Vec<usize>,
    },
}

/// Where a module's α comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlphaFrom {
    /// Its `.alpha` tensor.
    Tensor,
    /// diffusers' `lora_adapter_metadata` (its component's `lora_alpha` or `alpha_pattern`).
    Metadata,
    /// Neither: α = r.
    Rank,
}

/// One module of a LoRA file.
#[derive(Clone, Debug, Serialize)]
pub struct Module {
    pub stem: String,
    pub kind: Kind,
    /// (role, tensor name in the file).
    #[serde(skip)]
    pub parts: Vec<(Role, String)>,
    pub rank: Option<usize>,
    /// α as the file gives it (its `.alpha`, else diffusers' metadata), or the rank when it
    /// does not.
    pub alpha: Option<f64>,
    pub alpha_from: AlphaFrom,
    /// The scale is α/√r (rank-stabilised LoRA, from the metadata's `use_rslora`).
    pub rslora: bool,
    /// The checkpoint key (and rows) it patches.
    pub target: Option<Target>,
    /// The report row of that key (index into the architecture's grouping) and its label.
    #[serde(skip)]
    pub row: Option<usize>,
    pub block: Option<String>,
    /// Why its ΔW is not computed, when it is not.
    pub not_computed: Option<&'static str>,
}

/// Why a module is not computed, from diffusers' metadata.
const NOT_ADAPTED: &str = "not adapted by its lora_adapter_metadata (target_modules, \
     exclude_modules): diffusers leaves it out";
const OTHER_RANK: &str = "of another rank than its lora_adapter_metadata gives it (rank_pattern, \
     r): diffusers refuses to load it";
const BAD_METADATA: &str = "under a lora_adapter_metadata config ckpt-diff cannot apply as peft \
     does (a field of the wrong kind, or a pattern that is not a regular expression)";

impl Module {
    pub fn part(&self, role: Role) -> Option<&str> {
        self.parts
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, n)| n.as_str())
    }

    /// Its ΔW can be computed here (no Tucker core, no DoRA).
    fn computable(&self) -> Result<(), DeltaError> {
        match self.not_computed {
            Some(why) => Err(DeltaError::NotComputed {
                stem: self.stem.clone(),
                why,
            }),
            None => Ok(()),
        }
    }

    fn no_part(&self, role: Role) -> DeltaError {
        DeltaError::NoPart {
            stem: self.stem.clone(),
            role,
        }
    }

    /// The name of its `role` tensor, which it must have.
    fn need(&self, role: Role) -> Result<&str, DeltaError> {
        self.part(role).ok_or_else(|| self.no_part(role))
    }

    /// The multiplier of the factors' product: α/r, α/√r for a rank-stabilised one (1 for a
    /// LoKr of full matrices).
    pub fn scale(&self) -> f64 {
        match (self.kind, self.rank) {
            (Kind::LoKr, None) => 1.0,
            (_, Some(r)) if r > 0 => {
                let r_scaled = if self.rslora {
                    (r as f64).sqrt()
                } else {
                    r as f64
                };
                self.alpha.unwrap_or(r as f64) / r_scaled
            }
            _ => 1.0,
        }
    }
}

/// A LoRA file's modules.
#[derive(Clone, Debug)]
pub struct Network {
    /// The architecture whose keys the most modules patch.
    pub arch: Option<Arch>,
    pub modules: Vec<Module>,
}

impl Network {
    /// The file as a LoRA, if most of its tensors are LoRA module tensors.
    pub fn read(ckpt: &Checkpoint) -> Option<Network> {
        Self::read_for(ckpt, None)
    }

    /// As [`Network::read`], its modules mapped to `arch`'s keys (or, when `None`, to the
    /// architecture whose keys the most modules patch).
    pub fn read_for(ckpt: &Checkpoint, arch: Option<Arch>) -> Option<Network> {
        let mut stems: BTreeMap<String, Vec<(Role, String)>> = BTreeMap::new();
        let mut other = 0usize;
        for t in ckpt.tensors() {
            match ROLES.iter().find(|(suffix, _)| t.name.ends_with(suffix)) {
                Some((suffix, role)) => stems
                    .entry(t.name[..t.name.len() - suffix.len()].to_string())
                    .or_default()
                    .push((*role, t.name.clone())),
                None => other += 1,
            }
        }
        if stems.is_empty() || other > stems.len() {
            return None;
        }
        let arch = arch.or_else(|| {
            let counts = stem_counts(stems.keys().map(String::as_str));
            let best = counts.iter().map(|(n, _)| *n).max().filter(|&n| n > 0)?;
            let tied: Vec<Arch> = counts
                .iter()
                .filter(|(n, _)| *n == best)
                .map(|(_, a)| *a)
                .collect();
            // Families that share module names (FLUX.2 and Flux.1, the FLUX.2 sizes) are
            // told apart by the modules' shapes, at the scale that fits the most of them.
            let shapes = factor_shapes(ckpt, &stems);
            let fitting: Vec<usize> = tied.iter().map(|&a| fitting_modules(&shapes, a)).collect();
            let most = fitting.iter().copied().max().unwrap_or(0);
            let tied: Vec<Arch> = tied
                .into_iter()
                .zip(&fitting)
                .filter(|(_, n)| **n == most)
                .map(|(a, _)| a)
                .collect();
            // SD1 and SD2 share every module name (their layers differ in width only):
            // kohya's `ss_v2` or `ss_base_model_version` decides between them when present,
            // as the spec's `prefer_when` says.
            let metadata = |k: &str| ckpt.metadata_value(k).map(str::to_string);
            Some(
                tied.iter()
                    .copied()
                    .find(|&a| lora::preferred_by(a, &metadata))
                    .unwrap_or(tied[0]),
            )
        });
        let grouping = arch.map(Grouping::for_arch);
        let configs = ckpt
            .metadata_value(config::METADATA_KEY)
            .map(|text| config::AdapterConfigs::parse(text).unwrap_or_default());
        let modules = stems
            .into_iter()
            .map(|(stem, parts)| {
                let mut m = Module {
                    stem,
                    kind: Kind::Incomplete,
                    parts,
                    rank: None,
                    alpha: None,
                    alpha_from: AlphaFrom::Rank,
                    rslora: false,
                    target: None,
                    row: None,
                    block: None,
                    not_computed: None,
                };
                let parts = m.parts.clone();
                let shape = |role: Role| {
                    parts
                        .iter()
                        .find(|(r, _)| *r == role)
                        .and_then(|(_, n)| ckpt.get(n))
                        .map(|t| &t.shape)
                };
                m.kind = if let Some(down) = shape(Role::Down) {
                    if down.len() == 4 && down[2] * down[3] > 1 {
                        Kind::LoCon
                    } else {
                        Kind::LoRA
                    }
                } else if shape(Role::HadaW1A).is_some() {
                    Kind::LoHa
                } else if m.parts.iter().any(|(r, _)| r.is_lokr()) {
                    Kind::LoKr
                } else {
                    Kind::Incomplete
                };
                m.rank = match m.kind {
                    Kind::LoRA | Kind::LoCon => shape(Role::Down).and_then(|s| s.first().copied()),
                    Kind::LoHa => shape(Role::HadaW1B).and_then(|s| s.first().copied()),
                    Kind::LoKr => shape(Role::LokrW2B)
                        .or(shape(Role::LokrW1B))
                        .and_then(|s| s.first().copied()),
                    Kind::Incomplete => None,
                };
                m.not_computed = NOT_COMPUTED
                    .iter()
                    .find(|(r, _)| m.part(*r).is_some())
                    .map(|(_, why)| *why);
                m.target = arch.and_then(|a| lora::target(a, &m.stem)).cloned();
                m.alpha = m
                    .part(Role::Alpha)
                    .and_then(|n| ckpt.get(n))
                    .and_then(|t| scalar(ckpt, t));
                if m.alpha.is_some() {
                    m.alpha_from = AlphaFrom::Tensor;
                } else if let Some(configs) = &configs
                    && let Some(applied) =
                        peft_name(&m, arch, configs).and_then(|name| configs.apply(&name))
                {
                    m.alpha_from = AlphaFrom::Metadata;
                    match applied {
                        Ok(a) => {
                            m.alpha = Some(a.alpha);
                            m.rslora = a.rslora;
                            let why = if !a.adapted {
                                Some(NOT_ADAPTED)
                            } else if m.rank.is_some_and(|r| r != a.r) {
                                Some(OTHER_RANK)
                            } else {
                                None
                            };
                            m.not_computed = m.not_computed.or(why);
                        }
                        Err(_) => m.not_computed = m.not_computed.or(Some(BAD_METADATA)),
                    }
                }
                if m.alpha.is_none() {
                    m.alpha = m.rank.map(|r| r as f64);
                }
                if let (Some(t), Some(g)) = (&m.target, &grouping) {
                    let row = g.group_of(&t.key);
                    m.row = Some(row);
                    m.block = Some(g.groups()[row].label.clone());
                }
                m
            })
            .collect();
        Some(Network { arch, modules })
    }

    /// Modules whose name maps to no key.
    pub fn unknown(&self) -> impl Iterator<Item = &Module> {
        self.modules.iter().filter(|m| m.target.is_none())
    }

    /// The network types present, in a fixed order (`LoRA+LoHa`).
    pub fn network(&self) -> String {
        [
            Kind::LoRA,
            Kind::LoCon,
            Kind::LoHa,
            Kind::LoKr,
            Kind::Incomplete,
        ]
        .into_iter()
        .filter(|k| self.modules.iter().any(|m| m.kind == *k))
        .map(Kind::label)
        .collect::<Vec<_>>()
        .join("+")
    }
}

/// The name diffusers' metadata knows `m` by: its stem when a component of the metadata
/// starts it (`unet.`, `text_encoder.`), else the PEFT name of what it patches (a kohya-named
/// module of a file that also has the metadata, as diffusers renames it on loading).
fn peft_name(m: &Module, arch: Option<Arch>, configs: &config::AdapterConfigs) -> Option<String> {
    let under = |name: &str| {
        configs
            .components()
            .any(|c| name.strip_prefix(c).is_some_and(|r| r.starts_with('.')))
    };
    if under(&m.stem) {
        return Some(m.stem.clone());
    }
    let t = m.target.as_ref()?;
    lora::names_of(arch?, t).iter().find(|n| under(n)).cloned()
}

/// A LoRA's modules (`stems`: module -> its tensors) with their down and up shapes (those
/// that have both).
fn factor_shapes<'a>(
    ckpt: &'a Checkpoint,
    stems: &'a BTreeMap<String, Vec<(Role, String)>>,
) -> Vec<(&'a str, &'a [usize], &'a [usize])> {
    stems
        .iter()
        .filter_map(|(stem, parts)| {
            let shape = |role: Role| {
                parts
                    .iter()
                    .find(|(r, _)| *r == role)
                    .and_then(|(_, n)| ckpt.get(n))
                    .map(|t| t.shape.as_slice())
            };
            Some((stem.as_str(), shape(Role::Down)?, shape(Role::Up)?))
        })
        .collect()
}

/// How many of those modules have shapes that fit what they patch in `arch`, at the
/// checkpoint scale that fits the most.
fn fitting_modules(shapes: &[(&str, &[usize], &[usize])], arch: Arch) -> usize {
    ckpt_core::catalog::detect::SCALES
        .iter()
        .map(|&scale| {
            shapes
                .iter()
                .filter(|(stem, down, up)| lora::fits(arch, stem, down, up, scale))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// How many of `stems` each architecture's name table maps, in [`lora::ARCHS`] order.
pub fn stem_counts<'a>(stems: impl Iterator<Item = &'a str> + Clone) -> Vec<(usize, Arch)> {
    lora::archs()
        .into_iter()
        .map(|a| {
            (
                stems
                    .clone()
                    .filter(|s| lora::target(a, s).is_some())
                    .count(),
                a,
            )
        })
        .collect()
}

impl Network {
    /// Another architecture whose names fit this network's modules better than `arch`'s,
    /// if there is one.
    pub fn better_fit_than(&self, arch: Arch) -> Option<Arch> {
        let counts = stem_counts(self.modules.iter().map(|m| m.stem.as_str()));
        let of = |a: Arch| counts.iter().find(|(_, x)| *x == a).map_or(0, |(n, _)| *n);
        let (n, best) = counts.iter().copied().max_by_key(|(n, _)| *n)?;
        (n > of(arch)).then_some(best)
    }
}

/// A one-element float tensor's value.
pub(crate) fn scalar(ckpt: &Checkpoint, t: &TensorEntry) -> Option<f64> {
    let bytes = ckpt.data(t);
    // An integer alpha (diffusers' `convert_state_dict_to_kohya` writes
    // `torch.tensor(rank)`, an I64), read as loaders read it (`.item()`).
    let int = |n: usize| -> Option<[u8; 8]> {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(bytes.get(..n).filter(|_| bytes.len() == n)?);
        Some(b)
    };
    let signed = |n: usize| -> Option<f64> {
        let b = int(n)?;
        // Sign-extend the n-byte little-endian value.
        let shift = 64 - 8 * n as u32;
        Some(((i64::from_le_bytes(b) << shift) >> shift) as f64)
    };
    match t.dtype {
        dtype::Dtype::I64 => return signed(8),
        dtype::Dtype::I32 => return signed(4),
        dtype::Dtype::I16 => return signed(2),
        dtype::Dtype::I8 => return signed(1),
        dtype::Dtype::U8 => return int(1).map(|b| u64::from_le_bytes(b) as f64),
        _ => {}
    }
    let format = dtype::float_format(t.dtype)?;
    if bytes.len() != format.size() {
        return None;
    }
    let mut v = [0.0f64];
    ckpt_core::kernels::to_f64(format, bytes, &mut v);
    Some(v[0])
}

/// A tensor of the file as f64, with its shape.
fn decode(ckpt: &Checkpoint, name: &str) -> Result<(Vec<usize>, Vec<f64>), DeltaError> {
    let t = ckpt.get(name).ok_or_else(|| DeltaError::Missing {
        name: name.to_string(),
    })?;
    if !t.is_float() {
        return Err(DeltaError::NotFloat {
            name: name.to_string(),
            dtype: format!("{:?}", t.dtype),
        });
    }
    let n: usize = t.shape.iter().product();
    if ckpt.data(t).len() < t.byte_range(0, n).1 {
        return Err(DeltaError::Truncated {
            name: name.to_string(),
        });
    }
    let mut v = vec![0.0f64; n];
    ckpt_core::pass::Slice::of(ckpt, t).values_into(&mut v);
    Ok((t.shape.clone(), v))
}

/// A matrix, row-major.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    /// The first dimension by the product of the rest.
    fn from_shape(shape: &[usize], data: Vec<f64>) -> Result<Matrix, DeltaError> {
        let rows = *shape.first().ok_or(DeltaError::NoDimensions)?;
        let cols = shape[1..].iter().product();
        Ok(Matrix { rows, cols, data })
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// self · other.
    pub fn mul(&self, other: &Matrix) -> Result<Matrix, DeltaError> {
        if self.cols != other.rows {
            return Err(DeltaError::DoNotMultiply {
                a: (self.rows, self.cols),
                b: (other.rows, other.cols),
            });
        }
        let mut data = vec![0.0; self.rows * other.cols];
        for i in 0..self.rows {
            let out = &mut data[i * other.cols..(i + 1) * other.cols];
            for k in 0..self.cols {
                ckpt_core::kernels::axpy(self.data[i * self.cols + k], other.row(k), out);
            }
        }
        Ok(Matrix {
            rows: self.rows,
            cols: other.cols,
            data,
        })
    }
}

/// A module's factors, decoded: ΔW = scale · form.
#[derive(Clone, Debug)]
pub struct Delta {
    /// ΔW's rows and columns (the columns of a convolution: in·kh·kw).
    pub rows: usize,
    pub cols: usize,
    pub scale: f64,
    pub form: Form,
}

#[derive(Clone, Debug)]
pub enum Form {
    /// up (rows×r) · down (r×cols).
    LowRank { up: Matrix, down: Matrix },
    /// (a1·b1) ⊙ (a2·b2).
    Hadamard {
        a1: Matrix,
        b1: Matrix,
        a2: Matrix,
        b2: Matrix,
    },
    /// w1 ⊗ w2, w2's columns holding (in₂, kh·kw) with `kk` = kh·kw.
    Kron { w1: Matrix, w2: Matrix, kk: usize },
}

impl Delta {
    /// Reads `m`'s factors from `ckpt`.
    pub fn of(ckpt: &Checkpoint, m: &Module) -> Result<Delta, DeltaError> {
        m.computable()?;
        let get = |role: Role| -> Result<Matrix, DeltaError> {
            let (shape, data) = decode(ckpt, m.need(role)?)?;
            Matrix::from_shape(&shape, data)
        };
        let stem = || m.stem.clone();
        let scale = m.scale();
        let (rows, cols, form) = match m.kind {
            Kind::LoRA | Kind::LoCon => {
                let (down, up) = (get(Role::Down)?, get(Role::Up)?);
                if up.cols != down.rows {
                    return Err(DeltaError::Rank {
                        stem: stem(),
                        up_cols: up.cols,
                        rank: down.rows,
                    });
                }
                (up.rows, down.cols, Form::LowRank { up, down })
            }
            Kind::LoHa => {
                let (a1, b1, a2, b2) = (
                    get(Role::HadaW1A)?,
                    get(Role::HadaW1B)?,
                    get(Role::HadaW2A)?,
                    get(Role::HadaW2B)?,
                );
                if a1.cols != b1.rows
                    || a2.cols != b2.rows
                    || a1.rows != a2.rows
                    || b1.cols != b2.cols
                {
                    return Err(DeltaError::UnlikeLoha { stem: stem() });
                }
                (a1.rows, b1.cols, Form::Hadamard { a1, b1, a2, b2 })
            }
            Kind::LoKr => {
                let full_or = |w: Role, a: Role, b: Role| -> Result<(Matrix, usize), DeltaError> {
                    if let Some(name) = m.part(w) {
                        let (shape, data) = decode(ckpt, name)?;
                        let kk = shape.get(2..).map_or(1, |s| s.iter().product());
                        Ok((Matrix::from_shape(&shape, data)?, kk))
                    } else {
                        let (fa, fb) = (get(a)?, get(b)?);
                        let kk = m
                            .part(b)
                            .and_then(|n| ckpt.get(n))
                            .and_then(|t| t.shape.get(2..).map(|s| s.iter().product()))
                            .unwrap_or(1);
                        Ok((fa.mul(&fb)?, kk))
                    }
                };
                let (w1, _) = full_or(Role::LokrW1, Role::LokrW1A, Role::LokrW1B)?;
                let (w2, kk) = full_or(Role::LokrW2, Role::LokrW2A, Role::LokrW2B)?;
                if w2.cols % kk != 0 {
                    return Err(DeltaError::NotAKernel { stem: stem() });
                }
                (
                    w1.rows * w2.rows,
                    w1.cols * w2.cols,
                    Form::Kron { w1, w2, kk },
                )
            }
            Kind::Incomplete => return Err(DeltaError::NoFactors { stem: stem() }),
        };
        Ok(Delta {
            rows,
            cols,
            scale,
            form,
        })
    }

    /// The rank of a low-rank form (LoRA/LoCon).
    pub fn low_rank(&self) -> Option<(&Matrix, &Matrix)> {
        match &self.form {
            Form::LowRank { up, down } => Some((up, down)),
            _ => None,
        }
    }

    /// Adds c·ΔW over flattened elements `start..end` (row-major, `cols` per row) to `out`.
    pub fn add_into(&self, c: f64, start: usize, end: usize, out: &mut [f64]) {
        let c = c * self.scale;
        let mut e = start;
        // Whole rows of a low-rank form: one product up[rows] · down, at the speed of a
        // matrix multiply rather than r vector sweeps per row.
        if let Form::LowRank { up, down } = &self.form {
            let first = start.div_ceil(self.cols);
            let last = end / self.cols;
            if last > first + 1 {
                // The partial row before the block, element by element.
                while e < first * self.cols {
                    let o = e / self.cols;
                    let j0 = e % self.cols;
                    let j1 = self.cols.min(j0 + (first * self.cols - e));
                    self.add_row(c, o, j0, j1, &mut out[e - start..e - start + (j1 - j0)]);
                    e += j1 - j0;
                }
                let rows = last - first;
                let at = first * self.cols - start;
                let dst = &mut out[at..at + rows * self.cols];
                let a = faer::MatRef::from_row_major_slice(
                    &up.data[first * up.cols..last * up.cols],
                    rows,
                    up.cols,
                );
                let b = faer::MatRef::from_row_major_slice(&down.data, down.rows, down.cols);
                let d = faer::MatMut::from_row_major_slice_mut(dst, rows, self.cols);
                faer::linalg::matmul::matmul(d, faer::Accum::Add, a, b, c, faer::Par::Seq);
                e = last * self.cols;
            }
        }
        while e < end {
            let o = e / self.cols;
            let j0 = e % self.cols;
            let j1 = (self.cols).min(j0 + (end - e));
            let dst = &mut out[e - start..e - start + (j1 - j0)];
            self.add_row(c, o, j0, j1, dst);
            e += j1 - j0;
        }
    }

    /// Adds c·(unscaled form)[o, j0..j1] to `dst`.
    fn add_row(&self, c: f64, o: usize, j0: usize, j1: usize, dst: &mut [f64]) {
        match &self.form {
            Form::LowRank { up, down } => {
                for k in 0..up.cols {
                    let u = up.data[o * up.cols + k];
                    if u != 0.0 {
                        ckpt_core::kernels::axpy(c * u, &down.row(k)[j0..j1], dst);
                    }
                }
            }
            Form::Hadamard { a1, b1, a2, b2 } => {
                let mut p1 = vec![0.0; j1 - j0];
                let mut p2 = vec![0.0; j1 - j0];
                for k in 0..a1.cols {
                    ckpt_core::kernels::axpy(a1.data[o * a1.cols + k], &b1.row(k)[j0..j1], &mut p1);
                }
                for k in 0..a2.cols {
                    ckpt_core::kernels::axpy(a2.data[o * a2.cols + k], &b2.row(k)[j0..j1], &mut p2);
                }
                for ((d, x), y) in dst.iter_mut().zip(&p1).zip(&p2) {
                    *d += c * x * y;
                }
            }
            Form::Kron { w1, w2, kk } => {
                let (c2, d2) = (w2.rows, w2.cols / kk);
                let (r1, r2) = (o / c2, o % c2);
                for (d, j) in dst.iter_mut().zip(j0..j1) {
                    let (i, s) = (j / kk, j % kk);
                    let v =
                        w1.data[r1 * w1.cols + i / d2] * w2.data[r2 * w2.cols + (i % d2) * kk + s];
                    *d += c * v;
                }
            }
        }
    }

    /// The whole ΔW (scale included), row-major.
    pub fn full(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.add_into(1.0, 0, self.rows * self.cols, &mut out);
        out
    }

    /// Bytes of the decoded factors.
    pub fn bytes(&self) -> u64 {
        let m = |x: &Matrix| (x.data.len() * 8) as u64;
        match &self.form {
            Form::LowRank { up, down } => m(up) + m(down),
            Form::Hadamard { a1, b1, a2, b2 } => m(a1) + m(b1) + m(a2) + m(b2),
            Form::Kron { w1, w2, .. } => m(w1) + m(w2),
        }
    }
}

/// Whether a ΔW of `rows`×`cols` from `m` fits the key it patches, whose shape is `shape`:
/// the error says why not.
pub fn check_shape(
    m: &Module,
    (rows, cols): (usize, usize),
    shape: &[usize],
) -> Result<(), DeltaError> {
    let t = m.target.as_ref().expect("a mapped module");
    let key_rows = shape.first().copied().unwrap_or(1);
    let key_cols: usize = shape.iter().skip(1).product();
    let (lo, hi) = t.row_range(shape);
    if hi > key_rows || rows != hi - lo || cols != key_cols {
        return Err(DeltaError::KeyShape {
            stem: m.stem.clone(),
            rows,
            cols,
            key: t.key.clone(),
            slice: t.rows.map(|_| (lo, hi)),
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

/// A LoRA file a recipe bakes: the file, opened, and its modules mapped to the model's
/// architecture.
pub struct LoraFile {
    /// The recipe's name for it.
    pub name: String,
    pub ckpt: Checkpoint,
    pub net: Network,
}

impl std::fmt::Debug for LoraFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoraFile({})", self.name)
    }
}

/// The (rows, columns) of `m`'s ΔW from its tensors' shapes alone (no data read), or why its
/// factors do not fit each other.
pub fn dims(ckpt: &Checkpoint, m: &Module) -> Result<(usize, usize), DeltaError> {
    m.computable()?;
    let shape = |role: Role| -> Option<&[usize]> {
        m.part(role)
            .and_then(|n| ckpt.get(n))
            .map(|t| t.shape.as_slice())
    };
    let need = |role: Role| shape(role).ok_or_else(|| m.no_part(role));
    let rest = |s: &[usize]| -> usize { s.iter().skip(1).product() };
    let first = |s: &[usize]| -> usize { s.first().copied().unwrap_or(0) };
    let bad = || DeltaError::Unfit {
        stem: m.stem.clone(),
    };
    match m.kind {
        Kind::LoRA | Kind::LoCon => {
            let (down, up) = (need(Role::Down)?, need(Role::Up)?);
            if up.get(1) != down.first() || up.iter().skip(2).product::<usize>() != 1 {
                return Err(bad());
            }
            Ok((first(up), rest(down)))
        }
        Kind::LoHa => {
            let (a1, b1) = (need(Role::HadaW1A)?, need(Role::HadaW1B)?);
            let (a2, b2) = (need(Role::HadaW2A)?, need(Role::HadaW2B)?);
            if a1.get(1) != b1.first()
                || a2.get(1) != b2.first()
                || first(a1) != first(a2)
                || rest(b1) != rest(b2)
            {
                return Err(bad());
            }
            Ok((first(a1), rest(b1)))
        }
        Kind::LoKr => {
            let side = |w: Role, a: Role, b: Role| -> Result<(usize, usize), DeltaError> {
                match shape(w) {
                    Some(s) => Ok((first(s), rest(s))),
                    None => {
                        let (sa, sb) = (need(a)?, need(b)?);
                        if sa.get(1) != sb.first() {
                            return Err(bad());
                        }
                        Ok((first(sa), rest(sb)))
                    }
                }
            };
            let (r1, c1) = side(Role::LokrW1, Role::LokrW1A, Role::LokrW1B)?;
            let (r2, c2) = side(Role::LokrW2, Role::LokrW2A, Role::LokrW2B)?;
            Ok((r1 * r2, c1 * c2))
        }
        Kind::Incomplete => Err(DeltaError::NoFactors {
            stem: m.stem.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any element range, row-aligned or not, adds exactly the elements s·Σₖ up[o,k]·down[k,j]
    /// (the whole-row product and the partial rows agree with the element formula).
    #[test]
    fn low_rank_ranges_match_the_element_formula() {
        let (rows, cols, r) = (7, 5, 3);
        let up = Matrix {
            rows,
            cols: r,
            data: (0..rows * r).map(|i| (i as f64 * 0.37).sin()).collect(),
        };
        let down = Matrix {
            rows: r,
            cols,
            data: (0..r * cols).map(|i| (i as f64 * 0.91).cos()).collect(),
        };
        let want = |o: usize, j: usize| -> f64 {
            0.5 * 1.25
                * (0..r)
                    .map(|k| up.data[o * r + k] * down.data[k * cols + j])
                    .sum::<f64>()
        };
        let d = Delta {
            rows,
            cols,
            scale: 1.25,
            form: Form::LowRank {
                up: up.clone(),
                down: down.clone(),
            },
        };
        for (start, end) in [(0, 35), (3, 31), (5, 30), (6, 9), (12, 13), (4, 35)] {
            let mut out = vec![1.0; end - start];
            d.add_into(0.5, start, end, &mut out);
            for (i, v) in out.iter().enumerate() {
                let e = start + i;
                let w = 1.0 + want(e / cols, e % cols);
                assert!((v - w).abs() < 1e-12, "{start}..{end} at {e}: {v} vs {w}");
            }
        }
    }
}
