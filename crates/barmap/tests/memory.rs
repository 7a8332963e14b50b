//! BAR sizes and device memory: sizes PCI or the address space cannot hold
//! are typed errors; memory is committed as it is used, never up front; a
//! fill past the memory limit is SIGBUS, counted, and commits nothing.
//!
//! The tests that build BARs of 128 GiB and more run in a child process
//! inside a memory cgroup of 1 GiB (when the test runs as root with cgroup
//! v1's memory controller), so that a regression that commits a BAR up
//! front is killed there instead of harming the machine; elsewhere they
//! still run, bounded by their devices' memory limits.

use std::sync::Arc;

use barmap::memory::{MAX_BAR32_SIZE, MAX_BAR64_SIZE};
use barmap::touch::Fault;
use barmap::{Device, Error, MemoryBudget, Policy, Prot, RegionSpec, DEFAULT_MEMORY_BAR};

#[path = "common/memory_cgroup.rs"]
mod memory_cgroup;
use memory_cgroup::MemoryCgroup;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn build(spec: RegionSpec) -> Result<Device, Error> {
    Device::builder()
        .region(2, spec)
        .memory_limit(64 * MIB)
        .build()
}

#[test]
fn bar_sizes_that_pci_or_the_address_space_cannot_hold_are_typed_errors() {
    let budget = MemoryBudget::new(64 * MIB);
    for size in [0, 8, 3 << 20, (1 << 20) + 4096, u64::MAX] {
        let e = Device::builder_with_memory(size)
            .memory_budget(budget.clone())
            .build()
            .unwrap_err();
        assert!(
            matches!(e, Error::BarSizeNotPowerOfTwo { region: 2, size: s } if s == size),
            "{size:#x}: {e}"
        );
    }
    for size in [1 << 47, 1 << 63] {
        let e = Device::builder_with_memory(size)
            .memory_budget(budget.clone())
            .build()
            .unwrap_err();
        assert!(
            matches!(e, Error::BarTooLarge { region: 2, bits: 64, max, .. } if max == MAX_BAR64_SIZE),
            "{size:#x}: {e}"
        );
        assert!(e.to_string().contains("64 TiB"), "{e}");
    }
    let mut bar32 = RegionSpec::memory(4 * GIB);
    bar32.is_64bit = false;
    let e = build(bar32).unwrap_err();
    assert!(
        matches!(e, Error::BarTooLarge { bits: 32, max, .. } if max == MAX_BAR32_SIZE),
        "{e}"
    );
    // The largest of each kind is fine, and commits nothing.
    let mut bar32 = RegionSpec::memory(MAX_BAR32_SIZE);
    bar32.is_64bit = false;
    assert_eq!(build(bar32).unwrap().committed_memory(), 0);
    let mut tiny = RegionSpec::memory(16);
    tiny.is_64bit = false;
    assert_eq!(build(tiny).unwrap().region_info(2).unwrap().size, 16);
    assert_eq!(budget.committed(), 0, "a refused build committed memory");
}

#[test]
fn memory_is_committed_as_it_is_used_and_holes_read_zeros() {
    for policy in Policy::ALL {
        let dev = Device::builder_with_memory(GIB)
            .policy(policy)
            .memory_limit(256 * MIB)
            .build()
            .unwrap();
        // The initial contents of BAR0 and BAR4 (and BAR4's shadow): three
        // pages, whatever the BARs' sizes.
        let base = dev.committed_memory();
        assert_eq!(base, 3 * 4096, "{policy}");
        let mut buf = [0xffu8; 64];
        dev.read_region(DEFAULT_MEMORY_BAR, 512 * MIB, &mut buf)
            .unwrap();
        assert_eq!(buf, [0u8; 64], "{policy}: a hole reads zeros");
        assert_eq!(
            dev.committed_memory(),
            base,
            "{policy}: a read commits nothing"
        );
        dev.write_region(DEFAULT_MEMORY_BAR, 768 * MIB + 8, &[7u8; 8])
            .unwrap();
        assert_eq!(dev.committed_memory(), base + 4096, "{policy}");
        // A 2 MiB window: whole and legacy fill it whole, the others the
        // touched chunk or page.
        let map = dev
            .map(DEFAULT_MEMORY_BAR, 768 * MIB, 2 << 20, Prot::ReadWrite)
            .unwrap();
        assert_eq!(map.read_u64(8), u64::from_le_bytes([7; 8]), "{policy}");
        map.write_u64(4096 * 10, 99);
        let committed = dev.committed_memory() - base;
        let want = match policy {
            Policy::Page => 2 * 4096,
            _ => 2 << 20,
        };
        assert_eq!(committed, want, "{policy}");
        // Revoked and restored: the data is there, nothing more committed.
        dev.set_memory_enabled(false);
        dev.set_memory_enabled(true);
        assert_eq!(map.read_u64(4096 * 10), 99, "{policy}");
        assert_eq!(dev.committed_memory() - base, want, "{policy}");
        drop(map);
        assert!(dev.wait_idle(std::time::Duration::from_secs(5)));
        let budget = dev.memory_budget().unwrap();
        assert_eq!(budget.committed(), dev.committed_memory());
        drop(dev);
        assert_eq!(
            budget.committed(),
            0,
            "{policy}: a dropped device gives its memory back"
        );
    }
}

