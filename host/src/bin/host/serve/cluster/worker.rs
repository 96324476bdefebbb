//! `host worker`: pulls jobs from JetStream, runs each in a local sandbox
//! under its tenant's limits, and stores the outputs and the one result.
//!
//! Fairness: one puller per tenant, each holding at most one message at a
//! time while it waits for a run slot, and the slots are handed out first
//! come, first served; a flooding tenant therefore gets one slot in turn
//! with every other tenant that has work, never all of them. A tenant's
//! `max_concurrent` holds per worker (its own semaphore) and across the
//! cluster (its consumer's `max_ack_pending`).
//!
//! Delivery: a message is acknowledged only once its job's end is recorded
//! (or the job is gone); while a job runs its worker sends progress acks
//! every third of `ack_wait`, so it is redelivered only when its worker is
//! gone. The delivery past `max_deliveries` records the job `gave-up`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer};
use clap::Args;
use futures_util::StreamExt as _;
use orders_host::{Component, Delivered, Destination, Input, Invocation, Runner};
use tokio::sync::{Semaphore, oneshot, watch};

use super::{Cluster, PutFailure, Stored, input_object, output_object, signed};
use crate::RootArgs;
use crate::serve::config::{Config, hex};
use crate::serve::jobs::{RESULT_IN_DATABASE, SPOOL_THRESHOLD, ending, now_ms};
use crate::serve::store::State;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The service's TOML config (tenants, limits, components, `[nats]`),
    /// the same file as the API replicas'.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// The NATS server(s), e.g. nats://127.0.0.1:4222 (comma-separated);
    /// credentials go in the config's [nats] table or the environment.
    #[arg(long, value_name = "URL")]
    nats: String,

    /// Jobs run at once by this worker [default: the config's max_concurrent].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,

    /// This worker's own folder for the jobs it runs (outputs before they
    /// are stored) [default: `worker` in the config's data_dir]. Give each
    /// worker on a machine its own.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// On SIGTERM or SIGINT, how long running jobs may take to finish before
    /// they are stopped and handed back to the queue.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = orders_host::parse_duration)]
    drain_timeout: Duration,

    #[command(flatten)]
    root: RootArgs,
}

/// Runs the worker until SIGTERM or SIGINT; exits 0 after a clean stop.
pub fn command(args: &WorkerArgs) -> ExitCode {
    crate::serve::run_async(Config::load(&args.config), |config| work(args, config))
}

/// Why a running job is stopped before it ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Its record was cancelled (`DELETE`) or removed.
    Cancelled,
    /// Another worker took it over (this one was thought gone).
    TakenOver,
    /// This worker is stopping: the job goes back to the queue.
    Drain,
}

/// What becomes of a message once its job is handled.
enum Verdict {
    /// The job ended (or is gone): acknowledge, never deliver it again.
    Done,
    /// Run it again (a NATS or host failure, a drain): negative ack.
    Again,
    /// Another worker owns it now: leave the message to that one.
    Leave,
}

struct Running {
    run: String,
    stop: oneshot::Sender<Stop>,
}

struct Worker {
    config: Config,
    cluster: Cluster,
    runner: Runner,
    components: HashMap<String, Component>,
    name: String,
    work_dir: PathBuf,
    slots: Arc<Semaphore>,
    tenant_slots: HashMap<String, Arc<Semaphore>>,
    running: Mutex<HashMap<String, Running>>,
    /// Messages held (waiting for a slot or running).
    held: AtomicUsize,
    changes: watch::Sender<u64>,
    stopping: watch::Sender<bool>,
}

