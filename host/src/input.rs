//! The input of an invocation: opened and measured before a sandbox is
//! chosen for it (small inputs are spooled), then put into the sandbox.
//!
//! A file the user named is opened once, without blocking, and everything
//! after that works on the handle: its type and size are checked there before
//! any byte is read, and exactly the measured size is copied. So a FIFO, a
//! device or a socket is refused at once (opening a FIFO for reading would
//! otherwise wait for a writer, outside every limit), and a file that grows
//! while it is copied cannot carry a spooled sandbox past the spool threshold.
//!
//! Reading and copying go chunk by chunk and stop at the next chunk once the
//! invocation is stopped (its deadline, or its future dropped): a slow or
//! endless [`Input::Reader`] cannot keep a blocking thread, a sandbox and a
//! slot past the deadline. Only a single `read` call that never returns
//! cannot be stopped: a reader should return within the caller's deadline.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::cancel::Cancel;
use crate::error::RunError;
use crate::fs::PRIVATE_FILE;
use crate::invocation::Input;
use crate::sandbox::{INPUT_FILE as GUEST_INPUT_FILE, Sandbox};

/// The input, opened and measured before a sandbox is chosen for it.
pub(crate) struct StagedInput {
    /// Read first (a small input entirely, a stream's first bytes).
    head: Vec<u8>,
    /// The rest, when there is more than `head`.
    rest: Option<InputRest>,
    /// Small enough to spool.
    pub(crate) fits_in_memory: bool,
}

/// Where the input beyond [`StagedInput::head`] comes from.
enum InputRest {
    /// A file the user named, opened and checked to be a regular file.
    File(NamedFile),
    Reader(Box<dyn Read + Send>),
}

/// A regular file the user named, as checked on its handle.
struct NamedFile {
    file: File,
    path: PathBuf,
    /// Its size when it was checked: what is copied, whatever it is now.
    len: u64,
    /// Whether this user owns it: only then is it linked into a sandbox.
    ours: bool,
}

/// Bytes read or copied between two looks at the invocation's [`Cancel`]:
/// from a stream, one read call each.
const READ_CHUNK: usize = 256 * 1024;
/// The same for a file copied in the kernel (`copy_file_range`): tens of
/// milliseconds of copying on a disk.
const FILE_CHUNK: u64 = 64 << 20;

pub(crate) fn stage_input(input: Input, threshold: u64, cancel: &Cancel) -> Result<StagedInput, RunError> {
    match input {
        Input::Bytes(bytes) => {
            let fits_in_memory = bytes.len() as u64 <= threshold;
            Ok(StagedInput { head: bytes, rest: None, fits_in_memory })
        }
        Input::Path(path) => {
            let named =
                open_named_file(&path).map_err(|source| RunError::InputUnreadable { path: path.clone(), source })?;
            let fits_in_memory = named.len <= threshold;
            Ok(StagedInput { head: Vec::new(), rest: Some(InputRest::File(named)), fits_in_memory })
        }
        Input::Reader(mut reader) => {
            // Read one byte past the threshold to learn on which side it is.
            let mut head = Vec::new();
            let limit = threshold.saturating_add(1);
            copy_chunks(&mut (&mut reader).take(limit), &mut head, cancel).map_err(|stop| match stop {
                Stop::Read(source) | Stop::Write(source) => RunError::InputUnreadable { path: READER.into(), source },
                Stop::Cancelled(err) => RunError::Sandbox(err),
            })?;
            let fits_in_memory = (head.len() as u64) < limit;
            let rest = (!fits_in_memory).then_some(InputRest::Reader(reader));
            Ok(StagedInput { head, rest, fits_in_memory })
        }
    }
}

