//! `host exec` and `Runner::exec`: ordinary WASI programs, each test run for
//! both kinds (`wasi_probe` built as a preview1 core module and as a
//! `wasi:cli/command` component), through the same sandbox and limits.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use orders_host::program::ProgramKind;
use orders_host::{ByteSize, Destination, Exec, ExecError, ExecOutcome, Limits, Outcome};
use test_programs_artifacts::{WASI_PROBE_COMMAND, WASI_PROBE_MODULE};

use crate::util::TestHost;

/// Both kinds of the probe, with the kind the host must see.
const PROBES: [(&str, ProgramKind); 2] =
    [(WASI_PROBE_MODULE, ProgramKind::Preview1Module), (WASI_PROBE_COMMAND, ProgramKind::Component)];

fn limits() -> Limits {
    Limits { timeout: Duration::from_secs(20), ..Limits::default() }
}

async fn exec(
    host: &TestHost,
    probe: &str,
    args: &[&str],
    adjust: impl FnOnce(Exec) -> Exec,
) -> Result<ExecOutcome, ExecError> {
    let command = host.runner.load_command_file(Path::new(probe)).expect("the probe loads");
    let exec = adjust(Exec::new(command).args(args.iter().copied()).limits(limits()));
    host.runner.exec(exec).await
}

