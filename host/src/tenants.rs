//! Tenants: each has its own sandbox folders (`tenant-<id>/` under each
//! root), its own concurrency bound and, optionally, its own limit profile.
//!
//! A service may see any number of tenants over its life, so what is kept
//! per tenant is bounded, in two parts:
//!
//! - **The bound** (a semaphore, no descriptor) is made when one of the
//!   tenant's invocations comes, on the caller's executor (a map look-up,
//!   no I/O), and is alive while any of its invocations holds it, queued or
//!   running, so a busy tenant's bound never resets. Idle ones are dropped,
//!   all at once, each time the map has doubled since the last time.
//! - **The folders** (two descriptors: the tenant's folder in each root) are
//!   opened, and made, on the blocking pool, and only by an invocation that
//!   holds its global slot: a queue of invocations of distinct tenants holds
//!   none. The folders of the [`MAX_IDLE_TENANTS`] tenants that started an
//!   invocation most recently are kept open for their next invocations;
//!   past that, the least recently used are closed (or, when an invocation
//!   still uses them, closed when it ends).
//!
//! So the folder descriptors the runner holds are at most
//! `2 × (MAX_IDLE_TENANTS + invocations holding a slot)`. Limit profiles
//! are the embedder's configuration and hold no descriptor: they are kept
//! until changed.
//!
//! After [`Tenants::close`] (the runner's shutdown) no tenant is admitted and
//! no folder opened, every kept folder is closed, and the tenants still held
//! by an invocation are named, so that their folders are left in place.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Semaphore;

use crate::error::RunError;
use crate::limits::Limits;
use crate::sandbox::{SandboxRoot, is_tenant_id};

/// Tenants whose folders are kept open (two descriptors each) beyond the
/// invocations that use them: the most recently used ones.
pub const MAX_IDLE_TENANTS: usize = 64;

/// The concurrency bound of one tenant, alive while an invocation holds it.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub(crate) slots: Arc<Semaphore>,
}

/// A tenant's folder in each root, open.
#[derive(Debug)]
pub(crate) struct TenantFolders {
    pub(crate) disk_root: SandboxRoot,
    pub(crate) memory_root: Option<SandboxRoot>,
}

/// Every tenant's bound, folders and profile.
#[derive(Debug)]
pub(crate) struct Tenants {
    per_tenant: usize,
    state: Mutex<State>,
    profiles: Mutex<HashMap<String, Limits>>,
}

#[derive(Debug)]
struct State {
    bounds: HashMap<String, Arc<Tenant>>,
    /// `bounds` is pruned of idle tenants when it reaches this size.
    prune_at: usize,
    /// Open folders, least recently used first; at most [`MAX_IDLE_TENANTS`].
    folders: VecDeque<(String, Arc<TenantFolders>)>,
    closed: bool,
}

impl Tenants {
    pub(crate) fn new(per_tenant: usize) -> Self {
        let state =
            State { bounds: HashMap::new(), prune_at: MAX_IDLE_TENANTS, folders: VecDeque::new(), closed: false };
        Self { per_tenant: per_tenant.max(1), state: Mutex::new(state), profiles: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bound of tenant `id`, made if it is not kept. No I/O: called on
    /// the caller's executor.
    ///
    /// # Errors
    ///
    /// [`RunError::InvalidArgument`] for an id that is not a tenant id,
    /// [`RunError::ShutDown`] after [`Tenants::close`].
    pub(crate) fn get(&self, id: &str) -> Result<Arc<Tenant>, RunError> {
        check_tenant_id(id)?;
        let mut state = self.lock();
        if state.closed {
            return Err(RunError::ShutDown);
        }
        if let Some(tenant) = state.bounds.get(id) {
            return Ok(Arc::clone(tenant));
        }
        if state.bounds.len() >= state.prune_at {
            // Only the map holds an idle tenant's bound. Pruning again only
            // once the map has doubled keeps each call O(1) on average,
            // however many tenants are busy.
            state.bounds.retain(|_, kept| Arc::strong_count(kept) > 1);
            state.prune_at = (2 * state.bounds.len()).max(MAX_IDLE_TENANTS);
        }
        let tenant = Arc::new(Tenant { slots: Arc::new(Semaphore::new(self.per_tenant)) });
        state.bounds.insert(id.to_owned(), Arc::clone(&tenant));
        Ok(tenant)
    }

    /// The folders of tenant `id`, kept ones or opened (and made) now.
    /// Blocking: called on the blocking pool, by an invocation that holds
    /// its global slot, which bounds the folders open beyond the kept ones.
    ///
    /// # Errors
    ///
    /// [`RunError::ShutDown`] after [`Tenants::close`], [`RunError::Sandbox`]
    /// when a folder cannot be made or opened.
    pub(crate) fn folders(
        &self,
        id: &str,
        disk_root: &SandboxRoot,
        memory_root: Option<&SandboxRoot>,
    ) -> Result<Arc<TenantFolders>, RunError> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(RunError::ShutDown);
            }
            if let Some(kept) = state.take_folders(id) {
                state.folders.push_back((id.to_owned(), Arc::clone(&kept)));
                return Ok(kept);
            }
        }
        // Opened without the lock: other tenants are not held up by this one's I/O.
        let opened = Arc::new(TenantFolders {
            disk_root: disk_root.tenant(id).map_err(RunError::Sandbox)?,
            memory_root: memory_root.map(|root| root.tenant(id)).transpose().map_err(RunError::Sandbox)?,
        });
        let mut state = self.lock();
        if state.closed {
            // Not kept: the shutdown closed every kept folder already.
            return Ok(opened);
        }
        // Another invocation of this tenant may have opened them meanwhile.
        let folders = state.take_folders(id).unwrap_or(opened);
        state.folders.push_back((id.to_owned(), Arc::clone(&folders)));
        while state.folders.len() > MAX_IDLE_TENANTS {
            state.folders.pop_front();
        }
        Ok(folders)
    }

    /// Refuses tenants from now on, closes every kept folder, and returns the
    /// tenants an invocation still holds (queued or running): their folders
    /// must stay.
    pub(crate) fn close(&self) -> HashSet<String> {
        let mut state = self.lock();
        state.closed = true;
        state.folders.clear();
        state.bounds.retain(|_, kept| Arc::strong_count(kept) > 1);
        state.bounds.keys().cloned().collect()
    }

    /// Tenants whose bound is kept, and tenants whose folders are kept.
    #[cfg(test)]
    fn kept(&self) -> (usize, usize) {
        let state = self.lock();
        (state.bounds.len(), state.folders.len())
    }

    /// Sets the limit profile of `id`.
    pub(crate) fn set_profile(&self, id: &str, limits: Limits) -> Result<(), RunError> {
        check_tenant_id(id)?;
        self.profiles.lock().unwrap_or_else(PoisonError::into_inner).insert(id.to_owned(), limits);
        Ok(())
    }

    /// The limit profile of `id`, if one was set.
    pub(crate) fn profile(&self, id: &str) -> Option<Limits> {
        self.profiles.lock().unwrap_or_else(PoisonError::into_inner).get(id).copied()
    }
}

