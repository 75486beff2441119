//! Builds the static library that every emitted executable links (`inceptc-main`, release, no
//! debug info, LTO) with a nested Cargo into `target/inceptc-runtime/`, and hands its path to the
//! compiler, which embeds it (so that `inceptc` can link executables wherever it is copied).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by Cargo"));
    let root = manifest
        .parent()
        .expect("compiler/ lies in the workspace")
        .to_path_buf();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by Cargo"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out; share one nested build per target dir.
    let target = out
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out.clone())
        .join("inceptc-runtime");
    for watched in [
        "runtime/src",
        "runtime/main/src",
        "runtime/Cargo.toml",
        "runtime/main/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--locked", "-p", "inceptc-main"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        // Every executable carries this library: link-time optimization removes the code no
        // executable reaches, across crates (README: the runtime's share).
        .env("CARGO_PROFILE_RELEASE_LTO", "fat")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env_remove("CARGO_TARGET_DIR")
        // Under `cargo clippy` these would lint the nested build too; the outer run lints it.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .status()
        .expect("cannot run cargo to build the runtime library");
    assert!(
        status.success(),
        "building the runtime library inceptc-main failed"
    );
    let lib = target.join("release").join("libinceptc_main.a");
    let copy = out.join("libinceptc_main.a");
    std::fs::copy(&lib, &copy).expect("the runtime library was built");
    println!("cargo:rustc-env=INCEPTC_RUNTIME_LIB={}", copy.display());
}
