//! `barmap bench`: what the fault path costs next to the kernel's own page
//! faults, measured in one run on one machine state.
//!
//! Every figure is a median over `--reps` repetitions after one warm-up, with
//! its spread (min..max). Timings on a shared machine are noisy, so the
//! figures that matter are ratios of two measurements taken in the same run:
//! populate vs a native first touch of the same memfd, a storm vs a
//! single-thread populate, a fault round trip vs a thread wake-up round trip.
//!
//! Measurements:
//! - `populate`: first touch (a read) of every page of a mapping by 1 and by
//!   N threads (contiguous slices), per policy, and `native`: the same on a
//!   plain MAP_SHARED view of a memfd without userfaultfd. `page` and
//!   `legacy`, which serve one fault per page, run at a smaller size (their
//!   ratio is to native at that size).
//! - `fault_rtt`: isolated faults (page policy, one service thread), one
//!   timed touch per page, in poll and spin mode; spin's CPU cost.
//! - `wakeup_rtt`: two threads ping-ponging one byte over two pipes
//!   (blocking), and over an atomic (spinning).
//! - `storm`: N threads released at once, touching interleaved pages of one
//!   mapping, so that they fault on the same chunks together.
//! - `zap`: memory disable with M live 1 MiB mappings, fully populated;
//!   then re-enable and repopulate.
//! - `service_sweep`: the storm with 1..cores service threads.
//! - `huge`: whether the `huge` policy's fills end up PMD-mapped
//!   (/proc/self/smaps), next to a native view of the same kind of memfd.
//! - `populate_hugetlb`: a BAR backed by 2 MiB huge pages
//!   (`RegionSpec::huge_pages`, a hugetlbfs memfd): populate by the `huge`
//!   and default policies vs a native first touch of a hugetlbfs memfd of
//!   the same size, with the smaps evidence (`Private_Hugetlb` /
//!   `Shared_Hugetlb`). Needs free huge pages: as root the bench raises
//!   vm.nr_hugepages (saying so on stderr) and puts it back afterwards;
//!   otherwise the measurement is skipped with the reason.

use std::fmt::Write as _;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use barmap::{Device, Mapping, Policy, Prot, RegionSpec, Stats, WaitMode, DEFAULT_MEMORY_BAR};
use hdrhistogram::Histogram;
use serde::Serialize;

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;
/// Magic mixed into the first word of every page, to check what a touch reads.
const PATTERN: u64 = 0xba5e_ba11_0000_0000;

/// Arguments of `barmap bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Size of the populate and storm mapping (suffixes K, M, G; default 1G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: usize,
    /// Touching threads for the N-thread populate and the storm (up to 64).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also sweep populate over sizes and write an SVG plot of it here.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Measured repetitions per figure (after one warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub reps: u16,
}

/// Parses `64M`, `1G`, `1GiB`, `512k` or a plain byte count.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let mult: usize = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in {s:?} (use K, M or G)")),
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?}"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))?;
    if bytes < 2 * MIB || bytes % PAGE != 0 {
        return Err(format!(
            "size {s:?} must be a multiple of 4 KiB and at least 2M"
        ));
    }
    Ok(bytes)
}

/// Runs the benchmark; returns the process exit code.
pub fn run(args: &BenchArgs) -> i32 {
    match Bench::new(args).and_then(|b| b.run()) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("barmap bench: JSON: {e}");
                        return 1;
                    }
                }
            } else {
                print!("{}", report.table());
            }
            0
        }
        Err(e) => {
            eprintln!("barmap bench: {e}");
            1
        }
    }
}

// ----- the report -----------------------------------------------------------

/// One measurement: a median with its spread, and the ratio that judges it.
#[derive(Debug, Clone, Serialize, Default)]
struct Measurement {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mappings: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_bytes: Option<usize>,
    unit: &'static str,
    median: f64,
    min: f64,
    max: f64,
    reps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p999: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_mapping_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_page_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_cores: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    faults: Option<u64>,
    /// Wrong reads, SIGBUS answers and failed fills.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<u64>,
    /// BUG events (the `legacy` policy's whole-mapping fill meeting a
    /// present page: the kernel would have crashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    bug_events: Option<u64>,
}

