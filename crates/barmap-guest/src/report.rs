//! Results per kernel and scenario, as a table or as JSON.

use crate::console::{KernelEvent, KernelEventKind, Transcript};
use crate::kernel::Expectation;
use serde::Serialize;
use serde_json::Value;

/// One scenario on one device of one kernel.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Device (PCI address in the guest).
    pub device: String,
    /// Scenario name.
    pub scenario: String,
    /// The suite passed, the scenario finished and the kernel logged no failure.
    pub passed: bool,
    /// The suite skipped it (and why).
    pub skipped: Option<String>,
    /// Touches of device memory.
    pub touches: u64,
    /// Touches answered with SIGBUS.
    pub sigbus: u64,
    /// Touches answered with SIGSEGV.
    pub sigsegv: u64,
    /// Reads that returned something other than the device's data.
    pub wrong_values: u64,
    /// Scenario wall time in the guest, ms.
    pub elapsed_ms: f64,
    /// The suite's error lines.
    pub errors: Vec<String>,
    /// Whether a result line arrived (false: the guest died or was stopped).
    pub finished: bool,
    /// Last round announced before the end (or before a kernel failure).
    pub last_round: Option<u64>,
    /// Kernel failures logged while this scenario ran, with their text.
    pub kernel_failures: Vec<KernelEvent>,
    /// The same scenario, with the same options, on barmap's emulated
    /// device, when the caller provided one (the differential column).
    pub emulated: Option<barmap_target::scenario::Report>,
    /// Where the kernel's and barmap's observable results differ.
    pub differs: Option<String>,
    /// Where the mappings were placed (`aligned`, `misaligned`).
    pub placement: Option<String>,
    /// whole-bar: the whole BAR's first touch, ms.
    pub first_touch_ms: Option<f64>,
    /// whole-bar: the same, in the round whose faults were counted, ms.
    pub counted_first_touch_ms: Option<f64>,
    /// whole-bar: the kernel's fault handlers' hits during one first touch.
    pub faults: std::collections::BTreeMap<String, u64>,
    /// whole-bar: the fault path the counts show (`huge`, `page`, `whole`).
    pub fault_path: Option<String>,
    /// whole-bar: the fault path this kernel is meant to take.
    pub intended_path: Option<String>,
}

/// How a kernel's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every scenario passed and the kernel logged nothing.
    Pass,
    /// A scenario failed; the kernel logged nothing.
    Fail,
    /// The kernel logged a BUG, Oops, WARNING, lockdep report, lockup or panic.
    KernelFailure,
    /// The guest stopped before the runner finished, with no kernel failure.
    Incomplete,
    /// The guest could not be prepared or booted.
    SetupFailed,
}

/// One kernel's run.
#[derive(Debug, Clone, Serialize)]
pub struct KernelResult {
    /// Label: 6.1, 6.12, seed-bug or a path.
    pub kernel: String,
    /// `uname -r` in the guest (or the Debian ABI name).
    pub release: Option<String>,
    /// What the run was expected to show.
    pub expect: Expectation,
    /// How it ended.
    pub outcome: Outcome,
    /// Whether the outcome is the expected one (stock kernels pass;
    /// seed-bug shows the seed's BUG, caught and attributed).
    pub as_expected: bool,
    /// Host seconds from starting QEMU to the runner's first line.
    pub boot_s: Option<f64>,
    /// Host seconds for the whole guest run.
    pub wall_s: Option<f64>,
    /// Host seconds spent fetching and building before the boot.
    pub prepare_s: f64,
    /// The scenario in which the seed's BUG (remap_pfn_range from
    /// vfio_pci_mmap_fault) appeared, if it did.
    pub bug_scenario: Option<String>,
    /// The round in which it appeared, where the scenario reports rounds
    /// (first-touch does).
    pub bug_round: Option<u64>,
    /// Per scenario results.
    pub scenarios: Vec<ScenarioResult>,
    /// Per program results (selftest binaries, `--program`), with barmap's
    /// result for the same binary beside each.
    pub programs: Vec<crate::programs::ProgramResult>,
    /// Kernel failures outside any scenario (boot, module load, shutdown).
    pub other_kernel_failures: Vec<KernelEvent>,
    /// Setup errors and notes from the guest, and host-side errors.
    pub notes: Vec<String>,
    /// Where the full console log is.
    pub console_log: Option<String>,
}

