//! The real pipeline component, end to end through the library.

use std::collections::BTreeMap;

use orders_host::{Outcome, RunError};

use crate::util::{TestHost, files, gen_orders, seven_rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seven_row_example_gives_the_numbers_and_files_of_the_spec() {
    let host = TestHost::new("seven");
    let outcome = host.run_bytes(&host.bundled(), &seven_rows()).await.expect("run succeeds");
    let report = &outcome.report;
    assert_eq!((report.rows, report.accepted, report.cancelled, report.rejected), (7, 5, 2, 0));
    assert!(report.reasons.is_empty());
    let regions: Vec<(&str, u64, u64)> =
        report.regions.iter().map(|r| (r.region.as_str(), r.orders, r.total_cents)).collect();
    assert_eq!(regions, [("east", 2, 27_000), ("north", 2, 66_000), ("south", 1, 43_000)]);

    let expected: BTreeMap<String, String> = [
        ("east_orders.csv", "order_id,region,amount\n1004,east,175.00\n1006,east,95.00\n"),
        ("north_orders.csv", "order_id,region,amount\n1001,north,250.00\n1003,north,410.00\n"),
        ("rejected.csv", "line,reason,record\n"),
        ("south_orders.csv", "order_id,region,amount\n1007,south,430.00\n"),
        ("summary.csv", "region,orders,total\neast,2,270.00\nnorth,2,660.00\nsouth,1,430.00\n"),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_owned(), text.to_owned()))
    .collect();
    assert_eq!(files(&outcome), expected);
    let mut listed = report.outputs.clone();
    listed.sort();
    assert_eq!(listed, expected.keys().cloned().collect::<Vec<_>>());
    host.assert_root_empty();
}

fn parse_csv(text: &str) -> Vec<csv::StringRecord> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    reader.records().collect::<Result<_, _>>().expect("output parses as CSV")
}

