//! The runner: what is one per process (the engine, the sandbox roots, the
//! bounds, the tenants, the housekeeping thread), shared by every
//! invocation. What one invocation does is in `invoke.rs`.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;

use crate::cache::CodeCache;
use crate::deliver::{FLUSHERS, HASHERS};
use crate::engine::{EngineSettings, GuestEngine};
use crate::error::RunError;
use crate::housekeeper::Housekeeper;
use crate::limits::Limits;
use crate::sandbox::{SandboxRoot, Sweep};
use crate::store::MAX_OPEN_HANDLES;
use crate::tenants::{MAX_IDLE_TENANTS, Tenant, TenantFolders, Tenants};

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
    ///
    /// Lowered, with a warning, to what the process's open-file limit
    /// allows: each invocation may make the host hold
    /// [`DESCRIPTORS_PER_INVOCATION`] descriptors, so that no guest can make
    /// another tenant's run fail with EMFILE (see [`Runner::new`]);
    /// [`Runner::max_concurrent`] is the bound in force.
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

/// Descriptors the host opens for one invocation beside the guest's own, as
/// counted in the code: summed over the stages, though they do not all
/// overlap, so this is a bound rather than a tally.
///
/// - the sandbox folder, its `input/` and `out/`: 3 (`sandbox.rs`);
/// - the tenant's two root folders, while one of its invocations runs: 2;
/// - the input: the named file and the copy made of it: 2 (`input.rs`);
/// - the guest's two preopens, duplicated from the sandbox's handles: 2;
/// - collection: the listing of `out/`: 1 (`outputs.rs`);
/// - delivery: the destination's parent and the staging folder (or the
///   archive): 2; `FLUSHERS` + `HASHERS` (deliver.rs) threads with one output open
///   each; an output copied across filesystems, source and copy: 2.
pub const HOST_DESCRIPTORS_PER_INVOCATION: u64 = 3 + 2 + 2 + 2 + 1 + 2 + (FLUSHERS + HASHERS) as u64 + 2;

/// The most descriptors one invocation makes the host process hold: the
/// guest's cap plus the host's own.
pub const DESCRIPTORS_PER_INVOCATION: u64 = MAX_OPEN_HANDLES + HOST_DESCRIPTORS_PER_INVOCATION;

/// Descriptors kept for the process itself, whatever runs: stdio, the
/// sandbox roots and their locks, the compiled-code cache and the entries of
/// it that loaded components map, the memory images of loaded components,
/// log files, an embedder's own few.
pub const PROCESS_RESERVE: u64 = 64;

/// A sandbox's own handles (its folder, `input/`, `out/`), held by one made
/// ahead of time or waiting for its removal to finish.
const SANDBOX_DESCRIPTORS: u64 = 3;
/// Each kept tenant holds its two root folders.
const TENANT_DESCRIPTORS: u64 = 2;

/// Descriptors the process may hold whatever the invocations do: the
/// reserve, the idle tenants kept, the sandboxes waiting for removal (at
/// most [`crate::housekeeper`]'s backlog) and those made ahead of time for
/// the two roots of the runner.
fn fixed_descriptors(ready_sandboxes: usize) -> u64 {
    PROCESS_RESERVE
        + MAX_IDLE_TENANTS as u64 * TENANT_DESCRIPTORS
        + crate::housekeeper::MAX_QUEUED as u64 * SANDBOX_DESCRIPTORS
        + 2 * ready_sandboxes as u64 * SANDBOX_DESCRIPTORS
}

/// How many invocations may run at once under an open-file limit of
/// `open_files` (`None`: no limit): `wanted`, or fewer when they would not
/// all fit; an error when not even one does.
fn concurrency_within(open_files: Option<u64>, wanted: usize, ready_sandboxes: usize) -> Result<usize, RunError> {
    let wanted = wanted.max(1);
    let Some(limit) = open_files else { return Ok(wanted) };
    let fixed = fixed_descriptors(ready_sandboxes);
    let fits = limit.saturating_sub(fixed) / DESCRIPTORS_PER_INVOCATION;
    if fits == 0 {
        return Err(RunError::OpenFileLimit { limit, needed: fixed + DESCRIPTORS_PER_INVOCATION });
    }
    Ok(wanted.min(usize::try_from(fits).unwrap_or(usize::MAX)))
}

