//! Differential test: a second, deliberately plain reading of SPEC.md (and
//! of the choices `lib.rs` documents where SPEC is silent), run side by side
//! with the pipeline on thousands of small mutated exports. Every output
//! file must be the same byte for byte, and so must the report.
//!
//! The oracle shares no code with the guest: its CSV reader is a
//! byte-at-a-time state machine over the whole input, its cleaning rules
//! are written out from SPEC's table, and its outputs are formatted by hand.
//! It is slow and simple on purpose; the guest is fast and clever.
//!
//! The size caps of the `too large` rule are injected (small ones for most
//! cases), so that records at, just under and just over them are cheap to
//! make; the reader is also fed a few bytes per `read`, so that records
//! cross buffer refills and take the guest's slow path.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::io::{self, Read};

use crate::input::Limits;
use crate::{MemorySink, PipelineError, Report};

/// xorshift64*: small, seeded, the same numbers on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    /// One of `items`, from its first `good` ones two times in three.
    fn pick_mostly<'a>(&mut self, items: &[&'a str], good: usize) -> &'a str {
        if self.below(3) < 2 { items[self.below(good)] } else { self.pick(items) }
    }
}

// ---------------------------------------------------------------------------
// The oracle's reader: RFC 4180 one byte at a time.

/// One record as read: its physical start line and its unquoted fields.
#[derive(Debug)]
struct OracleRecord {
    line: u64,
    fields: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between records: line ends here are empty lines.
    BetweenRecords,
    /// At the first byte of a field.
    FieldStart,
    /// In a field that did not start with a quote (quotes are data here).
    Unquoted,
    /// Inside quotes: everything is data except a quote.
    Quoted,
    /// Just after a quote inside quotes: a second quote is a literal one;
    /// a comma or line end ends the field; anything else is data that
    /// goes on unquoted (the lenient reading `lib.rs` documents).
    QuoteInQuoted,
}

fn read_records(input: &[u8]) -> Vec<OracleRecord> {
    // A byte order mark counts only at the very start.
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut records = Vec::new();
    let mut state = State::BetweenRecords;
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut field: Vec<u8> = Vec::new();
    let mut record_line = 0;
    // The physical line of the byte being looked at.
    let mut line: u64 = 1;
    let mut previous: Option<u8> = None;
    for &byte in input {
        let line_end = byte == b'\r' || byte == b'\n';
        if state == State::BetweenRecords && !line_end {
            state = State::FieldStart;
            record_line = line;
        }
        let mut end_record = false;
        match state {
            State::BetweenRecords => {}
            State::FieldStart => match byte {
                b'"' => state = State::Quoted,
                b',' => fields.push(std::mem::take(&mut field)),
                b'\r' | b'\n' => end_record = true,
                _ => {
                    field.push(byte);
                    state = State::Unquoted;
                }
            },
            State::Unquoted => match byte {
                b',' => {
                    fields.push(std::mem::take(&mut field));
                    state = State::FieldStart;
                }
                b'\r' | b'\n' => end_record = true,
                _ => field.push(byte),
            },
            State::Quoted => match byte {
                b'"' => state = State::QuoteInQuoted,
                _ => field.push(byte),
            },
            State::QuoteInQuoted => match byte {
                b'"' => {
                    field.push(b'"');
                    state = State::Quoted;
                }
                b',' => {
                    fields.push(std::mem::take(&mut field));
                    state = State::FieldStart;
                }
                b'\r' | b'\n' => end_record = true,
                _ => {
                    field.push(byte);
                    state = State::Unquoted;
                }
            },
        }
        if end_record {
            fields.push(std::mem::take(&mut field));
            records.push(OracleRecord { line: record_line, fields: std::mem::take(&mut fields) });
            state = State::BetweenRecords;
        }
        // CR, LF and CRLF each end one physical line, wherever they are.
        if byte == b'\r' || (byte == b'\n' && previous != Some(b'\r')) {
            line += 1;
        }
        previous = Some(byte);
    }
    // The last record may lack a line end; an unclosed quote ends here too.
    if state != State::BetweenRecords {
        fields.push(field);
        records.push(OracleRecord { line: record_line, fields });
    }
    records
}

