//! Memory-mapped safetensors files with zero-copy tensor views.
//!
//! [`Checkpoint::open`] maps a file, refuses pickles and other containers by their magic
//! bytes, and checks the whole header (see [`header`]) before handing out any view.
//! Tensor bytes are returned as `&[u8]` slices of the mapping, in the file's little-endian
//! layout and with no alignment promise: the kernels read them with unaligned loads.
//!
//! ```no_run
//! let ckpt = ckpt_diff::reader::Checkpoint::open("model.safetensors")?;
//! for t in ckpt.tensors() {
//!     println!("{} {:?} {} bytes", t.name, t.shape, ckpt.data(t).len());
//! }
//! # Ok::<(), ckpt_diff::reader::FileError>(())
//! ```

pub mod diffusers;
pub mod dtype;
pub mod header;
pub mod pickle;
pub mod quant;
pub mod sniff;
mod spill;
pub mod torch;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use thiserror::Error;

pub use dtype::Dtype;
pub use header::TensorEntry;
use sniff::Sniffed;

/// What is wrong with a file, without its path (see [`FileError`]).
#[derive(Debug, Error)]
pub enum ReadError {
    // Displayed, not chained: the CLI prints the whole chain, which would repeat it.
    #[error("{0}")]
    Io(std::io::Error),
    #[error("this is a directory, not a checkpoint file")]
    IsDirectory,
    #[error("this PyTorch checkpoint is unreadable: {0}")]
    Torch(#[from] torch::TorchError),
    #[error("{0}")]
    Folder(String),
    #[error("this is a GGUF file, not safetensors")]
    Gguf,
    #[error("the file is {len} bytes long, too short for a safetensors file")]
    TooShort { len: u64 },
    #[error(
        "the header length field says {len} bytes, more than the {limit} allowed: the file \
         is not safetensors, or its first 8 bytes are damaged"
    )]
    HeaderTooLarge { len: u64, limit: u64 },
    #[error(
        "the header length field says {header_len} bytes but the file is only {file_len} \
         bytes long: the file is truncated, or not safetensors"
    )]
    HeaderPastEnd { header_len: u64, file_len: u64 },
    #[error("the header is not valid UTF-8 (at byte {offset})")]
    HeaderNotUtf8 { offset: u64 },
    #[error("the header is not valid JSON: {reason}")]
    HeaderNotJson { reason: String },
    #[error("the header names tensor '{name}' twice")]
    DuplicateName { name: String },
    #[error("the header's __metadata__ is not a JSON object")]
    BadMetadata,
    #[error("tensor '{name}' has a malformed header entry: {reason}")]
    BadTensorEntry { name: String, reason: String },
    #[error("tensor '{name}' has dtype '{dtype}', which the safetensors format does not define")]
    UnknownDtype { name: String, dtype: String },
    #[error("tensor '{name}' has data offsets [{begin}, {end}] that run backwards")]
    BadOffsets { name: String, begin: u64, end: u64 },
    #[error(
        "tensor '{name}' ends at byte {end} of the data region, which holds only {data_len} \
         bytes: the file is truncated"
    )]
    OffsetsPastEnd {
        name: String,
        end: u64,
        data_len: u64,
    },
    #[error(
        "tensor '{name}' is {dtype} with shape {shape:?}, which needs {expected} bytes, but its \
         offsets span {actual}"
    )]
    SizeMismatch {
        name: String,
        dtype: Dtype,
        shape: Vec<usize>,
        expected: u64,
        actual: u64,
    },
    #[error("tensor '{name}' has a shape whose size overflows")]
    ShapeOverflow { name: String },
    #[error("tensors '{first}' and '{second}' share bytes (overlapping data offsets)")]
    Overlap { first: String, second: String },
    #[error(
        "this file is quantized with bitsandbytes {format} (4-bit codes in uint8 blocks with \
         per-block scales), which ckpt-diff cannot compute with"
    )]
    Bitsandbytes { format: &'static str },
    #[error("the scaled-fp8 scale '{name}' is unusable: {reason}")]
    BadScale { name: String, reason: String },
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl ReadError {
    /// A sentence that tells the user what to do about it, when there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ReadError::Torch(_) => Some(
                "download or copy the file again; if it loads in PyTorch, please report it with \
                 the message above",
            ),
            ReadError::TooShort { .. }
            | ReadError::HeaderPastEnd { .. }
            | ReadError::OffsetsPastEnd { .. } => {
                Some("download or copy the file again; an interrupted transfer leaves it short")
            }
            ReadError::Gguf => Some("ckpt-diff reads .safetensors checkpoints only"),
            ReadError::Bitsandbytes { .. } => Some(
                "use the model's bf16, fp16 or fp8 release instead (or dequantize the file with \
                 bitsandbytes first); 4-bit blocks cannot be merged or compared weight by weight",
            ),
            _ => None,
        }
    }
}

