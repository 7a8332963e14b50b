//! `barmap storm`: many threads first-touch a fresh mapping, round after
//! round, optionally while memory is toggled off and on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use barmap::{touch::Fault, Device, Policy, Prot, DEFAULT_MEMORY_BAR};
use serde::Serialize;

use crate::util::{parse_size, pattern, write_pattern};

/// Arguments of `barmap storm`.
#[derive(clap::Args)]
pub struct StormArgs {
    /// Touching threads.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Mapping size (K, M, G suffixes).
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    size: u64,
    /// Fault policy: legacy, whole, page, huge, prefault (default).
    #[arg(long, default_value = "prefault")]
    policy: Policy,
    /// Rounds; each maps afresh.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Toggle memory off and on every this many milliseconds while touching.
    #[arg(long)]
    zap_every: Option<u64>,
    /// Fault service threads (default: one per core).
    #[arg(long)]
    service_threads: Option<usize>,
    /// A round still running after this many seconds is a hang.
    #[arg(long, default_value_t = 30)]
    watchdog: u64,
    /// Limit on the device memory the storm's device may commit (K, M, G
    /// suffixes; default: half of MemAvailable). A fault past it gets
    /// SIGBUS.
    #[arg(long, value_parser = parse_size)]
    memory_limit: Option<u64>,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    json: bool,
}

/// The storm's result.
#[derive(Serialize, Default)]
pub struct StormResult {
    policy: String,
    threads: usize,
    rounds: usize,
    size: u64,
    faults: u64,
    pages_filled: u64,
    eexist: u64,
    /// SIGBUS answers by the fault service.
    sigbus: u64,
    /// Touches that took a SIGBUS (all while memory was off).
    sigbus_seen: u64,
    bugs: u64,
    touches: u64,
    wrong_values: u64,
    unexpected_sigbus: u64,
    hangs: u64,
    toggles: u64,
    /// wrong_values + unexpected_sigbus + hangs + bugs.
    errors: u64,
    elapsed_ms: f64,
    rounds_with_bug: u64,
    first_bug_round: Option<usize>,
    bug_events: Vec<String>,
}

#[derive(Default)]
struct Tally {
    touches: AtomicU64,
    wrong: AtomicU64,
    sigbus_seen: AtomicU64,
    unexpected_sigbus: AtomicU64,
}

pub fn run(args: &StormArgs) -> i32 {
    match storm(args) {
        Ok(result) => {
            if args.json {
                println!("{}", serde_json::to_string(&result).expect("json"));
            } else {
                print_human(&result);
            }
            i32::from(result.errors > 0)
        }
        Err(e) => {
            eprintln!("barmap storm: {e}");
            2
        }
    }
}

