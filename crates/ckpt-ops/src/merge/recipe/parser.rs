//! Tokens to syntax: expressions with `+`, `-`, `x`/`*`, unary minus, parentheses and
//! calls with `key=value` options, and parameter values (a number, a list of block weights,
//! a named form `{OUT06..OUT11: 0.15}`). Every node keeps its place for error messages.

use super::lexer::{Tok, describe, lex};
use super::{Arg, Expr, ParseError, Span, Weights, err, is_name};

/// A cursor over the tokens of one right-hand side.
pub(crate) struct Parser {
    toks: Vec<(Tok, Span)>,
    pos: usize,
    end: Span,
}

impl Parser {
    /// The parser of `s`, which starts at `line`, column `col`.
    pub(crate) fn new(s: &str, line: usize, col: usize) -> Parser {
        Parser {
            toks: lex(s, line, col),
            pos: 0,
            end: Span {
                line,
                col: col + s.chars().count(),
            },
        }
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

    /// A whole expression, up to the end of the text.
    pub(crate) fn expr_to_end(&mut self) -> Result<Expr, ParseError> {
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
            Some((Tok::LBrace, s)) => self.components(s),
            Some((Tok::Name(n), s)) => {
                if !is_name(&n) {
                    return err(s, format!("unexpected '{n}'"));
                }
                if self.eat(&Tok::LParen) {
                    return self.call(n, s);
                }
                // A block range (`OUT06..OUT11`), for options that select rows.
                if self.eat(&Tok::DotDot) {
                    let end = self.span();
                    let Some((Tok::Name(last), _)) = self.next() else {
                        return err(end, "expected the end of the range");
                    };
                    return Ok(Expr::Name(format!("{n}..{last}"), s));
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

    /// `{SELECTOR: expr, ...}` after its '{'.
    fn components(&mut self, span: Span) -> Result<Expr, ParseError> {
        let mut parts = Vec::new();
        loop {
            if self.eat(&Tok::RBrace) {
                break;
            }
            let at = self.span();
            let selector = self.selector()?;
            self.expect(&Tok::Colon, "':'")?;
            parts.push((selector, self.expr()?, at));
            if self.eat(&Tok::Comma) {
                continue;
            }
            self.expect(&Tok::RBrace, "',' or '}'")?;
            break;
        }
        if parts.is_empty() {
            return err(
                span,
                "a component-wise model names at least one component: `{UNET: A, TE: B}`",
            );
        }
        Ok(Expr::Components(parts, span))
    }

    /// A selector: a name, or a range `OUT06..OUT11`.
    fn selector(&mut self) -> Result<String, ParseError> {
        let span = self.span();
        let Some((Tok::Name(first), _)) = self.next() else {
            return err(
                span,
                "expected a block (BASE, IN00, M00, OUT11), a component (UNET, TE1, TE2, VAE) or a range (OUT06..OUT11)",
            );
        };
        if self.eat(&Tok::DotDot) {
            let s2 = self.span();
            let Some((Tok::Name(last), _)) = self.next() else {
                return err(s2, "expected the end of the range");
            };
            return Ok(format!("{first}..{last}"));
        }
        Ok(first)
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

    /// A whole parameter value, up to the end of the text.
    pub(crate) fn weights_to_end(&mut self) -> Result<Weights, ParseError> {
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
                let selector = self.selector()?;
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
