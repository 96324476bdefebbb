//! The runner: one engine and linker per process, one sandbox and one store
//! per invocation.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cap_std::fs::Dir;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::bindings::orders::pipeline::types::PipelineError;
use crate::bindings::{Pipeline, PipelinePre};
use crate::cache::CodeCache;
use crate::engine::{EngineSettings, GuestEngine};
use crate::error::RunError;
use crate::guest::{BLOCK_CURRENT_THREAD, CappedStderr, GuestState, MemoryLimiter, Preopen};
use crate::housekeeper::Housekeeper;
use crate::input::{StagedInput, copy_input, stage_input};
use crate::ledger::{Bounds, Kind, Ledger, Observed, Refused};
use crate::limits::Limits;
use crate::outputs::{self, Delivered, Destination, OutputFile};
use crate::quota::{Held, MAX_OPEN_HANDLES, Progress, stat_handle};
use crate::report::Report;
use crate::sandbox::{Sandbox, SandboxRoot, Sweep};
use crate::tenants::Tenants;
use crate::text;

/// The reference pipeline, built from `guest/` when the host is built.
pub const BUNDLED_PIPELINE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/orders_pipeline.wasm"));

/// Where the guest finds its input and writes its outputs.
pub const GUEST_INPUT_DIR: &str = "/input";
pub const GUEST_INPUT_FILE: &str = crate::sandbox::INPUT_FILE;
pub const GUEST_OUTPUT_DIR: &str = "/out";

/// Host objects one guest may have in its resource table at once:
/// descriptors, streams, pollables, listings. Each costs host memory (about
/// a hundred bytes to a few hundred), so this bounds what a guest can make
/// the host hold that way to a few MiB.
const MAX_TABLE_ENTRIES: usize = 16_384;

/// How a [`Runner`] is set up; everything per-invocation is in [`Invocation`].
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The folder that holds the sandboxes; default [`SandboxRoot::default_path`].
    pub sandbox_root: Option<PathBuf>,
    /// A memory-backed folder (tmpfs) for the sandboxes of small inputs, so
    /// they never touch the disk; default `/dev/shm/orders-host-<uid>` where
    /// `/dev/shm` exists. Unusable: a warning, and every input goes to disk.
    pub memory_root: Option<PathBuf>,
    /// Inputs up to this many bytes are spooled: their sandbox lives under
    /// the memory root. 0 turns spooling off. Default 1 MiB.
    pub spool_threshold: u64,
    /// Compile guests with fuel metering, so [`Limits::fuel`] can be used.
    /// It costs some speed, so it is off unless asked for.
    pub fuel_metering: bool,
    /// Invocations that may run at once, over all tenants; more wait (or
    /// fail fast, see [`Admission`]). Default: the number of CPUs.
    pub max_concurrent: usize,
    /// Invocations one tenant may run at once. Default: `max_concurrent`.
    pub max_concurrent_per_tenant: usize,
    /// Preallocate instance slots (wasmtime's pooling allocator, with
    /// copy-on-write memory images) for `max_concurrent` instances.
    pub pooling: bool,
    /// Remove sandboxes on a background thread after the run returns,
    /// instead of before; [`Runner::shutdown`] waits for them. Until it is
    /// removed, a finished sandbox stays locked and private (0700), and it
    /// is never reused.
    pub background_removal: bool,
    /// Sandboxes made ahead of time, per sandbox root in use, on a
    /// background thread, so an invocation does not wait for its sandbox to
    /// be made. Each is made exactly as an invocation would make it and used
    /// once; [`Runner::shutdown`] removes the unused ones. Each holds three
    /// file descriptors. The thread runs at the lowest priority: when
    /// invocations keep every core busy, they make their own sandboxes.
    /// Default 0 (off).
    pub ready_sandboxes: usize,
    /// A persistent cache of compiled components; `None` compiles in memory only.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self {
            sandbox_root: None,
            memory_root: None,
            spool_threshold: 1 << 20,
            fuel_metering: false,
            max_concurrent: cpus,
            max_concurrent_per_tenant: cpus,
            pooling: true,
            background_removal: false,
            ready_sandboxes: 0,
            cache_dir: None,
        }
    }
}

/// Runs pipeline components, each invocation in a fresh sandbox. Build it
/// once; it is cheap to clone and share across threads and tasks.
#[derive(Clone, Debug)]
pub struct Runner {
    inner: Arc<RunnerInner>,
}

