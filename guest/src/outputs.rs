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
/// ending, for the `record` column of `rejected.csv`: byte for byte, invalid
/// UTF-8 included (SPEC keeps a row's original bytes, so `rejected.csv` is
/// not always UTF-8). A record over the caps gives an empty line.
pub(crate) fn encode_record(record: &Record<'_>, out: &mut Vec<u8>) -> Result<(), PipelineError> {
    fn encode_error(err: impl std::fmt::Display) -> PipelineError {
        PipelineError::Io(format!("re-encoding a rejected row failed: {err}"))
    }
    out.clear();
    if record.is_too_large() {
        return Ok(());
    }
    let mut writer = csv_writer(&mut *out, 4096);
    for field in record.fields() {
        writer.write_field(field).map_err(encode_error)?;
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

    /// A packed region key (see `pack_region`): two mixes, no byte loop.
    fn write_u128(&mut self, value: u128) {
        self.mix(value as u64);
        self.mix((value >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        // hashbrown uses both the top and the bottom bits.
        let mixed = (self.state ^ (self.state >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        mixed ^ (mixed >> 32)
    }
}

/// Regions up to this length have a `u128` key: their bytes, and the length in
/// the top byte.
const MAX_PACKED_REGION_LEN: usize = 15;

/// A region's bytes in the low bytes of a `u128` (little-endian), its length
/// in the top byte, zeros between: distinct regions (whatever their bytes)
/// get distinct keys. `None` if it is longer than `MAX_PACKED_REGION_LEN`.
/// Like `put_field`, it reads with loads of a fixed size that overlap (the
/// overlapping bytes are the same, so or-ing them in is harmless): no copy of
/// a run-time length, which in WebAssembly is a call. The shifts are of
/// `u64`s: a `u128` shifted by a run-time amount is a call too. The key's
/// bytes are also what `LineWriter::write_order` stores for the region.
#[inline(always)]
fn pack_region(region: &[u8]) -> Option<u128> {
    let len = region.len();
    let (low, high) = match len {
        0 => (0, 0),
        1..=3 => {
            // First, middle and last byte cover every length up to 3.
            let low = u64::from(region[0])
                | u64::from(region[len / 2]) << (8 * (len / 2))
                | u64::from(region[len - 1]) << (8 * (len - 1));
            (low, 0)
        }
        4..=7 => {
            let (head, tail) = (region.first_chunk::<4>()?, region.last_chunk::<4>()?);
            (u64::from(u32::from_le_bytes(*head)) | u64::from(u32::from_le_bytes(*tail)) << (8 * (len - 4)), 0)
        }
        8..=MAX_PACKED_REGION_LEN => {
            let (head, tail) = (region.first_chunk::<8>()?, region.last_chunk::<8>()?);
            // `tail` holds bytes `len - 8..len`; bytes 8.. are its top
            // `len - 8` bytes (none when `len` is 8: two shifts, as one
            // by 64 would overflow).
            (u64::from_le_bytes(*head), u64::from_le_bytes(*tail) >> 8 >> (8 * (MAX_PACKED_REGION_LEN - len)))
        }
        _ => return None,
    };
    Some(u128::from(high | (len as u64) << 56) << 64 | u128::from(low))
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
///
/// In WebAssembly a copy of a run-time length (`extend_from_slice`) is a
/// `memory.copy`, a call out to the host, and a row has three fields. So the
/// buffer is a fixed block filled up to `len`, with `SLACK` spare bytes at
/// its end, and a row's region and amount are stored as 16-byte words of
/// which only their length counts (the next field overwrites the rest).
struct LineWriter<W: Write> {
    inner: W,
    /// `capacity + SLACK` bytes.
    buffer: Box<[u8]>,
    len: usize,
}

/// Room after the last line for a 16-byte store that starts in it.
const SLACK: usize = 16;

impl<W: Write> LineWriter<W> {
    fn new(inner: W, capacity: usize) -> Self {
        Self { inner, buffer: vec![0; capacity + SLACK].into_boxed_slice(), len: 0 }
    }

    /// Makes room for a line of `len` bytes (and `SLACK`), writing out the
    /// buffer if needed.
    fn reserve(&mut self, len: usize) -> io::Result<()> {
        if self.len + len + SLACK > self.buffer.len() {
            self.write_buffer()?;
            if len + SLACK > self.buffer.len() {
                // Only a buffer smaller than one line (never with the
                // buffer sizes the pipeline uses) gets here.
                self.buffer = vec![0; len + SLACK].into_boxed_slice();
            }
        }
        Ok(())
    }

    /// Writes `fields` joined by commas, and a line feed.
    fn write_line(&mut self, fields: [&[u8]; 3]) -> io::Result<()> {
        let len = fields.iter().map(|field| field.len() + 1).sum::<usize>();
        self.reserve(len)?;
        let mut end = self.len;
        for (index, field) in fields.into_iter().enumerate() {
            if index > 0 {
                self.buffer[end] = b',';
                end += 1;
            }
            self.buffer[end..end + field.len()].copy_from_slice(field);
            end += field.len();
        }
        self.buffer[end] = b'\n';
        self.len = end + 1;
        Ok(())
    }

    /// Writes the line of an order: `order_id,region,amount`. `region_key`
    /// is `pack_region(region)`: the region's bytes, as one word.
    fn write_order(
        &mut self,
        order_id: &[u8],
        region: &[u8],
        region_key: Option<u128>,
        amount_cents: u64,
    ) -> io::Result<()> {
        let (Some(region_key), Some((amount_word, amount_len))) = (region_key, cents_word(amount_cents)) else {
            let mut amount_text = [0; NUMBER_TEXT_BYTES];
            return self.write_line([order_id, region, format_cents(amount_cents, &mut amount_text)]);
        };
        self.reserve(order_id.len() + region.len() + amount_len + 3)?;
        let mut end = put_field(&mut self.buffer, self.len, order_id);
        self.buffer[end] = b',';
        end += 1;
        // Within the line or the slack: `reserve` made room for both.
        self.buffer[end..end + 16].copy_from_slice(&region_key.to_le_bytes());
        end += region.len();
        self.buffer[end] = b',';
        end += 1;
        self.buffer[end..end + 16].copy_from_slice(&amount_word.to_le_bytes());
        end += amount_len;
        self.buffer[end] = b'\n';
        self.len = end + 1;
        Ok(())
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        self.inner.write_all(&self.buffer[..self.len])?;
        self.len = 0;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buffer()?;
        self.inner.flush()
    }
}

/// `format_cents(cents)` as the bytes of a little-endian word, and its
/// length, for amounts below 2^32 cents (all but the largest): built in a
/// register, one byte at a time from the last, so that the line gets it with
/// one store of a fixed size (bytes written one by one in memory and read
/// back at once would also stall the load).
#[inline(always)]
fn cents_word(cents: u64) -> Option<(u128, usize)> {
    let cents = u32::try_from(cents).ok()?;
    let (mut whole, fraction) = (cents / 100, cents % 100);
    let digit = |value: u32| u128::from(b'0' + (value % 10) as u8);
    let mut word = digit(fraction) << 16 | digit(fraction / 10) << 8 | u128::from(b'.');
    let mut len = 3;
    loop {
        // At most 8 digits (below 2^32 / 100): the word never overflows.
        word = word << 8 | digit(whole);
        len += 1;
        whole /= 10;
        if whole == 0 {
            return Some((word, len));
        }
    }
}

/// Copies `field` into `buffer` at `at` (where it must fit) and returns where
/// it ends. For the order id, a slice of the input: unlike the region and
/// the amount it is not at hand as a word, and nothing is known of the bytes
/// after it. Up to 32 bytes take two copies of a fixed size, the second
/// ending where the field ends and overlapping the first: every load stays
/// inside `field` and every store inside the field's place in `buffer`, and
/// there is no `memory.copy` call (which costs more than the rest of the
/// line). Longer ids (rare: at most 64 bytes) take the general copy.
#[inline(always)]
fn put_field(buffer: &mut [u8], at: usize, field: &[u8]) -> usize {
    let len = field.len();
    let end = at + len;
    match len {
        0 => {}
        1..=3 => {
            // First, middle and last byte cover every length up to 3.
            buffer[at] = field[0];
            buffer[at + len / 2] = field[len / 2];
            buffer[end - 1] = field[len - 1];
        }
        4..=7 => put_two::<4>(buffer, at, field),
        8..=15 => put_two::<8>(buffer, at, field),
        16..=32 => put_two::<16>(buffer, at, field),
        _ => buffer[at..end].copy_from_slice(field),
    }
    end
}

/// `put_field` for `N <= field.len() <= 2 * N`: the first and the last `N`
/// bytes.
#[inline(always)]
fn put_two<const N: usize>(buffer: &mut [u8], at: usize, field: &[u8]) {
    let len = field.len();
    let (Some(head), Some(tail)) = (field.first_chunk::<N>(), field.last_chunk::<N>()) else {
        // Not reached (callers pass at least N bytes); correct anyway.
        buffer[at..at + len].copy_from_slice(field);
        return;
    };
    let (head, tail) = (*head, *tail);
    let end = at + len;
    buffer[at..at + N].copy_from_slice(&head);
    buffer[end - N..end].copy_from_slice(&tail);
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
    /// Regions of up to `MAX_PACKED_REGION_LEN` bytes (nearly all), keyed by
    /// `pack_region`: hashing and comparing a `u128` takes no byte loop and
    /// no `memcmp` call.
    short: HashMap<u128, usize, NameHashing>,
    /// Longer regions, keyed by their bytes.
    long: HashMap<Box<[u8]>, usize, NameHashing>,
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
            short: HashMap::with_hasher(NameHashing::random()),
            long: HashMap::with_hasher(NameHashing::random()),
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
        let key = pack_region(region);
        let existing = match key {
            Some(key) => self.short.get(&key),
            None => self.long.get(region),
        };
        let region_index = match existing {
            Some(&existing) => existing,
            None => self.add_region(region, key),
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
        let file = &mut self.open[slot];
        file.last_used = self.clock;
        file.writer
            .write_order(order_id, region, key, amount_cents)
            .map_err(|err| write_error(&region_file_name(&self.regions[region_index].name), err))
    }

    /// Adds a region with no orders; `key` is `pack_region(region)`.
    fn add_region(&mut self, region: &[u8], key: Option<u128>) -> usize {
        let added = self.regions.len();
        // Lossless: the region is ASCII.
        let name = String::from_utf8_lossy(region).into();
        self.regions.push(Region { name, orders: 0, total_cents: 0, open_slot: None });
        match key {
            Some(key) => self.short.insert(key, added),
            None => self.long.insert(region.into(), added),
        };
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
        let added = self.add_region(region.as_bytes(), pack_region(region.as_bytes()));
        self.regions[added].total_cents = total_cents;
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::MemorySink;

    #[test]
    fn put_field_copies_every_length_exactly_and_nothing_else() {
        let source: Vec<u8> = (1..=80).collect();
        for len in 0..=source.len() {
            for at in [0, 1, 5, 13] {
                let mut buffer = [0xee_u8; 100];
                let end = put_field(&mut buffer, at, &source[..len]);
                assert_eq!(end, at + len);
                assert_eq!(&buffer[at..end], &source[..len], "length {len} at {at}");
                assert!(buffer[..at].iter().chain(&buffer[end..]).all(|&byte| byte == 0xee), "length {len} at {at}");
            }
        }
    }

    #[test]
    fn put_field_fills_a_buffer_to_its_last_byte() {
        for len in 1..=40 {
            let field: Vec<u8> = (0..len).map(|index| b'a' + index as u8 % 26).collect();
            let mut buffer = vec![0; len + 3];
            assert_eq!(put_field(&mut buffer, 3, &field), len + 3);
            assert_eq!(&buffer[3..], &field[..]);
        }
    }

    #[test]
    fn cents_words_are_the_formatted_amounts() {
        let mut text = [0; NUMBER_TEXT_BYTES];
        let samples =
            (0..=100_000).chain((0..32).map(|bit| 1 << bit)).chain([u64::from(u32::MAX) - 1, u64::from(u32::MAX)]);
        for cents in samples {
            let (word, len) = cents_word(cents).expect("below 2^32 cents");
            assert_eq!(&word.to_le_bytes()[..len], format_cents(cents, &mut text), "{cents}");
            assert!(word.to_le_bytes()[len..].iter().all(|&byte| byte == 0));
        }
        assert_eq!(cents_word(1 << 32), None);
        assert_eq!(cents_word(u64::MAX), None);
    }

    #[test]
    fn packed_region_keys_are_distinct_and_only_for_short_regions() {
        let mut names: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=MAX_PACKED_REGION_LEN {
            // Names differing in one place, and the same bytes at every
            // length (a prefix must not share its key with a longer name).
            for place in 0..len {
                for byte in [b'a', b'z', 0, 0xff] {
                    let mut name = vec![b'q'; len];
                    name[place] = byte;
                    names.push(name);
                }
            }
            names.push(vec![0; len]);
        }
        let keys: Vec<u128> = names.iter().map(|name| pack_region(name).expect("short enough")).collect();
        let distinct_names: HashSet<&Vec<u8>> = names.iter().collect();
        let distinct_keys: HashSet<u128> = keys.iter().copied().collect();
        assert_eq!(distinct_keys.len(), distinct_names.len());
        assert_eq!(pack_region(b"north"), Some(u128::from_le_bytes(*b"north\0\0\0\0\0\0\0\0\0\0\x05")));
        assert_eq!(pack_region(b"north_west_east"), Some(u128::from_le_bytes(*b"north_west_east\x0f")));
        assert_eq!(pack_region(b"north_west_south"), None);
        assert_eq!(pack_region(&[b'x'; 64]), None);
    }

    /// Lines written through `RegionFiles`, against the same lines built
    /// with `format!`: short and long regions (packed keys and not), short
    /// and long ids, more regions than open files, and small buffers that
    /// fill up mid-run (16 bytes: smaller than a line).
    #[test]
    fn region_files_hold_exactly_the_lines_written() {
        let regions: Vec<String> = (0..150)
            .map(|index| match index % 5 {
                0 => format!("r{index}"),
                1 => format!("region_{index:08}"), // 15 bytes: packed
                2 => format!("region_{index:09}"), // 16 bytes: not packed
                3 => format!("{}{index}", "long_region_".repeat(5)),
                _ => format!("{index}{}", "z".repeat(index % 64)).chars().take(64).collect(),
            })
            .collect();
        for buffer_bytes in [16, 200, 4096] {
            let mut sink = MemorySink::new();
            let mut files = RegionFiles::new(MAX_OPEN_REGION_FILES, buffer_bytes);
            let mut expected: Vec<String> = vec!["order_id,region,amount\n".to_owned(); regions.len()];
            for row in 0..3000_usize {
                let which = (row * 7 + row / 11) % regions.len();
                let id = format!("{row}{}", "i".repeat(row % 70));
                let id = &id[..id.len().min(64)];
                let cents = (row as u64) * 1_234_567 % 100_000_000_001;
                files
                    .add_order(&mut sink, regions[which].as_bytes(), id.as_bytes(), cents)
                    .expect("writing to memory succeeds");
                expected[which].push_str(&format!("{id},{},{}.{:02}\n", regions[which], cents / 100, cents % 100));
            }
            let (totals, names) = files.finish().expect("flushing to memory succeeds");
            assert_eq!(totals.len(), regions.len());
            assert_eq!(names.len(), regions.len());
            for (region, lines) in regions.iter().zip(&expected) {
                assert_eq!(sink.text(&region_file_name(region)).as_deref(), Some(lines.as_str()), "{region}");
            }
        }
    }
}
