//! # barmap-explore
//!
//! A randomized state-machine explorer over barmap's public API and the
//! process's address-space operations: map, partial unmap, libc munmap and
//! `MAP_FIXED` over, mremap (grow, shrink, move), mprotect (whole and
//! part), madvise, mlock, fork (the child touches and reports), signals to
//! every thread, region access with a mapping as the buffer, COMMAND
//! writes, reset, low power, device drop; single touches and touches from
//! several threads at once, also while memory is toggled.
//!
//! Every operation's observations (the value read, SIGBUS or SIGSEGV, the
//! error returned) are compared exactly with a reference model
//! ([`model`]) that predicts them from barmap's documented semantics. On a
//! mismatch the run stops and the failing sequence is shrunk
//! ([`shrink`]) by re-running candidate subsequences, each on a fresh
//! device, to a short one that still fails.
//!
//! A run is a series of episodes (a fresh device and model each, seeded
//! from the run's seed), so a failure is reproduced from its episode alone.
//! Every wait is bounded; a hang is reported as a failure with its
//! sequence.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![warn(missing_docs)]

pub mod model;
pub mod obs;
pub mod op;
pub mod plan;
pub mod procs;
pub mod rng;
pub mod shrink;
pub mod sut;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use barmap::Policy;
pub use model::Mutation;
use model::{Model, ModelConfig};
use obs::{Exp, Obs};
pub use op::Op;
use sut::{Sut, SutConfig};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Operations in total.
    pub ops: u64,
    /// The run's seed; episode `i` is seeded from it.
    pub seed: u64,
    /// Threads in the multi-thread operations (1..=16).
    pub threads: u8,
    /// Fault policy of the device.
    pub policy: Policy,
    /// Size of the memory BAR (a power of two, at least 64 KiB).
    pub memory: u64,
    /// Operations per episode (a fresh device and model each).
    pub episode_len: usize,
    /// A deliberate model error (tests of the explorer itself).
    pub mutation: Mutation,
    /// The bound on any one operation; longer is a hang.
    pub op_timeout: Duration,
    /// At most this many re-runs while shrinking.
    pub shrink_budget: usize,
    /// Exercise known barmap issues instead of avoiding them (default
    /// off; see [`sut::SutConfig::known_issues`] and the model).
    pub known_issues: bool,
    /// Wall-time bound on shrinking.
    pub shrink_time: Duration,
    /// The process mode ([`procs`]): the device served by barmap's server
    /// in this process, reached by forked client processes.
    pub processes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ops: 10_000,
            seed: 0x5eed,
            threads: 4,
            policy: Policy::default(),
            memory: 1 << 20,
            episode_len: 2_000,
            mutation: Mutation::None,
            op_timeout: Duration::from_secs(20),
            shrink_budget: 1_000,
            known_issues: false,
            shrink_time: Duration::from_secs(120),
            processes: false,
        }
    }
}

/// A failing step: where, what the model expected, what was observed.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// Index of the failing operation in its sequence.
    pub index: usize,
    /// The operation.
    pub op: Op,
    /// What the model expected (one entry per observation).
    pub expected: Vec<Exp>,
    /// What was observed.
    pub observed: Vec<Obs>,
}

/// A failure and its shortest failing sequence.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The run's seed.
    pub seed: u64,
    /// The failing episode.
    pub episode: u64,
    /// The episode's own seed (replays the original sequence).
    pub episode_seed: u64,
    /// The first mismatch in the original episode.
    pub original: Mismatch,
    /// Length of the original sequence up to the failure.
    pub original_len: usize,
    /// The shrunk sequence, which still fails.
    pub shrunk: Vec<Op>,
    /// Its mismatch (on the last operation, normally); `None` if three
    /// replays of the shrunk sequence passed (a timing-dependent failure:
    /// see `original`).
    pub shrunk_mismatch: Option<Mismatch>,
    /// Re-runs spent shrinking.
    pub shrink_runs: usize,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Operations generated.
    pub ops: u64,
    /// Operations that did not apply in their state (nothing to act on).
    pub skipped: u64,
    /// Episodes ended early because addresses the process had just freed
    /// were taken by another thread's mapping before the explorer could
    /// place its foreign memory there (see [`obs::Obs::Lost`]).
    pub lost: u64,
    /// Why the first lost episode was lost (what took the addresses).
    pub lost_reason: Option<String>,
    /// 0, or 1 (a run stops at its first failure).
    pub failures: u64,
    /// The run's seed.
    pub seed: u64,
    /// Fault policy.
    pub policy: String,
    /// Threads in the multi-thread operations.
    pub threads: u8,
    /// Episodes run.
    pub episodes: u64,
    /// Executed operations per kind.
    pub per_kind: BTreeMap<String, u64>,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// The process mode ran.
    pub processes: bool,
    /// The failure, if any.
    pub failure: Option<Failure>,
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Operations done.
    pub done: u64,
    /// Operations in total.
    pub total: u64,
    /// Shrinking a failure (done/total then count shrink re-runs).
    pub shrinking: bool,
}

