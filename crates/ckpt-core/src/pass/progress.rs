//! Progress of long work, in bytes: what a pass reports to (the command line draws it as a
//! bar on stderr; scripts and tests get nothing).

/// Receives progress in bytes. Called from the thread that runs the pass.
pub trait Progress: Sync {
    /// A run of `total` bytes begins.
    fn start(&self, total: u64);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
    /// The run is over.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