/// A [`ReadError`] with the file it happened in.
#[derive(Debug, Error)]
#[error("'{}': {kind}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    /// Displayed as part of this error (not chained, so the message says it once).
    pub kind: ReadError,
}

/// Any file, memory-mapped read-only and not parsed: for hashing files whatever they are
/// (Civitai and A1111 hash pickles too; hashing never unpickles).
pub struct RawFile {
    path: PathBuf,
    map: Option<Mmap>,
}

impl RawFile {
    pub fn open(path: impl AsRef<Path>) -> Result<RawFile, FileError> {
        let path = path.as_ref();
        let wrap = |kind: ReadError| FileError {
            path: path.to_path_buf(),
            kind,
        };
        let file = File::open(path).map_err(|e| wrap(e.into()))?;
        let meta = file.metadata().map_err(|e| wrap(e.into()))?;
        if meta.is_dir() {
            return Err(wrap(ReadError::IsDirectory));
        }
        // An empty file cannot be mapped; it hashes as no bytes.
        let map = if meta.len() == 0 {
            None
        } else {
            Some(map_file(&file).map_err(|e| wrap(e.into()))?)
        };
        Ok(RawFile {
            path: path.to_path_buf(),
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// As [`Checkpoint::release`].
    pub fn release(&self, start: u64, end: u64) {
        if let Some(map) = &self.map {
            crate::sys::release_pages(map, start, end);
        }
    }
}

/// The kind of input a [`Checkpoint`] was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Container {
    Safetensors,
    /// A torch zip (`PREFIX/data.pkl`) or legacy pickle checkpoint.
    Torch(torch::Container),
    /// A diffusers folder (`model_index.json`, `unet/`, `text_encoder/`, `vae/`).
    Diffusers,
    /// A sharded safetensors model (`*.safetensors.index.json` and its parts).
    Sharded,
}

impl Container {
    pub fn id(&self) -> &'static str {
        match self {
            Container::Safetensors => "safetensors",
            Container::Torch(t) => t.id(),
            Container::Diffusers => "diffusers",
            Container::Sharded => "sharded",
        }
    }

    /// Whether the input is one file whose bytes are the model (so file hashes apply).
    pub fn is_one_file(&self) -> bool {
        matches!(self, Container::Safetensors | Container::Torch(_))
    }
}

/// What the pickle of a torch checkpoint held besides tensors.
#[derive(Clone, Debug, Default)]
pub struct PickleInfo {
    /// The pickle member or stream the offsets below count in.
    pub stream: String,
    pub globals: Vec<pickle::GlobalUse>,
    /// Top-level entries outside the state dict (optimizer states, callbacks, ...).
    pub other: Vec<torch::OtherEntry>,
    /// Where the state dict sat ("" for the top level).
    pub state_dict_at: String,
    pub big_endian: bool,
    /// Tensors copied out of place (non-contiguous views, big-endian or compressed storages).
    pub copied: usize,
}

impl PickleInfo {
    pub fn dangerous(&self) -> impl Iterator<Item = &pickle::GlobalUse> {
        self.globals
            .iter()
            .filter(|g| g.verdict == pickle::Verdict::Dangerous)
    }
}

/// A mapped byte region tensors point into. Tensor offsets ([`TensorEntry::begin`]) are
/// positions in one address space that the sources tile, so a checkpoint made of several
/// files (or with tensors copied to a spill file) keeps the one-slice view of a tensor.
struct Source {
    map: Mmap,
    /// Where the region starts in the tensors' address space.
    at: usize,
    /// Where the region starts in `map`.
    start: usize,
    len: usize,
}

/// An open, checked checkpoint: a safetensors file, a torch checkpoint, a diffusers folder
/// or a sharded model, behind one tensor view.
pub struct Checkpoint {
    path: PathBuf,
    container: Container,
    sources: Vec<Source>,
    /// The whole input file, for file hashes (single-file inputs only).
    file: Option<usize>,
    data_start: usize,
    header: header::Header,
    index: HashMap<String, usize>,
    /// The scaled-fp8 bookkeeping taken out of `header.tensors`, if the file is scaled.
    scaled_fp8: Option<quant::ScaledFp8>,
    pickle: Option<PickleInfo>,
    /// Notes on how a folder or sharded model was assembled.
    notes: Vec<String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("container", &self.container)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens and checks `path`: a safetensors file, a torch checkpoint (never executed), a
    /// diffusers folder, or a sharded model's folder or `*.index.json`. Nothing is read
    /// beyond headers and pickles until a view is used, except tensors that cannot be used in
    /// place (see [`PickleInfo::copied`]), which are copied once to an unnamed temporary file.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, FileError> {
        let path = path.as_ref();
        Self::open_inner(path).map_err(|kind| FileError {
            path: path.to_path_buf(),
            kind,
        })
    }

