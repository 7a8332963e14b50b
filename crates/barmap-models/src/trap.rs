//! Register accesses through an mmap: the pages of a register BAR's
//! mapping stay inaccessible (`PROT_NONE`), so every load and store to
//! them raises SIGSEGV; barmap's handler decodes the instruction at the
//! faulting instruction pointer, calls the model, writes a load's result
//! into the saved registers and steps over the instruction.
//!
//! - **Whose fault.** The address is looked up in the live parts of the
//!   register mappings, after every munmap and mremap the process made has
//!   reached barmap (`Mapping::region_offset_at`): an address the process
//!   unmapped and reused is never emulated. Only a fault the kernel raised
//!   at such an address is emulated.
//! - **Signals belong to the program** (module `signals`). barmap owns the
//!   kernel's SIGSEGV disposition and nothing else; the program's SIGSEGV
//!   disposition is kept apart ([`program_sigaction`], which `barmap run`
//!   wraps every libc setter into, so `old` is always the program's), and
//!   SIGBUS is never touched. A SIGSEGV that is not a register access
//!   reaches the program's handler with the siginfo and ucontext the kernel
//!   delivered, its `sa_mask` and flags (`SA_SIGINFO`, `SA_NODEFER`,
//!   `SA_RESETHAND`, `SA_ONSTACK`: barmap's handler itself runs with
//!   `SA_ONSTACK`, so a stack overflow is handled on the program's
//!   alternate stack, and emulates on the interrupted stack), or the
//!   default action (the process dies of SIGSEGV at the faulting
//!   instruction). SIGSEGV is never blocked for real (a blocked
//!   synchronous SIGSEGV kills in the kernel, so a register access could
//!   not be trapped): the program's view of it is kept per thread
//!   ([`program_blocks_sigsegv`]), and a genuine fault in a thread that
//!   holds it kills, as in the kernel. A raw `rt_sigaction` (past libc)
//!   replaces barmap's handler; the next register mapping puts barmap's
//!   back in front and keeps the raw one as the program's. Under
//!   `barmap run` the handler is installed when the program loads
//!   ([`install_for_program`]); in a Rust process using barmap as a
//!   library, at the first register mapping, over barmap-target's touch
//!   exception table, which then serves as the program's handlers.
//! - **The kernel's semantics.** The access runs under the device's memory
//!   gate: it waits while a reset runs; while COMMAND.MEM is clear, in low
//!   power or after the device is gone, the thread gets SIGBUS (the
//!   program's SIGBUS handler is called with `BUS_ADRERR`, the address and
//!   the faulting context, as the kernel's revoked BAR would; with SIGBUS
//!   at SIG_DFL or SIG_IGN, or blocked, the process dies of SIGBUS, as the
//!   kernel forces it).
//! - **What is emulated.** `mov` loads and stores (register, immediate,
//!   `moffs`) and `movzx`/`movsx`/`movsxd` loads of 1, 2, 4 or 8 bytes, at
//!   a naturally aligned address in one mapping; and the 64-byte stores
//!   MOVDIR64B, ENQCMD and ENQCMDS (below). Anything else (a
//!   read-modify-write, a string or vector instruction, an unaligned or
//!   FS/GS-relative access) is reported on stderr with its disassembly and
//!   gets SIGBUS: never a silent wrong value.
//! - **64-byte stores** (a DSA portal's descriptors): MOVDIR64B
//!   (`66 0F 38 F8 /r`), ENQCMD (`F2 ..`) and ENQCMDS (`F3 ..`) store the
//!   64 bytes at their memory operand (any ModRM, SIB, displacement or
//!   RIP-relative form, REX and the 0x67 address-size prefix) to the
//!   64-byte aligned address in their register operand (ModRM.reg). On a
//!   CPU that has them, the store to the inaccessible page faults
//!   (SIGSEGV); on one that lacks them (AMD's), the CPU raises SIGILL
//!   before touching memory, so barmap also owns the kernel's SIGILL
//!   disposition, keeps the program's apart as for SIGSEGV, and emulates
//!   only an instruction whose destination is in a live register mapping;
//!   every other SIGILL reaches the program's handler, or kills the
//!   process by SIGILL at the instruction as before. The model gets the 64
//!   bytes in one [`DeviceModel::write64`](crate::DeviceModel::write64)
//!   call; ENQCMD and ENQCMDS clear ZF when it accepts and set it for
//!   "retry" (CF, PF, AF, SF and OF cleared), as the SDM says. ENQCMD's
//!   first dword carries the process's PASID, which barmap does not give
//!   (zero); ENQCMDS, privileged on hardware (#GP in user mode), is
//!   emulated for the program all the same, its PASID and privilege bit as
//!   written.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use barmap::Mapping;
use iced_x86::{
    Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic, OpKind, Register,
};

