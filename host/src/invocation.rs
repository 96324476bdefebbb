//! What one invocation is: the component, the input, for whom, under which
//! limits and deadlines, and where the outputs go. An [`Invocation`] owns all
//! of it (`Send + 'static`), so it can be built in one task and wait in a
//! queue for another to run it.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::component::Component;
use crate::deliver::Destination;
use crate::limits::Limits;
use crate::progress::Progress;

/// The input of one invocation. The guest cannot tell them apart.
#[non_exhaustive]
pub enum Input {
    /// A file, linked or copied into the sandbox.
    Path(PathBuf),
    /// Bytes already in memory.
    Bytes(Vec<u8>),
    /// A stream, read to its end into the sandbox (on a blocking thread).
    Reader(Box<dyn Read + Send>),
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path(path) => f.debug_tuple("Path").field(path).finish(),
            Self::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            Self::Reader(_) => f.write_str("Reader(..)"),
        }
    }
}

/// What to do when the concurrency bound is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Admission {
    /// Wait for a slot (the default), up to the queue timeout if one is set.
    #[default]
    Wait,
    /// Fail at once with [`crate::RunError::Busy`].
    FailFast,
}

/// What every kind of invocation (a pipeline's [`Invocation`], a program's
/// [`crate::Exec`]) is given for admission: for whom, under which limits,
/// how long it may wait for a slot and how long it may take once it has one.
#[derive(Debug, Default)]
pub(crate) struct Admit {
    pub(crate) tenant: Option<String>,
    pub(crate) limits: Option<Limits>,
    pub(crate) admission: Admission,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
}

/// The builder methods of [`Admit`], for a type with an `admit` field: one
/// text of each for both kinds of invocation.
macro_rules! admit_builders {
    () => {
        /// Runs for `tenant`: its own sandbox folder, concurrency bound and
        /// limit profile (`[A-Za-z0-9_-]{1,64}`).
        #[must_use]
        pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
            self.admit.tenant = Some(tenant.into());
            self
        }

        /// Runs under `limits`, instead of the tenant's profile or the defaults.
        #[must_use]
        pub fn limits(mut self, limits: $crate::Limits) -> Self {
            self.admit.limits = Some(limits);
            self
        }

        /// Fails at once with [`crate::RunError::Busy`] when no slot is free.
        #[must_use]
        pub fn fail_fast(mut self) -> Self {
            self.admit.admission = $crate::invocation::Admission::FailFast;
            self
        }

        /// Waits at most `timeout` for a slot, then fails with
        /// [`crate::RunError::Busy`].
        #[must_use]
        pub fn queue_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.admit.queue_timeout = Some(timeout);
            self
        }

        /// Bounds the whole invocation once it has its slot, from making the
        /// sandbox to removing it: past `deadline` it stops where it is
        /// (copying the input or the seed, the guest, the delivery) with
        /// [`crate::RunError::DeadlineExceeded`], and its sandbox is removed.
        /// Removal, on success too, takes at most what is left of the
        /// deadline or the removal budget (50 ms), whichever is less, yet
        /// always makes one step; what it cannot finish goes on in the
        /// background. A stage stopped by the deadline is given up to 250 ms
        /// to notice it (a step of any stage takes far less) before the
        /// invocation returns; an [`crate::Input::Reader`] blocked inside one
        /// `read` cannot be stopped, and its invocation then keeps its slot
        /// until that `read` returns. The guest's own
        /// [`crate::Limits::timeout`] applies within the deadline.
        #[must_use]
        pub fn deadline(mut self, deadline: std::time::Duration) -> Self {
            self.admit.deadline = Some(deadline);
            self
        }
    };
}
pub(crate) use admit_builders;

/// One invocation: what to run, on what, for whom, under which limits, and
/// where the outputs go. Built with its methods; run with
/// [`crate::Runner::invoke`].
///
/// ```no_run
/// # async fn example(runner: &orders_host::Runner, pipeline: &orders_host::Component) -> Result<(), orders_host::RunError> {
/// use std::time::Duration;
/// use orders_host::{Destination, Input, Invocation};
/// let invocation = Invocation::new(pipeline.clone(), Input::Path("orders.csv".into()))
///     .tenant("acme")
///     .deadline(Duration::from_secs(120))
///     .destination(Destination::Tar { path: "acme-orders.tar".into(), force: true });
/// let outcome = runner.invoke(invocation).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Invocation {
    pub(crate) component: Component,
    pub(crate) input: Input,
    pub(crate) admit: Admit,
    pub(crate) destination: Destination,
    pub(crate) sync_outputs: bool,
    pub(crate) progress: Option<Arc<Progress>>,
}

impl Invocation {
    admit_builders!();

    /// An invocation of `component` on `input`, with outputs in memory.
    #[must_use]
    pub fn new(component: Component, input: Input) -> Self {
        Self {
            component,
            input,
            admit: Admit::default(),
            destination: Destination::Memory,
            sync_outputs: true,
            progress: None,
        }
    }

    /// Delivers the outputs to `destination` (default: in memory).
    #[must_use]
    pub fn destination(mut self, destination: Destination) -> Self {
        self.destination = destination;
        self
    }

    /// Whether a [`Destination::Folder`] delivery (or the folder of a
    /// [`Destination::MemoryOrFolder`]) flushes every output and
    /// folder to disk before the invocation returns (the default: `true`).
    /// With `false` the folder is still staged beside its place and renamed
    /// into it, so other processes see all of it or none of it, but a crash
    /// of the machine may lose or cut outputs the invocation reported: it is
    /// for a caller that makes them durable itself before it relies on them,
    /// e.g. with one `syncfs` of their filesystem for many invocations
    /// instead of an fsync per file each. Other destinations always flush.
    #[must_use]
    pub fn sync_outputs(mut self, sync: bool) -> Self {
        self.sync_outputs = sync;
        self
    }

    /// Counts how far the guest has read its input into `progress`.
    #[must_use]
    pub fn progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_static<T: Send + 'static>() {}

    #[test]
    fn an_invocation_can_wait_in_a_queue_of_another_task() {
        assert_send_static::<Invocation>();
    }
}
