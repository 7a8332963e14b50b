//! Wrappers of the stat family: `stat`, `lstat`, `fstat`, `fstatat`
//! (glibc's wrapper of `newfstatat`), their `64` names, `statx`, and the
//! legacy `__xstat` family that older binaries call.
//!
//! Sysfs paths are redirected into the testbed ([`crate::paths`]). The
//! VFIO nodes, by path and through the fds that the front end gave out,
//! are reported as the kernel's character devices
//! ([`barmap_front::nodes`]): the testbed's placeholder of the node is
//! stat'ed (so that a path and its fds agree on the inode), then the type,
//! mode, device numbers and size are set.

use std::ffi::{c_char, c_int, c_uint, CString};

use barmap_front::nodes::NodeStat;
use barmap_front::{FdRoute, Task};

use crate::paths::{path_str, redirected};
use crate::{guarded, route, task};

/// The node that `path` names, if it is one of the front end's (a
/// lookup: in a task sharing the process's memory too).
unsafe fn node_of_path(path: *const c_char) -> Option<NodeStat> {
    // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
    let p = unsafe { path_str(path) }?;
    let f = match task()? {
        Task::Own(f) | Task::Borrowed(f) => f,
    };
    guarded(|| f.stat_of_node(p)).flatten()
}

/// The node that `fd` was opened from, if it is one of this process's
/// front-end files. (An fd this task cannot reach, inherited or received,
/// stays what the kernel says of its placeholder.)
fn node_of_fd(fd: c_int) -> Option<NodeStat> {
    match route(fd) {
        FdRoute::Serve(f, file) => guarded(|| f.stat_of_file(&file)).flatten(),
        _ => None,
    }
}

fn placeholder(n: &NodeStat) -> Option<CString> {
    CString::new(n.placeholder.clone().into_os_string().into_encoded_bytes()).ok()
}

/// Sets what a character device node reports in a `struct stat`.
///
/// # Safety
/// `buf` points to a `struct stat` that the caller may write.
unsafe fn patch_stat(buf: *mut libc::stat, n: &NodeStat) {
    // SAFETY: the caller's buffer, just filled by a successful stat.
    let st = unsafe { &mut *buf };
    st.st_mode = n.mode;
    st.st_rdev = n.rdev();
    st.st_size = 0;
    st.st_blocks = 0;
    st.st_blksize = 4096;
}

/// Sets what a character device node reports in a `struct statx`.
///
/// # Safety
/// `buf` points to a `struct statx` that the caller may write.
unsafe fn patch_statx(buf: *mut libc::statx, n: &NodeStat) {
    // SAFETY: the caller's buffer, just filled by a successful statx.
    let st = unsafe { &mut *buf };
    st.stx_mode = n.mode as u16;
    st.stx_rdev_major = n.major;
    st.stx_rdev_minor = n.minor;
    st.stx_size = 0;
    st.stx_blocks = 0;
    st.stx_blksize = 4096;
}

/// Re-stats `buf` from the node's placeholder (for an fd), then patches.
///
/// # Safety
/// `buf` points to a `struct stat` that the caller may write.
unsafe fn fill_from_node(buf: *mut libc::stat, n: &NodeStat) {
    if let Some(p) = placeholder(n) {
        let real = real!(c"stat" as fn(*const c_char, *mut libc::stat) -> c_int);
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: a NUL-terminated path and a buffer of the right type.
        if unsafe { real(p.as_ptr(), st.as_mut_ptr()) } == 0 {
            // SAFETY: the placeholder's stat succeeded; `buf` is the caller's.
            unsafe { *buf = st.assume_init() };
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { patch_stat(buf, n) };
}

/// stat(2)-like: `path`, then a real call on the redirected path.
unsafe fn by_path(
    path: *const c_char,
    buf: *mut libc::stat,
    real: impl FnOnce(*const c_char) -> c_int,
) -> c_int {
    // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
    let to = unsafe { redirected(path) };
    let rc = real(to.as_ref().map_or(path, |c| c.as_ptr()));
    if rc == 0 {
        // SAFETY: as above.
        if let Some(n) = unsafe { node_of_path(path) } {
            // SAFETY: `buf` was just filled by the real call.
            unsafe { patch_stat(buf, &n) };
        }
    }
    rc
}

/// fstat(2)-like on `fd`.
unsafe fn by_fd(fd: c_int, buf: *mut libc::stat, real: impl FnOnce() -> c_int) -> c_int {
    let rc = real();
    if rc == 0 {
        if let Some(n) = node_of_fd(fd) {
            // SAFETY: `buf` was just filled by the real call.
            unsafe { fill_from_node(buf, &n) };
        }
    }
    rc
}

/// Whether an `*at` call stats `dirfd` itself (`AT_EMPTY_PATH` and "").
unsafe fn empty_path(path: *const c_char, flags: c_int) -> bool {
    // SAFETY: a non-null caller's NUL-terminated path; its first byte.
    flags & libc::AT_EMPTY_PATH != 0 && (path.is_null() || unsafe { *path } == 0)
}

macro_rules! stat_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(path: *const c_char, buf: *mut libc::stat) -> c_int {
            let real = real!($lit as fn(*const c_char, *mut libc::stat) -> c_int);
            // SAFETY: the caller's arguments, to libc's definition of the same function.
            unsafe { by_path(path, buf, |p| real(p, buf)) }
        }
    )* };
}
stat_like!(
    stat = c"stat",
    stat64 = c"stat64",
    lstat = c"lstat",
    lstat64 = c"lstat64"
);

