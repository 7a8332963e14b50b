//! Scenarios for the model checker, and the runner behind `barmap check`.
//!
//! Each scenario is a small program of 2-4 shuttle threads (touchers, fault
//! service threads, a thread that disables, enables, resets or unmaps) over
//! the shipped fault path ([`super::fault::Core`]) and the simulated MM.
//! Invariants are asserted where cheap during the run and at the end:
//! - no BUG (a remap over a present page);
//! - after a disable returns, no page of any mapping is present;
//! - after an enable returns, a new touch never gets SIGBUS;
//! - every value read is the device's value;
//! - the tracking list holds only live, filled mappings, each once;
//! - no deadlock, and every fault is answered (shuttle's deadlock detector:
//!   a toucher never woken leaves every thread blocked);
//! - past the memory limit a touch gets SIGBUS, counted, and only a touch
//!   whose fill would pass the limit does.

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use super::fault::{Core, CoreConfig, MapEntry};
use super::sim::{device_value, SimMm, Touch};
use super::sync::{thread, Arc};
use crate::mm::{MapId, MapInfo, SpaceId, PAGE_SIZE};
use crate::policy::{Mutation, Policy};

/// A model-checking scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckScenario {
    /// The seed: three threads touch one fresh mapping at once.
    Seed,
    /// A fault races a memory disable.
    FaultVsDisable,
    /// A fault races a memory enable.
    FaultVsEnable,
    /// A fault races a reset.
    FaultVsReset,
    /// A fault races a partial unmap, and the address is reused.
    FaultVsUnmap,
    /// The first fill fails (injected) while another fault waits.
    FailedFill,
    /// Two service threads serve faults on one mapping.
    TwoServices,
    /// Device memory is at its limit: touches of committed memory get
    /// their values, a touch that would commit more gets SIGBUS, while
    /// memory is disabled and enabled meanwhile.
    PastTheLimit,
}

impl CheckScenario {
    /// Every scenario.
    pub const ALL: [CheckScenario; 8] = [
        CheckScenario::Seed,
        CheckScenario::FaultVsDisable,
        CheckScenario::FaultVsEnable,
        CheckScenario::FaultVsReset,
        CheckScenario::FaultVsUnmap,
        CheckScenario::FailedFill,
        CheckScenario::TwoServices,
        CheckScenario::PastTheLimit,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            CheckScenario::Seed => "seed",
            CheckScenario::FaultVsDisable => "fault-vs-disable",
            CheckScenario::FaultVsEnable => "fault-vs-enable",
            CheckScenario::FaultVsReset => "fault-vs-reset",
            CheckScenario::FaultVsUnmap => "fault-vs-unmap",
            CheckScenario::FailedFill => "failed-fill",
            CheckScenario::TwoServices => "two-services",
            CheckScenario::PastTheLimit => "past-the-limit",
        }
    }

    /// Looks a scenario up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Which shuttle scheduler explores the schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Uniformly random choices at every step.
    Random,
    /// Probabilistic concurrency testing with bug depth 3.
    Pct,
}

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Policy under test.
    pub policy: Policy,
    /// Scenarios to run.
    pub scenarios: Vec<CheckScenario>,
    /// Schedules per scenario.
    pub iterations: usize,
    /// Seed of the scheduler's randomness.
    pub seed: u64,
    /// Scheduler.
    pub scheduler: Scheduler,
    /// A deliberate bug (self-test of the checker).
    pub mutation: Option<Mutation>,
}

/// A failed invariant, with what is needed to see and replay it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Violation {
    /// Scenario name.
    pub scenario: String,
    /// Which invariant (`bug`, `present-after-disable`, `sigbus-after-enable`,
    /// `wrong-value`, `stale-tracking`, `registry`, `deadlock`, `panic`).
    pub kind: String,
    /// Scheduler seed of the run that found it.
    pub seed: u64,
    /// Schedules explored in that scenario up to and including the failure.
    pub schedules: usize,
    /// The failing schedule, as shuttle encodes it (for `--replay`).
    pub schedule: String,
    /// The failing run's trace: thread, step, page state.
    pub trace: Vec<String>,
    /// The assertion's message.
    pub message: String,
}

