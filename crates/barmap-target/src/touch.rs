//! Touching memory that may fault, and living to tell.
//!
//! A thread that touches a revoked BAR mapping gets a real SIGBUS (and one that
//! touches an unmapped address a SIGSEGV). Scenarios need to count those
//! signals in many threads without dying, on the kernel's vfio-pci as on
//! barmap. Rust has no `sigsetjmp`, so this module does what the kernel does
//! for its own user-memory accessors: an exception table. Each accessor is a
//! few instructions of assembly with one faulting instruction at a known
//! address; a process-wide SIGBUS/SIGSEGV handler checks whether the signal
//! came from exactly that instruction and, if so, moves the instruction
//! pointer to the accessor's fix-up label and sets a "faulted" register.
//! A signal raised anywhere else gets the default action (the process dies,
//! as it would without this module).
//!
//! x86_64 Linux only.

use std::sync::Once;

/// The signal a touch raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// SIGBUS: the page is poisoned or the device memory is revoked.
    Sigbus,
    /// SIGSEGV: nothing is mapped at the address.
    Sigsegv,
}

// Each accessor: the faulting instruction sits at `<name>_insn`, the fix-up at
// `<name>_fixup`. Return convention (sysv64, u128 in rdx:rax): rax = value
// read, rdx = 0 on success or the signal number on a fault.
std::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl barmap_touch_v0_load64",
    "barmap_touch_v0_load64:",
    "    xor edx, edx",
    "barmap_touch_v0_load64_insn:",
    "    mov rax, qword ptr [rdi]",
    "barmap_touch_v0_load64_fixup:",
    "    ret",
    ".p2align 4",
    ".globl barmap_touch_v0_load32",
    "barmap_touch_v0_load32:",
    "    xor edx, edx",
    "barmap_touch_v0_load32_insn:",
    "    mov eax, dword ptr [rdi]",
    "barmap_touch_v0_load32_fixup:",
    "    ret",
    ".p2align 4",
    ".globl barmap_touch_v0_store64",
    "barmap_touch_v0_store64:",
    "    xor edx, edx",
    "    xor eax, eax",
    "barmap_touch_v0_store64_insn:",
    "    mov qword ptr [rdi], rsi",
    "barmap_touch_v0_store64_fixup:",
    "    ret",
    ".p2align 4",
    ".globl barmap_touch_v0_store32",
    "barmap_touch_v0_store32:",
    "    xor edx, edx",
    "    xor eax, eax",
    "barmap_touch_v0_store32_insn:",
    "    mov dword ptr [rdi], esi",
    "barmap_touch_v0_store32_fixup:",
    "    ret",
    // The labels' addresses, for the signal handler.
    ".section .data.rel.ro,\"aw\"",
    ".p2align 3",
    ".globl barmap_touch_v0_table",
    "barmap_touch_v0_table:",
    "    .quad barmap_touch_v0_load64_insn, barmap_touch_v0_load64_fixup",
    "    .quad barmap_touch_v0_load32_insn, barmap_touch_v0_load32_fixup",
    "    .quad barmap_touch_v0_store64_insn, barmap_touch_v0_store64_fixup",
    "    .quad barmap_touch_v0_store32_insn, barmap_touch_v0_store32_fixup",
    ".text",
);

extern "sysv64" {
    fn barmap_touch_v0_load64(addr: *const u64) -> u128;
    fn barmap_touch_v0_load32(addr: *const u32) -> u128;
    fn barmap_touch_v0_store64(addr: *mut u64, value: u64) -> u128;
    fn barmap_touch_v0_store32(addr: *mut u32, value: u32) -> u128;
    static barmap_touch_v0_table: [[usize; 2]; 4];
}

static INSTALL: Once = Once::new();

/// Installs the SIGBUS/SIGSEGV handler (idempotent; the accessors call it).
pub fn install() {
    INSTALL.call_once(|| {
        for sig in [libc::SIGBUS, libc::SIGSEGV] {
            // SAFETY: a zeroed sigaction is a valid starting point; we set the
            // handler and flags before passing it to the kernel, and the handler
            // only touches the ucontext it is given (async-signal-safe).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = handler as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut sa.sa_mask);
                let rc = libc::sigaction(sig, &sa, std::ptr::null_mut());
                assert_eq!(rc, 0, "sigaction failed");
            }
        }
    });
}

