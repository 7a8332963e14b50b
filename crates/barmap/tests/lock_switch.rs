//! The bench-only switch `os::set_lock_on_fault` (its own test binary: the
//! switch is process-wide). A mapping made with it on, the default, refuses
//! the process's MADV_DONTNEED with EINVAL, as vfio-pci's mapping does; one
//! made with it off lets it through.

use barmap::{Device, Prot, DEFAULT_MEMORY_BAR};

const LEN: usize = 2 << 20;

#[test]
fn mappings_refuse_madv_dontneed_unless_the_bench_switch_turned_the_lock_off() {
    let dev = Device::builder_with_memory(LEN as u64).build().unwrap();
    let dontneed = |lock: bool| {
        barmap::os::set_lock_on_fault(lock);
        let m = dev.map(DEFAULT_MEMORY_BAR, 0, LEN, Prot::ReadWrite);
        barmap::os::set_lock_on_fault(true);
        let m = m.unwrap();
        m.touch_u64(0).unwrap();
        barmap::os::advise(m.addr()..m.addr() + m.len(), libc::MADV_DONTNEED)
    };
    assert!(barmap::os::lock_on_fault_enabled(), "locked by default");
    // SAFETY: getrlimit fills the zeroed struct it is given; geteuid has no
    // preconditions.
    let (limit, root) = unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r);
        (r.rlim_cur, libc::geteuid() == 0)
    };
    // Without RLIMIT_MEMLOCK room the lock is refused and barmap maps
    // unlocked (ARCHITECTURE.md): nothing to compare then.
    if root || limit >= 4 * LEN as u64 {
        assert_eq!(dontneed(true), Err(libc::EINVAL), "locked: refused");
    }
    assert_eq!(dontneed(false), Ok(()), "unlocked: let through");
    assert!(barmap::os::lock_on_fault_enabled(), "switched back on");
}
