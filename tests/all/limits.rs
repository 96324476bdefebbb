//! One test per limit of the README's "Limits and security" table, named
//! after the limit it checks: a hostile guest (or the bundled pipeline, for
//! the output limit) runs into the limit, the run ends as that limit's class
//! (or goes on, for the limits that only cut), the sandbox roots are left
//! empty and the host goes on to run normal invocations.

use std::process::Command;
use std::time::{Duration, Instant};

use orders_host::{ByteSize, Destination, Input, Invocation, LimitHit, Limits, Outcome};
use test_programs_artifacts as programs;

use crate::util::{TestHost, figure, files, limits, peak_rss_kib, seven_rows, staging_leftovers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_stops_a_memory_bomb() {
    let host = TestHost::new("membomb");
    // Time enough to reach the limit on a loaded machine: this is not the timeout's test.
    let limits = Limits { memory: ByteSize(64 << 20), timeout: Duration::from_secs(60), ..limits() };
    let err = host.run_with(&host.component(programs::MEMORY_BOMB), b"", &limits).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::MemoryLimit, "{err}");
    assert!(err.to_string().contains("64MiB"), "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stops_an_infinite_loop() {
    let host = TestHost::new("spin");
    let started = Instant::now();
    let err = host.run_with(&host.component(programs::SPIN), b"", &limits()).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "stopped near the deadline: {:?}", started.elapsed());
    assert_eq!(err.limit_hit(), Some(LimitHit::Timeout { limit: Duration::from_secs(2) }));
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stops_a_guest_asleep_in_a_host_call() {
    let host = TestHost::new("sleep");
    let started = Instant::now();
    let err = host.run_with(&host.component(programs::SLEEP), b"3600000", &limits()).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "stopped near the deadline: {:?}", started.elapsed());
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
        .run_with(&host.bundled(), &seven_rows(), &Limits { fuel: Some(u64::MAX / 2), ..limits })
        .await
        .expect("metered run");
    assert!(outcome.fuel_used.is_some_and(|fuel| fuel > 0));
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_quota_fails_writing_4_gib_inside_the_guest() {
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
async fn disk_quota_counts_a_sparse_terabyte_by_its_size() {
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
async fn max_files_stops_a_million_files() {
    let host = TestHost::new("million");
    let limits = Limits { max_files: 500, timeout: Duration::from_secs(20), ..Limits::default() };
    let err = host.run_with(&host.component(programs::MILLION_FILES), b"", &limits).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::FileLimit, "{err}");
    assert!(err.to_string().contains("created 500 files"), "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_folders_stops_a_folder_bomb() {
    let host = TestHost::new("folder-bomb");
    let limits = Limits::default();
    let err = host.run_with(&host.component(programs::FOLDER_BOMB), b"", &limits).await.expect_err("stopped");
    assert_eq!(err.outcome(), Outcome::FileLimit, "{err}");
    assert_eq!(err.limit_hit(), Some(LimitHit::MaxFolders { limit: limits.max_folders }));
    assert_eq!(figure(&err, "made "), limits.max_folders, "{err}");
    let peak = err.sandbox_peak().expect("the ledger's peak");
    assert_eq!(peak.folders, limits.max_folders, "the host's own count: {peak:?}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_output_refuses_larger_outputs() {
    let host = TestHost::new("max-output");
    let limits = Limits { max_output: Some(ByteSize(100)), ..limits() };
    let err = host.run_with(&host.bundled(), &seven_rows(), &limits).await.expect_err("refused");
    assert_eq!(err.outcome(), Outcome::OutputTooLarge, "{err}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_outputs_refuses_more_than_ten_thousand() {
    let host = TestHost::new("max-outputs");
    let component = host.component(programs::MANY_OUTPUTS);
    let limits = Limits { max_files: 20_000, timeout: Duration::from_secs(120), ..Limits::default() };

    // The bound itself is delivered.
    let outcome = host
        .runner
        .invoke(
            Invocation::new(component.clone(), Input::Bytes(b"10000".to_vec()))
                .limits(limits)
                .destination(Destination::Memory),
        )
        .await
        .expect("10,000 outputs are delivered");
    assert_eq!(outcome.outputs.len(), 10_000);
    host.assert_root_empty();

    let folder = host.scratch.join("too-many.out");
    let destination = Destination::Folder { path: folder.clone(), force: false };
    let err = host
        .runner
        .invoke(
            Invocation::new(component.clone(), Input::Bytes(b"10001".to_vec())).limits(limits).destination(destination),
        )
        .await
        .expect_err("one more is refused");
    assert_eq!(err.outcome(), Outcome::OutputTooLarge, "{err}");
    assert_eq!(err.limit_hit(), Some(LimitHit::MaxOutputs { limit: 10_000 }));
    assert!(err.to_string().contains("10000"), "the message names the bound: {err}");
    assert!(!folder.exists(), "nothing is delivered");
    assert!(staging_leftovers(&host.scratch.path).is_empty());
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_cap_bounds_what_a_guest_holds() {
    let host = TestHost::new("handles");
    let err = host.run_with(&host.component(programs::MANY_HANDLES), b"x", &limits()).await.expect_err("capped");
    assert_eq!(err.outcome(), Outcome::FileLimit, "{err}");
    let cap = orders_host::MAX_OPEN_HANDLES;
    assert_eq!(err.limit_hit(), Some(LimitHit::MaxOpenHandles { limit: cap }), "{err}");
    let held = err.sandbox_peak().expect("the ledger's peak").handles;
    assert_eq!(held, cap, "the host counted every descriptor, up to the cap and no further");
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

/// Listings are read in bounded chunks, so thousands of long names listed
/// many times over cost the host little memory: the `host` process's peak
/// stays within 64 MB of the guest's own limit. The guest is stopped at the
/// bound on open listings, in the file limit's class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_listings_keep_host_memory_bounded() {
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
    assert_eq!(output.status.code(), Some(14), "file-limit: {stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert_eq!(json["outcome"], "file-limit", "{stdout}");
    let bound = orders_host::MAX_OPEN_LISTINGS;
    assert_eq!(json["limit"], serde_json::json!({ "max_open_listings": bound }), "{stdout}");
    let handles = json["sandbox_peak"]["handles"].as_u64().expect("the ledger's peak");
    assert!(handles <= orders_host::MAX_OPEN_HANDLES, "{stdout}");
    let listings: u64 = stdout
        .split(" listings open, then")
        .next()
        .and_then(|before| before.rsplit(", ").next())
        .and_then(|digits| digits.trim().parse().ok())
        .unwrap_or_else(|| panic!("the guest says how many listings it opened: {stdout}"));
    assert!(listings as usize <= orders_host::MAX_OPEN_LISTINGS, "{stdout}");
    assert!(stdout.contains("9000 files"), "{stdout}");
    let peak = peak_kib * 1024;
    assert!(peak < guest_memory + (64 << 20), "host peak RSS {peak} bytes with a 64 MiB guest: {stdout}");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_limit_drops_a_flood_past_it() {
    let host = TestHost::new("flood");
    let limits = Limits { timeout: Duration::from_secs(60), stderr_limit: ByteSize(4096), ..Limits::default() };
    let outcome = host.run_with(&host.component(programs::FLOOD), b"", &limits).await.expect("the flood completes");
    assert_eq!(outcome.stderr.len(), 4096, "stderr is capped, not buffered");
    let files = files(&outcome);
    assert!(files["done.txt"].lines().all(|line| line.ends_with("ok")), "writes never failed: {files:?}");
    host.assert_recovers().await;
}
