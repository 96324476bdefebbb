//! A sandbox that takes long to remove does not hold the invocation: what
//! removal does not finish within its budget goes on on the housekeeping
//! thread, the sandbox private and locked until it is gone, and dropping
//! the last `Runner` waits for it.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use orders_host::{Destination, Input, Invocation, Limits, Outcome};
use test_programs_artifacts as programs;

use crate::util::TestHost;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_runner_waits_for_a_removal_left_to_the_housekeeper() {
    // Spooling off: the 5000 folders are on the disk root, slow to remove.
    let host = TestHost::configured("removal-drop", |config| config.spool_threshold = 0);
    let component = host.component(programs::DEEP_TREE);
    // Past the folder limit, so that the guest makes a tree that is slow to remove.
    let limits = Limits { timeout: Duration::from_secs(60), max_folders: 6000, ..Limits::default() };
    let err = host
        .runner
        .invoke(
            Invocation::new(component.clone(), Input::Bytes(Vec::new()))
                .limits(limits)
                .destination(Destination::Memory),
        )
        .await
        .expect_err("a folder is no output");
    assert_eq!(err.outcome(), Outcome::ContractViolation, "{err}");
    // Whatever is left now is being removed: still private (and locked).
    if let Some(sandbox) = host.scratch.running_sandbox() {
        match std::fs::metadata(&sandbox) {
            Ok(meta) => assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{}", sandbox.display()),
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}"),
        }
    }
    let TestHost { scratch, runner } = host;
    drop((component, runner));
    assert_eq!(scratch.leftovers(), Vec::<String>::new(), "the last runner's drop waited for the removal");
}
