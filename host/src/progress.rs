//! How far a guest has read its input. The filesystem wrapper
//! (`quota.rs`) counts into it, since every read of the input passes there.

use std::sync::atomic::{AtomicU64, Ordering};

/// How far the guest has read its input: bytes and line breaks, updated as
/// it reads. Share one with [`crate::Invocation::progress`] to watch a run.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    read: AtomicU64,
    lines: AtomicU64,
}

impl Progress {
    /// The size of the input, once it is known (when the run starts).
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes of input the guest has read so far.
    #[must_use]
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Line breaks in what the guest has read: about the rows so far.
    #[must_use]
    pub fn lines_read(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    pub(crate) fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub(crate) fn record(&self, bytes: &[u8]) {
        self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let lines = memchr::memchr_iter(b'\n', bytes).count();
        self.lines.fetch_add(lines as u64, Ordering::Relaxed);
    }
}
