//! Private, throw-away folders: one per invocation, under one sandbox root.
//!
//! Layout of a root:
//!
//! ```text
//! <root>/                       0700, owned by this user
//!   sbx-<32 hex>/               0700 from the mkdir itself, flock-ed by its owner
//!     input/                    0700, preopened read-only to the guest
//!     out/                      0700, preopened read-write to the guest
//!   tenant-<id>/                0700, a tenant's own root, laid out the same
//! ```
//!
//! The owning process holds an exclusive `flock` on the sandbox folder from
//! just after its `mkdir` until after its `rmdir`, so a folder whose lock can
//! be taken has no living owner: that is what [`SandboxRoot::sweep`] relies
//! on, instead of guessing from PIDs. (The one moment without the lock,
//! between `mkdir` and `flock`, is covered by checking, once locked, that the
//! folder is still there: a sweep that took it in between removed an empty
//! folder, and the owner starts over under a new name.) Every operation below the root goes through `cap-std`
//! handles; the only path-based (ambient) step is opening the root itself, in
//! [`SandboxRoot::open`].

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cap_fs_ext::DirExt as _;
use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FlockOperation};

use crate::fs::{
    Deadline, Refusal, Stop, open_listable_dir, open_private, open_private_at, open_private_dir, private_dir_builder,
    private_memory_folder, random_hex, remove_tree, remove_tree_within,
};

/// How messages name the setting that chooses the disk root, in the
/// library's terms (the `host` binary words it as its flag).
pub const SANDBOX_ROOT_SETTING: &str = "RunnerConfig::sandbox_root";
/// How messages name the setting that chooses the memory-backed root.
pub const MEMORY_ROOT_SETTING: &str = "RunnerConfig::memory_root";

/// The folder the guest reads its input from.
pub const INPUT_DIR: &str = "input";
/// The input, in [`INPUT_DIR`]: the only entry there (the guest cannot write
/// to that folder).
pub const INPUT_FILE: &str = "input.csv";
/// The folder the guest writes its outputs into.
pub const OUTPUT_DIR: &str = "out";

const NAME_PREFIX: &str = "sbx-";
const TENANT_PREFIX: &str = "tenant-";
/// Hex digits of randomness in a sandbox name: 128 bits from the OS RNG.
const NAME_HEX_DIGITS: usize = 32;

/// One place a default root may be, tried in order.
#[derive(Debug, Clone)]
struct Candidate {
    path: PathBuf,
    /// The parent must itself be private and memory-backed (checked on the
    /// handle the root is then made in): for `$XDG_RUNTIME_DIR`.
    private_memory_parent: bool,
}

/// The default disk roots: `orders-host-<uid>` in the temp folder, where
/// anyone can make that name first; then `orders-host-sandboxes` in the
/// user's own cache folder, on disk and out of other users' reach (beside
/// the code cache, not in it: clearing compiled code never touches a live
/// sandbox).
fn default_disk_candidates(temp: &Path, xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Vec<Candidate> {
    let uid = rustix::process::getuid().as_raw();
    let mut candidates =
        vec![Candidate { path: temp.join(format!("orders-host-{uid}")), private_memory_parent: false }];
    // The XDG spec says to ignore a relative (or empty) $XDG_CACHE_HOME.
    let cache = xdg_cache_home
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| home.filter(|home| !home.is_empty()).map(|home| PathBuf::from(home).join(".cache")));
    if let Some(cache) = cache {
        candidates.push(Candidate { path: cache.join("orders-host-sandboxes"), private_memory_parent: false });
    }
    candidates
}

/// The default memory-backed roots: `/dev/shm/orders-host-<uid>`, then
/// `$XDG_RUNTIME_DIR/orders-host` (the user's own tmpfs folder).
fn default_memory_candidates(shm: Option<PathBuf>, xdg_runtime_dir: Option<OsString>) -> Vec<Candidate> {
    let uid = rustix::process::getuid().as_raw();
    let mut candidates = Vec::new();
    if let Some(shm) = shm {
        candidates.push(Candidate { path: shm.join(format!("orders-host-{uid}")), private_memory_parent: false });
    }
    if let Some(runtime) = xdg_runtime_dir.map(PathBuf::from).filter(|path| path.is_absolute()) {
        candidates.push(Candidate { path: runtime.join("orders-host"), private_memory_parent: true });
    }
    candidates
}

