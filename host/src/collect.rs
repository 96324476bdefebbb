//! Taking the guest's outputs out of its sandbox: collection trusts nothing
//! the guest left. Only regular files with one link and a plain name are
//! taken, never followed, and the report's list of outputs must match the
//! folder exactly; at most [`MAX_OUTPUTS`] of them, within `max_output`.
//!
//! Every descriptor the host opens counts against the process's limit, which
//! every tenant shares, so collection holds none per output: it lists the
//! folder once and looks at each entry without opening it (`fstatat`, never
//! following links). Delivery (`deliver.rs`) opens each output later and
//! checks on the handle that it is still the file that was listed.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::Serialize;

use crate::error::RunError;
use crate::fs::list_dir;
use crate::limits::ByteSize;
use crate::report::Report;
use crate::text::shown;

/// The most outputs one run delivers. Past it the run ends as
/// `output-too-large` and nothing is delivered. Ten thousand is far more than
/// a pipeline needs (the reference pipeline writes one file per region and
/// two more) and keeps the host's list of them, and the time to deliver and
/// flush them, small.
pub const MAX_OUTPUTS: usize = 10_000;

/// One delivered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct OutputFile {
    /// Its name in the output folder (checked: a plain name).
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// Hex SHA-256 of the contents, computed while delivering.
    pub sha256: String,
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
    Err(format!("the output name `{}` {problem}", shown(name)))
}

/// Lists the outputs the guest left in `out`, refusing anything that is not a
/// plain regular file, and checks them against the report and the limits.
/// Nothing is opened but the listing: each entry is looked at with
/// `fstatat`, without following links.
///
/// # Errors
///
/// [`RunError::ContractViolation`] for a refused entry or a report that lies,
/// [`RunError::TooManyOutputs`] past [`MAX_OUTPUTS`],
/// [`RunError::OutputTooLarge`] past `max_output`, [`RunError::Host`] when the
/// folder cannot be read.
pub(crate) fn collect(out: &Dir, report: &Report, max_output: ByteSize) -> Result<Collected, RunError> {
    let host_error = |err: io::Error| RunError::Host(format!("cannot read the sandbox's output folder: {err}"));
    let refuse = |name: &str, kind: &str| {
        RunError::ContractViolation(format!("the output `{}` is {kind}; outputs must be regular files", shown(name)))
    };
    let mut listed = Vec::new();
    let mut total = 0u64;
    let mut entries = list_dir(out).map_err(host_error)?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(|errno| host_error(errno.into()))?;
        let c_name = entry.file_name();
        if c_name == c"." || c_name == c".." {
            continue;
        }
        // Counted before anything else, so a million entries cost no more
        // than the bound to refuse.
        if listed.len() == MAX_OUTPUTS {
            return Err(RunError::TooManyOutputs { limit: MAX_OUTPUTS as u64 });
        }
        let name = c_name
            .to_str()
            .map_err(|_| {
                RunError::ContractViolation(format!(
                    "the output name `{}` is not UTF-8",
                    shown(&c_name.to_string_lossy())
                ))
            })?
            .to_owned();
        check_output_name(&name).map_err(RunError::ContractViolation)?;
        // The entry's own type refuses most at once; the stat decides.
        refuse_kind(entry.file_type(), &name, &refuse)?;
        let stat = rustix::fs::statat(out, c_name, AtFlags::SYMLINK_NOFOLLOW).map_err(|err| host_error(err.into()))?;
        refuse_kind(rustix::fs::FileType::from_raw_mode(stat.st_mode), &name, &refuse)?;
        if stat.st_nlink > 1 {
            return Err(refuse(&name, "a hard link to another file"));
        }
        let bytes = u64::try_from(stat.st_size).map_err(|_| host_error(io::Error::other("a negative file size")))?;
        total = total.saturating_add(bytes);
        listed.push(Listed { file: OutputFile { name, bytes, sha256: String::new() }, identity: identity(&stat) });
    }
    drop(entries);
    if total > max_output.bytes() {
        return Err(RunError::OutputTooLarge { limit: max_output, size: total });
    }
    listed.sort_by(|a, b| a.file.name.cmp(&b.file.name));

    let on_disk: BTreeSet<&str> = listed.iter().map(|l| l.file.name.as_str()).collect();
    let mut reported = BTreeSet::new();
    for name in &report.outputs {
        if !reported.insert(name.as_str()) {
            return Err(RunError::ContractViolation(format!("the report lists the output `{}` twice", shown(name))));
        }
        if !on_disk.contains(name.as_str()) {
            return Err(RunError::ContractViolation(format!(
                "the report lists the output `{}`, which is not a file in the output folder",
                shown(name)
            )));
        }
    }
    if let Some(unlisted) = on_disk.difference(&reported).next() {
        return Err(RunError::ContractViolation(format!(
            "the guest wrote `{}` but its report does not list it",
            shown(unlisted)
        )));
    }
    Ok(Collected { files: listed, folders: Vec::new() })
}

