//! `host serve --nats` and `host worker`: the same service past one
//! machine, coordinated by NATS JetStream. API replicas keep nothing
//! locally; workers pull jobs, run them in local sandboxes and store the
//! results back.
//!
//! What lives where (`P` is `[nats] prefix`, `orders` by default; names
//! in capitals are its upper case):
//!
//! | what | JetStream | settings |
//! |---|---|---|
//! | the queue | stream `P_QUEUE`, subject `P.queue.<tenant>`, one message per job (its id, also its `Nats-Msg-Id`) | work-queue retention, file storage, 2 min de-duplication window |
//! | who takes jobs | a durable pull consumer per tenant, named after it | explicit acks, `ack_wait`, `max_deliver` = `max_deliveries` + 1, `max_ack_pending` = the tenant's `max_concurrent` |
//! | job records | key-value bucket `P_JOBS` (stream `KV_P_JOBS`): `<tenant>.<id>` = the job as JSON; `=usage.<tenant>` = bytes stored; `=key.<tenant>.<sha256>` = an idempotency key | history 1, file storage |
//! | inputs and outputs | object store `P_DATA` (stream `OBJ_P_DATA`): `<id>/input`, `<id>/<run>/<name>` | file storage |
//!
//! Every record change that decides something (running, the one result,
//! cancelled, deleted) is a revision-checked write, so two workers that
//! finish the same job leave one result, and a `DELETE` racing a worker's
//! end is one or the other, never both.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use serde::{Deserialize, Serialize};

use super::config::{Config, NatsSettings};
use super::store::JobRecord;

pub mod replica;
pub mod worker;

/// The JetStream names of one `[nats] prefix`.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
    upper: String,
}

impl Layout {
    pub fn new(settings: &NatsSettings) -> Self {
        Self { prefix: settings.prefix.clone(), upper: settings.prefix.to_uppercase() }
    }

    pub fn queue_stream(&self) -> String {
        format!("{}_QUEUE", self.upper)
    }

    pub fn queue_subject(&self, tenant: &str) -> String {
        format!("{}.queue.{tenant}", self.prefix)
    }

    pub fn jobs_bucket(&self) -> String {
        format!("{}_JOBS", self.upper)
    }

    pub fn data_bucket(&self) -> String {
        format!("{}_DATA", self.upper)
    }
}

/// A job's key in the jobs bucket: a tenant sees only its own.
pub fn job_key(tenant: &str, id: &str) -> String {
    format!("{tenant}.{id}")
}

fn usage_key(tenant: &str) -> String {
    format!("=usage.{tenant}")
}

fn idempotency_key(tenant: &str, key: &str) -> String {
    use sha2::Digest as _;
    format!("=key.{tenant}.{}", super::config::hex(&sha2::Sha256::digest(key.as_bytes())))
}

pub fn input_object(id: &str) -> String {
    format!("{id}/input")
}

pub fn output_object(id: &str, run: &str, name: &str) -> String {
    format!("{id}/{run}/{name}")
}

/// A job as the jobs bucket keeps it: the record the API shows, and what
/// the cluster needs besides.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    #[serde(flatten)]
    pub record: JobRecord,
    pub input_bytes: u64,
    pub input_sha256: String,
    /// The run whose outputs the record lists (objects `<id>/<run>/<name>`).
    pub run: Option<String>,
    /// Bytes of outputs this job keeps in the object store.
    pub stored_bytes: u64,
    /// The worker running it, for the log.
    pub worker: Option<String>,
    /// Its idempotency key's entry, removed with it.
    pub key_entry: Option<String>,
    /// Objects a run is storing before it records them: whoever takes the
    /// job over, gives up on it or deletes it removes them, so a worker
    /// killed mid-upload leaves nothing behind.
    #[serde(default)]
    pub uploading: Vec<String>,
}

impl Stored {
    pub fn encode(&self) -> anyhow::Result<bytes::Bytes> {
        Ok(serde_json::to_vec(self)?.into())
    }

    pub fn decode(value: &[u8]) -> anyhow::Result<Self> {
        serde_json::from_slice(value).context("a job record in the jobs bucket is not one")
    }
}

