//! The service: accepting a job (its body streamed to memory or to its
//! private file), running it on the shared runner under its tenant's
//! limits, answering for it, cancelling and deleting it, and expiring it.
//! The HTTP handlers of `api.rs` are thin over this.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use futures_util::StreamExt as _;
use orders_host::{Component, Delivered, Destination, Input, Invocation, OutputFile, RunError, RunOutcome, Runner};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{oneshot, watch};
use utoipa::ToSchema;

use super::api::ApiError;
use super::charges::{Charge, Charges};
use super::config::{BUNDLED, Config, TenantConfig, hex};
use super::ends::{End, EndWatch, Ends};
use super::metrics::Metrics;
use super::queue::{Refusal, Reservation, Scheduler};
use super::store::{EndComing, Ending, Insertion, JobRecord, JsonText, NewJob, State, Store};
use crate::render;

/// Bodies up to this size are kept in memory while they arrive, then in
/// the job's record; larger ones go to the job's file from the first byte
/// past it (the runner's spool threshold: such inputs also run in memory).
pub const SPOOL_THRESHOLD: usize = 1 << 20;

/// A job posted with `?wait=` and a body of at most this size is held in
/// memory and written once, at its end, if it ends within the wait. The
/// bound keeps what waiting clients can make the server hold small: at
/// most the server's `max_queued` and `max_concurrent` jobs, 64 KiB each.
pub const HELD_INPUT: usize = 64 << 10;

/// The longest `?wait=` honoured, so a request does not hold its
/// connection for ever.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// A result of at most this many bytes, all outputs together, is kept in
/// the database with the job's end (no files, no flush of their own);
/// larger ones are files in the job's results folder. `host worker` keeps
/// such a result in memory until it is uploaded.
pub const RESULT_IN_DATABASE: u64 = 128 << 10;

const INPUT_FILE: &str = "input.csv";
/// Where a version before results folders kept a job's outputs, inside
/// its job folder; moved to its results folder at the next start.
const LEGACY_OUTPUT_FOLDER: &str = "out";

/// Why a running job is stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `DELETE`: the job ends `cancelled` and its files go.
    Delete,
    /// The server is stopping: the job goes back to the queue.
    Drain,
}

#[derive(Debug)]
pub struct Service {
    pub config: Config,
    runner: Runner,
    components: HashMap<String, Component>,
    pub store: Store,
    scheduler: Arc<Scheduler>,
    pub metrics: Metrics,
    /// `jobs/ID/`: a large input, while its job waits or runs.
    jobs_dir: PathBuf,
    /// `results/ID/`: a large result's outputs.
    results_dir: PathBuf,
    /// Jobs started and not yet ended, by id: the store records a job
    /// only when it is accepted and when it ends.
    running: Mutex<HashMap<String, Running>>,
    /// Jobs started and not yet ended: a job gives its slot back once its
    /// guest is done, before its end is recorded, so the drain waits for
    /// these, not for the slots.
    in_flight: AtomicUsize,
    /// Bumped whenever a job changes state, for `DELETE` and the drain.
    changes: watch::Sender<u64>,
    /// The waiters of each job's end, for `?wait=`.
    ends: Ends,
    /// Jobs accepted with `?wait=`, a body of at most [`HELD_INPUT`] and no
    /// idempotency key, not written yet: if one ends within its wait, its
    /// one write is its end; if the wait runs out or the server drains
    /// first, it is written queued before its `202`. Nobody else knows its
    /// id meanwhile.
    unwritten: Mutex<HashMap<String, Unwritten>>,
    /// Bytes of each tenant's `max_stored` the database does not count yet.
    charges: Arc<Charges>,
    /// Set when the drain begins: no job is admitted, and waiters of
    /// unwritten jobs stop waiting.
    draining: watch::Sender<bool>,
}

/// A job accepted and not yet written (see `Service::unwritten`).
#[derive(Debug)]
struct Unwritten {
    /// Its input is in memory.
    job: NewJob,
    /// Its input, charged to its tenant until a write makes the database
    /// count it (taken by that write, released once it is committed).
    charge: Option<Charge>,
    /// Sent to the store as queued: its end is then an update.
    queued: bool,
}

/// A job between its start and its recorded end.
#[derive(Debug)]
struct Running {
    /// Milliseconds since the Unix epoch.
    started_at: i64,
    /// Stops its run; taken by the first to stop it.
    stop: Option<oneshot::Sender<Stop>>,
}

/// Where one output of a succeeded job is.
#[derive(Debug)]
pub enum StoredOutput {
    /// In the database (a small result): its bytes.
    Bytes(Vec<u8>),
    /// A file in the job's results folder.
    File(PathBuf),
}

impl Service {
    pub fn new(
        config: Config,
        runner: Runner,
        components: HashMap<String, Component>,
        store: Store,
        jobs_dir: PathBuf,
        results_dir: PathBuf,
    ) -> Arc<Self> {
        let lanes = config.tenants.iter().map(|(name, t)| (name.clone(), t.max_concurrent, t.max_queued));
        let scheduler = Arc::new(Scheduler::new(config.max_concurrent, config.max_queued, lanes));
        Arc::new(Self {
            config,
            runner,
            components,
            store,
            scheduler,
            metrics: Metrics::new(),
            jobs_dir,
            results_dir,
            running: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            changes: watch::Sender::new(0),
            ends: Ends::default(),
            unwritten: Mutex::default(),
            charges: Arc::default(),
            draining: watch::Sender::new(false),
        })
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(id)
    }

    fn result_dir(&self, id: &str) -> PathBuf {
        self.results_dir.join(id)
    }

