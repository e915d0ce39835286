//! Models in several files read as one checkpoint: diffusers folders and sharded
//! safetensors.

use std::path::Path;

use super::{Checkpoint, ReadError};

/// Whether `path` names a shard index (`*.safetensors.index.json`).
pub fn is_shard_index(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"))
}

pub fn open_folder(_path: &Path) -> Result<Checkpoint, ReadError> {
    Err(ReadError::IsDirectory)
}

pub fn open_sharded(_path: &Path) -> Result<Checkpoint, ReadError> {
    Err(ReadError::IsDirectory)
}
