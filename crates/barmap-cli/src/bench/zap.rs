//! `zap`: memory disable with M live 1 MiB mappings, fully populated (by the
//! default policy, and by page faults), and unpopulated; then re-enable and
//! `repopulate`. Its cost should grow with live mappings and mapped pages,
//! not with faults served.

use std::time::Instant;

use barmap::{Device, Mapping, Policy, WaitMode};

use super::dev::{device, map, settle};
use super::report::{ms, timing, Measurement};
use super::touch::View;
use super::{Bench, Family, Results, MIB, PAGE};

/// Zap and repopulate vs live mappings. Sets the zap cost per mapping of the
/// report's headline.
pub(super) struct Zap;

impl Family for Zap {
    fn run(&self, b: &Bench, r: &mut Results) -> Result<(), String> {
        let (size, reps) = (b.size, b.reps);
        let out = &mut r.measurements;
        let bar = size.next_power_of_two();
        let dev = device(size, Policy::default(), None, WaitMode::Poll)?;
        for count in [1, 16, 256, 1024] {
            b.progress(&format!("zap: {count} mappings"));
            let (z, rp, faults) = zap(&dev, bar, count, reps, true)?;
            out.extend(zap_measurements(count, "prefault", true, &z, &rp, faults));
            if count == 1024 {
                r.zap_per_mapping = out[out.len() - 2].per_mapping_us.unwrap_or(0.0);
            }
        }
        b.progress("zap: 1024 unpopulated mappings");
        let (z, rp, faults) = zap(&dev, bar, 1024, reps, false)?;
        out.extend(zap_measurements(1024, "prefault", false, &z, &rp, faults));
        drop(dev);
        b.progress("zap: 256 mappings populated by page faults");
        let dev = device(size, Policy::Page, None, WaitMode::Poll)?;
        let (z, rp, faults) = zap(&dev, bar, 256, reps.min(3), true)?;
        out.extend(zap_measurements(256, "page", true, &z, &rp, faults));
        Ok(())
    }
}

/// Disable with `count` live 1 MiB mappings, fully populated (by `policy`'s
/// faults); then re-enable and repopulate. Returns (zap ms, repopulate ms)
/// per rep, and the faults served per populate.
fn zap(
    dev: &Device,
    bar: usize,
    count: usize,
    reps: usize,
    populate: bool,
) -> Result<(Vec<f64>, Vec<f64>, u64), String> {
    let maps: Vec<Mapping> = (0..count)
        .map(|i| map(dev, (i * MIB) % bar, MIB))
        .collect::<Result<_, _>>()?;
    let touch_every = |maps: &[Mapping]| {
        for m in maps {
            let v = View::of(m);
            for i in 0..v.pages() {
                v.touch(i, 0);
            }
        }
    };
    let f0 = dev.stats().faults;
    if populate {
        touch_every(&maps);
    }
    settle(dev);
    let faults = dev.stats().faults - f0;
    let (mut zaps, mut repops) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        let t = Instant::now();
        dev.set_memory_enabled(false);
        let z = t.elapsed();
        dev.set_memory_enabled(true);
        let t = Instant::now();
        if populate {
            touch_every(&maps);
        }
        let r = t.elapsed();
        settle(dev);
        if rep > 0 {
            zaps.push(ms(z));
            repops.push(ms(r));
        }
    }
    Ok((zaps, repops, faults))
}

/// The zap (and, if populated, the repopulate) measurements of one count.
fn zap_measurements(
    count: usize,
    policy: &str,
    populated: bool,
    z: &[f64],
    r: &[f64],
    faults: u64,
) -> Vec<Measurement> {
    let pages = if populated { count * MIB / PAGE } else { 0 };
    let mut zm = timing(if populated { "zap" } else { "zap_unpopulated" }, "ms", z);
    zm.policy = Some(policy.into());
    zm.mappings = Some(count);
    zm.size_bytes = Some(count * MIB);
    zm.per_mapping_us = Some(zm.median * 1e3 / count as f64);
    if pages > 0 {
        zm.per_page_ns = Some(zm.median * 1e6 / pages as f64);
    }
    zm.faults = Some(faults);
    let mut rm = timing("repopulate", "ms", r);
    rm.policy = Some(policy.into());
    rm.mappings = Some(count);
    rm.size_bytes = Some(count * MIB);
    if pages > 0 {
        rm.per_page_ns = Some(rm.median * 1e6 / pages as f64);
    }
    if populated {
        vec![zm, rm]
    } else {
        vec![zm]
    }
}
