//! The attacks on the host's accounting, each by a hostile guest of its own:
//! the disk quota, the file and folder limits and the descriptor cap hold
//! whatever the guest does with renames, unlinked open files, symlinks,
//! preopens and listings, and what it makes the host hold in descriptors
//! stays bounded. Each is checked on the host's own figures (the
//! ledger's peaks, the process's descriptors), not only on what the guest
//! says. Each limit's own test, the guest running straight into it, is in
//! `limits.rs`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use orders_host::{
    ByteSize, HOST_DESCRIPTORS_PER_INVOCATION, Input, Invocation, LimitHit, Limits, MAX_OPEN_HANDLES, Outcome,
    RunError, SandboxUsage,
};
use test_programs_artifacts as programs;

use crate::util::{TestHost, figure};

const QUOTA: u64 = 1 << 20;
/// One guest write (the attacks write 64 KiB at a time) plus a block.
const ONE_WRITE: u64 = (64 << 10) + 4096;

fn tight() -> Limits {
    Limits {
        disk_quota: ByteSize(QUOTA),
        max_files: 100,
        max_folders: 50,
        memory: ByteSize(64 << 20),
        timeout: Duration::from_secs(30),
        ..Limits::default()
    }
}

/// The host's own figures of a run stopped by a sandbox limit: never past
/// the quota by more than one write, the file and folder limits, the cap.
fn assert_peak_within(err: &RunError, limits: &Limits) -> SandboxUsage {
    let peak = err.sandbox_peak().unwrap_or_else(|| panic!("a sandbox limit carries the ledger's peak: {err}"));
    assert!(peak.bytes <= limits.disk_quota.bytes() + ONE_WRITE, "{peak:?}: {err}");
    assert!(peak.files <= limits.max_files, "{peak:?}: {err}");
    assert!(peak.folders <= limits.max_folders, "{peak:?}: {err}");
    assert!(peak.handles <= MAX_OPEN_HANDLES, "{peak:?}: {err}");
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_onto_itself_gives_nothing_back() {
    let host = TestHost::new("rename-self");
    let component = host.component(programs::RENAME_ONTO_ITSELF);
    let cases = [
        ("bytes", LimitHit::DiskQuota { limit: ByteSize(QUOTA) }),
        ("files", LimitHit::MaxFiles { limit: 100 }),
        ("folders", LimitHit::MaxFolders { limit: 50 }),
    ];
    for (mode, limit) in cases {
        let err = host.run_with(&component, mode.as_bytes(), &tight()).await.expect_err("stopped");
        let expected = if mode == "bytes" { Outcome::DiskQuota } else { Outcome::FileLimit };
        assert_eq!(err.outcome(), expected, "{mode}: {err}");
        assert_eq!(err.limit_hit(), Some(limit), "{mode}: {err}");
        assert!(figure(&err, "holding ") <= QUOTA + ONE_WRITE, "{mode}: {err}");
        let peak = assert_peak_within(&err, &tight());
        if mode == "bytes" {
            assert!(peak.bytes > QUOTA - ONE_WRITE, "the quota is what stopped it: {peak:?}");
        }
        let made = figure(&err, "made ");
        let most = match mode {
            "files" => 100,
            "folders" => 50,
            // 64 KiB writes into a 1 MiB quota: a file or two, and the one refused.
            _ => 3,
        };
        assert!(made <= most, "{mode}: {made} entries: {err}");
        host.assert_root_empty();
    }
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_and_replaced_open_files_stay_charged() {
    let host = TestHost::new("unlink-open");
    let component = host.component(programs::UNLINK_OPEN);
    for mode in ["unlink", "rename-over"] {
        let err = host.run_with(&component, mode.as_bytes(), &tight()).await.expect_err("stopped");
        assert_eq!(err.outcome(), Outcome::DiskQuota, "{mode}: {err}");
        let holding = figure(&err, "holding ");
        assert!(holding <= QUOTA + ONE_WRITE, "{mode}: the open files hold {holding} bytes: {err}");
        assert_peak_within(&err, &tight());
        host.assert_root_empty();
    }
    host.assert_recovers().await;
}

/// Files unlinked while open are still files on disk: a guest that keeps
/// many small ones open with no name is stopped by the file limit, though
/// its folder looks empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_open_files_count_against_the_file_limit() {
    let host = TestHost::new("unlink-many");
    let err = host.run_with(&host.component(programs::UNLINK_OPEN), b"many", &tight()).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::FileLimit, "{err}");
    assert_eq!(err.limit_hit(), Some(LimitHit::MaxFiles { limit: 100 }), "{err}");
    assert!(err.to_string().contains("in 100 open files"), "every one of them still open: {err}");
    let peak = assert_peak_within(&err, &tight());
    assert_eq!(peak.files, 100, "the host counted the nameless files: {peak:?}");
    host.assert_root_empty();
    host.assert_recovers().await;
}

/// A symlink stores its target: 4,000-byte targets are charged to the disk
/// quota, which stops the guest long before a generous file limit would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_targets_are_charged_to_the_disk_quota() {
    let host = TestHost::new("symlink-bytes");
    let limits = Limits { max_files: 10_000, ..tight() };
    let err = host.run_with(&host.component(programs::SYMLINK_BYTES), b"", &limits).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::DiskQuota, "{err}");
    assert_eq!(err.limit_hit(), Some(LimitHit::DiskQuota { limit: ByteSize(QUOTA) }), "{err}");
    let made = figure(&err, "made ");
    // About 4 KiB a link (the target, or its block) and the folder's growth.
    assert!((200..=256).contains(&made), "{made} links: {err}");
    let peak = assert_peak_within(&err, &limits);
    assert!(peak.files <= made + 1, "{peak:?}");
    host.assert_root_empty();
    host.assert_recovers().await;
}

