//! Runs untrusted `orders:pipeline` components against a private, throw-away
//! workspace: every invocation gets its own folder (mode 0700 from the
//! `mkdir`, 128-bit random name), the guest sees only that folder's `input/`
//! (read-only) and `out/`, runs under memory, time and output limits, and the
//! folder is removed however the run ends.
//!
//! ```
//! use orders_host::{Destination, Input, Invocation, Runner, RunnerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Once per process: engine, sandbox roots, compiled components.
//! let root = std::env::temp_dir().join(format!("orders-host-doc-{}", std::process::id()));
//! let runner = Runner::new(&RunnerConfig { sandbox_root: Some(root.clone()), ..RunnerConfig::default() })?;
//! let pipeline = runner.bundled()?;
//!
//! // Per invocation: a tenant, an input, limits (the tenant's, else the
//! // defaults) and where the outputs go. An invocation owns all of it, so it
//! // can wait in a queue or move to another task.
//! let orders = b"order_id,region,amount,status\n1,north,\"$1,250.5\",completed\n2,south,3,canceled\n";
//! let invocation = Invocation::new(pipeline.clone(), Input::Bytes(orders.to_vec()))
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
//! The runner is built once (engine, linker, sandbox roots) and shared; each
//! [`Runner::invoke`] runs the stages of `invoke.rs`: admission, the input
//! and the sandbox, the guest, its outcome, collection and delivery (a guest
//! may lie: everything is checked), removal. Every stage that blocks runs on
//! tokio's blocking pool, so the library can live in a long-running async
//! service. Errors are [`RunError`]s: their [`Outcome`] names the class,
//! their [`Remedy`] says what to do; the `host` binary words both for the
//! command line.

// `deny`, not `forbid`: `cache.rs` alone allows unsafe code, for the one call
// that loads precompiled machine code (`Component::deserialize`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[allow(missing_docs, reason = "generated from wit/pipeline.wit, whose own docs it carries")]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "pipeline",
        exports: { default: async },
        additional_derives: [serde::Serialize, Clone, PartialEq, Eq],
    });
}

mod cache;
mod cancel;
mod collect;
mod component;
mod deliver;
mod engine;
mod error;
mod exec;
mod fs;
mod guest;
mod housekeeper;
mod input;
mod invocation;
mod invoke;
mod ledger;
mod limits;
mod outcome;
pub mod program;
mod progress;
mod quota;
mod report;
mod runner;
mod sandbox;
mod store;
mod tenants;
pub mod text;

pub use cache::default_cache_dir;
pub use collect::{MAX_OUTPUTS, OutputFile};
pub use component::{BUNDLED_PIPELINE, Component};
pub use deliver::{Delivered, Destination};
pub use error::{DeliveryError, LimitHit, LimitName, Outcome, Remedy, RunError};
pub use exec::{Command, Exec, ExecError, ExecOutcome, OutputSink, PROGRAM_ROOT};
pub use guest::{GUEST_INPUT_DIR, GUEST_OUTPUT_DIR};
pub use invocation::{Input, Invocation};
pub use invoke::{RunOutcome, Timings};
pub use ledger::Usage as SandboxUsage;
pub use limits::{ByteSize, Limits, ParseFigureError, parse_duration};
pub use progress::Progress;
pub use quota::MAX_OPEN_LISTINGS;
pub use report::{ReasonCount, RegionTotal, Report};
pub use runner::{DESCRIPTORS_PER_INVOCATION, HOST_DESCRIPTORS_PER_INVOCATION, PROCESS_RESERVE, Runner, RunnerConfig};
pub use sandbox::{MEMORY_ROOT_SETTING, SANDBOX_ROOT_SETTING, SandboxRoot, Sweep, sweep_roots};
pub use store::MAX_OPEN_HANDLES;
pub use tenants::MAX_IDLE_TENANTS;
