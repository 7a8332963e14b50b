//! `barmap conformance [--json] [--model M] [--driver D]`: every real
//! driver available for every model in the registry
//! ([`barmap_models::MODELS`]), one cell each, pass, fail or skip with the
//! reason. The drivers (the matrix's columns):
//!
//! - `selftests`: the kernel's `vfio_pci_driver_test` (built unmodified
//!   from Debian's linux-source, as `barmap selftests` does) in every IOMMU
//!   mode, on every model its library has a driver for
//!   (`tools/testing/selftests/vfio/lib/drivers/<model>`);
//! - `dmadev_autotest`, `dma-perf`, `testpmd`: DPDK 24.11 (Debian trixie,
//!   unpacked privately, as `barmap dpdk` runs it) on the models DPDK has
//!   an unpacked driver for: dma_ioat, net_e1000's igb;
//! - `guest driver`: a guest's own use of the device through QEMU 11.1's
//!   vfio-pci passthrough under `barmap run` (`examples/qemu_vfio_pci.sh`:
//!   the guest kernel's ioatdma and its DMA self-test on ioat, its igb
//!   with link on igb, the BAR through sysfs on the default device),
//!   iommufd and the legacy container;
//! - `QEMU reference`: the same program in `barmap guest` on QEMU's own
//!   model of the device behind the guest kernel's vfio-pci and under
//!   `barmap run` on barmap's, transcripts compared (edu: `edu_test`; igb:
//!   `igb_loopback`, QEMU's igb from QEMU 11.1).
//!
//! A model registered later (a new name in `MODELS`) gets a row at once:
//! its cells run where a driver applies (the selftests' library names it)
//! and are skipped with the reason elsewhere. Progress goes to stderr, the
//! matrix (or `--json`) to stdout; exit 0 when no cell failed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use barmap::Policy;
use barmap_front::kselftest;
use barmap_front::spec::{DeviceSpec, RunSpec};
use barmap_guest::kernel::KernelChoice;
use barmap_guest::selftests;
use serde::Serialize;

use crate::dpdk_cmd;

/// The matrix's columns, in order.
pub const DRIVERS: [&str; 6] = [
    "selftests",
    "dmadev_autotest",
    "dma-perf",
    "testpmd",
    "guest driver",
    "QEMU reference",
];

/// The selftest binary whose library drives devices.
const DRIVER_TEST: &str = "vfio_pci_driver_test";

/// The program sources the matrix builds into the cache (it runs from
/// any directory).
const EDU_TEST_C: &str = include_str!("../../../examples/edu_test.c");
const IGB_LOOPBACK_C: &str = include_str!("../../../examples/igb_loopback.c");
const QEMU_VFIO_PCI_SH: &str = include_str!("../../../examples/qemu_vfio_pci.sh");
const QEMU_GUEST_BAR2_C: &str = include_str!("../../../examples/qemu_guest_bar2.c");

/// Arguments of `barmap conformance`.
#[derive(clap::Args, Debug)]
pub struct ConformanceArgs {
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Only these models (repeatable; default: every registered model).
    #[arg(long = "model")]
    models: Vec<String>,
    /// Only these drivers (repeatable; default: all of them).
    #[arg(long = "driver", value_name = "NAME")]
    drivers: Vec<String>,
    /// Fault policy of the devices.
    #[arg(long, default_value = "prefault")]
    policy: Policy,
    /// Cache directory (default: $BARMAP_CACHE or $HOME/.cache/barmap/guest).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// A cell's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The driver ran and accepted the device.
    Pass,
    /// The driver ran and did not.
    Fail,
    /// The driver could not run on this model (the detail says why).
    Skip,
}

/// One model under one driver.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The model's registry name.
    pub model: String,
    /// The driver (a [`DRIVERS`] entry).
    pub driver: String,
    /// Pass, fail or skip.
    pub verdict: Verdict,
    /// What ran and what it said, or why it was skipped.
    pub detail: String,
    /// Seconds it took (0 for a skip).
    pub elapsed_s: f64,
}

struct Matrix {
    cells: Vec<Cell>,
}

impl Matrix {
    fn put(&mut self, model: &str, driver: &str, verdict: Verdict, detail: String, t: Instant) {
        let elapsed_s = match verdict {
            Verdict::Skip => 0.0,
            _ => (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        };
        eprintln!(
            "barmap conformance: {model} / {driver}: {} ({detail})",
            match verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            }
        );
        self.cells.push(Cell {
            model: model.to_string(),
            driver: driver.to_string(),
            verdict,
            detail,
            elapsed_s,
        });
    }

