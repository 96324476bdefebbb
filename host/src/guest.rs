//! The guest stage of an invocation: a fresh store (its WASI context with two
//! preopens and nothing else, its ledger and the holds on host descriptors,
//! its memory limiter, its capped stderr), the instance, and the call.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cap_std::fs::Dir as CapDir;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use crate::bindings::Pipeline;
use crate::component::Component;
use crate::error::RunError;
use crate::ledger::{Bounds, Kind, Ledger, Observed, Usage};
use crate::limits::Limits;
use crate::outcome::{GuestAccount, GuestEnd};
use crate::progress::Progress;
use crate::quota::stat_handle;
use crate::sandbox::{INPUT_FILE, Sandbox};
use crate::store::{BLOCK_CURRENT_THREAD, GuestState, Held, MAX_OPEN_HANDLES, MemoryLimiter, Preopen};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Where the guest finds its input and writes its outputs.
pub const GUEST_INPUT_DIR: &str = "/input";
/// The folder the guest writes its outputs into, as it sees it.
pub const GUEST_OUTPUT_DIR: &str = "/out";

/// Host objects one guest may have in its resource table at once:
/// descriptors, streams, pollables, listings. Each costs host memory (about
/// a hundred bytes to a few hundred), so this bounds what a guest can make
/// the host hold that way to a few MiB.
const MAX_TABLE_ENTRIES: usize = 16_384;

/// How the guest's run went; `End` is how its call ended (a pipeline's
/// result, or a command's exit).
#[derive(Debug)]
pub(crate) struct GuestRun<End> {
    pub end: End,
    pub account: GuestAccount,
    /// Store, WASI context and instance.
    pub instantiate: Duration,
    /// Instantiation plus the call.
    pub elapsed: Duration,
    pub peak_memory: u64,
    pub fuel_used: Option<u64>,
    pub bytes_written: u64,
    /// The most of each figure the ledger charged the sandbox at once.
    pub sandbox_peak: Usage,
}

/// Runs `component` in `sandbox` under `limits` until it returns, traps, or
/// `timeout` passes; the store (and with it every handle of the guest) is
/// gone when this returns, so its files can be read.
pub(crate) async fn run_pipeline(
    engine: &Engine,
    fuel_metering: bool,
    component: &Component,
    sandbox: &Sandbox,
    limits: &Limits,
    timeout: Duration,
    progress: Option<Arc<Progress>>,
) -> Result<GuestRun<GuestEnd>, RunError> {
    let started = Instant::now();
    let stderr = CappedOutput::kept(limits.stderr_limit.bytes());
    let sandbox_error = |err: io::Error| RunError::Sandbox(err);
    let preopens = vec![
        Preopen::new(sandbox.input_dir().and_then(CapDir::try_clone).map_err(sandbox_error)?, GUEST_INPUT_DIR, false),
        Preopen::new(sandbox.output_dir().and_then(CapDir::try_clone).map_err(sandbox_error)?, GUEST_OUTPUT_DIR, true),
    ];
    let mut wasi = WasiCtxBuilder::new();
    wasi.stderr(stderr.clone());
    let setup = StoreSetup { wasi, preopens, progress };
    let mut store = new_store(engine, fuel_metering, sandbox, limits, setup)?;
    tracing::debug!("guest started");
    let mut instantiated = None;
    let call = async {
        let pipeline: Pipeline = component.pre.instantiate_async(&mut store).await?;
        instantiated = Some(started.elapsed());
        let guest_input = format!("{GUEST_INPUT_DIR}/{INPUT_FILE}");
        pipeline.call_process(&mut store, &guest_input, GUEST_OUTPUT_DIR).await
    };
    let end = match tokio::time::timeout(timeout, call).await {
        Err(_elapsed) => GuestEnd::TimedOut(timeout),
        Ok(Err(err)) => GuestEnd::Trapped(err),
        Ok(Ok(Err(err))) => GuestEnd::Failed(err),
        Ok(Ok(Ok(report))) => GuestEnd::Returned(report),
    };
    Ok(finish(store, end, started, instantiated, limits, &stderr))
}

/// What the guest's store is given besides the limits: its WASI context
/// (arguments, environment, stdio), its folders, and whom to tell how far it
/// read its input.
pub(crate) struct StoreSetup {
    pub wasi: WasiCtxBuilder,
    pub preopens: Vec<Preopen>,
    pub progress: Option<Arc<Progress>>,
}

