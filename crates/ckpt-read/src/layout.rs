//! What every input format hands back: a [`Layout`], the mapped byte regions of one or more
//! files and the tensors that point into them, with the format's own facts kept apart in a
//! [`Provenance`]. [`super::Checkpoint::from_layout`] turns any layout into the one tensor
//! view the rest of ckpt-diff reads.
//!
//! [`assemble`] builds one layout from several (the shards of a sharded model, the files of
//! a folder): each output tensor is a part's tensor under its own or another name, several
//! tensors of a part stacked along the first dimension, or a 2-D tensor transposed. It knows
//! no architecture: what to rename, stack or transpose is the caller's decision.

use std::collections::HashMap;

use memmap2::Mmap;

use super::ReadError;
use super::dtype::{self, Dtype};
use super::pickle;
use super::spill::{Spill, View};
use super::torch;

/// One tensor as a format declares it, offsets already checked against its source.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    /// The name exactly as written in the file.
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the layout's address space (see [`Source`]).
    pub begin: usize,
    pub end: usize,
    /// How the stored values give the tensor's values.
    pub encoding: Encoding,
}

/// How a tensor's stored values give its values: a property of the tensor, whatever the
/// format. Every reader of values decodes through one place (`pass::Slice::values_into`);
/// fast paths that work on stored bytes take [`Encoding::factor`], which only element-wise
/// encodings have.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Encoding {
    /// As the dtype stores them.
    #[default]
    Plain,
    /// The stored values times one factor for the whole tensor: a scaled-fp8 layer's
    /// `scale_weight` (see [`super::quant`]).
    Scaled(f64),
    /// A layer in one of ComfyUI's per-layer formats: codes with per-tensor, per-row or
    /// per-block scales (see [`super::comfy`]). The entry's dtype is that of one code
    /// (`F4` for nvfp4's E2M1 pairs) and its shape the logical one.
    Block(super::comfy::Block),
    /// A GGUF tensor in one of ggml's quantized block types: blocks of codes and their
    /// scales along the rows (see [`super::gguf::dequant`]). The entry's dtype is `U8`
    /// (the stored bytes are blocks, not elements) and its shape the logical one.
    Ggml(super::gguf::GgmlType),
}

impl Encoding {
    /// The factor that turns every stored value into its value, for encodings that are
    /// one (1 for plain tensors); `None` for block encodings, which only
    /// [`super::comfy::Block::decode`] and [`super::gguf::decode_into`] turn into values.
    pub fn factor(self) -> Option<f64> {
        match self {
            Encoding::Plain => Some(1.0),
            Encoding::Scaled(s) => Some(s),
            Encoding::Block(_) | Encoding::Ggml(_) => None,
        }
    }

    /// Whether the stored bytes are codes that only decoding turns into values (a block
    /// encoding: ComfyUI's per-layer formats, ggml's quantized types).
    pub fn needs_decoding(self) -> bool {
        matches!(self, Encoding::Block(_) | Encoding::Ggml(_))
    }

    /// The elements a work item must start on (a multiple of it): a block encoding's
    /// alignment, a ggml block; 1 for element-wise encodings.
    pub fn alignment(self) -> usize {
        match self {
            Encoding::Block(b) => b.alignment(),
            Encoding::Ggml(t) => t.block_size(),
            Encoding::Plain | Encoding::Scaled(_) => 1,
        }
    }

    /// Whether the stored values are the values.
    pub fn is_plain(self) -> bool {
        self == Encoding::Plain
    }

    /// The block encoding, if the tensor has one.
    pub fn block(self) -> Option<super::comfy::Block> {
        match self {
            Encoding::Block(b) => Some(b),
            _ => None,
        }
    }
}

impl TensorEntry {
    /// Number of elements (1 for a scalar, 0 for an empty tensor).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of bytes in the data region.
    pub fn byte_len(&self) -> usize {
        self.end - self.begin
    }

    /// Whether its values are floats ckpt-diff computes with: a float dtype, or codes a
    /// block encoding turns into floats.
    pub fn is_float(&self) -> bool {
        self.encoding.needs_decoding() || super::dtype::float_format(self.dtype).is_some()
    }

    /// The byte range, relative to the tensor's data, of elements `start..end`.
    pub fn byte_range(&self, start: usize, end: usize) -> (usize, usize) {
        match self.encoding {
            Encoding::Block(b) => b.code_range(start, end),
            Encoding::Ggml(t) => super::gguf::byte_range(t, start, end),
            _ => {
                let bits = super::dtype::bit_size(self.dtype);
                (start * bits / 8, end * bits / 8)
            }
        }
    }
}

/// A mapped byte region tensors point into. Tensor offsets ([`TensorEntry::begin`]) are
/// positions in one address space that the sources tile, so a checkpoint made of several
/// files (or with tensors copied to a spill file) keeps the one-slice view of a tensor.
pub(crate) struct Source {
    pub(super) map: Mmap,
    /// Where the region starts in the tensors' address space.
    pub(super) at: usize,
    /// Where the region starts in `map`.
    pub(super) start: usize,
    pub(super) len: usize,
}

