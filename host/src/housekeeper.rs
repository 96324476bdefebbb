//! Sandbox work kept off an invocation's critical path, on one background
//! thread: making sandboxes ahead of time (so an invocation takes one that is
//! ready) and removing finished ones (so an invocation returns before its
//! sandbox is gone).
//!
//! Both only change *when* the work happens, never what a sandbox is: a ready
//! sandbox is made by [`SandboxRoot::create`] like any other (private, locked)
//! and is used by exactly one invocation; a finished one stays locked until
//! it is removed, so a sweep never takes it for a dead host's.
//!
//! Waking a sleeping thread costs about as much as removing a small sandbox
//! (an inter-processor interrupt, on a VM an exit to the hypervisor), so
//! while invocations keep coming the thread looks for work every
//! [`GATHER`] on its own and nobody wakes it; only after [`IDLE_ROUNDS`]
//! empty looks does it sleep until the next invocation wakes it.
//!
//! The thread runs at the lowest priority (nice 19): it uses cores that
//! invocations leave idle, and never takes one from them. When invocations
//! keep every core busy, it falls behind, and invocations do the work
//! themselves: an empty pool means the sandbox is made inline, and a full
//! queue ([`MAX_QUEUED`]) means it is removed inline. The backlog, and so
//! the disk held by finished sandboxes, stays bounded.
//!
//! Removal is also bounded in time for the invocation, whether or not
//! background removal was asked for: a guest that filled its sandbox with
//! many folders can make removal take seconds (each freed folder block is a
//! journal write, on a disk mounted with `discard` a discard too), outside
//! every limit. An invocation removes its own sandbox for at most
//! [`REMOVAL_BUDGET`]; what is left is handed to the thread (started then,
//! if neither job had started it), within the same backlog bound, and past
//! that bound removed inline to the end.

use std::io;
use std::mem;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::RunError;
use crate::sandbox::{Removal, Sandbox, SandboxRoot};

/// Sandboxes that could not be removed, with the reason.
pub(crate) type RemovalFailures = Vec<(PathBuf, io::Error)>;

/// How often the thread looks for work while invocations keep coming: the
/// longest a finished sandbox waits before its removal starts.
const GATHER: Duration = Duration::from_millis(2);
/// Empty looks (of [`GATHER`] each) before the thread sleeps until woken.
const IDLE_ROUNDS: u32 = 50;
/// Finished sandboxes waiting for the thread, at most; more are removed by
/// the invocation itself.
pub(crate) const MAX_QUEUED: usize = 64;
/// The thread's nice value: the lowest priority.
const NICE: i32 = 19;
/// The longest an invocation spends removing its own sandbox before it
/// hands the rest to the thread: about what removing 2,000 files or 250
/// folders takes on this project's disk, a few times what a sandbox that
/// stays within the usual limits needs on tmpfs.
pub(crate) const REMOVAL_BUDGET: Duration = Duration::from_millis(50);

/// Makes and removes sandboxes, inline or on its thread.
pub(crate) struct Housekeeper {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<RemovalFailures>>>,
    background_removal: bool,
    ready_target: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// True while the thread runs and takes work: false before it is
    /// started (it is started on demand for unfinished removals) and once
    /// [`Housekeeper::finish`] began; sandboxes are then made and removed
    /// inline.
    running: bool,
    /// Set by [`Housekeeper::finish`]: no thread is started any more.
    stopped: bool,
    /// True while the thread sleeps until woken (it found no work for a while).
    sleeping: bool,
    to_remove: Vec<Sandbox>,
    /// Sandboxes the thread took from `to_remove` and is removing: they
    /// count against [`MAX_QUEUED`] too, as they still hold their disk.
    in_flight: usize,
    pools: Vec<Pool>,
}

impl State {
    fn backlog(&self) -> usize {
        self.to_remove.len() + self.in_flight
    }
}