/// What /proc/self/smaps says about one mapping (kB).
#[derive(Debug, Clone, Serialize, Default)]
struct SmapsEntry {
    rss_kb: u64,
    shmem_pmd_mapped_kb: u64,
    file_pmd_mapped_kb: u64,
    anon_huge_kb: u64,
    hugetlb_kb: u64,
    thp_eligible: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
struct HugeReport {
    shmem_enabled: String,
    nr_hugepages: String,
    size_bytes: usize,
    huge_policy: SmapsEntry,
    native: SmapsEntry,
    pmd_mapped: bool,
    note: String,
}

/// The huge-page BAR measurement (`RegionSpec::huge_pages`).
#[derive(Debug, Clone, Serialize, Default)]
struct HugetlbReport {
    /// Whether it ran; if not, `skipped` says why.
    ran: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    /// vm.nr_hugepages before the bench raised it (None: not raised).
    #[serde(skip_serializing_if = "Option::is_none")]
    nr_hugepages_raised_from: Option<u64>,
    size_bytes: usize,
    /// Default policy, 1 thread: hugetlb BAR populate / native hugetlb first touch.
    default_ratio_vs_native_hugetlb: f64,
    /// `huge` policy, 1 thread: hugetlb BAR populate / native hugetlb first touch.
    huge_ratio_vs_native_hugetlb: f64,
    /// Default policy, 1 thread: shmem BAR populate / hugetlb BAR populate
    /// (how many times faster huge pages make barmap's populate).
    default_speedup_vs_shmem_bar: f64,
    /// Native first touch, 1 thread: shmem memfd / hugetlbfs memfd.
    native_speedup_vs_shmem: f64,
    /// smaps of a populated mapping, per policy ("huge", "prefault").
    smaps: Vec<(String, SmapsEntry)>,
    /// smaps of a touched native view of the hugetlbfs memfd.
    native_smaps: SmapsEntry,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Machine {
    cores: usize,
    kernel: String,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Report {
    populate_ratio_vs_native: f64,
    storm_ratio_vs_single: f64,
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

#[derive(Debug, Clone, Serialize)]
struct Target {
    what: &'static str,
    value: f64,
    limit: f64,
    met: bool,
}

impl Report {
    fn table(&self) -> String {
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
            "  storm_ratio_vs_single       {:.3}",
            self.storm_ratio_vs_single
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

fn human(bytes: usize) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{}G", bytes >> 30)
    } else if bytes >= MIB {
        format!("{}M", bytes / MIB)
    } else {
        format!("{}K", bytes >> 10)
    }
}

/// Median, min and max of `v` (non-empty).
fn summarize(v: &[f64]) -> (f64, f64, f64) {
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ----- touching pages -------------------------------------------------------

/// A range of mapped memory to touch: barmap's or a native view.
#[derive(Clone, Copy)]
struct View {
    addr: usize,
    len: usize,
}

impl View {
    fn of(m: &Mapping) -> View {
        View {
            addr: m.addr(),
            len: m.len(),
        }
    }
    fn pages(&self) -> usize {
        self.len / PAGE
    }
    /// Reads the first word of page `i` (volatile) and says whether it holds
    /// the pattern written at BAR offset `base + i * PAGE`.
    fn touch(&self, i: usize, base_page: usize) -> bool {
        assert!(i < self.pages());
        let p = (self.addr + i * PAGE) as *const u64;
        // SAFETY: `p` is page aligned inside a live mapping of `len` bytes that
        // this process created and keeps mapped while the view is used; device
        // memory is read only through volatile raw reads.
        let v = unsafe { p.read_volatile() };
        v == PATTERN | (base_page + i) as u64
    }
}

/// Touches pages of `view` with `threads` threads released by one barrier;
/// `interleave` gives thread t pages t, t+threads, ... (a storm on the same
/// chunks), else a contiguous slice each. Returns the time from release to
/// the last thread's finish and the count of wrong reads.
fn touch_all(view: View, base_page: usize, threads: usize, interleave: bool) -> (Duration, u64) {
    let pages = view.pages();
    let barrier = Barrier::new(threads);
    let errors = AtomicU64::new(0);
    // Each thread notes when it passed the barrier and when it finished: the
    // run lasts from the first start to the last finish (a timer in the
    // spawning thread would miss work done while it waits to be scheduled).
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, errors) = (&barrier, &errors);
                s.spawn(move || {
                    let mut bad = 0;
                    barrier.wait();
                    let start = Instant::now();
                    if interleave {
                        let mut i = t;
                        while i < pages {
                            bad += u64::from(!view.touch(i, base_page));
                            i += threads;
                        }
                    } else {
                        let per = pages.div_ceil(threads);
                        for i in (t * per).min(pages)..((t + 1) * per).min(pages) {
                            bad += u64::from(!view.touch(i, base_page));
                        }
                    }
                    errors.fetch_add(bad, Ordering::Relaxed);
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("touching thread panicked"))
            .collect()
    });
    let first = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let last = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    (last - first, errors.load(Ordering::Relaxed))
}

/// Writes the pattern (first word of each page) into `size` bytes, by
/// `write(offset, chunk)`.
fn write_pattern(
    size: usize,
    mut write: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut buf = vec![0u8; MIB];
    for off in (0..size).step_by(MIB) {
        let n = MIB.min(size - off);
        for p in (0..n).step_by(PAGE) {
            let word = PATTERN | ((off + p) / PAGE) as u64;
            buf[p..p + 8].copy_from_slice(&word.to_ne_bytes());
        }
        write(off as u64, &buf[..n])?;
    }
    Ok(())
}

// ----- the native baseline --------------------------------------------------

/// A fully allocated memfd holding the pattern, viewed without userfaultfd.
struct Native {
    fd: OwnedFd,
}

/// A plain MAP_SHARED view of the native memfd, unmapped on drop.
struct NativeView(View);

impl Drop for NativeView {
    fn drop(&mut self) {
        let _ = barmap::os::unmap(self.0.addr..self.0.addr + self.0.len);
    }
}

impl Native {
    fn new(size: usize) -> Result<Native, String> {
        let fd = barmap::os::memfd("barmap-bench-native", size as u64)
            .map_err(|e| errno_str("memfd", e))?;
        write_pattern(size, |off, b| {
            barmap::os::pwrite_all(&fd, off, b).map_err(|e| errno_str("pwrite", e))
        })?;
        Ok(Native { fd })
    }

    /// The same on a hugetlbfs memfd (2 MiB huge pages; `size` a multiple of
    /// 2 MiB). hugetlbfs has no `pwrite`: the pattern goes in through a view.
    fn new_hugetlb(size: usize) -> Result<Native, String> {
        let fd = barmap::os::memfd_hugetlb("barmap-bench-native-hugetlb", size as u64)
            .map_err(|e| errno_str("hugetlbfs memfd", e))?;
        let native = Native { fd };
        let v = native.view(size)?;
        write_pattern(size, |off, b| {
            assert!(off as usize + b.len() <= v.0.len);
            // SAFETY: the view is live until `v` drops below, and the range
            // is inside it (asserted).
            unsafe { barmap::os::view_write(v.0.addr, off as usize, b) };
            Ok(())
        })?;
        drop(v);
        Ok(native)
    }

    /// A readable MAP_SHARED view of the first `len` bytes, placed on a
    /// 2 MiB boundary as barmap places its mappings.
    fn view(&self, len: usize) -> Result<NativeView, String> {
        let start = barmap::os::map_shared(&self.fd, 0, len)
            .map_err(|e| errno_str("mmap of the memfd", e))?;
        if let Err(e) = barmap::os::protect(start..start + len, true) {
            let _ = barmap::os::unmap(start..start + len);
            return Err(errno_str("mprotect", e));
        }
        Ok(NativeView(View { addr: start, len }))
    }
}

fn errno_str(what: &str, errno: i32) -> String {
    format!("{what}: {}", std::io::Error::from_raw_os_error(errno))
}

// ----- devices --------------------------------------------------------------

fn device(
    size: usize,
    policy: Policy,
    service: Option<usize>,
    mode: WaitMode,
) -> Result<Device, String> {
    let mut b = Device::builder_with_memory(size.next_power_of_two() as u64)
        .policy(policy)
        .wait_mode(mode);
    if let Some(n) = service {
        b = b.service_threads(n);
    }
    let dev = b.build().map_err(|e| format!("building the device: {e}"))?;
    write_pattern(size, |off, data| {
        dev.write_region(DEFAULT_MEMORY_BAR, off, data)
            .map_err(|e| format!("writing the BAR: {e}"))
    })?;
    Ok(dev)
}

fn map(dev: &Device, offset: usize, len: usize) -> Result<Mapping, String> {
    dev.map(DEFAULT_MEMORY_BAR, offset as u64, len, Prot::ReadWrite)
        .map_err(|e| format!("mapping {len:#x} at {offset:#x}: {e}"))
}

/// Errors the fault path itself reports (SIGBUS answers, failed fills).
fn path_errors(s: &Stats) -> u64 {
    s.sigbus + s.retries
}

fn settle(dev: &Device) {
    if !dev.wait_idle(Duration::from_secs(10)) {
        eprintln!("barmap bench: warning: the fault service did not go idle within 10 s");
    }
}

/// Populates a fresh mapping of `len` bytes `reps + 1` times (the first is a
/// warm-up); returns the times in ms, wrong reads and fault-path counters.
fn populate_dev(
    dev: &Device,
    len: usize,
    threads: usize,
    interleave: bool,
    reps: usize,
) -> Result<(Vec<f64>, u64, Stats), String> {
    let mut times = Vec::new();
    let mut errors = 0;
    let before = dev.stats();
    for rep in 0..=reps {
        let m = map(dev, 0, len)?;
        let (t, bad) = touch_all(View::of(&m), 0, threads, interleave);
        settle(dev);
        drop(m);
        if rep > 0 {
            times.push(ms(t));
            errors += bad;
        }
    }
    Ok((times, errors, dev.stats().since(&before)))
}

fn populate_native(
    native: &Native,
    len: usize,
    threads: usize,
    reps: usize,
) -> Result<(Vec<f64>, u64), String> {
    let mut times = Vec::new();
    let mut errors = 0;
    for rep in 0..=reps {
        let v = native.view(len)?;
        let (t, bad) = touch_all(v.0, 0, threads, false);
        drop(v);
        if rep > 0 {
            times.push(ms(t));
            errors += bad;
        }
    }
    Ok((times, errors))
}

fn timing(name: &str, unit: &'static str, v: &[f64]) -> Measurement {
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

// ----- wake-up and fault round trips ----------------------------------------

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is valid for two ints; pipe2 fills them with new fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: two fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn write_byte(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    let b = 1u8;
    // SAFETY: writes one byte from a valid buffer to an fd we own.
    unsafe { libc::write(fd.as_raw_fd(), (&b as *const u8).cast(), 1) };
}

fn read_byte(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = 0u8;
    // SAFETY: reads one byte into a valid buffer from an fd we own.
    unsafe { libc::read(fd.as_raw_fd(), (&mut b as *mut u8).cast(), 1) == 1 }
}

/// Blocking ping-pong over two pipes: each round trip is two thread
/// wake-ups in the kernel, as a poll()ing fault round trip is.
fn wakeup_pipe(rounds: usize) -> Result<Histogram<u64>, String> {
    let (ping_r, ping_w) = pipe()?;
    let (pong_r, pong_w) = pipe()?;
    let mut hist = new_hist();
    std::thread::scope(|s| {
        s.spawn(|| {
            while read_byte(&ping_r) {
                write_byte(&pong_w);
            }
        });
        for i in 0..rounds + rounds / 10 {
            let t = Instant::now();
            write_byte(&ping_w);
            read_byte(&pong_r);
            let ns = t.elapsed().as_nanos() as u64;
            if i >= rounds / 10 {
                let _ = hist.record(ns.max(1));
            }
        }
        drop(ping_w); // ends the echo thread (read returns 0)
    });
    Ok(hist)
}

/// Spinning hand-off over an atomic (no kernel wake-up), bounded in time.
fn wakeup_spin(rounds: usize) -> Histogram<u64> {
    let flag = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let mut hist = new_hist();
    let deadline = Instant::now() + Duration::from_millis(300);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut expect = 1;
            while !stop.load(Ordering::Relaxed) {
                if flag.load(Ordering::Acquire) == expect {
                    flag.store(expect + 1, Ordering::Release);
                    expect += 2;
                }
                std::hint::spin_loop();
            }
        });
        let mut v = 1;
        for _ in 0..rounds {
            if Instant::now() > deadline {
                break;
            }
            let t = Instant::now();
            flag.store(v, Ordering::Release);
            while flag.load(Ordering::Acquire) != v + 1 {
                std::hint::spin_loop();
            }
            let _ = hist.record((t.elapsed().as_nanos() as u64).max(1));
            v += 2;
        }
        stop.store(true, Ordering::Relaxed);
    });
    hist
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid struct.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Isolated faults: one thread touches each page of a fresh page-policy
/// mapping in turn, timing each touch. Returns the histogram (ns), the CPU
/// the rest of the process (the service) burnt per wall second, and faults.
fn fault_rtt(mode: WaitMode, len: usize, hist: &mut Histogram<u64>) -> Result<(f64, u64), String> {
    let dev = device(len, Policy::Page, Some(1), mode)?;
    // Warm-up: one pass over a small mapping.
    {
        let m = map(&dev, 0, 4 * MIB)?;
        let v = View::of(&m);
        for i in 0..v.pages() {
            v.touch(i, 0);
        }
        settle(&dev);
    }
    let m = map(&dev, 0, len)?;
    let v = View::of(&m);
    let before = dev.stats();
    let (wall0, proc0, me0) = (
        Instant::now(),
        cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID),
        cpu_time(libc::CLOCK_THREAD_CPUTIME_ID),
    );
    for i in 0..v.pages() {
        let t = Instant::now();
        v.touch(i, 0);
        let _ = hist.record((t.elapsed().as_nanos() as u64).max(1));
    }
    let wall = wall0.elapsed();
    let service_cpu = (cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - proc0)
        .saturating_sub(cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - me0);
    settle(&dev);
    let faults = dev.stats().since(&before).faults;
    Ok((service_cpu.as_secs_f64() / wall.as_secs_f64(), faults))
}

