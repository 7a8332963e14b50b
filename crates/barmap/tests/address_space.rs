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

fn fill(m: &Mapping, seed: u64) {
    for off in (0..m.len()).step_by(PAGE) {
        m.write_u64(off, seed ^ off as u64);
    }
}

// ----- fork ------------------------------------------------------------

/// Forks; the child runs `child` (async-signal-safe work only, or work on
/// its own copy of barmap's objects) and `_exit`s with its result; returns
/// the child's wait status, failing the test if the child does not end.
fn fork_and_wait(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `child` and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child without running the parent's destructors
        // or atexit handlers a second time.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return status;
        }
        if Instant::now() > deadline {
            // SAFETY: kill our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("forked child did not finish within 20 s (a hang)");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn fork_child_touch_fails_and_its_drop_leaves_the_parent_served() {
    let _serial = serial();
    for policy in CORRECT {
        let mut dev = Some(device(policy));
        let d = dev.as_ref().unwrap();
        let mut m = Some(
            d.map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
                .unwrap(),
        );
        fill(m.as_ref().unwrap(), 7);
        let addr = m.as_ref().unwrap().addr();
        // Install the touch module's handler before forking.
        assert_eq!(read_at(addr), Ok(7));
        // The child inherits no view of the BAR: its touch is SIGSEGV,
        // never a read of device memory that bypasses the gate.
        let status = fork_and_wait(|| match read_at(addr) {
            Err(Fault::Sigsegv) => 0,
            Err(Fault::Sigbus) => 2,
            Ok(_) => 3,
        });
        assert!(
            libc::WIFEXITED(status),
            "{policy}: child status {status:#x}"
        );
        assert_eq!(libc::WEXITSTATUS(status), 0, "{policy}: child touch");
        // The child drops its copies of the mapping and of the device, as a
        // Rust program returning from main does; nothing of that may reach
        // the parent's service, userfaultfd or eventfd.
        let status = fork_and_wait(|| {
            drop(m.take());
            match dev.take() {
                Some(d) => {
                    assert!(matches!(
                        d.map(DEFAULT_MEMORY_BAR, 0, PAGE, Prot::Read),
                        Err(Error::ForeignProcess { .. })
                    ));
                    drop(d);
                    0
                }
                None => 4,
            }
        });
        assert!(
            libc::WIFEXITED(status),
            "{policy}: child status {status:#x}"
        );
        assert_eq!(libc::WEXITSTATUS(status), 0, "{policy}: child drop");
        let d = dev.as_ref().unwrap();
        let m = m.as_ref().unwrap();
        let fresh = d
            .map(DEFAULT_MEMORY_BAR, 2 << 20, 2 * MIB, Prot::ReadWrite)
            .unwrap();
        let fresh_addr = fresh.addr();
        assert_eq!(
            within("fault after child drop", move || read_at(fresh_addr)),
            Ok(0)
        );
        d.set_memory_enabled(false);
        assert_eq!(m.touch_u64(0), Err(Fault::Sigbus), "{policy}");
        d.set_memory_enabled(true);
        assert_eq!(m.touch_u64(PAGE), Ok(7 ^ PAGE as u64), "{policy}");
    }
}

#[test]
fn fork_while_faults_are_in_flight_leaves_the_child_nothing_that_waits() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = Arc::new(device(policy));
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let (dev, stop) = (dev.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) {
                    let m = dev
                        .map(DEFAULT_MEMORY_BAR, 0, 4 * MIB, Prot::ReadWrite)
                        .unwrap();
                    for off in (0..m.len()).step_by(64 * PAGE) {
                        let _ = m.touch_u64(off);
                    }
                    if rounds % 4 == 0 {
                        dev.set_memory_enabled(false);
                        dev.set_memory_enabled(true);
                    }
                    rounds += 1;
                }
            })
        };
        let mut dev = Some(dev);
        for _ in 0..20 {
            let m = dev
                .as_ref()
                .unwrap()
                .map(DEFAULT_MEMORY_BAR, 4 << 20, PAGE, Prot::ReadWrite)
                .unwrap();
            let mut m = Some(m);
            let status = fork_and_wait(|| {
                // A lock may have been copied held: the drops must not wait.
                drop(m.take());
                drop(dev.take());
                0
            });
            assert!(
                libc::WIFEXITED(status),
                "{policy}: child status {status:#x}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
    }
}

