//! Runs untrusted `orders:pipeline` components against a private, throw-away
//! workspace: every invocation gets its own folder (mode 0700 from the
//! `mkdir`, 128-bit random name), the guest sees only that folder's `input/`
//! (read-only) and `out/`, runs under memory, time and output limits, and the
//! folder is removed however the run ends.
//!
//! ```
//! use host::{Destination, Input, Invocation, Runner, RunnerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Once per process: engine, sandbox roots, compiled components.
//! let root = std::env::temp_dir().join(format!("orders-host-doc-{}", std::process::id()));
//! let runner = Runner::new(&RunnerConfig { sandbox_root: Some(root.clone()), ..RunnerConfig::default() })?;
//! let pipeline = runner.bundled()?;
//!
//! // Per invocation: a tenant, an input, limits (the tenant's, else the
//! // defaults) and where the outputs go.
//! let orders = b"order_id,region,amount,status\n1,north,\"$1,250.5\",completed\n2,south,3,canceled\n";
//! let invocation = Invocation::new(&pipeline, Input::Bytes(orders.to_vec()))
//!     .tenant("acme")
//!     .destination(Destination::Memory);
//! let outcome = tokio::runtime::Runtime::new()?.block_on(runner.invoke(invocation))?;
//!
//! assert_eq!((outcome.report.rows, outcome.report.accepted, outcome.report.cancelled), (2, 1, 1));
//! let summary = outcome.outputs.iter().find(|file| file.name == "summary.csv").expect("summary");
//! assert_eq!(summary.sha256.len(), 64);
//! runner.shutdown()?;
//! # std::fs::remove_dir_all(root)?;
//! # Ok(())
//! # }
//! ```
//!
//! The runner is built once (engine, linker, sandbox root) and shared; each
//! [`Runner::invoke`] creates a sandbox, copies the input in, instantiates the
//! component in a fresh store, calls `process`, checks the report and the
//! output folder (a guest may lie), delivers atomically, and removes the
//! sandbox. See the README for the exit codes of the `host` binary.

// `deny`, not `forbid`: `cache.rs` alone allows unsafe code, for the one call
// that loads precompiled machine code (`Component::deserialize`).
#![deny(unsafe_code)]

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "pipeline",
        exports: { default: async },
    });
}

pub mod cache;
mod engine;
mod error;
mod guest;
mod housekeeper;
mod input;
mod ledger;
pub mod limits;
mod outputs;
pub mod program;
mod quota;
mod report;
mod runner;
pub mod sandbox;
mod tenants;
pub mod text;

pub use cache::{CacheStatus, CodeCache};
pub use error::{Outcome, RunError};
pub use limits::{ByteSize, Limits};
pub use outputs::{Delivered, Destination, MAX_OUTPUTS, OutputFile, check_destination};
pub use quota::{MAX_OPEN_HANDLES, MAX_OPEN_LISTINGS, Progress};
pub use report::{ReasonCount, RegionTotal, Report, format_cents};
pub use runner::{
    Admission, BUNDLED_PIPELINE, Component, GUEST_INPUT_DIR, GUEST_OUTPUT_DIR, Input, Invocation, RunOutcome, Runner,
    RunnerConfig, Timings, default_output_folder,
};
