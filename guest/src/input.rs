//! Splitting the input into CSV records, each tagged with the physical line
//! it starts on.
//!
//! `csv::Reader` reports `Position::line` as the line count at the end of the
//! previous record, which is off after CRLF endings (the `\n` of a `\r\n` is
//! consumed with the *next* record) and after skipped blank lines. So this
//! module parses its own buffer, where it can see exactly which bytes
//! precede the first byte of each record: records that end within the buffer
//! by its own fast paths (in WebAssembly, `csv_core`'s byte-at-a-time state
//! machine was the largest cost of a run), anything else with `csv_core`,
//! whose results the fast paths reproduce exactly (see the tests).
//!
//! Physical lines end at LF, CRLF or a lone CR, inside quoted fields too
//! (where the line end is data but still moves later lines down); a CRLF is
//! one line end even when a buffer refill falls between its two bytes.
//!
//! A record over the caps of SPEC's `too large` rule is returned as such,
//! with no fields: `csv_core` goes on to the record's end (tracking quotes)
//! writing into a small scratch space that is only counted, so memory stays
//! bounded by the caps whatever the input.

#![forbid(unsafe_code)]

use std::io::{self, Read};

use csv_core::{ReadRecordResult, Reader as CsvParser};

use crate::PipelineError;

/// Every `read` on the input is a host call in WebAssembly, so read in large
/// blocks.
pub(crate) const INPUT_BUFFER_BYTES: usize = 256 * 1024;

/// A record with more field data than this (once unquoted) is rejected as
/// `too large` instead of growing memory without bound; in practice it
/// means a quote was left open and the rest of the file became one field.
pub(crate) const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// Same cap for the number of fields (a line of a million commas).
pub(crate) const MAX_RECORD_FIELDS: usize = 1024 * 1024;

/// Where `csv_core` writes the data and field ends of a record that is over
/// a cap (or whose data fills `MAX_RECORD_BYTES` exactly, until its end
/// shows whether there is more): only counted, overwritten call after call.
/// Tiny in tests, so that they refill it often.
const SCRATCH_BYTES: usize = if cfg!(test) { 7 } else { 64 * 1024 };
const SCRATCH_FIELDS: usize = if cfg!(test) { 3 } else { 1024 };

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The caps of SPEC's `too large` rule (smaller in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most bytes of field data in one record, once unquoted.
    pub(crate) bytes: usize,
    /// Most fields in one record.
    pub(crate) fields: usize,
}

impl Limits {
    pub(crate) const SPEC: Limits = Limits { bytes: MAX_RECORD_BYTES, fields: MAX_RECORD_FIELDS };

    /// True if `data` bytes in `fields` fields are within the caps.
    fn allow(self, data: usize, fields: usize) -> bool {
        data <= self.bytes && fields <= self.fields
    }

    /// A record of at most this many bytes (unquoted or not, separators
    /// included) is within the caps: its data is no longer, and it has at
    /// most one field more than it has bytes.
    fn surely_within(self) -> usize {
        self.bytes.min(self.fields.saturating_sub(1))
    }

    /// True if `record` is over a cap.
    fn exceeded_by(self, record: &Record<'_>) -> bool {
        !self.allow(record.fields().map(<[u8]>::len).sum(), record.len())
    }
}

/// Space for the records `csv_core` parses, reused from record to record.
#[derive(Debug)]
pub(crate) struct RawRecord {
    /// The unescaped fields, back to back.
    data: Vec<u8>,
    /// `ends[i]` is the end of field `i` in `data` (or, for the fast path,
    /// of the line). Its length only ever doubles (from 16), like `data`'s
    /// (from 1 KiB), so that the caps of `grow` apply at the same record size
    /// as they always did.
    ends: Vec<usize>,
    /// `starts[i]` is the start of field `i`, as `ends` (the fast path skips
    /// the quotes around a quoted field, so a field does not always start
    /// one byte after the previous one ends). At least as long as `ends`.
    starts: Vec<usize>,
}

impl RawRecord {
    pub(crate) fn new() -> Self {
        Self { data: vec![0; 1024], ends: vec![0; 16], starts: vec![0; 16] }
    }
}

/// One record, borrowed from the reader's buffer (a quote-free line) or from
/// a `RawRecord` (anything `csv_core` parsed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    data: &'a [u8],
    /// Field `i` is `data[starts[i]..ends[i]]`; one of each per field.
    starts: &'a [usize],
    ends: &'a [usize],
    /// True if `data` is known to be all ASCII (the fast path finds out as
    /// it splits the line); false if unknown.
    known_ascii: bool,
    line: u64,
}

impl<'a> Record<'a> {
    /// A record over the caps, starting on `line`: one of no fields (any
    /// other record has at least one).
    fn too_large(line: u64) -> Self {
        Self { data: &[], starts: &[], ends: &[], known_ascii: true, line }
    }

    /// A blank line over the caps: one empty field stands for its whitespace.
    fn blank(line: u64) -> Self {
        Self { data: &[], starts: &[0], ends: &[0], known_ascii: true, line }
    }

    /// True if the record is over a cap of the `too large` rule; it then
    /// has no fields.
    pub(crate) fn is_too_large(&self) -> bool {
        self.ends.is_empty()
    }

    /// The 1-based physical line of the input on which the record starts.
    pub(crate) fn line(&self) -> u64 {
        self.line
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The raw bytes of field `index`; `index` must be below `len()`.
    pub(crate) fn field(&self, index: usize) -> &'a [u8] {
        &self.data[self.starts[index]..self.ends[index]]
    }

    pub(crate) fn fields(&self) -> impl Iterator<Item = &'a [u8]> {
        let record = *self;
        (0..record.len()).map(move |index| record.field(index))
    }

    /// True if every byte of every field is ASCII (then every field is valid
    /// UTF-8), checked in one pass over the record instead of per field.
    pub(crate) fn is_ascii(&self) -> bool {
        self.known_ascii || self.data.is_ascii()
    }

    /// A line with nothing but whitespace (or one empty quoted field) carries
    /// no data: it is treated like an empty line, which the parser already
    /// skips. Its length does not matter: a blank line over the caps is
    /// still blank, not too large.
    pub(crate) fn is_blank(&self) -> bool {
        self.len() == 1 && self.field(0).trim_ascii().is_empty()
    }
}

/// What `split_line` found out about a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    /// The record's length: its terminator (`\n` or `\r`) is the next byte.
    len: usize,
    fields: usize,
    /// True if every byte of the record is ASCII.
    ascii: bool,
    /// CR and LF bytes inside quoted fields (each one line end unless one
    /// follows another: then see `quoted_breaks_adjacent`).
    quoted_breaks: u64,
    /// True if two of those bytes are next to each other (a CRLF counts
    /// once, so the record's line ends must be counted byte by byte).
    quoted_breaks_adjacent: bool,
    /// The first field that holds a doubled quote (`""`), still to be
    /// unescaped; `usize::MAX` if none does.
    first_escaped: usize,
}

