//! File hashes as the A1111 web UI and Civitai compute them.
//!
//! | name | bytes hashed | algorithm | shown as |
//! |---|---|---|---|
//! | AutoV1 | the 64 KiB at offset 1 MiB | SHA-256 | 8 hex; Civitai: undefined under 2 MiB |
//! | A1111 legacy | the same range, whatever the file size | SHA-256 | 8 hex |
//! | SHA256 | the whole file | SHA-256 | 64 hex |
//! | AutoV2 | the whole file | SHA-256 | first 10 hex |
//! | AutoV3 | after the `8 + N` header bytes (`N`: the u64 at offset 0) | SHA-256 | 12 hex (64 in JSON) |
//! | BLAKE3 | the whole file | BLAKE3 | 64 hex |
//! | CRC32 | the whole file | CRC-32 (IEEE) | 8 hex of the little-endian bytes (Civitai's order) |
//!
//! Civitai prints hex in upper case, A1111 in lower case. [`file_hashes`] maps the file
//! once and runs one thread per algorithm over the mapping, so the file is read once and the
//! time is that of the slowest algorithm (SHA-256, twice: whole file and AutoV3).
//!
//! Full-file SHA-256 of a multi-GB checkpoint takes seconds: a merge keeps its inputs'
//! digests in its caller's [`crate::cache::Cache`].

use sha2::{Digest, Sha256};

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Every file hash of one file (lowercase hex; Civitai shows them upper case).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileHashes {
    pub bytes: u64,
    /// Civitai's AutoV1; `None` for files under 2 MiB, where Civitai does not define it.
    pub autov1: Option<String>,
    /// A1111's legacy hash (same range, defined for any size).
    pub a1111_legacy: String,
    pub sha256: String,
    pub autov2: String,
    /// AutoV3, all 64 hex digits (Civitai and A1111 show the first 12).
    pub autov3: Option<String>,
    /// The offset AutoV3 hashes from: `8 + N`, or 8 when `N` is 16 MiB or more (Civitai's
    /// scanner then hashes from offset 8, e.g. for pickles).
    pub autov3_from: u64,
    pub blake3: String,
    /// CRC-32 as Civitai prints it: the checksum's little-endian bytes in hex.
    pub crc32: String,
}

/// Where AutoV3 starts hashing in `file`, as Civitai's scanner decides.
pub fn autov3_start(file: &[u8]) -> Option<u64> {
    let n = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    Some(if n >= 16 << 20 {
        8
    } else {
        (8 + n).min(file.len() as u64)
    })
}

