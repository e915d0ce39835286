//! The recipe language: the notation model mergers already write, parsed to a syntax tree
//! whose nodes remember where they came from, so errors point at a line and column.
//!
//! ```text
//! # models: NAME = path (quoted, or containing '/', or ending in .safetensors)
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

use std::fmt;

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

fn err<T>(span: Span, message: impl Into<String>) -> Result<T, ParseError> {
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
            Expr::Call { span, .. } => *span,
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
}

impl Recipe {
    /// The output step (the last one).
    pub fn output(&self) -> Option<&Step> {
        self.steps.last()
    }
}

/// A recipe name for a model file: its stem with every character a name cannot hold made
/// `_`, prefixed `m_` when it would not start a name or would be the operator `x`. Not
/// unique: callers add their own suffixes.
pub fn name_for_file(path: &std::path::Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        || name == "x"
    {
        format!("m_{name}")
    } else {
        name
    }
}

/// Parses recipe text.
pub fn parse(text: &str) -> Result<Recipe, ParseError> {
    let mut recipe = Recipe {
        text: text.to_string(),
        bindings: Vec::new(),
        steps: Vec::new(),
        globals: Vec::new(),
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
        let mut lexer = Lexer::new(rhs, line, rhs_col);
        if indent > 0 {
            // A parameter of the step above.
            let Some(step) = recipe.steps.last_mut() else {
                return err(name_span, "an indented parameter must follow a step");
            };
            let weights = lexer.weights_to_end()?;
            step.params.push((name.to_string(), weights, name_span));
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
            let weights = lexer.weights_to_end()?;
            recipe.globals.push(Global {
                name: name.to_string(),
                weights,
                span: name_span,
                before_step: recipe.steps.len(),
            });
            continue;
        }
        let expr = lexer.expr_to_end()?;
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

fn is_name(s: &str) -> bool {
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
    ]
    .iter()
    .any(|e| lower.ends_with(e));
    let single_token = !rhs.contains(char::is_whitespace);
    (single_token && (ext || rhs.contains('/') || rhs.starts_with('~'))).then(|| rhs.to_string())
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

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Name(String),
    Plus,
    Minus,
    Times,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Colon,
    Equals,
    DotDot,
}

struct Lexer {
    toks: Vec<(Tok, Span)>,
    pos: usize,
    end: Span,
}

impl Lexer {
    fn new(s: &str, line: usize, col: usize) -> Lexer {
        Lexer {
            toks: Vec::new(),
            pos: 0,
            end: Span {
                line,
                col: col + s.chars().count(),
            },
        }
        .lex(s, line, col)
    }

    fn lex(mut self, s: &str, line: usize, col0: usize) -> Lexer {
        let chars: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let span = Span {
                line,
                col: col0 + i,
            };
            let single = match c {
                '+' => Some(Tok::Plus),
                '*' => Some(Tok::Times),
                '(' => Some(Tok::LParen),
                ')' => Some(Tok::RParen),
                '[' => Some(Tok::LBracket),
                ']' => Some(Tok::RBracket),
                '{' => Some(Tok::LBrace),
                '}' => Some(Tok::RBrace),
                ',' => Some(Tok::Comma),
                ':' => Some(Tok::Colon),
                '=' => Some(Tok::Equals),
                _ => None,
            };
            if let Some(t) = single {
                self.toks.push((t, span));
                i += 1;
                continue;
            }
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            if c == '.' && chars.get(i + 1) == Some(&'.') {
                self.toks.push((Tok::DotDot, span));
                i += 2;
                continue;
            }
            if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
            {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_digit()
                        || chars[i] == '.' && chars.get(i + 1) != Some(&'.'))
                {
                    i += 1;
                }
                if i < chars.len() && matches!(chars[i], 'e' | 'E') {
                    let mut j = i + 1;
                    if j < chars.len() && matches!(chars[j], '+' | '-') {
                        j += 1;
                    }
                    if j < chars.len() && chars[j].is_ascii_digit() {
                        i = j;
                        while i < chars.len() && chars[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                // A number glued to letters is a name (`F222`, `1girl-mix`).
                if i < chars.len() && (chars[i].is_alphabetic() || chars[i] == '_') {
                    while i < chars.len() && name_continues(&chars, i) {
                        i += 1;
                    }
                    self.toks
                        .push((Tok::Name(chars[start..i].iter().collect()), span));
                    continue;
                }
                let text: String = chars[start..i].iter().collect();
                match text.parse::<f64>() {
                    Ok(v) => self.toks.push((Tok::Num(v), span)),
                    Err(_) => self.toks.push((Tok::Name(text), span)),
                }
                continue;
            }
            if c == '-' {
                self.toks.push((Tok::Minus, span));
                i += 1;
                continue;
            }
            if c.is_alphabetic() || c == '_' {
                let start = i;
                while i < chars.len() && name_continues(&chars, i) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if word == "x" {
                    self.toks.push((Tok::Times, span));
                } else {
                    self.toks.push((Tok::Name(word), span));
                }
                continue;
            }
            // Unknown character: keep it as a name so the parser reports it in context.
            self.toks.push((Tok::Name(c.to_string()), span));
            i += 1;
        }
        self
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn span(&self) -> Span {
        self.toks.get(self.pos).map(|(_, s)| *s).unwrap_or(self.end)
    }

    fn next(&mut self) -> Option<(Tok, Span)> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Tok, what: &str) -> Result<Span, ParseError> {
        let span = self.span();
        if self.eat(t) {
            Ok(span)
        } else {
            err(span, format!("expected {what}"))
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.toks.len()
    }

    fn expr_to_end(&mut self) -> Result<Expr, ParseError> {
        let e = self.expr()?;
        if !self.at_end() {
            return err(
                self.span(),
                "unexpected text after the expression (an operator missing?)",
            );
        }
        Ok(e)
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.term()?;
        loop {
            let span = self.span();
            if self.eat(&Tok::Plus) {
                let right = self.term()?;
                left = Expr::Add(Box::new(left), Box::new(right), span);
            } else if self.eat(&Tok::Minus) {
                let right = self.term()?;
                left = Expr::Sub(Box::new(left), Box::new(right), span);
            } else {
                return Ok(left);
            }
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.factor()?;
        loop {
            let span = self.span();
            if self.eat(&Tok::Times) {
                let right = self.factor()?;
                left = Expr::Mul(Box::new(left), Box::new(right), span);
            } else {
                return Ok(left);
            }
        }
    }

    fn factor(&mut self) -> Result<Expr, ParseError> {
        let span = self.span();
        match self.next() {
            Some((Tok::Num(v), s)) => Ok(Expr::Number(v, s)),
            Some((Tok::Minus, s)) => Ok(Expr::Neg(Box::new(self.factor()?), s)),
            Some((Tok::LParen, _)) => {
                let e = self.expr()?;
                self.expect(&Tok::RParen, "')'")?;
                Ok(e)
            }
            Some((Tok::Name(n), s)) => {
                if !is_name(&n) {
                    return err(s, format!("unexpected '{n}'"));
                }
                if self.eat(&Tok::LParen) {
                    return self.call(n, s);
                }
                Ok(Expr::Name(n, s))
            }
            Some((t, s)) => err(
                s,
                format!("expected a model, a number or '(', found {}", describe(&t)),
            ),
            None => err(
                span,
                "expected a model, a number or '(' (the expression ends early)",
            ),
        }
    }

    fn call(&mut self, name: String, span: Span) -> Result<Expr, ParseError> {
        let mut args = Vec::new();
        let mut options = Vec::new();
        if self.eat(&Tok::RParen) {
            return Ok(Expr::Call {
                name,
                args,
                options,
                span,
            });
        }
        loop {
            // `key=value`?
            if let (Some(Tok::Name(k)), Some((Tok::Equals, _))) =
                (self.peek().cloned(), self.toks.get(self.pos + 1).cloned())
            {
                let kspan = self.span();
                self.pos += 2;
                let list_ahead = matches!(self.peek(), Some(Tok::LBrace | Tok::LBracket))
                    || (self.peek() == Some(&Tok::LParen) && self.paren_list_ahead());
                let arg = if list_ahead {
                    Arg::Weights(self.weights_value()?)
                } else {
                    Arg::Expr(self.expr()?)
                };
                options.push((k, arg, kspan));
            } else {
                if !options.is_empty() {
                    return err(
                        self.span(),
                        "positional arguments must come before key=value options",
                    );
                }
                args.push(self.expr()?);
            }
            if self.eat(&Tok::Comma) {
                continue;
            }
            self.expect(&Tok::RParen, "',' or ')'")?;
            return Ok(Expr::Call {
                name,
                args,
                options,
                span,
            });
        }
    }

    /// Is the '(' at the cursor a list of numbers `(a, b, ...)`?
    fn paren_list_ahead(&self) -> bool {
        let mut i = self.pos + 1;
        let mut commas = 0;
        while let Some((t, _)) = self.toks.get(i) {
            match t {
                Tok::Num(_) | Tok::Minus => {}
                Tok::Comma => commas += 1,
                Tok::RParen => return commas > 0,
                _ => return false,
            }
            i += 1;
        }
        false
    }

    fn weights_to_end(&mut self) -> Result<Weights, ParseError> {
        let w = self.weights_value()?;
        if !self.at_end() {
            return err(self.span(), "unexpected text after the value");
        }
        Ok(w)
    }

    fn signed_number(&mut self) -> Result<f64, ParseError> {
        let span = self.span();
        let neg = self.eat(&Tok::Minus);
        match self.next() {
            Some((Tok::Num(v), _)) => Ok(if neg { -v } else { v }),
            _ => err(span, "expected a number"),
        }
    }

    fn weights_value(&mut self) -> Result<Weights, ParseError> {
        if self.eat(&Tok::LBrace) {
            let mut named = Vec::new();
            if self.eat(&Tok::RBrace) {
                return Ok(Weights::Named(named));
            }
            loop {
                let span = self.span();
                let Some((Tok::Name(first), _)) = self.next() else {
                    return err(
                        span,
                        "expected a block (BASE, IN00, M00, OUT11), a component (TE1, TE2, VAE) or a range (OUT06..OUT11)",
                    );
                };
                let mut selector = first;
                if self.eat(&Tok::DotDot) {
                    let s2 = self.span();
                    let Some((Tok::Name(last), _)) = self.next() else {
                        return err(s2, "expected the end of the range");
                    };
                    selector = format!("{selector}..{last}");
                }
                self.expect(&Tok::Colon, "':'")?;
                let v = self.signed_number()?;
                named.push((selector, v, span));
                if self.eat(&Tok::Comma) {
                    if self.eat(&Tok::RBrace) {
                        return Ok(Weights::Named(named));
                    }
                    continue;
                }
                self.expect(&Tok::RBrace, "',' or '}'")?;
                return Ok(Weights::Named(named));
            }
        }
        let close = if self.eat(&Tok::LParen) {
            Some(Tok::RParen)
        } else if self.eat(&Tok::LBracket) {
            Some(Tok::RBracket)
        } else {
            None
        };
        let mut values = vec![self.signed_number()?];
        while self.eat(&Tok::Comma) {
            if close.as_ref().is_some_and(|c| self.peek() == Some(c)) {
                break;
            }
            values.push(self.signed_number()?);
        }
        if let Some(c) = &close {
            self.expect(c, if *c == Tok::RParen { "')'" } else { "']'" })?;
        }
        Ok(if values.len() == 1 && close.is_none() {
            Weights::Scalar(values[0])
        } else {
            Weights::List(values)
        })
    }
}

/// Names may contain '-' and '.' between name characters (`v1-5-pruned`), never at the
/// end, and a '-' must be followed by a letter or digit (so `A -B` is a subtraction).
fn name_continues(chars: &[char], i: usize) -> bool {
    let c = chars[i];
    if c.is_alphanumeric() || c == '_' {
        return true;
    }
    if matches!(c, '-' | '.') {
        let next = chars.get(i + 1);
        return next.is_some_and(|n| n.is_alphanumeric() || *n == '_')
            && !(c == '.' && next == Some(&'.'));
    }
    false
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(v) => format!("the number {v}"),
        Tok::Name(n) => format!("'{n}'"),
        Tok::Plus => "'+'".into(),
        Tok::Minus => "'-'".into(),
        Tok::Times => "'x'".into(),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::LBrace => "'{'".into(),
        Tok::RBrace => "'}'".into(),
        Tok::Comma => "','".into(),
        Tok::Colon => "':'".into(),
        Tok::Equals => "'='".into(),
        Tok::DotDot => "'..'".into(),
    }
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
        }
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
