//! The job records, the queue's order, idempotency keys and per-tenant
//! stored bytes, in SQLite (WAL, synchronous commits): a record is written
//! whole or not at all, and a committed one survives a crash. Small inputs
//! live in their record; larger ones and the outputs are 0600 files under
//! `jobs/ID/` beside the database.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, params};

/// Where a job is in its life. A job that ended has one result: it is never run again.
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

/// One job as stored (`host serve --nats` keeps it as JSON in JetStream).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub tenant: String,
    pub component: String,
    pub state: State,
    pub outcome: Option<String>,
    pub report: Option<serde_json::Value>,
    pub outputs: Vec<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A job being accepted.
#[derive(Debug)]
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
    pub report: Option<serde_json::Value>,
    pub outputs: Vec<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub stored_bytes: u64,
    pub finished_at: i64,
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
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
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
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, finished_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (tenant, key)
);
";

const COLUMNS: &str =
    "id, tenant, component, state, outcome, report, outputs, error, created_at, started_at, finished_at";

/// The database, shared; every call runs on tokio's blocking pool.
#[derive(Clone, Debug)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
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
        let connection =
            Connection::open(path).with_context(|| format!("cannot open the job database {}", path.display()))?;
        // WAL: readers never see a half-written record; FULL: a commit is on
        // disk when it returns, so a 202 is never lost.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| connection.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| connection.pragma_update(None, "foreign_keys", "ON"))
            .and_then(|()| connection.busy_timeout(std::time::Duration::from_secs(5)))
            .and_then(|()| connection.execute_batch(SCHEMA))
            .with_context(|| format!("cannot set up the job database {}", path.display()))?;
        Ok(Self { connection: Arc::new(Mutex::new(connection)) })
    }

    /// Runs `f` with the connection on a blocking thread.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut connection)
        })
        .await
        .context("the database task failed")?
        .context("the job database failed")
    }

    /// Records a new queued job, with its idempotency key. When the key is
    /// taken (a concurrent request with the same key won), nothing is
    /// written and the job it names is returned.
    pub async fn insert(&self, job: NewJob, key: Option<String>) -> anyhow::Result<Option<KeyedJob>> {
        self.call(move |connection| {
            let tx = connection.transaction()?;
            if let Some(existing) = key.as_deref().map(|key| keyed(&tx, &job.tenant, key)).transpose()?.flatten() {
                return Ok(Some(existing));
            }
            tx.execute(
                "INSERT INTO jobs (id, tenant, component, state, input, input_file, input_sha256, stored_bytes, created_at)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8)",
                params![
                    job.id,
                    job.tenant,
                    job.component,
                    job.input,
                    job.input.is_none(),
                    job.input_sha256,
                    job.input_bytes,
                    job.created_at
                ],
            )?;
            if let Some(key) = &key {
                tx.execute(
                    "INSERT INTO idempotency_keys (tenant, key, job_id) VALUES (?1, ?2, ?3)",
                    params![job.tenant, key, job.id],
                )?;
            }
            tx.commit()?;
            Ok(None)
        })
        .await
    }

    pub async fn keyed(&self, tenant: String, key: String) -> anyhow::Result<Option<KeyedJob>> {
        self.call(move |connection| keyed(connection, &tenant, &key)).await
    }

    /// The job, if it is `tenant`'s: another tenant's job is not found.
    pub async fn get(&self, tenant: String, id: String) -> anyhow::Result<Option<JobRecord>> {
        self.call(move |connection| {
            connection
                .query_row(
                    &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1 AND tenant = ?2"),
                    params![id, tenant],
                    row,
                )
                .optional()
        })
        .await
    }

    /// The tenant's newest `limit` jobs, newest first.
    pub async fn list(&self, tenant: String, limit: u32) -> anyhow::Result<Vec<JobRecord>> {
        self.call(move |connection| {
            let mut statement = connection
                .prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE tenant = ?1 ORDER BY seq DESC LIMIT ?2"))?;
            statement.query_map(params![tenant, limit], row)?.collect()
        })
        .await
    }

    /// What the tenant keeps: queued inputs and finished outputs.
    pub async fn stored_bytes(&self, tenant: String) -> anyhow::Result<u64> {
        self.call(move |connection| {
            connection.query_row(
                "SELECT COALESCE(SUM(stored_bytes), 0) FROM jobs WHERE tenant = ?1",
                params![tenant],
                |row| row.get(0),
            )
        })
        .await
    }

    /// Marks a queued job running and returns its in-record input; `None`
    /// when it is no longer queued (it was deleted meanwhile).
    pub async fn start(&self, id: String, now: i64) -> anyhow::Result<Option<Option<Vec<u8>>>> {
        self.call(move |connection| {
            let tx = connection.transaction()?;
            let changed = tx.execute(
                "UPDATE jobs SET state = 'running', started_at = ?2 WHERE id = ?1 AND state = 'queued'",
                params![id, now],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            let input: Option<Vec<u8>> =
                tx.query_row("SELECT input FROM jobs WHERE id = ?1", params![id], |r| r.get(0))?;
            tx.commit()?;
            Ok(Some(input))
        })
        .await
    }

    /// Records how a running job ended; false when it is no longer running
    /// (deleted meanwhile). The input is dropped with it.
    pub async fn finish(&self, id: String, ending: Ending) -> anyhow::Result<bool> {
        self.call(move |connection| {
            let json = |value: &Option<serde_json::Value>| value.as_ref().map(serde_json::Value::to_string);
            let changed = connection.execute(
                "UPDATE jobs SET state = ?2, outcome = ?3, report = ?4, outputs = ?5, error = ?6, stored_bytes = ?7,
                     finished_at = ?8, input = NULL, input_file = 0
                 WHERE id = ?1 AND state = 'running'",
                params![
                    id,
                    ending.state.name(),
                    ending.outcome,
                    json(&ending.report),
                    serde_json::Value::Array(ending.outputs).to_string(),
                    json(&ending.error),
                    ending.stored_bytes,
                    ending.finished_at
                ],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Puts a running job back in the queue (the server is stopping).
    pub async fn requeue(&self, id: String) -> anyhow::Result<()> {
        self.call(move |connection| {
            connection
                .execute(
                    "UPDATE jobs SET state = 'queued', started_at = NULL WHERE id = ?1 AND state = 'running'",
                    params![id],
                )
                .map(drop)
        })
        .await
    }

    /// Cancels a queued or running job: it keeps its record, its input is gone.
    pub async fn cancel(&self, id: String, now: i64) -> anyhow::Result<bool> {
        self.call(move |connection| {
            let changed = connection.execute(
                "UPDATE jobs SET state = 'cancelled', input = NULL, input_file = 0, stored_bytes = 0, finished_at = ?2
                 WHERE id = ?1 AND state IN ('queued', 'running')",
                params![id, now],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Removes the record (its idempotency key goes with it).
    pub async fn delete(&self, id: String) -> anyhow::Result<()> {
        self.call(move |connection| connection.execute("DELETE FROM jobs WHERE id = ?1", params![id]).map(drop)).await
    }

    /// At start: jobs that were running when the server died are queued
    /// again; every queued job, in the order it was accepted.
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
        self.call(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < ?1",
            )?;
            statement.query_map(params![before], |r| r.get(0))?.collect()
        })
        .await
    }

    /// Whether a record with this id exists (for sweeping job folders).
    pub async fn exists(&self, id: String) -> anyhow::Result<Option<State>> {
        self.call(move |connection| {
            connection
                .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| r.get::<_, String>(0))
                .optional()?
                .map(|state| State::parse(&state))
                .transpose()
        })
        .await
    }
}

fn keyed(connection: &Connection, tenant: &str, key: &str) -> rusqlite::Result<Option<KeyedJob>> {
    connection
        .query_row(
            "SELECT k.job_id, j.input_sha256, j.component FROM idempotency_keys k JOIN jobs j ON j.id = k.job_id
             WHERE k.tenant = ?1 AND k.key = ?2",
            params![tenant, key],
            |r| Ok(KeyedJob { job_id: r.get(0)?, input_sha256: r.get(1)?, component: r.get(2)? }),
        )
        .optional()
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let json = |index: usize| -> rusqlite::Result<Option<serde_json::Value>> {
        let text: Option<String> = r.get(index)?;
        text.map(|text| {
            serde_json::from_str(&text).map_err(|err| {
                rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(err))
            })
        })
        .transpose()
    };
    let outputs = match json(6)? {
        Some(serde_json::Value::Array(outputs)) => outputs,
        _ => Vec::new(),
    };
    Ok(JobRecord {
        id: r.get(0)?,
        tenant: r.get(1)?,
        component: r.get(2)?,
        state: State::parse(&r.get::<_, String>(3)?)?,
        outcome: r.get(4)?,
        report: json(5)?,
        outputs,
        error: json(7)?,
        created_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(store.insert(job("j1", "a"), Some("k".into())).await.expect("insert").is_none());
        let again = store.insert(job("j2", "a"), Some("k".into())).await.expect("insert").expect("the key is taken");
        assert_eq!(again.job_id, "j1");
        assert!(store.get("b".into(), "j1".into()).await.expect("get").is_none(), "another tenant's job");
        assert_eq!(store.stored_bytes("a".into()).await.expect("sum"), 4);
        let input = store.start("j1".into(), 2).await.expect("start").expect("was queued");
        assert_eq!(input.as_deref(), Some(&b"a,b\n"[..]));
        drop(store);

        // A crash while running: the job is queued again at the next start.
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.recover().await.expect("recover"), vec![("j1".to_owned(), "a".to_owned())]);
        store.start("j1".into(), 3).await.expect("start").expect("queued again");
        let ending = Ending {
            state: State::Succeeded,
            outcome: Some("success".into()),
            report: Some(serde_json::json!({"rows": 1})),
            outputs: vec![serde_json::json!({"name": "x.csv", "bytes": 1, "sha256": "s"})],
            error: None,
            stored_bytes: 1,
            finished_at: 4,
        };
        assert!(store.finish("j1".into(), ending).await.expect("finish"));
        assert!(store.start("j1".into(), 5).await.expect("start").is_none(), "one result per job");
        let record = store.get("a".into(), "j1".into()).await.expect("get").expect("kept");
        assert_eq!((record.state, record.outputs.len()), (State::Succeeded, 1));
        assert_eq!(store.ended_before(5).await.expect("expired"), vec!["j1".to_owned()]);
        store.delete("j1".into()).await.expect("delete");
        assert!(store.keyed("a".into(), "k".into()).await.expect("key").is_none(), "the key goes with its job");
        drop(store);
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