/// The floor under barmap's fault round trip: the same isolated faults on a
/// userfaultfd served by a bare loop (wait, read, one UFFDIO_CONTINUE), with
/// no registry, gate or policy. Returns the histogram (ns).
fn uffd_floor(
    native: &Native,
    mode: WaitMode,
    len: usize,
    hist: &mut Histogram<u64>,
) -> Result<(), String> {
    use barmap::mm::SpaceId;
    use barmap::uffd::Event;
    let uffd = barmap::uffd::Uffd::open().map_err(|e| format!("userfaultfd: {e}"))?;
    let v = native.view(len)?;
    let view = v.0;
    uffd.register(view.addr..view.addr + view.len)
        .map_err(|e| errno_str("UFFDIO_REGISTER", e))?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut events: Vec<Event> = Vec::with_capacity(32);
            while !stop.load(Ordering::Relaxed) {
                if mode == WaitMode::Poll {
                    let mut fd = libc::pollfd {
                        fd: uffd.raw(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; a 10 ms timeout to see `stop`.
                    if unsafe { libc::poll(&mut fd, 1, 10) } <= 0 {
                        continue;
                    }
                }
                events.clear();
                if uffd.read_events(SpaceId::LOCAL, &mut events).is_ok() {
                    for e in &events {
                        if let Event::Fault(f) = e {
                            let page = f.addr & !(PAGE - 1);
                            let _ = uffd.continue_range(page..page + PAGE);
                        }
                    }
                }
            }
        });
        for i in 0..view.pages() {
            let t = Instant::now();
            view.touch(i, 0);
            if i >= 64 {
                let _ = hist.record((t.elapsed().as_nanos() as u64).max(1));
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Unregister before the view goes: the userfaultfd reports munmaps of
    // registered ranges (EVENT_UNMAP), and with its reader gone the munmap
    // would wait for that event to be read for ever.
    uffd.unregister(view.addr..view.addr + view.len)
        .map_err(|e| errno_str("UFFDIO_UNREGISTER", e))?;
    drop(v);
    Ok(())
}

/// Raises the priority of the device's fault service threads (named
/// `barmap-fault-*`) to `nice`; returns how many were changed.
fn renice_service(nice: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // SAFETY: setpriority on one thread id of this process.
        if comm.starts_with("barmap-fault")
            && unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } == 0
        {
            n += 1;
        }
    }
    n
}