/// Opens the file the user named and checks, on the handle, that it is a
/// regular file; measures it.
///
/// Ambient authority: the user named this path (links in it are followed,
/// as for any file a user names). `O_NONBLOCK` makes the open itself return
/// at once for a FIFO without a writer (and a device that would wait), so
/// that the check below can refuse it; on a regular file it changes nothing.
/// `O_NOCTTY`: a terminal named as input never becomes the controlling one.
fn open_named_file(path: &Path) -> io::Result<NamedFile> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        // What opening a socket gives: say what it is rather than ENXIO.
        Err(rustix::io::Errno::NXIO) => {
            let kind = std::fs::metadata(path).ok().map(|meta| FileType::from_raw_mode(meta_mode(&meta)));
            return Err(match kind {
                Some(kind) if kind != FileType::RegularFile => not_a_regular_file(kind),
                _ => io::Error::from(rustix::io::Errno::NXIO),
            });
        }
        Err(errno) => return Err(errno.into()),
    };
    let stat = rustix::fs::fstat(&fd)?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(not_a_regular_file(kind));
    }
    let len = u64::try_from(stat.st_size).unwrap_or(0);
    let ours = stat.st_uid == rustix::process::getuid().as_raw();
    Ok(NamedFile { file: File::from(fd), path: path.to_owned(), len, ours })
}

fn meta_mode(meta: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::MetadataExt::mode(meta)
}

fn not_a_regular_file(kind: FileType) -> io::Error {
    let what = match kind {
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        FileType::Directory => "a folder",
        FileType::Symlink => "a symbolic link",
        _ => "not a file",
    };
    io::Error::new(io::ErrorKind::InvalidInput, format!("it is {what}, not a regular file; give a regular file"))
}

/// Puts the input into the sandbox as `input/input.csv` and returns its size.
///
/// A file the user named, too large to spool, is hard-linked in when it can
/// be (same filesystem, a file the user owns, `/proc` mounted): one system
/// call for any size instead of a copy, and the guest still only reads it, through
/// its read-only preopen; the link goes with the sandbox. Anything else is
/// copied into a new file (0600); a named file exactly at the size it was
/// measured at. Stops at the next chunk once `cancel` is set.
pub(crate) fn copy_input(sandbox: &Sandbox, input: StagedInput, cancel: &Cancel) -> Result<u64, RunError> {
    let target_error =
        |err: io::Error| RunError::Sandbox(io::Error::new(err.kind(), format!("cannot copy the input in: {err}")));
    let input_dir = sandbox.input_dir().map_err(target_error)?;
    // A spooled input's sandbox is on the memory root, another filesystem:
    // only inputs too large to spool are worth the attempt.
    if let Some(InputRest::File(named)) = &input.rest
        && named.ours
        && input.head.is_empty()
        && !input.fits_in_memory
    {
        match link_input(&named.file, input_dir) {
            Ok(()) => return Ok(named.len),
            Err(err) => tracing::debug!("input not linked ({err}), copying it"),
        }
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(PRIVATE_FILE);
    let mut target = input_dir.open_with(GUEST_INPUT_FILE, &options).map_err(target_error)?.into_std();
    io::Write::write_all(&mut target, &input.head).map_err(target_error)?;
    let mut copied = input.head.len() as u64;
    // A read error is the input's fault; a write error (a full disk) the sandbox's.
    let classify = |stop: Stop, path: PathBuf| match stop {
        Stop::Read(source) => RunError::InputUnreadable { path, source },
        Stop::Write(err) => target_error(err),
        Stop::Cancelled(err) => RunError::Sandbox(err),
    };
    match input.rest {
        Some(InputRest::File(named)) => {
            copied += copy_measured(named, &mut target, cancel).map_err(|(stop, path)| classify(stop, path))?
        }
        Some(InputRest::Reader(mut reader)) => {
            copied += copy_chunks(&mut reader, &mut target, cancel).map_err(|stop| classify(stop, READER.into()))?;
        }
        None => {}
    }
    Ok(copied)
}

/// How a reader that is not a file is named in messages.
const READER: &str = "<reader>";

/// Why a copy stopped.
enum Stop {
    /// Reading the input failed.
    Read(io::Error),
    /// Writing into the sandbox failed.
    Write(io::Error),
    /// The invocation was stopped.
    Cancelled(io::Error),
}

/// Copies `reader` to its end into `writer`, one read call at a time, and
/// stops before the next one once `cancel` is set.
fn copy_chunks(reader: &mut impl Read, writer: &mut impl io::Write, cancel: &Cancel) -> Result<u64, Stop> {
    let mut buffer = vec![0; READ_CHUNK];
    let mut copied = 0;
    loop {
        cancel.check().map_err(Stop::Cancelled)?;
        let read = match reader.read(&mut buffer) {
            Ok(0) => return Ok(copied),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Stop::Read(err)),
        };
        writer.write_all(&buffer[..read]).map_err(Stop::Write)?;
        copied += read as u64;
    }
}

