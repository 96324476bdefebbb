//! Runs untrusted `orders:pipeline` components against a private, throw-away
//! workspace: every invocation gets its own folder (mode 0700 from the
//! `mkdir`, 128-bit random name), the guest sees only that folder's `input/`
//! (read-only) and `out/`, runs under memory, time and output limits, and the
//! folder is removed however the run ends.
//!
//! ```no_run
//! use host::{Destination, Input, Limits, Runner, RunnerConfig};
//!
//! # async fn example() -> Result<(), host::RunError> {
//! let runner = Runner::new(&RunnerConfig::default())?;
//! let pipeline = runner.bundled()?;
//! let outcome = runner
//!     .run(&pipeline, &Input::Path("orders.csv".into()), &Limits::default(), &Destination::Memory)
//!     .await?;
//! println!("{} rows, {} accepted", outcome.report.rows, outcome.report.accepted);
//! # Ok(())
//! # }
//! ```
//!
//! The runner is built once (engine, linker, sandbox root) and shared; each
//! [`Runner::run`] creates a sandbox, copies the input in, instantiates the
//! component in a fresh store, calls `process`, checks the report and the
//! output folder (a guest may lie), delivers atomically, and removes the
//! sandbox. See the README for the exit codes of the `host` binary.

#![forbid(unsafe_code)]

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "pipeline",
        exports: { default: async },
    });
}

mod error;
mod guest;
pub mod limits;
mod outputs;
mod quota;
mod report;
mod runner;
pub mod sandbox;

pub use error::{Outcome, RunError};
pub use limits::{ByteSize, Limits};
pub use outputs::{Delivered, Destination, OutputFile, check_destination};
pub use report::{ReasonCount, RegionTotal, Report, format_cents};
pub use runner::{
    BUNDLED_PIPELINE, Component, GUEST_INPUT_DIR, GUEST_OUTPUT_DIR, Input, RunOutcome, Runner, RunnerConfig, Timings,
    default_output_folder,
};
