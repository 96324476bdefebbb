//! The queue in memory: one lane per tenant; a free slot goes to the
//! tenant with the fewest jobs running, in turn among equals, so a tenant
//! flooding the server waits behind its own jobs, not in front of
//! another's. The lanes mirror the queued jobs of the store, which is what
//! survives a restart; the bounds are checked here, before a body is read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Why a job cannot be queued now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The tenant has `max_queued` jobs waiting.
    Tenant,
    /// The server has `max_queued` jobs waiting, over all tenants.
    Server,
    /// The server is stopping.
    Draining,
}

#[derive(Debug)]
struct Lane {
    queue: VecDeque<String>,
    /// Admitted, body still arriving: counted against the bounds.
    reserved: usize,
    running: usize,
    max_concurrent: usize,
    max_queued: usize,
}

#[derive(Debug)]
struct Lanes {
    lanes: BTreeMap<String, Lane>,
    /// The lane after the one served last.
    cursor: usize,
    running: usize,
    waiting: usize,
    max_concurrent: usize,
    max_queued: usize,
    draining: bool,
    /// A running average of job durations, for `Retry-After`.
    mean_seconds: f64,
}

/// The lanes and the dispatcher's wake-up.
#[derive(Debug)]
pub struct Scheduler {
    lanes: Mutex<Lanes>,
    wake: Notify,
}

/// A place in a tenant's lane, held while its body arrives; given back
/// unless [`Reservation::commit`]ed.
#[derive(Debug)]
pub struct Reservation {
    scheduler: Arc<Scheduler>,
    tenant: String,
    held: bool,
}

