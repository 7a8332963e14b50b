//! Signal dispositions and masks as the program sets them.
//!
//! barmap's trap owns the kernel's SIGSEGV and SIGILL dispositions from
//! the moment the library is loaded
//! ([`barmap_models::trap::install_for_program`]; SIGILL for the 64-byte
//! stores, MOVDIR64B and ENQCMD, that a CPU without them refuses); every
//! libc way of setting a SIGSEGV or SIGILL disposition (`sigaction`,
//! `__sigaction`, `signal`, `bsd_signal`, `ssignal`, `sysv_signal`,
//! `__sysv_signal`, `sigset`, `sigignore`, `siginterrupt`) sets the
//! program's instead and reports the program's previous one. SIGBUS and
//! every other signal go to libc unchanged. SIGILL's mask is the real one
//! (a thread that blocks it dies at an illegal instruction, as without
//! barmap).
//!
//! SIGSEGV is never blocked for real: a register access by a thread that
//! blocked it would kill the process in the kernel (a blocked synchronous
//! signal is fatal). `pthread_sigmask`, `sigprocmask`, `sighold`,
//! `sigrelse` and `sigset(SIG_HOLD)` keep the program's view of SIGSEGV
//! per thread and report it back; `pthread_create` hands it to the new
//! thread; `siglongjmp` and its kin restore it with a saved mask;
//! `sigaction` leaves SIGSEGV out of the mask the kernel applies while a
//! handler runs and reports it back in the handler's mask.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use barmap_models::trap;

use crate::BUSY;

/// Installs barmap's SIGSEGV handler when the library is loaded, before
/// the program runs.
#[used]
#[link_section = ".init_array"]
static INSTALL: extern "C" fn() = install;

extern "C" fn install() {
    trap::install_for_program();
    trap::on_inherited_access(adopt_inherited);
    prefetch();
}

/// A forked child's access to a register mapping its parent made
/// ([`barmap_front::adopt_on_access`]), with the front end's calls of libc
/// passing the wrappers by (as every call into the front end does).
fn adopt_inherited(addr: usize) -> bool {
    crate::guarded(|| barmap_front::adopt_on_access(addr)).unwrap_or(false)
}

const SIG_HOLD: libc::sighandler_t = 2;

fn busy() -> bool {
    BUSY.with(Cell::get)
}

fn has_segv(s: &libc::sigset_t) -> bool {
    // SAFETY: a valid sigset.
    unsafe { libc::sigismember(s, libc::SIGSEGV) == 1 }
}

fn without_segv(s: &libc::sigset_t) -> libc::sigset_t {
    let mut copy = *s;
    // SAFETY: a valid sigset in local memory.
    unsafe { libc::sigdelset(&mut copy, libc::SIGSEGV) };
    copy
}

fn add_segv(s: &mut libc::sigset_t) {
    add_signal(s, libc::SIGSEGV);
}

fn add_signal(s: &mut libc::sigset_t, sig: c_int) {
    // SAFETY: a valid sigset.
    unsafe { libc::sigaddset(s, sig) };
}

/// The signals whose disposition the trap keeps for the program.
fn owned(sig: c_int) -> bool {
    sig == libc::SIGSEGV || sig == libc::SIGILL
}

/// Signals (bit `sig - 1`) whose handler mask the program gave with
/// SIGSEGV in it.
static SEGV_IN_MASK: AtomicU64 = AtomicU64::new(0);

type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

unsafe fn program_sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
    real: SigactionFn,
) -> c_int {
    if busy() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real(sig, act, old) };
    }
    // SAFETY: the caller's pointers, null or valid, as sigaction(2) needs.
    if let Some(rc) = unsafe { trap::program_sigaction(sig, act, old) } {
        return rc;
    }
    if !(1..=64).contains(&sig) {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real(sig, act, old) };
    }
    let flag = 1u64 << (sig - 1);
    // SAFETY: the caller's valid sigaction, copied before `old` (which may
    // be the same memory) is written.
    let given = (!act.is_null()).then(|| unsafe { *act });
    let applied = given.map(|mut a| {
        a.sa_mask = without_segv(&a.sa_mask);
        a
    });
    let had = SEGV_IN_MASK.load(Ordering::Relaxed) & flag != 0;
    let act = applied.as_ref().map_or(std::ptr::null(), |a| a as *const _);
    // SAFETY: a valid sigaction or null, the caller's out-pointer.
    let rc = unsafe { real(sig, act, old) };
    if rc == 0 {
        if had && !old.is_null() {
            // SAFETY: the caller's valid out-pointer, just written.
            add_segv(unsafe { &mut (*old).sa_mask });
        }
        match given {
            Some(a) if has_segv(&a.sa_mask) => SEGV_IN_MASK.fetch_or(flag, Ordering::Relaxed),
            Some(_) => SEGV_IN_MASK.fetch_and(!flag, Ordering::Relaxed),
            None => 0,
        };
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let real =
        real!(c"sigaction" as fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int);
    // SAFETY: the caller's arguments and libc's sigaction.
    unsafe { program_sigaction(sig, act, old, real) }
}

