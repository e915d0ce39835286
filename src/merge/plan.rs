//! From a parsed recipe to what the engine evaluates: a small graph over the input files.
//!
//! Every linear step (weighted sums, add differences, block weights, component swaps, and
//! their compositions) stays a *linear combination* with one coefficient per report row
//! (U-Net block, text encoder, VAE, other). So a whole multi-step linear recipe collapses
//! into one combination of the input files, evaluated in one pass, reading for each tensor
//! only the files whose coefficient for its block is not zero. Non-linear methods (TIES,
//! DARE, Model Stock, geometric median, train difference) become nodes of their own.
//!
//! Block weights are given in SuperMerger's order (`BASE, IN00.., M00, OUT..`); `BASE` covers
//! every row outside the U-Net (text encoders, VAE, extras). The named form can also name
//! `TE1`, `TE2`, `TE` (both), `VAE`, `OTHER`, `UNET`, `IN`, `OUT` and ranges `IN03..OUT02`.

use std::collections::HashMap;
use std::fmt;

use super::recipe::{Arg, Expr, Recipe, Span, Weights};
use crate::catalog::{Arch, Block, GroupInfo, Grouping, Selector};

/// Per-row coefficients, indexed like [`Grouping::groups`].
pub type Profile = Vec<f64>;

/// A resolution error, at a place in the recipe.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{span}: {message}")]
pub struct PlanError {
    pub span: Span,
    pub message: String,
}

fn err<T>(span: Span, message: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError {
        span,
        message: message.into(),
    })
}

/// A node of the merge graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// An input file (index into [`MergePlan::inputs`]).
    Input(usize),
    /// Σ profileᵢ(row) · nodeᵢ.
    Linear(Vec<(usize, Profile)>),
    /// TIES-merging: keep the top `k` fraction of each task vector by magnitude, elect a
    /// sign per element from the weighted sum, average the agreeing weighted deltas, scale
    /// by `lambda`, add to the base.
    Ties {
        base: usize,
        models: Vec<usize>,
        weights: Vec<f64>,
        k: f64,
        lambda: f64,
    },
    /// DARE: drop each delta element with probability `p` (seeded, per tensor and model),
    /// rescale survivors by 1/(1-p), then add Σ wᵢ·δᵢ·lambda to the base; with `ties`, elect
    /// signs as TIES does before summing.
    Dare {
        base: usize,
        models: Vec<usize>,
        weights: Vec<f64>,
        p: f64,
        seed: u64,
        lambda: f64,
        ties: bool,
    },
    /// Model Stock: t·mean(models) + (1-t)·base, t = N·cosθ / (1 + (N-1)·cosθ), cosθ the mean
    /// pairwise cosine of the task vectors, per tensor.
    ModelStock { base: usize, models: Vec<usize> },
    /// Weighted geometric median (Weiszfeld iterations), per tensor.
    GeoMedian {
        models: Vec<usize>,
        weights: Vec<f64>,
        eps: f64,
        maxiter: usize,
    },
    /// SuperMerger's train difference: a + (b - c)·1.8·α·|b-a| / (|b-a| + |b-c|).
    TrainDiff {
        a: usize,
        b: usize,
        c: usize,
        alpha: Profile,
    },
}

impl Node {
    /// The nodes this one reads.
    pub fn children(&self) -> Vec<usize> {
        match self {
            Node::Input(_) => Vec::new(),
            Node::Linear(terms) => terms.iter().map(|(n, _)| *n).collect(),
            Node::Ties { base, models, .. }
            | Node::Dare { base, models, .. }
            | Node::ModelStock { base, models } => std::iter::once(*base)
                .chain(models.iter().copied())
                .collect(),
            Node::GeoMedian { models, .. } => models.clone(),
            Node::TrainDiff { a, b, c, .. } => vec![*a, *b, *c],
        }
    }

    /// Needs a whole tensor at once (magnitude ranks, cosines, iterations), as opposed to
    /// working element by element.
    pub fn per_tensor(&self) -> bool {
        matches!(
            self,
            Node::Ties { .. } | Node::ModelStock { .. } | Node::GeoMedian { .. }
        )
    }

    /// Stays linear in its inputs (so `fit` can reason about it).
    pub fn is_linear(&self) -> bool {
        matches!(self, Node::Input(_) | Node::Linear(_))
    }
}

/// A model file the recipe binds.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub name: String,
    pub path: String,
}

/// What the engine runs.
#[derive(Clone, Debug)]
pub struct MergePlan {
    pub arch: Arch,
    pub grouping: Grouping,
    pub inputs: Vec<Input>,
    pub nodes: Vec<Node>,
    pub output: usize,
}

impl MergePlan {
    /// True when every node is linear: the output is one combination of the inputs.
    pub fn is_linear(&self) -> bool {
        self.nodes.iter().all(Node::is_linear)
    }