    /// Accepts a body as a new job of `tenant`, or answers with the job its
    /// idempotency key already names; with `wait`, the job once it ended or
    /// when the wait is over.
    pub async fn accept(
        &self,
        tenant: &str,
        component: Option<String>,
        key: Option<String>,
        declared_length: Option<u64>,
        body: Body,
        wait: Option<Duration>,
    ) -> Result<JobRecord, ApiError> {
        let (settings, component) = check_request(&self.config, tenant, component, declared_length)?;
        let existing = match &key {
            Some(key) => self.store.keyed(tenant.to_owned(), key.clone()).await.map_err(ApiError::from)?,
            None => None,
        };
        if let Some(existing) = existing {
            // A retry: the same body under the same key names the same job.
            let received = self.receive(settings, None, body).await?;
            return self.same_request(tenant, &existing, &component, &received.sha256, wait).await;
        }
        let reservation = self.scheduler.admit(tenant).map_err(|refusal| self.refused(refusal))?;
        // A body that may be large is refused before it is read when the
        // tenant's storage is full; every body is checked again, with its
        // size, in the transaction that records it.
        if declared_length.is_none_or(|length| length > SPOOL_THRESHOLD as u64) {
            let stored = self.store.stored_bytes(tenant);
            if stored >= settings.max_stored {
                return Err(ApiError::storage_full(stored, settings.max_stored));
            }
        }

        let id = new_job_id().map_err(ApiError::from)?;
        let mut folder = FolderGuard { path: self.job_dir(&id), keep: false };
        let received = self.receive(settings, Some(&folder.path), body).await?;
        let job = NewJob {
            id: id.clone(),
            tenant: tenant.to_owned(),
            component: component.clone(),
            input_bytes: received.bytes,
            input: received.memory,
            input_sha256: received.sha256.clone(),
            created_at: now_ms(),
        };
        let record = queued_record(&job);
        let charge = self.charges.charge(tenant, received.bytes);
        let wait = wait.filter(|wait| !wait.is_zero());
        let held = job.input.as_ref().is_some_and(|input| input.len() <= HELD_INPUT);
        if let Some(wait) = wait.filter(|_| key.is_none() && held) {
            // Checked as the insert checks (see `charges`), but without a write.
            let stored = self.store.stored_bytes(tenant);
            if stored.saturating_add(charge.total_then) > settings.max_stored {
                return Err(ApiError::storage_full(stored, settings.max_stored));
            }
            // Its body is in memory: there is no folder to remove.
            folder.keep = true;
            let end = self.ends.watch(&id);
            self.unwritten().insert(id.clone(), Unwritten { job, charge: Some(charge), queued: false });
            self.queue(reservation, tenant, &id, received.bytes);
            return self.wait_unwritten(tenant, record, wait, end).await;
        }
        let (charges, charged, max_stored) = (Arc::clone(&self.charges), tenant.to_owned(), settings.max_stored);
        let fits = move |stored: u64| stored.saturating_add(charges.total(&charged)) <= max_stored;
        let (insertion, charge) = self.store.insert(job, key, charge, fits).await.map_err(ApiError::from)?;
        drop(charge);
        match insertion {
            Insertion::Queued => {}
            // A concurrent request with the same key was recorded first.
            Insertion::Keyed(existing) => {
                return self.same_request(tenant, &existing, &component, &received.sha256, wait).await;
            }
            Insertion::StorageFull(stored) => return Err(ApiError::storage_full(stored, settings.max_stored)),
        }
        folder.keep = true;
        // Watched before it is queued, so its end is not missed.
        let end = wait.map(|_| self.ends.watch(&id));
        self.queue(reservation, tenant, &id, received.bytes);
        match wait.zip(end) {
            // The record as just written, not read back: nothing can have
            // changed it, as the job is queued only now.
            Some((wait, end)) => self.wait_on(tenant, record, wait, end).await,
            None => Ok(record),
        }
    }

    /// Queues job `id` in the place `reservation` holds.
    fn queue(&self, reservation: Reservation, tenant: &str, id: &str, bytes: u64) {
        reservation.commit(id.to_owned());
        self.metrics.set_queued(tenant, self.scheduler.queued(tenant));
        tracing::debug!(job = %id, bytes, "accepted");
    }