/// Reads what the store counted and drops it, closing the guest's handles
/// before its files are read.
pub(crate) fn finish<End>(
    store: Store<GuestState>,
    end: End,
    started: Instant,
    instantiated: Option<Duration>,
    limits: &Limits,
    stderr: &CappedOutput,
) -> GuestRun<End> {
    let elapsed = started.elapsed();
    let fuel_used = limits.fuel.and_then(|fuel| Some(fuel - store.get_fuel().ok()?));
    let state = store.data();
    let (peak_memory, refused_memory) = (state.limiter.peak() as u64, state.limiter.refused());
    let (refused, bytes_written, sandbox_peak) =
        (state.ledger.refused(), state.ledger.usage().bytes, state.ledger.peak());
    drop(store);
    let (stderr, stderr_dropped) = stderr.contents();
    if stderr_dropped > 0 {
        tracing::debug!(stderr_dropped, "guest stderr beyond the limit was dropped");
    }
    tracing::debug!(?elapsed, "guest finished");
    GuestRun {
        end,
        account: GuestAccount { refused, refused_memory, peak: sandbox_peak, stderr },
        instantiate: instantiated.unwrap_or(elapsed),
        elapsed,
        peak_memory,
        fuel_used,
        bytes_written,
        sandbox_peak,
    }
}

/// A store for one guest: the folders and WASI context of `setup` and
/// nothing else (no network; what `setup` does not give, such as stdin or
/// the environment, is empty), the ledger, memory limiter, epoch deadline
/// and fuel.
pub(crate) fn new_store(
    engine: &Engine,
    fuel_metering: bool,
    sandbox: &Sandbox,
    limits: &Limits,
    setup: StoreSetup,
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
    let StoreSetup { mut wasi, preopens, progress } = setup;
    let wasi = wasi
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
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
    if fuel_metering {
        let fuel = limits.fuel.unwrap_or(u64::MAX);
        store.set_fuel(fuel).map_err(|err| RunError::Host(format!("cannot set fuel: {err:#}")))?;
    }
    Ok(store)
}

/// A guest's stdout or stderr, capped: the first `limit` bytes are kept in
/// memory, or forwarded as they come to a writer of the caller's (never
/// buffered), and the rest is counted and dropped as it arrives. The guest
/// always sees its writes succeed (a failing stderr makes Rust's `eprintln!`
/// panic, which would turn a noisy guest into a crashing one), and a writer
/// that fails (a closed pipe) is dropped, not retried.
#[derive(Clone)]
pub struct CappedOutput {
    inner: Arc<Mutex<CappedBuffer>>,
}

impl std::fmt::Debug for CappedOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CappedOutput").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct CappedBuffer {
    kept: Vec<u8>,
    forward: Option<Box<dyn std::io::Write + Send>>,
    /// Bytes taken (kept or forwarded) so far.
    taken: usize,
    dropped: u64,
    limit: usize,
}

impl CappedOutput {
    /// Keeps the first `limit` bytes in memory.
    pub fn kept(limit: u64) -> Self {
        Self::new(limit, None)
    }

    /// Forwards the first `limit` bytes to `writer` as they come.
    pub fn forwarded(limit: u64, writer: Box<dyn std::io::Write + Send>) -> Self {
        Self::new(limit, Some(writer))
    }

    fn new(limit: u64, forward: Option<Box<dyn std::io::Write + Send>>) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Self { inner: Arc::new(Mutex::new(CappedBuffer { limit, forward, ..CappedBuffer::default() })) }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buffer = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let room = buffer.limit.saturating_sub(buffer.taken);
        let taken = bytes.len().min(room);
        buffer.taken += taken;
        buffer.dropped += (bytes.len() - taken) as u64;
        if taken == 0 {
            return;
        }
        match &mut buffer.forward {
            Some(writer) => {
                let written = writer.write_all(&bytes[..taken]).and_then(|()| writer.flush());
                if let Err(err) = written {
                    tracing::debug!("a guest output's writer failed and is dropped: {err}");
                    buffer.forward = None;
                }
            }
            None => buffer.kept.extend_from_slice(&bytes[..taken]),
        }
    }

    /// What was kept, decoded lossily, and how many bytes were dropped.
    pub fn contents(&self) -> (String, u64) {
        let buffer = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (String::from_utf8_lossy(&buffer.kept).into_owned(), buffer.dropped)
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_keeps_the_first_bytes_and_counts_the_rest() {
        let stderr = CappedOutput::kept(5);
        let mut stream = stderr.p2_stream();
        stream.write(Bytes::from_static(b"abc")).expect("write");
        stream.write(Bytes::from_static(b"defgh")).expect("a full stderr still accepts writes");
        assert_eq!(stderr.contents(), ("abcde".to_owned(), 3));
    }

    #[test]
    fn forwarded_output_passes_through_up_to_the_limit_and_a_failing_writer_is_dropped() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Shared {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Shared::default();
        let output = CappedOutput::forwarded(5, Box::new(sink.clone()));
        let mut stream = output.p2_stream();
        stream.write(Bytes::from_static(b"abc")).expect("write");
        stream.write(Bytes::from_static(b"defgh")).expect("a full output still accepts writes");
        assert_eq!(sink.0.lock().expect("lock").as_slice(), b"abcde");
        assert_eq!(output.contents(), (String::new(), 3), "forwarded, not kept");

        struct Broken;
        impl std::io::Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let output = CappedOutput::forwarded(100, Box::new(Broken));
        let mut stream = output.p2_stream();
        stream.write(Bytes::from_static(b"abc")).expect("the guest never sees the broken pipe");
        stream.write(Bytes::from_static(b"def")).expect("nor later");
    }
}
