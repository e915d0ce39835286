//! Resolution: each step's expression becomes a value, a model (a [`Combination`] of graph
//! nodes) or a weight (a per-row [`Profile`]); names resolve to step parameters, top-level
//! parameters, earlier steps and bound files, in that order; calls are checked against the
//! method registry and built by it.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Combination, Input, MergePlan, Node, PlanError, Profile, err};
use crate::lora::LoraFile;
use crate::merge::methods::{self, Args, Build, Method, Opt, OptKind, Value as OptValue};
use crate::merge::recipe::{Arg, Expr, Recipe, Span, Weights};
use ckpt_core::catalog::{Arch, Block, Grouping, Selector};

/// A value while resolving.
#[derive(Clone, Debug)]
enum Value {
    Model(Combination),
    Weight(Profile),
}

struct Resolver<'r> {
    recipe: &'r Recipe,
    arch: Arch,
    grouping: Grouping,
    nodes: Vec<Node>,
    /// Binding name -> node.
    input_nodes: HashMap<String, usize>,
    steps: HashMap<String, Combination>,
    /// Bindings that are LoRA files, for `lora(...)`.
    loras: &'r HashMap<String, Arc<LoraFile>>,
    /// Block-weight lists may take LoRA Block Weight's shorter forms (inside `lora`).
    lbw_forms: bool,
}

/// Resolves `recipe` for `arch`: the graph the engine evaluates, or the first error with
/// its place.
pub fn resolve(recipe: &Recipe, arch: Arch) -> Result<MergePlan, PlanError> {
    resolve_with(recipe, arch, &HashMap::new())
}

