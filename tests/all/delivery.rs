//! Delivery against hostile outputs: many of them under a low descriptor
//! limit, one huge output into a tar archive in bounded memory, and forged
//! file times (more outputs than the bound: `limits.rs`). Each attack leaves the sandbox roots empty,
//! and the host goes on to run a normal invocation.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use orders_host::{Destination, Input, Invocation, Limits};
use sha2::Digest as _;
use test_programs_artifacts as programs;

use crate::util::{TestHost, seven_rows, staging_leftovers};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `host run COMPONENT INPUT --out OUT --json` on the test's roots, with
/// `prefix` (a wrapper command) in front.
fn host_run(host: &TestHost, prefix: &[OsString], component: &str, input: &Path, out: &Path) -> Output {
    let (program, wrapper_args) = match prefix.split_first() {
        Some((program, args)) => (program.clone(), args.to_vec()),
        None => (OsString::from(env!("CARGO_BIN_EXE_host")), Vec::new()),
    };
    let mut command = Command::new(program);
    command.args(wrapper_args);
    if !prefix.is_empty() {
        command.arg(env!("CARGO_BIN_EXE_host"));
    }
    command
        .args(["run", component])
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--json")
        .args(host.scratch.root_args())
        .env_remove("RUST_LOG")
        .output()
        .expect("the host binary starts")
}

/// Runs what follows under a soft and hard limit of `limit` open descriptors.
fn under_descriptor_limit(limit: u32) -> Vec<OsString> {
    ["sh", "-c", &format!("ulimit -n {limit} && exec \"$0\" \"$@\"")].iter().map(OsString::from).collect()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("stdout is JSON ({err}): {}", String::from_utf8_lossy(&output.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_outputs_are_delivered_under_a_1024_descriptor_limit() {
    let host = TestHost::new("fd-limit");
    let input = host.scratch.write("count.txt", "2000");
    // The lowest limit a runner accepts is about 660 (one invocation at the
    // cap, and the process's own); 1024 is still half the outputs.
    let limit = under_descriptor_limit(1024);

    let folder = host.scratch.join("many.out");
    let output = host_run(&host, &limit, programs::MANY_OUTPUTS, &input, &folder);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output)["outputs"].as_array().map(Vec::len), Some(2000));
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .expect("delivered folder")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2000);
    assert_eq!((names[0].as_str(), names[1999].as_str()), ("out-00000.csv", "out-01999.csv"));
    assert_eq!(std::fs::read_to_string(folder.join("out-01234.csv")).expect("read"), "output 1234\n");
    host.assert_root_empty();

    let archive = host.scratch.join("many.tar");
    let output = host_run(&host, &limit, programs::MANY_OUTPUTS, &input, &archive);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let mut reader = tar::Archive::new(std::fs::File::open(&archive).expect("archive"));
    assert_eq!(reader.entries().expect("entries").count(), 2000);
    assert!(staging_leftovers(&host.scratch.path).is_empty());
    host.assert_recovers().await;
}

