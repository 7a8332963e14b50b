//! The report: the measurements, the headline ratios and the targets, as
//! one JSON document or as a text table; and the figures (median, spread) a
//! measurement is made of.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::smaps::read_trimmed;
use super::{Bench, Results, MIB};

/// One measurement: a median with its spread, and the ratio that judges it.
#[derive(Debug, Clone, Serialize, Default)]
pub(super) struct Measurement {
    pub(super) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) service_threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) mappings: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) size_bytes: Option<usize>,
    pub(super) unit: &'static str,
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) reps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ratio_to: Option<String>,
    /// Median / `MADV_POPULATE_READ` of a native view of the same size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) floor_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) p999: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) per_mapping_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) per_page_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cpu_cores: Option<f64>,
    /// Median CPU time (user + system, every thread of the process) of a
    /// repetition's touches (map and unmap left out), ms: the work a run
    /// did, whatever share of the machine it got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cpu_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) faults: Option<u64>,
    /// Wrong reads, SIGBUS answers and failed fills.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) errors: Option<u64>,
    /// BUG events (the `legacy` policy's whole-mapping fill meeting a
    /// present page: the kernel would have crashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) bug_events: Option<u64>,
    /// The fault path's counters over all rounds, the warm-up included
    /// (`rounds` of them): where a storm's time goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) counters: Option<barmap::Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) rounds: Option<usize>,
}

/// What /proc/self/smaps says about one mapping (kB).
#[derive(Debug, Clone, Serialize, Default)]
pub(super) struct SmapsEntry {
    pub(super) rss_kb: u64,
    pub(super) shmem_pmd_mapped_kb: u64,
    pub(super) file_pmd_mapped_kb: u64,
    pub(super) anon_huge_kb: u64,
    pub(super) hugetlb_kb: u64,
    pub(super) thp_eligible: bool,
}

/// Whether the `huge` policy's fills are PMD-mapped, next to a native view.
#[derive(Debug, Clone, Serialize, Default)]
pub(super) struct HugeReport {
    pub(super) shmem_enabled: String,
    pub(super) nr_hugepages: String,
    pub(super) size_bytes: usize,
    pub(super) huge_policy: SmapsEntry,
    pub(super) native: SmapsEntry,
    pub(super) pmd_mapped: bool,
    pub(super) note: String,
}

/// The huge-page BAR measurement (`RegionSpec::huge_pages`).
#[derive(Debug, Clone, Serialize, Default)]
pub(super) struct HugetlbReport {
    /// Whether it ran; if not, `skipped` says why.
    pub(super) ran: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) skipped: Option<String>,
    /// vm.nr_hugepages before the bench raised it (None: not raised).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) nr_hugepages_raised_from: Option<u64>,
    pub(super) size_bytes: usize,
    /// Default policy, 1 thread: hugetlb BAR populate / native hugetlb first touch.
    pub(super) default_ratio_vs_native_hugetlb: f64,
    /// `huge` policy, 1 thread: hugetlb BAR populate / native hugetlb first touch.
    pub(super) huge_ratio_vs_native_hugetlb: f64,
    /// Default policy, 1 thread: shmem BAR populate / hugetlb BAR populate
    /// (how many times faster huge pages make barmap's populate).
    pub(super) default_speedup_vs_shmem_bar: f64,
    /// Native first touch, 1 thread: shmem memfd / hugetlbfs memfd.
    pub(super) native_speedup_vs_shmem: f64,
    /// smaps of a populated mapping, per policy ("huge", "prefault").
    pub(super) smaps: Vec<(String, SmapsEntry)>,
    /// smaps of a touched native view of the hugetlbfs memfd.
    pub(super) native_smaps: SmapsEntry,
}

/// The machine the run measured.
#[derive(Debug, Clone, Serialize, Default)]
struct Machine {
    cores: usize,
    kernel: String,
}

/// The whole run: the document `--json` prints.
#[derive(Debug, Clone, Serialize, Default)]
pub(super) struct Report {
    populate_ratio_vs_native: f64,
    populate_n_ratio_vs_native_n: f64,
    storm_ratio_vs_single: f64,
    storm_ratio_vs_native_storm: f64,
    /// Storm / the same storm on mappings not locked on fault (in turns):
    /// what the lock costs.
    storm_ratio_locked_vs_unlocked: f64,
    fault_p50_ratio_vs_uffd_floor: f64,
    fault_p50_us: f64,
    fault_p99_us: f64,
    wakeup_rtt_us: f64,
    fault_p50_ratio_vs_wakeup: f64,
    zap_us_per_mapping: f64,
    size_bytes: usize,
    threads: usize,
    reps: usize,
    machine: Machine,
    targets: Vec<Target>,
    huge: HugeReport,
    hugetlb: HugetlbReport,
    measurements: Vec<Measurement>,
}

/// A ratio and the limit it should stay under.
#[derive(Debug, Clone, Serialize)]
struct Target {
    what: &'static str,
    value: f64,
    limit: f64,
    met: bool,
}

