//! Integration tests of the host, one binary with modules (as wasmtime does):
//! the real pipeline component, the sandbox's isolation, the CLI, and the
//! hostile test programs of `test-programs/`.

mod accounting;
mod cli;
mod crash;
mod delivery;
mod embedding;
mod guest_text;
mod hostile;
mod inputs;
mod isolation;
mod limits;
mod pipeline;
mod removal;
mod roots;
mod util;
