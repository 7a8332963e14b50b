//! `barmap bench`: what the fault path costs next to the kernel's own page
//! faults, measured in one run on one machine state.
//!
//! Every figure is a median over `--reps` repetitions after one warm-up, with
//! its spread (min..max). Timings on a shared machine are noisy, so the
//! figures that matter are ratios of two measurements taken in the same run:
//! populate vs a native first touch of the same memfd, a storm vs a
//! single-thread populate, a fault round trip vs a thread wake-up round trip.
//!
//! Measurements, one family per file, in the order they run ([`FAMILIES`]):
//! - `wakeup_rtt`, `fault_rtt`, `uffd_floor_rtt`, `service_idle`
//!   ([`fault_rtt`], [`wakeup`]): isolated faults (page policy, one service thread),
//!   one timed touch per page, in poll and spin mode, with spin's CPU cost;
//!   two threads ping-ponging one byte over two pipes (blocking) and over an
//!   atomic (spinning); the same isolated faults on a bare userfaultfd loop
//!   (the floor); the service's CPU while idle. The first three are
//!   interleaved in blocks so that their ratios compare figures taken under
//!   the same machine load.
//! - `populate` ([`populate`]): first touch (a read) of every page of a
//!   mapping by 1 and by N threads (contiguous slices), per policy, and
//!   `native`: the same on a plain MAP_SHARED view of a memfd without
//!   userfaultfd ([`native`]); `populate_floor`: `MADV_POPULATE_READ` of
//!   such a view, the kernel filling the page tables by itself, which
//!   every populate and storm is also stated against (`floor_ratio`). `page`, which serves one fault per page, runs
//!   at a smaller size (its ratio is to native at that size).
//! - `storm`, `storm_unlocked`, `storm_normal`, `populate_normal` ([`storm`]):
//!   N threads released at once, touching interleaved pages of one mapping,
//!   so that they fault on the same chunks together; on the default policy's
//!   populate device, in turns with the native storm and with the same storm
//!   on mappings not locked on fault.
//! - `huge` ([`huge`]): whether the `huge` policy's fills end up PMD-mapped
//!   (/proc/self/smaps), next to a native view of the same kind of memfd; on
//!   the `huge` policy's populate device.
//! - `populate_hugetlb` ([`hugetlb`]): a BAR backed by 2 MiB huge pages
//!   (`RegionSpec::huge_pages`, a hugetlbfs memfd): populate by the `huge`
//!   and default policies vs a native first touch of a hugetlbfs memfd of
//!   the same size, with the smaps evidence (`Private_Hugetlb` /
//!   `Shared_Hugetlb`). Needs free huge pages: as root the bench raises
//!   vm.nr_hugepages (saying so on stderr) and puts it back afterwards;
//!   otherwise the measurement is skipped with the reason.
//! - `service_sweep` ([`service_sweep`]): the storm with 1..cores service
//!   threads.
//! - `zap`, `zap_unpopulated`, `repopulate` ([`zap`]): memory disable with M
//!   live 1 MiB mappings, fully populated; then re-enable and repopulate.
//! - `plain_load`, `trap_load`, `trap_store`, `register_api_read`
//!   ([`trap`]): one register access of a device model through an mmap of
//!   its BAR (trapped and emulated) vs a plain load, and through the API.
//! - `memcpy_1m`, `ioat_copy_1m`, `memcpy_64k`, `ioat_copy_64k` ([`ioat`]):
//!   the I/OAT channel model's copy throughput through descriptors (GB/s,
//!   the front end's IOMMU table and in-place copy) vs a plain memcpy of
//!   the same buffers.
//! - `sock_fault`, `sock_fault_wr`, `sock_refault`, `sock_pread`,
//!   `sock_pwrite`, `sock_reg` ([`socket`]): a fault, a revocation's
//!   refault, a region access and a trapped register access of a device
//!   served across the socket, each against the same in-process, the two
//!   in turns.
//! - `populate_sweep` ([`size_sweep`], with `--plot` only): populate vs
//!   mapping size, per policy and native, drawn as an SVG ([`plot`]).
//!
//! The shared pieces: [`report`] (the JSON document, the text table, the
//! headline ratios and targets), [`hist`] (latency histograms), [`touch`]
//! (the pattern and the touching threads), [`dev`] (devices, mappings and a
//! barmap populate), [`native`] (the native memfd baseline), [`smaps`]
//! (/proc and /sys readings).
//!
//! # Adding a measurement family
//!
//! 1. Write `bench/<family>.rs` with a unit struct that implements
//!    [`Family`]: its `run` measures (say, one trapped register access vs a
//!    plain load, or a DMA engine model's memcpy vs `memcpy`) and pushes
//!    [`report::Measurement`]s to [`Results::measurements`], building them
//!    with [`report::timing`] (repeated timings) or
//!    [`hist::hist_measurement`] (a latency histogram), and setting `ratio`
//!    and `ratio_to` to the figure it is judged against, measured in the same
//!    family so that both see the same machine load. Call
//!    [`Bench::progress`] before each long step.
//! 2. Add `mod <family>;` below and one line to [`FAMILIES`] (its name for
//!    `--family`, and the struct), where it should run. The text table and the JSON `measurements` list show the new
//!    entries as they are; nothing else needs to change.
//!
//! A family that measures on the populate family's devices (already holding
//! the pattern and warmed by a populate) implements
//! [`Family::after_populate`] instead of (or as well as) `run`, as the storm
//! does. A headline figure of its own (a top-level JSON key, a summary line
//! or a target) is a field in [`report::Report`], filled from
//! [`Results`] in `Report::new`.

use std::collections::HashMap;
use std::path::PathBuf;

