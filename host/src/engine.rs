//! The part of a runner that is one per process: the wasmtime engine (epoch
//! interruption, optional fuel, the pooling allocator), the thread that
//! advances its epoch, the linker with the sandbox's WASI, and the code cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component as WasmComponent, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::cache::{CacheStatus, CodeCache, Source};
use crate::error::RunError;
use crate::program::{Program, ProgramError, ProgramKind, adaptation_digest};
use crate::quota::QuotaFilesystem;
use crate::store::{GuestState, SandboxPreopens};

/// How often the epoch advances: the granularity at which a spinning guest
/// yields, so that the wall-clock timeout can fire.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How the engine is built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineSettings {
    pub fuel_metering: bool,
    pub pooling: bool,
    /// Instances that may run at once (slots of the pooling allocator).
    pub max_concurrent: usize,
}

/// The engine, its linker and its cache.
pub(crate) struct GuestEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<GuestState>,
    cache: Option<CodeCache>,
    ticker: EpochTicker,
}

impl GuestEngine {
    /// Builds the engine, links WASI as the sandbox serves it, opens the
    /// cache (a cache that cannot be used only costs compile time) and starts
    /// the epoch thread.
    pub(crate) fn new(settings: EngineSettings, cache: Option<CodeCache>) -> Result<Self, RunError> {
        let engine = build_engine(settings)?;
        let mut linker = Linker::new(&engine);
        link_wasi(&mut linker).map_err(|err| RunError::Host(format!("cannot link WASI: {err:#}")))?;
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(Self { engine, linker, cache, ticker })
    }

    /// Compiles the component `bytes` (or loads their compiled code from the
    /// cache).
    ///
    /// # Errors
    ///
    /// The compiler's message, when `bytes` are not a valid component.
    pub(crate) fn compile(&self, name: &str, bytes: &[u8]) -> Result<WasmComponent, wasmtime::Error> {
        let compile = || WasmComponent::new(&self.engine, bytes);
        self.cached(name, Source::Component(bytes), compile).map(|(component, _)| component)
    }

    /// Compiles a program: a component as [`GuestEngine::compile`] does, a
    /// preview1 module by turning it into a component first. The cache keys a
    /// module's code by the module and the adaptation, so a hit neither
    /// adapts nor compiles; the status is `None` without a cache.
    ///
    /// # Errors
    ///
    /// [`ProgramCompileError::Adapt`] when the module cannot be turned into a
    /// component, [`ProgramCompileError::Compile`] when wasmtime refuses the
    /// component; both only when there is no cached code for it.
    pub(crate) fn compile_program(
        &self,
        name: &str,
        program: &Program,
    ) -> Result<(WasmComponent, Option<CacheStatus>), ProgramCompileError> {
        let source = match program.kind() {
            ProgramKind::Component => Source::Component(program.bytes()),
            ProgramKind::Preview1Module => {
                Source::Preview1Module { module: program.bytes(), adaptation: adaptation_digest() }
            }
        };
        let compile = || {
            let component = program.component_bytes()?;
            WasmComponent::new(&self.engine, &component).map_err(ProgramCompileError::Compile)
        };
        self.cached(name, source, compile)
    }

    /// `compile`'s result for `source`, through the cache when there is one.
    fn cached<E>(
        &self,
        name: &str,
        source: Source<'_>,
        compile: impl FnOnce() -> Result<WasmComponent, E>,
    ) -> Result<(WasmComponent, Option<CacheStatus>), E> {
        let started = Instant::now();
        let (component, status) = match &self.cache {
            Some(cache) => {
                let (component, status) = cache.load_or_compile(&self.engine, source, compile)?;
                (component, Some(status))
            }
            None => (compile()?, None),
        };
        tracing::debug!(component = name, ?status, elapsed = ?started.elapsed(), "component compiled or loaded");
        Ok((component, status))
    }

    /// Stops the epoch thread: no guest of this engine is interrupted any more.
    pub(crate) fn stop_ticking(&self) {
        self.ticker.stop();
    }
}

/// Why a program could not be compiled ([`GuestEngine::compile_program`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProgramCompileError {
    /// The preview1 module could not be turned into a component.
    #[error(transparent)]
    Adapt(#[from] ProgramError),
    /// wasmtime refused the component, e.g. a function body that does not
    /// validate: its message with its causes, on one line.
    #[error("{0:#}")]
    Compile(wasmtime::Error),
}

