//! Tries to escape the sandbox and records every attempt, one line each, in
//! `<output-dir>/probe.txt`, then returns `Ok` with `outputs` = `["probe.txt"]`
//! (every count zero). `Err(io)` only if `probe.txt` cannot be written.
//!
//! Lines, in this order (`NAME\tok` or `NAME\terr: <error>`):
//!
//! - `read_etc_passwd`: `fs::read("/etc/passwd")`.
//! - `read_input_dotdot_passwd`: `fs::read("<input dir>/../../etc/passwd")`.
//! - `open_dotdot`: `File::open("..")`.
//! - `read_dir_root`: `fs::read_dir("/")`.
//! - `read_dir_dotdot`: `fs::read_dir("..")`.
//! - `read_dir_output_parent`: `fs::read_dir("<output-dir>/..")`.
//! - `read_dir_input_parent`: `fs::read_dir("<input dir>/..")`.
//! - `create_in_input`: `File::create("<input dir>/probe-created.txt")`.
//! - `write_input`: open the input file for writing (no truncation) and write
//!   `probe` at its start.
//! - `read_proc_self_environ`: `fs::read("/proc/self/environ")`.
//! - `tcp_connect`: `TcpStream::connect("127.0.0.1:1")`.
//! - `env\t<N>` and `args\t<N>`: how many variables `std::env::vars()` and
//!   arguments `std::env::args()` the guest sees.
//! - `list_output` then one `list\t<name>` line per entry of the output
//!   folder (listed before `probe.txt` is written), then `list_input` and one
//!   `list\t<name>` line per entry of the input folder: a test running two
//!   probes at once checks neither sees the other's files.
//!
//! A correct host makes every escape line `err` (the input folder is
//! read-only, nothing outside the two folders is reachable, there is no
//! network), shows `env\t0` and `args\t0`, lists nothing in the output folder
//! and only the input file in the input folder, and publishes `probe.txt`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::TcpStream;
use std::path::Path;

use test_programs::{Guest, PipelineError, Report, attempt_line, input_dir, io_error, report};

struct Probe;

/// Records one `list_<which>` attempt and, when it worked, a `list\t<name>`
/// line per entry of `dir`.
fn list(lines: &mut Vec<String>, which: &str, dir: &Path) {
    let names = fs::read_dir(dir).and_then(|entries| {
        entries
            .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<Vec<String>>>()
    });
    lines.push(attempt_line(which, &names));
    if let Ok(mut names) = names {
        names.sort();
        lines.extend(names.into_iter().map(|name| format!("list\t{name}")));
    }
}

impl Guest for Probe {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        let input_dir = input_dir(&input);
        let output = Path::new(&output_dir);
        let write_input = || OpenOptions::new().write(true).open(&input).and_then(|mut file| file.write_all(b"probe"));
        let mut lines = vec![
            attempt_line("read_etc_passwd", &fs::read("/etc/passwd")),
            attempt_line("read_input_dotdot_passwd", &fs::read(input_dir.join("../../etc/passwd"))),
            attempt_line("open_dotdot", &File::open("..")),
            attempt_line("read_dir_root", &fs::read_dir("/")),
            attempt_line("read_dir_dotdot", &fs::read_dir("..")),
            attempt_line("read_dir_output_parent", &fs::read_dir(output.join(".."))),
            attempt_line("read_dir_input_parent", &fs::read_dir(input_dir.join(".."))),
            attempt_line("create_in_input", &File::create(input_dir.join("probe-created.txt"))),
            attempt_line("write_input", &write_input()),
            attempt_line("read_proc_self_environ", &fs::read("/proc/self/environ")),
            attempt_line("tcp_connect", &TcpStream::connect("127.0.0.1:1")),
        ];
        lines.push(format!("env\t{}", std::env::vars_os().count()));
        lines.push(format!("args\t{}", std::env::args_os().count()));
        list(&mut lines, "list_output", output);
        list(&mut lines, "list_input", &input_dir);

        let mut text = lines.join("\n");
        text.push('\n');
        let path = output.join("probe.txt");
        fs::write(&path, text).map_err(|err| io_error(&format!("write {}", path.display()), &err))?;
        Ok(report(&["probe.txt"]))
    }
}

test_programs::export!(Probe with_types_in test_programs::bindings);
