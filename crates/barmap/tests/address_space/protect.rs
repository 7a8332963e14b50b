//! mprotect, madvise and mlock: refaults at most, never a bypass of a
//! revocation or a write to a read-only BAR.

use super::*;

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
        let (dev, m) = filled(policy, 4 * MIB, 5);
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

#[test]
fn madvise_by_the_process_only_causes_refaults_and_never_destroys_device_memory() {
    let _serial = serial();
    for policy in CORRECT {
        let (dev, m) = filled(policy, 2 * MIB, 21);
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
        let (dev, m) = filled(policy, 2 * MIB, 8);
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