/// What collection took: the files to deliver and, for a program's folder,
/// the folders they are in (relative paths, each after its parent).
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub(crate) files: Vec<Listed>,
    pub(crate) folders: Vec<String>,
}

/// Whether a name a program chose may become an entry in the user's
/// folder: any UTF-8 name a file system takes, but never one that could act
/// on a terminal or that is not one component.
fn check_tree_name(name: &str) -> Result<(), String> {
    let problem = if name.len() > 255 {
        "is longer than 255 bytes"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else if name.contains('\\') {
        "contains a backslash"
    } else {
        return Ok(());
    };
    Err(format!("the name `{}` {problem}", shown(name)))
}

/// Lists everything a program left in its folder `root`, breadth first, one
/// folder open at a time: regular files with one link and folders, nothing
/// else (a link, a hard link or a special file is refused, never followed),
/// at most [`MAX_OUTPUTS`] entries and `max_output` bytes.
///
/// # Errors
///
/// As [`collect`], without a report to check.
pub(crate) fn collect_tree(root: &Dir, max_output: ByteSize) -> Result<Collected, RunError> {
    let host_error = |err: io::Error| RunError::Host(format!("cannot read the program's folder: {err}"));
    let refuse = |name: &str, kind: &str| {
        RunError::ContractViolation(format!(
            "the program left `{}`, which is {kind}; only regular files and folders are delivered",
            shown(name)
        ))
    };
    let mut collected = Collected::default();
    let (mut total, mut entries_seen) = (0u64, 0usize);
    let mut pending = std::collections::VecDeque::from([String::new()]);
    while let Some(folder) = pending.pop_front() {
        let handle = if folder.is_empty() {
            root.try_clone().map_err(host_error)?
        } else {
            let fd = open_beneath(root, &folder, OFlags::RDONLY | OFlags::DIRECTORY).map_err(host_error)?;
            Dir::from_std_file(File::from(fd))
        };
        let mut entries = list_dir(&handle).map_err(host_error)?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|errno| host_error(errno.into()))?;
            let c_name = entry.file_name();
            if c_name == c"." || c_name == c".." {
                continue;
            }
            entries_seen += 1;
            if entries_seen > MAX_OUTPUTS {
                return Err(RunError::TooManyOutputs { limit: MAX_OUTPUTS as u64 });
            }
            let name = c_name.to_str().map_err(|_| {
                RunError::ContractViolation(format!("the name `{}` is not UTF-8", shown(&c_name.to_string_lossy())))
            })?;
            check_tree_name(name).map_err(RunError::ContractViolation)?;
            let path = if folder.is_empty() { name.to_owned() } else { format!("{folder}/{name}") };
            let stat =
                rustix::fs::statat(&handle, c_name, AtFlags::SYMLINK_NOFOLLOW).map_err(|err| host_error(err.into()))?;
            match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
                rustix::fs::FileType::Directory => {
                    collected.folders.push(path.clone());
                    pending.push_back(path);
                }
                rustix::fs::FileType::RegularFile if stat.st_nlink > 1 => {
                    return Err(refuse(&path, "a hard link to another file"));
                }
                rustix::fs::FileType::RegularFile => {
                    let bytes = u64::try_from(stat.st_size)
                        .map_err(|_| host_error(io::Error::other("a negative file size")))?;
                    total = total.saturating_add(bytes);
                    if total > max_output.bytes() {
                        return Err(RunError::OutputTooLarge { limit: max_output, size: total });
                    }
                    let file = OutputFile { name: path, bytes, sha256: String::new() };
                    collected.files.push(Listed { file, identity: identity(&stat) });
                }
                rustix::fs::FileType::Symlink => return Err(refuse(&path, "a symbolic link (it was not followed)")),
                _ => return Err(refuse(&path, "a special file")),
            }
        }
    }
    collected.files.sort_by(|a, b| a.file.name.cmp(&b.file.name));
    Ok(collected)
}