/// Splits the record at the start of `rest` into fields, writing the start
/// and end of each into `starts` and `ends` (positions in `rest`; a quoted
/// field's span lies inside its quotes, with any doubled quote still
/// doubled). `None` if the record does not end within `rest`, has more
/// fields than `ends` or `starts` hold, or is one `csv_core` reads in a way
/// this does not: a quote that does not open its field, or anything but a
/// comma or a line end after a closing quote. Then `unescape_line` or
/// `csv_core` parses it, with the same result for the records this accepts.
///
/// Records are short, so rather than a search call per comma or quote
/// (whose set-up costs more than the search), this classifies 16 bytes at a
/// time and walks the bit masks.
fn split_line(rest: &[u8], starts: &mut [usize], ends: &mut [usize]) -> Option<Split> {
    let mut fields = 0;
    let mut non_ascii = 0;
    let mut quoted_breaks = 0;
    let mut adjacent = 0;
    let mut first_escaped = usize::MAX;
    // Where the current field starts, and the next unquoted bytes to look at.
    let mut field_start = 0;
    let mut base = 0;
    *starts.first_mut()? = 0;
    loop {
        let (commas, stops, high) = classify(&load_chunk(rest, base)?);
        if stops == 0 {
            field_start = push_commas(starts, ends, &mut fields, base, commas)?.unwrap_or(field_start);
            non_ascii |= high;
            base += CHUNK;
            continue;
        }
        let stop = stops.trailing_zeros();
        let before_stop = (1 << stop) - 1;
        field_start = push_commas(starts, ends, &mut fields, base, commas & before_stop)?.unwrap_or(field_start);
        non_ascii |= high & before_stop;
        let at = base + stop as usize;
        if rest[at] != b'"' {
            *starts.get_mut(fields)? = field_start;
            *ends.get_mut(fields)? = at;
            let ascii = non_ascii == 0;
            let quoted_breaks_adjacent = adjacent != 0;
            return Some(Split {
                len: at,
                fields: fields + 1,
                ascii,
                quoted_breaks,
                quoted_breaks_adjacent,
                first_escaped,
            });
        }
        // As in `csv_core`, only a field's first byte opens a quoted part.
        if at != field_start {
            return None;
        }
        let mut position = at + 1;
        // The last byte of the previous chunk, if it was a line end and the
        // chunks are contiguous.
        let mut carried = 0;
        let close = loop {
            let (quotes, line_breaks, high) = classify_quoted(&load_chunk(rest, position)?);
            if quotes == 0 {
                quoted_breaks += u64::from(line_breaks.count_ones());
                adjacent |= line_breaks & (line_breaks >> 1 | carried);
                carried = line_breaks >> (CHUNK - 1);
                non_ascii |= high;
                position += CHUNK;
                continue;
            }
            let quote = quotes.trailing_zeros();
            let before_quote = (1 << quote) - 1;
            let line_breaks = line_breaks & before_quote;
            quoted_breaks += u64::from(line_breaks.count_ones());
            adjacent |= line_breaks & (line_breaks >> 1 | carried);
            carried = 0;
            non_ascii |= high & before_quote;
            let quote = position + quote as usize;
            if *rest.get(quote + 1)? != b'"' {
                break quote;
            }
            // `""` inside quotes is one quote, unescaped once the record is
            // known to end within `rest`.
            first_escaped = first_escaped.min(fields);
            position = quote + 2;
        };
        *starts.get_mut(fields)? = at + 1;
        *ends.get_mut(fields)? = close;
        match rest[close + 1] {
            b',' => {
                fields += 1;
                field_start = close + 2;
                *starts.get_mut(fields)? = field_start;
                base = field_start;
            }
            b'\n' | b'\r' => {
                let ascii = non_ascii == 0;
                let quoted_breaks_adjacent = adjacent != 0;
                let len = close + 1;
                return Some(Split {
                    len,
                    fields: fields + 1,
                    ascii,
                    quoted_breaks,
                    quoted_breaks_adjacent,
                    first_escaped,
                });
            }
            // Text after the closing quote: `csv_core` appends it to the field.
            _ => return None,
        }
    }
}

/// The 16 bytes of `rest` from `position` on, padded with zeros (plain
/// bytes for both classifiers) past its end; `None` if none are left.
fn load_chunk(rest: &[u8], position: usize) -> Option<[u8; CHUNK]> {
    let tail = rest.get(position..).filter(|tail| !tail.is_empty())?;
    match tail.first_chunk::<CHUNK>() {
        Some(chunk) => Some(*chunk),
        None => {
            let mut padded = [0; CHUNK];
            padded[..tail.len()].copy_from_slice(tail);
            Some(padded)
        }
    }
}

/// Records a field ending at each set bit of `commas` (offset by `base`),
/// the next one starting after it. Returns where the last field recorded
/// ends, if any; `None` if `starts` or `ends` is full.
#[inline(always)]
fn push_commas(
    starts: &mut [usize],
    ends: &mut [usize],
    fields: &mut usize,
    base: usize,
    mut commas: u32,
) -> Option<Option<usize>> {
    let mut next_start = None;
    while commas != 0 {
        let comma = base + commas.trailing_zeros() as usize;
        *ends.get_mut(*fields)? = comma;
        *fields += 1;
        *starts.get_mut(*fields)? = comma + 1;
        next_start = Some(comma + 1);
        commas &= commas - 1;
    }
    Some(next_start)
}

/// Undoes the doubling of quotes in a quoted field's span, in place, and
/// returns the unescaped length. Every quote in the span is the first of a
/// pair (as `split_line` checked).
fn unescape_in_place(field: &mut [u8]) -> usize {
    let mut written = 0;
    let mut read = 0;
    while let Some(&byte) = field.get(read) {
        field[written] = byte;
        written += 1;
        read += 1 + usize::from(byte == b'"');
    }
    written
}

const CHUNK: usize = 16;

/// Bit `i` of the first mask is set if `chunk[i]` is a comma, of the second
/// if it ends a line or is a quote, of the third if it is not ASCII.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn classify(chunk: &[u8; CHUNK]) -> (u32, u32, u32) {
    let mut commas = 0;
    let mut stops = 0;
    let mut high = 0;
    for (index, &byte) in chunk.iter().enumerate() {
        commas |= u32::from(byte == b',') << index;
        stops |= u32::from(byte == b'\n' || byte == b'\r' || byte == b'"') << index;
        high |= u32::from(!byte.is_ascii()) << index;
    }
    (commas, stops, high)
}

