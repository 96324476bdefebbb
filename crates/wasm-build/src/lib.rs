//! Builds components from this workspace's guest crates inside a build script,
//! the way wasmtime builds its test programs: a nested `cargo build --target
//! wasm32-wasip2` with its own target directory under `OUT_DIR`, so the outer
//! build's lock, flags and wrappers never leak into it.
//!
//! Only build scripts use this crate, so failures panic with a message that
//! says what to do: a panic is how a build script reports an error.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target components are built for: WASI 0.2.
pub const TARGET: &str = "wasm32-wasip2";
/// The target of WASI preview1 core modules (`host exec`'s other kind).
pub const PREVIEW1_TARGET: &str = "wasm32-wasip1";

/// Which of a package's targets to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifacts {
    /// Its library (a component with `crate-type = ["cdylib"]`).
    Lib,
    /// Its examples, one `.wasm` each.
    Examples,
    /// Its binaries, one `.wasm` program each.
    Bins,
}

/// What to build: one package of the workspace, in one profile.
#[derive(Debug)]
pub struct GuestBuild<'a> {
    /// The package name, as `cargo build -p` takes it.
    pub package: &'a str,
    /// `true` for `--release` (the embedded pipeline), `false` for debug.
    pub release: bool,
    /// What to build of the package.
    pub artifacts: Artifacts,
    /// The target: [`TARGET`] or [`PREVIEW1_TARGET`].
    pub target: &'a str,
}

impl GuestBuild<'_> {
    /// Runs the nested build and returns the directory holding the `.wasm` files
    /// (`examples/` inside it when `examples` is set). Emits `rerun-if-changed`
    /// for every source file cargo's dep-info names.
    ///
    /// # Panics
    ///
    /// When cargo cannot be started or the build fails: the build script's way
    /// to fail the outer build with cargo's own error output above it.
    #[must_use]
    pub fn run(&self) -> PathBuf {
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo for build scripts"));
        let target_dir = out_dir.join("wasm-target");
        let target = self.target;
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

        let mut cmd = Command::new(cargo);
        cmd.arg("build")
            .arg("--target")
            .arg(self.target)
            .arg("-p")
            .arg(self.package)
            .env("CARGO_TARGET_DIR", &target_dir)
            // The outer build's flags, wrappers (clippy-driver) and profile
            // overrides are for the host target, not for the guests.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_MAKEFLAGS")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS");
        if self.release {
            cmd.arg("--release");
        }
        cmd.arg(match self.artifacts {
            Artifacts::Lib => "--lib",
            Artifacts::Examples => "--examples",
            Artifacts::Bins => "--bins",
        });
        let status = cmd.status().unwrap_or_else(|err| panic!("cannot start cargo to build {}: {err}", self.package));
        assert!(
            status.success(),
            "building {} for {target} failed ({status}); if the target is missing, run `rustup target add {target}`",
            self.package
        );

        let mut wasm_dir = target_dir.join(target).join(if self.release { "release" } else { "debug" });
        if self.artifacts == Artifacts::Examples {
            wasm_dir.push("examples");
        }
        for dep_info in dep_info_files(&wasm_dir) {
            for source in sources_in_dep_info(&dep_info) {
                println!("cargo:rerun-if-changed={}", source.display());
            }
        }
        for settings in build_settings() {
            println!("cargo:rerun-if-changed={}", settings.display());
        }
        wasm_dir
    }
}

/// Files that change how a guest is built without being among its sources:
/// the manifests and lock file (profiles, dependencies) and cargo's
/// configuration (the wasm32 `rustflags`), from the package up to the root.
fn build_settings() -> Vec<PathBuf> {
    let Some(manifest_dir) = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else { return Vec::new() };
    manifest_dir
        .ancestors()
        .flat_map(|dir| ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"].map(|name| dir.join(name)))
        .filter(|path| path.is_file())
        .collect()
}

fn dep_info_files(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()));
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "d"))
        .collect()
}

/// The prerequisites of a Makefile-style dep-info file: `target: dep dep ...`,
/// with spaces in paths escaped as `\ `.
fn sources_in_dep_info(dep_info: &Path) -> BTreeSet<PathBuf> {
    let text = fs::read_to_string(dep_info).unwrap_or_else(|err| panic!("cannot read {}: {err}", dep_info.display()));
    let mut sources = BTreeSet::new();
    for line in text.lines() {
        let Some((_, deps)) = line.split_once(": ") else { continue };
        let mut current = String::new();
        let mut chars = deps.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&' ') => {
                    current.push(' ');
                    chars.next();
                }
                ' ' => {
                    if !current.is_empty() {
                        sources.insert(PathBuf::from(std::mem::take(&mut current)));
                    }
                }
                _ => current.push(c),
            }
        }
        if !current.is_empty() {
            sources.insert(PathBuf::from(current));
        }
    }
    sources
}

/// Names of the `.wasm` files in `dir`, without the extension, sorted. Skips
/// the hashed copies cargo leaves beside examples (`probe-0123456789abcdef.wasm`).
///
/// # Panics
///
/// When `dir` cannot be listed.
#[must_use]
pub fn components_in(dir: &Path) -> Vec<(String, PathBuf)> {
    let entries = fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()));
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .filter_map(|path| Some((path.file_stem()?.to_str()?.to_owned(), path)))
        .filter(|(name, _)| !has_cargo_hash(name))
        .collect();
    found.sort();
    found
}

/// `name-<16 hex digits>`: the metadata hash cargo appends to the copies it
/// keeps in its own layout.
fn has_cargo_hash(stem: &str) -> bool {
    stem.rsplit_once('-').is_some_and(|(_, hash)| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}
