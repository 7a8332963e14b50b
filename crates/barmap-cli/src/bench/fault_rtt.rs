//! Isolated fault round trips (`fault_rtt`, page policy, one service
//! thread) in poll and spin mode, next to what judges them: a thread wake-up
//! round trip (`wakeup_rtt`, [`super::wakeup`]) and the same faults on a bare
//! userfaultfd loop (`uffd_floor_rtt`); and the service's CPU while idle
//! (`service_idle`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use barmap::{Device, Policy, WaitMode};
use hdrhistogram::Histogram;

use super::dev::{device, errno_str, map, settle};
use super::hist::{hist_measurement, new_hist};
use super::native::Native;
use super::report::timing;
use super::touch::View;
use super::wakeup::{wakeup_pipe, wakeup_spin};
use super::{Bench, Family, Results, MIB, PAGE};

/// The round trips, interleaved in blocks so that each ratio compares
/// figures taken under the same machine load. Sets the wake-up and fault
/// figures of the report's headline.
pub(super) struct FaultRtt;

impl Family for FaultRtt {
    fn run(&self, b: &Bench, r: &mut Results) -> Result<(), String> {
        // Wake-up and fault round trips, interleaved in blocks so that each
        // ratio compares figures taken under the same machine load. A spin
        // device lives only during its own block (it burns a core).
        let blocks = 4;
        let mut wake = new_hist();
        let mut hists = [new_hist(), new_hist()];
        let mut floors = [new_hist(), new_hist()];
        let mut cpu = [0.0f64; 2];
        let mut faults = [0u64; 2];
        let floor_native = Native::new(b.small)?;
        for block in 0..blocks {
            b.progress(&format!("round trips: block {}/{blocks}", block + 1));
            let w = wakeup_pipe(5_000)?;
            wake.add(&w).map_err(|e| format!("histogram: {e}"))?;
            for (k, mode) in [WaitMode::Poll, WaitMode::Spin].into_iter().enumerate() {
                let (c, f) = fault_rtt(mode, b.small / blocks, &mut hists[k])?;
                cpu[k] += c / blocks as f64;
                faults[k] += f;
                uffd_floor(&floor_native, mode, b.small / blocks, &mut floors[k])?;
            }
        }
        drop(floor_native);
        let mut m = hist_measurement("wakeup_rtt", &wake);
        m.mode = Some("pipe".into());
        r.measurements.push(m);
        let mut m = hist_measurement("wakeup_rtt", &wakeup_spin(200_000));
        m.mode = Some("spin".into());
        r.measurements.push(m);
        let wakeup_us = wake.value_at_quantile(0.5) as f64 / 1e3;
        let mut fault_p50 = 0.0;
        let mut fault_p99 = 0.0;
        for (k, mname) in ["poll", "spin"].into_iter().enumerate() {
            let mut m = hist_measurement("fault_rtt", &hists[k]);
            m.policy = Some("page".into());
            m.mode = Some(mname.into());
            m.service_threads = Some(1);
            m.cpu_cores = Some(cpu[k]);
            m.faults = Some(faults[k]);
            m.ratio = Some(m.median / wakeup_us);
            m.ratio_to = Some("wakeup_rtt pipe p50".into());
            if k == 0 {
                fault_p50 = m.median;
                fault_p99 = m.p99.unwrap_or(0.0);
            }
            r.measurements.push(m);
            let mut f = hist_measurement("uffd_floor_rtt", &floors[k]);
            if k == 0 {
                r.uffd_floor_p50 = f.median;
            }
            f.mode = Some(mname.into());
            f.service_threads = Some(1);
            f.ratio = Some(f.median / wakeup_us);
            f.ratio_to = Some("wakeup_rtt pipe p50".into());
            r.measurements.push(f);
        }
        for mode in [WaitMode::Poll, WaitMode::Spin] {
            let mut idle = timing("service_idle", "cores", &[idle_cpu(mode)?]);
            idle.mode = Some(
                if mode == WaitMode::Poll {
                    "poll"
                } else {
                    "spin"
                }
                .into(),
            );
            idle.service_threads = Some(1);
            r.measurements.push(idle);
        }
        r.wakeup_us = wakeup_us;
        r.fault_p50 = fault_p50;
        r.fault_p99 = fault_p99;
        Ok(())
    }
}