    /// The output as Σ profile ⊙ input, when the recipe is linear.
    pub fn linear_output(&self) -> Option<Vec<(usize, Profile)>> {
        if !self.is_linear() {
            return None;
        }
        Some(match &self.nodes[self.output] {
            Node::Input(i) => vec![(*i, vec![1.0; self.grouping.groups().len()])],
            Node::Linear(terms) => terms
                .iter()
                .map(|(n, p)| match &self.nodes[*n] {
                    Node::Input(i) => (*i, p.clone()),
                    _ => unreachable!("linear nodes are flattened to inputs"),
                })
                .collect(),
            _ => unreachable!(),
        })
    }
}

/// The input files a recipe's output depends on, in binding order (to open them before
/// the architecture is known).
pub fn referenced_inputs(recipe: &Recipe) -> Vec<usize> {
    let mut names: Vec<&str> = Vec::new();
    fn walk<'a>(e: &'a Expr, out: &mut Vec<&'a str>) {
        match e {
            Expr::Name(n, _) => out.push(n),
            Expr::Neg(a, _) => walk(a, out),
            Expr::Add(a, b, _) | Expr::Sub(a, b, _) | Expr::Mul(a, b, _) => {
                walk(a, out);
                walk(b, out);
            }
            Expr::Call { args, options, .. } => {
                args.iter().for_each(|a| walk(a, out));
                for (_, a, _) in options {
                    if let Arg::Expr(e) = a {
                        walk(e, out);
                    }
                }
            }
            Expr::Number(..) => {}
        }
    }
    for s in &recipe.steps {
        walk(&s.expr, &mut names);
    }
    let mut out: Vec<usize> = Vec::new();
    for (i, b) in recipe.bindings.iter().enumerate() {
        let mentioned = names
            .iter()
            .any(|n| *n == b.name || n.split('-').any(|p| p == b.name) || n.contains(&b.name));
        if mentioned {
            out.push(i);
        }
    }
    out
}

/// A value while resolving: a model (linear combination of nodes) or a weight.
#[derive(Clone, Debug)]
enum Value {
    Model(Vec<(usize, Profile)>),
    Weight(Profile),
}

struct Resolver<'r> {
    recipe: &'r Recipe,
    arch: Arch,
    groups: Vec<GroupInfo>,
    nodes: Vec<Node>,
    /// Binding name -> node.
    input_nodes: HashMap<String, usize>,
    steps: HashMap<String, Vec<(usize, Profile)>>,
}

/// Resolves `recipe` for `arch`. `inputs` are the bindings the caller opened (in binding
/// order); a binding not in it is an error if the recipe uses it.
pub fn resolve(recipe: &Recipe, arch: Arch) -> Result<MergePlan, PlanError> {
    let grouping = Grouping::for_arch(arch);
    let mut r = Resolver {
        recipe,
        arch,
        groups: grouping.groups().to_vec(),
        nodes: Vec::new(),
        input_nodes: HashMap::new(),
        steps: HashMap::new(),
    };
    let mut inputs = Vec::new();
    for b in &recipe.bindings {
        if r.input_nodes.contains_key(&b.name) {
            return err(b.span, format!("'{}' is bound twice", b.name));
        }
        r.nodes.push(Node::Input(inputs.len()));
        r.input_nodes.insert(b.name.clone(), r.nodes.len() - 1);
        inputs.push(Input {
            name: b.name.clone(),
            path: b.path.clone(),
        });
    }
    if recipe.steps.is_empty() {
        return err(
            Span { line: 1, col: 1 },
            "the recipe has no step: add `OUT = expression`",
        );
    }
    for (si, step) in recipe.steps.iter().enumerate() {
        if r.input_nodes.contains_key(&step.name) || r.steps.contains_key(&step.name) {
            return err(step.span, format!("'{}' is defined twice", step.name));
        }
        let v = r.eval(&step.expr, si)?;
        let Value::Model(terms) = v else {
            return err(
                step.span,
                format!("step '{}' is a number, not a model", step.name),
            );
        };
        r.steps.insert(step.name.clone(), terms);
    }
    let last = recipe.steps.last().expect("checked above");
    let out_terms = r.steps[&last.name].clone();
    let rows = r.groups.len();
    let output = if out_terms.len() == 1 && out_terms[0].1.iter().all(|&c| c == 1.0) {
        out_terms[0].0
    } else {
        r.nodes.push(Node::Linear(out_terms));
        r.nodes.len() - 1
    };
    let _ = rows;
    Ok(MergePlan {
        arch,
        grouping,
        inputs,
        nodes: r.nodes,
        output,
    })
}