/// CPU the service burns per wall second while no fault arrives.
fn idle_cpu(mode: WaitMode) -> Result<f64, String> {
    let dev = Device::builder_with_memory(2 * MIB as u64)
        .service_threads(1)
        .wait_mode(mode)
        .build()
        .map_err(|e| format!("building the device: {e}"))?;
    std::thread::sleep(Duration::from_millis(20));
    let (w, p) = (Instant::now(), cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID));
    std::thread::sleep(Duration::from_millis(200));
    let cores =
        (cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - p).as_secs_f64() / w.elapsed().as_secs_f64();
    drop(dev);
    Ok(cores)
}

fn hist_measurement(name: &str, h: &Histogram<u64>) -> Measurement {
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

// ----- zap ------------------------------------------------------------------

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

// ----- huge mappings --------------------------------------------------------

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map_or_else(|e| format!("unreadable ({e})"), |s| s.trim().to_string())
}

/// The smaps counters of the mapping that starts at `addr`.
fn smaps_of(addr: usize) -> SmapsEntry {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{addr:x}-");
    let mut e = SmapsEntry::default();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with(&head) {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if line.starts_with("VmFlags") {
            break;
        }
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let v: u64 = val.parse().unwrap_or(0);
        match key {
            "Rss:" => e.rss_kb = v,
            "ShmemPmdMapped:" => e.shmem_pmd_mapped_kb = v,
            "FilePmdMapped:" => e.file_pmd_mapped_kb = v,
            "AnonHugePages:" => e.anon_huge_kb = v,
            "Shared_Hugetlb:" | "Private_Hugetlb:" => e.hugetlb_kb += v,
            "THPeligible:" => e.thp_eligible = v == 1,
            _ => {}
        }
    }
    e
}