fn storm(args: &StormArgs) -> barmap::Result<StormResult> {
    let size = args.size.max(4096).next_multiple_of(4096);
    let mut builder = Device::builder_with_memory(size.next_power_of_two()).policy(args.policy);
    if let Some(n) = args.service_threads {
        builder = builder.service_threads(n);
    }
    if let Some(limit) = args.memory_limit {
        builder = builder.memory_limit(limit);
    }
    let device = Arc::new(builder.build()?);
    let len = size as usize;
    write_pattern(&device, DEFAULT_MEMORY_BAR, len)?;
    let tally = Arc::new(Tally::default());
    let threads = args.threads.max(1);
    let started = Instant::now();
    let mut progress: Option<indicatif::ProgressBar> = None;
    let mut result = StormResult {
        policy: args.policy.to_string(),
        threads,
        rounds: args.rounds,
        size,
        ..StormResult::default()
    };
    // seq is even while memory is on and stable (see the scenario suite).
    let seq = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = args.zap_every.map(|ms| {
        let (device, seq, stop) = (device.clone(), seq.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut toggles = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(ms));
                seq.fetch_add(1, Ordering::SeqCst);
                device.set_memory_enabled(false);
                std::thread::sleep(Duration::from_millis(ms.div_ceil(4)));
                device.set_memory_enabled(true);
                seq.fetch_add(1, Ordering::SeqCst);
                toggles += 1;
            }
            toggles
        })
    });
    let mut bugs_before = 0;
    for round in 0..args.rounds {
        let mapping = Arc::new(device.map(DEFAULT_MEMORY_BAR, 0, len, Prot::ReadWrite)?);
        let barrier = Arc::new(Barrier::new(threads));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for t in 0..threads {
            let (mapping, barrier, tally, seq, done) = (
                mapping.clone(),
                barrier.clone(),
                tally.clone(),
                seq.clone(),
                done_tx.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let pages = mapping.len() / 4096;
                // Everyone hits page 0 at once (the seed), then its stripe.
                for page in std::iter::once(0).chain((t..pages).step_by(threads)) {
                    let before = seq.load(Ordering::SeqCst);
                    let r = mapping.touch_u64(page * 4096);
                    let after = seq.load(Ordering::SeqCst);
                    tally.touches.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(v) if v == pattern(page) => {}
                        Ok(_) => {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Fault::Sigbus) => {
                            tally.sigbus_seen.fetch_add(1, Ordering::Relaxed);
                            if before == after && before % 2 == 0 {
                                tally.unexpected_sigbus.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(Fault::Sigsegv) => {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let _ = done.send(());
            });
        }
        drop(done_tx);
        let deadline = Instant::now() + Duration::from_secs(args.watchdog);
        let mut finished = 0;
        while finished < threads {
            match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => finished += 1,
                Err(_) => break,
            }
        }
        if finished < threads {
            // Blocked threads cannot be joined; report and leave.
            result.hangs += (threads - finished) as u64;
            result.rounds = round + 1;
            break;
        }
        drop(mapping);
        let bugs = device.stats().bugs;
        if bugs > bugs_before {
            result.rounds_with_bug += 1;
            result.first_bug_round.get_or_insert(round + 1);
            bugs_before = bugs;
        }
        if progress.is_none() && started.elapsed() > Duration::from_secs(1) && !args.json {
            let bar = indicatif::ProgressBar::new(args.rounds as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rounds {elapsed}")
                    .expect("template"),
            );
            progress = Some(bar);
        }
        if let Some(bar) = &progress {
            bar.set_position(round as u64 + 1);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = toggler {
        result.toggles = t.join().unwrap_or(0);
    }
    device.wait_idle(Duration::from_secs(10));
    let stats = device.stats();
    result.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    result.faults = stats.faults;
    result.pages_filled = stats.pages_filled;
    result.eexist = stats.eexist;
    result.sigbus = stats.sigbus;
    result.bugs = stats.bugs;
    result.touches = tally.touches.load(Ordering::Relaxed);
    result.wrong_values = tally.wrong.load(Ordering::Relaxed);
    result.sigbus_seen = tally.sigbus_seen.load(Ordering::Relaxed);
    result.unexpected_sigbus = tally.unexpected_sigbus.load(Ordering::Relaxed);
    result.errors = result.wrong_values + result.unexpected_sigbus + result.hangs + result.bugs;
    result.bug_events = device
        .bug_events()
        .into_iter()
        .take(3)
        .map(|b| b.what)
        .collect();
    if result.hangs > 0 {
        // Threads are stuck in faults: do not wait for them on exit.
        let json = serde_json::to_string(&result).expect("json");
        println!("{json}");
        std::process::exit(1);
    }
    Ok(result)
}

fn print_human(r: &StormResult) {
    println!(
        "storm: policy {}, {} threads, {} rounds of {} MiB, {:.0} ms",
        r.policy,
        r.threads,
        r.rounds,
        r.size >> 20,
        r.elapsed_ms
    );
    println!(
        "  faults {}  pages filled {}  EEXIST races {}  SIGBUS answers {}  toggles {}",
        r.faults, r.pages_filled, r.eexist, r.sigbus, r.toggles
    );
    println!(
        "  touches {}  wrong values {}  unexpected SIGBUS {}  hangs {}  BUGs {} (in {} rounds, first in round {})",
        r.touches,
        r.wrong_values,
        r.unexpected_sigbus,
        r.hangs,
        r.bugs,
        r.rounds_with_bug,
        r.first_bug_round.map_or("-".into(), |n| n.to_string())
    );
    for b in &r.bug_events {
        println!("  {b}");
    }
    println!("  errors {}", r.errors);
}
