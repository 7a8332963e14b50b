//! Readings of /proc and /sys: one-line settings, and what
//! /proc/self/smaps says about a mapping.

use super::report::SmapsEntry;

/// The trimmed contents of a one-line file, or why it is unreadable.
pub(super) fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map_or_else(|e| format!("unreadable ({e})"), |s| s.trim().to_string())
}

/// The smaps counters of the mapping that starts at `addr`.
pub(super) fn smaps_of(addr: usize) -> SmapsEntry {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{addr:x}-");
    let mut e = SmapsEntry::default();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with(&head) {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if line.starts_with("VmFlags") {
            break;
        }
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let v: u64 = val.parse().unwrap_or(0);
        match key {
            "Rss:" => e.rss_kb = v,
            "ShmemPmdMapped:" => e.shmem_pmd_mapped_kb = v,
            "FilePmdMapped:" => e.file_pmd_mapped_kb = v,
            "AnonHugePages:" => e.anon_huge_kb = v,
            "Shared_Hugetlb:" | "Private_Hugetlb:" => e.hugetlb_kb += v,
            "THPeligible:" => e.thp_eligible = v == 1,
            _ => {}
        }
    }
    e
}