/// Copies exactly the size `named` was measured at: never more (a file
/// appended to meanwhile would otherwise be copied past what was checked,
/// e.g. past the spool threshold), and an error if it became shorter.
/// Stops between chunks of [`FILE_CHUNK`] once `cancel` is set.
fn copy_measured(named: NamedFile, target: &mut File, cancel: &Cancel) -> Result<u64, (Stop, PathBuf)> {
    let NamedFile { file, path, len, .. } = named;
    let mut copied = 0;
    while copied < len {
        if let Err(err) = cancel.check() {
            return Err((Stop::Cancelled(err), path));
        }
        // File to file: std copies in the kernel (copy_file_range), `take`
        // included. Either side may fail: the kernel does not say which, and
        // a full disk is the one a write gives.
        let chunk = match io::copy(&mut (&file).take((len - copied).min(FILE_CHUNK)), target) {
            Ok(0) => break,
            Ok(chunk) => chunk,
            Err(err) if err.kind() == io::ErrorKind::StorageFull => return Err((Stop::Write(err), path)),
            Err(err) => return Err((Stop::Read(err), path)),
        };
        copied += chunk;
    }
    if copied < len {
        let message = format!(
            "it changed while it was read: it was {len} bytes when checked, only {copied} could be read; run again \
             once nothing writes to it"
        );
        return Err((Stop::Read(io::Error::new(io::ErrorKind::UnexpectedEof, message)), path));
    }
    if file.metadata().is_ok_and(|meta| meta.len() != len) {
        tracing::warn!(input = %path.display(), bytes = len, "the input changed while it was copied; the bytes it had when checked were used");
    }
    Ok(copied)
}

