//! Links the model object that `inceptc compile --emit lib -o DIR` wrote into DIR, named by the
//! environment variable INCEPTC_MODEL_DIR.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=INCEPTC_MODEL_DIR");
    let Some(dir) = std::env::var_os("INCEPTC_MODEL_DIR") else {
        panic!("set INCEPTC_MODEL_DIR to the directory `inceptc compile --emit lib -o DIR` wrote");
    };
    let object = Path::new(&dir).join("inceptc_model.o");
    assert!(object.is_file(), "{} is missing", object.display());
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rustc-link-arg-bins={}", object.display());
}
