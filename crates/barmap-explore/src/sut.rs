//! The system under test: executes a [`Plan`] on a real barmap device and
//! the process's real address space, and returns what it observed.
//!
//! Every wait is bounded: touching threads report within the operation
//! timeout or the operation observes [`Obs::Broken`]; a forked child that
//! does not report in time is killed and reported the same way.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::time::{Duration, Instant};

use barmap::touch::{self, Fault};
use barmap::{Device, Error, Mapping, Placement, Policy, PowerState, Prot};

use crate::model::{marker, PAGE};
use crate::obs::{Obs, TouchObs, Val};
use crate::op::{ProtOp, Toggle};
use crate::plan::{ChildPlan, ChurnRound, ChurnUnmap, Plan, ThreadMode, T1};

/// How the device under test is built and how long a step may take.
#[derive(Debug, Clone, Copy)]
pub struct SutConfig {
    /// Fault policy.
    pub policy: Policy,
    /// Size of the memory BAR.
    pub memory: u64,
    /// Fault service threads.
    pub service_threads: usize,
    /// How long a reset holds the gate.
    pub reset_time: Duration,
    /// The bound on every wait (threads, a forked child).
    pub timeout: Duration,
    /// Exercises known barmap issues instead of leaving them out (see the
    /// model's `known_issues`).
    pub known_issues: bool,
}

/// The variant name of a barmap error, with the errno where it has one.
pub fn err_name(e: &Error) -> String {
    match e {
        Error::NoSuchRegion(_) => "NoSuchRegion".into(),
        Error::NotMappable(_) => "NotMappable".into(),
        Error::Unaligned { .. } => "Unaligned".into(),
        Error::ZeroLength => "ZeroLength".into(),
        Error::OutOfRange { .. } => "OutOfRange".into(),
        Error::SparseArea { .. } => "SparseArea".into(),
        Error::ReadOnly(_) => "ReadOnly".into(),
        Error::NotReadable(_) => "NotReadable".into(),
        Error::MemoryDisabled => "MemoryDisabled".into(),
        Error::NotMapped { .. } => "NotMapped".into(),
        Error::DeviceGone => "DeviceGone".into(),
        Error::Fault { errno, .. } => format!("Fault({errno})"),
        Error::ConfigRange { .. } => "ConfigRange".into(),
        Error::HugePageSize { .. } => "HugePageSize".into(),
        Error::HugePagesUnavailable { .. } => "HugePagesUnavailable".into(),
        Error::HugePagesUnsupported(_) => "HugePagesUnsupported".into(),
        Error::BarSizeNotPowerOfTwo { .. } => "BarSizeNotPowerOfTwo".into(),
        Error::BarTooLarge { .. } => "BarTooLarge".into(),
        Error::MemoryLimit { .. } => "MemoryLimit".into(),
        Error::InvalidSpec(_) => "InvalidSpec".into(),
        Error::UffdUnavailable(_) => "UffdUnavailable".into(),
        Error::BadBuffer { errno, .. } => format!("BadBuffer({errno})"),
        Error::ForeignProcess { .. } => "ForeignProcess".into(),
        Error::Os { op, errno } => format!("Os({op},{errno})"),
    }
}

fn api<T>(r: barmap::Result<T>, f: impl FnOnce(T) -> Val) -> Obs {
    Obs::Api(r.map(f).map_err(|e| err_name(&e)))
}

fn unit(r: barmap::Result<()>) -> Obs {
    api(r, |()| Val::Unit)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn sys(rc: libc::c_int) -> Obs {
    Obs::Sys(if rc == 0 { Ok(()) } else { Err(errno()) })
}

fn touch_obs(r: Result<u64, Fault>, write: bool) -> TouchObs {
    match r {
        Ok(_) if write => TouchObs::Wrote,
        Ok(v) => TouchObs::Value(v),
        Err(Fault::Sigbus) => TouchObs::Sigbus,
        Err(Fault::Sigsegv) => TouchObs::Sigsegv,
    }
}

/// Touches the word at `addr` through the fault-tolerant accessors.
fn raw_touch(addr: usize, write: Option<u64>) -> TouchObs {
    // SAFETY: the accessors turn a SIGBUS or SIGSEGV at their one
    // instruction into an error; the explorer only touches addresses of
    // its own mappings and of its own foreign memory, 8-byte aligned.
    let r = unsafe {
        match write {
            Some(v) => touch::write_u64(addr as *mut u64, v).map(|()| 0),
            None => touch::read_u64(addr as *const u64),
        }
    };
    touch_obs(r, write.is_some())
}

/// Writes `value` at `addr` through the fault-tolerant accessor.
fn raw_touch_result(addr: usize, value: u64) -> Result<(), Fault> {
    // SAFETY: as in `raw_touch`.
    unsafe { touch::write_u64(addr as *mut u64, value) }
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// Installs a SIGUSR1 handler without SA_RESTART (as timers and profilers
/// do), once.
fn install_sigusr1() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        }
    });
}

