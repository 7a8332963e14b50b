//! `storm`: N threads released at once, touching interleaved pages of one
//! mapping (thread t touches pages t, t+N, ...), so that they fault on the
//! same chunks together; on the default policy's populate device, judged
//! against its 1-thread populate. Next to it the same storm on the native
//! view, and `storm_normal` / `populate_normal`: the same with the service
//! threads' walks at their own priority ([`FillSched::Normal`]), as they ran
//! before the walk's priority was raised.

use barmap::{Device, FillSched, Policy};

use super::dev::{path_errors, populate_dev, populate_dev_cpu, process_cpu_ms};
use super::report::{ms, summarize, timing};
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
        let (t, cpu, errors, st) = populate_dev_cpu(dev, size, threads, true, reps)?;
        let mut m = timing("storm", "ms", &t);
        m.cpu_ms = Some(summarize(&cpu).0);
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
        let (mut t, mut cpu) = (Vec::new(), Vec::new());
        let native = r.native()?;
        for rep in 0..=reps {
            let v = native.view(size)?;
            let c = process_cpu_ms();
            let (d, _) = touch_all(v.0, 0, threads, true);
            let c = process_cpu_ms() - c;
            drop(v);
            if rep > 0 {
                t.push(ms(d));
                cpu.push(c);
            }
        }
        let mut m = timing("storm", "ms", &t);
        m.cpu_ms = Some(summarize(&cpu).0);
        m.policy = Some("native".into());
        m.threads = Some(threads);
        m.size_bytes = Some(size);
        m.ratio = Some(m.median / r.native_med[&(size, 1)]);
        m.ratio_to = Some("native populate 1 thread".into());
        m.floor_ratio = Some(m.median / r.floor_med[&size]);
        r.storm_vs_native = storm_median / m.median;
        r.storm_native_median = m.median;
        r.measurements.push(m);
        // The same storm and 1-thread populate with the walks at the service
        // threads' own priority (SCHED_OTHER, nice 0), as before the raise:
        // what the raised priority buys, in the same run.
        let raised = barmap::fill_sched();
        if raised != FillSched::Normal {
            barmap::set_fill_sched(FillSched::Normal);
            b.progress("storm: service threads fill at their own priority");
            let (t, cpu, errors, st) = populate_dev_cpu(dev, size, threads, true, reps)?;
            let mut m = timing("storm_normal", "ms", &t);
            m.cpu_ms = Some(summarize(&cpu).0);
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
            barmap::set_fill_sched(raised);
        }
        Ok(())
    }
}
