//! `barmap guest` on the host: prepare, boot, parse, report.

use crate::apt::{self, Apt};
use crate::args::GuestArgs;
use crate::initramfs;
use crate::kernel::{self, Expectation, KernelChoice};
use crate::programs::{self, EmulateProgram, HostProgram};
use crate::qemu::{self, VmConfig};
use crate::report::{self, KernelResult, Outcome};
use crate::util::{default_cache_dir, run, Error, Result};
use barmap_target::scenario::{Options, Report, Scenario};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The host entry point; returns the exit code: 0 when every kernel's run is
/// as expected (stock kernels pass, seed-bug's BUG is caught), 1 otherwise,
/// 2 when nothing could be prepared at all.
pub fn host_main(args: &GuestArgs) -> i32 {
    host_main_with(args, None)
}

/// Runs one scenario on barmap's emulated device with the options the guest
/// used, for the differential column; `None` if it cannot.
pub type Emulate<'a> = &'a dyn Fn(Scenario, &Options) -> Option<Report>;

/// [`host_main`], with each kernel scenario compared against the same
/// scenario on barmap's emulated device (`emulate`).
pub fn host_main_with(args: &GuestArgs, emulate: Option<Emulate<'_>>) -> i32 {
    host_main_side_by_side(args, emulate, None)
}

/// The programs the arguments ask for: the selftest binaries (built into
/// the cache as for `barmap selftests`) and `--program` paths.
fn host_programs(args: &GuestArgs, cache: &Path) -> Result<Vec<HostProgram>> {
    let mut v = Vec::new();
    if args.selftests || !args.selftest_names.is_empty() {
        let mut progress = |line: &str| eprintln!("barmap guest: selftests: {line}");
        let build = crate::selftests::build_vfio_selftests(cache, &mut progress)?;
        let wanted = |name: &str| -> Option<Vec<&'static str>> {
            if args.selftest_names.is_empty() {
                return Some(vec![programs::ids::IVSHMEM, programs::ids::EDU]);
            }
            let mut devices = Vec::new();
            for n in &args.selftest_names {
                match n.split_once('@') {
                    Some((b, dev)) if b == name => devices.extend(programs::ids::by_suffix(dev)),
                    None if n == name => {
                        devices.extend([programs::ids::IVSHMEM, programs::ids::EDU])
                    }
                    _ => {}
                }
            }
            (!devices.is_empty()).then_some(devices)
        };
        for name in crate::selftests::BINARIES {
            if let Some(devices) = wanted(name) {
                let mut p = HostProgram::new(&build.dir.join(name))?;
                p.devices = devices;
                v.push(p);
            }
        }
        if let Some(n) = args.selftest_names.iter().find(|n| {
            let (b, dev) = n.split_once('@').unwrap_or((n.as_str(), "edu"));
            !crate::selftests::BINARIES.contains(&b) || programs::ids::by_suffix(dev).is_none()
        }) {
            return Err(Error::msg(format!(
                "unknown selftest binary or device {n:?} (NAME or NAME@igb)"
            )));
        }
    }
    for p in &args.programs {
        let text = p.to_string_lossy();
        let device = text
            .rsplit_once('@')
            .and_then(|(path, d)| Some((path, programs::ids::by_suffix(d)?)));
        match device {
            Some((path, id)) => {
                let mut prog = HostProgram::new(Path::new(path))?;
                prog.devices = vec![id];
                v.push(prog);
            }
            None => v.push(HostProgram::new(p)?),
        }
    }
    Ok(v)
}

/// [`host_main_with`], and each program the guest ran (`--selftests`,
/// `--program`) compared against the same binary under `barmap run` on
/// the host (`emulate_program`).
pub fn host_main_side_by_side(
    args: &GuestArgs,
    emulate: Option<Emulate<'_>>,
    emulate_program: Option<EmulateProgram<'_>>,
) -> i32 {
    let results = match run_side_by_side(args, emulate, emulate_program) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("barmap guest: {e}");
            return 2;
        }
    };
    if args.json {
        let doc = serde_json::json!({ "kernels": results });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        report::print_table(&results);
    }
    if results.iter().all(|r| r.as_expected) {
        0
    } else {
        1
    }
}