use crate::device::Shared;
use crate::model::{Store64, Width};

mod signals;

pub use signals::{
    install_for_program, program_blocks_sigsegv, program_sigaction, set_program_blocks_sigsegv,
};

struct Trap {
    id: u64,
    mapping: Arc<Mapping>,
    dev: Weak<Shared>,
    writable: bool,
    /// The process that mapped it: a forked child has no copy of the
    /// mapping (barmap's mappings are MADV_DONTFORK), so its touch is an
    /// ordinary SIGSEGV, never emulated, unless the mapping was left to
    /// the child and the child maps it again as its own
    /// ([`on_inherited_access`]).
    owner: u32,
}

/// A registered trap (unregistered when its mapping is dropped).
#[derive(Debug)]
pub(crate) struct TrapId(u64);

static TRAPS: RwLock<Vec<Trap>> = RwLock::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// What a forked child calls at its first access to a register mapping a
/// parent made ([`on_inherited_access`]); 0: none.
static INHERITED_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Reports of accesses that could not be emulated, newest last (at most 16).
static REPORTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Starts trapping `mapping`'s addresses, for a device: makes its pages
/// inaccessible. Returns the errno of a failed `mprotect`.
pub(crate) fn register(
    mapping: &Arc<Mapping>,
    dev: &Arc<Shared>,
    writable: bool,
) -> Result<TrapId, i32> {
    signals::install();
    signals::reclaim();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    TRAPS.write().unwrap().push(Trap {
        id,
        mapping: mapping.clone(),
        dev: Arc::downgrade(dev),
        writable,
        owner: std::process::id(),
    });
    // SAFETY: the range is the mapping's, which barmap created and owns.
    let rc = unsafe { libc::mprotect(mapping.as_ptr().cast(), mapping.len(), libc::PROT_NONE) };
    if rc != 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL);
        unregister(TrapId(id));
        return Err(errno);
    }
    Ok(TrapId(id))
}

/// Stops trapping a mapping's addresses.
pub(crate) fn unregister(id: TrapId) {
    TRAPS.write().unwrap().retain(|t| t.id != id.0);
}

/// The reports of accesses that could not be emulated (each names the
/// address, the instruction's bytes and its disassembly), oldest first.
pub fn reports() -> Vec<String> {
    REPORTS.lock().unwrap().clone()
}

/// Sets what a process made by `fork()` calls at an access to a register
/// mapping that an ancestor made and that the process kept (a mapping
/// left to the child: by default barmap's are not, see `MADV_DONTFORK`):
/// `hook(addr)` maps the range again as the process's own register
/// mapping (of its own device, whose accesses reach the same device as
/// the parent's) and returns whether it did; the access is then emulated
/// there. Without a hook, or if it maps nothing, the access is an ordinary
/// SIGSEGV. Called from the signal handler, on the interrupted stack.
pub fn on_inherited_access(hook: fn(usize) -> bool) {
    INHERITED_HOOK.store(hook as usize, Ordering::Release);
}

/// Whether `addr` lies in a register mapping another process (an
/// ancestor, before a fork) made: only the range is read, never the
/// ancestor's mapping state.
fn inherited(addr: usize) -> bool {
    let traps = TRAPS.read().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    traps.iter().any(|t| {
        let start = t.mapping.addr();
        t.owner != me && start <= addr && addr - start < t.mapping.len()
    })
}

/// Whether a fault at `addr` may be a register access: in a live register
/// mapping of this process's, or in one an ancestor made.
pub(crate) fn may_be_ours(addr: usize) -> bool {
    lookup(addr).is_some() || inherited(addr)
}

/// An access at `addr` in a register mapping an ancestor made: the hook
/// makes it this process's own, if it can.
fn adopt(addr: usize) {
    if lookup(addr).is_some() || !inherited(addr) {
        return;
    }
    let hook = INHERITED_HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: only `on_inherited_access` stores a non-zero value, a
        // `fn(usize) -> bool`.
        let hook = unsafe { std::mem::transmute::<usize, fn(usize) -> bool>(hook) };
        hook(addr);
    }
}

/// What became of a SIGSEGV.
enum Outcome {
    /// Emulated; the saved RIP moved past the instruction.
    Done,
    /// Not an access to a register mapping.
    NotOurs,
    /// The thread gets SIGBUS at this address.
    Sigbus(usize),
}