/// A chunk as one 16-byte vector (built from its bytes: a safe load).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn vector(chunk: &[u8; CHUNK]) -> core::arch::wasm32::v128 {
    let [b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15] = *chunk;
    core::arch::wasm32::u8x16(b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15)
}

/// `classify` in four vector comparisons (the compiler does not vectorise
/// the loop above by itself). Same result, bit for bit.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn classify(chunk: &[u8; CHUNK]) -> (u32, u32, u32) {
    use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_splat, v128_or};
    let bytes = vector(chunk);
    let commas = u8x16_eq(bytes, u8x16_splat(b','));
    let line_ends = v128_or(u8x16_eq(bytes, u8x16_splat(b'\n')), u8x16_eq(bytes, u8x16_splat(b'\r')));
    let stops = v128_or(line_ends, u8x16_eq(bytes, u8x16_splat(b'"')));
    // The bitmask of the bytes themselves is their top bits.
    (u32::from(u8x16_bitmask(commas)), u32::from(u8x16_bitmask(stops)), u32::from(u8x16_bitmask(bytes)))
}

/// Bit `i` of the first mask is set if `chunk[i]` is a quote, of the second
/// if it is a CR or LF, of the third if it is not ASCII.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn classify_quoted(chunk: &[u8; CHUNK]) -> (u32, u32, u32) {
    let mut quotes = 0;
    let mut line_breaks = 0;
    let mut high = 0;
    for (index, &byte) in chunk.iter().enumerate() {
        quotes |= u32::from(byte == b'"') << index;
        line_breaks |= u32::from(byte == b'\n' || byte == b'\r') << index;
        high |= u32::from(!byte.is_ascii()) << index;
    }
    (quotes, line_breaks, high)
}

/// `classify_quoted` in vector comparisons. Same result, bit for bit.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn classify_quoted(chunk: &[u8; CHUNK]) -> (u32, u32, u32) {
    use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_splat, v128_or};
    let bytes = vector(chunk);
    let quotes = u8x16_eq(bytes, u8x16_splat(b'"'));
    let line_breaks = v128_or(u8x16_eq(bytes, u8x16_splat(b'\n')), u8x16_eq(bytes, u8x16_splat(b'\r')));
    (u32::from(u8x16_bitmask(quotes)), u32::from(u8x16_bitmask(line_breaks)), u32::from(u8x16_bitmask(bytes)))
}

/// Parses a record at the start of `rest` that holds quotes, the way
/// `csv_core` does: a quote opens a quoted part only as a field's first
/// byte; inside, `""` is a quote and anything else (commas, line breaks) is
/// data; after the closing quote the field goes on unquoted, where quotes
/// are plain data. The fields are unescaped into `data`, back to back, and
/// their starts and ends written into `starts` and `ends`. Returns the position of the record's
/// terminator in `rest`, the length of the data and the number of fields.
/// `None` if the record does not end within `rest` or does not fit in
/// `data` and `ends`: `csv_core` then parses it (across refills, growing
/// the buffers up to their caps).
fn unescape_line(
    rest: &[u8],
    data: &mut [u8],
    starts: &mut [usize],
    ends: &mut [usize],
) -> Option<(usize, usize, usize)> {
    let mut position = 0;
    let mut written = 0;
    let mut fields = 0;
    loop {
        *starts.get_mut(fields)? = written;
        if *rest.get(position)? == b'"' {
            position += 1;
            loop {
                let quote = position + memchr::memchr(b'"', &rest[position..])?;
                let part = &rest[position..quote];
                data.get_mut(written..written + part.len())?.copy_from_slice(part);
                written += part.len();
                position = quote + 1;
                if *rest.get(position)? != b'"' {
                    break;
                }
                *data.get_mut(written)? = b'"';
                written += 1;
                position += 1;
            }
        }
        let stop = position + memchr::memchr3(b',', b'\n', b'\r', &rest[position..])?;
        let part = &rest[position..stop];
        data.get_mut(written..written + part.len())?.copy_from_slice(part);
        written += part.len();
        *ends.get_mut(fields)? = written;
        fields += 1;
        if rest[stop] != b',' {
            return Some((stop, written, fields));
        }
        position = stop + 1;
    }
}

/// A `csv_core` parser for RFC 4180 (`,`, `"` doubled inside quotes, and
/// `\r`, `\n` or `\r\n` ending a record) that has already started.
///
/// `csv_core` drops a byte order mark at the start of the first input it is
/// given, but here it first sees the input mid-file (at the first record that
/// needs it), so the mark is handled by [`RecordReader::read`] and the parser
/// is told it has already started: with no room for output it returns at
/// once, consuming nothing and staying in its start state.
fn started_parser() -> CsvParser {
    let mut parser = CsvParser::new();
    let _ = parser.read_record(b",", &mut [], &mut []);
    parser
}

/// A record that `csv_core` is part way through, across buffer refills.
#[derive(Debug, Clone, Copy)]
struct Partial {
    /// The data and field ends kept in the `RawRecord` so far.
    data_len: usize,
    ends_len: usize,
    line: u64,
    /// All of the record's data and fields so far, kept or only counted.
    data_total: usize,
    fields_total: usize,
    /// The record's data fills the data buffer at its cap: what follows is
    /// only counted (any of it makes the record too large).
    data_at_cap: bool,
    /// Over a cap: nothing more is kept.
    too_large: bool,
    /// No data but ASCII whitespace so far.
    blank: bool,
}

impl Partial {
    fn starting_on(line: u64) -> Self {
        Self {
            data_len: 0,
            ends_len: 0,
            line,
            data_total: 0,
            fields_total: 0,
            data_at_cap: false,
            too_large: false,
            blank: true,
        }
    }
}

/// A record `csv_core` has read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parsed {
    /// Its fields are in the `RawRecord`.
    Fields(usize),
    /// Over a cap.
    TooLarge,
    /// Over a cap, but one field of nothing but whitespace: a blank line.
    Blank,
}

/// Reads records from any `Read`, buffering it itself.
///
/// A record that ends inside the buffer (nearly all of them) is split at
/// commas directly, with vectorised scans, its quoted fields (doubled quotes
/// undone in place in the buffer) included; one with quotes anywhere else is
/// unescaped by `unescape_line`;
/// any other record is handed to `csv_core` from its first byte (and records
/// are checked against the caps of the `too large` rule on every path).
/// Between records `csv_core` is
/// always in a state equivalent to its start state (its states after a
/// record terminator skip `\r` and `\n` just like the start state does, and
/// this reader skips those bytes itself), so the two paths can alternate
/// record by record.
pub(crate) struct RecordReader<R> {
    source: R,
    /// Made at the first record that needs it: building its tables costs
    /// more than a small export's whole run.
    parser: Option<CsvParser>,
    buffer: Box<[u8]>,
    /// The bytes not yet parsed are `buffer[consumed..filled]`.
    consumed: usize,
    filled: usize,
    source_exhausted: bool,
    /// True until the first block was read: only its start can hold a byte
    /// order mark.
    first_call: bool,
    /// The physical line of `buffer[consumed]`: one more than the line ends
    /// consumed so far.
    line: u64,
    /// True if the last byte consumed is a CR: an LF next ends no new line.
    after_cr: bool,
    /// Set while `csv_core` has a record part way.
    partial: Option<Partial>,
    limits: Limits,
    /// `limits.surely_within()`, computed once.
    surely_within: usize,
    /// Made the first time a record reaches a cap (`SCRATCH_BYTES`).
    scratch_data: Vec<u8>,
    scratch_ends: Vec<usize>,
}

