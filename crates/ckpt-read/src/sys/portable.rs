//! The answers plain `std` gives (see [`super`]): what it cannot tell is `None`, advice is
//! a no-op, and a write at an offset is a seek and a write under a lock.

use std::fs::File;
use std::io;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;

use memmap2::Mmap;

/// `std` has no free-space query: unknown, so the caller skips its check.
pub fn free_space(_dir: &Path) -> Option<u64> {
    None
}

/// Two spellings of one path resolve to the same canonical path. (Hard links to one file
/// under two names are not recognised: `std` exposes no file identity.)
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Unknown: passes never hand pages back on their own.
pub fn physical_memory() -> Option<u64> {
    None
}

pub fn advise_sequential(_map: &Mmap) {}

pub fn release_pages(_map: &Mmap, _start: u64, _end: u64) -> bool {
    false
}

pub fn write_all_at(file: &File, seek: &Mutex<()>, bytes: &[u8], at: u64) -> io::Result<()> {
    // One seek-and-write at a time: the file position is shared by every thread.
    let _held = seek.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = file;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(bytes)
}

/// Temporary files' permissions are the platform's default for a new file, which on
/// platforms without Unix modes is already readable.
pub fn make_readable(_file: &File) -> std::io::Result<()> {
    Ok(())
}