// ----- mremap ----------------------------------------------------------

/// mremap with the given flags; the new address or the errno.
fn mremap(old: usize, old_len: usize, new_len: usize, flags: i32, to: usize) -> Result<usize, i32> {
    // SAFETY: remaps the test's own mapping; a moved one is used only at
    // the address returned.
    let p = unsafe {
        libc::mremap(
            old as *mut _,
            old_len,
            new_len,
            flags,
            to as *mut libc::c_void,
        )
    };
    if p == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(p as usize)
    }
}

#[test]
fn mremap_grown_part_gets_sigbus_never_device_memory() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        // BAR0 is mappable up to the MSI-X table at 0x8000: growing a
        // mapping over it must not reach the table.
        let m = dev.map(0, 0, 0x8000, Prot::ReadWrite).unwrap();
        assert_eq!(m.touch_u64(0), Ok(u64::from(barmap::DEFAULT_ID)));
        let to = free_range(2 * MIB);
        let new = mremap(
            m.addr(),
            0x8000,
            0x10000,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to,
        )
        .expect("mremap grow");
        assert_eq!(
            read_at(new),
            Ok(u64::from(barmap::DEFAULT_ID)),
            "{policy}: kept part"
        );
        for off in [0x8000, 0x8008, 0x9000, 0xf000] {
            assert_eq!(
                read_at(new + off),
                Err(Fault::Sigbus),
                "{policy}: grown part at {off:#x}"
            );
            assert_eq!(
                write_at(new + off, 1),
                Err(Fault::Sigbus),
                "{policy}: grown part write"
            );
        }
        let mut table = [0u8; 8];
        dev.read_region(0, 0x8000, &mut table).unwrap();
        assert_eq!(table, [0u8; 8], "{policy}: MSI-X table untouched");
        drop(m);
        // The Mapping's drop unmapped what barmap tracks (the moved part);
        // the grown part is the process's to unmap.
        assert_eq!(
            read_at(new),
            Err(Fault::Sigsegv),
            "{policy}: moved part unmapped on drop"
        );
        libc_munmap(new + 0x8000..new + 0x10000);
    }
}

#[test]
fn mremap_moved_mapping_stays_served_and_revocable_and_the_old_range_is_forgotten() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
            .unwrap();
        fill(&m, 11);
        let old = m.addr();
        let to = free_range(2 * MIB);
        let new = mremap(
            old,
            2 * MIB,
            2 * MIB,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to,
        )
        .expect("mremap move");
        // Someone else's memory lands on the old addresses.
        foreign_marker(old..old + 2 * MIB, 0x0bad_cafe);
        for off in (0..2 * MIB).step_by(16 * PAGE) {
            assert_eq!(
                read_at(new + off),
                Ok(11 ^ off as u64),
                "{policy}: moved data"
            );
        }
        dev.set_memory_enabled(false);
        assert_eq!(
            read_at(new),
            Err(Fault::Sigbus),
            "{policy}: revoked at the new place"
        );
        assert_marker(old..old + 2 * MIB, 0x0bad_cafe, "after a disable");
        dev.reset().unwrap();
        dev.set_memory_enabled(true);
        assert_eq!(
            read_at(new + PAGE),
            Ok(11 ^ PAGE as u64),
            "{policy}: after enable"
        );
        drop(m);
        assert_marker(old..old + 2 * MIB, 0x0bad_cafe, "after the mapping's drop");
        assert_eq!(
            read_at(new),
            Err(Fault::Sigsegv),
            "{policy}: dropped at the new place"
        );
        libc_munmap(old..old + 2 * MIB);
    }
}

