//! The one watcher of a process's served memory BARs: which client changed
//! a BAR's file, answered at once.
//!
//! A process has one inotify instance and one thread for all its BARs,
//! however many servers and devices it runs: the kernel allows a user 128
//! inotify instances in all (`fs.inotify.max_user_instances`), counted
//! across every process of that user, so an instance per BAR ran out as
//! soon as a few servers ran side by side (a device failed to start with
//! EMFILE). Watches are cheap (`max_user_watches` is in the hundreds of
//! thousands); each BAR's file gets one. If the process can get no
//! instance, or a file no watch, serving goes on and those BARs are
//! checked every [`BACKSTOP`] only; the degradation is logged.
//!
//! On an event for a file the thread calls that BAR's `Check::check`;
//! every [`BACKSTOP`] it checks every BAR regardless. A BAR's `Watch`
//! removes its watch when dropped (an inotify watch pins its inode: a
//! forgotten one would keep the BAR's memory alive).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How often every watched BAR is checked, events or not.
pub const BACKSTOP: Duration = Duration::from_secs(1);

/// What the watcher calls for a watched file.
pub(crate) trait Check: Send + Sync {
    /// Looks at the file and undoes what a client changed.
    fn check(&self);
}

struct Entry {
    /// The inotify watch descriptor, if the file has one.
    wd: Option<i32>,
    target: Weak<dyn Check>,
}

struct Watcher {
    /// `None` when the process could get no inotify instance.
    ino: Option<OwnedFd>,
    entries: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

static WATCHER: OnceLock<Watcher> = OnceLock::new();
static THREAD: Once = Once::new();

fn watcher() -> &'static Watcher {
    let w = WATCHER.get_or_init(|| Watcher {
        ino: match inotify_init() {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(
                    "memory BAR watcher: no inotify instance ({e}); BARs are checked every {BACKSTOP:?} only"
                );
                None
            }
        },
        entries: Mutex::new(HashMap::new()),
        next: AtomicU64::new(0),
    });
    THREAD.call_once(|| {
        if let Err(e) = std::thread::Builder::new()
            .name("barmap-bar-watch".into())
            .spawn(|| run(watcher()))
        {
            tracing::error!(
                "memory BAR watcher: no thread ({e}); sizes are set back only by revocation"
            );
        }
    });
    w
}

/// A BAR's registration with the process's watcher; dropping it removes
/// the file's watch.
#[derive(Debug)]
pub(crate) struct Watch {
    key: u64,
    by_event: bool,
}

impl Watch {
    /// Watches `fd`'s file for modification (through /proc/self/fd, the
    /// path whose opens raise inotify events), calling `target` on each
    /// event and every [`BACKSTOP`].
    pub(crate) fn new(fd: &OwnedFd, target: Weak<dyn Check>) -> Watch {
        let w = watcher();
        let wd = w.ino.as_ref().and_then(|i| match add_watch(i, fd) {
            Ok(wd) => Some(wd),
            Err(e) => {
                tracing::warn!(
                    "memory BAR watcher: no watch for a BAR ({e}); it is checked every {BACKSTOP:?} only"
                );
                None
            }
        });
        let key = w.next.fetch_add(1, Ordering::Relaxed);
        w.entries.lock().unwrap().insert(key, Entry { wd, target });
        Watch {
            key,
            by_event: wd.is_some(),
        }
    }

    /// Whether the kernel reports this file's changes (else it is only
    /// checked every [`BACKSTOP`]).
    pub(crate) fn by_event(&self) -> bool {
        self.by_event
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let w = watcher();
        let entry = w.entries.lock().unwrap().remove(&self.key);
        if let (Some(Entry { wd: Some(wd), .. }), Some(i)) = (entry, w.ino.as_ref()) {
            // SAFETY: removes a watch of our own inotify instance.
            unsafe { libc::inotify_rm_watch(i.as_raw_fd(), wd) };
        }
    }
}

/// `inotify_init1`, close-on-exec and non-blocking.
fn inotify_init() -> std::io::Result<OwnedFd> {
    // SAFETY: inotify_init1 returns a new fd, owned below.
    let i = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if i < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: i is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(i) })
}

/// Adds an `IN_MODIFY` watch on `fd`'s file; returns its descriptor.
fn add_watch(ino: &OwnedFd, fd: &OwnedFd) -> std::io::Result<i32> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: ino is our inotify fd; path is a valid C string.
    let wd = unsafe { libc::inotify_add_watch(ino.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) };
    if wd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(wd)
}

