//! What one guest instance lives in: its WASI context (two preopens, nothing
//! else), its memory limiter and its capped stderr.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use wasmtime::ResourceLimiter;

use crate::quota::{Progress, Quota};
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::filesystem::{Descriptor, Dir};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{FsPerms, OpenMode, WasiCtx, WasiCtxView, WasiView};

/// Blocking file operations run inline: each is small (at most one stream
/// chunk), and a worker-thread hop per call costs more.
pub(crate) const BLOCK_CURRENT_THREAD: bool = true;

/// A folder the guest sees at `guest_path`, given as a capability.
pub struct Preopen {
    handle: PreopenHandle,
    guest_path: String,
    writable: bool,
}

enum PreopenHandle {
    /// Not asked for yet: handed over as it is, without a `dup`.
    Unused(cap_std::fs::Dir),
    /// Already handed to the guest; another request shares the descriptor.
    Given(Dir),
    /// Only while being handed over.
    Moving,
}

impl Preopen {
    pub fn new(dir: cap_std::fs::Dir, guest_path: &str, writable: bool) -> Self {
        Self { handle: PreopenHandle::Unused(dir), guest_path: guest_path.to_owned(), writable }
    }

    /// The folder as a WASI descriptor.
    fn descriptor(&mut self) -> wasmtime::Result<Dir> {
        let (perms, mode) = if self.writable {
            (FsPerms::ReadWrite, OpenMode::READ | OpenMode::WRITE)
        } else {
            (FsPerms::ReadOnly, OpenMode::READ)
        };
        let dir = match std::mem::replace(&mut self.handle, PreopenHandle::Moving) {
            PreopenHandle::Unused(handle) => Dir::new(handle.into_std_file(), perms, mode, BLOCK_CURRENT_THREAD),
            PreopenHandle::Given(dir) => dir,
            PreopenHandle::Moving => wasmtime::bail!("the preopen {} was lost", self.guest_path),
        };
        self.handle = PreopenHandle::Given(dir.clone());
        Ok(dir)
    }
}

impl std::fmt::Debug for Preopen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preopen").field("guest_path", &self.guest_path).field("writable", &self.writable).finish()
    }
}

/// The store's data: everything a guest can reach goes through here.
pub struct GuestState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub preopens: Vec<Preopen>,
    pub quota: Arc<Quota>,
    pub progress: Option<Arc<Progress>>,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Serves `wasi:filesystem/preopens` from the sandbox's own handles, so no
/// path is ever re-opened by name (wasmtime-wasi's builder only takes paths).
pub struct SandboxPreopens;

impl HasData for SandboxPreopens {
    type Data<'a> = SandboxPreopensView<'a>;
}

pub struct SandboxPreopensView<'a> {
    preopens: &'a mut [Preopen],
    table: &'a mut ResourceTable,
}

impl GuestState {
    pub fn preopens_view(&mut self) -> SandboxPreopensView<'_> {
        SandboxPreopensView { preopens: &mut self.preopens, table: &mut self.table }
    }
}

impl preopens::Host for SandboxPreopensView<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let mut dirs = Vec::with_capacity(self.preopens.len());
        for preopen in self.preopens.iter_mut() {
            let dir = preopen.descriptor()?;
            dirs.push((self.table.push(Descriptor::Dir(dir))?, preopen.guest_path.clone()));
        }
        Ok(dirs)
    }
}

/// Keeps the memory of one instance under a limit and remembers whether a
/// growth was refused, so a later trap is reported as the limit it was.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: usize,
    total: usize,
    peak: usize,
    refused: Option<usize>,
}

impl MemoryLimiter {
    pub fn new(limit: u64) -> Self {
        Self { limit: usize::try_from(limit).unwrap_or(usize::MAX), total: 0, peak: 0, refused: None }
    }

    /// The size a refused growth asked for, if any growth was refused.
    pub fn refused(&self) -> Option<usize> {
        self.refused
    }

    /// The most linear memory the instance held at once.
    pub fn peak(&self) -> usize {
        self.peak
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.total - current.min(self.total) + desired;
        if total > self.limit {
            self.refused = Some(total);
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real pipeline.
        Ok(desired <= 1_000_000)
    }
}

/// Guest stderr: the first `limit` bytes are kept, the rest is counted and
/// dropped as it arrives, and the guest always sees its writes succeed (a
/// failing stderr makes Rust's `eprintln!` panic, which would turn a noisy
/// guest into a crashing one).
#[derive(Clone, Debug)]
pub struct CappedStderr {
    inner: Arc<Mutex<CappedBuffer>>,
}

#[derive(Debug, Default)]
struct CappedBuffer {
    kept: Vec<u8>,
    dropped: u64,
    limit: usize,
}

impl CappedStderr {
    pub fn new(limit: u64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Self { inner: Arc::new(Mutex::new(CappedBuffer { limit, ..CappedBuffer::default() })) }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buffer = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let room = buffer.limit.saturating_sub(buffer.kept.len());
        let kept = bytes.len().min(room);
        buffer.kept.extend_from_slice(&bytes[..kept]);
        buffer.dropped += (bytes.len() - kept) as u64;
    }

    /// What was kept, decoded lossily, and how many bytes were dropped.
    pub fn contents(&self) -> (String, u64) {
        let buffer = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (String::from_utf8_lossy(&buffer.kept).into_owned(), buffer.dropped)
    }
}

impl IsTerminal for CappedStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for CappedStderr {
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
impl Pollable for CappedStderr {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedStderr {
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
        let stderr = CappedStderr::new(5);
        let mut stream = stderr.p2_stream();
        stream.write(Bytes::from_static(b"abc")).expect("write");
        stream.write(Bytes::from_static(b"defgh")).expect("a full stderr still accepts writes");
        assert_eq!(stderr.contents(), ("abcde".to_owned(), 3));
    }

    #[test]
    fn memory_growth_past_the_limit_is_refused_and_remembered() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).expect("grow"));
        assert!(limiter.memory_growing(60, 100, None).expect("grow"));
        assert!(!limiter.memory_growing(100, 101, None).expect("refuse"));
        assert_eq!(limiter.refused(), Some(101));
        assert_eq!(limiter.peak(), 100);
    }
}