/// What [`host_main_side_by_side`] runs, returned instead of printed: each
/// kernel's result, with the differential columns filled; an error when
/// nothing could be prepared at all.
pub fn run_side_by_side(
    args: &GuestArgs,
    emulate: Option<Emulate<'_>>,
    emulate_program: Option<EmulateProgram<'_>>,
) -> Result<Vec<KernelResult>> {
    let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let progs = host_programs(args, &cache)?;
    let extra = programs::initramfs_files(&progs)?;
    let kernels = if args.kernels.is_empty() {
        vec![
            KernelChoice::Stock61,
            KernelChoice::Stock612,
            KernelChoice::Latest,
            KernelChoice::SeedBug,
        ]
    } else {
        args.kernels.clone()
    };
    let common = prepare_common(&cache)?;
    let mut results = Vec::new();
    for k in &kernels {
        let (mut result, retry) = run_kernel(k, args, &cache, &common, &progs, &extra);
        if let Some(why) = retry {
            eprintln!("barmap guest: {}: {why}; booting it once more", k.label());
            let (mut again, _) = run_kernel(k, args, &cache, &common, &progs, &extra);
            again
                .notes
                .insert(0, format!("the first boot: {why}; this is the second boot"));
            result = again;
        }
        results.push(result);
    }
    if let Some(emulate) = emulate {
        add_emulated(&mut results, args, emulate);
    }
    if let Some(emulate_program) = emulate_program {
        add_emulated_programs(&mut results, &progs, emulate_program);
    }
    Ok(results)
}

/// Fills the differential column: each scenario once on barmap, with the
/// options the guest runner used, compared with every kernel's result.
fn add_emulated(results: &mut [KernelResult], args: &GuestArgs, emulate: Emulate<'_>) {
    let opts = Options {
        rounds: args.rounds,
        threads: args.threads,
        ..Options::default()
    };
    let mut done: Vec<(String, Option<Report>)> = Vec::new();
    for k in results.iter_mut() {
        for s in &mut k.scenarios {
            let cached = done
                .iter()
                .find(|(n, _)| *n == s.scenario)
                .map(|(_, r)| r.clone());
            let report = match cached {
                Some(r) => r,
                None => {
                    eprintln!("barmap guest: {} on barmap's emulated device", s.scenario);
                    let r = barmap_target::scenario::parse_case(&s.scenario).and_then(
                        |(sc, placement)| {
                            emulate(
                                sc,
                                &Options {
                                    placement,
                                    ..opts.clone()
                                },
                            )
                        },
                    );
                    done.push((s.scenario.clone(), r.clone()));
                    r
                }
            };
            s.differs = report.as_ref().and_then(|r| report::differences(s, r));
            s.emulated = report;
        }
    }
}

/// Fills the programs' side-by-side column: each binary once under
/// `barmap run`, compared with every kernel's result.
fn add_emulated_programs(
    results: &mut [KernelResult],
    progs: &[HostProgram],
    emulate: EmulateProgram<'_>,
) {
    let mut done: Vec<(String, Option<barmap_front::kselftest::BinaryResult>)> = Vec::new();
    for k in results.iter_mut() {
        for p in &mut k.programs {
            let cached = done
                .iter()
                .find(|(n, _)| *n == p.program)
                .map(|(_, r)| r.clone());
            let report = match cached {
                Some(r) => r,
                None => {
                    eprintln!("barmap guest: {} under barmap run on the host", p.program);
                    let r = progs
                        .iter()
                        .find(|h| h.name == p.program)
                        .and_then(|h| emulate(&h.path, &h.devices));
                    done.push((p.program.clone(), r.clone()));
                    r
                }
            };
            p.differs = report.as_ref().and_then(|r| programs::differences(p, r));
            p.emulated = report;
        }
    }
}

/// What every kernel's guest shares: busybox and the barmap binary.
struct Common {
    busybox: PathBuf,
    barmap: PathBuf,
}