fn disk_candidates() -> Vec<Candidate> {
    default_disk_candidates(&std::env::temp_dir(), std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

fn memory_candidates() -> Vec<Candidate> {
    let shm = Path::new("/dev/shm");
    default_memory_candidates(shm.is_dir().then(|| shm.to_owned()), std::env::var_os("XDG_RUNTIME_DIR"))
}

fn open_candidate(candidate: &Candidate) -> Result<Dir, String> {
    if !candidate.private_memory_parent {
        return open_private(&candidate.path, true).map_err(|refusal| refusal.reason());
    }
    let (Some(parent), Some(name)) = (candidate.path.parent(), candidate.path.file_name()) else {
        return Err("is not a folder in a folder".to_owned());
    };
    let parent_fd =
        private_memory_folder(parent).map_err(|reason| format!("is in {}, which {reason}", parent.display()))?;
    open_private_at(&parent_fd, name, true).map_err(|refusal| refusal.reason())
}

/// Opens the first of `candidates` that is private to this user, warning
/// why the ones before it were passed over; the others stay known to its
/// sweep. `what` names the root in messages.
fn open_first_private(candidates: &[Candidate], what: &str) -> Result<SandboxRoot, Vec<String>> {
    let mut passed_over = Vec::new();
    for (index, candidate) in candidates.iter().enumerate() {
        match open_candidate(candidate) {
            Ok(dir) => {
                for reason in &passed_over {
                    tracing::warn!("the default {what} {reason}; using {} instead", candidate.path.display());
                }
                let siblings = candidates
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != index)
                    .map(|(_, other)| other.path.clone())
                    .collect();
                return Ok(SandboxRoot { dir: Arc::new(dir), path: candidate.path.clone(), siblings });
            }
            Err(reason) => passed_over.push(format!("{} {reason}", candidate.path.display())),
        }
    }
    Err(passed_over)
}

/// Sweeps the roots a `host` given these options would use (`host sweep`):
/// each root named, else every default location (first choice and
/// fallbacks) that exists and is this user's; a default location that is not
/// (another user's folder, a link) is left alone.
///
/// # Errors
///
/// When a named root is not private, or a root cannot be listed.
pub fn sweep_roots(disk: Option<&Path>, memory: Option<&Path>) -> io::Result<Sweep> {
    let mut sweep = Sweep::default();
    let named = [(disk, "sandbox root", SANDBOX_ROOT_SETTING), (memory, "memory root", MEMORY_ROOT_SETTING)];
    for (index, (path, what, setting)) in named.into_iter().enumerate() {
        let remedy = format!("choose another {setting}");
        let paths = match path {
            Some(path) => vec![(path.to_owned(), true)],
            None if index == 0 => SandboxRoot::default_paths().into_iter().map(|path| (path, false)).collect(),
            None => SandboxRoot::default_memory_paths().into_iter().map(|path| (path, false)).collect(),
        };
        for (path, named) in paths {
            let dir = match open_private(&path, false) {
                Ok(dir) => dir,
                Err(Refusal::Missing) => continue,
                Err(refusal) if named => return Err(refusal.into_error(what, &path, &remedy)),
                Err(refusal) => {
                    tracing::debug!("not sweeping the default {what} {} {}", path.display(), refusal.reason());
                    continue;
                }
            };
            let root = SandboxRoot { dir: Arc::new(dir), path: path.clone(), siblings: Arc::new([]) };
            let swept = root.sweep().map_err(|err| {
                io::Error::new(err.kind(), format!("cannot list the {what} {}: {err}", path.display()))
            })?;
            sweep.absorb(swept);
        }
    }
    Ok(sweep)
}

/// The folder that holds every sandbox of this user (or of one tenant).
#[derive(Clone)]
pub struct SandboxRoot {
    dir: Arc<Dir>,
    path: PathBuf,
    /// The other default locations this root was chosen among: its sweep
    /// covers those of them that are this user's, so that sandboxes a killed
    /// host left in a fallback root are swept even once the first choice is
    /// usable again (and the other way round).
    siblings: Arc<[PathBuf]>,
}

impl fmt::Debug for SandboxRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxRoot").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SandboxRoot {
    /// The first default root: `orders-host-<uid>` in the system temp folder
    /// (see [`SandboxRoot::open_default`] for when another is used).
    #[must_use]
    pub fn default_path() -> PathBuf {
        std::env::temp_dir().join(format!("orders-host-{}", rustix::process::getuid().as_raw()))
    }

    /// The first default memory-backed root, for spooled inputs:
    /// `/dev/shm/orders-host-<uid>`, where `/dev/shm` exists (see
    /// [`SandboxRoot::open_default_memory`] for when another is used).
    #[must_use]
    pub fn default_memory_path() -> Option<PathBuf> {
        let shm = Path::new("/dev/shm");
        shm.is_dir().then(|| shm.join(format!("orders-host-{}", rustix::process::getuid().as_raw())))
    }

    /// Every place a default disk root may be, in the order they are tried.
    #[must_use]
    pub fn default_paths() -> Vec<PathBuf> {
        disk_candidates().into_iter().map(|candidate| candidate.path).collect()
    }

    /// Every place a default memory-backed root may be, in the order they
    /// are tried.
    #[must_use]
    pub fn default_memory_paths() -> Vec<PathBuf> {
        memory_candidates().into_iter().map(|candidate| candidate.path).collect()
    }

    /// Opens the root the user named at `path` ([`SANDBOX_ROOT_SETTING`]), creating
    /// it (and missing parents) 0700.
    ///
    /// # Errors
    ///
    /// When the folder cannot be created or opened, or when it is not private:
    /// owned by another user, a symbolic link, not a folder, or writable by
    /// group or others (anyone who can write the root could rename or
    /// replace a sandbox in it). The message says what to do.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_named(path, "sandbox root", &format!("choose another {SANDBOX_ROOT_SETTING}"))
    }

    /// Opens the memory-backed root the user named at `path`
    /// ([`MEMORY_ROOT_SETTING`]), as [`SandboxRoot::open`].
    ///
    /// # Errors
    ///
    /// As [`SandboxRoot::open`].
    pub fn open_memory(path: &Path) -> io::Result<Self> {
        Self::open_named(path, "memory root", &format!("choose another {MEMORY_ROOT_SETTING}"))
    }

    fn open_named(path: &Path, what: &str, remedy: &str) -> io::Result<Self> {
        let dir = open_private_dir(path, what, remedy)?;
        Ok(Self { dir: Arc::new(dir), path: path.to_owned(), siblings: Arc::new([]) })
    }

    /// Opens the default disk root: [`SandboxRoot::default_path`] when it is
    /// private to this user; when it is not (another user made that name
    /// first in the shared temp folder, or planted a link there), a warning
    /// and `orders-host-sandboxes` in `$XDG_CACHE_HOME` (else `~/.cache`).
    ///
    /// # Errors
    ///
    /// When no default location is usable; the message names each and why.
    pub fn open_default() -> io::Result<Self> {
        open_first_private(&disk_candidates(), "sandbox root").map_err(|passed_over| {
            io::Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "no default sandbox root is usable ({}); choose a folder of your own with {SANDBOX_ROOT_SETTING}",
                    passed_over.join("; ")
                ),
            )
        })
    }

    /// Opens the default memory-backed root: [`SandboxRoot::default_memory_path`]
    /// when it is private to this user, else `$XDG_RUNTIME_DIR/orders-host`
    /// when `$XDG_RUNTIME_DIR` is set, private and on tmpfs; else `None`
    /// (spooling off) with a warning.
    #[must_use]
    pub fn open_default_memory() -> Option<Self> {
        let candidates = memory_candidates();
        if candidates.is_empty() {
            tracing::debug!("spooling is off: no /dev/shm and no $XDG_RUNTIME_DIR");
            return None;
        }
        match open_first_private(&candidates, "memory root") {
            Ok(root) => Some(root),
            Err(passed_over) => {
                tracing::warn!(
                    "spooling is off, every input goes to the disk root: no default memory root is usable ({}); \
                     name a private folder on tmpfs with {MEMORY_ROOT_SETTING} to spool",
                    passed_over.join("; ")
                );
                None
            }
        }
    }

    /// Where this root is on disk (for messages and logs).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root of one tenant's sandboxes, `tenant-<id>` inside this one,
    /// created 0700 when missing.
    ///
    /// # Errors
    ///
    /// When `tenant` is not 1-64 characters of `[A-Za-z0-9_-]`, or the folder
    /// cannot be created or opened.
    pub fn tenant(&self, tenant: &str) -> io::Result<Self> {
        if !is_tenant_id(tenant) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("tenant id {tenant:?} must be 1-64 characters of A-Z, a-z, 0-9, `_` and `-`"),
            ));
        }
        let name = format!("{TENANT_PREFIX}{tenant}");
        match self.dir.create_dir_with(&name, &private_dir_builder()) {
            Err(err) if err.kind() != ErrorKind::AlreadyExists => return Err(err),
            _ => {}
        }
        let dir = self.dir.open_dir_nofollow(&name)?;
        Ok(Self { dir: Arc::new(dir), path: self.path.join(name), siblings: Arc::new([]) })
    }

    /// Removes the tenant folders that hold nothing (after a shutdown).
    ///
    /// # Errors
    ///
    /// When the root cannot be listed.
    pub fn remove_empty_tenants(&self) -> io::Result<()> {
        self.remove_empty_tenants_except(&std::collections::HashSet::new())
    }

    /// Removes the tenant folders that hold nothing, except those of the
    /// tenants in `held`: an invocation of theirs may hold its folder's
    /// handle, and would make its sandbox in a removed folder.
    pub(crate) fn remove_empty_tenants_except(&self, held: &std::collections::HashSet<String>) -> io::Result<()> {
        for entry in self.dir.entries()? {
            let name = entry?.file_name();
            let tenant = name.to_str().and_then(|n| n.strip_prefix(TENANT_PREFIX));
            let is_tenant = tenant.is_some_and(|id| is_tenant_id(id) && !held.contains(id));
            // Only an empty folder can be removed: a busy tenant keeps its own.
            if is_tenant && self.dir.remove_dir(&name).is_ok() {
                tracing::debug!(tenant = ?name, "empty tenant folder removed");
            }
        }
        Ok(())
    }

    /// Creates a fresh sandbox: the folder, with mode 0700 from the `mkdir`
    /// itself, locked, then `input/` and `out/` in it.
    ///
    /// # Errors
    ///
    /// When the OS RNG fails, or a folder cannot be created or locked.
    pub(crate) fn create(&self) -> io::Result<Sandbox> {
        let started = Instant::now();
        let (name, top) = self.create_locked_folder()?;
        let dirs = match make_sandbox_dirs(top) {
            Ok(dirs) => dirs,
            Err(err) => {
                // Best effort: nothing of this half-made sandbox may stay.
                let _ = remove_tree(&self.dir, OsStr::new(&name));
                return Err(err);
            }
        };
        let sandbox = Sandbox { root: self.dir.clone(), path: self.path.join(&name), name, dirs: Some(dirs) };
        tracing::debug!(path = %sandbox.path.display(), elapsed = ?started.elapsed(), "sandbox created");
        Ok(sandbox)
    }

    /// Makes and locks a folder under a fresh random name; returns the name
    /// and the handle that holds the lock.
    fn create_locked_folder(&self) -> io::Result<(String, Dir)> {
        const ATTEMPTS: usize = 16;
        let builder = private_dir_builder();
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let name = random_name()?;
            match self.dir.create_dir_with(&name, &builder) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
            let locked = open_listable_dir(&self.dir, &name).and_then(|top| {
                rustix::fs::flock(&top, FlockOperation::NonBlockingLockExclusive)?;
                Ok(top)
            });
            match locked {
                // A sweep may have locked and removed the empty folder
                // before our lock; then the lock guards nothing.
                Ok(top) if rustix::fs::fstat(&top)?.st_nlink > 0 => return Ok((name, top)),
                Ok(_) => last_error = Some(io::Error::from(ErrorKind::NotFound)),
                // A sweep holds it, or took it away: it will be gone.
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::NotFound) => last_error = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::other(format!(
            "cannot make a sandbox folder after {ATTEMPTS} attempts (is another process sweeping this root in a \
             loop?): {}",
            last_error.map_or_else(|| "every random name was taken".to_owned(), |err| err.to_string())
        )))
    }

    /// Removes every sandbox of this root whose owner is gone (its lock can be
    /// taken), and never one whose owner is alive.
    ///
    /// # Errors
    ///
    /// When the root cannot be listed; failures to remove one sandbox are
    /// collected in the returned [`Sweep`] and do not stop the others.
    pub fn sweep(&self) -> io::Result<Sweep> {
        let mut sweep = Sweep::default();
        let mut folders = Vec::new();
        let mut tenants = Vec::new();
        for entry in self.dir.entries()? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else { continue };
            if is_sandbox_name(name) {
                folders.push(name.to_owned());
            } else if name.strip_prefix(TENANT_PREFIX).is_some_and(is_tenant_id) {
                tenants.push(name.to_owned());
            }
        }
        for name in tenants {
            let tenant = self.dir.open_dir_nofollow(&name).map(|dir| Self {
                dir: Arc::new(dir),
                path: self.path.join(&name),
                siblings: Arc::new([]),
            });
            match tenant.and_then(|tenant| tenant.sweep()) {
                Ok(inner) => sweep.absorb(inner),
                Err(err) => sweep.failed.push((name, err)),
            }
        }
        for name in &folders {
            self.sweep_one(name, &mut sweep);
        }
        for path in self.siblings.iter() {
            match open_private(path, false) {
                Ok(dir) => {
                    let sibling = Self { dir: Arc::new(dir), path: path.clone(), siblings: Arc::new([]) };
                    match sibling.sweep() {
                        Ok(inner) => sweep.absorb(inner),
                        Err(err) => sweep.failed.push((path.display().to_string(), err)),
                    }
                }
                // Another user's folder, or none: nothing of ours is there.
                Err(refusal) => tracing::debug!("not sweeping {} ({})", path.display(), refusal.reason()),
            }
        }
        Ok(sweep)
    }

    fn sweep_one(&self, name: &str, sweep: &mut Sweep) {
        let top = match open_listable_dir(&self.dir, name) {
            Ok(top) => top,
            // Removed meanwhile by its owner, or by another sweep.
            Err(err) if err.kind() == ErrorKind::NotFound => return,
            Err(err) => {
                sweep.failed.push((name.to_owned(), err));
                return;
            }
        };
        match rustix::fs::flock(&top, FlockOperation::NonBlockingLockExclusive).map_err(io::Error::from) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                sweep.live += 1;
                return;
            }
            Err(err) => {
                sweep.failed.push((name.to_owned(), err));
                return;
            }
        }
        // Removed while locked, so no owner can be starting in it.
        match remove_tree(&self.dir, OsStr::new(name)) {
            Ok(()) => {
                tracing::info!(sandbox = name, "swept a sandbox whose owner is gone");
                sweep.removed.push(name.to_owned());
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => sweep.failed.push((name.to_owned(), err)),
        }
    }
}