impl Resolver<'_> {
    fn rows(&self) -> usize {
        self.groups.len()
    }

    fn uniform(&self, v: f64) -> Profile {
        vec![v; self.rows()]
    }

    /// A weight parameter visible from step `si` under `name`.
    fn param(&self, name: &str, si: usize) -> Option<(Weights, Span)> {
        let step = &self.recipe.steps[si];
        if let Some((_, w, s)) = step.params.iter().find(|(n, _, _)| n == name) {
            return Some((w.clone(), *s));
        }
        self.recipe
            .globals
            .iter()
            .rev()
            .find(|g| g.name == name && g.before_step <= si)
            .map(|g| (g.weights.clone(), g.span))
    }

    fn name(&mut self, n: &str, span: Span, si: usize) -> Result<Value, PlanError> {
        if let Some((w, wspan)) = self.param(n, si) {
            return Ok(Value::Weight(self.profile(&w, wspan)?));
        }
        if let Some(terms) = self.steps.get(n) {
            return Ok(Value::Model(terms.clone()));
        }
        if let Some(&node) = self.input_nodes.get(n) {
            return Ok(Value::Model(vec![(node, self.uniform(1.0))]));
        }
        if self.recipe.steps.iter().skip(si).any(|s| s.name == n) {
            return err(
                span,
                format!("'{n}' is a later step; a step can only use steps above it"),
            );
        }
        // `alpha-beta` or `A-B` written without spaces: a chain of differences.
        if let Some(parts) = self.dashed_parts(n, si) {
            let mut acc = self.name(&parts[0], span, si)?;
            for p in &parts[1..] {
                let v = self.name(p, span, si)?;
                acc = self.combine(acc, v, -1.0, span)?;
            }
            return Ok(acc);
        }
        err(
            span,
            format!(
                "'{n}' is not a model, a step or a parameter{}",
                if n.contains('-') {
                    " (for a difference, put spaces around '-': `A - B`)"
                } else {
                    ""
                }
            ),
        )
    }

    /// The parts of a dashed name that is not itself defined but whose parts all are.
    fn dashed_parts(&self, n: &str, si: usize) -> Option<Vec<String>> {
        let defined = |p: &str| {
            self.param(p, si).is_some()
                || self.steps.contains_key(p)
                || self.input_nodes.contains_key(p)
        };
        if !n.contains('-') || defined(n) {
            return None;
        }
        let parts: Vec<String> = n.split('-').map(str::to_string).collect();
        parts
            .iter()
            .all(|p| !p.is_empty() && defined(p))
            .then_some(parts)
    }

    /// a + sign·b.
    fn combine(&self, a: Value, b: Value, sign: f64, span: Span) -> Result<Value, PlanError> {
        match (a, b) {
            (Value::Model(mut x), Value::Model(y)) => {
                for (n, p) in y {
                    let p: Profile = p.iter().map(|v| sign * v).collect();
                    match x.iter_mut().find(|(m, _)| *m == n) {
                        Some((_, q)) => q.iter_mut().zip(&p).for_each(|(q, p)| *q += p),
                        None => x.push((n, p)),
                    }
                }
                Ok(Value::Model(x))
            }
            (Value::Weight(x), Value::Weight(y)) => Ok(Value::Weight(
                x.iter().zip(&y).map(|(a, b)| a + sign * b).collect(),
            )),
            _ => err(
                span,
                "cannot add a number to a model: multiply it with `x` or put it in a weighted sum",
            ),
        }
    }

    fn scale(&self, v: Value, w: &Profile) -> Value {
        match v {
            Value::Model(terms) => Value::Model(
                terms
                    .into_iter()
                    .map(|(n, p)| (n, p.iter().zip(w).map(|(a, b)| a * b).collect()))
                    .collect(),
            ),
            Value::Weight(p) => Value::Weight(p.iter().zip(w).map(|(a, b)| a * b).collect()),
        }
    }

    fn eval(&mut self, e: &Expr, si: usize) -> Result<Value, PlanError> {
        match e {
            Expr::Number(v, _) => Ok(Value::Weight(self.uniform(*v))),
            Expr::Name(n, s) => self.name(n, *s, si),
            Expr::Neg(a, _) => {
                let v = self.eval(a, si)?;
                Ok(self.scale(v, &self.uniform(-1.0)))
            }
            Expr::Add(a, b, s) => {
                let (a, b) = (self.eval(a, si)?, self.eval(b, si)?);
                self.combine(a, b, 1.0, *s)
            }
            Expr::Sub(a, b, s) => {
                let left = self.eval(a, si)?;
                // `1-alpha-beta` lexes as `1 - (alpha-beta)`; subtract each part instead.
                if let Expr::Name(n, ns) = &**b
                    && let Some(parts) = self.dashed_parts(n, si)
                {
                    let mut acc = left;
                    for p in parts {
                        let v = self.name(&p, *ns, si)?;
                        acc = self.combine(acc, v, -1.0, *s)?;
                    }
                    return Ok(acc);
                }
                let right = self.eval(b, si)?;
                self.combine(left, right, -1.0, *s)
            }
            Expr::Mul(a, b, s) => match (self.eval(a, si)?, self.eval(b, si)?) {
                (Value::Model(_), Value::Model(_)) => {
                    err(*s, "cannot multiply two models; one side must be a weight")
                }
                (m @ Value::Model(_), Value::Weight(w))
                | (Value::Weight(w), m @ Value::Model(_)) => Ok(self.scale(m, &w)),
                (Value::Weight(x), Value::Weight(w)) => Ok(self.scale(Value::Weight(x), &w)),
            },
            Expr::Call {
                name,
                args,
                options,
                span,
            } => self.call(name, args, options, *span, si),
        }
    }

    fn model_arg(&mut self, e: &Expr, si: usize) -> Result<Vec<(usize, Profile)>, PlanError> {
        match self.eval(e, si)? {
            Value::Model(m) => Ok(m),
            Value::Weight(_) => err(e.span(), "expected a model here, found a number"),
        }
    }

    /// The first three arguments, which must be models (the caller checked the arity).
    fn three_models(
        &mut self,
        args: &[Expr],
        si: usize,
    ) -> Result<[Vec<(usize, Profile)>; 3], PlanError> {
        Ok([
            self.model_arg(&args[0], si)?,
            self.model_arg(&args[1], si)?,
            self.model_arg(&args[2], si)?,
        ])
    }

    /// A node for a model value (an existing node when it is one node with weight 1).
    fn node_of(&mut self, terms: Vec<(usize, Profile)>) -> usize {
        if terms.len() == 1 && terms[0].1.iter().all(|&c| c == 1.0) {
            return terms[0].0;
        }
        // Flatten linear children so linear chains stay one combination of inputs.
        let mut flat: Vec<(usize, Profile)> = Vec::new();
        for (n, p) in terms {
            let expanded: Vec<(usize, Profile)> = match &self.nodes[n] {
                Node::Linear(inner) => inner
                    .iter()
                    .map(|(m, q)| (*m, q.iter().zip(&p).map(|(a, b)| a * b).collect()))
                    .collect(),
                _ => vec![(n, p)],
            };
            for (m, q) in expanded {
                match flat.iter_mut().find(|(x, _)| *x == m) {
                    Some((_, acc)) => acc.iter_mut().zip(&q).for_each(|(a, b)| *a += b),
                    None => flat.push((m, q)),
                }
            }
        }
        self.nodes.push(Node::Linear(flat));
        self.nodes.len() - 1
    }

    fn weight_arg(&mut self, arg: &Arg, span: Span, si: usize) -> Result<Profile, PlanError> {
        match arg {
            Arg::Weights(w) => self.profile(w, span),
            Arg::Expr(e) => match self.eval(e, si)? {
                Value::Weight(p) => Ok(p),
                Value::Model(_) => err(span, "expected a weight here, found a model"),
            },
        }
    }

    fn scalar_arg(
        &mut self,
        arg: &Arg,
        span: Span,
        si: usize,
        what: &str,
    ) -> Result<f64, PlanError> {
        let p = self.weight_arg(arg, span, si)?;
        if p.windows(2).any(|w| w[0] != w[1]) {
            return err(
                span,
                format!("`{what}` takes one number, not block weights"),
            );
        }
        Ok(p[0])
    }

    /// A list of per-model weights: `weights=(1, 0.5)`.
    fn list_arg(&self, arg: &Arg, span: Span, n: usize) -> Result<Vec<f64>, PlanError> {
        let values = match arg {
            Arg::Weights(Weights::List(v)) => v.clone(),
            Arg::Weights(Weights::Scalar(v)) => vec![*v],
            Arg::Expr(Expr::Number(v, _)) => vec![*v],
            _ => {
                return err(
                    span,
                    "expected a list of numbers, one per model: `weights=(1, 0.5)`",
                );
            }
        };
        if values.len() != n {
            return err(
                span,
                format!(
                    "expected {n} weights (one per model), found {}",
                    values.len()
                ),
            );
        }
        Ok(values)
    }

    fn call(
        &mut self,
        name: &str,
        args: &[Expr],
        options: &[(String, Arg, Span)],
        span: Span,
        si: usize,
    ) -> Result<Value, PlanError> {
        let option = |key: &str| find_option(options, key);
        let known: &[&str] = match name {
            "ws" | "weighted_sum" => &["alpha"],
            "ad" | "add_difference" => &["alpha"],
            "triple_sum" | "sum_twice" => &["alpha", "beta"],
            "avg" | "n_average" | "average" => &["weights"],
            "swap" => &["component"],
            "ties" => &["k", "lambda", "weights"],
            "dare" | "dare_ties" => &["p", "seed", "lambda", "weights"],
            "model_stock" => &[],
            "geomedian" | "geometric_median" => &["eps", "maxiter", "weights"],
            "train_diff" | "train_difference" => &["alpha"],
            _ => {
                return err(
                    span,
                    format!(
                        "unknown method '{name}'; methods: ws, ad, triple_sum, sum_twice, avg, swap, ties, dare, dare_ties, \
                         model_stock, geomedian, train_diff"
                    ),
                );
            }
        };
        for (k, _, s) in options {
            if !known.contains(&k.as_str()) {
                return err(
                    *s,
                    format!(
                        "`{name}` has no option '{k}'; it takes: {}",
                        known.join(", ")
                    ),
                );
            }
        }
        let arity = |lo: usize, hi: usize| -> Result<(), PlanError> {
            if args.len() < lo || args.len() > hi {
                let want = if lo == hi {
                    format!("{lo}")
                } else if hi == usize::MAX {
                    format!("at least {lo}")
                } else {
                    format!("{lo} to {hi}")
                };
                return err(
                    span,
                    format!("`{name}` takes {want} arguments, found {}", args.len()),
                );
            }
            Ok(())
        };
        // Weight given positionally after the models, or as an option.
        let weight = |r: &mut Self,
                      pos: usize,
                      key: &str,
                      default: Option<f64>|
         -> Result<Profile, PlanError> {
            if let Some(e) = args.get(pos) {
                return r.weight_arg(&Arg::Expr(e.clone()), e.span(), si);
            }
            if let Some((a, s)) = option(key) {
                return r.weight_arg(&a, s, si);
            }
            match default {
                Some(v) => Ok(r.uniform(v)),
                None => err(span, format!("`{name}` needs `{key}`")),
            }
        };
        let one = self.uniform(1.0);
        let lin = |terms: Vec<(Vec<(usize, Profile)>, Profile)>| -> Value {
            let mut out: Vec<(usize, Profile)> = Vec::new();
            for (model, w) in terms {
                for (n, p) in model {
                    let p: Profile = p.iter().zip(&w).map(|(a, b)| a * b).collect();
                    match out.iter_mut().find(|(m, _)| *m == n) {
                        Some((_, q)) => q.iter_mut().zip(&p).for_each(|(q, p)| *q += p),
                        None => out.push((n, p)),
                    }
                }
            }
            Value::Model(out)
        };
        match name {
            "ws" | "weighted_sum" => {
                arity(2, 3)?;
                let (a, b) = (self.model_arg(&args[0], si)?, self.model_arg(&args[1], si)?);
                let alpha = weight(self, 2, "alpha", None)?;
                let one_minus: Profile = alpha.iter().map(|x| 1.0 - x).collect();
                Ok(lin(vec![(a, one_minus), (b, alpha)]))
            }
            "ad" | "add_difference" => {
                arity(3, 4)?;
                let [a, b, c] = self.three_models(args, si)?;
                let alpha = weight(self, 3, "alpha", Some(1.0))?;
                let neg: Profile = alpha.iter().map(|x| -x).collect();
                Ok(lin(vec![(a, one), (b, alpha), (c, neg)]))
            }
            "triple_sum" => {
                arity(3, 5)?;
                let [a, b, c] = self.three_models(args, si)?;
                let alpha = weight(self, 3, "alpha", None)?;
                let beta = weight(self, 4, "beta", None)?;
                let rest: Profile = alpha.iter().zip(&beta).map(|(x, y)| 1.0 - x - y).collect();
                Ok(lin(vec![(a, rest), (b, alpha), (c, beta)]))
            }
            "sum_twice" => {
                arity(3, 5)?;
                let [a, b, c] = self.three_models(args, si)?;
                let alpha = weight(self, 3, "alpha", None)?;
                let beta = weight(self, 4, "beta", None)?;
                let wa: Profile = alpha
                    .iter()
                    .zip(&beta)
                    .map(|(x, y)| (1.0 - y) * (1.0 - x))
                    .collect();
                let wb: Profile = alpha
                    .iter()
                    .zip(&beta)
                    .map(|(x, y)| (1.0 - y) * x)
                    .collect();
                Ok(lin(vec![(a, wa), (b, wb), (c, beta)]))
            }
            "avg" | "n_average" | "average" => {
                arity(1, usize::MAX)?;
                let models: Vec<_> = args
                    .iter()
                    .map(|a| self.model_arg(a, si))
                    .collect::<Result<_, _>>()?;
                let w = match option("weights") {
                    Some((a, s)) => self.list_arg(&a, s, models.len())?,
                    None => vec![1.0; models.len()],
                };
                let total: f64 = w.iter().sum();
                if total == 0.0 {
                    return err(span, "the weights sum to 0");
                }
                Ok(lin(models
                    .into_iter()
                    .zip(w)
                    .map(|(m, x)| (m, self.uniform(x / total)))
                    .collect()))
            }
            "swap" => {
                arity(2, 3)?;
                let (a, b) = (self.model_arg(&args[0], si)?, self.model_arg(&args[1], si)?);
                let comp = match (args.get(2), option("component")) {
                    (Some(Expr::Name(n, _)), _) => n.clone(),
                    (None, Some((Arg::Expr(Expr::Name(n, _)), _))) => n,
                    _ => {
                        return err(
                            span,
                            "`swap(A, B, te)`: name what is taken from B: a component (unet, te, te1, te2, vae) or blocks (OUT06..OUT11)",
                        );
                    }
                };
                let taken = self.select(&comp, span)?;
                let take: Vec<bool> = (0..self.rows()).map(|r| taken.contains(&r)).collect();
                let wb: Profile = take.iter().map(|&t| if t { 1.0 } else { 0.0 }).collect();
                let wa: Profile = wb.iter().map(|x| 1.0 - x).collect();
                Ok(lin(vec![(a, wa), (b, wb)]))
            }
            _ => self.method(name, args, options, span, si),
        }
    }

    /// The non-linear methods: each becomes a node.
    fn method(
        &mut self,
        name: &str,
        args: &[Expr],
        options: &[(String, Arg, Span)],
        span: Span,
        si: usize,
    ) -> Result<Value, PlanError> {
        let option = |key: &str| find_option(options, key);
        let mut nodes = Vec::new();
        for a in args {
            let m = self.model_arg(a, si)?;
            nodes.push(self.node_of(m));
        }
        let scalar = |r: &mut Self, key: &str, default: f64| -> Result<f64, PlanError> {
            match option(key) {
                Some((a, s)) => r.scalar_arg(&a, s, si, key),
                None => Ok(default),
            }
        };
        let weights = |r: &Self, n: usize| -> Result<Vec<f64>, PlanError> {
            match option("weights") {
                Some((a, s)) => r.list_arg(&a, s, n),
                None => Ok(vec![1.0; n]),
            }
        };
        let node = match name {
            "ties" => {
                if nodes.len() < 2 {
                    return err(
                        span,
                        "`ties(base, model, ...)` needs a base and at least one model",
                    );
                }
                let k = scalar(self, "k", 1.0)?;
                if !(0.0..=1.0).contains(&k) || k == 0.0 {
                    return err(
                        span,
                        "`k` (the fraction of each delta kept) must be in (0, 1]",
                    );
                }
                let lambda = scalar(self, "lambda", 1.0)?;
                let w = weights(self, nodes.len() - 1)?;
                Node::Ties {
                    base: nodes[0],
                    models: nodes[1..].to_vec(),
                    weights: w,
                    k,
                    lambda,
                }
            }
            "dare" | "dare_ties" => {
                if nodes.len() < 2 {
                    return err(
                        span,
                        format!("`{name}(base, model, ...)` needs a base and at least one model"),
                    );
                }
                let p = scalar(self, "p", 0.9)?;
                if !(0.0..1.0).contains(&p) {
                    return err(span, "`p` (the drop probability) must be in [0, 1)");
                }
                let seed = scalar(self, "seed", 0.0)?;
                if seed < 0.0 || seed.fract() != 0.0 {
                    return err(span, "`seed` must be a non-negative integer");
                }
                let lambda = scalar(self, "lambda", 1.0)?;
                let w = weights(self, nodes.len() - 1)?;
                Node::Dare {
                    base: nodes[0],
                    models: nodes[1..].to_vec(),
                    weights: w,
                    p,
                    seed: seed as u64,
                    lambda,
                    ties: name == "dare_ties",
                }
            }
            "model_stock" => {
                if nodes.len() < 3 {
                    return err(
                        span,
                        "`model_stock(base, model1, model2, ...)` needs a base and at least two models",
                    );
                }
                Node::ModelStock {
                    base: nodes[0],
                    models: nodes[1..].to_vec(),
                }
            }
            "geomedian" | "geometric_median" => {
                if nodes.is_empty() {
                    return err(span, "`geomedian(model, ...)` needs models");
                }
                let eps = scalar(self, "eps", 1e-6)?;
                let maxiter = scalar(self, "maxiter", 100.0)?;
                if maxiter < 1.0 {
                    return err(span, "`maxiter` must be at least 1");
                }
                let w = weights(self, nodes.len())?;
                Node::GeoMedian {
                    models: nodes,
                    weights: w,
                    eps,
                    maxiter: maxiter as usize,
                }
            }
            "train_diff" | "train_difference" => {
                if nodes.len() != 3 {
                    return err(
                        span,
                        "`train_diff(A, B, C)` takes three models: A + (B - C) where B differs from A",
                    );
                }
                let alpha = match option("alpha") {
                    Some((a, s)) => self.weight_arg(&a, s, si)?,
                    None => self.uniform(1.0),
                };
                Node::TrainDiff {
                    a: nodes[0],
                    b: nodes[1],
                    c: nodes[2],
                    alpha,
                }
            }
            _ => unreachable!("names checked in `call`"),
        };
        self.nodes.push(node);
        let id = self.nodes.len() - 1;
        Ok(Value::Model(vec![(id, self.uniform(1.0))]))
    }

    /// Block weights to a per-row profile for this architecture.
    fn profile(&self, w: &Weights, span: Span) -> Result<Profile, PlanError> {
        let order = self.arch.merge_blocks();
        match w {
            Weights::Scalar(v) => Ok(self.uniform(*v)),
            Weights::List(values) => {
                if values.len() != order.len() {
                    let names: Vec<String> = order.iter().map(|b| b.to_string()).collect();
                    return err(
                        span,
                        format!(
                            "{} block weights given; {} takes {} in this order: {}",
                            values.len(),
                            self.arch.label(),
                            order.len(),
                            names.join(",")
                        ),
                    );
                }
                let by_block: HashMap<Block, f64> =
                    order.iter().copied().zip(values.iter().copied()).collect();
                Ok(self
                    .groups
                    .iter()
                    .map(|g| by_block[&g.block.unwrap_or(Block::Base)])
                    .collect())
            }
            Weights::Named(entries) => {
                let mut p = self.uniform(0.0);
                for (sel, v, s) in entries {
                    let rows = self.select(sel, *s)?;
                    for r in rows {
                        p[r] = *v;
                    }
                }
                Ok(p)
            }
        }
    }

    /// The rows a selector names (the catalog's one selector language).
    fn select(&self, sel: &str, span: Span) -> Result<Vec<usize>, PlanError> {
        let rows = Selector::parse(sel)
            .and_then(|s| s.rows(&Grouping::for_arch(self.arch)))
            .map_err(|e| PlanError { span, message: e.0 })?;
        Ok((0..rows.len()).filter(|&r| rows[r]).collect())
    }
}