#[no_mangle]
pub unsafe extern "C" fn __sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let real =
        real!(c"__sigaction" as fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int);
    // SAFETY: the caller's arguments and libc's __sigaction.
    unsafe { program_sigaction(sig, act, old, real) }
}

/// The program's disposition of `sig` (SIGSEGV or SIGILL): `act` set (if
/// not null), the previous one in `old` (if not null).
fn owned_action(
    sig: c_int,
    act: Option<&libc::sigaction>,
    old: Option<&mut libc::sigaction>,
) -> c_int {
    let act = act.map_or(std::ptr::null(), |a| a as *const _);
    let old = old.map_or(std::ptr::null_mut(), |a| a as *mut _);
    // SAFETY: null or valid local sigactions.
    if let Some(rc) = unsafe { trap::program_sigaction(sig, act, old) } {
        return rc;
    }
    let real =
        real!(c"sigaction" as fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int);
    // SAFETY: as above, to libc.
    unsafe { real(sig, act, old) }
}

fn segv_action(act: Option<&libc::sigaction>, old: Option<&mut libc::sigaction>) -> c_int {
    owned_action(libc::SIGSEGV, act, old)
}

/// Sets the program's SIGSEGV handler as libc's `signal` family does;
/// returns the previous one, or SIG_ERR with errno EINVAL.
fn segv_handler(handler: libc::sighandler_t, flags: c_int, mask_self: bool) -> libc::sighandler_t {
    owned_handler(libc::SIGSEGV, handler, flags, mask_self)
}

/// Sets the program's handler of `sig` (SIGSEGV or SIGILL) as libc's
/// `signal` family does; returns the previous one, or SIG_ERR with errno
/// EINVAL.
fn owned_handler(
    sig: c_int,
    handler: libc::sighandler_t,
    flags: c_int,
    mask_self: bool,
) -> libc::sighandler_t {
    if handler == libc::SIG_ERR {
        // SAFETY: this thread's errno.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return libc::SIG_ERR;
    }
    // SAFETY: a zeroed sigaction is valid.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = flags;
    if mask_self {
        add_signal(&mut act.sa_mask, sig);
    }
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    if owned_action(sig, Some(&act), Some(&mut old)) != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

/// glibc's `signal`, `bsd_signal` and `ssignal`: BSD semantics (the
/// handler stays, system calls restart, the signal is blocked meanwhile).
macro_rules! bsd_signal {
    ($name:ident, $sym:literal) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            sig: c_int,
            handler: libc::sighandler_t,
        ) -> libc::sighandler_t {
            if owned(sig) && !busy() {
                return owned_handler(sig, handler, libc::SA_RESTART, true);
            }
            let real = real!($sym as fn(c_int, libc::sighandler_t) -> libc::sighandler_t);
            // SAFETY: the caller's arguments, unchanged, to libc.
            unsafe { real(sig, handler) }
        }
    };
}

bsd_signal!(signal, c"signal");
bsd_signal!(bsd_signal, c"bsd_signal");
bsd_signal!(ssignal, c"ssignal");

/// glibc's `sysv_signal`: System V semantics (the handler runs once,
/// unblocked, and system calls are interrupted).
macro_rules! sysv_signal {
    ($name:ident, $sym:literal) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            sig: c_int,
            handler: libc::sighandler_t,
        ) -> libc::sighandler_t {
            if owned(sig) && !busy() {
                return owned_handler(sig, handler, libc::SA_RESETHAND | libc::SA_NODEFER, false);
            }
            let real = real!($sym as fn(c_int, libc::sighandler_t) -> libc::sighandler_t);
            // SAFETY: the caller's arguments, unchanged, to libc.
            unsafe { real(sig, handler) }
        }
    };
}

sysv_signal!(sysv_signal, c"sysv_signal");
sysv_signal!(__sysv_signal, c"__sysv_signal");

