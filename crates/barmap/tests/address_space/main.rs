//! Revocation holds whatever the process does to its address space: fork,
//! mremap, munmap, mprotect, madvise, mlock, signals, region access with a
//! mapping as the buffer, and a userfaultfd that sees only user-mode faults.
//! Every test runs on each correct policy and uses plain system calls on the
//! mapping, as a program would.

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use barmap::touch::{self, Fault};
use barmap::{Device, Error, Mapping, Policy, PowerState, Prot, DEFAULT_MEMORY_BAR};

const CORRECT: [Policy; 4] = [Policy::Whole, Policy::Page, Policy::Huge, Policy::Prefault];
const PAGE: usize = 4096;
const MIB: usize = 1 << 20;

/// The tests of this file run one at a time: they munmap ranges and map
/// foreign memory at them, and a zap by one test's device while another
/// test's munmap is still in the kernel is the one window barmap cannot
/// close (ARCHITECTURE.md, "No zap meets foreign memory").
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device on the process's shared fault service.
fn device(policy: Policy) -> Device {
    Device::builder_with_memory(8 << 20)
        .policy(policy)
        .build()
        .expect("device")
}

fn read_at(addr: usize) -> Result<u64, Fault> {
    // SAFETY: the touch module turns a SIGBUS/SIGSEGV at this one
    // instruction into an error; any address may be probed.
    unsafe { touch::read_u64(addr as *const u64) }
}

fn write_at(addr: usize, value: u64) -> Result<(), Fault> {
    // SAFETY: as read_at; the tests only write to barmap mappings.
    unsafe { touch::write_u64(addr as *mut u64, value) }
}

/// Runs `f` on another thread and fails the test if it does not finish in
/// time (a hang is a failure, not a stuck test).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what}: no answer within 20 s (a hang)"))
}

/// Anonymous memory at exactly `range` (which the test just freed), filled
/// with a marker: barmap must never zero or unmap it.
fn foreign_marker(range: std::ops::Range<usize>, marker: u64) {
    assert!(
        map_marked(range, marker, libc::MAP_FIXED),
        "MAP_FIXED anonymous memory"
    );
}

/// Maps anonymous memory with `marker` on every page at `range` if nothing
/// else took the addresses first (`MAP_FIXED_NOREPLACE`); returns whether
/// it did.
fn place_noreplace(range: std::ops::Range<usize>, marker: u64) -> bool {
    map_marked(range, marker, libc::MAP_FIXED_NOREPLACE)
}

/// Anonymous memory at `range` (`fixed`: MAP_FIXED or MAP_FIXED_NOREPLACE)
/// with `marker` on every page; false if the mmap failed.
fn map_marked(range: std::ops::Range<usize>, marker: u64, fixed: i32) -> bool {
    // SAFETY: maps anonymous memory over a range this test unmapped itself
    // (MAP_FIXED) or where nothing is mapped (MAP_FIXED_NOREPLACE).
    let p = unsafe {
        libc::mmap(
            range.start as *mut libc::c_void,
            range.end - range.start,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | fixed,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    assert_eq!(
        p as usize, range.start,
        "anonymous memory at the asked address"
    );
    for a in range.step_by(PAGE) {
        write_at(a, marker).unwrap();
    }
    true
}

fn assert_marker(range: std::ops::Range<usize>, marker: u64, when: &str) {
    for a in range.step_by(PAGE) {
        assert_eq!(read_at(a), Ok(marker), "foreign memory at {a:#x} {when}");
    }
}

fn libc_munmap(range: std::ops::Range<usize>) {
    // SAFETY: the tests unmap ranges of their own barmap mappings (or of
    // their own anonymous memory).
    let rc = unsafe { libc::munmap(range.start as *mut libc::c_void, range.end - range.start) };
    assert_eq!(rc, 0, "munmap: {}", std::io::Error::last_os_error());
}

fn madvise(range: std::ops::Range<usize>, advice: i32) -> Result<(), i32> {
    // SAFETY: advice on ranges of the test's own mappings.
    let rc = unsafe { libc::madvise(range.start as *mut _, range.end - range.start, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// A free address range of `len` bytes (reserved, then released).
fn free_range(len: usize) -> usize {
    // SAFETY: a fresh anonymous reservation, unmapped at once.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len + 2 * MIB,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let start = (p as usize + 2 * MIB - 1) & !(2 * MIB - 1);
    libc_munmap(p as usize..p as usize + len + 2 * MIB);
    start
}

/// A device of `policy` with a read-write mapping of `len` bytes of its
/// memory BAR, every page written with a value derived from `seed`.
fn filled(policy: Policy, len: usize, seed: u64) -> (Device, Mapping) {
    let dev = device(policy);
    let m = dev
        .map(DEFAULT_MEMORY_BAR, 0, len, Prot::ReadWrite)
        .unwrap();
    fill(&m, seed);
    (dev, m)
}

fn fill(m: &Mapping, seed: u64) {
    for off in (0..m.len()).step_by(PAGE) {
        m.write_u64(off, seed ^ off as u64);
    }
}

mod fork;
mod mremap;
mod munmap;
mod protect;
mod region_access;
mod service;
