//! diffusers' LoRA adapter metadata: the PEFT `LoraConfig` of each component a LoRA file
//! patches, which decides the scale α/r of every module when the file has no `.alpha`
//! tensors.
//!
//! diffusers' `save_lora_weights(..., unet_lora_adapter_metadata=...)` (what its training
//! scripts call, with each model's `peft_config["default"].to_dict()`) stores one JSON object
//! in the safetensors metadata key `lora_adapter_metadata` ([`METADATA_KEY`]), every field
//! prefixed with its component (`_pack_dict_with_prefix` in diffusers' `loaders/lora_base.py`):
//! `unet.r`, `unet.lora_alpha`, `unet.rank_pattern`, `unet.alpha_pattern`,
//! `unet.target_modules`, ..., `text_encoder.r`, ..., `transformer.r` for DiT pipelines. On
//! loading, diffusers strips the prefix and builds `LoraConfig(**fields)` from it
//! (`_create_lora_config` in `utils/peft_utils.py`), and peft gives each module it adapts
//! (`LoraModel._create_and_replace` in `tuners/lora/model.py`):
//! * r = `rank_pattern[k]` for the first key k (in the object's order) with
//!   `re.match(rf"(.*\.)?({k})$", name)`, else `r`; α likewise from `alpha_pattern`, else
//!   `lora_alpha` (`get_pattern_key` in `utils/other.py`: a key is a regular expression that
//!   must match the whole module name, or its end after a `.`);
//! * scale α/r, or α/√r with `use_rslora` (`LoraLayer.update_layer`);
//! * an adapter only where `target_modules` says (a list: the name, or its end after a `.`;
//!   a string: a regular expression matching the whole name; `all-linear` or none: every
//!   module) and `exclude_modules` does not; a module of the file that is not adapted is
//!   left out (diffusers warns about unexpected keys).
//!
//! The module name matched is the one the file writes after the component's prefix (the
//! loading model's own name when the file fits it). Without metadata and without `.alpha`
//! tensors diffusers takes lora_alpha = r for every module (`get_peft_kwargs`): scale 1.

use regex::Regex;
use serde_json::Value;

/// The safetensors metadata key diffusers writes the adapter configs under
/// (`LORA_ADAPTER_METADATA_KEY`).
pub const METADATA_KEY: &str = "lora_adapter_metadata";

/// The adapter configs of a LoRA file, by component prefix (`unet`, `text_encoder`, ...).
#[derive(Clone, Debug, Default)]
pub struct AdapterConfigs {
    components: Vec<(String, Result<Config, ConfigError>)>,
}

/// Why a component's config cannot be applied as peft applies it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("its `{field}` is not {what}")]
    Field {
        field: &'static str,
        what: &'static str,
    },
    #[error("its {field} key {key:?} is not a regular expression ckpt-diff reads")]
    Pattern { field: &'static str, key: String },
}

/// One component's `LoraConfig`, the fields that decide a module's scale and whether it is
/// adapted.
#[derive(Clone, Debug)]
struct Config {
    r: usize,
    lora_alpha: f64,
    rank_pattern: Vec<(Regex, usize)>,
    alpha_pattern: Vec<(Regex, f64)>,
    use_rslora: bool,
    target: Option<Targets>,
    exclude: Option<Targets>,
}

/// `target_modules` or `exclude_modules`: names (matched whole or as the end after a `.`),
/// or one regular expression matching the whole name.
#[derive(Clone, Debug)]
enum Targets {
    Names(Vec<String>),
    Regex(Regex),
}

impl Targets {
    fn matches(&self, name: &str) -> bool {
        match self {
            Targets::Names(v) => v
                .iter()
                .any(|t| name == t || name.ends_with(&format!(".{t}"))),
            Targets::Regex(re) => re.is_match(name),
        }
    }
}

/// What a component's config says of one module.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Applied {
    /// The rank peft builds the module with.
    pub r: usize,
    pub alpha: f64,
    /// The scale is α/√r rather than α/r.
    pub rslora: bool,
    /// Whether peft adapts the module at all (`target_modules`, `exclude_modules`).
    pub adapted: bool,
}

