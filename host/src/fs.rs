//! The crate's one filesystem toolbox: private folders (the one place where a
//! path becomes a folder capability), owner-only modes as named constants,
//! files written whole or not at all, hex names, listing a folder on its own
//! offset, and removing a tree whatever a guest left in it.

use std::ffi::{OsStr, OsString};
use std::io::{self, ErrorKind, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::time::Instant;

use cap_fs_ext::DirExt as _;
use cap_std::fs::{
    Dir, DirBuilder, DirBuilderExt as _, OpenOptions, OpenOptionsExt as _, Permissions, PermissionsExt as _,
};
use rustix::fs::{AtFlags, Mode, OFlags};

/// The mode of every file the host makes: owner-only.
pub(crate) const PRIVATE_FILE: u32 = 0o600;
/// The mode of every folder the host makes: owner-only.
pub(crate) const PRIVATE_DIR: u32 = 0o700;

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    hex
}

/// A file written under a temporary name in its folder and renamed over
/// its real name once complete and flushed: a reader sees the old file or
/// the whole new one, never part of it. Dropped before [`AtomicFile::commit`],
/// the temporary file is removed.
pub(crate) struct AtomicFile<'a> {
    dir: &'a Dir,
    temp: String,
    file: Option<cap_std::fs::File>,
}

impl<'a> AtomicFile<'a> {
    /// Creates `<prefix><random hex>` in `dir`, owner-only.
    pub(crate) fn create(dir: &'a Dir, prefix: &str) -> io::Result<Self> {
        let temp = format!("{prefix}{}", random_hex()?);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true).mode(PRIVATE_FILE);
        let file = dir.open_with(&temp, &options)?;
        Ok(Self { dir, temp, file: Some(file) })
    }

    /// The file being written.
    pub(crate) fn file(&mut self) -> io::Result<&mut cap_std::fs::File> {
        self.file.as_mut().ok_or_else(|| io::Error::other("the file was already committed"))
    }

    /// Flushes the file and renames it over `name`.
    pub(crate) fn commit(mut self, name: &str) -> io::Result<()> {
        let mut file = self.file.take().ok_or_else(|| io::Error::other("the file was already committed"))?;
        file.flush()?;
        file.sync_all()?;
        drop(file);
        self.dir.rename(&self.temp, self.dir, name)?;
        self.temp.clear();
        Ok(())
    }
}

impl Drop for AtomicFile<'_> {
    fn drop(&mut self) {
        if !self.temp.is_empty()
            && let Err(err) = self.dir.remove_file(&self.temp)
            && err.kind() != ErrorKind::NotFound
        {
            tracing::error!(temp = self.temp, "cannot remove a file left unfinished: {err}");
        }
    }
}

pub(crate) fn private_dir_builder() -> DirBuilder {
    let mut builder = DirBuilder::new();
    builder.mode(PRIVATE_DIR);
    builder
}

// ---------------------------------------------------------------------------
// Ambient authority: every path that becomes a folder capability here (the
// sandbox roots, and the code cache's folder through `open_private_dir`)
// goes through `open_private`; below a root, everything is reached through
// its handle.
// ---------------------------------------------------------------------------

/// Why a folder cannot be used as a private root.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// It belongs to another user (who may have made it first, in a shared
    /// temp folder): whatever its mode, they could change it.
    Owner {
        owner: u32,
    },
    /// Its last component is a symbolic link: it may point anywhere, e.g.
    /// into another user's folder, and is never followed.
    Symlink,
    NotFolder,
    /// Ours, but group or others may write it (rename or replace sandboxes).
    TooOpen {
        mode: u32,
    },
    /// It does not exist (only when asked not to create it).
    Missing,
    Io(io::Error),
}

impl Refusal {
    /// What is wrong, to follow the folder's name in a message.
    pub(crate) fn reason(&self) -> String {
        let uid = rustix::process::getuid().as_raw();
        match self {
            Self::Owner { owner } => format!("is not private: it belongs to uid {owner}, not to you (uid {uid})"),
            Self::Symlink => "is not private: it is a symbolic link, which the host does not follow".to_owned(),
            Self::NotFolder => "is not a folder".to_owned(),
            Self::TooOpen { mode } => format!("is not private: group or others can write it (mode {mode:o})"),
            Self::Missing => "does not exist".to_owned(),
            Self::Io(err) => format!("cannot be opened: {err}"),
        }
    }

