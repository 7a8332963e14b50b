//! The in-guest runner: finds the devices bound to vfio-pci, opens each with
//! the VFIO client, runs the scenario suite against it, and prints protocol
//! lines on the console for the host.

use crate::args::GuestRunArgs;
use crate::protocol::{kind, line, ScenarioLine};
use barmap_target::scenario::{self, Case, Options, Scenario};
use barmap_vfio::VfioDevice;
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

fn emit(k: &str, payload: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(k, &payload));
    let _ = out.flush();
}

/// PCI devices bound to vfio-pci, sorted.
pub fn vfio_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/bus/pci/drivers/vfio-pci")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.matches(':').count() == 2 && n.contains('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn sysfs_id(bdf: &str, what: &str) -> String {
    std::fs::read_to_string(format!("/sys/bus/pci/devices/{bdf}/{what}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether the device's memory region behaves as memory: a word written
/// through the region interface reads back. The suite's data checks need
/// that (ivshmem's BAR2 does; edu's register BAR does not).
fn memory_like(dev: &VfioDevice) -> bool {
    use barmap_target::Target;
    let l = dev.layout();
    if l.memory_size < 16 * 4096 {
        return false;
    }
    let probe = 0x5a5a_1234_8765_a5a5u64.to_le_bytes();
    let mut back = [0u8; 8];
    dev.write_region(l.memory_region, 8, &probe).is_ok()
        && dev.read_region(l.memory_region, 8, &mut back).is_ok()
        && back == probe
}

/// The device a program runs against: the one with `vendor:device` (for
/// example `1af4:1110`, ivshmem-plain) if given and bound to vfio-pci, else
/// ivshmem-plain, else the first device.
fn program_device(devices: &[String], id: Option<&str>) -> Option<String> {
    let has = |d: &String, id: &str| {
        let (v, p) = id.split_once(':').unwrap_or((id, ""));
        sysfs_id(d, "vendor") == format!("0x{v}") && sysfs_id(d, "device") == format!("0x{p}")
    };
    id.and_then(|id| devices.iter().find(|d| has(d, id)))
        .or_else(|| devices.iter().find(|d| has(d, "1af4:1110")))
        .or(devices.first())
        .cloned()
}

/// Reserves 2 MiB huge pages for the selftests' hugetlb variants (as
/// `barmap selftests` does on the host); 1 GiB pages do not fit the guest.
fn reserve_huge_pages() {
    let _ = std::fs::write(
        "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        "16",
    );
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two fds on success; each is owned exactly once.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Runs `program` with `VFIO_SELFTESTS_BDF` and `BARMAP_BDF` set to `bdf`,
/// streaming its merged stdout and stderr as [`kind::OUTPUT`] lines, and
/// returns the RESULT payload: exit code (or signal), seconds, passed.
fn run_program(program: &str, bdf: &str, timeout: Duration) -> serde_json::Value {
    use std::io::BufRead;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let started = std::time::Instant::now();
    let (reader, writer) = match pipe() {
        Ok(p) => p,
        Err(e) => return json!({"passed": false, "error": format!("pipe: {e}")}),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return json!({"passed": false, "error": format!("pipe: {e}")}),
    };
    let reader = std::fs::File::from(reader);
    let mut cmd = std::process::Command::new(program);
    cmd.env("VFIO_SELFTESTS_BDF", bdf)
        .env("BARMAP_BDF", bdf)
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return json!({"passed": false, "error": format!("spawn {program}: {e}")}),
    };
    drop(cmd);
    let pump = std::thread::spawn(move || {
        for l in std::io::BufReader::new(reader)
            .split(b'\n')
            .map_while(|l| l.ok())
        {
            emit(kind::OUTPUT, json!({"line": String::from_utf8_lossy(&l)}));
        }
    });
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if started.elapsed() >= timeout => {
                timed_out = true;
                // SAFETY: kill(2) on the child's own process group.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    // Grandchildren may keep the pipe open after a kill: do not wait for ever.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !pump.is_finished() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pump.is_finished() {
        let _ = pump.join();
    }
    let exit_code = status.and_then(|s| s.code());
    let signal = status.and_then(|s| s.signal());
    json!({
        "passed": exit_code == Some(0) && !timed_out,
        "exit_code": exit_code,
        "signal": signal,
        "timed_out": timed_out,
        "elapsed_s": started.elapsed().as_secs_f64(),
    })
}

/// Runs each of `args.programs` against the ivshmem device; returns the
/// exit code contribution (1 if a program could not run or no device).
fn run_programs(args: &GuestRunArgs, devices: &[String]) -> i32 {
    reserve_huge_pages();
    let mut exit = 0;
    for spec in &args.programs {
        let (program, id) = match spec.rsplit_once('@') {
            Some((p, id)) => (p.to_string(), Some(id)),
            None => (spec.clone(), None),
        };
        let Some(bdf) = program_device(devices, id) else {
            emit(
                kind::SETUP_ERROR,
                json!({"step": "programs", "error": "no device bound to vfio-pci"}),
            );
            return 1;
        };
        let program = &program;
        let name = std::path::Path::new(program)
            .file_name()
            .map_or(program.clone(), |n| n.to_string_lossy().into_owned());
        let head = ScenarioLine {
            device: bdf.clone(),
            scenario: format!("{}{name}", crate::protocol::PROGRAM_PREFIX),
            round: None,
            report: None,
        };
        emit(kind::START, json!(head));
        let report = run_program(program, &bdf, Duration::from_secs(args.program_timeout));
        if report.get("passed").and_then(serde_json::Value::as_bool) != Some(true) {
            exit = 1;
        }
        emit(
            kind::RESULT,
            json!(ScenarioLine {
                report: Some(report),
                ..head
            }),
        );
    }
    exit
}

/// The in-guest entry point: returns the process exit code (0: every
/// scenario passed).
pub fn guest_run(args: &GuestRunArgs) -> i32 {
    let scenarios: Vec<Case> = if args.scenarios.is_empty() {
        scenario::all_cases()
    } else {
        let mut v = Vec::new();
        for name in &args.scenarios {
            match scenario::select_cases(name) {
                Some(s) => v.extend(s),
                None => {
                    emit(kind::SETUP_ERROR, json!({"step": "scenario", "name": name}));
                    emit(kind::DONE, json!({"exit": 2}));
                    return 2;
                }
            }
        }
        v
    };
    let devices = if args.devices.is_empty() {
        vfio_devices()
    } else {
        args.devices.clone()
    };
    let described: Vec<_> = devices
        .iter()
        .map(|d| json!({"device": d, "vendor": sysfs_id(d, "vendor"), "id": sysfs_id(d, "device")}))
        .collect();
    emit(
        kind::HELLO,
        json!({
            "kernel": kernel_release(),
            "devices": described,
            "scenarios": scenarios.iter().map(|&c| scenario::case_name(c)).collect::<Vec<_>>(),
            "rounds": args.rounds,
            "threads": args.threads,
            "programs": args.programs,
        }),
    );
    let opts = Options {
        rounds: args.rounds,
        threads: args.threads,
        watchdog: Duration::from_secs(args.watchdog),
        ..Options::default()
    };
    let mut exit = if devices.is_empty() { 1 } else { 0 };
    if devices.is_empty() {
        emit(
            kind::SETUP_ERROR,
            json!({"step": "devices", "error": "no device bound to vfio-pci"}),
        );
    }
    // Fault counting for whole-bar, where the kernel lets us probe.
    let probe = if scenarios.iter().any(|(s, _)| *s == Scenario::WholeBar) {
        match crate::faults::Kprobes::set_up() {
            Ok(k) => {
                emit(
                    kind::SETUP_ERROR,
                    json!({"step": "kprobes", "severity": "info",
                           "note": format!("counting vfio-pci's {} handler hits", k.kinds().join(", "))}),
                );
                Some(Arc::new(k))
            }
            Err(e) => {
                emit(
                    kind::SETUP_ERROR,
                    json!({"step": "kprobes", "severity": "info", "error": e}),
                );
                None
            }
        }
    } else {
        None
    };
    let release = kernel_release();
    let mut ran = 0;
    if !args.programs.is_empty() {
        exit = exit.max(run_programs(args, &devices));
        ran += args.programs.len();
        if args.scenarios.is_empty() {
            emit(kind::DONE, json!({"exit": exit}));
            return exit;
        }
    }
    for bdf in &devices {
        let dev = match VfioDevice::open_pci(bdf) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                emit(
                    kind::SETUP_ERROR,
                    json!({"step": "open", "device": bdf, "error": e.to_string()}),
                );
                exit = 1;
                continue;
            }
        };
        if !memory_like(&dev) {
            emit(
                kind::SETUP_ERROR,
                json!({"step": "skip", "device": bdf, "severity": "info",
                       "error": "no memory-like BAR: the suite's data checks need one"}),
            );
            continue;
        }
        for &(s, placement) in &scenarios {
            let case = scenario::case_name((s, placement));
            let head = ScenarioLine {
                device: bdf.clone(),
                scenario: case.clone(),
                round: None,
                report: None,
            };
            emit(kind::START, json!(head));
            // Each round is announced, so a kernel failure is placed in it.
            let (device, name) = (bdf.clone(), case.clone());
            let announce = Options {
                on_round: Some(Arc::new(move |round| {
                    emit(
                        kind::ROUND,
                        json!(ScenarioLine {
                            device: device.clone(),
                            scenario: name.clone(),
                            round: Some(round as u64),
                            report: None,
                        }),
                    )
                })),
                placement,
                fault_probe: probe.clone().map(|p| p as Arc<dyn scenario::FaultProbe>),
                ..opts.clone()
            };
            let mut report = scenario::run(dev.clone(), s, &announce);
            // whole-bar: did the kernel take the fault path intended?
            let mut path = json!({});
            if s == Scenario::WholeBar && report.skipped.is_none() {
                let took = crate::faults::fault_path(&report.faults, report.pages.unwrap_or(0));
                let meant = crate::faults::intended_path(&release, placement);
                if let (Some(took), Some(meant)) = (took, meant) {
                    if took != meant {
                        report.passed = false;
                        report.errors.push(format!(
                            "fault path: the kernel took {took} faults, {meant} intended \
                             for a {} mapping on {release} ({:?})",
                            placement.name(),
                            report.faults
                        ));
                    }
                }
                path = json!({"fault_path": took, "intended_path": meant});
            }
            ran += 1;
            if !report.passed {
                exit = 1;
            }
            let hung = report.errors.iter().any(|e| e.starts_with("hang"));
            let mut value = json!(report);
            if let (Some(v), Some(p)) = (value.as_object_mut(), path.as_object()) {
                v.extend(p.clone());
            }
            emit(
                kind::RESULT,
                json!(ScenarioLine {
                    report: Some(value),
                    ..head
                }),
            );
            if hung {
                // Threads are stuck in the kernel; nothing after this is sound.
                emit(kind::DONE, json!({"exit": 1, "reason": "hang"}));
                return 1;
            }
        }
    }
    if ran == 0 {
        exit = 1;
    }
    emit(kind::DONE, json!({"exit": exit}));
    exit
}
