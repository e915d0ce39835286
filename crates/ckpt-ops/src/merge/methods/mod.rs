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
//! A method declares each option once, as a typed [`Key`] constant (`const K: Key<Scalar>`,
//! `const VOTE: Key<Vote>`): its spec goes in the method's option list, and the builder reads
//! the value through the same constant (`args.get(&K)` is an `f64`, `args.get(&VOTE)` a
//! `Vote`), so an option can be neither misspelled nor read as another kind. Choices are
//! enums that implement [`Choice`].
//!
//! Adding a method is one file (its option keys, its builder and, for a node, its
//! [`NodeMethod`]) and one entry in [`REGISTRY`].

pub mod dare;
pub(crate) mod geomedian;
pub(crate) mod linear;
pub(crate) mod lora;
pub(crate) mod model_stock;
pub(crate) mod ties;
pub(crate) mod train_diff;

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
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
    Linear(fn(&[Combination], &Args<'_>) -> Result<Combination, MethodError>),
    /// An operation of its own over the models, which it reads through [`TensorInputs`]
    /// by argument position.
    Node {
        /// Needs a whole tensor before its first value (magnitude ranks, cosines,
        /// iterations), as opposed to working element by element.
        per_tensor: bool,
        build: fn(&Args<'_>) -> Result<BuiltNode, MethodError>,
    },
    /// A LoRA file's weight change ([`lora`]): its first argument names a LoRA file, not a
    /// model; it reads no model input.
    Lora(fn(Arc<crate::lora::LoraFile>, &Args<'_>) -> Result<BuiltNode, MethodError>),
}

/// Why a call's options, each valid alone, do not make a method.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("the weights sum to 0")]
    WeightsSumToZero,
    /// An option that only means something with another one.
    #[error("`{given}` {why}: give `{needs}` too")]
    Needs {
        given: &'static str,
        needs: &'static str,
        why: &'static str,
    },
}

/// What a node method's builder makes.
pub type BuiltNode = Arc<dyn NodeMethod>;

/// An option of a method.
pub struct Opt {
    pub name: &'static str,
    pub kind: OptKind,
    /// The value when the call does not give it; `None`: the call must.
    pub default: Option<Given>,
    pub range: Range,
    /// May be given positionally, after the models (`ws(A, B, 0.3)`).
    pub positional: bool,
}

impl Opt {
    /// The option's value when a call with `models` models over `rows` report rows does not
    /// give it: its default as its kind reads it (`None`: the call must give it).
    pub fn default_value(&self, models: usize, rows: usize) -> Option<Value> {
        Some(match (self.default?, self.kind) {
            (Given::Word(w), _) => Value::Word(w),
            (Given::Number(d), OptKind::Weight) => Value::Weight(vec![d; rows]),
            (Given::Number(d), OptKind::PerModel { skip_first }) => {
                Value::PerModel(vec![d; models - usize::from(skip_first)])
            }
            (Given::Number(d), _) => Value::Scalar(d),
        })
    }
}

/// An option's default, as a call would give it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Given {
    /// A number: the same on every row (weights), for every model (per-model lists).
    Number(f64),
    /// One of a [`OptKind::Choice`]'s words.
    Word(&'static str),
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
    /// One of these words (`vote=count`): a [`Choice`]'s words.
    Choice(&'static [&'static str]),
}

/// The words of a yes/no option (`rescale=false`); 0 and 1 are accepted too.
pub const BOOL: &[&str] = &["false", "true"];

/// A closed set of words an option takes, as a Rust enum (`vote=count` is `Vote::Count`).
pub trait Choice: Copy + 'static {
    /// Every word, in the order messages list them.
    const WORDS: &'static [&'static str];
    /// The value a word of [`Self::WORDS`] names.
    fn from_word(word: &str) -> Option<Self>;
}

