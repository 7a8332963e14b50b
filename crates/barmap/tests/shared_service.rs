//! One fault service per address space: every device of a process shares
//! one userfaultfd and at most one service thread per core; a new device
//! costs its memfds and nothing more, a disable of one device touches only
//! its own mappings, and a forked child is an address space of its own.

use std::time::Duration;

use barmap::touch::{self, Fault};
use barmap::{AddressSpace, Device, Policy, Prot, DEFAULT_MEMORY_BAR};

const PAGE: usize = 4096;

/// The tests of this file count the process's threads and fds: one at a
/// time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// barmap's fault service threads in this process (by thread name: the
/// test harness starts and ends threads of its own meanwhile).
fn service_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("barmap-fault"))
        .count()
}

fn small(policy: Policy) -> Device {
    Device::builder()
        .region(DEFAULT_MEMORY_BAR, barmap::RegionSpec::memory(1 << 20))
        .policy(policy)
        .build()
        .expect("device")
}

fn read_at(addr: usize) -> Result<u64, Fault> {
    // SAFETY: the touch module turns a SIGBUS/SIGSEGV at this one
    // instruction into an error.
    unsafe { touch::read_u64(addr as *const u64) }
}

#[test]
fn devices_of_a_process_share_one_userfaultfd_and_at_most_one_thread_per_core() {
    let _serial = serial();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let anchor = small(Policy::Prefault); // the space exists from here on
    let started = anchor.address_space().stats().service_threads;
    assert!(
        started >= 1 && started <= cores,
        "{started} service threads"
    );
    // A new thread names itself once it runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while service_threads() < started && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (threads0, fds0) = (service_threads(), count("/proc/self/fd"));
    let devices: Vec<Device> = (0..100).map(|_| small(Policy::Prefault)).collect();
    let maps: Vec<_> = devices
        .iter()
        .map(|d| {
            d.map(DEFAULT_MEMORY_BAR, 0, 16 * PAGE, Prot::ReadWrite)
                .unwrap()
        })
        .collect();
    for (i, m) in maps.iter().enumerate() {
        m.write_u64(0, i as u64);
    }
    assert_eq!(service_threads(), threads0, "no thread per device");
    assert_eq!(
        count("/proc/self/fd") - fds0,
        100,
        "one memfd per device (one BAR), no userfaultfd or eventfd of its own"
    );
    let space = anchor.address_space().stats();
    assert_eq!(space.devices, 101);
    assert!(space.service_threads <= cores, "{space:?}");
    for (i, m) in maps.iter().enumerate() {
        assert_eq!(m.read_u64(0), i as u64, "device {i} reads its own memory");
    }
    for d in &devices {
        assert!(d.wait_idle(Duration::from_secs(5)));
        let s = d.stats();
        assert_eq!(s.faults, s.fills + s.eexist, "{s:?}");
        assert!(s.faults >= 1, "each device served its own fault");
    }
}

#[test]
fn a_disable_of_one_device_touches_only_its_own_mappings() {
    let _serial = serial();
    for policy in [Policy::Whole, Policy::Page, Policy::Huge, Policy::Prefault] {
        let a = small(policy);
        let b = small(policy);
        let ma = a
            .map(DEFAULT_MEMORY_BAR, 0, 64 * PAGE, Prot::ReadWrite)
            .unwrap();
        let mb = b
            .map(DEFAULT_MEMORY_BAR, 0, 64 * PAGE, Prot::ReadWrite)
            .unwrap();
        ma.write_u64(0, 0xa);
        mb.write_u64(0, 0xb);
        assert!(a.wait_idle(Duration::from_secs(5)) && b.wait_idle(Duration::from_secs(5)));
        let b_before = b.stats();
        a.set_memory_enabled(false);
        assert_eq!(
            read_at(ma.addr()),
            Err(Fault::Sigbus),
            "{policy}: a revoked"
        );
        assert_eq!(read_at(mb.addr()), Ok(0xb), "{policy}: b untouched");
        let b_after = b.stats();
        assert_eq!(b_after.zaps, b_before.zaps, "{policy}: b not zapped");
        assert_eq!(
            b_after.faults, b_before.faults,
            "{policy}: b needed no refault"
        );
        a.set_memory_enabled(true);
        assert_eq!(read_at(ma.addr()), Ok(0xa), "{policy}: a served again");
    }
}

