//! The header and the cleaning table of SPEC.md.

#![forbid(unsafe_code)]

use std::fmt;

use crate::PipelineError;
use crate::input::Record;
use crate::seen_ids::{IdLookup, SeenIds};

/// Why a row was rejected, in the order of SPEC.md's cleaning table: a row
/// with several faults gets the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// More than 8 MiB (8,388,608 bytes) of field data once unquoted, or
    /// more than 1,048,576 fields. Its record in `rejected.csv` is empty.
    TooLarge,
    /// Not exactly as many fields as the header.
    FieldCount,
    /// A field is not valid UTF-8.
    Encoding,
    /// The order id is empty or not 1-64 chars of `[A-Za-z0-9_-]`.
    OrderId,
    /// An earlier valid (accepted or cancelled) row had the same order id.
    Duplicate,
    /// The region is not 1-64 chars of `[a-z0-9_-]` after lower-casing.
    Region,
    /// The amount is not `digits[.d|.dd]` or is above 1000000000.00.
    Amount,
    /// The status is not `completed` or `cancelled` (or `canceled`).
    Status,
}

impl Reason {
    /// Every reason, in table order.
    pub const ALL: [Reason; 8] = [
        Reason::TooLarge,
        Reason::FieldCount,
        Reason::Encoding,
        Reason::OrderId,
        Reason::Duplicate,
        Reason::Region,
        Reason::Amount,
        Reason::Status,
    ];

    /// The word used in `rejected.csv` and in the report.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::TooLarge => "too large",
            Reason::FieldCount => "field count",
            Reason::Encoding => "encoding",
            Reason::OrderId => "order_id",
            Reason::Duplicate => "duplicate",
            Reason::Region => "region",
            Reason::Amount => "amount",
            Reason::Status => "status",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The required columns, in the order error messages list them.
const REQUIRED_COLUMNS: [&str; 4] = ["order_id", "region", "amount", "status"];

/// Where the required columns are in each row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Columns {
    pub(crate) field_count: usize,
    order_id: usize,
    region: usize,
    amount: usize,
    status: usize,
}

impl Columns {
    /// Finds the required columns: names are trimmed of ASCII whitespace and
    /// compared ASCII-case-insensitively; other columns are ignored.
    pub(crate) fn from_header(header: &Record<'_>) -> Result<Self, PipelineError> {
        if header.is_too_large() {
            return Err(PipelineError::InvalidInput(format!(
                "the header on line {} holds more than 8 MiB of data or more than 1,048,576 fields \
                 (is a quote left open?)",
                header.line()
            )));
        }
        let mut positions: [Option<usize>; 4] = [None; 4];
        for (index, name) in header.fields().enumerate() {
            let name = name.trim_ascii();
            let Some(which) =
                REQUIRED_COLUMNS.iter().position(|required| name.eq_ignore_ascii_case(required.as_bytes()))
            else {
                continue;
            };
            if let Some(first) = positions[which] {
                return Err(PipelineError::InvalidInput(format!(
                    "the header names the `{}` column twice (columns {} and {}); keep only one",
                    REQUIRED_COLUMNS[which],
                    first + 1,
                    index + 1
                )));
            }
            positions[which] = Some(index);
        }
        match positions {
            [Some(order_id), Some(region), Some(amount), Some(status)] => {
                Ok(Self { field_count: header.len(), order_id, region, amount, status })
            }
            _ => Err(missing_columns_error(&positions, header)),
        }
    }
}

fn missing_columns_error(positions: &[Option<usize>; 4], header: &Record<'_>) -> PipelineError {
    let missing: Vec<String> = REQUIRED_COLUMNS
        .iter()
        .zip(positions)
        .filter(|(_, position)| position.is_none())
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    let what = match missing.as_slice() {
        [one] => format!("{one} column"),
        [init @ .., last] => format!("{} or {last} columns", init.join(", ")),
        [] => "required column".to_owned(),
    };
    // Showing what was found makes a wrong delimiter (`;`) or a missing
    // header row obvious.
    let found: Vec<String> =
        header.fields().take(12).map(|name| format!("`{}`", String::from_utf8_lossy(name))).collect();
    let more = if header.len() > found.len() { ", ..." } else { "" };
    PipelineError::InvalidInput(format!(
        "the header on line {} has no {what} (required: {}; found: {}{more})",
        header.line(),
        REQUIRED_COLUMNS.join(", "),
        found.join(", "),
    ))
}