// ---------------------------------------------------------------------------
// The oracle's cleaning rules, from SPEC's table.

/// ASCII whitespace as `lib.rs` defines it (vertical tab is not).
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\x0c' | b'\r')
}

fn trimmed(field: &[u8]) -> &[u8] {
    let start = field.iter().position(|&byte| !is_space(byte)).unwrap_or(field.len());
    let end = field.iter().rposition(|&byte| !is_space(byte)).map_or(start, |last| last + 1);
    &field[start..end]
}

fn lower(field: &[u8]) -> Vec<u8> {
    field.iter().map(|byte| byte.to_ascii_lowercase()).collect()
}

/// One field of nothing but whitespace (or nothing): a blank line.
fn is_blank(record: &OracleRecord) -> bool {
    record.fields.len() == 1 && record.fields[0].iter().all(|&byte| is_space(byte))
}

fn is_too_large(record: &OracleRecord, limits: Limits) -> bool {
    let data: usize = record.fields.iter().map(Vec::len).sum();
    data > limits.bytes || record.fields.len() > limits.fields
}

fn is_name(name: &[u8], allow_upper: bool) -> bool {
    (1..=64).contains(&name.len())
        && name.iter().all(|&byte| {
            byte.is_ascii_digit()
                || byte.is_ascii_lowercase()
                || (allow_upper && byte.is_ascii_uppercase())
                || byte == b'_'
                || byte == b'-'
        })
}

const MAX_CENTS: u64 = 1_000_000_000 * 100;

fn amount_cents(raw: &[u8]) -> Option<u64> {
    let raw = raw.strip_prefix(b"$").unwrap_or(raw);
    let text: Vec<u8> = raw.iter().copied().filter(|&byte| byte != b',').collect();
    let (whole, fraction) = match text.iter().position(|&byte| byte == b'.') {
        Some(dot) => (&text[..dot], Some(&text[dot + 1..])),
        None => (&text[..], None),
    };
    if whole.is_empty() || !whole.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let fraction_cents = match fraction {
        None => 0,
        Some(digits) if (1..=2).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) => {
            let value = u64::from(digits[0] - b'0') * 10;
            value + digits.get(1).map_or(0, |digit| u64::from(digit - b'0'))
        }
        Some(_) => return None,
    };
    let significant = &whole[whole.iter().position(|&digit| digit != b'0').unwrap_or(whole.len())..];
    if significant.len() > 10 {
        return None;
    }
    let whole: u64 = significant.iter().fold(0, |value, digit| value * 10 + u64::from(digit - b'0'));
    let cents = whole * 100 + fraction_cents;
    (cents <= MAX_CENTS).then_some(cents)
}

/// A field as CSV writes it with quotes only where needed.
fn csv_field(field: &[u8]) -> Vec<u8> {
    if field.iter().any(|byte| b",\"\r\n".contains(byte)) {
        let mut quoted = vec![b'"'];
        for &byte in field {
            if byte == b'"' {
                quoted.push(b'"');
            }
            quoted.push(byte);
        }
        quoted.push(b'"');
        quoted
    } else {
        field.to_vec()
    }
}

fn csv_line(fields: &[&[u8]]) -> Vec<u8> {
    if let [only] = fields
        && only.is_empty()
    {
        // A record of one empty field is written `""`, as csv does.
        return b"\"\"".to_vec();
    }
    let quoted: Vec<Vec<u8>> = fields.iter().map(|field| csv_field(field)).collect();
    quoted.join(&b","[..])
}

fn cents_text(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// What a run gives, in a form both sides can be put in.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    rows: u64,
    accepted: u64,
    cancelled: u64,
    rejected: u64,
    reasons: Vec<(String, u64)>,
    regions: Vec<(String, u64, u64)>,
    outputs: Vec<String>,
}