    fn skip(&mut self, model: &str, driver: &str, why: impl Into<String>) {
        self.put(model, driver, Verdict::Skip, why.into(), Instant::now());
    }

    fn judge(&mut self, model: &str, driver: &str, ok: bool, detail: String, t: Instant) {
        let v = if ok { Verdict::Pass } else { Verdict::Fail };
        self.put(model, driver, v, detail, t);
    }
}

fn progress(line: &str) {
    eprintln!("barmap conformance: {line}");
}

/// Runs the command; 0 when no cell failed.
pub fn run(args: &ConformanceArgs) -> i32 {
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(barmap_guest::util::default_cache_dir);
    let work = cache.join("conformance");
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("barmap conformance: {}: {e}", work.display());
        return 2;
    }
    if let Some(d) = args.drivers.iter().find(|d| !DRIVERS.contains(&d.as_str())) {
        eprintln!(
            "barmap conformance: unknown driver {d:?} (known: {})",
            DRIVERS.join(", ")
        );
        return 2;
    }
    if let Some(m) = args
        .models
        .iter()
        .find(|m| !barmap_models::MODELS.contains(&m.as_str()))
    {
        eprintln!(
            "barmap conformance: unknown model {m:?} (known: {})",
            barmap_models::MODELS.join(", ")
        );
        return 2;
    }
    let models: Vec<&str> = barmap_models::MODELS
        .iter()
        .copied()
        .filter(|m| args.models.is_empty() || args.models.iter().any(|x| x == m))
        .collect();
    let wanted = |d: &str| args.drivers.is_empty() || args.drivers.iter().any(|x| x == d);
    let started = Instant::now();
    let mut m = Matrix { cells: Vec::new() };
    if wanted("selftests") {
        selftests_column(&mut m, &models, args.policy, &cache);
    }
    let dpdk_cols: Vec<&str> = ["dmadev_autotest", "dma-perf", "testpmd"]
        .into_iter()
        .filter(|d| wanted(d))
        .collect();
    if !dpdk_cols.is_empty() {
        dpdk_columns(&mut m, &models, &dpdk_cols, args.policy, &cache);
    }
    let qemu = if wanted("guest driver") || wanted("QEMU reference") {
        passthrough_column(&mut m, &models, wanted("guest driver"), &cache, &work)
    } else {
        None
    };
    if wanted("QEMU reference") {
        reference_column(&mut m, &models, args.policy, &cache, &work, qemu.as_deref());
    }
    let failed = m
        .cells
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .count();
    let count = |v: Verdict| m.cells.iter().filter(|c| c.verdict == v).count();
    if args.json {
        let v = serde_json::json!({
            "ok": failed == 0,
            "models": models,
            "drivers": DRIVERS.iter().filter(|d| wanted(d)).collect::<Vec<_>>(),
            "pass": count(Verdict::Pass),
            "fail": failed,
            "skip": count(Verdict::Skip),
            "elapsed_s": started.elapsed().as_secs_f64().round(),
            "cells": m.cells,
        });
        println!("{v}");
    } else {
        print!("{}", table(&m.cells, &models));
    }
    progress(&format!(
        "{} pass, {} fail, {} skip in {:.0} s",
        count(Verdict::Pass),
        failed,
        count(Verdict::Skip),
        started.elapsed().as_secs_f64()
    ));
    i32::from(failed != 0)
}

/// The matrix as a Markdown table (as README shows it), then each cell's
/// detail.
pub fn table(cells: &[Cell], models: &[&str]) -> String {
    let drivers: Vec<&str> = DRIVERS
        .iter()
        .copied()
        .filter(|d| cells.iter().any(|c| c.driver == *d))
        .collect();
    let mut s = String::new();
    let _ = writeln!(s, "| model | {} |", drivers.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(drivers.len()));
    let mut notes = String::new();
    for model in models {
        let mut row = format!("| {model} |");
        for d in &drivers {
            match cells.iter().find(|c| c.model == *model && c.driver == *d) {
                Some(c) => {
                    let v = match c.verdict {
                        Verdict::Pass => "pass",
                        Verdict::Fail => "**fail**",
                        Verdict::Skip => "skip",
                    };
                    let _ = write!(row, " {v} |");
                    let _ = writeln!(notes, "- {model} / {d}: {}", c.detail);
                }
                None => row.push_str(" |"),
            }
        }
        let _ = writeln!(s, "{row}");
    }
    s.push('\n');
    s.push_str(&notes);
    s
}

