//! Builds every example of `test-programs` (`tests/programs/examples/`) for
//! wasm32-wasip2 (a nested cargo into `OUT_DIR`) and writes
//! `$OUT_DIR/components.rs`: one `pub const NAME: &str` per component,
//! holding its absolute path, and `ALL`; then every program of
//! `exec-programs` (`tests/programs/exec/`) twice, as a preview1 core module
//! (`NAME_MODULE`) and as a `wasi:cli/command` component (`NAME_COMMAND`).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use wasm_build::{Artifacts, GuestBuild, PREVIEW1_TARGET, TARGET, components_in};

fn main() {
    // The nested build's dep-info covers the sources it compiled; these catch
    // what it cannot: a new example, a changed manifest (`tests/programs/`)
    // or WIT file (`wit/` at the top of the workspace).
    for path in ["../Cargo.toml", "../src", "../examples", "../exec", "../../../wit"] {
        println!("cargo:rerun-if-changed={path}");
    }

    let dir =
        GuestBuild { package: "test-programs", release: false, artifacts: Artifacts::Examples, target: TARGET }.run();
    let components = components_in(&dir);
    assert!(!components.is_empty(), "no component was built in {}", dir.display());

    let mut code = String::new();
    let mut all = String::new();
    for (name, path) in &components {
        let path = path.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", path.display()));
        let constant = name.to_uppercase();
        writeln!(code, "/// Path of the `{name}` component (see `tests/programs/examples/{name}.rs`).")
            .expect("writing to a String cannot fail");
        writeln!(code, "pub const {constant}: &str = {path:?};").expect("writing to a String cannot fail");
        writeln!(all, "    ({name:?}, {constant}),").expect("writing to a String cannot fail");
    }
    writeln!(code, "/// Every component: `(name, path)`, sorted by name.").expect("writing to a String cannot fail");
    writeln!(code, "pub const ALL: &[(&str, &str)] = &[\n{all}];").expect("writing to a String cannot fail");

    for (target, suffix, what) in
        [(PREVIEW1_TARGET, "MODULE", "WASI preview1 core module"), (TARGET, "COMMAND", "wasi:cli/command component")]
    {
        let dir = GuestBuild { package: "exec-programs", release: false, artifacts: Artifacts::Bins, target }.run();
        let programs = components_in(&dir);
        assert!(!programs.is_empty(), "no program was built in {}", dir.display());
        for (name, path) in &programs {
            let path = path.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", path.display()));
            let constant = format!("{}_{suffix}", name.to_uppercase());
            writeln!(code, "/// Path of `exec-programs`' `{name}` built as a {what}.")
                .expect("writing to a String cannot fail");
            writeln!(code, "pub const {constant}: &str = {path:?};").expect("writing to a String cannot fail");
        }
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo for build scripts"));
    let target = out_dir.join("components.rs");
    fs::write(&target, code).unwrap_or_else(|err| panic!("cannot write {}: {err}", target.display()));
}