impl From<&Report> for Outcome {
    fn from(report: &Report) -> Self {
        Outcome {
            rows: report.rows,
            accepted: report.accepted,
            cancelled: report.cancelled,
            rejected: report.rejected,
            reasons: report.reasons.iter().map(|(reason, rows)| (reason.as_str().to_owned(), *rows)).collect(),
            regions: report
                .regions
                .iter()
                .map(|total| (total.region.clone(), total.orders, total.total_cents))
                .collect(),
            outputs: report.outputs.clone(),
        }
    }
}

/// A failed run: which kind of error (messages are not compared).
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    InvalidInput,
    Io,
    Overflow,
}

impl From<&PipelineError> for Failure {
    fn from(err: &PipelineError) -> Self {
        match err {
            PipelineError::InvalidInput(_) => Failure::InvalidInput,
            PipelineError::Io(_) => Failure::Io,
            PipelineError::Overflow(_) => Failure::Overflow,
        }
    }
}

type Files = BTreeMap<String, Vec<u8>>;

/// SPEC's reasons, in table order.
const REASONS: [&str; 8] =
    ["too large", "field count", "encoding", "order_id", "duplicate", "region", "amount", "status"];

fn oracle(input: &[u8], limits: Limits) -> (Result<Outcome, Failure>, Files) {
    let mut records = read_records(input).into_iter().filter(|record| !is_blank(record));
    let Some(header) = records.next() else {
        return (Err(Failure::InvalidInput), Files::new());
    };
    if is_too_large(&header, limits) {
        return (Err(Failure::InvalidInput), Files::new());
    }
    let mut columns = [None; 4];
    for (index, name) in header.fields.iter().enumerate() {
        let name = lower(trimmed(name));
        if let Some(which) =
            ["order_id", "region", "amount", "status"].iter().position(|column| column.as_bytes() == name)
        {
            if columns[which].is_some() {
                return (Err(Failure::InvalidInput), Files::new());
            }
            columns[which] = Some(index);
        }
    }
    let [Some(id_at), Some(region_at), Some(amount_at), Some(status_at)] = columns else {
        return (Err(Failure::InvalidInput), Files::new());
    };

    let mut rows = 0;
    let mut cancelled = 0;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut reason_rows: BTreeMap<usize, u64> = BTreeMap::new();
    let mut rejected_text = b"line,reason,record\n".to_vec();
    // Region name -> (orders, total cents, file text).
    let mut regions: BTreeMap<String, (u64, u64, Vec<u8>)> = BTreeMap::new();
    for record in records {
        rows += 1;
        let verdict = (|| {
            if is_too_large(&record, limits) {
                return Err("too large");
            }
            if record.fields.len() != header.fields.len() {
                return Err("field count");
            }
            if record.fields.iter().any(|field| std::str::from_utf8(field).is_err()) {
                return Err("encoding");
            }
            let id = trimmed(&record.fields[id_at]);
            if !is_name(id, true) {
                return Err("order_id");
            }
            if seen.contains(id) {
                return Err("duplicate");
            }
            let region = lower(trimmed(&record.fields[region_at]));
            if !is_name(&region, false) {
                return Err("region");
            }
            let cents = amount_cents(trimmed(&record.fields[amount_at])).ok_or("amount")?;
            let completed = match lower(trimmed(&record.fields[status_at])).as_slice() {
                b"completed" => true,
                b"cancelled" | b"canceled" => false,
                _ => return Err("status"),
            };
            Ok((id.to_vec(), region, cents, completed))
        })();
        match verdict {
            Ok((id, region, cents, completed)) => {
                seen.insert(id.clone());
                if !completed {
                    cancelled += 1;
                    continue;
                }
                let region = String::from_utf8(region).expect("the alphabet is ASCII");
                let entry =
                    regions.entry(region.clone()).or_insert_with(|| (0, 0, b"order_id,region,amount\n".to_vec()));
                entry.0 += 1;
                entry.1 = match entry.1.checked_add(cents) {
                    Some(total) => total,
                    None => return (Err(Failure::Overflow), Files::new()),
                };
                entry.2.extend_from_slice(&id);
                entry.2.extend_from_slice(format!(",{region},{}\n", cents_text(cents)).as_bytes());
            }
            Err(reason) => {
                let order = REASONS.iter().position(|&known| known == reason).expect("a reason of the table");
                *reason_rows.entry(order).or_default() += 1;
                let text = if reason == "too large" {
                    Vec::new()
                } else {
                    csv_line(&record.fields.iter().map(Vec::as_slice).collect::<Vec<_>>())
                };
                rejected_text.extend_from_slice(&csv_line(&[
                    record.line.to_string().as_bytes(),
                    reason.as_bytes(),
                    &text,
                ]));
                rejected_text.push(b'\n');
            }
        }
    }

    let mut files = Files::new();
    let mut summary = b"region,orders,total\n".to_vec();
    for (region, (orders, total, text)) in &regions {
        summary.extend_from_slice(format!("{region},{orders},{}\n", cents_text(*total)).as_bytes());
        files.insert(format!("{region}_orders.csv"), text.clone());
    }
    files.insert("summary.csv".to_owned(), summary);
    files.insert("rejected.csv".to_owned(), rejected_text);
    let rejected: u64 = reason_rows.values().sum();
    let outcome = Outcome {
        rows,
        accepted: regions.values().map(|(orders, _, _)| orders).sum(),
        cancelled,
        rejected,
        reasons: reason_rows.iter().map(|(&reason, &rows)| (REASONS[reason].to_owned(), rows)).collect(),
        regions: regions.iter().map(|(region, (orders, total, _))| (region.clone(), *orders, *total)).collect(),
        outputs: files.keys().cloned().collect::<BTreeSet<_>>().into_iter().collect(),
    };
    (Ok(outcome), files)
}