    /// The advice that works for this refusal of the folder at `path` that
    /// the user named: `chmod` only helps with a folder of one's own.
    pub(crate) fn remedy(&self, path: &Path, remedy: &str) -> String {
        match self {
            Self::TooOpen { .. } => format!("fix it with `chmod 700 {}`, or {remedy}", path.display()),
            _ => remedy.to_owned(),
        }
    }

    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Self::Io(err) => err.kind(),
            Self::Missing => ErrorKind::NotFound,
            Self::NotFolder => ErrorKind::NotADirectory,
            _ => ErrorKind::PermissionDenied,
        }
    }

    /// The error for a folder the user named: what is wrong, and what to do.
    pub(crate) fn into_error(self, what: &str, path: &Path, remedy: &str) -> io::Error {
        let message = format!("{what} {} {}; {}", path.display(), self.reason(), self.remedy(path, remedy));
        io::Error::new(self.kind(), message)
    }
}

impl From<io::Error> for Refusal {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

impl From<rustix::io::Errno> for Refusal {
    fn from(errno: rustix::io::Errno) -> Self {
        Self::Io(errno.into())
    }
}

/// Opens the folder `path` as a private root: created 0700 first when
/// `create` (with its missing parents), its last component opened without
/// following a link, relative to a handle on its parent, then checked on the
/// handle: a folder of this user that group and others cannot write. The
/// folder checked is so the folder used, whatever the path names later.
pub(crate) fn open_private(path: &Path, create: bool) -> Result<Dir, Refusal> {
    let Some(name) = path.file_name() else {
        // `/`, `.`, `..`: no last component that could be a link.
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        return check_private(fd);
    };
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if create {
        std::fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR).create(parent)?;
    }
    // The parent's links are followed: it is the user's own path (or the
    // temp folder); only the last component can have been planted by
    // someone else in a shared folder.
    let parent = match rustix::fs::open(parent, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) if !create => return Err(Refusal::Missing),
        Err(errno) => return Err(errno.into()),
    };
    open_private_at(&parent, name, create)
}

/// [`open_private`] of `name` in the folder `parent`.
pub(crate) fn open_private_at(parent: &OwnedFd, name: &OsStr, create: bool) -> Result<Dir, Refusal> {
    if create {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(PRIVATE_DIR)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => check_private(fd),
        Err(rustix::io::Errno::NOENT) if !create => Err(Refusal::Missing),
        // ELOOP for a link; ENOTDIR for a link (with O_DIRECTORY) or a file.
        Err(errno @ (rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)) => {
            match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink => {
                    Err(Refusal::Symlink)
                }
                Ok(_) => Err(Refusal::NotFolder),
                Err(_) => Err(errno.into()),
            }
        }
        Err(errno) => Err(errno.into()),
    }
}

pub(crate) fn check_private(fd: OwnedFd) -> Result<Dir, Refusal> {
    let stat = rustix::fs::fstat(&fd)?;
    let uid = rustix::process::getuid().as_raw();
    if stat.st_uid != uid {
        return Err(Refusal::Owner { owner: stat.st_uid });
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Refusal::TooOpen { mode });
    }
    Ok(Dir::from(fd))
}

/// Creates `path` (and missing parents) 0700 if needed and opens it, refusing
/// a folder that is not private (see [`open_private`]). `what` names the
/// folder and `remedy` ends the error message, e.g. "choose another cache
/// folder" (after "fix it with `chmod 700 ...`" when that would help).
pub(crate) fn open_private_dir(path: &Path, what: &str, remedy: &str) -> io::Result<Dir> {
    open_private(path, true).map_err(|refusal| refusal.into_error(what, path, remedy))
}

/// Opens `parent` if it may hold the memory-backed fallback root: a folder
/// of this user alone (as `$XDG_RUNTIME_DIR` must be), on tmpfs or ramfs (so
/// a spooled input still never touches the disk).
pub(crate) fn private_memory_folder(parent: &Path) -> Result<OwnedFd, String> {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    let fd = rustix::fs::open(parent, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|errno| format!("cannot be opened: {errno}"))?;
    let stat = rustix::fs::fstat(&fd).map_err(|errno| format!("cannot be checked: {errno}"))?;
    let uid = rustix::process::getuid().as_raw();
    if stat.st_uid != uid || stat.st_mode & 0o077 != 0 {
        return Err(format!("is not private (owner uid {}, mode {:o})", stat.st_uid, stat.st_mode & 0o7777));
    }
    let fs = rustix::fs::fstatfs(&fd).map_err(|errno| format!("cannot be checked: {errno}"))?;
    // f_type is signed on some targets; the magic numbers are its bits.
    let magic = u64::from(fs.f_type as u32);
    if magic != TMPFS_MAGIC && magic != RAMFS_MAGIC {
        return Err("is not memory-backed (tmpfs)".to_owned());
    }
    Ok(fd)
}

