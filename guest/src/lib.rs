//! The order-export cleaner of `SPEC.md`: reads one CSV export of orders,
//! fixes what can be fixed, rejects what cannot, and writes per-region order
//! files, a summary and a list of rejected rows.
//!
//! It is a plain Rust library (native code, tests and benchmarks call
//! [`process`] and [`process_paths`]) and, on `wasm32`, a WASI component that
//! exports the `orders:pipeline` world of `wit/pipeline.wit`.
//!
//! ```
//! use orders_pipeline::{process, MemorySink, Reason, RegionTotal};
//!
//! let export = "\
//! order_id,region,amount,status
//! 1001,north,250.00,completed
//! 1002, South ,\"$1,089.5\",Canceled
//! 1003,north,abc,completed
//! ";
//! let mut outputs = MemorySink::new();
//! let report = process(export.as_bytes(), &mut outputs)?;
//!
//! assert_eq!((report.rows, report.accepted, report.cancelled, report.rejected), (3, 1, 1, 1));
//! assert_eq!(report.reasons, [(Reason::Amount, 1)]);
//! assert_eq!(
//!     report.regions,
//!     [RegionTotal { region: "north".into(), orders: 1, total_cents: 25_000 }]
//! );
//! assert_eq!(report.outputs, ["north_orders.csv", "rejected.csv", "summary.csv"]);
//! assert_eq!(
//!     outputs.text("north_orders.csv").as_deref(),
//!     Some("order_id,region,amount\n1001,north,250.00\n")
//! );
//! assert_eq!(
//!     outputs.text("rejected.csv").as_deref(),
//!     Some("line,reason,record\n4,amount,\"1003,north,abc,completed\"\n")
//! );
//! # Ok::<(), orders_pipeline::PipelineError>(())
//! ```
//!
//! # Streaming
//!
//! The input is read in 256 KiB blocks and each accepted row is written to
//! its region's file as it arrives (through 64 KiB buffers), so memory does
//! not grow with the input, except for the set of order ids already seen
//! (needed for exact duplicate detection; an id of up to 10 characters takes
//! at most one 16-byte table entry, shared with the ids that differ from it
//! only in their last character) and one small entry per region. At most 64
//! region files are open at once; past that the least recently used one is
//! flushed, closed, and reopened in append mode when its region comes back.
//! A record that does not fit in one block is gathered in buffers that grow
//! up to the caps of the `too large` rule (8 MiB of data, 1Mi field
//! positions) and no further: past them the record is only counted.
//!
//! # Choices where SPEC.md is silent
//!
//! - **ASCII whitespace** (for trimming and blank lines) is space, tab, LF,
//!   form feed and CR, as in Rust's `u8::is_ascii_whitespace`; a vertical
//!   tab is data.
//! - **Blank lines.** A record of one field that is empty or only ASCII
//!   whitespace once unquoted (an empty line, a line of spaces, `""`)
//!   carries no data: it is skipped and not counted, before the header too,
//!   however long it is (past the caps of `too large` it is still blank). A
//!   line of only commas is not blank: it is a row (rejected for
//!   `field count`).
//! - **Line endings.** LF, CRLF and a lone CR, mixed freely, each end one
//!   physical line, for splitting records and for numbering alike. Inside a
//!   quoted field they are data (kept as they are), but still count as line
//!   ends for the numbering of the rows after it; a CRLF counts once, also
//!   when a refill of the read buffer falls between its two bytes. So a
//!   quote right after a lone CR opens the first field of the next record.
//! - **Line numbers** are the physical line on which the record's first byte
//!   is; skipped blank lines and line ends inside quoted fields count.
//!   A UTF-8 byte order mark is dropped only at the very start.
//! - **Quotes** follow RFC 4180, read leniently (as `csv_core` does) where
//!   an export breaks it: a quote opens a quoted field only as the field's
//!   first byte and is plain data anywhere else (`a"b`); text after a
//!   closing quote, up to the next comma or line end, is appended to the
//!   field (`"a"b` is `ab`); a quote left open runs to the end of the input,
//!   which ends the record.
//! - **Header.** The first non-blank record. Its number of fields (extra
//!   columns included) is the "as many fields as the header" of the
//!   `field count` rule. A required column named twice is an error; repeated
//!   extra columns are fine. The error for missing columns names all of them
//!   and shows the header that was found, which makes a `;`-separated file or
//!   a missing header row obvious.
//! - **Encoding** is checked on every field of the row, extra columns
//!   included. A row with invalid UTF-8 appears in `rejected.csv` with its
//!   original bytes (CSV-quoted as needed), so that file is not always valid
//!   UTF-8; the other outputs are always ASCII.
//! - **Too large.** The caps count a record's data once unquoted, over all
//!   its fields (extra columns included): a doubled quote is one byte, the
//!   quotes around a field and the commas between fields are none. Exactly
//!   8 MiB, or exactly 1,048,576 fields, is not too large. Such a record is
//!   read to its end without being kept (quotes still tracked, line ends
//!   still counted), so one record never takes more than the caps' worth
//!   of memory; its `record` in `rejected.csv` is empty, as SPEC says, and
//!   its line is the one it starts on. A header over the caps fails the run
//!   as [`PipelineError::InvalidInput`]: no columns can be found in it.
//! - **Order ids** are compared exactly (case-sensitive) after trimming: `A1`
//!   and `a1` are different orders. The first valid row with an id wins; a row
//!   rejected for any reason does not reserve its id, a cancelled row does.
//! - **Amounts.** After trimming, one leading `$` is dropped and every `,` is
//!   removed wherever it is (`1,2,3` is 123), then the rest must be
//!   `digits[.d|.dd]`: `$ 5` (space after `$`), `+5`, `-5`, `12.`, `.5`,
//!   `1e3` and `12.345` are rejected. `0` and `0.00` are valid amounts.
//! - **Region and status** are lower-cased in ASCII only: `NÖRTH` is rejected,
//!   not turned into `nörth`. The region's strict alphabet matters: it becomes
//!   part of a file name.
//! - **`rejected.csv`'s record** is the row's original, untrimmed fields,
//!   written as one CSV line with quotes only where needed, then stored as
//!   the (quoted) third field.
//! - **Failures after the header** ([`PipelineError::Io`],
//!   [`PipelineError::Overflow`]) stop the run and leave the files written so
//!   far; only [`PipelineError::InvalidInput`] guarantees nothing was written.
//! - **Files** of the same name in the output directory are replaced; others
//!   are left alone. `rejected.csv` and `summary.csv` are always written,
//!   with only their header line if there is nothing to list.