// ---------------------------------------------------------------------------
// Mutated exports.

const IDS: &[&str] = &["1001", "1002", "1003", "1004", "A1", "a1", "x-y_z", " 1005 ", "1006"];
const REGIONS: &[&str] = &["north", "South", " east ", "NORTH_EAST", "west", "n\u{f6}rth", "\u{212a}ent", "a b"];
const AMOUNTS: &[&str] = &[
    "250.00",
    "$1,089.5",
    "12.5",
    "0",
    "007.10",
    "1000000000.00",
    "1000000000.01",
    "abc",
    "-5",
    "12.345",
    "$ 5",
    "1,2,3",
    ".5",
    "12.",
];
const STATUSES: &[&str] = &["completed", "Canceled", "CANCELLED", "cancelled", "COMPLETED ", "pending", ""];
const NOTES: &[&str] = &["", "gift", "fragile, handle", "said \"asap\"", "line one\nline two", "a\r\nb", "x\ry", " "];
const LINE_ENDS: &[&str] = &["\n", "\r\n", "\r"];
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Writes `field` as an export would: quoted when needed, sometimes always.
fn export_field(rng: &mut Rng, field: &str) -> String {
    if field.contains([',', '"', '\r', '\n']) || rng.chance(8) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// A small export with some faults of its own, and with rows just under, at
/// and just over the size caps when those are small.
fn base_export(rng: &mut Rng, limits: Limits) -> Vec<u8> {
    let mut columns = vec!["order_id", "region", "amount", "status"];
    if rng.chance(2) {
        columns.push("note");
    }
    if rng.chance(4) {
        columns.insert(rng.below(columns.len() + 1), "extra");
    }
    if rng.chance(4) {
        columns.swap(rng.below(4), rng.below(4));
    }
    let line_end = rng.pick(LINE_ENDS);
    let mut text = String::new();
    let header: Vec<String> = columns
        .iter()
        .map(|name| match rng.below(6) {
            0 => name.to_uppercase(),
            1 => format!(" {name}\t"),
            _ => (*name).to_owned(),
        })
        .collect();
    text.push_str(&header.join(","));
    text.push_str(line_end);
    for _ in 0..rng.below(10) + 1 {
        let fields: Vec<String> = columns
            .iter()
            .map(|&column| {
                let value = match column {
                    "order_id" => rng.pick(IDS),
                    "region" => rng.pick_mostly(REGIONS, 5),
                    "amount" => rng.pick_mostly(AMOUNTS, 6),
                    "status" => rng.pick_mostly(STATUSES, 5),
                    _ => rng.pick(NOTES),
                };
                export_field(rng, value)
            })
            .collect();
        text.push_str(&fields.join(","));
        text.push_str(if rng.chance(6) { rng.pick(LINE_ENDS) } else { line_end });
        if rng.chance(8) {
            text.push_str(rng.pick(&["\n", "\r\n", "\r", "  \n", "\"\"\n", "\t\r"]));
        }
    }
    // A row just under, at or just over the data cap, when it is small
    // enough to reach: the last column's value makes up the difference.
    if limits.bytes < 4096 && rng.chance(2) {
        let mut values: Vec<String> = columns
            .iter()
            .map(|&column| match column {
                "order_id" => "1",
                "region" => "north",
                "amount" => "1",
                "status" => "completed",
                _ => "yy",
            })
            .map(str::to_owned)
            .collect();
        let wanted = (limits.bytes + rng.below(3)).saturating_sub(1);
        let others: usize = values[..values.len() - 1].iter().map(String::len).sum();
        let filler_len = wanted.saturating_sub(others);
        // Doubled quotes count once: the caps are on data once unquoted.
        let last = values.len() - 1;
        values[last] = (0..filler_len).map(|index| if index % 7 == 3 { '"' } else { 'x' }).collect();
        let fields: Vec<String> = values.iter().map(|value| export_field(rng, value)).collect();
        text.push_str(&fields.join(","));
        text.push_str(line_end);
    }
    if limits.fields < 4096 && rng.chance(2) {
        let count = (limits.fields + rng.below(3)).saturating_sub(1).max(1);
        text.push_str(&vec!["7"; count].join(","));
        text.push_str(line_end);
    }
    text.into_bytes()
}

/// Edits real exports see, and some they should not.
fn mutate(rng: &mut Rng, export: &mut Vec<u8>, limits: Limits) {
    // Mostly past the header: a broken header ends the run at once.
    let header_end = export.iter().position(|&byte| byte == b'\n' || byte == b'\r').map_or(0, |end| end + 1);
    let at =
        if rng.chance(5) { rng.below(export.len() + 1) } else { header_end + rng.below(export.len() - header_end + 1) };
    match rng.below(14) {
        0..=4 => {
            let insert: &[u8] = rng.pick(&[
                &b"\""[..],
                b"\"\"",
                b",",
                b"\r",
                b"\n",
                b"\r\n",
                b"\xff",
                b"\xc3",
                b"\xe9",
                UTF8_BOM,
                b" ",
                b"\t",
                b"\x0b",
                b"\x0c",
                b"$",
                b"\r\r\n",
                b"\n\r",
                "\u{e9}".as_bytes(),
            ]);
            export.splice(at..at, insert.iter().copied());
        }
        5 | 6 => {
            let len = rng.below(4) + 1;
            let end = (at + len).min(export.len());
            export.drain(at.min(end)..end);
        }
        7 => {
            // Copy a line elsewhere: duplicate ids.
            let start = export[..at].iter().rposition(|&byte| byte == b'\n').map_or(0, |lf| lf + 1);
            let end = export[at..].iter().position(|&byte| byte == b'\n').map_or(export.len(), |lf| at + lf + 1);
            let line = export[start..end].to_vec();
            let to = rng.below(export.len() + 1);
            export.splice(to..to, line);
        }
        8 => {
            let end = (at + rng.below(12) + 1).min(export.len());
            let upper = rng.chance(2);
            for byte in &mut export[at.min(end)..end] {
                *byte = if upper { byte.to_ascii_uppercase() } else { byte.to_ascii_lowercase() };
            }
        }
        9 => {
            // A long run of data or of commas, near the caps if they are
            // small.
            let run = if rng.chance(3) {
                let len = if limits.fields < 4096 { limits.fields + rng.below(5) - 2 } else { rng.below(40) };
                vec![b','; len]
            } else {
                let len = if limits.bytes < 4096 { limits.bytes + rng.below(9) - 4 } else { rng.below(40) };
                vec![*rng.pick(&[&b'x', &b' ', &b'"']); len]
            };
            export.splice(at..at, run);
        }
        10 => {
            export.splice(0..0, UTF8_BOM.iter().copied());
        }
        11 => {
            // Change one line end into another.
            if let Some(offset) = export[at..].iter().position(|&byte| byte == b'\n' || byte == b'\r') {
                let position = at + offset;
                let len = if export[position..].starts_with(b"\r\n") { 2 } else { 1 };
                let with: &[u8] = rng.pick(&[&b"\n"[..], b"\r\n", b"\r"]);
                export.splice(position..position + len, with.iter().copied());
            }
        }
        12 => {
            // Blank lines and a line of commas.
            export.splice(at..at, rng.pick(&[&b"\n"[..], b" \r\n", b"\"\"\r", b",,,\n"]).iter().copied());
        }
        _ => {
            // Cut the end off (a missing last line end, a half record).
            export.truncate(at);
        }
    }
}

fn limits_for(rng: &mut Rng) -> Limits {
    match rng.below(4) {
        0 => Limits::SPEC,
        1 => Limits { bytes: rng.below(150) + 40, fields: rng.below(8) + 5 },
        // Around the guest's first buffer sizes (1 KiB of data, 16 fields).
        2 => Limits { bytes: rng.below(2200) + 900, fields: rng.below(40) + 10 },
        _ => Limits { bytes: rng.below(3000) + 20, fields: Limits::SPEC.fields },
    }
}

// ---------------------------------------------------------------------------
// Running both sides.

/// Hands out its data `step` bytes per `read`.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let count = self.step.min(out.len()).min(self.data.len());
        out[..count].copy_from_slice(&self.data[..count]);
        self.data = &self.data[count..];
        Ok(count)
    }
}

