//! The LD_PRELOAD library of `barmap run`.
//!
//! It wraps the libc entry points that VFIO programs use on the VFIO
//! paths and fds (open and its fortified and 64-bit variants, fopen, the
//! stat family, access, readlink, opendir, scandir, realpath, ioctl, mmap,
//! munmap, pread/pwrite and their variants, close, dup, fcntl) and hands
//! them to the process's [`barmap_front::Front`]; the libc setters of
//! SIGSEGV dispositions and signal masks (`sigaction`, `signal`, `sigset`,
//! `pthread_sigmask`, ... in `signals`) keep the program's SIGSEGV
//! disposition and its view of SIGSEGV apart from barmap's register trap,
//! whose handler stays in front ([`barmap_models::trap`]); everything else
//! goes to the next definition (libc's), found with `dlsym(RTLD_NEXT)`. Calls that
//! the front end itself makes while serving a call pass straight through
//! (a per-thread guard), so nothing recurses.
//!
//! What it cannot reach: statically linked programs and raw `syscall()`.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::missing_safety_doc)]
#![warn(missing_docs)]

use std::cell::Cell;
use std::ffi::{c_int, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

use barmap_front::{Errno, FdRoute, Front, Task};

thread_local! {
    /// This thread is inside the front end: its libc calls pass through.
    pub(crate) static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the guard set; None if the thread is already inside.
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    if BUSY.with(Cell::get) {
        return None;
    }
    BUSY.with(|b| b.set(true));
    let r = f();
    BUSY.with(|b| b.set(false));
    Some(r)
}

/// The front end, unless this thread is inside it already, or this task
/// shares the memory of the process whose front end it is (a vfork or
/// `clone(CLONE_VM)` child: see [`task`]).
pub(crate) fn front() -> Option<&'static Front> {
    match task()? {
        Task::Own(f) => Some(f),
        Task::Borrowed(_) => None,
    }
}

/// How this task sees the front end, unless this thread is inside it.
pub(crate) fn task() -> Option<Task> {
    if BUSY.with(Cell::get) {
        return None;
    }
    guarded(|| {
        let t = Front::task();
        if let Some(Task::Own(_)) = t {
            register_report();
        }
        t
    })
    .flatten()
}

/// Where a call on `fd` goes; `Pass` while this thread is inside the
/// front end.
pub(crate) fn route(fd: c_int) -> FdRoute {
    if BUSY.with(Cell::get) {
        return FdRoute::Pass;
    }
    guarded(|| {
        let r = Front::route_fd(fd);
        if let FdRoute::Serve(..) = r {
            register_report();
        }
        r
    })
    .unwrap_or(FdRoute::Pass)
}

pub(crate) fn set_errno(e: Errno) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e.0 };
}

/// The next definition of `name` (libc's), looked up once.
pub(crate) fn next(slot: &AtomicUsize, name: &CStr) -> usize {
    let f = slot.load(Ordering::Relaxed);
    if f != 0 {
        return f;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    slot.store(f, Ordering::Relaxed);
    f
}

macro_rules! real {
    ($name:literal as fn($($t:ty),*) -> $r:ty) => {{
        static SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let f = $crate::next(&SLOT, $name);
        assert!(f != 0, "barmap-preload: no next definition of a libc function");
        // SAFETY: the symbol is libc's function of exactly this signature.
        unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> $r>(f) }
    }};
}

mod fds;
mod paths;
mod report;
mod signals;
mod stat;

pub(crate) use report::register_report;