/// `vfio_pci_driver_test` on every model the selftests' library drives.
fn selftests_column(m: &mut Matrix, models: &[&str], policy: Policy, cache: &Path) {
    const D: &str = "selftests";
    progress("building the kernel's VFIO selftests");
    let build = match selftests::build_vfio_selftests(cache, &mut |l: &str| progress(l)) {
        Ok(b) => b,
        Err(e) => {
            for model in models {
                m.put(
                    model,
                    D,
                    Verdict::Fail,
                    format!("building the selftests failed: {e}"),
                    Instant::now(),
                );
            }
            return;
        }
    };
    let drivers_dir = build
        .source
        .join("tools/testing/selftests/vfio/lib/drivers");
    let _huge = crate::selftests_run::HugePages::reserve();
    // A directory of this run's own: another run's logs never mix in.
    let logs = match crate::util::run_log_dir(cache, "conformance-logs") {
        Ok(dir) => dir,
        Err(e) => {
            for model in models {
                m.put(
                    model,
                    D,
                    Verdict::Fail,
                    format!("a log directory under {}: {e}", cache.display()),
                    Instant::now(),
                );
            }
            return;
        }
    };
    for model in models {
        if !drivers_dir.join(model).is_dir() {
            m.skip(
                model,
                D,
                format!(
                    "the selftests' library ({} {}) has no driver for {model}",
                    selftests::PACKAGE,
                    build.version
                ),
            );
            continue;
        }
        let t = Instant::now();
        progress(&format!("{DRIVER_TEST} on {model}"));
        let spec = match DeviceSpec::parse(model, policy) {
            Ok(d) => RunSpec::new(vec![d]),
            Err(e) => {
                m.judge(model, D, false, e.to_string(), t);
                continue;
            }
        };
        let log = logs.join(format!("{DRIVER_TEST}-{model}.log"));
        // A fresh log: a run writes over an older one without truncating it.
        let _ = std::fs::remove_file(&log);
        match kselftest::run_binary(&spec, &build.dir.join(DRIVER_TEST), &log) {
            Ok(r) => {
                let modes: Vec<String> = r
                    .modes
                    .iter()
                    .filter(|x| x.mode != "-")
                    .map(|x| format!("{} {}/{}", x.mode, x.totals.pass, x.totals.fail))
                    .collect();
                let t_ = r.totals.unwrap_or_default();
                let ok = r.ok() && t_.pass > 0 && modes.len() == 5;
                m.judge(
                    model,
                    D,
                    ok,
                    format!(
                        "{DRIVER_TEST}: {} pass, {} fail, {} skip in {} IOMMU modes (pass/fail: {})",
                        t_.pass,
                        t_.fail,
                        t_.skip,
                        modes.len(),
                        modes.join(", ")
                    ),
                    t,
                );
            }
            Err(e) => m.judge(model, D, false, format!("{DRIVER_TEST}: {e}"), t),
        }
    }
}

/// Why DPDK has nothing to run on `model` under `driver`, or `None`.
fn dpdk_skip(model: &str, driver: &str) -> Option<String> {
    let unpacked = dpdk_cmd::DRIVERS.join(", ");
    match (model, driver) {
        ("ioat", _) | ("igb", "testpmd") => None,
        ("igb", _) => Some("an Ethernet port: DPDK's dmadev tests need a DMA engine".into()),
        ("default", _) => Some("barmap's memory BAR: no DPDK driver drives it".into()),
        ("edu", _) => Some("QEMU's educational device: no DPDK driver drives it".into()),
        _ => Some(format!(
            "no DPDK driver for {model} among those unpacked ({unpacked})"
        )),
    }
}

