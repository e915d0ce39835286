//! The recipe language: the notation model mergers already write, parsed to a syntax tree
//! whose nodes remember where they came from, so errors point at a line and column.
//!
//! ```text
//! # models: NAME = path (quoted, or containing '/', or ending in .safetensors, .gguf, ...)
//! v1-5    = models/v1-5-pruned-emaonly.safetensors
//! OpenBra = models/openBra.safetensors
//! Evt     = models/evt.safetensors
//! dream   = models/dreamshaper_6.safetensors
//!
//! # steps: NAME = expression; the last step is the output
//! TEMP1 = OpenBra + (Evt - v1-5) x 0.08
//! TEMP2 = TEMP1 x (1-alpha) + dream x alpha
//!     alpha = (0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0.15,0.15,0.15,0.15,0.15,0.15)
//! FINAL = ties(v1-5, TEMP2, Evt, k=0.2)
//! ```
//!
//! * Operators: `+`, `-` (with spaces around it: `v1-5` is a name), `x` or `*`, parentheses,
//!   unary minus, numbers (`0.5`, `.5`, `1e-3`).
//! * A parameter is a number, a list of block weights in SuperMerger's order (`(a, b, ...)`,
//!   `[a, b, ...]` or `a, b, ...`), or a named form `{OUT06..OUT11: 0.15, BASE: 1}`.
//!   Indented lines after a step are that step's parameters; `NAME = <parameter>` at the top
//!   level is a parameter every later step can use.
//! * Function calls (`ties(...)`, `dare(...)`, ...) take models and `key=value` options.
//! * `#` starts a comment.

pub(crate) mod lexer;
pub(crate) mod parser;
pub mod writer;

use std::fmt;

use parser::Parser;

/// A place in the recipe text (1-based line and column).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.col)
    }
}

/// A parse error at a place.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{span}: {message}")]
pub struct ParseError {
    pub span: Span,
    pub message: String,
}

pub(crate) fn err<T>(span: Span, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        span,
        message: message.into(),
    })
}

/// A parameter value.
#[derive(Clone, Debug, PartialEq)]
pub enum Weights {
    Scalar(f64),
    /// One value per merge block, in SuperMerger's order.
    List(Vec<f64>),
    /// `{SELECTOR: value, ...}`; blocks not named get 0.
    Named(Vec<(String, f64, Span)>),
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Number(f64, Span),
    Name(String, Span),
    Neg(Box<Expr>, Span),
    Add(Box<Expr>, Box<Expr>, Span),
    Sub(Box<Expr>, Box<Expr>, Span),
    Mul(Box<Expr>, Box<Expr>, Span),
    Call {
        name: String,
        args: Vec<Expr>,
        options: Vec<(String, Arg, Span)>,
        span: Span,
    },
    /// A component-wise model `{UNET: avg(unets), TE1: ..., VAE: base}`: each selector's rows
    /// (components, blocks, ranges) from its own expression.
    Components(Vec<(String, Expr, Span)>, Span),
}

/// A `key=value` option of a call.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Expr(Expr),
    Weights(Weights),
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Number(_, s)
            | Expr::Name(_, s)
            | Expr::Neg(_, s)
            | Expr::Add(_, _, s)
            | Expr::Sub(_, _, s)
            | Expr::Mul(_, _, s) => *s,
            Expr::Call { span, .. } | Expr::Components(_, span) => *span,
        }
    }
}

/// `NAME = path`.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub name: String,
    pub path: String,
    pub span: Span,
}

/// `NAME = expression` and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub name: String,
    pub expr: Expr,
    pub params: Vec<(String, Weights, Span)>,
    pub span: Span,
}

