//! The header and the cleaning table of SPEC.md.

#![forbid(unsafe_code)]

use std::fmt;

use crate::PipelineError;
use crate::input::RawRecord;
use crate::seen_ids::SeenIds;

/// Why a row was rejected, in the order of SPEC.md's cleaning table: a row
/// with several faults gets the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
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
    pub const ALL: [Reason; 7] = [
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
    pub(crate) fn from_header(header: &RawRecord) -> Result<Self, PipelineError> {
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

fn missing_columns_error(positions: &[Option<usize>; 4], header: &RawRecord) -> PipelineError {
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
    pub(crate) order_id: &'r str,
    pub(crate) amount_cents: u64,
    pub(crate) status: Status,
}

/// Applies the cleaning table in order and returns the first failing reason.
/// On success the lower-cased region is left in `region`. The order id is
/// *not* recorded in `seen`: the caller does that, so that only valid rows
/// reserve ids.
pub(crate) fn validate<'r>(
    record: &'r RawRecord,
    columns: &Columns,
    seen: &SeenIds,
    region: &mut String,
) -> Result<ValidRow<'r>, Reason> {
    if record.len() != columns.field_count {
        return Err(Reason::FieldCount);
    }
    if !record.fields().all(|field| std::str::from_utf8(field).is_ok()) {
        return Err(Reason::Encoding);
    }
    let order_id = record.field(columns.order_id).trim_ascii();
    if !is_order_id(order_id) {
        return Err(Reason::OrderId);
    }
    if seen.contains(order_id) {
        return Err(Reason::Duplicate);
    }
    clean_region(record.field(columns.region).trim_ascii(), region)?;
    let amount_cents = parse_amount_cents(record.field(columns.amount).trim_ascii()).ok_or(Reason::Amount)?;
    let status = parse_status(record.field(columns.status).trim_ascii()).ok_or(Reason::Status)?;
    Ok(ValidRow {
        // An order id is ASCII by now, so this cannot fail.
        order_id: std::str::from_utf8(order_id).map_err(|_| Reason::OrderId)?,
        amount_cents,
        status,
    })
}

/// The alphabet of order ids and (after lower-casing) regions.
pub(crate) fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

const MAX_NAME_LEN: usize = 64;

fn is_order_id(id: &[u8]) -> bool {
    (1..=MAX_NAME_LEN).contains(&id.len()) && id.iter().all(|&byte| is_name_byte(byte))
}

/// Lower-cases (ASCII) the region into `cleaned`. The region becomes part of a
/// file name, which is why its alphabet is so strict: no `/`, `.` or spaces.
fn clean_region(raw: &[u8], cleaned: &mut String) -> Result<(), Reason> {
    if !(1..=MAX_NAME_LEN).contains(&raw.len()) || !raw.iter().all(|&byte| is_name_byte(byte)) {
        return Err(Reason::Region);
    }
    cleaned.clear();
    cleaned.extend(raw.iter().map(|byte| char::from(byte.to_ascii_lowercase())));
    Ok(())
}

/// The largest amount accepted: 1000000000.00.
pub(crate) const MAX_AMOUNT_CENTS: u64 = 1_000_000_000 * 100;

/// Parses a trimmed amount into cents: one leading `$` is dropped, every `,`
/// is ignored, and the rest must be `digits[.d|.dd]` with at least one digit
/// before the dot. `None` if it is malformed or above `MAX_AMOUNT_CENTS`.
/// Never overflows, whatever the number of digits.
pub(crate) fn parse_amount_cents(amount: &[u8]) -> Option<u64> {
    let amount = amount.strip_prefix(b"$").unwrap_or(amount);
    let mut whole: u64 = 0;
    let mut whole_digits = 0usize;
    let mut fraction: u64 = 0;
    // `None` before the dot, then the number of fraction digits seen.
    let mut fraction_digits: Option<u32> = None;
    for &byte in amount {
        match (byte, fraction_digits) {
            (b',', _) => {}
            (b'0'..=b'9', None) => {
                // Saturating: anything that large is rejected below anyway.
                whole = whole.saturating_mul(10).saturating_add(u64::from(byte - b'0'));
                whole_digits += 1;
            }
            (b'.', None) => fraction_digits = Some(0),
            (b'0'..=b'9', Some(seen)) if seen < 2 => {
                fraction = fraction * 10 + u64::from(byte - b'0');
                fraction_digits = Some(seen + 1);
            }
            _ => return None,
        }
    }
    let fraction_cents = match fraction_digits {
        None => 0,
        Some(1) => fraction * 10,
        Some(2) => fraction,
        // `12.` has a dot but no digits after it.
        Some(_) => return None,
    };
    if whole_digits == 0 {
        return None;
    }
    let cents = whole.checked_mul(100)?.checked_add(fraction_cents)?;
    (cents <= MAX_AMOUNT_CENTS).then_some(cents)
}

fn parse_status(status: &[u8]) -> Option<Status> {
    if status.eq_ignore_ascii_case(b"completed") {
        Some(Status::Completed)
    } else if status.eq_ignore_ascii_case(b"cancelled") || status.eq_ignore_ascii_case(b"canceled") {
        Some(Status::Cancelled)
    } else {
        None
    }
}

/// Formats cents with exactly two decimals: `123450` → `1234.50`.
pub(crate) fn format_cents(cents: u64, out: &mut String) {
    use std::fmt::Write as _;
    out.clear();
    // Writing into a String cannot fail.
    let _ = write!(out, "{}.{:02}", cents / 100, cents % 100);
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
        assert_eq!(words, ["field count", "encoding", "order_id", "duplicate", "region", "amount", "status"]);
        assert!(Reason::ALL.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(Reason::FieldCount.to_string(), "field count");
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
        for bad in ["", "pending", "refunded", "complete", "cancel led"] {
            assert_eq!(parse_status(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn regions_are_lower_cased_and_restricted_to_file_name_safe_chars() {
        let mut cleaned = String::new();
        assert_eq!(clean_region(b"North_East-2", &mut cleaned), Ok(()));
        assert_eq!(cleaned, "north_east-2");
        assert_eq!(clean_region(&[b'a'; 64], &mut cleaned), Ok(()));
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
        let mut out = String::new();
        format_cents(123_450, &mut out);
        assert_eq!(out, "1234.50");
        format_cents(5, &mut out);
        assert_eq!(out, "0.05");
        format_cents(u64::MAX, &mut out);
        assert_eq!(out, "184467440737095516.15");
    }
}
