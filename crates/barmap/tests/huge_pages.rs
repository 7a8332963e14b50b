//! BARs backed by 2 MiB huge pages (hugetlbfs memfd): faults map whole huge
//! pages (PMD entries, shown as hugetlb in /proc/self/smaps), revocation
//! and SIGBUS work per huge page, and misaligned requests are typed errors.
//!
//! Needs free 2 MiB huge pages. As root the test raises vm.nr_hugepages
//! when too few are free and puts it back afterwards; if that is impossible
//! it prints why and skips.

use std::sync::Mutex;
use std::time::Duration;

use barmap::mm::HUGE_SIZE;
use barmap::os::{free_huge_pages, HugePageReservation};
use barmap::touch::Fault;
use barmap::{Device, Error, Mapping, Policy, Prot, RegionSpec};

const BAR: u32 = 2;
/// 8 MiB: four huge pages.
const SIZE: usize = 8 << 20;
const PAGES: usize = SIZE / 4096;

/// The tests of this file share the huge page pool: one at a time.
static POOL: Mutex<()> = Mutex::new(());

fn huge_device(policy: Policy) -> barmap::Result<Device> {
    Device::builder()
        .region(BAR, RegionSpec::memory(SIZE as u64).bits64().huge_pages())
        .policy(policy)
        .build()
}

/// Free huge pages for `needed`, or the reason the test is skipped.
fn reserve(needed: u64) -> Option<HugePageReservation> {
    match HugePageReservation::ensure(needed) {
        Ok(r) => {
            if let Some(old) = r.raised_from() {
                eprintln!("raised vm.nr_hugepages from {old} for this test (restored afterwards)");
            }
            Some(r)
        }
        Err(why) => {
            eprintln!("SKIPPED: cannot get {needed} free 2 MiB huge pages: {why}");
            None
        }
    }
}

fn word(page: usize) -> u64 {
    0x4855_4745_0000_0000 | page as u64
}

/// Writes a word per 4 KiB page through region access.
fn fill_pattern(dev: &Device) {
    let mut buf = vec![0u8; SIZE];
    for p in 0..PAGES {
        buf[p * 4096..p * 4096 + 8].copy_from_slice(&word(p).to_ne_bytes());
    }
    dev.write_region(BAR, 0, &buf).expect("region write");
}

/// kB of hugetlb memory mapped by the mapping at `addr`, from smaps.
fn smaps_hugetlb_kb(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut in_it = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((start, _)) = first.split_once('-') {
            if !first.ends_with(':') && start.chars().all(|c| c.is_ascii_hexdigit()) {
                in_it = usize::from_str_radix(start, 16) == Ok(addr);
                continue;
            }
        }
        if in_it && (first == "Private_Hugetlb:" || first == "Shared_Hugetlb:") {
            kb += words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kb
}

fn check_all(m: &Mapping, base_page: usize, what: &str) {
    for p in (0..m.len() / 4096).step_by(61) {
        assert_eq!(
            m.touch_u64(p * 4096),
            Ok(word(base_page + p)),
            "{what}: page {p}"
        );
    }
}

#[test]
fn huge_page_bar_faults_revokes_and_shows_as_hugetlb() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_reservation) = reserve((SIZE / HUGE_SIZE) as u64) else {
        return;
    };
    for policy in Policy::ALL {
        let dev = huge_device(policy).expect("device with a huge-page BAR");
        assert!(dev.huge_pages_supported());
        assert_eq!(dev.region_info(BAR).unwrap().page_size, HUGE_SIZE);
        fill_pattern(&dev);
        let m = dev.map(BAR, 0, SIZE, Prot::ReadWrite).expect("map");
        assert_eq!(m.page_size(), HUGE_SIZE);
        assert_eq!(m.addr() % HUGE_SIZE, 0);

        // One touch per huge page maps all of it.
        for h in 0..SIZE / HUGE_SIZE {
            assert_eq!(m.read_u64(h * HUGE_SIZE), word(h * 512), "{policy}");
        }
        check_all(&m, 0, &format!("{policy} first touch"));
        assert!(dev.wait_idle(Duration::from_secs(5)));
        let s = dev.stats();
        assert_eq!(s.faults, s.outcomes(), "{policy}: {s:?}");
        assert!(s.faults <= (SIZE / HUGE_SIZE) as u64, "{policy}: {s:?}");
        assert_eq!(s.pages_filled, PAGES as u64, "{policy}: {s:?}");
        assert_eq!(s.sigbus + s.retries + s.bugs, 0, "{policy}: {s:?}");

        let kb = smaps_hugetlb_kb(m.addr());
        eprintln!("{policy}: smaps Private_Hugetlb + Shared_Hugetlb = {kb} kB");
        assert_eq!(
            kb,
            (SIZE >> 10) as u64,
            "{policy}: the mapping is not hugetlb-mapped"
        );

        // Writes through the mapping reach the BAR.
        m.write_u64(HUGE_SIZE + 8, 0x1234);
        let mut b = [0u8; 8];
        dev.read_region(BAR, (HUGE_SIZE + 8) as u64, &mut b)
            .unwrap();
        assert_eq!(u64::from_ne_bytes(b), 0x1234, "{policy}");

        // Disable: every huge page is revoked; touches SIGBUS.
        dev.set_memory_enabled(false);
        assert_eq!(smaps_hugetlb_kb(m.addr()), 0, "{policy}");
        assert_eq!(m.touch_u64(0), Err(Fault::Sigbus), "{policy}");
        assert_eq!(m.touch_u64(SIZE - 8), Err(Fault::Sigbus), "{policy}");
        assert!(matches!(
            m.try_read(HUGE_SIZE, &mut b),
            Err(Error::Fault { .. })
        ));
        // Enable: the data comes back.
        dev.set_memory_enabled(true);
        assert_eq!(m.touch_u64(HUGE_SIZE + 8), Ok(0x1234), "{policy}");
        m.write_u64(HUGE_SIZE + 8, word(512));
        check_all(&m, 0, &format!("{policy} after re-enable"));
        m.try_read(HUGE_SIZE, &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), word(512));
        assert!(dev.wait_idle(Duration::from_secs(5)));
        let s = dev.stats();
        assert!(s.sigbus >= 1 && s.zaps >= 1, "{policy}: {s:?}");
        assert_eq!(s.faults, s.outcomes(), "{policy}: {s:?}");

        // A mapping at a 2 MiB offset, and a partial unmap of one huge page.
        let m2 = dev
            .map(BAR, HUGE_SIZE as u64, 2 * HUGE_SIZE, Prot::Read)
            .unwrap();
        check_all(&m2, 512, &format!("{policy} offset mapping"));
        m2.unmap(0, HUGE_SIZE).unwrap();
        assert_eq!(m2.touch_u64(0), Err(Fault::Sigsegv), "{policy}");
        assert_eq!(m2.touch_u64(HUGE_SIZE), Ok(word(1024)), "{policy}");
    }
}

