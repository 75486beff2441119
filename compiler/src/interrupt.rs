//! An interrupted command leaves nothing behind. A command that writes files calls [`install`];
//! from then on SIGINT, SIGTERM or SIGHUP stop the C compiler it runs, remove its working
//! directories and the outputs it has already put in place, and end the process by the signal.
//!
//! Files are written in a [`Workspace`], a directory beside their final place, and renamed there
//! (atomic, and never a copy across filesystems). The registry of what to remove is updated under
//! the same lock as the renames, so an interruption sees either the file in the workspace or the
//! file in place, never neither. When the command's outputs are complete, [`finish`] keeps them;
//! when it fails, [`abandon`] removes them as an interruption would.
//! (SIGKILL cannot be caught: after it, a `.inceptc-*` directory may remain.)

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What the running command would leave behind if it stopped now.
struct Registry {
    /// Working directories, removed with their contents.
    workspaces: Vec<PathBuf>,
    /// Outputs already renamed into place.
    outputs: Vec<PathBuf>,
    /// Directories the command created for its outputs, deepest last; removed if empty.
    created: Vec<PathBuf>,
    /// The process group of a running C compiler.
    child_group: Option<i32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    workspaces: Vec::new(),
    outputs: Vec::new(),
    created: Vec::new(),
    child_group: None,
});

fn registry() -> MutexGuard<'static, Registry> {
    // A panic elsewhere while holding the lock leaves the lists consistent (each change is one
    // push or retain).
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// Stops the C compiler and removes everything registered.
    fn undo(&mut self) {
        if let Some(group) = self.child_group.take() {
            // SAFETY: kill(2) on a process group this process created; no memory is involved.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            // The group is gone once the compiler's children are reaped (the command's own
            // thread reaps the compiler); until then a linker could still write a file.
            for _ in 0..200 {
                // SAFETY: as above; signal 0 only tests for existence.
                if unsafe { libc::kill(-group, 0) } != 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        for dir in &self.workspaces {
            // A file appearing while the directory is removed makes one attempt fail.
            for _ in 0..5 {
                if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
                    break;
                }
            }
        }
        for file in &self.outputs {
            let _ = std::fs::remove_file(file);
        }
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP remove what the command wrote, then end the process by the
/// same signal. Idempotent.
pub fn install() -> io::Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // Held until the process ends: no rename or new workspace after the clean-up.
                let mut registry = registry();
                registry.undo();
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        })?;
    let _ = INSTALLED.set(());
    Ok(())
}

/// The command's outputs are complete: an interruption from now on leaves them.
pub fn finish() {
    let mut registry = registry();
    registry.outputs.clear();
    registry.created.clear();
}

/// The command failed: removes its outputs (and stops its C compiler) as an interruption would.
pub fn abandon() {
    registry().undo();
}

/// [`finish`] when the command succeeded, [`abandon`] when it failed; returns `result`.
pub fn settle<T, E>(result: Result<T, E>) -> Result<T, E> {
    match result {
        Ok(_) => finish(),
        Err(_) => abandon(),
    }
    result
}

/// `std::fs::create_dir_all`, registering each directory it creates.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        let mut registry = registry();
        match std::fs::create_dir(&d) {
            Ok(()) => registry.created.push(d),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A working directory `.inceptc-PID-N` in the folder of a command's outputs, removed when
/// dropped or when the command is interrupted.
pub struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    /// A new, empty workspace in `folder` (`""` is the current directory).
    pub fn new_in(folder: &Path) -> io::Result<Workspace> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let folder = match folder.as_os_str().is_empty() {
            true => Path::new("."),
            false => folder,
        };
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = folder.join(format!(".inceptc-{}-{n}", std::process::id()));
            // Registered before it exists: an interruption between the two removes nothing
            // that is not ours (the name holds our process id).
            let mut registry = registry();
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    registry.workspaces.push(dir.clone());
                    return Ok(Workspace { dir });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The workspace beside `output`: in its folder.
    pub fn beside(output: &Path) -> io::Result<Workspace> {
        Workspace::new_in(output.parent().unwrap_or(Path::new("")))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The path of `name` in the workspace.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Renames `name` from the workspace to `output`, which an interruption before [`finish`]
    /// then removes.
    pub fn persist(&self, name: &str, output: &Path) -> io::Result<()> {
        let mut registry = registry();
        std::fs::rename(self.join(name), output)?;
        registry.outputs.push(output.to_path_buf());
        Ok(())
    }

    /// Runs `command` to completion in its own process group, which an interruption kills; its
    /// temporary files go to the workspace.
    pub fn run(&self, command: &mut std::process::Command) -> io::Result<std::process::Output> {
        use std::os::unix::process::CommandExt as _;
        command
            .env("TMPDIR", &self.dir)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = {
            let mut registry = registry();
            let child = command.spawn()?;
            registry.child_group = Some(child.id() as i32);
            child
        };
        let output = child.wait_with_output();
        registry().child_group = None;
        output
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let mut registry = registry();
        let _ = std::fs::remove_dir_all(&self.dir);
        registry.workspaces.retain(|d| d != &self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_is_removed_when_dropped_and_keeps_what_it_persisted() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("a").join("b");
        create_dir_all(&out).unwrap();
        {
            let ws = Workspace::beside(&out.join("x")).unwrap();
            assert_eq!(ws.path().parent(), Some(out.as_path()));
            std::fs::write(ws.join("x"), b"1").unwrap();
            std::fs::write(ws.join("scratch"), b"2").unwrap();
            ws.persist("x", &out.join("x")).unwrap();
            assert!(registry().outputs.contains(&out.join("x")));
        }
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x"]);
        assert!(registry().workspaces.is_empty());
        let created = registry().created.clone();
        assert_eq!(created, [root.path().join("a"), out.clone()]);
        // What an interruption does before `finish`.
        let mut undo = Registry {
            workspaces: vec![],
            outputs: vec![out.join("x")],
            created,
            child_group: None,
        };
        undo.undo();
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        finish();
        assert!(registry().outputs.is_empty() && registry().created.is_empty());
    }
}