async fn work(args: &WorkerArgs, config: Config) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(|| config.data_dir.join("worker"));
    crate::serve::private_folder(&data_dir)?;
    // Held for the process's life: a second worker on this folder would
    // clear the first one's work.
    let _lock = lock_folder(&data_dir)?;
    let work_dir = data_dir.join("work");
    match std::fs::remove_dir_all(&work_dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("cannot clear {}", work_dir.display()));
        }
        _ => {}
    }
    crate::serve::private_folder(&work_dir)?;
    let concurrency = args.concurrency.map_or(config.max_concurrent, usize::from);
    let (runner, components) = crate::serve::start_runner(&args.root, &config, concurrency)?;
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).map_err(|err| anyhow::anyhow!("the OS RNG failed: {err}"))?;
    let name = format!("worker-{}-{}", std::process::id(), hex(&random));
    let cluster = Cluster::connect(&args.nats, &config, &name).await?;
    let tenant_slots =
        config.tenants.iter().map(|(tenant, t)| (tenant.clone(), Arc::new(Semaphore::new(t.max_concurrent)))).collect();
    let worker = Arc::new(Worker {
        slots: Arc::new(Semaphore::new(runner.max_concurrent())),
        config,
        cluster,
        runner: runner.clone(),
        components,
        name,
        work_dir,
        tenant_slots,
        running: Mutex::default(),
        held: AtomicUsize::new(0),
        changes: watch::Sender::new(0),
        stopping: watch::Sender::new(false),
    });
    let watcher = tokio::spawn(Arc::clone(&worker).watch());
    let mut pullers = Vec::new();
    for tenant in worker.config.tenants.keys() {
        pullers.push(tokio::spawn(Arc::clone(&worker).pull(tenant.clone())));
    }
    // Scripts and tests wait for this line.
    println!("worker {} pulling jobs", worker.name);
    crate::serve::shutdown_signal().await;
    tracing::info!("stopping: no new jobs, running ones get {:?}", args.drain_timeout);
    worker.stopping.send_replace(true);
    for puller in pullers {
        let _ = puller.await;
    }
    worker.drain(args.drain_timeout).await;
    watcher.abort();
    runner.shutdown()?;
    Ok(())
}

/// An exclusive lock on `folder/worker.lock`, or an error naming the folder.
fn lock_folder(folder: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = folder.join("worker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        anyhow::anyhow!("another worker uses {}; give each worker on a machine its own --data-dir", folder.display())
    })?;
    Ok(file)
}