/// A register mapping's hit: the device, BAR, offset of `addr`, writable.
fn lookup(addr: usize) -> Option<(Weak<Shared>, u32, u64, bool)> {
    let traps = TRAPS.read().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    traps.iter().filter(|t| t.owner == me).find_map(|t| {
        t.mapping
            .region_offset_at(addr)
            .map(|off| (t.dev.clone(), t.mapping.region(), off, t.writable))
    })
}

fn gpr_index(r: Register) -> Option<usize> {
    Some(match r.full_register() {
        Register::RAX => libc::REG_RAX,
        Register::RCX => libc::REG_RCX,
        Register::RDX => libc::REG_RDX,
        Register::RBX => libc::REG_RBX,
        Register::RSP => libc::REG_RSP,
        Register::RBP => libc::REG_RBP,
        Register::RSI => libc::REG_RSI,
        Register::RDI => libc::REG_RDI,
        Register::R8 => libc::REG_R8,
        Register::R9 => libc::REG_R9,
        Register::R10 => libc::REG_R10,
        Register::R11 => libc::REG_R11,
        Register::R12 => libc::REG_R12,
        Register::R13 => libc::REG_R13,
        Register::R14 => libc::REG_R14,
        Register::R15 => libc::REG_R15,
        _ => return None,
    } as usize)
}

fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

/// The value of general register `r` (any width) in `uc`.
fn get_reg(uc: &libc::ucontext_t, r: Register) -> Option<u64> {
    let full = uc.uc_mcontext.gregs[gpr_index(r)?] as u64;
    Some(
        if is_high_byte(r) { full >> 8 } else { full }
            & Width::from_bytes(r.size()).map_or(u64::MAX, Width::mask),
    )
}

/// Writes `v` into general register `r` as the CPU would: a 32-bit
/// destination zero-extends into the whole register, 8- and 16-bit ones
/// keep the other bits.
fn set_reg(uc: &mut libc::ucontext_t, r: Register, v: u64) -> Option<()> {
    let slot = &mut uc.uc_mcontext.gregs[gpr_index(r)?];
    let old = *slot as u64;
    let new = match r.size() {
        8 => v,
        4 => v & 0xffff_ffff,
        2 => (old & !0xffff) | (v & 0xffff),
        1 if is_high_byte(r) => (old & !0xff00) | ((v & 0xff) << 8),
        1 => (old & !0xff) | (v & 0xff),
        _ => return None,
    };
    *slot = new as i64;
    Some(())
}

/// A decoded register access.
struct Access {
    ea: u64,
    width: Width,
    kind: Kind,
}

enum Kind {
    /// A load into `dest`, sign-extended from the access width if `signed`.
    Load { dest: Register, signed: bool },
    /// A store of `value`.
    Store { value: u64 },
}

/// Reads the instruction bytes at `rip` (up to 15). The CPU fetched the
/// whole instruction before its data access faulted, so the bytes up to
/// the end of `rip`'s page are readable as they are (x86 code is readable);
/// past the page end, where the instruction may stop short of a page that
/// is not mapped, the kernel copies them (fewer at the end of the readable
/// memory).
fn fetch(rip: usize) -> ([u8; 15], usize) {
    let mut buf = [0u8; 15];
    let in_page = (4096 - rip % 4096).min(15);
    // SAFETY: `rip`..`rip + in_page` lies in the page of the instruction
    // that just faulted, which is mapped and readable.
    unsafe { std::ptr::copy_nonoverlapping(rip as *const u8, buf.as_mut_ptr(), in_page) };
    if in_page == 15 {
        return (buf, 15);
    }
    let rest = &mut buf[in_page..];
    for n in (1..=rest.len()).rev() {
        if barmap::os::copy_from_user((rip + in_page) as *const u8, &mut rest[..n]).is_ok() {
            return (buf, in_page + n);
        }
    }
    (buf, in_page)
}

/// The instruction at the saved RIP, or the bytes that do not decode.
fn instruction_at_rip(uc: &libc::ucontext_t) -> Result<Instruction, String> {
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64;
    let (bytes, n) = fetch(rip as usize);
    let bytes = &bytes[..n];
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(format!("undecodable bytes {bytes:02x?}"));
    }
    Ok(insn)
}

