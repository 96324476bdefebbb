//! The job records, the queue's order, idempotency keys and per-tenant
//! stored bytes, in SQLite (WAL): a record is written whole or not at all.
//! Small inputs and small results live in their job's record (no file, no
//! fsync of their own); larger inputs are 0600 files under `jobs/ID/`,
//! larger results under `results/ID/`, beside the database.
//!
//! Writes go to one writer thread, which owns the writing connection and
//! commits every write waiting in one transaction (group commit): one
//! fdatasync for all the jobs accepted or finished meanwhile instead of
//! one each. While jobs run, the writer waits a moment for their ends
//! before it commits ([`COMMIT_DELAY`]), unless a write is of a tenant
//! with nothing else on the server ([`Store::end_coming`]). A caller is
//! answered once its write is committed and on disk. A job is written twice in its life, accepted and ended, or once
//! when the service held it in memory while its client waited and it ended
//! within the wait ([`Store::record`]): that it runs is the server's to
//! know, in memory (after a crash nothing runs, and a job not ended is run
//! again anyway). A job's end that lists output
//! files first goes through a flusher thread, which flushes their
//! filesystem once for all the ends waiting (see [`Store::finish`]). Reads
//! go through connections of their own, beside the writer (WAL lets
//! them), so a `GET` never waits behind a commit.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::jobs::JobOutput;

/// Where a job is in its life. A job that ended has one result: it is
/// never run again. `Running` is never stored (the service knows which
/// jobs run); a database of an earlier version may hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> rusqlite::Result<Self> {
        Ok(match text {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => {
                return Err(rusqlite::Error::InvalidColumnType(
                    0,
                    format!("state {other}"),
                    rusqlite::types::Type::Text,
                ));
            }
        })
    }

    pub fn ended(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// JSON kept as its text: built once from the pipeline's report, then
/// written to the database and into answers as it is, never rebuilt as a
/// tree on the way.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// `value` as JSON text.
    ///
    /// # Errors
    ///
    /// When `value` cannot be serialized as JSON.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Self> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// JSON text as read back, checked.
    ///
    /// # Errors
    ///
    /// When `text` is not JSON.
    pub fn parse(text: String) -> serde_json::Result<Self> {
        RawValue::from_string(text).map(Self)
    }

    pub fn text(&self) -> &str {
        self.0.get()
    }
}

/// Through a tree: a record in JetStream is read with `#[serde(flatten)]`,
/// which cannot hand over raw text.
impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::of(&value).map_err(serde::de::Error::custom)
    }
}

/// One job as stored (`host serve --nats` keeps it as JSON in JetStream).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub tenant: String,
    pub component: String,
    pub state: State,
    pub outcome: Option<String>,
    pub report: Option<JsonText>,
    pub outputs: Vec<JobOutput>,
    pub error: Option<serde_json::Value>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A job being accepted.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub tenant: String,
    pub component: String,
    /// The input when small (`None`: it is the job's file).
    pub input: Option<Vec<u8>>,
    pub input_bytes: u64,
    pub input_sha256: String,
    pub created_at: i64,
}

/// How a job ended, as recorded.
#[derive(Debug)]
pub struct Ending {
    pub state: State,
    pub outcome: Option<String>,
    pub report: Option<JsonText>,
    pub outputs: Vec<JobOutput>,
    pub error: Option<serde_json::Value>,
    pub stored_bytes: u64,
    pub finished_at: i64,
    /// The outputs' bytes one after the other, in the order of `outputs`,
    /// when the result is kept in the database (a small one); `None` when
    /// the outputs are files.
    pub results: Option<Vec<u8>>,
}

impl Ending {
    /// Outputs delivered as files are flushed before the end that lists
    /// them is committed (see [`Store::finish`]).
    fn durability(&self) -> Durability {
        let files = self.state == State::Succeeded && !self.outputs.is_empty() && self.results.is_none();
        if files { Durability::Files } else { Durability::Synced }
    }
}

impl JobRecord {
    /// The record of a job the store has as queued and the service is
    /// running since `started_at`; an ended one stays as it is.
    pub fn mark_running(&mut self, started_at: i64) {
        if self.state == State::Queued {
            self.state = State::Running;
            self.started_at = Some(started_at);
        }
    }

    /// The record once `ending` is recorded.
    pub fn end(&mut self, ending: &Ending) {
        self.state = ending.state;
        self.outcome.clone_from(&ending.outcome);
        self.report.clone_from(&ending.report);
        self.outputs.clone_from(&ending.outputs);
        self.error.clone_from(&ending.error);
        self.finished_at = Some(ending.finished_at);
    }
}

/// What [`Store::insert`] did.
#[derive(Debug)]
pub enum Insertion {
    /// The job is recorded, queued.
    Queued,
    /// Its idempotency key already names this job: nothing was written.
    Keyed(KeyedJob),
    /// The tenant keeps this many bytes already; the input would take it
    /// past its `max_stored`: nothing was written.
    StorageFull(u64),
}

/// What an idempotency key already names.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KeyedJob {
    pub job_id: String,
    pub input_sha256: String,
    pub component: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    component TEXT NOT NULL,
    state TEXT NOT NULL,
    input BLOB,
    input_file INTEGER NOT NULL,
    input_sha256 TEXT NOT NULL,
    stored_bytes INTEGER NOT NULL,
    outcome TEXT,
    report TEXT,
    outputs TEXT,
    error TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    results BLOB
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
DROP INDEX IF EXISTS jobs_by_state;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (tenant, key)
);
";

const COLUMNS: &str =
    "id, tenant, component, state, outcome, report, outputs, error, created_at, started_at, finished_at";
/// The columns of [`COLUMNS`], read by [`row`].
const COLUMN_COUNT: usize = 11;