/// Hard-links the open `file` into `input_dir` as the guest's input.
///
/// Ambient authority: the link is made through `/proc/self/fd`, so the file
/// linked is the one opened and checked, whatever its path names now.
fn link_input(file: &File, input_dir: &Dir) -> io::Result<()> {
    let opened = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(rustix::fs::CWD, opened.as_str(), input_dir, GUEST_INPUT_FILE, AtFlags::SYMLINK_FOLLOW)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxRoot;

    fn scratch(name: &str) -> (PathBuf, SandboxRoot) {
        let base = std::env::temp_dir().join(format!("input-unit-{name}-{}", crate::fs::random_hex().expect("rng")));
        let root = SandboxRoot::open(&base.join("root")).expect("root");
        (base, root)
    }

    fn unreadable_reason(result: Result<StagedInput, RunError>) -> String {
        match result {
            Err(RunError::InputUnreadable { source, .. }) => source.to_string(),
            Err(other) => panic!("expected input-unreadable, got {other}"),
            Ok(_) => panic!("expected input-unreadable, got a staged input"),
        }
    }

    #[test]
    fn an_input_appended_to_after_it_was_measured_is_copied_at_its_measured_size() {
        let (base, root) = scratch("grow");
        let path = base.join("orders.csv");
        std::fs::write(&path, b"order_id,region\n1,north\n").expect("write");
        let staged = stage_input(Input::Path(path.clone()), 1 << 20, &Cancel::default()).expect("staged");
        assert!(staged.fits_in_memory);
        // A writer appends after the check: far past the spool threshold.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("open for append");
        io::Write::write_all(&mut file, &vec![b'x'; 2 << 20]).expect("append");
        let sandbox = root.create().expect("sandbox");
        let copied = copy_input(&sandbox, staged, &Cancel::default()).expect("copied");
        assert_eq!(copied, 24);
        let inside = sandbox.input_dir().expect("input").read(GUEST_INPUT_FILE).expect("read");
        assert_eq!(inside, b"order_id,region\n1,north\n", "exactly the bytes measured, nothing appended later");
        sandbox.close().expect("close");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn an_input_that_shrinks_after_it_was_measured_is_refused() {
        let (base, root) = scratch("shrink");
        let path = base.join("orders.csv");
        std::fs::write(&path, vec![b'a'; 4096]).expect("write");
        let staged = stage_input(Input::Path(path.clone()), 1 << 20, &Cancel::default()).expect("staged");
        std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(10)).expect("truncate");
        let sandbox = root.create().expect("sandbox");
        match copy_input(&sandbox, staged, &Cancel::default()) {
            Err(RunError::InputUnreadable { source, .. }) => {
                assert!(source.to_string().contains("changed while it was read"), "{source}");
            }
            Err(other) => panic!("expected input-unreadable, got {other}"),
            Ok(size) => panic!("a shrunken input was accepted at {size} bytes"),
        }
        sandbox.close().expect("close");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn fifos_devices_and_folders_are_refused_without_blocking() {
        let (base, _root) = scratch("kinds");
        let fifo = base.join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).expect("mkfifo");
        // No writer: a blocking open would never return.
        let reason = unreadable_reason(stage_input(Input::Path(fifo), 0, &Cancel::default()));
        assert!(reason.contains("is a FIFO") && reason.contains("give a regular file"), "{reason}");
        let reason = unreadable_reason(stage_input(Input::Path("/dev/zero".into()), 0, &Cancel::default()));
        assert!(reason.contains("character device"), "{reason}");
        let reason = unreadable_reason(stage_input(Input::Path(base.clone()), 0, &Cancel::default()));
        assert!(reason.contains("a folder"), "{reason}");
        let socket_path = base.join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket_path).expect("bind");
        let reason = unreadable_reason(stage_input(Input::Path(socket_path), 0, &Cancel::default()));
        assert!(reason.contains("a socket"), "{reason}");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    /// Gives `burst` bytes, then one byte per call, each after `pause`, forever.
    struct Trickle {
        burst: usize,
        pause: std::time::Duration,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.burst > 0 {
                let given = self.burst.min(buf.len());
                buf[..given].fill(b'x');
                self.burst -= given;
                return Ok(given);
            }
            std::thread::sleep(self.pause);
            buf[0] = b'x';
            Ok(1)
        }
    }

    #[test]
    fn an_endless_reader_stops_at_the_next_chunk_once_cancelled() {
        let (base, root) = scratch("endless");
        let pause = std::time::Duration::from_millis(2);
        let cancel = Cancel::default();
        let staged = stage_input(Input::Reader(Box::new(Trickle { burst: 4096, pause })), 16, &cancel).expect("staged");
        assert!(!staged.fits_in_memory);
        let sandbox = root.create().expect("sandbox");
        let copying = std::thread::spawn({
            let cancel = cancel.clone();
            move || {
                let result = copy_input(&sandbox, staged, &cancel);
                sandbox.close().expect("close");
                result
            }
        });
        // It trickles: it would go on forever.
        std::thread::sleep(pause * 20);
        assert!(!copying.is_finished(), "an endless reader is still being copied");
        cancel.cancel();
        match copying.join().expect("copy thread") {
            Err(RunError::Sandbox(err)) => assert_eq!(err.kind(), io::ErrorKind::Interrupted, "{err}"),
            Err(other) => panic!("expected the copy to be stopped, got {other}"),
            Ok(bytes) => panic!("an endless reader was copied to an end at {bytes} bytes"),
        }
        // Staging the head of a stream stops too.
        let result = stage_input(Input::Reader(Box::new(Trickle { burst: 0, pause })), 1 << 20, &cancel);
        assert!(matches!(result, Err(RunError::Sandbox(_))), "a cancelled invocation stages nothing");
        std::fs::remove_dir_all(base).expect("cleanup");
    }
}
