//! Fault service threads of one address space: read its userfaultfd's
//! events and hand each to the device it concerns. The whole loop: wait,
//! read, hand over unmaps and moves, serve faults, repeat.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::space::SpaceShared;
use crate::uffd::Event;

/// A service thread's stack: the fault path is shallow (no recursion but
/// the fill's bisection at a split mapping, a few frames per level).
const SERVICE_STACK: usize = 256 << 10;

/// How service threads wait for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitMode {
    /// poll(2): sleep until an event arrives (no CPU while idle).
    #[default]
    Poll,
    /// Busy-poll the userfaultfd: lowest latency, one core per thread.
    Spin,
}

/// A pool of fault service threads over one address space.
#[derive(Debug)]
pub struct Service {
    stop: Arc<AtomicBool>,
    wakeup: Arc<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    /// Set in a forked child: stopping would wake the parent's threads
    /// through the shared eventfd.
    detached: bool,
}

impl Service {
    /// Starts `threads` service threads for `space`.
    pub(crate) fn start(
        space: Arc<SpaceShared>,
        threads: usize,
        mode: WaitMode,
    ) -> Result<Service> {
        // SAFETY: eventfd takes an initial value and flags; a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::os("eventfd")(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ));
        }
        // SAFETY: a fresh fd owned by nobody else.
        let wakeup = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let stop = Arc::new(AtomicBool::new(false));
        let mut service = Service {
            stop: stop.clone(),
            wakeup: wakeup.clone(),
            threads: Vec::new(),
            detached: false,
        };
        for i in 0..threads.max(1) {
            let (space, stop, wakeup) = (space.clone(), stop.clone(), wakeup.clone());
            let handle = std::thread::Builder::new()
                .stack_size(SERVICE_STACK)
                .name(format!("barmap-fault-{i}"))
                .spawn(move || serve(&space, &stop, &wakeup, mode))
                .map_err(|e| Error::os("spawn service thread")(e.raw_os_error().unwrap_or(0)))?;
            service.threads.push(handle);
        }
        Ok(service)
    }

    /// Drops the handles without stopping or joining anything: in a forked
    /// child, the threads and the eventfd's other end are the parent's.
    pub fn forget(&mut self) {
        self.detached = true;
        for t in self.threads.drain(..) {
            std::mem::forget(t);
        }
    }

    /// Stops and joins every service thread. Idempotent.
    pub fn stop(&mut self) {
        if self.detached {
            return;
        }
        self.stop.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.wakeup.as_raw_fd(), (&one as *const u64).cast(), 8) };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Blocks every signal in the calling thread, so that no handler of the
/// program ever runs on a fault service thread: a process-directed signal
/// goes to another thread, and a thread-directed one stays pending. The
/// faults barmap raises itself (SIGBUS, SIGSEGV) never come from these
/// threads.
fn block_signals() {
    // SAFETY: sigfillset initialises the set; pthread_sigmask changes only
    // this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

fn serve(space: &SpaceShared, stop: &AtomicBool, wakeup: &OwnedFd, mode: WaitMode) {
    block_signals();
    let uffd = space.uffd();
    let mut events: Vec<Event> = Vec::with_capacity(32);
    while !stop.load(Ordering::Relaxed) {
        if mode == WaitMode::Poll {
            let mut fds = [
                libc::pollfd {
                    fd: uffd.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wakeup.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfd structs.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if rc < 0 || fds[1].revents != 0 {
                continue; // EINTR, or the stop flag is about to be seen
            }
        }
        events.clear();
        // The process's own unmaps and moves reach the cores before anything
        // else, and before a zap may walk a registry (Mm::quiesce).
        let read = space.read_events_then(&mut events, |events| {
            for event in events.iter() {
                match event {
                    Event::Unmap { range, .. } => space.forget(range.clone()),
                    Event::Remap { from, to, len, .. } => space.moved(*from, *to, *len),
                    Event::Fault(_) => {}
                }
            }
        });
        match read {
            Ok((0, ())) => std::hint::spin_loop(),
            Ok(_) => {
                for event in &events {
                    if let Event::Fault(fault) = event {
                        space.dispatch(fault);
                    }
                }
            }
            // A signal interrupted the read (possible only if a signal was
            // not blocked, e.g. one sent before the mask was set).
            Err(libc::EINTR) => continue,
            Err(errno) => {
                tracing::error!(errno, "reading userfaultfd failed; service thread stops");
                return;
            }
        }
    }
}
