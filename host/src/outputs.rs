//! Taking the guest's outputs out of its sandbox, and delivering them.
//!
//! Collection trusts nothing the guest left: only regular files with one link
//! and a plain name are taken, never followed, and the report's list of
//! outputs must match the folder exactly. Delivery to a folder is atomic: the
//! files are written into a private staging folder beside the destination,
//! then renamed into place; on any failure the destination is untouched.

use std::collections::BTreeSet;
use std::io::{self, ErrorKind, Read as _};
use std::path::{Path, PathBuf};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt as _};
use cap_std::fs::{
    Dir, DirBuilder, DirBuilderExt as _, MetadataExt as _, OpenOptions, OpenOptionsExt as _, PermissionsExt as _,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::error::RunError;
use crate::limits::ByteSize;
use crate::report::Report;
use crate::sandbox::{list_dir, random_hex, remove_tree};

/// One delivered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputFile {
    pub name: String,
    pub bytes: u64,
    /// Hex SHA-256 of the contents, computed while delivering.
    pub sha256: String,
}

/// Where the outputs of a run go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A folder, created 0700 with files 0600. An existing non-empty folder
    /// is replaced only with `force`, atomically.
    Folder { path: PathBuf, force: bool },
    /// Returned in memory, as (name, contents) pairs.
    Memory,
    /// One tar archive (files 0600), written beside `path` and renamed into
    /// place; an existing file is replaced only with `force`.
    Tar { path: PathBuf, force: bool },
}

/// What was delivered where.
#[derive(Debug)]
pub enum Delivered {
    Folder(PathBuf),
    Memory(Vec<(String, Vec<u8>)>),
    Tar(PathBuf),
}

/// Whether a guest-chosen name may become a file in the user's folder: one
/// plain component, printable, not hidden and not mistakable for an option.
fn check_output_name(name: &str) -> Result<(), String> {
    let problem = if name.len() > 255 {
        "is longer than 255 bytes"
    } else if name.starts_with('.') {
        "starts with `.`"
    } else if name.starts_with('-') {
        "starts with `-`"
    } else if name.contains(['/', '\\']) {
        "contains a path separator"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else if name.is_empty() {
        "is empty"
    } else {
        return Ok(());
    };
    Err(format!("the output name {name:?} {problem}"))
}

/// Lists the outputs the guest left in `out`, refusing anything that is not a
/// plain regular file, and checks them against the report and the size limit.
///
/// # Errors
///
/// [`RunError::ContractViolation`] for a refused entry or a report that lies,
/// [`RunError::OutputTooLarge`] past `max_output`, [`RunError::Host`] when the
/// folder cannot be read.
pub(crate) fn collect(out: &Dir, report: &Report, max_output: ByteSize) -> Result<Vec<Collected>, RunError> {
    let host_error = |err: io::Error| RunError::Host(format!("cannot read the sandbox's output folder: {err}"));
    let refuse = |name: &str, kind: &str| {
        RunError::ContractViolation(format!("the output `{name}` is {kind}; outputs must be regular files"))
    };
    let mut collected = Vec::new();
    let mut total = 0u64;
    let mut entries = list_dir(out).map_err(host_error)?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(|errno| host_error(errno.into()))?;
        let c_name = entry.file_name();
        if c_name == c"." || c_name == c".." {
            continue;
        }
        let name = c_name
            .to_str()
            .map_err(|_| RunError::ContractViolation(format!("the output name {c_name:?} is not UTF-8")))?
            .to_owned();
        check_output_name(&name).map_err(RunError::ContractViolation)?;
        // The entry's own type first, so nothing but a regular file is opened.
        let file_type = match entry.file_type() {
            rustix::fs::FileType::Unknown => FileType::from_metadata(&out.symlink_metadata(&name).map_err(host_error)?),
            known => FileType::from_raw(known),
        };
        match file_type {
            FileType::Symlink => return Err(refuse(&name, "a symbolic link (it was not followed)")),
            FileType::Dir => return Err(refuse(&name, "a folder")),
            FileType::Special => return Err(refuse(&name, "a special file")),
            FileType::File => {}
        }
        // Opened without following links and checked on the handle: what is
        // checked is what is delivered.
        let mut options = OpenOptions::new();
        options.read(true).follow(FollowSymlinks::No);
        let handle = out.open_with(&name, &options).map_err(host_error)?;
        let meta = handle.metadata().map_err(host_error)?;
        if !meta.is_file() {
            return Err(refuse(&name, "not a regular file"));
        } else if meta.nlink() > 1 {
            return Err(refuse(&name, "a hard link to another file"));
        }
        total = total.saturating_add(meta.len());
        collected.push(Collected { file: OutputFile { name, bytes: meta.len(), sha256: String::new() }, handle });
    }
    if total > max_output.bytes() {
        return Err(RunError::OutputTooLarge { limit: max_output, size: total });
    }
    collected.sort_by(|a, b| a.file.name.cmp(&b.file.name));
    let files: Vec<&OutputFile> = collected.iter().map(|c| &c.file).collect();

    let on_disk: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let mut listed = BTreeSet::new();
    for name in &report.outputs {
        if !listed.insert(name.as_str()) {
            return Err(RunError::ContractViolation(format!("the report lists the output {name:?} twice")));
        }
        if !on_disk.contains(name.as_str()) {
            return Err(RunError::ContractViolation(format!(
                "the report lists the output {name:?}, which is not a file in the output folder"
            )));
        }
    }
    if let Some(unlisted) = on_disk.difference(&listed).next() {
        return Err(RunError::ContractViolation(format!(
            "the guest wrote `{unlisted}` but its report does not list it"
        )));
    }
    Ok(collected)
}

