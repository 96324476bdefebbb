//! Integration tests of the `orders-host` package, one binary with modules
//! (as wasmtime does), at the top of the workspace beside the test guests
//! they run (`tests/programs/`, built from source by
//! `tests/programs/artifacts/`). `limits` has one test per limit of the
//! README's table; `hostile`, `accounting`, `delivery` and `isolation` are
//! attacks; `cli`, `roots` and `crash` run the `host` binary
//! (`CARGO_BIN_EXE_host`, so the `cli` feature is required), and `serve`
//! runs `host serve` as a process and talks to it over loopback; `embedding`
//! the library as a service would; `util` holds the fixtures, and
//! `TestHost::assert_recovers` runs the bundled pipeline and the polite
//! `well_behaved` guest after each attack.

mod accounting;
mod cli;
mod crash;
mod delivery;
mod embedding;
mod exec;
mod guest_text;
mod hostile;
mod inputs;
mod isolation;
mod limits;
mod nats;
mod pipeline;
mod removal;
mod roots;
mod serve;
mod util;
