//! The safetensors header, parsed as hostile input.
//!
//! Layout: `u64 little-endian N`, then `N` bytes of UTF-8 JSON, then the data region.
//! Each JSON entry is either `__metadata__` (string to string) or a tensor
//! `{"dtype": .., "shape": [..], "data_offsets": [begin, end]}` with offsets relative to
//! the data region. Every check below happens before a single tensor byte is touched:
//! bounds on the length, UTF-8, JSON, duplicate names, known dtypes, overflow-free sizes,
//! offsets inside the data region, byte lengths equal to shape x dtype size, and no two
//! tensors sharing bytes.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::ReadError;
use super::dtype;
pub use super::layout::TensorEntry;

/// Largest header accepted, the same bound as the safetensors crate (100 MB). Real SDXL
/// headers are about 300 KB.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// A parsed, checked header.
#[derive(Debug, Default)]
pub struct Header {
    /// Tensors in the order of their data offsets.
    pub tensors: Vec<TensorEntry>,
    /// `__metadata__` entries in file order. Non-string values are kept as their JSON text
    /// and listed in [`Header::metadata_non_string`].
    pub metadata: Vec<(String, String)>,
    pub metadata_non_string: Vec<String>,
    /// Bytes of the data region that no tensor covers (allowed, but worth a warning).
    pub gap_bytes: u64,
}

/// Reads the length prefix; checks it against the file size and [`MAX_HEADER_LEN`].
pub fn header_len(file_len: u64, first8: &[u8]) -> Result<u64, ReadError> {
    if file_len < 8 || first8.len() < 8 {
        return Err(ReadError::TooShort { len: file_len });
    }
    let n = u64::from_le_bytes(first8[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_LEN {
        return Err(ReadError::HeaderTooLarge {
            len: n,
            limit: MAX_HEADER_LEN,
        });
    }
    if 8 + n > file_len {
        return Err(ReadError::HeaderPastEnd {
            header_len: n,
            file_len,
        });
    }
    if n < 2 {
        return Err(ReadError::HeaderNotJson {
            reason: "the header is empty".into(),
        });
    }
    Ok(n)
}

/// Parses and checks the header bytes. `data_len` is the size of the data region.
pub fn parse(bytes: &[u8], data_len: u64) -> Result<Header, ReadError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ReadError::HeaderNotUtf8 {
        offset: 8 + e.valid_up_to() as u64,
    })?;
    // Writers pad the header with spaces (and some with NULs); JSON allows the spaces only.
    let trimmed = text.trim_end_matches(['\0', ' ']);
    let entries = parse_entries(trimmed)?;

    let mut header = Header::default();
    let mut seen = HashSet::with_capacity(entries.len());
    for (name, value) in entries {
        if !seen.insert(name.clone()) {
            return Err(ReadError::DuplicateName { name });
        }
        if name == "__metadata__" {
            read_metadata(value, &mut header)?;
            continue;
        }
        header.tensors.push(read_tensor(name, value, data_len)?);
    }

    header.tensors.sort_by_key(|t| (t.begin, t.end));
    let mut covered_until = 0usize;
    let mut previous: Option<&TensorEntry> = None;
    let mut covered = 0u64;
    for t in &header.tensors {
        if t.byte_len() == 0 {
            continue;
        }
        if let Some(p) = previous
            && t.begin < covered_until
        {
            return Err(ReadError::Overlap {
                first: p.name.clone(),
                second: t.name.clone(),
            });
        }
        covered += t.byte_len() as u64;
        covered_until = t.end;
        previous = Some(t);
    }
    header.gap_bytes = data_len - covered;
    Ok(header)
}

fn read_metadata(value: Value, header: &mut Header) -> Result<(), ReadError> {
    let Value::Object(map) = value else {
        return Err(ReadError::BadMetadata);
    };
    for (k, v) in map {
        match v {
            Value::String(s) => header.metadata.push((k, s)),
            other => {
                header.metadata_non_string.push(k.clone());
                header.metadata.push((k, other.to_string()));
            }
        }
    }
    Ok(())
}