/// Raises the process's soft open-file limit to its hard one (the soft one
/// is often 1024, far below what the hard one allows) and returns it;
/// `None` when there is no limit.
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (current.current, current.maximum)
        && soft < hard
    {
        match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
            Ok(()) => return Some(hard),
            Err(err) => tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {err}"),
        }
    }
    current.current
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
    /// The bound in force (see [`Runner::max_concurrent`]).
    max_concurrent: usize,
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
    /// Every tenant's runs share the process's descriptors, so the runner
    /// bounds what they all may hold: it raises the soft open-file limit to
    /// the hard one, and runs at most as many invocations at once as fit in
    /// it at [`DESCRIPTORS_PER_INVOCATION`] each, beside what the process
    /// holds anyway (a reserve of [`PROCESS_RESERVE`], the idle tenants, the
    /// sandboxes waiting for removal or made ahead of time). Fewer than
    /// [`RunnerConfig::max_concurrent`] fit: the bound is lowered, with a
    /// warning. Not even one fits: the runner is refused.
    ///
    /// # Errors
    ///
    /// [`RunError::Sandbox`] when the disk root cannot be opened or is not
    /// private, [`RunError::OpenFileLimit`] when the open-file limit is too
    /// low for one invocation, [`RunError::Host`] when the engine cannot be
    /// built.
    pub fn new(config: &RunnerConfig) -> Result<Self, RunError> {
        let open_files = raise_open_file_limit();
        let max_concurrent = concurrency_within(open_files, config.max_concurrent, config.ready_sandboxes)?;
        if max_concurrent < config.max_concurrent {
            tracing::warn!(
                open_file_limit = open_files,
                "{} invocations at once would need more descriptors than the process may open; running at most \
                 {max_concurrent} at once (raise `ulimit -n` for more)",
                config.max_concurrent
            );
        }

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
                max_concurrent,
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
    /// removes the sandboxes made ahead of time and the empty folders of
    /// tenants no invocation holds, and reports the first removal error.
    /// Later invocations, and those still waiting for a slot, are refused
    /// with [`RunError::ShutDown`]; invocations already running finish (the
    /// folder of a tenant that had one then is left; a later shutdown, in
    /// this process or the next, removes it once empty).
    ///
    /// # Errors
    ///
    /// [`RunError::Cleanup`] for the first sandbox that could not be removed.
    pub fn shutdown(&self) -> Result<(), RunError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let mut failures = self.inner.housekeeper.finish();
        // Their handles go before their folders do; a held tenant's stay.
        let held = self.inner.tenants.close();
        for root in std::iter::once(&self.inner.disk_root).chain(&self.inner.memory_root) {
            if let Err(err) = root.remove_empty_tenants_except(&held) {
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

    /// The invocations that may run at once: [`RunnerConfig::max_concurrent`],
    /// or fewer when the open-file limit does not allow as many.
    #[must_use]
    pub fn max_concurrent(&self) -> usize {
        self.inner.max_concurrent
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

    /// The bound of tenant `id` (made if it is not kept); no I/O.
    pub(crate) fn tenant(&self, id: &str) -> Result<Arc<Tenant>, RunError> {
        self.inner.tenants.get(id)
    }

    /// The folders of tenant `id`, kept or opened now: blocking, and only
    /// for an invocation that holds its global slot.
    pub(crate) fn tenant_folders(&self, id: &str) -> Result<Arc<TenantFolders>, RunError> {
        self.inner.tenants.folders(id, &self.inner.disk_root, self.inner.memory_root.as_ref())
    }

    /// The limit profile of tenant `id`, if one was set.
    pub(crate) fn tenant_profile(&self, id: &str) -> Option<Limits> {
        self.inner.tenants.profile(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Outcome;

    #[test]
    fn an_invocation_is_the_guests_cap_and_the_hosts_own() {
        assert_eq!(HOST_DESCRIPTORS_PER_INVOCATION, 20);
        assert_eq!(DESCRIPTORS_PER_INVOCATION, 276);
        // Reserve, 64 idle tenants, 64 sandboxes waiting for removal.
        assert_eq!(fixed_descriptors(0), 64 + 128 + 192);
        assert_eq!(fixed_descriptors(4), 64 + 128 + 192 + 24);
    }

    #[test]
    fn concurrency_is_lowered_to_what_the_open_file_limit_holds() {
        assert_eq!(concurrency_within(None, 8, 0).expect("no limit"), 8);
        assert_eq!(concurrency_within(Some(1 << 20), 8, 0).expect("plenty"), 8);
        // (1024 - 384) / 276: two at once.
        assert_eq!(concurrency_within(Some(1024), 8, 0).expect("two fit"), 2);
        assert_eq!(concurrency_within(Some(384 + 276), 8, 0).expect("one fits"), 1);
        assert_eq!(concurrency_within(Some(1 << 20), 0, 0).expect("at least one"), 1);
        let err = concurrency_within(Some(384 + 275), 8, 0).expect_err("none fits");
        assert_eq!(err.outcome(), Outcome::HostError);
        assert_eq!(err.limit_hit(), Some(crate::LimitHit::OpenFileLimit { limit: 659, needed: 660 }));
        assert!(err.to_string().contains("`ulimit -n`, RLIMIT_NOFILE) to at least 660"), "{err}");
    }
}
