//! The emulated device's behaviour: SIGBUS while disabled, data kept across
//! zaps, low power, config space, region access, partial unmap, teardown.

use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use barmap::device::pci;
use barmap::touch::Fault;
use barmap::{Device, Error, Policy, PowerState, Prot, DEFAULT_MEMORY_BAR};

fn device(policy: Policy) -> Device {
    Device::builder_with_memory(8 << 20)
        .policy(policy)
        .build()
        .expect("device")
}

#[test]
fn disabled_touch_kills_a_child_with_sigbus() {
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_touches_disabled_memory",
            "--ignored",
            "--nocapture",
        ])
        .env("BARMAP_SIGBUS_CHILD", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("spawn child");
    assert_eq!(
        status.signal(),
        Some(libc::SIGBUS),
        "child status {status:?}"
    );
}

#[test]
#[ignore = "run by disabled_touch_kills_a_child_with_sigbus in a child process"]
fn child_touches_disabled_memory() {
    if std::env::var_os("BARMAP_SIGBUS_CHILD").is_none() {
        return;
    }
    let dev = device(Policy::Page);
    let m = dev
        .map(DEFAULT_MEMORY_BAR, 0, 4096, Prot::ReadWrite)
        .unwrap();
    m.write_u64(0, 1);
    dev.set_memory_enabled(false);
    let v = m.read_u64(0); // dies here
    panic!("read {v} from disabled memory");
}

#[test]
fn disable_gives_sigbus_and_probe_errors_then_enable_restores_the_data() {
    for policy in Policy::ALL {
        let dev = device(policy);
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 4 << 20, Prot::ReadWrite)
            .unwrap();
        for page in (0..1024).step_by(97) {
            m.write_u64(page * 4096, page as u64 ^ 0xabcd);
        }
        dev.set_memory_enabled(false);
        assert!(!dev.memory_enabled());
        assert_eq!(m.touch_u64(0), Err(Fault::Sigbus), "{policy}");
        let mut b = [0u8; 8];
        assert!(
            matches!(m.try_read(4096 * 5, &mut b), Err(Error::Fault { .. })),
            "{policy}"
        );
        assert!(matches!(
            dev.read_region(DEFAULT_MEMORY_BAR, 0, &mut b),
            Err(Error::MemoryDisabled)
        ));
        assert!(matches!(
            dev.write_region(DEFAULT_MEMORY_BAR, 0, &b),
            Err(Error::MemoryDisabled)
        ));
        dev.set_memory_enabled(true);
        for page in (0..1024).step_by(97) {
            assert_eq!(
                m.touch_u64(page * 4096),
                Ok(page as u64 ^ 0xabcd),
                "{policy} page {page}"
            );
        }
        m.try_read(4096 * 5, &mut b).unwrap();
        assert!(dev.wait_idle(Duration::from_secs(5)));
        let s = dev.stats();
        assert!(s.sigbus >= 1 && s.zaps >= 1, "{policy}: {s:?}");
        assert_eq!(s.faults, s.outcomes(), "{policy}: {s:?}");
    }
}

#[test]
fn low_power_revokes_like_a_disable() {
    let dev = device(Policy::Prefault);
    let m = dev
        .map(DEFAULT_MEMORY_BAR, 0, 1 << 20, Prot::ReadWrite)
        .unwrap();
    m.write_u64(64, 7);
    dev.set_power_state(PowerState::D3hot);
    assert_eq!(m.touch_u64(64), Err(Fault::Sigbus));
    let mut b = [0u8; 8];
    assert!(matches!(
        dev.read_region(DEFAULT_MEMORY_BAR, 64, &mut b),
        Err(Error::MemoryDisabled)
    ));
    dev.set_power_state(PowerState::D0);
    assert_eq!(m.touch_u64(64), Ok(7));
}

#[test]
fn command_register_controls_memory_and_bars_size_like_pci() {
    let dev = device(Policy::Page);
    let m = dev
        .map(DEFAULT_MEMORY_BAR, 0, 4096, Prot::ReadWrite)
        .unwrap();
    m.write_u64(0, 5);
    let cmd = dev.command();
    assert_ne!(cmd & pci::COMMAND_MEMORY, 0);
    dev.write_config(pci::COMMAND, &(cmd & !pci::COMMAND_MEMORY).to_le_bytes())
        .unwrap();
    assert_eq!(m.touch_u64(0), Err(Fault::Sigbus));
    dev.write_config(pci::COMMAND, &cmd.to_le_bytes()).unwrap();
    assert_eq!(m.touch_u64(0), Ok(5));
    // BAR sizing: all ones in, the size mask out (BAR2 is 8 MiB, 64-bit).
    let bar2 = pci::BAR0 + 8;
    dev.write_config(bar2, &[0xff; 4]).unwrap();
    let mut v = [0u8; 4];
    dev.read_config(bar2, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v) & !0xf, !((8u32 << 20) - 1) & !0xf);
    assert_eq!(u32::from_le_bytes(v) & 0x4, 0x4, "64-bit BAR");
    assert!(matches!(
        dev.read_config(254, &mut v),
        Err(Error::ConfigRange { .. })
    ));
}