impl<R: Read> RecordReader<R> {
    #[cfg(test)]
    pub(crate) fn new(source: R) -> Self {
        Self::with_limits(source, INPUT_BUFFER_BYTES, Limits::SPEC)
    }

    /// A reader whose block size is `buffer_bytes` (at least 4 KiB), with
    /// the caps `limits` (SPEC's, except in tests).
    pub(crate) fn with_limits(source: R, buffer_bytes: usize, limits: Limits) -> Self {
        Self {
            source,
            parser: None,
            buffer: vec![0; buffer_bytes.max(4096)].into_boxed_slice(),
            consumed: 0,
            filled: 0,
            source_exhausted: false,
            first_call: true,
            line: 1,
            after_cr: false,
            partial: None,
            limits,
            surely_within: limits.surely_within(),
            scratch_data: Vec::new(),
            scratch_ends: Vec::new(),
        }
    }

    /// Reads the next record, using `raw` for space if needed. `None` at the
    /// end of the input. Empty lines are skipped and never returned. A
    /// record over the caps is returned with no fields (`is_too_large`).
    pub(crate) fn read<'a>(&'a mut self, raw: &'a mut RawRecord) -> Result<Option<Record<'a>>, PipelineError> {
        loop {
            if self.consumed == self.filled && !self.source_exhausted {
                self.refill()?;
            }
            if self.partial.is_some() {
                return self.read_slowly(raw);
            }
            // Between records, line ends are empty lines, or the LF of the
            // last record's CRLF. Usually one byte or none: counted as they
            // are skipped.
            let rest = &self.buffer[self.consumed..self.filled];
            let mut skipped = 0;
            while let Some(&byte) = rest.get(skipped) {
                match byte {
                    b'\n' => self.line += u64::from(!self.after_cr),
                    b'\r' => self.line += 1,
                    _ => break,
                }
                self.after_cr = byte == b'\r';
                skipped += 1;
            }
            self.consumed += skipped;
            let rest = &rest[skipped..];
            if rest.is_empty() {
                if self.source_exhausted {
                    return Ok(None);
                }
                continue;
            }
            let Some(split) = split_line(rest, &mut raw.starts, &mut raw.ends) else {
                return self.read_slowly(raw);
            };
            let line = self.line;
            // The terminator ends a line (it never follows a CR: a CR before
            // it would have ended the record), and only quoted fields can
            // hold others.
            let quoted = if split.quoted_breaks_adjacent {
                count_line_breaks(&rest[..split.len], &mut false)
            } else {
                split.quoted_breaks
            };
            self.line += quoted + 1;
            self.after_cr = rest[split.len] == b'\r';
            let start = self.consumed;
            self.consumed += split.len + 1;
            let fields = split.fields;
            if split.first_escaped < fields {
                let record = &mut self.buffer[start..start + split.len];
                for (field_start, field_end) in
                    raw.starts[split.first_escaped..fields].iter().zip(&mut raw.ends[split.first_escaped..fields])
                {
                    if let Some(field) = record.get_mut(*field_start..*field_end) {
                        *field_end = field_start + unescape_in_place(field);
                    }
                }
            }
            let record = Record {
                data: &self.buffer[start..start + split.len],
                starts: &raw.starts[..fields],
                ends: &raw.ends[..fields],
                known_ascii: split.ascii,
                line,
            };
            // A record within one buffer is far below SPEC's caps, but not
            // always below those of a test.
            if split.len > self.surely_within && self.limits.exceeded_by(&record) && !record.is_blank() {
                return Ok(Some(Record::too_large(line)));
            }
            return Ok(Some(record));
        }
    }

    /// Reads the buffer's next block; drops a byte order mark at the start.
    #[cold]
    fn refill(&mut self) -> Result<(), PipelineError> {
        self.fill()
            .map_err(|err| PipelineError::Io(format!("reading the input failed after line {}: {err}", self.line)))?;
        if std::mem::take(&mut self.first_call) && self.buffer[..self.filled].starts_with(UTF8_BOM) {
            self.consumed = UTF8_BOM.len();
        }
        Ok(())
    }

    /// `read` for a record that the fast path does not split: one that
    /// `csv_core` is part way through, or one starting at `consumed` (its
    /// first byte is no line end) that holds quotes past a field's start or
    /// does not end within the buffer. Kept apart, so that the fast path
    /// stays small.
    #[inline(never)]
    fn read_slowly<'a>(&'a mut self, raw: &'a mut RawRecord) -> Result<Option<Record<'a>>, PipelineError> {
        let mut partial = match self.partial.take() {
            Some(partial) => partial,
            None => {
                let rest = &self.buffer[self.consumed..self.filled];
                if let Some((len, data_len, fields)) =
                    unescape_line(rest, &mut raw.data, &mut raw.starts, &mut raw.ends)
                {
                    let line = self.line;
                    self.line += count_line_breaks(&rest[..=len], &mut self.after_cr);
                    self.consumed += len + 1;
                    let record = Record {
                        data: &raw.data[..data_len],
                        starts: &raw.starts[..fields],
                        ends: &raw.ends[..fields],
                        known_ascii: false,
                        line,
                    };
                    if len > self.surely_within && self.limits.exceeded_by(&record) && !record.is_blank() {
                        return Ok(Some(Record::too_large(line)));
                    }
                    return Ok(Some(record));
                }
                Partial::starting_on(self.line)
            }
        };
        loop {
            if let Some(parsed) = self.parse_with_csv_core(raw, partial)? {
                let fields = match parsed {
                    Parsed::Fields(fields) => fields,
                    Parsed::TooLarge => return Ok(Some(Record::too_large(partial.line))),
                    Parsed::Blank => return Ok(Some(Record::blank(partial.line))),
                };
                let data_len = raw.ends[..fields].last().copied().unwrap_or(0);
                // `csv_core` writes the fields back to back.
                if raw.starts.len() < fields {
                    raw.starts.resize(raw.ends.len(), 0);
                }
                for (start, previous_end) in
                    raw.starts[..fields].iter_mut().zip(std::iter::once(0).chain(raw.ends.iter().copied()))
                {
                    *start = previous_end;
                }
                return Ok(Some(Record {
                    data: &raw.data[..data_len],
                    starts: &raw.starts[..fields],
                    ends: &raw.ends[..fields],
                    known_ascii: false,
                    line: partial.line,
                }));
            }
            // Not complete yet: more input, or more room (already made).
            if self.consumed == self.filled && !self.source_exhausted {
                self.refill()?;
            }
            let Some(more) = self.partial.take() else {
                // Not reached: `csv_core` ends the input with a record.
                return Ok(None);
            };
            partial = more;
        }
    }

