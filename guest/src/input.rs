//! Splitting the input into CSV records, each tagged with the physical line
//! it starts on.
//!
//! `csv::Reader` reports `Position::line` as the line count at the end of the
//! previous record, which is off after CRLF endings (the `\n` of a `\r\n` is
//! consumed with the *next* record) and after skipped blank lines. So this
//! module drives `csv_core` itself over its own buffer, where it can see
//! exactly which bytes precede the first byte of each record.

#![forbid(unsafe_code)]

use std::io::{self, Read};

use csv_core::{ReadRecordResult, Reader as CsvParser};

use crate::PipelineError;

/// Every `read` on the input is a host call in WebAssembly, so read in large
/// blocks.
pub(crate) const INPUT_BUFFER_BYTES: usize = 256 * 1024;

/// A record with more field data than this fails the run instead of growing
/// memory without bound; in practice it means a quote was left open and the
/// rest of the file became one field.
pub(crate) const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// Same guard for the number of fields (a line of a million commas).
pub(crate) const MAX_RECORD_FIELDS: usize = 1024 * 1024;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One record: its unescaped fields stored back to back, as `csv_core`
/// produces them.
#[derive(Debug)]
pub(crate) struct RawRecord {
    data: Vec<u8>,
    /// `ends[i]` is the end of field `i` in `data`.
    ends: Vec<usize>,
    field_count: usize,
    line: u64,
}

impl RawRecord {
    pub(crate) fn new() -> Self {
        Self { data: vec![0; 1024], ends: vec![0; 16], field_count: 0, line: 0 }
    }

    /// The 1-based physical line of the input on which the record starts.
    pub(crate) fn line(&self) -> u64 {
        self.line
    }

    pub(crate) fn len(&self) -> usize {
        self.field_count
    }

    /// The raw bytes of field `index`; `index` must be below `len()`.
    pub(crate) fn field(&self, index: usize) -> &[u8] {
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1],
        };
        &self.data[start..self.ends[index]]
    }

    pub(crate) fn fields(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.field_count).map(|index| self.field(index))
    }

    /// A line with nothing but whitespace (or one empty quoted field) carries
    /// no data: it is treated like an empty line, which the parser already
    /// skips.
    pub(crate) fn is_blank(&self) -> bool {
        self.field_count == 1 && self.field(0).trim_ascii().is_empty()
    }
}

/// Reads records from any `Read`, buffering it itself.
pub(crate) struct RecordReader<R> {
    source: R,
    parser: CsvParser,
    buffer: Box<[u8]>,
    /// The bytes not yet given to the parser are `buffer[consumed..filled]`.
    consumed: usize,
    filled: usize,
    source_exhausted: bool,
    /// True until the parser has been called once: only that call can strip
    /// a byte order mark.
    first_call: bool,
}

impl<R: Read> RecordReader<R> {
    #[cfg(test)]
    pub(crate) fn new(source: R) -> Self {
        Self::with_buffer(source, INPUT_BUFFER_BYTES)
    }

    /// A reader whose block size is `buffer_bytes` (at least 4 KiB).
    pub(crate) fn with_buffer(source: R, buffer_bytes: usize) -> Self {
        Self {
            source,
            // The defaults are RFC 4180: `,`, `"` doubled inside quotes, and
            // `\r`, `\n` or `\r\n` ending a record.
            parser: CsvParser::new(),
            buffer: vec![0; buffer_bytes.max(4096)].into_boxed_slice(),
            consumed: 0,
            filled: 0,
            source_exhausted: false,
            first_call: true,
        }
    }

    /// Reads the next record into `record`. Returns `false` at the end of the
    /// input. Empty lines are skipped by the parser and never returned.
    pub(crate) fn read(&mut self, record: &mut RawRecord) -> Result<bool, PipelineError> {
        let mut data_len = 0;
        let mut ends_len = 0;
        let mut start_line = None;
        loop {
            if self.consumed == self.filled && !self.source_exhausted {
                self.fill().map_err(|err| {
                    PipelineError::Io(format!("reading the input failed after line {}: {err}", self.parser.line()))
                })?;
            }
            // An empty slice tells the parser that the input has ended.
            let input = &self.buffer[self.consumed..self.filled];
            let line_before = self.parser.line();
            let (result, read, written, ends_written) =
                self.parser.read_record(input, &mut record.data[data_len..], &mut record.ends[ends_len..]);
            if start_line.is_none() {
                let mut consumed = &input[..read];
                if std::mem::take(&mut self.first_call) && consumed.starts_with(UTF8_BOM) {
                    // The parser stripped it; it is not the record's first byte.
                    consumed = &consumed[UTF8_BOM.len()..];
                }
                start_line = line_of_first_record_byte(consumed, line_before);
            }
            self.consumed += read;
            data_len += written;
            ends_len += ends_written;
            match result {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => {
                    grow(&mut record.data, MAX_RECORD_BYTES, start_line, "MiB of data")?;
                }
                ReadRecordResult::OutputEndsFull => {
                    grow(&mut record.ends, MAX_RECORD_FIELDS, start_line, "Mi fields")?;
                }
                ReadRecordResult::Record => {
                    record.field_count = ends_len;
                    record.line = start_line.unwrap_or(line_before);
                    return Ok(true);
                }
                ReadRecordResult::End => return Ok(false),
            }
        }
    }