#[test]
fn a_fill_past_the_memory_limit_is_sigbus_counted_and_commits_nothing() {
    barmap::touch::install();
    for policy in [Policy::Page, Policy::Prefault, Policy::Whole] {
        let budget = MemoryBudget::new(0);
        let dev = Device::builder_with_memory(GIB)
            .policy(policy)
            .memory_budget(budget.clone())
            .build();
        // Even the initial contents need memory: refused at build.
        let e = dev.unwrap_err();
        assert!(
            matches!(e, Error::MemoryLimit { needed, committed: 0, limit: 0 } if needed > 0),
            "{policy}: {e}"
        );
        assert!(e.to_string().contains("--memory-limit"), "{e}");
        assert_eq!(budget.committed(), 0);
        // Room for the initial contents and two 2 MiB chunks.
        budget.set_limit(3 * 4096 + (4 << 20));
        let dev = Device::builder_with_memory(GIB)
            .policy(policy)
            .memory_budget(budget.clone())
            .build()
            .unwrap();
        let map = dev
            .map(DEFAULT_MEMORY_BAR, 0, 4 << 20, Prot::ReadWrite)
            .unwrap();
        let over = dev
            .map(DEFAULT_MEMORY_BAR, 512 * MIB, 2 << 20, Prot::ReadWrite)
            .unwrap();
        match policy {
            Policy::Page => {
                for page in 0..1024 {
                    map.write_u64(page * 4096, page as u64);
                }
            }
            _ => {
                map.write_u64(0, 0);
                map.write_u64(2 << 20, 512);
            }
        }
        assert_eq!(budget.committed(), budget.limit(), "{policy}");
        assert_eq!(over.touch_u64(0), Err(Fault::Sigbus), "{policy}");
        assert!(dev.wait_idle(std::time::Duration::from_secs(5)));
        let stats = dev.stats();
        assert!(stats.over_limit >= 1, "{policy}: {stats:?}");
        assert!(stats.sigbus >= stats.over_limit, "{policy}: {stats:?}");
        assert_eq!(budget.committed(), budget.limit(), "{policy}");
        // A region write past the limit: the typed error, nothing written.
        let e = dev
            .write_region(DEFAULT_MEMORY_BAR, 900 * MIB, &[1u8; 16])
            .unwrap_err();
        assert!(matches!(e, Error::MemoryLimit { .. }), "{policy}: {e}");
        // Memory committed before still works, and more room lets the
        // refused page in.
        assert_eq!(map.touch_u64(2 << 20), Ok(512), "{policy}");
        budget.set_limit(budget.limit() + (2 << 20));
        dev.set_memory_enabled(false); // clears the SIGBUS answer's poison
        dev.set_memory_enabled(true);
        assert_eq!(over.touch_u64(0), Ok(0), "{policy}");
    }
}

#[test]
fn a_whole_mapping_fill_larger_than_the_limit_maps_nothing_and_is_sigbus() {
    barmap::touch::install();
    for policy in [Policy::Whole, Policy::Legacy] {
        let dev = Device::builder_with_memory(GIB)
            .policy(policy)
            .memory_limit(16 * MIB)
            .build()
            .unwrap();
        let base = dev.committed_memory();
        let map = dev
            .map(DEFAULT_MEMORY_BAR, 0, 32 << 20, Prot::ReadWrite)
            .unwrap();
        assert_eq!(map.touch_u64(4096), Err(Fault::Sigbus), "{policy}");
        assert!(dev.wait_idle(std::time::Duration::from_secs(5)));
        assert_eq!(dev.stats().over_limit, 1, "{policy}");
        assert_eq!(dev.committed_memory(), base, "{policy}");
        assert!(dev.bug_events().is_empty(), "{policy}");
    }
}

