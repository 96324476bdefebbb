//! Writing the output files as rows arrive.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};

use csv::{QuoteStyle, Terminator, WriterBuilder};

use crate::input::Record;
use crate::rules::{NUMBER_TEXT_BYTES, format_cents, format_integer};
use crate::sink::OutputSink;
use crate::{PipelineError, RegionTotal};

pub(crate) const SUMMARY_FILE: &str = "summary.csv";
pub(crate) const REJECTED_FILE: &str = "rejected.csv";

/// How many region files may be open at once. More regions than this means
/// the least recently used one is flushed and closed, and reopened in append
/// mode when its next row comes: an input with a million regions must not
/// exhaust file handles (or memory, at one buffer per open file).
pub(crate) const MAX_OPEN_REGION_FILES: usize = 64;

/// Each write is a host call in WebAssembly; 64 KiB per file keeps calls rare
/// while 64 open region files stay at 4 MiB of buffers. Small inputs get
/// smaller buffers (see `Buffers`).
pub(crate) const OUTPUT_BUFFER_BYTES: usize = 64 * 1024;

pub(crate) fn region_file_name(region: &str) -> String {
    format!("{region}_orders.csv")
}

/// A CSV writer with LF line endings, quoting only when needed.
pub(crate) fn csv_writer<W: Write>(inner: W, buffer_bytes: usize) -> csv::Writer<W> {
    WriterBuilder::new()
        .terminator(Terminator::Any(b'\n'))
        .quote_style(QuoteStyle::Necessary)
        .buffer_capacity(buffer_bytes)
        .from_writer(inner)
}

pub(crate) fn write_error(file: &str, err: impl std::fmt::Display) -> PipelineError {
    PipelineError::Io(format!("writing `{file}` failed: {err}"))
}

/// Creates an output file and writes its header line.
pub(crate) fn create_csv<S: OutputSink>(
    sink: &mut S,
    name: &str,
    header: [&str; 3],
    buffer_bytes: usize,
) -> Result<csv::Writer<S::Writer>, PipelineError> {
    let file = sink.create(name).map_err(|err| PipelineError::Io(format!("cannot create `{name}`: {err}")))?;
    let mut writer = csv_writer(file, buffer_bytes);
    writer.write_record(header).map_err(|err| write_error(name, err))?;
    Ok(writer)
}

/// Flushes a writer and surfaces the error that dropping it would swallow.
pub(crate) fn close<W: Write>(mut writer: csv::Writer<W>, name: &str) -> Result<(), PipelineError> {
    writer.flush().map_err(|err| write_error(name, err))
}

/// Re-encodes a record's original fields as one CSV line without its line
/// ending, for the `record` column of `rejected.csv`. Invalid UTF-8 is
/// replaced by U+FFFD so that `rejected.csv` stays UTF-8.
pub(crate) fn encode_record(record: &Record<'_>, out: &mut Vec<u8>) -> Result<(), PipelineError> {
    fn encode_error(err: impl std::fmt::Display) -> PipelineError {
        PipelineError::Io(format!("re-encoding a rejected row failed: {err}"))
    }
    out.clear();
    let mut writer = csv_writer(&mut *out, 4096);
    for field in record.fields() {
        writer.write_field(String::from_utf8_lossy(field).as_bytes()).map_err(encode_error)?;
    }
    // An empty record ends the row started by `write_field`.
    writer.write_record(std::iter::empty::<&[u8]>()).map_err(encode_error)?;
    writer.flush().map_err(encode_error)?;
    drop(writer); // gives `out` back
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    Ok(())
}

/// A hasher for short names (regions, looked up once per row): a
/// multiply-rotate per 8 bytes, keyed with a random seed from std's
/// `RandomState` so that crafted names cannot be made to collide. Cheaper
/// in WebAssembly than std's SipHash, and than hashers built on 128-bit
/// products.
#[derive(Debug, Clone, Copy)]
struct NameHashing {
    seed: u64,
}

impl NameHashing {
    fn random() -> Self {
        Self { seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) }
    }
}

impl BuildHasher for NameHashing {
    type Hasher = NameHasher;

    fn build_hasher(&self) -> NameHasher {
        NameHasher { state: self.seed }
    }
}

#[derive(Debug)]
struct NameHasher {
    state: u64,
}

