//! The in-guest runner: finds the devices bound to vfio-pci, opens each with
//! the VFIO client, runs the scenario suite against it, and prints protocol
//! lines on the console for the host.

use crate::args::GuestRunArgs;
use crate::protocol::{kind, line, ScenarioLine};
use barmap_target::scenario::{self, Options, Scenario};
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

/// The in-guest entry point: returns the process exit code (0: every
/// scenario passed).
pub fn guest_run(args: &GuestRunArgs) -> i32 {
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        let mut v = Vec::new();
        for name in &args.scenarios {
            match Scenario::from_name(name) {
                Some(s) => v.push(s),
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
            "scenarios": scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "rounds": args.rounds,
            "threads": args.threads,
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
    let mut ran = 0;
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
        for &s in &scenarios {
            let head = ScenarioLine {
                device: bdf.clone(),
                scenario: s.name().into(),
                round: None,
                report: None,
            };
            emit(kind::START, json!(head));
            // Each round is announced, so a kernel failure is placed in it.
            let (device, name) = (bdf.clone(), s.name().to_string());
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
                ..opts.clone()
            };
            let report = scenario::run(dev.clone(), s, &announce);
            ran += 1;
            if !report.passed {
                exit = 1;
            }
            let hung = report.errors.iter().any(|e| e.starts_with("hang"));
            emit(
                kind::RESULT,
                json!(ScenarioLine {
                    report: Some(json!(report)),
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
