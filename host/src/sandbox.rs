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
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cap_fs_ext::DirExt as _;
use cap_std::fs::{Dir, DirBuilder, DirBuilderExt as _, OpenOptions, Permissions, PermissionsExt as _};
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};

/// The folder the guest reads its input from.
pub const INPUT_DIR: &str = "input";
/// The input, in [`INPUT_DIR`]: the only entry there (the guest cannot write
/// to that folder).
pub const INPUT_FILE: &str = "input.csv";
/// The folder the guest writes its outputs into.
pub const OUTPUT_DIR: &str = "out";

const NAME_PREFIX: &str = "sbx-";
const TENANT_PREFIX: &str = "tenant-";
/// The suffix of the lock files an earlier layout kept beside each sandbox;
/// the sweep still honours and removes them.
const LOCK_SUFFIX: &str = ".lock";
/// Hex digits of randomness in a sandbox name: 128 bits from the OS RNG.
const NAME_HEX_DIGITS: usize = 32;

fn private_dir_builder() -> DirBuilder {
    let mut builder = DirBuilder::new();
    builder.mode(0o700);
    builder
}

/// Creates `path` (and missing parents) 0700 if needed and opens it, refusing
/// a folder that is not private: owned by another user, or writable by group
/// or others. `what` names the folder and `remedy` ends the error message
/// ("fix it with `chmod 700`, or {remedy}").
///
/// Ambient authority: this turns a path into a capability; callers reach
/// everything below the folder through the returned handle. The check is made
/// on the opened handle, so the folder checked is the folder used.
pub(crate) fn open_private_dir(path: &Path, what: &str, remedy: &str) -> io::Result<Dir> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
    let meta = dir.dir_metadata()?;
    let uid = rustix::process::getuid().as_raw();
    let mode = cap_std::fs::MetadataExt::mode(&meta);
    let owner = cap_std::fs::MetadataExt::uid(&meta);
    if owner != uid || mode & 0o022 != 0 {
        return Err(io::Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{what} {} is not private (owner uid {owner}, mode {:o}); it must belong to uid {uid} \
                 and not be writable by others: fix it with `chmod 700`, or {remedy}",
                path.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(dir)
}

/// The folder that holds every sandbox of this user (or of one tenant).
#[derive(Clone)]
pub struct SandboxRoot {
    dir: Arc<Dir>,
    path: PathBuf,
}

impl fmt::Debug for SandboxRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxRoot").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SandboxRoot {
    /// The default root: `orders-host-<uid>` in the system temp folder.
    #[must_use]
    pub fn default_path() -> PathBuf {
        std::env::temp_dir().join(format!("orders-host-{}", rustix::process::getuid().as_raw()))
    }

    /// The default memory-backed root, for spooled inputs:
    /// `/dev/shm/orders-host-<uid>`, where `/dev/shm` exists.
    #[must_use]
    pub fn default_memory_path() -> Option<PathBuf> {
        let shm = Path::new("/dev/shm");
        shm.is_dir().then(|| shm.join(format!("orders-host-{}", rustix::process::getuid().as_raw())))
    }

    /// Opens the root at `path`, creating it (and missing parents) 0700.
    ///
    /// This is the one place where the sandbox code uses ambient authority: a
    /// path is turned into a capability, and everything below goes through it.
    ///
    /// # Errors
    ///
    /// When the folder cannot be created or opened, or when it is not private:
    /// owned by another user, or writable by group or others (anyone who can
    /// write the root could rename or replace a sandbox in it).
    pub fn open(path: &Path) -> io::Result<Self> {
        let dir = open_private_dir(path, "sandbox root", "choose another --sandbox-root")?;
        Ok(Self { dir: Arc::new(dir), path: path.to_owned() })
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
        Ok(Self { dir: Arc::new(dir), path: self.path.join(name) })
    }

    /// Removes the tenant folders that hold nothing (after a shutdown).
    ///
    /// # Errors
    ///
    /// When the root cannot be listed.
    pub fn remove_empty_tenants(&self) -> io::Result<()> {
        for entry in self.dir.entries()? {
            let name = entry?.file_name();
            let is_tenant = name.to_str().and_then(|n| n.strip_prefix(TENANT_PREFIX)).is_some_and(is_tenant_id);
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
    pub fn create(&self) -> io::Result<Sandbox> {
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
        let mut locks = Vec::new();
        let mut tenants = Vec::new();
        for entry in self.dir.entries()? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else { continue };
            if let Some(sandbox) = name.strip_suffix(LOCK_SUFFIX).filter(|s| is_sandbox_name(s)) {
                locks.push(sandbox.to_owned());
            } else if is_sandbox_name(name) {
                folders.push(name.to_owned());
            } else if name.strip_prefix(TENANT_PREFIX).is_some_and(is_tenant_id) {
                tenants.push(name.to_owned());
            }
        }
        for name in tenants {
            let tenant =
                self.dir.open_dir_nofollow(&name).map(|dir| Self { dir: Arc::new(dir), path: self.path.join(&name) });
            match tenant.and_then(|tenant| tenant.sweep()) {
                Ok(inner) => sweep.absorb(inner),
                Err(err) => sweep.failed.push((name, err)),
            }
        }
        for name in &folders {
            self.sweep_one(name, &mut sweep);
        }
        // Lock files of an earlier layout, whose folder is gone.
        for name in locks.iter().filter(|name| !folders.contains(name)) {
            if legacy_lock_is_free(&self.dir, name).unwrap_or(false) {
                let _ = self.dir.remove_file(legacy_lock_name(name));
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
        let free = match rustix::fs::flock(&top, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => legacy_lock_is_free(&self.dir, name),
            Err(errno) => Err(io::Error::from(errno)),
        };
        match free {
            Ok(true) => {}
            Ok(false) => {
                sweep.live += 1;
                return;
            }
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
                let _ = self.dir.remove_file(legacy_lock_name(name));
                tracing::info!(sandbox = name, "swept a sandbox whose owner is gone");
                sweep.removed.push(name.to_owned());
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => sweep.failed.push((name.to_owned(), err)),
        }
    }
}

/// Whether the lock file an earlier layout kept beside sandbox `name` is
/// absent or not held by a living process.
fn legacy_lock_is_free(root: &Dir, name: &str) -> io::Result<bool> {
    match root.open_with(legacy_lock_name(name), OpenOptions::new().read(true)) {
        Ok(file) => Ok(file.into_std().try_lock().is_ok()),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(true),
        Err(err) => Err(err),
    }
}

/// What [`SandboxRoot::sweep`] did.
#[derive(Debug, Default)]
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

/// 128 bits from the OS RNG, as 32 lowercase hex digits.
pub(crate) fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; NAME_HEX_DIGITS / 2];
    getrandom::fill(&mut bytes)
        .map_err(|err| io::Error::other(format!("the OS random number generator failed: {err}")))?;
    let mut name = String::with_capacity(NAME_HEX_DIGITS);
    for byte in bytes {
        name.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        name.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    Ok(name)
}

fn is_sandbox_name(name: &str) -> bool {
    name.strip_prefix(NAME_PREFIX)
        .is_some_and(|hex| hex.len() == NAME_HEX_DIGITS && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_tenant_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn legacy_lock_name(name: &str) -> String {
    format!("{name}{LOCK_SUFFIX}")
}

/// Opens the folder `name` in `parent` with a handle that can also be
/// listed (cap-std's `open_dir` gives an `O_PATH` handle, which cannot).
fn open_listable_dir(parent: &Dir, name: &str) -> io::Result<Dir> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(Dir::from(rustix::fs::openat(parent, name, flags, Mode::empty())?))
}

/// A reader of `dir`'s entries, on an open file description of its own, so
/// listing never moves the offset of `dir` or of the guest's copies of it.
///
/// # Errors
///
/// When the folder cannot be opened for reading.
pub(crate) fn list_dir(dir: &Dir) -> io::Result<rustix::fs::Dir> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::Dir::new(rustix::fs::openat(dir, ".", flags, Mode::empty())?)?)
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
    Ok(SandboxDirs { top, input, out })
}

/// A sandbox folder (its handle holds the lock) and the two folders made in
/// it, as created.
struct SandboxDirs {
    top: Dir,
    input: Dir,
    out: Dir,
}

impl SandboxDirs {
    /// Removes the sandbox `name` of `root` (this one), then releases its
    /// lock. A sandbox laid out as it was created (the input in `input/`,
    /// plain entries in `out/`, nothing else) is removed by name, a system
    /// call per entry;
    /// on any surprise (a folder the guest made, an entry that will not go)
    /// [`remove_tree`] takes over, which handles anything.
    fn remove(self, root: &Dir, name: &str) -> io::Result<()> {
        let Self { top, input, out } = self;
        // The input folder's one entry is known: no listing.
        let quick = match input.remove_file(INPUT_FILE) {
            Err(err) if err.kind() != ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        };
        drop(input);
        let quick = quick
            .and_then(|()| remove_plain_entries(out))
            .and_then(|()| top.remove_dir(INPUT_DIR))
            .and_then(|()| top.remove_dir(OUTPUT_DIR))
            .and_then(|()| root.remove_dir(name));
        if let Err(err) = quick {
            tracing::debug!(sandbox = name, "sandbox not as created ({err}): removing it entry by entry");
            remove_tree(root, OsStr::new(name))?;
        }
        // Only now, with the folder gone, may the lock go.
        drop(top);
        Ok(())
    }
}

/// Unlinks every entry of `dir` that is not a folder; fails on a folder.
fn remove_plain_entries(dir: Dir) -> io::Result<()> {
    let mut entries = rustix::fs::Dir::new(OwnedFd::from(dir))?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if matches!(entry.file_type(), rustix::fs::FileType::Directory | rustix::fs::FileType::Unknown) {
            return Err(io::Error::from(ErrorKind::DirectoryNotEmpty));
        }
        rustix::fs::unlinkat(entries.fd()?, name, AtFlags::empty())?;
    }
    Ok(())
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
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle to the sandbox folder.
    ///
    /// # Errors
    ///
    /// Never after creation; the `Option` only exists for teardown.
    pub fn dir(&self) -> io::Result<&Dir> {
        self.dirs().map(|dirs| &dirs.top)
    }

    /// A handle to `input/`, the folder the guest reads from.
    ///
    /// # Errors
    ///
    /// Never after creation; the `Option` only exists for teardown.
    pub fn input_dir(&self) -> io::Result<&Dir> {
        self.dirs().map(|dirs| &dirs.input)
    }

    /// A handle to `out/`, the folder the guest writes into.
    ///
    /// # Errors
    ///
    /// Never after creation; the `Option` only exists for teardown.
    pub fn output_dir(&self) -> io::Result<&Dir> {
        self.dirs().map(|dirs| &dirs.out)
    }

    fn dirs(&self) -> io::Result<&SandboxDirs> {
        self.dirs.as_ref().ok_or_else(|| io::Error::other("the sandbox was already removed"))
    }

    /// Removes the folder and everything in it, then releases the lock.
    ///
    /// # Errors
    ///
    /// When something inside cannot be removed; the lock is released anyway,
    /// so that a later sweep (`host sweep`, or the next `host run`) retries.
    pub fn close(mut self) -> io::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<()> {
        let Some(dirs) = self.dirs.take() else { return Ok(()) };
        let started = Instant::now();
        dirs.remove(&self.root, &self.name)?;
        tracing::debug!(path = %self.path.display(), elapsed = ?started.elapsed(), "sandbox removed");
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            tracing::error!(path = %self.path.display(), "cannot remove sandbox: {err}; `host sweep` retries");
        }
    }
}