impl Report {
    /// The report of a run: the headline ratios and the targets from
    /// `results`, with the run's settings and the machine.
    pub(super) fn new(bench: &Bench, results: Results) -> Report {
        let Results {
            measurements,
            wakeup_us,
            fault_p50,
            fault_p99,
            populate_ratio,
            populate_n_ratio,
            storm_ratio,
            storm_vs_native,
            storm_lock_cost,
            uffd_floor_p50,
            huge,
            hugetlb,
            zap_per_mapping,
            ..
        } = results;
        let fault_ratio = fault_p50 / wakeup_us;
        let fault_floor_ratio = if uffd_floor_p50 > 0.0 {
            fault_p50 / uffd_floor_p50
        } else {
            0.0
        };
        let targets = [
            Target {
                what: "populate default policy 1 thread / native",
                value: populate_ratio,
                limit: 1.05,
                met: populate_ratio <= 1.05,
            },
            Target {
                what: "storm / single-thread populate",
                value: storm_ratio,
                limit: 1.2,
                met: storm_ratio <= 1.2,
            },
            Target {
                what: "isolated fault p50 (poll) / wake-up RTT",
                value: fault_ratio,
                limit: 1.0,
                met: fault_ratio <= 1.0,
            },
            Target {
                what: "populate default policy N threads / native N threads",
                value: populate_n_ratio,
                limit: 1.0,
                met: populate_n_ratio <= 1.0,
            },
            Target {
                what: "storm / native storm (same threads)",
                value: storm_vs_native,
                limit: 1.0,
                met: storm_vs_native <= 1.0,
            },
            Target {
                what: "isolated fault p50 (poll) / bare userfaultfd loop p50",
                value: fault_floor_ratio,
                limit: 1.05,
                met: fault_floor_ratio <= 1.05,
            },
        ]
        .into_iter()
        .zip([
            &["populate"][..],
            &["populate", "storm"],
            &["fault_rtt"],
            &["populate"],
            &["populate", "storm"],
            &["fault_rtt"],
        ])
        .filter(|(_, needs)| needs.iter().all(|f| bench.runs(f)))
        .map(|(t, _)| t)
        .collect();
        Report {
            populate_ratio_vs_native: populate_ratio,
            populate_n_ratio_vs_native_n: populate_n_ratio,
            storm_ratio_vs_single: storm_ratio,
            storm_ratio_vs_native_storm: storm_vs_native,
            storm_ratio_locked_vs_unlocked: storm_lock_cost,
            fault_p50_ratio_vs_uffd_floor: fault_floor_ratio,
            fault_p50_us: fault_p50,
            fault_p99_us: fault_p99,
            wakeup_rtt_us: wakeup_us,
            fault_p50_ratio_vs_wakeup: fault_ratio,
            zap_us_per_mapping: zap_per_mapping,
            size_bytes: bench.size,
            threads: bench.threads,
            reps: bench.reps,
            machine: Machine {
                cores: bench.cores,
                kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            },
            targets,
            huge,
            hugetlb,
            measurements,
        }
    }

