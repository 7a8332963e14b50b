//! The scenario suite: written once against [`Target`], run against
//! barmap's emulated device (in `cargo test`) and against the kernel's
//! vfio-pci (in a QEMU guest), with the same observable results expected.
//!
//! Every touch of device memory goes through [`crate::touch`], so a SIGBUS or
//! SIGSEGV is counted, not fatal. Data checks write a pattern through the
//! region interface (pwrite on the kernel) and read it back through mappings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::target::{ErrorClass, Placement, Prot, Target, TargetMapping};
use crate::touch::{self, Fault};

const PAGE: usize = 4096;

/// One scenario of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N threads touch a fresh mapping at the same instant, many rounds:
    /// every read returns the device's data, no thread gets a signal.
    FirstTouch,
    /// 16 threads first-touch every page of a fresh mapping of the whole
    /// memory BAR, each its own contiguous slice, at the same instant; the
    /// first touch is timed and (where the target can count them) its
    /// faults counted by kind.
    WholeBar,
    /// 16 threads write every page of a whole-BAR mapping through it; the
    /// words read back through the region interface (pread on the kernel)
    /// and through a second mapping at the other placement, and words
    /// written through the second read back through the first.
    WriteThrough,
    /// Memory disabled: every touching thread gets SIGBUS and region reads
    /// fail; re-enabled: touches work and the data written before is intact.
    DisableSigbus,
    /// Memory toggled off and on in a loop under hammering threads: never a
    /// wrong value, SIGBUS only while memory is (being) disabled.
    ToggleStorm,
    /// A reset while threads fault: they wait and then succeed.
    ResetWhileFaulting,
    /// Bad mmap requests are rejected with the same class of error.
    MmapValidation,
    /// Unmapping part of a mapping keeps the rest working.
    PartialUnmap,
}

impl Scenario {
    /// Every scenario, in the order the suite runs them.
    pub const ALL: [Scenario; 8] = [
        Scenario::FirstTouch,
        Scenario::WholeBar,
        Scenario::WriteThrough,
        Scenario::DisableSigbus,
        Scenario::ToggleStorm,
        Scenario::ResetWhileFaulting,
        Scenario::MmapValidation,
        Scenario::PartialUnmap,
    ];

    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::FirstTouch => "first-touch",
            Scenario::WholeBar => "whole-bar",
            Scenario::WriteThrough => "write-through",
            Scenario::DisableSigbus => "disable-sigbus",
            Scenario::ToggleStorm => "toggle-storm",
            Scenario::ResetWhileFaulting => "reset-while-faulting",
            Scenario::MmapValidation => "mmap-validation",
            Scenario::PartialUnmap => "partial-unmap",
        }
    }

    /// Looks a scenario up by name.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the mapping's placement changes the kernel's fault path in
    /// this scenario (its mappings are at least 2 MiB): such scenarios run
    /// at both placements.
    pub fn placement_matters(self) -> bool {
        !matches!(self, Scenario::MmapValidation | Scenario::PartialUnmap)
    }

    /// The placements this scenario runs at.
    pub fn placements(self) -> &'static [Placement] {
        if self.placement_matters() {
            &Placement::BOTH
        } else {
            &Placement::BOTH[..1]
        }
    }
}

/// One scenario at one placement: what a runner runs and reports.
pub type Case = (Scenario, Placement);

/// The name of a case: `first-touch@aligned`, `first-touch@misaligned`, or
/// the bare name of a scenario whose placement does not matter.
pub fn case_name((scenario, placement): Case) -> String {
    if scenario.placement_matters() {
        format!("{}@{}", scenario.name(), placement.name())
    } else {
        scenario.name().to_string()
    }
}

/// Every case, in the order the suite runs them.
pub fn all_cases() -> Vec<Case> {
    Scenario::ALL
        .into_iter()
        .flat_map(|s| s.placements().iter().map(move |&p| (s, p)))
        .collect()
}

/// The cases a name selects: a bare scenario name selects it at every
/// placement, `NAME@aligned` or `NAME@misaligned` one.
pub fn select_cases(name: &str) -> Option<Vec<Case>> {
    let (base, placement) = match name.split_once('@') {
        Some((b, p)) => (b, Some(p)),
        None => (name, None),
    };
    let s = Scenario::from_name(base)?;
    match placement {
        None => Some(s.placements().iter().map(|&p| (s, p)).collect()),
        Some(p) => {
            let p = *s.placements().iter().find(|x| x.name() == p)?;
            Some(vec![(s, p)])
        }
    }
}

