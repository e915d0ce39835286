//! One language for choosing rows, parsed once and used everywhere a user names blocks:
//! `sim --blocks`, ASimilarity's blocks, the keys of named merge weights
//! (`{OUT06..OUT11: 0.15, BASE: 1}`), `swap(A, B, ...)` and `fit --region`.
//!
//! ```text
//! selector := term ("," term)*          a row is chosen when any term chooses it
//! term     := block | block ".." block | group
//! block    := a merge block of the architecture (its spec's `[weights] order`): BASE,
//!             IN00.., M00 (MID), OUT00.. for the U-Net; CLIP, T5, IN, D00..D18, S00..S37,
//!             OUT for Flux.1; BASE, IN, J00.., OUT for SD3
//! group    := IN | MID | OUT | UNET (DIFFUSER) | TE | BASE | ALL | a component
//!             (TE1, TE2, VAE, OTHER, CLIP_L, CLIP_G, T5XXL, ... as components.toml lists)
//! ```
//!
//! Case does not matter. A name is the architecture's block when it has one of that name
//! (Flux's `IN` is its input block), else a group (SD's `IN` is every input block). A range
//! runs in the order of the architecture's block-weight list. `BASE` is every row outside
//! the denoiser where the list has no `BASE` (Flux); `IN` and `OUT` are the denoiser's input
//! and output blocks; `UNET` (or `DIFFUSER`) every denoiser block; `TE` every text encoder
//! (aliases `CLIP` and `TEXT` where `CLIP` is not a block); `OTHER` the EMA copies, schedule
//! buffers and keys the catalog does not know; `ALL` every row. Aliases: `INPUT`, `OUTPUT`,
//! `MIDDLE`, `T5` (for `T5XXL` where it is not a block).
//!
//! ```
//! use ckpt_core::catalog::{Arch, Grouping, Selector};
//! let rows = Grouping::for_arch(Arch::parse("sd1").unwrap());
//! let chosen = Selector::parse("OUT06..OUT11, te").unwrap().rows(&rows).unwrap();
//! assert_eq!(chosen.iter().filter(|&&c| c).count(), 7);
//! ```

use std::fmt;

use super::registry::BlockGroup;
use super::{Arch, Block, Component, GroupInfo, Grouping};

/// A named set of rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    In,
    Mid,
    Out,
    /// Every denoiser block.
    Denoiser,
    /// Every text encoder.
    Te,
    /// Every row outside the denoiser.
    Base,
    Component(Component),
    All,
}

impl Group {
    fn parse(word: &str) -> Option<Group> {
        Some(match word {
            "IN" | "INPUT" => Group::In,
            "MID" | "MIDDLE" => Group::Mid,
            "OUT" | "OUTPUT" => Group::Out,
            "UNET" | "DIFFUSER" => Group::Denoiser,
            "TE" | "CLIP" | "TEXT" => Group::Te,
            "BASE" => Group::Base,
            "ALL" => Group::All,
            other => Group::Component(Component::parse(other)?),
        })
    }

    fn contains(self, arch: Arch, row: &GroupInfo) -> bool {
        let group = |g: BlockGroup| {
            row.block
                .is_some_and(|b| arch.info().groups.get(&b) == Some(&g))
        };
        match self {
            Group::In => group(BlockGroup::In),
            Group::Mid => group(BlockGroup::Mid),
            Group::Out => group(BlockGroup::Out),
            Group::Denoiser => row.block.is_some(),
            Group::Te => row.block.is_none() && row.component.is_text_encoder(),
            Group::Base => row.block.is_none(),
            Group::Component(c) => row.block.is_none() && row.component == c,
            Group::All => true,
        }
    }
}

/// One term of a selector, resolved against an architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Term {
    /// One merge block.
    Block(Block),
    /// Every block from the first to the second, in the block-weight list's order.
    Range(Block, Block),
    Group(Group),
}

/// Why a selector could not be read or does not fit an architecture. The message says what
/// was expected; callers add where the selector came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectError(pub String);

/// What a selector's names may be, generated from the catalog: each architecture's block
/// list (from its spec), the groups, the components.
fn vocabulary() -> String {
    let mut lists: Vec<(Vec<&str>, &str)> = Vec::new();
    for &a in Arch::all() {
        let order = a.info().spec.weights.order.as_str();
        match lists.iter_mut().find(|(_, o)| *o == order) {
            Some((ids, _)) => ids.push(a.id()),
            None => lists.push((vec![a.id()], order)),
        }
    }
    let blocks: Vec<String> = lists
        .iter()
        .map(|(ids, order)| format!("{}: {order}", ids.join(", ")))
        .collect();
    let components: Vec<String> = Component::all().map(|c| c.id().to_uppercase()).collect();
    format!(
        "a block of the file's architecture ({}), a range (OUT06..OUT11), or IN, MID, OUT, \
         UNET, TE, BASE, ALL, a component ({})",
        blocks.join("; "),
        components.join(", ")
    )
}

