//! `barmap demo`: the seed scenario on the default device.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use barmap::{touch::Fault, Device, Prot, Stats, DEFAULT_ID, DEFAULT_MEMORY_BAR};
use serde::Serialize;

use crate::util::{pattern, write_pattern};

/// Arguments of `barmap demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Touching threads.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Limit on the device memory the demo's device may commit (K, M, G
    /// suffixes; default: half of MemAvailable; the demo commits 64 MiB).
    #[arg(long, value_parser = crate::util::parse_size)]
    memory_limit: Option<u64>,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Step {
    step: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct DemoResult {
    policy: String,
    /// How the userfaultfd was obtained (what kernel-mode accesses can do).
    uffd_access: barmap::UffdAccess,
    threads: usize,
    errors: u64,
    /// SIGBUS answers by the fault service while memory was off.
    sigbus: u64,
    /// Touching threads that took a real SIGBUS while memory was off.
    sigbus_seen: u64,
    child_killed_by_sigbus: bool,
    steps: Vec<Step>,
    #[serde(flatten)]
    stats: Stats,
    elapsed_ms: f64,
}

const MAP_LEN: usize = 64 << 20;

pub fn run(args: &DemoArgs) -> i32 {
    match demo(args) {
        Ok(r) => {
            if args.json {
                println!("{}", serde_json::to_string(&r).expect("json"));
            } else {
                print_human(&r);
            }
            i32::from(r.errors > 0)
        }
        Err(e) => {
            eprintln!("barmap demo: {e}");
            2
        }
    }
}

/// Touches every `threads`-th page from a barrier: returns (touches ok,
/// wrong values, SIGBUS seen).
fn touch_all(map: &Arc<barmap::Mapping>, threads: usize) -> (u64, u64, u64) {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (map, barrier) = (map.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let (mut ok, mut wrong, mut bus) = (0, 0, 0);
                let pages = map.len() / 4096;
                for page in std::iter::once(0).chain((t..pages).step_by(threads * 64)) {
                    match map.touch_u64(page * 4096) {
                        Ok(v) if v == pattern(page) => ok += 1,
                        Ok(_) | Err(Fault::Sigsegv) => wrong += 1,
                        Err(Fault::Sigbus) => bus += 1,
                    }
                }
                (ok, wrong, bus)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("toucher"))
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

fn demo(args: &DemoArgs) -> barmap::Result<DemoResult> {
    let started = Instant::now();
    let threads = args.threads.max(2);
    let mut builder = Device::default_builder();
    if let Some(limit) = args.memory_limit {
        builder = builder.memory_limit(limit);
    }
    let device = builder.build()?;
    let mut steps = Vec::new();
    let mut errors = 0u64;
    let mut step = |name: &'static str, ok: bool, detail: String| {
        errors += u64::from(!ok);
        steps.push(Step {
            step: name,
            ok,
            detail,
        });
    };

    // 0. The device: config space and the ID register through a mapping.
    let mut id = [0u8; 2];
    device.read_config(0, &mut id)?;
    let regs = device.map(0, 0, 4096, Prot::Read)?;
    let idreg = regs.read_u32(0);
    step(
        "device",
        idreg == DEFAULT_ID,
        format!(
            "vendor {:#06x}, BAR0 ID register {idreg:#010x}, BAR2 {} MiB, policy {}",
            u16::from_le_bytes(id),
            device
                .region_info(DEFAULT_MEMORY_BAR)
                .map_or(0, |r| r.size >> 20),
            device.policy()
        ),
    );
    drop(regs);

    // 1. The seed: all threads touch one fresh mapping at the same instant.
    write_pattern(&device, DEFAULT_MEMORY_BAR, MAP_LEN)?;
    let map = Arc::new(device.map(DEFAULT_MEMORY_BAR, 0, MAP_LEN, Prot::ReadWrite)?);
    let before = device.stats();
    let (ok, wrong, bus) = touch_all(&map, threads);
    device.wait_idle(Duration::from_secs(5));
    let s = device.stats().since(&before);
    step(
        "concurrent first touch",
        wrong == 0 && bus == 0 && s.bugs == 0,
        format!(
            "{threads} threads, {ok} touches ok, {wrong} wrong, {bus} SIGBUS; {} faults, {} EEXIST races, {} pages filled, {} BUGs",
            s.faults, s.eexist, s.pages_filled, s.bugs
        ),
    );

    // 2. Memory off: every touch is a real SIGBUS; the probe and region
    //    reads fail; a child without a safety net dies by SIGBUS.
    map.write_u64(8, 0xfeed);
    let before = device.stats();
    device.set_memory_enabled(false);
    let (ok, wrong, bus) = touch_all(&map, threads);
    let mut probe = [0u8; 8];
    let probe_err = map.try_read(0, &mut probe).err();
    let region_err = device.read_region(DEFAULT_MEMORY_BAR, 0, &mut probe).err();
    device.wait_idle(Duration::from_secs(5));
    let answered = device.stats().since(&before).sigbus;
    step(
        "memory disabled",
        ok == 0
            && wrong == 0
            && bus > 0
            && probe_err.is_some()
            && matches!(region_err, Some(barmap::Error::MemoryDisabled)),
        format!(
            "{bus} touches took SIGBUS ({answered} SIGBUS answers); probe: {}; region read: {}",
            probe_err.map_or("succeeded".into(), |e| e.to_string()),
            region_err.map_or("succeeded".into(), |e| e.to_string())
        ),
    );
    let child = sigbus_in_child();
    step(
        "child touching disabled memory",
        child == Some(libc::SIGBUS),
        match child {
            Some(sig) => format!(
                "killed by signal {sig} ({})",
                if sig == libc::SIGBUS {
                    "SIGBUS"
                } else {
                    "unexpected"
                }
            ),
            None => "exited without a signal".into(),
        },
    );

    // 3. Memory on: touches fault the pages back in, data intact.
    device.set_memory_enabled(true);
    let (ok, wrong, bus2) = touch_all(&map, threads);
    let kept = map.read_u64(8);
    step(
        "memory re-enabled",
        wrong == 0 && bus2 == 0 && kept == 0xfeed,
        format!("{ok} touches ok, {wrong} wrong, {bus2} SIGBUS; word written before the disable reads {kept:#x}"),
    );
    drop(map);

    // 4. Reset while threads fault: they wait for the reset and succeed.
    let map = Arc::new(device.map(DEFAULT_MEMORY_BAR, 0, MAP_LEN, Prot::ReadWrite)?);
    let go = Barrier::new(2);
    let (result, reset) = std::thread::scope(|s| {
        let touchers = s.spawn(|| {
            go.wait();
            touch_all(&map, threads)
        });
        go.wait();
        let reset = device.reset();
        (touchers.join().expect("touchers"), reset)
    });
    let (ok, wrong, bus3) = result;
    step(
        "reset while faulting",
        reset.is_ok() && wrong == 0 && bus3 == 0,
        format!(
            "{ok} touches ok, {wrong} wrong, {bus3} SIGBUS; reset {}",
            if reset.is_ok() { "done" } else { "failed" }
        ),
    );
    drop(map);

    device.wait_idle(Duration::from_secs(5));
    let stats = device.stats();
    Ok(DemoResult {
        policy: device.policy().to_string(),
        uffd_access: device.uffd_access(),
        threads,
        errors,
        sigbus: answered,
        sigbus_seen: bus,
        child_killed_by_sigbus: child == Some(libc::SIGBUS),
        steps,
        stats,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Runs `barmap sigbus-child` and returns the signal that killed it.
fn sigbus_in_child() -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new(exe)
        .arg("sigbus-child")
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.signal()
}

/// The child: its own device, memory off, a plain touch. Dies by SIGBUS.
pub fn sigbus_child() -> i32 {
    let Ok(device) = Device::builder_with_memory(1 << 20).build() else {
        return 3;
    };
    let Ok(map) = device.map(DEFAULT_MEMORY_BAR, 0, 4096, Prot::ReadWrite) else {
        return 3;
    };
    map.write_u64(0, 1);
    device.set_memory_enabled(false);
    let v = map.read_u64(0); // SIGBUS here
    println!("read {v:#x} from disabled memory");
    0
}

fn print_human(r: &DemoResult) {
    println!(
        "barmap demo: the vfio-pci BAR fault path on userfaultfd (policy {}, userfaultfd {})",
        r.policy,
        match r.uffd_access {
            barmap::UffdAccess::Syscall => "from the syscall, all faults",
            barmap::UffdAccess::DevNode => "from /dev/userfaultfd, all faults",
            barmap::UffdAccess::UserModeOnly =>
                "user-mode faults only: mappings kept populated while memory is on",
        }
    );
    for (i, s) in r.steps.iter().enumerate() {
        println!(
            "  {i}. [{}] {}: {}",
            if s.ok { " ok " } else { "FAIL" },
            s.step,
            s.detail
        );
    }
    let s = &r.stats;
    println!(
        "  counters: faults {} | fills {} | pages filled {} | EEXIST races {} | SIGBUS answers {} | zaps {} ({} pages) | BUGs {}",
        s.faults, s.fills, s.pages_filled, s.eexist, s.sigbus, s.zaps, s.pages_zapped, s.bugs
    );
    println!("  errors: {} ({:.0} ms)", r.errors, r.elapsed_ms);
}
