//! Writes safetensors files safely: a temporary file in the target folder, sized up front,
//! filled with positional writes from any thread, synced, then renamed into place.
//!
//! The header is laid out first and deterministically: `__metadata__` in the given order,
//! then tensors ordered like the official writer (largest element size first, then by
//! name), so that data stays aligned and the same inputs give the same bytes. An output path
//! that is one of the inputs is refused before anything is created, and free space is
//! checked before the first byte is written. If the writer is dropped before
//! [`OutputFile::finish`], the temporary file is removed.
//!
//! Producers on many threads hand finished [`Piece`]s to one writer thread through
//! [`stream_pieces`] (concurrent writes to one file contend on its lock). Small outputs
//! (recipes, reports) go through [`write_small`], with the same temporary-file-and-rename.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender};

use serde_json::{Map, Value};
use tempfile::NamedTempFile;
use thiserror::Error;

use ckpt_read::Dtype;
use ckpt_read::dtype;

/// Whether scaled FP8 stores a tensor scaled: a 2-D `.weight` of the denoiser, the weight
/// of a linear layer. ComfyUI's scaled-fp8 operations replace `Linear` only; a conv or a
/// norm stored scaled would load without its scale.
pub fn quantizable(name: &str, shape: &[usize]) -> bool {
    crate::catalog::component_of(name).is_denoiser()
        && name.ends_with(".weight")
        && shape.len() == 2
}

/// Why an output could not be written.
#[derive(Debug, Error)]
pub enum WriteError {
    #[error("'{}' exists", path.display())]
    Exists { path: PathBuf },
    #[error("'{}' is also an input; ckpt-diff never writes over an input", path.display())]
    OutputIsInput { path: PathBuf },
    #[error(
        "not enough free space for '{}': it needs {need} bytes and {free} are free there",
        path.display()
    )]
    NoSpace { path: PathBuf, need: u64, free: u64 },
    #[error("'{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tensor '{name}' is listed twice in the output")]
    DuplicateName { name: String },
}

/// One tensor of the output.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> usize {
        (self.numel() * dtype::bit_size(self.dtype)).div_ceil(8)
    }
}

/// An output file being written.
pub struct OutputFile {
    path: PathBuf,
    temp: NamedTempFile,
    tensors: Vec<TensorSpec>,
    /// Absolute file offset of each tensor's data, indexed like `tensors`.
    offsets: Vec<u64>,
    total_len: u64,
    /// The header as written (to patch fixed-length placeholders later).
    header: Vec<u8>,
    /// Where `header` starts in the file (8 in safetensors, after its length; 0 in GGUF).
    header_at: u64,
    /// Serialises seek-and-write where the platform has no positional write.
    seek: Mutex<()>,
}

impl OutputFile {
    /// Lays out the header, refuses an output that is an input, checks free space, and
    /// creates the sized temporary file next to `path`.
    pub fn create(
        path: &Path,
        tensors: Vec<TensorSpec>,
        metadata: &[(String, String)],
        inputs: &[&Path],
    ) -> Result<OutputFile, WriteError> {
        Self::create_sparse(path, tensors, metadata, inputs, None)
    }

