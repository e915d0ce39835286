//! Sharded models: a `*.index.json` whose `weight_map` names, for each tensor, the part file
//! holding it. The parts are read by their own format modules and routed into one layout
//! (see [`super::layout::assemble`]); nothing here knows what the tensors are.

use std::path::{Path, PathBuf};

use super::layout::{self, Layout, Piece, Provenance};
use super::{FileError, ReadError};

/// Whether `path` names a shard index (`*.safetensors.index.json`).
pub(crate) fn is_shard_index(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"))
}

/// The shard index in a folder: its only `*.index.json`.
pub(crate) fn index_in(dir: &Path) -> Result<PathBuf, ReadError> {
    let mut indexes: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_shard_index(p))
        .collect();
    match indexes.len() {
        1 => Ok(indexes.remove(0)),
        0 => Err(ReadError::IsDirectory),
        _ => Err(ReadError::SeveralShardIndexes),
    }
}

/// The layout of a sharded model, from its index.
pub(crate) fn layout(index: &Path) -> Result<Layout, ReadError> {
    let paths = parts(index)?;
    let parts = paths
        .iter()
        .map(|p| {
            super::file_layout(p).map_err(|kind| {
                ReadError::Part(Box::new(FileError {
                    path: p.clone(),
                    kind,
                }))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pieces = parts
        .iter()
        .enumerate()
        .flat_map(|(part, l)| {
            l.tensors.iter().map(move |t| Piece::Same {
                part,
                name: t.name.clone(),
                as_name: t.name.clone(),
                shape: None,
            })
        })
        .collect();
    let notes = vec![format!(
        "{} shards listed by {}",
        paths.len(),
        index.display()
    )];
    layout::assemble(parts, pieces, Provenance::Sharded, notes)
}

/// The part files an index names, in order, each once.
fn parts(index: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let text = std::fs::read_to_string(index)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ReadError::ShardIndexNotJson {
            reason: e.to_string(),
        })?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(ReadError::ShardIndexNoWeightMap);
    };
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut parts: Vec<PathBuf> = Vec::new();
    for file in map.values() {
        let Some(f) = file.as_str() else {
            return Err(ReadError::ShardIndexBadEntry);
        };
        // A part is a file beside the index, never a path elsewhere.
        if f.contains('/') || f.contains('\\') || f == ".." {
            return Err(ReadError::ShardPartElsewhere { name: f.into() });
        }
        let p = dir.join(f);
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    if parts.is_empty() {
        return Err(ReadError::ShardIndexEmpty);
    }
    Ok(parts)
}
