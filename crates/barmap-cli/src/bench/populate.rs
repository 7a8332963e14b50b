//! `populate`: the first touch (a read) of every page of a fresh mapping by
//! 1 and by N threads (contiguous slices), natively first, then per policy at
//! the same sizes, each judged against native.

use barmap::{Policy, WaitMode};

use super::dev::{device, path_errors, populate_dev, populate_dev_cpu};
use super::native::{populate_floor, populate_native, Native};
use super::report::timing;
use super::{Bench, Family, Results};

/// Populate per policy vs native. Makes the native memfd the families after
/// it measure against, sets the default policy's 1-thread figures, and hands
/// each policy's device to [`Family::after_populate`].
pub(super) struct Populate;

/// Policies that populate with one fault round trip per page.
pub(super) fn per_page(p: Policy) -> bool {
    matches!(p, Policy::Page)
}

impl Family for Populate {
    fn run(&self, b: &Bench, r: &mut Results) -> Result<(), String> {
        let (size, threads, reps) = (b.size, b.threads, b.reps);
        b.progress("populate: native");
        let native = r.native.insert(Native::new(size)?);
        for (len, thr) in [(size, 1), (size, threads), (b.small, 1), (b.small, threads)] {
            if r.native_med.contains_key(&(len, thr)) {
                continue;
            }
            let (t, errors) = populate_native(native, len, thr, reps)?;
            let mut m = timing("populate", "ms", &t);
            m.policy = Some("native".into());
            m.threads = Some(thr);
            m.size_bytes = Some(len);
            m.errors = Some(errors);
            r.native_med.insert((len, thr), m.median);
            r.measurements.push(m);
        }
        for len in [size, b.small] {
            if r.floor_med.contains_key(&len) {
                continue;
            }
            let t = populate_floor(native, len, reps)?;
            let mut m = timing("populate_floor", "ms", &t);
            m.policy = Some("native".into());
            m.mode = Some("madvise".into());
            m.threads = Some(1);
            m.size_bytes = Some(len);
            m.ratio = Some(m.median / r.native_med[&(len, 1)]);
            m.ratio_to = Some("native 1 thread(s)".into());
            r.floor_med.insert(len, m.median);
            r.measurements.push(m);
        }
        for policy in Policy::ALL {
            b.progress(&format!("populate: {policy}"));
            let dev = device(size, policy, None, WaitMode::Poll)?;
            let len = if per_page(policy) { b.small } else { size };
            for thr in [1, threads] {
                let (t, errors, st) = populate_dev(&dev, len, thr, false, reps)?;
                let mut m = timing("populate", "ms", &t);
                m.policy = Some(policy.name().into());
                m.threads = Some(thr);
                m.size_bytes = Some(len);
                m.faults = Some(st.faults / (reps as u64 + 1));
                m.counters = Some(st);
                m.rounds = Some(reps + 1);
                m.errors = Some(errors + path_errors(&st));
                m.bug_events = Some(st.bugs);
                m.ratio = Some(m.median / r.native_med[&(len, thr)]);
                m.ratio_to = Some(format!("native {} thread(s)", thr));
                m.floor_ratio = Some(m.median / r.floor_med[&len]);
                if policy == Policy::default() && thr == 1 {
                    r.single_default = m.median;
                }
                r.measurements.push(m);
                if policy == Policy::default() {
                    let ratio = paired(b, r, &dev, len, thr)?;
                    if thr == 1 {
                        r.populate_ratio = ratio;
                    } else {
                        r.populate_n_ratio = ratio;
                    }
                }
            }
            for (_, family) in b.selected() {
                family.after_populate(b, r, policy, &dev)?;
            }
        }
        Ok(())
    }
}

/// The default policy's populate against native, the two taking turns
/// repetition by repetition (native, barmap, native, ...), so that both
/// see the same machine: a load that comes or goes between the native
/// rows and the policy rows, minutes apart, moves one side only. Pushes
/// both series as `populate_paired` rows and returns barmap's median over
/// native's.
fn paired(
    b: &Bench,
    r: &mut Results,
    dev: &barmap::Device,
    len: usize,
    thr: usize,
) -> Result<f64, String> {
    b.progress(&format!(
        "populate: default policy and native in turns, {thr} thread(s)"
    ));
    let native = r.native.as_ref().ok_or("no native view")?;
    let (mut nat, mut own) = (Vec::new(), Vec::new());
    for _ in 0..b.reps {
        // One repetition each (after one warm-up, which the calls drop).
        nat.extend(populate_native(native, len, thr, 1)?.0);
        own.extend(populate_dev_cpu(dev, len, thr, false, 1)?.0);
    }
    let mut n = timing("populate_paired", "ms", &nat);
    n.policy = Some("native".into());
    let mut m = timing("populate_paired", "ms", &own);
    m.policy = Some(Policy::default().name().into());
    m.ratio = Some(m.median / n.median);
    m.ratio_to = Some(format!("native {thr} thread(s), in turns"));
    for x in [&mut n, &mut m] {
        x.threads = Some(thr);
        x.size_bytes = Some(len);
    }
    let ratio = m.ratio.unwrap_or(0.0);
    r.measurements.push(n);
    r.measurements.push(m);
    Ok(ratio)
}