fn dpdk_columns(m: &mut Matrix, models: &[&str], cols: &[&str], policy: Policy, cache: &Path) {
    let runs: Vec<(&str, &str)> = models
        .iter()
        .flat_map(|model| cols.iter().map(move |d| (*model, *d)))
        .collect();
    for (model, d) in runs
        .iter()
        .filter(|(model, d)| dpdk_skip(model, d).is_some())
    {
        m.skip(model, d, dpdk_skip(model, d).unwrap_or_default());
    }
    let todo: Vec<(&str, &str)> = runs
        .into_iter()
        .filter(|(model, d)| dpdk_skip(model, d).is_none())
        .collect();
    if todo.is_empty() {
        return;
    }
    progress("fetching DPDK");
    let dpdk = match dpdk_cmd::fetch(cache, &mut |l: &str| progress(l)) {
        Ok(d) => d,
        Err(e) => {
            for (model, d) in todo {
                m.put(
                    model,
                    d,
                    Verdict::Fail,
                    format!("fetching DPDK failed: {e}"),
                    Instant::now(),
                );
            }
            return;
        }
    };
    let logs = match crate::util::run_log_dir(cache, "dpdk-logs") {
        Ok(dir) => dir,
        Err(e) => {
            for (model, d) in todo {
                m.put(
                    model,
                    d,
                    Verdict::Fail,
                    format!("a log directory under {}: {e}", cache.display()),
                    Instant::now(),
                );
            }
            return;
        }
    };
    let cases = |a: &dpdk_cmd::AutotestReport| -> String {
        a.cases
            .iter()
            .filter(|c| c.suite.contains("instance"))
            .map(|c| format!("{} {}", c.name, c.verdict))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (model, d) in todo {
        let t = Instant::now();
        progress(&format!("DPDK {d} on {model}"));
        match (model, d) {
            ("ioat", "dmadev_autotest") => {
                let a33 = dpdk_cmd::autotest(
                    &dpdk,
                    "ioat",
                    policy,
                    &dpdk_cmd::DEVICE_TESTS,
                    true,
                    &logs.join("dmadev_autotest.log"),
                );
                // On 3.4 the device tests are required and error_handling
                // is reported: DPDK's own race can fail it (see
                // dpdk_cmd::AUTOTEST_3_4_NOTE).
                let a34 = dpdk_cmd::autotest(
                    &dpdk,
                    "ioat,version=3.4",
                    policy,
                    &dpdk_cmd::DEVICE_TESTS,
                    false,
                    &logs.join("dmadev_autotest-3.4.log"),
                );
                match (a33, a34) {
                    (Ok(a), Ok(b)) => m.judge(
                        model,
                        d,
                        a.ok && b.ok,
                        format!(
                            "version 3.3: {}; version 3.4 (error handling): {}",
                            cases(&a),
                            cases(&b)
                        ),
                        t,
                    ),
                    (a, b) => m.judge(
                        model,
                        d,
                        false,
                        format!("{:?}", a.err().or(b.err()).map(|e| e.to_string())),
                        t,
                    ),
                }
            }
            ("ioat", "dma-perf") => match dpdk_cmd::dma_perf(&dpdk, policy, 2, &logs) {
                Ok(p) => {
                    let sizes: Vec<String> = p
                        .sizes
                        .iter()
                        .map(|z| match z.ratio {
                            Some(r) => format!("{} B {:.3}x memcpy", z.buf_size, r),
                            None => format!("{} B -", z.buf_size),
                        })
                        .collect();
                    m.judge(
                        model,
                        d,
                        p.ok,
                        format!("every size of the sample config: {}", sizes.join(", ")),
                        t,
                    );
                }
                Err(e) => m.judge(model, d, false, e.to_string(), t),
            },
            ("ioat", "testpmd") => match dpdk_cmd::testpmd(&dpdk, policy, &logs) {
                Ok(r) => m.judge(
                    model,
                    d,
                    r.ok,
                    format!(
                        "net_null port with the ioat PMD probed: rx {} tx {}",
                        r.rx_packets.unwrap_or(0),
                        r.tx_packets.unwrap_or(0)
                    ),
                    t,
                ),
                Err(e) => m.judge(model, d, false, e.to_string(), t),
            },
            ("igb", "testpmd") => match dpdk_cmd::testpmd_igb(&dpdk, policy, 20, &logs) {
                Ok(r) => m.judge(
                    model,
                    d,
                    r.ok,
                    format!(
                        "igb PMD, two ports on a wire, io forwarding on 2 lcores for 20 s: rx {} tx {}",
                        r.rx_packets.unwrap_or(0),
                        r.tx_packets.unwrap_or(0)
                    ),
                    t,
                ),
                Err(e) => m.judge(model, d, false, e.to_string(), t),
            },
            _ => m.skip(model, d, "no run defined"),
        }
    }
}

/// The guest's own driver through QEMU's vfio-pci: `qemu_vfio_pci.sh`
/// with QEMU 11.1. Returns the QEMU 11.1 launcher it left in the cache
/// (for the reference column), if any.
fn passthrough_column(
    m: &mut Matrix,
    models: &[&str],
    run_it: bool,
    cache: &Path,
    work: &Path,
) -> Option<PathBuf> {
    const D: &str = "guest driver";
    let what = |model: &str| match model {
        "default" => Some(("", "BAR2 PASS", "the guest maps BAR2 through sysfs")),
        "ioat" => Some((
            "-ioat",
            "ioatdma PASS",
            "the guest's ioatdma binds after its DMA self-test",
        )),
        "igb" => Some((
            "-igb",
            "igb PASS",
            "the guest's igb binds the port and its link comes up",
        )),
        _ => None,
    };
    let launcher = cache.join("qemu-vfio-pci/qemu-11.1");
    if !run_it {
        return launcher.is_file().then_some(launcher);
    }
    for model in models.iter().filter(|x| what(x).is_none()) {
        let why = match *model {
            "edu" => "no guest kernel driver binds QEMU's edu device".to_string(),
            _ => format!("no guest kernel driver run is defined for {model}"),
        };
        m.skip(model, D, why);
    }
    let todo: Vec<&str> = models
        .iter()
        .copied()
        .filter(|x| what(x).is_some())
        .collect();
    if todo.is_empty() {
        return launcher.is_file().then_some(launcher);
    }
    let t = Instant::now();
    let script = work.join("qemu_vfio_pci.sh");
    let log = work.join("qemu_vfio_pci.log");
    let written = std::fs::write(&script, QEMU_VFIO_PCI_SH)
        .and_then(|_| std::fs::write(work.join("qemu_guest_bar2.c"), QEMU_GUEST_BAR2_C));
    let exe = std::env::current_exe();
    // The models with a guest driver, after the default device.
    let with_driver: Vec<&str> = todo.iter().copied().filter(|x| *x != "default").collect();
    progress(&format!(
        "QEMU 11.1 passthrough guests (log {})",
        log.display()
    ));
    let out = match (written, exe, std::fs::File::create(&log)) {
        (Ok(()), Ok(exe), Ok(f)) => Command::new("sh")
            .arg(&script)
            .arg("both")
            .args(&with_driver)
            .env("BARMAP", exe)
            .env("BARMAP_QEMU", "11.1")
            .env("BARMAP_CACHE", cache)
            .stdin(Stdio::null())
            .stdout(
                f.try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .stderr(f)
            .status()
            .map_err(|e| e.to_string()),
        (a, b, c) => Err(format!(
            "{:?} {:?} {:?}",
            a.err(),
            b.err(),
            c.err().map(|e| e.to_string())
        )),
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for model in todo {
        let Some((suffix, expect, what)) = what(model) else {
            continue;
        };
        if let Err(e) = &out {
            m.judge(model, D, false, format!("qemu_vfio_pci.sh: {e}"), t);
            continue;
        }
        let mut lines = Vec::new();
        let mut ok = true;
        for path in ["iommufd", "legacy"] {
            let name = format!("{path}{suffix}: ");
            match text.lines().find(|l| l.starts_with(&name)) {
                Some(l) if l.contains(expect) => lines.push(format!(
                    "{path} {}",
                    l.rsplit_once(" in ").map_or("", |x| x.1)
                )),
                Some(_) => {
                    ok = false;
                    lines.push(format!("{path} FAIL"));
                }
                None => {
                    ok = false;
                    lines.push(format!("{path} did not run"));
                }
            }
        }
        m.judge(
            model,
            D,
            ok,
            format!(
                "QEMU 11.1 vfio-pci under barmap run: {what} ({})",
                lines.join(", ")
            ),
            t,
        );
    }
    launcher.is_file().then_some(launcher)
}

/// Compiles `source` (one C file) into `work/name`.
fn compile(work: &Path, name: &str, source: &str) -> Result<PathBuf, String> {
    let c = work.join(format!("{name}.c"));
    let bin = work.join(name);
    std::fs::write(&c, source).map_err(|e| format!("{}: {e}", c.display()))?;
    let st = Command::new("cc")
        .args(["-O2", "-pthread", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&c)
        .status()
        .map_err(|e| format!("cc: {e}"))?;
    if !st.success() {
        return Err(format!("cc {} failed", c.display()));
    }
    Ok(bin)
}

/// A transcript's checked lines: all but the `note:` lines (where QEMU's
/// model and barmap's may differ by design, and which are reported).
fn checked_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with("note:") && !l.trim().is_empty())
        .collect()
}

/// The first difference between two transcripts' checked lines.
pub fn transcript_difference(guest: &str, barmap: &str) -> Option<String> {
    let (g, b) = (checked_lines(guest), checked_lines(barmap));
    for i in 0..g.len().max(b.len()) {
        let (x, y) = (g.get(i), b.get(i));
        if x != y {
            return Some(format!(
                "line {}: QEMU {:?}, barmap {:?}",
                i + 1,
                x.copied().unwrap_or("(end)"),
                y.copied().unwrap_or("(end)")
            ));
        }
    }
    None
}

/// The differing `note:` lines, QEMU's then barmap's.
fn note_differences(guest: &str, barmap: &str) -> Vec<String> {
    let notes = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("note:"))
            .map(|l| l.trim_start_matches("note:").trim().to_string())
            .collect()
    };
    let (g, b) = (notes(guest), notes(barmap));
    g.iter()
        .zip(b.iter())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("QEMU {x} / barmap {y}"))
        .collect()
}