/// Opens `path` (relative, `/`-separated) below `dir`, following no link on
/// the way and never leaving `dir`.
pub(crate) fn open_beneath(dir: impl rustix::fd::AsFd, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let resolve = rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_SYMLINKS;
    Ok(rustix::fs::openat2(dir, path, flags, Mode::empty(), resolve)?)
}

/// Refuses anything but a regular file (an unknown type is left to the stat).
fn refuse_kind(
    kind: rustix::fs::FileType,
    name: &str,
    refuse: &impl Fn(&str, &str) -> RunError,
) -> Result<(), RunError> {
    use rustix::fs::FileType as Kind;
    match kind {
        Kind::RegularFile | Kind::Unknown => Ok(()),
        Kind::Symlink => Err(refuse(name, "a symbolic link (it was not followed)")),
        Kind::Directory => Err(refuse(name, "a folder")),
        _ => Err(refuse(name, "a special file")),
    }
}

/// An output that passed the checks, as it was listed. No descriptor is held:
/// delivery opens it and checks on the handle that it is still this file.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) file: OutputFile,
    /// Device and inode.
    pub(crate) identity: (u64, u64),
}

/// Which file `stat` is: its device and inode.
// Not the same type on every target (`u32` fields on some).
#[allow(clippy::useless_conversion)]
pub(crate) fn identity(stat: &rustix::fs::Stat) -> (u64, u64) {
    (u64::from(stat.st_dev), u64::from(stat.st_ino))
}

impl Listed {
    /// Opens the output `self` names in `dir` for reading, without following
    /// links, and checks on the handle that it is the file that was listed:
    /// what is checked is what is delivered. No guest runs any more, so a
    /// mismatch means someone else changed the sandbox: an error, not data.
    pub(crate) fn open_in(&self, dir: impl rustix::fd::AsFd) -> io::Result<File> {
        // NONBLOCK and NOCTTY: opening is harmless whatever the name turned out to be.
        let fd = open_beneath(dir, &self.file.name, OFlags::RDONLY)?;
        let stat = rustix::fs::fstat(&fd)?;
        let same = rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile
            && identity(&stat) == self.identity
            && stat.st_nlink == 1
            && u64::try_from(stat.st_size).ok() == Some(self.file.bytes);
        if !same {
            return Err(io::Error::other(format!(
                "`{}` was changed or replaced after it was checked",
                shown(&self.file.name)
            )));
        }
        Ok(File::from(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::random_hex;

    #[test]
    fn plain_names_pass_and_dangerous_ones_are_named() {
        for name in ["north_orders.csv", "summary.csv", "a b.csv", "été.csv", &"a".repeat(255)] {
            assert_eq!(check_output_name(name), Ok(()), "{name}");
        }
        for name in ["", ".", "..", ".hidden", "-rf", "a/b", "new\nline", "tab\t", &"a".repeat(256)] {
            let err = check_output_name(name).expect_err(name);
            assert!(err.starts_with("the output name"), "{err}");
            assert!(!err.chars().any(crate::text::acts_on_terminal), "{err}");
        }
    }

    #[test]
    fn an_output_replaced_after_it_was_listed_is_not_opened() {
        let path = std::env::temp_dir().join(format!("collect-unit-{}", random_hex().expect("random")));
        std::fs::create_dir(&path).expect("mkdir");
        let dir = Dir::open_ambient_dir(&path, cap_std::ambient_authority()).expect("open");
        dir.write("a.csv", "one\n").expect("write");
        let report = Report {
            rows: 0,
            accepted: 0,
            cancelled: 0,
            rejected: 0,
            reasons: vec![],
            regions: vec![],
            outputs: vec!["a.csv".into()],
        };
        let [listed] = <[Listed; 1]>::try_from(collect(&dir, &report, ByteSize(1 << 20)).expect("collected").files)
            .expect("one output");
        assert!(listed.open_in(&dir).is_ok());
        // Same name and size, another file (the first kept, so its inode is not reused).
        dir.rename("a.csv", &dir, "old.csv").expect("rename");
        dir.write("a.csv", "two\n").expect("write");
        let err = listed.open_in(&dir).expect_err("another file");
        assert!(err.to_string().contains("replaced"), "{err}");
        std::fs::remove_dir_all(&path).expect("clean up");
    }
}
