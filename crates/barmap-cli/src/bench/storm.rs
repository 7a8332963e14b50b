//! `storm`: N threads released at once, touching interleaved pages of one
//! mapping (thread t touches pages t, t+N, ...), so that they fault on the
//! same chunks together; on the default policy's populate device. Three
//! storms take turns repetition by repetition: barmap's (`storm`, judged
//! against the native one), the same on a native view, and `storm_unlocked`:
//! barmap's with its mappings not locked on fault
//! ([`barmap::os::set_lock_on_fault`]), which states what the lock costs the
//! fill. Then `storm_normal` / `populate_normal`: the same device with the
//! service threads' walks at their own priority ([`FillSched::Normal`]), as
//! they ran before the walk's priority was raised.

use barmap::{Device, FillSched, Policy};

use super::dev::{path_errors, populate_dev, populate_dev_cpu, populate_once, process_cpu_ms};
use super::native::Native;
use super::report::{ms, summarize, timing, Measurement};
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
        b.progress(&format!(
            "storm: {threads} threads, native, locked and unlocked mappings in turns"
        ));
        let native = r.native()?;
        let before = dev.stats();
        // Three storms per repetition, taking turns (the first of each is a
        // warm-up): a load that comes or goes during the run moves all three.
        // The order rotates, so that none always runs right after another.
        let mut runs: [Vec<(f64, f64, u64)>; 3] = Default::default();
        for rep in 0..=reps {
            for k in 0..3 {
                let which = (rep + k) % 3;
                let run = match which {
                    0 => native_storm(native, size, threads)?,
                    1 => populate_once(dev, size, threads, true)?,
                    _ => {
                        barmap::os::set_lock_on_fault(false);
                        let run = populate_once(dev, size, threads, true);
                        barmap::os::set_lock_on_fault(true);
                        run?
                    }
                };
                if rep > 0 {
                    runs[which].push(run);
                }
            }
        }
        let st = dev.stats().since(&before);
        let rows: Vec<Measurement> = runs
            .iter()
            .map(|v| {
                let t: Vec<f64> = v.iter().map(|x| x.0).collect();
                let cpu: Vec<f64> = v.iter().map(|x| x.1).collect();
                let mut m = timing("storm", "ms", &t);
                m.cpu_ms = Some(summarize(&cpu).0);
                m.threads = Some(threads);
                m.size_bytes = Some(size);
                m.errors = Some(v.iter().map(|x| x.2).sum());
                m.floor_ratio = Some(m.median / r.floor_med[&size]);
                m
            })
            .collect();
        let [mut nat, mut own, mut unlocked]: [Measurement; 3] =
            rows.try_into().expect("three rows");
        let native_median = nat.median;
        nat.policy = Some("native".into());
        nat.ratio = Some(nat.median / r.native_med[&(size, 1)]);
        nat.ratio_to = Some("native populate 1 thread".into());
        own.policy = Some(policy.name().into());
        // Both barmap storms share the device, so its counters cover both
        // (2 x (reps + 1) rounds).
        own.faults = Some(st.faults / (2 * reps as u64 + 2));
        own.errors = Some(own.errors.unwrap_or(0) + path_errors(&st));
        own.counters = Some(st);
        own.rounds = Some(2 * reps + 2);
        own.ratio = Some(own.median / native_median);
        own.ratio_to = Some("native storm, in turns".into());
        unlocked.name = "storm_unlocked".into();
        unlocked.policy = Some(policy.name().into());
        unlocked.mode = Some("no lock on fault".into());
        unlocked.ratio = Some(unlocked.median / native_median);
        unlocked.ratio_to = Some("native storm, in turns".into());
        r.storm_ratio = own.median / r.single_default;
        r.storm_vs_native = own.median / native_median;
        r.storm_lock_cost = own.median / unlocked.median;
        r.storm_native_median = native_median;
        r.measurements.extend([own, nat, unlocked]);
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

/// One storm on a fresh native view of `size` bytes: its time (ms), the
/// CPU time of its touches (ms) and its wrong reads.
fn native_storm(native: &Native, size: usize, threads: usize) -> Result<(f64, f64, u64), String> {
    let v = native.view(size)?;
    let c = process_cpu_ms();
    let (d, bad) = touch_all(v.0, 0, threads, true);
    let c = process_cpu_ms() - c;
    drop(v);
    Ok((ms(d), c, bad))
}