/// Each tenant's stored bytes, kept by triggers in the transaction that
/// changes them, so that the check of every `POST` reads one row instead of
/// summing all the tenant's jobs. A database made before this table has it
/// filled from the jobs at the next start.
const TENANT_BYTES: &str = "
CREATE TABLE IF NOT EXISTS tenant_bytes (
    tenant TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS jobs_bytes_inserted AFTER INSERT ON jobs BEGIN
    INSERT INTO tenant_bytes (tenant, bytes) VALUES (new.tenant, new.stored_bytes)
        ON CONFLICT (tenant) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS jobs_bytes_updated AFTER UPDATE OF stored_bytes ON jobs BEGIN
    UPDATE tenant_bytes SET bytes = bytes - old.stored_bytes + new.stored_bytes WHERE tenant = new.tenant;
END;
CREATE TRIGGER IF NOT EXISTS jobs_bytes_deleted AFTER DELETE ON jobs BEGIN
    UPDATE tenant_bytes SET bytes = bytes - old.stored_bytes WHERE tenant = old.tenant;
END;
INSERT OR IGNORE INTO tenant_bytes (tenant, bytes) SELECT tenant, SUM(stored_bytes) FROM jobs GROUP BY tenant;
";

/// Writes committed in one transaction at most: past it the batch is
/// committed and the rest wait for the next, so one commit's answer is not
/// held back without bound while writes keep coming.
const MAX_BATCH: usize = 256;

/// Commits of the writer between two checkpoints of the WAL into the
/// database (SQLite's own default is every 1000 pages, on the committing
/// connection; each commit here writes a few pages).
const COMMITS_PER_CHECKPOINT: u32 = 256;

/// How long the writer waits, with a write in hand, for the ends of jobs
/// still running ([`Store::end_coming`]) before it commits without them,
/// so that the fdatasync, the savepoints and the pages the jobs share are
/// paid once for more of them. Measured in the bench's section 5 (eight
/// runs, noisy machine): 0 gave 52-57% of the library's rate with p99
/// 21.7-23.5 ms; 1 ms 58-65% with p99 17.3-19.5 ms; 0.5 and 2 ms no
/// better than 1. A write with no run going on is committed at once.
const COMMIT_DELAY: Duration = Duration::from_millis(1);

/// How long the writer waits instead while a light tenant's job runs
/// ([`Store::end_coming`]): its end then mostly arrives while the writer
/// waits, and is committed at once with the writes in hand, instead of
/// arriving during a commit of the busy tenant's ends and waiting for it
/// and then its own (measured with tenant b under tenant a's flood: its
/// commit took 1.9-2.2 ms at p50 and 5.3-5.7 ms at p99, against 0.75-0.94
/// ms at p50 alone). The busy tenant's ends wait up to this long meanwhile.
/// Measured in section 5 over six runs: b's p99 under the flood 7.6-9.1
/// ms, from 8.7-9.9 in the two runs just before (within the noise of
/// either, but not above it), a's flood no slower.
const LIGHT_END_DELAY: Duration = Duration::from_millis(3);

/// Read connections kept open between reads; more are opened while many
/// reads run at once, and closed after.
const IDLE_READERS: usize = 8;

/// How much of a write must be on disk before its caller is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// On disk when answered.
    Synced,
    /// On disk when answered, and only committed once every file written
    /// under the data folder before the write was asked is on disk too (a
    /// job's outputs, delivered without syncs of their own): it goes
    /// through the flusher to the writer.
    Files,
}

