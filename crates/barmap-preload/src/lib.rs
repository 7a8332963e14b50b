//! The LD_PRELOAD library of `barmap run`.
//!
//! It wraps the libc entry points that VFIO programs use on the VFIO
//! paths and fds (open and its fortified and 64-bit variants, fopen, the
//! stat family, access, readlink, opendir, scandir, realpath, ioctl, mmap,
//! munmap, pread/pwrite and their variants, close, dup, fcntl) and hands
//! them to the process's [`barmap_front::Front`]; `sigaction` and `signal`
//! for SIGSEGV, once a register BAR is mapped, set the handler that
//! barmap's trap chains to, so that barmap's stays in front
//! ([`barmap_models::trap`]); everything else goes to
//! the next definition (libc's), found with `dlsym(RTLD_NEXT)`. Calls that
//! the front end itself makes while serving a call pass straight through
//! (a per-thread guard), so nothing recurses.
//!
//! What it cannot reach: statically linked programs and raw `syscall()`.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::missing_safety_doc)]

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

use barmap_front::{Errno, Front};

thread_local! {
    /// This thread is inside the front end: its libc calls pass through.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the guard set; None if the thread is already inside.
fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    if BUSY.with(Cell::get) {
        return None;
    }
    BUSY.with(|b| b.set(true));
    let r = f();
    BUSY.with(|b| b.set(false));
    Some(r)
}

/// The front end, unless this thread is inside it already.
fn front() -> Option<&'static Front> {
    if BUSY.with(Cell::get) {
        return None;
    }
    guarded(|| {
        let f = Front::get();
        if f.is_some() {
            register_report();
        }
        f
    })
    .flatten()
}

fn set_errno(e: Errno) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e.0 };
}

/// The next definition of `name` (libc's), looked up once.
fn next(slot: &AtomicUsize, name: &CStr) -> usize {
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
        static SLOT: AtomicUsize = AtomicUsize::new(0);
        let f = next(&SLOT, $name);
        assert!(f != 0, "barmap-preload: no next definition of a libc function");
        // SAFETY: the symbol is libc's function of exactly this signature.
        unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> $r>(f) }
    }};
}

/// `path` as a string, if it is a valid C string in UTF-8.
unsafe fn path_str<'a>(path: *const c_char) -> Option<&'a str> {
    if path.is_null() {
        return None;
    }
    // SAFETY: the caller passed a NUL-terminated path.
    unsafe { CStr::from_ptr(path) }.to_str().ok()
}

/// The redirected path for a lookup, if any.
unsafe fn redirected(path: *const c_char) -> Option<CString> {
    // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
    let p = unsafe { path_str(path) }?;
    let f = front()?;
    let to = guarded(|| f.redirect(p)).flatten()?;
    CString::new(to.into_os_string().into_encoded_bytes()).ok()
}

/// open(2) of a served node: Some(fd or -1).
unsafe fn open_node(path: *const c_char, flags: c_int) -> Option<c_int> {
    // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
    let p = unsafe { path_str(path) }?;
    let f = front()?;
    if !guarded(|| f.serves(p))? {
        return None;
    }
    Some(match guarded(|| f.open(p, flags))? {
        Ok(fd) => fd,
        Err(e) => {
            set_errno(e);
            -1
        }
    })
}

macro_rules! open_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
            // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
            if let Some(fd) = unsafe { open_node(path, flags) } {
                return fd;
            }
            // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
            let to = unsafe { redirected(path) };
            let p = to.as_ref().map_or(path, |c| c.as_ptr());
            let real = real!($lit as fn(*const c_char, c_int, c_uint) -> c_int);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(p, flags, mode) }
        }
    )* };
}
open_like!(open = c"open", open64 = c"open64");

macro_rules! open_2_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(path: *const c_char, flags: c_int) -> c_int {
            // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
            if let Some(fd) = unsafe { open_node(path, flags) } {
                return fd;
            }
            // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
            let to = unsafe { redirected(path) };
            let p = to.as_ref().map_or(path, |c| c.as_ptr());
            let real = real!($lit as fn(*const c_char, c_int) -> c_int);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(p, flags) }
        }
    )* };
}
open_2_like!(__open_2 = c"__open_2", __open64_2 = c"__open64_2");

macro_rules! openat_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(
            dirfd: c_int,
            path: *const c_char,
            flags: c_int,
            mode: c_uint,
        ) -> c_int {
            // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
            if let Some(fd) = unsafe { open_node(path, flags) } {
                return fd;
            }
            // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
            let to = unsafe { redirected(path) };
            let p = to.as_ref().map_or(path, |c| c.as_ptr());
            let real = real!($lit as fn(c_int, *const c_char, c_int, c_uint) -> c_int);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(dirfd, p, flags, mode) }
        }
    )* };
}
openat_like!(openat = c"openat", openat64 = c"openat64");