#[test]
fn mremap_shrink_forgets_the_tail_and_keeps_the_rest_served() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 4 * MIB, Prot::ReadWrite)
            .unwrap();
        let a = m.addr();
        assert_eq!(mremap(a, 4 * MIB, MIB + 3 * PAGE, 0, 0), Ok(a));
        foreign_marker(a + MIB + 3 * PAGE..a + 4 * MIB, 0x5eed);
        // The kept part is whole: faults fill it, never SIGBUS with memory on.
        for off in (0..MIB + 3 * PAGE).step_by(PAGE) {
            assert_eq!(read_at(a + off), Ok(0), "{policy}: kept part at {off:#x}");
        }
        dev.set_memory_enabled(false);
        assert_eq!(read_at(a), Err(Fault::Sigbus), "{policy}");
        dev.set_memory_enabled(true);
        assert_marker(a + MIB + 3 * PAGE..a + 4 * MIB, 0x5eed, "after a disable");
        drop(m);
        assert_marker(
            a + MIB + 3 * PAGE..a + 4 * MIB,
            0x5eed,
            "after the mapping's drop",
        );
        libc_munmap(a + MIB + 3 * PAGE..a + 4 * MIB);
    }
}

// ----- munmap ----------------------------------------------------------

#[test]
fn munmap_by_the_process_is_forgotten_and_reused_memory_is_never_touched() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 4 * MIB, Prot::ReadWrite)
            .unwrap();
        fill(&m, 3);
        let a = m.addr();
        let hole = a + MIB..a + 2 * MIB + 5 * PAGE;
        libc_munmap(hole.clone());
        assert!(!m.is_mapped(MIB), "{policy}: barmap forgot the hole");
        foreign_marker(hole.clone(), 0xfeed_f00d);
        dev.set_memory_enabled(false);
        dev.set_memory_enabled(true);
        dev.reset().unwrap();
        dev.set_power_state(PowerState::D3hot);
        dev.set_power_state(PowerState::D0);
        assert_marker(hole.clone(), 0xfeed_f00d, "after disable, reset, low power");
        assert_eq!(read_at(a), Ok(3), "{policy}: before the hole");
        assert_eq!(
            read_at(hole.end),
            Ok(3 ^ (hole.end - a) as u64),
            "{policy}: after it"
        );
        drop(m);
        assert_marker(hole.clone(), 0xfeed_f00d, "after the mapping's drop");
        libc_munmap(hole);
    }
}