    async fn same_request(
        &self,
        tenant: &str,
        existing: &super::store::KeyedJob,
        component: &str,
        sha256: &str,
        wait: Option<Duration>,
    ) -> Result<JobRecord, ApiError> {
        if existing.input_sha256 != sha256 || existing.component != component {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "idempotency-conflict",
                "this Idempotency-Key was used for another body or component; use a new key for a new job",
            ));
        }
        match wait {
            Some(wait) => self.wait_for(tenant, &existing.job_id, wait).await,
            None => self.job(tenant, &existing.job_id).await,
        }
    }

    fn refused(&self, refusal: Refusal) -> ApiError {
        let retry_after = self.scheduler.retry_after();
        match refusal {
            Refusal::Tenant => ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too-many-queued",
                "this tenant has max_queued jobs waiting; retry after the time in Retry-After",
            )
            .retry_after(retry_after),
            Refusal::Server => ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "server-busy",
                "the server has max_queued jobs waiting over all tenants; retry after the time in Retry-After",
            )
            .retry_after(retry_after),
            Refusal::Draining => ApiError::draining(),
        }
    }

    /// Reads the body, hashing it: in memory up to the spool threshold,
    /// then into `folder/input.csv` (0600 from its creation), synced before
    /// this returns. Past `max_input` it stops at once with 413. Without a
    /// folder the body is only hashed (an idempotent retry).
    async fn receive(&self, settings: &TenantConfig, folder: Option<&Path>, body: Body) -> Result<Received, ApiError> {
        let mut stream = body.into_data_stream();
        let mut hasher = Sha256::new();
        let mut memory = Vec::new();
        let mut file: Option<tokio::fs::File> = None;
        let mut total: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = chunk.map_err(|err| {
                ApiError::bad_request(format!("the request body could not be read: {err}; send it again"))
            })?;
            total = total.saturating_add(chunk.len() as u64);
            if total > settings.max_input {
                return Err(ApiError::too_large(settings.max_input));
            }
            hasher.update(&chunk);
            let Some(folder) = folder else { continue };
            match &mut file {
                Some(file) => file.write_all(&chunk).await.map_err(ApiError::from)?,
                None if memory.len() + chunk.len() <= SPOOL_THRESHOLD => memory.extend_from_slice(&chunk),
                None => {
                    let mut opened = create_input_file(folder).await.map_err(ApiError::from)?;
                    opened.write_all(&memory).await.map_err(ApiError::from)?;
                    opened.write_all(&chunk).await.map_err(ApiError::from)?;
                    memory = Vec::new();
                    file = Some(opened);
                }
            }
        }
        if let (Some(mut file), Some(folder)) = (file.take(), folder) {
            file.flush().await.map_err(ApiError::from)?;
            file.sync_all().await.map_err(ApiError::from)?;
            // The file's name is durable once its folder, and the folder's, are.
            let dirs = [folder.to_owned(), self.jobs_dir.clone()];
            tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|dir| std::fs::File::open(dir)?.sync_all()))
                .await
                .map_err(|err| ApiError::internal(format!("the sync task failed: {err}")))?
                .map_err(ApiError::from)?;
            return Ok(Received { memory: None, bytes: total, sha256: hex(&hasher.finalize()) });
        }
        Ok(Received { memory: Some(memory), bytes: total, sha256: hex(&hasher.finalize()) })
    }

    /// The job, if it is `tenant`'s; 404 otherwise, whoever's it is.
    pub async fn job(&self, tenant: &str, id: &str) -> Result<JobRecord, ApiError> {
        if !is_job_id(id) {
            return Err(ApiError::not_found());
        }
        // Looked at before the store is read: a job the store has not seen
        // end and that was running then is running (its end is committed
        // before it leaves them); one that starts after the look shows queued.
        let started = self.running().get(id).map(|job| job.started_at);
        let mut job = self
            .store
            .get(tenant.to_owned(), id.to_owned())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(ApiError::not_found)?;
        if let Some(started_at) = started {
            job.mark_running(started_at);
        }
        Ok(job)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the run of job `id` with `why`, unless it is not running or
    /// has been stopped already.
    fn stop(&self, id: &str, why: Stop) {
        let sender = self.running().get_mut(id).and_then(|job| job.stop.take());
        if let Some(sender) = sender {
            let _ = sender.send(why);
        }
    }

    /// The job once it has ended, or as it is when `wait` is over.
    pub async fn wait_for(&self, tenant: &str, id: &str, wait: Duration) -> Result<JobRecord, ApiError> {
        let end = self.ends.watch(id);
        let job = self.job(tenant, id).await?;
        self.wait_on(tenant, job, wait, end).await
    }

    /// `job` (as read after `end` began watching it) once it has ended, or
    /// as it is when `wait` is over.
    async fn wait_on(
        &self,
        tenant: &str,
        mut job: JobRecord,
        wait: Duration,
        mut end: EndWatch<'_>,
    ) -> Result<JobRecord, ApiError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        while !job.state.ended() {
            let Ok(ended) = tokio::time::timeout_at(deadline, end.ended()).await else {
                return self.job(tenant, &job.id).await;
            };
            match ended {
                End::Recorded(record) => return Ok(unshared(record)),
                End::NotRecorded => return Err(not_recorded(&job.id)),
                // Ended without its record at hand, or put back in the queue by a drain.
                End::ReadAgain => {
                    end = self.ends.watch(&job.id);
                    job = self.job(tenant, &job.id).await?;
                }
            }
        }
        Ok(job)
    }

    /// An unwritten job (`job`, as accepted) once it has ended, or, when
    /// `wait` is over or the server drains first, once it is written
    /// queued, as it is then.
    async fn wait_unwritten(
        &self,
        tenant: &str,
        job: JobRecord,
        wait: Duration,
        mut end: EndWatch<'_>,
    ) -> Result<JobRecord, ApiError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut draining = self.draining.subscribe();
        tokio::select! {
            ended = end.ended() => return self.ended_record(tenant, &job.id, ended).await,
            () = tokio::time::sleep_until(deadline) => {}
            // Not its `Ref`, which is not `Send`.
            _ = async { draining.wait_for(|draining| *draining).await.is_ok() } => {}
        }
        if self.write_queued(&job.id).await.map_err(ApiError::from)? {
            return self.job(tenant, &job.id).await;
        }
        // Its end was sent meanwhile: it is on disk in a moment.
        let ended = end.ended().await;
        self.ended_record(tenant, &job.id, ended).await
    }

    /// The record of job `id` once `ended` told of its end.
    async fn ended_record(&self, tenant: &str, id: &str, ended: End) -> Result<JobRecord, ApiError> {
        match ended {
            End::Recorded(record) => Ok(unshared(record)),
            End::ReadAgain => self.job(tenant, id).await,
            End::NotRecorded => Err(not_recorded(id)),
        }
    }

    fn unwritten(&self) -> std::sync::MutexGuard<'_, HashMap<String, Unwritten>> {
        self.unwritten.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes unwritten job `id` queued, unless it has been; true once it
    /// is on disk so, false when it is not an unwritten job (any more: its
    /// end may have been sent instead, to be told to its waiters).
    async fn write_queued(&self, id: &str) -> anyhow::Result<bool> {
        let sent = {
            let mut unwritten = self.unwritten();
            let Some(held) = unwritten.get_mut(id) else { return Ok(false) };
            if held.queued {
                None
            } else {
                // Sent while the lock is held, so the job's end (which
                // takes it from `unwritten` first) is sent after it.
                let sent = self.store.send_queued(held.job.clone(), held.charge.take())?;
                held.queued = true;
                Some(sent)
            }
        };
        match sent {
            Some(sent) => drop(sent.await.context("the job database's writer has stopped")??),
            // Another wrote it: on disk once the writes sent so far are.
            None => self.store.barrier().await?,
        }
        Ok(true)
    }

    pub async fn list(&self, tenant: &str, limit: u32) -> Result<Vec<JobRecord>, ApiError> {
        // Looked at before the store is read, as for one job.
        let started: HashMap<String, i64> =
            self.running().iter().map(|(id, job)| (id.clone(), job.started_at)).collect();
        let mut jobs = self.store.list(tenant.to_owned(), limit).await.map_err(ApiError::from)?;
        for job in &mut jobs {
            if let Some(started_at) = started.get(&job.id) {
                job.mark_running(*started_at);
            }
        }
        Ok(jobs)
    }

    /// Output `name` of a job, if its record lists it.
    pub async fn output(&self, tenant: &str, id: &str, name: &str) -> Result<StoredOutput, ApiError> {
        let job = self.job(tenant, id).await?;
        let Some((_, offset, length)) = result_spans(&job).find(|(listed, _, _)| *listed == name) else {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not-found",
                format!("job {id} has no output of that name; its job lists its outputs"),
            ));
        };
        match self.store.results_part(id.to_owned(), offset, length).await.map_err(ApiError::from)? {
            Some(bytes) => Ok(StoredOutput::Bytes(bytes)),
            None => Ok(StoredOutput::File(self.result_dir(id).join(name))),
        }
    }

    /// The names and places of a succeeded job's outputs, for its tar, and
    /// when it ended (the entries' time).
    pub async fn outputs(&self, tenant: &str, id: &str) -> Result<(Vec<(String, StoredOutput)>, i64), ApiError> {
        let job = self.job(tenant, id).await?;
        if job.state != State::Succeeded {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "not-finished",
                format!("job {id} is {}: only a succeeded job has outputs", job.state.name()),
            ));
        }
        let results = self.store.results(id.to_owned()).await.map_err(ApiError::from)?;
        let folder = self.result_dir(id);
        let outputs = result_spans(&job)
            .map(|(name, offset, length)| {
                let output = match &results {
                    Some(results) => {
                        let part = |at: u64| usize::try_from(at).unwrap_or(usize::MAX).min(results.len());
                        StoredOutput::Bytes(results[part(offset)..part(offset.saturating_add(length))].to_vec())
                    }
                    None => StoredOutput::File(folder.join(name)),
                };
                (name.to_owned(), output)
            })
            .collect();
        Ok((outputs, job.finished_at.unwrap_or_else(now_ms)))
    }

    /// `DELETE`: a queued job is cancelled, a running one stopped (its
    /// sandbox removed) and cancelled, an ended one forgotten; its files go
    /// at once in every case.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), ApiError> {
        let job = self.job(tenant, id).await?;
        let mut state = job.state;
        if state == State::Queued && self.scheduler.remove(tenant, id) {
            self.store.cancel(id.to_owned(), now_ms()).await.map_err(ApiError::from)?;
            // Written queued (its id was answered), now cancelled.
            self.unwritten().remove(id);
            self.metrics.set_queued(tenant, self.scheduler.queued(tenant));
            self.remove_files(id).await;
            self.changed();
            self.ends.announce(id, End::ReadAgain);
            return Ok(());
        }
        if matches!(state, State::Queued | State::Running) {
            // Running (or starting): stop it, and wait for its task to say so.
            let mut changes = self.changes.subscribe();
            self.stop(id, Stop::Delete);
            loop {
                changes.borrow_and_update();
                state = self.job(tenant, id).await?.state;
                if state.ended() {
                    break;
                }
                if tokio::time::timeout(Duration::from_secs(1), changes.changed()).await.is_err() {
                    // A job between the queue and its start: stop it once it is registered.
                    self.stop(id, Stop::Delete);
                }
            }
            if state == State::Cancelled {
                return Ok(());
            }
        }
        self.store.delete(id.to_owned()).await.map_err(ApiError::from)?;
        self.remove_files(id).await;
        self.changed();
        Ok(())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Removes the job's input and result folders, whichever exist.
    async fn remove_files(&self, id: &str) {
        self.remove_folders(id, vec![self.job_dir(id), self.result_dir(id)]).await;
    }

    async fn remove_folders(&self, id: &str, folders: Vec<PathBuf>) {
        let result = tokio::task::spawn_blocking(move || {
            folders.iter().try_for_each(|folder| match std::fs::remove_dir_all(folder) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            })
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(job = id, "cannot remove the job's files: {err}"),
            Err(err) => tracing::error!(job = id, "the removal task failed: {err}"),
        }
    }

    /// Starts queued jobs as slots free up, until the server drains.
    pub async fn dispatch(self: Arc<Self>) {
        loop {
            let changed = self.scheduler.changed();
            while let Some((tenant, id)) = self.scheduler.next() {
                self.metrics.running.set(i64::try_from(self.scheduler.running()).unwrap_or(i64::MAX));
                self.metrics.set_queued(&tenant, self.scheduler.queued(&tenant));
                // Counted before it is spawned, so a drain cannot miss it.
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(Arc::clone(&self).run(tenant, id));
            }
            if self.is_draining() && self.scheduler.running() == 0 {
                return;
            }
            changed.await;
        }
    }

    async fn run(self: Arc<Self>, tenant: String, id: String) {
        let started = Instant::now();
        let span = tracing::info_span!("job", tenant = %tenant, job = %id);
        let mut slot = Slot { service: &self, tenant: &tenant, started, held: true };
        // Counted as running: a tenant with nothing else on the server has 1.
        let end_coming = self.store.end_coming(self.scheduler.load(&tenant) == 1);
        let outcome = tracing::Instrument::instrument(self.run_job(&tenant, &id, &mut slot, end_coming), span).await;
        slot.release();
        let end = match outcome {
            Ok(Some((outcome, end))) => {
                self.metrics.job_ended(&tenant, &outcome, started.elapsed().as_secs_f64());
                end
            }
            Ok(None) => End::ReadAgain,
            Err(err) => {
                tracing::error!(tenant, job = id, "the job could not be recorded: {err:#}");
                End::ReadAgain
            }
        };
        self.running().remove(&id);
        // Still held and never written: it failed before its end could be
        // written, so nothing of it is kept (not "read it again": a 404).
        let end = match self.unwritten().remove(&id) {
            Some(held) if !held.queued => End::NotRecorded,
            _ => end,
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.changed();
        self.ends.announce(&id, end);
    }

    /// Runs one job to its recorded end; the outcome's name and how to
    /// tell its waiters, or `None` when it did not end (deleted before it
    /// started, or put back by a drain). Its slot is given back as soon as
    /// its guest is done.
    async fn run_job(
        &self,
        tenant: &str,
        id: &str,
        slot: &mut Slot<'_>,
        end_coming: EndComing,
    ) -> anyhow::Result<Option<(String, End)>> {
        let (stop_sender, stop) = oneshot::channel();
        let started_at = now_ms();
        let running = Running { started_at, stop: Some(stop_sender) };
        self.running().insert(id.to_owned(), running);
        let held = self.unwritten().get(id).map(|held| (queued_record(&held.job), held.job.input.clone()));
        let started = match held {
            Some(held) => Some(held),
            None => self.store.start(id.to_owned(), started_at).await?,
        };
        let Some((mut record, stored_input)) = started else { return Ok(None) };
        record.mark_running(started_at);
        self.changed();
        let input_file = stored_input.is_none();
        let input = match stored_input {
            Some(bytes) => Input::Bytes(bytes),
            None => Input::Path(self.job_dir(id).join(INPUT_FILE)),
        };
        let result = match self.components.get(&record.component) {
            Some(component) => {
                // A large result's files get no fsync each: the store
                // flushes the filesystem once for every job whose end it
                // commits together, before it records them succeeded
                // (`Store::finish`). A small one is committed with the end.
                let destination = Destination::MemoryOrFolder {
                    max_bytes: RESULT_IN_DATABASE,
                    path: self.result_dir(id),
                    force: true,
                };
                let invocation = Invocation::new(component.clone(), input)
                    .tenant(tenant)
                    .destination(destination)
                    .sync_outputs(false);
                tokio::select! {
                    result = self.runner.invoke(invocation) => Ok(result),
                    // Dropping the invocation removes its sandbox.
                    Ok(stop) = stop => Err(stop),
                }
            }
            None => Ok(Err(RunError::Host(format!(
                "the component `{}` is no longer in the server's config",
                record.component
            )))),
        };
        // The next job's guest need not wait for this one's end to be on disk.
        slot.release();
        match result {
            Ok(result) => self.record_end(record, input_file, result, end_coming).await.map(Some),
            Err(Stop::Delete) => {
                self.store.cancel(id.to_owned(), now_ms()).await?;
                self.remove_files(id).await;
                Ok(Some(("cancelled".to_owned(), End::ReadAgain)))
            }
            Err(Stop::Drain) => {
                // Queued in the store (written so now if it was not yet).
                // Whatever it delivered goes; its input stays for the next start.
                self.write_queued(id).await?;
                self.remove_folders(id, vec![self.result_dir(id)]).await;
                Ok(None)
            }
        }
    }

    /// Records the end of the run of `record` (its input a file when
    /// `input_file`); the outcome's name and how to tell its waiters.
    async fn record_end(
        &self,
        record: JobRecord,
        input_file: bool,
        mut result: Result<RunOutcome, RunError>,
        end_coming: EndComing,
    ) -> anyhow::Result<(String, End)> {
        let id = record.id.clone();
        let results = match &mut result {
            Ok(RunOutcome { delivered: Delivered::Memory(files), .. }) => Some(concatenated(std::mem::take(files))),
            _ => None,
        };
        let ending = Ending { results, ..ending(&result)? };
        let name = ending.outcome.clone().unwrap_or_default();
        let started_at = record.started_at.unwrap_or(ending.finished_at);
        let mut ended = record;
        ended.end(&ending);
        // Taken first, so that a wait running out now finds the end sent.
        let unwritten = self.unwritten().remove(&id).filter(|held| !held.queued);
        if let Some(Unwritten { job, charge, .. }) = unwritten {
            let job = NewJob { input: None, ..job };
            return match self.store.record(job, started_at, ending, end_coming, charge).await {
                Ok(_) => Ok((name, End::Recorded(Arc::new(ended)))),
                Err(err) => {
                    tracing::error!(job = id, "the job's end could not be recorded: {err:#}");
                    self.remove_files(&id).await;
                    Ok((name, End::NotRecorded))
                }
            };
        }
        if self.store.finish(id.clone(), started_at, ending, end_coming).await? {
            // The result is committed: the input is no longer needed.
            if input_file {
                self.remove_folders(&id, vec![self.job_dir(&id)]).await;
            }
            Ok((name, End::Recorded(Arc::new(ended))))
        } else {
            // Deleted while it ran: nothing of it stays.
            self.remove_files(&id).await;
            Ok((name, End::ReadAgain))
        }
    }

    /// At start: queued and interrupted jobs back in their lanes, job
    /// folders without a record (an upload cut by the crash) removed, and
    /// what ended jobs no longer need.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let queued = self.store.recover().await?;
        let count = queued.len();
        for (id, tenant) in queued {
            if !self.scheduler.requeue(&tenant, id.clone()) {
                let err = RunError::Host(format!("tenant {tenant} is no longer in the server's config"));
                if let Some((record, input)) = self.store.start(id.clone(), now_ms()).await? {
                    self.record_end(record, input.is_none(), Err(err), self.store.end_coming(false)).await?;
                }
            }
        }
        // Results first: a legacy job folder may move its outputs there.
        for name in folder_names(&self.results_dir).await? {
            // Staging folders of a delivery cut by the crash have no record.
            if self.store.exists(name.clone()).await? != Some(State::Succeeded) {
                self.remove_folders(&name, vec![self.results_dir.join(&name)]).await;
            }
        }
        for name in folder_names(&self.jobs_dir).await? {
            let folder = self.jobs_dir.join(&name);
            match self.store.exists(name.clone()).await? {
                Some(State::Queued | State::Running) => clear_job_folder(&folder, &[INPUT_FILE]).await,
                Some(State::Succeeded) => {
                    let (legacy, results) = (folder.join(LEGACY_OUTPUT_FOLDER), self.result_dir(&name));
                    if let Err(err) = move_legacy_outputs(&legacy, &results).await {
                        tracing::error!(job = name, "cannot move the job's outputs to {}: {err}", results.display());
                        continue;
                    }
                    self.remove_folders(&name, vec![folder]).await;
                }
                None | Some(State::Failed | State::Cancelled) => self.remove_folders(&name, vec![folder]).await,
            }
        }
        for tenant in self.config.tenants.keys() {
            self.metrics.set_queued(tenant, self.scheduler.queued(tenant));
        }
        Ok(count)
    }

    /// Deletes the results older than `result_ttl`, now and then, for ever.
    pub async fn expire(self: Arc<Self>) {
        let ttl = self.config.result_ttl;
        let period = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            let before = now_ms().saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
            let expired = match self.store.ended_before(before).await {
                Ok(expired) => expired,
                Err(err) => {
                    tracing::error!("cannot list expired jobs: {err:#}");
                    continue;
                }
            };
            for id in expired {
                self.remove_files(&id).await;
                if let Err(err) = self.store.delete(id.clone()).await {
                    tracing::error!(job = id, "cannot delete an expired job: {err:#}");
                }
            }
        }
    }

    /// Stops admitting; running jobs get `timeout` to end, then are stopped
    /// and put back in the queue for the next start.
    pub async fn drain(&self, timeout: Duration) {
        self.draining.send_replace(true);
        self.scheduler.drain();
        // Every job accepted is on disk before the server stops: the
        // unwritten ones are written queued now, their waiters answered.
        let unwritten: Vec<String> = self.unwritten().keys().cloned().collect();
        let written = futures_util::future::join_all(unwritten.iter().map(|id| self.write_queued(id))).await;
        for (id, written) in unwritten.iter().zip(written) {
            if let Err(err) = written {
                tracing::error!(job = id, "cannot write an accepted job queued: {err:#}");
            }
        }
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            changes.borrow_and_update();
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                break;
            }
        }
        let stops: Vec<_> = self.running().values_mut().filter_map(|job| job.stop.take()).collect();
        if !stops.is_empty() {
            tracing::warn!("stopping {} job(s) still running; they will run again at the next start", stops.len());
        }
        for stop in stops {
            let _ = stop.send(Stop::Drain);
        }
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            changes.borrow_and_update();
            if changes.changed().await.is_err() {
                break;
            }
        }
    }
}

