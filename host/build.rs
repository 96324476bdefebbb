//! Builds the reference pipeline (`guest/`) for wasm32-wasip2 and leaves it in
//! OUT_DIR, so the `host` binary embeds it: `host run orders.csv` needs no
//! other file, and no built `.wasm` is ever committed.

fn main() {
    let dir = wasm_build::GuestBuild {
        package: "orders-pipeline",
        release: true,
        artifacts: wasm_build::Artifacts::Lib,
        target: wasm_build::TARGET,
    }
    .run();
    let built = dir.join("orders_pipeline.wasm");
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set for build scripts"));
    std::fs::copy(&built, out_dir.join("orders_pipeline.wasm"))
        .unwrap_or_else(|err| panic!("cannot copy {}: {err}", built.display()));
}