    fn open_inner(path: &Path) -> Result<Checkpoint, ReadError> {
        if path.is_dir() {
            return diffusers::open_folder(path);
        }
        if diffusers::is_shard_index(path) {
            return diffusers::open_sharded(path);
        }
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let file_len = meta.len();
        if file_len < 8 {
            return Err(ReadError::TooShort { len: file_len });
        }
        let map = map_file(&file)?;

        match sniff::sniff(&map[..map.len().min(16)]) {
            Sniffed::TorchZip => return Self::open_torch(path, map, true),
            Sniffed::Pickle => return Self::open_torch(path, map, false),
            Sniffed::Gguf => return Err(ReadError::Gguf),
            Sniffed::Other => {}
        }
        let parsed = header::header_len(file_len, &map[..8]).and_then(|n| {
            let data_start = 8 + n as usize;
            let header = header::parse(&map[8..data_start], file_len - data_start as u64)?;
            Ok((data_start, header))
        });
        let (data_start, header) = match parsed {
            Ok(parsed) => parsed,
            // The extension says pickle and the bytes are not safetensors: say that, not
            // "bad JSON". Protocols 0 and 1 have no magic bytes to sniff.
            Err(_) if sniff::has_pickle_extension(path) => {
                return Self::open_torch(path, map, false);
            }
            Err(e) => return Err(e),
        };
        let len = map.len() - data_start;
        let sources = vec![Source {
            map,
            at: 0,
            start: data_start,
            len,
        }];
        Self::assemble(
            path,
            Container::Safetensors,
            sources,
            Some(0),
            data_start,
            header,
        )
    }

    /// Builds the checkpoint from its sources: checks quantization, splits scaled fp8.
    fn assemble(
        path: &Path,
        container: Container,
        sources: Vec<Source>,
        file: Option<usize>,
        data_start: usize,
        mut header: header::Header,
    ) -> Result<Checkpoint, ReadError> {
        if let Some(format) = quant::bitsandbytes(&header) {
            return Err(ReadError::Bitsandbytes { format });
        }
        let mut ckpt = Checkpoint {
            path: path.to_path_buf(),
            container,
            sources,
            file,
            data_start,
            header: header::Header::default(),
            index: HashMap::new(),
            scaled_fp8: None,
            pickle: None,
            notes: Vec::new(),
        };
        // The scale split reads scale tensors through the one view.
        let scaled = {
            let c = &ckpt;
            let view = move |t: &TensorEntry| -> &[u8] { c.data(t) };
            quant::split_scaled_fp8(&mut header, &view)
        };
        ckpt.scaled_fp8 = scaled.map_err(|quant::QuantProblem::BadScale { name, reason }| {
            ReadError::BadScale { name, reason }
        })?;
        ckpt.index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        ckpt.header = header;
        Ok(ckpt)
    }