fn prepare_common(cache: &Path) -> Result<Common> {
    fs::create_dir_all(cache)?;
    for (tool, pkg) in [("dpkg-deb", "dpkg"), ("apt-get", "apt")] {
        if apt::which(tool).is_none() {
            return Err(Error::msg(format!(
                "{tool} ({pkg}) not found: barmap guest needs a Debian-family host"
            )));
        }
    }
    apt::ensure_host_tool("qemu-system-x86_64", "qemu-system-x86")?;
    let busybox = fetch_busybox(cache)?;
    let barmap = build_barmap()?;
    Ok(Common { busybox, barmap })
}

fn fetch_busybox(cache: &Path) -> Result<PathBuf> {
    let apt = Apt::new(
        &cache.join("apt").join("bookworm"),
        &kernel::bookworm_sources()?,
    )?;
    let unpacked = cache.join("busybox");
    let bin = unpacked.join("bin/busybox");
    if bin.is_file() {
        return Ok(bin);
    }
    apt.update()?;
    let deb = apt.download("busybox-static", None)?;
    apt::unpack(&deb, &unpacked)?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::msg("busybox-static has no bin/busybox"))
    }
}

/// Builds the statically linked barmap for the guest (or takes
/// `$BARMAP_GUEST_BIN`), in a target directory of its own inside the source
/// tree's `target/`. Not under the shared cache: cargo names a workspace's
/// artifacts by paths relative to its root, so two checkouts building into
/// one target directory take each other's artifacts for fresh.
fn build_barmap() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BARMAP_GUEST_BIN") {
        return Ok(PathBuf::from(p));
    }
    let src = std::env::var_os("BARMAP_SOURCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    if !src.join("Cargo.toml").is_file() {
        return Err(Error::msg(format!(
            "barmap's sources are not at {}: set BARMAP_SOURCE_DIR, or BARMAP_GUEST_BIN to a \
             statically linked barmap",
            src.display()
        )));
    }
    let target_dir = src.join("target").join("guest");
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("barmap guest: building the static barmap binary for the guest");
    run(Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            triple,
            "-p",
            "barmap-cli",
            "--bin",
            "barmap",
        ])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo"))
    .map_err(|e| e.context("building the guest's barmap"))?;
    Ok(target_dir.join(triple).join("release").join("barmap"))
}