use barmap::{Device, Policy};

mod dev;
mod fault_rtt;
mod hist;
mod huge;
mod hugetlb;
mod ioat;
mod native;
mod plot;
mod populate;
mod report;
mod service_sweep;
mod size_sweep;
mod smaps;
mod socket;
mod storm;
mod touch;
mod trap;
mod wakeup;
mod zap;

use native::Native;
use report::{HugeReport, HugetlbReport, Measurement, Report};

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;

/// The measurement families, in the order they run, by the name
/// `--family` selects them with.
const FAMILIES: &[(&str, &dyn Family)] = &[
    ("fault_rtt", &fault_rtt::FaultRtt),
    ("populate", &populate::Populate),
    ("storm", &storm::Storm),
    ("huge", &huge::Huge),
    ("hugetlb", &hugetlb::Hugetlb),
    ("service_sweep", &service_sweep::ServiceSweep),
    ("zap", &zap::Zap),
    ("size_sweep", &size_sweep::SizeSweep),
    ("trap", &trap::Trap),
    ("ioat", &ioat::IoatCopy),
    ("socket", &socket::Socket),
];

/// One family of measurements: what it runs, and what it adds to the
/// results the report is made of.
trait Family: Sync {
    /// Runs the family's measurements, in its turn in [`FAMILIES`].
    fn run(&self, _bench: &Bench, _results: &mut Results) -> Result<(), String> {
        Ok(())
    }

    /// Measures on `dev`, the populate family's device for `policy`, right
    /// after the populate measurements on it (in the populate family's turn,
    /// for each policy, in the order of [`FAMILIES`]).
    fn after_populate(
        &self,
        _bench: &Bench,
        _results: &mut Results,
        _policy: Policy,
        _dev: &Device,
    ) -> Result<(), String> {
        Ok(())
    }
}

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
    /// Run only these families (repeatable; default: all). A family
    /// measured on another's devices (the storm on populate's) needs that
    /// one too.
    #[arg(long = "family", value_name = "NAME")]
    pub families: Vec<String>,
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

/// The run's settings, from the arguments and the machine.
struct Bench {
    size: usize,
    threads: usize,
    reps: usize,
    cores: usize,
    plot: Option<PathBuf>,
    /// The size `page` populates at (one fault per page).
    small: usize,
    /// The families to run (empty: all).
    families: Vec<String>,
}

/// What the families found so far: the measurements in the order they were
/// taken, the figures the report's headline is made of, and what later
/// families measure against.
#[derive(Default)]
struct Results {
    measurements: Vec<Measurement>,
    /// Pipe wake-up round trip, p50 (us).
    wakeup_us: f64,
    /// Isolated fault round trip (page policy, poll), p50 and p99 (us).
    fault_p50: f64,
    fault_p99: f64,
    /// The native memfd of `size` bytes, made by the populate family and
    /// kept for the families after it.
    native: Option<Native>,
    /// Native populate medians (ms) by (size, threads).
    native_med: HashMap<(usize, usize), f64>,
    /// Default policy, 1 thread: populate / native.
    populate_ratio: f64,
    /// Default policy, 1 thread: populate median (ms).
    single_default: f64,
    /// Storm / single-thread populate, default policy.
    storm_ratio: f64,
    /// Storm / the same storm on a native view, default policy.
    storm_vs_native: f64,
    /// The native storm's median, ms.
    storm_native_median: f64,
    /// Storm / the same storm on mappings not locked on fault.
    storm_lock_cost: f64,
    /// Default policy, N threads: populate / native N threads.
    populate_n_ratio: f64,
    /// `MADV_POPULATE_READ` of a native view, median (ms) by size: the
    /// floor every populate and storm is also stated against.
    floor_med: HashMap<usize, f64>,
    /// Bare userfaultfd loop round trip (poll), p50 (us).
    uffd_floor_p50: f64,
    huge: HugeReport,
    hugetlb: HugetlbReport,
    /// Zap of 1024 populated mappings, per mapping (us).
    zap_per_mapping: f64,
}

impl Results {
    /// The native memfd of `size` bytes, made by the populate family.
    fn native(&self) -> Result<&Native, String> {
        self.native
            .as_ref()
            .ok_or_else(|| "no native memfd: the populate family has not run".to_string())
    }
}

impl Bench {
    fn new(args: &BenchArgs) -> Result<Bench, String> {
        for f in &args.families {
            if !FAMILIES.iter().any(|(name, _)| name == f) {
                let known: Vec<&str> = FAMILIES.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown family {f:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
        Ok(Bench {
            size: args.size,
            threads: args.threads as usize,
            reps: args.reps as usize,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            plot: args.plot.clone(),
            small: args.size.min(64 * MIB),
            families: args.families.clone(),
        })
    }

    /// The families this run measures, in [`FAMILIES`] order.
    fn selected(&self) -> impl Iterator<Item = &'static (&'static str, &'static dyn Family)> + '_ {
        FAMILIES
            .iter()
            .filter(|(name, _)| self.families.is_empty() || self.families.iter().any(|f| f == name))
    }

    /// Whether the family called `name` runs (a target of the report is
    /// shown only if the families it is made of ran).
    fn runs(&self, name: &str) -> bool {
        self.selected().any(|(n, _)| *n == name)
    }

    /// Says on stderr what runs next.
    fn progress(&self, what: &str) {
        eprintln!("barmap bench: {what}");
    }

    fn run(&self) -> Result<Report, String> {
        let mut results = Results::default();
        for (_, family) in self.selected() {
            family.run(self, &mut results)?;
        }
        Ok(Report::new(self, results))
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
        assert_eq!(report::summarize(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(report::summarize(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