    fn open_torch(path: &Path, map: Mmap, zip: bool) -> Result<Checkpoint, ReadError> {
        let t = torch::read(&map, zip)?;
        let file_len = map.len();
        let mut spill = spill::Spill::new(file_len);
        let mut tensors = Vec::with_capacity(t.tensors.len());
        let mut copied = 0;
        // Compressed storages are decompressed once each, for the tensors that use them.
        let mut decompressed: HashMap<usize, Vec<u8>> = HashMap::new();
        for tensor in &t.tensors {
            let storage = &t.storages[tensor.storage];
            let esize = dtype::bit_size(tensor.dtype) / 8;
            let bytes = tensor.numel() * esize;
            let in_place = match &storage.bytes {
                torch::StorageBytes::InPlace { begin, .. }
                    if tensor.is_contiguous() && (!t.big_endian || esize == 1) =>
                {
                    Some(begin + tensor.offset * esize)
                }
                _ => None,
            };
            let begin = match in_place {
                Some(b) => b,
                None => {
                    copied += 1;
                    let src: &[u8] = match &storage.bytes {
                        torch::StorageBytes::InPlace { begin, len } => &map[*begin..begin + len],
                        torch::StorageBytes::Compressed { member, len } => {
                            if let std::collections::hash_map::Entry::Vacant(e) =
                                decompressed.entry(tensor.storage)
                            {
                                e.insert(torch::decompress(&map, member, *len)?);
                            }
                            &decompressed[&tensor.storage]
                        }
                    };
                    spill.gather(&spill::View {
                        bytes: src,
                        esize,
                        shape: &tensor.shape,
                        stride: &tensor.stride,
                        offset: tensor.offset,
                        swap: t.big_endian,
                    })?
                }
            };
            tensors.push(TensorEntry {
                name: tensor.name.clone(),
                dtype: tensor.dtype,
                shape: tensor.shape.clone(),
                begin,
                end: begin + bytes,
                scale: None,
            });
        }
        drop(decompressed);
        tensors.sort_by_key(|t| (t.begin, t.end));
        let mut header = header::Header {
            tensors,
            ..Default::default()
        };
        for (k, v) in &t.metadata {
            header.metadata.push((format!("ckpt_diff.{k}"), v.clone()));
        }
        let mut sources = vec![Source {
            map,
            at: 0,
            start: 0,
            len: file_len,
        }];
        spill.finish_into(&mut sources)?;
        let stream = match &t.container {
            torch::Container::Zip { pickle } => pickle.clone(),
            torch::Container::Legacy => "the file".to_string(),
        };
        let mut ckpt = Self::assemble(
            path,
            Container::Torch(t.container),
            sources,
            Some(0),
            0,
            header,
        )?;
        ckpt.pickle = Some(PickleInfo {
            stream,
            globals: t.globals,
            other: t.other,
            state_dict_at: t.state_dict_at,
            big_endian: t.big_endian,
            copied,
        });
        Ok(ckpt)
    }

    /// The path the file was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file name, for tables and messages.
    pub fn display_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// What kind of input this is.
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// For a torch checkpoint: the globals its pickle names and what else it held.
    pub fn pickle(&self) -> Option<&PickleInfo> {
        self.pickle.as_ref()
    }

    /// How a folder or sharded model was put together (files read, tensors renamed).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The scaled-fp8 bookkeeping (marker and scale tensors), when the file is scaled. Its
    /// tensors are not in [`Checkpoint::tensors`]: their scales are on the weights.
    pub fn scaled_fp8(&self) -> Option<&quant::ScaledFp8> {
        self.scaled_fp8.as_ref()
    }

