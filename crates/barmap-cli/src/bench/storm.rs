//! `storm`: N threads released at once, touching interleaved pages of one
//! mapping (thread t touches pages t, t+N, ...), so that they fault on the
//! same chunks together; on the default policy's populate device, judged
//! against its 1-thread populate. Next to it the same storm on the native
//! view, and (root only) `storm_normal` / `populate_normal`: the same with
//! the service threads put back from SCHED_FIFO to the process's own
//! scheduling, as they ran before their priority was raised.

use barmap::{Device, Policy};

use super::dev::{path_errors, populate_dev};
use super::report::{ms, timing};
use super::touch::touch_all;
use super::{Bench, Family, Results};

/// The storm on the default policy's populate device. Sets the storm ratio
/// of the report's headline.
pub(super) struct Storm;

impl Family for Storm {
    fn after_populate(
        &self,
        b: &Bench,
        r: &mut Results,
        policy: Policy,
        dev: &Device,
    ) -> Result<(), String> {
        if policy != Policy::default() {
            return Ok(());
        }
        let (size, threads, reps) = (b.size, b.threads, b.reps);
        b.progress(&format!("storm: {threads} threads"));
        let (t, errors, st) = populate_dev(dev, size, threads, true, reps)?;
        let mut m = timing("storm", "ms", &t);
        m.policy = Some(policy.name().into());
        m.threads = Some(threads);
        m.size_bytes = Some(size);
        m.faults = Some(st.faults / (reps as u64 + 1));
        m.errors = Some(errors + path_errors(&st));
        m.counters = Some(st);
        m.rounds = Some(reps + 1);
        m.ratio = Some(m.median / r.single_default);
        m.ratio_to = Some("populate 1 thread, same policy".into());
        m.floor_ratio = Some(m.median / r.floor_med[&size]);
        r.storm_ratio = m.ratio.unwrap_or(0.0);
        let storm_median = m.median;
        r.measurements.push(m);
        // The same storm without userfaultfd: what 64 threads on
        // this machine's cores cost by themselves.
        let mut t = Vec::new();
        let native = r.native()?;
        for rep in 0..=reps {
            let v = native.view(size)?;
            let (d, _) = touch_all(v.0, 0, threads, true);
            if rep > 0 {
                t.push(ms(d));
            }
        }
        let mut m = timing("storm", "ms", &t);
        m.policy = Some("native".into());
        m.threads = Some(threads);
        m.size_bytes = Some(size);
        m.ratio = Some(m.median / r.native_med[&(size, 1)]);
        m.ratio_to = Some("native populate 1 thread".into());
        m.floor_ratio = Some(m.median / r.floor_med[&size]);
        r.storm_vs_native = storm_median / m.median;
        r.storm_native_median = m.median;
        r.measurements.push(m);
        // The same storm and 1-thread populate with the service threads
        // put back to the process's own scheduling (SCHED_OTHER, nice 0):
        // what the raised priority buys, in the same run.
        if set_service_sched(false) > 0 {
            b.progress("storm: service threads at SCHED_OTHER");
            let (t, errors, st) = populate_dev(dev, size, threads, true, reps)?;
            let mut m = timing("storm_normal", "ms", &t);
            m.policy = Some(policy.name().into());
            m.threads = Some(threads);
            m.size_bytes = Some(size);
            m.faults = Some(st.faults / (reps as u64 + 1));
            m.errors = Some(errors + path_errors(&st));
            m.counters = Some(st);
            m.rounds = Some(reps + 1);
            m.ratio = Some(m.median / r.storm_native_median);
            m.ratio_to = Some("native storm".into());
            r.measurements.push(m);
            let (t, _, _) = populate_dev(dev, size, 1, false, reps)?;
            let mut m = timing("populate_normal", "ms", &t);
            m.policy = Some(policy.name().into());
            m.threads = Some(1);
            m.size_bytes = Some(size);
            m.ratio = Some(m.median / r.native_med[&(size, 1)]);
            m.ratio_to = Some("native 1 thread(s)".into());
            r.measurements.push(m);
            set_service_sched(true);
        }
        Ok(())
    }
}

/// Puts the device's fault service threads (named `barmap-fault-*`) at
/// SCHED_FIFO 1 (`raised`) or back to SCHED_OTHER at nice 0; returns how
/// many were changed (0 where that is refused).
fn set_service_sched(raised: bool) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if !comm.starts_with("barmap-fault") {
            continue;
        }
        let (policy, prio) = if raised {
            (libc::SCHED_FIFO, 1)
        } else {
            (libc::SCHED_OTHER, 0)
        };
        let param = libc::sched_param {
            sched_priority: prio,
        };
        // SAFETY: sched_setscheduler and setpriority on one thread id of
        // this process; `param` is valid for the call.
        let ok = unsafe {
            libc::sched_setscheduler(tid, policy, &param) == 0
                && libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 0) == 0
        };
        n += usize::from(ok);
    }
    n
}