#[no_mangle]
pub unsafe extern "C" fn sigset(sig: c_int, disp: libc::sighandler_t) -> libc::sighandler_t {
    if sig == libc::SIGILL && !busy() {
        return sigset_sigill(disp);
    }
    if sig != libc::SIGSEGV || busy() {
        let real = real!(c"sigset" as fn(c_int, libc::sighandler_t) -> libc::sighandler_t);
        // SAFETY: the caller's arguments, unchanged, to libc.
        return unsafe { real(sig, disp) };
    }
    let was_held = trap::program_blocks_sigsegv();
    if disp == SIG_HOLD {
        trap::set_program_blocks_sigsegv(true);
        if was_held {
            return SIG_HOLD;
        }
        // SAFETY: a zeroed sigaction is valid.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        segv_action(None, Some(&mut old));
        return old.sa_sigaction;
    }
    let prev = segv_handler(disp, 0, false);
    if prev == libc::SIG_ERR {
        return prev;
    }
    trap::set_program_blocks_sigsegv(false);
    if was_held {
        SIG_HOLD
    } else {
        prev
    }
}

/// `sigset(SIGILL, disp)`: the program's disposition, with SIGILL's real
/// mask (SIG_HOLD blocks it, anything else unblocks it).
fn sigset_sigill(disp: libc::sighandler_t) -> libc::sighandler_t {
    let real =
        real!(c"pthread_sigmask" as fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int);
    // SAFETY: an empty sigset in local memory.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    add_signal(&mut set, libc::SIGILL);
    // SAFETY: as above.
    let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
    let how = if disp == SIG_HOLD {
        libc::SIG_BLOCK
    } else {
        let prev = owned_handler(libc::SIGILL, disp, 0, false);
        if prev == libc::SIG_ERR {
            return prev;
        }
        libc::SIG_UNBLOCK
    };
    // SAFETY: valid local sigsets, to libc's pthread_sigmask.
    unsafe { real(how, &set, &mut before) };
    // SAFETY: a valid sigset.
    if unsafe { libc::sigismember(&before, libc::SIGILL) } == 1 {
        return SIG_HOLD;
    }
    // SAFETY: a zeroed sigaction is valid.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    owned_action(libc::SIGILL, None, Some(&mut old));
    old.sa_sigaction
}

#[no_mangle]
pub unsafe extern "C" fn sigignore(sig: c_int) -> c_int {
    if owned(sig) && !busy() {
        return if owned_handler(sig, libc::SIG_IGN, 0, false) == libc::SIG_ERR {
            -1
        } else {
            0
        };
    }
    let real = real!(c"sigignore" as fn(c_int) -> c_int);
    // SAFETY: the caller's argument, unchanged, to libc.
    unsafe { real(sig) }
}

#[no_mangle]
pub unsafe extern "C" fn siginterrupt(sig: c_int, interrupt: c_int) -> c_int {
    if owned(sig) && !busy() {
        // SAFETY: a zeroed sigaction is valid.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        owned_action(sig, None, Some(&mut act));
        if interrupt != 0 {
            act.sa_flags &= !libc::SA_RESTART;
        } else {
            act.sa_flags |= libc::SA_RESTART;
        }
        return owned_action(sig, Some(&act), None);
    }
    let real = real!(c"siginterrupt" as fn(c_int, c_int) -> c_int);
    // SAFETY: the caller's arguments, unchanged, to libc.
    unsafe { real(sig, interrupt) }
}

macro_rules! hold {
    ($name:ident, $sym:literal, $held:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(sig: c_int) -> c_int {
            if sig == libc::SIGSEGV && !busy() {
                trap::set_program_blocks_sigsegv($held);
                return 0;
            }
            let real = real!($sym as fn(c_int) -> c_int);
            // SAFETY: the caller's argument, unchanged, to libc.
            unsafe { real(sig) }
        }
    };
}

hold!(sighold, c"sighold", true);
hold!(sigrelse, c"sigrelse", false);

type MaskFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;