#[test]
fn region_read_into_a_mapping_of_the_same_device_does_not_deadlock() {
    let dev = Arc::new(device(Policy::Page));
    dev.write_region(DEFAULT_MEMORY_BAR, 0, &[0x5a; 65536])
        .unwrap();
    let m = dev
        .map(DEFAULT_MEMORY_BAR, 1 << 20, 1 << 20, Prot::ReadWrite)
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let toggler = {
        let dev = dev.clone();
        std::thread::spawn(move || {
            while rx.try_recv().is_err() {
                dev.reset().unwrap();
                // Back-to-back resets would starve the readers (a writer
                // waiting blocks new readers); leave them a window.
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    for _ in 0..50 {
        // SAFETY: the mapping is live for the loop and nothing else holds a
        // reference into it; the region read writes through it like a user
        // buffer, faulting its pages in.
        let buf = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), 65536) };
        dev.read_region(DEFAULT_MEMORY_BAR, 0, buf).unwrap();
        assert_eq!(m.read_u64(4096), 0x5a5a_5a5a_5a5a_5a5a);
    }
    tx.send(()).unwrap();
    toggler.join().unwrap();
}

#[test]
fn partial_unmap_while_other_threads_fault_keeps_the_rest_working() {
    for policy in [Policy::Whole, Policy::Page, Policy::Huge, Policy::Prefault] {
        let dev = device(policy);
        let data: Vec<u8> = (0..64 * 4096).map(|i| (i / 4096) as u8).collect();
        dev.write_region(DEFAULT_MEMORY_BAR, 0, &data).unwrap();
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 64 * 4096, Prot::ReadWrite)
            .unwrap();
        let barrier = Barrier::new(5);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (barrier, m) = (&barrier, &m);
                s.spawn(move || {
                    barrier.wait();
                    for round in 0..20 {
                        for page in (t..32).step_by(4) {
                            let v = m.touch_u64(page * 4096).expect("live page");
                            assert_eq!(v & 0xff, page as u64, "{policy} round {round}");
                        }
                    }
                });
            }
            barrier.wait();
            // The touching threads stay below page 32.
            for piece in (32..64).step_by(4) {
                m.unmap(piece * 4096, 4 * 4096).unwrap();
            }
        });
        // The hole is gone from this mapping. (What a touch there hits is
        // not ours to assert: other tests in this process may have mapped
        // the freed addresses meanwhile.)
        assert_ne!(m.touch_u64(40 * 4096), Ok(0x2828_2828_2828_2828));
        assert!(
            matches!(m.unmap(40 * 4096, 4096), Err(Error::NotMapped { .. })),
            "double unmap"
        );
        assert!(m.is_mapped(0) && !m.is_mapped(32 * 4096));
        dev.set_memory_enabled(false);
        assert_eq!(m.touch_u64(0), Err(Fault::Sigbus));
        dev.set_memory_enabled(true);
        assert_eq!(m.touch_u64(31 * 4096).map(|v| v & 0xff), Ok(31));
        m.unmap(0, 32 * 4096).unwrap();
        assert_eq!(dev.mapping_count(), 0, "{policy}");
        drop(m);
    }
}

#[test]
fn dropping_the_device_under_faulting_threads_never_hangs() {
    let dev = Device::builder_with_memory(64 << 20)
        .policy(Policy::Page)
        .service_threads(1)
        .build()
        .unwrap();
    let m = Arc::new(
        dev.map(DEFAULT_MEMORY_BAR, 0, 64 << 20, Prot::ReadWrite)
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    for t in 0..8 {
        let (m, tx) = (m.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut outcome = None;
            for page in (t..16384).step_by(8) {
                if let Err(f) = m.touch_u64(page * 4096) {
                    outcome = Some(f);
                    break;
                }
            }
            tx.send(outcome).unwrap();
        });
    }
    std::thread::sleep(Duration::from_millis(20));
    drop(dev);
    let mut sigbus = 0;
    for _ in 0..8 {
        let outcome = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a toucher hung");
        assert_ne!(outcome, Some(Fault::Sigsegv));
        sigbus += usize::from(outcome == Some(Fault::Sigbus));
    }
    assert!(sigbus > 0, "the drop came after every touch");
    // After the drop: every touch SIGBUS, probes report the device gone.
    assert_eq!(m.touch_u64(0), Err(Fault::Sigbus));
    let mut b = [0u8; 8];
    assert!(matches!(m.try_read(0, &mut b), Err(Error::DeviceGone)));
}