/// The block `huge_output` repeats: byte `i` is `(i * 31 + i / 4096) % 256`.
fn huge_output_sha256(mib: usize) -> String {
    let block: Vec<u8> = (0..1usize << 20).map(|i| ((i * 31 + i / 4096) % 256) as u8).collect();
    let mut hasher = sha2::Sha256::new();
    for _ in 0..mib {
        hasher.update(&block);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs what follows, then writes the largest resident set of its children
/// (KiB, as `getrusage` reports it on Linux) to `report`.
fn measuring_peak_rss(report: &Path) -> Vec<OsString> {
    let script = "import resource, subprocess, sys\n\
                  done = subprocess.run(sys.argv[2:])\n\
                  open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n\
                  sys.exit(done.returncode)\n";
    vec!["python3".into(), "-c".into(), script.into(), report.into()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_mib_output_streams_into_a_tar_archive_in_bounded_memory() {
    const MIB: usize = 300;
    let host = TestHost::new("huge-tar");
    let input = host.scratch.write("mib.txt", MIB.to_string());
    let archive = host.scratch.join("huge.tar");
    let rss_report = host.scratch.join("rss.txt");
    let output = host_run(&host, &measuring_peak_rss(&rss_report), programs::HUGE_OUTPUT, &input, &archive);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let peak_kib: u64 = std::fs::read_to_string(&rss_report).expect("rss report").trim().parse().expect("a number");
    assert!(peak_kib < 64 << 10, "peak RSS of `host run` {} MB for a {MIB} MiB output", peak_kib / 1024);

    let expected = huge_output_sha256(MIB);
    let listed = &json(&output)["outputs"][0];
    assert_eq!((listed["name"].as_str(), listed["bytes"].as_u64()), (Some("huge.bin"), Some((MIB as u64) << 20)));
    assert_eq!(listed["sha256"].as_str(), Some(expected.as_str()), "the reported hash is of the bytes written");
    let mut reader = tar::Archive::new(std::fs::File::open(&archive).expect("archive"));
    let mut entries = reader.entries().expect("entries");
    let mut entry = entries.next().expect("one entry").expect("a readable entry");
    assert_eq!(entry.path().expect("path").as_ref(), Path::new("huge.bin"));
    assert_eq!(entry.header().size().expect("size"), (MIB as u64) << 20);
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut entry, &mut hasher).expect("read the entry");
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, expected, "the archive holds exactly the guest's bytes");
    drop(entry);
    assert!(entries.next().is_none(), "one entry only");
    std::fs::remove_file(&archive).expect("remove the archive");
    host.assert_recovers().await;
}

fn assert_recent(time: SystemTime, what: &str) {
    let now = SystemTime::now();
    let off = now.duration_since(time).unwrap_or_else(|err| err.duration());
    assert!(off < Duration::from_secs(60), "{what} is {off:?} away from now ({time:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_files_get_the_host_s_time_not_the_guest_s() {
    // Both roots: a spooled sandbox (memory root) and one on the disk root.
    for spool_threshold in [1 << 20, 0] {
        let host = TestHost::configured("times", |config| config.spool_threshold = spool_threshold);
        let component = host.component(programs::FUTURE_MTIME);
        let limits = Limits::default();

        let folder: PathBuf = host.scratch.join("future.out");
        let destination = Destination::Folder { path: folder.clone(), force: false };
        host.runner
            .invoke(
                Invocation::new(component.clone(), Input::Bytes(Vec::new())).limits(limits).destination(destination),
            )
            .await
            .expect("delivered");
        let meta = std::fs::metadata(folder.join("future.txt")).expect("delivered file");
        assert_recent(meta.modified().expect("mtime"), "the delivered file's mtime");
        assert_recent(meta.accessed().expect("atime"), "the delivered file's atime");

        let archive = host.scratch.join("future.tar");
        let destination = Destination::Tar { path: archive.clone(), force: false };
        host.runner
            .invoke(
                Invocation::new(component.clone(), Input::Bytes(Vec::new())).limits(limits).destination(destination),
            )
            .await
            .expect("delivered");
        let mut reader = tar::Archive::new(std::fs::File::open(&archive).expect("archive"));
        for entry in reader.entries().expect("entries") {
            let mtime = entry.expect("entry").header().mtime().expect("mtime");
            assert_recent(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime), "the archive entry's mtime");
        }
        host.assert_recovers().await;
    }
}

/// The files of a delivered folder: name, mode and contents.
fn folder_files(folder: &Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut files: Vec<_> = std::fs::read_dir(folder)
        .expect("the delivered folder")
        .map(|entry| {
            let entry = entry.expect("an entry");
            let mode = entry.metadata().expect("metadata").permissions().mode() & 0o777;
            let contents = std::fs::read(entry.path()).expect("a delivered file");
            (entry.file_name().to_string_lossy().into_owned(), mode, contents)
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_delivered_without_its_own_syncs_is_the_same_folder() {
    let host = TestHost::new("unsynced");
    // Five small outputs (delivered by one thread), then twenty (by the
    // flushers and hashers): both paths skip their syncs.
    let runs = [(host.bundled(), seven_rows()), (host.component(programs::MANY_OUTPUTS), b"20".to_vec())];
    for (index, (component, input)) in runs.into_iter().enumerate() {
        let mut delivered = Vec::new();
        for sync in [true, false] {
            let folder = host.scratch.join(&format!("out-{index}-{sync}"));
            let destination = Destination::Folder { path: folder.clone(), force: false };
            let invocation = Invocation::new(component.clone(), Input::Bytes(input.clone()))
                .destination(destination)
                .sync_outputs(sync);
            let outcome = host.runner.invoke(invocation).await.expect("delivered");
            let mut hashes: Vec<_> = outcome.outputs.iter().map(|o| (o.name.clone(), o.sha256.clone())).collect();
            hashes.sort();
            let files = folder_files(&folder);
            for (name, mode, contents) in &files {
                assert_eq!(*mode, 0o600, "{name}");
                let listed = hashes.iter().find(|(listed, _)| listed == name).expect("every file is listed");
                assert_eq!(listed.1, format!("{:x}", sha2::Sha256::digest(contents)), "{name}");
            }
            assert_eq!(files.len(), hashes.len());
            assert!(staging_leftovers(&host.scratch.join("")).is_empty());
            delivered.push(files);
        }
        assert_eq!(delivered[0], delivered[1], "the unsynced delivery left other files");
    }
    host.runner.shutdown().expect("shutdown");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_or_folder_keeps_results_up_to_its_bound_in_memory_and_larger_ones_in_the_folder() {
    let host = TestHost::new("memory-or-folder");
    let component = host.bundled();
    let run = |max_bytes: u64, folder: &Path| {
        let destination = Destination::MemoryOrFolder { max_bytes, path: folder.to_owned(), force: false };
        host.runner.invoke(Invocation::new(component.clone(), Input::Bytes(seven_rows())).destination(destination))
    };
    let measured = host.scratch.join("measured");
    let outcome = run(u64::MAX, &measured).await.expect("delivered");
    let total: u64 = outcome.outputs.iter().map(|output| output.bytes).sum();
    assert!(!measured.exists(), "nothing is written to the folder for a result kept in memory");

    let at_bound = host.scratch.join("at-bound");
    let outcome = run(total, &at_bound).await.expect("delivered");
    let orders_host::Delivered::Memory(files) = &outcome.delivered else {
        panic!("{total} bytes with a bound of {total} stay in memory: {:?}", outcome.delivered)
    };
    assert_eq!(files.iter().map(|(_, contents)| contents.len() as u64).sum::<u64>(), total);
    for ((name, contents), output) in files.iter().zip(&outcome.outputs) {
        assert_eq!(name, &output.name);
        assert_eq!(format!("{:x}", sha2::Sha256::digest(contents)), output.sha256, "{name} is hashed as delivered");
    }
    assert!(!at_bound.exists());

    let past_bound = host.scratch.join("past-bound");
    let outcome = run(total - 1, &past_bound).await.expect("delivered");
    assert!(matches!(&outcome.delivered, orders_host::Delivered::Folder(path) if path == &past_bound));
    for output in &outcome.outputs {
        let contents = std::fs::read(past_bound.join(&output.name)).expect("delivered into the folder");
        assert_eq!(contents.len() as u64, output.bytes);
    }
    assert!(staging_leftovers(&host.scratch.join(".")).is_empty());
    host.assert_root_empty();
}