/// 128 bits from the OS RNG, as 32 lowercase hex digits.
pub(crate) fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|err| io::Error::other(format!("the OS random number generator failed: {err}")))?;
    Ok(hex(&bytes))
}

/// Opens the folder `name` in `parent` with a handle that can also be
/// listed (cap-std's `open_dir` gives an `O_PATH` handle, which cannot).
pub(crate) fn open_listable_dir(parent: &Dir, name: &str) -> io::Result<Dir> {
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

/// Why a removal within a deadline stopped before the end.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The deadline passed; what is left is a tree like any other, that a
    /// later call removes.
    OutOfTime,
    Failed(io::Error),
}

impl From<io::Error> for Stop {
    fn from(err: io::Error) -> Self {
        Self::Failed(err)
    }
}

impl From<rustix::io::Errno> for Stop {
    fn from(errno: rustix::io::Errno) -> Self {
        Self::Failed(errno.into())
    }
}

impl Stop {
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            Self::Failed(err) => err,
            Self::OutOfTime => io::Error::new(ErrorKind::TimedOut, "the removal ran out of time"),
        }
    }
}

/// When a removal must stop; `None`: never.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    pub(crate) const NONE: Self = Self(None);

    /// `budget` from now.
    pub(crate) fn after(budget: std::time::Duration) -> Self {
        Self(Instant::now().checked_add(budget))
    }

    /// Checked after each step, never before the first: every call makes
    /// progress, however short its budget.
    pub(crate) fn check(self) -> Result<(), Stop> {
        match self.0 {
            Some(deadline) if Instant::now() >= deadline => Err(Stop::OutOfTime),
            _ => Ok(()),
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
    remove_tree_within(parent, name, &mut 0, Deadline::NONE).map_err(Stop::into_io)
}

/// [`remove_tree`], stopping once `deadline` passed. Every step only removes
/// an entry or moves one up within the tree, so whatever state it stops in
/// is a tree that a later call removes the same way: removal resumes by
/// starting over on what is left. `fresh` carries the flattening names
/// already used from one call to the next.
pub(crate) fn remove_tree_within(parent: &Dir, name: &OsStr, fresh: &mut u64, deadline: Deadline) -> Result<(), Stop> {
    match parent.symlink_metadata(name) {
        Ok(meta) if !meta.is_dir() => return Ok(parent.remove_file(name)?),
        Ok(_) => {}
        Err(err) => return Err(err.into()),
    }
    let top = parent.open_dir_nofollow(name)?;
    empty_dir(&top, 0, fresh, deadline)?;
    drop(top);
    Ok(retry_writable(parent, Path::new("."), || parent.remove_dir(name))?)
}

/// Folders that removal descends into with its own handle; deeper ones are
/// flattened instead.
pub(crate) const MAX_REMOVAL_DEPTH: usize = 16;

/// Removes everything in `dir`: one pass over its entries, repeated only
/// when a flattened folder moved new entries in.
pub(crate) fn empty_dir(dir: &Dir, depth: usize, fresh: &mut u64, deadline: Deadline) -> Result<(), Stop> {
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
                deadline.check()?;
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
                    empty_dir(&sub, depth + 1, fresh, deadline)?;
                    drop(sub);
                    dir.remove_dir(&entry)?;
                }
                Err(err) if err.kind() == ErrorKind::DirectoryNotEmpty => {
                    hoist_children(dir, &entry, fresh, deadline)?;
                    hoisted = true;
                }
                Err(err) if err.kind() == ErrorKind::PermissionDenied => {
                    make_writable(dir, Path::new("."))?;
                    dir.remove_dir(&entry)?;
                }
                Err(err) => return Err(err.into()),
            }
            deadline.check()?;
        }
        if !hoisted {
            return Ok(());
        }
    }
}

/// Moves every entry of `top/child` into `top` under names no entry has.
pub(crate) fn hoist_children(top: &Dir, child: &OsStr, fresh: &mut u64, deadline: Deadline) -> Result<(), Stop> {
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
                Err(err) => return Err(err.into()),
                Ok(_) => {}
            }
        };
        sub.rename(&grandchild, top, &target)?;
        deadline.check()?;
    }
    Ok(())
}

pub(crate) fn make_writable(dir: &Dir, path: &Path) -> io::Result<()> {
    dir.set_permissions(path, Permissions::from_mode(PRIVATE_DIR))
}

pub(crate) fn retry_writable(dir: &Dir, folder: &Path, mut op: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    match op() {
        Err(err) if err.kind() == ErrorKind::PermissionDenied => {
            make_writable(dir, folder)?;
            op()
        }
        other => other,
    }
}
