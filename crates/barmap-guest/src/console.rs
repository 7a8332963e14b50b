//! Parsing the guest's console: protocol lines from the runner and kernel
//! messages, interleaved as the serial port delivered them.
//!
//! Any BUG, WARNING, Oops, lockdep splat, soft lockup, RCU stall, hung task
//! or panic is a [`KernelEvent`], attributed to the scenario (and round) that
//! was running when it appeared, with its text kept.

use crate::protocol::{kind, ScenarioLine, MARKER};
use serde::Serialize;
use serde_json::Value;

/// What kind of kernel failure a console message reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelEventKind {
    /// `kernel BUG at ...` or another `BUG: ...`.
    Bug,
    /// `WARNING: CPU: ...` (WARN_ON and friends).
    Warning,
    /// An oops without a preceding BUG line (page fault, GP fault, ...).
    Oops,
    /// A lockdep report (`WARNING: possible circular locking dependency`, ...).
    Lockdep,
    /// `BUG: soft lockup`.
    SoftLockup,
    /// An RCU stall.
    RcuStall,
    /// `INFO: task ... blocked for more than N seconds`.
    HungTask,
    /// `Kernel panic - not syncing`.
    Panic,
}

impl KernelEventKind {
    /// Whether the kernel killed a task or stopped making progress (the
    /// guest may never finish by itself after one of these).
    pub fn is_fatal(self) -> bool {
        !matches!(self, KernelEventKind::Warning | KernelEventKind::Lockdep)
    }
}

/// One kernel failure seen on the console.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelEvent {
    /// The class of failure.
    pub kind: KernelEventKind,
    /// The line that announced it (timestamp removed).
    pub headline: String,
    /// The report as printed (timestamps removed), up to the end marker.
    pub text: Vec<String>,
    /// Device of the scenario running at the time, if any.
    pub device: Option<String>,
    /// Scenario running at the time, if any.
    pub scenario: Option<String>,
    /// Last round the scenario reported before the event, if any.
    pub round: Option<u64>,
    /// printk timestamp of the headline, in seconds since boot.
    pub time_s: Option<f64>,
}

/// One scenario as seen on the console.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioRun {
    /// Device name.
    pub device: String,
    /// Scenario name.
    pub scenario: String,
    /// The runner's report, if the scenario finished.
    pub report: Option<Value>,
    /// The last round reported.
    pub last_round: Option<u64>,
    /// Indexes into [`Transcript::kernel_events`] attributed to this run.
    pub kernel_events: Vec<usize>,
    /// Output lines ([`kind::OUTPUT`]) received while it ran (programs).
    pub output: Vec<String>,
}

impl ScenarioRun {
    /// Whether a result line arrived.
    pub fn finished(&self) -> bool {
        self.report.is_some()
    }
}

/// Everything the console said.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Transcript {
    /// The runner's hello payload.
    pub hello: Option<Value>,
    /// printk time at which the hello line arrived (boot time), if known.
    pub hello_time_s: Option<f64>,
    /// Setup errors reported by init or the runner.
    pub setup_errors: Vec<Value>,
    /// Scenarios in the order they started.
    pub scenarios: Vec<ScenarioRun>,
    /// Kernel failures in the order they appeared.
    pub kernel_events: Vec<KernelEvent>,
    /// The taint value, if init reported TAINT_DIE.
    pub taint: Option<u64>,
    /// Whether the guest's own deadline passed.
    pub guest_timeout: bool,
    /// The runner's exit code, if it finished.
    pub done: Option<i32>,
    /// Protocol lines that could not be decoded.
    pub protocol_errors: Vec<String>,
}

impl Transcript {
    /// Whether the run ended before the runner said it was done.
    pub fn truncated(&self) -> bool {
        self.done.is_none()
    }