/// An output that passed the checks, with the handle it was checked on.
#[derive(Debug)]
pub(crate) struct Collected {
    pub(crate) file: OutputFile,
    handle: cap_std::fs::File,
}

impl Collected {
    /// The whole contents, read with the size the checks saw: no guest runs
    /// any more, so a file that changed size since is an error, not data.
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let expected = usize::try_from(self.file.bytes).map_err(io::Error::other)?;
        // One byte more than expected, to notice growth without another read.
        let mut contents = vec![0u8; expected.saturating_add(1)];
        let mut filled = 0;
        loop {
            match self.handle.read(&mut contents[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
            if filled == contents.len() {
                break;
            }
        }
        if filled != expected {
            return Err(io::Error::other(format!(
                "`{}` changed size after it was checked ({expected} bytes, then {filled})",
                self.file.name
            )));
        }
        contents.truncate(filled);
        Ok(contents)
    }
}

/// What an entry of the output folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileType {
    File,
    Dir,
    Symlink,
    Special,
}

impl FileType {
    fn from_raw(raw: rustix::fs::FileType) -> Self {
        match raw {
            rustix::fs::FileType::RegularFile => Self::File,
            rustix::fs::FileType::Directory => Self::Dir,
            rustix::fs::FileType::Symlink => Self::Symlink,
            _ => Self::Special,
        }
    }

    fn from_metadata(meta: &cap_std::fs::Metadata) -> Self {
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            Self::Symlink
        } else if file_type.is_dir() {
            Self::Dir
        } else if file_type.is_file() {
            Self::File
        } else {
            Self::Special
        }
    }
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
        Destination::Memory => Ok(()),
        Destination::Folder { path, force } => {
            let (parent, name) = split_destination(path)?;
            existing_destination(&parent, name, path, *force).map(drop)
        }
        Destination::Tar { path, force } => {
            let (parent, name) = split_destination(path)?;
            check_tar_destination(&open_parent(&parent, path)?, name, path, *force)
        }
    }
}