/// The case with exactly this name ([`case_name`]).
pub fn parse_case(name: &str) -> Option<Case> {
    all_cases().into_iter().find(|&c| case_name(c) == name)
}

/// Counts the target's faults by kind (the guest counts the kernel's
/// vfio-pci fault handlers with kprobes; barmap has its own counters).
pub trait FaultProbe: Send + Sync {
    /// Starts (or stops) counting; counting may cost time, so timed rounds
    /// run without it.
    fn enable(&self, on: bool);
    /// The counts so far, by kind.
    fn counts(&self) -> BTreeMap<String, u64>;
}

/// Threads of the whole-BAR scenarios.
pub const WHOLE_BAR_THREADS: usize = 16;

/// Called with the 1-based round number as each round starts.
pub type RoundHook = Arc<dyn Fn(usize) + Send + Sync>;

/// Knobs of a run.
#[derive(Clone)]
pub struct Options {
    /// Rounds (fresh mappings for first-touch, toggles for toggle-storm).
    pub rounds: usize,
    /// Touching threads.
    pub threads: usize,
    /// Length of the mappings, bytes (clipped to the memory region).
    pub map_len: usize,
    /// A scenario that runs longer than this is reported as a hang.
    pub watchdog: Duration,
    /// Announces each round (first-touch and reset rounds, toggles), so
    /// that a runner can place a kernel failure in its round.
    pub on_round: Option<RoundHook>,
    /// Where mappings are placed.
    pub placement: Placement,
    /// Counts faults in the first round of whole-bar, if the target can.
    pub fault_probe: Option<Arc<dyn FaultProbe>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("rounds", &self.rounds)
            .field("threads", &self.threads)
            .field("map_len", &self.map_len)
            .field("watchdog", &self.watchdog)
            .field("on_round", &self.on_round.is_some())
            .field("placement", &self.placement)
            .field("fault_probe", &self.fault_probe.is_some())
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rounds: 20,
            threads: 8,
            map_len: 2 << 20,
            watchdog: Duration::from_secs(60),
            on_round: None,
            placement: Placement::Aligned,
            fault_probe: None,
        }
    }
}

/// What one scenario saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Target name.
    pub target: String,
    /// Whether every check held (a skipped scenario passes).
    pub passed: bool,
    /// The target cannot run it (e.g. no reset support); the reason.
    pub skipped: Option<String>,
    /// Rounds run.
    pub rounds: usize,
    /// Touches of device memory.
    pub touches: u64,
    /// Touches answered with SIGBUS.
    pub sigbus: u64,
    /// Touches answered with SIGSEGV.
    pub sigsegv: u64,
    /// Reads that returned something other than the device's data.
    pub wrong_values: u64,
    /// Wall time.
    pub elapsed_ms: f64,
    /// What went wrong (at most 16 lines).
    pub errors: Vec<String>,
    /// Where the mappings were placed (scenarios where it matters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// whole-bar: the first touch of the whole BAR, ms (the median of the
    /// rounds that ran without fault counting, else the counted round).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_touch_ms: Option<f64>,
    /// whole-bar: the first touch of the round whose faults were counted, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_first_touch_ms: Option<f64>,
    /// whole-bar: faults by kind during one whole-BAR first touch.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub faults: BTreeMap<String, u64>,
    /// Pages of the mapping (whole-bar, write-through).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages: Option<u64>,
}

