//! One language for choosing rows, parsed once and used everywhere a user names blocks:
//! `sim --blocks`, ASimilarity's blocks, the keys of named merge weights
//! (`{OUT06..OUT11: 0.15, BASE: 1}`), and `fit --region`.
//!
//! ```text
//! selector := term ("," term)*          a row is chosen when any term chooses it
//! term     := block | block ".." block | group
//! block    := BASE | IN00 .. | M00 (also MID) | OUT00 ..    a merge block of the architecture
//! group    := IN | MID | OUT | UNET | TE | TE1 | TE2 | VAE | OTHER | ALL
//! ```
//!
//! Case does not matter. A range runs in SuperMerger's block order (`BASE, IN00.., M00,
//! OUT..`). `BASE` is every row outside the U-Net (text encoders, VAE and the rest), as
//! SuperMerger's `BASE` weight is; `IN`, `OUT` and `UNET` are the U-Net's input blocks,
//! output blocks and all of its blocks; `TE` is every text encoder (`TE1` and `TE2`);
//! `OTHER` holds EMA copies, schedule buffers and keys the catalog does not know; `ALL` is
//! every row. Aliases: `INPUT`, `OUTPUT`, `MIDDLE`, `CLIP` and `TEXT`.
//!
//! ```
//! use ckpt_diff::catalog::{Arch, Grouping, Selector};
//! let rows = Grouping::for_arch(Arch::Sd1);
//! let chosen = Selector::parse("OUT06..OUT11, te").unwrap().rows(&rows).unwrap();
//! assert_eq!(chosen.iter().filter(|&&c| c).count(), 7);
//! ```

use std::fmt;

use super::{Block, Component, GroupInfo, Grouping};

/// A named set of rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    In,
    Mid,
    Out,
    Unet,
    /// Every text encoder.
    Te,
    Te1,
    Te2,
    Vae,
    Other,
    All,
}

impl Group {
    fn parse(word: &str) -> Option<Group> {
        Some(match word {
            "IN" | "INPUT" => Group::In,
            "MID" | "MIDDLE" => Group::Mid,
            "OUT" | "OUTPUT" => Group::Out,
            "UNET" => Group::Unet,
            "TE" | "CLIP" | "TEXT" => Group::Te,
            "TE1" => Group::Te1,
            "TE2" => Group::Te2,
            "VAE" => Group::Vae,
            "OTHER" => Group::Other,
            "ALL" => Group::All,
            _ => return None,
        })
    }

    fn contains(self, row: &GroupInfo) -> bool {
        let component = |c: Component| row.block.is_none() && row.component == c;
        match self {
            Group::In => matches!(row.block, Some(Block::In(_))),
            Group::Mid => row.block == Some(Block::Mid),
            Group::Out => matches!(row.block, Some(Block::Out(_))),
            Group::Unet => row.block.is_some(),
            Group::Te => component(Component::Te1) || component(Component::Te2),
            Group::Te1 => component(Component::Te1),
            Group::Te2 => component(Component::Te2),
            Group::Vae => component(Component::Vae),
            Group::Other => component(Component::Other),
            Group::All => true,
        }
    }
}

/// One term of a selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Term {
    /// One merge block (`BASE` is every row outside the U-Net).
    Block(Block),
    /// Every block from the first to the second, in merge order.
    Range(Block, Block),
    Group(Group),
}

/// Why a selector could not be read or does not fit an architecture. The message says what
/// was expected; callers add where the selector came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectError(pub String);

const VOCABULARY: &str = "a block (BASE, IN00.., M00, OUT..), a range (OUT06..OUT11), or IN, MID, \
                          OUT, UNET, TE, TE1, TE2, VAE, OTHER, ALL";

/// A parsed selector: its terms, in the order written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<(Term, String)>,
}

impl Selector {
    /// Parses comma-separated terms (see the module documentation).
    pub fn parse(text: &str) -> Result<Selector, SelectError> {
        let terms: Vec<(Term, String)> = text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| Ok((parse_term(t)?, t.to_string())))
            .collect::<Result<_, SelectError>>()?;
        if terms.is_empty() {
            return Err(SelectError(format!("nothing selected; name {VOCABULARY}")));
        }
        Ok(Selector { terms })
    }

    /// Every row.
    pub fn all() -> Selector {
        Selector {
            terms: vec![(Term::Group(Group::All), "all".into())],
        }
    }

    /// The terms with the text each was written as.
    pub fn terms(&self) -> impl Iterator<Item = (Term, &str)> {
        self.terms.iter().map(|(t, s)| (*t, s.as_str()))
    }

    /// Which rows of `grouping` the selector chooses. Every term must choose at least one
    /// row of the architecture (`TE2` of SD1 is an error, not an empty selection).
    pub fn rows(&self, grouping: &Grouping) -> Result<Vec<bool>, SelectError> {
        let Some(arch) = grouping.layout().arch() else {
            return Err(SelectError(
                "blocks can only be chosen in an architecture the catalog knows".into(),
            ));
        };
        let order = arch.merge_blocks();
        let position = |b: Block, text: &str| {
            order.iter().position(|x| *x == b).ok_or_else(|| {
                SelectError(format!(
                    "'{text}' is not a block of {}: it has {}..{}",
                    arch.label(),
                    order[1],
                    order[order.len() - 1]
                ))
            })
        };
        let groups = grouping.groups();
        let merge_block = |g: &GroupInfo| g.block.unwrap_or(Block::Base);
        let mut chosen = vec![false; groups.len()];
        for (term, text) in &self.terms {
            let hits: Vec<bool> = match *term {
                Term::Block(b) => {
                    position(b, text)?;
                    groups.iter().map(|g| merge_block(g) == b).collect()
                }
                Term::Range(a, b) => {
                    let (i, j) = (position(a, text)?, position(b, text)?);
                    if i > j {
                        return Err(SelectError(format!("'{text}' runs backwards")));
                    }
                    let span = &order[i..=j];
                    groups
                        .iter()
                        .map(|g| span.contains(&merge_block(g)))
                        .collect()
                }
                Term::Group(group) => groups.iter().map(|g| group.contains(g)).collect(),
            };
            if !hits.contains(&true) {
                return Err(SelectError(format!("{} has no '{text}'", arch.label())));
            }
            chosen.iter_mut().zip(hits).for_each(|(c, h)| *c |= h);
        }
        Ok(chosen)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<&str> = self.terms.iter().map(|(_, s)| s.as_str()).collect();
        f.write_str(&texts.join(","))
    }
}

