//! From a parsed recipe to what the engine evaluates: a small graph over the input files.
//!
//! Every linear step (weighted sums, add differences, block weights, component swaps, and
//! their compositions) stays a *linear combination* with one coefficient per report row
//! (U-Net block, text encoder, VAE, other). So a whole multi-step linear recipe collapses
//! into one combination of the input files, evaluated in one pass, reading for each tensor
//! only the files whose coefficient for its block is not zero. Non-linear methods (TIES,
//! DARE, Model Stock, geometric median, train difference) become nodes of their own.
//!
//! * [`linear`]: the algebra of those combinations;
//! * [`resolve`]: names to values, calls to the method registry, weights to per-row
//!   profiles;
//! * [`display`]: coefficients as people read them.
//!
//! Block weights are given in SuperMerger's order (`BASE, IN00.., M00, OUT..`); `BASE` covers
//! every row outside the U-Net (text encoders, VAE, extras). The named form takes the
//! catalog's selectors (`{OUT06..OUT11: 0.15, TE: 1}`).

pub(crate) mod display;
pub(crate) mod resolve;

use std::sync::Arc;

pub use super::linear::{Combination, Profile};
pub use display::{show, show_profile};
pub use resolve::{resolve, resolve_with};

use super::methods::NodeMethod;
use super::recipe::{Arg, Expr, Recipe, Span};
use ckpt_core::catalog::{Arch, Grouping};

/// A resolution error, at a place in the recipe.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{span}: {message}")]
pub struct PlanError {
    pub span: Span,
    pub message: String,
}

pub(crate) fn err<T>(span: Span, message: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError {
        span,
        message: message.into(),
    })
}

/// A node of the merge graph.
#[derive(Clone, Debug)]
pub enum Node {
    /// An input file (index into [`MergePlan::inputs`]).
    Input(usize),
    /// Σ profileᵢ(row) · nodeᵢ.
    Linear(Combination),
    /// A method of the registry (TIES, DARE, ...) over `children`, its model arguments in
    /// order.
    Method {
        name: &'static str,
        children: Vec<usize>,
        per_tensor: bool,
        method: Arc<dyn NodeMethod>,
    },
}

impl Node {
    /// The nodes this one reads.
    pub fn children(&self) -> Vec<usize> {
        match self {
            Node::Input(_) => Vec::new(),
            Node::Linear(c) => c.terms.iter().map(|(n, _)| *n).collect(),
            Node::Method { children, .. } => children.clone(),
        }
    }

    /// Needs a whole tensor at once (magnitude ranks, cosines, iterations), as opposed to
    /// working element by element.
    pub fn per_tensor(&self) -> bool {
        matches!(
            self,
            Node::Method {
                per_tensor: true,
                ..
            }
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
        let input = |n: usize| match self.nodes[n] {
            Node::Input(i) => i,
            _ => unreachable!("linear nodes are flattened to inputs"),
        };
        Some(match &self.nodes[self.output] {
            Node::Linear(c) => c
                .terms
                .iter()
                .map(|(n, p)| (input(*n), p.clone()))
                .collect(),
            _ => vec![(input(self.output), vec![1.0; self.grouping.groups().len()])],
        })
    }

    /// Adds to `out` the inputs `node` reads for `row`, recursively (a linear node skips
    /// the terms whose coefficient for the row is 0).
    pub fn needed_inputs(&self, node: usize, row: usize, out: &mut Vec<usize>) {
        match &self.nodes[node] {
            Node::Input(i) => {
                if !out.contains(i) {
                    out.push(*i);
                }
            }
            other => {
                for c in self.needed_children(other, row) {
                    self.needed_inputs(c, row, out);
                }
            }
        }
    }

    /// Whether the graph under `node` has a per-tensor method for `row`.
    pub fn has_per_tensor(&self, node: usize, row: usize) -> bool {
        let n = &self.nodes[node];
        n.per_tensor()
            || self
                .needed_children(n, row)
                .into_iter()
                .any(|c| self.has_per_tensor(c, row))
    }

    /// The children a node reads for `row`: a linear node's terms with a non-zero
    /// coefficient there, any other node's children.
    pub fn needed_children(&self, node: &Node, row: usize) -> Vec<usize> {
        match node {
            Node::Linear(c) => c
                .terms
                .iter()
                .filter(|(_, p)| p[row] != 0.0)
                .map(|(n, _)| *n)
                .collect(),
            other => other.children(),
        }
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
            Expr::Components(parts, _) => parts.iter().for_each(|(_, e, _)| walk(e, out)),
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