    /// Gives `csv_core` the rest of the buffer (or the end of the input) for
    /// the record `partial`; what it is once it is complete.
    fn parse_with_csv_core(
        &mut self,
        raw: &mut RawRecord,
        mut partial: Partial,
    ) -> Result<Option<Parsed>, PipelineError> {
        // An empty slice tells the parser that the input has ended.
        let input = &self.buffer[self.consumed..self.filled];
        let parser = self.parser.get_or_insert_with(started_parser);
        let keep_data = !partial.data_at_cap && !partial.too_large;
        let output = if keep_data {
            &mut raw.data[partial.data_len..]
        } else {
            self.scratch_data.resize(SCRATCH_BYTES, 0);
            &mut self.scratch_data[..]
        };
        let ends = if partial.too_large {
            self.scratch_ends.resize(SCRATCH_FIELDS, 0);
            &mut self.scratch_ends[..]
        } else {
            &mut raw.ends[partial.ends_len..]
        };
        let (result, read, written, ends_written) = parser.read_record(input, output, ends);
        // Checked only until a byte that is not whitespace: a few per record.
        partial.blank = partial.blank && output[..written].iter().all(u8::is_ascii_whitespace);
        self.line += count_line_breaks(&input[..read], &mut self.after_cr);
        self.consumed += read;
        partial.data_total += written;
        partial.fields_total += ends_written;
        if keep_data {
            partial.data_len += written;
        }
        if !partial.too_large {
            partial.ends_len += ends_written;
        }
        let limits = self.limits;
        match result {
            ReadRecordResult::InputEmpty => {}
            // `csv_core` stops as soon as a buffer is full, before it knows
            // whether the record goes on: data exactly at the cap is fine.
            ReadRecordResult::OutputFull if keep_data => {
                if raw.data.len() < limits.bytes {
                    grow(&mut raw.data, limits.bytes);
                } else {
                    partial.data_at_cap = true;
                }
            }
            ReadRecordResult::OutputFull => {}
            // A full list of field ends means another field is coming.
            ReadRecordResult::OutputEndsFull if !partial.too_large => {
                if raw.ends.len() < limits.fields {
                    grow(&mut raw.ends, limits.fields);
                } else {
                    partial.too_large = true;
                }
            }
            ReadRecordResult::OutputEndsFull => {}
            ReadRecordResult::Record => {
                let over = partial.too_large || !limits.allow(partial.data_total, partial.fields_total);
                return Ok(Some(match (over, partial.blank && partial.fields_total == 1) {
                    (false, _) => Parsed::Fields(partial.ends_len),
                    // A line of only whitespace is blank whatever its length.
                    (true, true) => Parsed::Blank,
                    (true, false) => Parsed::TooLarge,
                }));
            }
            // Not reached: the parser was given the record's first byte, so
            // it ends the input with that record.
            ReadRecordResult::End => return Ok(None),
        }
        if !limits.allow(partial.data_total, partial.fields_total) {
            partial.too_large = true;
        }
        self.partial = Some(partial);
        Ok(None)
    }

