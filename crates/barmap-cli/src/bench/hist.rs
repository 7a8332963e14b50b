//! Latency histograms (ns) and the measurements made of them (us).

use hdrhistogram::Histogram;

use super::report::Measurement;

/// An empty histogram of 1 ns .. 60 s, 3 significant digits.
pub(super) fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// A latency measurement: p50 as the median, with p99 and p999 (us).
pub(super) fn hist_measurement(name: &str, h: &Histogram<u64>) -> Measurement {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    Measurement {
        name: name.into(),
        unit: "us",
        median: us(0.5),
        min: h.min() as f64 / 1e3,
        max: h.max() as f64 / 1e3,
        reps: h.len() as usize,
        p99: Some(us(0.99)),
        p999: Some(us(0.999)),
        ..Measurement::default()
    }
}
