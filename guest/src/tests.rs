//! End-to-end tests of `process`: SPEC.md's rules, seen from the outputs.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::outputs::{MAX_OPEN_REGION_FILES, RegionFiles};
use crate::{MemorySink, OutputSink, PipelineError, Reason, RegionTotal, Report, process, process_paths};

const HEADER: &str = "order_id,region,amount,status\n";

/// Runs the pipeline in memory and checks the invariants every run must
/// keep, whatever the input.
fn run(input: impl AsRef<[u8]>) -> (Report, MemorySink) {
    let mut sink = MemorySink::new();
    let report = process(input.as_ref(), &mut sink).expect("the run succeeds");
    assert_eq!(report.rows, report.accepted + report.cancelled + report.rejected);
    assert_eq!(report.rejected, report.reasons.iter().map(|(_, rows)| rows).sum::<u64>());
    assert!(report.reasons.iter().all(|&(_, rows)| rows > 0));
    assert!(report.reasons.windows(2).all(|pair| pair[0].0 < pair[1].0));
    assert!(report.regions.windows(2).all(|pair| pair[0].region < pair[1].region));
    assert_eq!(report.outputs, sink.names(), "every file written is reported");
    assert_eq!(rejected_rows(&sink).len() as u64, report.rejected);
    (report, sink)
}

fn run_rows(rows: &str) -> (Report, MemorySink) {
    run(format!("{HEADER}{rows}"))
}

fn run_err(input: impl AsRef<[u8]>) -> (PipelineError, MemorySink) {
    let mut sink = MemorySink::new();
    let err = process(input.as_ref(), &mut sink).expect_err("the run fails");
    (err, sink)
}

fn text(sink: &MemorySink, name: &str) -> String {
    sink.text(name).unwrap_or_else(|| panic!("`{name}` was written"))
}

/// `rejected.csv` parsed back: (line, reason, record), the record shown
/// with U+FFFD for invalid UTF-8 (which the file keeps as it was).
fn rejected_rows(sink: &MemorySink) -> Vec<(u64, String, String)> {
    let bytes = sink.file("rejected.csv").expect("rejected.csv is always written");
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    assert_eq!(reader.byte_headers().expect("header"), vec!["line", "reason", "record"]);
    reader
        .byte_records()
        .map(|row| {
            let row = row.expect("rejected.csv parses");
            assert_eq!(row.len(), 3);
            let line = std::str::from_utf8(&row[0]).expect("ASCII").parse().expect("a line number");
            let reason = String::from_utf8(row[1].to_vec()).expect("a reason is ASCII");
            (line, reason, String::from_utf8_lossy(&row[2]).into_owned())
        })
        .collect()
}

/// The reason each rejected row got, in order.
fn reasons(sink: &MemorySink) -> Vec<String> {
    rejected_rows(sink).into_iter().map(|(_, reason, _)| reason).collect()
}

fn region(name: &str, orders: u64, total_cents: u64) -> RegionTotal {
    RegionTotal { region: name.to_owned(), orders, total_cents }
}

const SEVEN_ROWS: &str = "\
order_id,region,amount,status
1001,north,250.00,completed
1002,south,89.50,cancelled
1003,north,410.00,completed
1004,east,175.00,completed
1005,south,320.00,cancelled
1006,east,95.00,completed
1007,south,430.00,completed
";

#[test]
fn the_seven_row_example_gives_the_numbers_of_the_spec() {
    let (report, sink) = run(SEVEN_ROWS);
    assert_eq!(
        report,
        Report {
            rows: 7,
            accepted: 5,
            cancelled: 2,
            rejected: 0,
            reasons: vec![],
            regions: vec![region("east", 2, 27_000), region("north", 2, 66_000), region("south", 1, 43_000)],
            outputs: ["east_orders.csv", "north_orders.csv", "rejected.csv", "south_orders.csv", "summary.csv"]
                .map(String::from)
                .to_vec(),
        }
    );
    assert_eq!(text(&sink, "north_orders.csv"), "order_id,region,amount\n1001,north,250.00\n1003,north,410.00\n");
    assert_eq!(text(&sink, "east_orders.csv"), "order_id,region,amount\n1004,east,175.00\n1006,east,95.00\n");
    assert_eq!(text(&sink, "south_orders.csv"), "order_id,region,amount\n1007,south,430.00\n");
    assert_eq!(text(&sink, "summary.csv"), "region,orders,total\neast,2,270.00\nnorth,2,660.00\nsouth,1,430.00\n");
    assert_eq!(text(&sink, "rejected.csv"), "line,reason,record\n");
}

#[test]
fn the_shared_example_file_is_the_one_tested() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/orders.csv");
    match std::fs::read_to_string(&path) {
        Ok(shared) => assert_eq!(shared, SEVEN_ROWS),
        Err(err) => println!("skipped: cannot read {}: {err}", path.display()),
    }
}