impl Source {
    /// The region `start..start + len` of `map`, at address `at`.
    pub(super) fn new(map: Mmap, at: usize, start: usize, len: usize) -> Source {
        Source {
            map,
            at,
            start,
            len,
        }
    }

    /// The bytes of `t`, which lies in this source.
    pub(super) fn bytes_of(&self, t: &TensorEntry) -> &[u8] {
        let from = self.start + (t.begin - self.at);
        &self.map[from..from + t.byte_len()]
    }
}

/// The facts only one format has.
#[derive(Clone, Debug)]
pub enum Provenance {
    /// A safetensors file.
    Safetensors {
        /// Size of the JSON header (the `N` of the length prefix).
        header_len: u64,
        /// Bytes of the data region that no tensor covers.
        gap_bytes: u64,
        /// `__metadata__` keys whose values were not strings (the format requires strings).
        metadata_non_string: Vec<String>,
    },
    /// A torch zip (`PREFIX/data.pkl`) or legacy pickle checkpoint.
    Torch(PickleInfo),
    /// A sharded model (`*.index.json` and its parts).
    Sharded,
    /// Several files put together by a reader one layer up (`kind`: a diffusers folder).
    Assembled { kind: &'static str },
    /// A GGUF file: its version, alignment, KVs and the ggml type of each tensor.
    Gguf(Box<super::gguf::GgufInfo>),
}

impl Provenance {
    /// The kind of input, as reports name it: `safetensors`, `torch-zip`, `torch-legacy`,
    /// `sharded`, `diffusers`, `gguf`.
    pub fn id(&self) -> &'static str {
        match self {
            Provenance::Safetensors { .. } => "safetensors",
            Provenance::Torch(p) => p.container.id(),
            Provenance::Sharded => "sharded",
            Provenance::Assembled { kind } => kind,
            Provenance::Gguf(_) => "gguf",
        }
    }

    /// Whether the input is one file whose bytes are the model (so file hashes apply).
    pub fn is_one_file(&self) -> bool {
        matches!(
            self,
            Provenance::Safetensors { .. } | Provenance::Torch(_) | Provenance::Gguf(_)
        )
    }
}

/// What the pickle of a torch checkpoint held besides tensors.
#[derive(Clone, Debug)]
pub struct PickleInfo {
    pub container: torch::Container,
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

/// An input as its format module reads it: where its bytes are, its tensors, its metadata.
pub struct Layout {
    pub(super) sources: Vec<Source>,
    /// The source that is the whole input file, for file hashes (single-file inputs).
    pub(super) file: Option<usize>,
    /// Tensors in the order of their data offsets.
    pub tensors: Vec<TensorEntry>,
    /// Metadata entries in file order.
    pub metadata: Vec<(String, String)>,
    pub provenance: Provenance,
    /// How the input was put together (files read, tensors renamed or left out).
    pub notes: Vec<String>,
}

impl Layout {
    /// The source holding address `at`.
    pub(super) fn source_of(&self, at: usize) -> &Source {
        source_of(&self.sources, at)
    }

    /// The bytes of one of this layout's tensors.
    pub fn data(&self, t: &TensorEntry) -> &[u8] {
        self.source_of(t.begin).bytes_of(t)
    }