/// `NAME = glob("pattern")` or `NAME = list("file")`: a list of models, used inside a call
/// (`avg(NAME)`), where it stands for its members in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelList {
    pub name: String,
    pub source: ListSource,
    pub span: Span,
    /// The bindings it stands for (filled by [`expand_lists`]).
    pub members: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ListSource {
    /// Files matching a pattern (`*`, `?`, `[...]`, `**`), relative to the recipe.
    Glob(String),
    /// A text file with one model path per line (`#` comments), relative to that file.
    File(String),
}

/// A top-level `NAME = <parameter>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Global {
    pub name: String,
    pub weights: Weights,
    pub span: Span,
    /// Index of the first step after it (it applies from there on).
    pub before_step: usize,
}

/// A whole recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub text: String,
    pub bindings: Vec<Binding>,
    pub steps: Vec<Step>,
    pub globals: Vec<Global>,
    pub lists: Vec<ModelList>,
}

impl Recipe {
    /// The output step (the last one).
    pub fn output(&self) -> Option<&Step> {
        self.steps.last()
    }
}

/// Parses recipe text.
pub fn parse(text: &str) -> Result<Recipe, ParseError> {
    let mut recipe = Recipe {
        text: text.to_string(),
        bindings: Vec::new(),
        steps: Vec::new(),
        globals: Vec::new(),
        lists: Vec::new(),
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = strip_comment(raw);
        if content.trim().is_empty() {
            continue;
        }
        let indent = content.len() - content.trim_start().len();
        let col0 = indent + 1;
        let body = content.trim();
        let Some(eq) = find_assign(body) else {
            return err(
                Span { line, col: col0 },
                "expected `NAME = ...` (a model path, a step, or a parameter)",
            );
        };
        let name = body[..eq].trim();
        let name_span = Span { line, col: col0 };
        if !is_name(name) {
            return err(
                name_span,
                format!("'{name}' is not a valid name: use letters, digits, '_', '.' and '-'"),
            );
        }
        let rhs = body[eq + 1..].trim_start();
        let rhs_col = col0 + eq + 1 + (body[eq + 1..].len() - rhs.len());
        let rhs = rhs.trim_end();
        if rhs.is_empty() {
            return err(
                Span { line, col: rhs_col },
                format!("nothing after `{name} =`"),
            );
        }
        let mut parser = Parser::new(rhs, line, rhs_col);
        if indent > 0 {
            // A parameter of the step above.
            let Some(step) = recipe.steps.last_mut() else {
                return err(name_span, "an indented parameter must follow a step");
            };
            let weights = parser.weights_to_end()?;
            step.params.push((name.to_string(), weights, name_span));
            continue;
        }
        if let Some(source) = as_list(rhs) {
            recipe.lists.push(ModelList {
                name: name.to_string(),
                source,
                span: name_span,
                members: Vec::new(),
            });
            continue;
        }
        if let Some(path) = as_path(rhs) {
            recipe.bindings.push(Binding {
                name: name.to_string(),
                path,
                span: name_span,
            });
            continue;
        }
        if looks_like_weights(rhs) {
            match parser.weights_to_end() {
                Ok(weights) => {
                    recipe.globals.push(Global {
                        name: name.to_string(),
                        weights,
                        span: name_span,
                        before_step: recipe.steps.len(),
                    });
                    continue;
                }
                // `{UNET: model, ...}` is a component-wise step, not named weights.
                Err(e) if !rhs.starts_with('{') => return Err(e),
                Err(_) => parser = Parser::new(rhs, line, rhs_col),
            }
        }
        let expr = parser.expr_to_end()?;
        recipe.steps.push(Step {
            name: name.to_string(),
            expr,
            params: Vec::new(),
            span: name_span,
        });
    }
    Ok(recipe)
}

fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The `=` of an assignment (not inside quotes or braces).
fn find_assign(s: &str) -> Option<usize> {
    s.find('=')
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-')
}

pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(is_name_char)
        && s.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
        && s != "x"
}

