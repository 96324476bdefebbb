//! An API replica (`host serve --nats`): the HTTP API of `host serve` over
//! JetStream. It runs no guests and keeps nothing on its disk: a body goes
//! to the object store as it arrives, the job's record to the jobs bucket,
//! its id to the tenant's queue subject.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use futures_util::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

use super::{Cluster, PutFailure, Stored, idempotency_key, input_object, job_key, output_object, signed};
use crate::serve::api::ApiError;
use crate::serve::config::{Config, hex};
use crate::serve::jobs::{MAX_WAIT, check_request, is_job_id, new_job_id, now_ms};
use crate::serve::metrics::Metrics;
use crate::serve::store::{JobRecord, KeyedJob, State};

/// How often waiters read their job again even without news of it (the
/// watch may miss ends while NATS restarts), and the gauges are refreshed.
const POLL: Duration = Duration::from_secs(2);

/// Records fetched at once while listing.
const LIST_BATCH: usize = 256;

/// The seconds a client is told to wait when NATS cannot be reached.
const RETRY_AFTER_UNAVAILABLE: u64 = 2;

#[derive(Debug)]
pub struct Replica {
    pub config: Config,
    cluster: Cluster,
    pub metrics: Metrics,
    ended: broadcast::Sender<Arc<str>>,
    draining: AtomicBool,
}

/// NATS failed or cannot be reached: the client should retry.
fn unavailable(err: impl Into<anyhow::Error>) -> ApiError {
    let err = err.into();
    tracing::warn!("NATS: {err:#}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the job queue (NATS JetStream) cannot be reached; send the request again after Retry-After",
    )
    .retry_after(RETRY_AFTER_UNAVAILABLE)
}

impl Replica {
    pub fn new(config: Config, cluster: Cluster) -> Arc<Self> {
        Arc::new(Self {
            config,
            cluster,
            metrics: Metrics::new(),
            ended: broadcast::Sender::new(1024),
            draining: AtomicBool::new(false),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Refuses while draining or while NATS cannot be reached.
    pub fn check_connected(&self) -> Result<(), ApiError> {
        if self.is_draining() {
            return Err(ApiError::draining());
        }
        if self.cluster.connected() { Ok(()) } else { Err(unavailable(anyhow::anyhow!("not connected"))) }
    }

    /// Streams the body into the object store and queues the job; or
    /// answers with the job its idempotency key already names.
    pub async fn accept(
        &self,
        tenant: &str,
        component: Option<String>,
        key: Option<String>,
        declared_length: Option<u64>,
        body: Body,
    ) -> Result<JobRecord, ApiError> {
        let (settings, component) = check_request(&self.config, tenant, component, declared_length)?;
        self.check_connected()?;
        let key_entry = key.as_deref().map(|key| idempotency_key(tenant, key));
        if let Some(entry) = &key_entry
            && let Some(existing) = self.keyed(entry).await?
        {
            let mut metered = Metered::new(body, settings.max_input);
            let mut reader = tokio_util::io::StreamReader::new(&mut metered);
            if let Err(err) = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await {
                return Err(metered.refusal(&err));
            }
            return self.same_request(tenant, &existing, &component, &metered.sha256()).await;
        }
        let (waiting, _) = self.cluster.tenant_counts(tenant).await.map_err(unavailable)?;
        if waiting >= settings.max_queued as u64 {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-queued",
                "this tenant has max_queued jobs waiting; retry after the time in Retry-After",
            )
            .retry_after(1));
        }
        if self.cluster.queued_total().await.map_err(unavailable)? >= self.config.max_queued as u64 {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server-busy",
                "the cluster has max_queued jobs queued or running over all tenants; retry after the time in \
                 Retry-After",
            )
            .retry_after(1));
        }
        let stored = self.cluster.usage(tenant).await.map_err(unavailable)?;
        if stored >= settings.max_stored {
            return Err(ApiError::storage_full(stored, settings.max_stored));
        }