// Natively the whole crate is free of unsafe code. The WebAssembly build
// allows it in exactly one place, the generated bindings in `component`, so
// there the crate denies it and every other module forbids it.
#![cfg_attr(not(target_arch = "wasm32"), forbid(unsafe_code))]
#![cfg_attr(target_arch = "wasm32", deny(unsafe_code))]

mod input;
mod outputs;
mod rules;
mod seen_ids;
mod sink;

#[cfg(target_arch = "wasm32")]
mod component;

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::input::{RawRecord, Record, RecordReader};
use crate::outputs::{REJECTED_FILE, RegionFiles, SUMMARY_FILE};
use crate::rules::{Columns, RegionName, Status};
use crate::seen_ids::SeenIds;

pub use crate::rules::Reason;
pub use crate::sink::{DirectorySink, MemoryFile, MemorySink, OutputSink};

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows seen (not counting the header and blank lines); always
    /// `accepted + cancelled + rejected`.
    pub rows: u64,
    /// Valid `completed` rows, written to their region's file.
    pub accepted: u64,
    /// Valid `cancelled` rows: counted, not written.
    pub cancelled: u64,
    /// Rows that broke a rule, all listed in `rejected.csv`.
    pub rejected: u64,
    /// Rejected rows per reason: only reasons that occurred, in table order.
    pub reasons: Vec<(Reason, u64)>,
    /// Accepted orders per region, sorted by region name (byte order).
    pub regions: Vec<RegionTotal>,
    /// Names of the files written, sorted.
    pub outputs: Vec<String>,
}

impl Report {
    /// How many rows were rejected for `reason`.
    pub fn rejected_for(&self, reason: Reason) -> u64 {
        self.reasons.iter().find(|(counted, _)| *counted == reason).map_or(0, |(_, rows)| *rows)
    }
}

