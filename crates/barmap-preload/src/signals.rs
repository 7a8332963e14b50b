//! Signal dispositions: the program's SIGSEGV handler, set through
//! `sigaction` or `signal` once a register BAR is mapped, is kept for
//! barmap's trap to chain to.

use std::cell::Cell;
use std::ffi::c_int;

use crate::BUSY;

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