fn huge_check(dev: &Device, native: &Native, len: usize) -> Result<HugeReport, String> {
    let m = map(dev, 0, len)?;
    let v = View::of(&m);
    for i in 0..v.pages() {
        v.touch(i, 0);
    }
    settle(dev);
    let huge_policy = smaps_of(m.addr());
    drop(m);
    let nv = native.view(len)?;
    for i in 0..nv.0.pages() {
        nv.0.touch(i, 0);
    }
    let native_e = smaps_of(nv.0.addr);
    drop(nv);
    let shmem_enabled = read_trimmed("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    let pmd =
        huge_policy.shmem_pmd_mapped_kb + huge_policy.file_pmd_mapped_kb + huge_policy.hugetlb_kb
            > 0;
    let note = if pmd {
        "the huge policy's fills are PMD-mapped".to_string()
    } else if native_e.shmem_pmd_mapped_kb > 0 {
        "the native view is PMD-mapped but the huge policy's fills are not: UFFDIO_CONTINUE \
         maps shmem page by page (PTEs), whatever the folio size"
            .to_string()
    } else {
        "nothing is PMD-mapped: the BAR memfd is small-page shmem (THP for shmem is off); \
         the huge policy only saves fault round trips"
            .to_string()
    };
    Ok(HugeReport {
        shmem_enabled,
        nr_hugepages: read_trimmed("/proc/sys/vm/nr_hugepages"),
        size_bytes: len,
        huge_policy,
        native: native_e,
        pmd_mapped: pmd,
        note,
    })
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

// ----- the plot -------------------------------------------------------------

type Series = Vec<(String, Vec<(usize, f64)>)>;

fn plot(path: &PathBuf, series: &Series) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let xs = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x as f64 / MIB as f64));
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
    let (xmin, xmax) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (ymin, ymax) = ys.fold((f64::MAX, 0f64), |(a, b), y| (a.min(y), b.max(y)));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "barmap populate (1 thread, first read of every page)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (xmin / 1.5..xmax * 1.5).log_scale(),
            (ymin.max(1e-3) / 1.5..ymax * 1.5).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("mapping size (MiB)")
        .y_desc("populate time (ms, median)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = if name == "native" {
            BLACK.stroke_width(3)
        } else {
            color.stroke_width(2)
        };
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .map(|&(x, y)| (x as f64 / MIB as f64, y))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, style.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