    /// Refills the buffer once everything in it has been parsed.
    fn fill(&mut self) -> io::Result<()> {
        self.consumed = 0;
        self.filled = 0;
        // A byte order mark is recognised only if the first block holds all
        // three bytes, and a block of nothing *but* the mark is taken for
        // the whole input. So the first fill waits for a byte past the mark
        // (or the real end), even from a source that returns one byte at a
        // time.
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

/// The line ends in `bytes`: every CR, and every LF that does not follow a
/// CR (a CRLF is one line end). `after_cr` tells whether the byte before
/// `bytes` is a CR, and is updated to whether their last one is.
fn count_line_breaks(bytes: &[u8], after_cr: &mut bool) -> u64 {
    if bytes.len() < 64 {
        // A search costs more to set up than this loop on a short record.
        let mut count = 0;
        for &byte in bytes {
            count += u64::from(byte == b'\r' || (byte == b'\n' && !*after_cr));
            *after_cr = byte == b'\r';
        }
        return count;
    }
    let mut count = 0;
    for position in memchr::memchr2_iter(b'\r', b'\n', bytes) {
        let follows_cr = match position.checked_sub(1) {
            Some(before) => bytes[before] == b'\r',
            None => *after_cr,
        };
        count += u64::from(bytes[position] == b'\r' || !follows_cr);
    }
    if let Some(&last) = bytes.last() {
        *after_cr = last == b'\r';
    }
    count
}

/// Doubles a record buffer (from at least 16 entries), to at most `limit`.
fn grow<T: Copy + Default>(buffer: &mut Vec<T>, limit: usize) {
    let new_len = buffer.len().saturating_mul(2).max(16).min(limit);
    buffer.resize(new_len.max(buffer.len()), T::default());
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
        let mut raw = RawRecord::new();
        let mut records = Vec::new();
        while let Some(record) = reader.read(&mut raw).expect("in-memory input") {
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

    /// The reader as it was before its fast paths: `csv_core` on every byte,
    /// with buffers that grow without bound, the caps applied only once a
    /// record is complete, and line ends counted byte by byte. The fast
    /// paths and the bounded slow path must give exactly its records, lines
    /// and errors.
    struct ReferenceReader<R> {
        source: R,
        parser: CsvParser,
        buffer: Vec<u8>,
        consumed: usize,
        filled: usize,
        source_exhausted: bool,
        first_call: bool,
        limits: Limits,
        /// The physical line of the next byte, and whether the last was CR.
        line: u64,
        after_cr: bool,
    }

    impl<R: Read> ReferenceReader<R> {
        fn new(source: R) -> Self {
            Self::with_limits(source, Limits::SPEC)
        }

        fn with_limits(source: R, limits: Limits) -> Self {
            Self {
                source,
                parser: CsvParser::new(),
                buffer: vec![0; INPUT_BUFFER_BYTES],
                consumed: 0,
                filled: 0,
                source_exhausted: false,
                first_call: true,
                limits,
                line: 1,
                after_cr: false,
            }
        }

        fn read(&mut self, record: &mut RawRecord) -> Result<Option<Fields>, PipelineError> {
            let mut data_len = 0;
            let mut ends_len = 0;
            let mut start_line = None;
            loop {
                if self.consumed == self.filled && !self.source_exhausted {
                    self.consumed = 0;
                    self.filled = 0;
                    let wanted = if self.first_call { UTF8_BOM.len() + 1 } else { 1 };
                    while self.filled < wanted {
                        match self.source.read(&mut self.buffer[self.filled..]) {
                            Ok(0) => {
                                self.source_exhausted = true;
                                break;
                            }
                            Ok(count) => self.filled += count,
                            Err(err) => {
                                return Err(PipelineError::Io(format!(
                                    "reading the input failed after line {}: {err}",
                                    self.line
                                )));
                            }
                        }
                    }
                }
                let input = &self.buffer[self.consumed..self.filled];
                let (result, read, written, ends_written) =
                    self.parser.read_record(input, &mut record.data[data_len..], &mut record.ends[ends_len..]);
                let mut consumed = &input[..read];
                if std::mem::take(&mut self.first_call) && consumed.starts_with(UTF8_BOM) {
                    consumed = &consumed[UTF8_BOM.len()..];
                }
                for &byte in consumed {
                    let line_end = byte == b'\r' || byte == b'\n';
                    if start_line.is_none() && !line_end {
                        start_line = Some(self.line);
                    }
                    self.line += u64::from(byte == b'\r' || (byte == b'\n' && !self.after_cr));
                    self.after_cr = byte == b'\r';
                }
                self.consumed += read;
                data_len += written;
                ends_len += ends_written;
                match result {
                    ReadRecordResult::InputEmpty => {}
                    ReadRecordResult::OutputFull => record.data.resize(record.data.len() * 2, 0),
                    ReadRecordResult::OutputEndsFull => record.ends.resize(record.ends.len() * 2, 0),
                    ReadRecordResult::Record => {
                        let line = start_line.unwrap_or(self.line);
                        // Blank lines as `owned` gives them, whatever their size.
                        if ends_len == 1 && record.data[..data_len].iter().all(u8::is_ascii_whitespace) {
                            return Ok(Some((line, vec![Vec::new()])));
                        }
                        if data_len > self.limits.bytes || ends_len > self.limits.fields {
                            return Ok(Some((line, Vec::new())));
                        }
                        let mut start = 0;
                        let fields = record.ends[..ends_len]
                            .iter()
                            .map(|&end| {
                                let field = record.data[start..end].to_vec();
                                start = end;
                                field
                            })
                            .collect();
                        return Ok(Some((line, fields)));
                    }
                    ReadRecordResult::End => return Ok(None),
                }
            }
        }
    }

    /// A record's line and fields; no fields for one over the caps (a real
    /// record always has at least one).
    type Fields = (u64, Vec<Vec<u8>>);
    type Records = (Vec<Fields>, Option<PipelineError>);

    fn collect(mut read: impl FnMut(&mut RawRecord) -> Result<Option<Fields>, PipelineError>) -> Records {
        let mut raw = RawRecord::new();
        let mut records = Vec::new();
        loop {
            match read(&mut raw) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => return (records, None),
                Err(err) => return (records, Some(err)),
            }
        }
    }

    /// A record as `ReferenceReader` gives it. A blank line is one empty
    /// field: the pipeline skips it whatever it holds, and past the caps the
    /// reader keeps none of it.
    fn owned(record: Option<Record<'_>>) -> Option<Fields> {
        record.map(|record| {
            assert_eq!(record.is_too_large(), record.len() == 0);
            if record.is_blank() {
                return (record.line(), vec![Vec::new()]);
            }
            assert_eq!(record.is_ascii(), record.fields().all(|field| field.is_ascii()));
            (record.line(), record.fields().map(<[u8]>::to_vec).collect())
        })
    }

    /// Hands out its data `step` bytes per `read`, then fails if `fail`.
    struct Pieces<'a> {
        data: &'a [u8],
        step: usize,
        fail: bool,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() && self.fail {
                return Err(io::Error::other("disk on fire"));
            }
            let count = self.step.min(out.len()).min(self.data.len());
            out[..count].copy_from_slice(&self.data[..count]);
            self.data = &self.data[count..];
            Ok(count)
        }
    }

    fn assert_same_as_reference(input: &[u8]) {
        for step in [usize::MAX, 1, 2, 3, 5, 7, 16] {
            for fail in [false, true] {
                let pieces = || Pieces { data: input, step, fail };
                let mut reader = RecordReader::new(pieces());
                let mut reference = ReferenceReader::new(pieces());
                let got = collect(|raw| reader.read(raw).map(owned));
                let expected = collect(|record| reference.read(record));
                assert_eq!(got, expected, "input {:?} read {step} bytes at a time", String::from_utf8_lossy(input));
            }
        }
    }

    #[test]
    fn quoted_lines_are_unescaped_or_left_to_csv_core() {
        let mut data = [0; 16];
        let mut ends = [0; 4];
        let mut starts = [0; 4];
        let mut parse = |text: &str| {
            unescape_line(text.as_bytes(), &mut data, &mut starts, &mut ends).map(|(len, data_len, fields)| {
                let mut start = 0;
                let parsed: Vec<String> = starts[..fields]
                    .iter()
                    .zip(&ends[..fields])
                    .map(|(&field_start, &end)| {
                        assert_eq!(field_start, start);
                        let field = String::from_utf8_lossy(&data[start..end]).into_owned();
                        start = end;
                        field
                    })
                    .collect();
                assert_eq!(start, data_len);
                (len, parsed)
            })
        };
        assert_eq!(parse("\"a,b\",c\nx"), Some((7, vec!["a,b".into(), "c".into()])));
        assert_eq!(parse("\"\"\r\n"), Some((2, vec!["".into()])));
        assert_eq!(parse("\"x\ny\"\"z\"q\"r,\n"), Some((12, vec!["x\ny\"zq\"r".into(), "".into()])));
        assert_eq!(parse("a\"b,\"\"\r"), Some((6, vec!["a\"b".into(), "".into()])));
        // Unfinished within the buffer, or too large for the space given.
        for unfinished in ["\"a", "\"a\"", "\"a\"\"", "a,\"b\"", "\"a\",", ",,,,\n", "\"0123456789abcdefg\"\n"] {
            assert_eq!(parse(unfinished), None, "{unfinished:?}");
        }
    }