macro_rules! fstat_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(fd: c_int, buf: *mut libc::stat) -> c_int {
            let real = real!($lit as fn(c_int, *mut libc::stat) -> c_int);
            // SAFETY: the caller's arguments, to libc's definition of the same function.
            unsafe { by_fd(fd, buf, || real(fd, buf)) }
        }
    )* };
}
fstat_like!(fstat = c"fstat", fstat64 = c"fstat64");

macro_rules! fstatat_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(
            dirfd: c_int,
            path: *const c_char,
            buf: *mut libc::stat,
            flags: c_int,
        ) -> c_int {
            let real = real!($lit as fn(c_int, *const c_char, *mut libc::stat, c_int) -> c_int);
            // SAFETY: the caller's arguments, to libc's definition of the same function.
            unsafe {
                if empty_path(path, flags) {
                    by_fd(dirfd, buf, || real(dirfd, path, buf, flags))
                } else {
                    by_path(path, buf, |p| real(dirfd, p, buf, flags))
                }
            }
        }
    )* };
}
fstatat_like!(fstatat = c"fstatat", fstatat64 = c"fstatat64");

macro_rules! xstat_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(ver: c_int, path: *const c_char, buf: *mut libc::stat) -> c_int {
            let real = real!($lit as fn(c_int, *const c_char, *mut libc::stat) -> c_int);
            // SAFETY: the caller's arguments, to libc's definition of the same function.
            unsafe { by_path(path, buf, |p| real(ver, p, buf)) }
        }
    )* };
}
xstat_like!(
    __xstat = c"__xstat",
    __xstat64 = c"__xstat64",
    __lxstat = c"__lxstat",
    __lxstat64 = c"__lxstat64"
);

macro_rules! fxstat_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(ver: c_int, fd: c_int, buf: *mut libc::stat) -> c_int {
            let real = real!($lit as fn(c_int, c_int, *mut libc::stat) -> c_int);
            // SAFETY: the caller's arguments, to libc's definition of the same function.
            unsafe { by_fd(fd, buf, || real(ver, fd, buf)) }
        }
    )* };
}
fxstat_like!(__fxstat = c"__fxstat", __fxstat64 = c"__fxstat64");

macro_rules! fxstatat_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(
            ver: c_int,
            dirfd: c_int,
            path: *const c_char,
            buf: *mut libc::stat,
            flags: c_int,
        ) -> c_int {
            let real = real!($lit as fn(c_int, c_int, *const c_char, *mut libc::stat, c_int) -> c_int);
            // SAFETY: the caller's arguments, to libc's definition of the same function.
            unsafe {
                if empty_path(path, flags) {
                    by_fd(dirfd, buf, || real(ver, dirfd, path, buf, flags))
                } else {
                    by_path(path, buf, |p| real(ver, dirfd, p, buf, flags))
                }
            }
        }
    )* };
}
fxstatat_like!(__fxstatat = c"__fxstatat", __fxstatat64 = c"__fxstatat64");

/// `statx(2)`: by path (redirected), or of `dirfd` with `AT_EMPTY_PATH`.
#[no_mangle]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: c_uint,
    buf: *mut libc::statx,
) -> c_int {
    let real =
        real!(c"statx" as fn(c_int, *const c_char, c_int, c_uint, *mut libc::statx) -> c_int);
    // SAFETY: `path` is the caller's (or null); checked before reading.
    if unsafe { empty_path(path, flags) } {
        // SAFETY: the caller's arguments, to libc's definition of the same function.
        let rc = unsafe { real(dirfd, path, flags, mask, buf) };
        if rc == 0 {
            if let Some(n) = node_of_fd(dirfd) {
                if let Some(p) = placeholder(&n) {
                    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
                    let f = flags & !libc::AT_EMPTY_PATH;
                    // SAFETY: a NUL-terminated path and a buffer of the right type.
                    if unsafe { real(libc::AT_FDCWD, p.as_ptr(), f, mask, st.as_mut_ptr()) } == 0 {
                        // SAFETY: filled by the successful call; `buf` is the caller's.
                        unsafe { *buf = st.assume_init() };
                    }
                }
                // SAFETY: `buf` was filled by the real call.
                unsafe { patch_statx(buf, &n) };
            }
        }
        return rc;
    }
    // SAFETY: `path` is the caller's NUL-terminated path (or null, which is checked).
    let to = unsafe { redirected(path) };
    let p = to.as_ref().map_or(path, |c| c.as_ptr());
    // SAFETY: the caller's arguments (the path redirected), to libc's definition.
    let rc = unsafe { real(dirfd, p, flags, mask, buf) };
    if rc == 0 {
        // SAFETY: as above.
        if let Some(n) = unsafe { node_of_path(path) } {
            // SAFETY: `buf` was filled by the real call.
            unsafe { patch_statx(buf, &n) };
        }
    }
    rc
}
