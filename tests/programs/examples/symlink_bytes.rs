//! Tries to fill the disk with symbolic links rather than files: a host that
//! charges a link nothing (or only a name) lets each one store its target,
//! up to about 4 KiB, for free.
//!
//! Makes `l0`, `l1`, ... in the output folder, each a symlink whose target
//! is 4,000 bytes of a harmless relative path (`abcdefg/abcdefg/...`, never
//! followed), with `wasi:filesystem` `symlink-at` on one descriptor of the
//! output folder, until one fails. It always ends with `Err(io("made N
//! links of B-byte targets, then: <error>"))`.
//!
//! A correct host charges each link its target (or the block that holds
//! it), so the disk quota stops the guest: `disk-quota`, after about
//! quota / 4 KiB links, well before a generous file limit.

use test_programs::{Guest, PipelineError, Report};

/// The length of each link's target.
const TARGET_BYTES: usize = 4000;

struct SymlinkBytes;

fn target() -> String {
    let mut target = "abcdefg/".repeat(TARGET_BYTES / 8);
    target.truncate(TARGET_BYTES);
    target
}

#[cfg(target_os = "wasi")]
fn make_links(output_dir: &str) -> Result<usize, (usize, std::io::Error)> {
    use test_programs::wasi_fs::{open_dir, to_io};
    const MOST: usize = 1_000_000;
    let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, format!("no preopen holds {output_dir}"));
    let folder = open_dir(output_dir).ok_or_else(|| (0, missing()))?.map_err(|err| (0, to_io(err)))?;
    let target = target();
    for n in 0..MOST {
        folder.symlink_at(&target, &format!("l{n}")).map_err(|err| (n, to_io(err)))?;
    }
    Ok(MOST)
}

/// Only so the example also builds natively.
#[cfg(not(target_os = "wasi"))]
fn make_links(_output_dir: &str) -> Result<usize, (usize, std::io::Error)> {
    let _ = target();
    Err((0, std::io::Error::from(std::io::ErrorKind::Unsupported)))
}

impl Guest for SymlinkBytes {
    fn process(_input: String, output_dir: String) -> Result<Report, PipelineError> {
        match make_links(&output_dir) {
            Ok(made) => Err(PipelineError::Io(format!("made {made} links of {TARGET_BYTES}-byte targets"))),
            Err((made, err)) => {
                Err(PipelineError::Io(format!("made {made} links of {TARGET_BYTES}-byte targets, then: {err}")))
            }
        }
    }
}

test_programs::export!(SymlinkBytes with_types_in test_programs::bindings);