/// Removes `parent/name` and everything below it, whatever a guest left there:
/// folder chains thousands deep, many files, odd names, read-only folders.
///
/// It recurses only [`MAX_REMOVAL_DEPTH`] folders deep, holding one handle per
/// level, and never builds long paths; below that, a non-empty folder's
/// children are moved up (under fresh names, never replacing anything) and
/// removed from there, so any depth is removed with bounded handles and stack.
pub(crate) fn remove_tree(parent: &Dir, name: &OsStr) -> io::Result<()> {
    match parent.symlink_metadata(name) {
        Ok(meta) if !meta.is_dir() => return parent.remove_file(name),
        Ok(_) => {}
        Err(err) => return Err(err),
    }
    let top = parent.open_dir_nofollow(name)?;
    empty_dir(&top, 0, &mut 0)?;
    drop(top);
    retry_writable(parent, Path::new("."), || parent.remove_dir(name))
}

/// Folders that removal descends into with its own handle; deeper ones are
/// flattened instead.
const MAX_REMOVAL_DEPTH: usize = 16;

/// Removes everything in `dir`: one pass over its entries, repeated only
/// when a flattened folder moved new entries in.
fn empty_dir(dir: &Dir, depth: usize, fresh: &mut u64) -> io::Result<()> {
    loop {
        let mut entries = Vec::new();
        for entry in dir.entries()? {
            let entry = entry?;
            entries.push((entry.file_name(), entry.file_type()?.is_dir()));
        }
        let mut hoisted = false;
        for (entry, is_dir) in entries {
            if !is_dir {
                retry_writable(dir, Path::new("."), || dir.remove_file(&entry))?;
                continue;
            }
            // Descend at once while handles are cheap; deeper, try the
            // removal first (an empty folder needs no handle).
            let attempt = if depth < MAX_REMOVAL_DEPTH {
                Err(io::Error::from(ErrorKind::DirectoryNotEmpty))
            } else {
                dir.remove_dir(&entry)
            };
            match attempt {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::DirectoryNotEmpty && depth < MAX_REMOVAL_DEPTH => {
                    let sub = match dir.open_dir_nofollow(&entry) {
                        Err(err) if err.kind() == ErrorKind::PermissionDenied => {
                            make_writable(dir, Path::new(&entry))?;
                            dir.open_dir_nofollow(&entry)?
                        }
                        other => other?,
                    };
                    empty_dir(&sub, depth + 1, fresh)?;
                    drop(sub);
                    dir.remove_dir(&entry)?;
                }
                Err(err) if err.kind() == ErrorKind::DirectoryNotEmpty => {
                    hoist_children(dir, &entry, fresh)?;
                    hoisted = true;
                }
                Err(err) if err.kind() == ErrorKind::PermissionDenied => {
                    make_writable(dir, Path::new("."))?;
                    dir.remove_dir(&entry)?;
                }
                Err(err) => return Err(err),
            }
        }
        if !hoisted {
            return Ok(());
        }
    }
}

