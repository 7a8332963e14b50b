//! `populate_sweep` (with `--plot` only): populate time (1 and N threads, median of
//! up to 3) vs mapping size, per policy and native, drawn as an SVG.

use barmap::{Policy, WaitMode};

use super::dev::{device, populate_dev};
use super::native::{populate_native, Native};
use super::plot::{plot, Series};
use super::populate::per_page;
use super::report::{summarize, Measurement};
use super::{Bench, Family, Results, MIB};

/// The size sweep and its plot, when `--plot` asks for it.
pub(super) struct SizeSweep;

impl Family for SizeSweep {
    fn run(&self, b: &Bench, r: &mut Results) -> Result<(), String> {
        let Some(path) = &b.plot else {
            return Ok(());
        };
        let series = size_sweep(b, r.native()?)?;
        for (name, pts) in &series {
            for &(len, t) in pts {
                r.measurements.push(Measurement {
                    name: "populate_sweep".into(),
                    policy: Some(name.clone()),
                    threads: Some(if name.ends_with(&format!(" x{}", b.threads)) {
                        b.threads
                    } else {
                        1
                    }),
                    size_bytes: Some(len),
                    unit: "ms",
                    median: t,
                    min: t,
                    max: t,
                    reps: b.reps.min(3),
                    ..Measurement::default()
                });
            }
        }
        plot(path, &series)?;
        b.progress(&format!("wrote {}", path.display()));
        Ok(())
    }
}

/// Populate time (median) vs size, per policy and native, with 1 thread
/// and with the run's N threads (series named `<policy> xN`).
fn size_sweep(b: &Bench, native: &Native) -> Result<Series, String> {
    let mut series = size_sweep_with(b, native, 1)?;
    if b.threads > 1 {
        series.extend(size_sweep_with(b, native, b.threads)?);
    }
    Ok(series)
}

/// One thread count's series.
fn size_sweep_with(b: &Bench, native: &Native, threads: usize) -> Result<Series, String> {
    let tag = |name: &str| {
        if threads == 1 {
            name.to_string()
        } else {
            format!("{name} x{threads}")
        }
    };
    let reps = b.reps.min(3);
    let mut sizes: Vec<usize> = [4 * MIB, 16 * MIB, 64 * MIB, 256 * MIB]
        .into_iter()
        .filter(|&s| s < b.size)
        .collect();
    sizes.push(b.size);
    let mut series: Series = Vec::new();
    b.progress(&format!("size sweep: native, {threads} thread(s)"));
    let mut pts = Vec::new();
    for &len in &sizes {
        pts.push((
            len,
            summarize(&populate_native(native, len, threads, reps)?.0).0,
        ));
    }
    series.push((tag("native"), pts));
    for policy in Policy::ALL {
        b.progress(&format!("size sweep: {policy}, {threads} thread(s)"));
        let dev = device(b.size, policy, None, WaitMode::Poll)?;
        let mut pts = Vec::new();
        for &len in sizes
            .iter()
            .filter(|&&l| !per_page(policy) || l <= 64 * MIB)
        {
            pts.push((
                len,
                summarize(&populate_dev(&dev, len, threads, false, reps)?.0).0,
            ));
        }
        series.push((tag(policy.name()), pts));
    }
    Ok(series)
}