impl Applied {
    /// The multiplier of the factors' product.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// A key of a pattern as peft matches it: `(.*\.)?(key)$` from the start of the name.
fn pattern(field: &'static str, key: &str) -> Result<Regex, ConfigError> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|_| ConfigError::Pattern {
        field,
        key: key.to_string(),
    })
}

fn patterns<T>(
    fields: &serde_json::Map<String, Value>,
    field: &'static str,
    value: impl Fn(&Value) -> Option<T>,
    what: &'static str,
) -> Result<Vec<(Regex, T)>, ConfigError> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let v = value(v).ok_or(ConfigError::Field { field, what })?;
                Ok((pattern(field, k)?, v))
            })
            .collect(),
        Some(_) => Err(ConfigError::Field {
            field,
            what: "an object",
        }),
    }
}

fn targets(
    fields: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Option<Targets>, ConfigError> {
    let bad = ConfigError::Field {
        field,
        what: "a list of names or a regular expression",
    };
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        // peft's shorthand for every linear layer but the output one: all of a LoRA's.
        Some(Value::String(s)) if s == "all-linear" => Ok(None),
        Some(Value::String(s)) => Regex::new(&format!("^(?:{s})$"))
            .map(|re| Some(Targets::Regex(re)))
            .map_err(|_| ConfigError::Pattern {
                field,
                key: s.clone(),
            }),
        Some(Value::Array(v)) => v
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or(bad.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| Some(Targets::Names(v))),
        Some(_) => Err(bad),
    }
}

/// A rank: a JSON integer ≥ 1 (or a float holding one).
fn rank(v: &Value) -> Option<usize> {
    let f = v.as_f64()?;
    (f >= 1.0 && f.fract() == 0.0 && f <= u32::MAX as f64).then_some(f as usize)
}

/// An alpha: any finite number.
fn alpha(v: &Value) -> Option<f64> {
    v.as_f64().filter(|a| a.is_finite())
}

impl Config {
    fn from_fields(fields: &serde_json::Map<String, Value>) -> Result<Config, ConfigError> {
        // peft's defaults: r 8, lora_alpha 8.
        let r = match fields.get("r") {
            None => 8,
            Some(v) => rank(v).ok_or(ConfigError::Field {
                field: "r",
                what: "a rank",
            })?,
        };
        let lora_alpha = match fields.get("lora_alpha") {
            None => 8.0,
            Some(v) => alpha(v).ok_or(ConfigError::Field {
                field: "lora_alpha",
                what: "a number",
            })?,
        };
        let use_rslora = match fields.get("use_rslora") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ConfigError::Field {
                    field: "use_rslora",
                    what: "true or false",
                });
            }
        };
        Ok(Config {
            r,
            lora_alpha,
            rank_pattern: patterns(fields, "rank_pattern", rank, "a rank")?,
            alpha_pattern: patterns(fields, "alpha_pattern", alpha, "a number")?,
            use_rslora,
            target: targets(fields, "target_modules")?,
            exclude: targets(fields, "exclude_modules")?,
        })
    }

    fn apply(&self, name: &str) -> Applied {
        fn first<T: Copy>(p: &[(Regex, T)], name: &str) -> Option<T> {
            p.iter().find(|(re, _)| re.is_match(name)).map(|(_, v)| *v)
        }
        Applied {
            r: first(&self.rank_pattern, name).unwrap_or(self.r),
            alpha: first(&self.alpha_pattern, name).unwrap_or(self.lora_alpha),
            rslora: self.use_rslora,
            adapted: self.target.as_ref().is_none_or(|t| t.matches(name))
                && !self.exclude.as_ref().is_some_and(|t| t.matches(name)),
        }
    }
}

impl AdapterConfigs {
    /// The configs in a file's `lora_adapter_metadata` value; `None` when it is not a JSON
    /// object (nothing of it can be applied).
    pub fn parse(text: &str) -> Option<AdapterConfigs> {
        let Value::Object(all) = serde_json::from_str(text).ok()? else {
            return None;
        };
        // Fields by component, in the object's order.
        let mut by: Vec<(String, serde_json::Map<String, Value>)> = Vec::new();
        for (k, v) in all {
            let Some((component, field)) = k.split_once('.') else {
                continue;
            };
            match by.iter_mut().find(|(c, _)| c == component) {
                Some((_, m)) => {
                    m.insert(field.to_string(), v);
                }
                None => {
                    let mut m = serde_json::Map::new();
                    m.insert(field.to_string(), v);
                    by.push((component.to_string(), m));
                }
            }
        }
        Some(AdapterConfigs {
            components: by
                .into_iter()
                .map(|(c, fields)| (c, Config::from_fields(&fields)))
                .collect(),
        })
    }