/// The record an end announced: its own when this waiter was the last to
/// hold it (the usual one waiter), else a copy.
fn unshared(record: Arc<JobRecord>) -> JobRecord {
    Arc::try_unwrap(record).unwrap_or_else(|shared| JobRecord::clone(&shared))
}

/// The record of `job` as accepted, queued.
fn queued_record(job: &NewJob) -> JobRecord {
    JobRecord {
        id: job.id.clone(),
        tenant: job.tenant.clone(),
        component: job.component.clone(),
        state: State::Queued,
        outcome: None,
        report: None,
        outputs: Vec::new(),
        error: None,
        created_at: job.created_at,
        started_at: None,
        finished_at: None,
    }
}

/// A job kept in memory whose end could not be written: nothing of it is
/// kept, so the client should send it again.
fn not_recorded(id: &str) -> ApiError {
    ApiError::internal(format!(
        "the server could not record job {id}'s end (its log says why); nothing of the job is kept: send it again"
    ))
}

/// What a `POST` is checked for before its body is read, on either backend:
/// the tenant's settings and the component's name (the bundled one when
/// none is named), or the error to answer.
pub fn check_request<'c>(
    config: &'c Config,
    tenant: &str,
    component: Option<String>,
    declared_length: Option<u64>,
) -> Result<(&'c TenantConfig, String), ApiError> {
    let settings = config.tenants.get(tenant).ok_or_else(|| ApiError::internal("the tenant is not configured"))?;
    let component = component.unwrap_or_else(|| BUNDLED.to_owned());
    if component != BUNDLED && !config.components.contains_key(&component) {
        let mut names: Vec<&str> = config.components.keys().map(String::as_str).collect();
        names.push(BUNDLED);
        names.sort_unstable();
        return Err(ApiError::bad_request(format!(
            "there is no component `{component}`; this server has: {}",
            names.join(", ")
        )));
    }
    if declared_length.is_some_and(|length| length > settings.max_input) {
        return Err(ApiError::too_large(settings.max_input));
    }
    Ok((settings, component))
}