impl State {
    /// Takes the kept folders of `id` out of the LRU order, to be put back
    /// as the most recently used.
    fn take_folders(&mut self, id: &str) -> Option<Arc<TenantFolders>> {
        let at = self.folders.iter().position(|(kept, _)| kept == id)?;
        self.folders.remove(at).map(|(_, folders)| folders)
    }
}

fn check_tenant_id(id: &str) -> Result<(), RunError> {
    if is_tenant_id(id) {
        Ok(())
    } else {
        Err(RunError::InvalidArgument(format!(
            "tenant id {:?} must be 1-64 characters of A-Z, a-z, 0-9, `_` and `-`",
            crate::text::bounded(id)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_root() -> (std::path::PathBuf, SandboxRoot) {
        let base = std::env::temp_dir().join(format!("tenants-unit-{}", crate::fs::random_hex().expect("rng")));
        let root = SandboxRoot::open(&base).expect("root");
        (base, root)
    }

    #[test]
    fn idle_bounds_are_dropped_as_the_map_grows_and_busy_ones_kept() {
        let tenants = Tenants::new(2);
        let busy = tenants.get("busy").expect("tenant");
        for n in 0..MAX_IDLE_TENANTS * 8 {
            drop(tenants.get(&format!("t{n}")).expect("tenant"));
            let (bounds, folders) = tenants.kept();
            assert!(bounds <= MAX_IDLE_TENANTS + 1, "{bounds} bounds kept");
            assert_eq!(folders, 0, "making a bound opens no folder");
        }
        let again = tenants.get("busy").expect("tenant");
        assert!(Arc::ptr_eq(&busy, &again), "a tenant in use keeps its bound");
        assert!(matches!(tenants.get("../etc"), Err(RunError::InvalidArgument(_))));
    }

    #[test]
    fn the_least_recently_used_folders_are_closed_past_the_bound() {
        let (base, root) = scratch_root();
        let tenants = Tenants::new(2);
        let first = tenants.folders("t0", &root, None).expect("folders");
        let held = Arc::downgrade(&first);
        drop(first);
        let mut recent = None;
        for n in 1..MAX_IDLE_TENANTS * 3 {
            recent = Some(tenants.folders(&format!("t{n}"), &root, None).expect("folders"));
            if n == MAX_IDLE_TENANTS / 2 {
                // Used again: now the most recent, so not the next to go.
                drop(tenants.folders("t0", &root, None).expect("folders"));
            }
            assert!(tenants.kept().1 <= MAX_IDLE_TENANTS, "{} kept", tenants.kept().1);
            if n == MAX_IDLE_TENANTS {
                assert!(held.upgrade().is_some(), "t0 was used again, so it is kept");
            }
        }
        assert!(held.upgrade().is_none(), "t0's folders were closed once it was the least recently used");
        let last = format!("t{}", MAX_IDLE_TENANTS * 3 - 1);
        let again = tenants.folders(&last, &root, None).expect("folders");
        assert!(Arc::ptr_eq(recent.as_ref().expect("opened"), &again), "the most recent tenant's folders are kept");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn after_close_nothing_is_admitted_or_opened_and_the_busy_tenants_are_named() {
        let (base, root) = scratch_root();
        let tenants = Tenants::new(2);
        let busy = tenants.get("busy").expect("tenant");
        drop(tenants.get("idle").expect("tenant"));
        let kept = Arc::downgrade(&tenants.folders("idle", &root, None).expect("folders"));
        let still_held = tenants.close();
        assert_eq!(still_held, HashSet::from(["busy".to_owned()]));
        assert!(kept.upgrade().is_none(), "kept folders are closed");
        assert!(matches!(tenants.get("idle"), Err(RunError::ShutDown)));
        assert!(matches!(tenants.folders("busy", &root, None), Err(RunError::ShutDown)));
        drop(busy);
        std::fs::remove_dir_all(base).expect("cleanup");
    }
}
