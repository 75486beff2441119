//! Linking an emitted object with the runtime library into an executable, through the system C
//! compiler (`$CC`, default `cc`). The runtime library is built with the compiler and embedded in
//! it. The executable appears at its path only when linking succeeded.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use crate::interrupt::Workspace;

/// The static library with the executables' `main` (see `runtime/main`).
const RUNTIME_LIB: &[u8] = include_bytes!(env!("INCEPTC_RUNTIME_LIB"));

/// The system libraries the runtime library needs, libgcc linked statically so that the
/// executable depends on the C library family alone.
pub const SYSTEM_LIBS: &[&str] = &[
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
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The C compiler did not start.
    #[error("cannot run the C compiler `{cc}` to link (set CC to another): {source}")]
    NoCompiler {
        /// The command.
        cc: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// Linking (or stripping) failed.
    #[error("linking {path} failed:\n{stderr}")]
    Failed {
        /// The executable.
        path: String,
        /// What the tool printed.
        stderr: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LinkError + '_ {
    move |source| LinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `out` with mode `mode`: to a workspace beside it, then renamed into place.
pub fn write_file(out: &Path, bytes: &[u8], mode: u32) -> Result<(), LinkError> {
    let work = Workspace::beside(out).map_err(io(out))?;
    write_through(&work, out, bytes, mode)
}

/// Writes `bytes` to `out` through `work`, a workspace in `out`'s folder.
pub fn write_through(
    work: &Workspace,
    out: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<(), LinkError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("output");
    let path = work.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.flush()
        })
        .map_err(io(out))?;
    work.persist(name, out).map_err(io(out))
}

/// Links `object` with the runtime into the executable `out`, without debug sections or the
/// runtime's symbols (a few MiB that a deployed model does not need).
/// The work happens in a workspace beside `out` (the C compiler's temporary files too), so the
/// executable is renamed into place, and an interruption leaves nothing (see `interrupt`).
pub fn link(object: &[u8], out: &Path) -> Result<(), LinkError> {
    let work = Workspace::beside(out).map_err(io(out))?;
    let obj = work.join("kernels.o");
    let lib = work.join("libinceptc_main.a");
    std::fs::write(&obj, object).map_err(io(&obj))?;
    std::fs::write(&lib, RUNTIME_LIB).map_err(io(&lib))?;
    let exe = "model";
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = work
        .run(
            Command::new(&cc)
                .arg(&obj)
                .arg(&lib)
                .arg("-o")
                .arg(work.join(exe))
                .arg("-Wl,--gc-sections")
                .arg("-Wl,--strip-debug")
                .args(SYSTEM_LIBS),
        )
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
    strip_runtime_symbols(&work, exe, out)?;
    work.persist(exe, out).map_err(io(out))
}

/// The symbols an executable keeps: the model object's (kernels, register tiles, Winograd
/// transforms, the model's data and `main`), so that profilers name the kernels. Patterns for
/// `objcopy --wildcard`.
const KEPT_SYMBOLS: &[&str] = &[
    "main",
    "inceptc_*",
    "k[0-9]*_*",
    "tile[0-9]*_*",
    "transform*",
];

/// Removes the symbol table entries of the runtime library and the C library (the Rust names
/// are most of it) from `name` in `work`, with `$OBJCOPY` (default `objcopy`, from binutils like
/// the linker). Without objcopy the executable keeps them, with a warning.
fn strip_runtime_symbols(work: &Workspace, name: &str, out: &Path) -> Result<(), LinkError> {
    let objcopy = std::env::var("OBJCOPY").unwrap_or_else(|_| "objcopy".into());
    let mut command = Command::new(&objcopy);
    command.args(["--wildcard", "--strip-all"]);
    for symbol in KEPT_SYMBOLS {
        command.arg(format!("--keep-symbol={symbol}"));
    }
    match work.run(command.arg(work.join(name))) {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(LinkError::Failed {
            path: out.display().to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::warn!(
                "no `{objcopy}` (set OBJCOPY): {} keeps the runtime's symbols",
                out.display()
            );
            Ok(())
        }
        Err(source) => Err(LinkError::Io {
            path: objcopy,
            source,
        }),
    }
}

/// The files `--emit lib` writes: the model object (kernels, weights, description), the runtime
/// library (unchanged: rewriting a Rust archive with `ar` trips over its LLVM bitcode members),
/// and the C header.
pub const MODEL_OBJECT: &str = "inceptc_model.o";
/// The runtime library `--emit lib` writes.
pub const RUNTIME_LIBRARY: &str = "libinceptc_runtime.a";
/// The C header `--emit lib` writes.
pub const HEADER: &str = "inceptc_model.h";

/// Writes the files of `--emit lib` into `dir`.
pub fn library(object: &[u8], dir: &Path, header: &str) -> Result<(), LinkError> {
    crate::interrupt::create_dir_all(dir).map_err(io(dir))?;
    let work = Workspace::new_in(dir).map_err(io(dir))?;
    for (name, bytes) in [
        (MODEL_OBJECT, object),
        (RUNTIME_LIBRARY, RUNTIME_LIB),
        (HEADER, header.as_bytes()),
    ] {
        write_through(&work, &dir.join(name), bytes, 0o644)?;
    }
    Ok(())
}

/// The C header of a library compiled for `model`: the API of `runtime/main/src/embed.rs` and the
/// model's shapes.
pub fn header(model: &str, input: [usize; 4], output: &[usize]) -> String {
    let dims = |d: &[usize]| {
        d.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"/* {model} compiled by inceptc: an object with the kernels and weights, and the runtime.
 *
 * Link:  cc app.c {MODEL_OBJECT} {RUNTIME_LIBRARY} {libs}
 *
 * Input:  float32 NCHW [{input_dims}]   Output: float32 [{output_dims}]
 *
 * One program embeds one model (the symbols are not prefixed). Contexts are independent; use
 * one per thread. Functions that fail return NULL or -1 and set inceptc_last_error().
 */
#ifndef INCEPTC_MODEL_H
#define INCEPTC_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define INCEPTC_MODEL "{model}"
#define INCEPTC_INPUT_LEN {input_len}
#define INCEPTC_OUTPUT_LEN {output_len}

typedef struct inceptc_context inceptc_context;

/* A context running on `threads` threads (0: all cores); NULL if the CPU lacks AVX2 or FMA, the
 * model data is corrupt or memory is short. */
inceptc_context *inceptc_create(int threads);

/* Writes the input shape [N, C, H, W] to shape[0..4]; returns 4, or -1. */
int inceptc_input_shape(int64_t shape[4]);

/* Writes the output shape to shape[0..rank]; returns the rank (2: [N, K]), or -1. */
int inceptc_output_shape(int64_t shape[4]);

/* Runs the model on `input` (input_len floats) and writes output_len floats to `output`;
 * returns 0, or -1 (wrong lengths, NULL buffers). */
int inceptc_run(inceptc_context *context, const float *input, size_t input_len, float *output,
                size_t output_len);

/* Frees a context; NULL is ignored. */
void inceptc_destroy(inceptc_context *context);

/* The last failure on this thread, "" if none; valid until the next call. */
const char *inceptc_last_error(void);

#ifdef __cplusplus
}}
#endif

#endif
"#,
        libs = SYSTEM_LIBS.join(" "),
        input_dims = dims(&input),
        output_dims = dims(output),
        input_len = input.iter().product::<usize>(),
        output_len = output.iter().product::<usize>(),
    )
}