/// Status of a valid row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Completed,
    Cancelled,
}

/// A row that passed every rule. The cleaned region is in the caller's
/// buffer, so no allocation is needed per row.
#[derive(Debug)]
pub(crate) struct ValidRow<'r> {
    /// ASCII, as the rule for order ids demands.
    pub(crate) order_id: &'r [u8],
    /// Where `order_id` goes in the `SeenIds` it was looked up in.
    pub(crate) id_lookup: IdLookup,
    pub(crate) amount_cents: u64,
    pub(crate) status: Status,
}

/// Applies the cleaning table in order and returns the first failing reason.
/// On success the lower-cased (ASCII) region is left in `region`. The order
/// id is *not* recorded in `seen`: the caller does that (with the row's
/// `id_lookup`, before `seen` changes otherwise), so that only valid rows
/// reserve ids.
pub(crate) fn validate<'r>(
    record: &Record<'r>,
    columns: &Columns,
    seen: &SeenIds,
    region: &mut RegionName,
) -> Result<ValidRow<'r>, Reason> {
    // A record over the caps has no fields, never the header's number.
    if record.len() != columns.field_count {
        return Err(if record.is_too_large() { Reason::TooLarge } else { Reason::FieldCount });
    }
    // Nearly every record is all ASCII; only the others need a field by
    // field check (a multi-byte character must not span two fields).
    if !record.is_ascii() && !record.fields().all(|field| std::str::from_utf8(field).is_ok()) {
        return Err(Reason::Encoding);
    }
    let order_id = trim(record.field(columns.order_id));
    if !(1..=MAX_NAME_LEN).contains(&order_id.len()) {
        return Err(Reason::OrderId);
    }
    // The look-up checks the alphabet as it packs the id: one pass.
    let id_lookup = seen.look_up(order_id).ok_or(Reason::OrderId)?;
    if id_lookup.is_seen() {
        return Err(Reason::Duplicate);
    }
    clean_region(trim(record.field(columns.region)), region)?;
    let amount_cents = parse_amount_cents(trim(record.field(columns.amount))).ok_or(Reason::Amount)?;
    let status = parse_status(trim(record.field(columns.status))).ok_or(Reason::Status)?;
    Ok(ValidRow { order_id, id_lookup, amount_cents, status })
}

/// `field.trim_ascii()`, inlined: std's copy stays a call, and in
/// WebAssembly every call is a real one.
#[inline(always)]
fn trim(mut field: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = field {
        if !first.is_ascii_whitespace() {
            break;
        }
        field = rest;
    }
    while let [rest @ .., last] = field {
        if !last.is_ascii_whitespace() {
            break;
        }
        field = rest;
    }
    field
}

/// The alphabet of order ids and (after lower-casing) regions.
pub(crate) fn is_name_byte(byte: u8) -> bool {
    NAME_BYTES[usize::from(byte)] != 0
}

/// For each byte: its ASCII lower case if it is in `[A-Za-z0-9_-]`, else 0.
/// One table load per byte checks and lower-cases in a single pass.
static NAME_BYTES: [u8; 256] = {
    let mut table = [0; 256];
    let mut byte = 0;
    while byte < 256 {
        let value = byte as u8;
        if value.is_ascii_alphanumeric() || value == b'_' || value == b'-' {
            table[byte] = value.to_ascii_lowercase();
        }
        byte += 1;
    }
    table
};

const MAX_NAME_LEN: usize = 64;

#[cfg(test)]
fn is_order_id(id: &[u8]) -> bool {
    (1..=MAX_NAME_LEN).contains(&id.len()) && id.iter().all(|&byte| is_name_byte(byte))
}

