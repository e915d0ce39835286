//! Tensors that cannot be viewed in place (a non-contiguous torch view, a big-endian or
//! compressed storage, a diffusers tensor that the single-file layout fuses or transposes)
//! are written once, contiguous and little-endian, to an unnamed temporary file, which is
//! then memory-mapped like an input. Anonymous memory stays bounded: the copy lives in the
//! page cache, and the operating system deletes the file when the checkpoint is dropped.

use std::io::{BufWriter, Write};

use memmap2::Mmap;

use super::ReadError;

/// A strided view of elements in `bytes`, as torch describes a tensor.
pub(crate) struct View<'a> {
    pub bytes: &'a [u8],
    /// Bytes per element.
    pub esize: usize,
    pub shape: &'a [usize],
    /// Strides and offset in elements (bounds already checked).
    pub stride: &'a [usize],
    pub offset: usize,
    /// Swap the bytes of each element (big-endian storage).
    pub swap: bool,
}

pub(crate) struct Spill {
    /// Where the spill starts in the checkpoint's tensor address space.
    at: usize,
    out: Option<BufWriter<std::fs::File>>,
    written: usize,
}

impl Spill {
    /// A spill whose bytes will follow address `at` (past every other source).
    pub(crate) fn new(at: usize) -> Spill {
        Spill {
            at,
            out: None,
            written: 0,
        }
    }

    fn writer(&mut self) -> Result<&mut BufWriter<std::fs::File>, ReadError> {
        if self.out.is_none() {
            self.out = Some(BufWriter::with_capacity(1 << 20, tempfile::tempfile()?));
        }
        Ok(self.out.as_mut().expect("just made"))
    }

    /// Appends the view's elements in row-major order; returns their address.
    pub(crate) fn gather(&mut self, v: &View<'_>) -> Result<usize, ReadError> {
        let begin = self.at + self.written;
        let numel: usize = v.shape.iter().product();
        if numel == 0 {
            return Ok(begin);
        }
        let out = self.writer()?;
        let dims = v.shape.len();
        // Rows along the last dimension are runs when its stride is 1.
        let (row_len, row_stride) = match dims {
            0 => (1, 1),
            _ => (v.shape[dims - 1], v.stride[dims - 1]),
        };
        let outer = dims.saturating_sub(1);
        let mut index = vec![0usize; outer];
        let mut row = vec![0u8; row_len * v.esize];
        loop {
            let base = v.offset
                + index
                    .iter()
                    .zip(v.stride)
                    .map(|(&i, &s)| i * s)
                    .sum::<usize>();
            if row_stride == 1 {
                row.copy_from_slice(&v.bytes[base * v.esize..(base + row_len) * v.esize]);
            } else {
                for j in 0..row_len {
                    let at = (base + j * row_stride) * v.esize;
                    row[j * v.esize..(j + 1) * v.esize].copy_from_slice(&v.bytes[at..at + v.esize]);
                }
            }
            if v.swap {
                for e in row.chunks_exact_mut(v.esize) {
                    e.reverse();
                }
            }
            out.write_all(&row)?;
            // Next index of the outer dimensions, last fastest.
            let mut d = outer;
            loop {
                if d == 0 {
                    self.written += numel * v.esize;
                    return Ok(begin);
                }
                d -= 1;
                index[d] += 1;
                if index[d] < v.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
    }

    /// Appends bytes as they are; returns their address.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<usize, ReadError> {
        let begin = self.at + self.written;
        if !bytes.is_empty() {
            self.writer()?.write_all(bytes)?;
            self.written += bytes.len();
        }
        Ok(begin)
    }

    /// Maps what was written (if anything) and adds it to `sources`, at its address.
    pub(super) fn finish_into(
        self,
        sources: &mut Vec<super::layout::Source>,
    ) -> Result<(), ReadError> {
        if let Some((at, map)) = self.finish()? {
            let len = map.len();
            sources.push(super::layout::Source::new(map, at, 0, len));
        }
        Ok(())
    }

    /// The spill's address and mapping, if anything was written.
    pub(crate) fn finish(self) -> Result<Option<(usize, Mmap)>, ReadError> {
        let Some(out) = self.out else {
            return Ok(None);
        };
        if self.written == 0 {
            return Ok(None);
        }
        let file = out
            .into_inner()
            .map_err(|e| ReadError::Io(e.into_error()))?;
        // The file is unnamed, private to this process and never written again.
        let map = super::map_file(&file)?;
        Ok(Some((self.at, map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(v: View<'_>) -> Vec<u8> {
        let mut s = Spill::new(100);
        assert_eq!(s.gather(&v).unwrap(), 100);
        let (at, map) = s.finish().unwrap().unwrap();
        assert_eq!(at, 100);
        map.to_vec()
    }

    #[test]
    fn test_transpose_and_swap() {
        // A 2x3 row-major matrix of u16 0..6, viewed transposed (3x2, strides (1, 3)).
        let bytes: Vec<u8> = (0u16..6).flat_map(|x| x.to_le_bytes()).collect();
        let t = gathered(View {
            bytes: &bytes,
            esize: 2,
            shape: &[3, 2],
            stride: &[1, 3],
            offset: 0,
            swap: false,
        });
        let got: Vec<u16> = t
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(got, [0, 3, 1, 4, 2, 5]);
        // An offset view of one row, byte-swapped.
        let t = gathered(View {
            bytes: &bytes,
            esize: 2,
            shape: &[3],
            stride: &[1],
            offset: 3,
            swap: true,
        });
        let got: Vec<u16> = t
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(got, [3, 4, 5]);
    }
}