/// The result of a check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    /// Policy under test.
    pub policy: Policy,
    /// Scenarios run.
    pub scenarios: Vec<String>,
    /// Schedules explored in all.
    pub schedules: usize,
    /// Violations found (at most one per scenario: a scenario stops at its
    /// first).
    pub violations: Vec<Violation>,
    /// Wall time.
    pub elapsed_ms: f64,
}

struct World {
    core: Core<SimMm>,
}

const MAP_PAGES: usize = 4;
/// Pages of the region resident before a scenario starts.
const RESIDENT_PAGES: usize = 3;

impl World {
    fn new(policy: Policy, mutation: Option<Mutation>) -> Arc<World> {
        let sim = SimMm::new(mutation);
        // Device memory is committed on demand: the region's first three
        // pages hold data already, the rest is a hole until a fill commits
        // it, so `prefault`'s walk both maps committed memory and skips a
        // hole (left to its own fault).
        sim.make_resident(2, 0..RESIDENT_PAGES as u64 * PAGE_SIZE as u64);
        Arc::new(World {
            core: Core::new(
                sim,
                CoreConfig {
                    populate: false,
                    policy,
                    chunk: 2 * PAGE_SIZE,
                    mutation,
                },
            ),
        })
    }

    fn sim(&self) -> &SimMm {
        self.core.mm()
    }

    /// Maps `pages` pages of the region at `offset`.
    fn map(&self, pages: usize, offset: u64) -> std::sync::Arc<MapEntry> {
        self.map_announced(pages, offset, |_| {})
    }

    /// Maps, calling `announce` with the mapping's address range after the
    /// address is reserved and before faults on it can be served.
    fn map_announced(
        &self,
        pages: usize,
        offset: u64,
        announce: impl FnOnce(&MapInfo),
    ) -> std::sync::Arc<MapEntry> {
        let len = pages * PAGE_SIZE;
        let start = self.sim().mmap(len);
        let info = MapInfo {
            id: MapId(0),
            space: SpaceId::LOCAL,
            start,
            len,
            region: 2,
            offset,
            writable: true,
            page_size: PAGE_SIZE,
        };
        announce(&info);
        let entry = self.core.register(MapInfo {
            id: MapId(0),
            space: SpaceId::LOCAL,
            start,
            len,
            region: 2,
            offset,
            writable: true,
            page_size: PAGE_SIZE,
        });
        self.sim().publish(start);
        to_std_arc(entry)
    }

    /// Touches and checks the value; returns what the touch saw.
    fn touch(&self, entry: &MapEntry, page: usize) -> Touch {
        self.touch_either(entry, page, &Default::default())
    }

    /// Touches page `page` of `entry`, which may meanwhile have been
    /// unmapped and replaced by `other` at the same address: the value must
    /// be one of the two mappings' device words.
    fn touch_either(
        &self,
        entry: &MapEntry,
        page: usize,
        other: &std::sync::Mutex<Option<MapInfo>>,
    ) -> Touch {
        let addr = entry.info().start + page * PAGE_SIZE;
        let t = self.sim().touch(SpaceId::LOCAL, addr, tid());
        if let Touch::Value(v) = t {
            let expect = device_value(entry.info().offset_of(addr));
            let other = other.lock().unwrap().clone();
            let alt = other
                .filter(|o| (o.start..o.end()).contains(&addr))
                .map(|o| device_value(o.offset_of(addr)));
            if v != expect && Some(v) != alt {
                self.fail(
                    "wrong-value",
                    format!("read {v:#x} at {addr:#x}, device holds {expect:#x}"),
                );
            }
        }
        t
    }

