//! Wrappers of the calls on fds: ioctl, mmap, munmap, read and write in
//! all their forms, lseek, close and the close/dup families, and recvmsg
//! (fds received from other processes). Each asks the front end where the
//! fd goes ([`barmap_front::Front::route_fd`]): to the front end, to the
//! kernel, or nowhere (an errno).

use std::ffi::{c_int, c_uint, c_ulong, c_void};

use barmap_front::{Errno, FdRoute, Front};

use crate::{front, guarded, route, set_errno};

fn answer(r: Result<i64, Errno>) -> i64 {
    match r {
        Ok(v) => v,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// Serves `fd` with `serve` if it is a front-end file: Some(result), or
/// None when the kernel should serve it.
fn served(
    fd: c_int,
    serve: impl FnOnce(&'static Front, barmap_front::files::File) -> Result<i64, Errno>,
) -> Option<i64> {
    match route(fd) {
        FdRoute::Pass => None,
        FdRoute::Refuse(_, e) => Some(answer(Err(e))),
        FdRoute::Serve(f, file) => guarded(|| answer(serve(f, file))),
    }
}

#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    if let Some(r) = served(fd, |f, file| f.ioctl_fd(fd, file, req, arg as usize)) {
        return r as c_int;
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
            if fd >= 0 && flags & libc::MAP_ANONYMOUS == 0 {
                match route(fd) {
                    FdRoute::Pass => {}
                    // A foreign device fd: the device is not reachable here.
                    FdRoute::Refuse(_, e) => {
                        set_errno(e);
                        return libc::MAP_FAILED;
                    }
                    FdRoute::Serve(f, _) => {
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

// ----- pread and pwrite at an offset ---------------------------------------

macro_rules! pread_like {
    ($($sym:ident = $lit:literal, $method:ident, $p:ty),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(fd: c_int, buf: $p, len: usize, off: i64) -> isize {
            if let Some(r) = served(fd, |f, _| f.$method(fd, buf as usize, len, off)) {
                return r as isize;
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
            if len > buflen && !matches!(route(fd), FdRoute::Pass) {
                // glibc's fortify check: abort as __chk_fail would.
                std::process::abort();
            }
            if let Some(r) = served(fd, |f, _| f.pread(fd, buf as usize, len, off)) {
                return r as isize;
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

// ----- read and write at the file position, vectored forms -----------------

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, len: usize) -> isize {
    if let Some(r) = served(fd, |f, _| {
        f.read_at_position(fd, &[(buf as usize, len)], false)
    }) {
        return r as isize;
    }
    let real = real!(c"read" as fn(c_int, *mut c_void, usize) -> isize);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    unsafe { real(fd, buf, len) }
}

#[no_mangle]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    buflen: usize,
) -> isize {
    if len > buflen && !matches!(route(fd), FdRoute::Pass) {
        std::process::abort();
    }
    if let Some(r) = served(fd, |f, _| {
        f.read_at_position(fd, &[(buf as usize, len)], false)
    }) {
        return r as isize;
    }
    let real = real!(c"__read_chk" as fn(c_int, *mut c_void, usize, usize) -> isize);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    unsafe { real(fd, buf, len, buflen) }
}

#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, len: usize) -> isize {
    if let Some(r) = served(fd, |f, _| {
        f.read_at_position(fd, &[(buf as usize, len)], true)
    }) {
        return r as isize;
    }
    let real = real!(c"write" as fn(c_int, *const c_void, usize) -> isize);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    unsafe { real(fd, buf, len) }
}

/// The caller's iovec array as (address, length) pairs; EINVAL as the
/// kernel's for a negative count or more than IOV_MAX.
///
/// # Safety
/// `iov` points to `cnt` iovecs when `cnt` is in range.
unsafe fn iovecs(iov: *const libc::iovec, cnt: c_int) -> Result<Vec<(usize, usize)>, Errno> {
    if !(0..=1024).contains(&cnt) || (cnt > 0 && iov.is_null()) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the caller's array of `cnt` iovecs.
    let v = unsafe { std::slice::from_raw_parts(iov, cnt as usize) };
    Ok(v.iter().map(|i| (i.iov_base as usize, i.iov_len)).collect())
}

macro_rules! rw_vectored {
    ($($sym:ident = $lit:literal, $write:expr),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> isize {
            // SAFETY: the caller's iovec array.
            if let Some(r) = served(fd, |f, _| f.read_at_position(fd, &unsafe { iovecs(iov, cnt) }?, $write)) {
                return r as isize;
            }
            let real = real!($lit as fn(c_int, *const libc::iovec, c_int) -> isize);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(fd, iov, cnt) }
        }
    )* };
}
rw_vectored!(readv = c"readv", false, writev = c"writev", true);

macro_rules! rw_vectored_at {
    ($($sym:ident = $lit:literal, $write:expr),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(fd: c_int, iov: *const libc::iovec, cnt: c_int, off: i64) -> isize {
            // SAFETY: the caller's iovec array.
            if let Some(r) = served(fd, |f, _| f.rw_at(fd, &unsafe { iovecs(iov, cnt) }?, off, $write)) {
                return r as isize;
            }
            let real = real!($lit as fn(c_int, *const libc::iovec, c_int, i64) -> isize);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(fd, iov, cnt, off) }
        }
    )* };
}
rw_vectored_at!(
    preadv = c"preadv",
    false,
    preadv64 = c"preadv64",
    false,
    pwritev = c"pwritev",
    true,
    pwritev64 = c"pwritev64",
    true,
);

macro_rules! rw_vectored_at2 {
    ($($sym:ident = $lit:literal, $write:expr),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(
            fd: c_int,
            iov: *const libc::iovec,
            cnt: c_int,
            off: i64,
            flags: c_int,
        ) -> isize {
            let r = served(fd, |f, _| {
                // SAFETY: the caller's iovec array.
                let v = unsafe { iovecs(iov, cnt) }?;
                if off == -1 {
                    f.read_at_position(fd, &v, $write) // -1: at the file position
                } else {
                    f.rw_at(fd, &v, off, $write)
                }
            });
            if let Some(r) = r {
                return r as isize;
            }
            let real = real!($lit as fn(c_int, *const libc::iovec, c_int, i64, c_int) -> isize);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(fd, iov, cnt, off, flags) }
        }
    )* };
}
rw_vectored_at2!(
    preadv2 = c"preadv2",
    false,
    preadv64v2 = c"preadv64v2",
    false,
    pwritev2 = c"pwritev2",
    true,
    pwritev64v2 = c"pwritev64v2",
    true,
);

macro_rules! lseek_like {
    ($($sym:ident = $lit:literal),* $(,)?) => { $(
        #[no_mangle]
        pub unsafe extern "C" fn $sym(fd: c_int, off: i64, whence: c_int) -> i64 {
            // VFIO files have no llseek: the kernel answers ESPIPE.
            if !matches!(route(fd), FdRoute::Pass) {
                set_errno(Errno::ESPIPE);
                return -1;
            }
            let real = real!($lit as fn(c_int, i64, c_int) -> i64);
            // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
            unsafe { real(fd, off, whence) }
        }
    )* };
}
lseek_like!(lseek = c"lseek", lseek64 = c"lseek64");

// ----- close and the dup family ----------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let real = real!(c"close" as fn(c_int) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    let rc = unsafe { real(fd) };
    // Whatever close returned, the number no longer names the file
    // (close(2): the fd is released even when an error is reported).
    if !Front::known_number(fd) {
        return rc;
    }
    if let Some(f) = front() {
        guarded(|| f.close(fd));
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let real = real!(c"close_range" as fn(c_uint, c_uint, c_int) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    let rc = unsafe { real(first, last, flags) };
    if rc == 0 && flags as c_uint & libc::CLOSE_RANGE_CLOEXEC == 0 {
        if let Some(f) = front() {
            guarded(|| f.close_range(first, last));
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn closefrom(first: c_int) {
    let real = real!(c"closefrom" as fn(c_int) -> ());
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    unsafe { real(first) };
    if let Some(f) = front() {
        guarded(|| f.close_range(first.max(0) as u32, u32::MAX));
    }
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let real = real!(c"dup" as fn(c_int) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    let new = unsafe { real(fd) };
    after_dup(fd, new);
    new
}

/// `new` is a duplicate of `old` now (done in the kernel).
fn after_dup(old: c_int, new: c_int) {
    if new < 0 || old == new || !(Front::known_number(old) || Front::known_number(new)) {
        return;
    }
    if let Some(f) = front() {
        // One step, as the kernel's dup2 is (one table update under its
        // lock): `new` names the old file or the new one, never nothing,
        // for a thread that uses it meanwhile.
        guarded(|| f.dup(old, new));
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
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        after_dup(fd, rc);
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the same call, with the same arguments.
    unsafe { fcntl(fd, cmd, arg) }
}

// ----- fds from other processes ----------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
    let real = real!(c"recvmsg" as fn(c_int, *mut libc::msghdr, c_int) -> isize);
    // SAFETY: the caller's arguments, unchanged, to libc's definition of the same function.
    let n = unsafe { real(fd, msg, flags) };
    if n >= 0 && !msg.is_null() {
        if let Some(f) = front() {
            // SAFETY: the kernel just filled the caller's msghdr.
            for received in unsafe { received_fds(msg) } {
                guarded(|| f.received(received));
            }
        }
    }
    n
}

/// The fds an `SCM_RIGHTS` control message in `msg` carries.
///
/// # Safety
/// `msg` is a msghdr that recvmsg filled.
unsafe fn received_fds(msg: *mut libc::msghdr) -> Vec<c_int> {
    let mut out = Vec::new();
    // SAFETY: walking the control buffer with the libc macros, as cmsg(3) shows.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const c_int;
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<c_int>() {
                    out.push(data.add(i).read_unaligned());
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    out
}
