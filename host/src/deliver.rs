//! Delivering the collected outputs: to a folder, a tar archive or memory,
//! each output hashed (SHA-256) on the way.
//!
//! Delivery to a folder is atomic: the files are written into a private
//! staging folder beside the destination, then renamed into place; on any
//! failure the destination is untouched. Delivery opens one output at a
//! time, checks on the handle that it is still the file that was listed
//! (device, inode, size, one link), delivers it and closes it. A folder
//! delivery overlaps hashing on the CPU with flushing to the disk on
//! [`FLUSHERS`] + [`HASHERS`] threads, each with one output open at a time
//! (outputs copied across filesystems are copied one at a time first, two
//! descriptors each); the other destinations take one output at a time.

use std::fs::File;
use std::io::{self, BufWriter, ErrorKind, Read, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use cap_std::fs::Dir;
use rustix::fs::{Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::cancel::Cancel;
use crate::collect::{Collected, Listed, OutputFile, identity, open_beneath};
use crate::error::{DeliveryError, RunError};
use crate::fs::{AtomicFile, PRIVATE_DIR, PRIVATE_FILE, hex, random_hex, remove_tree};
use crate::text::shown;

/// Below this much output, and this many outputs, one thread delivers them:
/// starting threads would cost more than they save. Past either, flushing in
/// parallel pays: 2,000 small outputs flushed one after the other took 5-7 s
/// on the 2-core development VM, on four flushers about 0.5 s.
const PARALLEL_BYTES: u64 = 1 << 20;
const PARALLEL_FILES: usize = 8;

/// The largest read buffer of one delivering thread.
const BUFFER_BYTES: u64 = 256 * 1024;

/// Where the outputs of a run go.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Destination {
    /// A folder, created 0700 with files 0600. An existing non-empty folder
    /// is replaced only with `force`, atomically.
    Folder {
        /// The folder.
        path: PathBuf,
        /// Replace an existing non-empty folder.
        force: bool,
    },
    /// Returned in memory, as (name, contents) pairs.
    Memory,
    /// Returned in memory when the outputs come to at most `max_bytes`
    /// together, else delivered into the folder at `path` as
    /// [`Destination::Folder`] does: small results cost no file, large
    /// ones no memory. The folder is checked only when a result goes
    /// there, after the run.
    MemoryOrFolder {
        /// The most output bytes, all outputs together, kept in memory.
        max_bytes: u64,
        /// The folder for larger results.
        path: PathBuf,
        /// Replace an existing non-empty folder.
        force: bool,
    },
    /// One tar archive (files 0600), written beside `path` and renamed into
    /// place; an existing file is replaced only with `force`.
    Tar {
        /// The archive.
        path: PathBuf,
        /// Replace an existing archive.
        force: bool,
    },
}

/// What was delivered where.
#[derive(Debug)]
#[non_exhaustive]
pub enum Delivered {
    /// Into this folder.
    Folder(PathBuf),
    /// In memory: each output's name and contents.
    Memory(Vec<(String, Vec<u8>)>),
    /// Into this archive.
    Tar(PathBuf),
}

/// Reads exactly the size an output was checked at, hashing it on the way.
/// A file that ends early or goes on is an error, never short or extra data:
/// a tar entry gets exactly the bytes its header announces.
struct Checked<'a, R> {
    source: R,
    name: &'a str,
    left: u64,
    hasher: Sha256,
}

impl<'a, R: Read> Checked<'a, R> {
    fn new(source: R, listed: &'a Listed) -> Self {
        Self { source, name: &listed.file.name, left: listed.file.bytes, hasher: Sha256::new() }
    }

    /// The hex SHA-256 of what was read.
    fn finish(self) -> String {
        hex(self.hasher.finalize().as_slice())
    }
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // At the checked size the file must end.
            let mut probe = [0u8; 1];
            return match self.source.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(format!("`{}` grew after it was checked", shown(self.name)))),
            };
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.source.read(&mut buf[..want])?;
        if read == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("`{}` ended {} bytes short of the size it was checked at", shown(self.name), self.left),
            ));
        }
        self.hasher.update(&buf[..read]);
        self.left -= read as u64;
        Ok(read)
    }
}