#[test]
fn the_service_outlives_a_dropped_device_while_its_mappings_or_other_devices_live() {
    let _serial = serial();
    // No other test of this file holds a device now: no service runs (a
    // thread that was just joined may linger in /proc for a moment).
    let settled = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while service_threads() > n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        service_threads()
    };
    assert_eq!(settled(0), 0, "no service before the test");
    let a = small(Policy::Prefault);
    let b = small(Policy::Prefault);
    let ma = a
        .map(DEFAULT_MEMORY_BAR, 0, 4 * PAGE, Prot::ReadWrite)
        .unwrap();
    let mb = b
        .map(DEFAULT_MEMORY_BAR, 0, 4 * PAGE, Prot::ReadWrite)
        .unwrap();
    drop(a);
    // A dropped device's mapping gets SIGBUS for good; the other device is
    // still served by the shared threads.
    assert_eq!(read_at(ma.addr()), Err(Fault::Sigbus));
    assert_eq!(read_at(mb.addr() + PAGE), Ok(0));
    mb.write_u64(8, 7);
    assert_eq!(mb.read_u64(8), 7);
    drop((ma, mb, b));
    // The last device and mapping gone: so are the service threads (they
    // are joined when the space drops).
    assert_eq!(settled(0), 0, "the service stopped with its last user");
}

#[test]
fn a_forked_child_is_an_address_space_of_its_own() {
    let _serial = serial();
    let parent = small(Policy::Prefault);
    let m = parent
        .map(DEFAULT_MEMORY_BAR, 0, 4 * PAGE, Prot::ReadWrite)
        .unwrap();
    m.write_u64(0, 0x1111);
    let parent_space = parent.address_space().id();
    // SAFETY: the child only builds and uses a device of its own, then
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = (|| {
            // The inherited objects are the parent's.
            if parent
                .map(DEFAULT_MEMORY_BAR, 0, PAGE, Prot::ReadWrite)
                .is_ok()
            {
                return 2;
            }
            let Ok(own) = Device::builder()
                .region(DEFAULT_MEMORY_BAR, barmap::RegionSpec::memory(1 << 20))
                .build()
            else {
                return 3;
            };
            if own.address_space().id() == parent_space {
                return 4;
            }
            let Ok(cm) = own.map(DEFAULT_MEMORY_BAR, 0, 4 * PAGE, Prot::ReadWrite) else {
                return 5;
            };
            cm.write_u64(0, 0x2222);
            if cm.read_u64(0) != 0x2222 {
                return 6;
            }
            own.set_memory_enabled(false);
            if read_at(cm.addr()) != Err(Fault::Sigbus) {
                return 7;
            }
            0
        })();
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "child step that failed");
    assert_eq!(m.read_u64(0), 0x1111, "parent still served");
    parent.set_memory_enabled(false);
    assert_eq!(read_at(m.addr()), Err(Fault::Sigbus));
}

#[test]
fn a_private_service_is_a_space_of_its_own() {
    let _serial = serial();
    let shared = small(Policy::Page);
    let private = Device::builder()
        .region(DEFAULT_MEMORY_BAR, barmap::RegionSpec::memory(1 << 20))
        .service_threads(3)
        .build()
        .unwrap();
    assert_eq!(private.address_space().stats().service_threads, 3);
    assert_eq!(private.address_space().stats().devices, 1);
    assert!(!std::ptr::eq(
        shared.address_space() as *const AddressSpace,
        private.address_space() as *const AddressSpace
    ));
    let m = private
        .map(DEFAULT_MEMORY_BAR, 0, 4 * PAGE, Prot::ReadWrite)
        .unwrap();
    m.write_u64(0, 5);
    assert_eq!(m.read_u64(0), 5);
}