/// A model path: quoted, or containing a path separator, or with a checkpoint extension.
fn as_path(rhs: &str) -> Option<String> {
    if let Some(inner) = rhs.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return Some(inner.to_string());
    }
    let lower = rhs.to_ascii_lowercase();
    let ext = [
        ".safetensors",
        ".sft",
        ".st",
        ".ckpt",
        ".pt",
        ".pth",
        ".bin",
        ".gguf",
    ]
    .iter()
    .any(|e| lower.ends_with(e));
    let single_token = !rhs.contains(char::is_whitespace);
    (single_token && (ext || rhs.contains('/') || rhs.starts_with('~'))).then(|| rhs.to_string())
}

/// `glob("pattern")` or `list("file")`.
fn as_list(rhs: &str) -> Option<ListSource> {
    let (kind, rest) = if let Some(r) = rhs.strip_prefix("glob(") {
        (0, r)
    } else if let Some(r) = rhs.strip_prefix("list(") {
        (1, r)
    } else {
        return None;
    };
    let inner = rest.strip_suffix(')')?.trim();
    let text = inner.strip_prefix('"')?.strip_suffix('"')?.to_string();
    Some(if kind == 0 {
        ListSource::Glob(text)
    } else {
        ListSource::File(text)
    })
}

/// Resolves each model list (`glob`, `list`) against `base_dir` into bindings named
/// `NAME[1]`, `NAME[2]`, ... and puts its members in place of its name wherever it is a
/// call's argument. Matches are sorted, so a glob gives the same order everywhere.
pub fn expand_lists(recipe: &Recipe, base_dir: &std::path::Path) -> Result<Recipe, ParseError> {
    let mut out = recipe.clone();
    // Members are bound by absolute path: a path found under a relative folder already
    // holds that folder, and bindings are resolved against it again.
    let base_dir = &std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    for list in &mut out.lists {
        let paths: Vec<String> = match &list.source {
            ListSource::Glob(pattern) => {
                let full = if std::path::Path::new(pattern).is_absolute() {
                    pattern.clone()
                } else {
                    base_dir.join(pattern).to_string_lossy().into_owned()
                };
                let entries = glob::glob(&full).map_err(|e| ParseError {
                    span: list.span,
                    message: format!("'{pattern}' is not a valid pattern: {e}"),
                })?;
                let mut found: Vec<String> = entries
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                found.sort();
                found
            }
            ListSource::File(file) => {
                let path = base_dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| ParseError {
                    span: list.span,
                    message: format!("cannot read the model list '{}': {e}", path.display()),
                })?;
                let dir = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
                text.lines()
                    .map(|l| strip_comment(l).trim())
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let l = l.trim_matches('"');
                        if std::path::Path::new(l).is_absolute() {
                            l.to_string()
                        } else {
                            dir.join(l).to_string_lossy().into_owned()
                        }
                    })
                    .collect()
            }
        };
        if paths.is_empty() {
            let what = match &list.source {
                ListSource::Glob(p) => format!("the pattern '{p}' matches no file"),
                ListSource::File(f) => format!("the model list '{f}' names no file"),
            };
            return err(list.span, format!("'{}' is empty: {what}", list.name));
        }
        for (i, p) in paths.into_iter().enumerate() {
            let name = format!("{}[{}]", list.name, i + 1);
            out.bindings.push(Binding {
                name: name.clone(),
                path: p,
                span: list.span,
            });
            list.members.push(name);
        }
    }
    let lists = out.lists.clone();
    for step in &mut out.steps {
        expand_in(&mut step.expr, &lists);
    }
    Ok(out)
}

