//! The per-invocation limit profile, and the parsing of its human-written
//! figures (`256MiB`, `60s`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What one invocation may use. Every field is enforced while the guest runs,
/// not checked afterwards; see the README's "Limits and security".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory (all memories and tables of the instance together), in bytes.
    pub memory: ByteSize,
    /// Wall-clock time for instantiation plus the call, including time the
    /// guest spends blocked in a host call.
    pub timeout: Duration,
    /// Deterministic instruction budget; `None` runs without fuel metering.
    pub fuel: Option<u64>,
    /// Bytes the sandbox may hold: the guest's own files, the input not counted.
    pub disk_quota: ByteSize,
    /// Files, folders and links the guest may have at once (every name
    /// counts, and an unlinked file it still holds open).
    pub max_files: u64,
    /// Folders the guest may have at once, within `max_files`: removing a
    /// sandbox takes time by its folders, so they have a smaller bound.
    pub max_folders: u64,
    /// Total size of the collected outputs; `None` means the disk quota.
    pub max_output: Option<ByteSize>,
    /// Guest stderr kept for the report (or forwarded, for a program run
    /// with [`crate::Runner::exec`]); the rest is dropped as it arrives.
    pub stderr_limit: ByteSize,
    /// A program's stdout kept or forwarded ([`crate::Runner::exec`]); the
    /// rest is dropped as it arrives. A pipeline's stdout is discarded.
    pub stdout_limit: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: ByteSize(256 << 20),
            timeout: Duration::from_secs(60),
            fuel: None,
            disk_quota: ByteSize(1 << 30),
            max_files: 10_000,
            max_folders: 256,
            max_output: None,
            stderr_limit: ByteSize(64 << 10),
            stdout_limit: ByteSize(64 << 10),
        }
    }
}

impl Limits {
    /// The output limit in force: `max_output`, or the disk quota when unset.
    #[must_use]
    pub fn effective_max_output(&self) -> ByteSize {
        self.max_output.unwrap_or(self.disk_quota)
    }
}

/// A number of bytes, written `1048576`, `512KiB`, `256MiB`, `1GiB` (also `KB`,
/// `MB`, `GB` as powers of 1000, and a plain `B` suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    #[must_use]
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// A figure that could not be read: what was given and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not {expected}")]
pub struct ParseFigureError {
    given: String,
    expected: &'static str,
}

const SIZE_FORMS: &str = "a size such as 1048576, 64KiB, 256MiB or 1GiB";
const DURATION_FORMS: &str = "a duration such as 500ms, 60s or 5m";

/// Splits `1.5GiB` into (`1.5`, `GiB`), trimming space between them.
fn split_number(text: &str) -> (&str, &str) {
    let text = text.trim();
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    (&text[..end], text[end..].trim())
}

/// `whole * scale` for a decimal `number` such as `1.5`, exactly when it is whole.
fn scaled(number: &str, scale: u64) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut value = whole.checked_mul(scale)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).ok()?;
        let denominator = 10u64.checked_pow(digits)?;
        let numerator: u64 = fraction.parse().ok()?;
        let part = u128::from(numerator) * u128::from(scale);
        if part % u128::from(denominator) != 0 {
            return None;
        }
        value = value.checked_add(u64::try_from(part / u128::from(denominator)).ok()?)?;
    }
    Some(value)
}

impl FromStr for ByteSize {
    type Err = ParseFigureError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseFigureError { given: text.to_owned(), expected: SIZE_FORMS };
        let (number, unit) = split_number(text);
        let scale: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(error()),
        };
        scaled(number, scale).map(ByteSize).ok_or_else(error)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (scale, unit) in UNITS {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Reads `500ms`, `60s`, `5m`, `1h` or `1.5s`; a bare number is seconds.
///
/// # Errors
///
/// When `text` is not a non-negative number with one of those units.
pub fn parse_duration(text: &str) -> Result<Duration, ParseFigureError> {
    let error = || ParseFigureError { given: text.to_owned(), expected: DURATION_FORMS };
    let (number, unit) = split_number(text);
    let nanos_per_unit: u64 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(error()),
    };
    scaled(number, nanos_per_unit).map(Duration::from_nanos).ok_or_else(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_binary_and_decimal_units() {
        let cases = [
            ("1048576", 1 << 20),
            ("64KiB", 64 << 10),
            ("256MiB", 256 << 20),
            ("1GiB", 1 << 30),
            ("1.5GiB", 3 << 29),
            ("2 MiB", 2 << 20),
            ("10mb", 10_000_000),
            ("0", 0),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_what_is_accepted() {
        for text in ["", "MiB", "-1", "1.5", "12XB", "99999999999999999999", "0.1B"] {
            let err = text.parse::<ByteSize>().expect_err(text);
            assert!(err.to_string().contains("256MiB"), "{err}");
        }
    }

    #[test]
    fn sizes_print_in_their_largest_whole_unit() {
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        assert_eq!(ByteSize(1 << 30).to_string(), "1GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn durations_read_their_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn output_limit_defaults_to_the_disk_quota() {
        let limits = Limits::default();
        assert_eq!(limits.effective_max_output(), limits.disk_quota);
        let limits = Limits { max_output: Some(ByteSize(5)), ..limits };
        assert_eq!(limits.effective_max_output(), ByteSize(5));
    }
}