#[test]
fn huge_page_bar_serves_many_threads_at_once() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_reservation) = reserve((SIZE / HUGE_SIZE) as u64) else {
        return;
    };
    for policy in [Policy::Page, Policy::Huge, Policy::Prefault] {
        let dev = huge_device(policy).expect("device");
        fill_pattern(&dev);
        for _round in 0..4 {
            let m = dev.map(BAR, 0, SIZE, Prot::Read).unwrap();
            std::thread::scope(|s| {
                for t in 0..8 {
                    let m = &m;
                    s.spawn(move || {
                        for p in (t..PAGES).step_by(8 * 13) {
                            assert_eq!(m.read_u64(p * 4096), word(p), "{policy}");
                        }
                    });
                }
            });
        }
        assert!(dev.wait_idle(Duration::from_secs(5)));
        let s = dev.stats();
        assert_eq!(s.faults, s.outcomes(), "{policy}: {s:?}");
        assert_eq!(s.sigbus + s.retries + s.bugs, 0, "{policy}: {s:?}");
    }
}

#[test]
fn huge_page_bar_rejects_misaligned_requests() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    // The size check comes before any allocation: no huge pages needed.
    let e = Device::builder()
        .region(BAR, RegionSpec::memory(1 << 20).huge_pages())
        .build()
        .unwrap_err();
    assert!(
        matches!(e, Error::HugePageSize { region: BAR, size } if size == 1 << 20),
        "{e}"
    );
    let e = Device::builder()
        .region(
            BAR,
            RegionSpec::memory(SIZE as u64)
                .huge_pages()
                .mmap_areas(vec![0..4096, HUGE_SIZE as u64..SIZE as u64]),
        )
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidSpec(_)), "{e}");

    // More huge pages than are free: a typed error, not small pages.
    let free = free_huge_pages().unwrap_or(0);
    let size = ((free + 1) * HUGE_SIZE as u64).next_power_of_two();
    let e = Device::builder()
        .region(BAR, RegionSpec::memory(size).bits64().huge_pages())
        .build()
        .unwrap_err();
    assert!(
        matches!(e, Error::HugePagesUnavailable { region: BAR, needed, .. } if needed == size / HUGE_SIZE as u64),
        "{e}"
    );

    let Some(_reservation) = reserve((SIZE / HUGE_SIZE) as u64) else {
        return;
    };
    let dev = huge_device(Policy::default()).expect("device");
    for (offset, len) in [(4096u64, HUGE_SIZE), (0, 4096), (0, HUGE_SIZE + 4096)] {
        let e = dev.map(BAR, offset, len, Prot::Read).unwrap_err();
        assert!(
            matches!(e, Error::Unaligned { page_size, .. } if page_size == HUGE_SIZE),
            "{offset:#x}+{len:#x}: {e}"
        );
    }
    assert_eq!(dev.mapping_count(), 0);
    let m = dev.map(BAR, 0, SIZE, Prot::Read).unwrap();
    let e = m.unmap(4096, 4096).unwrap_err();
    assert!(matches!(e, Error::Unaligned { .. }), "{e}");
    assert_eq!(m.read_u64(4096), 0);
    // Dropping the device revokes for good: mapped and unmapped huge pages
    // alike give SIGBUS.
    drop(dev);
    assert_eq!(m.touch_u64(0), Err(Fault::Sigbus));
    assert_eq!(m.touch_u64(SIZE - 8), Err(Fault::Sigbus));
}
