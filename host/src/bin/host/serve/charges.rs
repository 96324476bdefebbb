//! Bytes charged to each tenant's `max_stored` that the database does not
//! count yet: the inputs of jobs kept in memory until they are written,
//! and of inserts not yet committed. A charge is held from before a job's
//! bytes are checked until after the write that makes the database count
//! them is committed, so at every moment the database's count plus the
//! charges is at least what the tenant really holds.
//!
//! The two checks that use it cannot pass a bound together: an insert asks
//! in its transaction for `stored + charged` (its own input charged); a job
//! kept in memory charges its input, takes the tenant's total at that
//! moment, then reads `stored` as the store's writer last published it
//! (raised before each commit, so never below a write whose charge is
//! gone). Whichever of the two charged first is in the other's total, or
//! counted in `stored` before the other read it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Each tenant's charged bytes.
#[derive(Debug, Default)]
pub struct Charges(Mutex<HashMap<String, u64>>);

impl Charges {
    fn charged(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges `bytes` to `tenant` until the charge is dropped.
    pub fn charge(self: &Arc<Self>, tenant: &str, bytes: u64) -> Charge {
        let mut charged = self.charged();
        let total = charged.entry(tenant.to_owned()).or_default();
        *total = total.saturating_add(bytes);
        Charge { charges: Arc::clone(self), tenant: tenant.to_owned(), bytes, total_then: *total }
    }

    /// What is charged to `tenant` now.
    pub fn total(&self, tenant: &str) -> u64 {
        self.charged().get(tenant).copied().unwrap_or_default()
    }
}

/// Bytes charged to a tenant; released when dropped.
#[derive(Debug)]
pub struct Charge {
    charges: Arc<Charges>,
    tenant: String,
    bytes: u64,
    /// Everything charged to the tenant once this was, this included.
    pub total_then: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut charged = self.charges.charged();
        if let Some(total) = charged.get_mut(&self.tenant) {
            *total = total.saturating_sub(self.bytes);
            if *total == 0 {
                charged.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Over any sequence of charges and releases, each tenant's total
        /// is exactly what its live charges hold: never below (a bound
        /// passed), never above (a bound that refuses for ever).
        #[test]
        fn the_total_is_what_the_live_charges_hold(
            steps in proptest::collection::vec((0usize..3, 0u64..1_000_000, any::<bool>(), any::<prop::sample::Index>()), 1..200),
        ) {
            let charges = Arc::new(Charges::default());
            let tenants = ["a", "b", "c"];
            let mut live: Vec<Charge> = Vec::new();
            for (tenant, bytes, release, which) in steps {
                if release && !live.is_empty() {
                    live.swap_remove(which.index(live.len()));
                } else {
                    let charge = charges.charge(tenants[tenant], bytes);
                    let before: u64 = live.iter().filter(|c| c.tenant == tenants[tenant]).map(|c| c.bytes).sum();
                    prop_assert_eq!(charge.total_then, before + bytes);
                    live.push(charge);
                }
                for tenant in tenants {
                    let held: u64 = live.iter().filter(|c| c.tenant == tenant).map(|c| c.bytes).sum();
                    prop_assert_eq!(charges.total(tenant), held);
                }
            }
            drop(live);
            prop_assert!(charges.charged().is_empty(), "nothing is left charged");
        }
    }
}