/// Decodes the access `insn` makes, or explains why it cannot.
fn decode(
    uc: &libc::ucontext_t,
    insn: Instruction,
) -> Result<(Instruction, Access), (Option<Instruction>, String)> {
    let fail = |why: &str| Err((Some(insn), why.to_string()));
    let mem_op = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory);
    let Some(mem_op) = mem_op else {
        return fail("no memory operand");
    };
    let Some(width) = Width::from_bytes(insn.memory_size().size()) else {
        return fail("not a 1, 2, 4 or 8-byte access");
    };
    let ea = insn.virtual_address(mem_op, 0, |reg, _, _| match reg {
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        r => get_reg(uc, r),
    });
    let Some(ea) = ea else {
        return fail("an address relative to FS or GS");
    };
    let kind = match (insn.mnemonic(), mem_op, insn.op_count()) {
        (Mnemonic::Mov, 1, 2)
            if insn.op_kind(0) == OpKind::Register && insn.op0_register().is_gpr() =>
        {
            Kind::Load {
                dest: insn.op0_register(),
                signed: false,
            }
        }
        (Mnemonic::Movzx, 1, 2) => Kind::Load {
            dest: insn.op0_register(),
            signed: false,
        },
        (Mnemonic::Movsx | Mnemonic::Movsxd, 1, 2) => Kind::Load {
            dest: insn.op0_register(),
            signed: true,
        },
        (Mnemonic::Mov, 0, 2) => match insn.op_kind(1) {
            OpKind::Register if insn.op1_register().is_gpr() => Kind::Store {
                value: get_reg(uc, insn.op1_register()).unwrap_or(0),
            },
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate32to64
            | OpKind::Immediate64 => Kind::Store {
                value: insn.immediate(1),
            },
            _ => return fail("a store from a register that is not a general register"),
        },
        _ => return fail("not a mov, movzx or movsx load or store"),
    };
    if ea % width.bytes() as u64 != 0 {
        return fail("an unaligned access");
    }
    Ok((insn, Access { ea, width, kind }))
}

fn disassemble(insn: &Instruction) -> String {
    let mut out = String::new();
    IntelFormatter::new().format(insn, &mut out);
    out
}

fn report(addr: usize, uc: &libc::ucontext_t, insn: Option<Instruction>, why: &str) {
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64;
    let text = match insn {
        Some(i) => format!(
            "barmap: register access at {addr:#x} by `{}` (rip {rip:#x}, bytes {:02x?}) cannot be emulated: {why}; SIGBUS",
            disassemble(&i),
            &fetch(rip as usize).0[..i.len()]
        ),
        None => format!("barmap: register access at {addr:#x} (rip {rip:#x}) cannot be emulated: {why}; SIGBUS"),
    };
    eprintln!("{text}");
    let mut reports = REPORTS.lock().unwrap_or_else(|e| e.into_inner());
    if reports.len() == 16 {
        reports.remove(0);
    }
    reports.push(text);
}

fn emulate(addr: usize, uc: &mut libc::ucontext_t) -> Outcome {
    adopt(addr);
    let Some((dev, region, offset, writable)) = lookup(addr) else {
        return Outcome::NotOurs;
    };
    let insn = match instruction_at_rip(uc) {
        Ok(insn) => insn,
        Err(why) => {
            report(addr, uc, None, &why);
            return Outcome::Sigbus(addr);
        }
    };
    if let Some(submit) = submit_operands(&insn, |r| get_reg(uc, r)) {
        return emulate_submit(addr, uc, &insn, submit);
    }
    let (insn, access) = match decode(uc, insn) {
        Ok(d) => d,
        Err((insn, why)) => {
            report(addr, uc, insn, &why);
            return Outcome::Sigbus(addr);
        }
    };
    // The decoded address must be the faulting one, and the whole access
    // inside the same mapping.
    let last = access.ea + access.width.bytes() as u64 - 1;
    let same = (access.ea..=last).contains(&(addr as u64))
        && lookup(access.ea as usize)
            .is_some_and(|(_, r, o, _)| r == region && o + (addr as u64 - access.ea) == offset)
        && lookup(last as usize)
            .is_some_and(|(_, r, o, _)| r == region && o == offset + (last - addr as u64));
    if !same {
        report(
            addr,
            uc,
            Some(insn),
            "the access crosses the end of the register mapping",
        );
        return Outcome::Sigbus(addr);
    }
    let offset = offset - (addr as u64 - access.ea);
    if matches!(access.kind, Kind::Store { .. }) && !writable {
        return Outcome::NotOurs; // a write to a read-only mapping: SIGSEGV
    }
    let Some(dev) = dev.upgrade() else {
        return Outcome::Sigbus(addr); // the device is gone
    };
    let write = match access.kind {
        Kind::Store { value } => Some(value & access.width.mask()),
        Kind::Load { .. } => None,
    };
    let result = dev
        .device
        .with_memory(|| dev.access_locked(region, offset, access.width, write));
    let Ok(value) = result else {
        return Outcome::Sigbus(addr);
    };
    if let Kind::Load { dest, signed } = access.kind {
        let v = if signed {
            let shift = 64 - 8 * access.width.bytes() as u32;
            (((value << shift) as i64) >> shift) as u64
        } else {
            value
        };
        if set_reg(uc, dest, v).is_none() {
            report(addr, uc, Some(insn), "an unsupported destination register");
            return Outcome::Sigbus(addr);
        }
    }
    uc.uc_mcontext.gregs[libc::REG_RIP as usize] = insn.next_ip() as i64;
    Outcome::Done
}

