//! Default sandbox roots that another local user got to first: the `host`
//! process falls back to a private root of its own and never follows a link
//! planted at the default path; a root the user named is refused instead,
//! with advice that works. Run as root, with uid 65534 standing in for the
//! other user (skipped, with a message, when not root).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::{Scratch, seven_rows};

fn is_root() -> bool {
    let root = rustix::process::getuid().is_root();
    if !root {
        println!("skipped: simulating another user's folder needs chown, so root");
    }
    root
}

/// A machine of its own for the `host` process: its temp folder, home and
/// cache folder are in `scratch`.
struct Machine {
    scratch: Scratch,
}

impl Machine {
    fn new(name: &str) -> Self {
        let scratch = Scratch::new(name);
        for folder in ["tmp", "home", "cache"] {
            std::fs::create_dir(scratch.join(folder)).expect("mkdir");
        }
        Self { scratch }
    }

    /// Where the first default root is in this machine's temp folder.
    fn default_root(&self) -> PathBuf {
        self.scratch.join(&format!("tmp/orders-host-{}", rustix::process::getuid().as_raw()))
    }

    /// The fallback: in the cache folder, `$XDG_CACHE_HOME`.
    fn fallback_root(&self) -> PathBuf {
        self.scratch.join("cache/orders-host-sandboxes")
    }

    /// `host ARGS` with this machine's environment; spooling off, so every
    /// sandbox is on the disk root under test.
    fn host(&self, args: &[&std::ffi::OsStr]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_host"))
            .args(args)
            .env("TMPDIR", self.scratch.join("tmp"))
            .env("HOME", self.scratch.join("home"))
            .env("XDG_CACHE_HOME", self.scratch.join("cache"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUST_LOG")
            .output()
            .expect("the host binary starts")
    }

    fn run(&self, extra: &[&std::ffi::OsStr]) -> Output {
        let input = self.scratch.write("orders.csv", seven_rows());
        let out = self.scratch.join("orders.out");
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["run".as_ref(), input.as_os_str(), "--out".as_ref(), out.as_os_str(), "--force".as_ref()];
        args.extend(["--spool-threshold", "0", "--no-cache"].map(std::ffi::OsStr::new));
        args.extend(extra);
        let output = self.host(&args);
        std::fs::remove_file(input).expect("rm input");
        output
    }
}

fn names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", path.display()))
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A sandbox as a killed host leaves it: nobody holds its lock.
fn plant_dead_sandbox(root: &Path) -> PathBuf {
    let sandbox = root.join("sbx-0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(sandbox.join("out")).expect("mkdir");
    std::fs::write(sandbox.join("out/summary.csv"), "left by a killed host\n").expect("write");
    sandbox
}

#[test]
fn a_default_root_made_first_by_another_user_gives_way_to_a_private_fallback() {
    if !is_root() {
        return;
    }
    let machine = Machine::new("roots-taken");
    let taken = machine.default_root();
    std::fs::create_dir(&taken).expect("mkdir");
    std::fs::set_permissions(&taken, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::os::unix::fs::chown(&taken, Some(65534), Some(65534)).expect("chown");
    // A killed host's sandbox in the fallback: the start's sweep must find it.
    std::fs::create_dir_all(machine.fallback_root()).expect("mkdir");
    std::fs::set_permissions(machine.fallback_root(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let dead = plant_dead_sandbox(&machine.fallback_root());

    let output = machine.run(&[]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{message}");
    assert!(message.contains("belongs to uid 65534"), "the fallback is explained: {message}");
    assert!(message.contains(&machine.fallback_root().display().to_string()), "{message}");
    assert!(machine.scratch.join("orders.out/summary.csv").is_file());
    assert!(!dead.exists(), "the sweep at start covers the fallback root");
    assert_eq!(names(&taken), Vec::<String>::new(), "nothing of ours in the other user's folder");
    assert_eq!(names(&machine.fallback_root()), Vec::<String>::new(), "nothing left in the fallback");
    let mode = std::fs::metadata(machine.fallback_root()).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    // `host sweep` with no root named covers the fallback too.
    let dead = plant_dead_sandbox(&machine.fallback_root());
    let output = machine.host(&["sweep".as_ref()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("removed 1"), "{}", stderr(&output));
    assert!(!dead.exists());
}

#[test]
fn a_link_planted_at_the_default_root_is_not_followed() {
    if !is_root() {
        return;
    }
    let machine = Machine::new("roots-link");
    let victim = machine.scratch.join("victim");
    std::fs::create_dir(&victim).expect("mkdir");
    std::os::unix::fs::chown(&victim, Some(65534), Some(65534)).expect("chown");
    std::os::unix::fs::symlink(&victim, machine.default_root()).expect("plant the link");

    let output = machine.run(&[]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{message}");
    assert!(message.contains("symbolic link"), "{message}");
    assert_eq!(names(&victim), Vec::<String>::new(), "the link's target got nothing");
    assert!(std::fs::symlink_metadata(machine.default_root()).expect("lstat").file_type().is_symlink());
    assert_eq!(names(&machine.fallback_root()), Vec::<String>::new());
}

#[test]
fn a_named_root_of_another_user_is_refused_with_advice_that_works() {
    if !is_root() {
        return;
    }
    let machine = Machine::new("roots-named");
    let theirs = machine.scratch.join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");

    let output = machine.run(&["--sandbox-root".as_ref(), theirs.as_os_str()]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.contains("belongs to uid 65534") && message.contains("choose another --sandbox-root"), "{message}");
    assert!(!message.contains("chmod"), "chmod cannot make another user's folder ours: {message}");
    assert_eq!(names(&theirs), Vec::<String>::new());
    assert!(!machine.scratch.join("orders.out").exists(), "nothing delivered");
}