    /// Whether the guest stopped by itself: the runner started and never
    /// said it was done, and the console shows no kernel failure, no
    /// TAINT_DIE and no passed deadline. A silent reset of the guest
    /// (which `-no-reboot` turns into QEMU's exit) looks like this; TCG
    /// guests show one now and then, and such a run says nothing about
    /// the kernel under test.
    pub fn stopped_silently(&self) -> bool {
        self.hello.is_some()
            && self.truncated()
            && self.kernel_events.is_empty()
            && self.taint.is_none()
            && !self.guest_timeout
    }

    /// Kernel events attributed to no scenario.
    pub fn unattributed_events(&self) -> impl Iterator<Item = &KernelEvent> {
        self.kernel_events.iter().filter(|e| e.scenario.is_none())
    }
}

/// Incremental console parser: feed it lines, then [`ConsoleParser::finish`].
#[derive(Debug, Default)]
pub struct ConsoleParser {
    out: Transcript,
    /// Index of the scenario running now (started, no result yet).
    running: Option<usize>,
    /// Index of the kernel event whose text is still being collected.
    open_event: Option<usize>,
    /// Last printk timestamp seen.
    last_time: Option<f64>,
    /// The head of a protocol line a kernel message cut in two; the next
    /// console line is its tail.
    split: Option<String>,
}

/// Where a printk timestamp (`[   12.345678] `) starts inside `s`, if one does.
fn printk_inside(s: &str) -> Option<usize> {
    s.match_indices('[')
        .map(|(i, _)| i)
        .find(|&i| strip_timestamp(&s[i..]).0.is_some())
}

/// Longest kernel report kept, in lines.
const MAX_EVENT_LINES: usize = 120;

/// Splits `[  12.345678] text` into (Some(12.345678), "text"); other lines
/// come back unchanged with no time.
pub fn strip_timestamp(line: &str) -> (Option<f64>, &str) {
    let t = line.trim_start_matches(['\r', '\0']);
    if let Some(rest) = t.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let stamp = rest[..end].trim();
            if let Ok(secs) = stamp.parse::<f64>() {
                let text = &rest[end + 1..];
                return (Some(secs), text.strip_prefix(' ').unwrap_or(text));
            }
        }
    }
    (None, t)
}

/// Classifies a kernel message (timestamp removed) that starts a report.
pub fn classify(msg: &str) -> Option<KernelEventKind> {
    let m = msg.trim_start();
    if m.contains("kernel BUG at") {
        Some(KernelEventKind::Bug)
    } else if m.contains("BUG: soft lockup") {
        Some(KernelEventKind::SoftLockup)
    } else if m.starts_with("BUG: ") || m.contains("] BUG: ") {
        Some(KernelEventKind::Bug)
    } else if m.starts_with("WARNING: CPU:") {
        Some(KernelEventKind::Warning)
    } else if m.starts_with("WARNING: ") && (m.contains("lock") || m.contains("RCU")) {
        Some(KernelEventKind::Lockdep)
    } else if m.starts_with("WARNING: ") {
        Some(KernelEventKind::Warning)
    } else if m.starts_with("Oops:")
        || m.starts_with("invalid opcode:")
        || m.starts_with("general protection fault")
    {
        Some(KernelEventKind::Oops)
    } else if m.starts_with("rcu: INFO:") && m.contains("stall") {
        Some(KernelEventKind::RcuStall)
    } else if m.starts_with("INFO: task ") && m.contains("blocked for more than") {
        Some(KernelEventKind::HungTask)
    } else if m.starts_with("Kernel panic - not syncing") {
        Some(KernelEventKind::Panic)
    } else {
        None
    }
}

