//! Writing the output files as rows arrive.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;

use csv::{QuoteStyle, Terminator, WriterBuilder};

use crate::input::RawRecord;
use crate::rules::format_cents;
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
pub(crate) fn encode_record(record: &RawRecord, out: &mut Vec<u8>) -> Result<(), PipelineError> {
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

/// Accepted orders of one region so far.
#[derive(Debug)]
struct Region {
    name: Box<str>,
    orders: u64,
    total_cents: u64,
    /// Index into `RegionFiles::open` while its file is open.
    open_slot: Option<usize>,
}

struct OpenFile<W: Write> {
    region: usize,
    writer: csv::Writer<W>,
    last_used: u64,
}

/// The per-region totals and `<region>_orders.csv` files.
pub(crate) struct RegionFiles<W: Write> {
    index: HashMap<Box<str>, usize>,
    regions: Vec<Region>,
    open: Vec<OpenFile<W>>,
    max_open: usize,
    buffer_bytes: usize,
    /// Counts writes, to find the least recently used open file.
    clock: u64,
    amount_text: String,
}

impl<W: Write> RegionFiles<W> {
    pub(crate) fn new(max_open: usize, buffer_bytes: usize) -> Self {
        Self {
            index: HashMap::new(),
            regions: Vec::new(),
            open: Vec::new(),
            max_open: max_open.max(1),
            buffer_bytes,
            clock: 0,
            amount_text: String::new(),
        }
    }

    /// Adds an accepted order to its region's total and file.
    pub(crate) fn add_order<S: OutputSink<Writer = W>>(
        &mut self,
        sink: &mut S,
        region: &str,
        order_id: &str,
        amount_cents: u64,
    ) -> Result<(), PipelineError> {
        let region_index = match self.index.get(region) {
            Some(&existing) => existing,
            None => {
                let added = self.regions.len();
                self.regions.push(Region { name: region.into(), orders: 0, total_cents: 0, open_slot: None });
                self.index.insert(region.into(), added);
                added
            }
        };
        let state = &mut self.regions[region_index];
        let first_order = state.orders == 0;
        state.total_cents = state.total_cents.checked_add(amount_cents).ok_or_else(|| {
            PipelineError::Overflow(format!(
                "the total of region `{region}` does not fit in 64 bits of cents (more than {} cents)",
                u64::MAX
            ))
        })?;
        state.orders += 1;
        let slot = match state.open_slot {
            Some(slot) => slot,
            None => self.open_file(sink, region_index, first_order)?,
        };

        self.clock += 1;
        format_cents(amount_cents, &mut self.amount_text);
        let file = &mut self.open[slot];
        file.last_used = self.clock;
        file.writer
            .write_record([order_id, region, self.amount_text.as_str()])
            .map_err(|err| write_error(&region_file_name(region), err))
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
            create_csv(sink, &name, ["order_id", "region", "amount"], self.buffer_bytes)?
        } else {
            let file = sink.append(&name).map_err(|err| PipelineError::Io(format!("cannot reopen `{name}`: {err}")))?;
            csv_writer(file, self.buffer_bytes)
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
        close(closed.writer, &region_file_name(&closed_region.name))
    }

    /// Flushes and closes every region file and returns the totals sorted by
    /// region name, and the names of the files written.
    pub(crate) fn finish(self) -> Result<(Vec<RegionTotal>, Vec<String>), PipelineError> {
        let Self { mut regions, open, .. } = self;
        for file in open {
            close(file.writer, &region_file_name(&regions[file.region].name))?;
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
        self.index.insert(region.into(), self.regions.len());
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
    let mut total_text = String::new();
    for total in totals {
        format_cents(total.total_cents, &mut total_text);
        writer
            .write_record([total.region.as_str(), &total.orders.to_string(), &total_text])
            .map_err(|err| write_error(SUMMARY_FILE, err))?;
    }
    close(writer, SUMMARY_FILE)
}
