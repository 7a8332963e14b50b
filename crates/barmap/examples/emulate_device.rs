//! Emulate a PCI device for a user-space driver under test: a custom BAR
//! layout, registers with initial contents, an MSI-X table that may not be
//! mmapped, and a driver-like thread pool touching device memory.
//!
//! Run: `cargo run --example emulate_device -p barmap` (as root).

use std::sync::Arc;

use barmap::{Device, Policy, Prot, RegionSpec};

// A list with one mmappable area, not a range of areas.
#[allow(clippy::single_range_in_vec_init)]
fn main() -> barmap::Result<()> {
    let id = 0xfeed_0001u32.to_le_bytes().to_vec();
    let device = Device::builder()
        .ids(0x1af4, 0x1110)
        .region(
            0,
            RegionSpec::registers(16 << 10, id).mmap_areas(vec![0..0x2000]),
        )
        .region(2, RegionSpec::memory(32 << 20).bits64())
        .policy(Policy::Prefault)
        .build()?;

    // The driver maps its registers and reads the ID register.
    let regs = device.map(0, 0, 0x2000, Prot::ReadWrite)?;
    println!("ID register: {:#x}", regs.read_u32(0));
    // The MSI-X table at 0x2000 is reachable through region access only.
    assert!(device.map(0, 0x2000, 0x1000, Prot::ReadWrite).is_err());

    // Eight driver threads fill a ring in device memory at once.
    let ring = Arc::new(device.map(2, 0, 4 << 20, Prot::ReadWrite)?);
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let ring = ring.clone();
            std::thread::spawn(move || {
                for slot in (t..1024).step_by(8) {
                    ring.write_u64(slot * 4096, slot as u64);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    // The device side sees the driver's writes through region access.
    let mut word = [0u8; 8];
    device.read_region(2, 1023 * 4096, &mut word)?;
    assert_eq!(u64::from_le_bytes(word), 1023);
    println!("ring filled by 8 threads; counters: {:?}", device.stats());
    Ok(())
}