    /// Tensors in the order of their data offsets (the order to read them in); for a
    /// scaled-fp8 file, its weights with their scales, without the marker and the scales.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.header.tensors
    }

    /// The tensor named `name` exactly as written in the file.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.header.tensors[i])
    }

    fn source_of(&self, at: usize) -> &Source {
        let i = self
            .sources
            .partition_point(|s| s.at <= at)
            .saturating_sub(1);
        &self.sources[i]
    }

    /// The bytes of a tensor of this file (zero-copy, unaligned, little-endian).
    pub fn data(&self, t: &TensorEntry) -> &[u8] {
        let s = self.source_of(t.begin);
        let from = s.start + (t.begin - s.at);
        &s.map[from..from + (t.end - t.begin)]
    }

    /// `__metadata__` entries in file order (for a torch checkpoint, its scalar top-level
    /// entries such as `epoch` and `global_step`, as `ckpt_diff.*`).
    pub fn metadata(&self) -> &[(String, String)] {
        &self.header.metadata
    }

    /// One metadata value.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.header
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Metadata keys whose values were not strings (the format requires strings).
    pub fn metadata_non_string(&self) -> &[String] {
        &self.header.metadata_non_string
    }

    /// Bytes of the data region that no tensor covers (safetensors files).
    pub fn gap_bytes(&self) -> u64 {
        self.header.gap_bytes
    }

    /// Size of the input in bytes (all files of a folder or sharded model).
    pub fn file_len(&self) -> u64 {
        match self.file {
            Some(i) => self.sources[i].map.len() as u64,
            None => self.sources.iter().map(|s| s.len as u64).sum(),
        }
    }

    /// Size of the JSON header (the `N` of the length prefix); 0 for other containers.
    pub fn header_len(&self) -> u64 {
        (self.data_start as u64).saturating_sub(8)
    }

    /// Offset of the data region in the file (`8 + N`); 0 for other containers.
    pub fn data_start(&self) -> u64 {
        self.data_start as u64
    }

    /// The whole file, for hashing; empty for folders and sharded models, which are not one
    /// file.
    pub fn bytes(&self) -> &[u8] {
        match self.file {
            Some(i) => &self.sources[i].map,
            None => &[],
        }
    }

    /// Tells the kernel this process is done with the file bytes `start..end` for now:
    /// their page-table entries go, the pages stay in the page cache, and a later read maps
    /// them again. Keeps resident memory bounded in long passes. Only whole pages inside
    /// the range are released.
    pub fn release(&self, start: u64, end: u64) {
        if let Some(i) = self.file {
            crate::sys::release_pages(&self.sources[i].map, start, end);
        }
    }

    /// As [`Checkpoint::release`], for the bytes `start..end` of tensor `t`'s data.
    pub fn release_tensor(&self, t: &TensorEntry, start: usize, end: usize) {
        let s = self.source_of(t.begin);
        let from = (s.start + (t.begin - s.at)) as u64;
        crate::sys::release_pages(&s.map, from + start as u64, from + end as u64);
    }
}

/// Maps a whole file read-only, advised for one sequential read (see
/// [`crate::sys::advise_sequential`]). The crate's only `Mmap::map`.
fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only and private to this process. The one hazard is
    // another process truncating or rewriting the file while it is mapped: reads then see
    // the new bytes or fault with SIGBUS. ckpt-diff never writes to an input (the writer
    // refuses an output path equal to an input), and users are told not to edit files while
    // a command runs.
    let map = unsafe { Mmap::map(file)? };
    crate::sys::advise_sequential(&map);
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(bytes: &[u8], ext: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("f.{ext}"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        (dir, path)
    }

    fn file_with_header(h: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn test_reads_unaligned_views() {
        // A 7-byte header puts the data at offset 15: views must not assume alignment.
        let h = r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
        let h = format!("{h} ");
        let bytes = file_with_header(&h, &[0, 60, 0, 64]);
        let (_d, p) = write(&bytes, "safetensors");
        let c = Checkpoint::open(&p).unwrap();
        let t = c.get("a").unwrap();
        assert_eq!(c.data(t), &[0, 60, 0, 64]);
    }

    #[test]
    fn test_damaged_torch_zip_and_foreign_pickle_are_errors() {
        let (_d, p) = write(
            b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl",
            "ckpt",
        );
        let e = Checkpoint::open(&p).unwrap_err();
        assert!(matches!(e.kind, ReadError::Torch(_)), "{e}");
        assert!(e.to_string().contains("zip"), "{e}");
        // A pickle of something else than a torch checkpoint: never executed, refused.
        let (_d, p) = write(b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s.", "pkl");
        let e = Checkpoint::open(&p).unwrap_err();
        assert!(e.to_string().contains("not a torch checkpoint"), "{e}");
    }

    #[test]
    fn test_truncated_file() {
        let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let bytes = file_with_header(h, &[0u8; 10]);
        let (_d, p) = write(&bytes, "safetensors");
        let e = Checkpoint::open(&p).unwrap_err();
        assert!(matches!(e.kind, ReadError::OffsetsPastEnd { .. }), "{e}");
    }

    #[test]
    fn test_header_too_large() {
        let mut bytes = (u64::MAX / 2).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let (_d, p) = write(&bytes, "safetensors");
        let e = Checkpoint::open(&p).unwrap_err();
        assert!(matches!(e.kind, ReadError::HeaderTooLarge { .. }));
    }

    #[test]
    fn test_missing_file_names_path() {
        let e = Checkpoint::open("/nonexistent/x.safetensors").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.safetensors"));
    }
}
