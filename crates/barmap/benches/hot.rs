//! Micro-benchmarks of the fault path's hot pieces.
//!
//! - `lookup`: the service side of one fault without any system call: the
//!   core over a backend whose verbs do nothing ([`NullMm`]), so what is
//!   timed is the registry lookup by address, the gate's read side, the
//!   mapping's live-range check and the policy's decision. The registry
//!   lookup itself is private; `handle_fault` is the nearest public path,
//!   and a fault on an address between mappings (`stale`) is lookup + wake.
//! - `gate`: the memory gate's read side (`Core::with_memory`,
//!   `Device::memory_enabled`), alone and with another thread reading it.
//! - `uffd`: event decode through `Uffd::read_faults` (the decode loop is
//!   private): an empty read (the syscall floor), and one pending event
//!   read, decoded and answered with UFFDIO_WAKE, which makes the blocked
//!   thread fault again (a round trip without a fill).
//! - `fault`: a real fault round trip (page policy) on a device with 1 and
//!   1024 live mappings: the lookup's share of a real fault.

use std::hint::black_box;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use barmap::fault::{Core, CoreConfig};
use barmap::mm::{Fault, Inserted, MapId, MapInfo, Mm, MmError, SpaceId, PAGE_SIZE};
use barmap::uffd::{Event, Uffd};
use barmap::{Device, Policy, Prot, DEFAULT_MEMORY_BAR};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// A backend that maps nothing and always succeeds.
struct NullMm;

impl Mm for NullMm {
    fn remap(&self, _: &MapInfo, _: Range<usize>) -> Result<(), MmError> {
        Ok(())
    }
    fn insert(&self, _: &MapInfo, range: Range<usize>) -> Result<Inserted, MmError> {
        Ok(Inserted {
            mapped: (range.end - range.start) / PAGE_SIZE,
            stopped_at_present: false,
        })
    }
    fn poison(&self, _: &MapInfo, _: Range<usize>) -> Result<(), MmError> {
        Ok(())
    }
    fn zap(&self, _: &MapInfo, _: Range<usize>) -> Result<(), MmError> {
        Ok(())
    }
    fn wake(&self, _: SpaceId, _: Range<usize>) {}
    fn unmap(&self, _: &MapInfo, _: Range<usize>) -> Result<(), MmError> {
        Ok(())
    }
    fn next_resident(&self, map: &MapInfo, from: usize) -> Option<Range<usize>> {
        (from < map.end()).then(|| from.max(map.start)..map.end())
    }
}

/// Mappings of 1 MiB, 2 MiB apart from this address on.
const BASE: usize = 0x7f00_0000_0000;
const MAP_LEN: usize = 1 << 20;
const STRIDE: usize = 2 << 20;

fn core_with(policy: Policy, mappings: usize) -> Core<NullMm> {
    let core = Core::new(
        NullMm,
        CoreConfig {
            policy,
            ..CoreConfig::default()
        },
    );
    for i in 0..mappings {
        core.register(MapInfo {
            id: MapId(0),
            space: SpaceId::LOCAL,
            start: BASE + i * STRIDE,
            len: MAP_LEN,
            region: DEFAULT_MEMORY_BAR,
            offset: (i * MAP_LEN) as u64,
            writable: true,
            page_size: PAGE_SIZE,
        });
    }
    core
}

fn fault_at(addr: usize) -> Fault {
    Fault {
        space: SpaceId::LOCAL,
        addr,
        tid: 1,
        write: false,
    }
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for n in [1usize, 64, 1024, 16384] {
        let core = core_with(Policy::Page, n);
        // A spread of addresses over every mapping, hit in turn.
        let hits: Vec<usize> = (0..4096)
            .map(|i| BASE + (i * 7919 % n) * STRIDE + (i % 256) * PAGE_SIZE)
            .collect();
        let mut k = 0;
        g.bench_with_input(BenchmarkId::new("handle_fault_page", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % hits.len();
                black_box(core.handle_fault(&fault_at(hits[k])))
            })
        });
        g.bench_with_input(BenchmarkId::new("stale", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % hits.len();
                // Past the end of a mapping: the lookup finds its
                // predecessor and rejects it.
                black_box(core.handle_fault(&fault_at(hits[k] | MAP_LEN)))
            })
        });
    }
    g.finish();
}