/// A coefficient for people: up to 6 significant digits, no float noise.
pub fn show(v: f64) -> String {
    let s = format!("{:.6}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// Per-row values as runs: `IN00..IN11=0.8 M00=0.5 OUT00..OUT11=0.2 TE1..OTHER=1`.
pub fn show_profile(groups: &[GroupInfo], p: &Profile) -> String {
    let first = p[0];
    if p.iter().all(|&x| show(x) == show(first)) {
        return show(first);
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let mut j = i;
        while j + 1 < p.len() && show(p[j + 1]) == show(p[i]) {
            j += 1;
        }
        let label = if i == j {
            groups[i].label.clone()
        } else {
            format!("{}..{}", groups[i].label, groups[j].label)
        };
        parts.push(format!("{label}={}", show(p[i])));
        i = j + 1;
    }
    parts.join(" ")
}

impl fmt::Display for MergePlan {
    /// The per-row coefficients of a linear recipe, one input per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.linear_output() {
            Some(terms) => {
                for (i, p) in terms {
                    writeln!(
                        f,
                        "{}: {}",
                        self.inputs[i].name,
                        show_profile(self.grouping.groups(), &p)
                    )?;
                }
                Ok(())
            }
            None => writeln!(f, "{} nodes, non-linear", self.nodes.len()),
        }
    }
}

