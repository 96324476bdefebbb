//! The runner: one engine and linker per process, one sandbox and one store
//! per invocation.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cap_std::fs::{OpenOptions, OpenOptionsExt as _};
use serde::Serialize;
use wasmtime::component::{Component as WasmComponent, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::bindings::orders::pipeline::types::PipelineError;
use crate::bindings::{Pipeline, PipelinePre};
use crate::error::RunError;
use crate::guest::{CappedStderr, GuestState, MemoryLimiter, Preopen, SandboxPreopens};
use crate::limits::Limits;
use crate::outputs::{self, Delivered, Destination, OutputFile};
use crate::quota::{Quota, QuotaFilesystem, QuotaHit};
use crate::report::Report;
use crate::sandbox::{INPUT_DIR, OUTPUT_DIR, Sandbox, SandboxRoot};

/// The reference pipeline, built from `guest/` when the host is built.
pub const BUNDLED_PIPELINE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/orders_pipeline.wasm"));

/// Where the guest finds its input and writes its outputs.
pub const GUEST_INPUT_DIR: &str = "/input";
pub const GUEST_INPUT_FILE: &str = "input.csv";
pub const GUEST_OUTPUT_DIR: &str = "/out";

/// How often the epoch advances: the granularity at which a spinning guest
/// yields, so that the wall-clock timeout can fire.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How a [`Runner`] is set up; everything per-invocation is in [`Limits`].
#[derive(Debug, Clone, Default)]
pub struct RunnerConfig {
    /// The folder that holds the sandboxes; default [`SandboxRoot::default_path`].
    pub sandbox_root: Option<PathBuf>,
    /// Compile guests with fuel metering, so [`Limits::fuel`] can be used.
    /// It costs some speed, so it is off unless asked for.
    pub fuel_metering: bool,
}

/// Runs pipeline components, each invocation in a fresh sandbox. Build it
/// once; it is cheap to clone and share across threads and tasks.
#[derive(Clone, Debug)]
pub struct Runner {
    inner: Arc<RunnerInner>,
}

struct RunnerInner {
    engine: Engine,
    linker: Linker<GuestState>,
    root: SandboxRoot,
    fuel_metering: bool,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for RunnerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("root", &self.root).field("fuel_metering", &self.fuel_metering).finish()
    }
}

impl Drop for RunnerInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
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

/// The input of one invocation.
#[derive(Debug, Clone)]
pub enum Input {
    /// A file, copied into the sandbox.
    Path(PathBuf),
    /// Bytes already in memory.
    Bytes(Vec<u8>),
}

/// How long each step of an invocation took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub sandbox_create: Duration,
    pub input_copy: Duration,
    pub guest: Duration,
    pub collect: Duration,
    pub deliver: Duration,
    pub sandbox_remove: Duration,
    pub total: Duration,
}

/// A successful invocation.
#[derive(Debug)]
pub struct RunOutcome {
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
    /// Builds the engine and linker and opens (creating) the sandbox root.
    ///
    /// # Errors
    ///
    /// [`RunError::Sandbox`] when the root cannot be opened or is not
    /// private, [`RunError::Host`] when the engine cannot be built.
    pub fn new(config: &RunnerConfig) -> Result<Self, RunError> {
        let root_path = config.sandbox_root.clone().unwrap_or_else(SandboxRoot::default_path);
        let root = SandboxRoot::open(&root_path).map_err(|err| {
            RunError::Sandbox(io::Error::new(err.kind(), format!("sandbox root {}: {err}", root_path.display())))
        })?;

        let mut wasm_config = Config::new();
        wasm_config.epoch_interruption(true).consume_fuel(config.fuel_metering);
        let engine =
            Engine::new(&wasm_config).map_err(|err| RunError::Host(format!("cannot build the engine: {err:#}")))?;

        let mut linker = Linker::new(&engine);
        let link = |linker: &mut Linker<GuestState>| -> wasmtime::Result<()> {
            wasmtime_wasi::p2::add_to_linker_async(linker)?;
            // Preopens come from the sandbox's handles, not from paths.
            linker.allow_shadowing(true);
            wasmtime_wasi::p2::bindings::filesystem::preopens::add_to_linker::<GuestState, SandboxPreopens>(
                linker,
                GuestState::preopens_view,
            )?;
            // Every filesystem call goes through the quota.
            wasmtime_wasi::p2::bindings::filesystem::types::add_to_linker::<GuestState, QuotaFilesystem>(
                linker,
                GuestState::quota_filesystem_view,
            )?;
            linker.allow_shadowing(false);
            Ok(())
        };
        link(&mut linker).map_err(|err| RunError::Host(format!("cannot link WASI: {err:#}")))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone())?;