/// The process unmaps part of a mapping while other threads fault it in
/// (a whole-mapping fill then meets the hole), maps its own memory there
/// at once, and toggles memory: no fill over the hole is taken for a BUG,
/// no zap meets the hole as a failure, and the process's memory is never
/// touched.
#[test]
fn munmap_racing_fills_is_no_bug_no_failed_zap_and_never_touches_reused_memory() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = Arc::new(device(policy));
        let mut lost = 0;
        for round in 0..120u64 {
            let m = dev
                .map(DEFAULT_MEMORY_BAR, 0, 64 * PAGE, Prot::ReadWrite)
                .unwrap();
            let a = m.addr();
            let hole = a + 16 * PAGE..a + 40 * PAGE;
            let stop = Arc::new(AtomicBool::new(false));
            // Odd while memory is being turned off and on again.
            let toggles = Arc::new(AtomicU64::new(0));
            let touchers: Vec<_> = (0..3)
                .map(|t| {
                    let (stop, toggles) = (stop.clone(), toggles.clone());
                    std::thread::spawn(move || {
                        let mut i = t * 7;
                        while !stop.load(Ordering::SeqCst) {
                            let page = a + (i % 64) * PAGE;
                            let before = toggles.load(Ordering::SeqCst);
                            let r = read_at(page);
                            let on = before % 2 == 0 && toggles.load(Ordering::SeqCst) == before;
                            assert!(
                                !(on && r == Err(Fault::Sigbus)),
                                "SIGBUS at {page:#x} with memory on"
                            );
                            i += 5;
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_micros(200 + 50 * (round % 8)));
            libc_munmap(hole.clone());
            // Not MAP_FIXED: a thread starting meanwhile (the service pool
            // grows with the load) may have been given the hole.
            let placed = place_noreplace(hole.clone(), 0x0dd_ba11);
            toggles.fetch_add(1, Ordering::SeqCst);
            dev.set_memory_enabled(false);
            dev.set_memory_enabled(true);
            toggles.fetch_add(1, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
            for t in touchers {
                t.join().expect("toucher");
            }
            drop(m);
            if !placed {
                lost += 1;
                continue;
            }
            assert_marker(hole.clone(), 0x0dd_ba11, "after fills raced the munmap");
            libc_munmap(hole);
        }
        assert!(
            lost < 60,
            "{policy}: {lost} of 120 rounds could not place their memory"
        );
        let s = dev.stats();
        assert_eq!(
            (s.bugs, s.zap_failures),
            (0, 0),
            "{policy}: BUG events, failed zaps"
        );
    }
}

// ----- mprotect --------------------------------------------------------

fn mprotect(range: std::ops::Range<usize>, prot: i32) -> Result<(), i32> {
    // SAFETY: changes the protection of the test's own mapping.
    let rc = unsafe { libc::mprotect(range.start as *mut _, range.end - range.start, prot) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn mprotect_split_mapping_fills_across_the_split_with_memory_on() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 4 * MIB, Prot::ReadWrite)
            .unwrap();
        fill(&m, 5);
        dev.set_memory_enabled(false);
        dev.set_memory_enabled(true);
        let a = m.addr();
        mprotect(a + MIB - 2 * PAGE..a + 2 * MIB + PAGE, libc::PROT_READ).unwrap();
        for off in (0..4 * MIB).step_by(PAGE) {
            assert_eq!(
                read_at(a + off),
                Ok(5 ^ off as u64),
                "{policy}: at {off:#x}"
            );
        }
        assert_eq!(
            write_at(a + MIB, 1),
            Err(Fault::Sigsegv),
            "{policy}: read-only part"
        );
        assert_eq!(dev.stats().sigbus, 0, "{policy}: no SIGBUS with memory on");
        mprotect(a..a + 4 * MIB, libc::PROT_READ | libc::PROT_WRITE).unwrap();
        assert_eq!(write_at(a + MIB, 9), Ok(()), "{policy}: writable again");
    }
}

#[test]
fn read_only_bar_made_writable_never_changes_the_device() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        let m = dev.map(4, 0, PAGE, Prot::Read).unwrap();
        let before = m.touch_u64(0).unwrap();
        // The process can make the mapping writable (a userfaultfd cannot
        // serve a view that never may be), but its writes do not reach the
        // device: they land in a shadow that the next reset restores.
        if mprotect(
            m.addr()..m.addr() + PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
        )
        .is_ok()
        {
            write_at(m.addr(), 0xdead).unwrap();
        }
        let mut region = [0u8; 8];
        dev.read_region(4, 0, &mut region).unwrap();
        assert_eq!(
            u64::from_le_bytes(region),
            before,
            "{policy}: device contents"
        );
        dev.reset().unwrap();
        assert_eq!(m.touch_u64(0), Ok(before), "{policy}: restored by reset");
    }
}

// ----- madvise and mlock -----------------------------------------------

