//! The model checker over the shipped fault path: it finds the seed's race
//! in `legacy`, finds nothing in the other policies, and catches a
//! deliberately broken variant of each invariant.

use barmap::model::check::{check, replay, CheckOptions, CheckReport, CheckScenario, Scheduler};
use barmap::policy::Mutation;
use barmap::Policy;

fn run(
    policy: Policy,
    scenarios: &[CheckScenario],
    iterations: usize,
    scheduler: Scheduler,
    mutation: Option<Mutation>,
) -> CheckReport {
    check(&CheckOptions {
        policy,
        scenarios: scenarios.to_vec(),
        iterations,
        seed: 0x5eed,
        scheduler,
        mutation,
    })
}

#[test]
fn legacy_hits_the_seed_bug_and_leaves_a_stale_record() {
    let r = run(
        Policy::Legacy,
        &[CheckScenario::Seed],
        2000,
        Scheduler::Random,
        None,
    );
    let v = r.violations.first().expect("the seed's BUG is found");
    assert_eq!(v.kind, "bug", "{v:#?}");
    assert!(v.message.contains("BUG_ON(!pte_none"), "{v:#?}");
    assert!(!v.schedule.is_empty() && !v.trace.is_empty());
    // The schedule replays to the same violation.
    let again = replay(Policy::Legacy, None, CheckScenario::Seed, &v.schedule).expect("replays");
    assert_eq!(again.kind, "bug");

    let r = run(
        Policy::Legacy,
        &[CheckScenario::FailedFill],
        2000,
        Scheduler::Random,
        None,
    );
    let v = r
        .violations
        .first()
        .expect("the failed fill's stale record is found");
    assert!(v.kind == "stale-tracking" || v.kind == "bug", "{v:#?}");
}

#[test]
fn legacy_fails_a_failed_fill_as_stale_tracking() {
    // One toucher only: no concurrent refill, so only the stale record shows.
    let r = run(
        Policy::Legacy,
        &[CheckScenario::FailedFill],
        500,
        Scheduler::Pct,
        None,
    );
    assert!(
        r.violations
            .iter()
            .any(|v| v.kind == "stale-tracking" || v.kind == "bug"),
        "{r:#?}"
    );
}

#[test]
fn correct_policies_have_no_violation_in_any_scenario() {
    for policy in [Policy::Whole, Policy::Page, Policy::Huge, Policy::Prefault] {
        for scheduler in [Scheduler::Random, Scheduler::Pct] {
            let r = run(policy, &CheckScenario::ALL, 300, scheduler, None);
            assert!(
                r.violations.is_empty(),
                "{policy} {scheduler:?}: {:#?}",
                r.violations
            );
            assert_eq!(r.schedules, 300 * CheckScenario::ALL.len());
        }
    }
}

fn caught(mutation: Mutation, policy: Policy, scenario: CheckScenario, kinds: &[&str]) {
    let r = run(policy, &[scenario], 3000, Scheduler::Random, Some(mutation));
    let v = r
        .violations
        .first()
        .unwrap_or_else(|| panic!("{mutation:?} not caught in {} schedules", r.schedules));
    assert!(kinds.contains(&v.kind.as_str()), "{mutation:?}: {v:#?}");
}

#[test]
fn each_invariant_catches_its_broken_variant() {
    caught(
        Mutation::WholeNoRecheck,
        Policy::Whole,
        CheckScenario::Seed,
        &["bug"],
    );
    caught(
        Mutation::SkipZap,
        Policy::Page,
        CheckScenario::FaultVsDisable,
        &["present-after-disable"],
    );
    caught(
        Mutation::KeepPoison,
        Policy::Page,
        CheckScenario::FaultVsEnable,
        &["sigbus-after-enable"],
    );
    caught(
        Mutation::WrongPfn,
        Policy::Prefault,
        CheckScenario::Seed,
        &["wrong-value"],
    );
    caught(
        Mutation::UnmapKeepsTracked,
        Policy::Whole,
        CheckScenario::Seed,
        &["stale-tracking"],
    );
    caught(
        Mutation::SkipStaleWake,
        Policy::Page,
        CheckScenario::FaultVsUnmap,
        &["deadlock"],
    );
}
