//! The program's SIGSEGV, SIGILL and SIGBUS dispositions, with barmap's
//! SIGSEGV and SIGILL handlers in front of the program's.
//!
//! SIGILL is owned like SIGSEGV (the program's disposition kept here,
//! reported back, reclaimed after a raw `rt_sigaction`) so that a
//! MOVDIR64B or ENQCMD this CPU lacks can be emulated on a register
//! mapping; any other SIGILL goes to the program's disposition. Unlike
//! SIGSEGV, SIGILL's mask is the real one: a thread that blocks it dies at
//! an illegal instruction, in the kernel, as without barmap.
//!
//! barmap owns the kernel's SIGSEGV disposition and nothing else: the
//! program's SIGSEGV disposition is kept here (set through
//! [`program_sigaction`], which `barmap run`'s `sigaction`, `signal`,
//! `sigset`, ... wrappers call), and its SIGBUS disposition stays the
//! kernel's, untouched. barmap's handler runs with `SA_SIGINFO`,
//! `SA_ONSTACK` (a stack overflow is handled on the program's alternate
//! stack), `SA_NODEFER` (a register access inside a handler is trapped
//! too), the program's `SA_RESTART`, and every asynchronous signal blocked
//! while it decides (their handlers may touch registers, whose device is
//! locked meanwhile). It emulates a register access through a live
//! register mapping; everything else is delivered as the kernel would
//! have: the program's handler with the kernel's siginfo and ucontext, its
//! `sa_mask`, `SA_NODEFER`, `SA_RESETHAND` and `SA_ONSTACK` (off the
//! alternate stack, it runs below the interrupted stack pointer), or the
//! default action (the process dies of the signal, with its core dump).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

use super::{emulate, emulate_undefined, may_be_ours, Outcome};

static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The process is a program under `barmap run`: barmap-target's exception
/// table is not installed beneath the trap.
static FOR_PROGRAM: AtomicBool = AtomicBool::new(false);
/// The process is dying of a signal: barmap's handler is not put back.
static DYING: AtomicBool = AtomicBool::new(false);
/// libc's signal restorer, which `sigaction` reports (with
/// `SA_RESTORER`) for a disposition set through libc.
static RESTORER: AtomicUsize = AtomicUsize::new(0);

/// The kernel's flag for a disposition with a restorer (x86_64).
const SA_RESTORER: libc::c_int = 0x0400_0000;

/// The program's own SIGSEGV disposition (Some once barmap's is installed).
static PROGRAM_SEGV: Mutex<Option<Action>> = Mutex::new(None);
/// The program's own SIGILL disposition (Some once barmap's is installed).
static PROGRAM_ILL: Mutex<Option<Action>> = Mutex::new(None);

/// The signals whose kernel disposition is barmap's: SIGSEGV (register
/// accesses, and 64-byte stores on CPUs that have MOVDIR64B and ENQCMD)
/// and SIGILL (64-byte stores on CPUs that lack them).
const OWNED: [libc::c_int; 2] = [libc::SIGSEGV, libc::SIGILL];

#[derive(Clone, Copy)]
struct Action(libc::sigaction);
// SAFETY: a sigaction is plain data (a handler address, a mask, flags).
unsafe impl Send for Action {}

thread_local! {
    /// The program believes this thread blocks SIGSEGV.
    static HELD: Cell<bool> = const { Cell::new(false) };
    /// A SIGSEGV sent (not raised by a fault) while the thread held it:
    /// pending until the program unblocks it.
    static PENDING: Cell<Option<libc::siginfo_t>> = const { Cell::new(None) };
}

/// Signals that the kernel delivers synchronously (faults), never blocked
/// while barmap's handler runs.
const SYNCHRONOUS: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
];

/// Whether the program believes the calling thread blocks SIGSEGV.
///
/// Under `barmap run` SIGSEGV is never blocked for real (a blocked
/// synchronous SIGSEGV kills the process in the kernel, so a register
/// access could not be trapped); the preload's `pthread_sigmask` and
/// `sigprocmask` keep the program's view here and report it back.
pub fn program_blocks_sigsegv() -> bool {
    HELD.with(Cell::get)
}