#[test]
fn madvise_by_the_process_only_causes_refaults_and_never_destroys_device_memory() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
            .unwrap();
        fill(&m, 21);
        let a = m.addr();
        let part = a + 4 * PAGE..a + MIB;
        for advice in [
            libc::MADV_DONTNEED,
            libc::MADV_DONTNEED_LOCKED,
            libc::MADV_COLD,
            libc::MADV_PAGEOUT,
            libc::MADV_REMOVE,
            libc::MADV_FREE,
        ] {
            // Refused (EINVAL, as on a vfio-pci mapping) or harmless.
            let _ = madvise(part.clone(), advice);
            let a2 = a;
            let got = within("touch after madvise", move || {
                (0..2 * MIB)
                    .step_by(PAGE)
                    .map(|off| read_at(a2 + off))
                    .collect::<Vec<_>>()
            });
            for (i, v) in got.into_iter().enumerate() {
                let off = i * PAGE;
                assert_eq!(
                    v,
                    Ok(21 ^ off as u64),
                    "{policy}: advice {advice} at {off:#x}"
                );
            }
        }
        // A fresh mapping of the same range sees the data too (no hole was
        // punched into device memory).
        let again = dev.map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::Read).unwrap();
        assert_eq!(again.touch_u64(MIB - PAGE), Ok(21 ^ (MIB - PAGE) as u64));
        let mut region = [0u8; 8];
        dev.read_region(DEFAULT_MEMORY_BAR, 5 * PAGE as u64, &mut region)
            .unwrap();
        assert_eq!(u64::from_le_bytes(region), 21 ^ (5 * PAGE) as u64);
    }
}

#[test]
fn mappings_are_left_out_of_core_dumps() {
    let _serial = serial();
    let dev = device(Policy::Prefault);
    let m = dev
        .map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
        .unwrap();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let header = format!("{:x}-", m.addr());
    let section: String = smaps
        .split_inclusive('\n')
        .skip_while(|l| !l.starts_with(&header))
        .take_while(|l| l.starts_with(&header) || !l.contains(" rw") && !l.contains(" r-"))
        .collect();
    let flags = section
        .lines()
        .find(|l| l.starts_with("VmFlags:"))
        .expect("VmFlags of the mapping");
    assert!(
        flags.split_whitespace().any(|f| f == "dd"),
        "VM_DONTDUMP: {flags}"
    );
    assert!(
        flags.split_whitespace().any(|f| f == "dc"),
        "VM_DONTCOPY: {flags}"
    );
}

#[test]
fn mlocked_mapping_is_revoked_by_a_disable() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
            .unwrap();
        fill(&m, 8);
        // SAFETY: locks the test's own mapping (populating it through faults).
        let rc = unsafe { libc::mlock(m.addr() as *const _, 2 * MIB) };
        assert_eq!(rc, 0, "mlock: {}", std::io::Error::last_os_error());
        let before = dev.stats();
        dev.set_memory_enabled(false);
        let after = dev.stats();
        assert_eq!(after.zap_failures, 0, "{policy}: a zap failed");
        assert!(after.zaps > before.zaps, "{policy}: zapped");
        for off in (0..2 * MIB).step_by(64 * PAGE) {
            assert_eq!(
                m.touch_u64(off),
                Err(Fault::Sigbus),
                "{policy}: locked page {off:#x}"
            );
        }
        dev.set_memory_enabled(true);
        assert_eq!(m.touch_u64(PAGE), Ok(8 ^ PAGE as u64), "{policy}");
    }
}

// ----- signals ---------------------------------------------------------

extern "C" fn on_sigusr1(_: libc::c_int) {}

#[test]
fn signals_to_every_thread_do_not_stop_the_fault_service() {
    let _serial = serial();
    // A handler without SA_RESTART, as timers and profilers install.
    // SAFETY: a plain handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = 0;
        libc::sigaction(libc::SIGUSR1, &sa, ptr::null_mut());
    }
    for policy in CORRECT {
        let dev = device(policy);
        for round in 0..20 {
            let tasks: Vec<libc::pid_t> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            for tid in tasks {
                // SAFETY: signals a thread of this process.
                unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
            }
            // SAFETY: a process-directed signal, delivered to any thread.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
            let m = dev
                .map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
                .unwrap();
            let a = m.addr();
            let got = within("fault after signals", move || {
                read_at(a + (round % 512) * PAGE)
            });
            assert_eq!(got, Ok(0), "{policy}: round {round}");
        }
    }
}

// ----- region access ---------------------------------------------------

