//! The merge methods, in one registry: each method's name, how many models it takes, its
//! options with their defaults and allowed ranges, and how it becomes part of the merge
//! graph.
//!
//! A method is either **linear** ([`Build::Linear`]: weighted sum, add difference, ...),
//! whose result is a per-row linear combination of its models that the planner folds into
//! the recipe's one combination of input files; or a **node** ([`Build::Node`]: TIES,
//! DARE, ...), an operation of its own that the engine evaluates through the [`NodeMethod`]
//! trait, element by element or (`per_tensor`) on whole tensors. The planner checks calls against the registry (arity, option
//! names, kinds and ranges, defaults) before any file is read, so a builder receives only
//! valid values.
//!
//! Adding a method is one file (its builder and, for a node, its [`NodeMethod`]) and one
//! entry in [`REGISTRY`].

pub mod dare;
pub(crate) mod geomedian;
pub(crate) mod linear;
pub(crate) mod lora;
pub(crate) mod model_stock;
pub(crate) mod ties;
pub(crate) mod train_diff;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use super::linear::{Combination, Profile};

/// Elements a method evaluates at a time.
pub const SUB: usize = 1 << 16;

/// A method of the recipe language.
pub struct Method {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// How it is called, for error messages: `ties(base, model, ..., k=1, lambda=1)`.
    pub usage: &'static str,
    /// Fewest and most model arguments (`None`: any number).
    pub models: (usize, Option<usize>),
    pub options: &'static [Opt],
    pub build: Build,
}

/// How a call becomes part of the graph.
pub enum Build {
    /// The result as a combination of the models' combinations.
    Linear(fn(&[Combination], &Args<'_>) -> Result<Combination, String>),
    /// An operation of its own over the models, which it reads through [`TensorInputs`]
    /// by argument position.
    Node {
        /// Needs a whole tensor before its first value (magnitude ranks, cosines,
        /// iterations), as opposed to working element by element.
        per_tensor: bool,
        build: fn(&Args<'_>) -> Result<BuiltNode, String>,
    },
    /// A LoRA file's weight change ([`lora`]): its first argument names a LoRA file, not a
    /// model; it reads no model input.
    Lora(fn(Arc<crate::lora::LoraFile>, &Args<'_>) -> Result<BuiltNode, String>),
}

/// What a node method's builder makes.
pub type BuiltNode = Arc<dyn NodeMethod>;

/// An option of a method.
pub struct Opt {
    pub name: &'static str,
    pub kind: OptKind,
    /// The value when the call does not give it; `None`: the call must.
    pub default: Option<f64>,
    pub range: Range,
    /// May be given positionally, after the models (`ws(A, B, 0.3)`).
    pub positional: bool,
}

/// What an option's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptKind {
    /// Block weights: a number, a list in SuperMerger's order, a named form, or an
    /// expression of parameters (`1-alpha`).
    Weight,
    /// One number.
    Scalar,
    /// One number per model (`weights=(1, 0.5)`); `skip_first` leaves out the base.
    PerModel { skip_first: bool },
    /// A selection of rows (`te`, `OUT06..OUT11`): the catalog's selector.
    Rows,
    /// One of these words (`vote=count`); its value and default are the word's index.
    Choice(&'static [&'static str]),
}

/// The words of a yes/no option (`rescale=false`); 0 and 1 are accepted too.
pub const BOOL: &[&str] = &["false", "true"];

/// The values an option of kind [`OptKind::Scalar`] may take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub min: Option<(f64, bool)>,
    pub max: Option<(f64, bool)>,
    pub integer: bool,
    /// What the option means, for the message when a value is out of range.
    pub meaning: &'static str,
}

impl Range {
    /// Any value.
    pub const ANY: Range = Range {
        min: None,
        max: None,
        integer: false,
        meaning: "",
    };

    /// Whether `v` is allowed.
    pub fn admits(&self, v: f64) -> bool {
        let above = self
            .min
            .is_none_or(|(lo, closed)| if closed { v >= lo } else { v > lo });
        let below = self
            .max
            .is_none_or(|(hi, closed)| if closed { v <= hi } else { v < hi });
        above && below && (!self.integer || v.fract() == 0.0)
    }

    /// "`k` (the fraction of each delta kept) must be in (0, 1]".
    pub fn explain(&self, name: &str) -> String {
        let what = if self.meaning.is_empty() {
            format!("`{name}`")
        } else {
            format!("`{name}` ({})", self.meaning)
        };
        let bound = match (self.min, self.max, self.integer) {
            (Some((0.0, true)), None, true) => "a non-negative integer".to_string(),
            (Some((lo, true)), None, true) => format!("an integer of at least {lo}"),
            (Some((lo, lc)), Some((hi, hc)), _) => format!(
                "in {}{lo}, {hi}{}",
                if lc { '[' } else { '(' },
                if hc { ']' } else { ')' }
            ),
            (Some((lo, closed)), None, _) => {
                format!("{} {lo}", if closed { "at least" } else { "above" })
            }
            (None, Some((hi, closed)), _) => {
                format!("{} {hi}", if closed { "at most" } else { "below" })
            }
            (None, None, _) => "a number".to_string(),
        };
        format!("{what} must be {bound}")
    }
}

/// An option's value, checked against its spec.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Weight(Profile),
    Scalar(f64),
    PerModel(Vec<f64>),
    Rows(Vec<bool>),
}

/// What a builder receives besides the models: how many there are, and every option's
/// value, defaults filled in.
pub struct Args<'a> {
    pub models: usize,
    /// Number of report rows (the length of every profile).
    pub rows: usize,
    pub values: &'a [(&'static str, Value)],
}

