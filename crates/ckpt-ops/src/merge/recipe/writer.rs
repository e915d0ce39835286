//! Recipe text that ckpt-diff writes itself (`merge ws`/`merge ad`, the recipes `fit`
//! finds): model names made from file names, unique, and paths quoted so that `merge` reads
//! them back as written.

use std::path::{Path, PathBuf};

/// A path that cannot be written into a recipe.
#[derive(Debug, thiserror::Error)]
pub enum QuoteError {
    #[error("'{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{}' is not UTF-8, which a recipe needs", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("'{path}': paths with '\"' cannot go in a recipe")]
    Quote { path: String },
}

/// A recipe name for a model file: its stem with every character a name cannot hold made
/// `_`, prefixed `m_` when it would not start a name or would be the operator `x`. Not
/// unique: callers add their own suffixes.
fn name_for_file(path: &std::path::Path) -> String {
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

/// Names for the models of one recipe: each from its file's stem, made unique with `_2`,
/// `_3`, ... against the names already given and the words the recipe uses for itself.
#[derive(Clone, Debug, Default)]
pub struct Names {
    taken: Vec<String>,
}

impl Names {
    /// Names that avoid `reserved` (the recipe's own step and parameter names).
    pub fn reserving(reserved: &[&str]) -> Names {
        Names {
            taken: reserved.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A new name for the model in `path`.
    pub fn for_file(&mut self, path: &Path) -> String {
        let stem = name_for_file(path);
        let mut name = stem.clone();
        let mut k = 2;
        while self.taken.contains(&name) || is_step_name(&name) {
            name = format!("{stem}_{k}");
            k += 1;
        }
        self.taken.push(name.clone());
        name
    }
}

/// `S1`, `S2`, ...: the names `fit` gives its steps.
fn is_step_name(name: &str) -> bool {
    name.strip_prefix('S')
        .is_some_and(|n| !n.is_empty() && n.parse::<usize>().is_ok())
}

/// `path` as a quoted recipe string. With `dir` (the recipe's folder, canonical), relative
/// to it when they share a folder within two levels up, so that a recipe and its models can
/// move together; otherwise absolute, so the recipe stands alone (also in metadata).
pub fn quote_path(path: &Path, dir: Option<&Path>) -> Result<String, QuoteError> {
    let io = |source| QuoteError::Io {
        path: path.to_path_buf(),
        source,
    };
    let written = match dir {
        Some(dir) => {
            let abs = std::fs::canonicalize(path).map_err(io)?;
            relative(&abs, dir).unwrap_or(abs)
        }
        None => std::path::absolute(path).map_err(io)?,
    };
    let s = written.to_str().ok_or_else(|| QuoteError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    if s.contains('"') {
        return Err(QuoteError::Quote {
            path: s.to_string(),
        });
    }
    Ok(format!("\"{s}\""))
}

/// `path` relative to `dir` (both canonical), through at most two `..`.
fn relative(path: &Path, dir: &Path) -> Option<PathBuf> {
    let common = path
        .components()
        .zip(dir.components())
        .take_while(|(a, b)| a == b)
        .count();
    let up = dir.components().count() - common;
    if common <= 1 || up > 2 {
        return None;
    }
    let mut out = PathBuf::new();
    (0..up).for_each(|_| out.push(".."));
    path.components().skip(common).for_each(|c| out.push(c));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_unique() {
        let mut n = Names::reserving(&["OUT", "alpha"]);
        assert_eq!(
            n.for_file(Path::new("/m/v1-5 pruned.safetensors")),
            "v1_5_pruned"
        );
        assert_eq!(
            n.for_file(Path::new("/n/v1-5 pruned.ckpt")),
            "v1_5_pruned_2"
        );
        assert_eq!(n.for_file(Path::new("OUT.safetensors")), "OUT_2");
        assert_eq!(n.for_file(Path::new("2girls.safetensors")), "m_2girls");
        assert_eq!(n.for_file(Path::new("x.safetensors")), "m_x");
        assert_eq!(n.for_file(Path::new("S3.safetensors")), "S3_2");
        // Every name parses back as a name.
        for name in n.taken {
            assert!(super::super::is_name(&name), "{name}");
        }
    }

    #[test]
    fn paths_are_quoted_relative_or_absolute() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("models/sd")).unwrap();
        std::fs::create_dir_all(root.join("recipes")).unwrap();
        let m = root.join("models/sd/a.safetensors");
        std::fs::write(&m, b"").unwrap();
        let q = quote_path(&m, Some(&root.join("recipes"))).unwrap();
        assert_eq!(q, "\"../models/sd/a.safetensors\"");
        let q = quote_path(&m, None).unwrap();
        assert_eq!(q, format!("\"{}\"", m.display()));
        let bad = root.join("a\"b.safetensors");
        std::fs::write(&bad, b"").unwrap();
        assert!(matches!(
            quote_path(&bad, None),
            Err(QuoteError::Quote { .. })
        ));
    }
}
