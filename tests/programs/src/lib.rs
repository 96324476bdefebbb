//! Hostile and probing guests for the host's tests.
//!
//! Every example of this crate (`examples/*.rs`) is one component of the
//! `orders:pipeline` world (`wit/pipeline.wit`) that performs one attack on
//! the host: escaping the sandbox, exhausting time, memory or disk, crashing,
//! flooding the standard streams, planting links or odd names, lying in its
//! report. `test-programs-artifacts` builds them for `wasm32-wasip2` and gives
//! the host's tests their paths; `well_behaved` is the one polite tenant the
//! tests run after an attack to check the host still works.
//!
//! This library holds the bindings, generated once, and the few helpers the
//! examples share. An example exports its implementation with
//! `test_programs::export!(MyGuest with_types_in test_programs::bindings);`.

use std::io;
use std::path::{Component, Path, PathBuf};

/// The bindings of the `pipeline` world, generated once for every example.
///
/// They live in their own module because wit-bindgen's `#[macro_export]`ed
/// export macros clash with their own re-export when generated at a crate's
/// root. wit-bindgen's glue is `unsafe` by nature (canonical-ABI lowering,
/// `#[unsafe(export_name)]`, `#[unsafe(link_section)]`), but it is expanded
/// from another crate's macros, which the workspace's `deny(unsafe_code)` lint
/// does not report: no allowance is needed here nor in the examples.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "pipeline",
        pub_export_macro: true,
        default_bindings_module: "test_programs::bindings",
    });
}

pub use bindings::orders::pipeline::types::{ReasonCount, RegionTotal};
pub use bindings::{Guest, PipelineError, Report, export};

/// A report with every count at zero that lists `outputs`: what a guest
/// returns when the numbers do not matter to the test.
#[must_use]
pub fn report(outputs: &[&str]) -> Report {
    Report {
        rows: 0,
        accepted: 0,
        cancelled: 0,
        rejected: 0,
        reasons: Vec::new(),
        regions: Vec::new(),
        outputs: outputs.iter().map(|name| (*name).to_owned()).collect(),
    }
}

/// `pipeline-error::io` carrying `context` and the error's own message, so a
/// test can see what the host answered (`I/O error (os error 29) (Uncategorized)`,
/// `Operation not permitted (os error 63) (PermissionDenied)`, ...).
#[must_use]
pub fn io_error(context: &str, err: &io::Error) -> PipelineError {
    PipelineError::Io(format!("{context}: {err} ({:?})", err.kind()))
}

/// The folder holding the input file, as the guest sees it (`.` when `input`
/// names no folder).
#[must_use]
pub fn input_dir(input: &str) -> PathBuf {
    match Path::new(input).parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A relative path that leads from the folder `from` to `to`, both as the
/// guest sees them (absolute, or both relative to the same folder), by going
/// up to the root with `..` first: `("/out", "/input/a.csv")` gives
/// `../input/a.csv`. Used to plant symlinks that escape their folder.
#[must_use]
pub fn escape_path(from: &str, to: &str) -> PathBuf {
    let depth = Path::new(from).components().filter(|c| matches!(c, Component::Normal(_))).count();
    let mut path = PathBuf::new();
    for _ in 0..depth {
        path.push("..");
    }
    for component in Path::new(to).components() {
        if let Component::Normal(name) = component {
            path.push(name);
        }
    }
    path
}

/// The outcome of one attempt as one line of a probe's log: `NAME\tok` or
/// `NAME\terr: <error>`.
#[must_use]
pub fn attempt_line<T>(name: &str, result: &io::Result<T>) -> String {
    match result {
        Ok(_) => format!("{name}\tok"),
        Err(err) => format!("{name}\terr: {err}"),
    }
}

/// Raw `wasi:filesystem` descriptors, for what std cannot do on wasm32-wasip2:
/// `*at` calls relative to an open folder (std has no `openat`) and symlinks
/// (`std::os::wasi::fs` is still unstable).
#[cfg(target_os = "wasi")]
pub mod wasi_fs {
    use std::io;
    use std::path::{Component, Path};

    pub use wasip2::filesystem::types::{Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags};

    /// A WASI error as an `io::Error`, for `attempt_line` and `io_error`.
    #[must_use]
    pub fn to_io(err: ErrorCode) -> io::Error {
        io::Error::other(format!("{} ({})", err.message(), err.name()))
    }

    fn normal_components(path: &str) -> Vec<String> {
        Path::new(path)
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    }

    /// A read and mutate-directory descriptor for the folder `path` (as the
    /// guest sees it): the preopen that holds it (the deepest if several
    /// do), opened down to it with `open-at`. `None` when no preopen holds
    /// `path`.
    #[must_use]
    pub fn open_dir(path: &str) -> Option<Result<Descriptor, ErrorCode>> {
        let absolute = path.starts_with('/');
        let wanted = normal_components(path);
        let (preopen, prefix_len) = wasip2::filesystem::preopens::get_directories()
            .into_iter()
            .filter(|(_, name)| name.starts_with('/') == absolute)
            .map(|(descriptor, name)| (descriptor, normal_components(&name)))
            .filter(|(_, name)| wanted.starts_with(name))
            .max_by_key(|(_, name)| name.len())
            .map(|(descriptor, name)| (descriptor, name.len()))?;
        let rest = wanted[prefix_len..].join("/");
        if rest.is_empty() {
            return Some(Ok(preopen));
        }
        Some(preopen.open_at(PathFlags::empty(), &rest, OpenFlags::DIRECTORY, dir_flags()))
    }

    /// The flags of a folder descriptor that can list and change its folder.
    #[must_use]
    pub fn dir_flags() -> DescriptorFlags {
        DescriptorFlags::READ | DescriptorFlags::MUTATE_DIRECTORY
    }

    /// `symlink-at(target, name)` in the folder `dir` (as the guest sees it).
    /// `target` is stored as given: absolute and escaping targets are the point.
    ///
    /// # Errors
    ///
    /// When no preopen holds `dir`, or the host refuses.
    pub fn symlink(target: &str, dir: &str, name: &str) -> io::Result<()> {
        let folder = open_dir(dir)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no preopen holds {dir}")))?
            .map_err(to_io)?;
        folder.symlink_at(target, name).map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_path_goes_up_then_down() {
        assert_eq!(escape_path("/out", "/input/a.csv"), PathBuf::from("../input/a.csv"));
        assert_eq!(escape_path("/sandbox/out/", "/input/a.csv"), PathBuf::from("../../input/a.csv"));
        assert_eq!(escape_path("out", "input/a.csv"), PathBuf::from("../input/a.csv"));
    }

    #[test]
    fn input_dir_of_paths() {
        assert_eq!(input_dir("/input/orders.csv"), PathBuf::from("/input"));
        assert_eq!(input_dir("orders.csv"), PathBuf::from("."));
    }

    #[test]
    fn attempt_lines() {
        assert_eq!(attempt_line("x", &Ok::<(), io::Error>(())), "x\tok");
        let err: io::Result<()> = Err(io::Error::other("nope"));
        assert_eq!(attempt_line("x", &err), "x\terr: nope");
    }
}
