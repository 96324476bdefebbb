//! One test per attack of a hostile guest: each ends with its outcome class,
//! leaves nothing in the sandbox root, and the host goes on to run a normal
//! invocation correctly.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use orders_host::{ByteSize, LimitHit, Limits, Outcome};
use test_programs_artifacts as programs;

use crate::util::TestHost;

fn limits() -> Limits {
    Limits { timeout: Duration::from_secs(2), ..Limits::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_ends_as_timeout() {
    let host = TestHost::new("spin");
    let started = Instant::now();
    let err = host.run_with(&host.component(programs::SPIN), b"", &limits()).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "stopped near the deadline: {:?}", started.elapsed());
    assert_eq!(err.limit_hit(), Some(LimitHit::Timeout { limit: Duration::from_secs(2) }));
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_asleep_in_a_host_call_ends_as_timeout() {
    let host = TestHost::new("sleep");
    let started = Instant::now();
    let err = host.run_with(&host.component(programs::SLEEP), b"3600000", &limits()).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "stopped near the deadline: {:?}", started.elapsed());
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_ends_as_memory_limit() {
    let host = TestHost::new("membomb");
    let limits = Limits { memory: ByteSize(64 << 20), ..limits() };
    let err = host.run_with(&host.component(programs::MEMORY_BOMB), b"", &limits).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::MemoryLimit, "{err}");
    assert!(err.to_string().contains("64MiB"), "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_4_gib_fails_inside_the_guest_with_no_space() {
    let host = TestHost::new("write4g");
    let limits = Limits { disk_quota: ByteSize(8 << 20), ..limits() };
    let err = host.run_with(&host.component(programs::WRITE_4GIB), b"", &limits).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::DiskQuota, "{err}");
    // Through a `write-via-stream` (how std writes files) wasi-libc reports
    // every stream error as EIO; the write fails exactly at the quota.
    let text = err.to_string();
    assert!(text.contains("failed after 8 MiB"), "stopped at the quota: {text}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_terabyte_counts_by_its_size() {
    let host = TestHost::new("sparse");
    let err = host.run_with(&host.component(programs::SPARSE_1TIB), b"", &limits()).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::DiskQuota, "{err}");
    assert!(
        err.to_string().contains("No space left on device"),
        "set-size fails with no-space inside the guest: {err}"
    );
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_files_end_at_the_file_limit() {
    let host = TestHost::new("million");
    let limits = Limits { max_files: 500, timeout: Duration::from_secs(20), ..Limits::default() };
    let err = host.run_with(&host.component(programs::MILLION_FILES), b"", &limits).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::FileLimit, "{err}");
    assert!(err.to_string().contains("created 500 files"), "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_deep_folder_tree_is_refused_and_removed() {
    let host = TestHost::new("deep");
    // Past the folder limit, so that the whole chain is made and removed.
    let limits = Limits { timeout: Duration::from_secs(30), max_folders: 6000, ..Limits::default() };
    let err = host.run_with(&host.component(programs::DEEP_TREE), b"", &limits).await.expect_err("refused");
    assert_eq!(err.outcome(), Outcome::ContractViolation, "{err}");
    assert!(err.to_string().contains("a folder"), "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_trap_with_its_message() {
    let host = TestHost::new("panic");
    let err = host.run_with(&host.component(programs::PANIC), b"", &limits()).await.expect_err("trap");
    assert_eq!(err.outcome(), Outcome::Trap, "{err}");
    assert!(err.to_string().contains("this guest always panics"), "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_is_a_trap() {
    let host = TestHost::new("exit");
    let err = host.run_with(&host.component(programs::EXIT_3), b"", &limits()).await.expect_err("trap");
    assert_eq!(err.outcome(), Outcome::Trap, "{err}");
    assert!(err.to_string().contains("exit("), "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_and_stdout_flood_is_dropped_past_the_limit() {
    let host = TestHost::new("flood");
    let limits = Limits { timeout: Duration::from_secs(60), stderr_limit: ByteSize(4096), ..Limits::default() };
    let outcome = host.run_with(&host.component(programs::FLOOD), b"", &limits).await.expect("the flood completes");
    assert_eq!(outcome.stderr.len(), 4096, "stderr is capped, not buffered");
    let files = crate::util::files(&outcome);
    assert!(files["done.txt"].lines().all(|line| line.ends_with("ok")), "writes never failed: {files:?}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_output_names_are_refused() {
    let host = TestHost::new("odd");
    let err = host.run_with(&host.component(programs::ODD_NAMES), b"", &limits()).await.expect_err("refused");
    assert_eq!(err.outcome(), Outcome::ContractViolation, "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_ends_a_loop_deterministically() {
    let host = TestHost::with_config("fuel", true);
    let limits = Limits { fuel: Some(5_000_000), timeout: Duration::from_secs(30), ..Limits::default() };
    let err = host.run_with(&host.component(programs::SPIN), b"", &limits).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::FuelExhausted, "{err}");
    assert_eq!(err.limit_hit(), Some(LimitHit::Fuel { fuel: 5_000_000 }));
    // The bundled pipeline runs fine under fuel, and reports what it used.
    let outcome = host
        .run_with(&host.bundled(), &crate::util::seven_rows(), &Limits { fuel: Some(u64::MAX / 2), ..limits })
        .await
        .expect("metered run");
    assert!(outcome.fuel_used.is_some_and(|fuel| fuel > 0));
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_larger_than_the_limit_are_refused() {
    let host = TestHost::new("max-output");
    let limits = Limits { max_output: Some(ByteSize(100)), ..limits() };
    let err = host.run_with(&host.bundled(), &crate::util::seven_rows(), &limits).await.expect_err("refused");
    assert_eq!(err.outcome(), Outcome::OutputTooLarge, "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_the_guest_creates_are_owner_only() {
    let host = TestHost::new("guest-file-mode");
    let (sleep, limits) = (host.component(programs::SLEEP), limits());
    let run = host.run_with(&sleep, b"1000", &limits);
    let watch = async {
        host.scratch
            .wait_for_sandbox_async(|sandbox| {
                std::fs::metadata(sandbox.join("out/slept.txt")).ok().map(|meta| meta.permissions().mode() & 0o777)
            })
            .await
    };
    let (outcome, mode) = tokio::join!(run, watch);
    outcome.expect("run");
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_hold_more_than_its_share_of_host_descriptors() {
    let host = TestHost::new("handles");
    let err = host.run_with(&host.component(programs::MANY_HANDLES), b"x", &limits()).await.expect_err("capped");
    assert_eq!(err.outcome(), Outcome::PipelineError, "{err}");
    // The guest's own preopens and stdio take a few; the cap is 256 in all.
    let text = err.to_string();
    let opened: u64 = text
        .split("opened ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the guest reports how many it opened: {text}"));
    assert!((200..=256).contains(&opened), "{text}");
    host.assert_recovers().await;
}