/// Boots one kernel and collects its results, with why the caller should
/// boot it once more, if it should: the guest stopped silently
/// ([`crate::console::Transcript::stopped_silently`], and QEMU was not
/// killed), or every kernel failure was a text-patching breakpoint trap
/// ([`report::is_text_patching_trap`]) and no seed bug.
fn run_kernel(
    choice: &KernelChoice,
    args: &GuestArgs,
    cache: &Path,
    common: &Common,
    progs: &[HostProgram],
    extra: &[(String, PathBuf)],
) -> (KernelResult, Option<String>) {
    let started = Instant::now();
    let mut result = KernelResult {
        kernel: choice.label(),
        release: None,
        expect: choice.expectation(),
        outcome: Outcome::SetupFailed,
        as_expected: false,
        boot_s: None,
        wall_s: None,
        prepare_s: 0.0,
        bug_scenario: None,
        bug_round: None,
        scenarios: Vec::new(),
        programs: Vec::new(),
        other_kernel_failures: Vec::new(),
        notes: Vec::new(),
        console_log: None,
    };
    eprintln!("barmap guest: preparing kernel {}", choice.label());
    let prepared = match kernel::prepare(choice, cache) {
        Ok(p) => p,
        Err(e) => {
            result
                .notes
                .push(format!("preparing the kernel failed: {e}"));
            return (result, None);
        }
    };
    result.release = prepared.release.clone();
    let label_file = choice.label().replace(['/', '.'], "_");
    let runs = cache.join("runs");
    let initrd = runs.join(format!("{label_file}.cpio"));
    let mut runner_args = vec!["--rounds".to_string(), args.rounds.to_string()];
    runner_args.extend(["--threads".to_string(), args.threads.to_string()]);
    for s in &args.scenarios {
        runner_args.extend(["--scenario".to_string(), s.clone()]);
    }
    for spec in progs.iter().flat_map(HostProgram::runner_specs) {
        runner_args.extend(["--program".to_string(), spec]);
    }
    let contents = initramfs::Contents {
        busybox: &common.busybox,
        modules: &prepared.modules,
        barmap: &common.barmap,
        runner_args: &runner_args,
        guest_timeout_s: args.timeout.saturating_sub(30).max(30),
        extra,
    };
    if let Err(e) = fs::create_dir_all(&runs)
        .map_err(Error::from)
        .and_then(|_| initramfs::write(&initrd, &contents))
    {
        result
            .notes
            .push(format!("writing the initramfs failed: {e}"));
        return (result, None);
    }
    result.prepare_s = started.elapsed().as_secs_f64();
    let console_log = runs.join(format!("{label_file}.console.log"));
    result.console_log = Some(console_log.display().to_string());
    eprintln!(
        "barmap guest: booting {} ({})",
        choice.label(),
        prepared.bzimage.display()
    );
    let vm = match qemu::run(&VmConfig {
        bzimage: prepared.bzimage.clone(),
        initrd,
        console_log,
        timeout: Duration::from_secs(args.timeout),
        ivshmem_mib: 64,
        qemu: args.qemu.clone(),
        data_dirs: args.qemu_data.clone(),
        igb: progs
            .iter()
            .any(|p| p.devices.contains(&programs::ids::IGB)),
    }) {
        Ok(vm) => vm,
        Err(e) => {
            result.notes.push(format!("booting failed: {e}"));
            return (result, None);
        }
    };
    let t = &vm.transcript;
    result.boot_s = vm.boot.map(|d| d.as_secs_f64());
    result.wall_s = Some(vm.wall.as_secs_f64());
    if let Some(rel) = t
        .hello
        .as_ref()
        .and_then(|h| h.get("kernel"))
        .and_then(|k| k.as_str())
    {
        result.release = Some(rel.to_string());
    }
    result.scenarios = report::scenario_results(t);
    result.other_kernel_failures = t.unattributed_events().cloned().collect();
    result.programs = programs::program_results(t);
    for p in &result.programs {
        let log = runs.join(format!(
            "{label_file}.{}.{}.log",
            p.program,
            p.device.replace(':', "_")
        ));
        let _ = fs::write(&log, p.output.join("\n") + "\n");
    }
    result.outcome = report::outcome(t, &result.scenarios, &result.programs);
    let silent_stop = t.stopped_silently() && vm.killed.is_none();
    for e in &t.setup_errors {
        result.notes.push(format!("guest: {e}"));
    }
    for e in &t.protocol_errors {
        result.notes.push(format!("undecodable protocol line: {e}"));
    }
    if let Some(taint) = t.taint {
        result
            .notes
            .push(format!("guest powered off on TAINT_DIE (tainted={taint})"));
    }
    if t.guest_timeout {
        result.notes.push("the guest's own deadline passed".into());
    }
    if let Some(why) = &vm.killed {
        result.notes.push(why.clone());
    }
    if t.hello.is_none() {
        let tail = vm.qemu_stderr.lines().last().unwrap_or("").to_string();
        result
            .notes
            .push(format!("the runner never started; qemu: {tail}"));
    }
    let seed = t
        .kernel_events
        .iter()
        .find(|e| report::is_seed_bug(e) && e.scenario.is_some());
    result.bug_scenario = seed.and_then(|e| e.scenario.clone());
    result.bug_round = seed.and_then(|e| e.round);
    result.as_expected = match prepared.expect {
        Expectation::Pass => result.outcome == Outcome::Pass,
        Expectation::CaughtBug => result.outcome == Outcome::KernelFailure && seed.is_some(),
    };
    let retry = if silent_stop {
        let wall = result.wall_s.unwrap_or(0.0);
        Some(format!(
            "it stopped after {wall:.1} s with no kernel message, deadline or kill \
             (a silent guest reset)"
        ))
    } else if seed.is_none()
        && !t.kernel_events.is_empty()
        && t.kernel_events.iter().all(report::is_text_patching_trap)
    {
        let e = &t.kernel_events[0];
        let rip = e
            .text
            .iter()
            .find(|l| l.contains("RIP:"))
            .map_or("", |l| l.trim());
        Some(format!(
            "the kernel oopsed on a breakpoint of its own text patching, not in vfio \
             ({}, {rip}; QEMU's TCG can run a patched int3 on another vCPU)",
            e.headline.trim()
        ))
    } else {
        None
    };
    (result, retry)
}
