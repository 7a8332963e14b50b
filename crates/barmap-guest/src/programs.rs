//! Real VFIO clients in the guest: the kernel's VFIO selftests and plain
//! programs such as `examples/vfio_seed`, run unmodified against the
//! kernel's vfio-pci on the guest's ivshmem device, and the same binaries
//! under `barmap run` on the host beside them.
//!
//! The binaries are dynamically linked (so that `barmap run`'s preload
//! reaches them on the host); the guest gets each one under `/progs/` and
//! the shared libraries `ldd` names (libc, libuuid, the loader) at the
//! paths `ldd` gives, so the same file runs on both sides.

use crate::console::{KernelEvent, Transcript};
use crate::protocol::PROGRAM_PREFIX;
use crate::util::{run_output, Error, Result};
use barmap_front::kselftest::{self, BinaryResult, Totals};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs one program (a host path) under `barmap run` on barmap's emulated
/// device for the side-by-side column, given the PCI IDs of the guest
/// devices it runs against ([`ids`]); `None` if it cannot.
pub type EmulateProgram<'a> = &'a dyn Fn(&Path, &[&str]) -> Option<BinaryResult>;

/// Where programs go in the initramfs.
pub const GUEST_DIR: &str = "/progs";

/// PCI IDs (`vendor:device`) of the guest's devices.
pub mod ids {
    /// QEMU's ivshmem-plain: BAR0 256 bytes of registers, BAR2 the memory.
    pub const IVSHMEM: &str = "1af4:1110";
    /// QEMU's edu: BAR0 1 MiB of registers, MSI.
    pub const EDU: &str = "1234:11e8";
    /// QEMU's igb (QEMU 8.0 and later): an Intel 82576 port, BAR0 128 KiB
    /// of registers, MSI-X.
    pub const IGB: &str = "8086:10c9";

    /// The guest device a `PATH@NAME` suffix names (`edu`, `igb`).
    pub fn by_suffix(name: &str) -> Option<&'static str> {
        match name {
            "edu" => Some(EDU),
            "igb" => Some(IGB),
            _ => None,
        }
    }
}

/// A program to run in the guest.
#[derive(Debug, Clone, Serialize)]
pub struct HostProgram {
    /// File name (the report's key).
    pub name: String,
    /// The binary on the host.
    pub path: PathBuf,
    /// PCI IDs of the guest devices it runs against, in order.
    pub devices: Vec<&'static str>,
}

impl HostProgram {
    /// A program at `path`; fails unless it is a file.
    pub fn new(path: &Path) -> Result<HostProgram> {
        if !path.is_file() {
            return Err(Error::msg(format!("program {} not found", path.display())));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(HostProgram {
            name,
            path: path.to_path_buf(),
            devices: vec![ids::IVSHMEM],
        })
    }

    /// Its path in the guest.
    pub fn guest_path(&self) -> String {
        format!("{GUEST_DIR}/{}", self.name)
    }

    /// The runner's `--program` values: the guest path once per device.
    pub fn runner_specs(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|id| format!("{}@{id}", self.guest_path()))
            .collect()
    }
}

/// The absolute paths in `ldd` output: `name => /path (0x...)` and the
/// loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`; `linux-vdso` has none.
pub fn parse_ldd(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| p.to_string())
        })
        .collect()
}

/// The initramfs files for `programs`: each binary under [`GUEST_DIR`] and
/// every shared library `ldd` names at its own path (each once).
pub fn initramfs_files(programs: &[HostProgram]) -> Result<Vec<(String, PathBuf)>> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for p in programs {
        files.push((p.guest_path(), p.path.clone()));
        let out = run_output(Command::new("ldd").arg(&p.path))
            .map_err(|e| e.context(&format!("ldd {}", p.path.display())))?;
        for lib in parse_ldd(&out) {
            if !files.iter().any(|(d, _)| *d == lib) {
                files.push((lib.clone(), PathBuf::from(&lib)));
            }
        }
    }
    Ok(files)
}