/// How a run ended, as a job records it (`host serve`, and its workers on
/// NATS), with its outputs' files.
pub fn ending(result: &Result<RunOutcome, RunError>) -> anyhow::Result<Ending> {
    Ok(match result {
        Ok(outcome) => Ending {
            state: State::Succeeded,
            outcome: Some(orders_host::Outcome::Success.name().to_owned()),
            report: Some(JsonText::of(&outcome.report)?),
            outputs: outcome.outputs.iter().map(JobOutput::from).collect(),
            error: None,
            stored_bytes: outcome.outputs.iter().map(|output| output.bytes).sum(),
            finished_at: now_ms(),
            results: None,
        },
        Err(err) => Ending {
            state: State::Failed,
            outcome: Some(err.outcome().name().to_owned()),
            report: None,
            outputs: Vec::new(),
            error: Some(render::job_error_json(err)),
            stored_bytes: 0,
            finished_at: now_ms(),
            results: None,
        },
    })
}

/// A running job's place among the server's `max_concurrent`.
struct Slot<'a> {
    service: &'a Service,
    tenant: &'a str,
    started: Instant,
    held: bool,
}

impl Slot<'_> {
    /// Gives the place back (once), for the next job to start.
    fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            let scheduler = &self.service.scheduler;
            scheduler.done(self.tenant, self.started.elapsed().as_secs_f64());
            self.service.metrics.running.set(i64::try_from(scheduler.running()).unwrap_or(i64::MAX));
        }
    }
}

