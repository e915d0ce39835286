//! Linear combinations of graph nodes with one coefficient per report row: what every
//! weighted sum, add difference, block weight and swap is, and what a chain of them
//! collapses to.

/// Per-row coefficients, indexed like [`ckpt_core::catalog::Grouping::groups`].
pub type Profile = Vec<f64>;

/// Σ profileₖ ⊙ nodeₖ: a model as a combination of nodes of the merge graph. Terms keep the
/// order in which nodes first appear, so sums are always added up in the same order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Combination {
    pub terms: Vec<(usize, Profile)>,
}

impl Combination {
    /// One node with weight 1 on every row.
    pub fn of(node: usize, rows: usize) -> Combination {
        Combination {
            terms: vec![(node, vec![1.0; rows])],
        }
    }

    /// self += weight ⊙ other, term by term.
    pub fn add_scaled(&mut self, other: &Combination, weight: &[f64]) {
        for (node, p) in &other.terms {
            self.add_term(*node, p.iter().zip(weight).map(|(a, b)| a * b).collect());
        }
    }

    /// self += p ⊙ node.
    pub fn add_term(&mut self, node: usize, p: Profile) {
        match self.terms.iter_mut().find(|(n, _)| *n == node) {
            Some((_, q)) => q.iter_mut().zip(&p).for_each(|(q, p)| *q += p),
            None => self.terms.push((node, p)),
        }
    }

    /// Σ weightᵢ ⊙ modelᵢ.
    pub fn sum(parts: &[(&Combination, &[f64])]) -> Combination {
        let mut out = Combination::default();
        for (model, weight) in parts {
            out.add_scaled(model, weight);
        }
        out
    }

    /// weight ⊙ self.
    pub fn scaled(&self, weight: &[f64]) -> Combination {
        Combination::sum(&[(self, weight)])
    }

    /// The node, when the combination is one node with weight 1 everywhere.
    pub fn single(&self) -> Option<usize> {
        match self.terms.as_slice() {
            [(node, p)] if p.iter().all(|&c| c == 1.0) => Some(*node),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_merge_in_first_seen_order() {
        let a = Combination {
            terms: vec![(3, vec![1.0, 2.0]), (1, vec![0.5, 0.5])],
        };
        let b = Combination {
            terms: vec![(1, vec![1.0, 1.0]), (7, vec![2.0, 0.0])],
        };
        let s = Combination::sum(&[(&a, &[2.0, 1.0]), (&b, &[-1.0, 0.5])]);
        assert_eq!(
            s.terms,
            vec![
                (3, vec![2.0, 2.0]),
                (1, vec![0.0, 1.0]),
                (7, vec![-2.0, 0.0])
            ]
        );
        assert_eq!(Combination::of(4, 2).single(), Some(4));
        assert_eq!(s.single(), None);
        assert_eq!(a.scaled(&[0.0, 1.0]).terms[0], (3, vec![0.0, 2.0]));
    }
}