/// Copies all of `source` to `target` through `buffer`, retrying reads that
/// a signal interrupted.
fn pump(source: &mut impl Read, target: &mut impl io::Write, buffer: &mut [u8]) -> io::Result<()> {
    loop {
        match source.read(buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => target.write_all(&buffer[..read])?,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// A read buffer for outputs of `bytes` in all: sized to them, so a small
/// delivery does not cost a large zeroed buffer.
fn read_buffer(bytes: u64) -> Vec<u8> {
    vec![0u8; usize::try_from(bytes.saturating_add(1).clamp(512, BUFFER_BYTES)).unwrap_or(4096)]
}

/// Now, as the kernel's clock says it when it sets them: the times every
/// delivered file carries, whatever times the guest gave its files.
fn host_now() -> Timestamps {
    let now = Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW };
    Timestamps { last_access: now, last_modification: now }
}

/// Checks before a run that `destination` can take the outputs, so a run
/// is not wasted on a folder that would be refused afterwards.
///
/// # Errors
///
/// [`RunError::Delivery`] when the folder exists and is not empty (without
/// `force`), or is not a folder.
pub fn check_destination(destination: &Destination) -> Result<(), RunError> {
    match destination {
        // A result's size is known only after the run: its folder is
        // checked when it is delivered there.
        Destination::Memory | Destination::MemoryOrFolder { .. } => Ok(()),
        Destination::Folder { path, force } => {
            let (parent, name) = split_destination(path)?;
            existing_destination(&open_parent(&parent, path)?, name, path, *force).map(drop)
        }
        Destination::Tar { path, force } => {
            let (parent, name) = split_destination(path)?;
            check_tar_destination(&open_parent(&parent, path)?, name, path, *force)
        }
    }
}

/// Delivers the collected `files` (from the guest's output folder `out`) to
/// `destination`, and returns them with their SHA-256. Without `sync`, a
/// folder delivery leaves its files and folders unflushed (see
/// [`crate::Invocation::sync_outputs`]).
///
/// # Errors
///
/// [`RunError::Delivery`] with the reason; nothing is left at the destination.
pub(crate) fn deliver(
    collected: Collected,
    out: &Dir,
    destination: &Destination,
    sync: bool,
    cancel: &Cancel,
) -> Result<(Delivered, Vec<OutputFile>), RunError> {
    let Collected { files, folders } = collected;
    match destination {
        Destination::Memory => deliver_to_memory(files, out, cancel),
        Destination::MemoryOrFolder { max_bytes, .. }
            if files
                .iter()
                .try_fold(0u64, |sum, listed| sum.checked_add(listed.file.bytes))
                .is_some_and(|total| total <= *max_bytes) =>
        {
            deliver_to_memory(files, out, cancel)
        }
        Destination::Folder { path, force } | Destination::MemoryOrFolder { path, force, .. } => {
            deliver_to_folder(&files, &folders, out, path, *force, sync, cancel)
                .map(|hashed| (Delivered::Folder(path.clone()), hashed))
        }
        Destination::Tar { path, force } => deliver_to_tar(&files, &folders, out, path, *force, cancel)
            .map(|hashed| (Delivered::Tar(path.clone()), hashed)),
    }
}

fn deliver_to_memory(files: Vec<Listed>, out: &Dir, cancel: &Cancel) -> Result<(Delivered, Vec<OutputFile>), RunError> {
    let mut delivered = Vec::with_capacity(files.len());
    let mut hashed = Vec::with_capacity(files.len());
    for listed in files {
        cancel.check().map_err(|err| RunError::Host(err.to_string()))?;
        let (contents, sha256) = read_whole(&listed, out)
            .map_err(|err| RunError::Host(format!("cannot read the output `{}`: {err}", shown(&listed.file.name))))?;
        hashed.push(OutputFile { sha256, ..listed.file.clone() });
        delivered.push((listed.file.name, contents));
    }
    Ok((Delivered::Memory(delivered), hashed))
}

/// One output's contents and SHA-256, read through a checked handle.
fn read_whole(listed: &Listed, out: &Dir) -> io::Result<(Vec<u8>, String)> {
    let capacity = usize::try_from(listed.file.bytes).map_err(io::Error::other)?;
    let mut contents = Vec::with_capacity(capacity);
    let mut checked = Checked::new(listed.open_in(out)?, listed);
    checked.read_to_end(&mut contents)?;
    Ok((contents, checked.finish()))
}

fn split_destination(path: &Path) -> Result<(PathBuf, &str), RunError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| RunError::Delivery { path: path.to_owned(), reason: DeliveryError::BadName })?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Opens the destination's parent. Ambient authority, for the user's own
/// path: the one place where delivery turns a path into a capability, once
/// per delivery, so the folder checked is the folder delivered into.
fn open_parent(parent: &Path, path: &Path) -> Result<Dir, RunError> {
    Dir::open_ambient_dir(parent, cap_std::ambient_authority()).map_err(|source| RunError::Delivery {
        path: path.to_owned(),
        reason: DeliveryError::Parent { parent: parent.to_owned(), source },
    })
}

/// `Ok(None)` when the destination `name` in `parent` does not exist,
/// `Ok(Some(empty))` when it is a folder that may be replaced.
fn existing_destination(parent: &Dir, name: &str, path: &Path, force: bool) -> Result<Option<bool>, RunError> {
    let refuse = |reason: DeliveryError| RunError::Delivery { path: path.to_owned(), reason };
    match parent.symlink_metadata(name) {
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(refuse(err.into())),
        Ok(meta) if !meta.is_dir() => Err(refuse(DeliveryError::NotAFolder)),
        Ok(_) => {
            let empty = parent.read_dir(name).map_err(|err| refuse(err.into()))?.next().is_none();
            if !empty && !force {
                return Err(refuse(DeliveryError::FolderNotEmpty));
            }
            Ok(Some(empty))
        }
    }
}

fn deliver_to_folder(
    files: &[Listed],
    folders: &[String],
    out: &Dir,
    path: &Path,
    force: bool,
    sync: bool,
    cancel: &Cancel,
) -> Result<Vec<OutputFile>, RunError> {
    let fail = |err: io::Error| RunError::Delivery { path: path.to_owned(), reason: DeliveryError::Io(err) };
    let (parent_path, name) = split_destination(path)?;
    let parent = open_parent(&parent_path, path)?;
    let existing = existing_destination(&parent, name, path, force)?;

    let staging = format!(".{name}.staging-{}", random_hex().map_err(fail)?);
    rustix::fs::mkdirat(&parent, staging.as_str(), Mode::from_raw_mode(PRIVATE_DIR)).map_err(|err| {
        fail(io::Error::new(io::Error::from(err).kind(), format!("cannot create a staging folder beside it: {err}")))
    })?;

    let staged = stage_files(files, folders, out, &parent, &staging, sync, cancel).and_then(|hashed| {
        match existing {
            // rename(2) replaces a missing or empty folder atomically.
            None | Some(true) => rustix::fs::renameat(&parent, staging.as_str(), &parent, name)?,
            // A non-empty folder cannot be replaced by rename: swap the two
            // atomically, then remove the old contents now at `staging`.
            Some(false) => {
                rustix::fs::renameat_with(&parent, staging.as_str(), &parent, name, rustix::fs::RenameFlags::EXCHANGE)?
            }
        }
        Ok(hashed)
    });
    let hashed = match staged {
        Ok(hashed) => hashed,
        Err(err) => {
            if let Err(cleanup) = remove_tree(&parent, staging.as_ref()) {
                tracing::error!(staging, "cannot remove the staging folder: {cleanup}");
            }
            return Err(fail(err));
        }
    };
    if existing == Some(false)
        && let Err(err) = remove_tree(&parent, staging.as_ref())
    {
        tracing::error!(staging, "outputs delivered, but the replaced folder's old contents remain: {err}");
    }
    Ok(hashed)
}

/// Puts every output into the staging folder, hashed and (with `sync`)
/// flushed to disk, and returns them with their SHA-256, in the order of
/// `files`.
///
/// Flushing waits on the disk and hashing on the CPU, so for large or many
/// outputs they overlap: [`FLUSHERS`] threads flush the outputs while
/// [`HASHERS`] others hash them (the data is in the page cache either way),
/// each thread with one output open at a time.
fn stage_files(
    files: &[Listed],
    folders: &[String],
    out: &Dir,
    parent: &Dir,
    staging: &str,
    sync: bool,
    cancel: &Cancel,
) -> io::Result<Vec<OutputFile>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let staging_dir = rustix::fs::openat(parent, staging, flags, Mode::empty())?;
    // Each folder after its parent (collection lists them breadth first).
    for folder in folders {
        cancel.check()?;
        rustix::fs::mkdirat(&staging_dir, folder.as_str(), Mode::from_raw_mode(PRIVATE_DIR))?;
    }
    let largest = files.iter().map(|listed| listed.file.bytes).max().unwrap_or(0);
    let mut buffer = read_buffer(largest);
    let staged = files
        .iter()
        .map(|listed| cancel.check().and_then(|()| stage_one(listed, out, &staging_dir, &mut buffer)))
        .collect::<io::Result<Vec<_>>>()?;
    let total: u64 = files.iter().map(|listed| listed.file.bytes).sum();
    if total < PARALLEL_BYTES && files.len() < PARALLEL_FILES {
        for file in &staged {
            cancel.check()?;
            let handle = file.listed.open_in(&staging_dir)?;
            if !file.is_hashed() {
                file.set_sha256(hash(&file.listed, &handle, &mut buffer)?);
            }
            finish(&handle, sync)?;
        }
    } else {
        flush_and_hash(&staged, &staging_dir, largest, sync, cancel)?;
    }
    // The folder's entries, once every file in it is flushed.
    if sync {
        for folder in folders {
            rustix::fs::fsync(open_beneath(&staging_dir, folder, OFlags::RDONLY | OFlags::DIRECTORY)?)?;
        }
        rustix::fs::fsync(&staging_dir)?;
    }
    staged
        .into_iter()
        .map(|file| {
            let Staged { listed, sha256 } = file;
            match sha256.into_inner().unwrap_or_else(PoisonError::into_inner) {
                Some(sha256) => Ok(OutputFile { sha256, ..listed.file }),
                None => Err(io::Error::other(format!("`{}` was not hashed", shown(&listed.file.name)))),
            }
        })
        .collect()
}