fn read_tensor(name: String, value: Value, data_len: u64) -> Result<TensorEntry, ReadError> {
    let bad = |reason: &str| ReadError::BadTensorEntry {
        name: name.clone(),
        reason: reason.into(),
    };
    let Value::Object(map) = value else {
        return Err(bad("the entry is not a JSON object"));
    };
    let dtype_name = map
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no \"dtype\""))?;
    let dtype = dtype::parse(dtype_name).ok_or_else(|| ReadError::UnknownDtype {
        name: name.clone(),
        dtype: dtype_name.into(),
    })?;
    let shape = map
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"shape\" list"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad("\"shape\" holds something other than non-negative integers"))?;
    let offsets = map
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"data_offsets\" pair"))?;
    let [begin, end] = offsets.as_slice() else {
        return Err(bad("\"data_offsets\" is not a [begin, end] pair"));
    };
    let (Some(begin), Some(end)) = (begin.as_u64(), end.as_u64()) else {
        return Err(bad(
            "\"data_offsets\" holds something other than non-negative integers",
        ));
    };
    if begin > end {
        return Err(ReadError::BadOffsets { name, begin, end });
    }
    if end > data_len {
        return Err(ReadError::OffsetsPastEnd {
            name,
            end,
            data_len,
        });
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ReadError::ShapeOverflow { name: name.clone() })?;
    let bits = numel
        .checked_mul(dtype::bit_size(dtype))
        .ok_or_else(|| ReadError::ShapeOverflow { name: name.clone() })?;
    let expected = bits.div_ceil(8) as u64;
    if bits % 8 != 0 || expected != end - begin {
        return Err(ReadError::SizeMismatch {
            name,
            dtype,
            shape,
            expected,
            actual: end - begin,
        });
    }
    // Both fit in usize: end <= data_len <= file length, which was mapped.
    Ok(TensorEntry {
        name,
        dtype,
        shape,
        begin: begin as usize,
        end: end as usize,
        encoding: Default::default(),
    })
}

/// Parses the top-level JSON object into its entries in file order, keeping duplicates
/// (serde_json's maps would silently keep only the last one).
fn parse_entries(text: &str) -> Result<Vec<(String, Value)>, ReadError> {
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object of tensors")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some((k, v)) = map.next_entry::<String, Value>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let entries = de
        .deserialize_map(Entries)
        .map_err(|e| ReadError::HeaderNotJson {
            reason: e.to_string(),
        })?;
    de.end().map_err(|e| ReadError::HeaderNotJson {
        reason: e.to_string(),
    })?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str, data_len: u64) -> Result<Header, ReadError> {
        parse(s.as_bytes(), data_len)
    }

    /// Each malformed header is refused with its own error.
    #[test]
    fn malformed_headers_are_refused() {
        type Is = fn(&ReadError) -> bool;
        let cases: [(&str, u64, Is); 6] = [
            (
                r#"{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},
                   "a":{"dtype":"F16","shape":[1],"data_offsets":[2,4]}}"#,
                4,
                |e| matches!(e, ReadError::DuplicateName { .. }),
            ),
            (
                r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},
                   "b":{"dtype":"F16","shape":[2],"data_offsets":[2,6]}}"#,
                6,
                |e| matches!(e, ReadError::Overlap { .. }),
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                4,
                |e| matches!(e, ReadError::SizeMismatch { expected: 8, .. }),
            ),
            (
                r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#,
                3,
                |e| matches!(e, ReadError::OffsetsPastEnd { .. }),
            ),
            (
                r#"{"a":{"dtype":"F16","shape":[4294967296,4294967296,4],"data_offsets":[0,4]}}"#,
                4,
                |e| matches!(e, ReadError::ShapeOverflow { .. }),
            ),
            (
                r#"{"a":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,4]}}"#,
                4,
                |e| matches!(e, ReadError::UnknownDtype { .. }),
            ),
        ];
        for (h, len, is) in cases {
            match parse_str(h, len) {
                Err(e) => assert!(is(&e), "{h}: {e}"),
                Ok(_) => panic!("{h} was accepted"),
            }
        }
    }

    #[test]
    fn test_gaps_are_counted_not_refused() {
        let h = r#"{"__metadata__":{"format":"pt","n":3},
                   "b":{"dtype":"F16","shape":[1],"data_offsets":[4,6]},
                   "a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},
                   "e":{"dtype":"F16","shape":[0],"data_offsets":[2,2]}}"#;
        let header = parse_str(h, 6).unwrap();
        assert_eq!(header.gap_bytes, 2);
        assert_eq!(header.tensors[0].name, "a");
        assert_eq!(header.metadata_non_string, vec!["n".to_string()]);
        assert_eq!(header.metadata[1], ("n".into(), "3".into()));
    }

    #[test]
    fn test_json_attack() {
        // Deep nesting must give an error, not a stack overflow.
        let deep = "[".repeat(100_000);
        let h = format!(r#"{{"a":{deep}}}"#);
        assert!(matches!(
            parse_str(&h, 0),
            Err(ReadError::HeaderNotJson { .. })
        ));
    }
}