impl NameHasher {
    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            // Byte by byte: a copy of a variable length would be a call.
            let word = tail.iter().rev().fold(0, |word, &byte| word << 8 | u64::from(byte));
            self.mix(word);
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.mix(value as u64);
    }

    fn finish(&self) -> u64 {
        // hashbrown uses both the top and the bottom bits.
        let mixed = (self.state ^ (self.state >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        mixed ^ (mixed >> 32)
    }
}

/// Accepted orders of one region so far.
#[derive(Debug)]
struct Region {
    name: Box<str>,
    orders: u64,
    total_cents: u64,
    /// Index into `RegionFiles::open` while its file is open.
    open_slot: Option<usize>,
}

/// A buffered writer for lines of a region file. Their fields (order id,
/// region, amount) never need CSV quoting, so the lines are written as they
/// are, which is what `csv::Writer` with `QuoteStyle::Necessary` writes for
/// them, without its per-field scanning.
struct LineWriter<W: Write> {
    inner: W,
    buffer: Vec<u8>,
    capacity: usize,
}

impl<W: Write> LineWriter<W> {
    fn new(inner: W, capacity: usize) -> Self {
        Self { inner, buffer: Vec::with_capacity(capacity), capacity }
    }

    /// Writes `fields` joined by commas, and a line feed.
    fn write_line(&mut self, fields: [&[u8]; 3]) -> io::Result<()> {
        let len = fields.iter().map(|field| field.len() + 1).sum::<usize>();
        if self.buffer.len() + len > self.capacity {
            self.write_buffer()?;
        }
        for (index, field) in fields.into_iter().enumerate() {
            if index > 0 {
                self.buffer.push(b',');
            }
            self.buffer.extend_from_slice(field);
        }
        self.buffer.push(b'\n');
        Ok(())
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        self.inner.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buffer()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for LineWriter<W> {
    /// Like `csv::Writer`: when a run fails, the rows so far still reach the
    /// file (the error that stopped the run is the one reported).
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

struct OpenFile<W: Write> {
    region: usize,
    writer: LineWriter<W>,
    last_used: u64,
}

/// The per-region totals and `<region>_orders.csv` files.
pub(crate) struct RegionFiles<W: Write> {
    /// Keyed by the cleaned region's bytes.
    index: HashMap<Box<[u8]>, usize, NameHashing>,
    regions: Vec<Region>,
    open: Vec<OpenFile<W>>,
    max_open: usize,
    buffer_bytes: usize,
    /// Counts writes, to find the least recently used open file.
    clock: u64,
}

impl<W: Write> RegionFiles<W> {
    pub(crate) fn new(max_open: usize, buffer_bytes: usize) -> Self {
        Self {
            index: HashMap::with_hasher(NameHashing::random()),
            regions: Vec::new(),
            open: Vec::new(),
            max_open: max_open.max(1),
            buffer_bytes,
            clock: 0,
        }
    }

    /// Adds an accepted order to its region's total and file. `region` and
    /// `order_id` are ASCII (the rules allow nothing else).
    pub(crate) fn add_order<S: OutputSink<Writer = W>>(
        &mut self,
        sink: &mut S,
        region: &[u8],
        order_id: &[u8],
        amount_cents: u64,
    ) -> Result<(), PipelineError> {
        let region_index = match self.index.get(region) {
            Some(&existing) => existing,
            None => self.add_region(region),
        };
        let state = &mut self.regions[region_index];
        let first_order = state.orders == 0;
        state.total_cents = state.total_cents.checked_add(amount_cents).ok_or_else(|| {
            PipelineError::Overflow(format!(
                "the total of region `{}` does not fit in 64 bits of cents (more than {} cents)",
                state.name,
                u64::MAX
            ))
        })?;
        state.orders += 1;
        let slot = match state.open_slot {
            Some(slot) => slot,
            None => self.open_file(sink, region_index, first_order)?,
        };

        self.clock += 1;
        let mut amount_text = [0; NUMBER_TEXT_BYTES];
        let amount_text = format_cents(amount_cents, &mut amount_text);
        let file = &mut self.open[slot];
        file.last_used = self.clock;
        file.writer
            .write_line([order_id, region, amount_text])
            .map_err(|err| write_error(&region_file_name(&self.regions[region_index].name), err))
    }

    fn add_region(&mut self, region: &[u8]) -> usize {
        let added = self.regions.len();
        // Lossless: the region is ASCII.
        let name = String::from_utf8_lossy(region).into();
        self.regions.push(Region { name, orders: 0, total_cents: 0, open_slot: None });
        self.index.insert(region.into(), added);
        added
    }

    /// Opens the region's file, creating it for the region's first order, and
    /// returns its slot. Closes the least recently used file first if the
    /// limit of open files is reached.
    fn open_file<S: OutputSink<Writer = W>>(
        &mut self,
        sink: &mut S,
        region_index: usize,
        first_order: bool,
    ) -> Result<usize, PipelineError> {
        if self.open.len() >= self.max_open {
            self.close_least_recently_used()?;
        }
        let name = region_file_name(&self.regions[region_index].name);
        let writer = if first_order {
            let file = sink.create(&name).map_err(|err| PipelineError::Io(format!("cannot create `{name}`: {err}")))?;
            let mut writer = LineWriter::new(file, self.buffer_bytes);
            writer.write_line([b"order_id", b"region", b"amount"]).map_err(|err| write_error(&name, err))?;
            writer
        } else {
            let file = sink.append(&name).map_err(|err| PipelineError::Io(format!("cannot reopen `{name}`: {err}")))?;
            LineWriter::new(file, self.buffer_bytes)
        };
        self.open.push(OpenFile { region: region_index, writer, last_used: self.clock });
        let slot = self.open.len() - 1;
        self.regions[region_index].open_slot = Some(slot);
        Ok(slot)
    }

    fn close_least_recently_used(&mut self) -> Result<(), PipelineError> {
        let Some(lru_slot) = (0..self.open.len()).min_by_key(|&slot| self.open[slot].last_used) else {
            return Ok(());
        };
        let closed = self.open.swap_remove(lru_slot);
        // `swap_remove` moved the last open file into the freed slot.
        if let Some(moved) = self.open.get(lru_slot) {
            self.regions[moved.region].open_slot = Some(lru_slot);
        }
        let closed_region = &mut self.regions[closed.region];
        closed_region.open_slot = None;
        let mut writer = closed.writer;
        writer.flush().map_err(|err| write_error(&region_file_name(&closed_region.name), err))
    }

    /// Flushes and closes every region file and returns the totals sorted by
    /// region name, and the names of the files written.
    pub(crate) fn finish(self) -> Result<(Vec<RegionTotal>, Vec<String>), PipelineError> {
        let Self { mut regions, open, .. } = self;
        for mut file in open {
            file.writer.flush().map_err(|err| write_error(&region_file_name(&regions[file.region].name), err))?;
        }
        regions.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let files = regions.iter().map(|region| region_file_name(&region.name)).collect();
        let totals = regions
            .into_iter()
            .map(|region| RegionTotal {
                region: region.name.into(),
                orders: region.orders,
                total_cents: region.total_cents,
            })
            .collect();
        Ok((totals, files))
    }

    /// Starts `region` at `total_cents` with no order written yet, to reach
    /// an overflow without the 184 million maximal orders it would take.
    #[cfg(test)]
    pub(crate) fn seed_total(&mut self, region: &str, total_cents: u64) {
        self.index.insert(region.as_bytes().into(), self.regions.len());
        self.regions.push(Region { name: region.into(), orders: 0, total_cents, open_slot: None });
    }
}
/// Writes `summary.csv`: one line per region, sorted, totals with two
/// decimals.
pub(crate) fn write_summary<S: OutputSink>(
    sink: &mut S,
    totals: &[RegionTotal],
    buffer_bytes: usize,
) -> Result<(), PipelineError> {
    let mut writer = create_csv(sink, SUMMARY_FILE, ["region", "orders", "total"], buffer_bytes)?;
    let mut orders_text = [0; NUMBER_TEXT_BYTES];
    let mut total_text = [0; NUMBER_TEXT_BYTES];
    for total in totals {
        writer
            .write_record([
                total.region.as_bytes(),
                format_integer(total.orders, &mut orders_text),
                format_cents(total.total_cents, &mut total_text),
            ])
            .map_err(|err| write_error(SUMMARY_FILE, err))?;
    }
    close(writer, SUMMARY_FILE)
}
