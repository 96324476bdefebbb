//! The data of a guest's store: everything a guest can reach goes through
//! it (its WASI context and resource table, the two preopens served from the
//! sandbox's own handles, its memory limiter, its ledger and the holds it
//! has on host descriptors). The guest stage (`guest.rs`) fills it, the
//! filesystem wrapper (`quota.rs`) and the linker (`engine.rs`) read it.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, Dir};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::{FsPerms, OpenMode, WasiCtx, WasiCtxView, WasiView};

use crate::ledger::{Hold, Ledger};
use crate::progress::Progress;

/// Descriptors, file streams and directory listings one guest may hold at once.
pub const MAX_OPEN_HANDLES: u64 = 256;

/// What the guest holds beside wasmtime-wasi's table: a [`Hold`] per
/// descriptor it was given, by table index, and its open listings.
#[derive(Debug, Default)]
pub struct Held {
    pub(crate) descriptors: HashMap<u32, Hold>,
    pub(crate) listings: usize,
}

impl Held {
    /// Counts `descriptor` (just pushed into the table) against the cap.
    pub(crate) fn insert(&mut self, descriptor: &Resource<Descriptor>, hold: Hold) {
        self.descriptors.insert(descriptor.rep(), hold);
    }
}

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
    pub ledger: Arc<Ledger>,
    pub held: Held,
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
    ledger: &'a Arc<Ledger>,
    held: &'a mut Held,
}

impl GuestState {
    pub fn preopens_view(&mut self) -> SandboxPreopensView<'_> {
        SandboxPreopensView {
            preopens: &mut self.preopens,
            table: &mut self.table,
            ledger: &self.ledger,
            held: &mut self.held,
        }
    }
}

impl preopens::Host for SandboxPreopensView<'_> {
    /// Every call hands out new descriptors, each counted against the cap
    /// like any other (they share the host's handle, but a guest dropping
    /// them must not give back what it did not take).
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let mut dirs = Vec::with_capacity(self.preopens.len());
        for preopen in self.preopens.iter_mut() {
            let Ok(hold) = self.ledger.hold() else {
                wasmtime::bail!(
                    "the guest holds {} descriptors, the most one guest may hold; it asked for its folders again \
                     without closing them",
                    MAX_OPEN_HANDLES
                );
            };
            let dir = preopen.descriptor()?;
            let fd = self.table.push(Descriptor::Dir(dir))?;
            self.held.insert(&fd, hold);
            dirs.push((fd, preopen.guest_path.clone()));
        }
        Ok(dirs)
    }
}

/// Keeps the memory of one instance under a limit and remembers whether a
/// growth was refused, so a later trap is reported as the limit it was.
/// Linear memories and tables count together: a table's elements live in
/// host memory too (a pointer each).
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: usize,
    total: usize,
    peak: usize,
    refused: Option<usize>,
}

/// The host memory one table element takes.
const TABLE_ELEMENT_BYTES: usize = size_of::<usize>();

impl MemoryLimiter {
    pub fn new(limit: u64) -> Self {
        Self { limit: usize::try_from(limit).unwrap_or(usize::MAX), total: 0, peak: 0, refused: None }
    }

    /// Grows the total from `current` to `desired` bytes of one memory or
    /// table, unless that passes the limit.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = (self.total - current.min(self.total)).saturating_add(desired);
        if total > self.limit {
            self.refused = Some(total);
            return false;
        }
        self.total = total;
        self.peak = self.peak.max(total);
        true
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
        Ok(self.grow(current, desired))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_growth_past_the_limit_is_refused_and_remembered() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).expect("grow"));
        assert!(limiter.memory_growing(60, 100, None).expect("grow"));
        assert!(!limiter.memory_growing(100, 101, None).expect("refuse"));
        assert_eq!(limiter.refused(), Some(101));
        assert_eq!(limiter.peak(), 100);
    }

    #[test]
    fn table_elements_count_against_the_same_limit() {
        let mut limiter = MemoryLimiter::new(1000);
        assert!(limiter.memory_growing(0, 900, None).expect("grow"));
        assert!(!limiter.table_growing(0, 100, None).expect("refuse"), "100 elements take 800 bytes");
        assert!(limiter.table_growing(0, 10, None).expect("grow"));
        assert_eq!(limiter.peak(), 900 + 10 * TABLE_ELEMENT_BYTES);
    }
}