impl ConsoleParser {
    /// A parser with nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one console line (without its newline).
    pub fn feed(&mut self, raw: &str) {
        if let Some(head) = self.split.take() {
            if !raw.contains(MARKER) {
                // The tail of a protocol line a kernel message cut.
                self.protocol_line(&format!("{head}{raw}"));
                return;
            }
            self.protocol_line(&head);
        }
        if let Some(at) = raw.find(MARKER) {
            // Kernel text printed on the same line before the marker.
            if at > 0 {
                self.kernel_line(&raw[..at]);
            }
            let rest = &raw[at + MARKER.len()..];
            let undecodable = rest
                .trim_start()
                .split_once(' ')
                .is_some_and(|(_, json)| first_json_value(json).is_none());
            match printk_inside(rest).filter(|_| undecodable) {
                // A kernel message landed inside the line: its tail
                // follows on the next console line.
                Some(p) => {
                    self.split = Some(rest[..p].to_string());
                    self.kernel_line(&rest[p..]);
                }
                None => self.protocol_line(rest),
            }
        } else {
            self.kernel_line(raw);
        }
    }

    /// Ends parsing and returns what was seen.
    pub fn finish(mut self) -> Transcript {
        if let Some(head) = self.split.take() {
            self.protocol_line(&head);
        }
        self.out
    }

    /// A read-only view of what has been parsed so far.
    pub fn transcript(&self) -> &Transcript {
        &self.out
    }

    fn kernel_line(&mut self, raw: &str) {
        let (time, msg) = strip_timestamp(raw);
        if time.is_some() {
            self.last_time = time;
        }
        let msg = msg.trim_end();
        if let Some(i) = self.open_event {
            let ev = &mut self.out.kernel_events[i];
            ev.text.push(msg.to_string());
            if msg.contains("---[ end trace") || ev.text.len() >= MAX_EVENT_LINES {
                self.open_event = None;
            }
            return;
        }
        let Some(kind) = classify(msg) else { return };
        let (device, scenario, round) = match self.running {
            Some(r) => {
                let s = &self.out.scenarios[r];
                (
                    Some(s.device.clone()),
                    Some(s.scenario.clone()),
                    s.last_round,
                )
            }
            None => (None, None, None),
        };
        let idx = self.out.kernel_events.len();
        self.out.kernel_events.push(KernelEvent {
            kind,
            headline: msg.trim().to_string(),
            text: vec![msg.to_string()],
            device,
            scenario,
            round,
            time_s: time,
        });
        if let Some(r) = self.running {
            self.out.scenarios[r].kernel_events.push(idx);
        }
        self.open_event = Some(idx);
    }