        let id = new_job_id().map_err(ApiError::from)?;
        let mut metered = Metered::new(body, settings.max_input);
        let mut reader = tokio_util::io::StreamReader::new(&mut metered);
        let put = self.cluster.put_object(&input_object(&id), &mut reader).await;
        match put {
            Ok(_) => {}
            Err(PutFailure::Read(err)) => return Err(metered.refusal(&err)),
            Err(PutFailure::Store(err)) => return Err(unavailable(err)),
        }
        let (bytes, sha256) = (metered.total, metered.sha256());
        // From here on, a failure removes what was stored.
        let mut undo = Undo { cluster: &self.cluster, id: &id, tenant, bytes: 0, key_entry: None, record: false };
        let now_stored = match self.cluster.add_usage(tenant, signed(bytes)).await {
            Ok(now_stored) => now_stored,
            Err(err) => {
                undo.run().await;
                return Err(unavailable(err));
            }
        };
        undo.bytes = bytes;
        if now_stored > settings.max_stored {
            undo.run().await;
            return Err(ApiError::storage_full(now_stored - bytes, settings.max_stored));
        }
        if let Some(entry) = &key_entry {
            let keyed = KeyedJob { job_id: id.clone(), input_sha256: sha256.clone(), component: component.clone() };
            let value = serde_json::to_vec(&keyed).map_err(anyhow::Error::from)?;
            match self.cluster.jobs.create(entry, value.into()).await {
                Ok(_) => undo.key_entry = Some(entry.clone()),
                Err(err) => {
                    undo.run().await;
                    let existing = self.keyed(entry).await?;
                    return match existing {
                        // A concurrent request with the same key was first.
                        Some(existing) => self.same_request(tenant, &existing, &component, &sha256).await,
                        None => Err(unavailable(err)),
                    };
                }
            }
        }
        let record = JobRecord {
            id: id.clone(),
            tenant: tenant.to_owned(),
            component,
            state: State::Queued,
            outcome: None,
            report: None,
            outputs: Vec::new(),
            error: None,
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
        };
        let stored = Stored {
            record: record.clone(),
            input_bytes: bytes,
            input_sha256: sha256,
            run: None,
            stored_bytes: 0,
            worker: None,
            key_entry: key_entry.clone(),
            uploading: Vec::new(),
        };
        let value = stored.encode().map_err(ApiError::from)?;
        if let Err(err) = self.cluster.jobs.create(job_key(tenant, &id), value).await {
            undo.run().await;
            return Err(unavailable(err));
        }
        undo.record = true;
        // The message id makes a retried publish the same message.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let subject = self.cluster.layout.queue_subject(tenant);
        let published = match self.cluster.jetstream.publish_with_headers(subject, headers, id.clone().into()).await {
            Ok(ack) => ack.await.map(drop).map_err(anyhow::Error::from),
            Err(err) => Err(anyhow::Error::from(err)),
        };
        if let Err(err) = published {
            undo.run().await;
            return Err(unavailable(err));
        }
        tracing::debug!(job = %id, bytes, "accepted");
        Ok(record)
    }

    async fn keyed(&self, entry: &str) -> Result<Option<KeyedJob>, ApiError> {
        let value = self.cluster.jobs.get(entry).await.map_err(unavailable)?;
        value
            .map(|value| serde_json::from_slice(&value).map_err(|err| ApiError::from(anyhow::Error::from(err))))
            .transpose()
    }

    async fn same_request(
        &self,
        tenant: &str,
        existing: &KeyedJob,
        component: &str,
        sha256: &str,
    ) -> Result<JobRecord, ApiError> {
        if existing.input_sha256 != sha256 || existing.component != component {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency-conflict",
                "this Idempotency-Key was used for another body or component; use a new key for a new job",
            ));
        }
        self.job(tenant, &existing.job_id).await
    }

    /// The job, if it is `tenant`'s; 404 otherwise, whoever's it is.
    pub async fn job(&self, tenant: &str, id: &str) -> Result<JobRecord, ApiError> {
        Ok(self.stored(tenant, id).await?.0.record)
    }

    async fn stored(&self, tenant: &str, id: &str) -> Result<(Stored, u64), ApiError> {
        if !is_job_id(id) {
            return Err(ApiError::not_found());
        }
        self.cluster.read(tenant, id).await.map_err(unavailable)?.ok_or_else(ApiError::not_found)
    }

    /// The job once it has ended, or as it is when `wait` is over.
    pub async fn wait_for(&self, tenant: &str, id: &str, wait: Duration) -> Result<JobRecord, ApiError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut ended = self.ended.subscribe();
        let mut job = self.job(tenant, id).await?;
        while !job.state.ended() {
            let poll = (tokio::time::Instant::now() + POLL).min(deadline);
            match tokio::time::timeout_at(poll, ended.recv()).await {
                Ok(Ok(other)) if &*other != id => continue,
                _ if tokio::time::Instant::now() >= deadline => return self.job(tenant, id).await,
                _ => job = self.job(tenant, id).await?,
            }
        }
        Ok(job)
    }

    /// The tenant's jobs, newest first: the latest value of each of its
    /// keys, read through a short-lived ordered consumer.
    pub async fn list(&self, tenant: &str, limit: u32) -> Result<Vec<JobRecord>, ApiError> {
        let filter = format!("$KV.{}.{tenant}.*", self.cluster.layout.jobs_bucket());
        let mut jobs: Vec<JobRecord> =
            self.latest(filter).await.map_err(unavailable)?.into_iter().map(|(stored, _)| stored.record).collect();
        jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        jobs.truncate(limit as usize);
        Ok(jobs)
    }

    /// The latest value of every job key under `filter`, with its
    /// revision, through a short-lived pull consumer (a pull consumer
    /// delivers only what is asked for, so nothing is missed while it starts).
    async fn latest(&self, filter: String) -> anyhow::Result<Vec<(Stored, u64)>> {
        let mut consumer = self
            .cluster
            .jobs_stream
            .create_consumer(consumer::pull::Config {
                filter_subject: filter,
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let mut pending = consumer.info().await?.num_pending;
        let mut found = Vec::new();
        while pending > 0 {
            let asked = usize::try_from(pending).unwrap_or(usize::MAX).min(LIST_BATCH);
            let mut batch = consumer.fetch().max_messages(asked).expires(super::REQUEST_TIMEOUT).messages().await?;
            let mut received = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|err| anyhow::anyhow!("cannot read the jobs bucket: {err}"))?;
                received += 1;
                let info = message.info().map_err(|err| anyhow::anyhow!("a listed record has no metadata: {err}"))?;
                pending = info.pending;
                let revision = info.stream_sequence;
                let removed = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("KV-Operation"))
                    .is_some_and(|operation| matches!(operation.as_str(), "DEL" | "PURGE"));
                let system = message.subject.as_str().rsplit('.').nth(1).is_some_and(|token| token.starts_with('='));
                if !removed && !system {
                    found.push((Stored::decode(&message.payload)?, revision));
                }
            }
            if received == 0 {
                anyhow::bail!("the jobs bucket stopped answering while listing");
            }
        }
        let name = consumer.cached_info().name.clone();
        if let Err(err) = self.cluster.jobs_stream.delete_consumer(&name).await {
            tracing::debug!("cannot delete a listing consumer (it expires by itself): {err}");
        }
        Ok(found)
    }

    /// `DELETE`: a queued or running job is cancelled (a worker running it
    /// stops, seeing the record change), an ended one forgotten; its
    /// objects go at once.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), ApiError> {
        self.check_connected()?;
        loop {
            let (mut stored, revision) = self.stored(tenant, id).await?;
            if !stored.record.state.ended() {
                stored.record.state = State::Cancelled;
                stored.record.finished_at = Some(now_ms());
                if self.cluster.write(&stored, revision).await.map_err(unavailable)?.is_none() {
                    continue;
                }
                self.cluster.remove_object(&input_object(id)).await;
                self.cluster.remove_all(&stored.uploading).await;
                self.cluster.count_usage(tenant, -signed(stored.input_bytes)).await;
                self.announce(id);
                return Ok(());
            }
            if self.forget(&stored, revision).await.map_err(unavailable)? {
                return Ok(());
            }
        }
    }

    /// Removes an ended job's record (if still at `revision`) and then its
    /// objects; false when another member changed it first.
    async fn forget(&self, stored: &Stored, revision: u64) -> anyhow::Result<bool> {
        let key = job_key(&stored.record.tenant, &stored.record.id);
        if let Err(err) = self.cluster.jobs.purge_expect_revision(&key, Some(revision)).await {
            let err = anyhow::Error::from(err);
            return if super::is_conflict(&err) { Ok(false) } else { Err(err) };
        }
        self.cluster.remove_objects(stored).await;
        self.cluster.count_usage(&stored.record.tenant, -signed(stored.stored_bytes)).await;
        if let Some(entry) = &stored.key_entry
            && let Err(err) = self.cluster.jobs.purge(entry).await
        {
            tracing::warn!(job = stored.record.id, "cannot remove its idempotency key: {err}");
        }
        self.announce(&stored.record.id);
        Ok(true)
    }

    fn announce(&self, id: &str) {
        let _ = self.ended.send(Arc::from(id));
    }

    /// Output `name` of a succeeded job: its bytes as a body, and its length.
    pub async fn output(&self, tenant: &str, id: &str, name: &str) -> Result<(Body, u64), ApiError> {
        let (stored, _) = self.stored(tenant, id).await?;
        let listed = stored.record.outputs.iter().find(|output| output.name == name);
        let (Some(listed), Some(run)) = (listed, &stored.run) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("job {id} has no output of that name; its job lists its outputs"),
            ));
        };
        let length = listed.bytes;
        let object = self.cluster.data.get(output_object(id, run, name)).await.map_err(|_| ApiError::not_found())?;
        Ok((Body::from_stream(tokio_util::io::ReaderStream::with_capacity(object, 64 << 10)), length))
    }

    /// Every output of a succeeded job as one tar, streamed from the object
    /// store as it is built.
    pub async fn outputs_tar(&self, tenant: &str, id: &str) -> Result<Body, ApiError> {
        let (stored, _) = self.stored(tenant, id).await?;
        if stored.record.state != State::Succeeded {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not-finished",
                format!("job {id} is {}: only a succeeded job has outputs", stored.record.state.name()),
            ));
        }
        let run = stored.run.clone().unwrap_or_default();
        let mut files = Vec::new();
        for output in &stored.record.outputs {
            let (name, bytes) = (&output.name, output.bytes);
            // Opened first, so a job deleted meanwhile is a 404, not a cut tar.
            let object =
                self.cluster.data.get(output_object(id, &run, name)).await.map_err(|_| ApiError::not_found())?;
            files.push((name.clone(), bytes, object));
        }
        let mtime = stored.record.finished_at.map_or(0, |ms| u64::try_from(ms / 1000).unwrap_or(0));
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        tokio::spawn(async move {
            if let Err(err) = stream_tar(files, mtime, &sender).await {
                // Ends the body with an error: the client sees a cut transfer, not a short tar.
                let _ = sender.send(Err(err)).await;
            }
        });
        let stream = futures_util::stream::poll_fn(move |context| receiver.poll_recv(context));
        Ok(Body::from_stream(stream))
    }

    /// Tells waiters of the jobs that end, and counts the ends, from one
    /// watch of the jobs bucket; made again whenever it stops.
    pub async fn watch(self: Arc<Self>) {
        loop {
            match self.cluster.jobs.watch_all().await {
                Ok(mut entries) => {
                    while let Some(entry) = entries.next().await {
                        let Ok(entry) = entry else { break };
                        let Some((tenant, id)) = entry.key.split_once('.') else { continue };
                        if tenant.starts_with('=') {
                            continue;
                        }
                        if entry.operation == jetstream::kv::Operation::Put {
                            let Ok(stored) = Stored::decode(&entry.value) else { continue };
                            let record = &stored.record;
                            if !record.state.ended() {
                                continue;
                            }
                            if let (Some(outcome), Some(started), Some(finished)) =
                                (&record.outcome, record.started_at, record.finished_at)
                            {
                                let seconds = Duration::from_millis(u64::try_from(finished - started).unwrap_or(0));
                                self.metrics.job_ended(tenant, outcome, seconds.as_secs_f64());
                            }
                        }
                        self.announce(id);
                    }
                }
                Err(err) => tracing::warn!("cannot watch the jobs bucket: {err}"),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Refreshes the queue gauges from the tenants' consumers.
    pub async fn gauges(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(POLL);
        loop {
            ticker.tick().await;
            let mut running = 0;
            for tenant in self.config.tenants.keys() {
                if let Ok((waiting, taken)) = self.cluster.tenant_counts(tenant).await {
                    self.metrics.set_queued(tenant, usize::try_from(waiting).unwrap_or(usize::MAX));
                    running += taken;
                }
            }
            self.metrics.running.set(i64::try_from(running).unwrap_or(i64::MAX));
        }
    }

    /// Deletes the results older than `result_ttl`, now and then, for ever
    /// (every replica does; the revision-checked purge lets one win).
    pub async fn expire(self: Arc<Self>) {
        let ttl = self.config.result_ttl;
        let period = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            let before = now_ms().saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
            let filter = format!("$KV.{}.*.*", self.cluster.layout.jobs_bucket());
            let jobs = match self.latest(filter).await {
                Ok(jobs) => jobs,
                Err(err) => {
                    tracing::warn!("cannot list the jobs to expire: {err:#}");
                    continue;
                }
            };
            for (stored, revision) in jobs {
                if stored.record.state.ended()
                    && stored.record.finished_at.is_some_and(|at| at < before)
                    && let Err(err) = self.forget(&stored, revision).await
                {
                    tracing::warn!(job = stored.record.id, "cannot expire a job: {err:#}");
                }
            }
        }
    }
}

/// What an accept stored so far, removed when it cannot finish.
struct Undo<'a> {
    cluster: &'a Cluster,
    id: &'a str,
    tenant: &'a str,
    bytes: u64,
    key_entry: Option<String>,
    record: bool,
}