/// The handles of a connected cluster member.
#[derive(Clone)]
pub struct Cluster {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub layout: Layout,
    pub jobs: jetstream::kv::Store,
    pub jobs_stream: stream::Stream,
    pub data: jetstream::object_store::ObjectStore,
    data_stream: stream::Stream,
    pub queue: stream::Stream,
    pub settings: NatsSettings,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("layout", &self.layout).finish_non_exhaustive()
    }
}

/// How long a JetStream request may take before it counts as failed (and
/// the API answers 503).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl Cluster {
    /// Connects to `url` with the config's credentials and makes (or checks)
    /// the streams, buckets and each tenant's consumer.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached, refuses the credentials, has no
    /// JetStream, or has a stream or consumer of these names set up
    /// otherwise (named, with the setting that differs).
    pub async fn connect(url: &str, config: &Config, name: &str) -> anyhow::Result<Self> {
        let settings = &config.nats;
        check_url(url)?;
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .connection_timeout(REQUEST_TIMEOUT)
            .require_tls(settings.tls_required);
        if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &settings.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &settings.nkey {
            options = options.nkey(seed.clone());
        }
        if let Some(path) = &settings.credentials {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("[nats] credentials: cannot read {}", path.display()))?;
        }
        if let Some(path) = &settings.tls_ca {
            options = options.add_root_certificates(path.clone());
        }
        // `retry_on_initial_connect` returns at once; the first request
        // below then waits for the connection (up to REQUEST_TIMEOUT each).
        let client = options.connect(url).await.with_context(|| format!("cannot connect to NATS at {url}"))?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(REQUEST_TIMEOUT);
        let layout = Layout::new(settings);
        let queue = ensure_stream(&jetstream, queue_stream_config(&layout, settings)).await?;
        let jobs_stream = ensure_stream(&jetstream, jobs_stream_config(&layout, settings)).await?;
        let data_stream = ensure_stream(&jetstream, data_stream_config(&layout, settings)).await?;
        let jobs = jetstream.get_key_value(layout.jobs_bucket()).await.context("cannot open the jobs bucket")?;
        let data = jetstream.get_object_store(layout.data_bucket()).await.context("cannot open the data bucket")?;
        let cluster =
            Self { client, jetstream, layout, jobs, jobs_stream, data, data_stream, queue, settings: settings.clone() };
        for (tenant, tenant_config) in &config.tenants {
            cluster.ensure_consumer(tenant, tenant_config.max_concurrent).await?;
        }
        Ok(cluster)
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The tenant's consumer: made if missing; its delivery settings (from
    /// the config) brought in line with a warning; its subject checked.
    async fn ensure_consumer(&self, tenant: &str, max_concurrent: usize) -> anyhow::Result<()> {
        let wanted = consumer::pull::Config {
            durable_name: Some(tenant.to_owned()),
            description: Some(format!("the jobs of tenant {tenant}")),
            filter_subject: self.layout.queue_subject(tenant),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            // One more than the runs allowed: the delivery past the last run
            // records the job `gave-up` instead of running it.
            max_deliver: i64::from(self.settings.max_deliveries) + 1,
            max_ack_pending: i64::try_from(max_concurrent).unwrap_or(i64::MAX),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let stream = self.layout.queue_stream();
        match self.queue.get_consumer::<consumer::pull::Config>(tenant).await {
            Ok(mut existing) => {
                let info = existing.info().await.with_context(|| format!("cannot read consumer {tenant}"))?;
                let have = &info.config;
                if have.filter_subject != wanted.filter_subject || have.ack_policy != wanted.ack_policy {
                    anyhow::bail!(
                        "stream {stream} has a consumer `{tenant}` for subject `{}` (acks {:?}); this host needs \
                         `{}` with explicit acks: remove it (`nats consumer rm {stream} {tenant}`) or choose another \
                         [nats] prefix",
                        have.filter_subject,
                        have.ack_policy,
                        wanted.filter_subject
                    );
                }
                if have.ack_wait != wanted.ack_wait
                    || have.max_deliver != wanted.max_deliver
                    || have.max_ack_pending != wanted.max_ack_pending
                {
                    tracing::warn!(
                        "consumer {stream}/{tenant}: ack_wait {:?} -> {:?}, max_deliver {} -> {}, max_ack_pending {} -> {} \
                         (from the config)",
                        have.ack_wait,
                        wanted.ack_wait,
                        have.max_deliver,
                        wanted.max_deliver,
                        have.max_ack_pending,
                        wanted.max_ack_pending
                    );
                    // nats-server 2.9 updates a durable consumer's editable
                    // settings through its create request.
                    self.queue
                        .create_consumer(wanted)
                        .await
                        .with_context(|| format!("cannot update consumer {stream}/{tenant}"))?;
                }
            }
            Err(_) => {
                self.queue
                    .create_consumer(wanted)
                    .await
                    .with_context(|| format!("cannot create consumer {stream}/{tenant}"))?;
            }
        }
        Ok(())
    }

    /// The tenant's consumer: its jobs waiting (not yet taken) and taken
    /// (running, or about to).
    pub async fn tenant_counts(&self, tenant: &str) -> anyhow::Result<(u64, u64)> {
        let mut consumer: consumer::PullConsumer = self
            .queue
            .get_consumer(tenant)
            .await
            .map_err(|err| anyhow::anyhow!("cannot read the consumer of tenant {tenant}: {err}"))?;
        let info = consumer.info().await.with_context(|| format!("cannot read the consumer of tenant {tenant}"))?;
        Ok((info.num_pending, u64::try_from(info.num_ack_pending).unwrap_or(0)))
    }

    /// Jobs in the queue over all tenants, waiting or running.
    pub async fn queued_total(&self) -> anyhow::Result<u64> {
        let mut queue = self.queue.clone();
        Ok(queue.info().await.context("cannot read the queue stream")?.state.messages)
    }

    /// Adds `delta` to the bytes the tenant keeps; a revision-checked
    /// read-modify-write, retried when another member wrote meanwhile.
    pub async fn add_usage(&self, tenant: &str, delta: i64) -> anyhow::Result<u64> {
        let key = usage_key(tenant);
        loop {
            let entry = self.jobs.entry(key.clone()).await.context("cannot read a tenant's usage")?;
            let (current, revision) = match &entry {
                Some(entry) if entry.operation == jetstream::kv::Operation::Put => (
                    std::str::from_utf8(&entry.value).ok().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0),
                    Some(entry.revision),
                ),
                Some(entry) => (0, Some(entry.revision)),
                None => (0, None),
            };
            let next = current.saturating_add_signed(delta);
            let value = bytes::Bytes::from(next.to_string());
            let written = match revision {
                Some(revision) => self.jobs.update(&key, value, revision).await.map(drop).map_err(anyhow::Error::from),
                None => self.jobs.create(&key, value).await.map(drop).map_err(anyhow::Error::from),
            };
            match written {
                Ok(()) => return Ok(next),
                Err(err) if is_conflict(&err) => continue,
                Err(err) => return Err(err.context("cannot write a tenant's usage")),
            }
        }
    }

    pub async fn usage(&self, tenant: &str) -> anyhow::Result<u64> {
        let value = self.jobs.get(usage_key(tenant)).await.context("cannot read a tenant's usage")?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok().and_then(|t| t.parse().ok())).unwrap_or(0))
    }

    /// The job and its revision.
    pub async fn read(&self, tenant: &str, id: &str) -> anyhow::Result<Option<(Stored, u64)>> {
        let entry = self.jobs.entry(job_key(tenant, id)).await.context("cannot read a job record")?;
        match entry {
            Some(entry) if entry.operation == jetstream::kv::Operation::Put => {
                Ok(Some((Stored::decode(&entry.value)?, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes the job if its record is still at `revision`; `Ok(None)` when
    /// another member wrote it first.
    pub async fn write(&self, stored: &Stored, revision: u64) -> anyhow::Result<Option<u64>> {
        let key = job_key(&stored.record.tenant, &stored.record.id);
        match self.jobs.update(&key, stored.encode()?, revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(err) => {
                let err = anyhow::Error::from(err);
                if is_conflict(&err) { Ok(None) } else { Err(err.context("cannot write a job record")) }
            }
        }
    }

    /// Removes the job's objects: its input, the outputs of `run`, and
    /// what a run was storing.
    pub async fn remove_objects(&self, stored: &Stored) {
        let id = &stored.record.id;
        let mut names = vec![input_object(id)];
        names.extend(stored.uploading.iter().cloned());
        if let Some(run) = &stored.run {
            for output in &stored.record.outputs {
                names.push(output_object(id, run, &output.name));
            }
        }
        self.remove_all(&names).await;
    }

    pub async fn remove_all(&self, names: &[String]) {
        for name in names {
            self.remove_object(name).await;
        }
    }

    /// Adds `delta` to the tenant's stored bytes, logging (not failing)
    /// when it cannot: the change of the job it is for is already recorded.
    pub async fn count_usage(&self, tenant: &str, delta: i64) {
        if delta != 0
            && let Err(err) = self.add_usage(tenant, delta).await
        {
            tracing::error!(tenant, "cannot count {delta} stored bytes: {err:#}");
        }
    }

    /// Removes an object whole: its chunks and its metadata (a plain
    /// delete of the object store leaves a tombstone per object); false
    /// when it may still be there (NATS could not be reached), logged.
    pub async fn remove_object(&self, name: &str) -> bool {
        let bucket = self.layout.data_bucket();
        let info = match self.data.info(name).await {
            Ok(info) => info,
            Err(err) if err.kind() == jetstream::object_store::InfoErrorKind::NotFound => return true,
            Err(err) => {
                tracing::warn!(object = name, "cannot read an object to delete it: {err}");
                return false;
            }
        };
        let mut removed = true;
        for subject in [format!("$O.{bucket}.C.{}", info.nuid), format!("$O.{bucket}.M.{}", object_subject(name))] {
            if let Err(err) = self.data_stream.purge().filter(subject).await {
                tracing::warn!(object = name, "cannot delete an object: {err}");
                removed = false;
            }
        }
        removed
    }

    /// Stores `reader` whole as object `name`, streamed in chunks (never
    /// held whole), several in flight at once. If reading or storing fails
    /// partway, the chunks already stored are purged: nothing of a refused
    /// or cut upload stays.
    ///
    /// async-nats's own `put` leaves the chunks of a failed upload behind
    /// under a name it does not tell, and waits for each chunk's ack in turn.
    ///
    /// # Errors
    ///
    /// The reader's error as it was (e.g. the body's limit), or JetStream's.
    pub async fn put_object(
        &self,
        name: &str,
        reader: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Result<u64, PutFailure> {
        let bucket = self.layout.data_bucket();
        let nuid = super::jobs::new_job_id().map_err(PutFailure::Read)?;
        let chunk_subject = format!("$O.{bucket}.C.{nuid}");
        let stored = self.put_chunks(&chunk_subject, reader).await;
        let result = match stored {
            Ok((size, chunks, digest)) => {
                let info = jetstream::object_store::ObjectInfo {
                    name: name.to_owned(),
                    description: None,
                    metadata: std::collections::HashMap::new(),
                    headers: None,
                    options: Some(jetstream::object_store::ObjectOptions {
                        link: None,
                        max_chunk_size: Some(OBJECT_CHUNK),
                    }),
                    bucket: bucket.clone(),
                    nuid: nuid.clone(),
                    size,
                    chunks,
                    modified: None,
                    digest: Some(format!("SHA-256={}", base64_url(&digest))),
                    deleted: false,
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Rollup", "sub");
                let meta = serde_json::to_vec(&info).map_err(|err| PutFailure::Store(err.into()))?;
                let subject = format!("$O.{bucket}.M.{}", object_subject(name));
                match self.jetstream.publish_with_headers(subject, headers, meta.into()).await {
                    Ok(ack) => ack.await.map(|_| size as u64).map_err(|err| PutFailure::Store(err.into())),
                    Err(err) => Err(PutFailure::Store(err.into())),
                }
            }
            Err(err) => Err(err),
        };
        if result.is_err()
            && let Err(err) = self.data_stream.purge().filter(chunk_subject).await
        {
            tracing::warn!(object = name, "cannot purge the chunks of a failed upload: {err}");
        }
        result
    }

    async fn put_chunks(
        &self,
        subject: &str,
        reader: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Result<(usize, usize, [u8; 32]), PutFailure> {
        use sha2::Digest as _;
        use tokio::io::AsyncReadExt as _;
        let mut in_flight = std::collections::VecDeque::new();
        let (mut size, mut chunks, mut hasher) = (0usize, 0usize, sha2::Sha256::new());
        loop {
            let mut buffer = bytes::BytesMut::with_capacity(OBJECT_CHUNK);
            while buffer.len() < OBJECT_CHUNK {
                if reader.read_buf(&mut buffer).await.map_err(PutFailure::Read)? == 0 {
                    break;
                }
            }
            if buffer.is_empty() {
                break;
            }
            let chunk = buffer.freeze();
            hasher.update(&chunk);
            size += chunk.len();
            chunks += 1;
            let last = chunk.len() < OBJECT_CHUNK;
            let ack =
                self.jetstream.publish(subject.to_owned(), chunk).await.map_err(|err| PutFailure::Store(err.into()))?;
            in_flight.push_back(ack);
            if in_flight.len() >= CHUNKS_IN_FLIGHT
                && let Some(ack) = in_flight.pop_front()
            {
                ack.await.map_err(|err| PutFailure::Store(err.into()))?;
            }
            if last {
                break;
            }
        }
        for ack in in_flight {
            ack.await.map_err(|err| PutFailure::Store(err.into()))?;
        }
        Ok((size, chunks, hasher.finalize().into()))
    }
}

/// Object store chunks: async-nats's default size.
const OBJECT_CHUNK: usize = 128 * 1024;

/// Chunks published before the first of them must be acknowledged: bounds
/// what an upload holds in memory to this many chunks.
const CHUNKS_IN_FLIGHT: usize = 8;

/// Why storing an object failed.
#[derive(Debug)]
pub enum PutFailure {
    /// Reading the source failed (a body over its limit, a cut upload).
    Read(std::io::Error),
    /// JetStream failed.
    Store(anyhow::Error),
}

/// An object's name in its metadata subject, as the object store encodes it.
fn object_subject(name: &str) -> String {
    base64_url(name.as_bytes())
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

/// A byte count as a usage change.
pub fn signed(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Whether a revision-checked write lost to another writer.
fn is_conflict(err: &anyhow::Error) -> bool {
    // JetStream's "wrong last sequence" (10071), through the KV errors.
    let text = format!("{err:#}");
    text.contains("wrong last sequence") || text.contains("10071") || text.contains("key already exists")
}

/// Credentials belong in the config or the environment, where `ps` and
/// shell histories do not show them.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    for server in url.split(',') {
        let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
        let authority = rest.split('/').next().unwrap_or(rest);
        if authority.contains('@') {
            // The URL is not repeated: it holds a secret.
            anyhow::bail!(
                "--nats: credentials do not go on the command line (other users see it in `ps`); put them in the \
                 config's [nats] table (user and password, token, nkey, credentials) or in NATS_USER and \
                 NATS_PASSWORD, NATS_TOKEN, NATS_NKEY or NATS_CREDS"
            );
        }
    }
    Ok(())
}

fn queue_stream_config(layout: &Layout, settings: &NatsSettings) -> stream::Config {
    stream::Config {
        name: layout.queue_stream(),
        description: Some("orders-host: one message per accepted job, until a worker ends it".to_owned()),
        subjects: vec![format!("{}.queue.*", layout.prefix)],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The key-value bucket's stream, made here: async-nats's
/// `create_key_value` asks nats-server 2.9 for account fields it lacks.
fn jobs_stream_config(layout: &Layout, settings: &NatsSettings) -> stream::Config {
    let bucket = layout.jobs_bucket();
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("orders-host: job records, usage and idempotency keys".to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The object store's stream, as async-nats's `create_object_store` makes it.
fn data_stream_config(layout: &Layout, settings: &NatsSettings) -> stream::Config {
    let bucket = layout.data_bucket();
    stream::Config {
        name: format!("OBJ_{bucket}"),
        description: Some("orders-host: job inputs and outputs".to_owned()),
        subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// The stream as `wanted`: made if missing; an existing one that differs in
/// what this host relies on is an error naming the setting, never changed.
async fn ensure_stream(jetstream: &jetstream::Context, wanted: stream::Config) -> anyhow::Result<stream::Stream> {
    let name = wanted.name.clone();
    let mut existing = match jetstream.get_stream(&name).await {
        Ok(existing) => existing,
        Err(err) if matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            match jetstream.create_stream(wanted.clone()).await {
                Ok(stream) => return Ok(stream),
                // Another member made it meanwhile: check theirs below.
                Err(_) => jetstream.get_stream(&name).await.with_context(|| format!("cannot create stream {name}"))?,
            }
        }
        Err(err) => {
            return Err(err)
                .with_context(|| format!("cannot read stream {name} (is JetStream on: `nats-server -js`?)"));
        }
    };
    let have = existing.info().await.with_context(|| format!("cannot read stream {name}"))?.config.clone();
    let mut differences = Vec::new();
    let mut compare = |setting: &str, have: String, want: String| {
        if have != want {
            differences.push(format!("{setting} is {have}, this host needs {want}"));
        }
    };
    compare("subjects", format!("{:?}", have.subjects), format!("{:?}", wanted.subjects));
    compare("retention", format!("{:?}", have.retention), format!("{:?}", wanted.retention));
    compare("storage", format!("{:?}", have.storage), format!("{:?}", wanted.storage));
    compare("replicas", have.num_replicas.to_string(), wanted.num_replicas.to_string());
    if wanted.max_messages_per_subject > 0 {
        compare(
            "max messages per subject",
            have.max_messages_per_subject.to_string(),
            wanted.max_messages_per_subject.to_string(),
        );
    }
    compare("allow rollup", have.allow_rollup.to_string(), wanted.allow_rollup.to_string());
    compare("discard", format!("{:?}", have.discard), format!("{:?}", wanted.discard));
    if !differences.is_empty() {
        anyhow::bail!(
            "stream {name} exists with other settings ({}); this host does not change it: remove it \
             (`nats stream rm {name}`, which loses its data) or choose another [nats] prefix",
            differences.join("; ")
        );
    }
    Ok(existing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_credentials_is_refused_without_repeating_them() {
        assert!(check_url("nats://127.0.0.1:4222").is_ok());
        assert!(check_url("nats://a:4222,nats://b:4222").is_ok());
        for url in ["nats://user:secret@host:4222", "nats://a:4222,tls://token@b:4222", "user:secret@host"] {
            let err = check_url(url).expect_err("credentials on the command line");
            assert!(err.to_string().contains("NATS_USER") && !err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn a_stored_job_round_trips_and_an_older_one_reads() {
        let stored = Stored {
            record: JobRecord {
                id: "0123456789abcdef0123456789abcdef".to_owned(),
                tenant: "acme".to_owned(),
                component: "bundled".to_owned(),
                state: super::super::store::State::Running,
                outcome: None,
                report: None,
                outputs: Vec::new(),
                error: None,
                created_at: 1,
                started_at: Some(2),
                finished_at: None,
            },
            input_bytes: 10,
            input_sha256: "ab".to_owned(),
            run: Some("1-abcd".to_owned()),
            stored_bytes: 0,
            worker: None,
            key_entry: None,
            uploading: vec!["x/1-abcd/summary.csv".to_owned()],
        };
        let again = Stored::decode(&stored.encode().expect("encodes")).expect("decodes");
        assert_eq!(again.record.state, stored.record.state);
        assert_eq!((&again.run, &again.uploading), (&stored.run, &stored.uploading));
        let mut json: serde_json::Value = serde_json::from_slice(&stored.encode().expect("encodes")).expect("json");
        json.as_object_mut().expect("an object").remove("uploading");
        let older = Stored::decode(json.to_string().as_bytes()).expect("a record without `uploading` reads");
        assert!(older.uploading.is_empty());
        assert!(Stored::decode(b"{}").is_err());
    }
}
