//! Region access with a mapping as the buffer: EFAULT or EIO, never a
//! signal or a deadlock.

use super::*;

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