/// Delivers the collected `files` (from the guest's output folder `out`) to
/// `destination`, and returns them with their SHA-256.
///
/// # Errors
///
/// [`RunError::Delivery`] with the reason; nothing is left at the destination.
pub(crate) fn deliver(
    files: Vec<Collected>,
    out: &Dir,
    destination: &Destination,
) -> Result<(Delivered, Vec<OutputFile>), RunError> {
    match destination {
        Destination::Memory => {
            let mut delivered = Vec::with_capacity(files.len());
            let mut hashed = Vec::with_capacity(files.len());
            for mut collected in files {
                let contents = collected.read_all().map_err(|err| {
                    RunError::Host(format!("cannot read the output `{}`: {err}", collected.file.name))
                })?;
                let file = collected.file;
                hashed.push(OutputFile { sha256: hex_digest(Sha256::digest(&contents).as_slice()), ..file.clone() });
                delivered.push((file.name, contents));
            }
            Ok((Delivered::Memory(delivered), hashed))
        }
        Destination::Folder { path, force } => {
            deliver_to_folder(files, out, path, *force).map(|hashed| (Delivered::Folder(path.clone()), hashed))
        }
        Destination::Tar { path, force } => {
            deliver_to_tar(files, path, *force).map(|hashed| (Delivered::Tar(path.clone()), hashed))
        }
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    hex
}

/// Copies `source` (of about `size` bytes) to `target`, hashing what passes through.
fn copy_hashed(source: &mut impl io::Read, target: &mut impl io::Write, size: u64) -> io::Result<String> {
    const MAX_BUFFER: u64 = 256 * 1024;
    let mut hasher = Sha256::new();
    // Sized to the file, so a small output does not cost a large zeroed buffer.
    let mut buffer = vec![0u8; usize::try_from(size.saturating_add(1).min(MAX_BUFFER)).unwrap_or(4096)];
    loop {
        let read = source.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        target.write_all(&buffer[..read])?;
    }
    Ok(hex_digest(hasher.finalize().as_slice()))
}

fn split_destination(path: &Path) -> Result<(PathBuf, &str), RunError> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| RunError::Delivery {
        path: path.to_owned(),
        reason: "the output folder needs a plain UTF-8 name as its last component".into(),
    })?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Opens the destination's parent. Ambient authority, for the user's own
/// path: the one place where delivery turns a path into a capability.
fn open_parent(parent: &Path, path: &Path) -> Result<Dir, RunError> {
    Dir::open_ambient_dir(parent, cap_std::ambient_authority()).map_err(|err| RunError::Delivery {
        path: path.to_owned(),
        reason: format!("cannot open its parent folder {}: {err}", parent.display()),
    })
}

/// `Ok(None)` when the destination does not exist, `Ok(Some(empty))` when it
/// is a folder that may be replaced.
fn existing_destination(parent: &Path, name: &str, path: &Path, force: bool) -> Result<Option<bool>, RunError> {
    let refuse = |reason: String| RunError::Delivery { path: path.to_owned(), reason };
    let parent_dir = open_parent(parent, path)?;
    match parent_dir.symlink_metadata(name) {
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(refuse(err.to_string())),
        Ok(meta) if !meta.is_dir() => Err(refuse("it exists and is not a folder; choose another --out".into())),
        Ok(_) => {
            let empty = parent_dir.read_dir(name).map_err(|err| refuse(err.to_string()))?.next().is_none();
            if !empty && !force {
                return Err(refuse(
                    "the folder exists and is not empty; pass --force to replace it, or choose another --out".into(),
                ));
            }
            Ok(Some(empty))
        }
    }
}

fn deliver_to_folder(files: Vec<Collected>, out: &Dir, path: &Path, force: bool) -> Result<Vec<OutputFile>, RunError> {
    let fail = |reason: String| RunError::Delivery { path: path.to_owned(), reason };
    let (parent_path, name) = split_destination(path)?;
    let existing = existing_destination(&parent_path, name, path, force)?;
    let parent = open_parent(&parent_path, path)?;

    let staging = format!(".{name}.staging-{}", random_hex().map_err(|err| fail(err.to_string()))?);
    let mut builder = DirBuilder::new();
    builder.mode(0o700);
    parent
        .create_dir_with(&staging, &builder)
        .map_err(|err| fail(format!("cannot create a staging folder beside it: {err}")))?;

    let mut hashed = Vec::new();
    let staged = stage_files(files, out, &parent, &staging, &mut hashed).and_then(|()| {
        match existing {
            // rename(2) replaces a missing or empty folder atomically.
            None | Some(true) => parent.rename(&staging, &parent, name),
            // A non-empty folder cannot be replaced by rename: swap the two
            // atomically, then remove the old contents now at `staging`.
            Some(false) => {
                rustix::fs::renameat_with(&parent, staging.as_str(), &parent, name, rustix::fs::RenameFlags::EXCHANGE)
                    .map_err(io::Error::from)
            }
        }
    });
    if let Err(err) = staged {
        if let Err(cleanup) = remove_tree(&parent, staging.as_ref()) {
            tracing::error!(staging, "cannot remove the staging folder: {cleanup}");
        }
        return Err(fail(err.to_string()));
    }
    if existing == Some(false)
        && let Err(err) = remove_tree(&parent, staging.as_ref())
    {
        tracing::error!(staging, "outputs delivered, but the replaced folder's old contents remain: {err}");
    }
    Ok(hashed)
}

