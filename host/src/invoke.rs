//! One invocation, stage by stage: admission, the input and the sandbox, the
//! guest, its outcome, collection and delivery, removal.
//!
//! Every stage that blocks (tenant folders, files, fsync, removal) runs on
//! tokio's blocking pool, never on the caller's executor thread; the guest
//! runs on the executor and yields every epoch tick. Waiting for a slot is
//! bounded by the invocation's queue timeout; everything after, from making
//! the sandbox to removing it, by its deadline. A stage the deadline (or the
//! caller dropping the invocation) stops is told to stop at its next step,
//! and whatever it held, the sandbox above all, is removed on every path;
//! it holds the invocation's slots until it has stopped.
//!
//! What of the guest still runs on the executor, by design: its code, and
//! its small file calls (a `read` or `write` of at most one stream chunk, a
//! `stat`, an `open`, a listing chunk), inline
//! (`crate::guest::BLOCK_CURRENT_THREAD`): each takes microseconds on the
//! page cache, and a hop to the blocking pool per call would cost more than
//! the call, for the pipeline's many small reads. What can take
//! milliseconds whatever the guest's size, `sync` and `sync-data` (a journal
//! commit each, which a hostile guest can call in a loop), goes to the
//! blocking pool (`crate::quota`). A guest stalls the executor at most for
//! one such small call, or for its code until the next epoch tick.

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
use crate::housekeeper::REMOVAL_BUDGET;
use crate::input::{copy_input, stage_input};
use crate::invocation::{Admission, Admit, Invocation};
use crate::limits::Limits;
use crate::outcome::classify;
use crate::report::Report;
use crate::runner::Runner;
use crate::sandbox::Sandbox;
use crate::sandbox::SandboxRoot;
use crate::tenants::{Tenant, TenantFolders};

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

