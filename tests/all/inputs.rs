//! Inputs that are not regular files, given to the `host` process: each ends
//! at once as `input-unreadable` (exit 3), with nothing left in the roots.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::Scratch;

/// Far beyond what the run needs: it only stops a hung host from hanging
/// the suite. Not a timing assertion.
const WATCHDOG: Duration = Duration::from_secs(120);

/// Runs `host run <input> --json` and waits for it, killing it (and failing)
/// if it is still running when the watchdog fires.
fn run_watched(scratch: &Scratch, input: &std::path::Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_host"))
        .arg("run")
        .arg(input)
        .arg("--out")
        .arg(scratch.join("out"))
        .args(scratch.root_args())
        .args(["--json", "--no-cache"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("host starts");
    let started = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if started.elapsed() > WATCHDOG => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`host run {}` still ran after {WATCHDOG:?}: the input hangs the host", input.display());
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn assert_refused(scratch: &Scratch, input: &std::path::Path, what: &str) {
    let output = run_watched(scratch, input);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(json["outcome"], "input-unreadable");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(what) && stderr.contains("give a regular file"), "{stderr}");
    assert_eq!(scratch.leftovers(), Vec::<String>::new(), "nothing left in the roots");
    assert!(!scratch.join("out").exists(), "nothing delivered");
}

#[test]
fn a_fifo_as_input_ends_at_once_as_input_unreadable() {
    let scratch = Scratch::new("fifo-input");
    let fifo = scratch.join("orders.csv");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0)
        .expect("mkfifo");
    // No writer ever opens it: a host that opened it blocking would hang here.
    assert_refused(&scratch, &fifo, "is a FIFO");
}

#[test]
fn a_character_device_as_input_ends_at_once_as_input_unreadable() {
    let scratch = Scratch::new("device-input");
    assert_refused(&scratch, std::path::Path::new("/dev/zero"), "is a character device");
}
