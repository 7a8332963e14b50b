//! Fault service threads of one address space: read its userfaultfd's
//! events and hand each to the device it concerns. The whole loop: wait,
//! read, hand over unmaps and moves, serve faults, repeat.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// How a service thread is scheduled, from the best it could get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceSched {
    /// `SCHED_FIFO` at the lowest real-time priority (1): a fill is never
    /// preempted by a woken faulting thread, only by real-time tasks.
    Fifo,
    /// `SCHED_OTHER` at nice [`SERVICE_NICE`]: the fallback where real-time
    /// scheduling is refused (no `CAP_SYS_NICE`, no `RLIMIT_RTPRIO`).
    Nice,
    /// Unchanged: the process's own scheduling (spin mode, or every raise
    /// refused, or `BARMAP_SERVICE_SCHED=normal`).
    Normal,
}

/// The nice value of the fallback ([`ServiceSched::Nice`]).
pub const SERVICE_NICE: i32 = -10;

/// Counts of service threads per [`ServiceSched`], as they started.
#[derive(Debug, Default)]
pub(crate) struct SchedCounts {
    fifo: AtomicUsize,
    nice: AtomicUsize,
}

impl SchedCounts {
    /// (threads at `SCHED_FIFO`, threads at the raised nice value).
    pub(crate) fn get(&self) -> (usize, usize) {
        (
            self.fifo.load(Ordering::Relaxed),
            self.nice.load(Ordering::Relaxed),
        )
    }
}

/// A pool of fault service threads over one address space.
#[derive(Debug)]
pub struct Service {
    stop: Arc<AtomicBool>,
    sched: Arc<SchedCounts>,
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
        let sched = Arc::new(SchedCounts::default());
        let mut service = Service {
            stop: stop.clone(),
            sched: sched.clone(),
            wakeup: wakeup.clone(),
            threads: Vec::new(),
            detached: false,
        };
        for i in 0..threads.max(1) {
            let (space, stop, wakeup) = (space.clone(), stop.clone(), wakeup.clone());
            let sched = sched.clone();
            let handle = std::thread::Builder::new()
                .stack_size(SERVICE_STACK)
                .name(format!("barmap-fault-{i}"))
                .spawn(move || {
                    match raise_priority(mode) {
                        ServiceSched::Fifo => sched.fifo.fetch_add(1, Ordering::Relaxed),
                        ServiceSched::Nice => sched.nice.fetch_add(1, Ordering::Relaxed),
                        ServiceSched::Normal => 0,
                    };
                    serve(&space, &stop, &wakeup, mode)
                })
                .map_err(|e| Error::os("spawn service thread")(e.raw_os_error().unwrap_or(0)))?;
            service.threads.push(handle);
        }
        Ok(service)
    }

    /// How the service threads are scheduled: (threads at `SCHED_FIFO`,
    /// threads at nice [`SERVICE_NICE`]), as far as they have started.
    pub(crate) fn sched(&self) -> &Arc<SchedCounts> {
        &self.sched
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

/// Raises the calling service thread's priority above the process's
/// threads, so that filling never waits behind the threads it fills for:
/// with 64 threads first-touching a mapping on 2 cores, a fill at the
/// default priority gets about 2/66 of the CPU, and each chunk it maps wakes
/// up to 64 threads that preempt it. `SCHED_FIFO` 1 (with
/// `SCHED_RESET_ON_FORK`) when permitted, else nice [`SERVICE_NICE`], else
/// nothing. A spinning thread ([`WaitMode::Spin`]) is left alone: at a
/// real-time priority it would hold its core. `BARMAP_SERVICE_SCHED` =
/// `nice` or `normal` chooses a weaker one.
fn raise_priority(mode: WaitMode) -> ServiceSched {
    let wanted = match std::env::var("BARMAP_SERVICE_SCHED").as_deref() {
        Ok("normal") => ServiceSched::Normal,
        Ok("nice") => ServiceSched::Nice,
        _ => ServiceSched::Fifo,
    };
    if mode == WaitMode::Spin || wanted == ServiceSched::Normal {
        return ServiceSched::Normal;
    }
    if wanted == ServiceSched::Fifo && set_fifo() {
        return ServiceSched::Fifo;
    }
    if set_nice(SERVICE_NICE) {
        return ServiceSched::Nice;
    }
    tracing::debug!("service thread priority not raised: refused");
    ServiceSched::Normal
}

/// Moves the calling thread to `SCHED_FIFO` priority 1; whether it did.
fn set_fifo() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: changes the calling thread's (pid 0) policy; `param` is a
    // valid sched_param for the call's duration.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) == 0
    }
}

/// Sets the calling thread's nice value; whether it did.
fn set_nice(nice: i32) -> bool {
    // SAFETY: gettid has no arguments; setpriority on this thread's own id.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0
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
