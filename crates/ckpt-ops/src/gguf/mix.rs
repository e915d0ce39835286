//! The `--quant` choices: the float types, and the llama.cpp mixes city96's patched
//! `llama-quantize` writes for image models, as a table.
//!
//! A mix gives every quantized tensor its default type, except three name groups that some
//! mixes raise: attention V, fused QKV and the feed-forward output (the groups' names are in
//! [`Group::of`]). Facts: city96's `tools/lcpp.patch` (`img_tensor_get_type`), llama.cpp's
//! `llama_ftype` for `general.file_type`, and llama-quantize's aliases (`Q3_K`, `Q4_K`,
//! `Q5_K` name the `_M` mixes).

use ckpt_read::gguf::GgmlType;

/// What `--quant` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    /// Every float tensor in this type (F16 or BF16), small F32 tensors kept.
    Float(GgmlType),
    /// A llama.cpp mix.
    Mix(&'static Mix),
}

/// How a mix treats attention V tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VRule {
    /// The mix's default.
    Default,
    /// Always this type.
    Always(GgmlType),
    /// The first `count` V tensors (in file order) in `first`, the rest in `then`.
    FirstThen {
        count: usize,
        first: GgmlType,
        then: GgmlType,
    },
}

/// One llama.cpp mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub name: &'static str,
    /// llama.cpp's `llama_ftype` number (`general.file_type`).
    pub ftype: u32,
    pub default: GgmlType,
    pub v: VRule,
    pub qkv: Option<GgmlType>,
    pub ffn: Option<GgmlType>,
}

use GgmlType::{Q2K, Q3K, Q4_0, Q4_1, Q4K, Q5_0, Q5_1, Q5K, Q6K, Q8_0};

const fn mix(
    name: &'static str,
    ftype: u32,
    default: GgmlType,
    v: VRule,
    qkv: Option<GgmlType>,
    ffn: Option<GgmlType>,
) -> Mix {
    Mix {
        name,
        ftype,
        default,
        v,
        qkv,
        ffn,
    }
}

const D: VRule = VRule::Default;

/// Every mix, in llama-quantize's order (lcpp.patch `img_tensor_get_type`; ftype numbers
/// from llama.cpp's `llama_ftype`).
pub const MIXES: &[Mix] = &[
    mix("Q4_0", 2, Q4_0, D, None, Some(Q4_1)),
    mix("Q4_1", 3, Q4_1, D, None, None),
    mix("Q5_0", 8, Q5_0, D, None, Some(Q5_1)),
    mix("Q5_1", 9, Q5_1, D, None, None),
    mix("Q8_0", 7, Q8_0, D, None, None),
    mix("Q2_K", 10, Q2K, VRule::Always(Q3K), None, None),
    mix("Q3_K_S", 11, Q3K, D, None, None),
    mix(
        "Q3_K_M",
        12,
        Q3K,
        VRule::FirstThen {
            count: 2,
            first: Q5K,
            then: Q4K,
        },
        Some(Q4K),
        Some(Q4K),
    ),
    mix("Q3_K_L", 13, Q3K, VRule::Always(Q5K), Some(Q4K), Some(Q5K)),
    mix(
        "Q4_K_S",
        14,
        Q4K,
        VRule::FirstThen {
            count: 4,
            first: Q5K,
            then: Q4K,
        },
        None,
        Some(Q5K),
    ),
    mix("Q4_K_M", 15, Q4K, VRule::Always(Q6K), Some(Q5K), Some(Q6K)),
    mix("Q5_K_S", 16, Q5K, D, None, None),
    mix("Q5_K_M", 17, Q5K, VRule::Always(Q6K), Some(Q6K), Some(Q6K)),
    mix("Q6_K", 18, Q6K, D, None, None),
];

/// llama-quantize's aliases: a K type's name alone is its `_M` mix.
const ALIASES: &[(&str, &str)] = &[("Q3_K", "Q3_K_M"), ("Q4_K", "Q4_K_M"), ("Q5_K", "Q5_K_M")];

/// llama.cpp's `general.file_type` for mostly-F16 and mostly-BF16 files.
pub const FTYPE_F16: u32 = 1;
pub const FTYPE_BF16: u32 = 32;