/// Threads flushing at once, for large or many outputs: flushes issued
/// together share the journal's commits and keep the disk's queue full.
pub const FLUSHERS: usize = 4;

/// Threads hashing at once (the calling thread and one more), for large or
/// many outputs.
pub const HASHERS: usize = 2;

/// The flushers and hashers of [`stage_files`], each taking the next output,
/// largest first, and holding one output open at a time.
fn flush_and_hash(
    staged: &[Staged],
    staging_dir: &OwnedFd,
    largest: u64,
    sync: bool,
    cancel: &Cancel,
) -> io::Result<()> {
    let mut order: Vec<&Staged> = staged.iter().collect();
    order.sort_by_key(|file| std::cmp::Reverse(file.listed.file.bytes));
    let unhashed: Vec<&Staged> = order.iter().copied().filter(|file| !file.is_hashed()).collect();
    let (next_flush, next_hash, failed) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicBool::new(false));
    let flush = || drain(&order, &next_flush, &failed, cancel, |file| finish(&file.listed.open_in(staging_dir)?, sync));
    let hash_all = || {
        let mut buffer = read_buffer(largest);
        drain(&unhashed, &next_hash, &failed, cancel, |file| {
            let handle = file.listed.open_in(staging_dir)?;
            file.set_sha256(hash(&file.listed, &handle, &mut buffer)?);
            Ok(())
        })
    };
    std::thread::scope(|scope| {
        let flushers: Vec<_> = (0..FLUSHERS.min(order.len())).map(|_| scope.spawn(flush)).collect();
        let hashers: Vec<_> = (1..HASHERS.min(unhashed.len())).map(|_| scope.spawn(hash_all)).collect();
        let mut results = vec![hash_all()];
        results.extend(
            flushers
                .into_iter()
                .chain(hashers)
                .map(|thread| thread.join().unwrap_or_else(|_| Err(io::Error::other("a delivery thread panicked")))),
        );
        results.into_iter().collect::<io::Result<Vec<()>>>().map(drop)
    })
}