    fn fail(&self, kind: &str, message: String) -> ! {
        let trace = self.sim().trace().join("\n    ");
        panic!("violation[{kind}]: {message}\n  trace:\n    {trace}");
    }

    fn disable(&self) {
        self.sim().note("COMMAND.MEM := 0 (gate write, zap all)");
        self.core.set_memory_enabled(false);
        for e in self.core.mappings() {
            let present = self.sim().present_in(e.info().start..e.info().end());
            if !present.is_empty() {
                self.fail(
                    "present-after-disable",
                    format!(
                        "{} still has present pages {present:#x?} after the disable returned",
                        e.info().id
                    ),
                );
            }
        }
    }

    fn enable(&self) {
        self.sim()
            .note("COMMAND.MEM := 1 (gate write, clear poison)");
        self.core.set_memory_enabled(true);
    }

    /// Stops the service threads once the touchers are done, then checks
    /// the end state.
    fn finish(&self, services: Vec<thread::JoinHandle<()>>, expect_live: &[MapId]) {
        self.sim().stop();
        for s in services {
            s.join().expect("service thread");
        }
        let bugs = self.sim().violations();
        if let Some(b) = bugs.first() {
            self.fail("bug", b.clone());
        }
        let mut live: Vec<MapId> = self.core.mappings().iter().map(|e| e.info().id).collect();
        live.sort();
        let mut want = expect_live.to_vec();
        want.sort();
        if live != want {
            self.fail(
                "registry",
                format!("registry holds {live:?}, live mappings are {want:?}"),
            );
        }
        self.check_tracking();
        // Unmap everything: the tracking list must end empty.
        for e in self.core.mappings() {
            for part in e.live_ranges() {
                let _ = self.core.unmap(&from_std_arc(&e), part);
            }
        }
        let left = self.core.tracked();
        if !left.is_empty() {
            self.fail(
                "stale-tracking",
                format!("tracking list holds {left:?} after every mapping was unmapped"),
            );
        }
    }

    /// Every tracked mapping is live, recorded once, and fully present.
    fn check_tracking(&self) {
        let tracked = self.core.tracked();
        let maps = self.core.mappings();
        for (i, id) in tracked.iter().enumerate() {
            if tracked[..i].contains(id) {
                self.fail(
                    "stale-tracking",
                    format!("{id} is recorded twice: {tracked:?}"),
                );
            }
            let Some(e) = maps.iter().find(|e| e.info().id == *id) else {
                self.fail(
                    "stale-tracking",
                    format!("{id} is recorded but no longer mapped"),
                );
            };
            for part in e.live_ranges() {
                let present = self.sim().present_in(part.clone()).len();
                if present != (part.end - part.start) / PAGE_SIZE {
                    self.fail(
                        "stale-tracking",
                        format!("{id} is recorded as filled but only {present} pages of {part:#x?} are present"),
                    );
                }
            }
        }
    }
}

// The model build's Arc is shuttle's re-export of std's; these keep the
// harness explicit about it.
fn to_std_arc(a: Arc<MapEntry>) -> std::sync::Arc<MapEntry> {
    a
}
fn from_std_arc(a: &std::sync::Arc<MapEntry>) -> Arc<MapEntry> {
    a.clone()
}

fn tid() -> u32 {
    let name = thread::current()
        .name()
        .map(str::to_string)
        .unwrap_or_default();
    name.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .expect("spawn")
}

fn services(w: &Arc<World>, n: usize) -> Vec<thread::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let w = w.clone();
            spawn(&format!("svc{i}"), move || {
                while let Some(f) = w.sim().next_fault() {
                    let a = w.core.handle_fault(&f);
                    w.sim()
                        .note(format!("served fault at {:#x}: {a:?}", f.addr));
                }
            })
        })
        .collect()
}

