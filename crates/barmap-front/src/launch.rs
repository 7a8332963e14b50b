//! `barmap run`: lays out a private testbed, starts the program with the
//! preload library and the environment VFIO programs honour, forwards
//! SIGINT, SIGTERM and SIGHUP to it, waits for it, collects the devices'
//! counters that the program's front end wrote at exit, and removes the
//! testbed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::spec::{RunSpec, TESTBED_ENV};
use crate::testbed::{Testbed, TOKEN_ENV};

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
///
/// The testbed is a fresh private directory ([`Testbed`]) that is removed
/// on every way out: when the program has ended, when it cannot be
/// started, and on a panic. From before the testbed is made until it is
/// removed, SIGINT, SIGTERM and SIGHUP sent to this process are forwarded
/// to the program, and the run goes on until the program ends
/// ([`forward`]). A process the program leaves behind finds the testbed
/// gone, and no other directory is taken for it.
pub fn run_with(
    spec: &RunSpec,
    program: &str,
    args: &[String],
    output: Output<'_>,
) -> Result<Outcome, String> {
    run_served(spec, program, args, output, None)
}

/// What hosts a run's devices for every process of its program tree
/// (`barmap run --shared`): called with the fresh testbed directory and the
/// run's spec, it starts serving the devices (its sockets inside the
/// testbed) and returns the spec the program sees (each device
/// [`crate::spec::DeviceSpec::served`] at its socket) and a guard that
/// stops serving when dropped (before the testbed is removed).
pub type ServeHook<'a> =
    &'a mut dyn FnMut(&Path, &RunSpec) -> Result<(RunSpec, Box<dyn std::any::Any>), String>;

/// Like [`run_with`], the devices served by `serve` if given.
pub fn run_served(
    spec: &RunSpec,
    program: &str,
    args: &[String],
    output: Output<'_>,
    serve: Option<ServeHook<'_>>,
) -> Result<Outcome, String> {
    let preload = find_preload()?;
    let forwarding = forward::Forwarding::start();
    let mut guard: Option<Box<dyn std::any::Any>> = None;
    let mut failed: Option<String> = None;
    let made = Testbed::new_with(spec, |dir| match serve {
        None => Ok(None),
        Some(f) => match f(dir, spec) {
            Ok((served, g)) => {
                guard = Some(g);
                Ok(Some(served))
            }
            Err(e) => {
                failed = Some(e.clone());
                Err(std::io::Error::other(e))
            }
        },
    });
    let (testbed, spec) = match made {
        Ok(t) => t,
        Err(e) => {
            drop(guard);
            return Err(failed.unwrap_or_else(|| format!("testbed: {e}")));
        }
    };
    let outcome = run_in(
        &testbed,
        &forwarding,
        &preload,
        &spec,
        program,
        args,
        output,
    );
    drop(guard);
    drop(testbed);
    drop(forwarding);
    outcome
}

