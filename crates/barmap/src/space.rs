//! Address spaces: one userfaultfd and one pool of fault service threads per
//! process, shared by every device whose mappings live in it.
//!
//! The kernel serves any number of vfio-pci devices with no thread at all;
//! barmap serves all the devices of a process with one userfaultfd and at
//! most one service thread per core. A new device costs its memfds and
//! nothing more. The pieces:
//!
//! - [`AddressSpace`]: the handle devices and mappings hold. The process's
//!   shared space exists while some device or mapping uses it; its service
//!   threads stop when the last one goes.
//! - `SpaceShared`: what the service threads and each device's backend
//!   ([`crate::uffd::UffdMm`]) share: the userfaultfd, the event reader, and
//!   the *routes*, a map from the address ranges of live mappings to the
//!   device that owns them. Each device's core keeps the routes equal to its
//!   registry ([`crate::mm::Mm::track`], called with the registry
//!   write-locked), so a fault goes to the one device that tracks its
//!   address, and a disable of one device touches only its own mappings.
//!
//! Lock order: a core's registry → `routes` → `devices` (leaves). The
//! service takes `routes` and `devices` only briefly and never holds them
//! while a core serves a fault.
//!
//! A forked child is another address space: barmap objects it inherited
//! belong to the parent ([`crate::Error::ForeignProcess`]), and the first
//! device the child builds opens a new space of its own, never touching the
//! parent's (whose locks fork may have copied held).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, Weak};

use crate::error::Result;
use crate::fault::Core;
use crate::mm::{page_of, Fault, SpaceId, HUGE_SIZE, PAGE_SIZE};
use crate::service::{Service, WaitMode};
use crate::uffd::{Event, Uffd, UffdAccess, UffdMm};

/// Where a route leads: the device's key and its core.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    end: usize,
    key: u64,
    core: Weak<Core<UffdMm>>,
}

/// Address ranges of live mappings, by start.
#[derive(Debug, Default)]
pub(crate) struct Routes(BTreeMap<usize, Route>);

impl Routes {
    /// The route whose range contains `addr`.
    fn route_of(&self, addr: usize) -> Option<&Route> {
        let (_, route) = self.0.range(..=addr).next_back()?;
        (addr < route.end).then_some(route)
    }

    /// The device whose live mapping contains `addr`.
    pub(crate) fn owner_of(&self, addr: usize) -> Option<u64> {
        self.route_of(addr).map(|r| r.key)
    }

    /// Cores with a live mapping intersecting `range`, once each.
    fn cores_in(&self, range: &Range<usize>) -> Vec<Arc<Core<UffdMm>>> {
        let mut keys = Vec::new();
        let mut out = Vec::new();
        // A route starting before `range` may reach into it.
        let first = self
            .0
            .range(..range.start)
            .next_back()
            .filter(|(_, r)| r.end > range.start);
        for (_, route) in first.into_iter().chain(self.0.range(range.clone())) {
            if !keys.contains(&route.key) {
                keys.push(route.key);
                out.extend(route.core.upgrade());
            }
        }
        out
    }
}

/// Counters of faults that no device's mapping covers (the part of a
/// mapping the process grew with mremap, or a fault whose range is gone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpaceStats {
    /// Devices served by this address space now.
    pub devices: usize,
    /// Fault service threads.
    pub service_threads: usize,
    /// Faults outside every mapping answered with SIGBUS.
    pub stray_sigbus: u64,
    /// Faults outside every mapping woken to retry.
    pub stray_woken: u64,
}

/// What the service threads and the devices' backends share.
#[derive(Debug)]
pub(crate) struct SpaceShared {
    id: SpaceId,
    uffd: Uffd,
    /// Service threads between reading events and handing the process's
    /// unmap/remap events to the cores (see [`crate::mm::Mm::quiesce`]).
    events_in_hand: AtomicUsize,
    /// One reader at a time, from the read to the hand-over: events reach
    /// the cores in the order the kernel queued them (an mremap's REMAP
    /// before the UNMAP of the range it vacated).
    reader: Mutex<()>,
    routes: RwLock<Routes>,
    devices: Mutex<HashMap<u64, Weak<Core<UffdMm>>>>,
    next_key: AtomicU64,
    stray_sigbus: AtomicU64,
    stray_woken: AtomicU64,
}

impl SpaceShared {
    /// The userfaultfd.
    pub(crate) fn uffd(&self) -> &Uffd {
        &self.uffd
    }