/// A write waiting for the writer.
enum Write {
    /// Run with the other writes waiting, in one transaction.
    Batched(Box<dyn Pending>),
    /// Run alone, on the connection itself, synced ([`Store::call`]).
    Alone(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// A batched write and the caller waiting for it.
trait Pending: Send {
    /// Runs the write; false when it failed (it is then rolled back alone).
    fn run(&mut self, connection: &Connection) -> bool;
    /// Answers the caller once the batch is committed, or with why not.
    fn answer(self: Box<Self>, committed: Result<(), &str>);
    /// The batch is committed without waiting for more writes (the end of
    /// a light job, [`Store::end_coming`]).
    fn prompt(&self) -> bool;
}

struct Call<F, R> {
    write: Option<F>,
    result: Option<rusqlite::Result<R>>,
    caller: oneshot::Sender<anyhow::Result<R>>,
    prompt: bool,
}

impl<F, R> Pending for Call<F, R>
where
    F: FnOnce(&Connection) -> rusqlite::Result<R> + Send,
    R: Send,
{
    fn run(&mut self, connection: &Connection) -> bool {
        let Some(write) = self.write.take() else { return false };
        let result = write(connection);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<(), &str>) {
        let answer = match (committed, self.result) {
            (Err(why), _) => Err(anyhow::anyhow!("the job database failed: {why}")),
            (Ok(()), Some(result)) => result.context("the job database failed"),
            (Ok(()), None) => Err(anyhow::anyhow!("the job database did not run a write")),
        };
        // The caller may have gone (its request was cut, or it does not
        // wait, as for a start): a write done stands, one failed is logged.
        if let Err(Err(err)) = self.caller.send(answer) {
            tracing::error!("a write of the job database failed: {err:#}");
        }
    }

    fn prompt(&self) -> bool {
        self.prompt
    }
}

/// The database, shared: writes through the writer thread, reads on
/// tokio's blocking pool.
#[derive(Clone)]
pub struct Store {
    writes: Sender<Write>,
    flushes: Sender<Box<dyn Pending>>,
    readers: Arc<Readers>,
    stored: Arc<StoredBytes>,
    /// Jobs running whose end is to be written ([`Store::end_coming`]).
    ends_coming: Arc<EndsComing>,
}

/// Ends of running jobs still to be written, for the writer's wait.
#[derive(Debug, Default)]
struct EndsComing {
    all: AtomicUsize,
    /// Of jobs of light tenants ([`Store::end_coming`]).
    light: AtomicUsize,
}

/// A job's end that will be written soon: while one is coming, the writer
/// waits a moment ([`COMMIT_DELAY`], [`LIGHT_END_DELAY`]) to commit it with
/// the writes in hand. Handed to the write of the end ([`Store::record`],
/// [`Store::finish`]), which lets it go just before it sends the end;
/// dropped when there is no end to write.
#[derive(Debug)]
pub struct EndComing {
    coming: Arc<EndsComing>,
    light: bool,
}

impl Drop for EndComing {
    fn drop(&mut self) {
        self.coming.all.fetch_sub(1, Ordering::SeqCst);
        if self.light {
            self.coming.light.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Each tenant's stored bytes as the writer last published them, so that a
/// check needs no read of the database: never below what is committed, and
/// never below a write's count from before that write's caller is answered
/// (raised, before each commit, to what the batch counts; set to what is
/// committed after it, or after a rollback).
#[derive(Debug, Default)]
struct StoredBytes(Mutex<HashMap<String, u64>>);

impl StoredBytes {
    fn get(&self, tenant: &str) -> u64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(tenant).copied().unwrap_or_default()
    }

    /// Reads every tenant's count on `connection` (in its transaction, if
    /// it is in one); keeps each count that is higher when `raise_only`,
    /// every count otherwise.
    fn publish(&self, connection: &Connection, raise_only: bool) {
        let counts = connection.prepare_cached("SELECT tenant, bytes FROM tenant_bytes").and_then(|mut statement| {
            statement
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        });
        let counts = match counts {
            Ok(counts) => counts,
            Err(err) => {
                tracing::error!("cannot read the tenants' stored bytes: {err}");
                return;
            }
        };
        let mut published = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !raise_only {
            published.clear();
        }
        for (tenant, bytes) in counts {
            let count = published.entry(tenant).or_default();
            *count = if raise_only { (*count).max(bytes) } else { bytes };
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.readers.path).finish_non_exhaustive()
    }
}

/// Read connections, opened as needed and kept for the next read.
#[derive(Debug)]
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn take(&self) -> rusqlite::Result<Connection> {
        if let Some(connection) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(connection);
        }
        let connection = Connection::open(&self.path)?;
        connection.pragma_update(None, "query_only", "ON")?;
        connection.busy_timeout(Duration::from_secs(5))?;
        Ok(connection)
    }

    fn keep(&self, connection: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_READERS {
            idle.push(connection);
        }
    }
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        // Owner-only from its creation; SQLite gives its WAL the same mode.
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create the job database {}", path.display()))?;
        let mut connection =
            Connection::open(path).with_context(|| format!("cannot open the job database {}", path.display()))?;
        // WAL: readers never see a half-written record, and read beside the
        // writer; FULL: a commit is on disk when it returns. The journal of
        // each write's savepoint stays in memory (SQLite would spill a
        // batch's to a temporary file).
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| connection.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| connection.pragma_update(None, "temp_store", "MEMORY"))
            .and_then(|()| connection.pragma_update(None, "foreign_keys", "ON"))
            .and_then(|()| connection.busy_timeout(Duration::from_secs(5)))
            .and_then(|()| {
                let tx = connection.transaction()?;
                tx.execute_batch(SCHEMA)?;
                add_results_column(&tx)?;
                tx.execute_batch(TENANT_BYTES)?;
                tx.commit()
            })
            .with_context(|| format!("cannot set up the job database {}", path.display()))?;
        // The folder of the database and the jobs' files: `syncfs` on it
        // flushes the filesystem they are on.
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let data_dir =
            std::fs::File::open(folder).with_context(|| format!("cannot open the data folder {}", folder.display()))?;
        // Checkpoints on a thread and connection of their own: a commit
        // that checkpoints holds every write behind it for the copy and
        // the database's fsync.
        connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .with_context(|| format!("cannot set up the job database {}", path.display()))?;
        let checkpointer = Connection::open(path)
            .and_then(|checkpointer| checkpointer.busy_timeout(Duration::from_secs(5)).map(|()| checkpointer))
            .with_context(|| format!("cannot open the job database {}", path.display()))?;
        let (checkpoint, checkpoint_queue) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("job-store-checkpointer".into())
            .spawn(move || checkpoint_loop(&checkpointer, &checkpoint_queue))
            .context("cannot start the job database's checkpointer thread")?;
        let stored = Arc::new(StoredBytes::default());
        stored.publish(&connection, false);
        let (writes, write_queue) = std::sync::mpsc::channel();
        let (flushes, flush_queue) = std::sync::mpsc::channel();
        let published = Arc::clone(&stored);
        let ends_coming = Arc::new(EndsComing::default());
        let coming = Arc::clone(&ends_coming);
        std::thread::Builder::new()
            .name("job-store-writer".into())
            .spawn(move || write_loop(connection, &write_queue, &checkpoint, &published, &coming))
            .context("cannot start the job database's writer thread")?;
        let flushed = writes.clone();
        std::thread::Builder::new()
            .name("job-store-flusher".into())
            .spawn(move || flush_loop(&data_dir, &flush_queue, &flushed))
            .context("cannot start the job database's flusher thread")?;
        let readers = Arc::new(Readers { path: path.to_owned(), idle: Mutex::default() });
        Ok(Self { writes, flushes, readers, stored, ends_coming })
    }

    /// Tells the writer a job runs whose end will be written: see
    /// [`EndComing`]. A `light` job is one of a tenant with nothing else on
    /// the server: its end is committed as soon as it comes, and while it
    /// runs the writer waits for it a little longer ([`LIGHT_END_DELAY`]),
    /// so that it joins a commit rather than waiting behind the commit of
    /// a busy tenant's ends.
    pub fn end_coming(&self, light: bool) -> EndComing {
        self.ends_coming.all.fetch_add(1, Ordering::SeqCst);
        if light {
            self.ends_coming.light.fetch_add(1, Ordering::SeqCst);
        }
        EndComing { coming: Arc::clone(&self.ends_coming), light }
    }