#[test]
fn the_default_budget_is_half_the_available_memory_and_shared() {
    let a = Device::builder_with_memory(4 * MIB).build().unwrap();
    let b = Device::builder_with_memory(4 * MIB).build().unwrap();
    let (ba, bb) = (a.memory_budget().unwrap(), b.memory_budget().unwrap());
    assert!(Arc::ptr_eq(&ba, &bb));
    assert!(Arc::ptr_eq(&ba, &MemoryBudget::process()));
    let avail = barmap::os::mem_available().unwrap();
    // Measured when the process first built a device: within a wide margin
    // of half of what is available now.
    assert!(
        ba.limit() > avail / 8 && ba.limit() <= avail,
        "{} vs {avail}",
        ba.limit()
    );
}

// ----- huge BARs, in a memory cgroup -------------------------------------

/// Runs the ignored test `name` of this binary in a child process, inside
/// a new memory cgroup of `limit` bytes under this process's own (cgroup
/// v1), when that can be made; else runs it here. Returns whether a cgroup
/// held it.
fn in_memory_cgroup(name: &str, limit: u64, here: fn()) -> bool {
    let Some(cgroup) = MemoryCgroup::new("barmap-memory-test", limit) else {
        eprintln!("no memory cgroup available: running {name} bounded by its memory limit only");
        here();
        return false;
    };
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cgroup.confine(&mut cmd);
    let out = cmd.output().unwrap();
    drop(cgroup);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} in its cgroup: {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Resident shmem of this process, bytes (`RssShmem`).
fn rss_shmem() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn a_1_tib_bar_mapped_whole_and_touched_sparsely_costs_what_it_touches() {
    in_memory_cgroup("sparse_1_tib_inner", GIB, sparse_1_tib_inner);
}

#[test]
#[ignore = "run by a_1_tib_bar_mapped_whole_and_touched_sparsely_costs_what_it_touches"]
fn sparse_1_tib_inner() {
    const TIB: u64 = 1 << 40;
    for policy in [Policy::Page, Policy::Huge, Policy::Prefault] {
        let before = rss_shmem();
        let dev = Device::builder_with_memory(TIB)
            .policy(policy)
            .memory_limit(512 * MIB)
            .build()
            .unwrap();
        let base = dev.committed_memory();
        let map = dev
            .map(DEFAULT_MEMORY_BAR, 0, TIB as usize, Prot::ReadWrite)
            .unwrap();
        // 64 pages, 16 GiB apart.
        let touched = 64usize;
        for i in 0..touched {
            map.write_u64(i << 34, i as u64 + 1);
        }
        for i in 0..touched {
            assert_eq!(map.read_u64(i << 34), i as u64 + 1, "{policy}");
            assert_eq!(map.read_u64((i << 34) + 8192), 0, "{policy}");
        }
        assert!(dev.wait_idle(std::time::Duration::from_secs(10)));
        // A read is a touch too: `page` commits the written page and the
        // page read 8 KiB further, the others the 2 MiB chunk of both.
        let per_touch = if policy == Policy::Page {
            2 * 4096
        } else {
            2 << 20
        };
        let committed = dev.committed_memory() - base;
        assert_eq!(committed, touched as u64 * per_touch, "{policy}");
        let rss = rss_shmem().saturating_sub(before);
        assert!(
            rss <= committed + (1 << 20),
            "{policy}: RssShmem grew {rss}"
        );
        // A revocation and a re-enable: nothing more committed.
        dev.set_memory_enabled(false);
        dev.set_memory_enabled(true);
        assert_eq!(map.read_u64(63 << 34), 64, "{policy}");
        assert!(dev.wait_idle(std::time::Duration::from_secs(10)));
        assert_eq!(dev.committed_memory() - base, committed, "{policy}");
        println!(
            "policy {policy}: 1 TiB BAR, {touched} pages touched: {} KiB committed, RssShmem +{} KiB",
            committed >> 10,
            rss >> 10
        );
    }
}

#[test]
fn the_largest_64_bit_bar_builds_and_maps_without_committing_it() {
    in_memory_cgroup("largest_bar_inner", GIB, largest_bar_inner);
}

#[test]
#[ignore = "run by the_largest_64_bit_bar_builds_and_maps_without_committing_it"]
fn largest_bar_inner() {
    let dev = Device::builder_with_memory(MAX_BAR64_SIZE)
        .memory_limit(64 * MIB)
        .build()
        .unwrap();
    let base = dev.committed_memory();
    let off = MAX_BAR64_SIZE - 4096;
    dev.write_region(DEFAULT_MEMORY_BAR, off, &42u64.to_le_bytes())
        .unwrap();
    let map = dev
        .map(
            DEFAULT_MEMORY_BAR,
            off - (2 << 20) + 4096,
            2 << 20,
            Prot::Read,
        )
        .unwrap();
    assert_eq!(map.read_u64((2 << 20) - 4096), 42);
    assert!(dev.wait_idle(std::time::Duration::from_secs(10)));
    assert!(dev.committed_memory() - base <= 2 << 20);
}