macro_rules! openat_2_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
            // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
            if let Some(fd) = unsafe { open_node(path, flags) } {
                return fd;
            }
            // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
            let to = unsafe { redirected(path) };
            let p = to.as_ref().map_or(path, |c| c.as_ptr());
            let real = real!($lit as fn(c_int, *const c_char, c_int) -> c_int);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(dirfd, p, flags) }
        }
    )* };
}
openat_2_like!(__openat_2 = c"__openat_2", __openat64_2 = c"__openat64_2");

/// Wrappers whose first argument is a path to redirect, the rest passed on.
macro_rules! path_first {
    ($($sym:ident = $lit:literal ($($arg:ident: $t:ty),*) -> $r:ty),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(path: *const c_char, $($arg: $t),*) -> $r {
            // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
            let to = unsafe { redirected(path) };
            let p = to.as_ref().map_or(path, |c| c.as_ptr());
            let real = real!($lit as fn(*const c_char $(, $t)*) -> $r);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(p $(, $arg)*) }
        }
    )* };
}
path_first!(
    fopen = c"fopen"(mode: *const c_char) -> *mut c_void,
    fopen64 = c"fopen64"(mode: *const c_char) -> *mut c_void,
    stat = c"stat"(buf: *mut c_void) -> c_int,
    stat64 = c"stat64"(buf: *mut c_void) -> c_int,
    lstat = c"lstat"(buf: *mut c_void) -> c_int,
    lstat64 = c"lstat64"(buf: *mut c_void) -> c_int,
    access = c"access"(mode: c_int) -> c_int,
    euidaccess = c"euidaccess"(mode: c_int) -> c_int,
    readlink = c"readlink"(buf: *mut c_char, len: usize) -> isize,
    opendir = c"opendir"() -> *mut c_void,
    realpath = c"realpath"(resolved: *mut c_char) -> *mut c_char,
    statfs = c"statfs"(buf: *mut c_void) -> c_int,
    scandir = c"scandir"(list: *mut c_void, filter: *mut c_void, cmp: *mut c_void) -> c_int,
    scandir64 = c"scandir64"(list: *mut c_void, filter: *mut c_void, cmp: *mut c_void) -> c_int,
);

/// Wrappers whose second argument is a path (after a dirfd).
macro_rules! path_second {
    ($($sym:ident = $lit:literal ($($arg:ident: $t:ty),*) -> $r:ty),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(dirfd: c_int, path: *const c_char, $($arg: $t),*) -> $r {
            // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
            let to = unsafe { redirected(path) };
            let p = to.as_ref().map_or(path, |c| c.as_ptr());
            let real = real!($lit as fn(c_int, *const c_char $(, $t)*) -> $r);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(dirfd, p $(, $arg)*) }
        }
    )* };
}
path_second!(
    fstatat = c"fstatat"(buf: *mut c_void, flags: c_int) -> c_int,
    fstatat64 = c"fstatat64"(buf: *mut c_void, flags: c_int) -> c_int,
    faccessat = c"faccessat"(mode: c_int, flags: c_int) -> c_int,
    readlinkat = c"readlinkat"(buf: *mut c_char, len: usize) -> isize,
    statx = c"statx"(flags: c_int, mask: c_uint, buf: *mut c_void) -> c_int,
);

/// `__readlinkat_chk`/`__readlink_chk` (fortified readlink).
#[no_mangle]
pub unsafe extern "C" fn __readlink_chk(
    path: *const c_char,
    buf: *mut c_char,
    len: usize,
    buflen: usize,
) -> isize {
    // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
    let to = unsafe { redirected(path) };
    let p = to.as_ref().map_or(path, |c| c.as_ptr());
    let real = real!(c"__readlink_chk" as fn(*const c_char, *mut c_char, usize, usize) -> isize);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    unsafe { real(p, buf, len, buflen) }
}

fn front_for_fd(fd: c_int) -> Option<&'static Front> {
    let f = front()?;
    guarded(|| f.owns(fd)).filter(|&o| o).map(|_| f)
}

fn answer(r: Result<i64, Errno>) -> i64 {
    match r {
        Ok(v) => v,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    if let Some(f) = front_for_fd(fd) {
        if let Some(r) = guarded(|| f.ioctl(fd, req, arg as usize)) {
            return answer(r) as c_int;
        }
    }
    let real = real!(c"ioctl" as fn(c_int, c_ulong, *mut c_void) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    unsafe { real(fd, req, arg) }
}

macro_rules! mmap_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(
            addr: *mut c_void,
            len: usize,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            off: i64,
        ) -> *mut c_void {
            if let Some(f) = front_for_fd(fd) {
                if let Some(r) = guarded(|| f.mmap(addr as usize, len, prot, flags, fd, off)) {
                    return match r {
                        Ok(a) => a as *mut c_void,
                        Err(e) => {
                            set_errno(e);
                            libc::MAP_FAILED
                        }
                    };
                }
            }
            let real = real!($lit as fn(*mut c_void, usize, c_int, c_int, c_int, i64) -> *mut c_void);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(addr, len, prot, flags, fd, off) }
        }
    )* };
}
mmap_like!(mmap = c"mmap", mmap64 = c"mmap64");