#[test]
fn region_access_with_a_revoked_mapping_as_the_buffer_returns_efault_not_a_signal() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        let other = device(policy);
        let m = other
            .map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
            .unwrap();
        fill(&m, 1);
        other.set_memory_enabled(false);
        // SAFETY: the slices are never read by Rust: the device copies
        // through the kernel, which reports EFAULT for revoked pages.
        let src = unsafe { std::slice::from_raw_parts(m.as_ptr(), 3 * PAGE) };
        let got = dev.write_region(DEFAULT_MEMORY_BAR, 0, src);
        assert!(
            matches!(
                got,
                Err(Error::BadBuffer {
                    errno: libc::EFAULT,
                    ..
                })
            ),
            "{policy}: write_region from a revoked mapping: {got:?}"
        );
        let got = dev.read_region_raw(DEFAULT_MEMORY_BAR, 0, m.as_ptr(), 3 * PAGE);
        assert!(
            matches!(
                got,
                Err(Error::BadBuffer {
                    errno: libc::EFAULT,
                    ..
                })
            ),
            "{policy}: read_region into a revoked mapping: {got:?}"
        );
        // The device's own mapping as the buffer, memory off: the kernel's
        // EIO for the region, and no signal.
        let own = dev
            .map(DEFAULT_MEMORY_BAR, 4 << 20, MIB, Prot::ReadWrite)
            .unwrap();
        dev.set_memory_enabled(false);
        let got = dev.read_region_raw(DEFAULT_MEMORY_BAR, 0, own.as_ptr(), PAGE);
        assert!(
            matches!(got, Err(Error::MemoryDisabled)),
            "{policy}: {got:?}"
        );
        let got = dev.write_region_raw(DEFAULT_MEMORY_BAR, 0, own.as_ptr(), PAGE);
        assert!(
            matches!(
                got,
                Err(Error::BadBuffer { .. }) | Err(Error::MemoryDisabled)
            ),
            "{policy}: {got:?}"
        );
        dev.set_memory_enabled(true);
        other.set_memory_enabled(true);
        // And with memory on, a mapping is an ordinary buffer.
        dev.write_region_raw(DEFAULT_MEMORY_BAR, 0, m.as_ptr(), PAGE)
            .unwrap();
        let mut b = [0u8; 8];
        dev.read_region(DEFAULT_MEMORY_BAR, 8, &mut b).unwrap();
        assert_eq!(
            u64::from_le_bytes(b),
            0,
            "{policy}: copied from the other device"
        );
    }
}

#[test]
fn region_access_into_own_mapping_under_toggles_never_raises_a_signal() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = Arc::new(device(policy));
        let m = Arc::new(
            dev.map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
                .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let toggler = {
            let (dev, stop) = (dev.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    dev.set_memory_enabled(false);
                    dev.set_memory_enabled(true);
                }
            })
        };
        let (mut ok, mut refused) = (0, 0);
        for i in 0..300 {
            let off = (i % 64) * PAGE;
            let got = if i % 2 == 0 {
                dev.read_region_raw(
                    DEFAULT_MEMORY_BAR,
                    4 << 20,
                    m.as_ptr().wrapping_add(off),
                    PAGE,
                )
            } else {
                dev.write_region_raw(
                    DEFAULT_MEMORY_BAR,
                    4 << 20,
                    m.as_ptr().wrapping_add(off),
                    PAGE,
                )
            };
            match got {
                Ok(()) => ok += 1,
                Err(Error::MemoryDisabled) | Err(Error::BadBuffer { .. }) => refused += 1,
                Err(e) => panic!("{policy}: unexpected {e}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        toggler.join().unwrap();
        assert_eq!(ok + refused, 300, "{policy}");
    }
}

// ----- a userfaultfd that sees only user-mode faults ---------------------

#[test]
fn user_mode_only_userfaultfd_serves_kernel_accesses_to_mappings() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = Device::builder_with_memory(8 << 20)
            .policy(policy)
            .user_mode_only(true)
            .build()
            .expect("device with a user-mode-only userfaultfd");
        assert_eq!(dev.uffd_access(), barmap::UffdAccess::UserModeOnly);
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
            .unwrap();
        for round in 0..2 {
            // read(2) from a pipe into the mapping: the kernel writes it.
            let mut fds = [0; 2];
            // SAFETY: a new pipe; both ends closed below.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            let data = (0xabcd_0000u64 + round).to_ne_bytes();
            let at = m.addr() + 3 * PAGE + round as usize * MIB;
            // SAFETY: writes 8 bytes to our pipe, then reads them into our
            // own mapping (the kernel checks the address).
            let n = unsafe {
                libc::write(fds[1], data.as_ptr().cast(), 8);
                libc::read(fds[0], at as *mut libc::c_void, 8)
            };
            // SAFETY: closes the pipe's fds.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            assert_eq!(
                n,
                8,
                "{policy}: read(2) into the mapping: {}",
                std::io::Error::last_os_error()
            );
            let mut back = [0u8; 8];
            m.try_read(at - m.addr(), &mut back).unwrap();
            assert_eq!(back, data, "{policy}: checked probe");
            // Revoked and restored: populated again.
            dev.set_memory_enabled(false);
            dev.set_memory_enabled(true);
        }
    }
}