    /// Runs `f` alone on the writer's connection (it may open its own
    /// transaction), synced: for writes that do not fit a batch.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let (caller, answer) = oneshot::channel();
        let write = Write::Alone(Box::new(move |connection: &mut Connection| {
            let _ = caller.send(f(connection).context("the job database failed"));
        }));
        self.writes.send(write).map_err(|_| anyhow::anyhow!("the job database's writer has stopped"))?;
        answer.await.context("the job database's writer has stopped")?
    }

    /// Runs `f` in the next batch of writes; answers once the batch is
    /// committed as `durability` asks.
    async fn write<R: Send + 'static>(
        &self,
        durability: Durability,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let answer = self.send(durability, false, f)?;
        answer.await.context("the job database's writer has stopped")?
    }

    /// Writes a job's end, announced by `end` (see [`EndComing`]).
    async fn write_end<R: Send + 'static>(
        &self,
        durability: Durability,
        end: EndComing,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let prompt = end.light;
        // No longer coming once sent: the writer then stops waiting for it.
        drop(end);
        let answer = self.send(durability, prompt, f)?;
        answer.await.context("the job database's writer has stopped")?
    }

    /// Sends `f` to the writer now; its answer comes on the receiver.
    fn send<R: Send + 'static>(
        &self,
        durability: Durability,
        prompt: bool,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> anyhow::Result<oneshot::Receiver<anyhow::Result<R>>> {
        let (caller, answer) = oneshot::channel();
        let pending = Box::new(Call { write: Some(f), result: None, caller, prompt });
        let sent = match durability {
            Durability::Files => self.flushes.send(pending).is_ok(),
            Durability::Synced => self.writes.send(Write::Batched(pending)).is_ok(),
        };
        anyhow::ensure!(sent, "the job database's writer has stopped");
        Ok(answer)
    }

    /// Runs `f` on a read connection, on a blocking thread.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let connection = readers.take()?;
            let result = f(&connection);
            readers.keep(connection);
            result
        })
        .await
        .context("the database task failed")?
        .context("the job database failed")
    }

    /// Records a new queued job, with its idempotency key, on disk before
    /// it answers, unless the key is taken (a concurrent request with the
    /// same key won) or `fits` says no to the bytes the tenant keeps then
    /// (its input not counted): asked in the transaction that adds them,
    /// so concurrent requests cannot pass a bound together. `hold` is
    /// handed back with the answer, or dropped once the write is committed
    /// when the caller has gone: a charge it carries outlives the write.
    pub async fn insert<H: Send + 'static>(
        &self,
        job: NewJob,
        key: Option<String>,
        hold: H,
        fits: impl FnOnce(u64) -> bool + Send + 'static,
    ) -> anyhow::Result<(Insertion, H)> {
        self.write(Durability::Synced, move |connection| {
            if let Some(existing) = key.as_deref().map(|key| keyed(connection, &job.tenant, key)).transpose()?.flatten()
            {
                return Ok((Insertion::Keyed(existing), hold));
            }
            let stored = stored_bytes(connection, &job.tenant)?;
            if !fits(stored) {
                return Ok((Insertion::StorageFull(stored), hold));
            }
            insert_queued(connection, &job)?;
            if let Some(key) = &key {
                connection
                    .prepare_cached("INSERT INTO idempotency_keys (tenant, key, job_id) VALUES (?1, ?2, ?3)")?
                    .execute(params![job.tenant, key, job.id])?;
            }
            Ok((Insertion::Queued, hold))
        })
        .await
    }

    /// Records a job accepted earlier and kept in memory as queued, with
    /// no bound asked: sent to the writer now, so that any write sent
    /// after it is committed after it; answered on the receiver once on
    /// disk, with `hold` as [`Store::insert`] hands it.
    pub fn send_queued<H: Send + 'static>(
        &self,
        job: NewJob,
        hold: H,
    ) -> anyhow::Result<oneshot::Receiver<anyhow::Result<H>>> {
        self.send(Durability::Synced, false, move |connection| insert_queued(connection, &job).map(|()| hold))
    }

    /// Records a job kept in memory since it was accepted, ended as
    /// `ending` says after it started at `started_at`: its one write. On
    /// disk before it answers, with the same care for output files as
    /// [`Store::finish`]; `hold` as [`Store::insert`] hands it.
    pub async fn record<H: Send + 'static>(
        &self,
        job: NewJob,
        started_at: i64,
        ending: Ending,
        end: EndComing,
        hold: H,
    ) -> anyhow::Result<H> {
        let (outputs, error) = end_text(&ending)?;
        self.write_end(ending.durability(), end, move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO jobs (id, tenant, component, state, input, input_file, input_sha256, stored_bytes,
                         outcome, report, outputs, error, created_at, started_at, finished_at, results)
                     VALUES (?1, ?2, ?3, ?4, NULL, 0, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )?
                .execute(params![
                    job.id,
                    job.tenant,
                    job.component,
                    ending.state.name(),
                    job.input_sha256,
                    ending.stored_bytes,
                    ending.outcome,
                    ending.report.as_ref().map(JsonText::text),
                    outputs,
                    error,
                    job.created_at,
                    started_at,
                    ending.finished_at,
                    ending.results
                ])?;
            Ok(hold)
        })
        .await
    }

    /// Answers once every write sent before it is committed.
    pub async fn barrier(&self) -> anyhow::Result<()> {
        self.write(Durability::Synced, |_| Ok(())).await
    }

    pub async fn keyed(&self, tenant: String, key: String) -> anyhow::Result<Option<KeyedJob>> {
        self.read(move |connection| keyed(connection, &tenant, &key)).await
    }

    /// The job, if it is `tenant`'s: another tenant's job is not found.
    pub async fn get(&self, tenant: String, id: String) -> anyhow::Result<Option<JobRecord>> {
        self.read(move |connection| {
            connection
                .prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1 AND tenant = ?2"))?
                .query_row(params![id, tenant], row)
                .optional()
        })
        .await
    }

    /// The tenant's newest `limit` jobs, newest first.
    pub async fn list(&self, tenant: String, limit: u32) -> anyhow::Result<Vec<JobRecord>> {
        self.read(move |connection| {
            let mut statement = connection
                .prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE tenant = ?1 ORDER BY seq DESC LIMIT ?2"))?;
            statement.query_map(params![tenant, limit], row)?.collect()
        })
        .await
    }

    /// What the tenant keeps (queued inputs and finished outputs): at
    /// least what every write answered so far counts (see [`StoredBytes`]).
    pub fn stored_bytes(&self, tenant: &str) -> u64 {
        self.stored.get(tenant)
    }

    /// `length` bytes from `offset` of job `id`'s results, when they are
    /// kept in the database; `None` when they are not (its outputs are
    /// files).
    pub async fn results_part(&self, id: String, offset: u64, length: u64) -> anyhow::Result<Option<Vec<u8>>> {
        self.read(move |connection| {
            connection
                .prepare_cached("SELECT substr(results, ?2, ?3) FROM jobs WHERE id = ?1 AND results IS NOT NULL")?
                .query_row(params![id, offset.saturating_add(1), length], |row| row.get(0))
                .optional()
        })
        .await
    }

    /// Job `id`'s results, when they are kept in the database.
    pub async fn results(&self, id: String) -> anyhow::Result<Option<Vec<u8>>> {
        self.read(move |connection| {
            connection
                .prepare_cached("SELECT results FROM jobs WHERE id = ?1 AND results IS NOT NULL")?
                .query_row(params![id], |row| row.get(0))
                .optional()
        })
        .await
    }

    /// A queued job's record, as it is once started at `now`, and its
    /// in-record input, to run it; `None` when it has ended (cancelled
    /// meanwhile) or is gone. Nothing is written: a job is `running` only
    /// in the service's memory until its end is recorded.
    pub async fn start(&self, id: String, now: i64) -> anyhow::Result<Option<(JobRecord, Option<Vec<u8>>)>> {
        self.read(move |connection| {
            let found = connection
                .prepare_cached(&format!("SELECT {COLUMNS}, input FROM jobs WHERE id = ?1"))?
                .query_row(params![id], |r| Ok((row(r)?, r.get::<_, Option<Vec<u8>>>(COLUMN_COUNT)?)))
                .optional()?;
            Ok(found.filter(|(record, _)| !record.state.ended()).map(|(mut record, input)| {
                record.state = State::Running;
                record.started_at = Some(now);
                (record, input)
            }))
        })
        .await
    }

    /// Records how a job that started at `started_at` ended, on disk before
    /// it answers; false when it has ended already (deleted meanwhile). The
    /// input is dropped with it.
    ///
    /// A small result goes into the database in the same transaction. A
    /// job that succeeded with outputs delivered into its results folder
    /// without syncs of their own has its record committed only
    /// after a `syncfs` of the data folder's filesystem that began after
    /// they were written (the flusher does one for all the ends waiting,
    /// then hands them to the writer). A crash before that commit leaves
    /// the job queued, to run again from its input; after it, both the
    /// files and the record that lists them are on disk. So a record never
    /// says `succeeded` of outputs that a crash could lose or cut.
    pub async fn finish(&self, id: String, started_at: i64, ending: Ending, end: EndComing) -> anyhow::Result<bool> {
        let (outputs, error) = end_text(&ending)?;
        self.write_end(ending.durability(), end, move |connection| {
            let changed = connection.prepare_cached("UPDATE jobs SET state = ?2, outcome = ?3, report = ?4, outputs = ?5, error = ?6, stored_bytes = ?7,
                     finished_at = ?8, started_at = ?9, results = ?10, input = NULL, input_file = 0
                 WHERE id = ?1 AND state IN ('queued', 'running')")?.execute(params![
                    id,
                    ending.state.name(),
                    ending.outcome,
                    ending.report.as_ref().map(JsonText::text),
                    outputs,
                    error,
                    ending.stored_bytes,
                    ending.finished_at,
                    started_at,
                    ending.results
                ],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Cancels a queued or running job: it keeps its record, its input is gone.
    pub async fn cancel(&self, id: String, now: i64) -> anyhow::Result<bool> {
        self.write(Durability::Synced, move |connection| {
            let changed = connection.prepare_cached("UPDATE jobs SET state = 'cancelled', input = NULL, input_file = 0, stored_bytes = 0, finished_at = ?2
                 WHERE id = ?1 AND state IN ('queued', 'running')")?.execute(params![id, now],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Removes the record (its idempotency key goes with it).
    pub async fn delete(&self, id: String) -> anyhow::Result<()> {
        self.write(Durability::Synced, move |connection| {
            connection.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute(params![id]).map(drop)
        })
        .await
    }

    /// At start: every job not ended, in the order it was accepted, queued
    /// (an earlier version recorded running jobs as such).
    pub async fn recover(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.call(|connection| {
            connection.execute("UPDATE jobs SET state = 'queued', started_at = NULL WHERE state = 'running'", [])?;
            let mut statement =
                connection.prepare("SELECT id, tenant FROM jobs WHERE state = 'queued' ORDER BY seq")?;
            statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
        .await
    }

    /// Jobs that ended before `before` (ms since the epoch).
    pub async fn ended_before(&self, before: i64) -> anyhow::Result<Vec<String>> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached("SELECT id FROM jobs WHERE finished_at < ?1")?;
            statement.query_map(params![before], |r| r.get(0))?.collect()
        })
        .await
    }

    /// Whether a record with this id exists (for sweeping job folders).
    pub async fn exists(&self, id: String) -> anyhow::Result<Option<State>> {
        self.read(move |connection| {
            connection
                .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| r.get::<_, String>(0))
                .optional()?
                .map(|state| State::parse(&state))
                .transpose()
        })
        .await
    }
}

/// The writer thread: takes the first write waiting, every other one
/// waiting with it or coming within [`COMMIT_DELAY`] while jobs' ends are
/// coming, and commits them together, until every [`Store`] and the
/// flusher are gone.
fn write_loop(
    mut connection: Connection,
    queue: &Receiver<Write>,
    checkpoint: &SyncSender<()>,
    stored: &StoredBytes,
    ends_coming: &EndsComing,
) {
    let mut commits: u32 = 0;
    while let Ok(first) = queue.recv() {
        let first_at = Instant::now();
        commits += 1;
        if commits >= COMMITS_PER_CHECKPOINT {
            // One asked is enough: a full channel means one is coming.
            let _ = checkpoint.try_send(());
            commits = 0;
        }
        let mut batch = Vec::new();
        let mut prompt = false;
        let mut next = Some(first);
        while let Some(write) = next {
            match write {
                Write::Batched(pending) => {
                    prompt |= pending.prompt();
                    batch.push(pending);
                }
                Write::Alone(write) => {
                    commit(&mut connection, std::mem::take(&mut batch), stored);
                    // Answered before it is published: such writes (the
                    // recovery at start) do not add to what tenants keep.
                    write(&mut connection);
                    stored.publish(&connection, false);
                }
            }
            next = if batch.len() >= MAX_BATCH {
                None
            } else if let Ok(write) = queue.try_recv() {
                Some(write)
            } else if !prompt && ends_coming.all.load(Ordering::SeqCst) > 0 {
                let delay = if ends_coming.light.load(Ordering::SeqCst) > 0 { LIGHT_END_DELAY } else { COMMIT_DELAY };
                // A disconnected queue ends the wait too: the loop ends after this commit.
                queue.recv_timeout((first_at + delay).saturating_duration_since(Instant::now())).ok()
            } else {
                None
            };
        }
        commit(&mut connection, batch, stored);
    }
}

/// The checkpointer thread: copies the WAL into the database when the
/// writer asks, without stopping it (PASSIVE: the writer goes on appending;
/// what is left is copied next time).
fn checkpoint_loop(connection: &Connection, queue: &Receiver<()>) {
    while queue.recv().is_ok() {
        if let Err(err) = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!("cannot checkpoint the job database's WAL: {err}");
        }
    }
}

/// The flusher thread: takes the writes that list files (a job's end and
/// its outputs), all those waiting at once, flushes the data folder's
/// filesystem once for them, and only then hands them to the writer, as
/// synced writes. The writer meanwhile goes on committing the others, so
/// an accepted job does not wait for other jobs' outputs to reach the disk.
fn flush_loop(data_dir: &std::fs::File, queue: &Receiver<Box<dyn Pending>>, writes: &Sender<Write>) {
    while let Ok(first) = queue.recv() {
        let batch: Vec<_> = std::iter::once(first).chain(queue.try_iter()).collect();
        // Begun after every file these writes list was written (they were
        // asked for afterwards), done before any of them is committed.
        match rustix::fs::syncfs(data_dir) {
            Ok(()) => {
                for pending in batch {
                    // A writer gone drops it: its caller hears the writer stopped.
                    let _ = writes.send(Write::Batched(pending));
                }
            }
            Err(err) => {
                let why = format!("cannot flush the data folder's filesystem: {err}");
                for pending in batch {
                    pending.answer(Err(&why));
                }
            }
        }
    }
}

/// Commits `batch` in one transaction, on disk when it returns, each
/// write in a savepoint of its own so that one failing is rolled back
/// alone, then answers every caller. The writes of one batch were all
/// waiting at once, so their order is one they could have arrived in.
fn commit(connection: &mut Connection, batch: Vec<Box<dyn Pending>>, stored: &StoredBytes) {
    if batch.is_empty() {
        return;
    }
    let mut batch = batch.into_iter();
    let mut ran = Vec::with_capacity(batch.len());
    let result = (|| {
        let mut tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for mut pending in batch.by_ref() {
            let step = tx.savepoint().and_then(|savepoint| {
                let ok =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pending.run(&savepoint))).unwrap_or(false);
                if ok { savepoint.commit() } else { savepoint.finish() }
            });
            ran.push(pending);
            step?;
        }
        stored.publish(&tx, true);
        tx.commit()
    })();
    stored.publish(connection, false);
    let why = result.err().map(|err| err.to_string());
    for pending in ran.into_iter().chain(batch) {
        pending.answer(why.as_deref().map_or(Ok(()), Err));
    }
}

/// The text of an end's `outputs` and `error` columns, made by its caller,
/// not on the writer, which every write waits for.
fn end_text(ending: &Ending) -> serde_json::Result<(String, Option<String>)> {
    Ok((serde_json::to_string(&ending.outputs)?, ending.error.as_ref().map(serde_json::Value::to_string)))
}

/// Adds a queued job's row.
fn insert_queued(connection: &Connection, job: &NewJob) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "INSERT INTO jobs (id, tenant, component, state, input, input_file, input_sha256, stored_bytes, created_at)
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            job.id,
            job.tenant,
            job.component,
            job.input,
            job.input.is_none(),
            job.input_sha256,
            job.input_bytes,
            job.created_at
        ])
        .map(drop)
}