/// Sandboxes made ahead of time in one root.
struct Pool {
    root: SandboxRoot,
    ready: Vec<Sandbox>,
    /// Set when making one failed; cleared when an invocation finds the pool
    /// empty, so a broken root is not retried in a loop.
    paused: bool,
}

impl Housekeeper {
    /// Starts the thread when either job is asked for: removal after the
    /// invocation returns, or `ready_target` sandboxes kept ready per root.
    pub(crate) fn start(background_removal: bool, ready_target: usize) -> Result<Self, RunError> {
        let running = background_removal || ready_target > 0;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                running,
                stopped: false,
                sleeping: false,
                to_remove: Vec::new(),
                in_flight: 0,
                pools: Vec::new(),
            }),
            wake: Condvar::new(),
        });
        let thread = if running {
            let thread = spawn(&shared, ready_target)
                .map_err(|err| RunError::Host(format!("cannot start the sandbox housekeeper: {err}")))?;
            Some(thread)
        } else {
            None
        };
        Ok(Self { shared, thread: Mutex::new(thread), background_removal, ready_target })
    }

    /// A fresh sandbox in `root`: one made ahead of time when there is one,
    /// else made now.
    ///
    /// # Errors
    ///
    /// As [`SandboxRoot::create`].
    pub(crate) fn take(&self, root: &SandboxRoot) -> io::Result<Sandbox> {
        if self.ready_target > 0 {
            let mut state = self.shared.lock();
            if state.running {
                let index = match state.pools.iter().position(|pool| pool.root.path() == root.path()) {
                    Some(index) => index,
                    None => {
                        state.pools.push(Pool { root: root.clone(), ready: Vec::new(), paused: false });
                        state.pools.len() - 1
                    }
                };
                let pool = &mut state.pools[index];
                let taken = pool.ready.pop();
                if taken.is_none() {
                    pool.paused = false;
                }
                let low = pool.ready.len() <= self.ready_target / 2;
                if low {
                    self.shared.wake_if_sleeping(&mut state);
                }
                if let Some(sandbox) = taken {
                    return Ok(sandbox);
                }
            }
        }
        root.create()
    }

    /// Removes `sandbox`: queued for the thread with background removal,
    /// else now, for at most `budget` (an invocation's is [`REMOVAL_BUDGET`]
    /// or what is left of its deadline, if less; at least one step is made
    /// however short it is) before the rest is handed to the thread.
    ///
    /// # Errors
    ///
    /// When it is removed now and that fails; failures on the thread are
    /// logged and returned by [`Housekeeper::finish`].
    pub(crate) fn remove_within(&self, sandbox: Sandbox, budget: Duration) -> io::Result<()> {
        if self.background_removal {
            let mut state = self.shared.lock();
            if state.running && state.backlog() < MAX_QUEUED {
                state.to_remove.push(sandbox);
                self.shared.wake_if_sleeping(&mut state);
                return Ok(());
            }
        }
        match sandbox.remove_within(budget)? {
            Removal::Done => Ok(()),
            Removal::Unfinished(rest) => match self.hand_over(rest) {
                Ok(()) => Ok(()),
                // Past the backlog bound, or shutting down: to the end, here.
                Err(rest) => rest.close(),
            },
        }
    }

    /// Queues the rest of a removal for the thread, starting the thread if
    /// it is not running yet; gives the sandbox back when the backlog is
    /// full, the housekeeper is shutting down, or no thread can be started.
    fn hand_over(&self, sandbox: Sandbox) -> Result<(), Sandbox> {
        let mut state = self.shared.lock();
        if state.stopped || state.backlog() >= MAX_QUEUED {
            return Err(sandbox);
        }
        if !state.running {
            // Stored while the state is locked, so `finish` (which marks the
            // state stopped first) always finds the thread to wait for.
            let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
            match spawn(&self.shared, self.ready_target) {
                Ok(handle) => {
                    *thread = Some(handle);
                    state.running = true;
                    state.sleeping = false;
                }
                Err(err) => {
                    tracing::warn!("cannot start the sandbox housekeeper, removing inline: {err}");
                    return Err(sandbox);
                }
            }
        }
        tracing::debug!(sandbox = %sandbox.path().display(), "sandbox removal past its budget, handed to the housekeeper");
        state.to_remove.push(sandbox);
        self.shared.wake_if_sleeping(&mut state);
        Ok(())
    }

    /// Stops the thread after it removed every queued sandbox and every
    /// ready one; returns what could not be removed. Later calls work inline.
    pub(crate) fn finish(&self) -> RemovalFailures {
        {
            let mut state = self.shared.lock();
            state.running = false;
            state.stopped = true;
            state.sleeping = false;
        }
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        thread.map(|thread| thread.join().unwrap_or_default()).unwrap_or_default()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_if_sleeping(&self, state: &mut State) {
        if mem::take(&mut state.sleeping) {
            self.wake.notify_one();
        }
    }

    /// The thread: removes what is queued, tops pools up to `ready_target`,
    /// looks again after [`GATHER`] (or sleeps once idle); drains everything
    /// once stopped.
    fn work(&self, ready_target: usize) -> RemovalFailures {
        // On Linux a nice value belongs to the thread that sets it.
        if let Err(err) = rustix::process::setpriority_process(None, NICE) {
            tracing::debug!("the sandbox housekeeper keeps its priority: {err}");
        }
        let mut failures = Vec::new();
        let mut idle_rounds = 0;
        let mut state = self.lock();
        while state.running {
            let refill: Vec<(usize, SandboxRoot, usize)> = state
                .pools
                .iter()
                .enumerate()
                .filter(|(_, pool)| !pool.paused && pool.ready.len() < ready_target)
                .map(|(index, pool)| (index, pool.root.clone(), ready_target - pool.ready.len()))
                .collect();
            if state.to_remove.is_empty() && refill.is_empty() {
                if idle_rounds < IDLE_ROUNDS {
                    idle_rounds += 1;
                    state = self.wake.wait_timeout(state, GATHER).unwrap_or_else(PoisonError::into_inner).0;
                } else {
                    state.sleeping = true;
                    // `sleeping` is cleared by whoever wakes us (or by finish).
                    while state.sleeping && state.running {
                        state = self.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
                    }
                    state.sleeping = false;
                    idle_rounds = 0;
                }
                continue;
            }
            idle_rounds = 0;
            let finished = mem::take(&mut state.to_remove);
            state.in_flight = finished.len();
            drop(state);

            remove_all(finished, &mut failures);
            let mut made = Vec::new();
            let mut failed = Vec::new();
            for (index, root, missing) in refill {
                for _ in 0..missing {
                    match root.create() {
                        Ok(sandbox) => made.push((index, sandbox)),
                        Err(err) => {
                            tracing::warn!(root = %root.path().display(), "cannot make a sandbox ahead of time: {err}");
                            failed.push(index);
                            break;
                        }
                    }
                }
            }

            state = self.lock();
            state.in_flight = 0;
            let mut unused = Vec::new();
            let running = state.running;
            for (index, sandbox) in made {
                match state.pools.get_mut(index) {
                    Some(pool) if running => pool.ready.push(sandbox),
                    _ => unused.push(sandbox),
                }
            }
            for index in failed {
                if let Some(pool) = state.pools.get_mut(index) {
                    pool.paused = true;
                }
            }
            if !unused.is_empty() {
                drop(state);
                remove_all(unused, &mut failures);
                state = self.lock();
            }
        }
        let finished = mem::take(&mut state.to_remove);
        let ready: Vec<Sandbox> = state.pools.drain(..).flat_map(|pool| pool.ready).collect();
        drop(state);
        remove_all(finished, &mut failures);
        remove_all(ready, &mut failures);
        failures
    }
}