// ----- gate fairness ---------------------------------------------------

#[test]
fn back_to_back_resets_do_not_starve_faults() {
    let _serial = serial();
    let dev = Arc::new(
        Device::builder_with_memory(8 << 20)
            .reset_time(Duration::from_millis(5))
            .build()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let resetter = {
        let (dev, stop) = (dev.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                dev.reset().unwrap();
            }
        })
    };
    let mut worst = Duration::ZERO;
    for round in 0..40 {
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
            .unwrap();
        let t = Instant::now();
        assert_eq!(m.touch_u64((round % 512) * PAGE), Ok(0));
        worst = worst.max(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    resetter.join().unwrap();
    // One reset holds the gate 5 ms; a fault waits for the one in progress
    // and the one already queued, not for the resetter's next ones. The
    // bound is loose (a loaded CI machine), the order is what matters:
    // std's RwLock let the resetter starve faults for over a minute.
    assert!(worst < Duration::from_secs(2), "a fault waited {worst:?}");
}

#[test]
fn mremap_move_reaches_the_core_in_order_with_several_service_threads() {
    let _serial = serial();
    // The kernel reports a move (REMAP) and then the unmap of the vacated
    // range (UNMAP); handled out of order by two service threads, the moved
    // part would be forgotten and escape revocation (seen in about 1 round
    // in 140 before events were read one reader at a time).
    for policy in CORRECT {
        let dev = Device::builder_with_memory(8 << 20)
            .policy(policy)
            .service_threads(4)
            .build()
            .expect("device");
        for round in 0..500 {
            let m = dev
                .map(DEFAULT_MEMORY_BAR, 0, 4 * PAGE, Prot::ReadWrite)
                .unwrap();
            m.write_u64(0, 0x1234);
            // SAFETY: a fresh anonymous reservation to move the mapping onto.
            let to = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    4 * PAGE,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            } as usize;
            let new = mremap(
                m.addr(),
                4 * PAGE,
                4 * PAGE,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to,
            )
            .expect("mremap move");
            std::thread::sleep(Duration::from_millis(2));
            dev.set_memory_enabled(false);
            let revoked = read_at(new);
            dev.set_memory_enabled(true);
            assert_eq!(
                revoked,
                Err(Fault::Sigbus),
                "{policy}: round {round}: moved part revoked"
            );
            assert_eq!(
                read_at(new),
                Ok(0x1234),
                "{policy}: round {round}: served again"
            );
            drop(m);
            libc_munmap(new..new + 4 * PAGE);
        }
    }
}

/// An anonymous PROT_NONE reservation of `len` bytes (the way DPDK reserves
/// the address range for a BAR before it maps the parts around the MSI-X
/// table over it).
fn reserve(len: usize) -> usize {
    // SAFETY: a fresh anonymous reservation at an address of the kernel's
    // choosing.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as usize
}