impl Undo<'_> {
    async fn run(self) {
        if self.record
            && let Err(err) = self.cluster.jobs.purge(job_key(self.tenant, self.id)).await
        {
            tracing::warn!(job = self.id, "cannot remove the record of a refused job: {err}");
        }
        if let Some(entry) = &self.key_entry
            && let Err(err) = self.cluster.jobs.purge(entry).await
        {
            tracing::warn!(job = self.id, "cannot remove the idempotency key of a refused job: {err}");
        }
        self.cluster.remove_object(&input_object(self.id)).await;
        self.cluster.count_usage(self.tenant, -signed(self.bytes)).await;
    }
}

/// A request body read as a stream of chunks, counted and hashed; past
/// `limit` it fails at once.
struct Metered {
    inner: axum::body::BodyDataStream,
    limit: u64,
    total: u64,
    over: bool,
    hasher: Sha256,
}

impl Metered {
    fn new(body: Body, limit: u64) -> Self {
        Self { inner: body.into_data_stream(), limit, total: 0, over: false, hasher: Sha256::new() }
    }

    fn sha256(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }

    /// The answer for a body that could not be read whole.
    fn refusal(&self, err: &std::io::Error) -> ApiError {
        if self.over {
            ApiError::too_large(self.limit)
        } else {
            ApiError::bad_request(format!("the request body could not be read: {err}; send it again"))
        }
    }
}

