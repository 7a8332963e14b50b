//! Wrappers of the calls that name a path: the open family opens VFIO
//! nodes through the front end; lookups of sysfs paths are redirected into
//! the testbed. Both check first that the testbed is still this run's; a
//! process whose testbed is gone (it outlived the run) or was refused sees
//! no VFIO devices: those paths are ENOENT. The stat family is in
//! [`crate::stat`].

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::os::fd::OwnedFd;
use std::path::Path;

use barmap_front::paths::Route;
use barmap_front::{testbed, Errno, Task};

use crate::{guarded, set_errno, task};

/// `path` as a string, if it is a valid C string in UTF-8.
pub(crate) unsafe fn path_str<'a>(path: *const c_char) -> Option<&'a str> {
    if path.is_null() {
        return None;
    }
    // SAFETY: the caller passed a NUL-terminated path.
    unsafe { CStr::from_ptr(path) }.to_str().ok()
}

/// A lookup redirected into the testbed: the path to use, and the checked
/// testbed directory it is resolved through (held open until the call is
/// made, so the lookup reaches that directory and no other).
pub(crate) struct Redirect {
    path: CString,
    _dir: Option<OwnedFd>,
}

impl Redirect {
    fn under(p: &str, base: &Path, dir: Option<OwnedFd>) -> Option<Redirect> {
        match barmap_front::paths::route(p, base, false) {
            Route::Redirect(to) => Some(Redirect {
                path: CString::new(to.into_os_string().into_encoded_bytes()).ok()?,
                _dir: dir,
            }),
            _ => None,
        }
    }

    pub(crate) fn as_ptr(&self) -> *const c_char {
        self.path.as_ptr()
    }
}

/// The redirected path for a lookup, if any: into the testbed, after
/// checking that it is still this run's; into nothing ([`testbed::GONE`],
/// ENOENT) if the testbed is gone or was refused.
pub(crate) unsafe fn redirected(path: *const c_char) -> Option<Redirect> {
    // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
    let p = unsafe { path_str(path) }?;
    // A lookup changes nothing: a task sharing the parent's memory may
    // use the parent's front end for it.
    let Some(Task::Own(f) | Task::Borrowed(f)) = task() else {
        if crate::BUSY.with(|b| b.get()) || !testbed::refused() {
            return None;
        }
        return Redirect::under(p, Path::new(testbed::GONE), None);
    };
    guarded(|| {
        f.redirect(p)?;
        match testbed::lookup_base(f.testbed()) {
            Ok((base, dir)) => Redirect::under(p, &base, Some(dir)),
            Err(_) => Redirect::under(p, Path::new(testbed::GONE), None),
        }
    })
    .flatten()
}

/// open(2) of a served node: Some(fd or -1). ENOENT once the testbed is
/// gone.
unsafe fn open_node(path: *const c_char, flags: c_int) -> Option<c_int> {
    // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
    let p = unsafe { path_str(path) }?;
    let f = match task()? {
        Task::Own(f) => f,
        Task::Borrowed(f) => {
            // A task sharing the parent's memory must not open anything in
            // the parent's front end: its opens of VFIO nodes fail.
            if guarded(|| f.serves(p))? {
                set_errno(Errno::ENODEV);
                return Some(-1);
            }
            return None;
        }
    };
    if let Some(r) = guarded(|| f.open_attr(p, flags))? {
        return Some(match r {
            Ok(fd) => fd,
            Err(e) => {
                set_errno(e);
                -1
            }
        });
    }
    if !guarded(|| f.serves(p))? {
        return None;
    }
    if guarded(|| testbed::check(f.testbed()).is_err())? {
        set_errno(Errno::ENOENT);
        return Some(-1);
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
/// `fopen(path, mode)` of a sysfs attribute the front end serves (an
/// SR-IOV PF's `sriov_numvfs`) for writing: the served fd, as a stream.
unsafe fn fopen_attr(path: *const c_char, mode: *const c_char) -> Option<*mut c_void> {
    // SAFETY: the caller's NUL-terminated mode (or null, which is checked).
    let m = unsafe { path_str(mode) }?;
    let mut flags = match m.as_bytes().first()? {
        b'r' if m.contains('+') => libc::O_RDWR,
        b'w' | b'a' if m.contains('+') => libc::O_RDWR | libc::O_CREAT,
        b'w' | b'a' => libc::O_WRONLY | libc::O_CREAT,
        _ => return None,
    };
    if m.contains('e') {
        flags |= libc::O_CLOEXEC;
    }
    // SAFETY: the caller's NUL-terminated path (or null, which is checked).
    let p = unsafe { path_str(path) }?;
    let f = crate::front()?;
    let fd = match guarded(|| f.open_attr(p, flags))?? {
        Ok(fd) => fd,
        Err(e) => {
            set_errno(e);
            return Some(std::ptr::null_mut());
        }
    };
    // SAFETY: fdopen of the fd just opened, with the caller's mode.
    Some(unsafe { libc::fdopen(fd, mode) }.cast())
}

#[no_mangle]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut c_void {
    // SAFETY: the caller's arguments.
    if let Some(s) = unsafe { fopen_attr(path, mode) } {
        return s;
    }
    // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
    let to = unsafe { redirected(path) };
    let p = to.as_ref().map_or(path, |c| c.as_ptr());
    let real = real!(c"fopen" as fn(*const c_char, *const c_char) -> *mut c_void);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    unsafe { real(p, mode) }
}

#[no_mangle]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut c_void {
    // SAFETY: the caller's arguments.
    if let Some(s) = unsafe { fopen_attr(path, mode) } {
        return s;
    }
    // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
    let to = unsafe { redirected(path) };
    let p = to.as_ref().map_or(path, |c| c.as_ptr());
    let real = real!(c"fopen64" as fn(*const c_char, *const c_char) -> *mut c_void);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    unsafe { real(p, mode) }
}

path_first!(
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
    faccessat = c"faccessat"(mode: c_int, flags: c_int) -> c_int,
    readlinkat = c"readlinkat"(buf: *mut c_char, len: usize) -> isize,
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
