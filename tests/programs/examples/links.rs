//! Plants links in the output folder, for a host that publishes, copies or
//! cleans it up without following them:
//!
//! - `passwd`: symlink to `/etc/passwd` (absolute target);
//! - `up`: symlink to the input file by a relative path that climbs out of
//!   the output folder (`../input/orders.csv` for output `/out` and input
//!   `/input/orders.csv`: computed from the arguments);
//! - `self`: symlink to `.` (a loop for recursive walkers);
//! - `hard.csv`: hard link to the input file (`fs::hard_link`);
//! - `subdir`: a folder holding `inner.csv`.
//!
//! Symlinks are made with `wasi:filesystem` `symlink-at` on the output
//! folder's descriptor (`std::os::wasi::fs` is unstable), the target stored
//! as given. Records which of them worked in `<output-dir>/links.txt`, one line each
//! (`NAME\tok` or `NAME\terr: <error>`, in the order above), and returns `Ok`
//! with `outputs` = `["passwd", "up", "self", "hard.csv", "subdir",
//! "links.txt"]`, every count zero. `Err(io)` only if `links.txt` cannot be
//! written. The input is only linked to, never read.
//!
//! A correct host refuses or neutralises the escaping links (WASI forbids
//! absolute and escaping symlink targets; a hard link across the two
//! preopens should fail), publishes only regular files that live in the
//! output folder (never the target of a symlink, never a folder), and
//! removes everything when cleaning up without touching the link targets.

use std::fs;
use std::io;
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, attempt_line, escape_path, io_error, report};

struct Links;

/// `<dir>/<name>` -> `target`, the target stored as given.
#[cfg(target_os = "wasi")]
fn symlink(target: &str, dir: &str, name: &str) -> io::Result<()> {
    test_programs::wasi_fs::symlink(target, dir, name)
}

/// `<dir>/<name>` -> `target` (only so the example also builds natively).
#[cfg(unix)]
fn symlink(target: &str, dir: &str, name: &str) -> io::Result<()> {
    std::os::unix::fs::symlink(target, Path::new(dir).join(name))
}

#[cfg(not(any(unix, target_os = "wasi")))]
fn symlink(_target: &str, _dir: &str, _name: &str) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

impl Guest for Links {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        let out = Path::new(&output_dir);
        let subdir = out.join("subdir");
        let lines = [
            attempt_line("passwd", &symlink("/etc/passwd", &output_dir, "passwd")),
            attempt_line("up", &symlink(&escape_path(&output_dir, &input).to_string_lossy(), &output_dir, "up")),
            attempt_line("self", &symlink(".", &output_dir, "self")),
            attempt_line("hard.csv", &fs::hard_link(&input, out.join("hard.csv"))),
            attempt_line(
                "subdir",
                &fs::create_dir(&subdir).and_then(|()| fs::write(subdir.join("inner.csv"), "order_id\n1\n")),
            ),
        ];
        let path = out.join("links.txt");
        fs::write(&path, lines.join("\n") + "\n")
            .map_err(|err| io_error(&format!("write {}", path.display()), &err))?;
        Ok(report(&["passwd", "up", "self", "hard.csv", "subdir", "links.txt"]))
    }
}

test_programs::export!(Links with_types_in test_programs::bindings);
