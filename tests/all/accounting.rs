//! The attacks on the host's accounting, each by a hostile guest of its own:
//! the disk quota, the file and folder limits and the descriptor cap hold
//! whatever the guest does with renames, unlinked open files and preopens.
//! Each limit's own test, the guest running straight into it, is in
//! `limits.rs`.

use std::time::Duration;

use orders_host::{ByteSize, LimitHit, Limits, Outcome};
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