/// The accepted orders of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTotal {
    /// The cleaned (lower-case) region name.
    pub region: String,
    /// Number of accepted orders.
    pub orders: u64,
    /// Sum of their amounts, in cents.
    pub total_cents: u64,
}

/// Why a run failed. Each carries a message meant for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineError {
    /// The input cannot be processed at all: no header, or a required column
    /// missing or repeated. Nothing was written.
    InvalidInput(String),
    /// Reading the input or writing an output failed.
    Io(String),
    /// A region's total does not fit in the report's integers.
    Overflow(String),
}

impl fmt::Display for PipelineError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipelineError::InvalidInput(message) => write!(formatter, "invalid input: {message}"),
            PipelineError::Io(message) => write!(formatter, "I/O error: {message}"),
            PipelineError::Overflow(message) => write!(formatter, "overflow: {message}"),
        }
    }
}

impl std::error::Error for PipelineError {}

/// Cleans the CSV export read from `input` and writes the output files into
/// `outputs`.
///
/// The header is checked before any file is created, so an
/// [`InvalidInput`](PipelineError::InvalidInput) error leaves `outputs`
/// untouched. `input` is read in large blocks: it needs no buffering.
pub fn process<R: Read>(input: R, outputs: &mut impl OutputSink) -> Result<Report, PipelineError> {
    process_sized(input, None, outputs)
}

/// [`process`], with buffers sized for an input of `size_hint` bytes: a
/// small input then touches little memory (every page a guest touches is
/// paid for, per invocation), a large one reads and writes in large blocks.
///
/// # Errors
///
/// As [`process`].
pub fn process_sized<R: Read>(
    input: R,
    size_hint: Option<u64>,
    outputs: &mut impl OutputSink,
) -> Result<Report, PipelineError> {
    process_with_limits(input, size_hint, input::Limits::SPEC, outputs)
}

fn process_with_limits<R: Read>(
    input: R,
    size_hint: Option<u64>,
    limits: input::Limits,
    outputs: &mut impl OutputSink,
) -> Result<Report, PipelineError> {
    let buffers = Buffers::for_input(size_hint);
    let mut reader = RecordReader::with_limits(input, buffers.input, limits);
    let mut raw = RawRecord::new();
    let columns = read_header(&mut reader, &mut raw)?;
    let mut run = Run::start(columns, outputs, buffers.output)?;
    while let Some(record) = reader.read(&mut raw)? {
        if !record.is_blank() {
            run.add_row(&record)?;
        }
    }
    run.finish()
}

/// [`process`] with other caps than SPEC's for the `too large` rule, so
/// that tests reach them with small inputs.
#[cfg(test)]
fn process_limited<R: Read>(
    input: R,
    limits: input::Limits,
    outputs: &mut impl OutputSink,
) -> Result<Report, PipelineError> {
    process_with_limits(input, None, limits, outputs)
}

/// Cleans the CSV file at `input` and writes the output files into the
/// existing directory `output_dir`.
pub fn process_paths(input: &Path, output_dir: &Path) -> Result<Report, PipelineError> {
    let file = File::open(input)
        .map_err(|err| PipelineError::Io(format!("cannot open the input `{}`: {err}", input.display())))?;
    let size_hint = file.metadata().ok().map(|meta| meta.len());
    process_sized(file, size_hint, &mut DirectorySink::new(output_dir)).map_err(|err| {
        // Checked only on failure (a small run is a few dozen system calls,
        // and this check a handful), so that the error names the directory,
        // not just a file in it.
        if output_dir.is_dir() {
            err
        } else {
            PipelineError::Io(format!(
                "the output directory `{}` does not exist or is not a directory",
                output_dir.display()
            ))
        }
    })
}

/// Block sizes of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Buffers {
    input: usize,
    output: usize,
}

impl Buffers {
    fn for_input(size_hint: Option<u64>) -> Self {
        let Some(size) = size_hint.and_then(|size| usize::try_from(size).ok()) else {
            return Self { input: input::INPUT_BUFFER_BYTES, output: outputs::OUTPUT_BUFFER_BYTES };
        };
        Self {
            // The whole input and the read that finds its end, in one block.
            input: size.saturating_add(1).clamp(8 * 1024, input::INPUT_BUFFER_BYTES),
            // Outputs are at most about the input's size, split over files.
            output: (size / 4).clamp(4 * 1024, outputs::OUTPUT_BUFFER_BYTES),
        }
    }
}