/// SIGUSR1 to every thread of the process, and one process-directed.
fn signal_every_thread() {
    install_sigusr1();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    for tid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok()) {
        // SAFETY: signals a thread of this process with a no-op handler.
        unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) };
    }
    // SAFETY: as above, delivered to any thread.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
}

fn prot_bits(p: ProtOp) -> i32 {
    match p {
        ProtOp::None => libc::PROT_NONE,
        ProtOp::Read => libc::PROT_READ,
        ProtOp::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
    }
}

/// How [`Sut::foreign`] may place its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Over view pages that are still mapped (a program's MAP_FIXED over
    /// its own mapping).
    Over,
    /// At addresses the process has just unmapped.
    Freed,
}

/// The line of `/proc/self/maps` that covers `addr`, or "unmapped".
fn maps_at(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .find(|l| {
            let range = l.split(' ').next().unwrap_or("");
            let mut ends = range
                .split('-')
                .map(|h| usize::from_str_radix(h, 16).unwrap_or(0));
            let (s, e) = (ends.next().unwrap_or(0), ends.next().unwrap_or(0));
            (s..e).contains(&addr)
        })
        .map_or_else(|| "unmapped".to_string(), str::to_string)
}

/// Where the explorer places its views and mremap targets: far below the
/// area where the kernel places mappings of its own choosing (top-down,
/// under the stack), so that a hole the process freed in a view is never
/// taken meanwhile by a mapping of some other thread (a new thread's stack
/// or signal stack, a malloc arena). Freed holes then stay free for the
/// foreign memory the explorer places there, and a run of a given seed
/// runs the same operations every time.
const ARENA: Range<usize> = 0x1000_0000_0000..0x3000_0000_0000;

/// The next address [`reserve`] tries (shared by every `Sut` of the
/// process, so no two ever hand out the same range).
static ARENA_NEXT: AtomicUsize = AtomicUsize::new(ARENA.start);

/// Anonymous PROT_NONE reservation of `len` bytes in the [`ARENA`], 2 MiB
/// aligned and at least 2 MiB away from any other: a view is mapped over
/// one (as DPDK maps BARs over its own reservation), and so is an mremap
/// target. Replaces nothing (`MAP_FIXED_NOREPLACE`).
fn reserve(len: usize) -> Option<usize> {
    const ALIGN: usize = 2 << 20;
    let stride = len.next_multiple_of(ALIGN) + ALIGN;
    for _ in 0..64 {
        let mut at = ARENA_NEXT.fetch_add(stride, Ordering::Relaxed);
        if at + stride > ARENA.end {
            // Wrapped: start over; NOREPLACE skips what is still mapped.
            ARENA_NEXT.store(ARENA.start + stride, Ordering::Relaxed);
            at = ARENA.start;
        }
        // SAFETY: a fresh anonymous mapping at an address that holds
        // nothing (MAP_FIXED_NOREPLACE fails with EEXIST otherwise).
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return Some(p as usize);
        }
        if errno() != libc::EEXIST {
            return None;
        }
    }
    None
}

fn munmap(r: &Range<usize>) {
    // SAFETY: unmaps memory the explorer itself mapped (foreign memory, a
    // grown part, a reservation).
    unsafe { libc::munmap(r.start as *mut libc::c_void, r.end - r.start) };
}

/// One round of a [`Plan::MapChurn`] thread: map the window anywhere,
/// write and read back `r.word` in every page, unmap as `r.unmap` says.
fn churn_round(dev: &Device, offset: u64, pages: usize, r: &ChurnRound) -> Vec<Obs> {
    let len = pages * PAGE;
    let m = match dev.map(2, offset, len, Prot::ReadWrite) {
        Ok(m) => m,
        Err(e) => return vec![Obs::Api(Err(err_name(&e)))],
    };
    let base = m.addr();
    let mut out = vec![Obs::Api(Ok(Val::Unit))];
    for (p, v) in r.values.iter().enumerate() {
        let at = base + p * PAGE + r.word * 8;
        out.push(Obs::Touch(raw_touch(at, Some(*v))));
        out.push(Obs::Touch(raw_touch(at, None)));
    }
    let unmap = |r: Range<usize>| {
        // SAFETY: unmaps this thread's own view (or part of it), as a
        // program may; nothing touches it afterwards.
        sys(unsafe { libc::munmap(r.start as *mut libc::c_void, r.end - r.start) })
    };
    match r.unmap {
        ChurnUnmap::MunmapHalves if pages > 1 => {
            out.push(unmap(base..base + PAGE));
            out.push(unmap(base + PAGE..base + len));
        }
        ChurnUnmap::Munmap | ChurnUnmap::MunmapHalves => out.push(unmap(base..base + len)),
        ChurnUnmap::Drop => {}
    }
    drop(m);
    out
}