/// Records whether the program believes the calling thread blocks SIGSEGV
/// (see [`program_blocks_sigsegv`]).
/// A SIGSEGV sent to the thread while it held it is delivered now, as the
/// kernel delivers a pending signal when it is unblocked.
pub fn set_program_blocks_sigsegv(held: bool) {
    HELD.with(|h| h.set(held));
    if !held {
        if let Some(mut info) = PENDING.with(Cell::take) {
            // SAFETY: a signal to this thread with the siginfo it was sent
            // with (a process may queue any siginfo to itself).
            unsafe {
                libc::syscall(
                    libc::SYS_rt_tgsigqueueinfo,
                    libc::getpid(),
                    libc::syscall(libc::SYS_gettid),
                    libc::SIGSEGV,
                    &mut info as *mut libc::siginfo_t,
                );
            }
        }
    }
}

fn bit(sig: libc::c_int) -> u64 {
    1u64 << (sig - 1)
}

/// The first 64 signals of a set (the kernel's `sigset_t` on x86_64).
fn bits(s: &libc::sigset_t) -> u64 {
    // SAFETY: a sigset_t is at least 8 bytes of plain data.
    unsafe { (s as *const libc::sigset_t).cast::<u64>().read_unaligned() }
}

fn set_bits(s: &mut libc::sigset_t, v: u64) {
    // SAFETY: as in `bits`.
    unsafe { (s as *mut libc::sigset_t).cast::<u64>().write_unaligned(v) }
}

/// The thread's signal mask through the system call (libc's wrappers may
/// be the preload's); returns the previous mask.
fn sigmask(how: libc::c_int, set: u64) -> u64 {
    let mut old = 0u64;
    // SAFETY: 8-byte kernel sigsets in local memory.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            &set as *const u64,
            &mut old as *mut u64,
            8usize,
        );
    }
    old
}

/// Runs `f` with every signal blocked, so that no handler on this thread
/// can wait for a lock `f` holds.
fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    let before = sigmask(libc::SIG_SETMASK, u64::MAX);
    let r = f();
    sigmask(libc::SIG_SETMASK, before);
    r
}

/// The program's disposition of `sig` (one of [`OWNED`]).
fn program(sig: libc::c_int) -> MutexGuard<'static, Option<Action>> {
    let slot = if sig == libc::SIGILL {
        &PROGRAM_ILL
    } else {
        &PROGRAM_SEGV
    };
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

type SigactionFn =
    unsafe extern "C" fn(libc::c_int, *const libc::sigaction, *mut libc::sigaction) -> libc::c_int;

/// libc's `sigaction`, found past any wrapper of it (the preload's).
fn real_sigaction() -> SigactionFn {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let mut f = SLOT.load(Ordering::Relaxed);
    if f == 0 {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"sigaction".as_ptr()) } as usize;
        if f == 0 {
            f = libc::sigaction as *const () as usize;
        }
        SLOT.store(f, Ordering::Relaxed);
    }
    // SAFETY: the address is libc's sigaction, of exactly this signature.
    unsafe { std::mem::transmute::<usize, SigactionFn>(f) }
}

fn zeroed_action() -> libc::sigaction {
    // SAFETY: a zeroed sigaction (SIG_DFL, empty mask, no flags) is valid.
    unsafe { std::mem::zeroed() }
}

fn query(sig: libc::c_int) -> libc::sigaction {
    let mut a = zeroed_action();
    // SAFETY: a valid out-pointer; no new disposition.
    unsafe { real_sigaction()(sig, std::ptr::null(), &mut a) };
    a
}

fn set(sig: libc::c_int, a: &libc::sigaction) {
    // SAFETY: a valid disposition; no old one asked for.
    unsafe { real_sigaction()(sig, a, std::ptr::null_mut()) };
}

fn handler_addr(sig: libc::c_int) -> usize {
    if sig == libc::SIGILL {
        on_sigill as *const () as usize
    } else {
        on_sigsegv as *const () as usize
    }
}