fn toucher(
    w: &Arc<World>,
    e: &std::sync::Arc<MapEntry>,
    name: &str,
    pages: &'static [usize],
) -> thread::JoinHandle<()> {
    let (w, e) = (w.clone(), e.clone());
    spawn(name, move || {
        for &p in pages {
            match w.touch(&e, p) {
                Touch::Value(_) => {}
                other => w.fail("unexpected-signal", format!("touch of page {p}: {other:?}")),
            }
        }
    })
}

fn run_scenario(policy: Policy, mutation: Option<Mutation>, scenario: CheckScenario) {
    let w = World::new(policy, mutation);
    match scenario {
        CheckScenario::Seed => {
            let m = w.map(MAP_PAGES, 0);
            let svc = services(&w, 1);
            let t = [
                toucher(&w, &m, "t0", &[0]),
                toucher(&w, &m, "t1", &[0]),
                toucher(&w, &m, "t2", &[3]),
            ];
            t.into_iter().for_each(|t| t.join().expect("toucher"));
            w.finish(svc, &[m.info().id]);
        }
        CheckScenario::TwoServices => {
            let m = w.map(MAP_PAGES, 0);
            let svc = services(&w, 2);
            let t = [
                toucher(&w, &m, "t0", &[0, 3]),
                toucher(&w, &m, "t1", &[0, 2]),
            ];
            t.into_iter().for_each(|t| t.join().expect("toucher"));
            w.finish(svc, &[m.info().id]);
        }
        CheckScenario::FaultVsDisable => {
            let m = w.map(MAP_PAGES, 0);
            let svc = services(&w, 1);
            let t0 = {
                let (w, m) = (w.clone(), m.clone());
                spawn("t0", move || {
                    for p in [0, 2] {
                        // Racing the disable: the value or SIGBUS.
                        if let Touch::Segv = w.touch(&m, p) {
                            w.fail("unexpected-signal", format!("SIGSEGV on page {p}"));
                        }
                    }
                })
            };
            let t1 = {
                let (w, m) = (w.clone(), m.clone());
                spawn("t1", move || {
                    w.disable();
                    if let t @ (Touch::Value(_) | Touch::Segv) = w.touch(&m, 1) {
                        w.fail(
                            "present-after-disable",
                            format!("touch after the disable returned: {t:?}"),
                        );
                    }
                })
            };
            t0.join().expect("t0");
            t1.join().expect("t1");
            w.finish(svc, &[m.info().id]);
        }
        CheckScenario::FaultVsEnable => {
            let m = w.map(MAP_PAGES, 0);
            w.core.set_memory_enabled(false);
            let svc = services(&w, 1);
            let t0 = {
                let (w, m) = (w.clone(), m.clone());
                spawn("t0", move || {
                    let _ = w.touch(&m, 0); // SIGBUS or the value
                })
            };
            let t1 = {
                let (w, m) = (w.clone(), m.clone());
                spawn("t1", move || {
                    w.enable();
                    for p in [0, 1] {
                        if let t @ (Touch::Sigbus | Touch::Segv) = w.touch(&m, p) {
                            w.fail(
                                "sigbus-after-enable",
                                format!("touch of page {p} after the enable returned: {t:?}"),
                            );
                        }
                    }
                })
            };
            t0.join().expect("t0");
            t1.join().expect("t1");
            w.finish(svc, &[m.info().id]);
        }
        CheckScenario::FaultVsReset => {
            let m = w.map(MAP_PAGES, 0);
            let svc = services(&w, 1);
            let t0 = toucher(&w, &m, "t0", &[0, 3]);
            let t1 = {
                let w = w.clone();
                spawn("t1", move || {
                    w.sim().note("reset (gate write, zap all)");
                    w.core.reset(|| ());
                })
            };
            t0.join().expect("t0");
            t1.join().expect("t1");
            w.finish(svc, &[m.info().id]);
        }
        CheckScenario::FaultVsUnmap => {
            let m = w.map(MAP_PAGES, 0);
            let svc = services(&w, 1);
            // The mapping that may take page 3's address after the unmap;
            // observation only, so a std lock (not a scheduling point).
            let reused: std::sync::Arc<std::sync::Mutex<Option<MapInfo>>> = Default::default();
            let t0 = {
                let (w, m, reused) = (w.clone(), m.clone(), reused.clone());
                spawn("t0", move || {
                    if !matches!(w.touch(&m, 0), Touch::Value(_)) {
                        w.fail("unexpected-signal", "page 0 stays mapped".into());
                    }
                    // Page 3 races its unmap (and the reuse of its address):
                    // the value, the new mapping's value, or SIGSEGV.
                    if let Touch::Sigbus = w.touch_either(&m, 3, &reused) {
                        w.fail("unexpected-signal", "SIGBUS on page 3".into());
                    }
                })
            };
            let t1 = {
                let (w, m, reused) = (w.clone(), m.clone(), reused.clone());
                spawn("t1", move || {
                    let r = m.info().start + 2 * PAGE_SIZE..m.info().end();
                    w.sim().note(format!("munmap {r:#x?}"));
                    w.core.unmap(&from_std_arc(&m), r).expect("partial unmap");
                    // A new mapping lands on the freed addresses.
                    let n = w.map_announced(2, 8 * PAGE_SIZE as u64, |info| {
                        *reused.lock().unwrap() = Some(info.clone());
                    });
                    // Only its first page: a fill of the second would wake a
                    // fault left stale on that address and hide a lost wake.
                    if !matches!(w.touch(&n, 0), Touch::Value(_)) {
                        w.fail("unexpected-signal", "new mapping page 0".into());
                    }
                })
            };
            t0.join().expect("t0");
            t1.join().expect("t1");
            let mut live: Vec<MapId> = w.core.mappings().iter().map(|e| e.info().id).collect();
            live.retain(|id| *id != m.info().id);
            live.push(m.info().id);
            w.finish(svc, &live);
        }
        CheckScenario::PastTheLimit => {
            // Pages 0-2 are committed, page 3 is a hole that may not be.
            w.sim().limit_resident(RESIDENT_PAGES);
            let m = w.map(MAP_PAGES, 0);
            let svc = services(&w, 2);
            // Whole-mapping fills need page 3 too: every touch is refused.
            let whole = matches!(policy, Policy::Legacy | Policy::Whole);
            let expect = move |p: usize, t: Touch| match t {
                Touch::Value(_) => !whole && p < RESIDENT_PAGES,
                Touch::Sigbus => whole || p >= RESIDENT_PAGES,
                Touch::Segv => false,
            };
            let t0 = {
                let (w, m) = (w.clone(), m.clone());
                spawn("t0", move || {
                    for p in [3, 0, 2] {
                        // Racing t1's disable: SIGBUS is right then too, a
                        // value never where the limit forbids it.
                        let t = w.touch(&m, p);
                        if !expect(p, t) && t != Touch::Sigbus {
                            w.fail("limit", format!("touch of page {p}: {t:?}"));
                        }
                    }
                })
            };
            let t1 = {
                let (w, m) = (w.clone(), m.clone());
                spawn("t1", move || {
                    // Memory is on until t1 disables it.
                    for p in [1, 3] {
                        let t = w.touch(&m, p);
                        if !expect(p, t) {
                            w.fail("limit", format!("touch of page {p}: {t:?}"));
                        }
                    }
                    w.disable();
                    w.enable();
                    for p in [3, 0] {
                        let t = w.touch(&m, p);
                        if !expect(p, t) {
                            w.fail(
                                "limit",
                                format!("touch of page {p} after the enable: {t:?}"),
                            );
                        }
                    }
                })
            };
            t0.join().expect("t0");
            t1.join().expect("t1");
            if w.core.stats().over_limit == 0 {
                w.fail("limit", "no fault was counted over the limit".into());
            }
            w.finish(svc, &[m.info().id]);
        }
        CheckScenario::FailedFill => {
            let m = w.map(MAP_PAGES, 0);
            w.sim().fail_next_fill();
            let svc = services(&w, 1);
            let t = [toucher(&w, &m, "t0", &[0]), toucher(&w, &m, "t1", &[1])];
            t.into_iter().for_each(|t| t.join().expect("toucher"));
            w.finish(svc, &[m.info().id]);
        }
    }
}

