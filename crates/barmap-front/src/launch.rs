//! `barmap run`: lays out a testbed, starts the program with the preload
//! library and the environment VFIO programs honour, waits for it, and
//! collects the devices' counters that the program's front end wrote at
//! exit.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::spec::{RunSpec, TESTBED_ENV};
use crate::testbed;

/// File name of the preload library.
pub const PRELOAD_NAME: &str = "libbarmap_preload.so";

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The devices presented.
    pub devices: Vec<crate::spec::DeviceSpec>,
    /// The program's exit status, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Counters and BUG events, per process that used a device.
    pub reports: Vec<serde_json::Value>,
    /// BUG events over all reports (the seed's race under `legacy`).
    pub bugs: u64,
    /// Wall time of the program, seconds.
    pub elapsed_s: f64,
}

/// Where the preload library is: `$BARMAP_PRELOAD`, or beside the running
/// executable (cargo puts both in the same target directory), or in its
/// `deps/`.
pub fn find_preload() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BARMAP_PRELOAD") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    for cand in [
        dir.join(PRELOAD_NAME),
        dir.join("deps").join(PRELOAD_NAME),
        dir.join("..").join(PRELOAD_NAME),
    ] {
        if cand.exists() {
            return Ok(cand);
        }
    }
    Err(format!(
        "{PRELOAD_NAME} not found beside {} (build it: cargo build --release -p barmap-preload, \
         or set BARMAP_PRELOAD)",
        exe.display()
    ))
}

/// Whether the ELF file at `path` is statically linked (no PT_INTERP):
/// LD_PRELOAD cannot reach such a program. None if it is not a readable
/// 64-bit ELF file.
pub fn is_static(path: &Path) -> Option<bool> {
    let data = std::fs::read(path).ok()?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().ok()?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?);
        if kind == 3 {
            return Some(false); // PT_INTERP
        }
    }
    Some(true)
}

/// The program as `PATH` would find it.
pub fn resolve_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Where the program's output goes.
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    /// Where ours goes.
    Inherit,
    /// Both stdout and stderr to our stderr (our stdout carries JSON).
    Stderr,
    /// Both to this file, in the order written.
    File(&'a Path),
}

/// Runs `program args` under a fresh testbed for `spec`, its output going
/// where ours goes.
pub fn run(spec: &RunSpec, program: &str, args: &[String]) -> Result<Outcome, String> {
    run_with(spec, program, args, Output::Inherit)
}

/// Like [`run`], with the program's output sent to `output`.
pub fn run_with(
    spec: &RunSpec,
    program: &str,
    args: &[String],
    output: Output<'_>,
) -> Result<Outcome, String> {
    let preload = find_preload()?;
    let dir = std::env::temp_dir().join(format!(
        "barmap-run-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("testbed {}: {e}", dir.display()))?;
    let result = run_in(&dir, &preload, spec, program, args, output);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    dir: &Path,
    preload: &Path,
    spec: &RunSpec,
    program: &str,
    args: &[String],
    output: Output<'_>,
) -> Result<Outcome, String> {
    testbed::create(dir, spec).map_err(|e| format!("testbed: {e}"))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    match output {
        Output::Inherit => {}
        Output::Stderr => {
            cmd.stdout(std::io::stderr());
        }
        Output::File(out) => {
            let f = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
            let g = f.try_clone().map_err(|e| e.to_string())?;
            cmd.stdout(f).stderr(g);
        }
    }
    let mut ld = preload.display().to_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD") {
        ld = format!("{ld}:{}", old.to_string_lossy());
    }
    cmd.env("LD_PRELOAD", ld)
        .env(TESTBED_ENV, dir)
        .env("SYSFS_PCI_DEVICES", dir.join("sys/bus/pci/devices"));
    if let Some(first) = spec.devices.first() {
        cmd.env("BARMAP_BDF", &first.bdf)
            .env("VFIO_SELFTESTS_BDF", &first.bdf)
            .env("BARMAP_GROUP", first.group.to_string());
    }
    let started = std::time::Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("starting {program}: {e}"))?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let mut reports = Vec::new();
    let mut bugs = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("report-"))
            })
            .collect();
        names.sort();
        for p in names {
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            for d in v["devices"].as_array().into_iter().flatten() {
                bugs += d["stats"]["bugs"].as_u64().unwrap_or(0);
            }
            reports.push(v);
        }
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(Outcome {
        devices: spec.devices.clone(),
        exit_code: status.code(),
        signal: status.signal(),
        reports,
        bugs,
        elapsed_s,
    })
}
