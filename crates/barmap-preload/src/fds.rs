//! Wrappers of the calls on fds: ioctl, mmap, munmap, pread/pwrite,
//! close and the dup family, handed to the front end for its fds.

use std::ffi::{c_int, c_ulong, c_void};

use barmap_front::{Errno, Front};

use crate::{front, guarded, set_errno};

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
        // One step, as the kernel's dup2 is: `new` names the old file or
        // the new one, never nothing, for a thread that uses it meanwhile.
        guarded(|| {
            if f.owns(old) {
                f.dup(old, new); // replaces what was there
            } else if f.owns(new) {
                f.close(new); // dup2 closed what was there
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
