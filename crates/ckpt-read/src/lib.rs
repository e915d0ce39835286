//! Checkpoints as one zero-copy tensor view, whatever the format: safetensors files,
//! PyTorch zip and legacy pickles (read by an interpreter that executes nothing), and
//! sharded models. This crate knows no model architecture.
//!
//! [`open`] picks the format by its magic bytes ([`file_layout`]); each format module
//! returns a [`Layout`] and [`Checkpoint::from_layout`] is the only constructor. GGUF files
//! (city96's and stable-diffusion.cpp's) are read too, their quantized tensors decoded as
//! gguf-py decodes them ([`gguf`]). Containers it cannot read faithfully (bitsandbytes
//! 4-bit, nunchaku) are refused with their format named, and every header is checked whole (see [`header`]) before any view is handed out.
//! Tensor bytes are returned as `&[u8]` slices of the mapping, in the file's little-endian
//! layout and with no alignment promise: the kernels read them with unaligned loads.
//!
//! ```no_run
//! let ckpt = ckpt_read::Checkpoint::open("model.safetensors")?;
//! for t in ckpt.tensors() {
//!     println!("{} {:?} {} bytes", t.name, t.shape, ckpt.data(t).len());
//! }
//! # Ok::<(), ckpt_read::FileError>(())
//! ```

pub mod comfy;
pub mod dtype;
pub mod env;
pub mod gguf;
pub mod header;
pub(crate) mod layout;
pub mod pickle;
pub mod quant;
pub(crate) mod safetensors;
pub(crate) mod sharded;
pub(crate) mod sniff;
mod spill;
pub mod sys;
pub mod torch;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use thiserror::Error;

pub use dtype::Dtype;
use layout::Source;
pub use layout::{Encoding, Layout, PickleInfo, Piece, Provenance, TensorEntry, assemble};
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
    #[error("the shard index is not valid JSON: {reason}")]
    ShardIndexNotJson { reason: String },
    #[error("the shard index has no \"weight_map\" object")]
    ShardIndexNoWeightMap,
    #[error("a weight_map value is not a file name")]
    ShardIndexBadEntry,
    #[error("the shard index names '{name}', not a file beside it")]
    ShardPartElsewhere { name: String },
    #[error("the shard index lists no tensors")]
    ShardIndexEmpty,
    #[error("the folder holds several *.index.json files: name the one to read")]
    SeveralShardIndexes,
    /// A file of a model made of several (a shard, a component of a folder).
    #[error("{0}")]
    Part(Box<FileError>),
    #[error("tensor '{name}' is not in its file")]
    NotInPart { name: String },
    #[error("tensor '{name}' cannot take shape {shape:?}")]
    CannotReshape { name: String, shape: Vec<usize> },
    #[error("{names} do not have one dtype and shape, so they cannot be fused")]
    CannotStack { names: String },
    #[error("tensor '{name}' is not a matrix")]
    NotAMatrix { name: String },
    #[error("tensor '{name}' has an odd first dimension: its halves cannot be swapped")]
    CannotSwapHalves { name: String },
    #[error("two tensors of the folder map to '{name}'")]
    TwoMapToOne { name: String },
    #[error("this GGUF file is unreadable: {0}")]
    Gguf(#[from] gguf::GgufError),
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
    #[error("this file is quantized per layer as ComfyUI stores it, and {0}")]
    Comfy(#[from] comfy::ComfyError),
    #[error(
        "this file is quantized by nunchaku (SVDQuant: 4-bit codes with a low-rank branch and \
         smoothing), which ckpt-diff cannot compute with"
    )]
    Nunchaku,
    #[error(
        "tensor '{name}' is quantization state ({what}), not a weight, and no rule ckpt-diff \
         knows decodes it: reading it as a weight would give wrong numbers"
    )]
    QuantState { name: String, what: &'static str },
    #[error("the scaled-fp8 scale '{name}' is unusable: {reason}")]
    BadScale {
        name: String,
        reason: quant::BadScale,
    },
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
            ReadError::Gguf(e) => Some(e.hint()),
            ReadError::Comfy(_) => Some(
                "if ComfyUI loads this file, please report it with the message above; otherwise \
                 the file is damaged: download it again or use the model's bf16 release",
            ),
            ReadError::Nunchaku | ReadError::QuantState { .. } => Some(
                "use the model's bf16, fp16, fp8 or ComfyUI-quantized release instead; \
                 ckpt-diff refuses what it cannot read exactly rather than guess",
            ),
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

/// An open, checked checkpoint: a safetensors file, a torch checkpoint, a sharded model,
/// or any other [`Layout`], behind one tensor view.
pub struct Checkpoint {
    path: PathBuf,
    layout: Layout,
    index: HashMap<String, usize>,
    /// The scaled-fp8 bookkeeping taken out of the tensors, if the file is scaled.
    scaled_fp8: Option<quant::ScaledFp8>,
    /// ComfyUI's per-layer quantization taken out of the tensors, if the file has it.
    comfy: Option<comfy::ComfyQuant>,
    /// The tensors' names as the layer above reads them, derived once
    /// ([`Checkpoint::derived_names`]).
    derived_names: std::sync::OnceLock<Vec<String>>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("provenance", &self.layout.provenance.id())
            .field("tensors", &self.layout.tensors.len())
            .finish()
    }
}