/// Runs `step` on each file of `queue` that no other thread has taken, until
/// the queue is empty or any thread failed.
fn drain(
    queue: &[&Staged],
    next: &AtomicUsize,
    failed: &AtomicBool,
    cancel: &Cancel,
    mut step: impl FnMut(&Staged) -> io::Result<()>,
) -> io::Result<()> {
    while !failed.load(Ordering::Relaxed) {
        let Some(file) = queue.get(next.fetch_add(1, Ordering::Relaxed)) else { return Ok(()) };
        if let Err(err) = cancel.check().and_then(|()| step(file)) {
            failed.store(true, Ordering::Relaxed);
            return Err(err);
        }
    }
    Ok(())
}

/// An output in the staging folder. No descriptor is held: each step opens
/// it and checks on the handle that it is this file.
struct Staged {
    /// As staged: the output moved, or its copy.
    listed: Listed,
    /// Known when the file was copied (hashed on the way); else set by a hasher.
    sha256: Mutex<Option<String>>,
}

impl Staged {
    fn is_hashed(&self) -> bool {
        self.sha256.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    fn set_sha256(&self, sha256: String) {
        *self.sha256.lock().unwrap_or_else(PoisonError::into_inner) = Some(sha256);
    }
}

/// The SHA-256 of the output `handle` is open on, read through it at the
/// size it was checked at. `&File` reads at the handle's own offset, which
/// nothing else uses.
fn hash(listed: &Listed, handle: &File, buffer: &mut [u8]) -> io::Result<String> {
    let mut checked = Checked::new(handle, listed);
    pump(&mut checked, &mut io::sink(), buffer)?;
    Ok(checked.finish())
}

/// Makes a staged output the user's: owner-only, the host's time (a guest may
/// set its files' times to anything, and copying or reading may have moved
/// them), and with `sync` flushed to disk.
fn finish(handle: &File, sync: bool) -> io::Result<()> {
    rustix::fs::fchmod(handle, Mode::from_raw_mode(PRIVATE_FILE))?;
    rustix::fs::futimens(handle, &host_now())?;
    if sync { handle.sync_all() } else { Ok(()) }
}

/// Puts one output into `staging_dir`, not yet flushed. On the same
/// filesystem it is moved out of the sandbox, which no one else can reach and
/// no guest runs in any more, with no descriptor opened: every later step
/// opens it and checks it is the very file that was listed. Elsewhere it is
/// opened, checked and copied (0600, hashed on the way), with two
/// descriptors open until it is done.
fn stage_one(listed: &Listed, out: &Dir, staging_dir: &OwnedFd, buffer: &mut [u8]) -> io::Result<Staged> {
    let name = listed.file.name.as_str();
    match rustix::fs::renameat(out, name, staging_dir, name) {
        Ok(()) => Ok(Staged { listed: listed.clone(), sha256: Mutex::new(None) }),
        Err(Errno::XDEV) => {
            let source = listed.open_in(out)?;
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let mut target =
                File::from(rustix::fs::openat(staging_dir, name, flags, Mode::from_raw_mode(PRIVATE_FILE))?);
            let mut checked = Checked::new(source, listed);
            pump(&mut checked, &mut target, buffer)?;
            let sha256 = checked.finish();
            let copy = Listed { identity: identity(&rustix::fs::fstat(&target)?), ..listed.clone() };
            Ok(Staged { listed: copy, sha256: Mutex::new(Some(sha256)) })
        }
        Err(err) => Err(err.into()),
    }
}

fn check_tar_destination(parent: &Dir, name: &str, path: &Path, force: bool) -> Result<(), RunError> {
    let refuse = |reason: DeliveryError| RunError::Delivery { path: path.to_owned(), reason };
    match parent.symlink_metadata(name) {
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(refuse(err.into())),
        Ok(meta) if !meta.is_file() => Err(refuse(DeliveryError::NotAFile)),
        Ok(_) if !force => Err(refuse(DeliveryError::FileExists)),
        Ok(_) => Ok(()),
    }
}

/// Writes the outputs as one tar archive: staged beside `path`, synced, then
/// renamed over it, so a reader sees the old archive or the whole new one.
/// Each output is streamed from its checked handle into its entry, hashed on
/// the way, so memory does not grow with the outputs' size; entries carry
/// the host's time.
fn deliver_to_tar(
    files: &[Listed],
    folders: &[String],
    out: &Dir,
    path: &Path,
    force: bool,
    cancel: &Cancel,
) -> Result<Vec<OutputFile>, RunError> {
    let fail = |err: io::Error| RunError::Delivery { path: path.to_owned(), reason: DeliveryError::Io(err) };
    let (parent_path, name) = split_destination(path)?;
    let parent = open_parent(&parent_path, path)?;
    check_tar_destination(&parent, name, path, force)?;
    let mtime = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let written = (|| -> io::Result<Vec<OutputFile>> {
        let mut archive = AtomicFile::create(&parent, &format!(".{name}.staging-"))?;
        let mut builder = tar::Builder::new(BufWriter::with_capacity(BUFFER_BYTES as usize, archive.file()?));
        let mut hashed = Vec::with_capacity(files.len());
        for folder in folders {
            cancel.check()?;
            let mut header = tar::Header::new_ustar();
            header.set_size(0);
            header.set_mode(PRIVATE_DIR);
            header.set_mtime(mtime);
            header.set_entry_type(tar::EntryType::Directory);
            builder.append_data(&mut header, folder, io::empty())?;
        }
        for listed in files {
            cancel.check()?;
            let source = listed.open_in(out)?;
            let mut header = tar::Header::new_ustar();
            header.set_size(listed.file.bytes);
            header.set_mode(PRIVATE_FILE);
            header.set_mtime(mtime);
            header.set_entry_type(tar::EntryType::Regular);
            // tar copies through a small buffer: read ahead in large blocks.
            let capacity = read_buffer(listed.file.bytes).len();
            let mut checked = Checked::new(io::BufReader::with_capacity(capacity, source), listed);
            builder.append_data(&mut header, &listed.file.name, &mut checked)?;
            hashed.push(OutputFile { sha256: checked.finish(), ..listed.file.clone() });
        }
        builder.into_inner()?.flush()?;
        archive.commit(name)?;
        Ok(hashed)
    })();
    written.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, bytes: u64) -> Listed {
        Listed { file: OutputFile { name: name.into(), bytes, sha256: String::new() }, identity: (0, 0) }
    }

    fn read_checked(source: &[u8], checked_at: u64) -> io::Result<(Vec<u8>, String)> {
        let listed = listed("out.csv", checked_at);
        let mut checked = Checked::new(source, &listed);
        let mut read = Vec::new();
        pump(&mut checked, &mut read, &mut [0u8; 3])?;
        Ok((read, checked.finish()))
    }

    #[test]
    fn a_checked_read_gives_exactly_the_checked_size_or_fails() {
        let (read, sha256) = read_checked(b"abcdefgh", 8).expect("same size");
        assert_eq!(read, b"abcdefgh");
        assert_eq!(sha256, hex(Sha256::digest(b"abcdefgh").as_slice()));
        let short = read_checked(b"abc", 8).expect_err("shorter than checked");
        assert_eq!(short.kind(), ErrorKind::UnexpectedEof);
        assert!(short.to_string().contains("5 bytes short"), "{short}");
        let grown = read_checked(b"abcdefghij", 8).expect_err("longer than checked");
        assert!(grown.to_string().contains("grew"), "{grown}");
    }
}
