//! The part of a runner that is one per process: the wasmtime engine (epoch
//! interruption, optional fuel, the pooling allocator), the thread that
//! advances its epoch, the linker with the sandbox's WASI, and the code cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component as WasmComponent, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::cache::CodeCache;
use crate::error::RunError;
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

    /// Compiles `bytes` (or loads their compiled code from the cache).
    ///
    /// # Errors
    ///
    /// The compiler's message, when `bytes` are not a valid component.
    pub(crate) fn compile(&self, name: &str, bytes: &[u8]) -> Result<WasmComponent, wasmtime::Error> {
        let started = Instant::now();
        let component = match &self.cache {
            Some(cache) => {
                let (component, status) = cache.load_or_compile(&self.engine, bytes)?;
                tracing::debug!(component = name, ?status, "code cache");
                component
            }
            None => WasmComponent::new(&self.engine, bytes)?,
        };
        tracing::debug!(component = name, elapsed = ?started.elapsed(), "component compiled");
        Ok(component)
    }

    /// Stops the epoch thread: no guest of this engine is interrupted any more.
    pub(crate) fn stop_ticking(&self) {
        self.ticker.stop();
    }
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
