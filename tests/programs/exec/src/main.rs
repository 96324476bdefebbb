//! `wasi_probe MODE [ARGS...]`: one ordinary WASI program for `host exec`'s
//! tests, built from the same source as a preview1 core module and as a
//! `wasi:cli/command` component, so every behaviour is checked for both
//! kinds. Each mode prints what a test compares and exits with a code that
//! says whether what it saw was right (0) or not (`WRONG`).
//!
//! Modes: `args`, `env`, `exit N` (`std::process::exit`), `exit-with-code N`
//! (WASI 0.2's `exit-with-code`; preview1's `proc_exit`), `leave-link`, `stdin`, `clocks-random`, `preopens`,
//! `walk` (a seeded folder, with renames, hard links and symlinks inside it),
//! and the attacks `disk-bomb`, `file-bomb`, `folder-bomb`, `memory-bomb`,
//! `spin`, `sleep MS`, `stdout-flood BYTES`, `stderr-flood BYTES`, `trap`.

#[cfg(target_os = "wasi")]
mod probe;

#[cfg(target_os = "wasi")]
fn main() -> std::process::ExitCode {
    probe::main()
}

/// Built for the host (the workspace's clippy and tests do), it only says
/// what it is for.
#[cfg(not(target_os = "wasi"))]
fn main() -> std::process::ExitCode {
    eprintln!("wasi_probe is a WASI program: build it for wasm32-wasip1 or wasm32-wasip2");
    std::process::ExitCode::FAILURE
}