impl Scheduler {
    /// `tenants`: each tenant's (max_concurrent, max_queued).
    pub fn new(
        max_concurrent: usize,
        max_queued: usize,
        tenants: impl IntoIterator<Item = (String, usize, usize)>,
    ) -> Self {
        let lanes = tenants
            .into_iter()
            .map(|(name, max_concurrent, max_queued)| {
                (name, Lane { queue: VecDeque::new(), reserved: 0, running: 0, max_concurrent, max_queued })
            })
            .collect();
        Self {
            lanes: Mutex::new(Lanes {
                lanes,
                cursor: 0,
                running: 0,
                waiting: 0,
                max_concurrent,
                max_queued,
                draining: false,
                mean_seconds: 0.05,
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds a place for one job of `tenant`, within its bound and the server's.
    pub fn admit(self: &Arc<Self>, tenant: &str) -> Result<Reservation, Refusal> {
        let mut lanes = self.lock();
        if lanes.draining {
            return Err(Refusal::Draining);
        }
        let (waiting, max_queued) = (lanes.waiting, lanes.max_queued);
        let lane = lanes.lanes.get_mut(tenant).ok_or(Refusal::Tenant)?;
        if lane.queue.len() + lane.reserved >= lane.max_queued {
            return Err(Refusal::Tenant);
        }
        if waiting >= max_queued {
            return Err(Refusal::Server);
        }
        lane.reserved += 1;
        lanes.waiting += 1;
        Ok(Reservation { scheduler: Arc::clone(self), tenant: tenant.to_owned(), held: true })
    }

    /// Queues a job found queued at start, whatever the bounds.
    pub fn requeue(&self, tenant: &str, id: String) -> bool {
        let mut lanes = self.lock();
        let Some(lane) = lanes.lanes.get_mut(tenant) else { return false };
        lane.queue.push_back(id);
        lanes.waiting += 1;
        drop(lanes);
        self.wake.notify_one();
        true
    }

    /// Takes a queued job out of its lane; false when it is not there
    /// (it started, or was never queued).
    pub fn remove(&self, tenant: &str, id: &str) -> bool {
        let mut lanes = self.lock();
        let Some(lane) = lanes.lanes.get_mut(tenant) else { return false };
        let Some(at) = lane.queue.iter().position(|queued| queued == id) else { return false };
        lane.queue.remove(at);
        lanes.waiting -= 1;
        true
    }

    /// The next job to start, from the lane after the last one served that
    /// has a job and a free slot; `None` when the server is full, stopping,
    /// or nothing can start.
    pub fn next(&self) -> Option<(String, String)> {
        let mut lanes = self.lock();
        if lanes.draining || lanes.running >= lanes.max_concurrent {
            return None;
        }
        // The tenant with the fewest jobs running goes first, in turn
        // among equals: a tenant with nothing running takes the next free
        // slot, whatever another's backlog.
        let count = lanes.lanes.len();
        let start = lanes.cursor;
        let (at, tenant) = (0..count)
            .map(|step| (start + step) % count.max(1))
            .filter_map(|at| {
                let (name, lane) = lanes.lanes.iter().nth(at)?;
                (!lane.queue.is_empty() && lane.running < lane.max_concurrent).then_some((lane.running, at, name))
            })
            .min_by_key(|(running, _, _)| *running)
            .map(|(_, at, name)| (at, name.clone()))?;
        let lane = lanes.lanes.get_mut(&tenant)?;
        let id = lane.queue.pop_front()?;
        lane.running += 1;
        lanes.running += 1;
        lanes.waiting -= 1;
        lanes.cursor = at + 1;
        Some((tenant, id))
    }

    /// A job of `tenant` ended after `seconds`: its slot is free.
    pub fn done(&self, tenant: &str, seconds: f64) {
        let mut lanes = self.lock();
        if let Some(lane) = lanes.lanes.get_mut(tenant) {
            lane.running -= 1;
        }
        lanes.running -= 1;
        lanes.mean_seconds = 0.9 * lanes.mean_seconds + 0.1 * seconds;
        drop(lanes);
        self.wake.notify_one();
    }

    /// Waits until something may have changed for [`Scheduler::next`].
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    /// No job starts and none is admitted from now on.
    pub fn drain(&self) {
        self.lock().draining = true;
        self.wake.notify_one();
    }

    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Jobs of `tenant` arriving, waiting or running.
    pub fn load(&self, tenant: &str) -> usize {
        self.lock().lanes.get(tenant).map_or(0, |lane| lane.queue.len() + lane.reserved + lane.running)
    }

    /// Jobs waiting in `tenant`'s lane.
    pub fn queued(&self, tenant: &str) -> usize {
        self.lock().lanes.get(tenant).map_or(0, |lane| lane.queue.len())
    }

    /// Seconds until a place is likely free: the jobs ahead, over the
    /// slots, at the recent mean duration; 1 to 60.
    pub fn retry_after(&self) -> u64 {
        let lanes = self.lock();
        let ahead = lanes.waiting as f64 / lanes.max_concurrent.max(1) as f64;
        (ahead * lanes.mean_seconds).ceil().clamp(1.0, 60.0) as u64
    }
}

impl Reservation {
    /// The body is in: the job takes its place at the end of the lane.
    pub fn commit(mut self, id: String) {
        self.held = false;
        let mut lanes = self.scheduler.lock();
        if let Some(lane) = lanes.lanes.get_mut(&self.tenant) {
            lane.reserved -= 1;
            lane.queue.push_back(id);
        }
        drop(lanes);
        self.scheduler.wake.notify_one();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held {
            let mut lanes = self.scheduler.lock();
            if let Some(lane) = lanes.lanes.get_mut(&self.tenant) {
                lane.reserved -= 1;
            }
            lanes.waiting -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(max_concurrent: usize, max_queued: usize) -> Arc<Scheduler> {
        Arc::new(Scheduler::new(max_concurrent, max_queued, [("a".to_owned(), 2, 3), ("b".to_owned(), 2, 3)]))
    }

    #[test]
    fn tenants_are_served_in_turn_whatever_their_backlog() {
        let scheduler = scheduler(1, 100);
        for n in 0..3 {
            scheduler.admit("a").expect("room").commit(format!("a{n}"));
        }
        scheduler.admit("b").expect("room").commit("b0".into());
        let mut order = Vec::new();
        while let Some((tenant, id)) = scheduler.next() {
            order.push(id);
            scheduler.done(&tenant, 0.01);
        }
        assert_eq!(order, ["a0", "b0", "a1", "a2"]);
    }

    #[test]
    fn a_tenant_with_fewer_jobs_running_takes_the_next_slot() {
        let scheduler = scheduler(2, 100);
        for n in 0..3 {
            scheduler.admit("a").expect("room").commit(format!("a{n}"));
        }
        for n in 0..2 {
            scheduler.admit("b").expect("room").commit(format!("b{n}"));
        }
        let started: Vec<String> = std::iter::from_fn(|| scheduler.next()).map(|(_, id)| id).collect();
        assert_eq!(started, ["a0", "b0"]);
        scheduler.done("b", 0.01);
        // a's turn, but a runs one and b none: b goes first.
        assert_eq!(scheduler.next().map(|(_, id)| id).as_deref(), Some("b1"));
        scheduler.done("a", 0.01);
        assert_eq!(scheduler.next().map(|(_, id)| id).as_deref(), Some("a1"));
    }

    #[test]
    fn bounds_refuse_per_tenant_then_for_the_server_and_reservations_count() {
        let scheduler = scheduler(1, 4);
        let held: Vec<Reservation> = (0..3).map(|_| scheduler.admit("a").expect("room")).collect();
        assert_eq!(scheduler.admit("a").expect_err("tenant full"), Refusal::Tenant);
        let b = scheduler.admit("b").expect("room");
        assert_eq!(scheduler.admit("b").expect_err("server full"), Refusal::Server);
        drop(held);
        drop(b);
        scheduler.admit("b").expect("places given back");
        scheduler.drain();
        assert_eq!(scheduler.admit("b").expect_err("stopping"), Refusal::Draining);
    }

    #[test]
    fn a_tenants_load_is_its_jobs_arriving_waiting_and_running() {
        let scheduler = scheduler(2, 100);
        assert_eq!(scheduler.load("a"), 0);
        let arriving = scheduler.admit("a").expect("room");
        assert_eq!(scheduler.load("a"), 1, "a body arriving");
        arriving.commit("a0".into());
        scheduler.admit("a").expect("room").commit("a1".into());
        assert_eq!((scheduler.load("a"), scheduler.load("b")), (2, 0), "waiting");
        assert!(scheduler.next().is_some());
        assert_eq!(scheduler.load("a"), 2, "one running, one waiting");
        scheduler.done("a", 0.01);
        assert_eq!(scheduler.load("a"), 1, "one waiting");
    }

    #[test]
    fn a_tenant_runs_no_more_than_its_bound() {
        let scheduler = scheduler(10, 100);
        for n in 0..3 {
            scheduler.admit("a").expect("room").commit(format!("a{n}"));
        }
        assert!(scheduler.next().is_some() && scheduler.next().is_some());
        assert_eq!(scheduler.next(), None, "a runs 2 at most");
        assert!(scheduler.remove("a", "a2"));
        assert!(!scheduler.remove("a", "a2"));
        assert_eq!(scheduler.queued("a"), 0);
    }
}