/// A cleaned region: lower-case ASCII, 1 to 64 bytes. Kept inline, so that
/// cleaning a row's region copies no memory through a call.
#[derive(Debug, Clone)]
pub(crate) struct RegionName {
    bytes: [u8; MAX_NAME_LEN],
    len: usize,
}

impl RegionName {
    pub(crate) fn new() -> Self {
        Self { bytes: [0; MAX_NAME_LEN], len: 0 }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Lower-cases (ASCII) the region into `cleaned`. The region becomes part of a
/// file name, which is why its alphabet is so strict: no `/`, `.` or spaces.
fn clean_region(raw: &[u8], cleaned: &mut RegionName) -> Result<(), Reason> {
    if raw.is_empty() || raw.len() > MAX_NAME_LEN {
        return Err(Reason::Region);
    }
    for (slot, &byte) in cleaned.bytes.iter_mut().zip(raw) {
        *slot = NAME_BYTES[usize::from(byte)];
        if *slot == 0 {
            return Err(Reason::Region);
        }
    }
    cleaned.len = raw.len();
    Ok(())
}

/// The largest amount accepted: 1000000000.00.
pub(crate) const MAX_AMOUNT_CENTS: u64 = 1_000_000_000 * 100;

/// Above any accepted whole part, and small enough that `* 100` and `* 10 + 9`
/// stay far from `u64::MAX`.
const WHOLE_CLAMP: u64 = MAX_AMOUNT_CENTS / 100 + 1;

/// Parses a trimmed amount into cents: one leading `$` is dropped, every `,`
/// is ignored, and the rest must be `digits[.d|.dd]` with at least one digit
/// before the dot. `None` if it is malformed or above `MAX_AMOUNT_CENTS`.
/// Never overflows, whatever the number of digits.
pub(crate) fn parse_amount_cents(amount: &[u8]) -> Option<u64> {
    let amount = amount.strip_prefix(b"$").unwrap_or(amount);
    let mut bytes = amount.iter();
    let mut whole: u64 = 0;
    let mut whole_digits = false;
    let mut has_dot = false;
    for &byte in bytes.by_ref() {
        match byte {
            b'0'..=b'9' => {
                // Clamped, so that plain arithmetic cannot overflow (overflow
                // checks on `u64` are 128-bit multiplications in
                // WebAssembly): anything that large is rejected below anyway.
                whole = (whole * 10 + u64::from(byte - b'0')).min(WHOLE_CLAMP);
                whole_digits = true;
            }
            b',' => {}
            b'.' => {
                has_dot = true;
                break;
            }
            _ => return None,
        }
    }
    let mut fraction: u64 = 0;
    let mut fraction_digits = 0;
    for &byte in bytes {
        match byte {
            b'0'..=b'9' if fraction_digits < 2 => {
                fraction = fraction * 10 + u64::from(byte - b'0');
                fraction_digits += 1;
            }
            b',' => {}
            _ => return None,
        }
    }
    let fraction_cents = match (has_dot, fraction_digits) {
        (false, _) => 0,
        // `12.` has a dot but no digits after it.
        (true, 0) => return None,
        (true, 1) => fraction * 10,
        (true, _) => fraction,
    };
    if !whole_digits {
        return None;
    }
    let cents = whole * 100 + fraction_cents;
    (cents <= MAX_AMOUNT_CENTS).then_some(cents)
}

#[inline]
fn parse_status(status: &[u8]) -> Option<Status> {
    if letters_equal_ignoring_case(status, b"completed") {
        Some(Status::Completed)
    } else if letters_equal_ignoring_case(status, b"cancelled") || letters_equal_ignoring_case(status, b"canceled") {
        Some(Status::Cancelled)
    } else {
        None
    }
}

/// `text.eq_ignore_ascii_case(lower)` for a `lower` of lower-case ASCII
/// letters only, where setting bit 5 of a byte lower-cases it exactly (only
/// `l` and its upper case `l - 32` give `l`): no per-byte case mapping.
fn letters_equal_ignoring_case(text: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower.iter().all(u8::is_ascii_lowercase));
    text.len() == lower.len() && text.iter().zip(lower).all(|(&byte, &letter)| byte | 0x20 == letter)
}

/// Room for any `u64` in decimal, with a dot.
pub(crate) const NUMBER_TEXT_BYTES: usize = 24;

/// Formats cents with exactly two decimals: `123450` → `1234.50`. Returns
/// the text, at the end of `out`.
pub(crate) fn format_cents(cents: u64, out: &mut [u8; NUMBER_TEXT_BYTES]) -> &[u8] {
    // Nearly every amount fits in 32 bits; 64-bit division by a constant is a
    // 128-bit multiplication call in WebAssembly.
    let (whole, fraction) = match u32::try_from(cents) {
        Ok(small) => (u64::from(small / 100), (small % 100) as u8),
        Err(_) => (cents / 100, (cents % 100) as u8),
    };
    let start = write_decimal_backwards(whole, &mut out[..NUMBER_TEXT_BYTES - 3]);
    out[NUMBER_TEXT_BYTES - 3] = b'.';
    out[NUMBER_TEXT_BYTES - 2] = b'0' + fraction / 10;
    out[NUMBER_TEXT_BYTES - 1] = b'0' + fraction % 10;
    &out[start..]
}

/// Formats an integer in decimal. Returns the text, at the end of `out`.
pub(crate) fn format_integer(value: u64, out: &mut [u8; NUMBER_TEXT_BYTES]) -> &[u8] {
    let start = write_decimal_backwards(value, out);
    &out[start..]
}

/// Writes `value` in decimal at the end of `out` (which must be long enough:
/// 20 bytes hold any `u64`) and returns where it starts. Cheaper than
/// `core::fmt` for the one value per row that is formatted; values that fit
/// in 32 bits (all amounts of a row) avoid 64-bit division, which in
/// WebAssembly is slow or a 128-bit multiplication call.
fn write_decimal_backwards(mut value: u64, out: &mut [u8]) -> usize {
    let mut position = out.len();
    while value > u64::from(u32::MAX) {
        position -= 1;
        out[position] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    // The loop above leaves at most `u32::MAX`.
    let mut small = u32::try_from(value).unwrap_or(u32::MAX);
    loop {
        position -= 1;
        out[position] = b'0' + (small % 10) as u8;
        small /= 10;
        if small == 0 {
            return position;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cents(amount: &str) -> Option<u64> {
        parse_amount_cents(amount.as_bytes())
    }

    #[test]
    fn reasons_are_in_table_order_with_their_words() {
        let words: Vec<&str> = Reason::ALL.iter().map(Reason::as_str).collect();
        assert_eq!(
            words,
            ["too large", "field count", "encoding", "order_id", "duplicate", "region", "amount", "status"]
        );
        assert!(Reason::ALL.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(Reason::FieldCount.to_string(), "field count");
    }

    #[test]
    fn fields_are_trimmed_like_trim_ascii() {
        for field in ["", " ", "a", " a ", "\t\r\n\x0ca b\x0c\n", "\x0ba\x0b", " \u{a0}x\u{a0} ", "  \t"] {
            assert_eq!(trim(field.as_bytes()), field.as_bytes().trim_ascii(), "{field:?}");
        }
    }

    #[test]
    fn amounts_are_exact_cents() {
        assert_eq!(cents("250.00"), Some(25_000));
        assert_eq!(cents("12.5"), Some(1_250));
        assert_eq!(cents("12.05"), Some(1_205));
        assert_eq!(cents("7"), Some(700));
        assert_eq!(cents("0"), Some(0));
        assert_eq!(cents("0.01"), Some(1));
        assert_eq!(cents("$1,234.5"), Some(123_450));
        assert_eq!(cents("$1,234,567.89"), Some(123_456_789));
        assert_eq!(cents("000012.30"), Some(1_230));
        assert_eq!(cents("1000000000.00"), Some(MAX_AMOUNT_CENTS));
        assert_eq!(cents("1,000,000,000"), Some(MAX_AMOUNT_CENTS));
    }

    #[test]
    fn malformed_or_too_large_amounts_are_rejected() {
        for bad in [
            "",
            "$",
            "abc",
            "-5.00",
            "+5",
            "12.345",
            "12.",
            ".5",
            "1e3",
            "12.3.4",
            "$$5",
            "5$",
            "1 000",
            "12,.",
            "1000000000.01",
            "1000000001",
            "0x10",
            "٣",
        ] {
            assert_eq!(cents(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn huge_digit_strings_do_not_overflow() {
        assert_eq!(cents(&"9".repeat(1000)), None);
        assert_eq!(cents(&format!("{}.99", "9".repeat(1000))), None);
        assert_eq!(cents(&format!("{}1.25", "0".repeat(1000))), Some(125));
        assert_eq!(cents("18446744073709551616"), None);
    }

    #[test]
    fn statuses_are_case_insensitive_and_canceled_means_cancelled() {
        assert_eq!(parse_status(b"completed"), Some(Status::Completed));
        assert_eq!(parse_status(b"COMPLETED"), Some(Status::Completed));
        assert_eq!(parse_status(b"Canceled"), Some(Status::Cancelled));
        assert_eq!(parse_status(b"cancelled"), Some(Status::Cancelled));
        for bad in ["", "pending", "refunded", "complete", "cancel led", "c\u{f6}mpleted", "COMPLETEd ", "CANCELE\x04"]
        {
            assert_eq!(parse_status(bad.as_bytes()), None, "{bad:?}");
        }
        // Exactly `eq_ignore_ascii_case`, for every byte in every position.
        for word in [&b"completed"[..], b"cancelled", b"canceled"] {
            for position in 0..word.len() {
                for byte in 0..=u8::MAX {
                    let mut text = word.to_vec();
                    text[position] = byte;
                    assert_eq!(letters_equal_ignoring_case(&text, word), text.eq_ignore_ascii_case(word));
                }
            }
        }
    }

    #[test]
    fn regions_are_lower_cased_and_restricted_to_file_name_safe_chars() {
        let mut cleaned = RegionName::new();
        assert_eq!(clean_region(b"North_East-2", &mut cleaned), Ok(()));
        assert_eq!(cleaned.as_bytes(), b"north_east-2");
        for byte in 0..=u8::MAX {
            let valid = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-';
            assert_eq!(is_name_byte(byte), valid, "{byte}");
            assert_eq!(clean_region(&[byte], &mut cleaned).is_ok(), valid, "{byte}");
            if valid {
                assert_eq!(cleaned.as_bytes(), [byte.to_ascii_lowercase()]);
            }
        }
        assert_eq!(clean_region(&[b'A'; 64], &mut cleaned), Ok(()));
        assert_eq!(cleaned.as_bytes(), [b'a'; 64]);
        for bad in ["", "north east", "../etc", "n\u{f6}rth", "a.b", "a/b", &"a".repeat(65)] {
            assert_eq!(clean_region(bad.as_bytes(), &mut cleaned), Err(Reason::Region), "{bad:?}");
        }
    }

    #[test]
    fn order_ids_are_one_to_64_chars_of_the_alphabet() {
        assert!(is_order_id(b"A-z_09"));
        assert!(is_order_id(&[b'x'; 64]));
        for bad in ["", "id with space", "a.b", "\u{e9}", &"x".repeat(65)] {
            assert!(!is_order_id(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn cents_format_with_two_decimals() {
        let mut out = [0; NUMBER_TEXT_BYTES];
        for cents in [0, 5, 10, 99, 100, 123_450, 4_294_967_295, 4_294_967_296, 429_496_729_600, u64::MAX] {
            let expected = format!("{}.{:02}", cents / 100, cents % 100);
            assert_eq!(format_cents(cents, &mut out), expected.as_bytes(), "{cents}");
        }
        assert_eq!(format_cents(u64::MAX, &mut out), b"184467440737095516.15");
    }

    #[test]
    fn integers_format_like_display() {
        let mut out = [0; NUMBER_TEXT_BYTES];
        for value in [0, 7, 10, 4_294_967_295, 4_294_967_296, 10_000_000_000, u64::MAX - 1, u64::MAX] {
            assert_eq!(format_integer(value, &mut out), value.to_string().as_bytes(), "{value}");
        }
    }
}