fn expand_in(e: &mut Expr, lists: &[ModelList]) {
    match e {
        Expr::Number(..) | Expr::Name(..) => {}
        Expr::Neg(a, _) => expand_in(a, lists),
        Expr::Add(a, b, _) | Expr::Sub(a, b, _) | Expr::Mul(a, b, _) => {
            expand_in(a, lists);
            expand_in(b, lists);
        }
        Expr::Call { args, .. } => {
            let mut expanded = Vec::with_capacity(args.len());
            for mut a in std::mem::take(args) {
                match &a {
                    Expr::Name(n, s) if lists.iter().any(|l| &l.name == n) => {
                        let list = lists.iter().find(|l| &l.name == n).expect("found");
                        expanded.extend(list.members.iter().map(|m| Expr::Name(m.clone(), *s)));
                    }
                    _ => {
                        expand_in(&mut a, lists);
                        expanded.push(a);
                    }
                }
            }
            *args = expanded;
        }
        Expr::Components(parts, _) => parts.iter_mut().for_each(|(_, e, _)| expand_in(e, lists)),
    }
}

/// A top-level right-hand side that is a parameter, not an expression: a number, a named
/// form `{...}`, or a list of numbers (bracketed or bare) with no names in it.
fn looks_like_weights(rhs: &str) -> bool {
    let t = rhs.trim();
    if t.starts_with('{') || t.starts_with('[') || t.parse::<f64>().is_ok() {
        return true;
    }
    t.contains(',')
        && t.chars()
            .all(|c| c.is_ascii_digit() || " \t,.()-+eE".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Expr {
        Expr::Name(s.into(), Span::default())
    }

    /// Structure without spans.
    fn shape(e: &Expr) -> String {
        match e {
            Expr::Number(v, _) => format!("{v}"),
            Expr::Name(n, _) => n.clone(),
            Expr::Neg(a, _) => format!("(-{})", shape(a)),
            Expr::Add(a, b, _) => format!("({} + {})", shape(a), shape(b)),
            Expr::Sub(a, b, _) => format!("({} - {})", shape(a), shape(b)),
            Expr::Mul(a, b, _) => format!("({} * {})", shape(a), shape(b)),
            Expr::Call {
                name,
                args,
                options,
                ..
            } => {
                let mut parts: Vec<String> = args.iter().map(shape).collect();
                parts.extend(options.iter().map(|(k, _, _)| format!("{k}=..")));
                format!("{name}({})", parts.join(", "))
            }
            Expr::Components(parts, _) => {
                let parts: Vec<String> = parts
                    .iter()
                    .map(|(sel, e, _)| format!("{sel}: {}", shape(e)))
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
        }
    }

    /// A GGUF file is a model path like a safetensors one (every command reads it).
    #[test]
    fn gguf_files_are_model_paths() {
        let r = parse("q = flux-Q8_0.gguf\nb = b.safetensors\nOUT = q x 0.5 + b x 0.5\n").unwrap();
        assert_eq!(r.bindings[0].path, "flux-Q8_0.gguf");
    }

    #[test]
    fn component_wise_steps_and_model_lists() {
        let r = parse(
            "base = b.safetensors\n\
             unets = glob(\"xl/*.safetensors\")\n\
             clips = list(\"clips.txt\")\n\
             alpha = {OUT06..OUT11: 0.15}\n\
             OUT = {UNET: avg(unets), TE1: ties(base, clips, k=0.5), OUT06..OUT11: base x 0.5, VAE: base}\n",
        )
        .unwrap();
        assert_eq!(r.globals.len(), 1, "named weights stay a parameter");
        assert_eq!(
            r.lists.iter().map(|l| l.source.clone()).collect::<Vec<_>>(),
            [
                ListSource::Glob("xl/*.safetensors".into()),
                ListSource::File("clips.txt".into())
            ]
        );
        assert_eq!(
            shape(&r.steps[0].expr),
            "{UNET: avg(unets), TE1: ties(base, clips, k=..), OUT06..OUT11: (base * 0.5), VAE: base}"
        );
        // Lists expand in place of their name, in sorted order, into bindings.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("xl")).unwrap();
        for n in ["b2", "a1", "c3"] {
            std::fs::write(dir.path().join(format!("xl/{n}.safetensors")), b"").unwrap();
        }
        std::fs::write(
            dir.path().join("clips.txt"),
            "# two\nxl/c3.safetensors\nxl/a1.safetensors\n",
        )
        .unwrap();
        let x = expand_lists(&r, dir.path()).unwrap();
        assert_eq!(
            shape(&x.steps[0].expr),
            "{UNET: avg(unets[1], unets[2], unets[3]), TE1: ties(base, clips[1], clips[2], k=..), OUT06..OUT11: (base * 0.5), VAE: base}"
        );
        let path_of = |n: &str| {
            x.bindings
                .iter()
                .find(|b| b.name == n)
                .unwrap()
                .path
                .clone()
        };
        assert!(path_of("unets[1]").ends_with("xl/a1.safetensors"));
        assert!(path_of("unets[3]").ends_with("xl/c3.safetensors"));
        assert!(path_of("clips[1]").ends_with("xl/c3.safetensors"));
    }

    #[test]
    fn published_notation() {
        let r = parse(
            "v1-5 = models/v1-5-pruned-emaonly.safetensors\n\
             pyro_pov_a = a.safetensors\n\
             pyAB = pyro_pov_a x 0.5 + pyro_pov_b x 0.5\n\
             MERGE2 = MERGE1Fix + (F222 - v1-5-pruned-emaonly) x 1\n\
             TEMP7 = TEMP6 x (1-alpha) + dreamshaper_6 x alpha\n    alpha = (0,0,0.15)\n\
             TEMP1 = OpenBra + (Evt - v1-5) * 0.08  # a comment\n",
        )
        .unwrap();
        assert_eq!(r.bindings[0].name, "v1-5");
        assert_eq!(r.bindings[0].path, "models/v1-5-pruned-emaonly.safetensors");
        assert_eq!(
            shape(&r.steps[0].expr),
            "((pyro_pov_a * 0.5) + (pyro_pov_b * 0.5))"
        );
        assert_eq!(
            shape(&r.steps[1].expr),
            "(MERGE1Fix + ((F222 - v1-5-pruned-emaonly) * 1))"
        );
        assert_eq!(
            shape(&r.steps[2].expr),
            "((TEMP6 * (1 - alpha)) + (dreamshaper_6 * alpha))"
        );
        assert_eq!(r.steps[2].params[0].1, Weights::List(vec![0.0, 0.0, 0.15]));
        assert_eq!(shape(&r.steps[3].expr), "(OpenBra + ((Evt - v1-5) * 0.08))");
        let _ = name("x");
    }

    #[test]
    fn parameters_and_calls() {
        let r = parse(
            "alpha = {OUT06..OUT11: 0.15, BASE: 1}\n\
             beta = 0.25\n\
             M = ties(base, a, b, k=0.2, weights=(1, 0.5))\n\
             N = M x -0.5\n",
        )
        .unwrap();
        assert_eq!(r.globals.len(), 2);
        let Weights::Named(n) = &r.globals[0].weights else {
            panic!()
        };
        assert_eq!((n[0].0.as_str(), n[0].1), ("OUT06..OUT11", 0.15));
        assert_eq!(r.globals[1].weights, Weights::Scalar(0.25));
        assert_eq!(
            shape(&r.steps[0].expr),
            "ties(base, a, b, k=.., weights=..)"
        );
        assert_eq!(shape(&r.steps[1].expr), "(M * (-0.5))");
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let e = parse("A = a.safetensors\nB = A x (0.5 + \n").unwrap_err();
        assert_eq!(e.span.line, 2);
        assert!(e.message.contains("ends early"), "{e}");
        let e = parse("A = a.safetensors\nB = A 0.5\n").unwrap_err();
        assert_eq!((e.span.line, e.span.col), (2, 7));
        let e = parse("  alpha = 1\n").unwrap_err();
        assert!(e.message.contains("must follow a step"));
        let e = parse("1x = 2 + 3\n").unwrap_err();
        assert_eq!(e.span.col, 1);
    }
}
