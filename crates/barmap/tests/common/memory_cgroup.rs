//! A fresh cgroup-v1 memory cgroup for a test that may allocate much, so
//! that a regression is stopped by the cgroup's limit instead of taking the
//! machine's memory. Shared by the tests of several crates (included with
//! `#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A memory cgroup below this process's own; removed when dropped (after
/// the processes in it have exited).
pub struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// Makes a cgroup of `limit` bytes named for `tag`, this process and a
    /// counter; `None` where that cannot be done (not root, no cgroup v1
    /// memory controller).
    pub fn new(tag: &str, limit: u64) -> Option<MemoryCgroup> {
        static N: AtomicU32 = AtomicU32::new(0);
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })?;
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new("/sys/fs/cgroup/memory")
            .join(path.trim_start_matches('/'))
            .join(format!("{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let cgroup = MemoryCgroup { dir };
        std::fs::write(cgroup.dir.join("memory.limit_in_bytes"), limit.to_string()).ok()?;
        Some(cgroup)
    }

    /// Makes `cmd`'s process join this cgroup before it execs.
    pub fn confine(&self, cmd: &mut Command) {
        let procs = std::ffi::CString::new(format!("{}/cgroup.procs", self.dir.display())).unwrap();
        // SAFETY: the closure runs in the forked child before exec and
        // calls only async-signal-safe functions (open, write, close) on
        // data prepared before the fork.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0\n".as_ptr().cast(), 2) != 2 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
