//! A compile stopped by SIGINT, SIGTERM or SIGHUP, at any stage (linking included), leaves no
//! file behind: not in the output folder, not in the temporary directory, and no linker running.
//! (Compiles a network: release mode only.)

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// When, after its stage line, a compile is interrupted.
#[derive(Clone, Copy, Debug)]
enum When {
    /// After a delay, a small part of the stage's length on a fast machine (a compile of this
    /// network takes about a second: its code generation took 0.23 s on one CI machine, so a
    /// delay of 300 ms once let the compile finish first).
    After(Duration),
    /// As soon as a file whose name starts with this appears in a `.inceptc-*` workspace in the
    /// folder (the signal then lands while that stage is surely running).
    Seen(&'static str, &'static str),
    /// As soon as the output exists (a listing's folder, made before its kernels are generated).
    Made,
}

/// Whether a workspace in `folder` holds a file named `prefix…`.
fn seen(folder: &Path, prefix: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with(".inceptc-")
            && std::fs::read_dir(e.path()).is_ok_and(|mut files| {
                files.any(|f| f.is_ok_and(|f| f.file_name().to_string_lossy().starts_with(prefix)))
            })
    })
}

/// `inceptc compile` of Inception-ResNet-v1 at 80×80, emitting `emit` to `out`, with its temporary
/// directory `tmp`.
fn compile(out: &Path, tmp: &Path, emit: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_inceptc"));
    command
        .args([
            "compile",
            "--model",
            "inception-resnet-v1",
            "--image-size",
            "80",
        ])
        .args(["--emit", emit, "-o"])
        .arg(out)
        .env("TMPDIR", tmp);
    command
}

/// Starts a compile of `emit` to `out`, waits for the stage line `stage` in its log, then for
/// `when`, and sends `signal`. Returns the status and the log.
fn interrupt(
    out: &Path,
    tmp: &Path,
    emit: &str,
    stage: &str,
    when: When,
    signal: i32,
) -> (std::process::ExitStatus, String) {
    let mut child = compile(out, tmp, emit)
        .env("INCEPTC_LOG", "inceptc=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("inceptc starts");
    let mut log = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains(stage) {
            break;
        }
    }
    assert!(log.contains(stage), "no stage `{stage}` in:\n{log}");
    match when {
        When::After(delay) => std::thread::sleep(delay),
        When::Made => {
            let started = Instant::now();
            while !out.exists() {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no {} after 60 s:\n{log}",
                    out.display()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        When::Seen(folder, prefix) => {
            let folder = out.parent().unwrap().join(folder);
            let started = Instant::now();
            while !seen(&folder, prefix) {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no {prefix}… in a workspace in {}:\n{log}",
                    folder.display()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    // SAFETY: kill(2) on our own child; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    for line in lines {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the compile took {:?} to stop",
        started.elapsed()
    );
    (status, log)
}

#[test]
#[cfg_attr(debug_assertions, ignore = "compiles a network: cargo test --release")]
fn an_interrupted_compile_leaves_no_file_behind() {
    let root = tempfile::tempdir().unwrap();
    let (dir, tmp) = (root.path().join("out"), root.path().join("tmp"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(dir.join("keep.txt"), b"the user's file").unwrap();
    let ms = |n| When::After(Duration::from_millis(n));
    for (emit, stage, when, signal) in [
        ("exe", "building the graph", ms(0), libc::SIGINT),
        ("exe", "running the passes", ms(40), libc::SIGTERM),
        ("exe", "generating code", ms(20), libc::SIGHUP),
        // Writing the object and the runtime library.
        ("exe", "linking", When::Seen("", "kernels.o"), libc::SIGTERM),
        // The C compiler runs (in its own process group: the terminal's Ctrl-C does not reach
        // it), with its temporary files in the workspace; then the linker writes the executable.
        ("exe", "linking", When::Seen("", "cc"), libc::SIGINT),
        ("exe", "linking", When::Seen("", "model"), libc::SIGTERM),
        // A library is three files in a folder that the compile creates.
        ("lib", "generating code", ms(20), libc::SIGINT),
        ("lib", "writing", When::Seen("lib", ""), libc::SIGTERM),
        // The listing's folder is made, then every kernel is generated into it: a signal as
        // soon as the folder is there lands while the code is generated.
        ("asm", "running the passes", When::Made, libc::SIGTERM),
    ] {
        let out = match emit {
            "exe" => dir.join("v1"),
            _ => dir.join("new").join(emit),
        };
        let (status, log) = interrupt(&out, &tmp, emit, stage, when, signal);
        let what = format!("{emit}, signal {signal} at {when:?} after `{stage}`");
        assert_eq!(status.signal(), Some(signal), "{what}: {status:?}\n{log}");
        // Nothing the compile started may still write: check again after a while.
        for wait in [0, 1000] {
            std::thread::sleep(Duration::from_millis(wait));
            assert_eq!(names(&dir), ["keep.txt"], "{what}:\n{log}");
            assert_eq!(names(&tmp), Vec::<String>::new(), "{what}:\n{log}");
        }
        eprintln!("{what}: nothing left");
    }
    // Uninterrupted, the same compile leaves its executable and nothing else.
    let out = dir.join("v1");
    let status = compile(&out, &tmp, "exe").arg("-q").status().unwrap();
    assert!(status.success());
    assert_eq!(names(&dir), ["keep.txt", "v1"]);
    assert_eq!(names(&tmp), Vec::<String>::new());
}
