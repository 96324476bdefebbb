//! Builds a folder chain 5000 deep under the output folder, `d/d/d/…/d`, with
//! `bottom.txt` (`bottom\n`) in the deepest folder: about 10,000 bytes of
//! path, far past Linux's `PATH_MAX` (4096), for a host that walks, copies or
//! deletes the output folder by full paths or by unbounded recursion.
//!
//! On wasm32-wasip2 it works descriptor by descriptor, the cheapest way WASI
//! allows and with no path-length limit: it finds the preopen holding
//! `output-dir`, then repeats `create-directory-at("d")` and
//! `open-at("d")` on the newest folder (dropping the previous descriptor).
//! If no preopen holds `output-dir` it falls back to `std::fs::create_dir`
//! of a growing relative path. Returns `Err(io("deep_tree reached depth N:
//! <step>: <error>"))` at the first failure, N being the number of folders
//! created, else `Ok` with `outputs` = `["d"]` (the top of the chain, a
//! folder), every count zero. The input is ignored.
//!
//! A correct host either caps the depth (the run fails with the depth
//! reached) or copes with it: it publishes no folder, and removes the whole
//! chain when cleaning up (iteratively or descriptor-relative), without
//! crashing or leaving it behind.

use std::fs;
use std::path::PathBuf;

use test_programs::{Guest, PipelineError, Report, report};

const DEPTH: usize = 5000;
const FOLDER: &str = "d";
const BOTTOM: &str = "bottom.txt";

/// Why the chain stopped: how deep it got and what failed.
struct Stopped {
    depth: usize,
    error: String,
}

impl Stopped {
    fn new(depth: usize, step: &str, error: impl std::fmt::Display) -> Self {
        Self { depth, error: format!("{step}: {error}") }
    }
}

/// The chain by paths: `create_dir("<out>/d")`, `create_dir("<out>/d/d")`, ...
fn build_by_paths(output_dir: &str) -> Result<(), Stopped> {
    let mut path = PathBuf::from(output_dir);
    for depth in 0..DEPTH {
        path.push(FOLDER);
        fs::create_dir(&path).map_err(|err| Stopped::new(depth, "create_dir", err))?;
    }
    path.push(BOTTOM);
    fs::write(&path, "bottom\n").map_err(|err| Stopped::new(DEPTH, "write bottom.txt", err))
}

/// The chain by descriptors, or `None` when no preopen holds `output_dir`.
#[cfg(target_os = "wasi")]
fn build_by_descriptors(output_dir: &str) -> Option<Result<(), Stopped>> {
    use test_programs::wasi_fs::{DescriptorFlags, OpenFlags, PathFlags, dir_flags, open_dir};

    let chain = |mut dir: test_programs::wasi_fs::Descriptor| -> Result<(), Stopped> {
        for depth in 0..DEPTH {
            dir.create_directory_at(FOLDER).map_err(|err| Stopped::new(depth, "create-directory-at", err))?;
            dir = dir
                .open_at(PathFlags::empty(), FOLDER, OpenFlags::DIRECTORY, dir_flags())
                .map_err(|err| Stopped::new(depth + 1, "open-at", err))?;
        }
        let file = dir
            .open_at(PathFlags::empty(), BOTTOM, OpenFlags::CREATE, DescriptorFlags::WRITE)
            .map_err(|err| Stopped::new(DEPTH, "create bottom.txt", err))?;
        file.write(b"bottom\n", 0).map_err(|err| Stopped::new(DEPTH, "write bottom.txt", err))?;
        Ok(())
    };
    Some(match open_dir(output_dir)? {
        Ok(dir) => chain(dir),
        Err(err) => Err(Stopped::new(0, "open output folder", err)),
    })
}

fn build(output_dir: &str) -> Result<(), Stopped> {
    #[cfg(target_os = "wasi")]
    if let Some(result) = build_by_descriptors(output_dir) {
        return result;
    }
    build_by_paths(output_dir)
}

struct DeepTree;

impl Guest for DeepTree {
    fn process(_input: String, output_dir: String) -> Result<Report, PipelineError> {
        build(&output_dir).map_err(|Stopped { depth, error }| {
            PipelineError::Io(format!("deep_tree reached depth {depth}: {error}"))
        })?;
        Ok(report(&[FOLDER]))
    }
}

test_programs::export!(DeepTree with_types_in test_programs::bindings);
