//! The attacks on the host's accounting, each by a hostile guest of its own:
//! the disk quota, the file and folder limits and the descriptor cap hold
//! whatever the guest does with renames, unlinked open files, preopens and
//! listings, and what it makes the host hold in memory stays bounded.

use std::process::Command;
use std::time::Duration;

use orders_host::{ByteSize, LimitHit, Limits, Outcome, RunError};
use test_programs_artifacts as programs;

use crate::util::{TestHost, peak_rss_kib};

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

/// The number after `label` in the guest's message, e.g. `holding 1048576 bytes`.
fn figure(err: &RunError, label: &str) -> u64 {
    let text = err.to_string();
    text.split(label)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("the guest says `{label} N`: {text}"))
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
        host.assert_root_empty();
    }
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
    assert_eq!(err.outcome(), Outcome::Trap, "{err}");
    assert!(err.to_string().contains(&format!("holds {} descriptors", orders_host::MAX_OPEN_HANDLES)), "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_bomb_stops_at_the_folder_limit() {
    let host = TestHost::new("folder-bomb");
    let limits = Limits::default();
    let err = host.run_with(&host.component(programs::FOLDER_BOMB), b"", &limits).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::FileLimit, "{err}");
    assert_eq!(err.limit_hit(), Some(LimitHit::MaxFolders { limit: limits.max_folders }));
    assert_eq!(figure(&err, "made "), limits.max_folders, "{err}");
    host.assert_recovers().await;
}

/// Listings are read in bounded chunks, so thousands of long names listed
/// many times over cost the host little memory: the `host` process's peak
/// stays within 64 MB of the guest's own limit.
#[test]
fn listing_a_full_folder_many_times_keeps_host_memory_bounded() {
    let host = TestHost::new("listings");
    let input = host.scratch.write("count.txt", "9000");
    let guest_memory: u64 = 64 << 20;
    let mut command = Command::new(env!("CARGO_BIN_EXE_host"));
    command
        .args(["run", programs::LISTING_FLOOD])
        .arg(&input)
        .args(["--memory", "64MiB", "--json", "--no-cache"])
        .args(host.scratch.root_args())
        .env_remove("RUST_LOG");
    let (output, peak_kib) = peak_rss_kib(&mut command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(5), "pipeline-error: {stdout}");
    let listings: u64 = stdout
        .split("listings open")
        .next()
        .and_then(|before| before.rsplit(", ").next())
        .and_then(|digits| digits.trim().parse().ok())
        .unwrap_or_else(|| panic!("the guest says how many listings it opened: {stdout}"));
    assert!(listings as usize <= orders_host::MAX_OPEN_LISTINGS, "{stdout}");
    assert!(stdout.contains("9000 files"), "{stdout}");
    let peak = peak_kib * 1024;
    assert!(peak < guest_memory + (64 << 20), "host peak RSS {peak} bytes with a 64 MiB guest: {stdout}");
    host.assert_root_empty();
}
