//! Every call that differs between operating systems, behind one small interface.
//!
//! Two implementations answer each question:
//!
//! * [`unix`] (Linux, macOS, the BSDs): `statvfs` for free space, device and inode numbers
//!   to tell whether two paths are one file, `pwrite` for writes from many threads at once,
//!   `madvise` for readahead, huge pages and handing pages back, `sysconf` for the size of
//!   physical memory, and mode 0644 for finished outputs;
//! * [`portable`]: plain `std` file APIs, for every other platform (Windows among them).
//!   What `std` cannot tell it says it does not know (`None`), and callers skip what depends
//!   on it: no free-space check, no page hand-back; writes at an offset take a lock and seek.
//!
//! The portable path is compiled and tested on Unix too: `CKPT_DIFF_IO=portable` selects it
//! at run time (CI runs the whole test suite a second time that way), and the `portable-io`
//! feature compiles the Unix path out altogether (`cargo check --features portable-io`).

// libc calls (statvfs, sysconf, madvise, pwrite) are unsafe FFI; each says why it is sound.
#[cfg(all(unix, not(feature = "portable-io")))]
#[allow(unsafe_code)]
pub mod unix;

pub mod portable;

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::sync::OnceLock;

use memmap2::Mmap;

/// True when the portable implementation answers: always off Unix or with the
/// `portable-io` feature, and on Unix when `CKPT_DIFF_IO=portable`.
pub fn portable_io() -> bool {
    static PORTABLE: OnceLock<bool> = OnceLock::new();
    *PORTABLE.get_or_init(|| {
        !cfg!(all(unix, not(feature = "portable-io")))
            || crate::env::IO
                .get()
                .is_some_and(|v| v.eq_ignore_ascii_case("portable"))
    })
}

/// Calls the Unix implementation unless the portable one is selected.
macro_rules! dispatch {
    ($name:ident ( $($arg:expr),* )) => {{
        #[cfg(all(unix, not(feature = "portable-io")))]
        {
            if !portable_io() {
                return unix::$name($($arg),*);
            }
        }
        portable::$name($($arg),*)
    }};
}

/// ckpt-diff's cache folder: `$XDG_CACHE_HOME/ckpt-diff`, else `%LOCALAPPDATA%/ckpt-diff`
/// on Windows, else `~/.cache/ckpt-diff` (the current folder when none is known).
pub fn cache_dir() -> std::path::PathBuf {
    use crate::env;
    use std::path::PathBuf;
    env::XDG_CACHE_HOME
        .get_os()
        .map(PathBuf::from)
        .or_else(|| env::LOCALAPPDATA.get_os().map(PathBuf::from))
        .or_else(|| env::HOME.get_os().map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("ckpt-diff")
}

/// Bytes available to this user on the file system that holds `dir`, if the OS says.
pub fn free_space(dir: &Path) -> Option<u64> {
    dispatch!(free_space(dir))
}

/// Whether `a` and `b` name the same file (hard links and other spellings included, as far
/// as the platform can tell). False when either does not exist.
pub fn same_file(a: &Path, b: &Path) -> bool {
    dispatch!(same_file(a, b))
}

/// Bytes of physical memory, if the OS says.
pub fn physical_memory() -> Option<u64> {
    dispatch!(physical_memory())
}

/// Advises a fresh read-only mapping for one sequential read (readahead, huge pages where
/// the kernel has them). Failure is harmless and ignored.
pub fn advise_sequential(map: &Mmap) {
    dispatch!(advise_sequential(map))
}

/// Tells the OS this process is done with bytes `start..end` of `map` for now: only whole
/// pages inside the range go; they stay in the page cache and fault back in on access.
/// Returns whether anything was handed back.
pub fn release_pages(map: &Mmap, start: u64, end: u64) -> bool {
    dispatch!(release_pages(map, start, end))
}

/// Writes all of `bytes` at offset `at` of `file`, from any thread. `seek` serialises the
/// portable path's seek-then-write (the Unix path writes positionally and ignores it).
pub fn write_all_at(file: &File, seek: &Mutex<()>, bytes: &[u8], at: u64) -> io::Result<()> {
    dispatch!(write_all_at(file, seek, bytes, at))
}

/// Makes a finished output readable like any other file (temporary files are created
/// private to the user).
pub fn make_readable(file: &File) -> std::io::Result<()> {
    dispatch!(make_readable(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both implementations agree where both can answer, and each answers what it claims.
    #[test]
    fn implementations_agree() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"x").unwrap();
        let alias = dir.path().join(".").join("a");
        for same in [portable::same_file, same_file] {
            assert!(same(&a, &alias));
            assert!(!same(&a, &b));
            assert!(!same(&a, &dir.path().join("missing")));
        }
        #[cfg(all(unix, not(feature = "portable-io")))]
        {
            assert!(unix::free_space(dir.path()).is_some_and(|f| f > 0));
            assert!(unix::physical_memory().is_some_and(|m| m > 1 << 20));
        }

        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&a)
            .unwrap();
        f.set_len(8).unwrap();
        let lock = Mutex::new(());
        portable::write_all_at(&f, &lock, b"cd", 2).unwrap();
        write_all_at(&f, &lock, b"ef", 4).unwrap();
        portable::write_all_at(&f, &lock, b"ab", 0).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"abcdef\0\0");
    }
}