/// barmap's disposition for `sig` (SIGSEGV or SIGILL), restarting system
/// calls as the program's handler asked (a sent signal may interrupt one).
fn barmap_action(sig: libc::c_int, restart: bool) -> libc::sigaction {
    let mut sa = zeroed_action();
    sa.sa_sigaction = handler_addr(sig);
    sa.sa_flags = libc::SA_SIGINFO
        | libc::SA_ONSTACK
        | libc::SA_NODEFER
        | if restart { libc::SA_RESTART } else { 0 };
    let mut mask = u64::MAX;
    for s in SYNCHRONOUS {
        mask &= !bit(s);
    }
    set_bits(&mut sa.sa_mask, mask);
    sa
}

fn restarts(a: &libc::sigaction) -> bool {
    a.sa_flags & libc::SA_RESTART != 0
}

/// Installs barmap's SIGSEGV handler (once), keeping the disposition it
/// replaces as the program's.
pub(super) fn install() {
    INSTALL.call_once(|| {
        if !FOR_PROGRAM.load(Ordering::Acquire) {
            // barmap's own exception table (barmap-target's touch
            // accessors) sits underneath, as a program's handlers would.
            barmap_target::touch::install();
        }
        with_signals_blocked(|| {
            for sig in OWNED {
                let mut program = program(sig);
                let mut old = zeroed_action();
                // SAFETY: a valid disposition and out-pointer.
                let rc = unsafe { real_sigaction()(sig, &barmap_action(sig, false), &mut old) };
                assert_eq!(rc, 0, "installing barmap's handler of signal {sig} failed");
                if restarts(&old) {
                    set(sig, &barmap_action(sig, true));
                }
                let mine = query(sig);
                RESTORER.store(
                    mine.sa_restorer.map_or(0, |f| f as usize),
                    Ordering::Relaxed,
                );
                *program = Some(Action(old));
            }
        });
        INSTALLED.store(true, Ordering::Release);
    });
}

/// Installs barmap's SIGSEGV handler in a program run by `barmap run`, at
/// load time, before the program sets any disposition: from then on the
/// program's SIGSEGV disposition is the one [`program_sigaction`] keeps.
pub fn install_for_program() {
    FOR_PROGRAM.store(true, Ordering::Release);
    install();
}

/// If a disposition of `sig` set past libc (a raw `rt_sigaction` system
/// call) replaced barmap's handler, takes it as the program's and puts
/// barmap's back in front. Called with the program's disposition locked.
fn adopt(sig: libc::c_int, program: &mut Option<Action>) {
    if DYING.load(Ordering::Acquire) {
        return;
    }
    let current = query(sig);
    if current.sa_sigaction != handler_addr(sig) {
        set(sig, &barmap_action(sig, restarts(&current)));
        *program = Some(Action(current));
    }
}

/// Puts barmap's handlers back in front of ones that a raw `rt_sigaction`
/// installed since (at each register mapping).
pub(super) fn reclaim() {
    if INSTALLED.load(Ordering::Acquire) {
        with_signals_blocked(|| {
            for sig in OWNED {
                adopt(sig, &mut program(sig));
            }
        });
    }
}