fn guest(input: impl Read, limits: Limits) -> (Result<Outcome, Failure>, Files) {
    let mut sink = MemorySink::new();
    let result = crate::process_limited(input, limits, &mut sink);
    let files = sink.into_files();
    match result {
        Ok(report) => (Ok(Outcome::from(&report)), files),
        // Only an invalid input promises nothing written.
        Err(err @ PipelineError::InvalidInput(_)) => (Err(Failure::from(&err)), files),
        Err(err) => (Err(Failure::from(&err)), Files::new()),
    }
}

fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// A line diff of two files (longest common subsequence: they are small).
fn line_diff(expected: &[u8], got: &[u8]) -> String {
    let split = |bytes: &[u8]| -> Vec<String> { bytes.split_inclusive(|&byte| byte == b'\n').map(escaped).collect() };
    let (left, right) = (split(expected), split(got));
    let mut common = vec![vec![0_usize; right.len() + 1]; left.len() + 1];
    for i in (0..left.len()).rev() {
        for j in (0..right.len()).rev() {
            common[i][j] =
                if left[i] == right[j] { common[i + 1][j + 1] + 1 } else { common[i + 1][j].max(common[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut diff) = (0, 0, String::new());
    while i < left.len() || j < right.len() {
        if i < left.len() && j < right.len() && left[i] == right[j] {
            let _ = writeln!(diff, "      {}", left[i]);
            (i, j) = (i + 1, j + 1);
        } else if j < right.len() && (i == left.len() || common[i][j + 1] >= common[i + 1][j]) {
            let _ = writeln!(diff, "  got {}", right[j]);
            j += 1;
        } else {
            let _ = writeln!(diff, "  exp {}", left[i]);
            i += 1;
        }
    }
    diff
}

fn describe_difference(
    expected: &(Result<Outcome, Failure>, Files),
    got: &(Result<Outcome, Failure>, Files),
) -> String {
    let mut text = String::new();
    if expected.0 != got.0 {
        let _ = writeln!(text, "report:\n  expected {:?}\n  got      {:?}", expected.0, got.0);
    }
    let names: BTreeSet<&String> = expected.1.keys().chain(got.1.keys()).collect();
    for name in names {
        match (expected.1.get(name), got.1.get(name)) {
            (Some(left), Some(right)) if left == right => {}
            (Some(left), Some(right)) => {
                let _ = write!(text, "{name} differs (exp = oracle, got = guest):\n{}", line_diff(left, right));
            }
            (left, right) => {
                let _ = writeln!(text, "{name}: oracle has it: {}, guest has it: {}", left.is_some(), right.is_some());
            }
        }
    }
    text
}

#[test]
fn the_oracle_reads_the_spec_examples_as_the_spec_says() {
    let (outcome, files) = oracle(
        b"order_id,region,amount,status\n1001,north,250.00,completed\n1002,south,89.50,cancelled\n\
          1003,north,410.00,completed\n1004,east,175.00,completed\n1005,south,320.00,cancelled\n\
          1006,east,95.00,completed\n1007,south,430.00,completed\n",
        Limits::SPEC,
    );
    let outcome = outcome.expect("a valid export");
    assert_eq!((outcome.rows, outcome.accepted, outcome.cancelled, outcome.rejected), (7, 5, 2, 0));
    assert_eq!(
        outcome.regions,
        [("east".to_owned(), 2, 27_000), ("north".to_owned(), 2, 66_000), ("south".to_owned(), 1, 43_000)]
    );
    assert_eq!(files["summary.csv"], b"region,orders,total\neast,2,270.00\nnorth,2,660.00\nsouth,1,430.00\n");
    // Lone CRs end lines, inside quotes too; CRLF is one line end.
    let lines: Vec<u64> = read_records(b"h\r\"a\rb\r\nc\"\r\r\nx\n\ry").iter().map(|record| record.line).collect();
    assert_eq!(lines, [1, 2, 6, 8]);
    let (outcome, files) = oracle(b"order_id,region,amount,status\n\"\xff,x\",n,1,completed\n", Limits::SPEC);
    assert_eq!(outcome.map(|outcome| outcome.reasons), Ok(vec![("encoding".to_owned(), 1)]));
    assert_eq!(files["rejected.csv"], b"line,reason,record\n2,encoding,\"\"\"\xff,x\"\",n,1,completed\"\n");
}

#[test]
fn the_pipeline_agrees_with_a_plain_reading_of_the_spec_on_mutated_exports() {
    const CASES: usize = 3000;
    let mut rng = Rng(0x5eed_f00d_0e5e);
    let mut failures = Vec::new();
    // What the cases covered, printed so that a change to the generator
    // that stops reaching some rule shows.
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let (mut failed_runs, mut rows, mut accepted) = (0, 0, 0);
    for case in 0..CASES {
        let limits = limits_for(&mut rng);
        let mut input = base_export(&mut rng, limits);
        for _ in 0..rng.below(6) {
            mutate(&mut rng, &mut input, limits);
        }
        let step = rng.below(9) + 1;
        let expected = oracle(&input, limits);
        match &expected.0 {
            Ok(outcome) => {
                rows += outcome.rows;
                accepted += outcome.accepted;
                for (reason, count) in &outcome.reasons {
                    *reasons.entry(reason.clone()).or_default() += count;
                }
            }
            Err(_) => failed_runs += 1,
        }
        for (how, got) in
            [("whole", guest(input.as_slice(), limits)), ("trickled", guest(Trickle { data: &input, step }, limits))]
        {
            if got != expected {
                failures.push(format!(
                    "case {case} ({how}, {step} bytes per read), limits {limits:?}\ninput: b\"{}\"\n{}",
                    escaped(&input),
                    describe_difference(&expected, &got)
                ));
                break;
            }
        }
    }
    println!("{CASES} cases: {failed_runs} runs failed (no header, bad header); {rows} rows, {accepted} accepted");
    println!("rejected by reason: {reasons:?}");
    assert!(
        failures.is_empty(),
        "{} of {CASES} mutated exports differ; the first ones:\n\n{}",
        failures.len(),
        failures.iter().take(4).cloned().collect::<Vec<_>>().join("\n")
    );
}