impl Args<'_> {
    fn value(&self, name: &str) -> &Value {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("option '{name}' is in the method's spec"))
    }

    /// A [`OptKind::Weight`] option.
    pub fn weight(&self, name: &str) -> &Profile {
        match self.value(name) {
            Value::Weight(p) => p,
            other => panic!("option '{name}' is a weight, not {other:?}"),
        }
    }

    /// A [`OptKind::Scalar`] option.
    pub fn scalar(&self, name: &str) -> f64 {
        match self.value(name) {
            Value::Scalar(v) => *v,
            other => panic!("option '{name}' is a scalar, not {other:?}"),
        }
    }

    /// A [`OptKind::PerModel`] option.
    pub fn per_model(&self, name: &str) -> &[f64] {
        match self.value(name) {
            Value::PerModel(v) => v,
            other => panic!("option '{name}' is one value per model, not {other:?}"),
        }
    }

    /// A [`OptKind::Rows`] option.
    pub fn selected_rows(&self, name: &str) -> &[bool] {
        match self.value(name) {
            Value::Rows(v) => v,
            other => panic!("option '{name}' is a selection of rows, not {other:?}"),
        }
    }

    /// A [`OptKind::Choice`] option: the index of the word given.
    pub fn choice(&self, name: &str) -> usize {
        self.scalar(name) as usize
    }

    /// `v` on every row.
    pub fn uniform(&self, v: f64) -> Profile {
        vec![v; self.rows]
    }
}

/// Statistics a per-tensor method gathers before producing output.
pub type Prepared = Box<dyn Any + Send + Sync>;

/// What a method sees of the tensor being merged.
pub trait TensorInputs {
    /// The tensor's canonical key.
    fn key(&self) -> &str;
    /// Its report row (to pick per-block weights).
    fn row(&self) -> usize;
    /// Its shape.
    fn shape(&self) -> &[usize];
    /// The element range being produced: the whole tensor for per-tensor methods.
    fn range(&self) -> std::ops::Range<usize>;
    /// The values of the method's model argument `arg` (0: the first) over elements
    /// `start..end` (within [`Self::range`]).
    fn input(&self, arg: usize, start: usize, end: usize) -> Vec<f64>;
}

/// Calls `f(start, end)` over `t`'s range in chunks of at most [`SUB`] elements.
pub fn sweep(t: &dyn TensorInputs, mut f: impl FnMut(usize, usize)) {
    let range = t.range();
    let mut s = range.start;
    while s < range.end {
        let e = (s + SUB).min(range.end);
        f(s, e);
        s = e;
    }
}

/// A merge operation the engine evaluates tensor by tensor.
pub trait NodeMethod: fmt::Debug + Send + Sync {
    /// Runs once per work item (the whole tensor for per-tensor methods), before any
    /// [`NodeMethod::eval`]: the statistics over [`TensorInputs::range`] that `eval` needs.
    fn prepare(&self, _t: &dyn TensorInputs) -> Prepared {
        Box::new(())
    }

    /// Bytes the method keeps while it merges a tensor of `numel` elements whole, with
    /// `models` inputs (for the memory the plan states).
    fn buffer_bytes(&self, _numel: usize, _models: usize) -> u64 {
        0
    }

    /// Whether the method's value for tensor `key` may be non-zero; a linear combination
    /// skips terms that are 0 throughout (a LoRA on the many tensors it does not patch).
    fn touches(&self, _key: &str, _row: usize) -> bool {
        true
    }

    /// The method's values over elements `start..end`.
    fn eval(&self, t: &dyn TensorInputs, prepared: &Prepared, start: usize, end: usize)
    -> Vec<f64>;
}

/// Every method, in the order `unknown method` lists them.
pub static REGISTRY: &[Method] = &[
    linear::WS,
    linear::AD,
    linear::TRIPLE_SUM,
    linear::SUM_TWICE,
    linear::AVG,
    linear::SWAP,
    ties::TIES,
    ties::TGMD,
    dare::DARE,
    dare::DARE_TIES,
    model_stock::MODEL_STOCK,
    geomedian::GEOMEDIAN,
    train_diff::TRAIN_DIFF,
    lora::LORA,
];