/// What [`SandboxRoot::sweep`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Sweep {
    /// Sandboxes of dead owners that were removed.
    pub removed: Vec<String>,
    /// Sandboxes left alone because their owner holds the lock.
    pub live: usize,
    /// Sandboxes that could not be removed, with the reason.
    pub failed: Vec<(String, io::Error)>,
}

impl Sweep {
    /// Adds another root's sweep to this one.
    pub fn absorb(&mut self, other: Self) {
        self.removed.extend(other.removed);
        self.live += other.live;
        self.failed.extend(other.failed);
    }
}

fn random_name() -> io::Result<String> {
    Ok(format!("{NAME_PREFIX}{}", random_hex()?))
}

fn is_sandbox_name(name: &str) -> bool {
    name.strip_prefix(NAME_PREFIX)
        .is_some_and(|hex| hex.len() == NAME_HEX_DIGITS && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Makes `input/` and `out/` in the locked sandbox folder `top`, and opens
/// them once, here, for everything that follows: copying the input in, the
/// guest's preopens, collecting and removing.
fn make_sandbox_dirs(top: Dir) -> io::Result<SandboxDirs> {
    let builder = private_dir_builder();
    top.create_dir_with(INPUT_DIR, &builder)?;
    top.create_dir_with(OUTPUT_DIR, &builder)?;
    let input = open_listable_dir(&top, INPUT_DIR)?;
    let out = open_listable_dir(&top, OUTPUT_DIR)?;
    Ok(SandboxDirs { top, input: Some(input), out: Some(out), thorough: false, fresh: 0 })
}

/// A sandbox folder (its handle holds the lock) and the two folders made in
/// it, as created, with how far their removal got.
struct SandboxDirs {
    top: Dir,
    /// `None` once removal began.
    input: Option<Dir>,
    /// `None` once removal began.
    out: Option<Dir>,
    /// Removal ran out of time or met a surprise: what is left goes entry
    /// by entry ([`remove_tree_within`]), which resumes from any state.
    thorough: bool,
    /// The last fresh name flattening used, so a resumed removal does not
    /// probe the names it already took.
    fresh: u64,
}

impl SandboxDirs {
    /// Removes the sandbox `name` of `root` (this one), or as much of it as
    /// `deadline` allows; the caller releases the lock (drops `self`) only
    /// once it is gone. A sandbox laid out as it was created (the input in
    /// `input/`, plain entries in `out/`, nothing else) is removed by name,
    /// a system call per entry; on any surprise (a folder the guest made,
    /// an entry that will not go) [`remove_tree_within`] takes over, which
    /// handles anything.
    fn remove(&mut self, root: &Dir, name: &str, deadline: Deadline) -> Result<(), Stop> {
        if !self.thorough {
            match self.remove_as_created(root, name, deadline) {
                Ok(()) => return Ok(()),
                Err(Stop::OutOfTime) => {
                    self.thorough = true;
                    return Err(Stop::OutOfTime);
                }
                Err(Stop::Failed(err)) => {
                    tracing::debug!(sandbox = name, "sandbox not as created ({err}): removing it entry by entry");
                    self.thorough = true;
                }
            }
        }
        remove_tree_within(root, OsStr::new(name), &mut self.fresh, deadline)
    }

    fn remove_as_created(&mut self, root: &Dir, name: &str, deadline: Deadline) -> Result<(), Stop> {
        // The input folder's one entry is known: no listing.
        if let Some(input) = self.input.take() {
            match input.remove_file(INPUT_FILE) {
                Err(err) if err.kind() != ErrorKind::NotFound => return Err(err.into()),
                _ => {}
            }
        }
        let out = self.out.take().ok_or_else(|| io::Error::other("the output folder was already closed"))?;
        remove_plain_entries(out, deadline)?;
        self.top.remove_dir(INPUT_DIR)?;
        self.top.remove_dir(OUTPUT_DIR)?;
        root.remove_dir(name)?;
        Ok(())
    }
}

/// Unlinks every entry of `dir` that is not a folder; fails on a folder.
fn remove_plain_entries(dir: Dir, deadline: Deadline) -> Result<(), Stop> {
    let mut entries = rustix::fs::Dir::new(OwnedFd::from(dir))?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if matches!(entry.file_type(), rustix::fs::FileType::Directory | rustix::fs::FileType::Unknown) {
            return Err(io::Error::from(ErrorKind::DirectoryNotEmpty).into());
        }
        rustix::fs::unlinkat(entries.fd()?, name, AtFlags::empty())?;
        deadline.check()?;
    }
    Ok(())
}

/// What [`Sandbox::remove_within`] did.
#[derive(Debug)]
pub(crate) enum Removal {
    Done,
    /// The budget ran out first: the sandbox, partly emptied, still private
    /// and locked; removing it again goes on where this stopped.
    Unfinished(Sandbox),
}

fn removal_began() -> io::Error {
    io::Error::other("the sandbox is being removed")
}

/// One invocation's private folder. Remove it with [`Sandbox::close`] to see
/// the error; dropping it removes it too, logging a failure instead.
pub struct Sandbox {
    root: Arc<Dir>,
    name: String,
    path: PathBuf,
    dirs: Option<SandboxDirs>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// The sandbox folder's path, for logs and messages only: the folder is
    /// reached through its handle.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sandbox folder's name in its root.
    #[cfg(test)]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle to `input/`, the folder the guest reads from.
    ///
    /// # Errors
    ///
    /// Never after creation; the `Option` only exists for teardown.
    pub fn input_dir(&self) -> io::Result<&Dir> {
        self.dirs()?.input.as_ref().ok_or_else(removal_began)
    }

    /// A handle to `out/`, the folder the guest writes into.
    ///
    /// # Errors
    ///
    /// Never after creation; the `Option` only exists for teardown.
    pub fn output_dir(&self) -> io::Result<&Dir> {
        self.dirs()?.out.as_ref().ok_or_else(removal_began)
    }

    fn dirs(&self) -> io::Result<&SandboxDirs> {
        self.dirs.as_ref().ok_or_else(removal_began)
    }

    /// Removes the folder and everything in it, then releases the lock.
    ///
    /// # Errors
    ///
    /// When something inside cannot be removed; the lock is released anyway,
    /// so that a later sweep (`host sweep`, or the next `host run`) retries.
    pub fn close(mut self) -> io::Result<()> {
        self.teardown(Deadline::NONE).map_err(Stop::into_io)
    }

    /// Removes the sandbox, or as much of it as `budget` allows: a sandbox a
    /// guest filled with many entries can take seconds to remove, and the
    /// rest can then be left to another thread. Until it is gone the
    /// sandbox stays private and locked (no sweep takes it), and a later
    /// [`Sandbox::close`] or `remove_within` goes on where this stopped.
    ///
    /// # Errors
    ///
    /// As [`Sandbox::close`].
    pub(crate) fn remove_within(mut self, budget: Duration) -> io::Result<Removal> {
        let deadline = Deadline::after(budget);
        match self.teardown(deadline) {
            Ok(()) => Ok(Removal::Done),
            Err(Stop::OutOfTime) => Ok(Removal::Unfinished(self)),
            Err(Stop::Failed(err)) => Err(err),
        }
    }

    fn teardown(&mut self, deadline: Deadline) -> Result<(), Stop> {
        let Some(dirs) = self.dirs.as_mut() else { return Ok(()) };
        let started = Instant::now();
        let result = dirs.remove(&self.root, &self.name, deadline);
        if let Err(Stop::OutOfTime) = result {
            // Kept, lock and all, for the rest of the removal.
            tracing::debug!(path = %self.path.display(), elapsed = ?started.elapsed(), "sandbox removal paused");
            return result;
        }
        // Only now, with the folder gone (or given up on, for the sweep to
        // retry), may the lock go.
        self.dirs = None;
        result?;
        tracing::debug!(path = %self.path.display(), elapsed = ?started.elapsed(), "sandbox removed");
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(err) = self.teardown(Deadline::NONE) {
            tracing::error!(path = %self.path.display(), "cannot remove sandbox: {}; `host sweep` retries", err.into_io());
        }
    }
}

/// Whether `id` can name a tenant: 1-64 characters of `[A-Za-z0-9_-]` (it
/// becomes part of a folder name).
pub(crate) fn is_tenant_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use cap_std::fs::{Permissions, PermissionsExt as _};

    use super::*;
    use crate::fs::MAX_REMOVAL_DEPTH;

    fn scratch_root() -> (PathBuf, SandboxRoot) {
        let base = std::env::temp_dir().join(format!("sandbox-unit-{}", random_name().expect("rng")));
        let root = SandboxRoot::open(&base.join("root")).expect("root opens");
        (base, root)
    }

    fn entries(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn sandbox_is_private_and_gone_after_close() {
        let (base, root) = scratch_root();
        let sandbox = root.create().expect("create");
        let mode = std::fs::metadata(sandbox.path()).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        for sub in [INPUT_DIR, OUTPUT_DIR] {
            let mode = std::fs::metadata(sandbox.path().join(sub)).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{sub}");
        }
        let hex = sandbox.name().strip_prefix(NAME_PREFIX).expect("prefix");
        assert_eq!(hex.len(), 32);
        assert_eq!(entries(root.path()).len(), 1, "the folder alone: it is its own lock");
        // What a run leaves: the input, outputs, and a symlink (removed, never followed).
        let keep = base.join("outside");
        std::fs::write(&keep, b"keep").expect("outside file");
        sandbox.input_dir().expect("input").write("input.csv", b"a,b\n").expect("input");
        let out = sandbox.output_dir().expect("out");
        for name in ["summary.csv", "north_orders.csv"] {
            out.write(name, b"x").expect("output");
        }
        std::os::unix::fs::symlink(&keep, sandbox.path().join(OUTPUT_DIR).join("link")).expect("symlink");
        sandbox.close().expect("close");
        assert!(entries(root.path()).is_empty());
        assert_eq!(std::fs::read(&keep).expect("kept"), b"keep");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn removal_handles_deep_trees_odd_names_and_read_only_folders() {
        let (base, root) = scratch_root();
        let sandbox = root.create().expect("create");
        let out = sandbox.output_dir().and_then(Dir::try_clone).expect("out");
        let mut path = PathBuf::new();
        for _ in 0..3000 {
            path.push("d");
        }
        // Build the chain through handles: the full path is far beyond PATH_MAX.
        let mut current = out.try_clone().expect("clone");
        for _ in 0..3000 {
            current.create_dir("d").expect("mkdir");
            current = current.open_dir("d").expect("open");
        }
        current.write("leaf\nname", b"x").expect("leaf");
        for name in ["-rf", "...", "new\nline", &"a".repeat(255)] {
            out.write(name, b"x").expect("odd name");
        }
        out.create_dir("locked").expect("mkdir");
        out.write("locked/file", b"x").expect("write");
        out.set_permissions("locked", Permissions::from_mode(0o500)).expect("chmod");
        drop((out, current));
        sandbox.close().expect("close removes everything");
        assert!(entries(root.path()).is_empty());
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn an_unfinished_removal_stays_private_and_locked_and_resumes_where_it_stopped() {
        let (base, root) = scratch_root();
        let sandbox = root.create().expect("create");
        sandbox.input_dir().expect("input").write(INPUT_FILE, b"a,b\n").expect("input");
        let out = sandbox.output_dir().and_then(Dir::try_clone).expect("out");
        for i in 0..50 {
            out.write(format!("f{i}"), b"x").expect("file");
            out.create_dir(format!("d{i}")).expect("folder");
        }
        let mut current = out.try_clone().expect("clone");
        for _ in 0..(MAX_REMOVAL_DEPTH + 20) {
            current.create_dir("c").expect("mkdir");
            current = current.open_dir("c").expect("open");
        }
        drop((out, current));
        let path = sandbox.path().to_owned();

        let Removal::Unfinished(mut rest) = sandbox.remove_within(Duration::ZERO).expect("removal") else {
            panic!("a zero budget cannot remove 120 entries");
        };
        let mode = std::fs::metadata(&path).expect("still there").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "still private");
        let other = std::fs::File::open(&path).expect("open");
        let locked = rustix::fs::flock(&other, FlockOperation::NonBlockingLockExclusive);
        assert_eq!(locked, Err(rustix::io::Errno::WOULDBLOCK), "still locked by its owner");
        let sweep = root.sweep().expect("sweep");
        assert_eq!((sweep.removed.len(), sweep.live), (0, 1), "no sweep takes it");

        // Each call goes on where the last stopped: one step each, to the end.
        let mut calls = 1;
        loop {
            match rest.remove_within(Duration::ZERO).expect("removal") {
                Removal::Done => break,
                Removal::Unfinished(more) => rest = more,
            }
            calls += 1;
            assert!(calls < 10_000, "removal makes progress");
        }
        assert!(calls > 2, "it was removed in steps ({calls})");
        assert!(entries(root.path()).is_empty());
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn sweep_removes_dead_sandboxes_and_keeps_live_ones() {
        let (base, root) = scratch_root();
        let live = root.create().expect("live");
        let dead = root.create().expect("dead");
        let dead_name = dead.name().to_owned();
        // A dead owner: its handles closed (the lock with them), nothing removed.
        let mut dead = dead;
        dead.dirs = None;
        std::mem::forget(dead);
        let stray = root.path().join("not-a-sandbox");
        std::fs::create_dir(&stray).expect("stray");

        let sweep = root.sweep().expect("sweep");
        assert_eq!(sweep.removed, vec![dead_name]);
        assert_eq!(sweep.live, 1);
        assert!(sweep.failed.is_empty());
        assert!(live.path().is_dir(), "a live sandbox survives the sweep");
        assert!(stray.is_dir(), "entries that are not sandboxes are never touched");
        live.close().expect("close");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn tenants_get_their_own_folder_and_the_sweep_reaches_into_it() {
        let (base, root) = scratch_root();
        let tenant = root.tenant("acme_1").expect("tenant");
        assert!(root.tenant("../etc").is_err(), "tenant ids are plain names");
        assert!(root.tenant("").is_err());
        let dead = tenant.create().expect("create");
        let mut dead = dead;
        dead.dirs = None;
        std::mem::forget(dead);
        let sweep = root.sweep().expect("sweep");
        assert_eq!(sweep.removed.len(), 1);
        root.remove_empty_tenants().expect("tidy");
        assert!(entries(root.path()).is_empty());
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    fn is_root() -> bool {
        let root = rustix::process::getuid().is_root();
        if !root {
            println!("skipped: simulating another user's folder needs chown, so root");
        }
        root
    }

    fn scratch_base(name: &str) -> PathBuf {
        let base = std::env::temp_dir().join(format!("sandbox-unit-{name}-{}", random_name().expect("rng")));
        std::fs::create_dir_all(&base).expect("mkdir");
        base
    }

    fn candidate(path: PathBuf) -> Candidate {
        Candidate { path, private_memory_parent: false }
    }

    #[test]
    fn a_named_root_that_is_a_link_is_refused_and_not_followed() {
        let base = scratch_base("link");
        let target = base.join("elsewhere");
        std::fs::create_dir(&target).expect("target");
        std::os::unix::fs::symlink(&target, base.join("root")).expect("symlink");
        let err = SandboxRoot::open(&base.join("root")).expect_err("a link is no root");
        let message = err.to_string();
        assert!(
            message.contains("symbolic link") && message.contains("choose another RunnerConfig::sandbox_root"),
            "{message}"
        );
        assert!(!message.contains("chmod"), "chmod cannot help: {message}");
        assert!(entries(&target).is_empty(), "nothing was made through the link");
        std::fs::write(base.join("file"), b"").expect("file");
        let err = SandboxRoot::open(&base.join("file")).expect_err("a file is no root");
        assert!(err.to_string().contains("is not a folder"), "{err}");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn a_named_root_of_another_user_is_refused_with_advice_that_works() {
        if !is_root() {
            return;
        }
        let base = scratch_base("owner");
        let theirs = base.join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        let message = SandboxRoot::open(&theirs).expect_err("another user's root").to_string();
        assert!(message.contains("belongs to uid 65534"), "{message}");
        assert!(
            message.ends_with("choose another RunnerConfig::sandbox_root") && !message.contains("chmod"),
            "{message}"
        );
        let message = SandboxRoot::open_memory(&theirs).expect_err("another user's root").to_string();
        assert!(message.ends_with("choose another RunnerConfig::memory_root"), "{message}");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn a_default_root_of_another_user_gives_way_to_the_next_and_is_still_known_to_the_sweep() {
        if !is_root() {
            return;
        }
        let base = scratch_base("fallback");
        let taken = base.join("taken");
        std::fs::create_dir(&taken).expect("mkdir");
        std::os::unix::fs::chown(&taken, Some(65534), Some(65534)).expect("chown");
        let fallback = base.join("cache/orders-host-sandboxes");
        let root = open_first_private(&[candidate(taken.clone()), candidate(fallback.clone())], "sandbox root")
            .expect("the fallback");
        assert_eq!(root.path(), fallback);
        let mode = std::fs::metadata(&fallback).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        root.create().expect("a sandbox in the fallback").close().expect("close");
        assert!(entries(&taken).is_empty() && entries(&fallback).is_empty());

        // Once the first choice is ours again, its sweep still covers the fallback.
        std::os::unix::fs::chown(&taken, Some(0), Some(0)).expect("chown back");
        let root = open_first_private(&[candidate(taken.clone()), candidate(fallback.clone())], "sandbox root")
            .expect("the first choice");
        assert_eq!(root.path(), taken);
        let dead = fallback.join(random_name().expect("rng"));
        std::fs::create_dir_all(dead.join("out")).expect("a dead host's sandbox");
        let sweep = root.sweep().expect("sweep");
        assert_eq!(sweep.removed.len(), 1, "{sweep:?}");
        assert!(!dead.exists());
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn the_memory_fallback_needs_a_private_memory_backed_folder() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            println!("skipped: no /dev/shm");
            return;
        }
        let runtime = shm.join(format!("sandbox-unit-runtime-{}", random_name().expect("rng")));
        std::fs::create_dir(&runtime).expect("mkdir");
        let on_disk = scratch_base("runtime-on-disk");
        std::fs::set_permissions(&on_disk, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let candidates = |base: &Path| default_memory_candidates(None, Some(base.as_os_str().to_owned()));

        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let reasons = open_first_private(&candidates(&runtime), "memory root").expect_err("not private");
        assert!(reasons[0].contains("is not private"), "{reasons:?}");
        let reasons = open_first_private(&candidates(&on_disk), "memory root").expect_err("on disk");
        assert!(reasons[0].contains("not memory-backed"), "{reasons:?}");
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let root = open_first_private(&candidates(&runtime), "memory root").expect("private, on tmpfs");
        assert_eq!(root.path(), runtime.join("orders-host"));
        std::fs::remove_dir_all(runtime).expect("cleanup");
        std::fs::remove_dir_all(on_disk).expect("cleanup");
    }

    #[test]
    fn default_locations_follow_tmpdir_and_xdg() {
        let uid = rustix::process::getuid().as_raw();
        let paths = |xdg: Option<&str>, home: Option<&str>| -> Vec<PathBuf> {
            default_disk_candidates(Path::new("/t"), xdg.map(Into::into), home.map(Into::into))
                .into_iter()
                .map(|c| c.path)
                .collect()
        };
        let first = PathBuf::from(format!("/t/orders-host-{uid}"));
        assert_eq!(paths(Some("/x"), Some("/h")), [first.clone(), "/x/orders-host-sandboxes".into()]);
        assert_eq!(paths(Some("rel"), Some("/h")), [first.clone(), "/h/.cache/orders-host-sandboxes".into()]);
        assert_eq!(paths(None, None), [first]);
    }

    /// Fills `out` with `n` entries of one shape, through handles.
    fn fill(out: &Dir, shape: &str, n: usize) {
        match shape {
            "files" => {
                for i in 0..n {
                    out.write(format!("f{i}"), b"").expect("file");
                }
            }
            "flat folders" => {
                for i in 0..n {
                    out.create_dir(format!("d{i}")).expect("mkdir");
                }
            }
            "nested folders" => {
                let mut current = out.try_clone().expect("clone");
                for _ in 0..n {
                    current.create_dir("d").expect("mkdir");
                    current = current.open_dir("d").expect("open");
                }
            }
            _ => unreachable!("no such shape"),
        }
    }

    /// Not a test: prints how long removing a sandbox of each shape takes,
    /// on the disk root (the temp folder) and on tmpfs (`/dev/shm`), for the
    /// README's limits. Median of 3. Run with
    /// `cargo test -p orders-host --lib measure_removal -- --ignored --nocapture`
    /// (`MEASURE_SIZES=100,1000` to choose the sizes).
    #[test]
    #[ignore = "a measurement, not a test"]
    fn measure_removal() {
        let sizes: Vec<usize> = std::env::var("MEASURE_SIZES")
            .unwrap_or_else(|_| "100,1000,10000".to_owned())
            .split(',')
            .map(|n| n.trim().parse().expect("a size"))
            .collect();
        let bases = [("disk", std::env::temp_dir()), ("tmpfs", PathBuf::from("/dev/shm"))];
        println!("| root | shape | entries | removal (median of 3) | per entry |");
        println!("|---|---|---|---|---|");
        for (label, parent) in bases {
            let base = parent.join(format!("sandbox-measure-{}", random_name().expect("rng")));
            let root = SandboxRoot::open(&base).expect("root");
            for shape in ["files", "flat folders", "nested folders"] {
                for &n in &sizes {
                    let mut times = Vec::new();
                    for _ in 0..3 {
                        let sandbox = root.create().expect("create");
                        fill(sandbox.output_dir().expect("out"), shape, n);
                        let started = Instant::now();
                        sandbox.close().expect("close");
                        times.push(started.elapsed());
                    }
                    times.sort();
                    let median = times[1];
                    let per_entry = median.as_secs_f64() * 1e6 / n as f64;
                    println!("| {label} | {shape} | {n} | {median:.1?} | {per_entry:.1} µs |");
                }
            }
            std::fs::remove_dir_all(base).expect("cleanup");
        }
    }

    #[test]
    fn a_root_writable_by_others_is_refused() {
        let base = std::env::temp_dir().join(format!("sandbox-unit-{}", random_name().expect("rng")));
        std::fs::create_dir_all(&base).expect("mkdir");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = SandboxRoot::open(&base).expect_err("world-writable root");
        assert!(err.to_string().contains("not private"), "{err}");
        std::fs::remove_dir_all(base).expect("cleanup");
    }
}