    fn protocol_line(&mut self, rest: &str) {
        let rest = rest.trim_start();
        let (k, json) = rest.split_once(' ').unwrap_or((rest, ""));
        let payload = match first_json_value(json) {
            Some(v) => v,
            None if json.trim().is_empty() => Value::Null,
            // An output line whose end the console lost: keep its text.
            None if k == kind::OUTPUT && json.trim_start().starts_with(r#"{"line":""#) => {
                let text = json.trim_start()[r#"{"line":""#.len()..].trim_end();
                let text = text.strip_suffix(r#""}"#).unwrap_or(text);
                serde_json::json!({ "line": text.replace(r#"\""#, "\"") })
            }
            None => {
                self.out.protocol_errors.push(rest.to_string());
                return;
            }
        };
        match k {
            kind::HELLO => {
                self.out.hello = Some(payload);
                self.out.hello_time_s = self.last_time;
            }
            kind::SETUP_ERROR => self.out.setup_errors.push(payload),
            kind::START | kind::ROUND | kind::RESULT => self.scenario_line(k, payload, rest),
            kind::TAINT => {
                self.out.taint = Some(payload.get("tainted").and_then(Value::as_u64).unwrap_or(0))
            }
            kind::GUEST_TIMEOUT => self.out.guest_timeout = true,
            kind::OUTPUT => {
                let text = payload.get("line").and_then(Value::as_str).unwrap_or("");
                if let Some(r) = self.running {
                    self.out.scenarios[r].output.push(text.to_string());
                }
            }
            kind::DONE => {
                let code = payload.get("exit").and_then(Value::as_i64).unwrap_or(-1);
                self.out.done = Some(code as i32);
                self.running = None;
            }
            _ => self.out.protocol_errors.push(rest.to_string()),
        }
    }

    fn scenario_line(&mut self, k: &str, payload: Value, rest: &str) {
        let Ok(line) = serde_json::from_value::<ScenarioLine>(payload) else {
            self.out.protocol_errors.push(rest.to_string());
            return;
        };
        let same = |s: &ScenarioRun| s.device == line.device && s.scenario == line.scenario;
        match k {
            kind::START => {
                self.out.scenarios.push(ScenarioRun {
                    device: line.device,
                    scenario: line.scenario,
                    report: None,
                    last_round: None,
                    kernel_events: Vec::new(),
                    output: Vec::new(),
                });
                self.running = Some(self.out.scenarios.len() - 1);
            }
            kind::ROUND => {
                if let Some(r) = self.running.filter(|&r| same(&self.out.scenarios[r])) {
                    self.out.scenarios[r].last_round = line.round;
                }
            }
            _ => {
                let r = match self.running.filter(|&r| same(&self.out.scenarios[r])) {
                    Some(r) => r,
                    None => {
                        // A result without a start: record it anyway.
                        self.out.scenarios.push(ScenarioRun {
                            device: line.device.clone(),
                            scenario: line.scenario.clone(),
                            report: None,
                            last_round: None,
                            kernel_events: Vec::new(),
                            output: Vec::new(),
                        });
                        self.out.scenarios.len() - 1
                    }
                };
                self.out.scenarios[r].report = Some(line.report.unwrap_or(Value::Null));
                self.running = None;
            }
        }
    }
}

/// The first JSON value in `s`, ignoring whatever follows it (kernel text
/// can land on the same serial line).
fn first_json_value(s: &str) -> Option<Value> {
    let mut it = serde_json::Deserializer::from_str(s.trim_start()).into_iter::<Value>();
    it.next()?.ok()
}

/// Parses a whole console log.
pub fn parse(log: &str) -> Transcript {
    let mut p = ConsoleParser::new();
    for line in log.lines() {
        p.feed(line);
    }
    p.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str =
        r#"@@barmap@@ hello {"kernel":"6.1.0-56-cloud-amd64","devices":["0000:00:02.0"]}"#;

    #[test]
    fn a_clean_run_yields_every_result_and_no_kernel_event() {
        let log = [
            "[    0.000000] Linux version 6.1.0-56-cloud-amd64",
            "[    1.200000] vfio-pci 0000:00:02.0: enabling device (0000 -> 0002)",
            HELLO,
            r#"@@barmap@@ start {"device":"0000:00:02.0","scenario":"concurrent_first_touch"}"#,
            r#"@@barmap@@ round {"device":"0000:00:02.0","scenario":"concurrent_first_touch","round":1}"#,
            r#"@@barmap@@ result {"device":"0000:00:02.0","scenario":"concurrent_first_touch","report":{"passed":true,"touches":16,"sigbus":0}}"#,
            r#"@@barmap@@ start {"device":"0000:00:02.0","scenario":"disable_sigbus"}"#,
            r#"@@barmap@@ result {"device":"0000:00:02.0","scenario":"disable_sigbus","report":{"passed":true,"touches":8,"sigbus":8}}"#,
            r#"@@barmap@@ done {"exit":0}"#,
            "[    9.000000] reboot: Power down",
        ]
        .join("\r\n");
        let t = parse(&log);
        assert_eq!(t.hello.as_ref().unwrap()["kernel"], "6.1.0-56-cloud-amd64");
        assert_eq!(t.hello_time_s, Some(1.2));
        assert_eq!(t.scenarios.len(), 2);
        assert!(t.scenarios.iter().all(ScenarioRun::finished));
        assert_eq!(t.scenarios[0].last_round, Some(1));
        assert_eq!(t.scenarios[1].report.as_ref().unwrap()["sigbus"], 8);
        assert!(t.kernel_events.is_empty());
        assert_eq!(t.done, Some(0));
        assert!(!t.truncated());
        assert!(!t.stopped_silently());
        assert!(t.protocol_errors.is_empty());
    }

    #[test]
    fn a_guest_that_stops_mid_scenario_without_a_word_stopped_silently() {
        let log = [
            HELLO,
            r#"@@barmap@@ start {"device":"0000:00:02.0","scenario":"reset-while-faulting@aligned"}"#,
            r#"@@barmap@@ round {"device":"0000:00:02.0","scenario":"reset-while-faulting@aligned","round":1}"#,
            "[    6.508573] vfio-pci 0000:00:02.0: resetting",
        ]
        .join("\r\n");
        assert!(parse(&log).stopped_silently());
        let timed_out = log.clone() + "\r\n@@barmap@@ guest_timeout {}";
        let t = parse(&timed_out);
        assert!(t.guest_timeout, "the deadline line is recognised");
        assert!(!t.stopped_silently(), "a passed deadline is not silent");
        assert!(!parse("[    0.500000] Linux version 6.1.0").stopped_silently());
    }

    /// The seed's BUG as 6.1 prints it on x86 (abridged), in the middle of
    /// the concurrent first-touch scenario, then init's taint report.
    const SEED_BUG: &str = r#"[    4.100000] vfio-pci 0000:00:03.0: enabling device (0000 -> 0002)
@@barmap@@ hello {"kernel":"6.1.0-56-cloud-amd64","devices":["0000:00:03.0"]}
@@barmap@@ start {"device":"0000:00:03.0","scenario":"concurrent_first_touch"}
@@barmap@@ round {"device":"0000:00:03.0","scenario":"concurrent_first_touch","round":1}
@@barmap@@ round {"device":"0000:00:03.0","scenario":"concurrent_first_touch","round":2}
[    5.312345] ------------[ cut here ]------------
[    5.312400] kernel BUG at mm/memory.c:2402!
[    5.312500] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[    5.312600] CPU: 1 PID: 93 Comm: barmap Tainted: G           OE      6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    5.312700] RIP: 0010:remap_pfn_range_notrack+0x3a5/0x4c0
[    5.312800] Call Trace:
[    5.312900]  <TASK>
[    5.313000]  remap_pfn_range+0x5a/0xa0
[    5.313100]  vfio_pci_mmap_fault+0x8a/0x110 [vfio_pci_core]
[    5.313200]  __do_fault+0x37/0x130
[    5.313300]  </TASK>
[    5.313400] ---[ end trace 0000000000000000 ]---
[    5.313500] note: barmap[93] exited with preempt_count 1
@@barmap@@ taint {"tainted":12416}
[    6.000000] reboot: Power down"#;

    #[test]
    fn a_bug_during_a_scenario_is_attributed_to_it_with_its_text_and_round() {
        let t = parse(SEED_BUG);
        assert_eq!(t.kernel_events.len(), 1, "{:#?}", t.kernel_events);
        let ev = &t.kernel_events[0];
        assert_eq!(ev.kind, KernelEventKind::Bug);
        assert_eq!(ev.headline, "kernel BUG at mm/memory.c:2402!");
        assert_eq!(ev.scenario.as_deref(), Some("concurrent_first_touch"));
        assert_eq!(ev.device.as_deref(), Some("0000:00:03.0"));
        assert_eq!(ev.round, Some(2));
        assert_eq!(ev.time_s, Some(5.3124));
        assert!(ev.text.iter().any(|l| l.contains("vfio_pci_mmap_fault")));
        assert!(ev.text.iter().any(|l| l.contains("remap_pfn_range")));
        assert!(ev.text.last().unwrap().contains("end trace"));
        assert_eq!(t.scenarios[0].kernel_events, vec![0]);
        assert!(!t.scenarios[0].finished());
        assert_eq!(t.taint, Some(12416));
        assert!(t.truncated());
    }

    #[test]
    fn a_truncated_run_leaves_the_running_scenario_unfinished() {
        let log = [
            HELLO,
            r#"@@barmap@@ start {"device":"0000:00:02.0","scenario":"toggle_storm"}"#,
            r#"@@barmap@@ round {"device":"0000:00:02.0","scenario":"toggle_storm","round":7}"#,
            r#"@@barmap@@ result {"device":"0000:00:02.0","scenario":"toggl"#,
        ]
        .join("\n");
        let t = parse(&log);
        assert!(t.truncated());
        assert_eq!(t.scenarios.len(), 1);
        assert!(!t.scenarios[0].finished());
        assert_eq!(t.scenarios[0].last_round, Some(7));
        assert_eq!(t.protocol_errors.len(), 1);
        assert!(t.kernel_events.is_empty());
    }

    #[test]
    fn warnings_lockdep_and_soft_lockups_are_classified() {
        let cases = [
            (
                "WARNING: CPU: 0 PID: 1 at drivers/vfio/pci/vfio_pci_core.c:100 f+0x1/0x2",
                KernelEventKind::Warning,
            ),
            (
                "WARNING: possible circular locking dependency detected",
                KernelEventKind::Lockdep,
            ),
            ("WARNING: suspicious RCU usage", KernelEventKind::Lockdep),
            (
                "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [barmap:90]",
                KernelEventKind::SoftLockup,
            ),
            (
                "BUG: unable to handle page fault for address: ffff",
                KernelEventKind::Bug,
            ),
            (
                "general protection fault, probably for non-canonical address",
                KernelEventKind::Oops,
            ),
            (
                "rcu: INFO: rcu_preempt self-detected stall on CPU",
                KernelEventKind::RcuStall,
            ),
            (
                "INFO: task barmap:91 blocked for more than 120 seconds.",
                KernelEventKind::HungTask,
            ),
            (
                "Kernel panic - not syncing: Fatal exception",
                KernelEventKind::Panic,
            ),
        ];
        for (msg, kind) in cases {
            assert_eq!(classify(msg), Some(kind), "{msg}");
        }
        for benign in [
            "vfio-pci 0000:00:02.0: enabling device (0000 -> 0002)",
            "Run /init as init process",
            "  with arguments: BUG=no",
        ] {
            assert_eq!(classify(benign), None, "{benign}");
        }
    }

    #[test]
    fn a_warning_outside_any_scenario_is_unattributed() {
        let log = "[    1.000000] WARNING: CPU: 0 PID: 1 at kernel/foo.c:1 foo+0x0/0x10\n\
                   [    1.000100] ---[ end trace 0000000000000000 ]---\n";
        let t = parse(log);
        assert_eq!(t.unattributed_events().count(), 1);
        assert_eq!(t.kernel_events[0].text.len(), 2);
    }

    #[test]
    fn a_marker_after_kernel_text_on_one_line_is_still_read() {
        let log = [
            HELLO,
            r#"[    3.000000] random: crng init done@@barmap@@ start {"device":"d","scenario":"s"}"#,
            r#"@@barmap@@ result {"device":"d","scenario":"s","report":{"passed":true}}[    3.1] tail"#,
        ]
        .join("\n");
        let t = parse(&log);
        assert_eq!(t.scenarios.len(), 1);
        assert!(t.scenarios[0].finished());
        assert!(t.protocol_errors.is_empty());
    }

    #[test]
    fn timestamps_are_stripped_only_when_they_parse() {
        assert_eq!(
            strip_timestamp("[   12.500000] hello"),
            (Some(12.5), "hello")
        );
        assert_eq!(strip_timestamp("[not a time] x"), (None, "[not a time] x"));
        assert_eq!(strip_timestamp("\r[    0.1] y"), (Some(0.1), "y"));
    }
}