/// Moves every entry of `top/child` into `top` under names no entry has.
fn hoist_children(top: &Dir, child: &OsStr, fresh: &mut u64) -> io::Result<()> {
    // A read-only folder cannot give its entries away.
    make_writable(top, Path::new(child))?;
    let sub = top.open_dir_nofollow(child)?;
    let names: Vec<OsString> = sub.entries()?.map(|entry| entry.map(|e| e.file_name())).collect::<io::Result<_>>()?;
    for grandchild in names {
        let target = loop {
            *fresh += 1;
            let candidate = format!(".removing-{fresh}");
            match top.symlink_metadata(&candidate) {
                Err(err) if err.kind() == ErrorKind::NotFound => break candidate,
                Err(err) => return Err(err),
                Ok(_) => {}
            }
        };
        sub.rename(&grandchild, top, &target)?;
    }
    Ok(())
}

fn make_writable(dir: &Dir, path: &Path) -> io::Result<()> {
    dir.set_permissions(path, Permissions::from_mode(0o700))
}

fn retry_writable(dir: &Dir, folder: &Path, mut op: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    match op() {
        Err(err) if err.kind() == ErrorKind::PermissionDenied => {
            make_writable(dir, folder)?;
            op()
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

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
    fn the_sweep_honours_and_removes_lock_files_of_the_earlier_layout() {
        let (base, root) = scratch_root();
        let name = random_name().expect("rng");
        std::fs::create_dir(root.path().join(&name)).expect("folder");
        let lock_path = root.path().join(legacy_lock_name(&name));
        let lock = std::fs::File::create(&lock_path).expect("lock file");
        lock.try_lock().expect("held by a living old host");
        let orphan = root.path().join(legacy_lock_name(&random_name().expect("rng")));
        std::fs::write(&orphan, b"").expect("orphan lock file");

        let sweep = root.sweep().expect("sweep");
        assert_eq!((sweep.removed.len(), sweep.live), (0, 1), "a held lock file keeps its folder");
        assert!(!orphan.exists(), "a free lock file without a folder goes");
        drop(lock);
        let sweep = root.sweep().expect("sweep");
        assert_eq!(sweep.removed, vec![name]);
        assert!(entries(root.path()).is_empty(), "folder and lock file are gone");
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