#[test]
fn map_fixed_over_a_reservation_is_served_and_revoked_around_the_msix_table() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        let res = reserve(0x10000);
        // Unaligned or null fixed addresses are refused and change nothing.
        assert!(matches!(
            dev.map_at(
                0,
                0,
                0x8000,
                Prot::ReadWrite,
                barmap::Placement::Fixed(res + 8)
            ),
            Err(Error::Unaligned { .. })
        ));
        assert_eq!(
            read_at(res),
            Err(Fault::Sigsegv),
            "{policy}: reservation intact"
        );
        let low = dev
            .map_at(0, 0, 0x8000, Prot::ReadWrite, barmap::Placement::Fixed(res))
            .unwrap();
        let high = dev
            .map_at(
                0,
                0x9000,
                0x7000,
                Prot::ReadWrite,
                barmap::Placement::Fixed(res + 0x9000),
            )
            .unwrap();
        assert_eq!(low.addr(), res);
        assert_eq!(high.addr(), res + 0x9000);
        assert_eq!(read_at(res), Ok(u64::from(barmap::DEFAULT_ID)), "{policy}");
        write_at(res + 0x9000, 0x77).unwrap();
        assert_eq!(
            read_at(res + 0x8000),
            Err(Fault::Sigsegv),
            "{policy}: the MSI-X hole stays the program's reservation"
        );
        dev.set_memory_enabled(false);
        assert_eq!(read_at(res), Err(Fault::Sigbus), "{policy}: revoked");
        assert_eq!(
            read_at(res + 0x9000),
            Err(Fault::Sigbus),
            "{policy}: revoked"
        );
        dev.set_memory_enabled(true);
        assert_eq!(read_at(res + 0x9000), Ok(0x77), "{policy}: served again");
        // Mapping the same place again replaces the old mapping (its UNMAP
        // event makes barmap forget it), as mmap(MAP_FIXED) over a BAR
        // mapping does on vfio-pci.
        let again = dev
            .map_at(0, 0, 0x8000, Prot::Read, barmap::Placement::Fixed(res))
            .unwrap();
        assert!(
            !low.is_mapped(0),
            "{policy}: the replaced mapping is forgotten"
        );
        assert_eq!(read_at(res), Ok(u64::from(barmap::DEFAULT_ID)));
        assert_eq!(
            write_at(res, 1),
            Err(Fault::Sigsegv),
            "{policy}: now read-only"
        );
        drop((low, high, again));
        libc_munmap(res..res + 0x10000);
    }
}

#[test]
fn dropping_a_mapping_right_after_the_process_unmapped_part_of_it_unmaps_the_rest() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = device(policy);
        for round in 0..300 {
            let m = dev
                .map(DEFAULT_MEMORY_BAR, 0, 4 * PAGE, Prot::ReadWrite)
                .unwrap();
            m.write_u64(0, 1);
            let a = m.addr();
            libc_munmap(a + PAGE..a + 2 * PAGE);
            drop(m);
            assert_eq!(
                dev.mapping_count(),
                0,
                "{policy}: round {round}: nothing left"
            );
            assert_eq!(
                read_at(a),
                Err(Fault::Sigsegv),
                "{policy}: round {round}: page 0 unmapped"
            );
            assert_eq!(
                read_at(a + 3 * PAGE),
                Err(Fault::Sigsegv),
                "{policy}: round {round}: page 3 unmapped"
            );
        }
    }
}

#[test]
fn mapping_count_does_not_count_a_mapping_the_process_just_unmapped() {
    let _serial = serial();
    let dev = device(Policy::Prefault);
    for round in 0..500 {
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 2 * PAGE, Prot::ReadWrite)
            .unwrap();
        libc_munmap(m.addr()..m.addr() + 2 * PAGE);
        assert_eq!(dev.mapping_count(), 0, "round {round}");
        drop(m);
    }
}