fn run_in(
    testbed: &Testbed,
    forwarding: &forward::Forwarding,
    preload: &Path,
    spec: &RunSpec,
    program: &str,
    args: &[String],
    output: Output<'_>,
) -> Result<Outcome, String> {
    let dir = testbed.path();
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
        .env(TOKEN_ENV, testbed.token())
        .env("SYSFS_PCI_DEVICES", dir.join("sys/bus/pci/devices"));
    if let Some(first) = spec.devices.first() {
        cmd.env("BARMAP_BDF", &first.bdf)
            .env("VFIO_SELFTESTS_BDF", &first.bdf)
            .env("BARMAP_GROUP", first.group.to_string());
    }
    let started = std::time::Instant::now();
    forwarding.spawning();
    let spawned = cmd.spawn();
    if spawned.is_err() {
        forwarding.stop();
    }
    let mut child = spawned.map_err(|e| format!("starting {program}: {e}"))?;
    forwarding.to(child.id());
    // Stop forwarding before the program is reaped: its pid may be reused
    // at once after.
    forward::wait_exited(child.id());
    forwarding.stop();
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let reports = testbed.reports();
    let bugs = reports
        .iter()
        .flat_map(|v| v["devices"].as_array().into_iter().flatten())
        .map(|d| d["stats"]["bugs"].as_u64().unwrap_or(0))
        .sum();
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

/// SIGINT, SIGTERM and SIGHUP to the launching process, forwarded to the
/// programs it runs.
///
/// While a [`Forwarding`] lives, these signals do not end this process.
/// While its program runs, its handler sends each to the program, unless
/// the kernel sent it (`SI_KERNEL`: a terminal's signal, which went to the
/// whole foreground process group) and the program is in our process
/// group, so that it got the signal already (as `sudo` decides). The
/// program decides what they mean, as it would outside barmap; the run
/// ends when the program does, and is reported as usual.
/// A signal that arrives while no program runs (the testbed being made or
/// removed) is held, and sent to the program once it is started, or, once
/// the program has ended, to this process again when the last
/// `Forwarding` is dropped and the previous dispositions are back (a
/// terminal's signal during the start itself is taken to have reached the
/// program). At most
/// 16 programs are forwarded to at once. SIGKILL cannot be forwarded: a
/// run killed so leaves its program running and its testbed behind (a
/// private directory that no later run reuses).
pub mod forward {
    use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
    use std::sync::Mutex;

    /// The signals forwarded.
    pub const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    /// Programs forwarded to at once, at most.
    const SLOTS: usize = 16;
    /// A slot held by a run whose program is not running: signals are held.
    const HOLDING: i32 = -1;
    /// A slot whose program is being started: a terminal's signal reaches
    /// it (it is in our process group), others are held.
    const SPAWNING: i32 = -2;
    /// A free slot.
    const FREE: i32 = 0;

    /// Pids of the programs (positive), or HOLDING, or FREE.
    static PIDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(FREE) }; SLOTS];
    /// Signals held per slot, as bit sets.
    static HELD: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];
    /// Live forwardings, and the dispositions to restore after the last.
    static INSTALLED: Mutex<(usize, Vec<libc::sigaction>)> = Mutex::new((0, Vec::new()));

    extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let by_kernel = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
        for (slot, held) in PIDS.iter().zip(&HELD) {
            let pid = slot.load(Ordering::Acquire);
            if pid > 0 && !(by_kernel && in_our_group(pid)) {
                send(pid, sig);
            } else if pid == HOLDING || (pid == SPAWNING && !by_kernel) {
                held.fetch_or(1 << sig, Ordering::AcqRel);
            }
        }
    }

    /// Whether the program `pid` is in this process's group (so that a
    /// terminal's signal reached it too).
    fn in_our_group(pid: i32) -> bool {
        // SAFETY: getpgid and getpgrp are plain system calls, safe in a
        // signal handler.
        unsafe { libc::getpgid(pid) == libc::getpgrp() }
    }

    /// `kill(pid, sig)`, for a program's pid only (never a group or all).
    fn send(pid: i32, sig: libc::c_int) {
        if pid > 0 {
            // SAFETY: kill is async-signal-safe; pid is a child we started
            // and have not reaped.
            unsafe { libc::kill(pid, sig) };
        }
    }

    fn set_action(sig: libc::c_int, new: &libc::sigaction) -> libc::sigaction {
        // SAFETY: a zeroed sigaction is a valid out-buffer.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: sigaction with valid in and out buffers.
        unsafe { libc::sigaction(sig, new, &mut old) };
        old
    }

    /// Waits until the child `pid` has ended, without reaping it (so that
    /// its pid stays its own until [`Forwarding::stop`]).
    pub fn wait_exited(pid: u32) {
        loop {
            // SAFETY: a zeroed siginfo is a valid out-buffer.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid for one child, WNOWAIT: it stays a zombie.
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return;
            }
        }
    }

    /// Forwarding for one program, from before it is started until after
    /// it ended.
    #[derive(Debug)]
    pub struct Forwarding {
        slot: Option<usize>,
    }

    impl Forwarding {
        /// Installs the forwarding handler (if no other Forwarding has) and
        /// holds the signals until [`Forwarding::to`].
        pub fn start() -> Forwarding {
            let slot = PIDS.iter().position(|p| {
                p.compare_exchange(FREE, HOLDING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            });
            if let Some(s) = slot {
                HELD[s].store(0, Ordering::Release);
            }
            let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
            if installed.0 == 0 {
                // SAFETY: a zeroed sigaction is a valid start.
                let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
                act.sa_sigaction = on_signal
                    as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                    as usize;
                act.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
                // SAFETY: sigemptyset of our sigaction's mask.
                unsafe { libc::sigemptyset(&mut act.sa_mask) };
                installed.1 = SIGNALS.iter().map(|&s| set_action(s, &act)).collect();
            }
            installed.0 += 1;
            Forwarding { slot }
        }

        /// The program is about to be started.
        pub fn spawning(&self) {
            if let Some(s) = self.slot {
                PIDS[s].store(SPAWNING, Ordering::Release);
            }
        }

        /// The program is `pid` (started, not yet reaped): signals go to it
        /// from now on, the held ones first.
        pub fn to(&self, pid: u32) {
            let Some(s) = self.slot else { return };
            let Ok(pid) = i32::try_from(pid) else { return };
            if pid <= 0 {
                return;
            }
            PIDS[s].store(pid, Ordering::Release);
            let held = HELD[s].swap(0, Ordering::AcqRel);
            for sig in SIGNALS {
                if held & (1 << sig) != 0 {
                    send(pid, sig);
                }
            }
        }

        /// The program has ended (call before reaping it): signals are
        /// held again.
        pub fn stop(&self) {
            if let Some(s) = self.slot {
                PIDS[s].store(HOLDING, Ordering::Release);
            }
        }
    }

    impl Drop for Forwarding {
        fn drop(&mut self) {
            let held = match self.slot {
                Some(s) => {
                    PIDS[s].store(FREE, Ordering::Release);
                    HELD[s].swap(0, Ordering::AcqRel)
                }
                None => 0,
            };
            let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
            installed.0 -= 1;
            if installed.0 == 0 {
                let old = std::mem::take(&mut installed.1);
                for (sig, act) in SIGNALS.iter().zip(&old) {
                    set_action(*sig, act);
                }
            }
            drop(installed);
            for sig in SIGNALS {
                if held & (1 << sig) != 0 {
                    // SAFETY: a signal to this process itself.
                    unsafe { libc::kill(libc::getpid(), sig) };
                }
            }
        }
    }
}
