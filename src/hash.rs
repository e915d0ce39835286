//! File hashes as the A1111 web UI and Civitai compute them.
//!
//! * SHA-256 of the whole file (A1111 "sha256"; its first 10 hex digits are AutoV2).
//! * AutoV1 / "legacy hash": SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits.
//!
//! Full-file SHA-256 of a multi-GB checkpoint takes seconds, so results are cached per
//! (path, size, modification time) in `$XDG_CACHE_HOME/ckpt-diff/sha256.tsv` (or
//! `~/.cache/...`), like A1111's `cache.json`.

use std::io::Write;
use std::path::{Path, PathBuf};

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

/// SHA-256 of a whole file, from the cache when the file has not changed.
pub fn sha256_file_cached(path: &Path, bytes: &[u8]) -> String {
    let key = cache_key(path);
    if let Some(k) = &key
        && let Some(h) = cache_lookup(k)
    {
        return h;
    }
    let mut hasher = Sha256::new();
    for chunk in bytes.chunks(8 << 20) {
        hasher.update(chunk);
    }
    let h = hex(&hasher.finalize());
    if let Some(k) = key {
        cache_store(&k, &h);
    }
    h
}

/// SHA-256 of a checkpoint's whole file (from the cache when unchanged), reading its
/// mapping; with `release`, hands each hashed stretch of pages back as it goes.
pub fn sha256_checkpoint_cached(
    path: &Path,
    ckpt: &crate::reader::Checkpoint,
    release: bool,
) -> String {
    let key = cache_key(path);
    if let Some(k) = &key
        && let Some(h) = cache_lookup(k)
    {
        return h;
    }
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
    let h = hex(&hasher.finalize());
    if let Some(k) = key {
        cache_store(&k, &h);
    }
    h
}

/// The cached SHA-256 of a file, if its size and modification time still match.
pub fn sha256_cached_only(path: &Path) -> Option<String> {
    cache_key(path).and_then(|k| cache_lookup(&k))
}

fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ckpt-diff").join("sha256.tsv"))
}

/// `path<TAB>size<TAB>mtime_ns`.
fn cache_key(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let canonical = std::fs::canonicalize(path).ok()?;
    let m = std::fs::metadata(&canonical).ok()?;
    let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
    let name = canonical.to_str()?;
    if name.contains(['\t', '\n']) {
        return None;
    }
    Some(format!("{name}\t{}\t{mtime}", m.len()))
}

fn cache_lookup(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(cache_file()?).ok()?;
    text.lines().rev().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('\t'))
            .map(str::to_string)
    })
}

fn cache_store(key: &str, hash: &str) {
    let Some(file) = cache_file() else { return };
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Appends are atomic enough for one short line; a lost line only costs a rehash.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
    {
        let _ = writeln!(f, "{key}\t{hash}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