/// Runs the checks and reports violations (a scenario stops at its first).
pub fn check(options: &CheckOptions) -> CheckReport {
    let started = Instant::now();
    let mut report = CheckReport {
        policy: options.policy,
        scenarios: options
            .scenarios
            .iter()
            .map(|s| s.name().to_string())
            .collect(),
        schedules: 0,
        violations: Vec::new(),
        elapsed_ms: 0.0,
    };
    for &scenario in &options.scenarios {
        let (policy, mutation) = (options.policy, options.mutation);
        let body = move || run_scenario(policy, mutation, scenario);
        let mut config = shuttle::Config::new();
        config.silence_warnings = true;
        config.failure_persistence = shuttle::FailurePersistence::Print;
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = {
            let ran = ran.clone();
            move || {
                ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                body()
            }
        };
        let result = quietly(|| match options.scheduler {
            Scheduler::Random => {
                let s = shuttle::scheduler::RandomScheduler::new_from_seed(
                    options.seed,
                    options.iterations,
                );
                shuttle::Runner::new(s, config).run(counted)
            }
            Scheduler::Pct => {
                let s = shuttle::scheduler::PctScheduler::new_from_seed(
                    options.seed,
                    3,
                    options.iterations,
                );
                shuttle::Runner::new(s, config).run(counted)
            }
        });
        let schedules = ran.load(std::sync::atomic::Ordering::Relaxed);
        report.schedules += schedules;
        if let Err(message) = result {
            report
                .violations
                .push(violation(scenario, options.seed, schedules, &message));
        }
    }
    report.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    report
}