fn u64_field(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

/// Whether an event is the seed's bug: the remap BUG from the fault handler.
pub fn is_seed_bug(e: &KernelEvent) -> bool {
    matches!(e.kind, KernelEventKind::Bug | KernelEventKind::Oops)
        && e.text.iter().any(|l| l.contains("remap_pfn_range"))
        && e.text.iter().any(|l| l.contains("vfio_pci_mmap_fault"))
}

/// Whether `e` is a breakpoint trap (`Oops: int3`) that no vfio code
/// raised: the kernel patching its own text (static keys, kprobes) with an
/// int3 that another vCPU still executes after the patch, which QEMU's TCG
/// can let happen. It says nothing of vfio-pci; the run is booted again.
pub fn is_text_patching_trap(e: &KernelEvent) -> bool {
    e.headline.contains("Oops: int3") && !e.text.iter().any(|l| l.contains("vfio"))
}

/// Builds the scenario results of a transcript.
pub fn scenario_results(t: &Transcript) -> Vec<ScenarioResult> {
    t.scenarios
        .iter()
        .filter(|s| !s.scenario.starts_with(crate::protocol::PROGRAM_PREFIX))
        .map(|s| {
            let r = s.report.clone().unwrap_or(Value::Null);
            let events: Vec<KernelEvent> = s
                .kernel_events
                .iter()
                .map(|&i| t.kernel_events[i].clone())
                .collect();
            let suite_passed = r.get("passed").and_then(Value::as_bool).unwrap_or(false);
            ScenarioResult {
                device: s.device.clone(),
                scenario: s.scenario.clone(),
                passed: s.finished() && suite_passed && events.is_empty(),
                skipped: r.get("skipped").and_then(Value::as_str).map(str::to_string),
                touches: u64_field(&r, "touches"),
                sigbus: u64_field(&r, "sigbus"),
                sigsegv: u64_field(&r, "sigsegv"),
                wrong_values: u64_field(&r, "wrong_values"),
                elapsed_ms: r.get("elapsed_ms").and_then(Value::as_f64).unwrap_or(0.0),
                errors: r
                    .get("errors")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|e| e.as_str().unwrap_or_default().to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
                finished: s.finished(),
                last_round: events.first().and_then(|e| e.round).or(s.last_round),
                kernel_failures: events,
                emulated: None,
                differs: None,
                placement: str_field(&r, "placement"),
                first_touch_ms: r.get("first_touch_ms").and_then(Value::as_f64),
                counted_first_touch_ms: r.get("counted_first_touch_ms").and_then(Value::as_f64),
                faults: r
                    .get("faults")
                    .and_then(Value::as_object)
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default(),
                fault_path: str_field(&r, "fault_path"),
                intended_path: str_field(&r, "intended_path"),
            }
        })
        .collect()
}

/// Decides the outcome of a run from its transcript, its scenarios and its
/// programs.
pub fn outcome(
    t: &Transcript,
    scenarios: &[ScenarioResult],
    programs: &[crate::programs::ProgramResult],
) -> Outcome {
    if !t.kernel_events.is_empty() {
        Outcome::KernelFailure
    } else if t.truncated()
        || scenarios.iter().any(|s| !s.finished)
        || programs.iter().any(|p| !p.finished)
    {
        Outcome::Incomplete
    } else if (scenarios.is_empty() && programs.is_empty())
        || scenarios.iter().any(|s| !s.passed)
        || programs.iter().any(|p| !p.passed)
        || t.done != Some(0)
    {
        Outcome::Fail
    } else {
        Outcome::Pass
    }
}

/// Where `kernel` and `emulated` (the same scenario on barmap) differ in
/// what a user can observe: passed, skipped, SIGBUS seen or not, wrong
/// values or not.
pub fn differences(
    kernel: &ScenarioResult,
    emulated: &barmap_target::scenario::Report,
) -> Option<String> {
    let mut d = Vec::new();
    if kernel.passed != emulated.passed {
        d.push(format!(
            "passed: kernel {} vs barmap {}",
            kernel.passed, emulated.passed
        ));
    }
    if kernel.skipped.is_some() != emulated.skipped.is_some() {
        d.push(format!(
            "skipped: kernel {} vs barmap {}",
            kernel.skipped.as_deref().unwrap_or("no"),
            emulated.skipped.as_deref().unwrap_or("no")
        ));
    }
    if (kernel.sigbus == 0) != (emulated.sigbus == 0) {
        d.push(format!(
            "SIGBUS: kernel {} vs barmap {}",
            kernel.sigbus, emulated.sigbus
        ));
    }
    if (kernel.wrong_values == 0) != (emulated.wrong_values == 0) {
        d.push(format!(
            "wrong values: kernel {} vs barmap {}",
            kernel.wrong_values, emulated.wrong_values
        ));
    }
    (!d.is_empty()).then(|| d.join("; "))
}

/// Prints a table of `results` to stdout.
pub fn print_table(results: &[KernelResult]) {
    if results.iter().any(|k| !k.scenarios.is_empty()) {
        println!(
            "{:<10} {:<14} {:<32} {:<8} {:>8} {:>7} {:>6} {:>10}  note",
            "kernel", "device", "scenario", "result", "touches", "sigbus", "wrong", "ms"
        );
    }
    for k in results {
        for s in &k.scenarios {
            let result = if !s.kernel_failures.is_empty() {
                "KERNEL"
            } else if !s.finished {
                "UNFIN"
            } else if s.skipped.is_some() {
                "skip"
            } else if s.passed {
                "pass"
            } else {
                "FAIL"
            };
            let note = if let Some(e) = s.kernel_failures.first() {
                format!(
                    "{} (round {})",
                    e.headline,
                    e.round.map_or("?".into(), |r| r.to_string())
                )
            } else if let Some(why) = &s.skipped {
                why.clone()
            } else {
                s.errors.first().cloned().unwrap_or_default()
            };
            println!(
                "{:<10} {:<14} {:<32} {:<8} {:>8} {:>7} {:>6} {:>10.1}  {}",
                k.kernel,
                s.device,
                s.scenario,
                result,
                s.touches,
                s.sigbus,
                s.wrong_values,
                s.elapsed_ms,
                note
            );
            if let Some(e) = &s.emulated {
                let result = if e.skipped.is_some() {
                    "skip"
                } else if e.passed {
                    "pass"
                } else {
                    "FAIL"
                };
                println!(
                    "{:<10} {:<14} {:<32} {:<8} {:>8} {:>7} {:>6} {:>10.1}  {}",
                    "",
                    "barmap",
                    s.scenario,
                    result,
                    e.touches,
                    e.sigbus,
                    e.wrong_values,
                    e.elapsed_ms,
                    s.differs
                        .as_deref()
                        .map_or(String::new(), |d| format!("DIFFERS: {d}"))
                );
            }
        }
        crate::programs::print_rows(&k.kernel, &k.programs);
        for s in k.scenarios.iter().filter(|s| s.first_touch_ms.is_some()) {
            let faults: Vec<String> = s.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!(
                "{:<10} whole-BAR first touch, {}: {:.1} ms (counted round {}), fault path {} \
                 (intended {}), faults: {}{}",
                k.kernel,
                s.placement.as_deref().unwrap_or("?"),
                s.first_touch_ms.unwrap_or(0.0),
                s.counted_first_touch_ms
                    .map_or("?".into(), |m| format!("{m:.1} ms")),
                s.fault_path.as_deref().unwrap_or("?"),
                s.intended_path.as_deref().unwrap_or("?"),
                if faults.is_empty() {
                    "not counted".to_string()
                } else {
                    faults.join(", ")
                },
                s.emulated
                    .as_ref()
                    .and_then(|e| e.first_touch_ms)
                    .map_or(String::new(), |m| format!("; barmap {m:.1} ms")),
            );
        }
        let verdict = if k.as_expected {
            "as expected"
        } else {
            "NOT as expected"
        };
        println!(
            "{:<10} release {} outcome {:?} ({verdict}); boot {}s, guest {}s, prepare {:.1}s{}",
            k.kernel,
            k.release.as_deref().unwrap_or("?"),
            k.outcome,
            k.boot_s.map_or("?".into(), |b| format!("{b:.1}")),
            k.wall_s.map_or("?".into(), |b| format!("{b:.1}")),
            k.prepare_s,
            match (&k.bug_scenario, k.bug_round) {
                (Some(sc), Some(r)) => format!("; seed BUG caught in {sc}, round {r}"),
                (Some(sc), None) => format!("; seed BUG caught in {sc}"),
                _ => String::new(),
            },
        );
        for e in &k.other_kernel_failures {
            println!(
                "{:<10} kernel failure outside scenarios: {}",
                k.kernel, e.headline
            );
        }
        for n in &k.notes {
            println!("{:<10} note: {n}", k.kernel);
        }
        if let Some(log) = &k.console_log {
            println!("{:<10} console log: {log}", k.kernel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_text_patching_trap;
    use crate::console::{KernelEvent, KernelEventKind};

    fn oops(headline: &str, text: &[&str]) -> KernelEvent {
        KernelEvent {
            kind: KernelEventKind::Oops,
            headline: headline.into(),
            text: text.iter().map(|l| l.to_string()).collect(),
            device: None,
            scenario: None,
            round: None,
            time_s: None,
        }
    }

    #[test]
    fn only_an_int3_oops_outside_vfio_is_a_text_patching_trap() {
        let sched = [
            "RIP: 0010:__schedule+0x30c/0x1080",
            "worker_thread+0xa5/0x320",
        ];
        assert!(is_text_patching_trap(&oops(
            "Oops: int3: 0000 [#1] SMP NOPTI",
            &sched
        )));
        let vfio = ["RIP: 0010:vfio_pci_mmap_huge_fault+0x12/0x80"];
        assert!(!is_text_patching_trap(&oops(
            "Oops: int3: 0000 [#1] SMP NOPTI",
            &vfio
        )));
        assert!(!is_text_patching_trap(&oops(
            "Oops: general protection fault, probably for non-canonical address",
            &sched
        )));
    }
}