/// Shared tallies of a run.
#[derive(Default)]
struct Tally {
    touches: AtomicU64,
    sigbus: AtomicU64,
    sigsegv: AtomicU64,
    wrong: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, msg: impl Into<String>) {
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() < 16 {
            e.push(msg.into());
        }
    }

    /// Touches `addr`: counts it and its signal; returns the value or fault.
    fn read(&self, addr: usize) -> Result<u64, Fault> {
        self.touches.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `addr` is 8-byte aligned inside a live device mapping (or a
        // hole the scenario cut on purpose); the touch recovers any fault.
        let r = unsafe { touch::read_u64(addr as *const u64) };
        match r {
            Err(Fault::Sigbus) => self.sigbus.fetch_add(1, Ordering::Relaxed),
            Err(Fault::Sigsegv) => self.sigsegv.fetch_add(1, Ordering::Relaxed),
            Ok(_) => 0,
        };
        r
    }

    /// Stores `value` at `addr` through the mapping; a signal is a failure.
    fn write(&self, addr: usize, value: u64, what: &str) {
        self.touches.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `read`: an aligned word of a live writable mapping;
        // the accessor recovers any fault.
        match unsafe { touch::write_u64(addr as *mut u64, value) } {
            Ok(()) => {}
            Err(f) => {
                match f {
                    Fault::Sigbus => self.sigbus.fetch_add(1, Ordering::Relaxed),
                    Fault::Sigsegv => self.sigsegv.fetch_add(1, Ordering::Relaxed),
                };
                self.fail(format!("{what}: unexpected {f:?} at {addr:#x}"));
            }
        }
    }

    /// Touches `addr` and checks it holds `expect`; a signal is a failure.
    fn expect(&self, addr: usize, expect: u64, what: &str) {
        match self.read(addr) {
            Ok(v) if v == expect => {}
            Ok(v) => {
                self.wrong.fetch_add(1, Ordering::Relaxed);
                self.fail(format!(
                    "{what}: read {v:#x} at {addr:#x}, expected {expect:#x}"
                ));
            }
            Err(f) => self.fail(format!("{what}: unexpected {f:?} at {addr:#x}")),
        }
    }
}

/// The value the suite stores in the first word of page `page` in round `round`.
pub fn pattern(round: usize, page: usize) -> u64 {
    0xba2e_0000_0000_0000 ^ ((round as u64) << 32) ^ page as u64
}

/// Runs `scenario` on `target` under a watchdog: a scenario still running
/// after `options.watchdog` is reported as a hang (its threads are left
/// behind; the caller should exit the process).
pub fn run<T: Target + 'static>(target: Arc<T>, scenario: Scenario, options: &Options) -> Report {
    let (tx, rx) = mpsc::channel();
    let opts = options.clone();
    let name = target.name();
    let t = target.clone();
    std::thread::Builder::new()
        .name(format!("scenario-{}", scenario.name()))
        .spawn(move || {
            let _ = tx.send(run_here(&*t, scenario, &opts));
        })
        .expect("spawn scenario thread");
    match rx.recv_timeout(options.watchdog) {
        Ok(report) => report,
        Err(_) => Report {
            scenario: case_name((scenario, options.placement)),
            target: name,
            passed: false,
            errors: vec![format!(
                "hang: still running after {:?} (a fault was never answered?)",
                options.watchdog
            )],
            ..Report::default()
        },
    }
}

/// Runs `scenario` on `target` on the calling thread (no watchdog).
pub fn run_here<T: Target>(target: &T, scenario: Scenario, options: &Options) -> Report {
    let tally = Tally::default();
    let started = Instant::now();
    let layout = target.layout();
    let map_len = options.map_len.min(layout.memory_size as usize).max(PAGE) & !(PAGE - 1);
    let ctx = Ctx {
        target,
        tally: &tally,
        options,
        region: layout.memory_region,
        map_len,
    };
    let mut rounds = options.rounds;
    let mut whole = WholeBar::default();
    let skipped = match scenario {
        Scenario::FirstTouch => ctx.first_touch().err(),
        Scenario::WholeBar => ctx.whole_bar(&mut whole).err(),
        Scenario::WriteThrough => {
            rounds = 1;
            ctx.write_through().err()
        }
        Scenario::DisableSigbus => {
            rounds = 1;
            ctx.disable_sigbus().err()
        }
        Scenario::ToggleStorm => ctx.toggle_storm().err(),
        Scenario::ResetWhileFaulting => ctx.reset_while_faulting().err(),
        Scenario::MmapValidation => {
            rounds = 1;
            ctx.mmap_validation().err()
        }
        Scenario::PartialUnmap => {
            rounds = 1;
            ctx.partial_unmap().err()
        }
    };
    // Leave the device usable for the next scenario whatever happened.
    if let Err(e) = target.set_memory_enabled(true) {
        tally.fail(format!("re-enabling memory after the scenario: {e}"));
    }
    let errors = tally.errors.into_inner().unwrap_or_else(|e| e.into_inner());
    Report {
        scenario: case_name((scenario, options.placement)),
        target: target.name(),
        passed: errors.is_empty(),
        skipped,
        rounds,
        touches: tally.touches.into_inner(),
        sigbus: tally.sigbus.into_inner(),
        sigsegv: tally.sigsegv.into_inner(),
        wrong_values: tally.wrong.into_inner(),
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        errors,
        placement: scenario.placement_matters().then_some(options.placement),
        first_touch_ms: whole.first_touch_ms,
        counted_first_touch_ms: whole.counted_ms,
        faults: whole.faults,
        pages: whole.pages,
    }
}

