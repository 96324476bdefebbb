//! One invocation, stage by stage: admission, the input and the sandbox, the
//! guest, its outcome, collection and delivery, removal.
//!
//! Every stage that blocks (files, fsync, removal) runs on tokio's blocking
//! pool, never on the caller's executor thread; the guest runs on the
//! executor and yields every epoch tick. Waiting for a slot is bounded by the
//! invocation's queue timeout; everything after, from making the sandbox to
//! removing it, by its deadline. A stage the deadline (or the caller dropping
//! the invocation) stops is told to stop at its next step, and whatever it
//! held, the sandbox above all, is removed on every path.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cancel::{Cancel, CancelOnDrop};
use crate::collect::{OutputFile, collect};
use crate::deliver::{Delivered, Destination, check_destination, deliver};
use crate::error::RunError;
use crate::guest::run_pipeline;
use crate::input::{copy_input, stage_input};
use crate::invocation::{Admission, Invocation};
use crate::limits::Limits;
use crate::outcome::classify;
use crate::report::Report;
use crate::runner::Runner;
use crate::sandbox::Sandbox;

/// How long each stage of an invocation took.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct Timings {
    /// Waiting for a slot.
    pub queued: Duration,
    /// Making (or taking) the sandbox.
    pub sandbox_create: Duration,
    /// Putting the input into the sandbox.
    pub input_copy: Duration,
    /// Store, WASI context and instance (part of `guest`).
    pub instantiate: Duration,
    /// Instantiation plus the call of `process`.
    pub guest: Duration,
    /// Listing and checking the outputs.
    pub collect: Duration,
    /// Delivering them.
    pub deliver: Duration,
    /// Removing the sandbox (what fit in the removal budget).
    pub sandbox_remove: Duration,
    /// All of it.
    pub total: Duration,
}

/// A successful invocation.
#[derive(Debug)]
#[non_exhaustive]
pub struct RunOutcome {
    /// The tenant it ran for, if any.
    pub tenant: Option<String>,
    /// Whether the input was spooled: its sandbox lived in memory.
    pub spooled: bool,
    /// The guest's report, checked.
    pub report: Report,
    /// The delivered files, with their sizes and SHA-256.
    pub outputs: Vec<OutputFile>,
    /// Where they went.
    pub delivered: Delivered,
    /// How long each stage took.
    pub timings: Timings,
    /// The most linear memory (and table) the guest held at once, in bytes.
    pub peak_memory: u64,
    /// Fuel consumed, when fuel metering is on.
    pub fuel_used: Option<u64>,
    /// Bytes the guest's files held at the end, as charged to the disk quota.
    pub bytes_written: u64,
    /// The most of each figure the host's ledger charged the sandbox at
    /// once: bytes, files, folders, descriptors held.
    pub sandbox_peak: crate::ledger::Usage,
    /// The first [`crate::Limits::stderr_limit`] bytes of the guest's stderr.
    pub stderr: String,
}