/// One `Mapping` and what the explorer knows of its view.
struct SutMap {
    mapping: Option<Mapping>,
    /// Where the view starts now (moves included).
    base: usize,
    /// Foreign memory the explorer mapped into holes.
    foreign: Vec<Range<usize>>,
    /// The part an mremap grew (the process's to unmap).
    grown: Option<Range<usize>>,
    /// The process cut part of it (munmap, MAP_FIXED over, shrink).
    cut_by_process: bool,
}

/// The real side: a device, its mappings, and their address space.
pub struct Sut {
    cfg: SutConfig,
    dev: Option<Arc<Device>>,
    maps: HashMap<u64, SutMap>,
}

impl Sut {
    /// Builds the device.
    pub fn new(cfg: SutConfig) -> barmap::Result<Self> {
        let dev = Self::build(&cfg)?;
        Ok(Sut {
            cfg,
            dev: Some(Arc::new(dev)),
            maps: HashMap::new(),
        })
    }

    fn build(cfg: &SutConfig) -> barmap::Result<Device> {
        Device::builder_with_memory(cfg.memory)
            .policy(cfg.policy)
            .service_threads(cfg.service_threads)
            .reset_time(cfg.reset_time)
            .build()
    }

    /// What the device's counters say went wrong that no observation
    /// shows: a BUG event (a whole-mapping fill over a present page) or a
    /// zap that failed, under a policy that must have neither.
    pub fn breach(&self) -> Option<String> {
        let d = self.dev.as_ref()?;
        if self.cfg.policy == Policy::Legacy {
            return None;
        }
        let s = d.stats();
        (s.bugs > 0 || s.zap_failures > 0).then(|| {
            format!(
                "the device counted {} BUG events and {} failed zaps",
                s.bugs, s.zap_failures
            )
        })
    }

    fn dev(&self) -> &Arc<Device> {
        self.dev.as_ref().expect("planned with a device")
    }

    fn map(&self, uid: u64) -> &SutMap {
        self.maps.get(&uid).expect("planned uid")
    }

    fn mapping(&self, uid: u64) -> &Mapping {
        self.map(uid).mapping.as_ref().expect("live mapping")
    }

    fn addr(&self, uid: u64, page: usize, word: usize) -> usize {
        self.map(uid).base + page * PAGE + word * 8
    }

