//! Private, throw-away folders: one per invocation, under one sandbox root.
//!
//! Layout of a root:
//!
//! ```text
//! <root>/                       0700, owned by this user
//!   sbx-<32 hex>.lock           0600, flock-ed by the owning process while it lives
//!   sbx-<32 hex>/               0700 from the mkdir itself
//!     input/                    0700, preopened read-only to the guest
//!     out/                      0700, preopened read-write to the guest
//!   tenant-<id>/                0700, a tenant's own root, laid out the same
//! ```
//!
//! The lock file is created and locked *before* the folder exists and removed
//! only *after* the folder is gone, so a folder whose lock can be taken has no
//! living owner: that is what [`SandboxRoot::sweep`] relies on, instead of
//! guessing from PIDs. Every operation below the root goes through `cap-std`
//! handles; the only path-based (ambient) step is opening the root itself, in
//! [`SandboxRoot::open`].

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cap_fs_ext::DirExt as _;
use cap_std::fs::{
    Dir, DirBuilder, DirBuilderExt as _, OpenOptions, OpenOptionsExt as _, Permissions, PermissionsExt as _,
};
use rustix::fs::{AtFlags, Mode, OFlags};

/// The folder the guest reads its input from.
pub const INPUT_DIR: &str = "input";
/// The folder the guest writes its outputs into.
pub const OUTPUT_DIR: &str = "out";

const NAME_PREFIX: &str = "sbx-";
const TENANT_PREFIX: &str = "tenant-";
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

    /// Creates a fresh sandbox: lock file first (created and locked), then the
    /// folder with mode 0700 from the `mkdir` itself, then `input/` and `out/`.
    ///
    /// # Errors
    ///
    /// When the OS RNG, the lock or any folder cannot be created.
    pub fn create(&self) -> io::Result<Sandbox> {
        let started = Instant::now();
        let (name, lock) = self.create_locked_name()?;
        let dirs = match self.make_sandbox_dirs(&name) {
            Ok(dirs) => dirs,
            Err(err) => {
                // Best effort: nothing of this half-made sandbox may stay.
                let _ = remove_tree(&self.dir, OsStr::new(&name));
                let _ = self.dir.remove_file(lock_name(&name));
                return Err(err);
            }
        };
        let sandbox =
            Sandbox { root: self.dir.clone(), path: self.path.join(&name), name, dirs: Some(dirs), lock: Some(lock) };
        tracing::debug!(path = %sandbox.path.display(), elapsed = ?started.elapsed(), "sandbox created");
        Ok(sandbox)
    }

    fn create_locked_name(&self) -> io::Result<(String, std::fs::File)> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true).mode(0o600);
        loop {
            let name = random_name()?;
            let lock = match self.dir.open_with(lock_name(&name), &options) {
                Ok(file) => file.into_std(),
                Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            };
            lock.try_lock().map_err(|err| io::Error::other(format!("cannot lock {}: {err}", lock_name(&name))))?;
            // A sweep may have taken the lock between our create and our lock
            // and unlinked the file; then the lock guards nothing: start over.
            if lock.metadata()?.nlink() > 0 {
                return Ok((name, lock));
            }
        }
    }

    fn make_sandbox_dirs(&self, name: &str) -> io::Result<SandboxDirs> {
        let builder = private_dir_builder();
        self.dir.create_dir_with(name, &builder)?;
        let top = self.dir.open_dir_nofollow(name)?;
        top.create_dir_with(INPUT_DIR, &builder)?;
        top.create_dir_with(OUTPUT_DIR, &builder)?;
        // Opened once, here, for everything that follows: copying the input
        // in, the guest's preopens, collecting and removing.
        let input = open_listable_dir(&top, INPUT_DIR)?;
        let out = open_listable_dir(&top, OUTPUT_DIR)?;
        Ok(SandboxDirs { top, input, out })
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
        for name in &locks {
            self.sweep_one(name, &mut sweep);
        }
        // A folder whose lock file was not in the listing: either its owner
        // died before locking (the lock is made first, so: never) or it was
        // created while we listed. Look again, by name, before touching it.
        for name in folders.iter().filter(|name| !locks.contains(name)) {
            self.sweep_one(name, &mut sweep);
        }
        Ok(sweep)
    }

    fn sweep_one(&self, name: &str, sweep: &mut Sweep) {
        let lock = match self.dir.open_with(lock_name(name), OpenOptions::new().read(true)) {
            Ok(file) => Some(file.into_std()),
            Err(err) if err.kind() == ErrorKind::NotFound => None,
            Err(err) => {
                sweep.failed.push((name.to_owned(), err));
                return;
            }
        };
        if let Some(lock) = &lock
            && lock.try_lock().is_err()
        {
            sweep.live += 1;
            return;
        }
        let removed = match remove_tree(&self.dir, OsStr::new(name)) {
            Ok(()) => true,
            Err(err) if err.kind() == ErrorKind::NotFound => false,
            Err(err) => {
                sweep.failed.push((name.to_owned(), err));
                return;
            }
        };
        if lock.is_some()
            && let Err(err) = self.dir.remove_file(lock_name(name))
            && err.kind() != ErrorKind::NotFound
        {
            sweep.failed.push((name.to_owned(), err));
            return;
        }
        if removed {
            tracing::info!(sandbox = name, "swept a sandbox whose owner is gone");
            sweep.removed.push(name.to_owned());
        }
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

fn lock_name(name: &str) -> String {
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

/// A sandbox folder and the two folders made in it, as created.
struct SandboxDirs {
    top: Dir,
    input: Dir,
    out: Dir,
}

impl SandboxDirs {
    /// Removes the contents of a sandbox laid out as it was created: plain
    /// entries in `input/` and `out/`, nothing else. Any surprise (a folder
    /// the guest made, an entry that will not go) is an error, after which
    /// the caller removes the folder with [`remove_tree`], which handles
    /// anything. The usual case thus costs a system call per entry.
    fn remove_contents(self) -> io::Result<()> {
        let Self { top, input, out } = self;
        remove_plain_entries(input)?;
        remove_plain_entries(out)?;
        top.remove_dir(INPUT_DIR)?;
        top.remove_dir(OUTPUT_DIR)
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
    lock: Option<std::fs::File>,
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

    /// Removes the folder and everything in it, then its lock file, and
    /// releases the lock.
    ///
    /// # Errors
    ///
    /// When something inside cannot be removed; the lock file is then kept, so
    /// that a later `host sweep` retries once this process is gone.
    pub fn close(mut self) -> io::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<()> {
        let Some(dirs) = self.dirs.take() else { return Ok(()) };
        let started = Instant::now();
        let removed = dirs.remove_contents().and_then(|()| self.root.remove_dir(&self.name));
        if let Err(err) = removed {
            tracing::debug!(path = %self.path.display(), "sandbox not as created ({err}): removing it entry by entry");
            remove_tree(&self.root, OsStr::new(&self.name))?;
        }
        self.root.remove_file(lock_name(&self.name))?;
        self.lock = None;
        tracing::debug!(path = %self.path.display(), elapsed = ?started.elapsed(), "sandbox removed");
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            tracing::error!(path = %self.path.display(), "cannot remove sandbox: {err}; `host sweep` retries once this process is gone");
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
        assert_eq!(entries(root.path()).len(), 2, "folder and lock");
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
        // A dead owner: its lock released without removing anything.
        let mut dead = dead;
        dead.lock = None;
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
        dead.lock = None;
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