impl Quant {
    /// The choice named (case-insensitive).
    pub fn parse(name: &str) -> Option<Quant> {
        for t in [GgmlType::F16, GgmlType::Bf16] {
            if t.name().eq_ignore_ascii_case(name) {
                return Some(Quant::Float(t));
            }
        }
        let name = ALIASES
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(name))
            .map_or(name, |(_, m)| m);
        MIXES
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(name))
            .map(Quant::Mix)
    }

    /// Every name [`Quant::parse`] takes, for messages and help.
    pub fn names() -> Vec<&'static str> {
        let mut v = vec!["F16", "BF16"];
        v.extend(MIXES.iter().map(|m| m.name));
        v.extend(ALIASES.iter().map(|(a, _)| *a));
        v
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Quant::Float(t) => t.name(),
            Quant::Mix(m) => m.name,
        }
    }

    /// `general.file_type`.
    pub fn ftype(self) -> u32 {
        match self {
            Quant::Float(GgmlType::Bf16) => FTYPE_BF16,
            Quant::Float(_) => FTYPE_F16,
            Quant::Mix(m) => m.ftype,
        }
    }
}

/// The name groups some mixes raise, tried in this order (the first that matches wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    V,
    Qkv,
    Ffn,
}

/// Substrings that make a name attention V (lcpp.patch).
const V_NAMES: &[&str] = &[
    "attn_v.weight",
    ".to_v.weight",
    ".v.weight",
    ".attn.w1v.weight",
    ".attn.w2v.weight",
    "_attn.v_proj.weight",
];

/// Substrings that make a name fused QKV.
const QKV_NAMES: &[&str] = &["attn_qkv.weight", "attn.qkv.weight", "attention.qkv.weight"];

/// Substrings that make a name the feed-forward output (besides `experts.` with
/// `.w2.weight`).
const FFN_NAMES: &[&str] = &[
    "ffn_down",
    ".ffn.2.weight",
    ".ff.net.2.weight",
    ".mlp.layer2.weight",
    ".adaln_modulation_mlp.2.weight",
    ".feed_forward.w2.weight",
];

impl Group {
    /// The group of a tensor name, if any.
    pub fn of(name: &str) -> Option<Group> {
        let has = |list: &[&str]| list.iter().any(|s| name.contains(s));
        if has(V_NAMES) {
            Some(Group::V)
        } else if has(QKV_NAMES) {
            Some(Group::Qkv)
        } else if has(FFN_NAMES) || (name.contains("experts.") && name.contains(".w2.weight")) {
            Some(Group::Ffn)
        } else {
            None
        }
    }
}

impl Mix {
    /// The type of a quantized tensor in `group`; `i_v` counts the V tensors before it.
    pub fn type_of(&self, group: Option<Group>, i_v: usize) -> GgmlType {
        match group {
            Some(Group::V) => match self.v {
                VRule::Default => self.default,
                VRule::Always(t) => t,
                VRule::FirstThen { count, first, then } => {
                    if i_v < count {
                        first
                    } else {
                        then
                    }
                }
            },
            Some(Group::Qkv) => self.qkv.unwrap_or(self.default),
            Some(Group::Ffn) => self.ffn.unwrap_or(self.default),
            None => self.default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_aliases_name_the_m_mixes() {
        for n in Quant::names() {
            assert!(Quant::parse(n).is_some(), "{n}");
            assert!(Quant::parse(&n.to_lowercase()).is_some(), "{n}");
        }
        assert_eq!(Quant::parse("q4_k").unwrap().name(), "Q4_K_M");
        assert_eq!(Quant::parse("Q4_K_M").unwrap().ftype(), 15);
        assert_eq!(Quant::parse("BF16").unwrap().ftype(), 32);
        assert_eq!(Quant::parse("IQ4_XS"), None);
    }

    #[test]
    fn groups_are_tried_v_then_qkv_then_ffn() {
        assert_eq!(
            Group::of("double_blocks.0.img_attn.qkv.weight"),
            Some(Group::Qkv)
        );
        assert_eq!(
            Group::of("transformer_blocks.0.attn.to_v.weight"),
            Some(Group::V)
        );
        assert_eq!(
            Group::of("input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"),
            Some(Group::Ffn)
        );
        assert_eq!(Group::of("layers.0.experts.3.w2.weight"), Some(Group::Ffn));
        assert_eq!(Group::of("double_blocks.0.img_mlp.2.weight"), None);
    }
}