#[test]
fn each_rule_of_the_table_rejects_with_its_reason() {
    let cases: &[(&[u8], Reason)] = &[
        (b"1,north,5", Reason::FieldCount),
        (b"1,north,5,completed,extra", Reason::FieldCount),
        (b"1,n\xffrth,5,completed", Reason::Encoding),
        (b"\xc3,north,5,completed", Reason::Encoding),
        (b",north,5,completed", Reason::OrderId),
        (b"id with space,north,5,completed", Reason::OrderId),
        (b"a.b,north,5,completed", Reason::OrderId),
        (b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx,north,5,completed", Reason::OrderId),
        (b"1,,5,completed", Reason::Region),
        (b"1,north east,5,completed", Reason::Region),
        (b"1,../etc,5,completed", Reason::Region),
        ("1,n\u{f6}rth,5,completed".as_bytes(), Reason::Region),
        (b"1,north,abc,completed", Reason::Amount),
        (b"1,north,-5.00,completed", Reason::Amount),
        (b"1,north,12.345,completed", Reason::Amount),
        (b"1,north,,completed", Reason::Amount),
        (b"1,north,1e3,completed", Reason::Amount),
        (b"1,north,12.,completed", Reason::Amount),
        (b"1,north,.5,completed", Reason::Amount),
        (b"1,north,1000000000.01,completed", Reason::Amount),
        (b"1,north,pending,pending", Reason::Amount),
        (b"1,north,5,pending", Reason::Status),
        (b"1,north,5,refunded", Reason::Status),
        (b"1,north,5,", Reason::Status),
    ];
    for (row, reason) in cases {
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(row);
        input.push(b'\n');
        let (report, sink) = run(&input);
        let shown = String::from_utf8_lossy(row);
        assert_eq!(report.reasons, [(*reason, 1)], "{shown}");
        assert_eq!((report.rows, report.accepted, report.cancelled), (1, 0, 0), "{shown}");
        assert_eq!(rejected_rows(&sink)[0].0, 2, "{shown}");
        assert!(report.regions.is_empty(), "{shown}");
    }
}

#[test]
fn huge_digit_strings_are_rejected_without_overflow() {
    let digits = "9".repeat(1000);
    let (report, _) = run_rows(&format!("1,north,{digits},completed\n2,north,{digits}.99,completed\n"));
    assert_eq!(report.reasons, [(Reason::Amount, 2)]);
    let zeros = "0".repeat(1000);
    let (report, _) = run_rows(&format!("1,north,{zeros}7.5,completed\n"));
    assert_eq!(report.regions, [region("north", 1, 750)]);
}

#[test]
fn fixable_faults_are_fixed() {
    let rows = "\
1,north,\"$1,234.5\",completed
2,  NORTH ,0012.50,COMPLETED
3,North_East,1000000000.00,Completed
  4  ,south,$7,completed
5,south,1,Canceled
6,south,2,CANCELLED
";
    let (report, sink) = run_rows(rows);
    assert_eq!((report.accepted, report.cancelled, report.rejected), (4, 2, 0));
    assert_eq!(
        report.regions,
        [region("north", 2, 123_450 + 1_250), region("north_east", 1, 100_000_000_000), region("south", 1, 700),]
    );
    assert_eq!(text(&sink, "north_orders.csv"), "order_id,region,amount\n1,north,1234.50\n2,north,12.50\n");
    assert_eq!(text(&sink, "north_east_orders.csv"), "order_id,region,amount\n3,north_east,1000000000.00\n");
    assert_eq!(text(&sink, "south_orders.csv"), "order_id,region,amount\n4,south,7.00\n");
    assert_eq!(
        text(&sink, "summary.csv"),
        "region,orders,total\nnorth,2,1247.00\nnorth_east,1,1000000000.00\nsouth,1,7.00\n"
    );
}

#[test]
fn a_row_with_several_faults_gets_the_first_reason_of_the_table() {
    let rows: &[u8] = b"\
1,north,5\xff
bad id,n\xffrth,x,x
bad id,bad region,x,x
1,bad region,x,x
1,north,x,x
1,north,5,x
1,north,5,completed
1,bad region,x,x
2,north,5,x
";
    let mut input = HEADER.as_bytes().to_vec();
    input.extend_from_slice(rows);
    let (report, sink) = run(&input);
    assert_eq!(
        reasons(&sink),
        [
            "field count",
            "encoding",
            "order_id",
            "region",
            "amount",
            "status",
            // Id 1 is taken by now: duplicate comes before region.
            "duplicate",
            "status",
        ]
    );
    assert_eq!(report.accepted, 1);
}

#[test]
fn duplicates_are_only_rows_repeating_a_valid_rows_id() {
    let long_id = "an-order-id-longer-than-ten-chars";
    let rows = format!(
        "\
1,north,abc,completed
1,north,1,completed
1,north,2,completed
2,north,3,cancelled
2,north,4,completed
 3 ,north,5,completed
3,south,6,completed
{long_id},north,7,completed
{long_id},north,8,completed
A1,north,9,completed
a1,north,10,completed
"
    );
    let (report, sink) = run_rows(&rows);
    // Row 2 (bad amount) does not reserve id 1; row 3 does; the cancelled
    // row 5 reserves id 2; the trimmed ` 3 ` is id 3; ids are case-sensitive.
    assert_eq!(
        rejected_rows(&sink).into_iter().map(|(line, reason, _)| (line, reason)).collect::<Vec<_>>(),
        [
            (2, "amount".to_owned()),
            (4, "duplicate".to_owned()),
            (6, "duplicate".to_owned()),
            (8, "duplicate".to_owned()),
            (10, "duplicate".to_owned()),
        ]
    );
    assert_eq!((report.accepted, report.cancelled), (5, 1));
    assert_eq!(
        text(&sink, "north_orders.csv"),
        format!(
            "order_id,region,amount\n1,north,1.00\n3,north,5.00\n{long_id},north,7.00\nA1,north,9.00\na1,north,10.00\n"
        )
    );
}

#[test]
fn quoted_fields_hold_commas_quotes_and_line_breaks() {
    let input = "\
order_id,region,amount,status,note
1,north,\"1,000.00\",completed,\"fragile, handle with care\"
2,north,5,completed,\"line one
line two\"
3,north,5,completed,\"said \"\"asap\"\"\"
4,north,x,completed,\"a
b\"
5,north,x,completed,plain
";
    let (report, sink) = run(input);
    assert_eq!((report.rows, report.accepted, report.rejected), (5, 3, 2));
    assert_eq!(report.regions, [region("north", 3, 101_000)]);
    assert_eq!(
        rejected_rows(&sink),
        [
            (6, "amount".to_owned(), "4,north,x,completed,\"a\nb\"".to_owned()),
            (8, "amount".to_owned(), "5,north,x,completed,plain".to_owned()),
        ]
    );
}

#[test]
fn rejected_records_are_the_untrimmed_fields_quoted_as_csv() {
    let input = "order_id,region,amount,status,note\n 1 , north ,x, completed ,\"a \"\"b\"\", c\"\n";
    let (_, sink) = run(input);
    assert_eq!(
        text(&sink, "rejected.csv"),
        "line,reason,record\n2,amount,\" 1 , north ,x, completed ,\"\"a \"\"\"\"b\"\"\"\", c\"\"\"\n"
    );
    // The record column parses back into the original fields.
    let (_, _, record) = &rejected_rows(&sink)[0];
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(record.as_bytes());
    let fields = reader.records().next().expect("one record").expect("parses");
    assert_eq!(fields, vec![" 1 ", " north ", "x", " completed ", "a \"b\", c"]);
}

#[test]
fn crlf_line_endings_give_the_same_outputs_and_line_numbers() {
    let lf = "\
order_id,region,amount,status,note

1,north,5,completed,\"two
lines\"
2,north,x,completed,
3,south,7.5,completed,
";
    let crlf = lf.replace('\n', "\r\n");
    let (lf_report, lf_sink) = run(lf);
    let (crlf_report, crlf_sink) = run(&crlf);
    assert_eq!(lf_report, crlf_report);
    assert_eq!(rejected_rows(&lf_sink)[0].0, 5);
    assert_eq!(text(&crlf_sink, "south_orders.csv"), "order_id,region,amount\n3,south,7.50\n");
    assert_eq!(text(&crlf_sink, "rejected.csv"), "line,reason,record\n5,amount,\"2,north,x,completed,\"\n");
    // Only the quoted line break keeps its CR: it is data.
    let (_, sink) = run("order_id,region,amount,status,note\r\n1,n,x,completed,\"a\r\nb\"\r\n");
    assert_eq!(rejected_rows(&sink)[0].2, "1,n,x,completed,\"a\r\nb\"");
}

#[test]
fn a_byte_order_mark_at_the_start_is_ignored() {
    let (report, _) = run(format!("\u{feff}{SEVEN_ROWS}"));
    assert_eq!((report.accepted, report.cancelled), (5, 2));
    // Also before blank lines, and in a file read one byte at a time.
    let mut sink = MemorySink::new();
    let input = format!("\u{feff}\n\n{SEVEN_ROWS}1001,x,1,completed\n");
    let report = process(OneByteAtATime(input.as_bytes()), &mut sink).expect("runs");
    assert_eq!(report.rejected_for(Reason::Duplicate), 1);
    assert_eq!(rejected_rows(&sink)[0].0, 11);
}

/// A reader that returns one byte per call, the worst case for buffering.
struct OneByteAtATime<'a>(&'a [u8]);