/// As [`resolve`], with the bindings that are LoRA files (baked by `lora(...)`, never read as
/// models).
pub fn resolve_with(
    recipe: &Recipe,
    arch: Arch,
    loras: &HashMap<String, Arc<LoraFile>>,
) -> Result<MergePlan, PlanError> {
    let mut r = Resolver {
        recipe,
        arch,
        grouping: Grouping::for_arch(arch),
        nodes: Vec::new(),
        input_nodes: HashMap::new(),
        steps: HashMap::new(),
        loras,
        lbw_forms: false,
    };
    let mut inputs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for b in &recipe.bindings {
        if !seen.insert(&b.name) {
            return err(b.span, format!("'{}' is bound twice", b.name));
        }
        if loras.contains_key(&b.name) {
            continue;
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
        let Value::Model(model) = r.eval(&step.expr, si)? else {
            return err(
                step.span,
                format!("step '{}' is a number, not a model", step.name),
            );
        };
        r.steps.insert(step.name.clone(), model);
    }
    let last = recipe.steps.last().expect("checked above");
    let out = r.steps[&last.name].clone();
    let output = match out.single() {
        Some(node) => node,
        None => {
            r.nodes.push(Node::Linear(out));
            r.nodes.len() - 1
        }
    };
    Ok(MergePlan {
        arch,
        grouping: r.grouping,
        inputs,
        nodes: r.nodes,
        output,
    })
}

impl Resolver<'_> {
    fn rows(&self) -> usize {
        self.grouping.groups().len()
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
        if let Some(model) = self.steps.get(n) {
            return Ok(Value::Model(model.clone()));
        }
        if let Some(&node) = self.input_nodes.get(n) {
            return Ok(Value::Model(Combination::of(node, self.rows())));
        }
        if self.loras.contains_key(n) {
            return err(
                span,
                format!(
                    "'{n}' is a LoRA file, not a model: bake it with `lora({n})`, such as `model + lora({n}) x 0.8`"
                ),
            );
        }
        if let Some(list) = self.recipe.lists.iter().find(|l| l.name == n) {
            return err(
                span,
                format!(
                    "'{n}' is a list of {} models: use it as a call's argument, such as `avg({n})`",
                    list.members.len()
                ),
            );
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
                x.add_scaled(&y, &self.uniform(sign));
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
            Value::Model(m) => Value::Model(m.scaled(w)),
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
            Expr::Components(parts, _) => self.components(parts, si),
        }
    }

    /// `{SELECTOR: model, ...}`: each part's model on the rows its selector names. A row two
    /// parts name is an error; a row no part names has no input (the merge takes it from
    /// the first input that has it, and lists it).
    fn components(
        &mut self,
        parts: &[(String, Expr, Span)],
        si: usize,
    ) -> Result<Value, PlanError> {
        let mut owner: Vec<Option<&str>> = vec![None; self.rows()];
        let mut out = Combination::default();
        for (selector, e, span) in parts {
            let rows = self.select(selector, *span)?;
            for &r in &rows {
                if let Some(first) = owner[r] {
                    return err(
                        *span,
                        format!(
                            "{} is given by both `{first}` and `{selector}`; name each row once",
                            self.grouping.groups()[r].label
                        ),
                    );
                }
                owner[r] = Some(selector);
            }
            let model = self.model_arg(e, si)?;
            let mask: Profile = (0..self.rows())
                .map(|r| if rows.contains(&r) { 1.0 } else { 0.0 })
                .collect();
            out.add_scaled(&model, &mask);
        }
        Ok(Value::Model(out))
    }

    fn model_arg(&mut self, e: &Expr, si: usize) -> Result<Combination, PlanError> {
        match self.eval(e, si)? {
            Value::Model(m) => Ok(m),
            Value::Weight(_) => err(e.span(), "expected a model here, found a number"),
        }
    }

    /// A node for a model value: the node itself when it is one node with weight 1, else a
    /// linear node with linear children flattened in, so linear chains stay one
    /// combination of inputs.
    fn node_of(&mut self, model: Combination) -> usize {
        if let Some(node) = model.single() {
            return node;
        }
        let mut flat = Combination::default();
        for (n, p) in model.terms {
            match &self.nodes[n] {
                Node::Linear(inner) => flat.add_scaled(inner, &p),
                _ => flat.add_term(n, p),
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

    /// A call of a registry method: arity, option names, each option's value by its kind
    /// and range, defaults; then the method's builder.
    fn call(
        &mut self,
        name: &str,
        args: &[Expr],
        options: &[(String, Arg, Span)],
        span: Span,
        si: usize,
    ) -> Result<Value, PlanError> {
        let Some(method) = methods::find(name) else {
            return err(
                span,
                format!(
                    "unknown method '{name}'; methods: {}",
                    methods::names().join(", ")
                ),
            );
        };
        for (k, _, s) in options {
            if !method.options.iter().any(|o| o.name == k) {
                let known: Vec<&str> = method.options.iter().map(|o| o.name).collect();
                return err(
                    *s,
                    format!(
                        "`{name}` has no option '{k}'; it takes: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
        if let Build::Lora(build) = method.build {
            return self.lora_call(method, build, args, options, span, si);
        }
        let positional: Vec<&Opt> = method.options.iter().filter(|o| o.positional).collect();
        let (lo, most_models) = method.models;
        let hi = most_models.map(|m| m + positional.len());
        if args.len() < lo || hi.is_some_and(|hi| args.len() > hi) {
            let want = match hi {
                Some(hi) if hi == lo => format!("{lo}"),
                Some(hi) => format!("{lo} to {hi}"),
                None => format!("at least {lo}"),
            };
            return err(
                span,
                format!(
                    "`{name}` takes {want} arguments, found {}: {}",
                    args.len(),
                    method.usage
                ),
            );
        }
        let n_models = most_models.map_or(args.len(), |m| args.len().min(m));
        let (model_args, rest) = args.split_at(n_models);
        match method.build {
            Build::Linear(build) => {
                let models = model_args
                    .iter()
                    .map(|a| self.model_arg(a, si))
                    .collect::<Result<Vec<_>, _>>()?;
                let values = self.option_values(method, rest, options, n_models, span, si)?;
                let args = Args {
                    models: n_models,
                    rows: self.rows(),
                    values: &values,
                };
                build(&models, &args)
                    .map(Value::Model)
                    .or_else(|m| err(span, m.to_string()))
            }
            Build::Node { per_tensor, build } => {
                let mut children = Vec::with_capacity(n_models);
                for a in model_args {
                    let m = self.model_arg(a, si)?;
                    children.push(self.node_of(m));
                }
                let values = self.option_values(method, rest, options, n_models, span, si)?;
                let args = Args {
                    models: n_models,
                    rows: self.rows(),
                    values: &values,
                };
                let node = build(&args).or_else(|m| err(span, m.to_string()))?;
                self.nodes.push(Node::Method {
                    name: method.name,
                    children,
                    per_tensor,
                    method: node,
                });
                Ok(Value::Model(Combination::of(
                    self.nodes.len() - 1,
                    self.rows(),
                )))
            }
            Build::Lora(_) => unreachable!("handled above"),
        }
    }

    /// `lora(FILE, strength)`: FILE names a LoRA binding; the rest are the options.
    fn lora_call(
        &mut self,
        method: &'static Method,
        build: fn(Arc<LoraFile>, &Args<'_>) -> Result<methods::BuiltNode, methods::MethodError>,
        args: &[Expr],
        options: &[(String, Arg, Span)],
        span: Span,
        si: usize,
    ) -> Result<Value, PlanError> {
        let Some((first, rest)) = args.split_first() else {
            return err(span, format!("`lora` needs a LoRA file: {}", method.usage));
        };
        if rest.len() > 1 {
            return err(
                span,
                format!(
                    "`lora` takes 1 or 2 arguments, found {}: {}",
                    args.len(),
                    method.usage
                ),
            );
        }
        let file = match first {
            Expr::Name(n, s) => match self.loras.get(n) {
                Some(f) => f.clone(),
                None if self.input_nodes.contains_key(n) => {
                    return err(
                        *s,
                        format!("'{n}' is a checkpoint, not a LoRA file: `lora` bakes LoRA files"),
                    );
                }
                None => {
                    return err(
                        *s,
                        format!(
                            "'{n}' is not a bound file: bind it first (`{n} = my-lora.safetensors`)"
                        ),
                    );
                }
            },
            other => {
                return err(
                    other.span(),
                    format!(
                        "`lora`'s first argument names a LoRA file: {}",
                        method.usage
                    ),
                );
            }
        };
        self.lbw_forms = true;
        let values = self.option_values(method, rest, options, 0, span, si);
        self.lbw_forms = false;
        let values = values?;
        let args = Args {
            models: 0,
            rows: self.rows(),
            values: &values,
        };
        let node = build(file, &args).or_else(|m| err(span, m.to_string()))?;
        self.nodes.push(Node::Method {
            name: method.name,
            children: Vec::new(),
            per_tensor: false,
            method: node,
        });
        Ok(Value::Model(Combination::of(
            self.nodes.len() - 1,
            self.rows(),
        )))
    }

    /// Every option's value: given after the models (positional options, in order), as
    /// `key=value`, or its default.
    fn option_values(
        &mut self,
        method: &Method,
        positional_args: &[Expr],
        options: &[(String, Arg, Span)],
        n_models: usize,
        span: Span,
        si: usize,
    ) -> Result<Vec<(&'static str, OptValue)>, PlanError> {
        let mut positional = positional_args.iter();
        let mut values = Vec::with_capacity(method.options.len());
        for opt in method.options {
            let given = match opt.positional.then(|| positional.next()).flatten() {
                Some(e) => Some((Arg::Expr(e.clone()), e.span())),
                None => options
                    .iter()
                    .find(|(k, _, _)| k == opt.name)
                    .map(|(_, a, s)| (a.clone(), *s)),
            };
            let value = match given {
                Some((arg, at)) => self.option_value(opt, &arg, at, n_models, si)?,
                None => match opt.default_value(n_models, self.rows()) {
                    Some(v) => v,
                    None => {
                        return err(
                            span,
                            format!("`{}` needs `{}`: {}", method.name, opt.name, method.usage),
                        );
                    }
                },
            };
            values.push((opt.name, value));
        }
        Ok(values)
    }

    fn option_value(
        &mut self,
        opt: &Opt,
        arg: &Arg,
        at: Span,
        n_models: usize,
        si: usize,
    ) -> Result<OptValue, PlanError> {
        Ok(match opt.kind {
            OptKind::Weight => OptValue::Weight(self.weight_arg(arg, at, si)?),
            OptKind::Scalar => {
                let p = self.weight_arg(arg, at, si)?;
                if p.windows(2).any(|w| w[0] != w[1]) {
                    return err(
                        at,
                        format!("`{}` takes one number, not block weights", opt.name),
                    );
                }
                if !opt.range.admits(p[0]) {
                    return err(at, opt.range.explain(opt.name));
                }
                OptValue::Scalar(p[0])
            }
            OptKind::PerModel { skip_first } => {
                let n = n_models - usize::from(skip_first);
                OptValue::PerModel(list_arg(arg, at, n)?)
            }
            OptKind::Choice(words) => {
                let word = match arg {
                    Arg::Expr(Expr::Name(n, _)) => words.iter().find(|w| *w == n),
                    Arg::Expr(Expr::Number(v, _)) | Arg::Weights(Weights::Scalar(v))
                        if words == methods::BOOL && (*v == 0.0 || *v == 1.0) =>
                    {
                        words.get(*v as usize)
                    }
                    _ => None,
                };
                match word {
                    Some(w) => OptValue::Word(w),
                    None => {
                        return err(
                            at,
                            format!("`{}` is one of: {}", opt.name, words.join(", ")),
                        );
                    }
                }
            }
            OptKind::Rows => {
                let text = match arg {
                    Arg::Expr(Expr::Name(n, _)) => n.clone(),
                    _ => {
                        return err(
                            at,
                            format!(
                                "`{}` names rows: a component (unet, te, te1, te2, vae) or blocks (OUT06..OUT11)",
                                opt.name
                            ),
                        );
                    }
                };
                let rows = self.select(&text, at)?;
                OptValue::Rows((0..self.rows()).map(|r| rows.contains(&r)).collect())
            }
        })
    }

    /// Block weights to a per-row profile for this architecture.
    fn profile(&self, w: &Weights, span: Span) -> Result<Profile, PlanError> {
        let order = self.arch.merge_blocks();
        match w {
            Weights::Scalar(v) => Ok(self.uniform(*v)),
            Weights::List(values) => {
                if let Some(lbw) = self.lbw_order(values.len()) {
                    let by_block: HashMap<Block, f64> =
                        lbw.iter().copied().zip(values.iter().copied()).collect();
                    return Ok(self
                        .grouping
                        .groups()
                        .iter()
                        .map(|g| {
                            g.weight_block
                                .and_then(|b| by_block.get(&b).copied())
                                .unwrap_or(0.0)
                        })
                        .collect());
                }
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
                // A row the list has no entry for (Flux's VAE) is not merged by it: 0.
                Ok(self
                    .grouping
                    .groups()
                    .iter()
                    .map(|g| g.weight_block.map_or(0.0, |b| by_block[&b]))
                    .collect())
            }
            Weights::Named(entries) => {
                let mut p = self.uniform(0.0);
                for (sel, v, s) in entries {
                    for r in self.select(sel, *s)? {
                        p[r] = *v;
                    }
                }
                Ok(p)
            }
        }
    }

    /// LoRA Block Weight's short orders (its `BLOCKID17` for SD1/SD2, `BLOCKID12` for SDXL:
    /// the blocks with attention layers), where they apply and have `n` values.
    fn lbw_order(&self, n: usize) -> Option<Vec<Block>> {
        if !self.lbw_forms {
            return None;
        }
        self.arch
            .lbw_orders()
            .iter()
            .find(|order| order.len() == n)
            .cloned()
    }

    /// The rows a selector names (the catalog's one selector language).
    fn select(&self, sel: &str, span: Span) -> Result<Vec<usize>, PlanError> {
        let rows = Selector::parse(sel)
            .and_then(|s| s.rows(&self.grouping))
            .map_err(|e| PlanError { span, message: e.0 })?;
        Ok((0..rows.len()).filter(|&r| rows[r]).collect())
    }
}

/// A list of per-model numbers: `weights=(1, 0.5)`.
fn list_arg(arg: &Arg, span: Span, n: usize) -> Result<Vec<f64>, PlanError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn arch(id: &str) -> Arch {
        Arch::parse(id).unwrap()
    }
    use crate::merge::plan::Node;
    use crate::merge::recipe::parse;
    use ckpt_core::catalog::Component;

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
        let p = plan(&format!("{MODELS}S1 = A x 0.5 + B x 0.5\nS2 = S1 + (C - D) x 0.2\nOUT = S2 x 0.9 + A x 0.1\n"), arch("sd1")).unwrap();
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
            arch("sd1"),
        )
        .unwrap();
        let b = coef(&p, "B");
        for (g, v) in p.grouping.groups().iter().zip(&b) {
            let label = g.block.map(|b| b.label());
            let n = g.block.and_then(|b| b.number()).unwrap_or(0) as usize;
            let want = match label {
                None => 0.0,
                Some(l) if l.starts_with("IN") => (1 + n) as f64 / 100.0,
                Some("M00") => 0.13,
                Some(l) if l.starts_with("OUT") => (14 + n) as f64 / 100.0,
                Some(other) => unreachable!("{other} in an SD1 U-Net"),
            };
            assert_eq!(*v, want, "{}", g.label);
        }
        let e = plan(
            &format!("{MODELS}OUT = A x (1-alpha) + B x alpha\n    alpha = (0.1, 0.2)\n"),
            arch("sd1"),
        )
        .unwrap_err();
        assert!(e.message.contains("takes 26"), "{e}");
        let e = plan(
            &format!(
                "{MODELS}OUT = A x (1-alpha) + B x alpha\n    alpha = ({})\n",
                list.join(",")
            ),
            arch("sdxl"),
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
            arch("sdxl"),
        )
        .unwrap();
        let b = coef(&p, "B");
        for (g, v) in p.grouping.groups().iter().zip(&b) {
            let out_6_to_8 = g.block.is_some_and(|b| {
                b.label().starts_with("OUT") && (6..=8).contains(&b.number().unwrap_or(0))
            });
            let want = if out_6_to_8 {
                0.15
            } else if g.block.is_none() && g.component.id() == "te1" {
                1.0
            } else {
                0.0
            };
            assert_eq!(*v, want, "{}", g.label);
        }
        let s = plan(&format!("{MODELS}OUT = swap(A, B, vae)\n"), arch("sd1")).unwrap();
        let (a, b) = (coef(&s, "A"), coef(&s, "B"));
        for (g, (x, y)) in s.grouping.groups().iter().zip(a.iter().zip(&b)) {
            assert_eq!(
                (*x, *y),
                if g.component == Component::named("vae").unwrap() {
                    (0.0, 1.0)
                } else {
                    (1.0, 0.0)
                }
            );
        }
    }

    #[test]
    fn names_with_dashes_and_alpha_beta() {
        let p = plan("v1-5 = base.safetensors\nF222 = f.safetensors\nM = m.safetensors\nOUT = M + (F222 - v1-5) x 1\n", arch("sd1")).unwrap();
        assert!(coef(&p, "v1-5").iter().all(|&c| c == -1.0));
        let p = plan(
            &format!(
                "{MODELS}alpha = 0.2\nbeta = 0.3\nOUT = A x (1-alpha-beta) + B x alpha + C x beta\n"
            ),
            arch("sd1"),
        )
        .unwrap();
        assert!(coef(&p, "A").iter().all(|&c| (c - 0.5).abs() < 1e-15));
        let e = plan(&format!("{MODELS}OUT = A-Q x 0.5\n"), arch("sd1")).unwrap_err();
        assert!(e.message.contains("spaces around '-'"), "{e}");
    }

    #[test]
    fn coefficient_display() {
        let p = plan(&format!("{MODELS}OUT = A x (1-alpha) + B x alpha\n    alpha = {{OUT: 0.8, IN: 0.2, M00: 0.5}}\n"), arch("sd1")).unwrap();
        assert_eq!(
            p.to_string(),
            "A: IN00..IN11=0.8 M00=0.5 OUT00..OUT11=0.2 TE1..OTHER=1\nB: IN00..IN11=0.2 M00=0.5 OUT00..OUT11=0.8 TE1..OTHER=0\n"
        );
    }

    #[test]
    fn type_errors() {
        let e = plan(&format!("{MODELS}OUT = A x B\n"), arch("sd1")).unwrap_err();
        assert!(e.message.contains("multiply two models"));
        let e = plan(&format!("{MODELS}OUT = A + 0.5\n"), arch("sd1")).unwrap_err();
        assert!(e.message.contains("add a number to a model"));
        let e = plan(&format!("{MODELS}OUT = blend(A, B)\n"), arch("sd1")).unwrap_err();
        assert!(e.message.contains("unknown method"));
        let e = plan(
            &format!("{MODELS}OUT = ties(A, B, density=0.2)\n"),
            arch("sd1"),
        )
        .unwrap_err();
        assert!(e.message.contains("no option 'density'"));
        let e = plan(&format!("{MODELS}OUT = ties(A)\n"), arch("sd1")).unwrap_err();
        assert!(
            e.message
                .contains("takes at least 2 arguments, found 1: ties(base"),
            "{e}"
        );
        let e = plan(&format!("{MODELS}OUT = ws(A, B)\n"), arch("sd1")).unwrap_err();
        assert!(e.message.contains("`ws` needs `alpha`"), "{e}");
        let e = plan(&format!("{MODELS}OUT = ws(A, B, 0.1, 0.2)\n"), arch("sd1")).unwrap_err();
        assert!(e.message.contains("takes 2 to 3 arguments, found 4"), "{e}");
        let e = plan(&format!("{MODELS}OUT = ties(A, B, C, k=0)\n"), arch("sd1")).unwrap_err();
        assert!(e.message.contains("must be in (0, 1]"), "{e}");
        let e = plan(
            &format!("{MODELS}OUT = dare(A, B, seed=1.5)\n"),
            arch("sd1"),
        )
        .unwrap_err();
        assert!(e.message.contains("non-negative integer"), "{e}");
        let e = plan(
            &format!("{MODELS}OUT = avg(A, B, weights=(1, -1))\n"),
            arch("sd1"),
        )
        .unwrap_err();
        assert!(e.message.contains("sum to 0"), "{e}");
        let e = plan(
            &format!("{MODELS}OUT = ties(A, B, C, weights=(1, 2, 3))\n"),
            arch("sd1"),
        )
        .unwrap_err();
        assert!(e.message.contains("expected 2 weights"), "{e}");
        let e = plan(
            &format!("{MODELS}OUT = model_stock(A, B, C, k=1)\n"),
            arch("sd1"),
        )
        .unwrap_err();
        assert!(e.message.contains("it takes: none"), "{e}");
    }

    #[test]
    fn positional_and_named_options_agree() {
        let a = plan(&format!("{MODELS}OUT = ws(A, B, 0.3)\n"), arch("sd1")).unwrap();
        let b = plan(&format!("{MODELS}OUT = ws(A, B, alpha=0.3)\n"), arch("sd1")).unwrap();
        let c = plan(
            &format!("{MODELS}OUT = A x (1-alpha) + B x alpha\n    alpha = 0.3\n"),
            arch("sd1"),
        )
        .unwrap();
        for p in [&a, &b] {
            assert_eq!(coef(p, "A"), coef(&c, "A"));
            assert_eq!(coef(p, "B"), coef(&c, "B"));
        }
        // A swap takes any selection, not only whole components.
        let s = plan(
            &format!("{MODELS}OUT = swap(A, B, OUT06..OUT11)\n"),
            arch("sd1"),
        )
        .unwrap();
        for (g, v) in s.grouping.groups().iter().zip(coef(&s, "B")) {
            let want = g.block.is_some_and(|b| {
                b.label().starts_with("OUT") && (6..=11).contains(&b.number().unwrap_or(0))
            }) as u8 as f64;
            assert_eq!(v, want, "{}", g.label);
        }
    }

    #[test]
    fn methods_become_nodes() {
        let p = plan(
            &format!("{MODELS}T = ties(A, B, C, k=0.2)\nOUT = T x 0.5 + D x 0.5\n"),
            arch("sd1"),
        )
        .unwrap();
        assert!(!p.is_linear());
        assert!(matches!(p.nodes[p.output], Node::Linear(_)));
    }
}
