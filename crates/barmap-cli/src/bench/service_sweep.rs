//! `service_sweep`: the storm with 1..cores service threads, each judged
//! against a 1-thread populate on the same device.

use barmap::{Policy, WaitMode};

use super::dev::{device, path_errors, populate_dev};
use super::report::{summarize, timing};
use super::{Bench, Family, Results};

/// The storm per count of service threads, default policy.
pub(super) struct ServiceSweep;

impl Family for ServiceSweep {
    fn run(&self, b: &Bench, r: &mut Results) -> Result<(), String> {
        let (size, threads, reps) = (b.size, b.threads, b.reps);
        for n in 1..=b.cores {
            b.progress(&format!("storm: {n} service thread(s)"));
            let dev = device(size, Policy::default(), Some(n), WaitMode::Poll)?;
            let (single, _, _) = populate_dev(&dev, size, 1, false, reps)?;
            let (t, errors, st) = populate_dev(&dev, size, threads, true, reps)?;
            let mut m = timing("service_sweep", "ms", &t);
            m.policy = Some(Policy::default().name().into());
            m.threads = Some(threads);
            m.service_threads = Some(n);
            m.size_bytes = Some(size);
            m.faults = Some(st.faults / (2 * reps as u64 + 2));
            m.errors = Some(errors + path_errors(&st));
            m.ratio = Some(m.median / summarize(&single).0);
            m.ratio_to = Some("populate 1 thread, same device".into());
            r.measurements.push(m);
        }
        Ok(())
    }
}