#[derive(Debug)]
struct Received {
    memory: Option<Vec<u8>>,
    bytes: u64,
    sha256: String,
}

/// Removes a job folder that was never recorded (413, a cut upload, an
/// error): nothing of a refused body stays on disk.
struct FolderGuard {
    path: PathBuf,
    keep: bool,
}

impl Drop for FolderGuard {
    fn drop(&mut self) {
        if !self.keep {
            match std::fs::remove_dir_all(&self.path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    tracing::error!(folder = %self.path.display(), "cannot remove a refused upload: {err}");
                }
                _ => {}
            }
        }
    }
}

/// The job's folder, owner-only (0700); it may exist (it holds a large input).
async fn make_job_folder(folder: &Path) -> std::io::Result<()> {
    let folder = folder.to_owned();
    tokio::task::spawn_blocking(move || match std::fs::DirBuilder::new().mode(0o700).create(folder) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => Err(err),
        _ => Ok(()),
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn create_input_file(folder: &Path) -> std::io::Result<tokio::fs::File> {
    let path = folder.join(INPUT_FILE);
    make_job_folder(folder).await?;
    // Owner-only from the first byte.
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    Ok(tokio::fs::File::from_std(file))
}

/// Removes everything in a job's folder but the names in `keep`.
async fn clear_job_folder(folder: &Path, keep: &[&str]) {
    let folder = folder.to_owned();
    let keep: Vec<String> = keep.iter().map(|name| (*name).to_owned()).collect();
    let result = tokio::task::spawn_blocking(move || clear_job_folder_now(&folder, &keep)).await;
    if let Ok(Err(err)) | Err(err) = result.map_err(std::io::Error::other) {
        tracing::error!("cannot clear a job folder: {err}");
    }
}

/// Each output a job lists, with where its bytes lie in the job's results
/// as the database keeps them (`concatenated`): name, offset, length.
fn result_spans(job: &JobRecord) -> impl Iterator<Item = (&str, u64, u64)> {
    job.outputs.iter().scan(0u64, |offset, output| {
        let length = output.bytes;
        let start = *offset;
        *offset = offset.saturating_add(length);
        Some((output.name.as_str(), start, length))
    })
}

/// Outputs delivered in memory as the database keeps them: their bytes one
/// after the other, in the order the run listed them (and delivered them).
fn concatenated(files: Vec<(String, Vec<u8>)>) -> Vec<u8> {
    let mut results = Vec::with_capacity(files.iter().map(|(_, contents)| contents.len()).sum());
    for (_, contents) in files {
        results.extend_from_slice(&contents);
    }
    results
}

/// The names in `folder`.
async fn folder_names(folder: &Path) -> anyhow::Result<Vec<String>> {
    let folder = folder.to_owned();
    let names = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
        std::fs::read_dir(folder)?
            .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
            .collect()
    })
    .await??;
    Ok(names)
}