/// A database made before small results were kept in it gets their column.
fn add_results_column(connection: &Connection) -> rusqlite::Result<()> {
    let has_it: bool = connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'results')",
        [],
        |row| row.get(0),
    )?;
    if !has_it {
        connection.execute_batch("ALTER TABLE jobs ADD COLUMN results BLOB")?;
    }
    Ok(())
}

fn stored_bytes(connection: &Connection, tenant: &str) -> rusqlite::Result<u64> {
    connection
        .prepare_cached("SELECT bytes FROM tenant_bytes WHERE tenant = ?1")?
        .query_row(params![tenant], |row| row.get(0))
        .optional()
        .map(Option::unwrap_or_default)
}

fn keyed(connection: &Connection, tenant: &str, key: &str) -> rusqlite::Result<Option<KeyedJob>> {
    connection
        .prepare_cached(
            "SELECT k.job_id, j.input_sha256, j.component FROM idempotency_keys k JOIN jobs j ON j.id = k.job_id
             WHERE k.tenant = ?1 AND k.key = ?2",
        )?
        .query_row(params![tenant, key], |r| {
            Ok(KeyedJob { job_id: r.get(0)?, input_sha256: r.get(1)?, component: r.get(2)? })
        })
        .optional()
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let bad = |index: usize| {
        move |err: serde_json::Error| {
            rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(err))
        }
    };
    let text = |index: usize| r.get::<_, Option<String>>(index);
    let report = text(5)?.map(JsonText::parse).transpose().map_err(bad(5))?;
    let outputs = text(6)?.map(|text| serde_json::from_str(&text)).transpose().map_err(bad(6))?.unwrap_or_default();
    let error = text(7)?.map(|text| serde_json::from_str(&text)).transpose().map_err(bad(7))?;
    Ok(JobRecord {
        id: r.get(0)?,
        tenant: r.get(1)?,
        component: r.get(2)?,
        state: State::parse(&r.get::<_, String>(3)?)?,
        outcome: r.get(4)?,
        report,
        outputs,
        error,
        created_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts `job` unless the tenant's bytes with its input pass `max_stored`.
    async fn insert_within(
        store: &Store,
        job: NewJob,
        key: Option<String>,
        max_stored: u64,
    ) -> anyhow::Result<Insertion> {
        let input = job.input_bytes;
        let (insertion, ()) =
            store.insert(job, key, (), move |stored| stored.saturating_add(input) <= max_stored).await?;
        Ok(insertion)
    }

    fn output(name: &str, bytes: u64, sha256: &str) -> JobOutput {
        JobOutput { bytes, name: name.into(), sha256: sha256.into() }
    }

    fn job(id: &str, tenant: &str) -> NewJob {
        NewJob {
            id: id.into(),
            tenant: tenant.into(),
            component: "bundled".into(),
            input: Some(b"a,b\n".to_vec()),
            input_bytes: 4,
            input_sha256: "h".into(),
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn a_job_goes_from_queued_to_its_one_result_and_survives_a_reopen() {
        let dir = std::env::temp_dir().join(format!("serve-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("jobs.db");
        let _ = std::fs::remove_file(&path);
        let store = Store::open(&path).expect("open");
        let inserted = insert_within(&store, job("j1", "a"), Some("k".into()), u64::MAX).await.expect("insert");
        assert!(matches!(inserted, Insertion::Queued));
        let Insertion::Keyed(again) =
            insert_within(&store, job("j2", "a"), Some("k".into()), u64::MAX).await.expect("insert")
        else {
            panic!("the key is taken")
        };
        assert_eq!(again.job_id, "j1");
        assert!(store.get("b".into(), "j1".into()).await.expect("get").is_none(), "another tenant's job");
        assert_eq!(store.stored_bytes("a"), 4);
        let (record, input) = store.start("j1".into(), 2).await.expect("start").expect("was queued");
        assert_eq!(input.as_deref(), Some(&b"a,b\n"[..]));
        assert_eq!((record.state, record.started_at), (State::Running, Some(2)), "the record as marked");
        drop(store);

        // A crash while running: the job is queued again at the next start.
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.recover().await.expect("recover"), vec![("j1".to_owned(), "a".to_owned())]);
        store.start("j1".into(), 3).await.expect("start").expect("queued again");
        let ending = Ending {
            state: State::Succeeded,
            outcome: Some("success".into()),
            report: Some(JsonText::of(&serde_json::json!({"rows": 1})).expect("json")),
            outputs: vec![output("x.csv", 1, "s")],
            error: None,
            stored_bytes: 1,
            finished_at: 4,
            results: None,
        };
        assert!(store.finish("j1".into(), 3, ending, store.end_coming(false)).await.expect("finish"));
        assert_eq!(store.stored_bytes("a"), 1, "the outputs replace the input");
        assert!(store.start("j1".into(), 5).await.expect("start").is_none(), "one result per job");
        let record = store.get("a".into(), "j1".into()).await.expect("get").expect("kept");
        assert_eq!((record.state, record.outputs.len()), (State::Succeeded, 1));
        assert_eq!((record.started_at, record.finished_at), (Some(3), Some(4)), "its run's times");
        assert_eq!(store.ended_before(4).await.expect("expired"), Vec::<String>::new(), "ended at 4, not before");
        assert_eq!(store.ended_before(5).await.expect("expired"), vec!["j1".to_owned()]);
        store.delete("j1".into()).await.expect("delete");
        assert!(store.keyed("a".into(), "k".into()).await.expect("key").is_none(), "the key goes with its job");
        assert_eq!(store.stored_bytes("a"), 0);
        drop(store);
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[tokio::test]
    async fn a_small_result_is_kept_with_its_end_and_goes_with_its_job() {
        let dir = scratch("contents");
        let store = Store::open(&dir.join("jobs.db")).expect("open");
        insert_within(&store, job("j1", "a"), None, u64::MAX).await.expect("insert");
        store.start("j1".into(), 2).await.expect("start").expect("queued");
        let ending = Ending {
            state: State::Succeeded,
            outcome: Some("success".into()),
            report: None,
            outputs: vec![output("x.csv", 3, "s"), output("y.csv", 2, "t")],
            error: None,
            stored_bytes: 5,
            finished_at: 4,
            results: Some(b"a,bc\n".to_vec()),
        };
        assert!(store.finish("j1".into(), 3, ending, store.end_coming(false)).await.expect("finish"));
        let part = |offset, length| store.results_part("j1".into(), offset, length);
        assert_eq!(part(0, 3).await.expect("read").as_deref(), Some(&b"a,b"[..]));
        assert_eq!(part(3, 2).await.expect("read").as_deref(), Some(&b"c\n"[..]));
        assert_eq!(part(5, 0).await.expect("read").as_deref(), Some(&b""[..]));
        assert_eq!(store.results("j1".into()).await.expect("read").as_deref(), Some(&b"a,bc\n"[..]));
        insert_within(&store, job("j2", "a"), None, u64::MAX).await.expect("insert");
        assert!(store.results_part("j2".into(), 0, 1).await.expect("read").is_none(), "no results kept");
        store.delete("j1".into()).await.expect("delete");
        assert!(store.results("j1".into()).await.expect("read").is_none(), "the results go with the job");
        drop(store);
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inserts_never_take_a_tenant_past_max_stored() {
        let dir = scratch("max-stored");
        let store = Store::open(&dir.join("jobs.db")).expect("open");
        // 4 bytes each, a bound of 30: 7 fit, whatever the order.
        let inserts: Vec<_> = (0..20)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move { insert_within(&store, job(&format!("j{n}"), "a"), None, 30).await })
            })
            .collect();
        let mut refused = 0;
        for insert in futures_util::future::join_all(inserts).await {
            match insert.expect("task").expect("insert") {
                Insertion::Queued => {}
                Insertion::StorageFull(stored) => {
                    assert!(stored + 4 > 30, "refused at {stored} bytes");
                    refused += 1;
                }
                Insertion::Keyed(_) => panic!("no key was sent"),
            }
        }
        assert_eq!(refused, 13);
        assert_eq!(store.stored_bytes("a"), 28);
        drop(store);
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("serve-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_sent_together_are_each_answered_and_one_failing_does_not_undo_the_others() {
        let dir = scratch("batch");
        let store = Store::open(&dir.join("jobs.db")).expect("open");
        // Sent at once, so the writer finds most of them waiting together:
        // j7 twice (one of the two breaks the id's uniqueness), and a write
        // that inserts a job, then fails, so its insert is undone alone.
        let ids: Vec<String> = (0..40).map(|n| format!("j{n}")).chain(["j7".to_owned()]).collect();
        let mut writes: Vec<_> = ids
            .iter()
            .map(|id| {
                let store = store.clone();
                let job = job(id, "a");
                tokio::spawn(async move {
                    match insert_within(&store, job, None, u64::MAX).await? {
                        Insertion::Queued => Ok(()),
                        other => Err(anyhow::anyhow!("not inserted: {other:?}")),
                    }
                })
            })
            .collect();
        let half = store.clone();
        writes.insert(
            20,
            tokio::spawn(async move {
                half.write(Durability::Synced, |connection| {
                    connection.execute(
                        "INSERT INTO jobs (id, tenant, component, state, input_file, input_sha256, stored_bytes, created_at)
                         VALUES ('half', 'a', 'bundled', 'queued', 0, 'h', 1000, 1)",
                        [],
                    )?;
                    Err(rusqlite::Error::QueryReturnedNoRows)
                })
                .await
            }),
        );
        let answers = futures_util::future::join_all(writes).await;
        let failed = answers.iter().filter(|answer| !matches!(answer, Ok(Ok(())))).count();
        assert_eq!(failed, 2, "only the second j7 and the failing write fail");
        let jobs = store.list("a".into(), 100).await.expect("list");
        assert_eq!(jobs.len(), 40, "the failing write's job is undone, every other one kept");
        assert_eq!(store.stored_bytes("a"), 40 * 4);
        drop(store);
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[tokio::test]
    async fn a_stored_end_of_another_shape_is_a_server_fault_and_a_report_is_kept_as_written() {
        let dir = scratch("shapes");
        let store = Store::open(&dir.join("jobs.db")).expect("open");
        store
            .call(|connection| {
                connection.execute_batch(
                    "INSERT INTO jobs (id, tenant, component, state, input_file, input_sha256, stored_bytes, created_at,
                         report, outputs)
                     VALUES ('odd', 'a', 'bundled', 'succeeded', 0, 'h', 0, 1, '{\"rows\": 1}', '[{\"name\": 1}]'),
                            ('ok', 'a', 'bundled', 'succeeded', 0, 'h', 0, 1, '{\"rows\": 1,\"b\":[ ]}',
                             '[{\"bytes\": 1, \"name\": \"x.csv\", \"sha256\": \"s\"}]')",
                )
            })
            .await
            .expect("written");
        assert!(store.get("a".into(), "odd".into()).await.is_err(), "an output that is not one");
        let ok = store.get("a".into(), "ok".into()).await.expect("read").expect("there");
        assert_eq!(ok.outputs, [output("x.csv", 1, "s")]);
        assert_eq!(ok.report.as_ref().map(JsonText::text), Some(r#"{"rows": 1,"b":[ ]}"#), "not rebuilt");
        drop(store);
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    /// `what`'s output, if it comes within a generous bound.
    async fn within<T>(what: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), what).await.expect("committed within the delay, not held")
    }

    #[tokio::test]
    async fn a_write_waits_for_ends_coming_only_a_moment() {
        let dir = scratch("linger");
        let store = Store::open(&dir.join("jobs.db")).expect("open");
        // A job whose end never comes (it runs on, or its end is lost).
        let running = store.end_coming(false);
        let inserted = within(insert_within(&store, job("j1", "a"), None, u64::MAX)).await.expect("insert");
        assert!(matches!(inserted, Insertion::Queued));
        // A light job's end, while the other end is still coming: its own
        // is committed at once, the wait for the other one is bounded.
        let end = store.end_coming(true);
        let light_running = store.end_coming(true);
        let inserted = within(insert_within(&store, job("j2", "a"), None, u64::MAX)).await.expect("insert");
        assert!(matches!(inserted, Insertion::Queued));
        drop(light_running);
        store.start("j1".into(), 2).await.expect("start").expect("queued");
        let ending = Ending {
            state: State::Failed,
            outcome: Some("timeout".into()),
            report: None,
            outputs: Vec::new(),
            error: None,
            stored_bytes: 0,
            finished_at: 3,
            results: None,
        };
        assert!(within(store.finish("j1".into(), 2, ending, end)).await.expect("finish"));
        drop(running);
        let counts = (store.ends_coming.all.load(Ordering::SeqCst), store.ends_coming.light.load(Ordering::SeqCst));
        assert_eq!(counts, (0, 0), "each end coming is counted once");
        drop(store);
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[tokio::test]
    async fn a_database_made_before_the_byte_counts_gets_them_from_its_jobs() {
        let dir = scratch("upgrade");
        let path = dir.join("jobs.db");
        {
            let connection = Connection::open(&path).expect("open");
            let before = SCHEMA.replace(",\n    results BLOB", "");
            assert_ne!(before, SCHEMA);
            connection.execute_batch(&before).expect("the schema before the counts and results");
            connection
                .execute(
                    "INSERT INTO jobs (id, tenant, component, state, input_file, input_sha256, stored_bytes, created_at)
                     VALUES ('old', 'a', 'bundled', 'succeeded', 0, 'h', 123, 1)",
                    [],
                )
                .expect("a job of before");
        }
        let store = Store::open(&path).expect("open");
        assert_eq!(store.stored_bytes("a"), 123);
        insert_within(&store, job("new", "a"), None, u64::MAX).await.expect("insert");
        assert_eq!(store.stored_bytes("a"), 127);
        drop(store);
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.stored_bytes("a"), 127, "counted once");
        assert!(store.results("old".into()).await.expect("the results column was added").is_none());
        drop(store);
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
