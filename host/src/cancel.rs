//! Stopping an invocation's blocking stages: its deadline passing or its
//! future being dropped sets a flag each stage checks between steps.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Tells a blocking stage to stop at its next step: set when the deadline
/// passes or the invocation is dropped.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// `Err` once the invocation was stopped.
    pub(crate) fn check(&self) -> io::Result<()> {
        if self.0.load(Ordering::Relaxed) {
            Err(io::Error::new(io::ErrorKind::Interrupted, "the invocation was stopped"))
        } else {
            Ok(())
        }
    }

    pub(crate) fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Cancels when dropped: an invocation whose future is dropped (Ctrl-C)
/// stops its blocking stages.
pub(crate) struct CancelOnDrop(pub(crate) Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}