/// The method called `name` (or one of its aliases).
pub fn find(name: &str) -> Option<&'static Method> {
    REGISTRY
        .iter()
        .find(|m| m.name == name || m.aliases.contains(&name))
}

/// The methods' names, for messages.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|m| m.name).collect()
}

/// The `weights=(...)` option most methods take: one weight per model, 1 by default.
pub const fn per_model_weights(skip_first: bool) -> Opt {
    Opt {
        name: "weights",
        kind: OptKind::PerModel { skip_first },
        default: Some(1.0),
        range: Range::ANY,
        positional: false,
    }
}

/// An option of kind `kind` with a default and no range.
pub const fn plain(name: &'static str, kind: OptKind, default: Option<f64>) -> Opt {
    Opt {
        name,
        kind,
        default,
        range: Range::ANY,
        positional: false,
    }
}

/// A fraction in (0, 1] (`k`, the share of each delta kept).
pub const fn fraction(name: &'static str, default: f64, meaning: &'static str) -> Opt {
    Opt {
        range: Range {
            min: Some((0.0, false)),
            max: Some((1.0, true)),
            integer: false,
            meaning,
        },
        ..plain(name, OptKind::Scalar, Some(default))
    }
}

/// A drop probability in [0, 1).
pub const fn drop_probability(name: &'static str, default: f64) -> Opt {
    Opt {
        range: Range {
            min: Some((0.0, true)),
            max: Some((1.0, false)),
            integer: false,
            meaning: "the drop probability",
        },
        ..plain(name, OptKind::Scalar, Some(default))
    }
}

/// A non-negative integer (`seed`, `maxiter`).
pub const fn count(name: &'static str, default: f64) -> Opt {
    Opt {
        range: Range {
            min: Some((0.0, true)),
            max: None,
            integer: true,
            meaning: "",
        },
        ..plain(name, OptKind::Scalar, Some(default))
    }
}

/// A non-negative number (`eps`, `ftol`).
pub const fn non_negative(name: &'static str, default: f64) -> Opt {
    Opt {
        range: Range {
            min: Some((0.0, true)),
            max: None,
            integer: false,
            meaning: "",
        },
        ..plain(name, OptKind::Scalar, Some(default))
    }
}

/// One of `choices`, the `default`-th by default.
pub const fn choice(name: &'static str, choices: &'static [&'static str], default: usize) -> Opt {
    plain(name, OptKind::Choice(choices), Some(default as f64))
}

/// The TIES merge of one element: the sign of Σ wᵢδᵢ (0 counts as +) is elected; the deltas
/// that agree with it (non-zero, same sign) are summed weighted, then divided by their
/// weights' sum when `mean`. Shared by TIES and DARE-TIES.
pub fn disjoint(deltas: impl Iterator<Item = f64> + Clone, weights: &[f64], mean: bool) -> f64 {
    let total: f64 = deltas.clone().zip(weights).map(|(d, w)| w * d).sum();
    let positive = total >= 0.0;
    let (mut sum, mut wsum) = (0.0, 0.0);
    for (d, w) in deltas.zip(weights) {
        if d != 0.0 && (d > 0.0) == positive {
            sum += w * d;
            wsum += w;
        }
    }
    if !mean {
        sum
    } else if wsum == 0.0 {
        0.0
    } else {
        sum / wsum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        assert!(REGISTRY.iter().any(|m| matches!(
            m.build,
            Build::Node {
                per_tensor: true,
                ..
            }
        )));
        let mut all: Vec<&str> = REGISTRY
            .iter()
            .flat_map(|m| std::iter::once(m.name).chain(m.aliases.iter().copied()))
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a name or alias is used twice");
        assert_eq!(find("weighted_sum").map(|m| m.name), Some("ws"));
        assert!(find("blend").is_none());
    }

    #[test]
    fn every_option_default_is_in_range() {
        for m in REGISTRY {
            for o in m.options {
                if let (OptKind::Scalar, Some(d)) = (o.kind, o.default) {
                    assert!(o.range.admits(d), "{}: {} = {d}", m.name, o.name);
                }
            }
        }
    }

    #[test]
    fn ranges_explain_themselves() {
        let k = ties::TIES.options.iter().find(|o| o.name == "k").unwrap();
        assert_eq!(
            k.range.explain("k"),
            "`k` (the fraction of each delta kept) must be in (0, 1]"
        );
        assert!(!k.range.admits(0.0) && k.range.admits(1.0));
        let seed = dare::DARE
            .options
            .iter()
            .find(|o| o.name == "seed")
            .unwrap();
        assert_eq!(
            seed.range.explain("seed"),
            "`seed` must be a non-negative integer"
        );
        assert!(!seed.range.admits(1.5) && !seed.range.admits(-1.0));
    }
}