/// Gives the calling thread nice -10 where the process may (root or
/// CAP_SYS_NICE), so that a loaded machine delays its answer less; else
/// leaves it as it is. The thread only wakes for a client's change of a
/// file and once a [`BACKSTOP`], so it takes from others no more than the
/// tamperers' own calls.
fn raise_priority() {
    // SAFETY: gettid has no preconditions; setpriority of our own thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, -10);
    }
}

/// Waits at most `timeout` for `ino` to be readable.
fn readable(ino: &OwnedFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: ino.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
    // SAFETY: p is one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// What the pending events name: the watch descriptors, or `None` for
/// "check everything" (the queue overflowed).
fn pending(ino: &OwnedFd) -> Option<HashSet<i32>> {
    // u32s, for the alignment of `struct inotify_event`.
    let mut buf = [0u32; 1024];
    let mut wds = HashSet::new();
    loop {
        // SAFETY: reads into a local buffer of its size; ino is non-blocking.
        let n = unsafe { libc::read(ino.as_raw_fd(), buf.as_mut_ptr().cast(), 4096) };
        if n <= 0 {
            return Some(wds);
        }
        let words = &buf[..n as usize / 4];
        let mut at = 0;
        // struct inotify_event: wd, mask, cookie, len, then len bytes of name.
        while at + 4 <= words.len() {
            let (wd, mask, len) = (words[at] as i32, words[at + 1], words[at + 3] as usize);
            if mask & libc::IN_Q_OVERFLOW != 0 {
                return None;
            }
            wds.insert(wd);
            at += 4 + len.div_ceil(4);
        }
    }
}

/// The watcher's loop: runs for the life of the process.
fn run(w: &'static Watcher) {
    raise_priority();
    let mut full = Instant::now();
    loop {
        let named = match &w.ino {
            Some(i) if readable(i, BACKSTOP.saturating_sub(full.elapsed())) => pending(i),
            Some(_) => Some(HashSet::new()),
            None => {
                std::thread::sleep(BACKSTOP);
                None
            }
        };
        let all = named.is_none() || full.elapsed() >= BACKSTOP;
        if all {
            full = Instant::now();
        }
        let targets: Vec<Arc<dyn Check>> = w
            .entries
            .lock()
            .unwrap()
            .values()
            .filter(|e| {
                all || e
                    .wd
                    .is_some_and(|wd| named.as_ref().is_some_and(|n| n.contains(&wd)))
            })
            .filter_map(|e| e.target.upgrade())
            .collect();
        for t in targets {
            t.check();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inode numbers the process's inotify instance watches, from its
    /// fdinfo (`inotify wd:… ino:…` lines).
    fn watched_inodes() -> Vec<u64> {
        let Some(i) = watcher().ino.as_ref() else {
            return Vec::new();
        };
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", i.as_raw_fd())).unwrap();
        info.lines()
            .filter_map(|l| l.strip_prefix("inotify wd:"))
            .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("ino:")))
            .map(|h| u64::from_str_radix(h, 16).unwrap())
            .collect()
    }

    fn inode(fd: &OwnedFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    }

    use std::os::unix::fs::MetadataExt;

    struct Count(AtomicU64);
    impl Check for Count {
        fn check(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_dropped_watch_unwatches_its_file() {
        let fd = crate::bar::memfd("t-unwatch", 4096).unwrap();
        let c: Arc<dyn Check> = Arc::new(Count(AtomicU64::new(0)));
        let watch = Watch::new(&fd, Arc::downgrade(&c));
        assert!(watch.by_event());
        assert!(watched_inodes().contains(&inode(&fd)));
        drop(watch);
        assert!(!watched_inodes().contains(&inode(&fd)));
    }

    #[test]
    fn two_hundred_files_share_one_inotify_instance_and_each_raises_its_check() {
        // More files than a user may have inotify instances (128).
        let mut held = Vec::new();
        for n in 0..200 {
            let fd = crate::bar::memfd(&format!("t-many-{n}"), 4096).unwrap();
            let c = Arc::new(Count(AtomicU64::new(0)));
            let d: Arc<dyn Check> = c.clone();
            let watch = Watch::new(&fd, Arc::downgrade(&d));
            assert!(watch.by_event(), "file {n} has no watch");
            held.push((fd, c, d, watch));
        }
        let instances = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l.to_string_lossy() == "anon_inode:inotify")
            .count();
        assert_eq!(instances, 1, "one inotify instance for the process");
        let watched = watched_inodes();
        for (n, (fd, ..)) in held.iter().enumerate() {
            assert!(watched.contains(&inode(fd)), "file {n} is not watched");
        }
        // A change of the last file reaches its check.
        let (fd, c, _, _) = held.last().unwrap();
        let rw = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap();
        rw.set_len(8192).unwrap();
        let t = Instant::now();
        while c.0.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "no check");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