/// Opens and checks `path`: a safetensors file, a torch checkpoint (never executed), or a
/// sharded model's folder or `*.index.json`. Nothing is read beyond headers and pickles
/// until a view is used, except tensors that cannot be used in place (see
/// [`PickleInfo::copied`]), which are copied once to an unnamed temporary file.
pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, FileError> {
    let path = path.as_ref();
    let wrap = |kind| FileError {
        path: path.to_path_buf(),
        kind,
    };
    let layout = if path.is_dir() {
        sharded::index_in(path).and_then(|index| sharded::layout(&index))
    } else if sharded::is_shard_index(path) {
        sharded::layout(path)
    } else {
        file_layout(path)
    };
    Checkpoint::from_layout(path, layout.map_err(wrap)?).map_err(wrap)
}

/// The layout of one file, by what its first bytes say it is: the format dispatch.
pub fn file_layout(path: &Path) -> Result<Layout, ReadError> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    if file_len < 8 {
        return Err(ReadError::TooShort { len: file_len });
    }
    let map = map_file(&file)?;
    match sniff::sniff(&map[..map.len().min(16)]) {
        Sniffed::TorchZip => torch::layout(map, true),
        Sniffed::Pickle => torch::layout(map, false),
        Sniffed::Gguf => {
            let info = gguf::container::parse(&map)?;
            gguf::container::layout(map, info)
        }
        Sniffed::Other => match safetensors::parse(&map) {
            Ok(parsed) => Ok(safetensors::layout(map, parsed)),
            // The extension says pickle and the bytes are not safetensors: say that, not
            // "bad JSON". Protocols 0 and 1 have no magic bytes to sniff.
            Err(_) if sniff::has_pickle_extension(path) => torch::layout(map, false),
            Err(e) => Err(e),
        },
    }
}