#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let real = real!(c"munmap" as fn(*mut c_void, usize) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    let rc = unsafe { real(addr, len) };
    if rc == 0 {
        if let Some(f) = front() {
            guarded(|| f.munmapped(addr as usize, len));
        }
    }
    rc
}

macro_rules! pread_like {
    ($($sym:ident = $lit:literal, $method:ident, $p:ty),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(fd: c_int, buf: $p, len: usize, off: i64) -> isize {
            if let Some(f) = front_for_fd(fd) {
                if let Some(r) = guarded(|| f.$method(fd, buf as usize, len, off)) {
                    return answer(r) as isize;
                }
            }
            let real = real!($lit as fn(c_int, $p, usize, i64) -> isize);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(fd, buf, len, off) }
        }
    )* };
}
pread_like!(
    pread = c"pread",
    pread,
    *mut c_void,
    pread64 = c"pread64",
    pread,
    *mut c_void,
    pwrite = c"pwrite",
    pwrite,
    *const c_void,
    pwrite64 = c"pwrite64",
    pwrite,
    *const c_void,
);

macro_rules! pread_chk_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(
            fd: c_int,
            buf: *mut c_void,
            len: usize,
            off: i64,
            buflen: usize,
        ) -> isize {
            if let Some(f) = front_for_fd(fd) {
                if len > buflen {
                    // glibc's fortify check: abort as __chk_fail would.
                    std::process::abort();
                }
                if let Some(r) = guarded(|| f.pread(fd, buf as usize, len, off)) {
                    return answer(r) as isize;
                }
            }
            let real = real!($lit as fn(c_int, *mut c_void, usize, i64, usize) -> isize);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(fd, buf, len, off, buflen) }
        }
    )* };
}
pread_chk_like!(
    __pread_chk = c"__pread_chk",
    __pread64_chk = c"__pread64_chk"
);

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let real = real!(c"close" as fn(c_int) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    let rc = unsafe { real(fd) };
    if rc == 0 {
        if let Some(f) = front_for_fd(fd) {
            guarded(|| f.close(fd));
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let real = real!(c"dup" as fn(c_int) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    let new = unsafe { real(fd) };
    if new >= 0 {
        if let Some(f) = front_for_fd(fd) {
            guarded(|| f.dup(fd, new));
        }
    }
    new
}

fn after_dup(old: c_int, new: c_int) {
    if new < 0 || old == new {
        return;
    }
    if let Some(f) = front() {
        guarded(|| {
            if f.owns(new) {
                f.close(new); // dup2 closed what was there
            }
            if f.owns(old) {
                f.dup(old, new);
            }
        });
    }
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let real = real!(c"dup2" as fn(c_int, c_int) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    let rc = unsafe { real(old, new) };
    after_dup(old, rc);
    rc
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let real = real!(c"dup3" as fn(c_int, c_int, c_int) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    let rc = unsafe { real(old, new, flags) };
    after_dup(old, rc);
    rc
}

#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let real = real!(c"fcntl" as fn(c_int, c_int, c_ulong) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    let rc = unsafe { real(fd, cmd, arg) };
    if rc >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
        if let Some(f) = front_for_fd(fd) {
            guarded(|| f.dup(fd, rc));
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the same call, with the same arguments.
    unsafe { fcntl(fd, cmd, arg) }
}

// ----- signal dispositions ------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if !BUSY.with(Cell::get) {
        // SAFETY: the caller's pointers, null or valid, as sigaction(2) needs.
        if let Some(rc) = unsafe { barmap_models::trap::program_sigaction(sig, act, old) } {
            return rc;
        }
    }
    let real =
        real!(c"sigaction" as fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    unsafe { real(sig, act, old) }
}

#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if sig == libc::SIGSEGV && !BUSY.with(Cell::get) {
        // glibc's signal(): BSD semantics, the handler stays installed.
        // SAFETY: a zeroed sigaction is valid; handler and flags are set.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = handler;
        act.sa_flags = libc::SA_RESTART;
        // SAFETY: a zeroed sigaction is a valid out-parameter.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to local sigactions.
        if unsafe { barmap_models::trap::program_sigaction(sig, &act, &mut old) }.is_some() {
            return old.sa_sigaction;
        }
    }
    let real = real!(c"signal" as fn(c_int, libc::sighandler_t) -> libc::sighandler_t);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    unsafe { real(sig, handler) }
}

// ----- the report at exit --------------------------------------------------

fn register_report() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain extern "C" fn without arguments.
        unsafe { libc::atexit(write_report) };
    });
}

extern "C" fn write_report() {
    let _ = guarded(|| {
        let Some(f) = Front::get() else { return };
        let path = f
            .testbed()
            .join(format!("report-{}.json", std::process::id()));
        let _ = std::fs::write(path, f.report().to_string());
    });
}