// ----- the run --------------------------------------------------------------

struct Bench {
    size: usize,
    threads: usize,
    reps: usize,
    cores: usize,
    plot: Option<PathBuf>,
    /// The size `page` and `legacy` populate at (one fault per page).
    small: usize,
}

/// Policies that populate with one fault round trip per page.
fn per_page(p: Policy) -> bool {
    matches!(p, Policy::Page)
}

impl Bench {
    fn new(args: &BenchArgs) -> Result<Bench, String> {
        Ok(Bench {
            size: args.size,
            threads: args.threads as usize,
            reps: args.reps as usize,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            plot: args.plot.clone(),
            small: args.size.min(64 * MIB),
        })
    }

    fn progress(&self, what: &str) {
        eprintln!("barmap bench: {what}");
    }

    fn run(&self) -> Result<Report, String> {
        let mut out: Vec<Measurement> = Vec::new();
        let (size, threads, reps) = (self.size, self.threads, self.reps);

        // Wake-up and fault round trips, interleaved in blocks so that each
        // ratio compares figures taken under the same machine load. A spin
        // device lives only during its own block (it burns a core).
        let blocks = 4;
        let mut wake = new_hist();
        let mut hists = [new_hist(), new_hist()];
        let mut floors = [new_hist(), new_hist()];
        let mut cpu = [0.0f64; 2];
        let mut faults = [0u64; 2];
        let floor_native = Native::new(self.small)?;
        for block in 0..blocks {
            self.progress(&format!("round trips: block {}/{blocks}", block + 1));
            let w = wakeup_pipe(5_000)?;
            wake.add(&w).map_err(|e| format!("histogram: {e}"))?;
            for (k, mode) in [WaitMode::Poll, WaitMode::Spin].into_iter().enumerate() {
                let (c, f) = fault_rtt(mode, self.small / blocks, &mut hists[k])?;
                cpu[k] += c / blocks as f64;
                faults[k] += f;
                uffd_floor(&floor_native, mode, self.small / blocks, &mut floors[k])?;
            }
        }
        drop(floor_native);
        let mut m = hist_measurement("wakeup_rtt", &wake);
        m.mode = Some("pipe".into());
        out.push(m);
        let mut m = hist_measurement("wakeup_rtt", &wakeup_spin(200_000));
        m.mode = Some("spin".into());
        out.push(m);
        let wakeup_us = wake.value_at_quantile(0.5) as f64 / 1e3;
        let mut fault_p50 = 0.0;
        let mut fault_p99 = 0.0;
        for (k, mname) in ["poll", "spin"].into_iter().enumerate() {
            let mut m = hist_measurement("fault_rtt", &hists[k]);
            m.policy = Some("page".into());
            m.mode = Some(mname.into());
            m.service_threads = Some(1);
            m.cpu_cores = Some(cpu[k]);
            m.faults = Some(faults[k]);
            m.ratio = Some(m.median / wakeup_us);
            m.ratio_to = Some("wakeup_rtt pipe p50".into());
            if k == 0 {
                fault_p50 = m.median;
                fault_p99 = m.p99.unwrap_or(0.0);
            }
            out.push(m);
            let mut f = hist_measurement("uffd_floor_rtt", &floors[k]);
            f.mode = Some(mname.into());
            f.service_threads = Some(1);
            f.ratio = Some(f.median / wakeup_us);
            f.ratio_to = Some("wakeup_rtt pipe p50".into());
            out.push(f);
        }
        for mode in [WaitMode::Poll, WaitMode::Spin] {
            let mut idle = timing("service_idle", "cores", &[idle_cpu(mode)?]);
            idle.mode = Some(
                if mode == WaitMode::Poll {
                    "poll"
                } else {
                    "spin"
                }
                .into(),
            );
            idle.service_threads = Some(1);
            out.push(idle);
        }

        // Populate: native first, then each policy at the same sizes.
        self.progress("populate: native");
        let native = Native::new(size)?;
        let mut native_med = std::collections::HashMap::new();
        for (len, thr) in [
            (size, 1),
            (size, threads),
            (self.small, 1),
            (self.small, threads),
        ] {
            if native_med.contains_key(&(len, thr)) {
                continue;
            }
            let (t, errors) = populate_native(&native, len, thr, reps)?;
            let mut m = timing("populate", "ms", &t);
            m.policy = Some("native".into());
            m.threads = Some(thr);
            m.size_bytes = Some(len);
            m.errors = Some(errors);
            native_med.insert((len, thr), m.median);
            out.push(m);
        }
        let mut populate_ratio = 0.0;
        let mut single_default = 0.0;
        let mut storm_ratio = 0.0;
        let mut huge = HugeReport::default();
        for policy in Policy::ALL {
            self.progress(&format!("populate: {policy}"));
            let dev = device(size, policy, None, WaitMode::Poll)?;
            let len = if per_page(policy) { self.small } else { size };
            for thr in [1, threads] {
                let (t, errors, st) = populate_dev(&dev, len, thr, false, reps)?;
                let mut m = timing("populate", "ms", &t);
                m.policy = Some(policy.name().into());
                m.threads = Some(thr);
                m.size_bytes = Some(len);
                m.faults = Some(st.faults / (reps as u64 + 1));
                m.errors = Some(errors + path_errors(&st));
                m.bug_events = Some(st.bugs);
                m.ratio = Some(m.median / native_med[&(len, thr)]);
                m.ratio_to = Some(format!("native {} thread(s)", thr));
                if policy == Policy::default() && thr == 1 {
                    populate_ratio = m.ratio.unwrap_or(0.0);
                    single_default = m.median;
                }
                out.push(m);
            }
            if policy == Policy::default() {
                self.progress(&format!("storm: {threads} threads"));
                let (t, errors, st) = populate_dev(&dev, size, threads, true, reps)?;
                let mut m = timing("storm", "ms", &t);
                m.policy = Some(policy.name().into());
                m.threads = Some(threads);
                m.size_bytes = Some(size);
                m.faults = Some(st.faults / (reps as u64 + 1));
                m.errors = Some(errors + path_errors(&st));
                m.ratio = Some(m.median / single_default);
                m.ratio_to = Some("populate 1 thread, same policy".into());
                storm_ratio = m.ratio.unwrap_or(0.0);
                out.push(m);
                // The same storm without userfaultfd: what 64 threads on
                // this machine's cores cost by themselves.
                let mut t = Vec::new();
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
                m.ratio = Some(m.median / native_med[&(size, 1)]);
                m.ratio_to = Some("native populate 1 thread".into());
                out.push(m);
                // Experiment: service threads at a higher priority than the
                // touching threads (root only; skipped otherwise).
                if renice_service(-10) > 0 {
                    self.progress("storm: service threads at nice -10");
                    let (t, errors, st) = populate_dev(&dev, size, threads, true, reps)?;
                    let mut m = timing("storm_nice", "ms", &t);
                    m.policy = Some(policy.name().into());
                    m.threads = Some(threads);
                    m.size_bytes = Some(size);
                    m.faults = Some(st.faults / (reps as u64 + 1));
                    m.errors = Some(errors + path_errors(&st));
                    m.ratio = Some(m.median / single_default);
                    m.ratio_to = Some("populate 1 thread, same policy".into());
                    out.push(m);
                    let (t, _, _) = populate_dev(&dev, size, 1, false, reps)?;
                    let mut m = timing("populate_nice", "ms", &t);
                    m.policy = Some(policy.name().into());
                    m.threads = Some(1);
                    m.size_bytes = Some(size);
                    m.ratio = Some(m.median / native_med[&(size, 1)]);
                    m.ratio_to = Some("native 1 thread(s)".into());
                    out.push(m);
                    renice_service(0);
                }
            }
            if policy == Policy::Huge {
                self.progress("huge mappings: smaps");
                huge = huge_check(&dev, &native, size)?;
            }
        }

        let hugetlb = self.hugetlb(&mut out, native_med[&(size, 1)], single_default)?;

        // Storm with 1..cores service threads.
        for n in 1..=self.cores {
            self.progress(&format!("storm: {n} service thread(s)"));
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
            out.push(m);
        }

        // Zap with M live 1 MiB mappings.
        let mut zap_per_mapping = 0.0;
        {
            let bar = size.next_power_of_two();
            let dev = device(size, Policy::default(), None, WaitMode::Poll)?;
            for count in [1, 16, 256, 1024] {
                self.progress(&format!("zap: {count} mappings"));
                let (z, r, faults) = zap(&dev, bar, count, reps, true)?;
                out.extend(zap_measurements(count, "prefault", true, &z, &r, faults));
                if count == 1024 {
                    zap_per_mapping = out[out.len() - 2].per_mapping_us.unwrap_or(0.0);
                }
            }
            self.progress("zap: 1024 unpopulated mappings");
            let (z, r, faults) = zap(&dev, bar, 1024, reps, false)?;
            out.extend(zap_measurements(1024, "prefault", false, &z, &r, faults));
            drop(dev);
            self.progress("zap: 256 mappings populated by page faults");
            let dev = device(size, Policy::Page, None, WaitMode::Poll)?;
            let (z, r, faults) = zap(&dev, bar, 256, reps.min(3), true)?;
            out.extend(zap_measurements(256, "page", true, &z, &r, faults));
        }

        // Populate vs size, for the plot.
        if let Some(path) = &self.plot {
            let series = self.size_sweep(&native)?;
            for (name, pts) in &series {
                for &(len, t) in pts {
                    out.push(Measurement {
                        name: "populate_sweep".into(),
                        policy: Some(name.clone()),
                        threads: Some(1),
                        size_bytes: Some(len),
                        unit: "ms",
                        median: t,
                        min: t,
                        max: t,
                        reps: self.reps.min(3),
                        ..Measurement::default()
                    });
                }
            }
            plot(path, &series)?;
            self.progress(&format!("wrote {}", path.display()));
        }

        let fault_ratio = fault_p50 / wakeup_us;
        let targets = vec![
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
        ];
        Ok(Report {
            populate_ratio_vs_native: populate_ratio,
            storm_ratio_vs_single: storm_ratio,
            fault_p50_us: fault_p50,
            fault_p99_us: fault_p99,
            wakeup_rtt_us: wakeup_us,
            fault_p50_ratio_vs_wakeup: fault_ratio,
            zap_us_per_mapping: zap_per_mapping,
            size_bytes: size,
            threads,
            reps,
            machine: Machine {
                cores: self.cores,
                kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            },
            targets,
            huge,
            hugetlb,
            measurements: out,
        })
    }