/// An enum of words (`vote=count`) and its [`Choice`] impl, each variant's word written once.
macro_rules! words {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $crate::merge::methods::Choice for $name {
            const WORDS: &'static [&'static str] = &[$($word),+];
            fn from_word(word: &str) -> Option<$name> {
                match word {
                    $($word => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use words;

impl Choice for bool {
    const WORDS: &'static [&'static str] = BOOL;
    fn from_word(word: &str) -> Option<bool> {
        match word {
            "false" => Some(false),
            "true" => Some(true),
            _ => None,
        }
    }
}

/// The kind of a [`Key`]'s value and the Rust type a builder reads it as.
pub trait Kind {
    type Out<'a>;
    /// `v` as this kind, if it is one.
    fn read(v: &Value) -> Option<Self::Out<'_>>;
}

/// Block weights ([`OptKind::Weight`]): a per-row profile.
pub struct Weight;
/// One number ([`OptKind::Scalar`]).
pub struct Scalar;
/// One number per model ([`OptKind::PerModel`]).
pub struct PerModel;
/// A selection of rows ([`OptKind::Rows`]).
pub struct Rows;

impl Kind for Weight {
    type Out<'a> = &'a Profile;
    fn read(v: &Value) -> Option<&Profile> {
        match v {
            Value::Weight(p) => Some(p),
            _ => None,
        }
    }
}

impl Kind for Scalar {
    type Out<'a> = f64;
    fn read(v: &Value) -> Option<f64> {
        match v {
            Value::Scalar(x) => Some(*x),
            _ => None,
        }
    }
}

impl Kind for PerModel {
    type Out<'a> = &'a [f64];
    fn read(v: &Value) -> Option<&[f64]> {
        match v {
            Value::PerModel(x) => Some(x),
            _ => None,
        }
    }
}

impl Kind for Rows {
    type Out<'a> = &'a [bool];
    fn read(v: &Value) -> Option<&[bool]> {
        match v {
            Value::Rows(x) => Some(x),
            _ => None,
        }
    }
}

impl<C: Choice> Kind for C {
    type Out<'a> = C;
    fn read(v: &Value) -> Option<C> {
        match v {
            Value::Word(w) => C::from_word(w),
            _ => None,
        }
    }
}

/// A typed handle on one option of a method: its spec ([`Key::opt`], listed in the
/// method's options) and the kind a builder reads its value as ([`Args::get`]).
pub struct Key<K> {
    pub opt: Opt,
    kind: PhantomData<fn() -> K>,
}

impl<K> Key<K> {
    const fn new(opt: Opt) -> Key<K> {
        Key {
            opt,
            kind: PhantomData,
        }
    }

    /// The same option, also accepted positionally after the models (`ws(A, B, 0.3)`).
    pub const fn positional(self) -> Key<K> {
        Key::new(Opt {
            positional: true,
            ..self.opt
        })
    }

    /// The same option with the values it may take.
    pub const fn within(self, range: Range) -> Key<K> {
        Key::new(Opt { range, ..self.opt })
    }
}

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
    /// A [`OptKind::Choice`]'s word.
    Word(&'static str),
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
    /// The value of option `key`, as its kind reads.
    ///
    /// # Panics
    /// If `key` is not one of the method's options (a method's own bug, which the registry
    /// tests catch: they build every method).
    pub fn get<K: Kind>(&self, key: &Key<K>) -> K::Out<'_> {
        let name = key.opt.name;
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| K::read(v))
            .unwrap_or_else(|| panic!("option '{name}' is in the method's spec, of its kind"))
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
pub const fn per_model_weights(skip_first: bool) -> Key<PerModel> {
    Key::new(Opt {
        name: "weights",
        kind: OptKind::PerModel { skip_first },
        default: Some(Given::Number(1.0)),
        range: Range::ANY,
        positional: false,
    })
}

const fn opt(name: &'static str, kind: OptKind, default: Option<Given>) -> Opt {
    Opt {
        name,
        kind,
        default,
        range: Range::ANY,
        positional: false,
    }
}

const fn number(default: Option<f64>) -> Option<Given> {
    match default {
        Some(d) => Some(Given::Number(d)),
        None => None,
    }
}

/// Block weights, `default` on every row (`None`: the call must give them).
pub const fn weight(name: &'static str, default: Option<f64>) -> Key<Weight> {
    Key::new(opt(name, OptKind::Weight, number(default)))
}

/// A number, any value.
pub const fn scalar(name: &'static str, default: f64) -> Key<Scalar> {
    Key::new(opt(name, OptKind::Scalar, Some(Given::Number(default))))
}

/// A selection of rows (no default).
pub const fn rows(name: &'static str) -> Key<Rows> {
    Key::new(opt(name, OptKind::Rows, None))
}

/// One of `C`'s words, `default` when not given.
pub const fn choice<C: Choice>(name: &'static str, default: &'static str) -> Key<C> {
    Key::new(opt(
        name,
        OptKind::Choice(C::WORDS),
        Some(Given::Word(default)),
    ))
}

/// A fraction in (0, 1] (`k`, the share of each delta kept).
pub const fn fraction(name: &'static str, default: f64, meaning: &'static str) -> Key<Scalar> {
    scalar(name, default).within(Range {
        min: Some((0.0, false)),
        max: Some((1.0, true)),
        integer: false,
        meaning,
    })
}

/// A drop probability in [0, 1).
pub const fn drop_probability(name: &'static str, default: f64) -> Key<Scalar> {
    scalar(name, default).within(Range {
        min: Some((0.0, true)),
        max: Some((1.0, false)),
        integer: false,
        meaning: "the drop probability",
    })
}

/// A non-negative integer (`seed`, `maxiter`).
pub const fn count(name: &'static str, default: f64) -> Key<Scalar> {
    scalar(name, default).within(Range {
        min: Some((0.0, true)),
        max: None,
        integer: true,
        meaning: "",
    })
}

/// A non-negative number (`eps`, `ftol`).
pub const fn non_negative(name: &'static str, default: f64) -> Key<Scalar> {
    scalar(name, default).within(Range {
        min: Some((0.0, true)),
        max: None,
        integer: false,
        meaning: "",
    })
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
    fn every_option_default_is_valid() {
        for m in REGISTRY {
            for o in m.options {
                match (o.default, o.kind) {
                    (Some(Given::Number(d)), OptKind::Scalar) => {
                        assert!(o.range.admits(d), "{}: {} = {d}", m.name, o.name)
                    }
                    (Some(Given::Number(_)), OptKind::Weight | OptKind::PerModel { .. }) => {}
                    (Some(Given::Word(w)), OptKind::Choice(words)) => {
                        assert!(words.contains(&w), "{}: {} = {w}", m.name, o.name)
                    }
                    (None, OptKind::Weight | OptKind::Rows) => {}
                    (d, k) => panic!("{}: {} has default {d:?} for {k:?}", m.name, o.name),
                }
            }
        }
    }

    /// Every word of a choice names a distinct value, and nothing else names one.
    fn words_read<C: Choice + PartialEq + fmt::Debug>() {
        let values: Vec<C> = C::WORDS
            .iter()
            .map(|w| C::from_word(w).unwrap_or_else(|| panic!("'{w}' reads as nothing")))
            .collect();
        for (i, v) in values.iter().enumerate() {
            assert!(!values[..i].contains(v), "two words read as {v:?}");
        }
        assert!(C::from_word("").is_none() && C::from_word("Mean").is_none());
    }

    #[test]
    fn choices_read_their_words() {
        words_read::<bool>();
        words_read::<ties::Vote>();
        words_read::<ties::Combine>();
        words_read::<ties::Like>();
    }

    /// The values a call could give `o`: each word of a choice, else one value.
    fn values_of(o: &Opt, models: usize, rows: usize) -> Vec<Value> {
        match (o.kind, o.default) {
            (OptKind::Choice(words), _) => words.iter().map(|w| Value::Word(w)).collect(),
            (OptKind::Weight, _) => vec![Value::Weight(vec![0.5; rows])],
            (OptKind::Scalar, Some(Given::Number(d))) => vec![Value::Scalar(d)],
            (OptKind::Scalar, _) => vec![Value::Scalar(0.5)],
            (OptKind::PerModel { skip_first }, _) => {
                vec![Value::PerModel(vec![1.0; models - usize::from(skip_first)])]
            }
            (OptKind::Rows, _) => vec![Value::Rows((0..rows).map(|r| r % 2 == 0).collect())],
        }
    }

    /// Every builder reads only its own options, as their kinds (a key missing from a
    /// method's list, or of another kind, would panic here), for every word of every
    /// choice; the LoRA term is left out (it needs a LoRA file; the integration tests bake
    /// one).
    #[test]
    fn every_method_builds_from_its_options() {
        let rows = 3;
        for m in REGISTRY {
            let models = m.models.1.unwrap_or(m.models.0 + 1).max(m.models.0);
            let choices: Vec<Vec<Value>> = m
                .options
                .iter()
                .map(|o| values_of(o, models, rows))
                .collect();
            let variants = choices.iter().map(Vec::len).max().unwrap_or(1);
            for v in 0..variants {
                let values: Vec<(&'static str, Value)> = m
                    .options
                    .iter()
                    .zip(&choices)
                    .map(|(o, c)| (o.name, c[v.min(c.len() - 1)].clone()))
                    .collect();
                let args = Args {
                    models,
                    rows,
                    values: &values,
                };
                let inputs: Vec<Combination> =
                    (0..models).map(|i| Combination::of(i, rows)).collect();
                let built = match m.build {
                    Build::Linear(f) => f(&inputs, &args).map(|_| ()),
                    Build::Node { build, .. } => build(&args).map(|_| ()),
                    Build::Lora(_) => Ok(()),
                };
                assert_eq!(built, Ok(()), "{} with {values:?}", m.name);
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