    /// Refills the buffer once everything in it has been parsed.
    fn fill(&mut self) -> io::Result<()> {
        self.consumed = 0;
        self.filled = 0;
        // The parser recognises a byte order mark only if its first call sees
        // all three bytes, and takes a call whose input is nothing *but* the
        // mark for the end of the input. So the first fill waits for a byte
        // past the mark (or the real end), even from a source that returns
        // one byte at a time.
        let wanted = if self.first_call { UTF8_BOM.len() + 1 } else { 1 };
        while self.filled < wanted {
            match self.source.read(&mut self.buffer[self.filled..]) {
                Ok(0) => {
                    self.source_exhausted = true;
                    break;
                }
                Ok(count) => self.filled += count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}
/// Before a record the parser skips `\r` and `\n` (empty lines, or the `\n`
/// left over from the previous record's `\r\n`); the record starts at the
/// first other byte. `line_before` is the line of `consumed[0]`.
fn line_of_first_record_byte(consumed: &[u8], line_before: u64) -> Option<u64> {
    let mut line = line_before;
    for &byte in consumed {
        match byte {
            b'\n' => line += 1,
            b'\r' => {}
            _ => return Some(line),
        }
    }
    None
}

/// Doubles a record buffer, failing the run past `limit` entries.
fn grow<T: Copy + Default>(
    buffer: &mut Vec<T>,
    limit: usize,
    start_line: Option<u64>,
    unit: &str,
) -> Result<(), PipelineError> {
    let new_len = buffer.len().saturating_mul(2).max(16);
    if new_len > limit {
        let line = start_line.map_or_else(|| "?".to_owned(), |line| line.to_string());
        return Err(PipelineError::Io(format!(
            "the record starting on line {line} is larger than {} {unit}; is a quote left open?",
            limit / (1024 * 1024)
        )));
    }
    buffer.resize(new_len, T::default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its data a few bytes per `read`, like a slow pipe.
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

    fn records_from(source: impl Read) -> Vec<(u64, Vec<String>)> {
        let mut reader = RecordReader::new(source);
        let mut record = RawRecord::new();
        let mut records = Vec::new();
        while reader.read(&mut record).expect("in-memory input") {
            let fields = record.fields().map(|field| String::from_utf8_lossy(field).into_owned()).collect();
            records.push((record.line(), fields));
        }
        records
    }

    fn records(input: &str) -> Vec<(u64, Vec<String>)> {
        let whole = records_from(input.as_bytes());
        for step in [1, 2, 3, 7] {
            let trickled = records_from(Trickle { data: input.as_bytes(), step });
            assert_eq!(trickled, whole, "reading {step} bytes at a time");
        }
        whole
    }

    fn lines(input: &str) -> Vec<u64> {
        records(input).into_iter().map(|(line, _)| line).collect()
    }

    #[test]
    fn lines_count_from_one_with_lf_and_crlf() {
        assert_eq!(lines("h\na\nb\n"), [1, 2, 3]);
        assert_eq!(lines("h\r\na\r\nb\r\n"), [1, 2, 3]);
        assert_eq!(lines("h\na"), [1, 2]);
    }

    #[test]
    fn blank_lines_are_skipped_but_move_later_lines_down() {
        assert_eq!(lines("\n\nh\na\n\n\nb\n"), [3, 4, 7]);
        assert_eq!(lines("\r\n\r\nh\r\na\r\n\r\n\r\nb\r\n"), [3, 4, 7]);
    }

    #[test]
    fn a_quoted_line_break_moves_the_following_records_down() {
        assert_eq!(lines("h\n\"x\ny\",1\nb\n"), [1, 2, 4]);
        assert_eq!(lines("h\r\n\"x\r\ny\r\nz\",1\r\nb\r\n"), [1, 2, 5]);
        let parsed = records("h\r\n\"x\r\ny\",1\r\n");
        assert_eq!(parsed[1].1, ["x\r\ny", "1"]);
    }

    #[test]
    fn a_byte_order_mark_is_dropped_even_when_read_byte_by_byte() {
        let parsed = records("\u{feff}order_id,region\n1,north\n");
        assert_eq!(parsed[0], (1, vec!["order_id".to_owned(), "region".to_owned()]));
        assert_eq!(lines("\u{feff}\n\nh\na\n"), [3, 4]);
        assert_eq!(records("\u{feff}h"), [(1, vec!["h".to_owned()])]);
        assert_eq!(records("\u{feff}"), []);
    }

    #[test]
    fn quoted_fields_keep_commas_quotes_and_spaces() {
        let parsed = records("a,\" b,c \",\"say \"\"hi\"\"\"\n");
        assert_eq!(parsed[0].1, ["a", " b,c ", "say \"hi\""]);
        // As in RFC 4180 a quote opens a quoted field only as its first byte.
        let parsed = records("a, \"b,c\" \n");
        assert_eq!(parsed[0].1, ["a", " \"b", "c\" "]);
    }

    #[test]
    fn blank_means_one_field_of_whitespace() {
        let mut reader = RecordReader::new("   \n\"\"\n,\n a \n".as_bytes());
        let mut record = RawRecord::new();
        let mut blank = Vec::new();
        while reader.read(&mut record).expect("in-memory input") {
            blank.push(record.is_blank());
        }
        assert_eq!(blank, [true, true, false, false]);
    }

    #[test]
    fn long_records_grow_the_buffers() {
        let long_field = "x".repeat(100_000);
        let many_fields = ",".repeat(5_000);
        let input = format!("{long_field},1\n{many_fields}\n");
        let parsed = records(&input);
        assert_eq!(parsed[0].1[0].len(), 100_000);
        assert_eq!(parsed[1].1.len(), 5_001);
    }

    #[test]
    fn an_unclosed_quote_cannot_grow_memory_without_bound() {
        let mut input = b"h\n\"never closed".to_vec();
        input.resize(MAX_RECORD_BYTES + 10, b'x');
        let mut reader = RecordReader::new(input.as_slice());
        let mut record = RawRecord::new();
        assert!(reader.read(&mut record).expect("header"));
        let err = reader.read(&mut record).expect_err("too large");
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