/// The program's `sigaction(sig, act, old)` for SIGSEGV or SIGILL once
/// barmap's handlers are installed: `act` becomes the disposition barmap
/// delivers to, and `old` is the program's previous one (never barmap's).
/// Returns None (the caller passes the call on to libc) for other signals
/// or before barmap's handlers are installed. For `barmap run`'s
/// `sigaction` wrapper.
///
/// # Safety
/// `act` and `old` are null or valid, as for `sigaction(2)`.
pub unsafe fn program_sigaction(
    sig: libc::c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> Option<libc::c_int> {
    if !OWNED.contains(&sig) || !INSTALLED.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: the caller's valid sigaction, read before `old` (which may
    // be the same memory) is written.
    let new = (!act.is_null()).then(|| unsafe { *act });
    let prev = with_signals_blocked(|| {
        let mut program = program(sig);
        adopt(sig, &mut program);
        let prev = *program;
        if let Some(mut a) = new {
            // As the kernel and libc report it back: SIGKILL and SIGSTOP
            // are never in a handler's mask; libc's restorer is set.
            let mask = bits(&a.sa_mask) & !(bit(libc::SIGKILL) | bit(libc::SIGSTOP));
            set_bits(&mut a.sa_mask, mask);
            a.sa_flags |= SA_RESTORER;
            // SAFETY: the restorer is libc's (or none), an Option of a
            // function pointer.
            a.sa_restorer = unsafe {
                std::mem::transmute::<usize, Option<extern "C" fn()>>(
                    RESTORER.load(Ordering::Relaxed),
                )
            };
            set(sig, &barmap_action(sig, restarts(&a)));
            *program = Some(Action(a));
        }
        prev
    });
    if !old.is_null() {
        // SAFETY: the caller's valid out-pointer.
        unsafe { *old = prev.map_or_else(zeroed_action, |a| a.0) };
    }
    Some(0)
}

fn program_action(sig: libc::c_int) -> libc::sigaction {
    program(sig).map_or_else(zeroed_action, |a| a.0)
}

fn is_handler(a: &libc::sigaction) -> bool {
    a.sa_sigaction != libc::SIG_DFL && a.sa_sigaction != libc::SIG_IGN
}

pub(super) extern "C" fn on_sigsegv(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler; only their documented fields are used.
    unsafe {
        // Only a fault the kernel raised can be a register access (a
        // SIGSEGV sent by kill has no address); a stack overflow is not
        // looked up (the alternate stack it runs on may be small).
        if (*info).si_code > 0 && !overflowed(info, uc) {
            match trapped((*info).si_addr() as usize, uc) {
                Outcome::Done => return,
                Outcome::Sigbus(at) => return deliver_sigbus(at, uc),
                Outcome::NotOurs => {}
            }
        }
        chain(sig, info, uc);
    }
}

/// barmap's SIGILL handler: a MOVDIR64B, ENQCMD or ENQCMDS that this CPU
/// lacks, whose destination is a register mapping, is emulated; every
/// other SIGILL reaches the program's disposition as the kernel would have
/// delivered it (its handler, or death by SIGILL at the instruction).
pub(super) extern "C" fn on_sigill(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler; only their documented fields are used.
    unsafe {
        if (*info).si_code > 0 {
            let mut outcome = Outcome::NotOurs;
            // SAFETY: the current signal's context, written only by
            // `emulate_undefined`.
            on_interrupted_stack(uc, &mut || outcome = emulate_undefined(&mut *uc));
            match outcome {
                Outcome::Done => return,
                Outcome::Sigbus(at) => return deliver_sigbus(at, uc),
                Outcome::NotOurs => {}
            }
        }
        chain_sigill(sig, info, uc);
    }
}

/// A SIGILL that is not a 64-byte store to a register mapping: the
/// program's handler, or the kernel's default (a fault reruns the
/// instruction with the default disposition, so the process dies of
/// SIGILL there, with its core dump). A thread that blocks SIGILL never
/// gets here for a fault: the kernel kills it first, as without barmap.
///
/// # Safety
/// The arguments are the current signal's.
unsafe fn chain_sigill(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::ucontext_t) {
    // SAFETY: the current signal's siginfo.
    let fault = unsafe { (*info).si_code } > 0;
    let action = program_action(sig);
    match action.sa_sigaction {
        // SAFETY: the current signal's siginfo.
        libc::SIG_DFL => unsafe { die(sig, info, fault) },
        // SAFETY: the current signal's siginfo.
        libc::SIG_IGN if fault => unsafe { die(sig, info, true) },
        libc::SIG_IGN => {}
        // SAFETY: the current signal's arguments; a handler disposition.
        _ => unsafe { run_handler(&action, sig, info, uc) },
    }
}

/// A fault at `addr`: emulated if it is a register access, on the stack
/// the kernel would have used without `SA_ONSTACK` (the alternate stack
/// may be small).
///
/// # Safety
/// `uc` is the current signal's context.
#[inline(never)]
unsafe fn trapped(addr: usize, uc: *mut libc::ucontext_t) -> Outcome {
    if !may_be_ours(addr) {
        return Outcome::NotOurs;
    }
    let mut outcome = Outcome::NotOurs;
    // SAFETY: the current signal's context, written only by `emulate`.
    unsafe { on_interrupted_stack(uc, &mut || outcome = emulate(addr, &mut *uc)) };
    outcome
}

/// The stack a handler without `SA_ONSTACK` would have run on, when
/// barmap's runs on the alternate stack and the interrupted code did not:
/// below the interrupted stack pointer and its 128-byte red zone.
fn interrupted_stack(uc: *const libc::ucontext_t) -> Option<usize> {
    // SAFETY: the current signal's context.
    let rsp = unsafe { (*uc).uc_mcontext.gregs[libc::REG_RSP as usize] } as usize;
    let marker = 0u8;
    let here = std::ptr::addr_of!(marker) as usize;
    if here < rsp && rsp - here < 1 << 20 {
        None
    } else {
        Some((rsp - 256) & !15)
    }
}

/// A fault at an address near the interrupted stack pointer: the stack
/// overflowed, and the kernel could not have built a frame there.
fn overflowed(info: *const libc::siginfo_t, uc: *const libc::ucontext_t) -> bool {
    // SAFETY: the current signal's siginfo and context.
    let (code, addr, rsp) = unsafe {
        (
            (*info).si_code,
            (*info).si_addr() as usize,
            (*uc).uc_mcontext.gregs[libc::REG_RSP as usize] as usize,
        )
    };
    code > 0 && addr <= rsp.saturating_add(4096) && addr >= rsp.saturating_sub(64 << 10)
}

/// Runs `f` where the kernel would have run a handler without
/// `SA_ONSTACK`.
///
/// # Safety
/// `uc` is the current signal's context.
#[inline(never)]
unsafe fn on_interrupted_stack(uc: *const libc::ucontext_t, f: &mut dyn FnMut()) {
    match interrupted_stack(uc) {
        None => f(),
        // SAFETY: the stack below the interrupted stack pointer and its
        // red zone is the thread's own and free, as for any signal frame.
        Some(sp) => unsafe { call_on_stack(sp, f) },
    }
}

unsafe extern "C" fn trampoline(arg: *mut libc::c_void) {
    // SAFETY: `call_on_stack` passes a pointer to its `&mut dyn FnMut()`.
    let f = unsafe { &mut *arg.cast::<&mut dyn FnMut()>() };
    f();
}

/// Calls `f` with the stack pointer at `sp` (16-byte aligned).
///
/// # Safety
/// The memory below `sp` is usable stack.
unsafe fn call_on_stack(sp: usize, mut f: &mut dyn FnMut()) {
    let arg = std::ptr::addr_of_mut!(f).cast::<libc::c_void>();
    // SAFETY: switches to `sp`, calls the trampoline (C ABI, so every
    // caller-saved register is declared clobbered) and switches back
    // through r12, which the callee preserves.
    unsafe {
        std::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {sp}",
            "call {t}",
            "mov rsp, r12",
            sp = in(reg) sp,
            t = in(reg) trampoline as *const () as usize,
            in("rdi") arg,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

/// A SIGSEGV that is not a register access: the program's handler, or
/// what the kernel would have done without one.
///
/// # Safety
/// The arguments are the current signal's.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::ucontext_t) {
    // SAFETY: the current signal's siginfo.
    let fault = unsafe { (*info).si_code } > 0;
    let action = program_action(sig);
    if program_blocks_sigsegv() {
        if fault {
            // The kernel kills a thread that blocks the fault it raised.
            // SAFETY: the current signal's siginfo.
            return unsafe { die(sig, info, true) };
        }
        // A sent SIGSEGV waits until the program unblocks it.
        // SAFETY: the current signal's siginfo.
        PENDING.with(|p| p.set(Some(unsafe { *info })));
        return;
    }
    match action.sa_sigaction {
        // SAFETY: the current signal's siginfo.
        libc::SIG_DFL => unsafe { die(sig, info, fault) },
        // An ignored fault kills too; an ignored kill() is ignored.
        // SAFETY: the current signal's siginfo.
        libc::SIG_IGN if fault => unsafe { die(sig, info, true) },
        libc::SIG_IGN => {}
        // SAFETY: the current signal's arguments; a handler disposition.
        _ => unsafe { run_handler(&action, sig, info, uc) },
    }
}

/// Runs the program's handler on the stack the kernel would have chosen.
///
/// # Safety
/// The arguments are the current signal's; `action` names a handler.
unsafe fn run_handler(
    action: &libc::sigaction,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uc: *mut libc::ucontext_t,
) {
    if action.sa_flags & libc::SA_ONSTACK == 0 {
        if let Some(sp) = interrupted_stack(uc) {
            if overflowed(info, uc) {
                // No room for a frame: the kernel forces the default.
                // SAFETY: the current signal's siginfo.
                return unsafe { die(sig, info, sig == libc::SIGSEGV) };
            }
            // SAFETY: as for any signal frame below the stack pointer.
            return unsafe {
                call_on_stack(sp, &mut || call_handler(action, sig, info, uc));
            };
        }
    }
    // SAFETY: the current signal's arguments.
    unsafe { call_handler(action, sig, info, uc) }
}

/// Calls `action`'s handler for `sig` as the kernel would: with the
/// interrupted mask, its `sa_mask` and the signal itself (unless
/// `SA_NODEFER`) blocked, SIGSEGV excepted; `SA_RESETHAND` first resets the
/// disposition; the handler gets the siginfo and ucontext of the fault.
///
/// # Safety
/// The arguments are the current signal's; `action` names a handler.
unsafe fn call_handler(
    action: &libc::sigaction,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uc: *mut libc::ucontext_t,
) {
    // SAFETY: the current signal's context.
    let interrupted = bits(unsafe { &(*uc).uc_sigmask });
    let mut mask = interrupted | bits(&action.sa_mask);
    if action.sa_flags & libc::SA_NODEFER == 0 {
        mask |= bit(sig);
    }
    mask &= !bit(libc::SIGSEGV);
    if action.sa_flags & libc::SA_RESETHAND != 0 {
        reset(sig);
    }
    let held = program_blocks_sigsegv();
    if held {
        // The mask the program believes it had.
        // SAFETY: the current signal's context.
        set_bits(
            unsafe { &mut (*uc).uc_sigmask },
            interrupted | bit(libc::SIGSEGV),
        );
    }
    // Inside the handler the program sees SIGSEGV blocked where the kernel
    // would block it (and a fault there kills, as in the kernel).
    let segv_in_mask = bits(&action.sa_mask) & bit(libc::SIGSEGV) != 0
        || (sig == libc::SIGSEGV && action.sa_flags & libc::SA_NODEFER == 0);
    set_program_blocks_sigsegv(held || segv_in_mask);
    let before = sigmask(libc::SIG_SETMASK, mask);
    // SAFETY: the handler address is the program's, of the type its flags
    // say; its arguments are the current signal's.
    unsafe {
        if action.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(action.sa_sigaction);
            f(sig, info, uc.cast());
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(action.sa_sigaction);
            f(sig);
        }
    }
    sigmask(libc::SIG_SETMASK, before);
    set_program_blocks_sigsegv(held);
    if held {
        // SAFETY: the current signal's context.
        let m = unsafe { &mut (*uc).uc_sigmask };
        set_bits(m, bits(m) & !bit(libc::SIGSEGV));
    }
}

/// `SA_RESETHAND`: the program's disposition of `sig` becomes SIG_DFL
/// (its flags and mask stay, as in the kernel).
#[inline(never)]
fn reset(sig: libc::c_int) {
    if OWNED.contains(&sig) {
        with_signals_blocked(|| {
            if let Some(a) = program(sig).as_mut() {
                a.0.sa_sigaction = libc::SIG_DFL;
            }
        });
    } else {
        let mut a = query(sig);
        a.sa_sigaction = libc::SIG_DFL;
        set(sig, &a);
    }
}

/// The process dies of `sig`, as the kernel's default action: with
/// `rerun` the faulting instruction runs again (and faults again, now
/// fatally); otherwise the signal is sent again with its siginfo.
///
/// # Safety
/// `info` is a valid siginfo for `sig`.
#[inline(never)]
unsafe fn die(sig: libc::c_int, info: *mut libc::siginfo_t, rerun: bool) {
    DYING.store(true, Ordering::Release);
    set(sig, &zeroed_action());
    sigmask(libc::SIG_UNBLOCK, bit(sig));
    if !rerun {
        // SAFETY: a signal to this thread with a valid siginfo; it is
        // delivered (fatally) when the system call returns.
        unsafe {
            libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                libc::getpid(),
                libc::syscall(libc::SYS_gettid),
                sig,
                info,
            );
        }
    }
}

