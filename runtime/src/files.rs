//! Writing files so that a failed or interrupted run never leaves a partial one: a temporary file
//! beside the target, renamed into place when complete. The compiler (listings, objects,
//! executables) and the runtime (`.npy` outputs) all write through [`write_with`].

use std::fs::File;
use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, None, |file| file.write_all(bytes))
}

/// Calls `write` on a temporary file beside `path`, gives it `mode` (Unix permissions) when set,
/// and renames it into place; on any error the temporary file is removed and `path` untouched.
pub fn write_with(
    path: &Path,
    mode: Option<u32>,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".inceptc-")
        .tempfile_in(dir)?;
    write(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