    /// Maps foreign anonymous memory at view pages `first..first + n` and
    /// writes its markers. Over `Place::Freed` addresses (which the process
    /// has just unmapped) it never replaces anything: another thread may
    /// have been given them meanwhile (glibc and std map thread stacks and
    /// signal stacks at any moment), and then the episode is lost, not
    /// failed.
    fn foreign(&mut self, uid: u64, first: usize, n: usize, place: Place) -> Obs {
        let start = self.map(uid).base + first * PAGE;
        let fixed = match place {
            Place::Over => libc::MAP_FIXED,
            Place::Freed => libc::MAP_FIXED_NOREPLACE,
        };
        // SAFETY: at addresses of this mapping's view: MAP_FIXED only over
        // pages the explorer deliberately maps over (its own), else
        // MAP_FIXED_NOREPLACE, which replaces nothing.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                n * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | fixed,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = errno();
            if place == Place::Freed && e == libc::EEXIST {
                return Obs::Lost(format!(
                    "view pages {first}..{} at {start:#x}, freed by the process, were taken \
                     by another mapping before foreign memory could be placed there: {}",
                    first + n,
                    maps_at(start)
                ));
            }
            return Obs::Sys(Err(e));
        }
        for i in 0..n {
            for w in 0..8 {
                let a = start + i * PAGE + w * 8;
                // Through the fault-tolerant accessor: fresh anonymous memory
                // can only fault if something else (barmap) unmapped or
                // protected it meanwhile, which is a failure to report.
                if let Err(f) = raw_touch_result(a, marker(uid, first + i, w)) {
                    return Obs::Broken(format!(
                        "fresh foreign memory at {a:#x} (view page {}) took {f:?} while \
                         being filled: something unmapped or protected it; now: {}",
                        first + i,
                        maps_at(a)
                    ));
                }
            }
        }
        self.maps
            .get_mut(&uid)
            .expect("planned uid")
            .foreign
            .push(start..start + n * PAGE);
        Obs::Sys(Ok(()))
    }

    fn release(&self, m: SutMap) {
        drop(m.mapping);
        for r in m.foreign.iter().chain(m.grown.iter()) {
            munmap(r);
        }
    }

    fn release_all(&mut self) {
        let maps: Vec<SutMap> = self.maps.drain().map(|(_, m)| m).collect();
        for m in maps {
            self.release(m);
        }
    }

    fn mark_cut(&mut self, uid: u64) {
        self.maps.get_mut(&uid).expect("planned uid").cut_by_process = true;
    }

    fn remap(&mut self, uid: u64, new_len: usize) -> Obs {
        let m = self.map(uid);
        // Only whole, unsplit views are remapped: the view is `len()` long.
        let old_len = m.mapping.as_ref().expect("live mapping").len();
        // The target never overlaps the mapping's original range (which a
        // first move freed): barmap's `addr()`-relative calls must keep
        // seeing the view gone from there, as the model says.
        let orig = m.mapping.as_ref().expect("live mapping").addr();
        let mut held = Vec::new();
        let to = loop {
            let Some(to) = reserve(new_len) else {
                let e = errno();
                held.iter().for_each(munmap);
                return Obs::Sys(Err(e));
            };
            if to + new_len <= orig || to >= orig + old_len || held.len() >= 8 {
                break to;
            }
            held.push(to..to + new_len);
        };
        held.iter().for_each(munmap);
        // SAFETY: moves this mapping's whole view onto the reservation.
        let p = unsafe {
            libc::mremap(
                m.base as *mut libc::c_void,
                old_len,
                new_len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        };
        if p == libc::MAP_FAILED {
            let e = errno();
            munmap(&(to..to + new_len));
            return Obs::Sys(Err(e));
        }
        let m = self.maps.get_mut(&uid).expect("planned uid");
        m.base = p as usize;
        if new_len > old_len {
            m.grown = Some(m.base + old_len..m.base + new_len);
        }
        Obs::Sys(Ok(()))
    }

    /// Executes `plan`; the observations come in the model's order.
    pub fn exec(&mut self, plan: &Plan) -> Vec<Obs> {
        match plan {
            Plan::Map {
                region,
                offset,
                len,
                write,
                uid,
            } => {
                let prot = if *write { Prot::ReadWrite } else { Prot::Read };
                // A length no reservation can take (zero, or past any
                // region) fails barmap's checks first: map it anywhere.
                let mapped = match reserve(*len) {
                    Some(at) => {
                        let m =
                            self.dev()
                                .map_at(*region, *offset, *len, prot, Placement::Fixed(at));
                        if m.is_err() {
                            // The reservation, or the hole a failed
                            // MAP_FIXED left.
                            munmap(&(at..at + *len));
                        }
                        m
                    }
                    None => self.dev().map(*region, *offset, *len, prot),
                };
                match mapped {
                    Ok(m) => {
                        let base = m.addr();
                        self.maps.insert(
                            *uid,
                            SutMap {
                                mapping: Some(m),
                                base,
                                foreign: Vec::new(),
                                grown: None,
                                cut_by_process: false,
                            },
                        );
                        vec![Obs::Api(Ok(Val::Unit))]
                    }
                    Err(e) => vec![Obs::Api(Err(err_name(&e)))],
                }
            }
            Plan::DropMapping { uid } => {
                if let Some(m) = self.maps.remove(uid) {
                    self.release(m);
                }
                vec![Obs::Api(Ok(Val::Unit))]
            }
            Plan::Unmap { uid, offset, len } => {
                let r = self.mapping(*uid).unmap(*offset, *len);
                if r.is_ok() {
                    let o = self.foreign(*uid, offset / PAGE, len / PAGE, Place::Freed);
                    if let Obs::Lost(_) = o {
                        return vec![o];
                    }
                    if o != Obs::Sys(Ok(())) {
                        return vec![Obs::Broken(format!("foreign memory after unmap: {o:?}"))];
                    }
                }
                vec![unit(r)]
            }
            Plan::IsMapped { uid, offset } => {
                vec![Obs::Api(Ok(Val::Bool(
                    self.mapping(*uid).is_mapped(*offset),
                )))]
            }
            Plan::Munmap { uid, page, pages } => {
                let start = self.addr(*uid, *page, 0);
                // SAFETY: unmaps part of this mapping's view, as a program
                // may; foreign memory is mapped there right after.
                let rc = unsafe { libc::munmap(start as *mut libc::c_void, pages * PAGE) };
                let o = sys(rc);
                if rc == 0 {
                    self.mark_cut(*uid);
                    let o = self.foreign(*uid, *page, *pages, Place::Freed);
                    if let Obs::Lost(_) = o {
                        return vec![o];
                    }
                    if o != Obs::Sys(Ok(())) {
                        return vec![Obs::Broken(format!("foreign memory after munmap: {o:?}"))];
                    }
                }
                vec![o]
            }
            Plan::MapFixedOver { uid, page, pages } => {
                self.mark_cut(*uid);
                vec![self.foreign(*uid, *page, *pages, Place::Over)]
            }
            Plan::MremapGrow { uid, extra } => {
                let len = self.mapping(*uid).len();
                vec![self.remap(*uid, len + extra * PAGE)]
            }
            Plan::MremapMove { uid } => {
                let len = self.mapping(*uid).len();
                vec![self.remap(*uid, len)]
            }
            Plan::MremapShrink { uid, keep } => {
                let m = self.map(*uid);
                let len = m.mapping.as_ref().expect("live mapping").len();
                // SAFETY: shrinks this mapping's view in place.
                let p = unsafe { libc::mremap(m.base as *mut libc::c_void, len, keep * PAGE, 0) };
                if p == libc::MAP_FAILED {
                    return vec![Obs::Sys(Err(errno()))];
                }
                let n = len / PAGE - keep;
                self.mark_cut(*uid);
                match self.foreign(*uid, *keep, n, Place::Freed) {
                    Obs::Sys(Ok(())) => vec![Obs::Sys(Ok(()))],
                    o @ Obs::Lost(_) => vec![o],
                    o => vec![Obs::Broken(format!("foreign mmap after shrink: {o:?}"))],
                }
            }
            Plan::Mprotect {
                uid,
                page,
                pages,
                prot,
            } => {
                let a = self.addr(*uid, *page, 0);
                // SAFETY: changes the protection of this mapping's view.
                let rc = unsafe { libc::mprotect(a as *mut _, pages * PAGE, prot_bits(*prot)) };
                vec![sys(rc)]
            }
            Plan::Madvise {
                uid,
                page,
                pages,
                advice,
            } => {
                let a = self.addr(*uid, *page, 0);
                // SAFETY: advice on this mapping's view.
                let rc = unsafe { libc::madvise(a as *mut _, pages * PAGE, advice.raw()) };
                vec![sys(rc)]
            }
            Plan::Mlock {
                uid,
                page,
                pages,
                unlock,
            } => {
                let a = self.addr(*uid, *page, 0) as *const libc::c_void;
                // SAFETY: (un)locks this mapping's view.
                let rc = unsafe {
                    if *unlock {
                        libc::munlock(a, pages * PAGE)
                    } else {
                        libc::mlock(a, pages * PAGE)
                    }
                };
                vec![sys(rc)]
            }
            Plan::Touch { uid, t, api } => {
                let out = if *api {
                    let m = self.mapping(*uid);
                    let off = t.page * PAGE + t.word * 8;
                    match t.write {
                        Some(v) => touch_obs(m.touch_write_u64(off, v).map(|()| 0), true),
                        None => touch_obs(m.touch_u64(off), false),
                    }
                } else {
                    raw_touch(self.addr(*uid, t.page, t.word), t.write)
                };
                vec![Obs::Touch(out)]
            }
            Plan::TryAccess { uid, t } => {
                let m = self.mapping(*uid);
                let off = t.page * PAGE + t.word * 8;
                vec![match t.write {
                    Some(v) => unit(m.try_write(off, &v.to_le_bytes())),
                    None => {
                        let mut b = [0u8; 8];
                        api(m.try_read(off, &mut b), |()| {
                            Val::U64(u64::from_le_bytes(b))
                        })
                    }
                }]
            }
            Plan::Threads {
                uid,
                touches,
                finals,
                mode,
            } => self.threads(*uid, touches, finals, mode),
            Plan::SetMemory { on } => {
                let d = self.dev();
                d.set_memory_enabled(*on);
                vec![Obs::Api(Ok(Val::Bool(d.memory_enabled())))]
            }
            Plan::WriteConfig { offset, data } => {
                let d = self.dev();
                let r = d.write_config(*offset, data);
                vec![unit(r), Obs::Api(Ok(Val::U64(d.command() as u64)))]
            }
            Plan::ReadCommand => {
                let d = self.dev();
                let mut id = [0u8; 4];
                let r = d.read_config(0, &mut id);
                vec![
                    Obs::Api(Ok(Val::U64(d.command() as u64))),
                    api(r, |()| Val::U64(u32::from_le_bytes(id) as u64)),
                ]
            }
            Plan::Power { d3 } => {
                let d = self.dev();
                d.set_power_state(if *d3 {
                    PowerState::D3hot
                } else {
                    PowerState::D0
                });
                vec![Obs::Api(Ok(Val::Bool(d.memory_enabled())))]
            }
            Plan::Reset => vec![unit(self.dev().reset())],
            Plan::DropDevice => {
                if let Some(breach) = self.breach() {
                    return vec![Obs::Broken(breach)];
                }
                let d = self.dev.take().expect("planned with a device");
                match Arc::try_unwrap(d) {
                    Ok(d) => {
                        drop(d);
                        vec![Obs::Api(Ok(Val::Unit))]
                    }
                    Err(_) => vec![Obs::Broken("device still shared at its drop".into())],
                }
            }
            Plan::Rebuild => {
                if let Some(breach) = self.breach() {
                    return vec![Obs::Broken(breach)];
                }
                self.release_all();
                self.dev = None;
                match Self::build(&self.cfg) {
                    Ok(d) => {
                        self.dev = Some(Arc::new(d));
                        vec![Obs::Api(Ok(Val::Unit))]
                    }
                    Err(e) => vec![Obs::Api(Err(err_name(&e)))],
                }
            }
            Plan::RegionRead {
                region,
                offset,
                len,
            } => {
                let mut buf = vec![0u8; *len];
                let r = self.dev().read_region(*region, *offset, &mut buf);
                vec![api(r, |()| {
                    Val::Words(
                        buf.chunks_exact(8)
                            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                            .collect(),
                    )
                })]
            }
            Plan::RegionWrite {
                region,
                offset,
                data,
            } => {
                let bytes: Vec<u8> = data.iter().flat_map(|w| w.to_le_bytes()).collect();
                vec![unit(self.dev().write_region(*region, *offset, &bytes))]
            }
            Plan::RegionViaMapping {
                read,
                region,
                offset,
                uid,
                page,
                word,
                words,
            } => {
                let buf = self.addr(*uid, *page, *word) as *mut u8;
                let d = self.dev();
                vec![unit(if *read {
                    d.read_region_raw(*region, *offset, buf, words * 8)
                } else {
                    d.write_region_raw(*region, *offset, buf, words * 8)
                })]
            }
            Plan::MappingCount => vec![Obs::Api(Ok(Val::U64(self.dev().mapping_count() as u64)))],
            Plan::MapChurn {
                windows,
                pages,
                rounds,
            } => self.churn(windows, *pages, rounds),
        }
    }

    fn toggle(
        &self,
        how: Toggle,
        toggles: u8,
        end_on: bool,
        command: (u16, u16),
    ) -> Option<String> {
        let d = self.dev();
        let cmd = barmap::device::pci::COMMAND;
        let set = |on: bool| -> Option<String> {
            match how {
                Toggle::Memory => d.set_memory_enabled(on),
                Toggle::Command => {
                    let v = if on { command.1 } else { command.0 };
                    if let Err(e) = d.write_config(cmd, &v.to_le_bytes()) {
                        return Some(format!("COMMAND write: {e}"));
                    }
                }
                Toggle::Power => d.set_power_state(if on {
                    PowerState::D0
                } else {
                    PowerState::D3hot
                }),
                Toggle::Reset => {
                    if let Err(e) = d.reset() {
                        return Some(format!("reset: {e}"));
                    }
                }
            }
            None
        };
        for _ in 0..toggles {
            if how == Toggle::Reset {
                if let Some(e) = set(true) {
                    return Some(e);
                }
                continue;
            }
            if let Some(e) = set(false).or_else(|| set(true)) {
                return Some(e);
            }
        }
        if !end_on && how != Toggle::Reset {
            return set(false);
        }
        None
    }

    fn threads(
        &mut self,
        uid: Option<u64>,
        touches: &[Vec<T1>],
        finals: &[T1],
        mode: &ThreadMode,
    ) -> Vec<Obs> {
        let deadline = Instant::now() + self.cfg.timeout;
        let base = uid.map(|u| self.map(u).base);
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(usize, Vec<TouchObs>, Option<TouchObs>)>();
        let n = match base {
            Some(_) => touches.len(),
            None => 0,
        };
        for (i, mine) in touches.iter().take(n).enumerate() {
            let base = base.expect("a mapping to touch");
            let mine = mine.clone();
            let fin = finals.get(i).copied();
            let (tx, flag) = (tx.clone(), done.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("explore-touch-{i}"))
                .stack_size(64 << 10)
                .spawn(move || {
                    let at = |t: &T1| base + t.page * PAGE + t.word * 8;
                    let got: Vec<TouchObs> =
                        mine.iter().map(|t| raw_touch(at(t), t.write)).collect();
                    let fin = fin.map(|t| {
                        while !flag.load(Ordering::Acquire) {
                            if Instant::now() > deadline {
                                return TouchObs::Sigsegv;
                            }
                            std::thread::yield_now();
                        }
                        raw_touch(at(&t), t.write)
                    });
                    let _ = tx.send((i, got, fin));
                });
            if let Err(e) = spawned {
                done.store(true, Ordering::Release);
                return vec![Obs::Broken(format!("spawning a touching thread: {e}"))];
            }
        }
        drop(tx);
        let mut tail = Vec::new();
        match mode {
            ThreadMode::Plain => {}
            ThreadMode::Toggle {
                how,
                toggles,
                end_on,
                command,
            } => {
                if let Some(e) = self.toggle(*how, *toggles, *end_on, *command) {
                    tail.push(Obs::Broken(e));
                }
            }
            ThreadMode::Signals { rounds } => {
                for _ in 0..*rounds {
                    signal_every_thread();
                    std::thread::yield_now();
                }
            }
            ThreadMode::Fork(child) => tail.push(self.fork(child, deadline)),
        }
        done.store(true, Ordering::Release);
        let mut results: Vec<Option<(Vec<TouchObs>, Option<TouchObs>)>> = vec![None; n];
        for _ in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, got, fin)) => results[i] = Some((got, fin)),
                Err(_) => {
                    return vec![Obs::Broken(format!(
                        "a touching thread did not finish within {:?} (a hang)",
                        self.cfg.timeout
                    ))]
                }
            }
        }
        let mut out: Vec<Obs> = Vec::new();
        let mut fins = Vec::new();
        for (got, fin) in results.into_iter().flatten() {
            out.extend(got.into_iter().map(Obs::Touch));
            fins.extend(fin.map(Obs::Touch));
        }
        out.extend(fins);
        out.extend(tail);
        out
    }

    /// [`Plan::MapChurn`]: one thread per window, released together, each
    /// looping over its rounds; the observations thread by thread.
    fn churn(&self, windows: &[u64], pages: usize, rounds: &[Vec<ChurnRound>]) -> Vec<Obs> {
        let deadline = Instant::now() + self.cfg.timeout;
        let go = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(usize, Vec<Obs>)>();
        for (i, (&offset, mine)) in windows.iter().zip(rounds).enumerate() {
            let dev = self.dev().clone();
            let mine = mine.clone();
            let (tx, flag) = (tx.clone(), go.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("explore-churn-{i}"))
                .stack_size(64 << 10)
                .spawn(move || {
                    while !flag.load(Ordering::Acquire) && Instant::now() < deadline {
                        std::hint::spin_loop();
                    }
                    let got: Vec<Obs> = mine
                        .iter()
                        .flat_map(|r| churn_round(&dev, offset, pages, r))
                        .collect();
                    // Before the report: once every thread has reported, the
                    // device is the SUT's alone again (a drop checks that).
                    drop(dev);
                    let _ = tx.send((i, got));
                });
            if let Err(e) = spawned {
                go.store(true, Ordering::Release);
                return vec![Obs::Broken(format!("spawning a mapping thread: {e}"))];
            }
        }
        drop(tx);
        go.store(true, Ordering::Release);
        let mut results: Vec<Vec<Obs>> = vec![Vec::new(); windows.len()];
        for _ in 0..windows.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, got)) => results[i] = got,
                Err(_) => {
                    return vec![Obs::Broken(format!(
                        "a mapping thread did not finish within {:?} (a hang)",
                        self.cfg.timeout
                    ))]
                }
            }
        }
        results.into_iter().flatten().collect()
    }

    /// What the child runs: its action on its copy of everything.
    fn child_run(&mut self, c: &ChildPlan) -> Obs {
        match c {
            ChildPlan::Touch {
                uid,
                page,
                word,
                write,
            } => Obs::Touch(raw_touch(self.addr(*uid, *page, *word), *write)),
            ChildPlan::Map {
                region,
                offset,
                len,
            } => match self.dev().map(*region, *offset, *len, Prot::Read) {
                Ok(m) => {
                    std::mem::forget(m);
                    Obs::Api(Ok(Val::Unit))
                }
                Err(e) => Obs::Api(Err(err_name(&e))),
            },
            ChildPlan::Reset => unit(self.dev().reset()),
            ChildPlan::WriteCommand => unit(
                self.dev()
                    .write_config(barmap::device::pci::COMMAND, &0u16.to_le_bytes()),
            ),
            ChildPlan::Unmap { uid } => unit(self.mapping(*uid).unmap(0, PAGE)),
            ChildPlan::DropAll => {
                for (_, m) in self.maps.drain() {
                    drop(m.mapping);
                }
                drop(self.dev.take());
                Obs::Api(Ok(Val::Unit))
            }
        }
    }

    fn fork(&mut self, c: &ChildPlan, deadline: Instant) -> Obs {
        let mut fds = [0i32; 2];
        // SAFETY: a new pipe; both ends are closed below.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Obs::Broken(format!("pipe: errno {}", errno()));
        }
        // SAFETY: the child only runs `child_run` on its copy of the
        // explorer's state (what barmap documents as safe in a child:
        // touches, calls that return ForeignProcess, drops) and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let obs = self.child_run(c);
            let msg = serde_json::to_vec(&obs).unwrap_or_default();
            // SAFETY: writes the report to the pipe and ends the child
            // without running the parent's destructors a second time.
            unsafe {
                libc::write(fds[1], msg.as_ptr().cast(), msg.len());
                libc::_exit(0);
            }
        }
        // SAFETY: closes the parent's write end.
        unsafe { libc::close(fds[1]) };
        if pid < 0 {
            // SAFETY: closes the read end.
            unsafe { libc::close(fds[0]) };
            return Obs::Broken(format!("fork: errno {}", errno()));
        }
        let mut msg = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: fds[0],
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls our pipe.
            let rc =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if rc == 0 {
                break;
            }
            if rc < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                break;
            }
            // SAFETY: reads into a local buffer.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                msg.extend_from_slice(&buf[..n as usize]);
            } else if n == 0 || errno() != libc::EINTR {
                break;
            }
        }
        // SAFETY: closes the read end.
        unsafe { libc::close(fds[0]) };
        let status = loop {
            let mut status = 0;
            // SAFETY: waits for our own child.
            let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if rc == pid {
                break Some(status);
            }
            if Instant::now() > deadline {
                // SAFETY: kills and reaps our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break None;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        match status {
            None => Obs::Broken(format!(
                "forked child did not finish within {:?} (a hang)",
                self.cfg.timeout
            )),
            Some(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0 => {
                match serde_json::from_slice::<serde_json::Value>(&msg) {
                    Ok(v) => Obs::Child(Box::new(obs_from_json(&v))),
                    Err(_) => Obs::Broken("forked child sent no report".into()),
                }
            }
            Some(s) => Obs::Broken(format!("forked child ended with wait status {s:#x}")),
        }
    }
}

/// Decodes a child's report (the JSON of an [`Obs`]).
fn obs_from_json(v: &serde_json::Value) -> Obs {
    use serde_json::Value;
    let bad = || Obs::Broken(format!("unreadable child report {v}"));
    let Value::Object(o) = v else { return bad() };
    if let Some(t) = o.get("Touch") {
        return Obs::Touch(match t {
            Value::String(s) if s == "Wrote" => TouchObs::Wrote,
            Value::String(s) if s == "Sigbus" => TouchObs::Sigbus,
            Value::String(s) if s == "Sigsegv" => TouchObs::Sigsegv,
            Value::Object(x) => match x.get("Value").and_then(Value::as_u64) {
                Some(n) => TouchObs::Value(n),
                None => return bad(),
            },
            _ => return bad(),
        });
    }
    if let Some(Value::Object(r)) = o.get("Api") {
        if let Some(Value::String(e)) = r.get("Err") {
            return Obs::Api(Err(e.clone()));
        }
        if r.get("Ok").is_some_and(|x| x == "Unit") {
            return Obs::Api(Ok(Val::Unit));
        }
    }
    bad()
}

impl Drop for Sut {
    fn drop(&mut self) {
        self.release_all();
    }
}
