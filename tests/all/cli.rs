//! The `host` binary: arguments, messages and exit codes.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::{Scratch, seven_rows};

fn host(scratch: &Scratch, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .args(scratch.root_args())
        .env_remove("RUST_LOG")
        .output()
        .expect("the host binary starts")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn sandbox_root_is_empty(scratch: &Scratch) -> bool {
    scratch.leftovers().is_empty()
}

#[test]
fn help_lists_the_commands_and_every_exit_code() {
    let output = Command::new(env!("CARGO_BIN_EXE_host")).args(["run", "--help"]).output().expect("starts");
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    for needle in ["--out", "--force", "--json", "--timeout", "--memory", "Exit codes", "invalid-input", "130"] {
        assert!(text.contains(needle), "`host run --help` mentions {needle}:\n{text}");
    }
}

#[test]
fn bad_usage_exits_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_host")).args(["run"]).output().expect("starts");
    assert_eq!(output.status.code(), Some(2));
    let output = Command::new(env!("CARGO_BIN_EXE_host")).args(["run", "a", "b", "c"]).output().expect("starts");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn the_bundled_pipeline_runs_on_the_example_and_delivers_owner_only_files() {
    let scratch = Scratch::new("cli-ok");
    let input = scratch.write("orders.csv", seven_rows());
    let output = host(&scratch, &["run", input.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("7 rows: 5 accepted, 2 cancelled, 0 rejected"), "{stdout}");
    assert!(stdout.contains("660.00"), "{stdout}");
    let out = scratch.join("orders.out");
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o700);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&out).expect("list") {
        let entry = entry.expect("entry");
        assert_eq!(mode(&entry.path()), 0o600, "{:?}", entry.file_name());
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(names, ["east_orders.csv", "north_orders.csv", "rejected.csv", "south_orders.csv", "summary.csv"]);
    assert!(sandbox_root_is_empty(&scratch));
}

#[test]
fn json_output_carries_the_report_and_the_outcome() {
    let scratch = Scratch::new("cli-json");
    let input = scratch.write("orders.csv", seven_rows());
    let out = scratch.join("results");
    let output =
        host(&scratch, &["run", input.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8"), "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(json["outcome"], "success");
    assert_eq!(json["report"]["accepted"], 5);
    assert_eq!(json["report"]["regions"][1]["region"], "north");
    assert_eq!(json["report"]["regions"][1]["total_cents"], 66_000);
    assert!(out.join("summary.csv").is_file());
}

#[test]
fn an_unreadable_input_exits_3_and_names_the_path() {
    let scratch = Scratch::new("cli-missing");
    let missing = scratch.join("no-such.csv");
    let output = host(&scratch, &["run", missing.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains("no-such.csv"), "{}", stderr(&output));
    let output = host(&scratch, &["run", missing.to_str().expect("utf-8"), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(json["outcome"], "input-unreadable");
    assert_eq!(json["exit_code"], 3);
}

#[test]
fn a_missing_column_exits_4_with_a_message_naming_it() {
    let scratch = Scratch::new("cli-column");
    let input = scratch.write("orders.csv", "order_id,region,status\n1,north,completed\n");
    let output = host(&scratch, &["run", input.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(4));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.contains("amount"), "{message}");
    assert!(!scratch.join("orders.out").exists(), "nothing is delivered");
    assert!(sandbox_root_is_empty(&scratch));
}

#[test]
fn a_component_that_is_not_a_pipeline_exits_6() {
    let scratch = Scratch::new("cli-component");
    let input = scratch.write("orders.csv", seven_rows());
    let bogus = scratch.write("bogus.wasm", b"not wasm at all");
    let output = host(&scratch, &["run", bogus.to_str().expect("utf-8"), input.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(6), "{}", stderr(&output));
    assert!(stderr(&output).contains("bogus.wasm"));
}

#[test]
fn an_existing_output_folder_is_kept_without_force_and_replaced_with_it() {
    let scratch = Scratch::new("cli-force");
    let input = scratch.write("orders.csv", seven_rows());
    let out = scratch.join("orders.out");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("precious.txt"), "keep me").expect("write");

    let output = host(&scratch, &["run", input.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(9), "{}", stderr(&output));
    assert!(stderr(&output).contains("--force"), "{}", stderr(&output));
    let names: Vec<_> = std::fs::read_dir(&out).expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["precious.txt"], "the folder is untouched");
    assert_eq!(std::fs::read_to_string(out.join("precious.txt")).expect("read"), "keep me");

    let output = host(&scratch, &["run", input.to_str().expect("utf-8"), "--force"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!out.join("precious.txt").exists());
    assert!(out.join("summary.csv").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(&scratch.path)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_limit_hit_has_its_exit_code_and_its_figure_in_json() {
    let scratch = Scratch::new("cli-timeout");
    let input = scratch.write("sleep.txt", "3600000");
    let output = host(
        &scratch,
        &["run", test_programs_artifacts::SLEEP, input.to_str().expect("utf-8"), "--timeout", "500ms", "--json"],
    );
    assert_eq!(output.status.code(), Some(10), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(json["outcome"], "timeout");
    assert_eq!(json["limit"]["timeout_ms"], 500);
    assert!(stderr(&output).contains("--timeout"), "the message says what to do: {}", stderr(&output));
    assert!(sandbox_root_is_empty(&scratch));
}

#[test]
fn limit_flags_reject_figures_they_cannot_read() {
    let scratch = Scratch::new("cli-figures");
    let input = scratch.write("orders.csv", seven_rows());
    let output = host(&scratch, &["run", input.to_str().expect("utf-8"), "--memory", "lots"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("256MiB"), "the error shows an accepted form: {}", stderr(&output));
    let output = host(&scratch, &["run", input.to_str().expect("utf-8"), "--timeout", "soon"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_second_process_uses_the_compiled_code_cache_and_a_corrupt_entry_is_rebuilt() {
    let scratch = Scratch::new("cli-cache");
    let input = scratch.write("orders.csv", seven_rows());
    let cache = scratch.join("cache");
    let run = || {
        let output = host(
            &scratch,
            &["run", input.to_str().expect("utf-8"), "--force", "--cache-dir", cache.to_str().expect("utf-8")],
        );
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    };
    let entries = || -> Vec<PathBuf> {
        std::fs::read_dir(&cache).expect("cache folder").map(|e| e.expect("entry").path()).collect()
    };
    run();
    let [entry] = entries().try_into().expect("one entry for the bundled pipeline");
    let good = std::fs::read(&entry).expect("read entry");
    // A rebuilt entry is written anew and renamed into place: a new inode,
    // a new mtime, even when a deterministic compiler gives the same bytes.
    let identity = |path: &Path| {
        let meta = std::fs::metadata(path).expect("stat entry");
        (meta.ino(), meta.modified().expect("mtime"))
    };
    let first = identity(&entry);
    run();
    assert_eq!(identity(&entry), first, "a hit reads the entry and writes nothing");

    let mut corrupt = good.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    std::fs::write(&entry, &corrupt).expect("corrupt the entry");
    run();
    assert_eq!(std::fs::read(&entry).expect("read entry"), good, "the corrupt entry was rebuilt");
    assert_eq!(std::fs::metadata(&cache).expect("stat").permissions().mode() & 0o777, 0o700);
}

/// Below what one invocation may make the process hold, the host refuses to
/// start rather than let a guest run it out of descriptors: `host-error`,
/// naming the figure to raise `ulimit -n` to, and nothing made on disk.
#[test]
fn an_open_file_limit_too_low_for_one_invocation_is_refused_with_what_to_raise() {
    let scratch = Scratch::new("cli-nofile");
    let input = scratch.write("orders.csv", seven_rows());
    let output = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 500 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_host"))
        .args(["run", input.to_str().expect("utf-8"), "--json"])
        .args(scratch.root_args())
        .env_remove("RUST_LOG")
        .output()
        .expect("sh runs the host binary");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    assert_eq!(json["outcome"], "host-error");
    let needed = orders_host::PROCESS_RESERVE + orders_host::DESCRIPTORS_PER_INVOCATION;
    assert!(json["limit"]["needed"].as_u64().is_some_and(|n| n > needed), "{json}");
    assert!(json["error"].as_str().is_some_and(|text| text.contains("`ulimit -n`")), "{json}");
    assert!(!scratch.join("orders.out").exists());
    assert!(sandbox_root_is_empty(&scratch));
}

/// A component or program file that does not exist is named with what the
/// system said, once, however the message is printed: by `host run` and
/// `host exec` (the error alone), and by `host serve` for a component of its
/// config (the error in a chain).
#[test]
fn a_missing_component_is_named_with_the_system_s_reason_once() {
    let scratch = Scratch::new("cli-missing");
    let input = scratch.write("orders.csv", seven_rows());
    let missing = scratch.join("missing.wasm");
    let missing = missing.to_str().expect("utf-8");
    let once = |output: &Output, code: i32| {
        let text = stderr(output);
        assert_eq!(output.status.code(), Some(code), "{text}");
        assert!(text.contains(&format!("cannot read the component {missing}: ")), "{text}");
        assert_eq!(text.matches("No such file or directory").count(), 1, "{text}");
    };
    once(&host(&scratch, &["run", missing, input.to_str().expect("utf-8"), "--no-cache"]), 3);
    once(&host(&scratch, &["exec", missing, "--no-cache"]), 192 + 3);

    let token = Command::new(env!("CARGO_BIN_EXE_host")).arg("token").output().expect("host token runs");
    let token_line = String::from_utf8_lossy(&token.stdout).lines().nth(1).expect("the config line").to_owned();
    let config = scratch.write(
        "service.toml",
        format!(
            "data_dir = {:?}\n\n[components]\nmine = {missing:?}\n\n[tenants.a]\n{token_line}\n",
            scratch.join("data")
        ),
    );
    let serve = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .args(scratch.root_args())
        // The bundled pipeline's compiled code goes to the scratch folder, not ~/.cache.
        .env("XDG_CACHE_HOME", scratch.join("xdg-cache"))
        .env_remove("RUST_LOG")
        .output()
        .expect("host serve starts");
    once(&serve, 1);
    assert!(stderr(&serve).contains("[components] mine = "), "{}", stderr(&serve));
}