/// One program on one kernel, with barmap's result for the same binary.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramResult {
    /// File name.
    pub program: String,
    /// The guest device it ran against.
    pub device: String,
    /// Whether it finished (a result line arrived).
    pub finished: bool,
    /// kselftest totals, if it printed them (or skipped as a whole).
    pub totals: Option<Totals>,
    /// Exit status in the guest.
    pub exit_code: Option<i32>,
    /// Signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Killed by the runner's per-program timeout.
    pub timed_out: bool,
    /// Passed: exit 0, or kselftest totals with no failure and exit 0 or 4,
    /// and no kernel failure while it ran.
    pub passed: bool,
    /// Guest seconds.
    pub elapsed_s: f64,
    /// Failed and skipped test lines (kselftest), or the FAIL lines of a
    /// plain program, and an assertion's first lines.
    pub notes: Vec<String>,
    /// Kernel failures logged while it ran.
    pub kernel_failures: Vec<KernelEvent>,
    /// The same binary under `barmap run` on the host.
    pub emulated: Option<BinaryResult>,
    /// Where the two disagree.
    pub differs: Option<String>,
    /// Its full output in the guest.
    #[serde(skip)]
    pub output: Vec<String>,
}

/// Lines worth showing: kselftest's `not ok` and SKIP lines, a plain
/// program's FAIL lines, and assertion reports.
pub fn notable(output: &[String]) -> Vec<String> {
    let text = output.join("\n");
    let mut v = kselftest::notable_lines(&text);
    for l in output {
        let t = l.trim();
        let wanted = (t.contains(" FAIL") && !t.starts_with('#'))
            || t.contains("Assertion Failure")
            || t.starts_with("Observed:")
            || t.starts_with("[errno");
        if wanted && !v.contains(l) {
            v.push(l.clone());
        }
    }
    v
}

/// Whether a result passed (see [`ProgramResult::passed`]).
pub fn verdict(totals: Option<Totals>, exit_code: Option<i32>) -> bool {
    match totals {
        Some(t) => t.fail == 0 && t.error == 0 && matches!(exit_code, Some(0 | 4)),
        None => exit_code == Some(0),
    }
}

/// The program runs of a transcript.
pub fn program_results(t: &Transcript) -> Vec<ProgramResult> {
    t.scenarios
        .iter()
        .filter_map(|s| {
            let program = s.scenario.strip_prefix(PROGRAM_PREFIX)?.to_string();
            let r = s.report.clone().unwrap_or(Value::Null);
            let exit_code = r.get("exit_code").and_then(Value::as_i64).map(|c| c as i32);
            let text = s.output.join("\n");
            let mut totals = kselftest::parse_totals(&text);
            if totals.is_none() && exit_code == Some(4) {
                // KSFT_SKIP before the harness started.
                totals = Some(Totals {
                    skip: 1,
                    ..Totals::default()
                });
            }
            let kernel_failures: Vec<KernelEvent> = s
                .kernel_events
                .iter()
                .map(|&i| t.kernel_events[i].clone())
                .collect();
            let mut notes = notable(&s.output);
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                notes.push(e.to_string());
            }
            if totals.is_none() && notes.is_empty() && exit_code != Some(0) {
                // Where it stopped (or why it failed before any test).
                let from = s.output.len().saturating_sub(3);
                notes.extend(s.output[from..].iter().cloned());
            }
            Some(ProgramResult {
                program,
                device: s.device.clone(),
                finished: s.finished(),
                totals,
                exit_code,
                signal: r.get("signal").and_then(Value::as_i64).map(|c| c as i32),
                timed_out: r.get("timed_out").and_then(Value::as_bool) == Some(true),
                passed: s.finished() && kernel_failures.is_empty() && verdict(totals, exit_code),
                elapsed_s: r.get("elapsed_s").and_then(Value::as_f64).unwrap_or(0.0),
                notes,
                kernel_failures,
                emulated: None,
                differs: None,
                output: s.output.clone(),
            })
        })
        .collect()
}