impl Checkpoint {
    /// [`open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, FileError> {
        open(path)
    }

    /// The checkpoint of a layout read from `path`: checks its quantization (refusing what
    /// cannot be read exactly) and attaches scaled-fp8 scales to their weights.
    pub fn from_layout(path: &Path, mut layout: Layout) -> Result<Checkpoint, ReadError> {
        if let Some(format) = quant::bitsandbytes(&layout.tensors) {
            return Err(ReadError::Bitsandbytes { format });
        }
        if quant::nunchaku(&layout.tensors, &layout.metadata) {
            return Err(ReadError::Nunchaku);
        }
        let (comfy, scaled_fp8) = {
            let sources = &layout.sources;
            let view =
                move |t: &TensorEntry| -> &[u8] { layout::source_of(sources, t.begin).bytes_of(t) };
            let comfy = comfy::apply(&mut layout.tensors, &layout.metadata, &view)?;
            let scaled = quant::split_scaled_fp8(&mut layout.tensors, &view).map_err(
                |quant::QuantProblem::BadScale { name, reason }| ReadError::BadScale {
                    name,
                    reason,
                },
            )?;
            (comfy, scaled)
        };
        // Whatever still names quantization state is read by no rule: refuse it.
        if let Some((name, what)) = quant::quant_state(&layout.tensors) {
            return Err(ReadError::QuantState {
                name: name.to_string(),
                what,
            });
        }
        let index = layout
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            layout,
            index,
            scaled_fp8,
            comfy,
            derived_names: std::sync::OnceLock::new(),
        })
    }

    /// Each tensor's name as a layer above reads it, in tensor order: computed by `derive`
    /// on the first call and kept with the checkpoint, so that every caller of one opened
    /// file shares one computation. The reader knows no model: the names are ckpt-core's
    /// canonical keys (`ckpt_core::catalog::keys_of`, the one caller, which detection, key
    /// checks, the pass's plan and `inspect` all go through). A checkpoint's tensors never
    /// change once opened, so the names never go stale; later calls ignore `derive`.
    ///
    /// # Panics
    /// When `derive` does not return one name per tensor.
    pub fn derived_names(&self, derive: impl FnOnce(&[TensorEntry]) -> Vec<String>) -> &[String] {
        self.derived_names.get_or_init(|| {
            let names = derive(&self.layout.tensors);
            assert_eq!(
                names.len(),
                self.layout.tensors.len(),
                "one derived name per tensor"
            );
            names
        })
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

    /// What kind of input this is, with the facts only its format has.
    pub fn provenance(&self) -> &Provenance {
        &self.layout.provenance
    }

    /// For a torch checkpoint: the globals its pickle names and what else it held.
    pub fn pickle(&self) -> Option<&PickleInfo> {
        match &self.layout.provenance {
            Provenance::Torch(p) => Some(p),
            _ => None,
        }
    }

    /// For a GGUF file: its version, alignment, KVs and each tensor's ggml type.
    pub fn gguf(&self) -> Option<&gguf::GgufInfo> {
        match &self.layout.provenance {
            Provenance::Gguf(info) => Some(info),
            _ => None,
        }
    }

    /// How a folder or sharded model was put together (files read, tensors renamed).
    pub fn notes(&self) -> &[String] {
        &self.layout.notes
    }

    /// The scaled-fp8 bookkeeping (marker and scale tensors), when the file is scaled. Its
    /// tensors are not in [`Checkpoint::tensors`]: their scales are on the weights.
    pub fn scaled_fp8(&self) -> Option<&quant::ScaledFp8> {
        self.scaled_fp8.as_ref()
    }

    /// ComfyUI's per-layer quantization (its layers and the bookkeeping tensors taken out of
    /// [`Checkpoint::tensors`]: their scales are on the weights' encodings).
    pub fn comfy_quant(&self) -> Option<&comfy::ComfyQuant> {
        self.comfy.as_ref()
    }

    /// Tensors in the order of their data offsets (the order to read them in); for a
    /// scaled-fp8 file, its weights with their scales, without the marker and the scales.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.layout.tensors
    }

    /// The tensor named `name` exactly as written in the file.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.layout.tensors[i])
    }

    fn source_of(&self, at: usize) -> &Source {
        self.layout.source_of(at)
    }

    /// The bytes of a tensor of this file (zero-copy, unaligned, little-endian).
    pub fn data(&self, t: &TensorEntry) -> &[u8] {
        self.source_of(t.begin).bytes_of(t)
    }

    /// The bytes of the address range `begin..end` (the range a [`comfy::Block`] names
    /// for its scales), which one source holds.
    pub fn bytes_at(&self, begin: usize, end: usize) -> &[u8] {
        let s = self.source_of(begin);
        let from = s.start + (begin - s.at);
        &s.map[from..from + (end - begin)]
    }

    /// Metadata entries in file order (safetensors' `__metadata__`; for a torch checkpoint,
    /// its scalar top-level entries such as `epoch` and `global_step`, as `ckpt_diff.*`).
    pub fn metadata(&self) -> &[(String, String)] {
        &self.layout.metadata
    }

    /// One metadata value.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.layout
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Metadata keys whose values were not strings (the format requires strings).
    pub fn metadata_non_string(&self) -> &[String] {
        match &self.layout.provenance {
            Provenance::Safetensors {
                metadata_non_string,
                ..
            } => metadata_non_string,
            _ => &[],
        }
    }

    /// Bytes of the data region that no tensor covers (safetensors files).
    pub fn gap_bytes(&self) -> u64 {
        match self.layout.provenance {
            Provenance::Safetensors { gap_bytes, .. } => gap_bytes,
            _ => 0,
        }
    }

    /// Size of the JSON header (the `N` of the length prefix); 0 for other formats.
    pub fn header_len(&self) -> u64 {
        match self.layout.provenance {
            Provenance::Safetensors { header_len, .. } => header_len,
            _ => 0,
        }
    }

    /// Size of the input in bytes (all files of a folder or sharded model).
    pub fn file_len(&self) -> u64 {
        match self.layout.file {
            Some(i) => self.layout.sources[i].map.len() as u64,
            None => self.layout.sources.iter().map(|s| s.len as u64).sum(),
        }
    }

    /// The whole file, for hashing; empty for folders and sharded models, which are not one
    /// file.
    pub fn bytes(&self) -> &[u8] {
        match self.layout.file {
            Some(i) => &self.layout.sources[i].map,
            None => &[],
        }
    }

    /// Tells the kernel this process is done with the file bytes `start..end` for now:
    /// their page-table entries go, the pages stay in the page cache, and a later read maps
    /// them again. Keeps resident memory bounded in long passes. Only whole pages inside
    /// the range are released.
    pub fn release(&self, start: u64, end: u64) {
        if let Some(i) = self.layout.file {
            crate::sys::release_pages(&self.layout.sources[i].map, start, end);
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
// The crate's one `Mmap::map`, with its SAFETY note below.
#[allow(unsafe_code)]
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
    fn derived_names_are_computed_once_per_checkpoint() {
        let h = r#"{"b":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"a":{"dtype":"F16","shape":[1],"data_offsets":[2,4]}}"#;
        let (_d, p) = write(&file_with_header(h, &[0; 4]), "safetensors");
        let c = Checkpoint::open(&p).unwrap();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let derive = |t: &[TensorEntry]| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.iter().map(|t| format!("x.{}", t.name)).collect()
        };
        let first = c.derived_names(derive);
        assert_eq!(first, ["x.b", "x.a"], "in tensor order");
        let again = c.derived_names(|_| unreachable!("kept from the first call"));
        assert!(std::ptr::eq(first, again));
        assert_eq!(calls.into_inner(), 1);
        // Another opening of the same file derives its own.
        let other = Checkpoint::open(&p).unwrap();
        assert_eq!(
            other.derived_names(|t| vec![String::new(); t.len()]),
            ["", ""]
        );
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