fn gate(c: &mut Criterion) {
    let mut g = c.benchmark_group("gate");
    let core = core_with(Policy::Page, 1);
    g.bench_function("with_memory", |b| {
        b.iter(|| black_box(core.with_memory(|| 1u32)))
    });
    g.bench_function("gate_state", |b| b.iter(|| black_box(core.gate_state())));
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                black_box(core.with_memory(|| 1u32)).ok();
            }
        });
        g.bench_function("with_memory_contended", |b| {
            b.iter(|| black_box(core.with_memory(|| 1u32)))
        });
        stop.store(true, Ordering::Relaxed);
    });
    let dev = Device::builder_with_memory(2 << 20)
        .service_threads(1)
        .build()
        .unwrap();
    g.bench_function("device_memory_enabled", |b| {
        b.iter(|| black_box(dev.memory_enabled()))
    });
    g.finish();
}

fn uffd(c: &mut Criterion) {
    let mut g = c.benchmark_group("uffd");
    let uffd = Uffd::open().expect("userfaultfd");
    let fd = barmap::os::memfd("bench", 1 << 20).unwrap();
    let addr = barmap::os::map_view(&fd, 1 << 20).expect("mmap");
    uffd.register(addr..addr + (1 << 20)).unwrap();
    let mut faults = Vec::with_capacity(32);
    g.bench_function("read_faults_empty", |b| {
        b.iter(|| {
            faults.clear();
            black_box(uffd.read_events(SpaceId::LOCAL, &mut faults).unwrap())
        })
    });
    // A thread blocks on one page; each iteration reads its event, decodes
    // it and wakes the thread, which faults again.
    let page = addr;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: `page` is a live mapping of ours; the read blocks in
            // the fault until the page is mapped at the end of the bench.
            black_box(unsafe { (page as *const u64).read_volatile() });
        });
        let next_event = |faults: &mut Vec<Event>| loop {
            faults.clear();
            if uffd.read_events(SpaceId::LOCAL, faults).unwrap() > 0 {
                if let Event::Fault(f) = &faults[0] {
                    return f.addr;
                }
            }
            std::hint::spin_loop();
        };
        next_event(&mut faults);
        uffd.wake(page..page + PAGE_SIZE);
        g.bench_function("event_read_decode_wake", |b| {
            b.iter(|| {
                let a = next_event(&mut faults);
                uffd.wake(page..page + PAGE_SIZE);
                black_box(a)
            })
        });
        // Let the thread finish: map the page.
        next_event(&mut faults);
        uffd.continue_range(page..page + PAGE_SIZE).unwrap();
    });
    barmap::os::unmap(addr..addr + (1 << 20)).unwrap();
    g.finish();
}

fn fault(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault");
    const LEN: usize = 16 << 20;
    for n in [1usize, 1024] {
        let dev = Device::builder_with_memory(64 << 20)
            .policy(Policy::Page)
            .service_threads(1)
            .build()
            .unwrap();
        let _others: Vec<_> = (1..n)
            .map(|i| {
                dev.map(
                    DEFAULT_MEMORY_BAR,
                    (i % 32) as u64 * (1 << 20),
                    1 << 20,
                    Prot::ReadWrite,
                )
                .unwrap()
            })
            .collect();
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, LEN, Prot::ReadWrite)
            .unwrap();
        let mut next = 0usize;
        g.bench_with_input(
            BenchmarkId::new("page_round_trip_mappings", n),
            &n,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        if next == LEN / PAGE_SIZE {
                            // Out of fresh pages: zap them all, untimed.
                            dev.set_memory_enabled(false);
                            dev.set_memory_enabled(true);
                            next = 0;
                        }
                        let t = Instant::now();
                        black_box(m.read_u64(next * PAGE_SIZE));
                        total += t.elapsed();
                        next += 1;
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = hot;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = lookup, gate, uffd, fault
}
criterion_main!(hot);