impl Runner {
    /// Runs one invocation in a fresh sandbox: waits for (or, failing fast,
    /// refuses) a slot within the tenant's and the overall bound, spools a
    /// small input into a memory-backed sandbox, runs the guest under the
    /// limits, delivers the outputs, and removes the sandbox on every path.
    /// If this future is dropped (Ctrl-C), its stages stop and the sandbox
    /// is removed.
    ///
    /// # Errors
    ///
    /// A [`RunError`] naming the failure class; nothing is delivered then.
    pub async fn invoke(&self, invocation: Invocation) -> Result<RunOutcome, RunError> {
        let started = Instant::now();
        let Invocation { component, input, tenant, limits, destination, admission, queue_timeout, deadline, progress } =
            invocation;

        let Admitted { slots: _slots, tenant: tenant_state, limits } =
            self.admit(tenant.as_deref(), limits, admission, queue_timeout).await?;
        let mut timings = Timings { queued: started.elapsed(), ..Timings::default() };

        let stages = Stages::new(deadline);
        let root = {
            let memory = tenant_state.as_ref().map_or(self.memory_root(), |state| state.memory_root.as_ref());
            let disk = tenant_state.as_ref().map_or(self.sandbox_root(), |state| &state.disk_root);
            (disk.clone(), memory.cloned())
        };

        // The input and the sandbox (blocking: files, mkdir, flock, copy).
        let (runner, threshold, cancel) = (self.clone(), self.config().spool_threshold, stages.cancel.clone());
        let prepared = stages
            .blocking(move || {
                // A destination that would refuse the outputs fails before any work.
                check_destination(&destination)?;
                let staged = stage_input(input, threshold)?;
                cancel.check().map_err(RunError::Sandbox)?;
                let spooled = staged.fits_in_memory && root.1.is_some();
                let root = if spooled { root.1.as_ref().unwrap_or(&root.0) } else { &root.0 };
                let creating = Instant::now();
                let sandbox = runner.housekeeper().take(root).map_err(RunError::Sandbox)?;
                let created = creating.elapsed();
                let copying = Instant::now();
                let copied = copy_input(&sandbox, staged);
                let prepared = Prepared { sandbox, destination, spooled, created, copied: copying.elapsed() };
                match copied {
                    Ok(bytes) => Ok((prepared, bytes)),
                    Err(err) => Err(runner.remove_after_failure(prepared.sandbox, err)),
                }
            })
            .await??;
        let (Prepared { sandbox, destination, spooled, created, copied }, input_bytes) = prepared;
        (timings.sandbox_create, timings.input_copy) = (created, copied);
        if let Some(progress) = &progress {
            progress.set_total(input_bytes);
        }
        tracing::info!(sandbox = %sandbox.path().display(), component = component.name(), spooled, "run started");

        // The guest, on this executor: it yields every epoch tick.
        let timeout = stages.remaining().map_or(limits.timeout, |left| left.min(limits.timeout));
        let guest = run_pipeline(
            &self.engine().engine,
            self.config().fuel_metering,
            &component,
            &sandbox,
            &limits,
            timeout,
            progress,
        )
        .await;
        let mut ran = match guest {
            Ok(ran) => ran,
            Err(err) => {
                self.remove_quietly(sandbox, &err).await;
                return Err(err);
            }
        };
        (timings.instantiate, timings.guest) = (ran.instantiate, ran.elapsed);
        let deadline_passed = stages.remaining().is_some_and(|left| left.is_zero());
        let stderr = ran.account.stderr.clone();
        let report = match classify(ran.end, std::mem::take(&mut ran.account), &limits) {
            Err(RunError::Timeout { .. }) if deadline_passed => Err(stages.exceeded()),
            other => other,
        };
        let report = match report {
            Ok(report) => report,
            Err(err) => {
                self.remove_quietly(sandbox, &err).await;
                return Err(err);
            }
        };

        // Collection and delivery (blocking: every output is a file).
        let (cancel, max_output) = (stages.cancel.clone(), limits.effective_max_output());
        let delivered = stages
            .blocking(move || {
                let result = (|| {
                    let out = sandbox
                        .output_dir()
                        .map_err(|err| RunError::Host(format!("cannot open the sandbox's output folder: {err}")))?;
                    let collecting = Instant::now();
                    let files = collect(out, &report, max_output)?;
                    let collected = collecting.elapsed();
                    tracing::info!(outputs = files.files.len(), "outputs collected");
                    let delivering = Instant::now();
                    let (delivered, files) = deliver(files, out, &destination, &cancel)?;
                    Ok((delivered, files, collected, delivering.elapsed()))
                })();
                (sandbox, report, result)
            })
            .await;
        // Past the deadline the stage stops at its next step, then drops
        // (and so removes) the sandbox it owns.
        let (sandbox, report, delivered) = delivered?;
        let delivered = match delivered {
            Ok(delivered) => delivered,
            Err(err) => {
                let err = if stages.cancel.check().is_err() { stages.exceeded() } else { err };
                self.remove_quietly(sandbox, &err).await;
                return Err(err);
            }
        };
        let (delivered, outputs, collected, delivering) = delivered;
        (timings.collect, timings.deliver) = (collected, delivering);
        tracing::info!(elapsed = ?timings.deliver, "outputs delivered");

        // Removal, within its budget; the rest goes on in the background.
        let removing = Instant::now();
        let path = sandbox.path().to_owned();
        self.remove(sandbox).await.map_err(|source| RunError::Cleanup { path, source })?;
        timings.sandbox_remove = removing.elapsed();
        timings.total = started.elapsed();
        tracing::info!(timings = ?timings, "run finished");
        Ok(RunOutcome {
            tenant,
            spooled,
            report,
            outputs,
            delivered,
            timings,
            peak_memory: ran.peak_memory,
            fuel_used: ran.fuel_used,
            bytes_written: ran.bytes_written,
            sandbox_peak: ran.sandbox_peak,
            stderr,
        })
    }

    /// Removes `sandbox` on the blocking pool: within the removal budget, the
    /// rest handed to the housekeeping thread.
    pub(crate) async fn remove(&self, sandbox: Sandbox) -> io::Result<()> {
        let runner = self.clone();
        match tokio::task::spawn_blocking(move || runner.housekeeper().remove(sandbox)).await {
            Ok(removed) => removed,
            Err(join) => Err(io::Error::other(format!("the removal task failed: {join}"))),
        }
    }