/// The value and place of option `key` in a call's options.
fn find_option(options: &[(String, Arg, Span)], key: &str) -> Option<(Arg, Span)> {
    options
        .iter()
        .find(|(k, _, _)| k == key)
        .map(|(_, a, s)| (a.clone(), *s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Component;
    use crate::merge::recipe::parse;

    fn plan(text: &str, arch: Arch) -> Result<MergePlan, PlanError> {
        resolve(&parse(text).expect("parses"), arch)
    }

    fn coef(p: &MergePlan, input: &str) -> Profile {
        let i = p.inputs.iter().position(|x| x.name == input).unwrap();
        p.linear_output()
            .unwrap()
            .into_iter()
            .find(|(n, _)| *n == i)
            .map(|(_, c)| c)
            .unwrap_or_else(|| vec![0.0; p.grouping.groups().len()])
    }

    const MODELS: &str =
        "A = a.safetensors\nB = b.safetensors\nC = c.safetensors\nD = d.safetensors\n";

    #[test]
    fn multi_step_linear_recipes_collapse() {
        let p = plan(&format!("{MODELS}S1 = A x 0.5 + B x 0.5\nS2 = S1 + (C - D) x 0.2\nOUT = S2 x 0.9 + A x 0.1\n"), Arch::Sd1).unwrap();
        assert!(p.is_linear());
        let close = |x: &Profile, v: f64| x.iter().all(|c| (c - v).abs() < 1e-15);
        assert!(close(&coef(&p, "A"), 0.5 * 0.9 + 0.1));
        assert!(close(&coef(&p, "B"), 0.45));
        assert!(close(&coef(&p, "C"), 0.18));
        assert!(close(&coef(&p, "D"), -0.18));
    }

    #[test]
    fn block_weights_land_on_their_rows() {
        let list: Vec<String> = (0..26).map(|i| format!("{}", i as f64 / 100.0)).collect();
        let p = plan(
            &format!(
                "{MODELS}OUT = A x (1-alpha) + B x alpha\n    alpha = ({})\n",
                list.join(",")
            ),
            Arch::Sd1,
        )
        .unwrap();
        let b = coef(&p, "B");
        for (g, v) in p.grouping.groups().iter().zip(&b) {
            let want = match g.block {
                None => 0.0,
                Some(Block::In(n)) => (1 + n as usize) as f64 / 100.0,
                Some(Block::Mid) => 0.13,
                Some(Block::Out(n)) => (14 + n as usize) as f64 / 100.0,
                Some(Block::Base) => unreachable!(),
            };
            assert_eq!(*v, want, "{}", g.label);
        }
        let e = plan(
            &format!("{MODELS}OUT = A x (1-alpha) + B x alpha\n    alpha = (0.1, 0.2)\n"),
            Arch::Sd1,
        )
        .unwrap_err();
        assert!(e.message.contains("takes 26"), "{e}");
        let e = plan(
            &format!(
                "{MODELS}OUT = A x (1-alpha) + B x alpha\n    alpha = ({})\n",
                list.join(",")
            ),
            Arch::Sdxl,
        )
        .unwrap_err();
        assert!(e.message.contains("takes 20"), "{e}");
    }

    #[test]
    fn named_weights_and_swaps() {
        let p = plan(
            &format!(
                "{MODELS}alpha = {{OUT06..OUT08: 0.15, TE1: 1}}\nOUT = A x (1-alpha) + B x alpha\n"
            ),
            Arch::Sdxl,
        )
        .unwrap();
        let b = coef(&p, "B");
        for (g, v) in p.grouping.groups().iter().zip(&b) {
            let want = match (g.block, g.component) {
                (Some(Block::Out(6..=8)), _) => 0.15,
                (None, Component::Te1) => 1.0,
                _ => 0.0,
            };
            assert_eq!(*v, want, "{}", g.label);
        }
        let s = plan(&format!("{MODELS}OUT = swap(A, B, vae)\n"), Arch::Sd1).unwrap();
        let (a, b) = (coef(&s, "A"), coef(&s, "B"));
        for (g, (x, y)) in s.grouping.groups().iter().zip(a.iter().zip(&b)) {
            assert_eq!(
                (*x, *y),
                if g.component == Component::Vae {
                    (0.0, 1.0)
                } else {
                    (1.0, 0.0)
                }
            );
        }
    }

    #[test]
    fn names_with_dashes_and_alpha_beta() {
        let p = plan("v1-5 = base.safetensors\nF222 = f.safetensors\nM = m.safetensors\nOUT = M + (F222 - v1-5) x 1\n", Arch::Sd1).unwrap();
        assert!(coef(&p, "v1-5").iter().all(|&c| c == -1.0));
        let p = plan(
            &format!(
                "{MODELS}alpha = 0.2\nbeta = 0.3\nOUT = A x (1-alpha-beta) + B x alpha + C x beta\n"
            ),
            Arch::Sd1,
        )
        .unwrap();
        assert!(coef(&p, "A").iter().all(|&c| (c - 0.5).abs() < 1e-15));
        let e = plan(&format!("{MODELS}OUT = A-Q x 0.5\n"), Arch::Sd1).unwrap_err();
        assert!(e.message.contains("spaces around '-'"), "{e}");
    }

    #[test]
    fn coefficient_display() {
        let p = plan(&format!("{MODELS}OUT = A x (1-alpha) + B x alpha\n    alpha = {{OUT: 0.8, IN: 0.2, M00: 0.5}}\n"), Arch::Sd1).unwrap();
        assert_eq!(
            p.to_string(),
            "A: IN00..IN11=0.8 M00=0.5 OUT00..OUT11=0.2 TE1..OTHER=1\nB: IN00..IN11=0.2 M00=0.5 OUT00..OUT11=0.8 TE1..OTHER=0\n"
        );
    }

    #[test]
    fn type_errors() {
        let e = plan(&format!("{MODELS}OUT = A x B\n"), Arch::Sd1).unwrap_err();
        assert!(e.message.contains("multiply two models"));
        let e = plan(&format!("{MODELS}OUT = A + 0.5\n"), Arch::Sd1).unwrap_err();
        assert!(e.message.contains("add a number to a model"));
        let e = plan(&format!("{MODELS}OUT = blend(A, B)\n"), Arch::Sd1).unwrap_err();
        assert!(e.message.contains("unknown method"));
        let e = plan(
            &format!("{MODELS}OUT = ties(A, B, density=0.2)\n"),
            Arch::Sd1,
        )
        .unwrap_err();
        assert!(e.message.contains("no option 'density'"));
    }

    #[test]
    fn methods_become_nodes() {
        let p = plan(
            &format!("{MODELS}T = ties(A, B, C, k=0.2)\nOUT = T x 0.5 + D x 0.5\n"),
            Arch::Sd1,
        )
        .unwrap();
        assert!(!p.is_linear());
        assert!(matches!(p.nodes[p.output], Node::Linear(_)));
    }
}