extern "C" fn handler(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO handlers; we
    // read and write only its general registers, and the table is immutable.
    unsafe {
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
        let table = &*std::ptr::addr_of!(barmap_touch_v0_table);
        for [insn, fixup] in table.iter().copied() {
            if rip == insn {
                uc.uc_mcontext.gregs[libc::REG_RIP as usize] = fixup as i64;
                uc.uc_mcontext.gregs[libc::REG_RDX as usize] = sig as i64;
                uc.uc_mcontext.gregs[libc::REG_RAX as usize] = 0;
                return;
            }
        }
        // Not one of ours: fall back to the default action; returning re-runs
        // the faulting instruction, which now kills the process as usual.
        libc::signal(sig, libc::SIG_DFL);
    }
}

fn decode(ret: u128) -> Result<u64, Fault> {
    match (ret >> 64) as i32 {
        0 => Ok(ret as u64),
        libc::SIGBUS => Err(Fault::Sigbus),
        _ => Err(Fault::Sigsegv),
    }
}

/// Reads a u64 at `addr`; a SIGBUS or SIGSEGV becomes an error.
///
/// # Safety
/// `addr` must be 8-byte aligned, and no Rust reference may alias the memory
/// mutably (device memory shared with other threads is fine: the access is a
/// single volatile load).
pub unsafe fn read_u64(addr: *const u64) -> Result<u64, Fault> {
    install();
    decode(barmap_touch_v0_load64(addr))
}

/// Reads a u32 at `addr`; a SIGBUS or SIGSEGV becomes an error.
///
/// # Safety
/// As for [`read_u64`], with 4-byte alignment.
pub unsafe fn read_u32(addr: *const u32) -> Result<u32, Fault> {
    install();
    decode(barmap_touch_v0_load32(addr)).map(|v| v as u32)
}

/// Writes a u64 at `addr`; a SIGBUS or SIGSEGV becomes an error.
///
/// # Safety
/// `addr` must be 8-byte aligned and writable memory that no Rust reference
/// aliases.
pub unsafe fn write_u64(addr: *mut u64, value: u64) -> Result<(), Fault> {
    install();
    decode(barmap_touch_v0_store64(addr, value)).map(|_| ())
}

/// Writes a u32 at `addr`; a SIGBUS or SIGSEGV becomes an error.
///
/// # Safety
/// As for [`write_u64`], with 4-byte alignment.
pub unsafe fn write_u32(addr: *mut u32, value: u32) -> Result<(), Fault> {
    install();
    decode(barmap_touch_v0_store32(addr, value)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_write_succeed_on_ordinary_memory() {
        let mut x: u64 = 7;
        unsafe {
            assert_eq!(read_u64(&x), Ok(7));
            write_u64(&mut x, 9).unwrap();
            assert_eq!(read_u64(&x), Ok(9));
            let mut y: u32 = 5;
            write_u32(&mut y, 6).unwrap();
            assert_eq!(read_u32(&y), Ok(6));
        }
    }

    #[test]
    fn touching_an_unmapped_page_reports_sigsegv_and_the_thread_survives() {
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(read_u64(p as *const u64), Err(Fault::Sigsegv));
            assert_eq!(write_u32(p as *mut u32, 1), Err(Fault::Sigsegv));
            libc::munmap(p, 4096);
        }
    }

    #[test]
    fn touching_past_the_end_of_a_file_mapping_reports_sigbus() {
        unsafe {
            let fd = libc::memfd_create(c"touch-test".as_ptr(), 0);
            assert!(fd >= 0);
            // A 4 KiB file mapped as 8 KiB: the second page is beyond EOF.
            assert_eq!(libc::ftruncate(fd, 4096), 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(read_u64(p as *const u64), Ok(0));
            let beyond = (p as usize + 4096) as *mut u64;
            assert_eq!(read_u64(beyond), Err(Fault::Sigbus));
            assert_eq!(write_u64(beyond, 3), Err(Fault::Sigbus));
            libc::munmap(p, 8192);
            libc::close(fd);
        }
    }
}