    /// [`OutputFile::create`] for a file whose data is written only in part, the rest left
    /// as the zeros of a sparse file (`synth --zeros`): free space is checked for the header
    /// and `written` data bytes, not for the whole size.
    pub fn create_sparse(
        path: &Path,
        mut tensors: Vec<TensorSpec>,
        metadata: &[(String, String)],
        inputs: &[&Path],
        written: Option<u64>,
    ) -> Result<OutputFile, WriteError> {
        refuse_input(path, inputs)?;
        tensors.sort_by(|a, b| {
            dtype::bit_size(b.dtype)
                .cmp(&dtype::bit_size(a.dtype))
                .then_with(|| a.name.cmp(&b.name))
        });
        if let Some(w) = tensors.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(WriteError::DuplicateName {
                name: w[0].name.clone(),
            });
        }
        let (header, offsets, data_len) = layout(&tensors, metadata);
        let total_len = 8 + header.len() as u64 + data_len;
        // A file being replaced keeps its space until the rename, so it does not count.
        let need = written.map_or(total_len, |w| 8 + header.len() as u64 + w);
        let mut prefix = (header.len() as u64).to_le_bytes().to_vec();
        prefix.extend_from_slice(&header);
        let data_start = prefix.len() as u64;
        let offsets = offsets.into_iter().map(|o| data_start + o).collect();
        Self::create_from(
            path,
            Prefix {
                bytes: prefix,
                header_at: 8,
            },
            tensors,
            offsets,
            total_len,
            need,
        )
    }

    /// An output in another container (GGUF): `prefix` is every byte before the data
    /// region, laid out by the caller; `regions` the tensors in file order, each a name,
    /// its byte length and its offset in the data region (which starts after `prefix`).
    /// The same checks as [`OutputFile::create`]: an input is refused, free space is
    /// checked, and the file is a sized temporary sibling until [`OutputFile::finish`].
    /// [`OutputFile::tensors`] lists each region as `U8` bytes; [`OutputFile::patch_header`]
    /// patches `prefix`.
    pub fn create_raw(
        path: &Path,
        prefix: Vec<u8>,
        regions: Vec<(String, usize, u64)>,
        data_len: u64,
        inputs: &[&Path],
    ) -> Result<OutputFile, WriteError> {
        refuse_input(path, inputs)?;
        let mut names: Vec<&str> = regions.iter().map(|r| r.0.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(WriteError::DuplicateName {
                name: w[0].to_string(),
            });
        }
        let data_start = prefix.len() as u64;
        let total_len = data_start + data_len;
        let offsets = regions.iter().map(|r| data_start + r.2).collect();
        let tensors = regions
            .into_iter()
            .map(|(name, len, _)| TensorSpec {
                name,
                dtype: Dtype::U8,
                shape: vec![len],
            })
            .collect();
        Self::create_from(
            path,
            Prefix {
                bytes: prefix,
                header_at: 0,
            },
            tensors,
            offsets,
            total_len,
            total_len,
        )
    }

    /// Checks free space for `need` bytes, creates the sized temporary file beside `path`
    /// and writes `prefix` at its start.
    fn create_from(
        path: &Path,
        prefix: Prefix,
        tensors: Vec<TensorSpec>,
        offsets: Vec<u64>,
        total_len: u64,
        need: u64,
    ) -> Result<OutputFile, WriteError> {
        let io = |source| WriteError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Some(free) = free_space(&dir)
            && free < need
        {
            return Err(WriteError::NoSpace {
                path: path.to_path_buf(),
                need,
                free,
            });
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(io)?;
        temp.as_file().set_len(total_len).map_err(io)?;
        let seek = Mutex::new(());
        ckpt_read::sys::write_all_at(temp.as_file(), &seek, &prefix.bytes, 0).map_err(io)?;
        let header = prefix.bytes[prefix.header_at as usize..].to_vec();
        Ok(OutputFile {
            path: path.to_path_buf(),
            temp,
            tensors,
            offsets,
            total_len,
            header,
            header_at: prefix.header_at,
            seek,
        })
    }

    /// The tensors in file order.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// The position of a tensor by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Total size of the file being written.
    pub fn len(&self) -> u64 {
        self.total_len
    }

    pub fn is_empty(&self) -> bool {
        self.total_len == 0
    }

    /// Writes `bytes` into tensor `index` starting `byte_offset` bytes into its data.
    /// Safe to call from several threads at once for disjoint ranges.
    pub fn write_tensor_bytes(
        &self,
        index: usize,
        byte_offset: usize,
        bytes: &[u8],
    ) -> Result<(), WriteError> {
        let spec = &self.tensors[index];
        assert!(
            byte_offset + bytes.len() <= spec.byte_len(),
            "write past the end of '{}'",
            spec.name
        );
        ckpt_read::sys::write_all_at(
            self.temp.as_file(),
            &self.seek,
            bytes,
            self.offsets[index] + byte_offset as u64,
        )
        .map_err(|source| WriteError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces every occurrence of `placeholder` in the written header with `value` (same
    /// length, JSON-safe text such as a hex digest). For values known only after the data
    /// is written, like the inputs' SHA-256.
    pub fn patch_header(&mut self, placeholder: &str, value: &str) -> Result<usize, WriteError> {
        assert_eq!(
            placeholder.len(),
            value.len(),
            "a header patch must keep the length"
        );
        let (from, to) = (placeholder.as_bytes(), value.as_bytes());
        let mut count = 0;
        let mut i = 0;
        while let Some(pos) = self.header[i..].windows(from.len()).position(|w| w == from) {
            let at = i + pos;
            self.header[at..at + to.len()].copy_from_slice(to);
            ckpt_read::sys::write_all_at(
                self.temp.as_file(),
                &self.seek,
                to,
                self.header_at + at as u64,
            )
            .map_err(|source| WriteError::Io {
                path: self.path.clone(),
                source,
            })?;
            count += 1;
            i = at + to.len();
        }
        Ok(count)
    }

    /// Syncs the data, makes the file readable like any other (0644 on Unix, not
    /// tempfile's 0600), and renames it into place.
    pub fn finish(self) -> Result<(), WriteError> {
        let io = |source| WriteError::Io {
            path: self.path.clone(),
            source,
        };
        let file: &File = self.temp.as_file();
        file.sync_all().map_err(io)?;
        ckpt_read::sys::make_readable(file).map_err(io)?;
        self.temp.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// The bytes before the data region, and where in them the patchable header starts.
struct Prefix {
    bytes: Vec<u8>,
    header_at: u64,
}

/// Header bytes (padded with spaces to a multiple of 8), data offsets relative to the data
/// region, and the data length.
fn layout(tensors: &[TensorSpec], metadata: &[(String, String)]) -> (Vec<u8>, Vec<u64>, u64) {
    let mut map = Map::new();
    if !metadata.is_empty() {
        let meta: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        map.insert("__metadata__".into(), Value::Object(meta));
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut at = 0u64;
    for t in tensors {
        offsets.push(at);
        let end = at + t.byte_len() as u64;
        let mut entry = Map::new();
        entry.insert("dtype".into(), Value::String(dtype::name(t.dtype)));
        entry.insert("shape".into(), Value::from(t.shape.clone()));
        entry.insert("data_offsets".into(), Value::from(vec![at, end]));
        map.insert(t.name.clone(), Value::Object(entry));
        at = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(map)).expect("JSON of strings and numbers");
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    (header, offsets, at)
}

pub fn refuse_input(path: &Path, inputs: &[&Path]) -> Result<(), WriteError> {
    if inputs
        .iter()
        .any(|input| ckpt_read::sys::same_file(path, input))
    {
        return Err(WriteError::OutputIsInput {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Refuses an output that exists unless it may be replaced: checked before any work, so
/// that a long pass is not lost to it.
pub fn refuse_existing(path: &Path, overwrite: bool) -> Result<(), WriteError> {
    if path.exists() && !overwrite {
        return Err(WriteError::Exists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Bytes available to this user on the file system of `dir`, if the OS says.
fn free_space(dir: &Path) -> Option<u64> {
    ckpt_read::sys::free_space(dir)
}

/// A finished piece of an output: (tensor index in the file, byte offset in its data, bytes).
pub type Piece = (usize, usize, Vec<u8>);

/// Pieces waiting for the writer at most: bounds the memory producers can run ahead with.
const PIECES_IN_FLIGHT: usize = 4;

/// Runs `produce` with a sender of pieces while one writer thread writes them into `out`,
/// in the order they arrive. Returns `produce`'s result, or its error, or else the first
/// write error (the writer keeps draining after an error so that no producer blocks).
pub fn stream_pieces<T, E: From<WriteError>>(
    out: &OutputFile,
    produce: impl FnOnce(SyncSender<Piece>) -> Result<T, E>,
) -> Result<T, E> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(PIECES_IN_FLIGHT);
        let writer = scope.spawn(move || write_pieces(out, rx));
        // `produce` owns the sender: when it returns, the channel closes and the writer ends.
        let produced = produce(tx);
        let written = writer.join().expect("the writer does not panic");
        let value = produced?;
        written?;
        Ok(value)
    })
}

fn write_pieces(out: &OutputFile, pieces: Receiver<Piece>) -> Result<(), WriteError> {
    let mut result = Ok(());
    for (index, offset, bytes) in pieces {
        if result.is_ok() {
            result = out.write_tensor_bytes(index, offset, &bytes);
        }
    }
    result
}

/// Writes a small file (a recipe, a report page) through a temporary sibling and a rename,
/// so that a reader never sees half of it.
pub fn write_small(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    through_sibling(path, false, |mut f: &File| f.write_all(bytes))
}

/// Writes a file of any size through a temporary sibling: `write` streams into it, then it is
/// synced and renamed into place, so an interrupted export leaves the old file (or none).
pub fn write_streamed<T, E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&File) -> Result<T, E>,
) -> Result<T, E> {
    through_sibling(path, true, write)
}

fn through_sibling<T, E: From<std::io::Error>>(
    path: &Path,
    sync: bool,
    write: impl FnOnce(&File) -> Result<T, E>,
) -> Result<T, E> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let out = write(tmp.as_file())?;
    if sync {
        tmp.as_file().sync_all()?;
    }
    ckpt_read::sys::make_readable(tmp.as_file())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_read::Checkpoint;

    #[test]
    fn round_trip_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.safetensors");
        let specs = vec![
            TensorSpec {
                name: "b".into(),
                dtype: Dtype::F16,
                shape: vec![3],
            },
            TensorSpec {
                name: "a".into(),
                dtype: Dtype::I64,
                shape: vec![1, 2],
            },
        ];
        let meta = vec![
            ("z".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
        ];
        let out = OutputFile::create(&path, specs, &meta, &[]).unwrap();
        assert_eq!(out.tensors()[0].name, "a", "8-byte elements first");
        out.write_tensor_bytes(0, 0, &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        out.write_tensor_bytes(1, 2, &[0, 60, 0, 64]).unwrap();
        out.write_tensor_bytes(1, 0, &[0, 0]).unwrap();
        out.finish().unwrap();
        let c = Checkpoint::open(&path).unwrap();
        assert_eq!(c.data(c.get("b").unwrap()), &[0, 0, 0, 60, 0, 64]);
        assert_eq!(c.metadata()[0].0, "z", "metadata keeps its order");
        assert_eq!(c.header_len() % 8, 0);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn raw_prefix_and_regions_land_where_laid_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.gguf");
        let prefix = b"HEADER:pad-to-16".to_vec();
        let regions = vec![("a".to_string(), 3, 0), ("b".to_string(), 2, 32)];
        let mut out = OutputFile::create_raw(&path, prefix.clone(), regions, 34, &[]).unwrap();
        assert_eq!(out.len(), 16 + 34);
        out.write_tensor_bytes(1, 0, &[7, 8]).unwrap();
        out.write_tensor_bytes(0, 0, &[1, 2, 3]).unwrap();
        assert_eq!(out.patch_header("pad", "PAD").unwrap(), 1);
        out.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..16], b"HEADER:PAD-to-16");
        assert_eq!(&bytes[16..19], &[1, 2, 3]);
        assert!(bytes[19..48].iter().all(|&b| b == 0), "zero padding");
        assert_eq!(&bytes[48..50], &[7, 8]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let dup = vec![("a".to_string(), 1, 0), ("a".to_string(), 1, 32)];
        assert!(matches!(
            OutputFile::create_raw(&path, vec![], dup, 33, &[]),
            Err(WriteError::DuplicateName { .. })
        ));
    }

    #[test]
    fn refuses_to_overwrite_an_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.safetensors");
        std::fs::write(&path, b"x").unwrap();
        let alias = dir.path().join(".").join("in.safetensors");
        let e = OutputFile::create(&alias, vec![], &[], &[&path])
            .err()
            .unwrap();
        assert!(matches!(e, WriteError::OutputIsInput { .. }));
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.safetensors");
        let specs = vec![TensorSpec {
            name: "a".into(),
            dtype: Dtype::F32,
            shape: vec![4],
        }];
        drop(OutputFile::create(&path, specs, &[], &[]).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