/// Moves the outputs a version before results folders kept in the job's
/// folder (`legacy`) to its results folder, unless there is none or they
/// are there already.
async fn move_legacy_outputs(legacy: &Path, results: &Path) -> std::io::Result<()> {
    let (legacy, results) = (legacy.to_owned(), results.to_owned());
    tokio::task::spawn_blocking(move || {
        if !legacy.is_dir() || results.exists() {
            return Ok(());
        }
        std::fs::rename(&legacy, &results)?;
        let parent = results.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
        std::fs::File::open(parent)?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

fn clear_job_folder_now(folder: &Path, keep: &[String]) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(folder) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        entries => entries?,
    };
    for entry in entries {
        let entry = entry?;
        if keep.iter().any(|name| entry.file_name() == name.as_str()) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// 128 bits from the OS RNG, as 32 hex digits.
pub fn new_job_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|err| std::io::Error::other(format!("the OS RNG failed: {err}")))?;
    Ok(hex(&bytes))
}

/// Whether `id` has the form of a job id (so it is safe as a folder name).
pub fn is_job_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// RFC 3339, in UTC, to the millisecond.
pub fn timestamp(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<State> for JobState {
    fn from(state: State) -> Self {
        match state {
            State::Queued => Self::Queued,
            State::Running => Self::Running,
            State::Succeeded => Self::Succeeded,
            State::Failed => Self::Failed,
            State::Cancelled => Self::Cancelled,
        }
    }
}

/// A job as the API shows it; `outcome`, `report`, `outputs` and `error`
/// have the names and shapes of `host run --json`. Every field is sent,
/// null when it has no value yet.
//
// Fields in alphabetical order, the order of the `serde_json` map this
// replaced, so that the bytes clients got did not change.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    /// When it was accepted: RFC 3339, UTC, to the millisecond.
    #[schema(format = DateTime, example = "2025-01-31T09:30:00.000Z")]
    pub created_at: String,
    /// Why it failed; null unless `state` is `failed`.
    #[schema(required = true)]
    pub error: Option<JobError>,
    /// When it ended; null until then.
    #[schema(required = true, format = DateTime)]
    pub finished_at: Option<String>,
    /// 128 random bits in hex.
    #[schema(pattern = "^[0-9a-f]{32}$", example = "3f0c6a1e9b2d4c7f8a5e1d0b6c3a9f72")]
    pub id: String,
    /// How it ended, as `host run --json` names it (`success`,
    /// `invalid-input`, `timeout`, …); null until it ends.
    #[schema(required = true, example = "success")]
    pub outcome: Option<String>,
    /// The files it delivered (a succeeded job's only).
    pub outputs: Vec<JobOutput>,
    /// The pipeline's report, as `host run --json` gives it; null unless it succeeded.
    #[schema(required = true, value_type = Option<Object>)]
    pub report: Option<JsonText>,
    /// When it started running; null until then.
    #[schema(required = true, format = DateTime)]
    pub started_at: Option<String>,
    pub state: JobState,
    /// The tenant of the token that sent it.
    pub tenant: String,
}

/// One file a job delivered, at `/v1/jobs/{id}/outputs/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobOutput {
    /// Its size in bytes.
    pub bytes: u64,
    /// Its file name.
    #[schema(example = "summary.csv")]
    pub name: String,
    /// The hex SHA-256 of its contents.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
}