/// A 64-byte store by MOVDIR64B, ENQCMD or ENQCMDS: the destination
/// address (the register operand, ModRM.reg, at the address size: a 32-bit
/// register with the 0x67 prefix) and the source's (the memory operand,
/// with its ModRM, SIB, displacement or RIP-relative form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Submit {
    dest: u64,
    src: u64,
    how: Store64,
}

/// The operands of `insn` if it is MOVDIR64B, ENQCMD or ENQCMDS (None
/// otherwise), with the general registers `reg` gives; an `Err` names why
/// they cannot be known (an FS- or GS-relative source).
fn submit_operands(
    insn: &Instruction,
    reg: impl Fn(Register) -> Option<u64>,
) -> Option<Result<Submit, &'static str>> {
    let how = match insn.mnemonic() {
        Mnemonic::Movdir64b => Store64::Movdir64b,
        Mnemonic::Enqcmd => Store64::Enqcmd,
        Mnemonic::Enqcmds => Store64::Enqcmds,
        _ => return None,
    };
    if insn.op_count() != 2
        || insn.op_kind(0) != OpKind::Register
        || insn.op_kind(1) != OpKind::Memory
    {
        return Some(Err("operands that are not a register and a memory operand"));
    }
    let Some(dest) = reg(insn.op0_register()) else {
        return Some(Err("a destination that is not a general register"));
    };
    let src = insn.virtual_address(1, 0, |r, _, _| match r {
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        r => reg(r),
    });
    Some(match src {
        Some(src) => Ok(Submit { dest, src, how }),
        None => Err("a source relative to FS or GS"),
    })
}

/// RFLAGS bits ENQCMD and ENQCMDS write: ZF set means "retry", the
/// others are cleared.
const ENQCMD_FLAGS: i64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x800; // CF PF AF ZF SF OF
const ZF: i64 = 0x40;

/// Emulates a 64-byte store whose destination is in a register mapping
/// (`addr` is the faulting address on the SIGSEGV path, the destination on
/// the SIGILL path): reads the 64 source bytes, hands them to the model in
/// one call, sets ENQCMD's flags and steps over the instruction.
fn emulate_submit(
    addr: usize,
    uc: &mut libc::ucontext_t,
    insn: &Instruction,
    submit: Result<Submit, &'static str>,
) -> Outcome {
    let s = match submit {
        Ok(s) => s,
        Err(why) => {
            report(addr, uc, Some(*insn), why);
            return Outcome::Sigbus(addr);
        }
    };
    let Some((dev, region, offset, writable)) = lookup(s.dest as usize) else {
        // The faulting address is the source's (a 64-byte read of a
        // register mapping), not a portal.
        report(
            addr,
            uc,
            Some(*insn),
            "a 64-byte store whose source is a register mapping",
        );
        return Outcome::Sigbus(addr);
    };
    if s.dest % 64 != 0 {
        report(addr, uc, Some(*insn), "a destination not 64-byte aligned");
        return Outcome::Sigbus(addr);
    }
    let last = s.dest + 63;
    if !lookup(last as usize).is_some_and(|(_, r, o, _)| r == region && o == offset + 63) {
        report(
            addr,
            uc,
            Some(*insn),
            "the store crosses the end of the register mapping",
        );
        return Outcome::Sigbus(addr);
    }
    if !writable {
        return Outcome::NotOurs;
    }
    let mut data = [0u8; 64];
    if barmap::os::copy_from_user(s.src as *const u8, &mut data).is_err() {
        report(addr, uc, Some(*insn), "an unreadable 64-byte source");
        return Outcome::Sigbus(addr);
    }
    if s.how == Store64::Enqcmd {
        // The CPU puts the process's PASID (none here) and a clear
        // privilege bit in the first dword.
        data[..4].fill(0);
    }
    let Some(dev) = dev.upgrade() else {
        return Outcome::Sigbus(addr);
    };
    let result = dev
        .device
        .with_memory(|| dev.store64_locked(region, offset, &data, s.how));
    let Ok(accepted) = result else {
        return Outcome::Sigbus(s.dest as usize);
    };
    let gregs = &mut uc.uc_mcontext.gregs;
    if s.how != Store64::Movdir64b {
        let flags = gregs[libc::REG_EFL as usize] & !ENQCMD_FLAGS;
        gregs[libc::REG_EFL as usize] = if accepted { flags } else { flags | ZF };
    }
    gregs[libc::REG_RIP as usize] = insn.next_ip() as i64;
    Outcome::Done
}