/// What whole-bar and write-through measure.
#[derive(Default)]
struct WholeBar {
    first_touch_ms: Option<f64>,
    counted_ms: Option<f64>,
    faults: BTreeMap<String, u64>,
    pages: Option<u64>,
}

/// The median of `v` (None if empty).
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

struct Ctx<'a, T: Target> {
    target: &'a T,
    tally: &'a Tally,
    options: &'a Options,
    region: u32,
    map_len: usize,
}

/// Err(reason) means "skipped"; failures go to the tally.
type Outcome = Result<(), String>;

impl<T: Target> Ctx<'_, T> {
    fn round(&self, round: usize) {
        if let Some(hook) = &self.options.on_round {
            hook(round + 1);
        }
    }

    fn pages(&self) -> usize {
        self.map_len / PAGE
    }

    /// Writes `pattern(round, page)` into the first word of every page of
    /// the mapping's length.
    fn write_pattern(&self, round: usize) -> bool {
        self.write_pattern_pages(round, self.pages())
    }

    /// Writes `pattern(round, page)` into the first word of pages
    /// `0..pages` of the region.
    fn write_pattern_pages(&self, round: usize, pages: usize) -> bool {
        for page in 0..pages {
            let v = pattern(round, page).to_le_bytes();
            if let Err(e) = self
                .target
                .write_region(self.region, (page * PAGE) as u64, &v)
            {
                self.tally.fail(format!("region write: {e}"));
                return false;
            }
        }
        true
    }

    fn map(&self) -> Option<T::Mapping> {
        self.map_len_at(self.map_len, self.options.placement)
    }

    fn map_len_at(&self, len: usize, placement: Placement) -> Option<T::Mapping> {
        match self
            .target
            .map_placed(self.region, 0, len, Prot::ReadWrite, placement)
        {
            Ok(m) => Some(m),
            Err(e) => {
                self.tally.fail(format!("mmap: {e}"));
                None
            }
        }
    }

    /// Pages thread `t` of `n` touches: every n-th, at most 64.
    fn pages_of(&self, t: usize, n: usize) -> impl Iterator<Item = usize> {
        (t..self.pages()).step_by(n).take(64)
    }

    fn first_touch(&self) -> Outcome {
        let n = self.options.threads;
        for round in 0..self.options.rounds {
            self.round(round);
            if !self.write_pattern(round) {
                return Ok(());
            }
            let Some(m) = self.map() else { return Ok(()) };
            let barrier = Barrier::new(n);
            std::thread::scope(|s| {
                for t in 0..n {
                    let (m, barrier) = (&m, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        // Everyone first hits the same page, then its own.
                        self.tally
                            .expect(m.addr(), pattern(round, 0), "first touch");
                        for page in self.pages_of(t, n) {
                            self.tally.expect(
                                m.addr() + page * PAGE,
                                pattern(round, page),
                                "first touch",
                            );
                        }
                    });
                }
            });
        }
        Ok(())
    }

    /// The whole memory BAR, in bytes (whole pages).
    fn bar_len(&self) -> usize {
        (self.target.layout().memory_size as usize) & !(PAGE - 1)
    }

    /// Writes `pattern(round, page)` into every page of the whole BAR.
    fn write_bar_pattern(&self, round: usize) -> bool {
        self.write_pattern_pages(round, self.bar_len() / PAGE)
    }

    fn whole_bar(&self, out: &mut WholeBar) -> Outcome {
        let len = self.bar_len();
        let pages = len / PAGE;
        if pages < WHOLE_BAR_THREADS {
            return Err("memory region smaller than 16 pages".into());
        }
        out.pages = Some(pages as u64);
        if !self.write_bar_pattern(7) {
            return Ok(());
        }
        let n = WHOLE_BAR_THREADS;
        let per = pages.div_ceil(n);
        let mut timed = Vec::new();
        for round in 0..self.options.rounds.max(1) {
            self.round(round);
            let Some(m) = self.map_len_at(len, self.options.placement) else {
                return Ok(());
            };
            // The first round counts faults (where the target can).
            let probe = self.options.fault_probe.as_ref().filter(|_| round == 0);
            let before = probe.map(|p| {
                p.enable(true);
                p.counts()
            });
            let barrier = Barrier::new(n + 1);
            let mut start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..n {
                    let (m, barrier) = (&m, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        for page in (t * per..((t + 1) * per).min(pages)).rev() {
                            self.tally.expect(
                                m.addr() + page * PAGE,
                                pattern(7, page),
                                "whole-BAR first touch",
                            );
                        }
                    });
                }
                barrier.wait();
                start = Instant::now();
            });
            let ms = start.elapsed().as_secs_f64() * 1e3;
            match (probe, before) {
                (Some(p), Some(before)) => {
                    let after = p.counts();
                    p.enable(false);
                    out.faults = after
                        .into_iter()
                        .map(|(k, v)| {
                            let b = before.get(&k).copied().unwrap_or(0);
                            (k, v.saturating_sub(b))
                        })
                        .collect();
                    out.counted_ms = Some(ms);
                }
                _ => timed.push(ms),
            }
        }
        out.first_touch_ms = median(timed).or(out.counted_ms);
        Ok(())
    }

    /// The word write-through stores at word `word` of page `page`.
    fn written(page: usize, word: usize) -> u64 {
        0x57e1_7e00_0000_0000 ^ ((word as u64) << 40) ^ page as u64
    }

    fn write_through(&self) -> Outcome {
        let len = self.bar_len();
        let pages = len / PAGE;
        if pages < WHOLE_BAR_THREADS {
            return Err("memory region smaller than 16 pages".into());
        }
        let placement = self.options.placement;
        let Some(a) = self.map_len_at(len, placement) else {
            return Ok(());
        };
        let n = WHOLE_BAR_THREADS;
        let per = pages.div_ceil(n);
        let barrier = Barrier::new(n);
        std::thread::scope(|s| {
            for t in 0..n {
                let (a, barrier) = (&a, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for page in t * per..((t + 1) * per).min(pages) {
                        self.tally
                            .write(a.addr() + page * PAGE, Self::written(page, 0), "write");
                    }
                });
            }
        });
        let mut pread_wrong = 0u64;
        let mut buf = [0u8; 8];
        for page in 0..pages {
            match self
                .target
                .read_region(self.region, (page * PAGE) as u64, &mut buf)
            {
                Ok(()) if u64::from_le_bytes(buf) == Self::written(page, 0) => {}
                Ok(()) => {
                    pread_wrong += 1;
                    if pread_wrong <= 4 {
                        self.tally.fail(format!(
                            "pread of page {page} after a write through the mapping: {:#x}, \
                             expected {:#x}",
                            u64::from_le_bytes(buf),
                            Self::written(page, 0)
                        ));
                    }
                }
                Err(e) => {
                    self.tally.fail(format!("pread of page {page}: {e}"));
                    break;
                }
            }
        }
        self.tally.wrong.fetch_add(pread_wrong, Ordering::Relaxed);
        // A second mapping, at the other placement, sees what was written,
        // and what it writes is seen through the first and by pread.
        let Some(b) = self.map_len_at(len, placement.other()) else {
            return Ok(());
        };
        for page in 0..pages {
            self.tally.expect(
                b.addr() + page * PAGE,
                Self::written(page, 0),
                "read through a second mapping",
            );
            self.tally
                .write(b.addr() + page * PAGE + 8, Self::written(page, 1), "write");
        }
        for page in 0..pages {
            self.tally.expect(
                a.addr() + page * PAGE + 8,
                Self::written(page, 1),
                "read through the first mapping",
            );
        }
        for page in (0..pages).step_by(97) {
            match self
                .target
                .read_region(self.region, (page * PAGE + 8) as u64, &mut buf)
            {
                Ok(()) if u64::from_le_bytes(buf) == Self::written(page, 1) => {}
                other => {
                    self.tally.wrong.fetch_add(1, Ordering::Relaxed);
                    self.tally.fail(format!(
                        "pread of page {page} word 1 after a write through the second \
                         mapping: {other:?} {:#x}",
                        u64::from_le_bytes(buf)
                    ));
                }
            }
        }
        Ok(())
    }

    fn disable_sigbus(&self) -> Outcome {
        let n = self.options.threads;
        if !self.write_pattern(1) {
            return Ok(());
        }
        let Some(m) = self.map() else { return Ok(()) };
        for page in 0..self.pages() {
            self.tally
                .expect(m.addr() + page * PAGE, pattern(1, page), "before disable");
        }
        if let Err(e) = self.target.set_memory_enabled(false) {
            self.tally.fail(format!("disable: {e}"));
            return Ok(());
        }
        let barrier = Barrier::new(n);
        std::thread::scope(|s| {
            for t in 0..n {
                let (m, barrier) = (&m, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for page in self.pages_of(t, n) {
                        match self.tally.read(m.addr() + page * PAGE) {
                            Err(Fault::Sigbus) => {}
                            other => self
                                .tally
                                .fail(format!("touch while disabled: {other:?}, expected SIGBUS")),
                        }
                    }
                });
            }
        });
        let mut buf = [0u8; 8];
        match self.target.read_region(self.region, 0, &mut buf) {
            Err(e) if e.class == ErrorClass::MemoryDisabled => {}
            other => self.tally.fail(format!(
                "region read while disabled: {other:?}, expected MemoryDisabled"
            )),
        }
        if let Err(e) = self.target.set_memory_enabled(true) {
            self.tally.fail(format!("enable: {e}"));
            return Ok(());
        }
        for page in 0..self.pages() {
            self.tally
                .expect(m.addr() + page * PAGE, pattern(1, page), "after re-enable");
        }
        match self.target.read_region(self.region, 0, &mut buf) {
            Ok(()) if u64::from_le_bytes(buf) == pattern(1, 0) => {}
            other => self
                .tally
                .fail(format!("region read after enable: {other:?} {buf:?}")),
        }
        Ok(())
    }

    fn toggle_storm(&self) -> Outcome {
        let n = self.options.threads;
        if !self.write_pattern(2) {
            return Ok(());
        }
        let Some(m) = self.map() else { return Ok(()) };
        // seq is even while memory is enabled and stable; the toggler makes
        // it odd before disabling and even again after enabling. A SIGBUS
        // seen with the same even seq before and after the touch happened
        // while memory was enabled: a bug.
        let seq = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..n {
                let (m, seq, stop) = (&m, &seq, &stop);
                s.spawn(move || {
                    let pages: Vec<usize> = self.pages_of(t, n).collect();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let page = pages[i % pages.len()];
                        i += 1;
                        let before = seq.load(Ordering::SeqCst);
                        let r = self.tally.read(m.addr() + page * PAGE);
                        let after = seq.load(Ordering::SeqCst);
                        match r {
                            Ok(v) if v == pattern(2, page) => {}
                            Ok(v) => {
                                self.tally.wrong.fetch_add(1, Ordering::Relaxed);
                                self.tally
                                    .fail(format!("toggle storm: read {v:#x} on page {page}"));
                            }
                            Err(Fault::Sigbus) if before == after && before % 2 == 0 => self
                                .tally
                                .fail(format!("SIGBUS while enabled (seq {before})")),
                            Err(Fault::Sigbus) => {}
                            Err(f) => self.tally.fail(format!("toggle storm: {f:?}")),
                        }
                    }
                });
            }
            for round in 0..self.options.rounds {
                self.round(round);
                seq.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = self.target.set_memory_enabled(false) {
                    self.tally.fail(format!("disable: {e}"));
                }
                std::thread::sleep(Duration::from_micros(500));
                if let Err(e) = self.target.set_memory_enabled(true) {
                    self.tally.fail(format!("enable: {e}"));
                }
                seq.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(500));
            }
            stop.store(true, Ordering::Relaxed);
        });
        Ok(())
    }

    fn reset_while_faulting(&self) -> Outcome {
        let n = self.options.threads;
        if !self.write_pattern(3) {
            return Ok(());
        }
        for round in 0..self.options.rounds {
            self.round(round);
            let Some(m) = self.map() else { return Ok(()) };
            let barrier = Barrier::new(n + 1);
            let mut unsupported = None;
            std::thread::scope(|s| {
                for t in 0..n {
                    let (m, barrier) = (&m, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        for page in self.pages_of(t, n) {
                            self.tally.expect(
                                m.addr() + page * PAGE,
                                pattern(3, page),
                                "during reset",
                            );
                        }
                    });
                }
                barrier.wait();
                match self.target.reset() {
                    Ok(()) => {}
                    Err(e) if e.class == ErrorClass::Unsupported => unsupported = Some(e.detail),
                    Err(e) => self.tally.fail(format!("reset: {e}")),
                }
            });
            if let Some(why) = unsupported {
                return Err(format!("reset unsupported: {why}"));
            }
            // After the reset, touches work and data is intact.
            for page in self.pages_of(0, 1) {
                self.tally
                    .expect(m.addr() + page * PAGE, pattern(3, page), "after reset");
            }
        }
        Ok(())
    }

    fn mmap_validation(&self) -> Outcome {
        let layout = self.target.layout();
        let size = layout.memory_size;
        let mut cases: Vec<(&str, u32, u64, usize)> = vec![
            ("zero length", self.region, 0, 0),
            ("past the end", self.region, size, PAGE),
            (
                "straddling the end",
                self.region,
                size - PAGE as u64,
                2 * PAGE,
            ),
            ("missing region", layout.missing_region, 0, PAGE),
        ];
        if let Some(r) = layout.unmappable_region {
            cases.push(("unmappable region", r, 0, PAGE));
        }
        for (what, region, offset, len) in cases {
            match self.target.map(region, offset, len, Prot::ReadWrite) {
                Err(e) if e.class == ErrorClass::InvalidArgument => {}
                Err(e) => self
                    .tally
                    .fail(format!("{what}: {e}, expected InvalidArgument")),
                Ok(m) => self
                    .tally
                    .fail(format!("{what}: mapped at {:#x}", m.addr())),
            }
        }
        // The target is still fine after the rejections.
        if self.write_pattern(4) {
            if let Some(m) = self.map() {
                self.tally
                    .expect(m.addr(), pattern(4, 0), "after rejected mmaps");
            }
        }
        Ok(())
    }

    fn partial_unmap(&self) -> Outcome {
        if self.pages() < 16 {
            return Err("memory region smaller than 16 pages".into());
        }
        if !self.write_pattern(5) {
            return Ok(());
        }
        let len = 16 * PAGE;
        let mut m = match self.target.map(self.region, 0, len, Prot::ReadWrite) {
            Ok(m) => m,
            Err(e) => {
                self.tally.fail(format!("mmap: {e}"));
                return Ok(());
            }
        };
        for page in 0..16 {
            self.tally
                .expect(m.addr() + page * PAGE, pattern(5, page), "before unmap");
        }
        if let Err(e) = m.unmap_range(4 * PAGE, 4 * PAGE) {
            self.tally.fail(format!("partial unmap: {e}"));
            return Ok(());
        }
        let kept = || (0..4).chain(8..16);
        for page in kept() {
            self.tally.expect(
                m.addr() + page * PAGE,
                pattern(5, page),
                "after partial unmap",
            );
        }
        let hole = m.addr() + 5 * PAGE;
        match self.tally.read(hole) {
            Err(Fault::Sigsegv) => {}
            Ok(v) if v == pattern(5, 5) => self
                .tally
                .fail("touch of the hole still reads the device's data".to_string()),
            // Another thread of this process may have mapped the freed
            // addresses since; only an unexplained answer is a failure.
            other if !address_mapped(hole) => self
                .tally
                .fail(format!("touch of the hole: {other:?}, expected SIGSEGV")),
            _ => {}
        }
        // The rest is still tracked: disable revokes it, enable restores it.
        let _ = self.target.set_memory_enabled(false);
        for page in kept() {
            match self.tally.read(m.addr() + page * PAGE) {
                Err(Fault::Sigbus) => {}
                other => self
                    .tally
                    .fail(format!("disabled after partial unmap: {other:?}")),
            }
        }
        let _ = self.target.set_memory_enabled(true);
        for page in kept() {
            self.tally.expect(
                m.addr() + page * PAGE,
                pattern(5, page),
                "re-enabled after partial unmap",
            );
        }
        Ok(())
    }
}

/// Whether anything is mapped at `addr` in this process (/proc/self/maps).
fn address_mapped(addr: usize) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.split_once('-'))
        .filter_map(|(a, b)| {
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .any(|(a, b)| (a..b).contains(&addr))
}

/// Runs every scenario in `which` and returns their reports.
pub fn run_all<T: Target + 'static>(
    target: Arc<T>,
    which: &[Scenario],
    options: &Options,
) -> Vec<Report> {
    which
        .iter()
        .map(|&s| run(target.clone(), s, options))
        .collect()
}