    /// The end of the address space the sources cover.
    fn end(&self) -> usize {
        self.sources.iter().map(|s| s.at + s.len).max().unwrap_or(0)
    }
}

/// The source of `sources` (sorted by address) holding address `at`.
pub(super) fn source_of(sources: &[Source], at: usize) -> &Source {
    let i = sources.partition_point(|s| s.at <= at).saturating_sub(1);
    &sources[i]
}

/// One tensor of an assembled layout, taken from the part `part` of its inputs.
pub enum Piece {
    /// A part's tensor under another name (and shape, with the same element count), read
    /// in place.
    Same {
        part: usize,
        name: String,
        as_name: String,
        shape: Option<Vec<usize>>,
    },
    /// Several tensors of a part, of one dtype and the same shape after the first
    /// dimension, stacked along the first dimension (copied once).
    Stack {
        part: usize,
        names: Vec<String>,
        as_name: String,
    },
    /// A part's 2-D tensor transposed (copied once).
    Transpose {
        part: usize,
        name: String,
        as_name: String,
    },
    /// A part's tensor with the two halves of its first dimension swapped (copied once):
    /// diffusers stores some modulations as (shift, scale) where the original has (scale,
    /// shift).
    SwapHalves {
        part: usize,
        name: String,
        as_name: String,
    },
}

/// Builds one layout from `parts` and the tensors `pieces` take from them. Tensors copied
/// (stacked, transposed) go once to an unnamed temporary file (see [`super::spill`]); the
/// others are read in place. The result has no metadata and no file of its own.
pub fn assemble(
    parts: Vec<Layout>,
    pieces: Vec<Piece>,
    provenance: Provenance,
    notes: Vec<String>,
) -> Result<Layout, ReadError> {
    // Every part's sources, shifted so that the address spaces follow each other.
    let mut shift = Vec::with_capacity(parts.len());
    let mut at = 0usize;
    for p in &parts {
        shift.push(at);
        at += p.end();
    }
    let index: Vec<HashMap<&str, &TensorEntry>> = parts
        .iter()
        .map(|p| p.tensors.iter().map(|t| (t.name.as_str(), t)).collect())
        .collect();
    let tensor = |part: usize, name: &str| -> Result<&TensorEntry, ReadError> {
        index[part]
            .get(name)
            .copied()
            .ok_or_else(|| ReadError::NotInPart { name: name.into() })
    };
    let mut spill = Spill::new(at);
    let mut tensors: Vec<TensorEntry> = Vec::with_capacity(pieces.len());
    let mut seen: HashMap<String, ()> = HashMap::new();
    for piece in &pieces {
        let entry = match piece {
            Piece::Same {
                part,
                name,
                as_name,
                shape,
            } => {
                let t = tensor(*part, name)?;
                if let Some(s) = shape
                    && s.iter().product::<usize>() != t.numel()
                {
                    return Err(ReadError::CannotReshape {
                        name: name.clone(),
                        shape: s.clone(),
                    });
                }
                TensorEntry {
                    name: as_name.clone(),
                    dtype: t.dtype,
                    shape: shape.clone().unwrap_or_else(|| t.shape.clone()),
                    begin: t.begin + shift[*part],
                    end: t.end + shift[*part],
                    encoding: t.encoding,
                }
            }
            Piece::Stack {
                part,
                names,
                as_name,
            } => {
                let ts = names
                    .iter()
                    .map(|n| tensor(*part, n))
                    .collect::<Result<Vec<_>, _>>()?;
                let first = ts[0];
                let same = ts.iter().all(|t| {
                    t.dtype == first.dtype
                        && !t.shape.is_empty()
                        && t.shape[1..] == first.shape.get(1..).unwrap_or(&[])[..]
                });
                if !same || first.shape.is_empty() {
                    return Err(ReadError::CannotStack {
                        names: names.join(", "),
                    });
                }
                let begin = spill.append(parts[*part].data(ts[0]))?;
                for t in &ts[1..] {
                    spill.append(parts[*part].data(t))?;
                }
                let mut shape = first.shape.clone();
                shape[0] = ts.iter().map(|t| t.shape[0]).sum();
                let bytes = ts.iter().map(|t| t.byte_len()).sum::<usize>();
                TensorEntry {
                    name: as_name.clone(),
                    dtype: first.dtype,
                    shape,
                    begin,
                    end: begin + bytes,
                    encoding: Encoding::Plain,
                }
            }
            Piece::Transpose {
                part,
                name,
                as_name,
            } => {
                let t = tensor(*part, name)?;
                if t.shape.len() != 2 {
                    return Err(ReadError::NotAMatrix { name: name.clone() });
                }
                let esize = dtype::bit_size(t.dtype) / 8;
                let (rows, cols) = (t.shape[0], t.shape[1]);
                let begin = spill.gather(&View {
                    bytes: parts[*part].data(t),
                    esize,
                    shape: &[cols, rows],
                    stride: &[1, cols],
                    offset: 0,
                    swap: false,
                })?;
                TensorEntry {
                    name: as_name.clone(),
                    dtype: t.dtype,
                    shape: vec![cols, rows],
                    begin,
                    end: begin + t.byte_len(),
                    encoding: Encoding::Plain,
                }
            }
            Piece::SwapHalves {
                part,
                name,
                as_name,
            } => {
                let t = tensor(*part, name)?;
                let rows = t.shape.first().copied().unwrap_or(0);
                if rows % 2 != 0 {
                    return Err(ReadError::CannotSwapHalves { name: name.clone() });
                }
                let bytes = parts[*part].data(t);
                let half = bytes.len() / 2;
                let begin = spill.append(&bytes[half..])?;
                spill.append(&bytes[..half])?;
                TensorEntry {
                    name: as_name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    begin,
                    end: begin + t.byte_len(),
                    encoding: Encoding::Plain,
                }
            }
        };
        if seen.insert(entry.name.clone(), ()).is_some() {
            return Err(ReadError::TwoMapToOne { name: entry.name });
        }
        tensors.push(entry);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    let mut sources: Vec<Source> = Vec::new();
    for (p, s) in parts.into_iter().zip(&shift) {
        for mut src in p.sources {
            src.at += s;
            sources.push(src);
        }
    }
    spill.finish_into(&mut sources)?;
    sources.sort_by_key(|s| s.at);
    Ok(Layout {
        sources,
        file: None,
        tensors,
        metadata: Vec::new(),
        provenance,
        notes,
    })
}
