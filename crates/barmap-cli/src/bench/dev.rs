//! Devices for the bench: a BAR holding the pattern, mappings of it, and a
//! populate of a fresh mapping.

use std::time::Duration;

use barmap::{Device, Mapping, Policy, Prot, Stats, WaitMode, DEFAULT_MEMORY_BAR};

use super::report::ms;
use super::touch::{touch_all, write_pattern, View};

/// A device with a memory BAR of `size` bytes (rounded up to a power of
/// two) holding the pattern, served by `policy` in `mode` (`service`
/// threads, or the default count).
pub(super) fn device(
    size: usize,
    policy: Policy,
    service: Option<usize>,
    mode: WaitMode,
) -> Result<Device, String> {
    let mut b = Device::builder_with_memory(size.next_power_of_two() as u64)
        .policy(policy)
        .wait_mode(mode);
    if let Some(n) = service {
        b = b.service_threads(n);
    }
    let dev = b.build().map_err(|e| format!("building the device: {e}"))?;
    write_pattern(size, |off, data| {
        dev.write_region(DEFAULT_MEMORY_BAR, off, data)
            .map_err(|e| format!("writing the BAR: {e}"))
    })?;
    Ok(dev)
}

/// A read-write mapping of `len` bytes of the memory BAR at `offset`.
pub(super) fn map(dev: &Device, offset: usize, len: usize) -> Result<Mapping, String> {
    dev.map(DEFAULT_MEMORY_BAR, offset as u64, len, Prot::ReadWrite)
        .map_err(|e| format!("mapping {len:#x} at {offset:#x}: {e}"))
}

/// Errors the fault path itself reports (SIGBUS answers, failed fills).
pub(super) fn path_errors(s: &Stats) -> u64 {
    s.sigbus + s.retries
}

/// Waits (up to 10 s) for the fault service to go idle.
pub(super) fn settle(dev: &Device) {
    if !dev.wait_idle(Duration::from_secs(10)) {
        eprintln!("barmap bench: warning: the fault service did not go idle within 10 s");
    }
}

/// Populates a fresh mapping of `len` bytes `reps + 1` times (the first is a
/// warm-up); returns the times in ms, wrong reads and fault-path counters.
pub(super) fn populate_dev(
    dev: &Device,
    len: usize,
    threads: usize,
    interleave: bool,
    reps: usize,
) -> Result<(Vec<f64>, u64, Stats), String> {
    populate_dev_cpu(dev, len, threads, interleave, reps).map(|(t, _, e, s)| (t, e, s))
}

/// [`populate_dev`], also returning the CPU time the process spent on each
/// repetition's touches (ms, every thread: the touching threads and the
/// service's, from the touching threads' start to the service going idle;
/// the map and the unmap are left out).
pub(super) fn populate_dev_cpu(
    dev: &Device,
    len: usize,
    threads: usize,
    interleave: bool,
    reps: usize,
) -> Result<(Vec<f64>, Vec<f64>, u64, Stats), String> {
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let mut errors = 0;
    let before = dev.stats();
    for rep in 0..=reps {
        let (t, c, bad) = populate_once(dev, len, threads, interleave)?;
        if rep > 0 {
            times.push(t);
            cpu.push(c);
            errors += bad;
        }
    }
    Ok((times, cpu, errors, dev.stats().since(&before)))
}

/// One populate of a fresh mapping of `len` bytes: its time (ms), the CPU
/// time of its touches (ms, as in [`populate_dev_cpu`]) and its wrong reads.
pub(super) fn populate_once(
    dev: &Device,
    len: usize,
    threads: usize,
    interleave: bool,
) -> Result<(f64, f64, u64), String> {
    let m = map(dev, 0, len)?;
    let c = process_cpu_ms();
    let (t, bad) = touch_all(View::of(&m), 0, threads, interleave);
    settle(dev);
    let c = process_cpu_ms() - c;
    drop(m);
    Ok((ms(t), c, bad))
}

/// CPU time (user + system) of every thread of this process so far, ms.
pub(super) fn process_cpu_ms() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `what: <the errno's message>`.
pub(super) fn errno_str(what: &str, errno: i32) -> String {
    format!("{what}: {}", std::io::Error::from_raw_os_error(errno))
}