fn parse_term(text: &str) -> Result<Term, SelectError> {
    let upper = text.to_ascii_uppercase();
    if let Some((a, b)) = upper.split_once("..") {
        return match (Block::parse(a), Block::parse(b)) {
            (Some(a), Some(b)) => Ok(Term::Range(a, b)),
            _ => Err(SelectError(format!(
                "'{text}' is not a range of blocks like OUT06..OUT11"
            ))),
        };
    }
    if let Some(group) = Group::parse(&upper) {
        return Ok(Term::Group(group));
    }
    Block::parse(&upper)
        .map(Term::Block)
        .ok_or_else(|| SelectError(format!("'{text}' is not {VOCABULARY}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Arch;

    /// The labels of the rows `text` chooses.
    fn chosen(arch: Arch, text: &str) -> Vec<String> {
        let g = Grouping::for_arch(arch);
        let rows = Selector::parse(text).unwrap().rows(&g).unwrap();
        g.groups()
            .iter()
            .zip(rows)
            .filter(|(_, c)| *c)
            .map(|(g, _)| g.label.clone())
            .collect()
    }

    fn labels(list: &str) -> Vec<String> {
        list.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn groups_blocks_and_ranges() {
        assert_eq!(chosen(Arch::Sd1, "te"), labels("TE1"));
        assert_eq!(chosen(Arch::Sdxl, "CLIP"), labels("TE1 TE2"));
        assert_eq!(chosen(Arch::Sd1, "base"), labels("TE1 VAE OTHER"));
        assert_eq!(chosen(Arch::Sd1, "mid,vae"), labels("M00 VAE"));
        assert_eq!(chosen(Arch::Sd1, "m00"), chosen(Arch::Sd1, "MID"));
        assert_eq!(
            chosen(Arch::Sdxl, "OUT06..OUT08"),
            labels("OUT06 OUT07 OUT08")
        );
        assert_eq!(chosen(Arch::Sdxl, "M00..OUT01"), labels("M00 OUT00 OUT01"));
        // A range from BASE takes every row outside the U-Net with it.
        assert_eq!(
            chosen(Arch::Sdxl, "BASE..IN01"),
            labels("IN00 IN01 TE1 TE2 VAE OTHER")
        );
        assert_eq!(chosen(Arch::Sd1, "in").len(), 12);
        assert_eq!(chosen(Arch::Sd1, "out").len(), 12);
        assert_eq!(chosen(Arch::Sd1, "unet").len(), 25);
        assert_eq!(chosen(Arch::Sd1, "unet"), chosen(Arch::Sd1, "in,mid,out"));
        // ALL is every row, OTHER included (the old `fit --region all` left it out).
        assert_eq!(chosen(Arch::Sdxl, "all").len(), 19 + 4);
        assert!(chosen(Arch::Sd1, "all").contains(&"OTHER".to_string()));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let g = Grouping::for_arch(Arch::Sd1);
        let xl = Grouping::for_arch(Arch::Sdxl);
        let e =
            |text: &str, g: &Grouping| Selector::parse(text).and_then(|s| s.rows(g)).unwrap_err().0;
        assert!(e("sideways", &g).contains("'sideways' is not a block"));
        assert!(e("OUT11", &xl).contains("not a block of SDXL"));
        assert!(e("OUT03..OUT01", &g).contains("runs backwards"));
        assert!(e("OUT03..te", &g).contains("not a range"));
        assert!(e("te2", &g).contains("has no 'te2'"));
        assert!(e(" , ", &g).contains("nothing selected"));
        let generic = Grouping::generic(["a.b"]);
        assert!(e("out", &generic).contains("architecture the catalog knows"));
    }

    #[test]
    fn keeps_the_written_terms() {
        let s = Selector::parse("IN03, OUT00..OUT02 ,te").unwrap();
        let terms: Vec<(Term, &str)> = s.terms().collect();
        assert_eq!(terms[0], (Term::Block(Block::In(3)), "IN03"));
        assert_eq!(
            terms[1],
            (Term::Range(Block::Out(0), Block::Out(2)), "OUT00..OUT02")
        );
        assert_eq!(terms[2], (Term::Group(Group::Te), "te"));
        assert_eq!(s.to_string(), "IN03,OUT00..OUT02,te");
    }
}