fn read_header<R: Read>(reader: &mut RecordReader<R>, raw: &mut RawRecord) -> Result<Columns, PipelineError> {
    while let Some(record) = reader.read(raw)? {
        if !record.is_blank() {
            return Columns::from_header(&record);
        }
    }
    Err(PipelineError::InvalidInput(
        "the input has no header: it is empty or has only blank lines \
         (expected a first line naming the columns order_id, region, amount, status)"
            .to_owned(),
    ))
}

/// The state of one run after its header was accepted.
struct Run<'s, S: OutputSink> {
    sink: &'s mut S,
    columns: Columns,
    seen_ids: SeenIds,
    regions: RegionFiles<S::Writer>,
    rejected_file: csv::Writer<S::Writer>,
    rows: u64,
    accepted: u64,
    cancelled: u64,
    rejected_by_reason: [u64; Reason::ALL.len()],
    // Reused for every row, so that rows need no allocation of their own.
    region: RegionName,
    record_text: Vec<u8>,
    buffer_bytes: usize,
}

impl<'s, S: OutputSink> Run<'s, S> {
    fn start(columns: Columns, sink: &'s mut S, buffer_bytes: usize) -> Result<Self, PipelineError> {
        let rejected_file = outputs::create_csv(sink, REJECTED_FILE, ["line", "reason", "record"], buffer_bytes)?;
        Ok(Self {
            sink,
            columns,
            seen_ids: SeenIds::default(),
            regions: RegionFiles::new(outputs::MAX_OPEN_REGION_FILES, buffer_bytes),
            buffer_bytes,
            rejected_file,
            rows: 0,
            accepted: 0,
            cancelled: 0,
            rejected_by_reason: [0; Reason::ALL.len()],
            region: RegionName::new(),
            record_text: Vec::new(),
        })
    }

    fn add_row(&mut self, record: &Record<'_>) -> Result<(), PipelineError> {
        self.rows += 1;
        match rules::validate(record, &self.columns, &self.seen_ids, &mut self.region) {
            Ok(row) => {
                self.seen_ids.insert_looked_up(row.order_id, row.id_lookup);
                match row.status {
                    Status::Completed => {
                        self.accepted += 1;
                        self.regions.add_order(self.sink, self.region.as_bytes(), row.order_id, row.amount_cents)
                    }
                    Status::Cancelled => {
                        self.cancelled += 1;
                        Ok(())
                    }
                }
            }
            Err(reason) => self.reject(record, reason),
        }
    }

    fn reject(&mut self, record: &Record<'_>, reason: Reason) -> Result<(), PipelineError> {
        self.rejected_by_reason[reason as usize] += 1;
        outputs::encode_record(record, &mut self.record_text)?;
        let mut line_text = [0; rules::NUMBER_TEXT_BYTES];
        self.rejected_file
            .write_record([
                rules::format_integer(record.line(), &mut line_text),
                reason.as_str().as_bytes(),
                &self.record_text,
            ])
            .map_err(|err| outputs::write_error(REJECTED_FILE, err))
    }

    fn finish(self) -> Result<Report, PipelineError> {
        outputs::close(self.rejected_file, REJECTED_FILE)?;
        let (regions, mut files) = self.regions.finish()?;
        outputs::write_summary(self.sink, &regions, self.buffer_bytes)?;
        files.extend([REJECTED_FILE.to_owned(), SUMMARY_FILE.to_owned()]);
        files.sort_unstable();

        let reasons: Vec<(Reason, u64)> =
            Reason::ALL.into_iter().zip(self.rejected_by_reason).filter(|&(_, rows)| rows > 0).collect();
        let rejected = reasons.iter().map(|(_, rows)| rows).sum();
        debug_assert_eq!(self.rows, self.accepted + self.cancelled + rejected);
        Ok(Report {
            rows: self.rows,
            accepted: self.accepted,
            cancelled: self.cancelled,
            rejected,
            reasons,
            regions,
            outputs: files,
        })
    }
}