fn stdout(outcome: &ExecOutcome) -> &str {
    &outcome.stdout.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kinds_load_and_are_told_apart() {
    let host = TestHost::new("exec-kinds");
    for (probe, kind) in PROBES {
        let command = host.runner.load_command_file(Path::new(probe)).expect("loads");
        assert_eq!(command.kind(), kind, "{probe}");
    }
    let err = host.runner.load_command("notes.txt", b"just some text\n".to_vec()).expect_err("not a program");
    assert_eq!(err.outcome(), Outcome::ComponentInvalid);
    assert!(err.to_string().contains("not a WebAssembly program"), "{err}");
    let pipeline = orders_host::BUNDLED_PIPELINE.to_vec();
    let err = host.runner.load_command("pipeline.wasm", pipeline).expect_err("not a command");
    assert!(err.to_string().contains("not a wasi:cli/command"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_is_the_file_name_and_the_arguments_and_env_only_the_pairs_given() {
    let host = TestHost::new("exec-args");
    for (probe, _) in PROBES {
        let outcome = exec(&host, probe, &["args", "one", "two three", ""], |exec| exec).await.expect("runs");
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(stdout(&outcome), "wasi_probe.wasm\nargs\none\ntwo three\n\n", "{probe}");
        let outcome = exec(&host, probe, &["env"], |exec| exec.env("B", "x=y").env("A", "1")).await.expect("runs");
        assert_eq!(stdout(&outcome), "A=1\nB=x=y\n", "{probe}: nothing of the host's environment");
        let outcome = exec(&host, probe, &["stdin"], |exec| exec).await.expect("runs");
        assert_eq!(stdout(&outcome), "stdin: 0 bytes\n", "{probe}: stdin is empty");
        let outcome = exec(&host, probe, &["clocks-random"], |exec| exec).await.expect("runs");
        assert_eq!((outcome.exit_code, stdout(&outcome)), (0, "monotonic true, wall true, random true\n"));
        let outcome = exec(&host, probe, &["preopens"], |exec| exec).await.expect("runs");
        assert_eq!(stdout(&outcome), "/\n", "{probe}: one preopen, `/`");
    }
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_the_programs_own() {
    let host = TestHost::new("exec-exit");
    for (probe, kind) in PROBES {
        let code = |args: &'static [&'static str]| {
            let host = &host;
            async move { exec(host, probe, args, |exec| exec).await.expect("exits by itself").exit_code }
        };
        assert_eq!(code(&["exit-with-code", "33"]).await, 33, "{probe}");
        assert_eq!(code(&["exit-with-code", "0"]).await, 0, "{probe}");
        assert_eq!(code(&["exit-with-code", "255"]).await, 255, "{probe}");
        // std's exit: preview1 `proc_exit(33)` keeps its code; WASI 0.2's std
        // calls `exit(err)`, which is 1 under wasmtime's CLI too.
        let expected = if kind == ProgramKind::Preview1Module { 33 } else { 1 };
        assert_eq!(code(&["exit", "33"]).await, expected, "{probe}");
        // A code that does not fit a byte is a failure, never a success.
        if kind == ProgramKind::Preview1Module {
            assert_eq!(code(&["exit", "256"]).await, 1, "{probe}");
        }
        let trap = exec(&host, probe, &["trap"], |exec| exec).await.expect_err("a trap");
        assert_eq!(trap.error.outcome(), Outcome::Trap, "{probe}: {}", trap.error);
        assert_eq!(trap.exit_code, None);
    }
    host.assert_root_empty();
}

/// A seeded folder, changed the way real tools change folders (renames,
/// hard links, symlinks, truncation, removal), and delivered as left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_folder_is_walked_changed_and_delivered() {
    let host = TestHost::new("exec-walk");
    let seed = host.scratch.join("seed");
    std::fs::create_dir_all(seed.join("data/empty")).expect("seed folders");
    std::fs::write(seed.join("data/in.txt"), "seeded text\n").expect("seed file");
    for (index, (probe, _)) in PROBES.into_iter().enumerate() {
        let out = host.scratch.join(&format!("out-{index}"));
        let destination = Destination::Folder { path: out.clone(), force: false };
        let outcome =
            exec(&host, probe, &["walk"], |exec| exec.seed(&seed).destination(destination)).await.expect("runs");
        assert_eq!(outcome.exit_code, 0, "{probe}: {}", stdout(&outcome));
        assert_eq!(
            stdout(&outcome),
            "seeded: seeded text\nto-b -> b.txt reads SEEDED TEXT\n/data/\n/data/empty/\n/data/in.txt 12 bytes\n\
             /made/\n/made/b.txt 2 bytes\n",
            "{probe}"
        );
        let names: Vec<&str> = outcome.outputs.iter().map(|file| file.name.as_str()).collect();
        assert_eq!(names, ["data/in.txt", "made/b.txt"]);
        assert_eq!(std::fs::read_to_string(out.join("made/b.txt")).expect("delivered"), "SE");
        assert_eq!(std::fs::read_to_string(out.join("data/in.txt")).expect("delivered"), "seeded text\n");
        let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        assert_eq!((mode(&out), mode(&out.join("data/empty")), mode(&out.join("made/b.txt"))), (0o700, 0o700, 0o600));
    }
    assert_eq!(std::fs::read_to_string(seed.join("data/in.txt")).expect("seed"), "seeded text\n", "the seed is a copy");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_in_the_seed_or_left_for_delivery_is_refused_by_name() {
    let host = TestHost::new("exec-links");
    let seed = host.scratch.join("seed");
    std::fs::create_dir_all(seed.join("sub")).expect("seed");
    std::os::unix::fs::symlink("/etc/passwd", seed.join("sub/passwd")).expect("link");
    let err = exec(&host, WASI_PROBE_MODULE, &["args"], |exec| exec.seed(&seed)).await.expect_err("refused");
    assert_eq!(err.error.outcome(), Outcome::InvalidArgument);
    assert!(err.error.to_string().contains("sub/passwd"), "{}", err.error);
    assert!(err.error.to_string().contains("symbolic link"), "{}", err.error);

    for (index, (probe, _)) in PROBES.into_iter().enumerate() {
        let out = host.scratch.join(&format!("out-{index}"));
        let destination = Destination::Folder { path: out.clone(), force: false };
        let err = exec(&host, probe, &["leave-link"], |exec| exec.destination(destination)).await.expect_err("refused");
        assert_eq!(err.error.outcome(), Outcome::ContractViolation, "{probe}: {}", err.error);
        assert!(err.error.to_string().contains("`link`"), "{}", err.error);
        assert_eq!(err.exit_code, Some(0), "the program succeeded; its delivery did not");
        assert!(!out.exists(), "nothing delivered");
        // Without a destination nothing is collected: the same program succeeds.
        let outcome = exec(&host, probe, &["leave-link"], |exec| exec).await.expect("runs");
        assert_eq!(outcome.exit_code, 0);
    }
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_counts_against_the_program_s_limits() {
    let host = TestHost::new("exec-seed-limits");
    let seed = host.scratch.join("seed");
    std::fs::create_dir_all(&seed).expect("seed");
    std::fs::write(seed.join("big.bin"), vec![7u8; 600 << 10]).expect("seed file");
    let small = Limits { disk_quota: ByteSize(512 << 10), ..limits() };
    let err = exec(&host, WASI_PROBE_MODULE, &["args"], |exec| exec.seed(&seed).limits(small)).await.expect_err("over");
    assert_eq!(err.error.outcome(), Outcome::InvalidArgument);
    assert!(err.error.to_string().contains("disk quota"), "{}", err.error);
    // Within the quota, the seed's bytes are the program's: it can write
    // only what is left, and deleting a seeded file gives back its room.
    let quota = Limits { disk_quota: ByteSize(1 << 20), ..limits() };
    let err = exec(&host, WASI_PROBE_MODULE, &["disk-bomb"], |exec| exec.seed(&seed).limits(quota))
        .await
        .expect_err("the bomb fails");
    assert_eq!(err.error.outcome(), Outcome::DiskQuota, "{}", err.error);
    host.assert_root_empty();
}

/// Every limit of `host run` stops both kinds of program, through the one
/// wrapped filesystem and store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_file_folder_and_memory_bombs_stop_at_their_limits() {
    let host = TestHost::new("exec-bombs");
    let bounded = Limits {
        disk_quota: ByteSize(1 << 20),
        max_files: 100,
        max_folders: 20,
        memory: ByteSize(32 << 20),
        ..limits()
    };
    for (probe, _) in PROBES {
        for (mode, outcome) in [
            ("disk-bomb", Outcome::DiskQuota),
            ("file-bomb", Outcome::FileLimit),
            ("folder-bomb", Outcome::FileLimit),
            ("memory-bomb", Outcome::MemoryLimit),
        ] {
            let err = exec(&host, probe, &[mode], |exec| exec.limits(bounded)).await.expect_err(mode);
            assert_eq!(err.error.outcome(), outcome, "{probe} {mode}: {}", err.error);
            host.assert_root_empty();
        }
        let spin = Limits { timeout: Duration::from_millis(500), ..limits() };
        let err = exec(&host, probe, &["spin"], |exec| exec.limits(spin)).await.expect_err("spins");
        assert_eq!(err.error.outcome(), Outcome::Timeout, "{probe}");
        let err = exec(&host, probe, &["sleep", "600000"], |exec| exec.limits(spin)).await.expect_err("sleeps");
        assert_eq!(err.error.outcome(), Outcome::Timeout, "{probe}: time blocked in a host call counts");
    }
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_are_capped_and_writes_never_fail() {
    let host = TestHost::new("exec-stdio");
    let capped = Limits { stdout_limit: ByteSize(1000), stderr_limit: ByteSize(10), ..limits() };
    for (probe, _) in PROBES {
        let outcome = exec(&host, probe, &["stdout-flood", "5000000"], |exec| exec.limits(capped)).await.expect("runs");
        assert_eq!(outcome.exit_code, 0, "{probe}: every write succeeded");
        assert_eq!((outcome.stdout.0.len(), outcome.stdout.1), (1000, 5_000_000 - 1000));
        let outcome = exec(&host, probe, &["stderr-flood", "300000"], |exec| exec.limits(capped)).await.expect("runs");
        assert_eq!((outcome.exit_code, outcome.stderr.0.len(), outcome.stderr.1), (0, 10, 300_000 - 10));
    }
    host.assert_root_empty();
}

/// The binary: the program's output passes through, its exit code is
/// `host exec`'s, and the host's own outcomes have their documented codes.
#[test]
fn the_cli_passes_output_through_and_exits_with_the_program_s_code() {
    let host = TestHost::new("exec-cli");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_host"))
            .arg("exec")
            .args(args)
            .args(host.scratch.root_args())
            .arg("--no-cache")
            .output()
            .expect("host runs")
    };
    for (probe, _) in PROBES {
        let done = run(&[probe, "--env", "GREETING=hi", "--", "env"]);
        assert_eq!((done.status.code(), done.stdout.as_slice()), (Some(0), b"GREETING=hi\n".as_slice()));
        let done = run(&[probe, "--", "exit-with-code", "42"]);
        assert_eq!(done.status.code(), Some(42), "{probe}");
        let done = run(&[probe, "--", "trap"]);
        assert_eq!(done.status.code(), Some(134), "{probe}: a trap exits as under wasmtime's CLI");
        let done = run(&[probe, "--timeout", "300ms", "--", "spin"]);
        assert_eq!(done.status.code(), Some(192 + 10), "{probe}: timeout is 192 + host run's 10");
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(stderr.contains("--timeout"), "{stderr}");
        let done = run(&[probe, "--json", "--disk-quota", "64KiB", "--", "disk-bomb"]);
        assert_eq!(done.status.code(), Some(192 + 13), "{probe}");
        let json: serde_json::Value = serde_json::from_slice(&done.stdout).expect("JSON on stdout");
        assert_eq!(json["outcome"], "disk-quota");
        assert_eq!(json["exit_code"], 1, "the program's own exit code, after the refusal");
    }
    let not_a_program = host.scratch.write("notes.wasm", "hello");
    let done = run(&[not_a_program.to_str().expect("UTF-8")]);
    assert_eq!(done.status.code(), Some(192 + 6));
    assert!(String::from_utf8_lossy(&done.stderr).contains("not a WebAssembly program"));
    host.assert_root_empty();
}

/// The binary with a cache: a preview1 module's compiled code is kept under
/// the module's own sha256 (marked as a preview1 module), a component's
/// under its own, so a warm run of the module needs neither the adapter nor
/// the compiler; a corrupted entry is rebuilt and the run is unaffected.
#[test]
fn the_cache_keeps_a_module_s_code_under_the_module_s_own_key() {
    use sha2::Digest as _;
    let host = TestHost::new("exec-cache");
    let cache = host.scratch.join("cache");
    let run = |probe: &str| {
        let done = Command::new(env!("CARGO_BIN_EXE_host"))
            .arg("exec")
            .arg(probe)
            .args(host.scratch.root_args())
            .arg("--cache-dir")
            .arg(&cache)
            .args(["--", "args", "x"])
            .output()
            .expect("host runs");
        assert_eq!(
            (done.status.code(), String::from_utf8_lossy(&done.stdout).as_ref()),
            (Some(0), "wasi_probe.wasm\nargs\nx\n"),
            "{probe}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
    };
    let entries = || {
        let mut names: Vec<String> = std::fs::read_dir(&cache)
            .expect("the cache folder")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let sha256 = |path: &str| -> String {
        sha2::Sha256::digest(std::fs::read(path).expect("the probe")).iter().map(|b| format!("{b:02x}")).collect()
    };

    run(WASI_PROBE_MODULE);
    let [module_entry] = &entries()[..] else { panic!("one entry: {:?}", entries()) };
    assert!(module_entry.starts_with(&format!("{}-preview1-", sha256(WASI_PROBE_MODULE))), "{module_entry}");
    let written = std::fs::read(cache.join(module_entry)).expect("the entry");
    run(WASI_PROBE_MODULE);
    assert_eq!(std::fs::read(cache.join(module_entry)).expect("the entry"), written, "hit, not rewritten");

    run(WASI_PROBE_COMMAND);
    let names = entries();
    assert_eq!(names.len(), 2, "{names:?}");
    let component_entry = names.iter().find(|name| *name != module_entry).expect("the component's");
    assert!(component_entry.starts_with(&format!("{}-", sha256(WASI_PROBE_COMMAND))), "{component_entry}");
    assert!(!component_entry.contains("preview1"), "{component_entry}");

    // A flipped byte in the module's compiled code: found, rebuilt, replaced.
    let mut corrupt = written.clone();
    *corrupt.last_mut().expect("payload") ^= 0x01;
    std::fs::write(cache.join(module_entry), corrupt).expect("corrupt");
    run(WASI_PROBE_MODULE);
    assert_eq!(std::fs::read(cache.join(module_entry)).expect("the entry"), written, "rebuilt as it was");
    host.assert_root_empty();
}
