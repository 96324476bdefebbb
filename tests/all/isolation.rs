//! What a guest can reach: its two folders and nothing else, and what it
//! leaves there is checked before anything leaves the sandbox.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use orders_host::{Destination, Input, Invocation, Limits, Outcome};

use crate::util::{TestHost, files, seven_rows};

fn probe_lines(text: &str) -> Vec<(&str, &str)> {
    text.lines().map(|line| line.split_once('\t').unwrap_or((line, ""))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_cannot_reach_anything_outside_its_folders() {
    let host = TestHost::new("probe");
    let probe = host.component(test_programs_artifacts::PROBE);
    let outcome = host.run_bytes(&probe, b"probe input").await.expect("probe runs");
    let files = files(&outcome);
    let lines = probe_lines(&files["probe.txt"]);
    let escapes = [
        "read_etc_passwd",
        "read_input_dotdot_passwd",
        "open_dotdot",
        "read_dir_root",
        "read_dir_dotdot",
        "read_dir_output_parent",
        "read_dir_input_parent",
        "create_in_input",
        "write_input",
        "read_proc_self_environ",
        "tcp_connect",
    ];
    for attempt in escapes {
        let (_, result) = lines.iter().find(|(name, _)| *name == attempt).unwrap_or_else(|| panic!("{attempt} ran"));
        assert!(result.starts_with("err"), "{attempt} must fail, got {result}");
    }
    assert!(lines.contains(&("env", "0")), "no environment: {lines:?}");
    assert!(lines.contains(&("args", "0")), "no arguments: {lines:?}");
    let listed: Vec<&str> = lines.iter().filter(|(name, _)| *name == "list").map(|(_, entry)| *entry).collect();
    assert_eq!(listed, ["input.csv"], "the output folder starts empty; the input folder holds only the input");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_folders_planted_in_the_output_are_never_delivered() {
    let host = TestHost::new("links");
    let links = host.component(test_programs_artifacts::LINKS);
    let destination = host.scratch.join("delivered");
    let err = host
        .runner
        .invoke(
            Invocation::new(links.clone(), Input::Bytes(seven_rows()))
                .destination(Destination::Folder { path: destination.clone(), force: false }),
        )
        .await
        .expect_err("refused");
    assert_eq!(err.outcome(), Outcome::ContractViolation, "{err}");
    assert!(err.to_string().contains("regular files"), "{err}");
    assert!(!destination.exists(), "nothing is delivered");
    let staging: Vec<_> = std::fs::read_dir(&host.scratch.path)
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(staging.is_empty(), "no staging folder is left");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_lies_about_its_outputs_is_refused() {
    let host = TestHost::new("liar");
    let liar = host.component(test_programs_artifacts::LIAR);
    let err = host.run_bytes(&liar, b"x").await.expect_err("refused");
    assert_eq!(err.outcome(), Outcome::ContractViolation, "{err}");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_is_private_while_the_guest_runs() {
    let host = TestHost::new("mode");
    let sleep = host.component(test_programs_artifacts::SLEEP);
    let run = host.run_bytes(&sleep, b"1500");
    let watch = async {
        host.scratch
            .wait_for_sandbox_async(|sandbox| {
                let root = sandbox.parent().expect("root").to_owned();
                let mode = |path: &Path| std::fs::metadata(path).ok().map(|meta| meta.permissions().mode() & 0o777);
                let name = sandbox.file_name().expect("name").to_string_lossy().into_owned();
                let hex = name.strip_prefix("sbx-").expect("prefix");
                assert_eq!(hex.len(), 32, "128 random bits in the name");
                Some((mode(&root)?, mode(sandbox)?, mode(&sandbox.join("input"))?, mode(&sandbox.join("out"))?))
            })
            .await
    };
    let (outcome, modes) = tokio::join!(run, watch);
    outcome.expect("the sleeping guest finishes");
    assert_eq!(modes, (0o700, 0o700, 0o700, 0o700));
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_input_copy_is_owner_only() {
    let host = TestHost::new("input-mode");
    let sleep = host.component(test_programs_artifacts::SLEEP);
    let run = host.run_bytes(&sleep, b"300");
    let watch = async {
        host.scratch
            .wait_for_sandbox_async(|sandbox| {
                std::fs::metadata(sandbox.join("input/input.csv")).ok().map(|meta| meta.permissions().mode() & 0o777)
            })
            .await
    };
    let (outcome, input_mode) = tokio::join!(run, watch);
    outcome.expect("run");
    assert_eq!(input_mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_do_not_see_each_others_files() {
    let host = TestHost::new("concurrent");
    let probe = host.component(test_programs_artifacts::PROBE);
    let pipeline = host.bundled();
    let north = b"order_id,region,amount,status\n1,north,1.00,completed\n".to_vec();
    let south = b"order_id,region,amount,status\n2,south,2.00,completed\n".to_vec();
    let (a, b, c, d) = tokio::join!(
        host.run_bytes(&pipeline, &north),
        host.run_bytes(&pipeline, &south),
        host.run_bytes(&probe, b"first"),
        host.run_bytes(&probe, b"second"),
    );
    let (a, b) = (files(&a.expect("north")), files(&b.expect("south")));
    assert!(a.contains_key("north_orders.csv") && !a.contains_key("south_orders.csv"), "{a:?}");
    assert!(b.contains_key("south_orders.csv") && !b.contains_key("north_orders.csv"), "{b:?}");
    for probe in [c.expect("probe"), d.expect("probe")] {
        let files = files(&probe);
        let listed: Vec<(&str, &str)> =
            probe_lines(&files["probe.txt"]).into_iter().filter(|(name, _)| *name == "list").collect();
        assert_eq!(listed, [("list", "input.csv")]);
    }
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_input_file_is_linked_in_read_only_and_left_as_it_was() {
    use std::os::unix::fs::MetadataExt as _;
    // Over the spool threshold, so the sandbox is on the disk root, in the
    // same filesystem as the input: the input is linked, not copied.
    let host = TestHost::configured("linked-input", |config| config.spool_threshold = 16);
    // The sleeping guest's input: 300 ms, padded past the threshold.
    let input = host.scratch.write("orders.csv", format!("300{}", " ".repeat(200)));
    let user_inode = std::fs::metadata(&input).expect("stat").ino();

    let sleep = host.component(test_programs_artifacts::SLEEP);
    let limits = Limits::default();
    let run = host.runner.invoke(
        Invocation::new(sleep.clone(), Input::Path(input.clone())).limits(limits).destination(Destination::Memory),
    );
    let watch = async {
        host.scratch
            .wait_for_sandbox_async(|sandbox| {
                std::fs::metadata(sandbox.join("input/input.csv")).ok().map(|meta| (meta.ino(), meta.nlink()))
            })
            .await
    };
    let (outcome, (inode, links)) = tokio::join!(run, watch);
    outcome.expect("the sleeping guest finishes");
    assert_eq!((inode, links), (user_inode, 2), "the sandbox's input is a second name of the user's file");
    assert_eq!(std::fs::metadata(&input).expect("stat").nlink(), 1, "the link went with the sandbox");

    let contents = b"probe input, long enough not to be spooled".repeat(4);
    std::fs::write(&input, &contents).expect("rewrite");
    let probe = host.component(test_programs_artifacts::PROBE);
    let outcome = host
        .runner
        .invoke(
            Invocation::new(probe.clone(), Input::Path(input.clone())).limits(limits).destination(Destination::Memory),
        )
        .await
        .expect("probe runs");
    let files = files(&outcome);
    let lines = probe_lines(&files["probe.txt"]);
    for attempt in ["write_input", "create_in_input"] {
        let (_, result) = lines.iter().find(|(name, _)| *name == attempt).unwrap_or_else(|| panic!("{attempt} ran"));
        assert!(result.starts_with("err"), "{attempt} must fail on a linked input, got {result}");
    }
    assert_eq!(std::fs::read(&input).expect("read"), contents, "the user's file is untouched");
    assert_eq!(std::fs::metadata(&input).expect("stat").nlink(), 1);
    host.assert_root_empty();
}