fn spawn(shared: &Arc<Shared>, ready_target: usize) -> io::Result<JoinHandle<RemovalFailures>> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new().name("sandbox-housekeeper".into()).spawn(move || shared.work(ready_target))
}

fn remove_all(sandboxes: Vec<Sandbox>, failures: &mut RemovalFailures) {
    for sandbox in sandboxes {
        let path = sandbox.path().to_owned();
        if let Err(err) = sandbox.close() {
            tracing::error!(sandbox = %path.display(), "cannot remove sandbox: {err}");
            failures.push((path, err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sandbox as a guest can leave it: many files, folders, a chain.
    fn crowded_sandbox(root: &SandboxRoot) -> Sandbox {
        let sandbox = root.create().expect("create");
        let out = sandbox.output_dir().expect("out");
        for i in 0..100 {
            out.write(format!("f{i}"), b"x").expect("file");
            out.create_dir(format!("d{i}")).expect("folder");
        }
        let mut current = out.try_clone().expect("clone");
        for _ in 0..30 {
            current.create_dir("c").expect("mkdir");
            current = current.open_dir("c").expect("open");
        }
        sandbox
    }

    #[test]
    fn a_removal_past_its_budget_is_handed_to_a_thread_started_for_it_and_shutdown_waits() {
        let base = std::env::temp_dir().join(format!("housekeeper-unit-{}", crate::fs::random_hex().expect("rng")));
        let root = SandboxRoot::open(&base).expect("root");
        // Neither background removal nor ready sandboxes: no thread yet.
        let keeper = Housekeeper::start(false, 0).expect("housekeeper");
        assert!(keeper.thread.lock().expect("lock").is_none());
        let sandboxes = (0..3).map(|_| crowded_sandbox(&root)).collect::<Vec<_>>();
        for sandbox in sandboxes {
            // A budget no removal fits in: each is handed over at its first step.
            keeper.remove_within(sandbox, Duration::ZERO).expect("handed over");
        }
        assert!(keeper.thread.lock().expect("lock").is_some(), "the thread was started for the rest");
        let failures = keeper.finish();
        assert!(failures.is_empty(), "{failures:?}");
        let left: Vec<_> = std::fs::read_dir(root.path()).expect("list").collect();
        assert!(left.is_empty(), "finish waited for every handed-over removal: {left:?}");
        // After the shutdown, removal is inline to the end.
        keeper.remove_within(crowded_sandbox(&root), Duration::ZERO).expect("inline");
        assert_eq!(std::fs::read_dir(root.path()).expect("list").count(), 0);
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn a_full_queue_makes_invocations_remove_their_own_sandboxes() {
        let base = std::env::temp_dir().join(format!("housekeeper-unit-{}", crate::fs::random_hex().expect("rng")));
        let root = SandboxRoot::open(&base).expect("root");
        let sandboxes =
            |root: &SandboxRoot| std::fs::read_dir(root.path()).expect("list").filter(|entry| entry.is_ok()).count();
        // A housekeeper whose thread is busy elsewhere: nothing drains the queue.
        let state = State {
            running: true,
            stopped: false,
            sleeping: false,
            to_remove: Vec::new(),
            in_flight: 0,
            pools: Vec::new(),
        };
        let keeper = Housekeeper {
            shared: Arc::new(Shared { state: Mutex::new(state), wake: Condvar::new() }),
            thread: Mutex::new(None),
            background_removal: true,
            ready_target: 0,
        };
        for _ in 0..MAX_QUEUED + 5 {
            keeper.remove_within(root.create().expect("create"), REMOVAL_BUDGET).expect("remove");
        }
        assert_eq!(sandboxes(&root), MAX_QUEUED, "past the bound, sandboxes are removed inline");
        let mut failures = Vec::new();
        remove_all(mem::take(&mut keeper.shared.lock().to_remove), &mut failures);
        assert!(failures.is_empty());
        assert_eq!(sandboxes(&root), 0);
        std::fs::remove_dir_all(base).expect("cleanup");
    }
}
