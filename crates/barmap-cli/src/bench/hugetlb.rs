//! `populate_hugetlb`: a BAR backed by 2 MiB huge pages
//! (`RegionSpec::huge_pages`, a hugetlbfs memfd): populate by the `huge` and
//! default policies vs a native first touch of a hugetlbfs memfd of the same
//! size, with the smaps evidence (`Private_Hugetlb` / `Shared_Hugetlb`).
//! Needs free huge pages: as root the bench raises vm.nr_hugepages (saying
//! so on stderr) and puts it back afterwards; otherwise the measurement is
//! skipped with the reason.

use barmap::{Device, Policy, RegionSpec, DEFAULT_MEMORY_BAR};

use super::dev::{map, path_errors, populate_dev, settle};
use super::native::{populate_native, Native};
use super::report::{timing, HugetlbReport, Measurement, SmapsEntry};
use super::smaps::{read_trimmed, smaps_of};
use super::touch::{write_pattern, View};
use super::{Bench, Family, Results};

/// The huge-page BAR, judged against a native hugetlbfs memfd and against
/// the shmem populate figures of the populate family. Sets the report's
/// `hugetlb` section.
pub(super) struct Hugetlb;

impl Family for Hugetlb {
    fn run(&self, b: &Bench, r: &mut Results) -> Result<(), String> {
        r.hugetlb = hugetlb(
            b,
            &mut r.measurements,
            r.native_med[&(b.size, 1)],
            r.single_default,
        )?;
        Ok(())
    }
}

/// The huge-page BAR: populate by `huge` and the default policy vs a
/// native first touch of a hugetlbfs memfd of the same size, 1 and N
/// threads, and smaps. `shmem_native` and `shmem_default` are the
/// 1-thread medians of the shmem runs above, for the gains.
fn hugetlb(
    b: &Bench,
    out: &mut Vec<Measurement>,
    shmem_native: f64,
    shmem_default: f64,
) -> Result<HugetlbReport, String> {
    let (threads, reps) = (b.threads, b.reps);
    let size = b.size.next_multiple_of(barmap::mm::HUGE_SIZE);
    let bar = size.next_power_of_two();
    let mut report = HugetlbReport {
        size_bytes: size,
        ..HugetlbReport::default()
    };
    // The BAR and the native memfd live at the same time.
    let needed = ((bar + size) / barmap::mm::HUGE_SIZE) as u64;
    let free = barmap::os::free_huge_pages().unwrap_or(0);
    if free < needed {
        eprintln!(
            "barmap bench: {free} free 2 MiB huge pages, {needed} needed for the huge-page BAR \
             measurement: raising vm.nr_hugepages (restored when it is done)"
        );
    }
    let _reservation = match barmap::os::HugePageReservation::ensure(needed) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("barmap bench: skipping the huge-page BAR measurement: {why}");
            report.skipped = Some(why);
            return Ok(report);
        }
    };
    report.nr_hugepages_raised_from = _reservation.raised_from();
    if let Some(old) = report.nr_hugepages_raised_from {
        eprintln!(
            "barmap bench: vm.nr_hugepages raised from {old} to {}",
            read_trimmed("/proc/sys/vm/nr_hugepages")
        );
    }
    b.progress("huge-page BAR: native hugetlbfs first touch");
    let native = Native::new_hugetlb(size)?;
    let mut native_med = std::collections::HashMap::new();
    for thr in [1, threads] {
        let (t, errors) = populate_native(&native, size, thr, reps)?;
        let mut m = timing("populate_hugetlb", "ms", &t);
        m.policy = Some("native".into());
        m.threads = Some(thr);
        m.size_bytes = Some(size);
        m.errors = Some(errors);
        native_med.insert(thr, m.median);
        out.push(m);
    }
    let nv = native.view(size)?;
    for i in 0..nv.0.pages() {
        nv.0.touch(i, 0);
    }
    report.native_smaps = smaps_of(nv.0.addr);
    drop(nv);
    for policy in [Policy::Huge, Policy::default()] {
        b.progress(&format!("huge-page BAR: populate, {policy}"));
        let dev = device_hugetlb(bar, size, policy)?;
        for thr in [1, threads] {
            let (t, errors, st) = populate_dev(&dev, size, thr, false, reps)?;
            let mut m = timing("populate_hugetlb", "ms", &t);
            m.policy = Some(policy.name().into());
            m.threads = Some(thr);
            m.size_bytes = Some(size);
            m.faults = Some(st.faults / (reps as u64 + 1));
            m.errors = Some(errors + path_errors(&st));
            m.ratio = Some(m.median / native_med[&thr]);
            m.ratio_to = Some(format!("native hugetlbfs {thr} thread(s)"));
            if thr == 1 {
                let r = m.ratio.unwrap_or(0.0);
                if policy == Policy::default() {
                    report.default_ratio_vs_native_hugetlb = r;
                    report.default_speedup_vs_shmem_bar = shmem_default / m.median;
                } else {
                    report.huge_ratio_vs_native_hugetlb = r;
                }
            }
            out.push(m);
        }
        report
            .smaps
            .push((policy.name().into(), smaps_populated(&dev, size)?));
    }
    report.native_speedup_vs_shmem = shmem_native / native_med[&1];
    report.ran = true;
    Ok(report)
}

/// A device whose memory BAR (`bar` bytes) is backed by 2 MiB huge pages,
/// holding the pattern.
fn device_hugetlb(bar: usize, size: usize, policy: Policy) -> Result<Device, String> {
    let dev = Device::builder()
        .region(
            DEFAULT_MEMORY_BAR,
            RegionSpec::memory(bar as u64).bits64().huge_pages(),
        )
        .policy(policy)
        .build()
        .map_err(|e| format!("building the huge-page device: {e}"))?;
    write_pattern(size, |off, data| {
        dev.write_region(DEFAULT_MEMORY_BAR, off, data)
            .map_err(|e| format!("writing the BAR: {e}"))
    })?;
    Ok(dev)
}

/// smaps of a mapping of `len` bytes after touching every page of it.
fn smaps_populated(dev: &Device, len: usize) -> Result<SmapsEntry, String> {
    let m = map(dev, 0, len)?;
    let v = View::of(&m);
    for i in 0..v.pages() {
        v.touch(i, 0);
    }
    settle(dev);
    Ok(smaps_of(m.addr()))
}