/// Replays one failing schedule of `scenario` and returns its violation.
pub fn replay(
    policy: Policy,
    mutation: Option<Mutation>,
    scenario: CheckScenario,
    schedule: &str,
) -> Option<Violation> {
    let schedule = schedule.to_string();
    quietly(|| shuttle::replay(move || run_scenario(policy, mutation, scenario), &schedule))
        .err()
        .map(|m| violation(scenario, 0, 1, &m))
}

/// Runs `f`, turning a panic into its message, without the default panic
/// printout (shuttle adds the schedule to the message).
fn quietly<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    panic::set_hook(hook);
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

fn violation(scenario: CheckScenario, seed: u64, schedules: usize, message: &str) -> Violation {
    let kind = message
        .split_once("violation[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(k, _)| k.to_string())
        .unwrap_or_else(|| {
            if message.contains("deadlock") {
                "deadlock".into()
            } else {
                "panic".into()
            }
        });
    let schedule = message
        .split_once("failing schedule:\n\"\n")
        .and_then(|(_, rest)| rest.split_once("\n\""))
        .map(|(s, _)| s.to_string())
        .unwrap_or_default();
    let original = message
        .split_once("original panic: ")
        .map_or(message, |(_, o)| o);
    let (head, trace) = match original.split_once("\n  trace:\n    ") {
        Some((h, t)) => (
            h,
            t.split("\n    ")
                .map(|l| l.split('\n').next().unwrap_or(l).to_string())
                .collect(),
        ),
        None => (original.lines().next().unwrap_or(original), Vec::new()),
    };
    Violation {
        scenario: scenario.name().into(),
        kind,
        seed,
        schedules,
        schedule,
        trace,
        message: head.to_string(),
    }
}