    /// The components the metadata has a config for.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.components.iter().map(|(c, _)| c.as_str())
    }

    /// What the config of `peft_name`'s component (`unet.down_blocks.0....to_q`: the
    /// component, then the module name) says of it; `None` when no component's prefix
    /// starts the name.
    pub fn apply(&self, peft_name: &str) -> Option<Result<Applied, ConfigError>> {
        self.components.iter().find_map(|(c, config)| {
            let name = peft_name.strip_prefix(c.as_str())?.strip_prefix('.')?;
            Some(
                config
                    .as_ref()
                    .map(|cfg| cfg.apply(name))
                    .map_err(Clone::clone),
            )
        })
    }
}

/// The components diffusers prefixes PEFT module names with, longest first where one
/// starts another.
const COMPONENTS: [&str; 4] = ["text_encoder_2", "text_encoder", "unet", "transformer"];

/// Python's `re.escape` of a module name, for a pattern key that matches it alone.
fn escape(name: &str) -> String {
    regex::escape(name)
}

/// The `lora_adapter_metadata` value of a PEFT file whose modules (`unet.<module>`,
/// `text_encoder.<module>`, ... with their ranks) have their scale folded into `lora_B`: for
/// each component, `r` and `lora_alpha` the most common rank, `rank_pattern` and
/// `alpha_pattern` the other ranks by module (both the same, so every scale is 1),
/// `target_modules` every module, so that diffusers builds each module at its rank and applies
/// exactly the factors' product. A text encoder's names leave out `text_model.`, so that they
/// match the model under either transformers naming (peft matches a name's end after a
/// `.`). `None` when no module is under a component.
pub fn folded_metadata<'a>(modules: impl Iterator<Item = (&'a str, usize)>) -> Option<String> {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<&str, Vec<(String, usize)>> = BTreeMap::new();
    for (stem, rank) in modules {
        let Some((c, name)) = COMPONENTS.iter().find_map(|c| {
            let name = stem.strip_prefix(c)?.strip_prefix('.')?;
            Some((*c, name))
        }) else {
            continue;
        };
        let name = if c.starts_with("text_encoder") {
            name.strip_prefix("text_model.").unwrap_or(name)
        } else {
            name
        };
        by.entry(c).or_default().push((name.to_string(), rank));
    }
    if by.is_empty() {
        return None;
    }
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for (c, mut modules) in by {
        modules.sort();
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for (_, r) in &modules {
            *counts.entry(*r).or_default() += 1;
        }
        // The most common rank, the smallest on a tie.
        let r = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map_or(1, |(r, _)| *r);
        let others: serde_json::Map<String, Value> = modules
            .iter()
            .filter(|(_, k)| *k != r)
            .map(|(n, k)| (escape(n), Value::from(*k)))
            .collect();
        let targets: Vec<Value> = modules
            .iter()
            .map(|(n, _)| Value::from(n.clone()))
            .collect();
        for (field, v) in [
            ("r", Value::from(r)),
            ("lora_alpha", Value::from(r)),
            ("rank_pattern", Value::Object(others.clone())),
            ("alpha_pattern", Value::Object(others)),
            ("target_modules", Value::Array(targets)),
            ("use_rslora", Value::Bool(false)),
            ("use_dora", Value::Bool(false)),
            ("lora_bias", Value::Bool(false)),
            ("peft_type", Value::from("LORA")),
        ] {
            out.insert(format!("{c}.{field}"), v);
        }
    }
    serde_json::to_string_pretty(&out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// peft's matching: the first pattern key (in the file's order) that matches the whole
    /// name or its end after a `.`; keys are regular expressions; target_modules as names
    /// match whole or at the end after a `.`.
    #[test]
    fn patterns_match_as_peft_matches_them() {
        let c = AdapterConfigs::parse(
            r#"{
              "unet.r": 4, "unet.lora_alpha": 8,
              "unet.rank_pattern": {"down_blocks.0.attn1.to_k": 2},
              "unet.alpha_pattern": {"attn1.to_v": 2, "to_v": 32},
              "unet.target_modules": ["to_q", "to_k", "to_v"],
              "text_encoder.r": 16, "text_encoder.lora_alpha": 16, "text_encoder.use_rslora": true,
              "text_encoder.alpha_pattern": {"layers\\.\\d+\\.self_attn\\.k_proj": 4},
              "text_encoder.target_modules": "encoder\\.layers\\.\\d+\\.self_attn\\.[qk]_proj",
              "text_encoder_2.r": 2
            }"#,
        )
        .unwrap();
        let get = |n: &str| c.apply(n).unwrap().unwrap();
        let q = get("unet.down_blocks.0.attn1.to_q");
        assert_eq!((q.r, q.alpha, q.adapted, q.scale()), (4, 8.0, true, 2.0));
        assert_eq!(get("unet.down_blocks.0.attn1.to_k").r, 2);
        // `down_blocks.0.attn1.to_k` is not the end of up_blocks.10.attn1.to_k after a dot.
        assert_eq!(get("unet.xdown_blocks.0.attn1.to_k").r, 4);
        assert_eq!(get("unet.up_blocks.1.attn1.to_v").alpha, 2.0);
        assert_eq!(get("unet.up_blocks.1.attn2.to_v").alpha, 32.0);
        assert!(!get("unet.up_blocks.1.attn2.to_out.0").adapted);
        assert!(!get("unet.up_blocks.1.attn2.xto_q").adapted);
        let k = get("text_encoder.text_model.encoder.layers.3.self_attn.k_proj");
        assert_eq!((k.r, k.alpha, k.scale()), (16, 4.0, 1.0));
        let q = get("text_encoder.encoder.layers.3.self_attn.q_proj");
        assert_eq!((q.scale(), q.adapted), (4.0, true));
        // A string target_modules matches the whole name.
        assert!(!get("text_encoder.text_model.encoder.layers.3.self_attn.q_proj").adapted);
        assert_eq!(get("text_encoder_2.encoder.layers.0.mlp.fc1").alpha, 8.0);
        assert!(c.apply("transformer.x").is_none());
        let bad = AdapterConfigs::parse(r#"{"unet.rank_pattern": {"a(": 2}}"#).unwrap();
        assert!(matches!(
            bad.apply("unet.a"),
            Some(Err(ConfigError::Pattern { .. }))
        ));
    }

    /// The metadata written for folded factors reads back as scale 1 and the written rank
    /// for every module, text-encoder names matched under both transformers namings, and
    /// nothing else adapted.
    #[test]
    fn folded_metadata_reads_back_as_scale_one() {
        let modules = [
            ("unet.down_blocks.0.attn1.to_q", 4),
            ("unet.down_blocks.0.attn1.to_k", 2),
            ("unet.up_blocks.1.attn1.to_q", 4),
            (
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
                8,
            ),
            ("text_encoder_2.text_model.encoder.layers.0.mlp.fc1", 3),
            ("lora_unet_x", 5),
        ];
        let text = folded_metadata(modules.iter().copied()).unwrap();
        let c = AdapterConfigs::parse(&text).unwrap();
        for (stem, r) in &modules[..5] {
            let a = c.apply(stem).unwrap().unwrap();
            assert_eq!((a.r, a.scale(), a.adapted), (*r, 1.0, true), "{stem}");
        }
        let flat = c
            .apply("text_encoder.encoder.layers.0.self_attn.q_proj")
            .unwrap()
            .unwrap();
        assert_eq!((flat.r, flat.adapted), (8, true));
        assert!(
            !c.apply("unet.down_blocks.0.attn1.to_v")
                .unwrap()
                .unwrap()
                .adapted
        );
        // `.` in a name is escaped: `down_blocks.0` does not match `down_blocks_0`.
        assert_eq!(
            c.apply("unet.down_blocks.0.attn1xto_k").unwrap().unwrap().r,
            4
        );
        assert!(c.apply("lora_unet_x").is_none());
        assert!(folded_metadata([("lora_unet_x", 4)].into_iter()).is_none());
    }
}