/// The thread that advances the engine's epoch every [`EPOCH_TICK`], until
/// stopped or dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<Self, RunError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|err| RunError::Host(format!("cannot start the epoch thread: {err}")))?;
        Ok(Self { stop })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn build_engine(settings: EngineSettings) -> Result<Engine, RunError> {
    let mut wasm_config = Config::new();
    wasm_config.epoch_interruption(true).consume_fuel(settings.fuel_metering);
    // For profiling guests: `perf` then names their functions (README, Benchmarks).
    if std::env::var_os("ORDERS_HOST_PERFMAP").is_some() {
        wasm_config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if settings.pooling {
        // Slots for every instance that may run at once; each reserves
        // address space (not memory) for a 4 GiB linear memory.
        let slots = u32::try_from(settings.max_concurrent.max(1)).unwrap_or(u32::MAX).saturating_add(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(16))
            .total_memories(slots.saturating_mul(4))
            .total_tables(slots.saturating_mul(16))
            .total_stacks(slots)
            .max_memory_size(4 << 30)
            // A reused slot's first pages are zeroed in place rather than
            // returned to the kernel: a small guest then starts without
            // page faults.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            // Where the kernel can say which pages a guest touched (Linux
            // 6.7+), only those are reset: a small guest's slot is cleaned
            // in a few pages instead of the whole resident part.
            .pagemap_scan(Enabled::Auto);
        let mut pooled = wasm_config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&pooled) {
            Ok(engine) => return Ok(engine),
            Err(err) => tracing::warn!("pooling allocator unavailable, allocating on demand: {err:#}"),
        }
    }
    Engine::new(&wasm_config).map_err(|err| RunError::Host(format!("cannot build the engine: {err:#}")))
}

/// WASI 0.2 as the sandbox serves it: wasmtime-wasi's, with the preopens
/// served from the sandbox's own handles (not from paths) and every
/// filesystem call through the quota.
fn link_wasi(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    wasmtime_wasi::p2::bindings::filesystem::preopens::add_to_linker::<GuestState, SandboxPreopens>(
        linker,
        GuestState::preopens_view,
    )?;
    wasmtime_wasi::p2::bindings::filesystem::types::add_to_linker::<GuestState, QuotaFilesystem>(
        linker,
        GuestState::quota_filesystem_view,
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::ADAPTATIONS;
    use std::path::{Path, PathBuf};
    use wasmtime_wasi::p2::bindings::CommandPre;

    fn new_engine(cache: Option<&Path>) -> GuestEngine {
        let settings = EngineSettings { fuel_metering: false, pooling: false, max_concurrent: 1 };
        let cache = cache.map(|path| CodeCache::open(path).expect("cache opens"));
        GuestEngine::new(settings, cache).expect("engine")
    }

    fn adaptations() -> usize {
        ADAPTATIONS.with(std::cell::Cell::get)
    }

    #[test]
    fn a_warm_load_of_a_preview1_module_neither_adapts_nor_compiles() {
        let dir = std::env::temp_dir().join(format!("engine-unit-{}", crate::fs::random_hex().expect("rng")));
        let cache: PathBuf = dir.join("cache");
        let read = |path: &str| Program::load(std::fs::read(path).expect("the probe")).expect("loads");
        let module = read(test_programs_artifacts::WASI_PROBE_MODULE);
        assert_eq!(module.kind(), ProgramKind::Preview1Module);
        let before = adaptations();

        let (_, status) = new_engine(Some(&cache)).compile_program("probe", &module).expect("compiles");
        assert_eq!((status, adaptations() - before), (Some(CacheStatus::Miss), 1));
        // A second process: its own engine and cache handle, the module
        // read again. Its compiled code is found by the module's own key.
        let module = read(test_programs_artifacts::WASI_PROBE_MODULE);
        let engine = new_engine(Some(&cache));
        let (component, status) = engine.compile_program("probe", &module).expect("loads");
        assert_eq!((status, adaptations() - before), (Some(CacheStatus::Hit), 1), "adapted once, not again");
        // The cached code is the adapted command, linked as on a miss.
        let pre = engine.linker.instantiate_pre(&component).expect("links");
        CommandPre::new(pre).expect("a wasi:cli/command");

        // The component build of the same program has an entry of its own.
        let command = read(test_programs_artifacts::WASI_PROBE_COMMAND);
        let (_, status) = engine.compile_program("probe", &command).expect("compiles");
        assert_eq!(status, Some(CacheStatus::Miss));
        assert_eq!(std::fs::read_dir(&cache).expect("list").count(), 2);

        // Without a cache every load adapts.
        let (_, status) = new_engine(None).compile_program("probe", &module).expect("compiles");
        assert_eq!((status, adaptations() - before), (None, 2));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_module_the_adapter_cannot_serve_fails_on_a_miss_as_before() {
        let dir = std::env::temp_dir().join(format!("engine-unit-{}", crate::fs::random_hex().expect("rng")));
        // A preview1 import of the wrong type: the sections pass, the adapter refuses it.
        let bytes = wat::parse_str(
            r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i64)))
                (memory (export "memory") 1) (func (export "_start")))"#,
        )
        .expect("valid wat");
        let program = Program::load(bytes).expect("the sections pass");
        let expected = program.component_bytes().expect_err("the adapter refuses it");
        let err = new_engine(Some(&dir)).compile_program("bad", &program).expect_err("refused");
        assert!(matches!(&err, ProgramCompileError::Adapt(adapt) if *adapt == expected), "{err}");
        assert_eq!(err.to_string(), expected.to_string(), "the same message");
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 0, "nothing cached");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
