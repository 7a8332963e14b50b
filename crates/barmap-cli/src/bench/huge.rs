//! `huge`: whether the `huge` policy's fills end up PMD-mapped
//! (/proc/self/smaps), next to a native view of the same kind of memfd; on
//! the `huge` policy's populate device.

use barmap::{Device, Policy};

use super::dev::{map, settle};
use super::native::Native;
use super::report::HugeReport;
use super::smaps::{read_trimmed, smaps_of};
use super::touch::View;
use super::{Bench, Family, Results};

/// The smaps check on the `huge` policy's populate device. Sets the report's
/// `huge` section.
pub(super) struct Huge;

impl Family for Huge {
    fn after_populate(
        &self,
        b: &Bench,
        r: &mut Results,
        policy: Policy,
        dev: &Device,
    ) -> Result<(), String> {
        if policy != Policy::Huge {
            return Ok(());
        }
        b.progress("huge mappings: smaps");
        r.huge = huge_check(dev, r.native()?, b.size)?;
        Ok(())
    }
}

/// Touches every page of a mapping of `len` bytes and of a native view of
/// the same size, and reads their smaps.
fn huge_check(dev: &Device, native: &Native, len: usize) -> Result<HugeReport, String> {
    let m = map(dev, 0, len)?;
    let v = View::of(&m);
    for i in 0..v.pages() {
        v.touch(i, 0);
    }
    settle(dev);
    let huge_policy = smaps_of(m.addr());
    drop(m);
    let nv = native.view(len)?;
    for i in 0..nv.0.pages() {
        nv.0.touch(i, 0);
    }
    let native_e = smaps_of(nv.0.addr);
    drop(nv);
    let shmem_enabled = read_trimmed("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    let pmd =
        huge_policy.shmem_pmd_mapped_kb + huge_policy.file_pmd_mapped_kb + huge_policy.hugetlb_kb
            > 0;
    let note = if pmd {
        "the huge policy's fills are PMD-mapped".to_string()
    } else if native_e.shmem_pmd_mapped_kb > 0 {
        "the native view is PMD-mapped but the huge policy's fills are not: UFFDIO_CONTINUE \
         maps shmem page by page (PTEs), whatever the folio size"
            .to_string()
    } else {
        "nothing is PMD-mapped: the BAR memfd is small-page shmem (THP for shmem is off); \
         the huge policy only saves fault round trips"
            .to_string()
    };
    Ok(HugeReport {
        shmem_enabled,
        nr_hugepages: read_trimmed("/proc/sys/vm/nr_hugepages"),
        size_bytes: len,
        huge_policy,
        native: native_e,
        pmd_mapped: pmd,
        note,
    })
}
