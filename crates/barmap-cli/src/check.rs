//! `barmap check`: the model checker over the shipped fault path.

use barmap::model::check::{check, replay, CheckOptions, CheckReport, CheckScenario, Scheduler};
use barmap::policy::Mutation;
use barmap::Policy;

/// Arguments of `barmap check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Policy under test.
    #[arg(long, default_value = "prefault")]
    policy: Policy,
    /// One scenario (default: all): seed, fault-vs-disable, fault-vs-enable,
    /// fault-vs-reset, fault-vs-unmap, failed-fill, two-services.
    #[arg(long)]
    scenario: Option<String>,
    /// Schedules per scenario.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Seed of the scheduler.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Scheduler: random or pct.
    #[arg(long, default_value = "random", value_parser = parse_scheduler)]
    scheduler: Scheduler,
    /// Replay a failing schedule printed by an earlier run (needs --scenario).
    #[arg(long)]
    replay: Option<String>,
    /// Succeed only if a violation is found (for `legacy` in CI).
    #[arg(long)]
    expect_violation: bool,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    json: bool,
}

fn parse_scheduler(s: &str) -> Result<Scheduler, String> {
    match s {
        "random" => Ok(Scheduler::Random),
        "pct" => Ok(Scheduler::Pct),
        _ => Err(format!("unknown scheduler {s:?} (random or pct)")),
    }
}

pub fn run(args: &CheckArgs) -> i32 {
    let scenarios = match &args.scenario {
        None => CheckScenario::ALL.to_vec(),
        Some(name) => match CheckScenario::from_name(name) {
            Some(s) => vec![s],
            None => {
                eprintln!("barmap check: unknown scenario {name:?}");
                return 2;
            }
        },
    };
    let report = match &args.replay {
        Some(schedule) => {
            let [scenario] = scenarios[..] else {
                eprintln!("barmap check: --replay needs --scenario");
                return 2;
            };
            let violation = replay(args.policy, None::<Mutation>, scenario, schedule.trim());
            CheckReport {
                policy: args.policy,
                scenarios: vec![scenario.name().into()],
                schedules: 1,
                violations: violation.into_iter().collect(),
                elapsed_ms: 0.0,
            }
        }
        None => check(&CheckOptions {
            policy: args.policy,
            scenarios,
            iterations: args.iterations,
            seed: args.seed,
            scheduler: args.scheduler,
            mutation: None,
        }),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("json"));
    } else {
        print_human(&report);
    }
    let found = !report.violations.is_empty();
    i32::from(found != args.expect_violation)
}

fn print_human(r: &CheckReport) {
    println!(
        "barmap check: policy {}, {} scenarios, {} schedules, {} violations ({:.0} ms)",
        r.policy,
        r.scenarios.len(),
        r.schedules,
        r.violations.len(),
        r.elapsed_ms
    );
    for v in &r.violations {
        println!(
            "\n  VIOLATION [{}] in scenario {} after {} schedules (seed {:#x}):\n  {}",
            v.kind, v.scenario, v.schedules, v.seed, v.message
        );
        if !v.trace.is_empty() {
            println!("  trace (thread, step, page state):");
            for line in &v.trace {
                println!("    {line}");
            }
        }
        if !v.schedule.is_empty() {
            let compact: String = v.schedule.split_whitespace().collect();
            println!(
                "  replay: barmap check --policy {} --scenario {} --replay {}",
                r.policy, v.scenario, compact
            );
        }
    }
}