    /// The huge-page BAR: populate by `huge` and the default policy vs a
    /// native first touch of a hugetlbfs memfd of the same size, 1 and N
    /// threads, and smaps. `shmem_native` and `shmem_default` are the
    /// 1-thread medians of the shmem runs above, for the gains.
    fn hugetlb(
        &self,
        out: &mut Vec<Measurement>,
        shmem_native: f64,
        shmem_default: f64,
    ) -> Result<HugetlbReport, String> {
        let (threads, reps) = (self.threads, self.reps);
        let size = self.size.next_multiple_of(barmap::mm::HUGE_SIZE);
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
        self.progress("huge-page BAR: native hugetlbfs first touch");
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
            self.progress(&format!("huge-page BAR: populate, {policy}"));
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

    /// Populate time (1 thread, median) vs size, per policy and native.
    fn size_sweep(&self, native: &Native) -> Result<Series, String> {
        let reps = self.reps.min(3);
        let mut sizes: Vec<usize> = [4 * MIB, 16 * MIB, 64 * MIB, 256 * MIB]
            .into_iter()
            .filter(|&s| s < self.size)
            .collect();
        sizes.push(self.size);
        let mut series: Series = Vec::new();
        self.progress("size sweep: native");
        let mut pts = Vec::new();
        for &len in &sizes {
            pts.push((len, summarize(&populate_native(native, len, 1, reps)?.0).0));
        }
        series.push(("native".into(), pts));
        for policy in Policy::ALL {
            self.progress(&format!("size sweep: {policy}"));
            let dev = device(self.size, policy, None, WaitMode::Poll)?;
            let mut pts = Vec::new();
            for &len in sizes
                .iter()
                .filter(|&&l| !per_page(policy) || l <= 64 * MIB)
            {
                pts.push((
                    len,
                    summarize(&populate_dev(&dev, len, 1, false, reps)?.0).0,
                ));
            }
            series.push((policy.name().into(), pts));
        }
        Ok(series)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2048k"), Ok(2 << 20));
        assert_eq!(parse_size("4194304"), Ok(4 << 20));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("1K").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