    /// The text table `barmap bench` prints without `--json`.
    pub(super) fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "barmap bench: size {} MiB, {} threads, {} reps (median, min..max), {} cores, kernel {}",
            self.size_bytes / MIB,
            self.threads,
            self.reps,
            self.machine.cores,
            self.machine.kernel
        );
        let _ = writeln!(s, "\ntargets");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "  {:<44} {:>8.3}  (limit {:.2})  {}",
                t.what,
                t.value,
                t.limit,
                if t.met { "met" } else { "NOT MET" }
            );
        }
        let _ = writeln!(s, "\nsummary");
        let _ = writeln!(
            s,
            "  populate_ratio_vs_native    {:.3}",
            self.populate_ratio_vs_native
        );
        let _ = writeln!(
            s,
            "  populate_n_ratio_vs_native_n {:.3}",
            self.populate_n_ratio_vs_native_n
        );
        let _ = writeln!(
            s,
            "  storm_ratio_vs_single       {:.3}",
            self.storm_ratio_vs_single
        );
        let _ = writeln!(
            s,
            "  storm_ratio_vs_native_storm {:.3}",
            self.storm_ratio_vs_native_storm
        );
        let _ = writeln!(
            s,
            "  storm_ratio_locked_vs_unlocked {:.3}",
            self.storm_ratio_locked_vs_unlocked
        );
        let _ = writeln!(
            s,
            "  fault_p50_ratio_vs_uffd_floor {:.3}",
            self.fault_p50_ratio_vs_uffd_floor
        );
        let _ = writeln!(s, "  fault_p50_us                {:.1}", self.fault_p50_us);
        let _ = writeln!(s, "  fault_p99_us                {:.1}", self.fault_p99_us);
        let _ = writeln!(s, "  wakeup_rtt_us               {:.1}", self.wakeup_rtt_us);
        let _ = writeln!(
            s,
            "  fault_p50_ratio_vs_wakeup   {:.3}",
            self.fault_p50_ratio_vs_wakeup
        );
        let _ = writeln!(
            s,
            "  zap_us_per_mapping          {:.2}",
            self.zap_us_per_mapping
        );
        let _ = writeln!(s, "\nmeasurements");
        let _ = writeln!(
            s,
            "  {:<14} {:<9} {:<6} {:>4} {:>4} {:>5} {:>9} {:>12} {:>21} {:>8}  extra",
            "name", "policy", "mode", "thr", "svc", "maps", "size", "median", "min..max", "ratio"
        );
        for m in &self.measurements {
            let mut extra = String::new();
            if let Some(to) = &m.ratio_to {
                let _ = write!(extra, "vs {to}; ");
            }
            if let Some(f) = m.floor_ratio {
                let _ = write!(extra, "{f:.3}x MADV_POPULATE_READ; ");
            }
            if let (Some(p99), Some(p999)) = (m.p99, m.p999) {
                let _ = write!(extra, "p99 {p99:.1} p999 {p999:.1}; ");
            }
            if let Some(v) = m.per_mapping_us {
                let _ = write!(extra, "{v:.2} us/mapping; ");
            }
            if let Some(v) = m.per_page_ns {
                let _ = write!(extra, "{v:.1} ns/page; ");
            }
            if let Some(v) = m.cpu_cores {
                let _ = write!(extra, "service CPU {v:.2} cores; ");
            }
            if let Some(v) = m.faults {
                let _ = write!(extra, "{v} faults; ");
            }
            if let Some(v) = m.errors {
                let _ = write!(extra, "{v} errors; ");
            }
            if let Some(v) = m.bug_events.filter(|&v| v > 0) {
                let _ = write!(extra, "{v} BUG events; ");
            }
            let opt = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                s,
                "  {:<14} {:<9} {:<6} {:>4} {:>4} {:>5} {:>9} {:>9.3} {:<2} {:>9.3}..{:<9.3} {:>8}  {}",
                m.name,
                m.policy.as_deref().unwrap_or("-"),
                m.mode.as_deref().unwrap_or("-"),
                opt(m.threads),
                opt(m.service_threads),
                opt(m.mappings),
                m.size_bytes.map_or("-".to_string(), human),
                m.median,
                m.unit,
                m.min,
                m.max,
                m.ratio.map_or("-".to_string(), |r| format!("{r:.3}")),
                extra.trim_end_matches("; ")
            );
        }
        let h = &self.huge;
        let _ = writeln!(
            s,
            "\nhuge mappings (shmem_enabled {}, nr_hugepages {}): huge policy ShmemPmdMapped {} kB, \
             FilePmdMapped {} kB, Hugetlb {} kB of Rss {} kB; native view ShmemPmdMapped {} kB of Rss {} kB\n  {}",
            h.shmem_enabled,
            h.nr_hugepages,
            h.huge_policy.shmem_pmd_mapped_kb,
            h.huge_policy.file_pmd_mapped_kb,
            h.huge_policy.hugetlb_kb,
            h.huge_policy.rss_kb,
            h.native.shmem_pmd_mapped_kb,
            h.native.rss_kb,
            h.note
        );
        let h = &self.hugetlb;
        if let Some(why) = &h.skipped {
            let _ = writeln!(s, "\nhuge-page BAR (hugetlbfs): skipped: {why}");
        } else {
            let _ = writeln!(
                s,
                "\nhuge-page BAR (hugetlbfs, {}): default policy {:.3}x and huge policy {:.3}x a native \
                 first touch of a hugetlbfs memfd; default policy {:.1}x faster than on the shmem BAR \
                 (native: {:.1}x faster than shmem)",
                human(h.size_bytes),
                h.default_ratio_vs_native_hugetlb,
                h.huge_ratio_vs_native_hugetlb,
                h.default_speedup_vs_shmem_bar,
                h.native_speedup_vs_shmem,
            );
            for (policy, e) in h
                .smaps
                .iter()
                .chain([("native".to_string(), h.native_smaps.clone())].iter())
            {
                let _ = writeln!(
                    s,
                    "  smaps {policy:<9} Hugetlb {} kB of Rss {} kB, ShmemPmdMapped {} kB",
                    e.hugetlb_kb, e.rss_kb, e.shmem_pmd_mapped_kb
                );
            }
        }
        s
    }
}

/// A size as `1G`, `64M`, `512K` or `4B`.
pub(super) fn human(bytes: usize) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{}G", bytes >> 30)
    } else if bytes >= MIB {
        format!("{}M", bytes / MIB)
    } else if bytes >= 1 << 10 {
        format!("{}K", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}

/// Median, min and max of `v` (non-empty).
pub(super) fn summarize(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[0], s[n - 1])
}

/// A duration in ms.
pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A measurement of repeated timings `v` (non-empty) in `unit`: their
/// median and spread; the caller sets what it was measured on.
pub(super) fn timing(name: &str, unit: &'static str, v: &[f64]) -> Measurement {
    let (median, min, max) = summarize(v);
    Measurement {
        name: name.into(),
        unit,
        median,
        min,
        max,
        reps: v.len(),
        ..Measurement::default()
    }
}