        Ok(Self {
            inner: Arc::new(RunnerInner { engine, linker, root, fuel_metering: config.fuel_metering, ticker_stop }),
        })
    }

    /// The sandbox root this runner creates sandboxes in.
    #[must_use]
    pub fn sandbox_root(&self) -> &SandboxRoot {
        &self.inner.root
    }

    /// Compiles a component and checks it implements `orders:pipeline`.
    ///
    /// # Errors
    ///
    /// [`RunError::ComponentInvalid`] when the bytes are not a component, it
    /// imports something the host does not provide, or lacks `process`.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Component, RunError> {
        let started = Instant::now();
        let invalid = |reason: String| RunError::ComponentInvalid { name: name.to_owned(), reason };
        let component = WasmComponent::new(&self.inner.engine, bytes).map_err(|err| invalid(format!("{err:#}")))?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|err| invalid(format!("it needs something the sandbox does not offer: {err:#}")))?;
        let pre = PipelinePre::new(instance_pre).map_err(|err| invalid(format!("{err:#}")))?;
        tracing::debug!(component = name, elapsed = ?started.elapsed(), "component compiled");
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
    /// delivers the outputs to `destination`. The sandbox is removed on every
    /// path; if this future is dropped (Ctrl-C), dropping it removes it too.
    ///
    /// # Errors
    ///
    /// A [`RunError`] naming the failure class; nothing is delivered then.
    pub async fn run(
        &self,
        component: &Component,
        input: &Input,
        limits: &Limits,
        destination: &Destination,
    ) -> Result<RunOutcome, RunError> {
        let started = Instant::now();
        if limits.fuel.is_some() && !self.inner.fuel_metering {
            return Err(RunError::Host("a fuel limit needs a runner built with fuel metering".into()));
        }
        let sandbox = self.inner.root.create().map_err(RunError::Sandbox)?;
        let created = started.elapsed();
        tracing::info!(sandbox = %sandbox.path().display(), component = component.name(), "run started");

        let result = self.run_in(&sandbox, component, input, limits, destination).await;

        let removing = Instant::now();
        let path = sandbox.path().to_owned();
        let removed = sandbox.close();
        let removal = removing.elapsed();
        match (result, removed) {
            (Ok(mut outcome), Ok(())) => {
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
        input: &Input,
        limits: &Limits,
        destination: &Destination,
    ) -> Result<RunOutcome, RunError> {
        let mut timings = Timings::default();
        let step = Instant::now();
        copy_input(sandbox, input)?;
        timings.input_copy = step.elapsed();

        let step = Instant::now();
        let stderr = CappedStderr::new(limits.stderr_limit.bytes());
        let mut store = self.new_store(sandbox, limits, &stderr)?;
        tracing::debug!("guest started");
        let call = async {
            let pipeline: Pipeline = component.pre.instantiate_async(&mut store).await?;
            let guest_input = format!("{GUEST_INPUT_DIR}/{GUEST_INPUT_FILE}");
            pipeline.call_process(&mut store, &guest_input, GUEST_OUTPUT_DIR).await
        };
        let result = tokio::time::timeout(limits.timeout, call).await;
        timings.guest = step.elapsed();
        let fuel_used = limits.fuel.and_then(|fuel| Some(fuel - store.get_fuel().ok()?));
        let peak_memory = store.data().limiter.peak() as u64;
        let refused_memory = store.data().limiter.refused();
        let quota_hit = store.data().quota.hit();
        let bytes_written = store.data().quota.bytes_used();
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
            ))) => Some(message.clone()),
            _ => None,
        };
        let limit_error = |limits: &Limits| match quota_hit {
            Some(QuotaHit::Bytes) => {
                Some(RunError::DiskQuota { limit: limits.disk_quota, guest: guest_message.clone() })
            }
            Some(QuotaHit::Files) => {
                Some(RunError::FileLimit { limit: limits.max_files, guest: guest_message.clone() })
            }
            None => refused_memory
                .map(|requested| RunError::MemoryLimit { limit: limits.memory, requested: requested as u64 }),
        };
        let report = match result {
            Err(_elapsed) => return Err(RunError::Timeout { limit: limits.timeout }),
            // A guest that failed after a limit refused it failed because of the limit.
            Ok(Err(_) | Ok(Err(_))) if let Some(err) = limit_error(limits) => return Err(err),
            Ok(Err(err)) => return Err(classify_trap(&err, limits, stderr_text)),
            Ok(Ok(Err(pipeline_error))) => {
                return Err(match pipeline_error {
                    PipelineError::InvalidInput(message) => RunError::InvalidInput(message),
                    PipelineError::Io(message) => {
                        RunError::PipelineFailed(format!("{message}; check the input and the limits, then run again"))
                    }
                    PipelineError::Overflow(message) => {
                        RunError::PipelineFailed(format!("{message}; split the input into smaller exports"))
                    }
                });
            }
            Ok(Ok(Ok(report))) => Report::from(report),
        };
        report.check_consistency().map_err(RunError::ContractViolation)?;

        let step = Instant::now();
        let out = sandbox
            .open_dir(OUTPUT_DIR)
            .map_err(|err| RunError::Host(format!("cannot open the sandbox's output folder: {err}")))?;
        let files = outputs::collect(&out, &report, limits.effective_max_output())?;
        timings.collect = step.elapsed();
        tracing::info!(outputs = ?files, "outputs collected");

        let step = Instant::now();
        let delivered = outputs::deliver(&out, &files, destination)?;
        timings.deliver = step.elapsed();
        tracing::info!(destination = ?destination, elapsed = ?timings.deliver, "outputs delivered");

        Ok(RunOutcome {
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
    ) -> Result<Store<GuestState>, RunError> {
        let sandbox_error = |err: io::Error| RunError::Sandbox(err);
        let preopens = vec![
            Preopen {
                dir: sandbox.open_dir(INPUT_DIR).map_err(sandbox_error)?,
                guest_path: GUEST_INPUT_DIR.into(),
                writable: false,
            },
            Preopen {
                dir: sandbox.open_dir(OUTPUT_DIR).map_err(sandbox_error)?,
                guest_path: GUEST_OUTPUT_DIR.into(),
                writable: true,
            },
        ];
        // No env, no args, no stdin, stdout discarded, no network.
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_blocking_current_thread(true)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = GuestState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory.bytes()),
            preopens,
            quota: Quota::new(limits.disk_quota.bytes(), limits.max_files),
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        if self.inner.fuel_metering {
            let fuel = limits.fuel.unwrap_or(u64::MAX);
            store.set_fuel(fuel).map_err(|err| RunError::Host(format!("cannot set fuel: {err:#}")))?;
        }
        Ok(store)
    }
}

