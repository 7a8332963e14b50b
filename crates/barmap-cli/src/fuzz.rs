//! `barmap fuzz`: the randomized state-machine explorer (barmap's API and
//! the process's address-space operations against a reference model) at
//! scale. Exit status 1 on a failure, with the shortest failing sequence.

use std::time::Duration;

use barmap::Policy;
use barmap_explore::{Config, Progress, Report};

/// Arguments of `barmap fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Operations to run.
    #[arg(long, default_value_t = 1_000_000)]
    ops: u64,
    /// Seed (decimal or 0x hex); the same seed runs the same operations.
    #[arg(long, default_value = "0x5eed", value_parser = parse_seed)]
    seed: u64,
    /// Threads in the multi-thread operations (1..=16).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    threads: u8,
    /// Fault policy: whole, page, huge, prefault (default).
    #[arg(long, default_value = "prefault")]
    policy: Policy,
    /// Operations per episode (a fresh device and model each).
    #[arg(long, default_value_t = 2_000)]
    episode: usize,
    /// An operation still running after this many seconds is a hang.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Also generate the combinations that hit known barmap issues.
    #[arg(long)]
    known_issues: bool,
    /// The process mode: the device served by barmap's server inside this
    /// process, reached by forked client processes (vfio-user clients and
    /// their children) that map, touch, write in loops, pass the BAR's fd,
    /// fork, exit and are SIGKILLed, while COMMAND.MEM, reset and D3hot
    /// come from this process or from a client, and the device's removal
    /// (the REQ interrupt, then gone) from this process; and an edu served
    /// beside it, whose DMA reaches windows the clients map with memfds
    /// (and lose when they die).
    #[arg(long)]
    processes: bool,
    /// Print one JSON object instead of a summary line.
    #[arg(long)]
    json: bool,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("not a seed: {s:?} ({e})"))
}

pub fn run(args: &FuzzArgs) -> i32 {
    let cfg = Config {
        ops: args.ops,
        seed: args.seed,
        threads: args.threads,
        policy: args.policy,
        episode_len: args.episode,
        op_timeout: Duration::from_secs(args.timeout.max(1)),
        known_issues: args.known_issues,
        processes: args.processes,
        ..Config::default()
    };
    let bar = indicatif::ProgressBar::new(cfg.ops);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} ops {per_sec} {elapsed} {msg}",
        )
        .expect("template"),
    );
    let mut shrinking = false;
    let report = barmap_explore::run(&cfg, |p: Progress| {
        if p.shrinking && !shrinking {
            shrinking = true;
            bar.set_length(p.total);
            bar.set_message("shrinking the failing sequence");
        }
        bar.set_position(p.done);
    });
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("json"));
    } else {
        print_summary(&report);
    }
    i32::from(report.failures > 0)
}

fn print_summary(r: &Report) {
    let rate = r.ops as f64 / r.elapsed_s.max(1e-9);
    let kinds: Vec<String> = r.per_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "barmap fuzz{}: {} ops, {} failures, {} episodes lost, seed {:#x}, policy {}, {} threads, {:.1} s ({:.0} ops/s) | {}",
        if r.processes { " --processes" } else { "" },
        r.ops,
        r.failures,
        r.lost,
        r.seed,
        r.policy,
        r.threads,
        r.elapsed_s,
        rate,
        kinds.join(", ")
    );
    if let Some(f) = &r.failure {
        println!(
            "FAILURE in episode {} (episode seed {:#x}) at op {} of {}: {:?}",
            f.episode, f.episode_seed, f.original.index, f.original_len, f.original.op
        );
        println!("  expected {:?}", f.original.expected);
        println!("  observed {:?}", f.original.observed);
        println!(
            "shortest failing sequence ({} ops, {} re-runs):",
            f.shrunk.len(),
            f.shrink_runs
        );
        for (i, op) in f.shrunk.iter().enumerate() {
            println!("  {i:3}. {op:?}");
        }
        match &f.shrunk_mismatch {
            Some(m) => println!(
                "  fails at op {}: expected {:?}, observed {:?}",
                m.index, m.expected, m.observed
            ),
            None => println!("  (the shrunk sequence passed three replays: timing-dependent)"),
        }
    }
}