/// Puts every output into the staging folder, hashed and flushed to disk.
///
/// The flushing waits on the disk and the hashing on the CPU, so for large
/// outputs they overlap: a few threads flush the files while two others hash
/// them (the data is in the page cache either way).
fn stage_files(
    files: Vec<Collected>,
    out: &Dir,
    parent: &Dir,
    staging: &str,
    hashed: &mut Vec<OutputFile>,
) -> io::Result<()> {
    /// Below this much output, more threads cost more than they save.
    const PARALLEL_BYTES: u64 = 1 << 20;
    /// Threads flushing at once, for large outputs.
    const FLUSHERS: usize = 4;
    let staging_dir = parent.open_dir(staging)?;
    let total: u64 = files.iter().map(|collected| collected.file.bytes).sum();
    let staged =
        files.into_iter().map(|collected| stage_one(collected, out, &staging_dir)).collect::<io::Result<Vec<_>>>()?;
    let flush = || -> io::Result<()> {
        for file in &staged {
            file.handle.sync_all()?;
        }
        staging_dir.open(".")?.sync_all()
    };
    if total < PARALLEL_BYTES {
        for file in &staged {
            hashed.push(file.hashed()?);
        }
        return flush();
    }
    // Largest first, each to the lighter of two shares.
    let mut order: Vec<&Staged> = staged.iter().collect();
    order.sort_by_key(|file| std::cmp::Reverse(file.file.bytes));
    let (mut shares, mut loads) = ([Vec::new(), Vec::new()], [0u64; 2]);
    for file in order {
        let lighter = usize::from(loads[1] < loads[0]);
        loads[lighter] += file.file.bytes;
        shares[lighter].push(file);
    }
    let hash_share =
        |share: &[&Staged]| -> io::Result<Vec<OutputFile>> { share.iter().map(|file| file.hashed()).collect() };
    fn panicked<T>() -> io::Result<T> {
        Err(io::Error::other("a delivery thread panicked"))
    }
    let (flushed, first, second) = std::thread::scope(|scope| {
        // Files flushed at once share journal commits and keep the disk's
        // queue full: a few flushers, each taking every FLUSHERS-th file.
        let staged = &staged;
        let flushers: Vec<_> = (0..FLUSHERS.min(staged.len()))
            .map(|first| {
                scope.spawn(move || {
                    staged.iter().skip(first).step_by(FLUSHERS).try_for_each(|file| file.handle.sync_all())
                })
            })
            .collect();
        let helper = scope.spawn(|| hash_share(&shares[1]));
        let first = hash_share(&shares[0]);
        let flushed = flushers
            .into_iter()
            .map(|flusher| flusher.join().unwrap_or_else(|_| panicked()))
            .collect::<io::Result<Vec<()>>>()
            .and_then(|_| staging_dir.open(".")?.sync_all());
        (flushed, first, helper.join().unwrap_or_else(|_| panicked()))
    });
    flushed?;
    hashed.extend(first?);
    hashed.extend(second?);
    hashed.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(())
}

/// An output in the staging folder, with a handle to it.
struct Staged {
    file: OutputFile,
    handle: cap_std::fs::File,
    /// Known when the file was copied (hashed on the way); else computed by
    /// [`Staged::hashed`].
    sha256: Option<String>,
}

impl Staged {
    /// The output with its SHA-256, read through the handle when it was not
    /// hashed while copied. `&File` reads at the handle's own offset, which
    /// nothing else uses.
    fn hashed(&self) -> io::Result<OutputFile> {
        let sha256 = match &self.sha256 {
            Some(sha256) => sha256.clone(),
            None => copy_hashed(&mut &self.handle, &mut io::sink(), self.file.bytes)?,
        };
        Ok(OutputFile { sha256, ..self.file.clone() })
    }
}