    /// Removes the sandbox of a failed invocation; a removal error is logged,
    /// the run's own error is what the caller gets.
    pub(crate) async fn remove_quietly(&self, sandbox: Sandbox, err: &RunError) {
        let path = sandbox.path().to_owned();
        match self.remove(sandbox).await {
            Ok(()) => tracing::info!(outcome = err.outcome().name(), "run failed: {err}"),
            Err(cleanup) => {
                tracing::error!(sandbox = %path.display(), "run failed ({err}) and its sandbox could not be removed: {cleanup}");
            }
        }
    }

    /// As [`Runner::remove_quietly`], on a blocking thread already.
    pub(crate) fn remove_after_failure(&self, sandbox: Sandbox, err: RunError) -> RunError {
        let path = sandbox.path().to_owned();
        if let Err(cleanup) = self.housekeeper().remove(sandbox) {
            tracing::error!(sandbox = %path.display(), "run failed ({err}) and its sandbox could not be removed: {cleanup}");
        }
        err
    }
}

/// What admission gives an invocation: its slots (held until it ends), its
/// tenant's state, and the limits it runs under.
pub(crate) struct Admitted {
    pub slots: (Option<OwnedSemaphorePermit>, OwnedSemaphorePermit),
    pub tenant: Option<Arc<crate::tenants::Tenant>>,
    pub limits: Limits,
}

impl Runner {
    /// Admission, for every kind of invocation: what the caller asked for
    /// must make sense, then a slot of the tenant (first, so a tenant at its
    /// bound holds no global slot) and one of the runner, waited for within
    /// `queue_timeout` or refused at once when failing fast.
    pub(crate) async fn admit(
        &self,
        tenant: Option<&str>,
        limits: Option<Limits>,
        admission: Admission,
        queue_timeout: Option<Duration>,
    ) -> Result<Admitted, RunError> {
        if self.is_shut_down() {
            return Err(RunError::ShutDown);
        }
        let tenant_state = tenant.map(|id| self.tenant(id)).transpose()?;
        let limits = limits.or_else(|| tenant.and_then(|id| self.tenant_profile(id))).unwrap_or_default();
        if limits.fuel.is_some() && !self.config().fuel_metering {
            return Err(RunError::InvalidArgument(
                "a fuel limit needs a runner built with fuel metering (RunnerConfig::fuel_metering)".into(),
            ));
        }
        let busy = || RunError::Busy { tenant: tenant.map(str::to_owned) };
        let waiting = async {
            let tenant_slot = match &tenant_state {
                Some(state) => Some(acquire(&state.slots, admission).await.ok_or_else(busy)?),
                None => None,
            };
            let slot = acquire(self.slots(), admission).await.ok_or_else(busy)?;
            Ok::<_, RunError>((tenant_slot, slot))
        };
        let slots = match queue_timeout {
            Some(timeout) => tokio::time::timeout(timeout, waiting).await.map_err(|_| busy())??,
            None => waiting.await?,
        };
        Ok(Admitted { slots, tenant: tenant_state, limits })
    }
}

/// What the first blocking stage hands to the next.
struct Prepared {
    sandbox: Sandbox,
    destination: Destination,
    spooled: bool,
    created: Duration,
    copied: Duration,
}

/// The deadline shared by an invocation's stages, and the way to stop them.
pub(crate) struct Stages {
    deadline: Option<(Instant, Duration)>,
    pub(crate) cancel: Cancel,
    _on_drop: CancelOnDrop,
}

impl Stages {
    pub(crate) fn new(deadline: Option<Duration>) -> Self {
        let cancel = Cancel::default();
        Self {
            deadline: deadline.map(|limit| (Instant::now() + limit, limit)),
            _on_drop: CancelOnDrop(cancel.clone()),
            cancel,
        }
    }

    /// Time left before the deadline, if there is one.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|(at, _)| at.saturating_duration_since(Instant::now()))
    }

    pub(crate) fn exceeded(&self) -> RunError {
        RunError::DeadlineExceeded { limit: self.deadline.map_or(Duration::ZERO, |(_, limit)| limit) }
    }

    /// Runs `work` on the blocking pool, waiting for it until the deadline;
    /// past it, `work` is told to stop (it owns what it holds, and drops it).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RunError> {
        let task = tokio::task::spawn_blocking(work);
        let joined = match self.deadline {
            Some((at, _)) => match tokio::time::timeout_at(at.into(), task).await {
                Ok(joined) => joined,
                Err(_elapsed) => {
                    self.cancel.cancel();
                    return Err(self.exceeded());
                }
            },
            None => task.await,
        };
        joined.map_err(|join| RunError::Host(format!("a stage of the invocation failed: {join}")))
    }
}

async fn acquire(slots: &Arc<Semaphore>, admission: Admission) -> Option<OwnedSemaphorePermit> {
    match admission {
        Admission::Wait => Arc::clone(slots).acquire_owned().await.ok(),
        Admission::FailFast => Arc::clone(slots).try_acquire_owned().ok(),
    }
}