impl Stream for Metered {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.poll_next_unpin(context) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.total = self.total.saturating_add(chunk.len() as u64);
                if self.total > self.limit {
                    self.over = true;
                    return Poll::Ready(Some(Err(std::io::Error::other("the body is over max_input"))));
                }
                self.hasher.update(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(std::io::Error::other(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Writes a tar of `files` (0600 entries) to `sender`, each object's bytes
/// as they come.
async fn stream_tar(
    files: Vec<(String, u64, jetstream::object_store::Object)>,
    mtime: u64,
    sender: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away");
    for (name, bytes, mut object) in files {
        let mut header = tar::Header::new_gnu();
        header.set_path(&name)?;
        header.set_size(bytes);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        sender.send(Ok(Bytes::copy_from_slice(header.as_bytes()))).await.map_err(|_| gone())?;
        let mut left = bytes;
        let mut buffer = vec![0u8; 64 << 10];
        while left > 0 {
            let n = object.read(&mut buffer).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("output {name} ended early"),
                ));
            }
            let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            left -= n as u64;
            sender.send(Ok(Bytes::copy_from_slice(&buffer[..n]))).await.map_err(|_| gone())?;
        }
        let padding = (512 - bytes % 512) % 512;
        if padding > 0 {
            sender.send(Ok(Bytes::from(vec![0u8; padding as usize]))).await.map_err(|_| gone())?;
        }
    }
    sender.send(Ok(Bytes::from(vec![0u8; 1024]))).await.map_err(|_| gone())
}