/// Puts one output into `staging_dir` (0600), not yet flushed. On the same
/// filesystem the file is moved out of the sandbox, which no one else can
/// reach and no guest runs in any more, and checked to be the very file
/// that was collected; elsewhere it is copied (and hashed on the way).
fn stage_one(collected: Collected, out: &Dir, staging_dir: &Dir) -> io::Result<Staged> {
    let Collected { file, mut handle } = collected;
    match out.rename(&file.name, staging_dir, &file.name) {
        Ok(()) => {
            let moved = staging_dir.symlink_metadata(&file.name)?;
            let checked = handle.metadata()?;
            if (moved.dev(), moved.ino()) != (checked.dev(), checked.ino()) {
                return Err(io::Error::other(format!("`{}` was replaced while it was delivered", file.name)));
            }
            handle.set_permissions(cap_std::fs::Permissions::from_mode(0o600))?;
            Ok(Staged { file, handle, sha256: None })
        }
        Err(err) if err.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true).mode(0o600);
            let mut target = staging_dir.open_with(&file.name, &options)?;
            let sha256 = copy_hashed(&mut handle, &mut target, file.bytes)?;
            Ok(Staged { file, handle: target, sha256: Some(sha256) })
        }
        Err(err) => Err(err),
    }
}

fn check_tar_destination(parent: &Dir, name: &str, path: &Path, force: bool) -> Result<(), RunError> {
    let refuse = |reason: &str| RunError::Delivery { path: path.to_owned(), reason: reason.to_owned() };
    match parent.symlink_metadata(name) {
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(refuse(&err.to_string())),
        Ok(meta) if !meta.is_file() => Err(refuse("it exists and is not a regular file; choose another path")),
        Ok(_) if !force => Err(refuse("the file exists; pass force to replace it, or choose another path")),
        Ok(_) => Ok(()),
    }
}

/// Writes the outputs as one tar archive: staged beside `path`, synced, then
/// renamed over it, so a reader sees the old archive or the whole new one.
fn deliver_to_tar(files: Vec<Collected>, path: &Path, force: bool) -> Result<Vec<OutputFile>, RunError> {
    let fail = |reason: String| RunError::Delivery { path: path.to_owned(), reason };
    let (parent_path, name) = split_destination(path)?;
    let parent = open_parent(&parent_path, path)?;
    check_tar_destination(&parent, name, path, force)?;
    let staging = format!(".{name}.staging-{}", random_hex().map_err(|err| fail(err.to_string()))?);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let written = (|| -> io::Result<Vec<OutputFile>> {
        let archive = parent.open_with(&staging, &options)?;
        let mut builder = tar::Builder::new(io::BufWriter::new(archive));
        let mut hashed = Vec::with_capacity(files.len());
        for mut collected in files {
            let contents = collected.read_all()?;
            let file = collected.file;
            let mut header = tar::Header::new_ustar();
            header.set_size(contents.len() as u64);
            header.set_mode(0o600);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, &file.name, contents.as_slice())?;
            hashed.push(OutputFile { sha256: hex_digest(Sha256::digest(&contents).as_slice()), ..file });
        }
        let archive = builder.into_inner()?.into_inner().map_err(io::IntoInnerError::into_error)?;
        archive.sync_all()?;
        parent.rename(&staging, &parent, name)?;
        Ok(hashed)
    })();
    written.map_err(|err| {
        if let Err(cleanup) = parent.remove_file(&staging)
            && cleanup.kind() != ErrorKind::NotFound
        {
            tracing::error!(staging, "cannot remove the staging archive: {cleanup}");
        }
        fail(err.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_dangerous_ones_are_named() {
        for name in ["north_orders.csv", "summary.csv", "a b.csv", "été.csv", &"a".repeat(255)] {
            assert_eq!(check_output_name(name), Ok(()), "{name}");
        }
        for name in ["", ".", "..", ".hidden", "-rf", "a/b", "new\nline", "tab\t", &"a".repeat(256)] {
            let err = check_output_name(name).expect_err(name);
            assert!(err.starts_with("the output name"), "{err}");
        }
    }
}
