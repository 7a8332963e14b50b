//! One scratch directory per test process (`$TMPDIR/barmap-tests-PID`,
//! 0700), removed with everything in it when the process exits, so that
//! no test leaves its sockets and directories behind. Shared by the tests
//! of several crates (included with `#[path]`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The process's scratch directory, made on first use.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::DirBuilderExt;
        let d = std::env::temp_dir().join(format!("barmap-tests-{}", std::process::id()));
        // A leftover of an earlier process with this pid is ours to drop.
        let _ = std::fs::remove_dir_all(&d);
        std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        extern "C" fn remove_scratch() {
            if let Some(d) = DIR.get() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        // SAFETY: registers a function without arguments that only removes
        // a directory; it runs once, at exit.
        unsafe { libc::atexit(remove_scratch) };
        d
    })
}

/// A fresh directory `name` in the scratch directory, with `mode`.
pub fn scratch_dir(name: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    d
}