/// A parsed selector: its terms as written, resolved against an architecture by
/// [`Selector::rows`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// Each term's text; a range as its two ends.
    terms: Vec<(String, Option<String>)>,
}

impl Selector {
    /// Splits comma-separated terms and checks their form (see the module documentation);
    /// names are checked against an architecture by [`Selector::rows`].
    pub fn parse(text: &str) -> Result<Selector, SelectError> {
        let mut terms = Vec::new();
        for t in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let term = match t.split_once("..") {
                Some((a, b)) => {
                    let (a, b) = (a.trim(), b.trim());
                    if a.is_empty() || b.is_empty() || b.contains("..") {
                        return Err(SelectError(format!(
                            "'{t}' is not a range of blocks like OUT06..OUT11"
                        )));
                    }
                    (a.to_string(), Some(b.to_string()))
                }
                None => (t.to_string(), None),
            };
            if !term
                .0
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(SelectError(format!("'{t}' is not {}", vocabulary())));
            }
            terms.push(term);
        }
        if terms.is_empty() {
            return Err(SelectError(format!(
                "nothing selected; name {}",
                vocabulary()
            )));
        }
        // Names are resolved per architecture later; a name no architecture has is wrong
        // whatever the file (and layouts the catalog does not know never resolve names).
        // A block name of the right form (`D19`) is left to the architecture to refuse.
        for name in terms.iter().flat_map(|(a, b)| std::iter::once(a).chain(b)) {
            if !Block::is_block_name(name)
                && !Arch::all()
                    .iter()
                    .any(|arch| resolve(*arch, name, None, name).is_ok())
            {
                return Err(SelectError(format!("'{name}' is not {}", vocabulary())));
            }
        }
        Ok(Selector { terms })
    }

    /// Every row.
    pub fn all() -> Selector {
        Selector {
            terms: vec![("all".into(), None)],
        }
    }

    /// The terms resolved for `arch`, with the text each was written as.
    pub fn terms(&self, arch: Arch) -> Result<Vec<(Term, String)>, SelectError> {
        self.terms
            .iter()
            .map(|(a, b)| {
                let text = written(a, b);
                Ok((resolve(arch, a, b.as_deref(), &text)?, text))
            })
            .collect()
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
        let groups = grouping.groups();
        let mut chosen = vec![false; groups.len()];
        for (term, text) in self.terms(arch)? {
            let hits: Vec<bool> = match term {
                Term::Block(b) => groups.iter().map(|g| g.weight_block == Some(b)).collect(),
                Term::Range(a, b) => {
                    let at = |x: Block| order.iter().position(|y| *y == x).expect("resolved");
                    let (i, j) = (at(a), at(b));
                    if i > j {
                        return Err(SelectError(format!("'{text}' runs backwards")));
                    }
                    let span = &order[i..=j];
                    groups
                        .iter()
                        .map(|g| g.weight_block.is_some_and(|w| span.contains(&w)))
                        .collect()
                }
                Term::Group(group) => groups.iter().map(|g| group.contains(arch, g)).collect(),
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
        let texts: Vec<String> = self.terms.iter().map(|(a, b)| written(a, b)).collect();
        f.write_str(&texts.join(","))
    }
}

/// A term as written: a name, or a range's two ends.
fn written(a: &str, b: &Option<String>) -> String {
    match b {
        Some(b) => format!("{a}..{b}"),
        None => a.to_string(),
    }
}

/// A term for `arch`: its block of that name, a range of its blocks, or a group.
fn resolve(arch: Arch, a: &str, b: Option<&str>, text: &str) -> Result<Term, SelectError> {
    let not_a_block = |name: &str| {
        let order = arch.merge_blocks();
        SelectError(format!(
            "'{name}' is not a block of {}: it has {}..{}",
            arch.label(),
            order[0],
            order[order.len() - 1]
        ))
    };
    if let Some(b) = b {
        let block = |name: &str| {
            arch.block_named(name).ok_or_else(|| {
                if Block::is_block_name(name) {
                    not_a_block(name)
                } else {
                    SelectError(format!(
                        "'{text}' is not a range of blocks like OUT06..OUT11"
                    ))
                }
            })
        };
        return Ok(Term::Range(block(a)?, block(b)?));
    }
    if let Some(block) = arch.block_named(a) {
        return Ok(Term::Block(block));
    }
    let upper = a.to_ascii_uppercase();
    if let Some(group) = Group::parse(&upper) {
        return Ok(Term::Group(group));
    }
    if Block::is_block_name(&upper) {
        return Err(not_a_block(a));
    }
    Err(SelectError(format!("'{a}' is not {}", vocabulary())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::arch;

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
        assert_eq!(chosen(arch("sd1"), "te"), labels("TE1"));
        assert_eq!(chosen(arch("sdxl"), "CLIP"), labels("TE1 TE2"));
        assert_eq!(chosen(arch("sd1"), "base"), labels("TE1 VAE OTHER"));
        assert_eq!(chosen(arch("sd1"), "mid,vae"), labels("M00 VAE"));
        assert_eq!(chosen(arch("sd1"), "m00"), chosen(arch("sd1"), "MID"));
        assert_eq!(
            chosen(arch("sdxl"), "OUT06..OUT08"),
            labels("OUT06 OUT07 OUT08")
        );
        assert_eq!(
            chosen(arch("sdxl"), "M00..OUT01"),
            labels("M00 OUT00 OUT01")
        );
        // A range from BASE takes every row outside the U-Net with it.
        assert_eq!(
            chosen(arch("sdxl"), "BASE..IN01"),
            labels("IN00 IN01 TE1 TE2 VAE OTHER")
        );
        assert_eq!(chosen(arch("sd1"), "in").len(), 12);
        assert_eq!(chosen(arch("sd1"), "out").len(), 12);
        assert_eq!(chosen(arch("sd1"), "unet").len(), 25);
        assert_eq!(
            chosen(arch("sd1"), "unet"),
            chosen(arch("sd1"), "in,mid,out")
        );
        // ALL is every row, OTHER included (the old `fit --region all` left it out).
        assert_eq!(chosen(arch("sdxl"), "all").len(), 19 + 4);
        assert!(chosen(arch("sd1"), "all").contains(&"OTHER".to_string()));
    }

    #[test]
    fn dit_names() {
        // Flux: IN, OUT, CLIP and T5 are blocks; BASE is the rows outside the diffuser.
        assert_eq!(chosen(arch("flux"), "IN"), labels("IN"));
        assert_eq!(chosen(arch("flux"), "clip"), labels("CLIP_L"));
        assert_eq!(chosen(arch("flux"), "t5"), labels("T5XXL"));
        assert_eq!(chosen(arch("flux"), "D17..S01"), labels("D17 D18 S00 S01"));
        assert_eq!(chosen(arch("flux"), "CLIP..IN"), labels("IN CLIP_L T5XXL"));
        assert_eq!(chosen(arch("flux"), "diffuser").len(), 1 + 19 + 38 + 1);
        assert_eq!(
            chosen(arch("flux"), "base"),
            labels("CLIP_L T5XXL VAE OTHER")
        );
        assert_eq!(chosen(arch("flux"), "te"), labels("CLIP_L T5XXL"));
        assert_eq!(chosen(arch("flux"), "vae"), labels("VAE"));
        // SD3.5 large: BASE is a block of its list; IN and OUT are the embedders and the
        // final layer.
        assert_eq!(chosen(arch("sd35l"), "J36..OUT"), labels("J36 J37 OUT"));
        assert_eq!(
            chosen(arch("sd35l"), "BASE"),
            labels("CLIP_L CLIP_G T5XXL VAE OTHER")
        );
        assert_eq!(chosen(arch("sd3"), "in,out"), labels("IN OUT"));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let g = Grouping::for_arch(arch("sd1"));
        let xl = Grouping::for_arch(arch("sdxl"));
        let e =
            |text: &str, g: &Grouping| Selector::parse(text).and_then(|s| s.rows(g)).unwrap_err().0;
        assert!(e("sideways", &g).contains("'sideways' is not a block"));
        assert!(e("OUT11", &xl).contains("not a block of SDXL"));
        assert!(e("OUT03..OUT01", &g).contains("runs backwards"));
        assert!(e("OUT03..te", &g).contains("not a range"));
        assert!(e("te2", &g).contains("has no 'te2'"));
        assert!(e(" , ", &g).contains("nothing selected"));
        assert!(e("D19", &Grouping::for_arch(arch("flux"))).contains("not a block of Flux.1"));
        assert!(e("J30", &Grouping::for_arch(arch("sd3"))).contains("not a block of SD3"));
        let generic = Grouping::generic(["a.b"]);
        assert!(e("out", &generic).contains("architecture the catalog knows"));
    }

    #[test]
    fn keeps_the_written_terms() {
        let s = Selector::parse("IN03, OUT00..OUT02 ,te").unwrap();
        let terms = s.terms(arch("sd1")).unwrap();
        assert_eq!(
            terms[0],
            (Term::Block(Block::new("IN03")), "IN03".to_string())
        );
        assert_eq!(
            terms[1],
            (
                Term::Range(Block::new("OUT00"), Block::new("OUT02")),
                "OUT00..OUT02".to_string()
            )
        );
        assert_eq!(terms[2], (Term::Group(Group::Te), "te".to_string()));
        assert_eq!(s.to_string(), "IN03,OUT00..OUT02,te");
    }
}
