//! Writes to the operator's terminal through every text the host shows.
//! The input file names the channel:
//!
//! - `invalid-input`, `io`, `overflow`: returns that `pipeline-error` with a
//!   message that starts with terminal escapes (an OSC 0 window-title change
//!   ended by BEL, a screen clear `ESC [2J`, a cursor home, a CR that would
//!   overwrite the line, DEL, the C1 CSI `U+009B`, a right-to-left override
//!   `U+202E`), then 4 MiB of `x`, then `END-OF-MESSAGE`.
//! - `panic`: panics with the same escapes, then 200 KiB of `y`, so the
//!   crash message quotes a hostile stderr line (the panic message) longer
//!   than the stderr limit.
//! - `report`: returns `Ok` with a consistent report whose region and reason
//!   names carry the escapes (one region name is 2 MiB long), and one output
//!   whose otherwise plain name holds a right-to-left override,
//!   `<output-dir>/report\u{202e}vsc.txt`.
//!
//! Anything else means `invalid-input`.
//!
//! A correct host never lets guest text reach a terminal raw: control
//! characters are escaped, and long text is cut to a few KiB when it is
//! captured, everywhere a person reads it (error lines, summaries); `--json`
//! stays valid JSON.

use std::fs;
use std::path::Path;

use test_programs::{Guest, PipelineError, ReasonCount, RegionTotal, Report, io_error};

/// Title change (OSC 0 .. BEL), screen clear, cursor home, CR, DEL, C1 CSI,
/// right-to-left override.
const ESCAPES: &str = "\u{1b}]0;pwned by a guest\u{7}\u{1b}[2J\u{1b}[H\rFAKE: all good\u{7f}\u{9b}31m\u{202e}";

struct ControlText;

impl Guest for ControlText {
    fn process(input: String, output_dir: String) -> Result<Report, PipelineError> {
        let channel = fs::read_to_string(&input).map_err(|err| io_error(&format!("read {input}"), &err))?;
        let message = || format!("{ESCAPES}{}END-OF-MESSAGE", "x".repeat(4 << 20));
        match channel.trim() {
            "io" => Err(PipelineError::Io(message())),
            "overflow" => Err(PipelineError::Overflow(message())),
            "panic" => panic!("{ESCAPES}{}", "y".repeat(200 << 10)),
            "report" => {
                let name = "report\u{202e}vsc.txt";
                fs::write(Path::new(&output_dir).join(name), "report\n")
                    .map_err(|err| io_error("write the report output", &err))?;
                Ok(Report {
                    rows: 3,
                    accepted: 2,
                    cancelled: 0,
                    rejected: 1,
                    reasons: vec![ReasonCount { reason: format!("{ESCAPES}reason"), rows: 1 }],
                    regions: vec![
                        RegionTotal { region: format!("{ESCAPES}north"), orders: 1, total_cents: 100 },
                        RegionTotal { region: format!("{ESCAPES}{}", "z".repeat(2 << 20)), orders: 1, total_cents: 1 },
                    ],
                    outputs: vec![name.to_owned()],
                })
            }
            _ => Err(PipelineError::InvalidInput(message())),
        }
    }
}

test_programs::export!(ControlText with_types_in test_programs::bindings);
