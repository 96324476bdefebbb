//! The input of an invocation: opened and measured before a sandbox is
//! chosen for it (small inputs are spooled), then put into the sandbox.

use std::io::{self, Read};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _};
use rustix::fs::AtFlags;

use crate::error::RunError;
use crate::runner::Input;
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
    File {
        file: std::fs::File,
        path: PathBuf,
    },
    Reader(Box<dyn Read + Send>),
}

pub(crate) fn stage_input(input: Input, threshold: u64) -> Result<StagedInput, RunError> {
    match input {
        Input::Bytes(bytes) => {
            let fits_in_memory = bytes.len() as u64 <= threshold;
            Ok(StagedInput { head: bytes, rest: None, fits_in_memory })
        }
        Input::Path(path) => {
            let unreadable = |source: io::Error| RunError::InputUnreadable { path: path.clone(), source };
            // Ambient authority: the user named this file.
            let file = std::fs::File::open(&path).map_err(unreadable)?;
            let meta = file.metadata().map_err(unreadable)?;
            if !meta.is_file() {
                return Err(unreadable(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
            }
            let fits_in_memory = meta.len() <= threshold;
            Ok(StagedInput { head: Vec::new(), rest: Some(InputRest::File { file, path }), fits_in_memory })
        }
        Input::Reader(mut reader) => {
            // Read one byte past the threshold to learn on which side it is.
            let mut head = Vec::new();
            let limit = threshold.saturating_add(1);
            (&mut reader)
                .take(limit)
                .read_to_end(&mut head)
                .map_err(|source| RunError::InputUnreadable { path: PathBuf::from("<reader>"), source })?;
            let fits_in_memory = (head.len() as u64) < limit;
            let rest = (!fits_in_memory).then_some(InputRest::Reader(reader));
            Ok(StagedInput { head, rest, fits_in_memory })
        }
    }
}

/// Puts the input into the sandbox as `input/input.csv` and returns its size.
///
/// A file the user named, too large to spool, is hard-linked in when it can
/// be (same filesystem, a file the user owns, `/proc` mounted): one system
/// call for any size instead of a copy, and the guest still only reads it, through
/// its read-only preopen; the link goes with the sandbox. Anything else is
/// copied into a new file (0600).
pub(crate) fn copy_input(sandbox: &Sandbox, input: StagedInput) -> Result<u64, RunError> {
    let target_error =
        |err: io::Error| RunError::Sandbox(io::Error::new(err.kind(), format!("cannot copy the input in: {err}")));
    let input_dir = sandbox.input_dir().map_err(target_error)?;
    // A spooled input's sandbox is on the memory root, another filesystem:
    // only inputs too large to spool are worth the attempt.
    if let Some(InputRest::File { file, .. }) = &input.rest
        && input.head.is_empty()
        && !input.fits_in_memory
    {
        match link_input(file, input_dir) {
            Ok(size) => return Ok(size),
            Err(err) => tracing::debug!("input not linked ({err}), copying it"),
        }
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let mut target = input_dir.open_with(GUEST_INPUT_FILE, &options).map_err(target_error)?.into_std();
    io::Write::write_all(&mut target, &input.head).map_err(target_error)?;
    let mut copied = input.head.len() as u64;
    // A read error is the input's fault; a full disk the sandbox's.
    let classify = |err: io::Error, path: PathBuf| {
        if err.kind() == io::ErrorKind::StorageFull {
            target_error(err)
        } else {
            RunError::InputUnreadable { path, source: err }
        }
    };
    match input.rest {
        // File to file: std copies in the kernel (copy_file_range).
        Some(InputRest::File { mut file, path }) => {
            copied += io::copy(&mut file, &mut target).map_err(|err| classify(err, path))?;
        }
        Some(InputRest::Reader(mut reader)) => {
            let mut buffered = io::BufWriter::with_capacity(256 * 1024, target);
            copied += io::copy(&mut reader, &mut buffered).map_err(|err| classify(err, "<reader>".into()))?;
            io::Write::flush(&mut buffered).map_err(target_error)?;
        }
        None => {}
    }
    Ok(copied)
}

/// Hard-links the open `file` into `input_dir` as the guest's input.
///
/// Ambient authority: the link is made through `/proc/self/fd`, so the file
/// linked is the one opened and checked, whatever its path names now.
fn link_input(file: &std::fs::File, input_dir: &Dir) -> io::Result<u64> {
    let opened = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(rustix::fs::CWD, opened.as_str(), input_dir, GUEST_INPUT_FILE, AtFlags::SYMLINK_FOLLOW)?;
    Ok(file.metadata()?.len())
}