fn totals_text(t: Option<Totals>) -> String {
    t.map_or("no totals".into(), |t| {
        format!(
            "pass:{} fail:{} skip:{} error:{}",
            t.pass, t.fail, t.skip, t.error
        )
    })
}

/// Where the kernel's and barmap's results for a program differ: the
/// verdict, the totals, the exit status, and which tests failed or skipped.
pub fn differences(kernel: &ProgramResult, emulated: &BinaryResult) -> Option<String> {
    let mut d = Vec::new();
    let emulated_passed = verdict(emulated.totals, emulated.exit_code) && emulated.bugs == 0;
    if kernel.passed != emulated_passed {
        d.push(format!(
            "passed: kernel {} vs barmap {}",
            kernel.passed, emulated_passed
        ));
    }
    if kernel.totals != emulated.totals {
        d.push(format!(
            "totals: kernel {} vs barmap {}",
            totals_text(kernel.totals),
            totals_text(emulated.totals)
        ));
    }
    if kernel.exit_code != emulated.exit_code {
        d.push(format!(
            "exit: kernel {} vs barmap {}",
            kernel
                .exit_code
                .map_or("none".into(), |c: i32| c.to_string()),
            emulated.exit_code.map_or("none".into(), |c| c.to_string())
        ));
    }
    let tests = |notes: &[String]| -> Vec<String> {
        notes
            .iter()
            .filter(|n| n.starts_with("not ok") || n.starts_with("ok "))
            .map(|n| {
                // "not ok 3 F.V.T" / "ok 3 F.V.T # SKIP why": drop the number.
                let mut w = n.split_whitespace().collect::<Vec<_>>();
                if let Some(i) = w.iter().position(|x| x.parse::<u32>().is_ok()) {
                    w.remove(i);
                }
                w.join(" ")
            })
            .collect()
    };
    let (k, e) = (tests(&kernel.notes), tests(&emulated.notes));
    let only_k: Vec<&String> = k.iter().filter(|x| !e.contains(x)).collect();
    let only_e: Vec<&String> = e.iter().filter(|x| !k.contains(x)).collect();
    if !only_k.is_empty() {
        d.push(format!(
            "kernel only: {}",
            only_k
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !only_e.is_empty() {
        d.push(format!(
            "barmap only: {}",
            only_e
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    (!d.is_empty()).then(|| d.join("; "))
}

/// Prints the programs of one kernel's run as rows of the table.
pub fn print_rows(kernel: &str, programs: &[ProgramResult]) {
    if programs.is_empty() {
        return;
    }
    println!(
        "{:<10} {:<14} {:<32} {:<7} {:>5} {:>5} {:>5} {:>5} {:>8}  note",
        "kernel", "side", "program", "result", "pass", "fail", "skip", "exit", "secs"
    );
    for p in programs {
        let t = p.totals.unwrap_or_default();
        let result = if !p.kernel_failures.is_empty() {
            "KERNEL"
        } else if !p.finished {
            "UNFIN"
        } else if p.passed {
            "pass"
        } else {
            "FAIL"
        };
        let note = p
            .kernel_failures
            .first()
            .map(|e| e.headline.clone())
            .or_else(|| p.timed_out.then(|| "killed after the timeout".to_string()))
            .unwrap_or_default();
        println!(
            "{:<10} {:<14} {:<32} {:<7} {:>5} {:>5} {:>5} {:>5} {:>8.2}  {}",
            kernel,
            p.device,
            p.program,
            result,
            t.pass,
            t.fail,
            t.skip,
            p.exit_code
                .map_or(p.signal.map_or("-".into(), |s| format!("sig{s}")), |c| c
                    .to_string()),
            p.elapsed_s,
            note
        );
        for n in p.notes.iter().take(40) {
            println!("{:<10}     {n}", "");
        }
        if let Some(e) = &p.emulated {
            let t = e.totals.unwrap_or_default();
            println!(
                "{:<10} {:<14} {:<32} {:<7} {:>5} {:>5} {:>5} {:>5} {:>8.2}  {}",
                "",
                "barmap run",
                p.program,
                if verdict(e.totals, e.exit_code) && e.bugs == 0 {
                    "pass"
                } else {
                    "FAIL"
                },
                t.pass,
                t.fail,
                t.skip,
                e.exit_code.map_or("-".into(), |c| c.to_string()),
                e.elapsed_s,
                p.differs
                    .as_deref()
                    .map_or(String::new(), |d| format!("DIFFERS: {d}"))
            );
            for n in e
                .notes
                .iter()
                .filter(|n| !n.starts_with("barmap run:"))
                .take(40)
            {
                println!("{:<10}     {n}", "");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_and_loader_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc5a5f2000)\n\
                   \tlibuuid.so.1 => /lib/x86_64-linux-gnu/libuuid.so.1 (0x00007f0c)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0d)\n";
        assert_eq!(
            parse_ldd(out),
            [
                "/lib/x86_64-linux-gnu/libuuid.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn a_protocol_line_cut_by_a_kernel_message_is_joined() {
        let mut p = crate::console::ConsoleParser::new();
        p.feed(r#"@@barmap@@ start {"device":"d","scenario":"program:t"}"#);
        p.feed(r#"@@barmap@@ output {"line":"/src/lib/io[    6.842716] vfio-pci 0000:01:00.0: reset done"#);
        p.feed(r#"mmu.c:444: Assertion Failure"}"#);
        p.feed(
            r#"@@barmap@@ result {"device":"d","scenario":"program:t","report":{"exit_code":1}}"#,
        );
        p.feed(r#"@@barmap@@ start {"device":"d","scenario":"program:u"}"#);
        p.feed(r#"@@barmap@@ output {"line":"a line whose end was lost"#);
        let t = p.finish();
        assert!(t.protocol_errors.is_empty(), "{:?}", t.protocol_errors);
        assert_eq!(t.scenarios[1].output, ["a line whose end was lost"]);
        assert_eq!(
            t.scenarios[0].output,
            ["/src/lib/iommu.c:444: Assertion Failure"]
        );
    }

    #[test]
    fn verdicts_follow_kselftest_and_exit_codes() {
        let t = |fail| {
            Some(Totals {
                pass: 3,
                fail,
                ..Totals::default()
            })
        };
        assert!(verdict(t(0), Some(0)));
        assert!(!verdict(t(1), Some(1)));
        assert!(verdict(t(0), Some(4)));
        assert!(verdict(None, Some(0)));
        assert!(!verdict(None, Some(1)));
    }

    #[test]
    fn program_runs_are_read_from_the_console() {
        let mut p = crate::console::ConsoleParser::new();
        p.feed(r#"@@barmap@@ start {"device":"0000:01:00.0","scenario":"program:t"}"#);
        p.feed(r#"@@barmap@@ output {"line":"not ok 1 a.b.c"}"#);
        p.feed(
            r##"@@barmap@@ output {"line":"# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0"}"##,
        );
        p.feed(
            r#"@@barmap@@ result {"device":"0000:01:00.0","scenario":"program:t","report":{"passed":false,"exit_code":1,"elapsed_s":0.5}}"#,
        );
        let r = program_results(&p.finish());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].program, "t");
        assert_eq!(r[0].totals.unwrap().fail, 1);
        assert!(!r[0].passed);
        assert_eq!(r[0].notes, ["not ok 1 a.b.c"]);
        let emulated = BinaryResult {
            name: "t".into(),
            totals: Some(Totals {
                pass: 2,
                ..Totals::default()
            }),
            exit_code: Some(0),
            notes: vec![],
            modes: vec![],
            bugs: 0,
            elapsed_s: 0.1,
        };
        let d = differences(&r[0], &emulated).unwrap();
        assert!(d.contains("kernel only: not ok a.b.c"), "{d}");
    }
}
