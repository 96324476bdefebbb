//! The runner: what is one per process (the engine, the sandbox roots, the
//! bounds, the tenants, the housekeeping thread), shared by every
//! invocation. What one invocation does is in `invoke.rs`.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;

use crate::cache::CodeCache;
use crate::engine::{EngineSettings, GuestEngine};
use crate::error::RunError;
use crate::housekeeper::Housekeeper;
use crate::limits::Limits;
use crate::sandbox::{SandboxRoot, Sweep};
use crate::tenants::{Tenant, Tenants};

/// How a [`Runner`] is set up; everything per invocation is in [`crate::Invocation`].
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
    /// fail fast, see [`crate::Invocation::fail_fast`]). Default: the number of CPUs.
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

    pub(crate) fn is_shut_down(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn config(&self) -> &RunnerConfig {
        &self.inner.config
    }

    pub(crate) fn engine(&self) -> &GuestEngine {
        &self.inner.engine
    }

    pub(crate) fn housekeeper(&self) -> &Housekeeper {
        &self.inner.housekeeper
    }

    pub(crate) fn slots(&self) -> &Arc<Semaphore> {
        &self.inner.slots
    }

    /// The state of tenant `id` (made if it is not kept).
    pub(crate) fn tenant(&self, id: &str) -> Result<Arc<Tenant>, RunError> {
        self.inner.tenants.get(id, &self.inner.disk_root, self.inner.memory_root.as_ref())
    }

    /// The limit profile of tenant `id`, if one was set.
    pub(crate) fn tenant_profile(&self, id: &str) -> Option<Limits> {
        self.inner.tenants.profile(id)
    }
}