impl Worker {
    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Takes the tenant's jobs one at a time, each once this worker has a
    /// slot for the tenant, until the worker stops.
    async fn pull(self: Arc<Self>, tenant: String) {
        let Some(tenant_slots) = self.tenant_slots.get(&tenant).cloned() else { return };
        let mut stopping = self.stopping.subscribe();
        let mut consumer: Option<consumer::PullConsumer> = None;
        while !self.stopping() {
            let tenant_permit = tokio::select! {
                permit = Arc::clone(&tenant_slots).acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
                _ = stopping.changed() => return,
            };
            let pulled = match &consumer {
                Some(consumer) => tokio::select! {
                    pulled = next_message(consumer) => pulled,
                    _ = stopping.changed() => return,
                },
                None => match self.cluster.queue.get_consumer(&tenant).await {
                    Ok(found) => {
                        consumer = Some(found);
                        continue;
                    }
                    Err(err) => Err(anyhow::anyhow!("cannot open the tenant's consumer: {err}")),
                },
            };
            let message = match pulled {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(tenant, "cannot pull jobs: {err:#}");
                    consumer = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let delivered = message.info().map_or(1, |info| info.delivered);
            let (message, acker) = message.split();
            let acker = Arc::new(acker);
            self.held.fetch_add(1, Ordering::SeqCst);
            let keepalive = tokio::spawn(keep_alive(Arc::clone(&acker), self.cluster.settings.ack_wait / 3));
            // Slots go first come, first served: tenants take turns.
            let slot = tokio::select! {
                slot = Arc::clone(&self.slots).acquire_owned() => slot.ok(),
                _ = stopping.changed() => None,
            };
            let Some(slot) = slot else {
                keepalive.abort();
                let _ = acker.ack_with(AckKind::Nak(None)).await;
                self.released();
                return;
            };
            let worker = Arc::clone(&self);
            let tenant = tenant.clone();
            tokio::spawn(async move {
                let id = String::from_utf8_lossy(&message.payload).into_owned();
                let span = tracing::info_span!("job", tenant = %tenant, job = %id);
                let verdict = tracing::Instrument::instrument(worker.handle(&tenant, &id, delivered), span).await;
                keepalive.abort();
                let answered = match verdict {
                    Verdict::Done => acker.double_ack().await,
                    Verdict::Again => acker.ack_with(AckKind::Nak(Some(Duration::from_millis(500)))).await,
                    Verdict::Leave => Ok(()),
                };
                if let Err(err) = answered {
                    tracing::warn!(tenant, job = id, "cannot answer the job's message: {err}");
                }
                drop((slot, tenant_permit));
                worker.released();
            });
        }
    }

    fn released(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits for the jobs held to end, up to `timeout`; then stops the rest
    /// (their messages go back to the queue) and waits for them.
    async fn drain(&self, timeout: Duration) {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.held.load(Ordering::SeqCst) > 0 {
            changes.borrow_and_update();
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                break;
            }
        }
        let stops: Vec<_> = self.running.lock().unwrap_or_else(PoisonError::into_inner).drain().collect();
        if !stops.is_empty() {
            tracing::warn!("stopping {} job(s) still running; the queue gives them to another worker", stops.len());
        }
        for (_, running) in stops {
            let _ = running.stop.send(Stop::Drain);
        }
        while self.held.load(Ordering::SeqCst) > 0 {
            changes.borrow_and_update();
            if changes.changed().await.is_err() {
                break;
            }
        }
    }

    /// Stops the running jobs whose record says they should not go on,
    /// from one watch of the jobs bucket, made again whenever it stops.
    async fn watch(self: Arc<Self>) {
        loop {
            match self.cluster.jobs.watch_all().await {
                Ok(mut entries) => {
                    while let Some(entry) = entries.next().await {
                        let Ok(entry) = entry else { break };
                        let Some((_, id)) = entry.key.split_once('.') else { continue };
                        let stop = if entry.operation == jetstream::kv::Operation::Put {
                            match Stored::decode(&entry.value) {
                                Ok(stored) if stored.record.state == State::Cancelled => Some((Stop::Cancelled, None)),
                                Ok(stored) if stored.record.state == State::Running => {
                                    stored.run.map(|run| (Stop::TakenOver, Some(run)))
                                }
                                _ => None,
                            }
                        } else {
                            Some((Stop::Cancelled, None))
                        };
                        let Some((stop, run)) = stop else { continue };
                        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
                        // A record running under another run than ours: taken over.
                        let ours = running.get(id).is_some_and(|r| run.as_ref().is_none_or(|run| *run != r.run));
                        if ours && let Some(running) = running.remove(id) {
                            let _ = running.stop.send(stop);
                        }
                    }
                }
                Err(err) => tracing::warn!("cannot watch the jobs bucket: {err}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runs one delivery of a job to its recorded end, or says why not.
    async fn handle(&self, tenant: &str, id: &str, delivered: i64) -> Verdict {
        match self.try_handle(tenant, id, delivered).await {
            Ok(verdict) => verdict,
            Err(err) => {
                tracing::warn!("the job goes back to the queue: {err:#}");
                Verdict::Again
            }
        }
    }

    async fn try_handle(&self, tenant: &str, id: &str, delivered: i64) -> anyhow::Result<Verdict> {
        let max_deliveries = i64::from(self.cluster.settings.max_deliveries);
        // Take the job: a revision-checked write, so of two workers that
        // read it at once one runs it.
        let (mut stored, revision, run) = loop {
            let Some((mut stored, revision)) = self.cluster.read(tenant, id).await? else {
                return Ok(Verdict::Done);
            };
            if stored.record.state.ended() {
                // Its end is recorded; its input may have outlived it (NATS
                // went away just after): delivered again until it is gone.
                let removed = self.cluster.remove_object(&input_object(id)).await;
                return Ok(if removed { Verdict::Done } else { Verdict::Again });
            }
            // What a run that vanished mid-upload stored goes once the
            // record no longer names it (the write below).
            let abandoned = std::mem::take(&mut stored.uploading);
            if delivered > max_deliveries {
                stored.record.state = State::Failed;
                stored.record.outcome = Some("gave-up".to_owned());
                stored.record.error = Some(serde_json::json!({
                    "kind": "gave-up",
                    "message": format!(
                        "the job's worker stopped {max_deliveries} time(s) before the job ended (killed, or cut off \
                         from NATS); it is not run again: look for what kills the workers, then send the job again"
                    ),
                    "limit": null,
                }));
                stored.record.finished_at = Some(now_ms());
                if self.cluster.write(&stored, revision).await?.is_none() {
                    continue;
                }
                tracing::warn!("gave up after {max_deliveries} run(s)");
                self.cluster.remove_all(&abandoned).await;
                self.cluster.remove_object(&input_object(id)).await;
                self.cluster.count_usage(tenant, -signed(stored.input_bytes)).await;
                return Ok(Verdict::Done);
            }
            let mut random = [0u8; 4];
            getrandom::fill(&mut random).map_err(|err| anyhow::anyhow!("the OS RNG failed: {err}"))?;
            let run = format!("{delivered}-{}", hex(&random));
            stored.record.state = State::Running;
            stored.record.started_at = Some(now_ms());
            stored.run = Some(run.clone());
            stored.worker = Some(self.name.clone());
            match self.cluster.write(&stored, revision).await? {
                Some(revision) => {
                    self.cluster.remove_all(&abandoned).await;
                    break (stored, revision, run);
                }
                None => continue,
            }
        };
        let (stop_sender, stop) = oneshot::channel();
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), Running { run: run.clone(), stop: stop_sender });
        let folder = self.work_dir.join(format!("{id}-{run}"));
        let result = self.run(tenant, &stored, &folder, stop).await;
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        let verdict = match result {
            Ok(result) => self.record(&mut stored, revision, &run, &folder, result).await,
            Err(Stop::Cancelled) => Ok(Verdict::Done),
            Err(Stop::TakenOver) => Ok(Verdict::Leave),
            Err(Stop::Drain) => Ok(Verdict::Again),
        };
        remove_folder(&folder).await;
        verdict
    }

    /// Runs the guest on the job's input (streamed from the object store),
    /// its outputs delivered in memory when they are as small as the
    /// embedded service keeps in its database, else into `folder/out`.
    async fn run(
        &self,
        tenant: &str,
        stored: &Stored,
        folder: &std::path::Path,
        stop: oneshot::Receiver<Stop>,
    ) -> Result<anyhow::Result<Result<orders_host::RunOutcome, orders_host::RunError>>, Stop> {
        let prepared = async {
            let Some(component) = self.components.get(&stored.record.component) else {
                return Ok(Err(orders_host::RunError::Host(format!(
                    "the component `{}` is not in this worker's config",
                    stored.record.component
                ))));
            };
            let object =
                self.cluster.data.get(input_object(&stored.record.id)).await.with_context(|| {
                    format!("cannot read the input of job {} from the object store", stored.record.id)
                })?;
            let input = if stored.input_bytes <= SPOOL_THRESHOLD as u64 {
                let mut bytes = Vec::with_capacity(usize::try_from(stored.input_bytes).unwrap_or(0));
                let mut object = object;
                tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes).await?;
                Input::Bytes(bytes)
            } else {
                // Read on the runner's blocking thread as the sandbox is filled.
                Input::Reader(Box::new(tokio_util::io::SyncIoBridge::new(object)))
            };
            tokio::fs::create_dir_all(folder).await?;
            let invocation =
                Invocation::new(component.clone(), input).tenant(tenant).destination(Destination::MemoryOrFolder {
                    max_bytes: RESULT_IN_DATABASE,
                    path: folder.join("out"),
                    force: true,
                });
            Ok(self.runner.invoke(invocation).await)
        };
        tokio::select! {
            result = prepared => Ok(result),
            // Dropping the invocation removes its sandbox.
            Ok(stop) = stop => Err(stop),
        }
    }

    /// Stores the outputs and records the job's one result; if another
    /// member changed the record meanwhile, this run's outputs go.
    async fn record(
        &self,
        stored: &mut Stored,
        revision: u64,
        run: &str,
        folder: &std::path::Path,
        result: anyhow::Result<Result<orders_host::RunOutcome, orders_host::RunError>>,
    ) -> anyhow::Result<Verdict> {
        let result = result?;
        let id = stored.record.id.clone();
        let tenant = stored.record.tenant.clone();
        let ending = ending(&result)?;
        let mut revision = revision;
        let mut uploaded: Vec<String> = Vec::new();
        if let Ok(outcome) = &result {
            // Named in the record before they are stored, so that whoever
            // takes the job over can remove them if this worker dies.
            stored.uploading = outcome.outputs.iter().map(|output| output_object(&id, run, &output.name)).collect();
            match self.cluster.write(stored, revision).await? {
                Some(next) => revision = next,
                None => return self.lost(&tenant, &id, &[]).await,
            }
            for output in &outcome.outputs {
                let name = output_object(&id, run, &output.name);
                let stored_object = match &outcome.delivered {
                    Delivered::Memory(files) => match files.iter().find(|(file, _)| *file == output.name) {
                        Some((_, contents)) => self.cluster.put_object(&name, &mut contents.as_slice()).await,
                        None => {
                            Err(PutFailure::Read(std::io::Error::other("the run listed an output it did not deliver")))
                        }
                    },
                    _ => match tokio::fs::File::open(folder.join("out").join(&output.name)).await {
                        Ok(mut file) => self.cluster.put_object(&name, &mut file).await,
                        Err(err) => Err(PutFailure::Read(err)),
                    },
                };
                if let Err(err) = stored_object {
                    self.cluster.remove_all(&uploaded).await;
                    return Err(match err {
                        PutFailure::Read(err) => anyhow::Error::from(err),
                        PutFailure::Store(err) => err,
                    })
                    .with_context(|| format!("cannot store output {}", output.name));
                }
                uploaded.push(name);
            }
        }
        stored.record.end(&ending);
        stored.stored_bytes = ending.stored_bytes;
        stored.uploading = Vec::new();
        if self.cluster.write(stored, revision).await?.is_some() {
            tracing::info!(outcome = stored.record.outcome.as_deref().unwrap_or(""), "ended");
            let removed = self.cluster.remove_object(&input_object(&id)).await;
            self.cluster.count_usage(&tenant, signed(stored.stored_bytes) - signed(stored.input_bytes)).await;
            // An input not removed is removed at its next delivery.
            return Ok(if removed { Verdict::Done } else { Verdict::Again });
        }
        self.lost(&tenant, &id, &uploaded).await
    }

    /// The job was cancelled, or taken over by another worker, while this
    /// one ran it: what this run stored goes.
    async fn lost(&self, tenant: &str, id: &str, uploaded: &[String]) -> anyhow::Result<Verdict> {
        self.cluster.remove_all(uploaded).await;
        Ok(match self.cluster.read(tenant, id).await? {
            Some((now, _)) if !now.record.state.ended() => Verdict::Leave,
            _ => Verdict::Done,
        })
    }
}

/// One message of the consumer, waiting up to a few seconds for it.
async fn next_message(consumer: &consumer::PullConsumer) -> anyhow::Result<Option<jetstream::Message>> {
    let mut batch = consumer.batch().max_messages(1).expires(Duration::from_secs(5)).messages().await?;
    match batch.next().await {
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(err)) => Err(anyhow::anyhow!("{err}")),
        None => Ok(None),
    }
}

/// Tells JetStream the job is still being worked on, every `period`.
async fn keep_alive(acker: Arc<jetstream::message::Acker>, period: Duration) {
    let mut ticker = tokio::time::interval(period.max(Duration::from_millis(200)));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(err) = acker.ack_with(AckKind::Progress).await {
            tracing::debug!("cannot send a progress ack: {err}");
        }
    }
}

async fn remove_folder(folder: &std::path::Path) {
    match tokio::fs::remove_dir_all(folder).await {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            tracing::error!(folder = %folder.display(), "cannot remove a job's folder: {err}");
        }
        _ => {}
    }
}