/// The reference model: `barmap guest` on Debian's 6.12 with QEMU's edu
/// and igb behind vfio-pci, each program beside `barmap run` on barmap's.
fn reference_column(
    m: &mut Matrix,
    models: &[&str],
    policy: Policy,
    cache: &Path,
    work: &Path,
    qemu11: Option<&Path>,
) {
    const D: &str = "QEMU reference";
    for model in models.iter().filter(|x| !matches!(**x, "edu" | "igb")) {
        let why = match *model {
            "default" => "QEMU's ivshmem-plain is its reference: the scenario suite of `barmap guest` (a kernel reference, not a driver)".to_string(),
            _ => format!("QEMU has no {model} model"),
        };
        m.skip(model, D, why);
    }
    let todo: Vec<&str> = models
        .iter()
        .copied()
        .filter(|x| matches!(*x, "edu" | "igb"))
        .collect();
    if todo.is_empty() {
        return;
    }
    let t = Instant::now();
    let mut programs = Vec::new();
    let mut bins: Vec<(&str, PathBuf)> = Vec::new();
    for model in &todo {
        let (name, src) = match *model {
            "edu" => ("edu_test", EDU_TEST_C),
            _ => ("igb_loopback", IGB_LOOPBACK_C),
        };
        match compile(work, name, src) {
            Ok(b) => {
                programs.push(PathBuf::from(format!("{}@{model}", b.display())));
                bins.push((model, b));
            }
            Err(e) => m.judge(model, D, false, e, t),
        }
    }
    // QEMU's igb came in 8.0: the launcher of QEMU 11.1 that the
    // passthrough column fetched; without it the host's QEMU, whose igb
    // may be missing (then the guest's igb programs find no device).
    let (qemu, qemu_data) = match qemu11 {
        Some(q) => {
            let root = cache.join("qemu-11.1/usr/share");
            (
                Some(q.to_path_buf()),
                vec![root.join("qemu"), root.join("seabios")],
            )
        }
        None => (None, Vec::new()),
    };
    let args = barmap_guest::GuestArgs {
        kernels: vec![KernelChoice::Stock612],
        scenarios: Vec::new(),
        rounds: 1,
        threads: 2,
        json: false,
        timeout: 900,
        cache_dir: Some(cache.to_path_buf()),
        selftests: false,
        // Not vfio_pci_driver_test@igb: its library opens iommufd (its
        // default IOMMU mode) before any test, and Debian's 6.12 and 7.3
        // kernels are built without IOMMUFD, so it stops at once in the
        // guest whatever the device (README's igb differential).
        selftest_names: Vec::new(),
        programs,
        qemu,
        qemu_data,
    };
    progress("barmap guest: Debian's 6.12 with QEMU's edu and igb behind vfio-pci");
    let _huge = crate::selftests_run::HugePages::reserve();
    let results =
        barmap_guest::run_side_by_side(&args, None, Some(&crate::guest_cmd::emulate_program));
    let kernel = match results {
        Ok(mut r) if !r.is_empty() => r.remove(0),
        Ok(_) => {
            for (model, _) in &bins {
                m.judge(model, D, false, "no guest ran".into(), t);
            }
            return;
        }
        Err(e) => {
            for (model, _) in &bins {
                m.judge(model, D, false, format!("barmap guest: {e}"), t);
            }
            return;
        }
    };
    let label = KernelChoice::Stock612.label().replace(['/', '.'], "_");
    for (model, bin) in &bins {
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut parts = Vec::new();
        let mut ok = true;
        // The program: the guest's transcript against barmap run's.
        // One run of each program, on the device with that ID (the result
        // names the device's address).
        let guest = kernel.programs.iter().find(|p| p.program == name);
        let guest_log = cache.join("runs").join(format!(
            "{label}.{name}.{}.log",
            guest.map_or(String::new(), |p| p.device.replace(':', "_"))
        ));
        match guest {
            Some(p) if p.passed => {}
            Some(p) => {
                ok = false;
                parts.push(format!(
                    "{name} failed in the guest (exit {:?}: {})",
                    p.exit_code,
                    p.notes.join("; ")
                ));
            }
            None => {
                ok = false;
                parts.push(format!(
                    "{name} did not run in the guest ({})",
                    kernel.notes.join("; ")
                ));
            }
        }
        let barmap_out = Command::new(std::env::current_exe().unwrap_or_default())
            .args([
                "run",
                "--policy",
                &policy.to_string(),
                "--device",
                model,
                "--",
            ])
            .arg(bin)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let guest_text = std::fs::read_to_string(&guest_log).unwrap_or_default();
        match barmap_out {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                if !o.status.success() {
                    ok = false;
                    parts.push(format!("{name} failed under barmap run"));
                }
                if guest.is_some() {
                    match transcript_difference(&guest_text, &text) {
                        Some(d) => {
                            ok = false;
                            parts.push(format!("{name} transcripts differ: {d}"));
                        }
                        None => parts.push(format!(
                            "{name}: the same {} checks on QEMU's and barmap's",
                            checked_lines(&text)
                                .iter()
                                .filter(|l| l.ends_with(" ok"))
                                .count()
                        )),
                    }
                    let notes = note_differences(&guest_text, &text);
                    if !notes.is_empty() {
                        parts.push(format!("notes differ (by design): {}", notes.join("; ")));
                    }
                }
            }
            Err(e) => {
                ok = false;
                parts.push(format!("barmap run {name}: {e}"));
            }
        }
        m.judge(model, D, ok, parts.join("; "), t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_are_compared_without_their_notes() {
        let q = "a ok\nnote: PHY ID 0141:0cc2\nb ok\n";
        let b = "a ok\nnote: PHY ID 02a8:0390\nb ok\n";
        assert_eq!(transcript_difference(q, b), None);
        assert_eq!(
            note_differences(q, b),
            ["QEMU PHY ID 0141:0cc2 / barmap PHY ID 02a8:0390"]
        );
        let d = transcript_difference("a ok\nb ok\n", "a ok\nb FAIL\n").unwrap();
        assert!(d.starts_with("line 2:"), "{d}");
        assert!(transcript_difference("a ok\n", "a ok\nc ok\n").is_some());
    }

    #[test]
    fn every_registered_model_gets_a_row_with_a_reason_for_each_skip() {
        let models: Vec<&str> = barmap_models::MODELS.to_vec();
        let cells: Vec<Cell> = models
            .iter()
            .flat_map(|m| {
                ["dmadev_autotest", "testpmd"]
                    .into_iter()
                    .map(move |d| Cell {
                        model: m.to_string(),
                        driver: d.to_string(),
                        verdict: if dpdk_skip(m, d).is_some() {
                            Verdict::Skip
                        } else {
                            Verdict::Pass
                        },
                        detail: dpdk_skip(m, d).unwrap_or_default(),
                        elapsed_s: 0.0,
                    })
            })
            .collect();
        let t = table(&cells, &models);
        for m in &models {
            assert!(t.contains(&format!("| {m} |")), "{t}");
        }
        assert!(cells
            .iter()
            .all(|c| c.verdict != Verdict::Skip || !c.detail.is_empty()));
        // A model no driver knows is skipped with a reason, not dropped.
        assert!(dpdk_skip("some_new_model", "dma-perf")
            .unwrap()
            .contains("some_new_model"));
        assert_eq!(dpdk_skip("ioat", "dma-perf"), None);
        assert_eq!(dpdk_skip("igb", "testpmd"), None);
    }
}
