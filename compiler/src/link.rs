//! Linking an emitted object with the runtime library into an executable, through the system C
//! compiler (`$CC`, default `cc`). The runtime library is built with the compiler and embedded in
//! it. The executable appears at its path only when linking succeeded.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

/// The static library with the executables' `main` (see `runtime/main`).
const RUNTIME_LIB: &[u8] = include_bytes!(env!("INCEPTC_RUNTIME_LIB"));

/// The system libraries the runtime library needs, libgcc linked statically so that the
/// executable depends on the C library family alone.
const SYSTEM_LIBS: &[&str] = &[
    "-static-libgcc",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// Why an executable could not be linked.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot run the C compiler `{cc}` to link (set CC to another): {source}")]
    NoCompiler { cc: String, source: std::io::Error },
    #[error("linking {path} failed:\n{stderr}")]
    Failed { path: String, stderr: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LinkError + '_ {
    move |source| LinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `out` atomically (a temporary file beside it, renamed into place), with mode
/// `mode`.
pub fn write_file(out: &Path, bytes: &[u8], mode: u32) -> Result<(), LinkError> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".inceptc-")
        .tempfile_in(dir)
        .map_err(io(out))?;
    tmp.write_all(bytes).map_err(io(out))?;
    set_mode(tmp.path(), mode).map_err(io(out))?;
    tmp.persist(out).map_err(|e| io(out)(e.error))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Links `object` with the runtime into the executable `out`.
pub fn link(object: &[u8], out: &Path) -> Result<(), LinkError> {
    let work = tempfile::tempdir().map_err(io(Path::new("a temporary directory")))?;
    let obj = work.path().join("model.o");
    let lib = work.path().join("libinceptc_main.a");
    std::fs::write(&obj, object).map_err(io(&obj))?;
    std::fs::write(&lib, RUNTIME_LIB).map_err(io(&lib))?;
    let exe = work.path().join("model");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = Command::new(&cc)
        .arg(&obj)
        .arg(&lib)
        .arg("-o")
        .arg(&exe)
        .arg("-Wl,--gc-sections")
        .args(SYSTEM_LIBS)
        .output()
        .map_err(|source| LinkError::NoCompiler {
            cc: cc.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(LinkError::Failed {
            path: out.display().to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let bytes = std::fs::read(&exe).map_err(io(&exe))?;
    write_file(out, &bytes, 0o755)
}