/// Computes every file hash in one read of `file`, one thread per algorithm. `progress`
/// sees the bytes of the whole-file SHA-256 (the slowest).
pub fn file_hashes(
    file: &ckpt_read::RawFile,
    progress: &dyn ckpt_core::pass::Progress,
) -> FileHashes {
    let data = file.bytes();
    let len = data.len();
    let v3_from = autov3_start(data);
    let release = ckpt_core::pass::reads_past_memory(len as u64);
    const STEP: usize = 64 << 20;
    progress.start(len as u64);
    let (sha, v3, b3, crc) = std::thread::scope(|scope| {
        let sha = scope.spawn(|| {
            let mut h = Sha256::new();
            for (i, chunk) in data.chunks(STEP).enumerate() {
                h.update(chunk);
                progress.advance(chunk.len() as u64);
                if release && i >= 2 {
                    // The slowest reader hands back pages two steps behind it; a thread still
                    // reading them maps them again from the page cache.
                    file.release(((i - 2) * STEP) as u64, ((i - 1) * STEP) as u64);
                }
            }
            hex(&h.finalize())
        });
        let v3 = scope.spawn(|| {
            v3_from.map(|from| {
                let mut h = Sha256::new();
                for chunk in data[from as usize..].chunks(STEP) {
                    h.update(chunk);
                }
                hex(&h.finalize())
            })
        });
        let b3 = scope.spawn(|| {
            let mut h = blake3::Hasher::new();
            for chunk in data.chunks(STEP) {
                h.update(chunk);
            }
            h.finalize().to_hex().to_string()
        });
        let crc = scope.spawn(|| {
            let mut h = crc32fast::Hasher::new();
            for chunk in data.chunks(STEP) {
                h.update(chunk);
            }
            hex(&h.finalize().to_le_bytes())
        });
        const PANIC: &str = "hashing does not panic";
        (
            sha.join().expect(PANIC),
            v3.join().expect(PANIC),
            b3.join().expect(PANIC),
            crc.join().expect(PANIC),
        )
    });
    progress.finish();
    let legacy = legacy_hash(data);
    FileHashes {
        bytes: len as u64,
        autov1: (len >= 2 << 20).then(|| legacy.clone()),
        a1111_legacy: legacy,
        autov2: sha[..10].to_string(),
        sha256: sha,
        autov3: v3,
        autov3_from: v3_from.unwrap_or(0),
        blake3: b3,
        crc32: crc,
    }
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// A1111's legacy model hash (AutoV1 range): SHA-256 of bytes [1 MiB, 1 MiB + 64 KiB),
/// fewer if the file is shorter (an empty read on a file under 1 MiB), first 8 hex digits.
pub fn legacy_hash(file: &[u8]) -> String {
    let start = (1usize << 20).min(file.len());
    let end = (start + (1 << 16)).min(file.len());
    sha256_hex(&file[start..end])[..8].to_string()
}

/// SHA-256 of a checkpoint's whole file, reading its mapping; with `release`, hands each
/// hashed stretch of pages back as it goes.
pub fn sha256_checkpoint(ckpt: &ckpt_read::Checkpoint, release: bool) -> String {
    let mut hasher = Sha256::new();
    let bytes = ckpt.bytes();
    let step = 64 << 20;
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + step).min(bytes.len());
        hasher.update(&bytes[at..end]);
        if release {
            ckpt.release(at as u64, end as u64);
        }
        at = end;
    }
    hex(&hasher.finalize())
}

/// A claim a file's metadata makes about its own hash.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Claim {
    pub key: String,
    pub claimed: String,
    /// What the data hashes to, in the claim's own form.
    pub actual: String,
    pub holds: bool,
}

/// The hashes `ckpt`'s metadata claims for the file (kohya's `sshs_model_hash` is the full
/// AutoV3, `modelspec.hash_sha256` is `0x` + AutoV3), checked against `h`.
pub fn claims(ckpt: Option<&ckpt_read::Checkpoint>, h: &FileHashes) -> Vec<Claim> {
    let Some(c) = ckpt else { return Vec::new() };
    let v3 = h.autov3.clone().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(claimed) = c.metadata_value("sshs_model_hash") {
        out.push(Claim {
            key: "sshs_model_hash".into(),
            claimed: claimed.into(),
            actual: v3.clone(),
            holds: claimed.eq_ignore_ascii_case(&v3),
        });
    }
    if let Some(claimed) = c.metadata_value("modelspec.hash_sha256") {
        let actual = format!("0x{v3}");
        out.push(Claim {
            key: "modelspec.hash_sha256".into(),
            claimed: claimed.into(),
            holds: claimed.eq_ignore_ascii_case(&actual),
            actual,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Civitai's test vector ("hello world", from its model scanner's tests) and the
    /// research's reference values.
    #[test]
    fn civitai_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dummy.txt");
        std::fs::write(&p, b"hello world").unwrap();
        let f = ckpt_read::RawFile::open(&p).unwrap();
        let h = file_hashes(&f, &ckpt_core::pass::NoProgress);
        assert_eq!(
            h.sha256.to_uppercase(),
            "B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9"
        );
        assert_eq!(h.autov2.to_uppercase(), "B94D27B993");
        assert_eq!(h.crc32.to_uppercase(), "85114A0D");
        assert_eq!(
            h.blake3.to_uppercase(),
            "D74981EFA70A0C880B8D8C1985D075DBCBF679B99A5F9914E5AAF96B831A9E24"
        );
        assert_eq!(h.autov1, None, "undefined under 2 MiB");
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            sha256_hex(b"hello world"),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        // Under 1 MiB, A1111 hashes an empty read.
        assert_eq!(legacy_hash(b"hello world"), "e3b0c442");
    }
}