impl From<&OutputFile> for JobOutput {
    fn from(file: &OutputFile) -> Self {
        Self { bytes: file.bytes, name: file.name.clone(), sha256: file.sha256.clone() }
    }
}

/// Why a job failed, as in `host run --json`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    /// The outcome's name (`invalid-input`, `timeout`, `memory-limit`, …).
    #[schema(example = "timeout")]
    pub kind: String,
    /// The limit that stopped it and its figure (`{"timeout_ms": 2000}`),
    /// or null when no limit did.
    #[schema(required = true, value_type = Option<Object>)]
    pub limit: Option<serde_json::Value>,
    /// What happened and what to do about it.
    pub message: String,
}

/// `GET /v1/jobs`: the tenant's jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

impl Job {
    /// The job of a record. The record keeps its error as the JSON it was
    /// stored as, so a record this cannot read is a server fault.
    pub fn of(record: JobRecord) -> anyhow::Result<Self> {
        let error = record
            .error
            .map(JobError::deserialize)
            .transpose()
            .with_context(|| format!("job {}: its stored error is not one", record.id))?;
        Ok(Self {
            created_at: timestamp(record.created_at),
            error,
            finished_at: record.finished_at.map(timestamp),
            id: record.id,
            outcome: record.outcome,
            outputs: record.outputs,
            report: record.report,
            started_at: record.started_at.map(timestamp),
            state: record.state.into(),
            tenant: record.tenant,
        })
    }
}

/// A blocking writer that sends what it is given to an async body, so a
/// tar is streamed as it is built, never held whole.
pub struct ChannelWriter(pub tokio::sync::mpsc::Sender<std::io::Result<Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes a tar of `outputs` (0600 entries, as the library's tar
/// delivery); those kept in the database get the time `finished_at`.
pub fn write_tar(outputs: &[(String, StoredOutput)], finished_at: i64, writer: ChannelWriter) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(64 << 10, writer));
    for (name, output) in outputs {
        match output {
            StoredOutput::File(path) => {
                let mut file = std::fs::File::open(path)?;
                builder.append_file(name, &mut file)?;
            }
            StoredOutput::Bytes(bytes) => {
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o600);
                header.set_mtime(u64::try_from(finished_at / 1000).unwrap_or(0));
                header.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut header, name, bytes.as_slice())?;
            }
        }
    }
    builder.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_128_random_bits_in_hex() {
        let (a, b) = (new_job_id().expect("rng"), new_job_id().expect("rng"));
        assert!(is_job_id(&a) && is_job_id(&b) && a != b);
        assert!(!is_job_id("../etc") && !is_job_id(&a.to_uppercase()) && !is_job_id(&a[1..]));
    }

    /// The hand-built map that the typed `Job` replaced.
    fn untyped(job: &JobRecord) -> serde_json::Value {
        serde_json::json!({
            "id": job.id,
            "tenant": job.tenant,
            "state": job.state.name(),
            "outcome": job.outcome,
            "report": job.report,
            "outputs": job.outputs,
            "error": job.error,
            "created_at": timestamp(job.created_at),
            "started_at": job.started_at.map(timestamp),
            "finished_at": job.finished_at.map(timestamp),
        })
    }

    fn record(state: State) -> JobRecord {
        JobRecord {
            id: "0123456789abcdef0123456789abcdef".to_owned(),
            tenant: "acme".to_owned(),
            component: BUNDLED.to_owned(),
            state,
            outcome: None,
            report: None,
            outputs: Vec::new(),
            error: None,
            created_at: 1_700_000_000_123,
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn the_typed_job_sends_the_bytes_of_the_untyped_one() {
        let queued = record(State::Queued);
        let succeeded = JobRecord {
            outcome: Some("success".to_owned()),
            report: Some(JsonText::of(&serde_json::json!({ "accepted": 7, "regions": { "north": 2 } })).expect("json")),
            outputs: vec![JobOutput { bytes: 12, name: "summary.csv".to_owned(), sha256: "ab".to_owned() }],
            started_at: Some(1_700_000_000_200),
            finished_at: Some(1_700_000_000_300),
            ..record(State::Succeeded)
        };
        let failed = JobRecord {
            outcome: Some("timeout".to_owned()),
            error: Some(serde_json::json!({ "kind": "timeout", "message": "m", "limit": { "timeout_ms": 2000 } })),
            ..record(State::Failed)
        };
        let unlimited = JobRecord {
            error: Some(serde_json::json!({ "kind": "invalid-input", "message": "m", "limit": null })),
            ..record(State::Failed)
        };
        for job in [queued, succeeded, failed, unlimited, record(State::Running), record(State::Cancelled)] {
            let untyped = untyped(&job).to_string();
            let typed = serde_json::to_string(&Job::of(job).expect("a readable record")).expect("serializes");
            assert_eq!(typed, untyped);
        }
    }

    #[test]
    fn timestamps_are_rfc_3339_utc() {
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