/// Each stage in whole microseconds, on one line (`queued 3µs,
/// sandbox_create 41µs, …, total 650µs`): what the host's log shows of
/// every run, cheap to format, as it is formatted once per job.
impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stages = [
            ("queued", self.queued),
            ("sandbox_create", self.sandbox_create),
            ("input_copy", self.input_copy),
            ("instantiate", self.instantiate),
            ("guest", self.guest),
            ("collect", self.collect),
            ("deliver", self.deliver),
            ("sandbox_remove", self.sandbox_remove),
            ("total", self.total),
        ];
        for (at, (name, took)) in stages.into_iter().enumerate() {
            let gap = if at == 0 { "" } else { ", " };
            write!(f, "{gap}{name} {}µs", took.as_micros())?;
        }
        Ok(())
    }
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
        let Invocation {
            component,
            input,
            admit: Admit { tenant, limits, admission, queue_timeout, deadline },
            destination,
            sync_outputs,
            progress,
        } = invocation;

        let Admitted { slots, limits } = self.admit(tenant.as_deref(), limits, admission, queue_timeout).await?;
        let mut timings = Timings { queued: started.elapsed(), ..Timings::default() };
        let stages = Stages::new(deadline, slots);

        // The tenant's folders, the input and the sandbox (blocking: mkdir,
        // open, flock, copy).
        let (runner, threshold, cancel, ends) =
            (self.clone(), self.config().spool_threshold, stages.cancel.clone(), stages.ends());
        let tenant_id = tenant.clone();
        let prepared = stages
            .blocking(move || {
                // A destination that would refuse the outputs fails before any work.
                check_destination(&destination)?;
                let folders = tenant_id.as_deref().map(|id| runner.tenant_folders(id)).transpose()?;
                let staged = stage_input(input, threshold, &cancel)?;
                cancel.check().map_err(RunError::Sandbox)?;
                let (root, spooled) = runner.sandbox_root_for(folders.as_deref(), staged.fits_in_memory);
                let creating = Instant::now();
                let sandbox = runner.housekeeper().take(root).map_err(RunError::Sandbox)?;
                let created = creating.elapsed();
                let copying = Instant::now();
                // A copy that ended as the deadline passed is stopped too:
                // the guest would have no time left.
                let copied = copy_input(&sandbox, staged, &cancel)
                    .and_then(|bytes| cancel.check().map(|()| bytes).map_err(RunError::Sandbox));
                let prepared = Prepared { sandbox, destination, spooled, created, copied: copying.elapsed() };
                match copied {
                    Ok(bytes) => Ok((prepared, bytes)),
                    Err(err) => Err(runner.remove_after_failure(prepared.sandbox, err, ends)),
                }
            })
            .await
            .and_then(|prepared| prepared);
        let (Prepared { sandbox, destination, spooled, created, copied }, input_bytes) =
            prepared.map_err(|err| stages.stopped(err))?;
        (timings.sandbox_create, timings.input_copy) = (created, copied);
        if stages.cancel.check().is_err() {
            // It was done as the deadline passed: no time is left for the guest.
            let err = stages.exceeded();
            self.remove_quietly(sandbox, &err, ends).await;
            return Err(err);
        }
        if let Some(progress) = &progress {
            progress.set_total(input_bytes);
        }
        tracing::debug!(sandbox = %sandbox.path().display(), component = component.name(), spooled, "run started");

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
                self.remove_quietly(sandbox, &err, ends).await;
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
                self.remove_quietly(sandbox, &err, ends).await;
                return Err(err);
            }
        };

        // Collection, delivery and removal (blocking: every output is a
        // file). The stage removes its sandbox itself on every path: past
        // the deadline this invocation may have returned before it stops.
        let (runner, cancel, max_output) = (self.clone(), stages.cancel.clone(), limits.effective_max_output());
        let finished = stages
            .blocking(move || {
                let delivered = (|| {
                    let out = sandbox
                        .output_dir()
                        .map_err(|err| RunError::Host(format!("cannot open the sandbox's output folder: {err}")))?;
                    let collecting = Instant::now();
                    let files = collect(out, &report, max_output)?;
                    let collected = collecting.elapsed();
                    tracing::debug!(outputs = files.files.len(), "outputs collected");
                    let delivering = Instant::now();
                    let (delivered, files) = deliver(files, out, &destination, sync_outputs, &cancel)?;
                    Ok((delivered, files, collected, delivering.elapsed()))
                })();
                let (delivered, outputs, collected, delivering) = match delivered {
                    Ok(delivered) => delivered,
                    Err(err) => return Err(runner.remove_after_failure(sandbox, err, ends)),
                };
                tracing::debug!(elapsed = ?delivering, "outputs delivered");
                let removing = Instant::now();
                let path = sandbox.path().to_owned();
                runner
                    .housekeeper()
                    .remove_within(sandbox, removal_budget(ends))
                    .map_err(|source| RunError::Cleanup { path, source })?;
                Ok(Finished { report, delivered, outputs, collected, delivering, removed: removing.elapsed() })
            })
            .await
            .and_then(|finished| finished);
        let Finished { report, delivered, outputs, collected, delivering, removed } =
            finished.map_err(|err| stages.stopped(err))?;
        (timings.collect, timings.deliver, timings.sandbox_remove) = (collected, delivering, removed);
        timings.total = started.elapsed();
        tracing::info!(timings = %timings, "run finished");
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

    /// Removes `sandbox` on the blocking pool, within what
    /// [`removal_budget`] gives for the deadline `ends`; the rest is handed to
    /// the housekeeping thread.
    pub(crate) async fn remove(&self, sandbox: Sandbox, ends: Option<Instant>) -> io::Result<()> {
        let runner = self.clone();
        tokio::task::spawn_blocking(move || runner.housekeeper().remove_within(sandbox, removal_budget(ends)))
            .await
            .unwrap_or_else(|join| Err(io::Error::other(format!("the removal task failed: {join}"))))
    }

    /// Removes the sandbox of a failed invocation as [`Runner::remove`]
    /// does; a removal error is logged, the run's own error is what the
    /// caller gets.
    pub(crate) async fn remove_quietly(&self, sandbox: Sandbox, err: &RunError, ends: Option<Instant>) {
        let path = sandbox.path().to_owned();
        match self.remove(sandbox, ends).await {
            Ok(()) => tracing::info!(outcome = err.outcome().name(), "run failed: {err}"),
            Err(cleanup) => {
                tracing::error!(sandbox = %path.display(), "run failed ({err}) and its sandbox could not be removed: {cleanup}");
            }
        }
    }

    /// As [`Runner::remove_quietly`], on a blocking thread already.
    pub(crate) fn remove_after_failure(&self, sandbox: Sandbox, err: RunError, ends: Option<Instant>) -> RunError {
        let path = sandbox.path().to_owned();
        if let Err(cleanup) = self.housekeeper().remove_within(sandbox, removal_budget(ends)) {
            tracing::error!(sandbox = %path.display(), "run failed ({err}) and its sandbox could not be removed: {cleanup}");
        }
        err
    }
}