fn cents(text: &str) -> u64 {
    let (whole, fraction) = text.split_once('.').expect("two decimals");
    assert_eq!(fraction.len(), 2, "amount {text} has two decimals");
    whole.parse::<u64>().expect("whole") * 100 + fraction.parse::<u64>().expect("fraction")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_export_keeps_the_row_invariant_and_gives_parseable_outputs() {
    let host = TestHost::new("dirty");
    let input = gen_orders(&["--rows", "20000", "--seed", "3", "--dirty", "0.3"]);
    let outcome = host.run_bytes(&host.bundled(), &input).await.expect("run succeeds");
    let report = &outcome.report;
    assert_eq!(report.rows, 20_000);
    assert_eq!(report.rows, report.accepted + report.cancelled + report.rejected);
    assert!(report.rejected > 1000, "a 30% dirty export rejects many rows: {report:?}");
    let files = files(&outcome);

    let rejected = parse_csv(&files["rejected.csv"]);
    assert_eq!(rejected.len() as u64, report.rejected);
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for record in &rejected {
        *by_reason.entry(record[1].to_owned()).or_default() += 1;
    }
    let reported: BTreeMap<String, u64> = report.reasons.iter().map(|r| (r.reason.clone(), r.rows)).collect();
    assert_eq!(by_reason, reported);

    let summary = parse_csv(&files["summary.csv"]);
    assert_eq!(summary.len(), report.regions.len());
    for (line, region) in summary.iter().zip(&report.regions) {
        assert_eq!(&line[0], region.region);
        assert_eq!(line[1].parse::<u64>().expect("orders"), region.orders);
        assert_eq!(cents(&line[2]), region.total_cents);
        let rows = parse_csv(&files[&format!("{}_orders.csv", region.region)]);
        assert_eq!(rows.len() as u64, region.orders);
        assert_eq!(rows.iter().map(|r| cents(&r[2])).sum::<u64>(), region.total_cents);
        assert!(rows.iter().all(|r| r[1] == region.region));
    }
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_and_native_builds_of_the_pipeline_give_the_same_bytes() {
    let host = TestHost::new("native");
    let input = gen_orders(&["--rows", "5000", "--seed", "11", "--dirty", "0.4", "--crlf"]);
    let outcome = host.run_bytes(&host.bundled(), &input).await.expect("run succeeds");
    let mut native = orders_pipeline::MemorySink::default();
    let report = orders_pipeline::process(input.as_slice(), &mut native).expect("native run");
    assert_eq!(report.rows, outcome.report.rows);
    let native: BTreeMap<String, String> =
        native.into_files().into_iter().map(|(name, bytes)| (name, String::from_utf8(bytes).expect("UTF-8"))).collect();
    assert_eq!(files(&outcome), native);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_column_is_invalid_input_naming_it_and_leaves_nothing() {
    let host = TestHost::new("missing");
    let err =
        host.run_bytes(&host.bundled(), b"order_id,region,status\n1,north,completed\n").await.expect_err("refused");
    assert_eq!(err.outcome(), Outcome::InvalidInput);
    assert!(err.to_string().contains("amount"), "{err}");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_input_is_invalid_input() {
    let host = TestHost::new("empty");
    let err = host.run_bytes(&host.bundled(), b"\n\n").await.expect_err("refused");
    assert!(matches!(err, RunError::InvalidInput(_)), "{err}");
    host.assert_root_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_root_is_empty_after_success_and_after_each_failure() {
    let host = TestHost::new("empty-root");
    let pipeline = host.bundled();
    host.run_bytes(&pipeline, &seven_rows()).await.expect("success");
    host.assert_root_empty();
    host.run_bytes(&pipeline, b"order_id\n1\n").await.expect_err("guest error");
    host.assert_root_empty();
    let panic = host.component(test_programs_artifacts::PANIC);
    let err = host.run_bytes(&panic, b"x").await.expect_err("trap");
    assert_eq!(err.outcome(), Outcome::Trap);
    host.assert_root_empty();
    // The runner goes on working after all of that.
    let outcome = host.run_bytes(&pipeline, &seven_rows()).await.expect("success again");
    assert_eq!(outcome.report.accepted, 5);
    host.assert_root_empty();
}

/// A row with more than 8 MiB of field data (SPEC's `too large`) costs the
/// run one rejected row, not the run: it is rejected with an empty
/// `record`, the rows around it go through as usual, and the guest stays
/// within a 64 MiB memory limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_over_8_mib_is_one_too_large_row_and_the_run_goes_on() {
    let host = TestHost::new("too-large");
    let memory: u64 = 64 << 20;
    let mut input = b"order_id,region,amount,status\n1,north,10.00,completed\n2,south,20.50,completed\n".to_vec();
    input.extend_from_slice(b"3,north,1.00,canceled\n4,");
    input.extend(std::iter::repeat_n(b'x', (8 << 20) + 4096));
    input.extend_from_slice(b",5.00,completed\n5,south,\"$1,000\",completed\n6,east,7,completed\n");
    let limits = orders_host::Limits { memory: orders_host::ByteSize(memory), ..orders_host::Limits::default() };
    let outcome = host.run_with(&host.bundled(), &input, &limits).await.expect("the run goes on");
    let report = &outcome.report;
    assert_eq!((report.rows, report.accepted, report.cancelled, report.rejected), (6, 4, 1, 1), "{report:?}");
    let reasons: Vec<(&str, u64)> = report.reasons.iter().map(|r| (r.reason.as_str(), r.rows)).collect();
    assert_eq!(reasons, [("too large", 1)]);
    assert!(outcome.peak_memory < memory, "peak memory {} bytes", outcome.peak_memory);
    println!("peak guest memory with an 8 MiB field: {} bytes", outcome.peak_memory);

    let files = files(&outcome);
    assert_eq!(files["rejected.csv"], "line,reason,record\n5,too large,\n", "one row, its record empty");
    assert_eq!(files["north_orders.csv"], "order_id,region,amount\n1,north,10.00\n");
    assert_eq!(files["south_orders.csv"], "order_id,region,amount\n2,south,20.50\n5,south,1000.00\n");
    assert_eq!(files["east_orders.csv"], "order_id,region,amount\n6,east,7.00\n");
    assert_eq!(files["summary.csv"], "region,orders,total\neast,1,7.00\nnorth,1,10.00\nsouth,2,1020.50\n");
    assert_eq!(files.len(), 5, "{:?}", files.keys().collect::<Vec<_>>());
    host.assert_root_empty();
}
