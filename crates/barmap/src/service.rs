//! Fault service threads of one address space: read its userfaultfd's
//! events and hand each to the device it concerns. The whole loop: wait,
//! read, hand over unmaps and moves, serve faults, repeat.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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

/// How a service thread runs a long fill (the `prefault` walk of a
/// mapping): the scheduling it asks for while it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FillSched {
    /// `SCHED_FIFO` at the lowest real-time priority (1) where permitted
    /// (root, `CAP_SYS_NICE` or `RLIMIT_RTPRIO`), else nice [`FILL_NICE`],
    /// else unchanged. The default.
    Fifo,
    /// Nice [`FILL_NICE`] where permitted, else unchanged.
    Nice,
    /// Unchanged: the service thread's own scheduling.
    Normal,
}

/// The nice value of [`FillSched::Nice`] and of the fallback.
pub const FILL_NICE: i32 = -10;

/// The process's [`FillSched`]: 0 unset (read `BARMAP_FILL_SCHED`), else
/// the variant + 1.
static FILL_SCHED: AtomicU8 = AtomicU8::new(0);

/// Sets how service threads of this process schedule their long fills from
/// now on (default [`FillSched::Fifo`], or the environment's
/// `BARMAP_FILL_SCHED` = `fifo`, `nice` or `normal`).
pub fn set_fill_sched(sched: FillSched) {
    FILL_SCHED.store(sched as u8 + 1, Ordering::Relaxed);
}

/// The process's [`FillSched`] now.
pub fn fill_sched() -> FillSched {
    match FILL_SCHED.load(Ordering::Relaxed) {
        1 => FillSched::Fifo,
        2 => FillSched::Nice,
        3 => FillSched::Normal,
        _ => {
            let s = match std::env::var("BARMAP_FILL_SCHED").as_deref() {
                Ok("normal") => FillSched::Normal,
                Ok("nice") => FillSched::Nice,
                _ => FillSched::Fifo,
            };
            // Another thread may have set it meanwhile: keep theirs.
            let _ =
                FILL_SCHED.compare_exchange(0, s as u8 + 1, Ordering::Relaxed, Ordering::Relaxed);
            s
        }
    }
}

thread_local! {
    /// What [`raise_fill_priority`] changed on this thread, and the nice
    /// value it replaced, to undo.
    static RAISED: std::cell::Cell<(FillSched, i32)> =
        const { std::cell::Cell::new((FillSched::Normal, 0)) };
}

/// Raises the calling thread's priority above the process's other threads
/// for a long fill, so that the fill is not preempted by the threads it
/// maps pages for: with 64 threads first-touching a mapping on 2 cores, a
/// fill at the default priority gets about 2/66 of the CPU, and each chunk
/// it maps wakes threads that preempt it. Only the walk is raised, not the
/// wait for faults: the real-time class has no affine wake-up, so a
/// real-time thread woken by a fault stays on its previous CPU, and an
/// isolated fault's round trip would pay for waking another, idle CPU.
/// Returns what it got; undo with [`restore_fill_priority`].
pub(crate) fn raise_fill_priority() -> FillSched {
    let wanted = fill_sched();
    let nice = own_nice();
    let got = if wanted == FillSched::Fifo && set_fifo(true) {
        FillSched::Fifo
    } else if wanted != FillSched::Normal && nice > FILL_NICE && set_nice(FILL_NICE) {
        FillSched::Nice
    } else {
        FillSched::Normal
    };
    RAISED.with(|r| r.set((got, nice)));
    got
}

/// Undoes [`raise_fill_priority`] on the calling thread.
pub(crate) fn restore_fill_priority() {
    match RAISED.with(|r| r.replace((FillSched::Normal, 0))) {
        // Back to SCHED_OTHER: the nice value was kept meanwhile.
        (FillSched::Fifo, _) => {
            set_fifo(false);
        }
        (FillSched::Nice, nice) => {
            set_nice(nice);
        }
        (FillSched::Normal, _) => {}
    }
}

/// Moves the calling thread to `SCHED_FIFO` priority 1 (`fifo`) or back to
/// `SCHED_OTHER`; whether it did.
fn set_fifo(fifo: bool) -> bool {
    let (policy, prio) = if fifo {
        (libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: changes the calling thread's (pid 0) policy; `param` is a
    // valid sched_param for the call's duration.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// The calling thread's nice value.
fn own_nice() -> i32 {
    // SAFETY: gettid has no arguments; getpriority reads this thread's own
    // nice value (it cannot fail for an existing thread of ours).
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// Sets the calling thread's nice value; whether it did.
fn set_nice(nice: i32) -> bool {
    // SAFETY: gettid has no arguments; setpriority on this thread's own id.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0
    }
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