    #[test]
    fn quoted_fields_are_split_in_place_or_left_to_the_slow_paths() {
        let split = |text: &str| {
            let mut starts = [0; 8];
            let mut ends = [0; 8];
            split_line(text.as_bytes(), &mut starts, &mut ends).map(|split| {
                let mut bytes = text.as_bytes()[..split.len].to_vec();
                let fields: Vec<String> = (0..split.fields)
                    .map(|index| {
                        let field = &mut bytes[starts[index]..ends[index]];
                        let len = if index >= split.first_escaped { unescape_in_place(field) } else { field.len() };
                        String::from_utf8_lossy(&field[..len]).into_owned()
                    })
                    .collect();
                (split.len, fields, (split.quoted_breaks, split.quoted_breaks_adjacent), split.ascii)
            })
        };
        let long = "x".repeat(40);
        assert_eq!(split("a,\"b,c\",d\n"), Some((9, vec!["a".into(), "b,c".into(), "d".into()], (0, false), true)));
        assert_eq!(split("\"\"\r\n"), Some((2, vec!["".into()], (0, false), true)));
        assert_eq!(split("\"\"\"\"\n"), Some((4, vec!["\"".into()], (0, false), true)));
        assert_eq!(
            split("1,\"said \"\"asap\"\"\"\n"),
            Some((17, vec!["1".into(), "said \"asap\"".into()], (0, false), true))
        );
        assert_eq!(split("\"a\rb\",c\r"), Some((7, vec!["a\rb".into(), "c".into()], (1, false), true)));
        // Line ends next to each other, across a chunk boundary or not; and
        // not next to each other across an escaped quote.
        let x15 = "x".repeat(15);
        let text = format!("\"{x15}\r\ny\",z\n");
        assert_eq!(split(&text), Some((text.len() - 1, vec![format!("{x15}\r\ny"), "z".into()], (2, true), true)));
        let text = format!("\"{x15}\ry\nz\"\n");
        assert_eq!(split(&text), Some((text.len() - 1, vec![format!("{x15}\ry\nz")], (2, false), true)));
        let text = format!("\"{}\r\"\"\n\"\n", &x15[1..]);
        assert_eq!(split(&text), Some((text.len() - 1, vec![format!("{}\r\"\n", &x15[1..])], (2, false), true)));
        let text = format!("\"{long}\n{long}\r\n\u{e9}\",\"\",{long}\n");
        assert_eq!(
            split(&text),
            Some((
                text.len() - 1,
                vec![format!("{long}\n{long}\r\n\u{e9}"), "".into(), long.clone()],
                (3, true),
                false
            ))
        );
        // A quote past a field's first byte, text after a closing quote, a
        // record that does not end in the buffer, too many fields.
        for other in ["a\"b,c\n", " \"a\",b\n", "\"a\"b,c\n", "\"a\" \n", "\"a\"", "\"a\"\"", "a,\"b", ",,,,,,,,\n"] {
            assert_eq!(split(other), None, "{other:?}");
        }
    }

    #[test]
    fn the_fast_path_gives_what_csv_core_gives() {
        // Quotes mid-buffer, records split across reads, CRLF, lone CRs, byte
        // order marks, blank and whitespace lines.
        for input in [
            "",
            "\u{feff}",
            "\u{feff}a,b\n",
            "\u{feff}\n\na",
            "a,b\nc,d",
            "a,b\r\nc,d\r\n",
            "a\rb\r\rc\n\rd",
            "h\n\"q\",x\ny,z\n",
            "h\n\"x\r\ny\",1\r\nb,2\r\n",
            "a,\" b,c \",\"say \"\"hi\"\"\"\nnext\n",
            "a, \"b,c\" \n\"open",
            "h\n\u{feff}a\n\u{feff}\"b\"\n",
            "   \n\"\"\n,\n a \n\t\n",
            "x,\"\"\"\",y\n\"a\"b,c\n",
            "\n\r\n\r\r\n\n",
            ",,,\n,\"\",\n",
            "h\n\"0123456789abcdef\"\"0123456789\",\"x\ny\nz\"\r\n\"a\"\"\"\n",
            "h\n\"fifteen bytes..\"\"\",\"sixteen bytes...\"\n\"a\" ,b\n\"a\"b\n",
            "h\n1,\"\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\",2\n3,\"",
        ] {
            assert_same_as_reference(input.as_bytes());
        }
    }

