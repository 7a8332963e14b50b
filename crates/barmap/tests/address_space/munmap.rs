//! munmap and MAP_FIXED by the process: forgotten at once, and memory
//! the process maps there since is never touched.

use super::*;

#[test]
fn munmap_by_the_process_is_forgotten_and_reused_memory_is_never_touched() {
    let _serial = serial();
    for policy in CORRECT {
        let (dev, m) = filled(policy, 4 * MIB, 3);
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
            assert!(is_device_view(a), "{policy}: the mapping is a device view");
            libc_munmap(a + PAGE..a + 2 * PAGE);
            drop(m);
            assert_eq!(
                dev.mapping_count(),
                0,
                "{policy}: round {round}: nothing left"
            );
            for page in [0, 3] {
                let at = a + page * PAGE;
                let read = read_at(at);
                assert!(
                    read == Err(Fault::Sigsegv) || !is_device_view(at),
                    "{policy}: round {round}: page {page} unmapped, read {read:?}"
                );
            }
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

/// What the fix for threads that map and munmap at once rests on: the
/// kernel counts a munmap's UNMAP event from the moment the munmap starts
/// until a reader has read it, and a zero-length UFFDIO_CONTINUE answers
/// EAGAIN for that whole time (`Uffd::events_pending`), so barmap can wait
/// for an event that is not even queued yet.
#[test]
fn a_munmap_whose_event_is_unread_is_pending_until_it_is_read() {
    use barmap::mm::SpaceId;
    use barmap::uffd::{Event, Uffd};

    let _serial = serial();
    let uffd = Uffd::open().expect("userfaultfd");
    let fd = barmap::os::memfd("pending", MIB as u64).expect("memfd");
    let view = barmap::os::map_shared(&fd, 0, MIB).expect("view");
    uffd.register(view..view + MIB).expect("UFFDIO_REGISTER");
    assert!(!uffd.events_pending(), "nothing pending before the munmap");
    // Nobody reads the userfaultfd: the munmap waits in the kernel.
    let unmapper = std::thread::spawn(move || libc_munmap(view..view + MIB));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !uffd.events_pending() {
        assert!(
            Instant::now() < deadline,
            "the munmap's event never pending"
        );
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(20));
    assert!(uffd.events_pending(), "still pending while unread");
    let mut events = Vec::new();
    while events.is_empty() {
        assert!(Instant::now() < deadline, "the UNMAP event never came");
        uffd.read_events(SpaceId(0), &mut events).expect("read");
    }
    assert!(
        matches!(&events[0], Event::Unmap { range, .. } if *range == (view..view + MIB)),
        "{events:?}"
    );
    unmapper.join().unwrap();
    assert!(!uffd.events_pending(), "nothing pending once read");
}

/// Threads that each loop: map a window of the memory BAR (the kernel
/// chooses the address, and gives one thread the addresses another has
/// just unmapped), write and read back every page, munmap it, on every
/// correct policy. The munmap's event used to land after the next mapping
/// at those addresses was tracked and cut it: SIGBUS with memory on.
#[test]
fn threads_mapping_and_munmapping_windows_at_once_never_get_sigbus() {
    let _serial = serial();
    const THREADS: usize = 4;
    const WINDOW: usize = 16 * PAGE;
    for policy in CORRECT {
        let dev = Arc::new(device(policy));
        let rounds = within("threads mapping windows", {
            let dev = dev.clone();
            move || {
                let workers: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let dev = dev.clone();
                        std::thread::spawn(move || {
                            let offset = (t * WINDOW) as u64;
                            for round in 0..200u64 {
                                let m = dev
                                    .map(2, offset, WINDOW, Prot::ReadWrite)
                                    .expect("map a window");
                                let a = m.addr();
                                for p in 0..WINDOW / PAGE {
                                    let v = round << 32 | (t * 64 + p) as u64;
                                    let at = a + p * PAGE;
                                    if let Err(f) = write_at(at, v) {
                                        return Err(format!("round {round} page {p}: {f:?}"));
                                    }
                                    if read_at(at) != Ok(v) {
                                        return Err(format!(
                                            "round {round} page {p}: read {:?}",
                                            read_at(at)
                                        ));
                                    }
                                }
                                libc_munmap(a..a + WINDOW);
                                drop(m);
                            }
                            Ok(200u64)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap())
                    .collect::<Result<Vec<_>, _>>()
            }
        });
        let rounds = rounds.unwrap_or_else(|e| panic!("{policy}: {e}"));
        assert_eq!(rounds.iter().sum::<u64>(), 200 * THREADS as u64);
        assert_eq!(dev.mapping_count(), 0, "{policy}: every window forgotten");
    }
}

/// Whether the page at `addr` is a view of a barmap device's memory, by
/// /proc/self/maps: once a mapping is gone the kernel may place other memory
/// at its address (a new thread's stack), which a probe alone would take
/// for the mapping.
fn is_device_view(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        let range = l.split_whitespace().next().unwrap_or("");
        let Some((s, e)) = range.split_once('-') else {
            return false;
        };
        let s = usize::from_str_radix(s, 16).unwrap_or(usize::MAX);
        let e = usize::from_str_radix(e, 16).unwrap_or(0);
        s <= addr && addr < e && l.contains("memfd:barmap")
    })
}
