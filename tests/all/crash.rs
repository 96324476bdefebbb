//! Cleanup that survives the host: Ctrl-C and SIGTERM during a run, SIGKILL
//! followed by a sweep, and a sweep beside a live host.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::util::Scratch;

/// Starts `host run <sleep guest> <input>` on its own sandbox root.
fn start_sleeper(scratch: &Scratch, millis: &str) -> Child {
    let input = scratch.write("sleep.txt", millis);
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["run", test_programs_artifacts::SLEEP])
        .arg(&input)
        .arg("--out")
        .arg(scratch.join("out"))
        .args(scratch.root_args())
        .args(["--timeout", "10m"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("host starts")
}

/// Waits until the guest is running: its sandbox holds `out/slept.txt`.
fn wait_for_guest(scratch: &Scratch) -> PathBuf {
    scratch.wait_for_sandbox(|sandbox| sandbox.join("out/slept.txt").exists().then(|| sandbox.to_owned()))
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
}

fn sweep(scratch: &Scratch) -> String {
    let output =
        Command::new(env!("CARGO_BIN_EXE_host")).arg("sweep").args(scratch.root_args()).output().expect("sweep runs");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn interrupted_run_removes_its_sandbox(signal_name: &str) {
    let scratch = Scratch::new(&format!("sig{signal_name}"));
    let child = start_sleeper(&scratch, "3600000");
    wait_for_guest(&scratch);
    signal(&child, signal_name);
    let output = child.wait_with_output().expect("host exits");
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("interrupted"));
    assert_eq!(scratch.leftovers(), Vec::<String>::new(), "the sandbox and its lock are gone");
    assert!(!scratch.join("out").exists());
}

#[test]
fn ctrl_c_stops_the_run_and_removes_the_sandbox() {
    interrupted_run_removes_its_sandbox("INT");
}

#[test]
fn sigterm_stops_the_run_and_removes_the_sandbox() {
    interrupted_run_removes_its_sandbox("TERM");
}

#[test]
fn a_sweep_removes_the_sandbox_of_a_killed_host() {
    let scratch = Scratch::new("kill9");
    let mut child = start_sleeper(&scratch, "3600000");
    let sandbox = wait_for_guest(&scratch);
    signal(&child, "KILL");
    child.wait().expect("reaped");
    assert!(sandbox.exists(), "SIGKILL leaves the sandbox behind");
    let report = sweep(&scratch);
    assert!(report.contains("removed 1"), "{report}");
    assert_eq!(scratch.leftovers(), Vec::<String>::new());
}

#[test]
fn a_sweep_never_touches_the_sandbox_of_a_running_host() {
    let scratch = Scratch::new("live");
    let child = start_sleeper(&scratch, "2000");
    let sandbox = wait_for_guest(&scratch);
    let report = sweep(&scratch);
    assert!(report.contains("removed 0") && report.contains("left 1"), "{report}");
    assert!(sandbox.join("out/slept.txt").exists(), "the live sandbox is intact");
    let output = child.wait_with_output().expect("host exits");
    assert_eq!(output.status.code(), Some(0), "the live run finishes: {}", String::from_utf8_lossy(&output.stderr));
    assert!(scratch.join("out/slept.txt").exists());
    assert_eq!(scratch.leftovers(), Vec::<String>::new());
}

#[test]
fn the_next_host_start_sweeps_what_a_killed_host_left() {
    let scratch = Scratch::new("restart");
    let mut child = start_sleeper(&scratch, "3600000");
    wait_for_guest(&scratch);
    signal(&child, "KILL");
    child.wait().expect("reaped");
    let input = scratch.write("orders.csv", crate::util::seven_rows());
    let output = Command::new(env!("CARGO_BIN_EXE_host"))
        .arg("run")
        .arg(&input)
        .args(scratch.root_args())
        .output()
        .expect("host runs");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(scratch.leftovers(), Vec::<String>::new(), "the dead host's sandbox was swept");
}
