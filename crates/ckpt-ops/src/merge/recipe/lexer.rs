//! Recipe text to tokens: numbers, names (which may hold `-` and `.` between name
//! characters, so `v1-5` is one name), operators and punctuation, each with its place.

use super::Span;

/// A token of an expression or a parameter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
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

/// The tokens of `s`, which starts at `line`, column `col0`. Never fails: a character that
/// fits nothing becomes a one-character name, which the parser reports in context.
pub(crate) fn lex(s: &str, line: usize, col0: usize) -> Vec<(Tok, Span)> {
    let mut toks = Vec::new();
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
            toks.push((t, span));
            i += 1;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '.' && chars.get(i + 1) == Some(&'.') {
            toks.push((Tok::DotDot, span));
            i += 2;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit() || chars[i] == '.' && chars.get(i + 1) != Some(&'.'))
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
                toks.push((Tok::Name(chars[start..i].iter().collect()), span));
                continue;
            }
            let text: String = chars[start..i].iter().collect();
            match text.parse::<f64>() {
                Ok(v) => toks.push((Tok::Num(v), span)),
                Err(_) => toks.push((Tok::Name(text), span)),
            }
            continue;
        }
        if c == '-' {
            toks.push((Tok::Minus, span));
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
                toks.push((Tok::Times, span));
            } else {
                toks.push((Tok::Name(word), span));
            }
            continue;
        }
        // Unknown character: keep it as a name so the parser reports it in context.
        toks.push((Tok::Name(c.to_string()), span));
        i += 1;
    }
    toks
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

/// A token as error messages name it.
pub(crate) fn describe(t: &Tok) -> String {
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