/// The result of one episode or replay.
struct Outcome {
    generated: u64,
    skipped: u64,
    lost: u64,
    lost_reason: Option<String>,
    per_kind: BTreeMap<&'static str, u64>,
    mismatch: Option<Mismatch>,
    /// The operations run, the failing one last if it failed.
    ops: Vec<Op>,
}

struct Shared {
    done: AtomicU64,
    /// Milliseconds since `epoch` at the last step.
    beat: AtomicU64,
    epoch: Instant,
    journal: Mutex<Vec<Op>>,
}

impl Shared {
    fn beat(&self) {
        self.beat
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

enum Source {
    Generate { seed: u64, count: u64 },
    Replay(Vec<Op>),
}

fn sut_config(cfg: &Config) -> SutConfig {
    SutConfig {
        policy: cfg.policy,
        memory: cfg.memory,
        service_threads: 2,
        reset_time: Duration::from_micros(200),
        timeout: cfg.op_timeout,
        known_issues: cfg.known_issues,
    }
}

/// Runs one sequence of the process mode on the calling thread.
fn execute_procs(cfg: &Config, source: Source, shared: &Shared) -> Outcome {
    let memory = procs::memory(cfg.memory);
    let mut model = procs::ProcModel::new(memory, cfg.mutation == Mutation::ResetClearsMemory);
    let mut out = Outcome {
        generated: 0,
        skipped: 0,
        lost: 0,
        lost_reason: None,
        per_kind: BTreeMap::new(),
        mismatch: None,
        ops: Vec::new(),
    };
    let mut sut = match procs::ProcSut::new(
        memory,
        cfg.op_timeout,
        cfg.mutation == Mutation::RemovalRevokesNothing,
        cfg.mutation == Mutation::DeadClientsWindowsStay,
    ) {
        Ok(s) => s,
        Err(e) => {
            out.mismatch = Some(Mismatch {
                index: 0,
                op: Op::Proc(procs::POp::Spawn),
                expected: Vec::new(),
                observed: vec![Obs::Broken(format!("serving the device: {e}"))],
            });
            return out;
        }
    };
    let (mut rng, count, replay) = match source {
        Source::Generate { seed, count } => (rng::Rng::new(seed), count as usize, None),
        Source::Replay(ops) => (rng::Rng::new(0), ops.len(), Some(ops)),
    };
    for i in 0..count {
        let op = match &replay {
            Some(ops) => ops[i].clone(),
            None => Op::Proc(procs::generate(&mut rng, &model)),
        };
        shared
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(op.clone());
        shared.beat();
        out.generated += 1;
        out.ops.push(op.clone());
        let plan = match &op {
            Op::Proc(p) => model.plan(p),
            _ => None,
        };
        let Some(plan) = plan else {
            out.skipped += 1;
            shared.done.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        *out.per_kind.entry(op.kind()).or_default() += 1;
        let observed = sut.exec(&plan, &model);
        shared.done.fetch_add(1, Ordering::Relaxed);
        let (expected, same) = model.step(&plan, &observed);
        if !same {
            out.mismatch = Some(Mismatch {
                index: i,
                op,
                expected,
                observed,
            });
            return out;
        }
    }
    out
}

/// Runs one sequence on the calling thread.
fn execute(cfg: &Config, source: Source, shared: &Shared) -> Outcome {
    if cfg.processes {
        return execute_procs(cfg, source, shared);
    }
    let mut model = Model::new(ModelConfig {
        memory: cfg.memory,
        mutation: cfg.mutation,
        known_issues: cfg.known_issues,
    });
    let mut out = Outcome {
        generated: 0,
        skipped: 0,
        lost: 0,
        lost_reason: None,
        per_kind: BTreeMap::new(),
        mismatch: None,
        ops: Vec::new(),
    };
    let mut sut = match Sut::new(sut_config(cfg)) {
        Ok(s) => s,
        Err(e) => {
            out.mismatch = Some(Mismatch {
                index: 0,
                op: Op::Rebuild,
                expected: vec![Exp::Is(Obs::Api(Ok(obs::Val::Unit)))],
                observed: vec![Obs::Api(Err(sut::err_name(&e)))],
            });
            return out;
        }
    };
    let (mut rng, count, replay) = match source {
        Source::Generate { seed, count } => (rng::Rng::new(seed), count as usize, None),
        Source::Replay(ops) => (rng::Rng::new(0), ops.len(), Some(ops)),
    };
    for i in 0..count {
        let op = match &replay {
            Some(ops) => ops[i].clone(),
            None => op::generate(&mut rng, &model, cfg.threads),
        };
        shared
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(op.clone());
        shared.beat();
        out.generated += 1;
        out.ops.push(op.clone());
        let Some(plan) = model.plan(&op) else {
            out.skipped += 1;
            shared.done.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        *out.per_kind.entry(op.kind()).or_default() += 1;
        let expected = model.step(&plan);
        let observed = sut.exec(&plan);
        shared.done.fetch_add(1, Ordering::Relaxed);
        if let Some(Obs::Lost(why)) = observed.iter().find(|o| matches!(o, Obs::Lost(_))) {
            out.lost += 1;
            out.lost_reason = Some(why.clone());
            return out;
        }
        let observed = match sut.breach() {
            Some(breach) => vec![Obs::Broken(breach)],
            None => observed,
        };
        let same = expected.len() == observed.len()
            && expected.iter().zip(&observed).all(|(e, o)| e.admits(o));
        if !same {
            out.mismatch = Some(Mismatch {
                index: i,
                op,
                expected,
                observed,
            });
            return out;
        }
    }
    out
}

/// Runs `source` on a worker thread, watching for hangs: an operation that
/// takes longer than `cfg.op_timeout` ends the sequence as a failure (the
/// stuck thread is left behind).
/// The outcome of an episode whose last operation broke the run (a hang or
/// a panic): the journal so far, the last operation named as the failure.
fn broken(journal: &Mutex<Vec<Op>>, what: String) -> Outcome {
    let ops = journal.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let index = ops.len().saturating_sub(1);
    Outcome {
        generated: ops.len() as u64,
        skipped: 0,
        lost: 0,
        lost_reason: None,
        per_kind: BTreeMap::new(),
        mismatch: Some(Mismatch {
            index,
            op: ops.last().cloned().unwrap_or(Op::Rebuild),
            expected: Vec::new(),
            observed: vec![Obs::Broken(format!("operation {index} {what}"))],
        }),
        ops,
    }
}

fn supervise(cfg: &Config, source: Source, mut tick: impl FnMut(u64)) -> Outcome {
    let shared = Arc::new(Shared {
        done: AtomicU64::new(0),
        beat: AtomicU64::new(0),
        epoch: Instant::now(),
        journal: Mutex::new(Vec::new()),
    });
    let (tx, rx) = mpsc::channel();
    let worker = {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        std::thread::Builder::new()
            .name("explore-driver".into())
            .spawn(move || {
                let out = execute(&cfg, source, &shared);
                let _ = tx.send(out);
            })
    };
    if let Err(e) = worker {
        return Outcome {
            generated: 0,
            skipped: 0,
            lost: 0,
            lost_reason: None,
            per_kind: BTreeMap::new(),
            mismatch: Some(Mismatch {
                index: 0,
                op: Op::Rebuild,
                expected: Vec::new(),
                observed: vec![Obs::Broken(format!("spawning the driver: {e}"))],
            }),
            ops: Vec::new(),
        };
    }
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(out) => {
                tick(shared.done.load(Ordering::Relaxed));
                return out;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tick(shared.done.load(Ordering::Relaxed));
                let since =
                    shared.epoch.elapsed().as_millis() as u64 - shared.beat.load(Ordering::Relaxed);
                // The per-op bound plus slack for the op's own bounded waits.
                if since > 2 * cfg.op_timeout.as_millis() as u64 {
                    return broken(
                        &shared.journal,
                        format!("did not finish within {:?} (a hang)", 2 * cfg.op_timeout),
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return broken(&shared.journal, "panicked".into());
            }
        }
    }
}

/// The seed of episode `i` of a run seeded `seed`.
pub fn episode_seed(seed: u64, i: u64) -> u64 {
    rng::splitmix(seed ^ rng::splitmix(i))
}

/// Replays `ops` from a fresh device and model; the first mismatch, if
/// any.
pub fn replay(cfg: &Config, ops: &[Op]) -> Option<Mismatch> {
    supervise(cfg, Source::Replay(ops.to_vec()), |_| {}).mismatch
}

/// Runs `cfg.ops` operations; stops at the first failure, shrinks it and
/// reports it. `progress` is called a few times a second.
pub fn run(cfg: &Config, mut progress: impl FnMut(Progress)) -> Report {
    let started = Instant::now();
    let mut report = Report {
        ops: 0,
        skipped: 0,
        lost: 0,
        lost_reason: None,
        failures: 0,
        seed: cfg.seed,
        policy: cfg.policy.to_string(),
        threads: cfg.threads,
        episodes: 0,
        per_kind: BTreeMap::new(),
        elapsed_s: 0.0,
        processes: cfg.processes,
        failure: None,
    };
    let episode_len = cfg.episode_len.max(1) as u64;
    let mut episode = 0u64;
    while report.ops < cfg.ops {
        let count = episode_len.min(cfg.ops - report.ops);
        let seed = episode_seed(cfg.seed, episode);
        let base = report.ops;
        let out = supervise(cfg, Source::Generate { seed, count }, |done| {
            progress(Progress {
                done: base + done,
                total: cfg.ops,
                shrinking: false,
            })
        });
        report.ops += out.generated;
        report.skipped += out.skipped;
        report.lost += out.lost;
        if report.lost_reason.is_none() {
            report.lost_reason = out.lost_reason;
        }
        report.episodes += 1;
        for (k, v) in &out.per_kind {
            *report.per_kind.entry(k.to_string()).or_default() += v;
        }
        if let Some(original) = out.mismatch {
            report.failures = 1;
            let ops = out.ops;
            let original_len = ops.len();
            let mut runs_done = 0u64;
            // A hang costs a timeout per re-run: replay with a short one.
            let hang = original
                .observed
                .iter()
                .any(|o| matches!(o, Obs::Broken(_)));
            let mut rcfg = cfg.clone();
            if hang {
                rcfg.op_timeout = cfg.op_timeout.min(Duration::from_secs(3));
            }
            let cfg = &rcfg;
            let shrink_deadline = Instant::now() + cfg.shrink_time;
            let (shrunk, shrink_runs) =
                shrink::shrink_and_simplify(ops, cfg.shrink_budget, Op::simpler, |cand| {
                    if Instant::now() > shrink_deadline {
                        return false;
                    }
                    runs_done += 1;
                    progress(Progress {
                        done: runs_done,
                        total: cfg.shrink_budget as u64,
                        shrinking: true,
                    });
                    // Twice: a failure that depends on timing should not make
                    // the shrinker give up on the parts that provoke it.
                    replay(cfg, cand).is_some() || replay(cfg, cand).is_some()
                });
            let shrunk_mismatch = (0..3).find_map(|_| replay(cfg, &shrunk));
            report.failure = Some(Failure {
                seed: cfg.seed,
                episode,
                episode_seed: seed,
                original,
                original_len,
                shrunk,
                shrunk_mismatch,
                shrink_runs,
            });
            break;
        }
        episode += 1;
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    report
}