impl Read for OneByteAtATime<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), out.first_mut()) {
            (Some((&byte, rest)), Some(slot)) => {
                *slot = byte;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn the_header_may_reorder_columns_add_others_and_vary_case_and_spaces() {
    let input = "\
 Status ,NOTE, Amount,REGION ,extra, Order_ID\t
completed,n,5.00,east,x,1
Canceled,n,6.00,east,x,2
completed,n,7.00,east,x
";
    let (report, sink) = run(input);
    assert_eq!((report.accepted, report.cancelled, report.rejected), (1, 1, 1));
    assert_eq!(report.reasons, [(Reason::FieldCount, 1)]);
    assert_eq!(text(&sink, "east_orders.csv"), "order_id,region,amount\n1,east,5.00\n");
    // Extra columns may repeat; only required ones may not.
    let (report, _) = run("note,order_id,note,region,amount,status\nx,1,y,west,1,completed\n");
    assert_eq!(report.regions, [region("west", 1, 100)]);
}

#[test]
fn blank_lines_are_skipped_and_not_counted() {
    let input =
        "\n  \n\t\n\norder_id,region,amount,status\n\n1,north,1,completed\n   \n\n\"\"\n2,north,x,completed\n\n";
    let (report, sink) = run(input);
    assert_eq!((report.rows, report.accepted, report.rejected), (2, 1, 1));
    assert_eq!(rejected_rows(&sink)[0].0, 11);
    // A line of commas is not blank: it is a row.
    let (report, _) = run_rows(",,,\n");
    assert_eq!(report.reasons, [(Reason::OrderId, 1)]);
}

#[test]
fn line_numbers_follow_blank_lines_and_multi_line_records() {
    let input = "\n\norder_id,region,amount,status,note\n\
                 1,north,1,completed,\"a\nb\nc\"\n\
                 \n\
                 2,north,x,completed,\"d\ne\"\n\
                 3,north,x,completed,\n";
    let (_, sink) = run(input);
    let lines: Vec<u64> = rejected_rows(&sink).into_iter().map(|(line, _, _)| line).collect();
    assert_eq!(lines, [8, 10]);
}

#[test]
fn a_header_alone_writes_empty_outputs() {
    for input in [HEADER, "order_id,region,amount,status", "\n\norder_id,region,amount,status\n\n\n"] {
        let (report, sink) = run(input);
        assert_eq!(report, Report { outputs: vec!["rejected.csv".into(), "summary.csv".into()], ..Report::default() });
        assert_eq!(text(&sink, "rejected.csv"), "line,reason,record\n");
        assert_eq!(text(&sink, "summary.csv"), "region,orders,total\n");
    }
}

#[test]
fn a_missing_column_fails_the_run_naming_it_and_writes_nothing() {
    let (err, sink) = run_err("order_id,region,status\n1,north,completed\n");
    let PipelineError::InvalidInput(message) = &err else {
        panic!("expected InvalidInput, got {err:?}");
    };
    assert!(message.contains("no `amount` column"), "{message}");
    assert!(message.contains("required: order_id, region, amount, status"), "{message}");
    assert!(sink.names().is_empty());

    let (err, sink) = run_err("order_id;region;amount;status\n");
    let message = err.to_string();
    assert!(message.contains("no `order_id`, `region`, `amount` or `status` columns"), "{message}");
    assert!(message.contains("found: `order_id;region;amount;status`"), "{message}");
    assert!(sink.names().is_empty());
}

#[test]
fn a_repeated_column_fails_the_run_naming_it_and_writes_nothing() {
    let (err, sink) = run_err("order_id,Region,amount, region ,status\n1,a,1,b,completed\n");
    let PipelineError::InvalidInput(message) = &err else {
        panic!("expected InvalidInput, got {err:?}");
    };
    assert!(message.contains("`region` column twice"), "{message}");
    assert!(message.contains("columns 2 and 4"), "{message}");
    assert!(sink.names().is_empty());
}

#[test]
fn an_input_without_a_header_fails_and_writes_nothing() {
    for input in ["", "\n", "\n   \n\r\n\t\n", "\u{feff}"] {
        let (err, sink) = run_err(input);
        assert!(
            matches!(&err, PipelineError::InvalidInput(message) if message.contains("no header")),
            "{input:?}: {err:?}"
        );
        assert!(sink.names().is_empty());
    }
}

#[test]
fn invalid_utf8_is_rejected_and_kept_byte_for_byte() {
    let mut input = b"order_id,region,amount,status,note\n".to_vec();
    input.extend_from_slice(b"1,north,5,completed,caf\xe9\n2,north,5,completed,ok\n");
    // Quoted as needed, the bad bytes as they were: a truncated sequence,
    // an overlong one, a lone continuation byte.
    input.extend_from_slice(b"3,north,5,completed,\"\xc3,\xc0\xaf \"\"\x80\"\"\"\n");
    let (report, sink) = run(&input);
    assert_eq!(report.reasons, [(Reason::Encoding, 2)]);
    assert_eq!(report.regions, [region("north", 1, 500)]);
    assert_eq!(
        sink.file("rejected.csv").expect("written"),
        b"line,reason,record\n\
          2,encoding,\"1,north,5,completed,caf\xe9\"\n\
          4,encoding,\"3,north,5,completed,\"\"\xc3,\xc0\xaf \"\"\"\"\x80\"\"\"\"\"\"\"\n"
    );
    // Read back, the record is the row's fields, bytes and all.
    let rejected = sink.file("rejected.csv").expect("written");
    let mut reader = csv::Reader::from_reader(rejected.as_slice());
    let rows: Vec<csv::ByteRecord> = reader.byte_records().map(|row| row.expect("parses")).collect();
    let mut inner = csv::ReaderBuilder::new().has_headers(false).from_reader(&rows[1][2]);
    let fields = inner.byte_records().next().expect("one record").expect("parses");
    assert_eq!(fields.iter().collect::<Vec<_>>(), [&b"3"[..], b"north", b"5", b"completed", b"\xc3,\xc0\xaf \"\x80\""]);
}

#[test]
fn a_lone_cr_ends_lines_and_records_like_lf_and_crlf() {
    let input = "order_id,region,amount,status,note\r\
                 1,north,5,completed,\"a\rb\"\r\
                 2,north,x,completed,\r\n\
                 3,north,5,canceled,\r\"\n4,north,y,completed\n";
    let (report, sink) = run(input);
    assert_eq!((report.rows, report.accepted, report.cancelled, report.rejected), (4, 1, 1, 2));
    // Row 1 starts on line 2 and its quoted CR moves row 2 to line 4; the
    // quote after row 3's CR opens a field that runs to the end (line 6).
    assert_eq!(
        rejected_rows(&sink),
        [
            (4, "amount".to_owned(), "2,north,x,completed,".to_owned()),
            (6, "field count".to_owned(), "\"\n4,north,y,completed\n\"".to_owned()),
        ]
    );
    assert_eq!(text(&sink, "north_orders.csv"), "order_id,region,amount\n1,north,5.00\n");

    // The same export with LF, CRLF or CR line ends: the same outputs.
    let lf = "order_id,region,amount,status\n\n1,north,5,completed\n2,north,x,completed\n\n\n3,south,7.5,completed\n";
    let (lf_report, lf_sink) = run(lf);
    assert_eq!(rejected_rows(&lf_sink), [(4, "amount".to_owned(), "2,north,x,completed".to_owned())]);
    let lf_files = lf_sink.into_files();
    for line_end in ["\r\n", "\r"] {
        let (report, sink) = run(lf.replace('\n', line_end));
        assert_eq!(report, lf_report, "{line_end:?}");
        assert_eq!(sink.into_files(), lf_files, "{line_end:?}");
    }
}

#[test]
fn the_report_lists_only_reasons_that_occurred_in_table_order() {
    let (report, _) = run_rows("1,north,5,nope\n2,north,x,completed\n3,north,y,completed\n,north,1,completed\n");
    assert_eq!(report.reasons, [(Reason::OrderId, 1), (Reason::Amount, 2), (Reason::Status, 1)]);
    assert_eq!(report.rejected_for(Reason::Amount), 2);
    assert_eq!(report.rejected_for(Reason::Region), 0);
}

#[test]
fn a_total_too_large_for_u64_fails_with_overflow_naming_the_region() {
    let mut sink = MemorySink::new();
    let mut regions = RegionFiles::new(MAX_OPEN_REGION_FILES, 64 * 1024);
    regions.seed_total("north", u64::MAX - 100);
    regions.add_order(&mut sink, b"north", b"1", 100).expect("u64::MAX itself still fits");
    let err = regions.add_order(&mut sink, b"north", b"2", 1).expect_err("one cent more overflows");
    assert!(matches!(&err, PipelineError::Overflow(message) if message.contains("`north`")), "{err:?}");
}

/// A `MemorySink` that counts its open files.
#[derive(Debug, Default)]
struct CountingSink {
    inner: MemorySink,
    open: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct CountedFile {
    inner: crate::MemoryFile,
    open: Arc<AtomicUsize>,
}

impl CountingSink {
    fn counted(&self, inner: crate::MemoryFile) -> CountedFile {
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_open.fetch_max(now, Ordering::SeqCst);
        CountedFile { inner, open: Arc::clone(&self.open) }
    }
}

impl OutputSink for CountingSink {
    type Writer = CountedFile;

    fn create(&mut self, name: &str) -> io::Result<CountedFile> {
        let file = self.inner.create(name)?;
        Ok(self.counted(file))
    }

    fn append(&mut self, name: &str) -> io::Result<CountedFile> {
        let file = self.inner.append(name)?;
        Ok(self.counted(file))
    }
}

impl Write for CountedFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Drop for CountedFile {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn more_regions_than_open_files_still_give_complete_files() {
    let region_count = MAX_OPEN_REGION_FILES * 3 + 7;
    let rounds = 3;
    let mut input = String::from(HEADER);
    for round in 0..rounds {
        for region in 0..region_count {
            let id = round * region_count + region;
            input.push_str(&format!("{id},R{region},{round}.{cents:02},completed\n", cents = region % 100));
        }
    }
    let mut sink = CountingSink::default();
    let report = process(input.as_bytes(), &mut sink).expect("runs");
    assert_eq!(report.accepted as usize, region_count * rounds);
    assert_eq!(report.regions.len(), region_count);
    // Region files plus rejected.csv.
    let most_open = sink.most_open.load(Ordering::SeqCst);
    assert!(most_open <= MAX_OPEN_REGION_FILES + 1, "{most_open} files open at once");
    assert_eq!(sink.open.load(Ordering::SeqCst), 0, "every file was closed");

    for region in 0..region_count {
        let mut expected = String::from("order_id,region,amount\n");
        for round in 0..rounds {
            let id = round * region_count + region;
            expected.push_str(&format!("{id},r{region},{round}.{cents:02}\n", cents = region % 100));
        }
        let name = format!("r{region}_orders.csv");
        assert_eq!(sink.inner.text(&name).as_deref(), Some(expected.as_str()), "{name}");
    }
}

/// A sink whose files refuse every write to one name.
#[derive(Debug, Default)]
struct BrokenSink {
    inner: MemorySink,
    broken: &'static str,
}

#[derive(Debug)]
struct MaybeBrokenFile {
    inner: crate::MemoryFile,
    broken: bool,
}

impl OutputSink for BrokenSink {
    type Writer = MaybeBrokenFile;

    fn create(&mut self, name: &str) -> io::Result<MaybeBrokenFile> {
        Ok(MaybeBrokenFile { inner: self.inner.create(name)?, broken: name == self.broken })
    }

    fn append(&mut self, name: &str) -> io::Result<MaybeBrokenFile> {
        Ok(MaybeBrokenFile { inner: self.inner.append(name)?, broken: name == self.broken })
    }
}

impl Write for MaybeBrokenFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::Error::other("disk full"));
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn write_errors_fail_the_run_naming_the_file() {
    for broken in ["north_orders.csv", "rejected.csv", "summary.csv"] {
        let mut sink = BrokenSink { broken, ..BrokenSink::default() };
        let err = process(SEVEN_ROWS.as_bytes(), &mut sink).expect_err("a write fails");
        assert!(
            matches!(&err, PipelineError::Io(message) if message.contains(broken) && message.contains("disk full")),
            "{broken}: {err:?}"
        );
    }
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orders-pipeline-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn process_paths_reads_and_writes_files() {
    let dir = temp_dir("paths");
    let input = dir.join("orders.csv");
    let out = dir.join("out");
    std::fs::create_dir(&out).expect("out dir");
    std::fs::write(&input, SEVEN_ROWS).expect("input written");

    let report = process_paths(&input, &out).expect("runs");
    assert_eq!((report.accepted, report.cancelled), (5, 2));
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .expect("out dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, report.outputs);
    assert_eq!(
        std::fs::read_to_string(out.join("summary.csv")).expect("summary"),
        "region,orders,total\neast,2,270.00\nnorth,2,660.00\nsouth,1,430.00\n"
    );

    // A second run replaces the files rather than appending to them.
    let again = process_paths(&input, &out).expect("runs again");
    assert_eq!(again, report);
    assert_eq!(
        std::fs::read_to_string(out.join("north_orders.csv")).expect("north"),
        "order_id,region,amount\n1001,north,250.00\n1003,north,410.00\n"
    );

    let missing = dir.join("missing.csv");
    let err = process_paths(&missing, &out).expect_err("no input");
    assert!(matches!(&err, PipelineError::Io(message) if message.contains("missing.csv")), "{err:?}");
    let err = process_paths(&input, &dir.join("no-such-dir")).expect_err("no output dir");
    assert!(matches!(&err, PipelineError::Io(message) if message.contains("no-such-dir")), "{err:?}");
    let headless = dir.join("headless.csv");
    std::fs::write(&headless, "not,a,header\n").expect("write");
    let err = process_paths(&headless, &dir.join("no-such-dir")).expect_err("no output dir");
    assert!(
        matches!(&err, PipelineError::Io(message) if message.contains("no-such-dir")),
        "a missing output directory is named even when the input is also wrong: {err:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Parses an amount as written in the outputs (`1234.50`) back into cents.
fn output_cents(amount: &str) -> u64 {
    let (whole, cents) = amount.split_once('.').expect("two decimals");
    assert_eq!(cents.len(), 2, "{amount}");
    whole.parse::<u64>().expect("digits") * 100 + cents.parse::<u64>().expect("digits")
}

fn generated_orders(extra_args: &[&str]) -> Option<Vec<u8>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/gen_orders.py");
    if !script.exists() {
        println!("skipped: {} is absent", script.display());
        return None;
    }
    let output = std::process::Command::new("python3")
        .arg(&script)
        .args(["--rows", "20000", "--seed", "3", "--dirty", "0.3"])
        .args(extra_args)
        .output();
    match output {
        Ok(output) if output.status.success() => Some(output.stdout),
        Ok(output) => panic!("gen_orders.py failed: {}", String::from_utf8_lossy(&output.stderr)),
        Err(err) => {
            println!("skipped: cannot run python3: {err}");
            None
        }
    }
}

#[test]
fn a_generated_dirty_export_is_fully_accounted_for() {
    let Some(input) = generated_orders(&[]) else {
        return;
    };
    let (report, sink) = run(&input);
    assert_eq!(report.rows, 20_000);
    for reason in
        [Reason::FieldCount, Reason::OrderId, Reason::Duplicate, Reason::Region, Reason::Amount, Reason::Status]
    {
        assert!(report.rejected_for(reason) > 0, "the generator makes {reason} faults");
    }

    // Every region file parses, holds only its region, and sums to the report.
    let mut seen_ids = HashSet::new();
    let mut from_files = Vec::new();
    for name in sink.names().into_iter().filter(|name| name.ends_with("_orders.csv")) {
        let region_name = name.trim_end_matches("_orders.csv").to_owned();
        let bytes = sink.file(&name).expect("listed");
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        assert_eq!(reader.headers().expect("header"), vec!["order_id", "region", "amount"]);
        let (mut orders, mut total_cents) = (0, 0);
        for row in reader.records() {
            let row = row.expect("parses");
            assert_eq!(&row[1], region_name);
            assert!(seen_ids.insert(row[0].to_owned()), "id {} written twice", &row[0]);
            orders += 1;
            total_cents += output_cents(&row[2]);
        }
        from_files.push(region(&region_name, orders, total_cents));
    }
    // File names sort differently (`north_east_` < `north_`): sort by region.
    from_files.sort_by(|a, b| a.region.cmp(&b.region));
    assert_eq!(from_files, report.regions);
    assert_eq!(seen_ids.len() as u64, report.accepted);

    let summary = sink.file("summary.csv").expect("summary.csv");
    let mut reader = csv::Reader::from_reader(summary.as_slice());
    let from_summary: Vec<RegionTotal> = reader
        .records()
        .map(|row| {
            let row = row.expect("parses");
            region(&row[0], row[1].parse().expect("count"), output_cents(&row[2]))
        })
        .collect();
    assert_eq!(from_summary, report.regions);

    let rejected = rejected_rows(&sink);
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for (_, reason, _) in &rejected {
        *by_reason.entry(reason.clone()).or_default() += 1;
    }
    let reported: BTreeMap<String, u64> =
        report.reasons.iter().map(|(reason, rows)| (reason.as_str().to_owned(), *rows)).collect();
    assert_eq!(by_reason, reported);
    assert!(rejected.windows(2).all(|pair| pair[0].0 < pair[1].0));
}

#[test]
fn a_generated_crlf_export_gives_the_same_results_as_lf() {
    let (Some(lf), Some(crlf)) = (generated_orders(&[]), generated_orders(&["--crlf"])) else {
        return;
    };
    assert_ne!(lf, crlf);
    let (lf_report, lf_sink) = run(&lf);
    let (crlf_report, crlf_sink) = run(&crlf);
    assert_eq!(lf_report, crlf_report);
    // Same line numbers, and records differ only where a quoted field
    // holds a line break, which the generator writes as LF in both.
    assert_eq!(lf_sink.into_files(), crlf_sink.into_files());
}

#[test]
fn buffer_sizes_follow_the_input_and_never_change_the_outputs() {
    use crate::Buffers;
    assert_eq!(Buffers::for_input(None), Buffers { input: 256 * 1024, output: 64 * 1024 });
    assert_eq!(Buffers::for_input(Some(222)), Buffers { input: 8 * 1024, output: 4 * 1024 });
    assert_eq!(Buffers::for_input(Some(1 << 30)), Buffers { input: 256 * 1024, output: 64 * 1024 });

    // A hint far too small for the input: many refills, quoted line breaks
    // across block boundaries, many buffer flushes; the same bytes out.
    let mut input = String::from(HEADER.trim_end());
    input.push_str(",note\n");
    for row in 0..5000 {
        input.push_str(&format!("{row},r{},{}.{:02},completed,\"multi\nline, {row}\"\n", row % 70, row, row % 100));
    }
    let (expected_report, expected) = run(&input);
    let mut sink = MemorySink::new();
    let report = crate::process_sized(input.as_bytes(), Some(0), &mut sink).expect("the run succeeds");
    assert_eq!(report, expected_report);
    assert_eq!(sink.into_files(), expected.into_files());
}

/// A row of `data_bytes` bytes of data in one note, quoted, so that the
/// record is one field over or at the data cap with every other rule met.
fn row_with_note_of(id: &str, data_bytes: usize) -> Vec<u8> {
    let fixed = id.len() + "north".len() + "5".len() + "completed".len();
    let mut row = format!("{id},north,5,completed,\"").into_bytes();
    // Doubled quotes count once: the cap is on data once unquoted.
    let note_len = data_bytes - fixed;
    row.extend(
        (0..note_len)
            .map(|index| if index % 1000 == 999 { b'"' } else { b'x' })
            .flat_map(|byte| if byte == b'"' { vec![b'"', b'"'] } else { vec![byte] }),
    );
    row.extend_from_slice(b"\"\n");
    row
}

#[test]
fn a_too_large_row_is_rejected_with_an_empty_record_and_the_run_goes_on() {
    const CAP: usize = 8 * 1024 * 1024;
    let mut input = b"order_id,region,amount,status,note\n1,north,1,completed,\n".to_vec();
    input.extend(row_with_note_of("2", CAP)); // line 3: at the cap, valid
    input.extend(row_with_note_of("3", CAP + 1)); // line 4: one byte over
    input.extend_from_slice(b"4,north,4,completed,\"a\nb\"\n"); // line 5
    // Line 7: more than 1,048,576 fields, and the wrong number of them:
    // too large comes first in the table.
    input.extend_from_slice(",".repeat(1024 * 1024).as_bytes());
    input.extend_from_slice(b"\r\n5,north,5,completed,\n"); // line 8
    // Lines 9 and 10: blank lines, however long, are not rows.
    input.resize(input.len() + CAP + 1, b' ');
    input.extend_from_slice(b"\n\"");
    input.resize(input.len() + CAP + 1, b'\t');
    input.extend_from_slice(b"\"\n");
    // Line 11: a quote left open swallows the rest of the export.
    input.extend_from_slice(b"6,north,6,completed,\"never closed\r\n");
    input.resize(input.len() + CAP, b'y');
    let (report, sink) = run(&input);
    assert_eq!((report.rows, report.accepted, report.rejected), (7, 4, 3));
    assert_eq!(report.reasons, [(Reason::TooLarge, 3)]);
    assert_eq!(report.regions, [region("north", 4, 100 + 500 + 400 + 500)]);
    assert_eq!(
        sink.file("rejected.csv").expect("written"),
        b"line,reason,record\n4,too large,\n7,too large,\n11,too large,\n"
    );
    assert_eq!(
        text(&sink, "north_orders.csv"),
        "order_id,region,amount\n1,north,1.00\n2,north,5.00\n4,north,4.00\n5,north,5.00\n"
    );
}

#[test]
fn too_large_comes_first_of_the_reasons_and_a_too_large_header_fails_the_run() {
    use crate::input::Limits;
    let limits = Limits { bytes: 30, fields: 5 };
    let mut sink = MemorySink::new();
    // 31 bytes of data (with several other faults); 6 fields; at both caps.
    let input = "order_id,region,amount,status\n\
                 \u{e9}d,north east,-1,pending,123456789\n\
                 1,n,1,x,,\n\
                 1,north,1,completed,\"12345678901\"\"\"\n\
                 2,north,1,completed\n";
    let report = crate::process_limited(input.as_bytes(), limits, &mut sink).expect("runs");
    assert_eq!(report.reasons, [(Reason::TooLarge, 2), (Reason::FieldCount, 1)]);
    assert_eq!(report.accepted, 1);
    assert_eq!(
        sink.text("rejected.csv").as_deref(),
        Some(
            "line,reason,record\n2,too large,\n3,too large,\n4,field count,\"1,north,1,completed,\"\"12345678901\"\"\"\"\"\"\"\n"
        )
    );
    // A header over the caps is no header: nothing is written.
    let mut sink = MemorySink::new();
    let err = crate::process_limited("order_id,region,amount,status,a,b\n".as_bytes(), limits, &mut sink)
        .expect_err("no usable header");
    assert!(matches!(&err, PipelineError::InvalidInput(message) if message.contains("header on line 1")), "{err}");
    assert!(sink.names().is_empty());
}
