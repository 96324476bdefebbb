//! Tenants: each has its own sandbox folders (`tenant-<id>/` under each
//! root), its own concurrency bound and, optionally, its own limit profile.
//!
//! A service may see any number of tenants over its life, so what is kept
//! per tenant is bounded: the state of a tenant (its bound's semaphore and
//! the handles of its two folders) is made when one of its invocations
//! comes, and dropped once the tenant is idle and more than
//! [`MAX_IDLE_TENANTS`] others are kept. A tenant's state is alive while any
//! of its invocations holds it, so a busy tenant is never dropped (its bound
//! would reset). Limit profiles are the embedder's configuration and hold no
//! descriptor: they are kept until changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;

use crate::error::RunError;
use crate::limits::Limits;
use crate::sandbox::{SandboxRoot, is_tenant_id};

/// Idle tenants whose state is kept (two folder descriptors each); past
/// this, idle ones are dropped as new ones come.
pub const MAX_IDLE_TENANTS: usize = 64;

/// What is kept of one tenant while it is in use.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) disk_root: SandboxRoot,
    pub(crate) memory_root: Option<SandboxRoot>,
}

/// Every tenant's state and profile.
#[derive(Debug)]
pub(crate) struct Tenants {
    per_tenant: usize,
    active: Mutex<HashMap<String, Arc<Tenant>>>,
    profiles: Mutex<HashMap<String, Limits>>,
}

impl Tenants {
    pub(crate) fn new(per_tenant: usize) -> Self {
        Self { per_tenant: per_tenant.max(1), active: Mutex::default(), profiles: Mutex::default() }
    }

    /// The state of tenant `id`, made (with its folders) if it is not kept.
    ///
    /// # Errors
    ///
    /// [`RunError::InvalidArgument`] for an id that is not a tenant id,
    /// [`RunError::Sandbox`] when its folder cannot be made.
    pub(crate) fn get(
        &self,
        id: &str,
        disk_root: &SandboxRoot,
        memory_root: Option<&SandboxRoot>,
    ) -> Result<Arc<Tenant>, RunError> {
        check_tenant_id(id)?;
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tenant) = active.get(id) {
            return Ok(Arc::clone(tenant));
        }
        let tenant = Arc::new(Tenant {
            slots: Arc::new(Semaphore::new(self.per_tenant)),
            disk_root: disk_root.tenant(id).map_err(RunError::Sandbox)?,
            memory_root: memory_root.map(|root| root.tenant(id)).transpose().map_err(RunError::Sandbox)?,
        });
        if active.len() >= MAX_IDLE_TENANTS {
            // Only the map holds an idle tenant's state.
            active.retain(|_, kept| Arc::strong_count(kept) > 1);
        }
        active.insert(id.to_owned(), Arc::clone(&tenant));
        Ok(tenant)
    }

    /// Tenants whose state is kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.active.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Drops the state of every idle tenant (closing its folders' handles).
    pub(crate) fn drop_idle(&self) {
        self.active.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, kept| Arc::strong_count(kept) > 1);
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

    #[test]
    fn idle_tenants_are_dropped_past_the_bound_and_busy_ones_kept() {
        let base = std::env::temp_dir().join(format!("tenants-unit-{}", crate::fs::random_hex().expect("rng")));
        let root = SandboxRoot::open(&base).expect("root");
        let tenants = Tenants::new(2);
        let busy = tenants.get("busy", &root, None).expect("tenant");
        for n in 0..MAX_IDLE_TENANTS * 3 {
            drop(tenants.get(&format!("t{n}"), &root, None).expect("tenant"));
            assert!(tenants.kept() <= MAX_IDLE_TENANTS + 1, "{} kept", tenants.kept());
        }
        let again = tenants.get("busy", &root, None).expect("tenant");
        assert!(Arc::ptr_eq(&busy, &again), "a tenant in use keeps its state, and so its bound");
        assert!(matches!(tenants.get("../etc", &root, None), Err(RunError::InvalidArgument(_))));
        std::fs::remove_dir_all(base).expect("cleanup");
    }
}