struct RunnerInner {
    engine: GuestEngine,
    disk_root: SandboxRoot,
    memory_root: Option<SandboxRoot>,
    config: RunnerConfig,
    slots: Arc<Semaphore>,
    tenants: Tenants,
    housekeeper: Housekeeper,
    /// Set by [`Runner::shutdown`]: no invocation starts after it.
    closed: AtomicBool,
}

impl std::fmt::Debug for RunnerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("disk_root", &self.disk_root).field("config", &self.config).finish()
    }
}

impl Drop for RunnerInner {
    fn drop(&mut self) {
        self.engine.stop_ticking();
        for (path, err) in self.housekeeper.finish() {
            tracing::error!(sandbox = %path.display(), "cannot remove sandbox: {err}; `host sweep` retries");
        }
    }
}

/// A compiled component, ready to instantiate many times.
#[derive(Clone)]
pub struct Component {
    pre: PipelinePre<GuestState>,
    name: String,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Component {
    /// The name it was loaded under (file path or `bundled`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The input of one invocation. The guest cannot tell them apart.
pub enum Input {
    /// A file, copied into the sandbox.
    Path(PathBuf),
    /// Bytes already in memory.
    Bytes(Vec<u8>),
    /// A stream, read to its end into the sandbox.
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
pub enum Admission {
    /// Wait for a slot (the default).
    #[default]
    Wait,
    /// Fail at once with [`RunError::Busy`].
    FailFast,
}

/// One invocation: what to run, on what, for whom, under which limits, and
/// where the outputs go.
///
/// ```no_run
/// # async fn example(runner: &host::Runner, pipeline: &host::Component) -> Result<(), host::RunError> {
/// use host::{Destination, Input, Invocation};
/// let outcome = runner
///     .invoke(
///         Invocation::new(pipeline, Input::Path("orders.csv".into()))
///             .tenant("acme")
///             .destination(Destination::Tar { path: "acme-orders.tar".into(), force: true }),
///     )
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Invocation<'a> {
    pub component: &'a Component,
    pub input: Input,
    /// The tenant: its own sandbox folder, concurrency bound and limits.
    pub tenant: Option<String>,
    /// The limits; `None` takes the tenant's profile, else [`Limits::default`].
    pub limits: Option<Limits>,
    pub destination: Destination,
    pub admission: Admission,
    /// Watch how far the guest has read its input.
    pub progress: Option<Arc<Progress>>,
}

impl<'a> Invocation<'a> {
    /// An invocation of `component` on `input`, with outputs in memory.
    #[must_use]
    pub fn new(component: &'a Component, input: Input) -> Self {
        Self {
            component,
            input,
            tenant: None,
            limits: None,
            destination: Destination::Memory,
            admission: Admission::Wait,
            progress: None,
        }
    }

    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    #[must_use]
    pub fn destination(mut self, destination: Destination) -> Self {
        self.destination = destination;
        self
    }

    #[must_use]
    pub fn fail_fast(mut self) -> Self {
        self.admission = Admission::FailFast;
        self
    }

    #[must_use]
    pub fn progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

/// How long each step of an invocation took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub sandbox_create: Duration,
    pub input_copy: Duration,
    /// Store, WASI context and instance (part of `guest`).
    pub instantiate: Duration,
    /// Instantiation plus the call of `process`.
    pub guest: Duration,
    pub collect: Duration,
    pub deliver: Duration,
    pub sandbox_remove: Duration,
    pub total: Duration,
}

/// A successful invocation.
#[derive(Debug)]
pub struct RunOutcome {
    /// The tenant it ran for, if any.
    pub tenant: Option<String>,
    /// Whether the input was spooled: its sandbox lived in memory.
    pub spooled: bool,
    pub report: Report,
    pub outputs: Vec<OutputFile>,
    pub delivered: Delivered,
    pub timings: Timings,
    /// The most linear memory the guest held at once, in bytes.
    pub peak_memory: u64,
    /// Fuel consumed, when fuel metering is on.
    pub fuel_used: Option<u64>,
    /// Bytes the guest's files grew by, as charged to the disk quota.
    pub bytes_written: u64,
    /// The first [`Limits::stderr_limit`] bytes of the guest's stderr.
    pub stderr: String,
}

impl Runner {
    /// Builds the engine and linker, opens (creating) the sandbox roots and
    /// starts the epoch ticker (and the remover, with background removal).
    ///
    /// # Errors
    ///
    /// [`RunError::Sandbox`] when the disk root cannot be opened or is not
    /// private, [`RunError::Host`] when the engine cannot be built.
    pub fn new(config: &RunnerConfig) -> Result<Self, RunError> {
        // A root the user named must be private; a default one that is not
        // gives way to a private fallback (see `SandboxRoot::open_default`).
        let disk_root = match &config.sandbox_root {
            Some(path) => SandboxRoot::open(path),
            None => SandboxRoot::open_default(),
        }
        .map_err(RunError::Sandbox)?;
        let memory_root = match (&config.memory_root, config.spool_threshold) {
            (_, 0) => None,
            (Some(path), _) => {
                SandboxRoot::open_memory(path).inspect_err(|err| tracing::warn!("spooling is off: {err}")).ok()
            }
            (None, _) => SandboxRoot::open_default_memory(),
        };

        let max_concurrent = config.max_concurrent.max(1);
        // A cache that cannot be used only costs compile time.
        let cache = config.cache_dir.as_deref().and_then(|path| match CodeCache::open(path) {
            Ok(cache) => Some(cache),
            Err(err) => {
                tracing::warn!("compiled-code cache {} is off: {err}", path.display());
                None
            }
        });
        let settings = EngineSettings { fuel_metering: config.fuel_metering, pooling: config.pooling, max_concurrent };
        let engine = GuestEngine::new(settings, cache)?;
        let housekeeper = Housekeeper::start(config.background_removal, config.ready_sandboxes)?;

        Ok(Self {
            inner: Arc::new(RunnerInner {
                engine,
                disk_root,
                memory_root,
                config: config.clone(),
                slots: Arc::new(Semaphore::new(max_concurrent)),
                tenants: Tenants::new(config.max_concurrent_per_tenant),
                housekeeper,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Sets the limit profile of `tenant`, used by its invocations that do
    /// not bring their own.
    ///
    /// # Errors
    ///
    /// [`RunError::InvalidArgument`] when `tenant` is not a tenant id.
    pub fn set_tenant_limits(&self, tenant: &str, limits: Limits) -> Result<(), RunError> {
        self.inner.tenants.set_profile(tenant, limits)
    }

    /// Waits for the sandboxes queued for background removal to be gone,
    /// removes the sandboxes made ahead of time and empty tenant folders, and
    /// reports the first removal error. Later invocations are refused with
    /// [`RunError::ShutDown`]; invocations already running finish.
    ///
    /// # Errors
    ///
    /// [`RunError::Cleanup`] for the first sandbox that could not be removed.
    pub fn shutdown(&self) -> Result<(), RunError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let mut failures = self.inner.housekeeper.finish();
        // Their handles go before their folders do.
        self.inner.tenants.drop_idle();
        for root in std::iter::once(&self.inner.disk_root).chain(&self.inner.memory_root) {
            if let Err(err) = root.remove_empty_tenants() {
                failures.push((root.path().to_owned(), err));
            }
        }
        match failures.into_iter().next() {
            Some((path, source)) => Err(RunError::Cleanup { path, source }),
            None => Ok(()),
        }
    }

    /// The disk root this runner creates sandboxes in.
    #[must_use]
    pub fn sandbox_root(&self) -> &SandboxRoot {
        &self.inner.disk_root
    }

    /// Removes the sandboxes of dead hosts from both roots (see
    /// [`SandboxRoot::sweep`]).
    ///
    /// # Errors
    ///
    /// When a root cannot be listed.
    pub fn sweep(&self) -> io::Result<Sweep> {
        let mut sweep = self.inner.disk_root.sweep()?;
        if let Some(memory_root) = &self.inner.memory_root {
            sweep.absorb(memory_root.sweep()?);
        }
        Ok(sweep)
    }

    /// The memory-backed root of spooled inputs, when spooling is on.
    #[must_use]
    pub fn memory_root(&self) -> Option<&SandboxRoot> {
        self.inner.memory_root.as_ref()
    }

    /// Compiles a component and checks it implements `orders:pipeline`.
    ///
    /// # Errors
    ///
    /// [`RunError::ComponentInvalid`] when the bytes are not a component, it
    /// imports something the host does not provide, or lacks `process`.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Component, RunError> {
        let invalid = |reason: String| RunError::ComponentInvalid { name: name.to_owned(), reason };
        let component = self.inner.engine.compile(name, bytes).map_err(|err| invalid(format!("{err:#}")))?;
        let instance_pre = self
            .inner
            .engine
            .linker
            .instantiate_pre(&component)
            .map_err(|err| invalid(format!("it needs something the sandbox does not offer: {err:#}")))?;
        let pre = PipelinePre::new(instance_pre).map_err(|err| invalid(format!("{err:#}")))?;
        Ok(Component { pre, name: name.to_owned() })
    }

    /// Reads and compiles a component file.
    ///
    /// # Errors
    ///
    /// [`RunError::ComponentUnreadable`], or as [`Runner::load`].
    pub fn load_file(&self, path: &Path) -> Result<Component, RunError> {
        let bytes =
            std::fs::read(path).map_err(|source| RunError::ComponentUnreadable { path: path.to_owned(), source })?;
        self.load(&path.display().to_string(), &bytes)
    }

    /// The reference pipeline embedded in this binary.
    ///
    /// # Errors
    ///
    /// As [`Runner::load`]; only if the build embedded a broken component.
    pub fn bundled(&self) -> Result<Component, RunError> {
        self.load("bundled pipeline", BUNDLED_PIPELINE)
    }

    /// Runs `component` on `input` in a fresh sandbox under `limits`, and
    /// delivers the outputs to `destination`: [`Runner::invoke`] without a
    /// tenant.
    ///
    /// # Errors
    ///
    /// As [`Runner::invoke`].
    pub async fn run(
        &self,
        component: &Component,
        input: Input,
        limits: &Limits,
        destination: &Destination,
    ) -> Result<RunOutcome, RunError> {
        self.invoke(Invocation::new(component, input).limits(*limits).destination(destination.clone())).await
    }

    /// Runs one invocation in a fresh sandbox: waits for (or, failing fast,
    /// refuses) a slot within the overall and the tenant's bound, spools a
    /// small input into a memory-backed sandbox, runs the guest under the
    /// limits, delivers the outputs, and removes the sandbox on every path.
    /// If this future is dropped (Ctrl-C), dropping it removes the sandbox.
    ///
    /// # Errors
    ///
    /// A [`RunError`] naming the failure class; nothing is delivered then.
    pub async fn invoke(&self, invocation: Invocation<'_>) -> Result<RunOutcome, RunError> {
        let started = Instant::now();
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(RunError::ShutDown);
        }
        let Invocation { component, input, tenant: tenant_id, limits, destination, admission, progress } = invocation;
        let tenant = tenant_id
            .as_deref()
            .map(|id| self.inner.tenants.get(id, &self.inner.disk_root, self.inner.memory_root.as_ref()))
            .transpose()?;
        let limits =
            limits.or_else(|| tenant_id.as_deref().and_then(|id| self.inner.tenants.profile(id))).unwrap_or_default();
        if limits.fuel.is_some() && !self.inner.config.fuel_metering {
            return Err(RunError::InvalidArgument(
                "a fuel limit needs a runner built with fuel metering (RunnerConfig::fuel_metering)".into(),
            ));
        }
        // A destination that would refuse the outputs fails before any work.
        outputs::check_destination(&destination)?;

        // The tenant's slot first, so a tenant at its bound holds no global slot.
        let busy = || RunError::Busy { tenant: tenant_id.clone() };
        let _tenant_slot = match &tenant {
            Some(tenant) => Some(acquire(&tenant.slots, admission).await.ok_or_else(busy)?),
            None => None,
        };
        let _slot = acquire(&self.inner.slots, admission).await.ok_or_else(busy)?;

        let staged = stage_input(input, self.inner.config.spool_threshold)?;
        let spooled = staged.fits_in_memory && self.inner.memory_root.is_some();
        let root = match (&tenant, spooled) {
            (Some(tenant), true) => tenant.memory_root.as_ref(),
            (Some(tenant), false) => Some(&tenant.disk_root),
            (None, true) => self.inner.memory_root.as_ref(),
            (None, false) => Some(&self.inner.disk_root),
        }
        .unwrap_or(&self.inner.disk_root);
        let creating = Instant::now();
        let sandbox = self.inner.housekeeper.take(root).map_err(RunError::Sandbox)?;
        let created = creating.elapsed();
        tracing::info!(sandbox = %sandbox.path().display(), component = component.name(), spooled, "run started");

        let result = self.run_in(&sandbox, component, staged, &limits, &destination, progress).await;

        let removing = Instant::now();
        let path = sandbox.path().to_owned();
        let removed = self.inner.housekeeper.remove(sandbox);
        let removal = removing.elapsed();
        match (result, removed) {
            (Ok(mut outcome), Ok(())) => {
                outcome.tenant = tenant_id;
                outcome.spooled = spooled;
                outcome.timings.sandbox_create = created;
                outcome.timings.sandbox_remove = removal;
                outcome.timings.total = started.elapsed();
                tracing::info!(timings = ?outcome.timings, "run finished");
                Ok(outcome)
            }
            (Ok(_), Err(source)) => Err(RunError::Cleanup { path, source }),
            (Err(err), Ok(())) => {
                tracing::info!(outcome = err.outcome().name(), "run failed: {err}");
                Err(err)
            }
            (Err(err), Err(cleanup)) => {
                tracing::error!(sandbox = %path.display(), "run failed ({err}) and its sandbox could not be removed: {cleanup}");
                Err(err)
            }
        }
    }

    async fn run_in(
        &self,
        sandbox: &Sandbox,
        component: &Component,
        input: StagedInput,
        limits: &Limits,
        destination: &Destination,
        progress: Option<Arc<Progress>>,
    ) -> Result<RunOutcome, RunError> {
        let mut timings = Timings::default();
        let step = Instant::now();
        let input_bytes = copy_input(sandbox, input)?;
        if let Some(progress) = &progress {
            progress.set_total(input_bytes);
        }
        timings.input_copy = step.elapsed();

        let step = Instant::now();
        let stderr = CappedStderr::new(limits.stderr_limit.bytes());
        let mut store = self.new_store(sandbox, limits, &stderr, progress)?;
        tracing::debug!("guest started");
        let mut instantiated = None;
        let call = async {
            let pipeline: Pipeline = component.pre.instantiate_async(&mut store).await?;
            instantiated = Some(step.elapsed());
            let guest_input = format!("{GUEST_INPUT_DIR}/{GUEST_INPUT_FILE}");
            pipeline.call_process(&mut store, &guest_input, GUEST_OUTPUT_DIR).await
        };
        let result = tokio::time::timeout(limits.timeout, call).await;
        timings.guest = step.elapsed();
        timings.instantiate = instantiated.unwrap_or(timings.guest);
        let fuel_used = limits.fuel.and_then(|fuel| Some(fuel - store.get_fuel().ok()?));
        let peak_memory = store.data().limiter.peak() as u64;
        let refused_memory = store.data().limiter.refused();
        let refused = store.data().ledger.refused();
        let bytes_written = store.data().ledger.usage().bytes;
        // Closing the guest's handles before its files are read.
        drop(store);
        let (stderr_text, stderr_dropped) = stderr.contents();
        if stderr_dropped > 0 {
            tracing::debug!(stderr_dropped, "guest stderr beyond the limit was dropped");
        }
        tracing::debug!(elapsed = ?timings.guest, "guest finished");

        let guest_message = match &result {
            Ok(Ok(Err(
                PipelineError::Io(message) | PipelineError::Overflow(message) | PipelineError::InvalidInput(message),
            ))) => Some(text::bounded(message)),
            _ => None,
        };
        // The first limit that refused the guest; the descriptor cap is not
        // a limit of the profile (a guest past it fails as it fails).
        let first_refusal = refused.into_iter().find(|bound| *bound != Refused::Handles);
        let limit_error = |limits: &Limits| match first_refusal {
            Some(Refused::Bytes) => {
                Some(RunError::DiskQuota { limit: limits.disk_quota, guest: guest_message.clone() })
            }
            Some(Refused::Files) => Some(RunError::FileLimit { limit: limits.max_files, guest: guest_message.clone() }),
            Some(Refused::Folders) => {
                Some(RunError::FolderLimit { limit: limits.max_folders, guest: guest_message.clone() })
            }
            Some(Refused::Handles) | None => refused_memory
                .map(|requested| RunError::MemoryLimit { limit: limits.memory, requested: requested as u64 }),
        };
        let report = match result {
            Err(_elapsed) => return Err(RunError::Timeout { limit: limits.timeout }),
            // A guest that failed after a limit refused it failed because of the limit.
            Ok(Err(_) | Ok(Err(_))) if let Some(err) = limit_error(limits) => return Err(err),
            Ok(Err(err)) => return Err(classify_trap(&err, limits, stderr_text)),
            Ok(Ok(Err(pipeline_error))) => {
                return Err(match pipeline_error {
                    PipelineError::InvalidInput(message) => RunError::InvalidInput(text::bound(message)),
                    PipelineError::Io(message) => RunError::PipelineFailed(format!(
                        "{}; check the input and the limits, then run again",
                        text::bound(message)
                    )),
                    PipelineError::Overflow(message) => RunError::PipelineFailed(format!(
                        "{}; split the input into smaller exports",
                        text::bound(message)
                    )),
                });
            }
            Ok(Ok(Ok(report))) => Report::from(report),
        };
        report.check_consistency().map_err(RunError::ContractViolation)?;

        let step = Instant::now();
        let out = sandbox
            .output_dir()
            .map_err(|err| RunError::Host(format!("cannot open the sandbox's output folder: {err}")))?;
        let files = outputs::collect(out, &report, limits.effective_max_output())?;
        timings.collect = step.elapsed();
        tracing::info!(outputs = ?files.iter().map(|c| (&c.file.name, c.file.bytes)).collect::<Vec<_>>(), "outputs collected");

        let step = Instant::now();
        let (delivered, files) = outputs::deliver(files, out, destination)?;
        timings.deliver = step.elapsed();
        tracing::info!(destination = ?destination, elapsed = ?timings.deliver, "outputs delivered");

        Ok(RunOutcome {
            tenant: None,
            spooled: false,
            report,
            outputs: files,
            delivered,
            timings,
            peak_memory,
            fuel_used,
            bytes_written,
            stderr: stderr_text,
        })
    }

    fn new_store(
        &self,
        sandbox: &Sandbox,
        limits: &Limits,
        stderr: &CappedStderr,
        progress: Option<Arc<Progress>>,
    ) -> Result<Store<GuestState>, RunError> {
        let sandbox_error = |err: io::Error| RunError::Sandbox(err);
        let ledger = Ledger::new(Bounds {
            bytes: limits.disk_quota.bytes(),
            files: limits.max_files,
            folders: limits.max_folders,
            handles: MAX_OPEN_HANDLES,
        });
        // The output folder is the host's: only what the guest makes it grow by is charged.
        let out_root = stat_handle(sandbox.output_dir().map_err(sandbox_error)?).map_err(sandbox_error)?;
        ledger.observe(Observed { kind: Kind::Root, ..out_root });
        let preopens = vec![
            Preopen::new(sandbox.input_dir().and_then(Dir::try_clone).map_err(sandbox_error)?, GUEST_INPUT_DIR, false),
            Preopen::new(sandbox.output_dir().and_then(Dir::try_clone).map_err(sandbox_error)?, GUEST_OUTPUT_DIR, true),
        ];
        // No env, no args, no stdin, stdout discarded, no network.
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_blocking_current_thread(BLOCK_CURRENT_THREAD)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_TABLE_ENTRIES);
        let state = GuestState {
            wasi,
            table,
            limiter: MemoryLimiter::new(limits.memory.bytes()),
            preopens,
            ledger,
            held: Held::default(),
            progress,
        };
        let mut store = Store::new(&self.inner.engine.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        if self.inner.config.fuel_metering {
            let fuel = limits.fuel.unwrap_or(u64::MAX);
            store.set_fuel(fuel).map_err(|err| RunError::Host(format!("cannot set fuel: {err:#}")))?;
        }
        Ok(store)
    }
}

async fn acquire(slots: &Arc<Semaphore>, admission: Admission) -> Option<OwnedSemaphorePermit> {
    match admission {
        Admission::Wait => Arc::clone(slots).acquire_owned().await.ok(),
        Admission::FailFast => Arc::clone(slots).try_acquire_owned().ok(),
    }
}

fn classify_trap(err: &wasmtime::Error, limits: &Limits, stderr: String) -> RunError {
    if let (Some(Trap::OutOfFuel), Some(fuel)) = (err.downcast_ref::<Trap>(), limits.fuel) {
        return RunError::FuelExhausted { fuel };
    }
    let message = match err.downcast_ref::<I32Exit>() {
        Some(exit) => format!("it called exit({}) instead of returning a result", exit.0),
        None => {
            // Guest text too: a trap's message can carry names from the guest's binary.
            let message = err.root_cause().to_string();
            text::bounded(message.lines().next().unwrap_or("unknown trap"))
        }
    };
    RunError::Trap { message, stderr }
}

/// The default output folder: `<input stem>.out` beside the input.
#[must_use]
pub fn default_output_folder(input: &Path) -> PathBuf {
    let stem = input.file_stem().map_or_else(|| "output".into(), |s| s.to_string_lossy().into_owned());
    input.with_file_name(format!("{stem}.out"))
}