/// How long an invocation removes its own sandbox before it hands the rest
/// to the housekeeping thread: [`REMOVAL_BUDGET`], or what is left of the
/// deadline `ends` if less (zero past it: the removal still makes one step).
pub(crate) fn removal_budget(ends: Option<Instant>) -> Duration {
    ends.map_or(REMOVAL_BUDGET, |at| at.saturating_duration_since(Instant::now()).min(REMOVAL_BUDGET))
}

/// The slots an admitted invocation holds: released once the invocation has
/// returned and its last blocking stage has stopped, so a stage that goes on
/// past the deadline still counts against the bounds. The tenant's bound is
/// held with them: a shutdown leaves the folder of a tenant held so.
pub(crate) struct Slots {
    _tenant: Option<Arc<Tenant>>,
    _tenant_slot: Option<OwnedSemaphorePermit>,
    _global: OwnedSemaphorePermit,
}

/// What admission gives an invocation: its slots (held until it ends) and
/// the limits it runs under.
pub(crate) struct Admitted {
    pub slots: Slots,
    pub limits: Limits,
}

impl Runner {
    /// Admission, for every kind of invocation: what the caller asked for
    /// must make sense, then a slot of the tenant (first, so a tenant at its
    /// bound holds no global slot) and one of the runner, waited for within
    /// `queue_timeout` or refused at once when failing fast. Only the
    /// tenant's bound is made here (no I/O, on the caller's executor): its
    /// folders are opened by the first blocking stage, once a slot is held.
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
        let tenant_bound = tenant.map(|id| self.tenant(id)).transpose()?;
        let limits = limits.or_else(|| tenant.and_then(|id| self.tenant_profile(id))).unwrap_or_default();
        if limits.fuel.is_some() && !self.config().fuel_metering {
            return Err(RunError::InvalidArgument(
                "a fuel limit needs a runner built with fuel metering (RunnerConfig::fuel_metering)".into(),
            ));
        }
        let busy = || RunError::Busy { tenant: tenant.map(str::to_owned) };
        let waiting = async {
            let tenant_slot = match &tenant_bound {
                Some(bound) => Some(acquire(&bound.slots, admission).await.ok_or_else(busy)?),
                None => None,
            };
            let slot = acquire(self.slots(), admission).await.ok_or_else(busy)?;
            Ok::<_, RunError>((tenant_slot, slot))
        };
        let (tenant_slot, slot) = match queue_timeout {
            Some(timeout) => tokio::time::timeout(timeout, waiting).await.map_err(|_| busy())??,
            None => waiting.await?,
        };
        // A shutdown while this one waited refuses it as well.
        if self.is_shut_down() {
            return Err(RunError::ShutDown);
        }
        Ok(Admitted { slots: Slots { _tenant: tenant_bound, _tenant_slot: tenant_slot, _global: slot }, limits })
    }

    /// The root a sandbox is made in: the tenant's folder (`folders`) or
    /// the runner's, in memory when `in_memory` and there is a memory root;
    /// and whether it is the memory root.
    pub(crate) fn sandbox_root_for<'a>(
        &'a self,
        folders: Option<&'a TenantFolders>,
        in_memory: bool,
    ) -> (&'a SandboxRoot, bool) {
        let (disk, memory) = match folders {
            Some(folders) => (&folders.disk_root, folders.memory_root.as_ref()),
            None => (self.sandbox_root(), self.memory_root()),
        };
        match memory {
            Some(memory) if in_memory => (memory, true),
            _ => (disk, false),
        }
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

/// What the last blocking stage gives back.
struct Finished {
    report: Report,
    delivered: Delivered,
    outputs: Vec<OutputFile>,
    collected: Duration,
    delivering: Duration,
    removed: Duration,
}

/// How long an invocation waits, past its deadline, for the stage it
/// stopped to notice (at its next step: a chunk of input, an output file)
/// and hand its sandbox over for removal. Any step takes far less; a caller's
/// reader blocked inside one `read` call can take longer, and then the
/// invocation returns without it, the stage keeping its slot until it stops.
const STOP_GRACE: Duration = Duration::from_millis(250);

/// The deadline shared by an invocation's stages, the way to stop them, and
/// the slots they hold.
pub(crate) struct Stages {
    deadline: Option<(Instant, Duration)>,
    pub(crate) cancel: Cancel,
    slots: Arc<Slots>,
    _on_drop: CancelOnDrop,
}

impl Stages {
    pub(crate) fn new(deadline: Option<Duration>, slots: Slots) -> Self {
        let cancel = Cancel::default();
        Self {
            deadline: deadline.map(|limit| (Instant::now() + limit, limit)),
            _on_drop: CancelOnDrop(cancel.clone()),
            cancel,
            slots: Arc::new(slots),
        }
    }

    /// When the deadline passes, if there is one.
    pub(crate) fn ends(&self) -> Option<Instant> {
        self.deadline.map(|(at, _)| at)
    }

    /// Time left before the deadline, if there is one.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|(at, _)| at.saturating_duration_since(Instant::now()))
    }

    pub(crate) fn exceeded(&self) -> RunError {
        RunError::DeadlineExceeded { limit: self.deadline.map_or(Duration::ZERO, |(_, limit)| limit) }
    }

    /// `err` of a stage, or, when the deadline stopped it, the deadline's.
    pub(crate) fn stopped(&self, err: RunError) -> RunError {
        if self.cancel.check().is_err() { self.exceeded() } else { err }
    }

    /// Runs `work` on the blocking pool, holding the invocation's slots,
    /// and waits for it until the deadline; past it, `work` is told to stop
    /// and given [`STOP_GRACE`] to do so (it owns what it holds, and removes
    /// it), then left to finish on its own.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RunError> {
        let slots = Arc::clone(&self.slots);
        let mut task = tokio::task::spawn_blocking(move || {
            let done = work();
            drop(slots);
            done
        });
        let joined = match self.deadline {
            Some((at, _)) => match tokio::time::timeout_at(at.into(), &mut task).await {
                Ok(joined) => joined,
                Err(_elapsed) => {
                    self.cancel.cancel();
                    match tokio::time::timeout(STOP_GRACE, task).await {
                        Ok(joined) => joined,
                        Err(_still_going) => {
                            tracing::warn!(
                                "a stage of the invocation did not stop within {STOP_GRACE:?} past its deadline; it keeps its slot until it does"
                            );
                            return Err(self.exceeded());
                        }
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_show_every_stage_in_whole_microseconds_on_one_line() {
        let timings = Timings {
            sandbox_create: Duration::from_nanos(41_900),
            guest: Duration::from_millis(2),
            total: Duration::from_micros(2_650),
            ..Timings::default()
        };
        assert_eq!(
            timings.to_string(),
            "queued 0µs, sandbox_create 41µs, input_copy 0µs, instantiate 0µs, guest 2000µs, collect 0µs, \
             deliver 0µs, sandbox_remove 0µs, total 2650µs"
        );
    }
}