/// CPU time of `clock`.
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid struct.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Isolated faults: one thread touches each page of a fresh page-policy
/// mapping in turn, timing each touch. Returns the histogram (ns), the CPU
/// the rest of the process (the service) burnt per wall second, and faults.
fn fault_rtt(mode: WaitMode, len: usize, hist: &mut Histogram<u64>) -> Result<(f64, u64), String> {
    let dev = device(len, Policy::Page, Some(1), mode)?;
    // Warm-up: one pass over a small mapping.
    {
        let m = map(&dev, 0, 4 * MIB)?;
        let v = View::of(&m);
        for i in 0..v.pages() {
            v.touch(i, 0);
        }
        settle(&dev);
    }
    let m = map(&dev, 0, len)?;
    let v = View::of(&m);
    let before = dev.stats();
    let (wall0, proc0, me0) = (
        Instant::now(),
        cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID),
        cpu_time(libc::CLOCK_THREAD_CPUTIME_ID),
    );
    for i in 0..v.pages() {
        let t = Instant::now();
        v.touch(i, 0);
        let _ = hist.record((t.elapsed().as_nanos() as u64).max(1));
    }
    let wall = wall0.elapsed();
    let service_cpu = (cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - proc0)
        .saturating_sub(cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - me0);
    settle(&dev);
    let faults = dev.stats().since(&before).faults;
    Ok((service_cpu.as_secs_f64() / wall.as_secs_f64(), faults))
}

/// The floor under barmap's fault round trip: the same isolated faults on a
/// userfaultfd served by a bare loop (wait, read, one UFFDIO_CONTINUE), with
/// no registry, gate or policy. Returns the histogram (ns).
fn uffd_floor(
    native: &Native,
    mode: WaitMode,
    len: usize,
    hist: &mut Histogram<u64>,
) -> Result<(), String> {
    use barmap::mm::SpaceId;
    use barmap::uffd::Event;
    let uffd = barmap::uffd::Uffd::open().map_err(|e| format!("userfaultfd: {e}"))?;
    let v = native.view(len)?;
    let view = v.0;
    uffd.register(view.addr..view.addr + view.len)
        .map_err(|e| errno_str("UFFDIO_REGISTER", e))?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut events: Vec<Event> = Vec::with_capacity(32);
            while !stop.load(Ordering::Relaxed) {
                if mode == WaitMode::Poll {
                    let mut fd = libc::pollfd {
                        fd: uffd.raw(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; a 10 ms timeout to see `stop`.
                    if unsafe { libc::poll(&mut fd, 1, 10) } <= 0 {
                        continue;
                    }
                }
                events.clear();
                if uffd.read_events(SpaceId::LOCAL, &mut events).is_ok() {
                    for e in &events {
                        if let Event::Fault(f) = e {
                            let page = f.addr & !(PAGE - 1);
                            let _ = uffd.continue_range(page..page + PAGE);
                        }
                    }
                }
            }
        });
        for i in 0..view.pages() {
            let t = Instant::now();
            view.touch(i, 0);
            if i >= 64 {
                let _ = hist.record((t.elapsed().as_nanos() as u64).max(1));
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Unregister before the view goes: the userfaultfd reports munmaps of
    // registered ranges (EVENT_UNMAP), and with its reader gone the munmap
    // would wait for that event to be read for ever.
    uffd.unregister(view.addr..view.addr + view.len)
        .map_err(|e| errno_str("UFFDIO_UNREGISTER", e))?;
    drop(v);
    Ok(())
}

/// CPU the service burns per wall second while no fault arrives.
fn idle_cpu(mode: WaitMode) -> Result<f64, String> {
    let dev = Device::builder_with_memory(2 * MIB as u64)
        .service_threads(1)
        .wait_mode(mode)
        .build()
        .map_err(|e| format!("building the device: {e}"))?;
    std::thread::sleep(Duration::from_millis(20));
    let (w, p) = (Instant::now(), cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID));
    std::thread::sleep(Duration::from_millis(200));
    let cores =
        (cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - p).as_secs_f64() / w.elapsed().as_secs_f64();
    drop(dev);
    Ok(cores)
}
