//! What ckpt-diff keeps between runs, in a folder its caller names (the command line: the
//! user's cache folder, or none with `--no-cache`); nothing in the library reads or writes a
//! home folder on its own.
//!
//! * `sha256.tsv`: the full-file SHA-256 of files that have not changed since
//!   (`path<TAB>size<TAB>mtime_ns<TAB>sha256`, appended), so a merge's provenance costs the
//!   hashing of a multi-GB input once, like A1111's `cache.json`;
//! * `merge-rates.tsv`: the input bytes per second earlier merges measured on this machine,
//!   by kind (`kind<TAB>bytes per second`; the last merge of a kind replaces its rate), from
//!   which a merge's plan predicts its time.
//!
//! A cache that cannot be read is empty and one that cannot be written is not written: the
//! cache never fails a command.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A cache folder, or none.
#[derive(Clone, Debug, Default)]
pub struct Cache {
    root: Option<PathBuf>,
}

impl Cache {
    /// The cache in `dir` (created when something is first stored).
    pub fn at(dir: impl Into<PathBuf>) -> Cache {
        Cache {
            root: Some(dir.into()),
        }
    }

    /// No cache: nothing is looked up or stored.
    pub fn none() -> Cache {
        Cache { root: None }
    }

    fn file(&self, name: &str) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join(name))
    }

    /// The stored SHA-256 of `path`, if its size and modification time still match.
    pub fn sha256(&self, path: &Path) -> Option<String> {
        let key = sha256_key(path)?;
        let text = std::fs::read_to_string(self.file("sha256.tsv")?).ok()?;
        lookup_sha256(&text, &key)
    }

    /// Stores the SHA-256 of `path` as it is now.
    pub fn store_sha256(&self, path: &Path, hash: &str) {
        let (Some(file), Some(key)) = (self.file("sha256.tsv"), sha256_key(path)) else {
            return;
        };
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // One write of the whole line: an append of one short write does not interleave with
        // other processes' appends (`writeln!` on a file writes each piece separately, and
        // parallel merges then mixed their lines). A lost line only costs a rehash.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
        {
            let _ = f.write_all(format!("{key}\t{hash}\n").as_bytes());
        }
    }

    fn rates(&self) -> Vec<(String, f64)> {
        let Some(file) = self.file("merge-rates.tsv") else {
            return Vec::new();
        };
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('\t')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// The input bytes per second the last merge of `kind` measured.
    pub fn rate(&self, kind: &str) -> Option<f64> {
        self.rates()
            .into_iter()
            .find(|(k, _)| k == kind)
            .map(|(_, v)| v)
            .filter(|v| *v > 0.0)
    }

    /// Records a merge's rate (merges too small to say anything about the machine are not).
    pub fn record_rate(&self, kind: &str, bytes: u64, seconds: f64) {
        let Some(path) = self.file("merge-rates.tsv") else {
            return;
        };
        if bytes < (64 << 20) || seconds <= 0.0 {
            return;
        }
        let mut all: Vec<(String, f64)> = self
            .rates()
            .into_iter()
            .filter(|(k, _)| k != kind)
            .collect();
        all.push((kind.to_string(), bytes as f64 / seconds));
        let text: String = all.iter().map(|(k, v)| format!("{k}\t{v:.0}\n")).collect();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = ckpt_core::writer::write_small(&path, text.as_bytes());
    }
}

/// `path<TAB>size<TAB>mtime_ns`: a file as it is now.
fn sha256_key(path: &Path) -> Option<String> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let m = std::fs::metadata(&canonical).ok()?;
    // Nanoseconds since the epoch, negative before it (the same value as Unix's
    // `st_mtime * 1e9 + st_mtime_nsec`, from `std` on every platform).
    let modified = m.modified().ok()?;
    let mtime = match modified.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    let name = canonical.to_str()?;
    if name.contains(['\t', '\n']) {
        return None;
    }
    Some(format!("{name}\t{}\t{mtime}", m.len()))
}

/// The newest digest stored under `key` in the cache file's `text`.
fn lookup_sha256(text: &str, key: &str) -> Option<String> {
    // Only a whole digest counts: a line another process is still writing, or one garbled
    // by a crash, is a miss (a rehash), never a wrong hash.
    text.lines().rev().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('\t'))
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_lookup_takes_only_whole_digests() {
        let (h1, h2) = ("a".repeat(64), "b".repeat(64));
        let text = format!("/m.safetensors\t5\t7\t{h1}\n/m.safetensors\t5\t7\t{h2}\n");
        assert_eq!(
            lookup_sha256(&text, "/m.safetensors\t5\t7"),
            Some(h2.clone())
        );
        // A newer line cut short, or mixed with another process's line, is passed over.
        let cut = format!("{text}/m.safetensors\t5\t7\tbbb\n");
        assert_eq!(
            lookup_sha256(&cut, "/m.safetensors\t5\t7"),
            Some(h2.clone())
        );
        let mixed = format!("{text}/m.safetensors\t5\t7\t/n.safetensors\t9\t9\t{h1}\n");
        assert_eq!(lookup_sha256(&mixed, "/m.safetensors\t5\t7"), Some(h2));
        assert_eq!(lookup_sha256(&text, "/n.safetensors\t5\t7"), None);
    }

    #[test]
    fn no_cache_stores_nothing_and_a_cache_keeps_what_it_stored() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let none = Cache::none();
        none.store_sha256(&f, &"b".repeat(64));
        none.record_rate("linear", 1 << 30, 1.0);
        assert_eq!(none.sha256(&f), None);
        assert_eq!(none.rate("linear"), None);
        let c = Cache::at(dir.path().join("cache"));
        c.store_sha256(&f, &"b".repeat(64));
        c.record_rate("linear", 1 << 30, 2.0);
        assert_eq!(c.sha256(&f), Some("b".repeat(64)));
        assert_eq!(c.rate("linear"), Some((1u64 << 29) as f64));
        assert_eq!(c.rate("ties"), None);
    }
}
