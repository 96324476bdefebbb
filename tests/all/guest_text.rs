//! Guest text on its way to a person: error messages, trap messages, the
//! quoted stderr line, region, reason and output names. The host keeps at
//! most a few KiB of each, shows control characters escaped, and `--json`
//! stays valid JSON.

use std::path::Path;
use std::process::{Command, Output};

use orders_host::{Destination, Input, Invocation, Limits, Outcome, RunError};
use test_programs_artifacts as programs;

use crate::util::TestHost;

/// What the host keeps of one guest text, the truncation note included.
const KEPT: usize = 4096;

/// Characters that would act on a terminal: C0 but the line feed, DEL, C1,
/// and the bidirectional overrides and isolates.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| (c.is_control() && c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .collect()
}

fn run_cli(host: &TestHost, input: &Path, out: &Path, json: bool) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["run", programs::CONTROL_TEXT])
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(json.then_some("--json"))
        .args(host.scratch.root_args())
        .env_remove("RUST_LOG")
        .output()
        .expect("the host binary starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_errors_reach_the_terminal_escaped_and_cut() {
    let host = TestHost::new("text-cli");
    for (channel, code) in [("invalid-input", 4), ("io", 5), ("overflow", 5), ("panic", 7)] {
        let input = host.scratch.write("channel.txt", channel);
        let out = host.scratch.join("never.out");
        let output = run_cli(&host, &input, &out, false);
        assert_eq!(output.status.code(), Some(code), "{channel}");
        let stderr = String::from_utf8(output.stderr).expect("stderr is UTF-8");
        assert_eq!(raw_controls(&stderr), Vec::<char>::new(), "{channel}: {stderr:.300}");
        assert_eq!(stderr.lines().count(), 1, "{channel}: one line");
        assert!(stderr.len() < 4 * KEPT, "{channel}: {} bytes on stderr", stderr.len());
        assert!(stderr.contains("\\u{1b}]0;pwned"), "{channel}: the escapes are shown, escaped: {stderr:.300}");
        assert!(stderr.contains("more bytes)"), "{channel}: the cut is said: {stderr:.300}");
        assert!(!stderr.contains("END-OF-MESSAGE"), "{channel}");
        assert!(output.stdout.is_empty(), "{channel}: nothing on stdout without --json");
        assert!(!out.exists());

        let output = run_cli(&host, &input, &out, true);
        assert_eq!(output.status.code(), Some(code), "{channel}");
        let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
        assert_eq!(raw_controls(&stdout), Vec::<char>::new(), "{channel}: {stdout:.300}");
        let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
        let error = json["error"].as_str().expect("an error message");
        assert!(error.len() < 4 * KEPT && error.contains("more bytes)"), "{channel}: {error:.300}");
        assert_eq!(raw_controls(&String::from_utf8_lossy(&output.stderr)), Vec::<char>::new(), "{channel}");
        host.assert_root_empty();
    }
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_reason_and_output_names_reach_the_summary_escaped() {
    let host = TestHost::new("text-summary");
    let input = host.scratch.write("channel.txt", "report");
    let out = host.scratch.join("report.out");
    let output = run_cli(&host, &input, &out, false);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    assert_eq!(raw_controls(&stdout), Vec::<char>::new(), "{stdout:.600}");
    assert!(stdout.len() < 8 * KEPT, "the 2 MiB region name is cut: {} bytes", stdout.len());
    for shown in ["\\u{202e}north", "\\u{202e}reason", "report\\u{202e}vsc.txt", "more bytes)"] {
        assert!(stdout.contains(shown), "the summary shows {shown}: {stdout:.600}");
    }
    assert!(out.join("report\u{202e}vsc.txt").is_file(), "the name is plain enough to deliver");

    let out = host.scratch.join("report-json.out");
    let output = run_cli(&host, &input, &out, true);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    assert_eq!(raw_controls(&stdout), Vec::<char>::new(), "JSON escapes them all: {stdout:.600}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    let regions = json["report"]["regions"].as_array().expect("regions");
    let first = regions[0]["region"].as_str().expect("a name");
    assert!(first.starts_with("\u{1b}]0;pwned") && first.ends_with("north"), "JSON keeps the text itself: {first:?}");
    let long = regions[1]["region"].as_str().expect("a name");
    assert!(long.len() <= KEPT && long.ends_with("more bytes)"), "{} bytes", long.len());
    assert_eq!(json["outputs"][0]["name"], "report\u{202e}vsc.txt");
    host.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_keeps_at_most_a_few_kib_of_each_guest_text() {
    let host = TestHost::new("text-kept");
    let component = host.component(programs::CONTROL_TEXT);
    let limits = Limits::default();
    for channel in ["invalid-input", "io", "overflow", "panic"] {
        let err = host.run_with(&component, channel.as_bytes(), &limits).await.expect_err(channel);
        let kept = match &err {
            RunError::InvalidInput(message) | RunError::PipelineFailed(message) | RunError::TotalOverflow(message) => {
                message.len()
            }
            RunError::Trap { message, .. } => message.len(),
            other => panic!("{channel}: unexpected {other:?}"),
        };
        // A pipeline failure adds the host's own advice after the guest's text.
        assert!(kept <= KEPT + 100, "{channel}: {kept} bytes kept");
        assert!(err.to_string().len() < 4 * KEPT, "{channel}");
    }
    let outcome = host
        .runner
        .invoke(
            Invocation::new(component.clone(), Input::Bytes(b"report".to_vec()))
                .limits(limits)
                .destination(Destination::Memory),
        )
        .await
        .expect("the report run succeeds");
    for region in &outcome.report.regions {
        assert!(region.region.len() <= KEPT, "{} bytes kept", region.region.len());
    }
    assert_eq!(
        outcome.report.regions[0].region,
        "\u{1b}]0;pwned by a guest\u{7}\u{1b}[2J\u{1b}[H\rFAKE: all good\u{7f}\u{9b}31m\u{202e}north"
    );
    assert_eq!(
        host.run_with(&component, b"invalid-input", &limits).await.expect_err("refused").outcome(),
        Outcome::InvalidInput
    );
    host.assert_recovers().await;
}