/// A mask change with SIGSEGV kept open: the program's view of SIGSEGV is
/// recorded and reported back in `old`.
unsafe fn program_mask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
    real: MaskFn,
) -> c_int {
    if busy() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real(how, set, old) };
    }
    let held = trap::program_blocks_sigsegv();
    let mut now_held = held;
    // SAFETY: the caller's valid set, copied before `old` (which may be
    // the same memory) is written.
    let applied = (!set.is_null()).then(|| unsafe { *set }).map(|s| {
        let segv = has_segv(&s);
        match how {
            libc::SIG_BLOCK => now_held = held || segv,
            libc::SIG_UNBLOCK => now_held = held && !segv,
            libc::SIG_SETMASK => now_held = segv,
            _ => {}
        }
        without_segv(&s)
    });
    let set = applied.as_ref().map_or(std::ptr::null(), |s| s as *const _);
    // SAFETY: a valid set or null, the caller's out-pointer.
    let rc = unsafe { real(how, set, old) };
    if rc == 0 {
        if held && !old.is_null() {
            // SAFETY: the caller's valid out-pointer, just written.
            add_segv(unsafe { &mut *old });
        }
        trap::set_program_blocks_sigsegv(now_held);
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn pthread_sigmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    let real =
        real!(c"pthread_sigmask" as fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int);
    // SAFETY: the caller's arguments and libc's pthread_sigmask.
    unsafe { program_mask(how, set, old, real) }
}

#[no_mangle]
pub unsafe extern "C" fn sigprocmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    let real =
        real!(c"sigprocmask" as fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int);
    // SAFETY: the caller's arguments and libc's sigprocmask.
    unsafe { program_mask(how, set, old, real) }
}

type StartFn = extern "C" fn(*mut c_void) -> *mut c_void;

/// A thread started by a thread that the program believes blocks SIGSEGV.
struct HeldStart {
    start: StartFn,
    arg: *mut c_void,
}

extern "C" fn held_start(p: *mut c_void) -> *mut c_void {
    // SAFETY: `pthread_create` passes the box it leaked, to this thread only.
    let s = unsafe { Box::from_raw(p.cast::<HeldStart>()) };
    trap::set_program_blocks_sigsegv(true);
    (s.start)(s.arg)
}

/// The new thread inherits its creator's view of SIGSEGV, as it inherits
/// the mask.
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: StartFn,
    arg: *mut c_void,
) -> c_int {
    let real = real!(
        c"pthread_create"
            as fn(*mut libc::pthread_t, *const libc::pthread_attr_t, StartFn, *mut c_void) -> c_int
    );
    if busy() || !trap::program_blocks_sigsegv() {
        // SAFETY: the caller's arguments, unchanged, to libc.
        return unsafe { real(thread, attr, start, arg) };
    }
    let p = Box::into_raw(Box::new(HeldStart { start, arg }));
    // SAFETY: the caller's thread and attributes; `held_start` takes the box.
    let rc = unsafe { real(thread, attr, held_start, p.cast()) };
    if rc != 0 {
        // SAFETY: the thread was not created; the box is still ours.
        drop(unsafe { Box::from_raw(p) });
    }
    rc
}

/// glibc's `jmp_buf`: the registers, then whether the mask was saved.
const MASK_WAS_SAVED: usize = 64;

/// A jump that restores a saved mask restores one in which SIGSEGV is
/// open (barmap never blocks it), and the program's view with it: SIGSEGV
/// is no longer held (the view at `sigsetjmp` time is not recorded).
macro_rules! longjmp {
    ($name:ident, $slot:ident, $sym:literal) => {
        /// libc's definition, looked up at load time: a jump often leaves
        /// a handler on a small alternate stack, with no room for dlsym.
        static $slot: AtomicUsize = AtomicUsize::new(0);

        #[no_mangle]
        pub unsafe extern "C" fn $name(env: *mut c_void, val: c_int) -> ! {
            // SAFETY: the caller's jmp_buf, which sigsetjmp filled.
            if unsafe { env.cast::<u8>().add(MASK_WAS_SAVED).cast::<c_int>().read() } != 0 {
                trap::set_program_blocks_sigsegv(false);
            }
            let f = crate::next(&$slot, $sym);
            assert!(
                f != 0,
                "barmap-preload: no next definition of a libc function"
            );
            // SAFETY: the symbol is libc's function of this signature; it
            // does not return.
            unsafe {
                std::mem::transmute::<usize, unsafe extern "C" fn(*mut c_void, c_int) -> !>(f)(
                    env, val,
                )
            }
        }
    };
}

longjmp!(siglongjmp, SIGLONGJMP, c"siglongjmp");
longjmp!(longjmp, LONGJMP, c"longjmp");
longjmp!(_longjmp, _LONGJMP, c"_longjmp");
longjmp!(__longjmp_chk, LONGJMP_CHK, c"__longjmp_chk");

/// Looks up libc's definitions that signal handlers reach, at load time.
fn prefetch() {
    crate::next(&SIGLONGJMP, c"siglongjmp");
    crate::next(&LONGJMP, c"longjmp");
    crate::next(&_LONGJMP, c"_longjmp");
    crate::next(&LONGJMP_CHK, c"__longjmp_chk");
}
