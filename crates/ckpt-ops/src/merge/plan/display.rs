//! Coefficients as people read them: `IN00..IN11=0.8 M00=0.5 OUT00..OUT11=0.2 TE1..OTHER=1`.

use std::fmt;

use super::{MergePlan, Profile};
use ckpt_core::catalog::GroupInfo;

/// A coefficient for people: up to 6 significant digits, no float noise.
pub fn show(v: f64) -> String {
    let s = format!("{:.6}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// Per-row values as runs of equal values: `IN00..IN11=0.8 M00=0.5 OUT00..OUT11=0.2`.
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