/// The SIGILL path: a CPU without MOVDIR64B or ENQCMD(S) raises #UD
/// before the store reaches memory. The instruction at RIP is emulated if
/// it is one of them and its destination lies in a register mapping;
/// anything else is not ours (the program's SIGILL).
fn emulate_undefined(uc: &mut libc::ucontext_t) -> Outcome {
    let Ok(insn) = instruction_at_rip(uc) else {
        return Outcome::NotOurs;
    };
    let Some(submit) = submit_operands(&insn, |r| get_reg(uc, r)) else {
        return Outcome::NotOurs;
    };
    let dest = match submit {
        Ok(s) => s.dest as usize,
        Err(_) => return Outcome::NotOurs,
    };
    adopt(dest);
    if lookup(dest).is_none() {
        return Outcome::NotOurs;
    }
    emulate_submit(dest, uc, &insn, submit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> libc::ucontext_t {
        // SAFETY: a zeroed ucontext is plain data.
        unsafe { std::mem::zeroed() }
    }

    /// The 64-byte store `bytes` encodes at RIP 0x40_0000, with rax =
    /// 0x7f00_0000_1000, rbx = 0x2000, rcx = 3, rdx = 0x5000, r9 =
    /// 0x9000, r12 = 0xc000, r13 = 0xd000 and every other register 0.
    fn submit(bytes: &[u8]) -> Option<Result<Submit, &'static str>> {
        let regs = |r: Register| match r {
            Register::RAX => 0x7f00_0000_1000u64,
            Register::RBX => 0x2000,
            Register::RCX => 3,
            Register::RDX => 0x5000,
            Register::R9 => 0x9000,
            Register::R12 => 0xc000,
            Register::R13 => 0xd000,
            _ => 0,
        };
        let insn = Decoder::with_ip(64, bytes, 0x40_0000, DecoderOptions::NONE).decode();
        assert!(!insn.is_invalid(), "{bytes:02x?} decodes");
        assert_eq!(insn.len(), bytes.len(), "{bytes:02x?} is one instruction");
        let mut uc = context();
        for (r, i) in [
            (Register::RAX, libc::REG_RAX),
            (Register::RBX, libc::REG_RBX),
            (Register::RCX, libc::REG_RCX),
            (Register::RDX, libc::REG_RDX),
            (Register::R9, libc::REG_R9),
            (Register::R12, libc::REG_R12),
            (Register::R13, libc::REG_R13),
        ] {
            uc.uc_mcontext.gregs[i as usize] = regs(r) as i64;
        }
        submit_operands(&insn, |r| get_reg(&uc, r))
    }

    fn ok(dest: u64, src: u64, how: Store64) -> Option<Result<Submit, &'static str>> {
        Some(Ok(Submit { dest, src, how }))
    }

    #[test]
    fn movdir64b_takes_its_destination_from_modrm_reg_and_its_source_from_a_register_base() {
        // movdir64b rax, [rdx]: the encoding Linux's movdir64b() uses.
        let m = Store64::Movdir64b;
        assert_eq!(
            submit(&[0x66, 0x0f, 0x38, 0xf8, 0x02]),
            ok(0x7f00_0000_1000, 0x5000, m)
        );
        // movdir64b rdx, [rax]: the operands the other way round.
        assert_eq!(
            submit(&[0x66, 0x0f, 0x38, 0xf8, 0x10]),
            ok(0x5000, 0x7f00_0000_1000, m)
        );
    }

    #[test]
    fn movdir64b_sources_with_sib_displacements_and_rip_relative_forms_decode() {
        let m = Store64::Movdir64b;
        // [rbx+rcx*4+0x40]: SIB with a scaled index and a disp8.
        assert_eq!(
            submit(&[0x66, 0x0f, 0x38, 0xf8, 0x44, 0x8b, 0x40]),
            ok(0x7f00_0000_1000, 0x2000 + 12 + 0x40, m)
        );
        // [rbx+0x12345678]: a disp32.
        assert_eq!(
            submit(&[0x66, 0x0f, 0x38, 0xf8, 0x83, 0x78, 0x56, 0x34, 0x12]),
            ok(0x7f00_0000_1000, 0x2000 + 0x1234_5678, m)
        );
        // [rip+0x100]: relative to the next instruction (9 bytes on).
        assert_eq!(
            submit(&[0x66, 0x0f, 0x38, 0xf8, 0x05, 0x00, 0x01, 0x00, 0x00]),
            ok(0x7f00_0000_1000, 0x40_0009 + 0x100, m)
        );
        // [0x3000]: SIB with neither base nor index, a disp32 alone.
        assert_eq!(
            submit(&[0x66, 0x0f, 0x38, 0xf8, 0x04, 0x25, 0x00, 0x30, 0x00, 0x00]),
            ok(0x7f00_0000_1000, 0x3000, m)
        );
    }

    #[test]
    fn movdir64b_with_rex_reaches_r8_to_r15_in_both_operands() {
        let m = Store64::Movdir64b;
        // REX.RB: movdir64b r9, [r12] (r12 as a base needs a SIB byte).
        assert_eq!(
            submit(&[0x66, 0x45, 0x0f, 0x38, 0xf8, 0x0c, 0x24]),
            ok(0x9000, 0xc000, m)
        );
        // REX.B: movdir64b rax, [r13-0x10] (r13 as a base needs a disp).
        assert_eq!(
            submit(&[0x66, 0x41, 0x0f, 0x38, 0xf8, 0x45, 0xf0]),
            ok(0x7f00_0000_1000, 0xd000 - 0x10, m)
        );
    }

    #[test]
    fn the_address_size_prefix_makes_both_addresses_32_bit() {
        // 0x67: movdir64b eax, [edx+0x10]: rax's upper half is not used.
        assert_eq!(
            submit(&[0x67, 0x66, 0x0f, 0x38, 0xf8, 0x42, 0x10]),
            ok(0x1000, 0x5010, Store64::Movdir64b)
        );
    }

    #[test]
    fn enqcmd_and_enqcmds_differ_from_movdir64b_by_their_prefix_only() {
        assert_eq!(
            submit(&[0xf2, 0x0f, 0x38, 0xf8, 0x02]),
            ok(0x7f00_0000_1000, 0x5000, Store64::Enqcmd)
        );
        assert_eq!(
            submit(&[0xf3, 0x0f, 0x38, 0xf8, 0x02]),
            ok(0x7f00_0000_1000, 0x5000, Store64::Enqcmds)
        );
    }

    #[test]
    fn other_instructions_are_not_submissions_and_fs_sources_are_refused() {
        // mov eax, [rdx]
        assert_eq!(submit(&[0x8b, 0x02]), None);
        // ud2
        assert_eq!(submit(&[0x0f, 0x0b]), None);
        // movdir64b rax, fs:[rdx]
        assert!(matches!(
            submit(&[0x64, 0x66, 0x0f, 0x38, 0xf8, 0x02]),
            Some(Err(_))
        ));
    }

    /// The 64-byte stores a [`Portal`] saw: offset, bytes, instruction.
    type Seen = Arc<Mutex<Vec<(u64, [u8; 64], Store64)>>>;

    /// A register BAR that records its 64-byte stores and accepts them
    /// if `accept`.
    struct Portal {
        seen: Seen,
        accept: Arc<std::sync::atomic::AtomicBool>,
    }

    impl crate::DeviceModel for Portal {
        fn layout(&self) -> crate::Layout {
            crate::Layout::new(0x1234, 0x5678).registers(0, 4096)
        }
        fn read(&mut self, _: &mut crate::Ctx<'_>, _: u32, _: u64, _: Width) -> u64 {
            0
        }
        fn write(&mut self, _: &mut crate::Ctx<'_>, _: u32, _: u64, _: Width, _: u64) {}
        fn reset(&mut self) {}
        fn write64(
            &mut self,
            _: &mut crate::Ctx<'_>,
            _: u32,
            offset: u64,
            data: &[u8; 64],
            how: Store64,
        ) -> bool {
            self.seen.lock().unwrap().push((offset, *data, how));
            self.accept.load(Ordering::Relaxed)
        }
    }

    static MOVDIR64B: [u8; 5] = [0x66, 0x0f, 0x38, 0xf8, 0x02]; // movdir64b rax, [rdx]
    static ENQCMD: [u8; 5] = [0xf2, 0x0f, 0x38, 0xf8, 0x02]; // enqcmd rax, [rdx]

    /// A context about to run `code` with rax = `dest`, rdx = `src` and
    /// ZF and CF set.
    fn at(code: &[u8], dest: usize, src: &[u8; 64]) -> libc::ucontext_t {
        let mut uc = context();
        let g = &mut uc.uc_mcontext.gregs;
        g[libc::REG_RIP as usize] = code.as_ptr() as i64;
        g[libc::REG_RAX as usize] = dest as i64;
        g[libc::REG_RDX as usize] = src.as_ptr() as i64;
        g[libc::REG_EFL as usize] = 0x202 | ZF | 0x1;
        uc
    }

    #[test]
    fn a_64_byte_store_to_a_register_mapping_is_one_write64_on_either_signal_path() {
        use barmap::device::pci;
        let seen: Seen = Arc::default();
        let accept = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let dev = crate::ModelDevice::new(Portal {
            seen: seen.clone(),
            accept: accept.clone(),
        })
        .unwrap();
        let cmd = dev.device().command() | pci::COMMAND_MEMORY;
        dev.write_config(pci::COMMAND, &cmd.to_le_bytes()).unwrap();
        let m = dev
            .map(
                0,
                0,
                4096,
                barmap::Prot::ReadWrite,
                barmap::Placement::Anywhere,
            )
            .unwrap();
        let src: [u8; 64] = std::array::from_fn(|i| i as u8 ^ 0x5a);
        let rip = |uc: &libc::ucontext_t| uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
        let flags = |uc: &libc::ucontext_t| uc.uc_mcontext.gregs[libc::REG_EFL as usize];

        // The SIGSEGV path (a CPU with MOVDIR64B): the store faulted at
        // the portal; flags untouched.
        let mut uc = at(&MOVDIR64B, m.addr() + 0x40, &src);
        assert!(matches!(emulate(m.addr() + 0x40, &mut uc), Outcome::Done));
        assert_eq!(rip(&uc), MOVDIR64B.as_ptr() as usize + 5);
        assert_eq!(flags(&uc), 0x202 | ZF | 0x1);
        assert_eq!(
            seen.lock().unwrap().pop(),
            Some((0x40, src, Store64::Movdir64b))
        );

        // The SIGILL path (a CPU without ENQCMD): accepted clears ZF and
        // CF; the first dword (the PASID) arrives as zero.
        let mut uc = at(&ENQCMD, m.addr() + 0x80, &src);
        assert!(matches!(emulate_undefined(&mut uc), Outcome::Done));
        assert_eq!(rip(&uc), ENQCMD.as_ptr() as usize + 5);
        assert_eq!(flags(&uc), 0x202);
        let mut pasid_zero = src;
        pasid_zero[..4].fill(0);
        assert_eq!(
            seen.lock().unwrap().pop(),
            Some((0x80, pasid_zero, Store64::Enqcmd))
        );

        // Refused: ZF set ("retry").
        accept.store(false, Ordering::Relaxed);
        let mut uc = at(&ENQCMD, m.addr(), &src);
        assert!(matches!(emulate_undefined(&mut uc), Outcome::Done));
        assert_eq!(flags(&uc), 0x202 | ZF);

        // Not a register mapping, or not 64-byte aligned: not emulated.
        let mut uc = at(&MOVDIR64B, src.as_ptr() as usize, &src);
        assert!(matches!(emulate_undefined(&mut uc), Outcome::NotOurs));
        assert_eq!(rip(&uc), MOVDIR64B.as_ptr() as usize, "RIP stays");
        let mut uc = at(&MOVDIR64B, m.addr() + 8, &src);
        assert!(matches!(emulate_undefined(&mut uc), Outcome::Sigbus(_)));
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "only the refused ENQCMD since"
        );
    }

    #[test]
    fn narrow_register_writes_keep_the_other_bits_and_32_bit_ones_clear_them() {
        let mut uc = context();
        uc.uc_mcontext.gregs[libc::REG_RAX as usize] = -1;
        set_reg(&mut uc, Register::AL, 0x12).unwrap();
        assert_eq!(
            uc.uc_mcontext.gregs[libc::REG_RAX as usize] as u64,
            0xffff_ffff_ffff_ff12
        );
        set_reg(&mut uc, Register::AH, 0x34).unwrap();
        assert_eq!(
            uc.uc_mcontext.gregs[libc::REG_RAX as usize] as u64,
            0xffff_ffff_ffff_3412
        );
        set_reg(&mut uc, Register::AX, 0x5678).unwrap();
        assert_eq!(
            uc.uc_mcontext.gregs[libc::REG_RAX as usize] as u64,
            0xffff_ffff_ffff_5678
        );
        set_reg(&mut uc, Register::EAX, 0x9abc_def0).unwrap();
        assert_eq!(
            uc.uc_mcontext.gregs[libc::REG_RAX as usize] as u64,
            0x9abc_def0
        );
        set_reg(&mut uc, Register::R9, u64::MAX).unwrap();
        assert_eq!(get_reg(&uc, Register::R9D), Some(0xffff_ffff));
        assert_eq!(get_reg(&uc, Register::AH), Some(0xde));
    }
}