/// The thread gets SIGBUS at `addr`, as the kernel's fault handler gives it
/// for revoked BAR memory: the program's SIGBUS handler runs with
/// `BUS_ADRERR`, the address and the faulting context; with no handler, or
/// SIGBUS blocked, the process dies of SIGBUS.
///
/// # Safety
/// `uc` is the current signal's context.
#[inline(never)]
unsafe fn deliver_sigbus(addr: usize, uc: *mut libc::ucontext_t) {
    // SAFETY: a zeroed siginfo is plain data; si_addr is at offset 16 in
    // the kernel's x86_64 layout.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    info.si_signo = libc::SIGBUS;
    info.si_code = libc::BUS_ADRERR;
    // SAFETY: as above, inside the local siginfo.
    unsafe {
        (&mut info as *mut libc::siginfo_t)
            .cast::<u8>()
            .add(16)
            .cast::<usize>()
            .write_unaligned(addr);
    }
    let current = query(libc::SIGBUS);
    // SAFETY: the current signal's context.
    let blocked = bits(unsafe { &(*uc).uc_sigmask }) & bit(libc::SIGBUS) != 0;
    if !is_handler(&current) || blocked {
        // SAFETY: a valid siginfo for SIGBUS.
        return unsafe { die(libc::SIGBUS, &mut info, false) };
    }
    // SAFETY: the current signal's context, a SIGBUS siginfo, a handler.
    unsafe { run_handler(&current, libc::SIGBUS, &mut info, uc) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_on_stack_runs_the_closure_on_the_given_stack_and_comes_back() {
        let mut stack = vec![0u8; 64 << 10];
        let base = stack.as_mut_ptr() as usize;
        let top = (base + stack.len()) & !15;
        let mut seen = 0usize;
        let mut calls = 0;
        // SAFETY: the closure runs on `stack`, 64 KiB of memory this test owns.
        unsafe {
            call_on_stack(top, &mut || {
                let marker = 0u8;
                seen = std::ptr::addr_of!(marker) as usize;
                calls += 1;
            })
        };
        assert_eq!(calls, 1);
        assert!(
            (base..top).contains(&seen),
            "{seen:#x} in {base:#x}..{top:#x}"
        );
    }

    #[test]
    fn a_fault_near_the_stack_pointer_is_an_overflow_and_one_elsewhere_is_not() {
        // SAFETY: zeroed siginfo and ucontext are plain data.
        let (mut info, mut uc): (libc::siginfo_t, libc::ucontext_t) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        info.si_code = 1; // SEGV_MAPERR
        uc.uc_mcontext.gregs[libc::REG_RSP as usize] = 0x7fff_0000_1000;
        let at = |info: &mut libc::siginfo_t, addr: usize| {
            // SAFETY: si_addr at offset 16, inside the local siginfo.
            unsafe {
                (info as *mut libc::siginfo_t)
                    .cast::<u8>()
                    .add(16)
                    .cast::<usize>()
                    .write_unaligned(addr)
            }
        };
        at(&mut info, 0x7fff_0000_0ff8);
        assert!(overflowed(&info, &uc));
        at(&mut info, 0);
        assert!(!overflowed(&info, &uc));
        info.si_code = libc::SI_USER;
        at(&mut info, 0x7fff_0000_0ff8);
        assert!(!overflowed(&info, &uc), "a kill is never an overflow");
    }
}