    pub(crate) fn new_device_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn routes_read(&self) -> RwLockReadGuard<'_, Routes> {
        self.routes.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `core` reachable for the faults routed to its key; before
    /// its first mapping is tracked.
    pub(crate) fn attach(&self, core: &Arc<Core<UffdMm>>) {
        let key = core.mm().key();
        core.mm().set_core(Arc::downgrade(core));
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::downgrade(core));
    }

    /// The device `key` is gone: drop it and whatever routes it left.
    pub(crate) fn detach(&self, key: u64) {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .retain(|_, r| r.key != key);
    }

    /// A device's registry changed (see [`crate::mm::Mm::track`]).
    pub(crate) fn track(
        &self,
        key: u64,
        core: &Weak<Core<UffdMm>>,
        removed: Option<usize>,
        added: &[Range<usize>],
    ) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(start) = removed {
            if routes.0.get(&start).is_some_and(|r| r.key == key) {
                routes.0.remove(&start);
            }
        }
        for r in added {
            let route = Route {
                end: r.end,
                key,
                core: core.clone(),
            };
            routes.0.insert(r.start, route);
        }
    }

    fn cores_in(&self, range: &Range<usize>) -> Vec<Arc<Core<UffdMm>>> {
        self.routes_read().cores_in(range)
    }

    fn core_at(&self, addr: usize) -> Option<Arc<Core<UffdMm>>> {
        self.routes_read().route_of(addr)?.core.upgrade()
    }

    /// Returns once every unmap or remap event already read has been handed
    /// to the cores.
    pub(crate) fn quiesce(&self) {
        let mut spins = 0u32;
        while self.events_in_hand.load(Ordering::SeqCst) > 0 {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Returns once every unmap or remap that the process started before
    /// this call has reached the cores: first until the kernel has no such
    /// event unread ([`Uffd::events_pending`]), then until the readers have
    /// handed over what they read ([`SpaceShared::quiesce`]). Never called
    /// on a service thread, which would wait for itself.
    ///
    /// A munmap's event is queued only after the kernel has dropped the
    /// range and released mmap_lock, so another thread's mmap can get the
    /// same addresses first: a mapping tracked there before that event
    /// lands would be cut by it (see [`crate::mm::Mm::settle`]).
    pub(crate) fn settle(&self) {
        let mut spins = 0u32;
        while self.uffd.events_pending() {
            spins += 1;
            if spins < 16 {
                std::hint::spin_loop();
            } else if spins < 256 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
        self.quiesce();
    }

    /// Runs `f` while no reader reads or holds events (see
    /// [`crate::mm::Mm::with_events_held`]): readers take `reader` before
    /// they read and keep it until the cores have the events.
    pub(crate) fn with_events_held(&self, f: &mut dyn FnMut()) {
        let _reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert_eq!(self.events_in_hand.load(Ordering::SeqCst), 0);
        f()
    }

    /// Reads pending events, counting the reader as holding events until
    /// `handled` returns (it hands unmap/remap events to the cores). Readers
    /// take turns, so the cores see events in the kernel's order.
    pub(crate) fn read_events_then<R>(
        &self,
        out: &mut Vec<Event>,
        handled: impl FnOnce(&mut Vec<Event>) -> R,
    ) -> std::result::Result<(usize, R), i32> {
        let _reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        self.events_in_hand.fetch_add(1, Ordering::SeqCst);
        let result = self.uffd.read_events(self.id, out);
        let r = result.map(|n| (n, handled(out)));
        self.events_in_hand.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// The process unmapped `range`: every device with a mapping there
    /// forgets it.
    pub(crate) fn forget(&self, range: Range<usize>) {
        for core in self.cores_in(&range) {
            core.forget(self.id, range.clone());
        }
    }

    /// The process moved `len` bytes at `from` to `to`.
    pub(crate) fn moved(&self, from: usize, to: usize, len: usize) {
        for core in self.cores_in(&(from..from + len)) {
            core.moved(self.id, from, to, len);
        }
    }

    /// Serves one fault: by the device that tracks its address, or, if none
    /// does, as a stray (SIGBUS for a registered range that is no device's,
    /// a wake-up to retry otherwise).
    pub(crate) fn dispatch(&self, fault: &Fault) {
        let page = page_of(fault.addr);
        if let Some(core) = self.core_at(page) {
            core.handle_fault(fault);
            return;
        }
        // An unmap or mremap the process already saw may still be on its
        // way: let it land, then look again, with the routes read-locked
        // until the fault is answered, so that no device can start tracking
        // (and then register) this address meanwhile.
        self.quiesce();
        let routes = self.routes_read();
        if let Some(route) = routes.route_of(page) {
            let core = route.core.upgrade();
            drop(routes);
            match core {
                Some(core) => {
                    core.handle_fault(fault);
                }
                None => self.wake_stray(page),
            }
            return;
        }
        for unit in [PAGE_SIZE, HUGE_SIZE] {
            let start = page & !(unit - 1);
            match self.uffd.poison_range(start..start + unit) {
                Ok(()) => {
                    self.stray_sigbus.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // A hugetlb vma takes only whole huge pages.
                Err((libc::EINVAL, _)) => continue,
                Err(_) => break,
            }
        }
        drop(routes);
        self.wake_stray(page);
    }

    fn wake_stray(&self, page: usize) {
        self.stray_woken.fetch_add(1, Ordering::Relaxed);
        self.uffd.wake(page..page + PAGE_SIZE);
    }
}

/// One address space as barmap serves it: a userfaultfd, its fault service
/// threads, and the devices whose mappings live there.
///
/// Devices of a process share one space ([`AddressSpace::shared`]) unless
/// built with their own service ([`crate::DeviceBuilder::service_threads`]
/// or [`crate::DeviceBuilder::wait_mode`]).
#[derive(Debug)]
pub struct AddressSpace {
    shared: Arc<SpaceShared>,
    service: Mutex<Service>,
    threads: usize,
    owner: u32,
}

/// One shared space per userfaultfd kind (full, user-mode-only), per
/// process. A slot is never freed once published: a forked child replaces
/// its parent's slot (whose lock may have been copied held) by a new one.
struct Slot {
    pid: u32,
    space: Mutex<Weak<AddressSpace>>,
}

static SLOTS: [AtomicPtr<Slot>; 2] = [
    AtomicPtr::new(std::ptr::null_mut()),
    AtomicPtr::new(std::ptr::null_mut()),
];

fn slot(index: usize) -> &'static Slot {
    let pid = std::process::id();
    loop {
        let current = SLOTS[index].load(Ordering::Acquire);
        // SAFETY: a published slot is never freed (see `Slot`).
        if let Some(slot) = unsafe { current.as_ref() } {
            if slot.pid == pid {
                return slot;
            }
        }
        let fresh = Box::into_raw(Box::new(Slot {
            pid,
            space: Mutex::new(Weak::new()),
        }));
        match SLOTS[index].compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: just published, and never freed from here on.
            Ok(_) => return unsafe { &*fresh },
            // SAFETY: `fresh` was never published; this thread owns it.
            Err(_) => drop(unsafe { Box::from_raw(fresh) }),
        }
    }
}

/// Fault service threads of a shared space: one per core.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl AddressSpace {
    /// This process's shared space (with a userfaultfd that sees only
    /// user-mode faults if `user_mode_only`), opened on first use.
    pub fn shared(user_mode_only: bool) -> Result<Arc<AddressSpace>> {
        let slot = slot(usize::from(user_mode_only));
        let mut held = slot.space.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(space) = held.upgrade() {
            return Ok(space);
        }
        let space = Arc::new(Self::open(
            user_mode_only,
            default_threads(),
            WaitMode::Poll,
        )?);
        *held = Arc::downgrade(&space);
        Ok(space)
    }

    /// A space of its own, with `threads` service threads waiting in `mode`
    /// (benchmarks, and devices that must not share a service).
    pub fn private(user_mode_only: bool, threads: usize, mode: WaitMode) -> Result<AddressSpace> {
        Self::open(user_mode_only, threads, mode)
    }

    fn open(user_mode_only: bool, threads: usize, mode: WaitMode) -> Result<AddressSpace> {
        let uffd = if user_mode_only {
            Uffd::open_user_mode_only()?
        } else {
            Uffd::open()?
        };
        let pid = std::process::id();
        let shared = Arc::new(SpaceShared {
            id: SpaceId(pid),
            uffd,
            events_in_hand: AtomicUsize::new(0),
            reader: Mutex::new(()),
            routes: RwLock::new(Routes::default()),
            devices: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            stray_sigbus: AtomicU64::new(0),
            stray_woken: AtomicU64::new(0),
        });
        let threads = threads.max(1);
        let service = Service::start(shared.clone(), threads, mode)?;
        Ok(AddressSpace {
            shared,
            service: Mutex::new(service),
            threads,
            owner: pid,
        })
    }

    pub(crate) fn shared_state(&self) -> &Arc<SpaceShared> {
        &self.shared
    }

    /// The address space's identity (the process id of its owner).
    pub fn id(&self) -> SpaceId {
        self.shared.id
    }

    /// How its userfaultfd was obtained (what works unprivileged).
    pub fn access(&self) -> UffdAccess {
        self.shared.uffd.access()
    }

    /// Whether its userfaultfd serves BARs backed by huge pages.
    pub fn minor_hugetlbfs(&self) -> bool {
        self.shared.uffd.minor_hugetlbfs()
    }

    /// Devices, service threads and stray faults, now.
    pub fn stats(&self) -> SpaceStats {
        SpaceStats {
            devices: self
                .shared
                .devices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
            service_threads: self.threads,
            stray_sigbus: self.shared.stray_sigbus.load(Ordering::Relaxed),
            stray_woken: self.shared.stray_woken.load(Ordering::Relaxed),
        }
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        let service = self.service.get_mut().unwrap_or_else(|e| e.into_inner());
        if std::process::id() != self.owner {
            // A forked child's copy: the threads and the eventfd's other
            // end are the parent's.
            service.forget();
        } else {
            service.stop();
        }
    }
}