#[test]
fn legacy_storm_reports_the_seeds_bug_without_crashing() {
    let dev = Arc::new(device(Policy::Legacy));
    let mut bugs = 0;
    for _ in 0..20 {
        let m = Arc::new(
            dev.map(DEFAULT_MEMORY_BAR, 0, 4 << 20, Prot::ReadWrite)
                .unwrap(),
        );
        let barrier = Arc::new(Barrier::new(16));
        let hs: Vec<_> = (0..16)
            .map(|t| {
                let (m, barrier) = (m.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    m.touch_u64(t * 4096).expect("legacy still maps the page")
                })
            })
            .collect();
        hs.into_iter().for_each(|h| {
            h.join().unwrap();
        });
        bugs = dev.stats().bugs;
    }
    assert!(bugs > 0, "16 threads x 20 rounds never raced");
    let ev = &dev.bug_events()[0];
    assert!(
        ev.what.contains("kernel BUG") && ev.tid != 0 && ev.first_tid != 0,
        "{ev:?}"
    );
}

#[test]
fn config_space_lists_msi_and_msix_capabilities_a_driver_can_walk() {
    let dev = Device::builder_with_memory(1 << 20).build().unwrap();
    let mut cfg = [0u8; 256];
    dev.read_config(0, &mut cfg).unwrap();
    assert!(cfg[6] & 0x10 != 0, "STATUS: capabilities list");
    let mut at = cfg[0x34] as usize;
    let mut found = Vec::new();
    while at != 0 && found.len() < 8 {
        found.push((cfg[at], at));
        at = cfg[at + 1] as usize;
    }
    assert_eq!(found, vec![(0x05, 0x50), (0x11, 0x70)], "MSI, then MSI-X");
    let control = u16::from_le_bytes([cfg[0x72], cfg[0x73]]);
    assert_eq!(control & 0x7ff, 7, "8 MSI-X vectors");
    let table = u32::from_le_bytes(cfg[0x74..0x78].try_into().unwrap());
    assert_eq!(
        (table & 7, table & !7),
        (0, 0x8000),
        "table in BAR0 at 0x8000"
    );
    // The enable bits are writable; the capability ids and pointers are not.
    dev.write_config(0x73, &[0xc0]).unwrap();
    dev.write_config(0x70, &[0xff, 0xff]).unwrap();
    dev.read_config(0, &mut cfg).unwrap();
    assert_eq!(cfg[0x73] & 0xc0, 0xc0);
    assert_eq!((cfg[0x70], cfg[0x71]), (0x11, 0));
}

// ---- prefault: the walk after a mapping's first touches ----

/// A prefault device of `size` bytes of BAR memory, all written (committed),
/// served by `service` threads.
fn prefault_device(size: usize, service: usize) -> Device {
    let dev = Device::builder_with_memory(size as u64)
        .policy(Policy::Prefault)
        .service_threads(service)
        .build()
        .unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i / 4096) as u8).collect();
    dev.write_region(DEFAULT_MEMORY_BAR, 0, &data).unwrap();
    dev
}

#[test]
fn prefault_walk_skips_the_chunk_its_fault_filled_and_maps_every_other_page_once() {
    const CHUNK: usize = 2 << 20;
    let dev = prefault_device(4 * CHUNK, 1);
    let m = dev
        .map(DEFAULT_MEMORY_BAR, 0, 4 * CHUNK, Prot::ReadWrite)
        .unwrap();
    let before = dev.stats();
    // A touch in the third chunk: its fault maps that chunk whole, the walk
    // the other three.
    let page = 2 * CHUNK / 4096 + 5;
    assert_eq!(m.touch_u64(page * 4096).unwrap() & 0xff, page as u64 & 0xff);
    assert!(dev.wait_idle(Duration::from_secs(10)));
    let s = dev.stats().since(&before);
    assert_eq!(s.faults, 1);
    assert_eq!(s.fault_pages, (CHUNK / 4096) as u64);
    assert_eq!(
        s.prefault_skipped, 1,
        "the fault's chunk is not probed again"
    );
    assert_eq!(s.prefault_chunks, 3);
    assert_eq!(s.pages_filled, (4 * CHUNK / 4096) as u64, "each page once");
    // Everything is mapped: no touch faults any more.
    for p in (0..4 * CHUNK / 4096).step_by(7) {
        assert_eq!(m.touch_u64(p * 4096).unwrap() & 0xff, p as u64 & 0xff);
    }
    assert_eq!(dev.stats().since(&before).faults, 1);
}

