//! The safetensors format: `u64` header length, JSON header, data region (see [`super::header`]
//! for every check the header passes).

use memmap2::Mmap;

use super::ReadError;
use super::header::{self, Header};
use super::layout::{Layout, Provenance, Source};

/// A checked header and its length.
pub(crate) struct Parsed {
    header_len: u64,
    header: Header,
}

/// Reads and checks the header of a mapped file.
pub(crate) fn parse(map: &[u8]) -> Result<Parsed, ReadError> {
    let file_len = map.len() as u64;
    let n = header::header_len(file_len, &map[..map.len().min(8)])?;
    let data_start = 8 + n as usize;
    let header = header::parse(&map[8..data_start], file_len - data_start as u64)?;
    Ok(Parsed {
        header_len: n,
        header,
    })
}

/// The layout of a mapped safetensors file whose header [`parse`] checked.
pub(crate) fn layout(map: Mmap, parsed: Parsed) -> Layout {
    let data_start = 8 + parsed.header_len as usize;
    let len = map.len() - data_start;
    let header = parsed.header;
    Layout {
        sources: vec![Source::new(map, 0, data_start, len)],
        file: Some(0),
        tensors: header.tensors,
        metadata: header.metadata,
        provenance: Provenance::Safetensors {
            header_len: parsed.header_len,
            gap_bytes: header.gap_bytes,
            metadata_non_string: header.metadata_non_string,
        },
        notes: Vec::new(),
    }
}