    #[test]
    fn random_inputs_give_what_csv_core_gives() {
        const BYTES: &[u8] = b"ab ,,\"\"\r\n\n\xef\xbb\xbf\xff";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5_000 {
            let len = (next() % 60) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| BYTES[(next() % BYTES.len() as u64) as usize]).collect();
            if next() % 8 == 0 {
                input.splice(0..0, UTF8_BOM.iter().copied());
            }
            assert_same_as_reference(&input);
        }
    }

    #[test]
    fn records_longer_than_the_buffer_give_what_csv_core_gives() {
        // Quote-free records that run past a refill go to `csv_core`.
        let long_field = "x".repeat(INPUT_BUFFER_BYTES + 100);
        let input = format!("h,i\n{long_field},1\n\"{long_field}\",2\r\n3,4\n,{long_field}");
        for step in [usize::MAX, 4096, 100_000] {
            let pieces = || Pieces { data: input.as_bytes(), step, fail: false };
            let mut reader = RecordReader::new(pieces());
            let mut reference = ReferenceReader::new(pieces());
            assert_eq!(collect(|raw| reader.read(raw).map(owned)), collect(|record| reference.read(record)));
        }
        let many_fields = ",".repeat(INPUT_BUFFER_BYTES / 2);
        let input = format!("{many_fields}\n{many_fields}{many_fields}{many_fields}\n");
        let mut reader = RecordReader::new(input.as_bytes());
        let mut reference = ReferenceReader::new(input.as_bytes());
        assert_eq!(collect(|raw| reader.read(raw).map(owned)), collect(|record| reference.read(record)));
    }

    #[test]
    fn the_record_caps_apply_as_with_csv_core_alone() {
        // Exactly at the data cap: still a record, at the end of the input
        // or followed by a line end (where `csv_core` reports its buffer
        // full before it sees that the record ends).
        let mut at_cap = b"h\n\n".to_vec();
        at_cap.resize(at_cap.len() + MAX_RECORD_BYTES, b'x');
        for tail in [&b""[..], b"\r\nnext", b"\rnext", b",", b"xx\nnext\n"] {
            let mut input = at_cap.clone();
            input.extend_from_slice(tail);
            let mut reader = RecordReader::new(input.as_slice());
            let mut reference = ReferenceReader::new(input.as_slice());
            let (records, err) = collect(|raw| reader.read(raw).map(owned));
            assert!(err.is_none(), "{err:?}");
            assert_eq!((records, err), collect(|record| reference.read(record)), "tail {tail:?}");
        }
        let mut reader = RecordReader::new(at_cap.as_slice());
        let (records, _) = collect(|raw| reader.read(raw).map(owned));
        assert_eq!(records[1].0, 3);
        assert_eq!(records[1].1[0].len(), MAX_RECORD_BYTES);
        // One byte more is too large; the next record is read as usual.
        let mut over = at_cap.clone();
        over.extend_from_slice(b"x\r\nnext,1\n");
        let mut reader = RecordReader::new(over.as_slice());
        let (records, err) = collect(|raw| reader.read(raw).map(owned));
        assert!(err.is_none(), "{err:?}");
        assert_eq!(records[1..], [(3, vec![]), (4, vec![b"next".to_vec(), b"1".to_vec()])]);
        // Fields: exactly the cap, and one more.
        for (commas, too_large) in [(MAX_RECORD_FIELDS - 1, false), (MAX_RECORD_FIELDS, true)] {
            let input = format!("h\n{}\nz\n", ",".repeat(commas));
            let mut reader = RecordReader::new(input.as_bytes());
            let mut reference = ReferenceReader::new(input.as_bytes());
            let (records, err) = collect(|raw| reader.read(raw).map(owned));
            assert_eq!(records[1].1.is_empty(), too_large);
            assert_eq!(records[1].1.len(), if too_large { 0 } else { MAX_RECORD_FIELDS });
            assert_eq!(records[2], (3, vec![b"z".to_vec()]));
            assert_eq!((records, err), collect(|record| reference.read(record)));
        }
    }

    #[test]
    fn small_caps_apply_on_every_path_exactly() {
        // Around caps of 20 bytes and 4 fields: quoted or not, escaped quotes
        // counted once, records inside one buffer (the fast paths) or
        // trickled across refills (`csv_core`), lines after them exact.
        let limits = Limits { bytes: 20, fields: 4 };
        let mut inputs = Vec::new();
        for len in [19, 20, 21, 40] {
            let data = "d".repeat(len);
            inputs.push(format!("h\n{data}\nnext\n"));
            inputs.push(format!("h\n\"{}\"\"\",x\r\nnext\n", &data[1..]));
            inputs.push(format!("h\n{},{}\rnext", &data[..len / 2], &data[len / 2..]));
            inputs.push(format!("h\n\"{}\n\"\"\"\r\n", &data[2..]));
            inputs.push(format!("h\n\"{data}"));
        }
        for spaces in [20, 21, 100] {
            inputs.push(format!("h\n{}\r\nnext\n\"{}\"\n", " ".repeat(spaces), "\t".repeat(spaces)));
        }
        for commas in [2, 3, 4, 9] {
            inputs.push(format!("h\n{}\nnext\n", ",".repeat(commas)));
            inputs.push(format!("h\n\"a\"{}\r", ",\"\"".repeat(commas)));
        }
        for input in &inputs {
            for step in [usize::MAX, 1, 2, 3, 5] {
                let pieces = || Pieces { data: input.as_bytes(), step, fail: false };
                let mut reader = RecordReader::with_limits(pieces(), 4096, limits);
                let mut reference = ReferenceReader::with_limits(pieces(), limits);
                assert_eq!(
                    collect(|raw| reader.read(raw).map(owned)),
                    collect(|record| reference.read(record)),
                    "input {input:?} read {step} bytes at a time"
                );
            }
        }
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
        let mut raw = RawRecord::new();
        let mut blank = Vec::new();
        while let Some(record) = reader.read(&mut raw).expect("in-memory input") {
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
    fn an_unclosed_quote_is_one_too_large_record_in_bounded_memory() {
        let mut input = b"h\n\"never closed\n".to_vec();
        input.resize(3 * MAX_RECORD_BYTES, b'x');
        input.extend_from_slice(b"\r\n\r\n");
        let mut reader = RecordReader::new(input.as_slice());
        let mut raw = RawRecord::new();
        assert!(reader.read(&mut raw).expect("header").is_some());
        let record = reader.read(&mut raw).expect("read").expect("a record");
        assert!(record.is_too_large());
        assert_eq!((record.line(), record.len()), (2, 0));
        assert!(reader.read(&mut raw).expect("read").is_none());
        // The record's line ends still count.
        assert_eq!(reader.line, 5);
        assert!(raw.data.len() <= MAX_RECORD_BYTES, "{}", raw.data.len());
        assert!(raw.ends.len() <= MAX_RECORD_FIELDS);
        assert!(reader.scratch_data.len() <= SCRATCH_BYTES && reader.scratch_ends.len() <= SCRATCH_FIELDS);
    }

    #[test]
    fn a_lone_cr_ends_a_line_like_lf_and_crlf_also_inside_quotes() {
        assert_eq!(lines("h\ra\rb\r"), [1, 2, 3]);
        assert_eq!(lines("h\r\ra\n\rb"), [1, 3, 5]);
        assert_eq!(lines("h\n\"x\ry\",1\rb\n"), [1, 2, 4]);
        assert_eq!(lines("h\n\"x\r\ny\r\rz\",1\nb\n"), [1, 2, 6]);
        // A CR as the last byte of a quoted field, and of a buffer.
        assert_eq!(lines("h\n\"x\r\"\nb\n"), [1, 2, 4]);
        let parsed = records("h\r\"x\ry\",1\r\n\"\"\r\n,\r");
        assert_eq!(parsed[1], (2, vec!["x\ry".to_owned(), "1".to_owned()]));
        // (A line of `""` is a record here; the pipeline skips it as blank.)
        assert_eq!(parsed[2], (4, vec![String::new()]));
        assert_eq!(parsed[3], (5, vec![String::new(), String::new()]));
        // A record ends at a lone CR, so a quote right after it opens the
        // next record's first field.
        assert_eq!(
            records("h\na\r\"b\nc\"\nd"),
            [
                (1, vec!["h".to_owned()]),
                (2, vec!["a".to_owned()]),
                (3, vec!["b\nc".to_owned()]),
                (5, vec!["d".to_owned()])
            ]
        );
    }

    #[test]
    fn line_ends_split_across_refills_count_once() {
        let mut after_cr = false;
        assert_eq!(count_line_breaks(b"a\r", &mut after_cr), 1);
        assert!(after_cr);
        assert_eq!(count_line_breaks(b"\n\n\r\r\n", &mut after_cr), 3);
        assert!(!after_cr);
        assert_eq!(count_line_breaks(b"", &mut after_cr), 0);
        assert_eq!(count_line_breaks(b"\n", &mut after_cr), 1);
        // Long inputs take the vectorised search: the same counts.
        for long in [format!("{}\r", "x\r\n\n\ry".repeat(20)), format!("\n{}", "ab\r\rc".repeat(30))] {
            let bytes = long.as_bytes();
            assert!(bytes.len() >= 64);
            for start_after_cr in [false, true] {
                let (mut short_state, mut long_state) = (start_after_cr, start_after_cr);
                let one_by_one: u64 = bytes.chunks(1).map(|byte| count_line_breaks(byte, &mut short_state)).sum();
                assert_eq!(count_line_breaks(bytes, &mut long_state), one_by_one, "{long:?}");
                assert_eq!(long_state, short_state);
            }
        }
    }
}