#[test]
fn every_prefault_fault_answered_filled_or_present_joins_the_walk() {
    let dev = prefault_device(16 << 20, 2);
    let threads = 16;
    for _ in 0..3 {
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 16 << 20, Prot::ReadWrite)
            .unwrap();
        let before = dev.stats();
        let barrier = Barrier::new(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (barrier, m) = (&barrier, &m);
                s.spawn(move || {
                    barrier.wait();
                    for p in (t..(16 << 20) / 4096).step_by(threads) {
                        assert_eq!(m.touch_u64(p * 4096).unwrap() & 0xff, p as u64 & 0xff);
                    }
                });
            }
        });
        assert!(dev.wait_idle(Duration::from_secs(10)));
        let s = dev.stats().since(&before);
        assert_eq!(s.prefault_runs, s.fills + s.eexist, "{s:?}");
        assert_eq!(s.wakes, s.eexist, "one wake per Present answer: {s:?}");
        assert_eq!(s.pages_filled, ((16 << 20) / 4096) as u64, "{s:?}");
    }
}

// ----- the prefault walk's scheduling ---------------------------------------

/// (policy, nice) of every fault service thread of this process, from
/// /proc/self/task/*/stat (fields 41 and 19).
fn service_thread_sched() -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("barmap-fault") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        out.push((fields[38].parse().unwrap(), fields[16].parse().unwrap()));
    }
    out
}

#[test]
fn prefault_walks_run_raised_and_service_threads_go_back_to_their_own_priority() {
    // In a process of its own: other tests' walks would be seen raised.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_walks_raised_then_restored",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by prefault_walks_run_raised_and_service_threads_go_back_to_their_own_priority"]
fn child_walks_raised_then_restored() {
    let dev = prefault_device(16 << 20, 2);
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    for _ in 0..3 {
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 16 << 20, Prot::ReadWrite)
            .unwrap();
        let before = dev.stats();
        for p in 0..(16 << 20) / 4096 {
            assert_eq!(m.touch_u64(p * 4096).unwrap() & 0xff, p as u64 & 0xff);
        }
        assert!(dev.wait_idle(Duration::from_secs(10)));
        let s = dev.stats().since(&before);
        assert!(s.prefault_runs > 0, "{s:?}");
        if root {
            assert_eq!(s.prefault_raised, s.prefault_runs, "{s:?}");
        }
        let sched = service_thread_sched();
        assert_eq!(sched.len(), 2);
        assert!(
            sched.iter().all(|&(policy, nice)| policy == 0 && nice == 0),
            "service threads left raised after their walks: {sched:?}"
        );
    }
    barmap::set_fill_sched(barmap::FillSched::Normal);
    let m = dev
        .map(DEFAULT_MEMORY_BAR, 0, 16 << 20, Prot::ReadWrite)
        .unwrap();
    let before = dev.stats();
    assert_eq!(m.touch_u64(0).unwrap() & 0xff, 0);
    assert!(dev.wait_idle(Duration::from_secs(10)));
    let s = dev.stats().since(&before);
    assert_eq!((s.prefault_runs, s.prefault_raised), (1, 0), "{s:?}");
}

/// A device model's worker holds its own lock and reads COMMAND (bus
/// mastering) while a reset, holding config space, waits for that lock in
/// its hook: reading COMMAND must not wait for the reset (the deadlock a
/// killed vfio-user client's reset met with igb's worker mid-storm).
#[test]
fn command_is_readable_while_a_reset_holds_config_space() {
    let dev = Arc::new(device(Policy::Page));
    let cmd = dev.command();
    let (tx, rx) = mpsc::channel();
    dev.reset_with(|| {
        let d = dev.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(d.command());
        });
        let got = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(got, Ok(cmd), "COMMAND read during a reset");
    })
    .unwrap();
    assert_eq!(dev.command(), cmd);
}
