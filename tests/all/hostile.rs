//! One test per attack of a hostile guest that is not a limit's (those are in
//! `limits.rs`): each ends with its outcome class, leaves nothing in the
//! sandbox root, and the host goes on to run a normal invocation correctly.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use orders_host::{Limits, Outcome};
use test_programs_artifacts as programs;

use crate::util::{TestHost, limits};

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
async fn odd_output_names_are_refused() {
    let host = TestHost::new("odd");
    let err = host.run_with(&host.component(programs::ODD_NAMES), b"", &limits()).await.expect_err("refused");
    assert_eq!(err.outcome(), Outcome::ContractViolation, "{err}");
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