fn copy_input(sandbox: &Sandbox, input: &Input) -> Result<(), RunError> {
    let target_error =
        |err: io::Error| RunError::Sandbox(io::Error::new(err.kind(), format!("cannot copy the input in: {err}")));
    let input_dir = sandbox.open_dir(INPUT_DIR).map_err(target_error)?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    match input {
        Input::Path(path) => {
            let unreadable = |source: io::Error| RunError::InputUnreadable { path: path.clone(), source };
            // Ambient authority: the user named this file.
            let mut source = std::fs::File::open(path).map_err(unreadable)?;
            if !source.metadata().map_err(unreadable)?.is_file() {
                return Err(unreadable(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
            }
            let mut target = input_dir.open_with(GUEST_INPUT_FILE, &options).map_err(target_error)?;
            io::copy(&mut source, &mut target).map_err(|err| {
                // A read error is the input's fault; a write error the sandbox's.
                if err.kind() == io::ErrorKind::StorageFull { target_error(err) } else { unreadable(err) }
            })?;
        }
        Input::Bytes(bytes) => {
            let mut target = input_dir.open_with(GUEST_INPUT_FILE, &options).map_err(target_error)?;
            io::Write::write_all(&mut target, bytes).map_err(target_error)?;
        }
    }
    Ok(())
}

fn classify_trap(err: &wasmtime::Error, limits: &Limits, stderr: String) -> RunError {
    if let (Some(Trap::OutOfFuel), Some(fuel)) = (err.downcast_ref::<Trap>(), limits.fuel) {
        return RunError::FuelExhausted { fuel };
    }
    let message = match err.downcast_ref::<I32Exit>() {
        Some(exit) => format!("it called exit({}) instead of returning a result", exit.0),
        None => {
            let text = err.root_cause().to_string();
            text.lines().next().unwrap_or("unknown trap").to_owned()
        }
    };
    RunError::Trap { message, stderr }
}

fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> Result<(), RunError> {
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map(drop)
        .map_err(|err| RunError::Host(format!("cannot start the epoch thread: {err}")))
}

/// The default output folder: `<input stem>.out` beside the input.
#[must_use]
pub fn default_output_folder(input: &Path) -> PathBuf {
    let stem = input.file_stem().map_or_else(|| "output".into(), |s| s.to_string_lossy().into_owned());
    input.with_file_name(format!("{stem}.out"))
}
