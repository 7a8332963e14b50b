//! Bad requests: each fails with its typed error and leaves nothing behind
//! (no mapping in /proc/self/maps, no registered mapping in the device).
//! One test in its own binary, so that no other test maps concurrently.

use barmap::touch::Fault;
use barmap::{Device, Error, Prot, DEFAULT_MEMORY_BAR};

fn bar_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:barmap-"))
        .count()
}

#[test]
fn bad_requests_are_typed_errors_that_change_nothing() {
    let dev = Device::builder_with_memory(8 << 20).build().unwrap();
    let before = bar_mappings();
    type Case = (
        &'static str,
        Result<barmap::Mapping, Error>,
        fn(&Error) -> bool,
    );
    let cases: Vec<Case> = vec![
        (
            "unaligned offset",
            dev.map(DEFAULT_MEMORY_BAR, 100, 4096, Prot::Read),
            |e| matches!(e, Error::Unaligned { .. }),
        ),
        (
            "unaligned length",
            dev.map(DEFAULT_MEMORY_BAR, 0, 100, Prot::Read),
            |e| matches!(e, Error::Unaligned { .. }),
        ),
        (
            "zero length",
            dev.map(DEFAULT_MEMORY_BAR, 0, 0, Prot::Read),
            |e| matches!(e, Error::ZeroLength),
        ),
        (
            "past the end",
            dev.map(DEFAULT_MEMORY_BAR, 8 << 20, 4096, Prot::Read),
            |e| matches!(e, Error::OutOfRange { .. }),
        ),
        (
            "straddling the end",
            dev.map(DEFAULT_MEMORY_BAR, (8 << 20) - 4096, 8192, Prot::Read),
            |e| matches!(e, Error::OutOfRange { .. }),
        ),
        (
            "non-mmappable region",
            dev.map(5, 0, 4096, Prot::Read),
            |e| matches!(e, Error::NotMappable(5)),
        ),
        (
            "MSI-X sparse area",
            dev.map(0, 0x8000, 4096, Prot::Read),
            |e| matches!(e, Error::SparseArea { .. }),
        ),
        (
            "across a sparse area",
            dev.map(0, 0x7000, 0x3000, Prot::Read),
            |e| matches!(e, Error::SparseArea { .. }),
        ),
        (
            "write map of read-only",
            dev.map(4, 0, 4096, Prot::ReadWrite),
            |e| matches!(e, Error::ReadOnly(4)),
        ),
        ("unknown region", dev.map(1, 0, 4096, Prot::Read), |e| {
            matches!(e, Error::NoSuchRegion(1))
        }),
        (
            "upper half of a 64-bit BAR",
            dev.map(3, 0, 4096, Prot::Read),
            |e| matches!(e, Error::NoSuchRegion(3)),
        ),
        ("out of range index", dev.map(9, 0, 4096, Prot::Read), |e| {
            matches!(e, Error::NoSuchRegion(9))
        }),
    ];
    for (what, result, is_expected) in cases {
        match result {
            Err(e) => assert!(is_expected(&e), "{what}: got {e:?}"),
            Ok(m) => panic!("{what}: mapped at {:#x}", m.addr()),
        }
        assert_eq!(dev.mapping_count(), 0, "{what}: registered");
        assert_eq!(bar_mappings(), before, "{what}: leaked a mapping");
    }
    // Region access errors.
    let mut b = [0u8; 8];
    assert!(matches!(
        dev.read_region(7, 0, &mut b),
        Err(Error::NoSuchRegion(7))
    ));
    assert!(matches!(
        dev.read_region(DEFAULT_MEMORY_BAR, 8 << 20, &mut b),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write_region(4, 0, &b),
        Err(Error::ReadOnly(4))
    ));
    // The sparse area stays reachable through region access (an MSI-X table).
    dev.read_region(0, 0x8000, &mut b).unwrap();

    // Double unmap, and use after the device is dropped.
    let m = dev
        .map(DEFAULT_MEMORY_BAR, 0, 8192, Prot::ReadWrite)
        .unwrap();
    assert_eq!(bar_mappings(), before + 1);
    m.unmap(0, 4096).unwrap();
    assert!(matches!(m.unmap(0, 4096), Err(Error::NotMapped { .. })));
    assert!(matches!(m.unmap(4096, 100), Err(Error::Unaligned { .. })));
    assert!(matches!(m.unmap(4096, 8192), Err(Error::NotMapped { .. })));
    assert_eq!(dev.mapping_count(), 1);
    m.write_u64(4096, 3);
    drop(dev);
    assert_eq!(m.touch_u64(4096), Err(Fault::Sigbus));
    assert!(matches!(m.try_read(4096, &mut b), Err(Error::DeviceGone)));
    drop(m);
    assert_eq!(bar_mappings(), before, "mapping left after drop");
}