/// A guest at the cap that asks for its folders again cannot be given them
/// (that would pass the cap) nor told it has none: it is stopped, and held
/// no more than the cap until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preopens_handed_out_again_count_against_the_descriptor_cap() {
    let host = TestHost::new("preopens");
    let component = host.component(programs::PREOPEN_DESCRIPTORS);
    let err = host.run_with(&component, b"x", &tight()).await.expect_err("capped");
    assert_eq!(err.outcome(), Outcome::FileLimit, "{err}");
    assert_eq!(err.limit_hit(), Some(LimitHit::MaxOpenHandles { limit: MAX_OPEN_HANDLES }), "{err}");
    let peak = assert_peak_within(&err, &tight());
    assert_eq!(peak.handles, MAX_OPEN_HANDLES, "it reached the cap and no further: {peak:?}");
    host.assert_recovers().await;
}

/// The descriptors of this process that point under `folder`, now.
fn descriptors_under(folder: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(folder))
        .count()
}

/// Seen from the host: while guests open their input again and again, the
/// process never holds more descriptors in their sandbox than the cap plus
/// the host's own per invocation ([`HOST_DESCRIPTORS_PER_INVOCATION`]: the
/// sandbox's folders, the preopens, delivery's few). A thread samples
/// `/proc/self/fd` throughout; other tests' descriptors are in other
/// scratch folders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_never_holds_more_descriptors_than_the_cap_for_a_guest() {
    let host = TestHost::new("fd-sample");
    let component = host.component(programs::MANY_HANDLES);
    let (done, folder) = (Arc::new(AtomicBool::new(false)), host.scratch.path.clone());
    let sampler = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let (mut most, mut samples) = (0, 0u64);
            while !done.load(Ordering::Relaxed) {
                most = most.max(descriptors_under(&folder));
                samples += 1;
            }
            (most, samples)
        })
    };
    // Each run holds what it opened for 300 ms at the cap, so the sampler,
    // however busy the machine, sees it there.
    for _ in 0..3 {
        let err = host.run_with(&component, b"300", &tight()).await.expect_err("capped");
        assert_eq!(err.outcome(), Outcome::FileLimit, "{err}");
        assert_peak_within(&err, &tight());
    }
    done.store(true, Ordering::Relaxed);
    let (most, samples) = sampler.join().expect("the sampler");
    println!("at most {most} descriptors under the scratch folder, over {samples} samples");
    assert!(most as u64 > MAX_OPEN_HANDLES / 2, "the sampler saw a guest at the cap: {most} over {samples} samples");
    assert!(most as u64 <= MAX_OPEN_HANDLES + HOST_DESCRIPTORS_PER_INVOCATION, "{most} descriptors");
    host.assert_recovers().await;
}

/// Set in the child process of the test below.
const LOW_LIMIT_CHILD: &str = "ORDERS_HOST_TEST_LOW_OPEN_FILE_LIMIT";
/// The open-file limit (soft and hard) the child runs under.
const LOW_LIMIT: u64 = 1024;

/// Under a low open-file limit the runner runs no more guests at once than
/// the limit holds at their cap each: eight guests that each open all the
/// descriptors they may, asked for at once, all end at the cap, and a
/// normal run among them succeeds (no EMFILE for anyone). Runs itself again
/// in a child process under `ulimit -n`.
#[test]
fn guests_at_the_cap_cannot_use_up_the_process_open_file_limit() {
    if std::env::var_os(LOW_LIMIT_CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        runtime.expect("a runtime").block_on(many_guests_at_the_cap());
        return;
    }
    let name = "accounting::guests_at_the_cap_cannot_use_up_the_process_open_file_limit";
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {LOW_LIMIT} && exec \"$0\" \"$@\""))
        .arg(std::env::current_exe().expect("the test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(LOW_LIMIT_CHILD, "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("sh runs the test binary");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the child ran the test:\n{stdout}");
}

async fn many_guests_at_the_cap() {
    let host = TestHost::configured("fd-limit-child", |config| config.max_concurrent = 8);
    let at_once = host.runner.max_concurrent();
    println!("{at_once} invocations at once under an open-file limit of {LOW_LIMIT}");
    assert!((1..8).contains(&at_once), "lowered from 8: {at_once}");
    let needed = at_once as u64 * orders_host::DESCRIPTORS_PER_INVOCATION + orders_host::PROCESS_RESERVE;
    assert!(needed <= LOW_LIMIT, "{at_once} at once need {needed} descriptors");

    let (hostile, bundled) = (host.component(programs::MANY_HANDLES), host.bundled());
    let run = |component: &orders_host::Component, input: Vec<u8>| {
        let invocation = Invocation::new(component.clone(), Input::Bytes(input)).limits(tight());
        let runner = host.runner.clone();
        tokio::spawn(async move { runner.invoke(invocation).await })
    };
    // Each holds its handles for 300 ms at the cap, so those let in at once
    // hold them together.
    let guests: Vec<_> = (0..8).map(|_| run(&hostile, b"300".to_vec())).collect();
    let normal = run(&bundled, crate::util::seven_rows());
    for guest in guests {
        let err = guest.await.expect("the task").expect_err("capped");
        assert_eq!(err.outcome(), Outcome::FileLimit, "{err}");
        assert_eq!(err.limit_hit(), Some(LimitHit::MaxOpenHandles { limit: MAX_OPEN_HANDLES }), "{err}");
    }
    let outcome = normal.await.expect("the task").expect("a normal run among them");
    assert_eq!((outcome.report.rows, outcome.report.accepted), (7, 5));
    host.assert_recovers().await;
}
