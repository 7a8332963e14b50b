//! The emulated PCI function: config space, BAR regions backed by memfds,
//! mmap validation, region access, and the transitions that revoke memory
//! (COMMAND.MEM, reset, low power).

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fault::{BugEvent, Core, CoreConfig};
use crate::mapping::Mapping;
use crate::memory::{MemoryBudget, Store};
use crate::mm::{MapId, MapInfo, HUGE_SIZE, PAGE_SIZE};
use crate::policy::Policy;
use crate::service::WaitMode;
use crate::space::AddressSpace;
use crate::stats::Stats;
use crate::uffd::{UffdAccess, UffdMm};
use barmap_target::Prot;

/// PCI config-space offsets and bits used here.
pub mod pci {
    /// Vendor ID (u16).
    pub const VENDOR_ID: u64 = 0x00;
    /// Device ID (u16).
    pub const DEVICE_ID: u64 = 0x02;
    /// COMMAND register (u16).
    pub const COMMAND: u64 = 0x04;
    /// COMMAND: I/O space decoding.
    pub const COMMAND_IO: u16 = 0x1;
    /// COMMAND: memory space decoding; clearing it revokes every BAR mapping.
    pub const COMMAND_MEMORY: u16 = 0x2;
    /// COMMAND: bus mastering.
    pub const COMMAND_MASTER: u16 = 0x4;
    /// First BAR register.
    pub const BAR0: u64 = 0x10;
    /// Number of BARs of a type-0 header.
    pub const NUM_BARS: usize = 6;
}

/// What a region allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RegionFlags {
    /// May be read (region read, mappings).
    pub read: bool,
    /// May be written (region write, writable mappings).
    pub write: bool,
    /// May be mmapped (within its mmap areas).
    pub mmap: bool,
}

/// How to build one BAR.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    /// Size in bytes: a power of two, at least 16 (PCI's minimum), at most
    /// 2 GiB for a 32-bit BAR and [`crate::memory::MAX_BAR64_SIZE`] for a
    /// 64-bit one (see [`crate::memory::check_bar_size`]). Memory is
    /// committed as it is used, not up front.
    pub size: u64,
    /// Permissions.
    pub flags: RegionFlags,
    /// The parts that may be mmapped (page aligned); `None` means all of it.
    pub mmap_areas: Option<Vec<Range<u64>>>,
    /// A 64-bit BAR (occupies this BAR register and the next).
    pub is_64bit: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Initial contents at offset 0, restored by reset.
    pub init: Vec<u8>,
    /// Back the BAR with 2 MiB huge pages (see [`RegionSpec::huge_pages`]).
    pub huge_pages: bool,
}

impl RegionSpec {
    /// A read-write, mmappable memory BAR of `size` bytes (64-bit if larger
    /// than 1 GiB). Nothing of it is committed until it is used: a fault
    /// commits what its fill maps, a region write what it writes.
    pub fn memory(size: u64) -> Self {
        RegionSpec {
            size,
            flags: RegionFlags {
                read: true,
                write: true,
                mmap: true,
            },
            mmap_areas: None,
            is_64bit: size > (1 << 30),
            prefetchable: true,
            init: Vec::new(),
            huge_pages: false,
        }
    }

    /// A read-write register BAR with initial contents `init`.
    pub fn registers(size: u64, init: Vec<u8>) -> Self {
        RegionSpec {
            prefetchable: false,
            init,
            ..RegionSpec::memory(size)
        }
    }

    /// Makes the BAR 64-bit.
    pub fn bits64(mut self) -> Self {
        self.is_64bit = true;
        self
    }

    /// Makes the region read-only.
    pub fn read_only(mut self) -> Self {
        self.flags.write = false;
        self
    }

    /// Forbids mmap of the whole region.
    pub fn unmappable(mut self) -> Self {
        self.flags.mmap = false;
        self
    }

    /// Backs the BAR with 2 MiB huge pages: a hugetlbfs memfd
    /// (`MFD_HUGETLB | MFD_HUGE_2MB`) whose pages the fault path maps with
    /// PMD entries, one UFFDIO_CONTINUE per 2 MiB. The BAR's size must be a
    /// multiple of 2 MiB, and [`DeviceBuilder::build`] needs that many free
    /// huge pages (`vm.nr_hugepages`); it fails with a typed error
    /// ([`Error::HugePageSize`], [`Error::HugePagesUnavailable`],
    /// [`Error::HugePagesUnsupported`]) rather than fall back to small pages.
    ///
    /// The BAR's page size is then 2 MiB: mmap offsets and lengths, sparse
    /// mmap areas and partial unmaps must be multiples of it, and every
    /// fault, revocation and SIGBUS covers a whole 2 MiB page.
    pub fn huge_pages(mut self) -> Self {
        self.huge_pages = true;
        self
    }

    /// The BAR's page size: 2 MiB with [`RegionSpec::huge_pages`], else 4 KiB.
    pub fn page_size(&self) -> usize {
        if self.huge_pages {
            HUGE_SIZE
        } else {
            PAGE_SIZE
        }
    }

    /// Restricts mmap to `areas` (the rest, an MSI-X table say, stays
    /// reachable through region read/write only).
    pub fn mmap_areas(mut self, areas: Vec<Range<u64>>) -> Self {
        self.mmap_areas = Some(areas);
        self
    }
}

/// A region as the device reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionInfo {
    /// BAR index.
    pub index: u32,
    /// Size in bytes.
    pub size: u64,
    /// Permissions.
    pub flags: RegionFlags,
    /// mmappable areas (the whole region if it has none listed).
    pub mmap_areas: Vec<Range<u64>>,
    /// The page size mappings of it use: 4 KiB, or 2 MiB for a BAR backed by
    /// huge pages. Map offsets and lengths must be multiples of it.
    pub page_size: usize,
}

struct Region {
    info: RegionInfo,
    spec: RegionSpec,
    memfd: Backing,
    /// Read-only regions: a shadow copy of the contents that mappings are
    /// made from. A userfaultfd cannot serve a view that may never become
    /// writable (UFFDIO_REGISTER needs VM_MAYWRITE), so a process can
    /// mprotect such a mapping writable; its writes then land in the shadow,
    /// never in the device's registers, and the next reset restores it.
    shadow: Option<Backing>,
    /// Huge-page BARs: the device's own read-write view of the memfd, for
    /// region access (hugetlbfs has no `pwrite`). Unmapped on drop.
    view: Option<DeviceView>,
}

/// Where a region's bytes live: `base` onwards in a memfd. The regions of a
/// device (and a read-only region's shadow) share one shmem memfd, each in
/// a range of its own with a hole after it, so a device costs one fd; a
/// huge-page BAR has a hugetlbfs memfd of its own.
struct Backing {
    fd: Arc<OwnedFd>,
    base: u64,
    /// The shmem store whose pages are committed on demand; `None` for a
    /// huge-page BAR, allocated whole from the hugetlbfs pool at build.
    store: Option<Arc<Store>>,
}

impl Backing {
    /// Commits `len` bytes at `at` of the region (whole pages).
    fn commit(&self, at: u64, len: u64) -> Result<()> {
        match &self.store {
            Some(store) => store.commit(self.base + at..self.base + at + len),
            None => Ok(()),
        }
    }
}

/// Holes between the regions in a device's memfd (and the alignment of
/// each region's start): what a mapping grown past its region meets is a
/// hole, never the next region (and is answered with SIGBUS).
const REGION_GAP: u64 = HUGE_SIZE as u64;

/// A plain MAP_SHARED view of a BAR's whole memfd, without userfaultfd.
struct DeviceView {
    addr: usize,
    len: usize,
}

impl Drop for DeviceView {
    fn drop(&mut self) {
        if let Err(e) = crate::os::unmap(self.addr..self.addr + self.len) {
            tracing::error!(errno = e, "unmapping a BAR's device view failed");
        }
    }
}

impl Region {
    /// Reads BAR bytes at `at` (bounds checked by the caller).
    fn read_at(&self, at: u64, buf: &mut [u8]) -> std::result::Result<(), i32> {
        match &self.view {
            Some(v) => {
                assert!(at as usize + buf.len() <= v.len);
                // SAFETY: the view is live while `self` is, and the range is
                // inside it (asserted).
                unsafe { crate::os::view_read(v.addr, at as usize, buf) };
                Ok(())
            }
            None => crate::os::pread_all(&self.memfd.fd, self.memfd.base + at, buf),
        }
    }

    /// Writes BAR bytes at `at` (bounds checked by the caller), committing
    /// the memory first ([`Error::MemoryLimit`] past the limit).
    fn write_at(&self, at: u64, data: &[u8]) -> Result<()> {
        match &self.view {
            Some(v) => {
                assert!(at as usize + data.len() <= v.len);
                // SAFETY: as in read_at.
                unsafe { crate::os::view_write(v.addr, at as usize, data) };
                Ok(())
            }
            None => write_backing(&self.memfd, at, data),
        }
    }
}

/// Writes `data` at `at` of a shmem backing, committing it first.
fn write_backing(b: &Backing, at: u64, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    b.commit(at, data.len() as u64)?;
    crate::os::pwrite_all(&b.fd, b.base + at, data).map_err(Error::os("BAR write"))
}

impl Region {
    /// Read-only regions: puts the shadow back to the region's contents,
    /// copying only what is committed (a hole reads as zeros in both). No
    /// mapping may hold shadow pages (the caller zapped them).
    fn restore_shadow(&self) -> Result<()> {
        let Some(shadow) = &self.shadow else {
            return Ok(());
        };
        let len = self.spec.size.next_multiple_of(PAGE_SIZE as u64);
        match &shadow.store {
            Some(store) => store.punch(shadow.base..shadow.base + len)?,
            None => return Ok(()),
        }
        let Some(store) = &self.memfd.store else {
            return Ok(());
        };
        let base = self.memfd.base;
        let mut at = base;
        let mut buf = vec![0u8; BOUNCE];
        while let Some(run) = store.next_committed(at..base + len) {
            let mut off = run.start;
            while off < run.end {
                let n = (BOUNCE as u64).min(run.end - off) as usize;
                let b = &mut buf[..n];
                crate::os::pread_all(store.fd(), off, b).map_err(Error::os("reset"))?;
                let rel = off - base;
                let rel_end = (rel + n as u64).min(self.spec.size);
                if rel < rel_end {
                    write_backing(shadow, rel, &b[..(rel_end - rel) as usize])?;
                }
                off += n as u64;
            }
            at = run.end;
        }
        Ok(())
    }
}

/// Allocates BAR `index`'s memory per `spec`: a shmem memfd, or a hugetlbfs
/// one with a device view when huge pages are asked for.
fn allocate_huge(index: u32, spec: &RegionSpec) -> Result<(OwnedFd, Option<DeviceView>)> {
    let name = format!("barmap-bar{index}");
    let needed = spec.size / HUGE_SIZE as u64;
    let Some(free) = crate::os::free_huge_pages() else {
        return Err(Error::HugePagesUnsupported(
            "the kernel has no 2 MiB huge page pool".into(),
        ));
    };
    if free < needed {
        return Err(Error::HugePagesUnavailable {
            region: index,
            needed,
            free,
        });
    }
    let memfd = crate::os::memfd_hugetlb(&name, spec.size).map_err(|errno| match errno {
        // Another allocation took the pages since the check above.
        libc::ENOSPC | libc::ENOMEM => Error::HugePagesUnavailable {
            region: index,
            needed,
            free: crate::os::free_huge_pages().unwrap_or(0),
        },
        _ => Error::os("hugetlbfs memfd for BAR memory")(errno),
    })?;
    let len = spec.size as usize;
    let addr = crate::os::map_view(&memfd, len).map_err(Error::os("device view of BAR memory"))?;
    Ok((memfd, Some(DeviceView { addr, len })))
}

/// Where [`Device::map_at`] places a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Anywhere (2 MiB aligned when the length allows it).
    #[default]
    Anywhere,
    /// Exactly at this address, replacing what the process mapped there.
    Fixed(usize),
}

/// Device power states that matter to the fault path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    /// Fully on.
    D0,
    /// Low power: memory is inaccessible, as if disabled.
    D3hot,
}

/// The interrupt capabilities of a device's config space: an MSI
/// capability and an MSI-X capability (with its table and PBA in a BAR), in
/// the standard capability list, as a driver walks it to find them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interrupts {
    /// MSI vectors (a power of two up to 32; 0: no MSI capability).
    pub msi_vectors: u16,
    /// MSI-X vectors (up to 2048; 0: no MSI-X capability).
    pub msix_vectors: u16,
    /// The BAR that holds the MSI-X table and PBA.
    pub msix_bar: u8,
    /// Offset of the MSI-X table in that BAR (8-byte aligned).
    pub msix_table: u32,
    /// Offset of the MSI-X pending-bit array in that BAR (8-byte aligned).
    pub msix_pba: u32,
}

/// Config-space offsets of the capabilities barmap lays out.
pub mod caps {
    /// The MSI capability.
    pub const MSI: usize = 0x50;
    /// The MSI-X capability.
    pub const MSIX: usize = 0x70;
}

/// Builds a [`Device`].
#[derive(Debug, Clone)]
pub struct DeviceBuilder {
    vendor: u16,
    device: u16,
    class: u32,
    revision: u8,
    interrupt_pin: u8,
    regions: Vec<Option<RegionSpec>>,
    irqs: Interrupts,
    policy: Policy,
    service_threads: Option<usize>,
    wait: Option<WaitMode>,
    reset_time: Duration,
    memory_enabled: bool,
    user_mode_only: bool,
    budget: Option<Arc<MemoryBudget>>,
}

impl Default for DeviceBuilder {
    fn default() -> Self {
        DeviceBuilder {
            vendor: 0x1234,
            device: 0xba00,
            class: 0x05_00_00, // memory controller
            revision: 0,
            interrupt_pin: 0,
            irqs: Interrupts::default(),
            regions: vec![None; pci::NUM_BARS],
            policy: Policy::default(),
            service_threads: None,
            wait: None,
            reset_time: Duration::from_millis(5),
            memory_enabled: true,
            user_mode_only: false,
            budget: None,
        }
    }
}

impl DeviceBuilder {
    /// The interrupt capabilities config space advertises (default: none).
    pub fn interrupts(mut self, irqs: Interrupts) -> Self {
        self.irqs = irqs;
        self
    }
    /// Vendor and device id.
    pub fn ids(mut self, vendor: u16, device: u16) -> Self {
        self.vendor = vendor;
        self.device = device;
        self
    }
    /// The class code (base class, sub-class, programming interface, as
    /// the 24 bits at config offset 0x09; default 0x050000, a memory
    /// controller).
    pub fn class(mut self, class: u32) -> Self {
        self.class = class & 0x00ff_ffff;
        self
    }
    /// The revision ID (config offset 0x08; default 0).
    pub fn revision(mut self, revision: u8) -> Self {
        self.revision = revision;
        self
    }
    /// The INTx pin (config offset 0x3d: 1 = INTA .. 4 = INTD; default 0,
    /// no INTx).
    pub fn interrupt_pin(mut self, pin: u8) -> Self {
        self.interrupt_pin = pin.min(4);
        self
    }
    /// Adds BAR `index`.
    pub fn region(mut self, index: u32, spec: RegionSpec) -> Self {
        if let Some(slot) = self.regions.get_mut(index as usize) {
            *slot = Some(spec);
        }
        self
    }
    /// The fault policy (default: [`Policy::Prefault`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// Gives the device a fault service of its own, with `n` threads and
    /// a userfaultfd of its own (a [`AddressSpace::private`]). By default
    /// every device of a process shares one service of one thread per core.
    pub fn service_threads(mut self, n: usize) -> Self {
        self.service_threads = Some(n.max(1));
        self
    }
    /// Gives the device a fault service of its own whose threads wait in
    /// `wait` mode (see [`DeviceBuilder::service_threads`]; default: the
    /// shared service, which polls).
    pub fn wait_mode(mut self, wait: WaitMode) -> Self {
        self.wait = Some(wait);
        self
    }
    /// How long a reset holds the memory gate (default 5 ms).
    pub fn reset_time(mut self, t: Duration) -> Self {
        self.reset_time = t;
        self
    }
    /// Whether COMMAND.MEM starts set (default true).
    pub fn memory_enabled(mut self, on: bool) -> Self {
        self.memory_enabled = on;
        self
    }
    /// Uses a userfaultfd with `UFFD_USER_MODE_ONLY`, as an unprivileged
    /// process gets it, even where a full one is available (default false:
    /// the best available). See [`UffdAccess::UserModeOnly`].
    pub fn user_mode_only(mut self, on: bool) -> Self {
        self.user_mode_only = on;
        self
    }

    /// Charges the device's memory to a budget of its own of `bytes` (see
    /// [`DeviceBuilder::memory_budget`]).
    pub fn memory_limit(self, bytes: u64) -> Self {
        self.memory_budget(MemoryBudget::new(bytes))
    }
    /// Charges the device's committed memory to `budget` (default:
    /// [`MemoryBudget::process`], half of `MemAvailable`). Memory is
    /// committed as it is used; what would pass the budget's limit is
    /// refused: [`Error::MemoryLimit`] from [`DeviceBuilder::build`] (initial
    /// contents) and region writes, SIGBUS for a fault whose fill would need
    /// it (counted in [`Stats::over_limit`]). Huge-page BARs come from the
    /// hugetlbfs pool, which is reserved memory already, and are not charged.
    pub fn memory_budget(mut self, budget: Arc<MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Validates the description, allocates every BAR's memory and joins
    /// the process's address space (opening its userfaultfd and starting
    /// its service threads if this is its first device).
    ///
    /// A BAR with [`RegionSpec::huge_pages`] fails the build with a typed
    /// error if it cannot get them; nothing falls back to small pages.
    /// Memory BARs are not committed here, only their initial contents
    /// ([`Error::MemoryLimit`] if those pass the limit); a size that is not
    /// a power of two or too large for the BAR's type is
    /// [`Error::BarSizeNotPowerOfTwo`] or [`Error::BarTooLarge`].
    pub fn build(self) -> Result<Device> {
        for (i, spec) in self.regions.iter().enumerate() {
            if let Some(spec) = spec {
                validate_spec(i, spec, &self.regions)?;
            }
        }
        raise_fd_limit();
        let space = if self.service_threads.is_some() || self.wait.is_some() {
            Arc::new(AddressSpace::private(
                self.user_mode_only,
                self.service_threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                self.wait.unwrap_or_default(),
            )?)
        } else {
            AddressSpace::shared(self.user_mode_only)?
        };
        let access = space.access();
        if self.regions.iter().flatten().any(|s| s.huge_pages) && !space.minor_hugetlbfs() {
            return Err(Error::HugePagesUnsupported(
                "the kernel's userfaultfd has no MINOR mode for hugetlbfs \
                 (UFFD_FEATURE_MINOR_HUGETLBFS, Linux 5.13 or later)"
                    .into(),
            ));
        }
        // One shmem memfd for every region that is not backed by huge
        // pages, and for read-only regions' shadows: (region, shadow?) ->
        // base, each range page-rounded and followed by a hole.
        let mut layout: Vec<(usize, bool, u64, u64)> = Vec::new();
        let mut end = 0u64;
        for (i, spec) in self.regions.iter().enumerate() {
            let Some(spec) = spec.as_ref().filter(|s| !s.huge_pages) else {
                continue;
            };
            let len = spec.size.next_multiple_of(PAGE_SIZE as u64);
            for shadow in [false, true] {
                if shadow && spec.flags.write {
                    continue;
                }
                let base = end.next_multiple_of(REGION_GAP);
                layout.push((i, shadow, base, len));
                end = base + len + REGION_GAP;
            }
        }
        let budget = self.budget.clone().unwrap_or_else(MemoryBudget::process);
        let shared = if layout.is_empty() {
            None
        } else {
            Some(Arc::new(Store::new("barmap-device", end, budget)?))
        };
        let backing = |i: usize, shadow: bool| {
            layout
                .iter()
                .find(|&&(r, s, _, _)| r == i && s == shadow)
                .map(|&(_, _, base, _)| {
                    let store = shared.clone().expect("laid out");
                    Backing {
                        fd: store.fd().clone(),
                        base,
                        store: Some(store),
                    }
                })
        };
        let mut regions = Vec::new();
        for (i, spec) in self.regions.iter().enumerate() {
            let Some(spec) = spec else {
                regions.push(None);
                continue;
            };
            let (memfd, view) = if spec.huge_pages {
                let (fd, view) = allocate_huge(i as u32, spec)?;
                (
                    Backing {
                        fd: Arc::new(fd),
                        base: 0,
                        store: None,
                    },
                    view,
                )
            } else {
                (backing(i, false).expect("laid out"), None)
            };
            let shadow = backing(i, true);
            if let Some(shadow) = &shadow {
                write_backing(shadow, 0, &spec.init)?;
            }
            let areas = spec
                .mmap_areas
                .clone()
                .unwrap_or_else(|| std::iter::once(0..spec.size).collect());
            let region = Region {
                info: RegionInfo {
                    index: i as u32,
                    size: spec.size,
                    flags: spec.flags,
                    mmap_areas: if spec.flags.mmap { areas } else { Vec::new() },
                    page_size: spec.page_size(),
                },
                spec: spec.clone(),
                memfd,
                shadow,
                view,
            };
            region.write_at(0, &spec.init)?;
            regions.push(Some(region));
        }
        let minor_hugetlbfs = space.minor_hugetlbfs();
        // What each BAR's mappings view: the shadow of a read-only BAR,
        // else the BAR's own range.
        let stores = regions
            .iter()
            .map(|r| {
                let r = r.as_ref()?;
                let b = r.shadow.as_ref().unwrap_or(&r.memfd);
                Some((b.store.clone()?, b.base))
            })
            .collect();
        let core = Arc::new(Core::new(
            UffdMm::new(space.shared_state().clone(), stores),
            CoreConfig {
                policy: self.policy,
                // A userfaultfd that sees only user-mode faults cannot serve
                // the kernel's own accesses (read(2) into a mapping, the
                // checked probe): keep mappings populated instead.
                populate: access == UffdAccess::UserModeOnly,
                ..CoreConfig::default()
            },
        ));
        space.shared_state().attach(&core);
        let config = ConfigSpace::new(&self, &regions);
        if !self.memory_enabled {
            core.set_memory_enabled(false);
        }
        Ok(Device {
            inner: Arc::new(Inner {
                core,
                space,
                store: shared,
                regions,
                command: std::sync::atomic::AtomicU16::new(config.command()),
                config: Mutex::new(config),
                access,
                minor_hugetlbfs,
                reset_time: self.reset_time,
                owner: std::process::id(),
            }),
        })
    }
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit, once: each
/// device holds a memfd (and one more per huge-page BAR), and the common
/// soft limit of 1024 would stop a program at about a thousand devices.
fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: get/setrlimit with a valid rlimit struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    });
}

fn validate_spec(i: usize, spec: &RegionSpec, all: &[Option<RegionSpec>]) -> Result<()> {
    let bad = |why: String| Err(Error::InvalidSpec(format!("BAR{i}: {why}")));
    crate::memory::check_bar_size(i as u32, spec.size, spec.is_64bit)?;
    if spec.init.len() as u64 > spec.size {
        return bad("initial contents larger than the BAR".into());
    }
    if spec.is_64bit && (i + 1 >= pci::NUM_BARS || all[i + 1].is_some()) {
        return bad("a 64-bit BAR needs the next BAR register free".into());
    }
    if i > 0 && all[i - 1].as_ref().is_some_and(|p| p.is_64bit) {
        return bad("this BAR register holds the upper half of the previous 64-bit BAR".into());
    }
    if spec.huge_pages && spec.size % HUGE_SIZE as u64 != 0 {
        return Err(Error::HugePageSize {
            region: i as u32,
            size: spec.size,
        });
    }
    let page = spec.page_size() as u64;
    for a in spec.mmap_areas.iter().flatten() {
        if a.start % page != 0 || a.end % page != 0 || a.end > spec.size || a.start >= a.end {
            return bad(format!(
                "mmap area {a:#x?} is not aligned to the BAR's page size ({page:#x}) inside it"
            ));
        }
    }
    Ok(())
}

/// The 256-byte type-0 config header.
struct ConfigSpace {
    bytes: [u8; 256],
    /// Per BAR register: the writable address bits.
    bar_masks: [u32; pci::NUM_BARS],
    /// The writable bits of the capabilities.
    writable: [u8; 256],
}

impl ConfigSpace {
    fn new(b: &DeviceBuilder, regions: &[Option<Region>]) -> Self {
        let mut bytes = [0u8; 256];
        bytes[0..2].copy_from_slice(&b.vendor.to_le_bytes());
        bytes[2..4].copy_from_slice(&b.device.to_le_bytes());
        let command = if b.memory_enabled {
            pci::COMMAND_MEMORY
        } else {
            0
        };
        bytes[4..6].copy_from_slice(&command.to_le_bytes());
        bytes[8] = b.revision;
        bytes[9..12].copy_from_slice(&b.class.to_le_bytes()[..3]);
        bytes[0x3d] = b.interrupt_pin;
        let mut bar_masks = [0u32; pci::NUM_BARS];
        let mut addr: u64 = 0xe000_0000;
        for (i, r) in regions.iter().enumerate() {
            let Some(r) = r else { continue };
            let size = r.spec.size;
            addr = (addr + size - 1) & !(size - 1);
            let mut low = (addr as u32) & !((size as u32).wrapping_sub(1)) & !0xf;
            if r.spec.is_64bit {
                low |= 0x4;
            }
            if r.spec.prefetchable {
                low |= 0x8;
            }
            bar_masks[i] = !((size as u32).wrapping_sub(1)) & !0xf;
            if size > u32::MAX as u64 {
                bar_masks[i] = 0;
            }
            let off = pci::BAR0 as usize + 4 * i;
            bytes[off..off + 4].copy_from_slice(&low.to_le_bytes());
            if r.spec.is_64bit {
                bar_masks[i + 1] = !((size - 1) >> 32) as u32;
                bytes[off + 4..off + 8].copy_from_slice(&((addr >> 32) as u32).to_le_bytes());
            }
            addr += size;
        }
        let mut writable = [0u8; 256];
        let irqs = b.irqs;
        let mut next: u8 = 0;
        if irqs.msix_vectors > 0 {
            let at = caps::MSIX;
            bytes[at] = 0x11; // MSI-X
            bytes[at + 2..at + 4].copy_from_slice(&(irqs.msix_vectors - 1).to_le_bytes());
            let table = irqs.msix_table | u32::from(irqs.msix_bar);
            let pba = irqs.msix_pba | u32::from(irqs.msix_bar);
            bytes[at + 4..at + 8].copy_from_slice(&table.to_le_bytes());
            bytes[at + 8..at + 12].copy_from_slice(&pba.to_le_bytes());
            writable[at + 3] = 0xc0; // MSI-X enable, function mask
            next = at as u8;
        }
        if irqs.msi_vectors > 0 {
            let at = caps::MSI;
            bytes[at] = 0x05; // MSI
            bytes[at + 1] = next;
            // 64-bit capable; multiple message capable: log2(vectors).
            let mmc = irqs.msi_vectors.max(1).trailing_zeros() as u16;
            bytes[at + 2..at + 4].copy_from_slice(&((1u16 << 7) | (mmc << 1)).to_le_bytes());
            writable[at + 2] = 0x71; // enable, multiple message enable
            for w in &mut writable[at + 4..at + 14] {
                *w = 0xff; // address (64-bit) and data
            }
            next = at as u8;
        }
        if next != 0 {
            bytes[0x34] = next;
            bytes[6] |= 0x10; // STATUS: capabilities list
        }
        ConfigSpace {
            bytes,
            bar_masks,
            writable,
        }
    }

    fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[4], self.bytes[5]])
    }

    /// Applies a write with each byte's writable bits; returns the new COMMAND.
    fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let at = offset + i;
            let mask: u8 = match at {
                4 => 0x47,           // IO, MEM, MASTER, PARITY
                5 => 0x05,           // SERR, INTx disable
                6 => 0,              // status: RW1C bits not modelled
                0x0c | 0x0d => 0xff, // cache line, latency timer
                0x10..=0x27 => {
                    let bar = (at - 0x10) / 4;
                    let shift = 8 * ((at - 0x10) % 4);
                    (self.bar_masks[bar] >> shift) as u8
                }
                0x3c => 0xff, // interrupt line
                _ => self.writable[at],
            };
            self.bytes[at] = (self.bytes[at] & !mask) | (v & mask);
        }
    }
}

pub(crate) struct Inner {
    pub(crate) core: Arc<Core<UffdMm>>,
    /// The address space whose service serves the device's faults; it
    /// lives as long as the device or one of its mappings.
    space: Arc<AddressSpace>,
    /// The shmem store of the device's BARs (not of huge-page ones).
    store: Option<Arc<Store>>,
    regions: Vec<Option<Region>>,
    /// Config space; taken before the gate (lock order: config -> gate).
    config: Mutex<ConfigSpace>,
    /// COMMAND as last written, readable without the config lock: a
    /// device model's worker checks bus mastering while it holds its own
    /// lock, which a reset (holding config) waits for.
    command: std::sync::atomic::AtomicU16,
    access: UffdAccess,
    minor_hugetlbfs: bool,
    reset_time: Duration,
    /// The process that built the device; a forked child is not it.
    owner: u32,
}

/// An emulated PCI function whose BARs can be mmapped, faulted in lazily,
/// and revoked.
///
/// Dropping the device revokes every mapping for good: threads blocked in a
/// fault and every later touch get SIGBUS; mappings can still be dropped.
pub struct Device {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("policy", &self.policy())
            .field("mappings", &self.mapping_count())
            .finish()
    }
}

/// The default device's ID register (BAR0 offset 0).
pub const DEFAULT_ID: u32 = 0x0ba2_0001;
/// The default device's memory BAR index.
pub const DEFAULT_MEMORY_BAR: u32 = 2;

impl Device {
    /// A builder with no BARs.
    pub fn builder() -> DeviceBuilder {
        DeviceBuilder::default()
    }

    /// The default test device's description:
    /// - BAR0: 64 KiB registers, ID register at 0 ([`DEFAULT_ID`]), an MSI-X
    ///   table at 0x8000..0x9000 that may not be mmapped;
    /// - BAR2: 256 MiB of 64-bit prefetchable memory;
    /// - BAR4: a 4 KiB read-only information page;
    /// - BAR5: 256 bytes of registers that may not be mmapped;
    /// - an MSI capability (1 vector) and an MSI-X capability (8 vectors,
    ///   table at BAR0 0x8000, PBA at 0x8800) in config space.
    pub fn default_builder() -> DeviceBuilder {
        Self::builder_with_memory(256 << 20)
    }

    /// The default device with a memory BAR of `memory` bytes.
    pub fn builder_with_memory(memory: u64) -> DeviceBuilder {
        let mut id = DEFAULT_ID.to_le_bytes().to_vec();
        id.resize(8, 0);
        DeviceBuilder::default()
            .region(
                0,
                RegionSpec::registers(64 << 10, id).mmap_areas(vec![0..0x8000, 0x9000..0x10000]),
            )
            .region(DEFAULT_MEMORY_BAR, RegionSpec::memory(memory).bits64())
            .region(
                4,
                RegionSpec::registers(4096, b"barmap info page\n".to_vec()).read_only(),
            )
            .region(5, RegionSpec::registers(256, Vec::new()).unmappable())
            .interrupts(Interrupts {
                msi_vectors: 1,
                msix_vectors: 8,
                msix_bar: 0,
                msix_table: 0x8000,
                msix_pba: 0x8800,
            })
    }

    /// Builds the default device (see [`Device::default_builder`]).
    pub fn new_default() -> Result<Device> {
        Self::default_builder().build()
    }

    /// The fault policy.
    pub fn policy(&self) -> Policy {
        self.inner.core.policy()
    }

    /// How the userfaultfd was obtained (what works unprivileged).
    pub fn uffd_access(&self) -> UffdAccess {
        self.inner.access
    }

    /// Whether the userfaultfd of this device's address space can serve BARs backed by huge pages
    /// (UFFD_FEATURE_MINOR_HUGETLBFS was granted).
    pub fn huge_pages_supported(&self) -> bool {
        self.inner.minor_hugetlbfs
    }

    /// Region `index`, if the device has it.
    pub fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.inner.region(index).ok().map(|r| r.info.clone())
    }

    /// Maps `len` bytes of region `region` at `offset` with `prot`.
    ///
    /// Validates everything first (alignment to the region's page size,
    /// bounds, mmappable area, permissions); on any error nothing is mapped
    /// or registered. Nothing is populated: pages are faulted in on first
    /// touch. On a BAR backed by huge pages, `offset` and `len` must be
    /// multiples of 2 MiB ([`Error::Unaligned`] otherwise).
    pub fn map(&self, region: u32, offset: u64, len: usize, prot: Prot) -> Result<Mapping> {
        self.map_at(region, offset, len, prot, Placement::Anywhere)
    }

    /// [`Device::map`] at a place the caller chooses: with
    /// [`Placement::Fixed`] the mapping replaces whatever the process had
    /// at that address (as `mmap(MAP_FIXED)` does; DPDK maps BARs over a
    /// `PROT_NONE` reservation of its own). The address must be aligned to
    /// the region's page size ([`Error::Unaligned`] otherwise). On any error
    /// nothing is mapped or registered, but a `Fixed` range the kernel
    /// already replaced is left unmapped, as after a failed `mmap(MAP_FIXED)`.
    pub fn map_at(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        prot: Prot,
        placement: Placement,
    ) -> Result<Mapping> {
        let r = self.inner.region(region)?;
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let page_size = r.info.page_size;
        let fixed = match placement {
            Placement::Anywhere => None,
            Placement::Fixed(at) => Some(at),
        };
        if offset % page_size as u64 != 0
            || len % page_size != 0
            || fixed.is_some_and(|at| at % page_size != 0 || at == 0)
        {
            return Err(Error::Unaligned {
                offset,
                len,
                page_size,
            });
        }
        let size = r.info.size;
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > size.next_multiple_of(PAGE_SIZE as u64))
        {
            return Err(Error::OutOfRange {
                region,
                offset,
                len,
                size,
            });
        }
        if !r.info.flags.mmap {
            return Err(Error::NotMappable(region));
        }
        if !r
            .info
            .mmap_areas
            .iter()
            .any(|a| a.start <= offset && offset + len as u64 <= a.end)
        {
            return Err(Error::SparseArea {
                region,
                offset,
                len,
            });
        }
        if prot.writable() && !r.info.flags.write {
            return Err(Error::ReadOnly(region));
        }
        if !r.info.flags.read {
            return Err(Error::NotReadable(region));
        }
        self.inner.check_owner()?;
        // A BAR smaller than a page is still mapped as one page (as the
        // kernel does); the memfd is page-sized in that case.
        // Created inaccessible, tracked, registered, and only then opened:
        // no touch can map a page before the fault path owns the range, and
        // a fault the userfaultfd reports for it always finds it tracked.
        let b = r.shadow.as_ref().unwrap_or(&r.memfd);
        let start = crate::os::map_shared_at(&b.fd, b.base + offset, len, fixed)
            .map_err(Error::os("mmap"))?;
        let entry = self.inner.core.register(MapInfo {
            id: MapId(0),
            space: self.inner.space.id(),
            start,
            len,
            region,
            offset,
            writable: prot.writable(),
            page_size,
        });
        // From here on, dropping `mapping` undoes everything.
        let mapping = Mapping::new(self.inner.clone(), entry.clone());
        let range = start..start + len;
        self.inner
            .core
            .mm()
            .uffd()
            .register(range.clone())
            .map_err(Error::os("UFFDIO_REGISTER"))?;
        // The vma flags of vfio-pci's mapping (VM_DONTEXPAND | VM_DONTDUMP,
        // and VM_PFNMAP's refusal of MADV_DONTNEED, MADV_REMOVE, MADV_COLD,
        // MADV_PAGEOUT): no core dump of BAR contents; the lock-on-fault
        // makes those madvise calls fail with EINVAL, as the kernel's do. It
        // needs RLIMIT_MEMLOCK room; without it, barmap still revokes, but
        // the process could punch holes in device memory (ARCHITECTURE.md).
        crate::os::advise(range.clone(), libc::MADV_DONTDUMP).map_err(Error::os("madvise"))?;
        // A child would inherit the view without the userfaultfd: it gets
        // none (its touches are SIGSEGV), see ARCHITECTURE.md, "fork".
        crate::os::advise(range.clone(), libc::MADV_DONTFORK).map_err(Error::os("madvise"))?;
        if !crate::os::lock_on_fault_enabled() {
            // A bench's measurement of the lock's cost (os::set_lock_on_fault).
        } else if let Err(errno) = crate::os::lock_on_fault(range.clone()) {
            tracing::debug!(errno, "mlock2(MLOCK_ONFAULT) refused; mapping not locked");
        }
        crate::os::protect(range, prot.writable()).map_err(Error::os("mprotect"))?;
        self.inner.core.populate(&entry);
        Ok(mapping)
    }

    /// Reads config space.
    pub fn read_config(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let at = config_range(offset, buf.len())?;
        buf.copy_from_slice(
            &self
                .inner
                .config
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bytes[at],
        );
        Ok(())
    }

    /// Writes config space. A write that clears COMMAND.MEM revokes every
    /// mapping before it returns; one that sets it lets touches fault pages
    /// back in.
    pub fn write_config(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.inner.check_owner()?;
        let at = config_range(offset, data.len())?;
        let mut config = self.inner.config.lock().unwrap_or_else(|e| e.into_inner());
        let before = config.command() & pci::COMMAND_MEMORY != 0;
        config.write(at.start, data);
        self.inner
            .command
            .store(config.command(), std::sync::atomic::Ordering::Release);
        let after = config.command() & pci::COMMAND_MEMORY != 0;
        if before != after {
            self.inner.core.set_memory_enabled(after);
        }
        Ok(())
    }

    /// The COMMAND register, as the last config write left it (without
    /// the config lock, which a reset holds while the model resets).
    pub fn command(&self) -> u16 {
        self.inner
            .command
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sets or clears COMMAND.MEM (a read-modify-write of COMMAND).
    pub fn set_memory_enabled(&self, enabled: bool) {
        if self.inner.check_owner().is_err() {
            return;
        }
        let cmd = self.command();
        let new = if enabled {
            cmd | pci::COMMAND_MEMORY
        } else {
            cmd & !pci::COMMAND_MEMORY
        };
        self.write_config(pci::COMMAND, &new.to_le_bytes())
            .expect("COMMAND is inside config space");
    }

    /// Whether device memory is accessible now.
    pub fn memory_enabled(&self) -> bool {
        self.inner.core.gate_state().accessible()
    }

    /// Function-level reset: revokes every mapping, holds the memory gate
    /// while the device resets (faults meanwhile wait, then succeed), and
    /// restores config space as the kernel's save/restore does. Register
    /// BARs return to their initial contents; memory BARs keep their data.
    pub fn reset(&self) -> Result<()> {
        self.reset_inner(&mut || {})
    }

    fn reset_inner(&self, hook: &mut dyn FnMut()) -> Result<()> {
        self.inner.check_owner()?;
        let config = self.inner.config.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.inner.core.reset(|| -> Result<()> {
            for r in self.inner.regions.iter().flatten() {
                r.write_at(0, &r.spec.init)?;
                // Read-only: the whole shadow back to the region's
                // contents (whatever a writable-made mapping wrote).
                r.restore_shadow()?;
            }
            hook();
            std::thread::sleep(self.inner.reset_time);
            Ok(())
        });
        drop(config);
        result
    }

    /// [`Device::reset`] that also runs `reset` while the memory gate is
    /// held for writing (after every mapping is zapped, before the gate
    /// reopens): a device model puts its registers back to their reset
    /// values there, and register accesses arriving meanwhile wait.
    pub fn reset_with(&self, reset: impl FnOnce()) -> Result<()> {
        let mut hook = Some(reset);
        self.reset_inner(&mut || {
            if let Some(f) = hook.take() {
                f();
            }
        })
    }

    /// Runs `access` with the memory gate held for reading if device
    /// memory is accessible now: what a register access of a device model
    /// does (it waits while a reset holds the gate). Fails with
    /// [`Error::MemoryDisabled`] while COMMAND.MEM is clear or in low power,
    /// [`Error::DeviceGone`] after the device was dropped. `access` must not
    /// touch a mapping of this device.
    pub fn with_memory<R>(&self, access: impl FnOnce() -> R) -> Result<R> {
        self.inner.core.with_memory(access).map_err(|state| {
            if state.gone {
                Error::DeviceGone
            } else {
                Error::MemoryDisabled
            }
        })
    }

    /// Enters or leaves a low-power state; in D3hot memory is revoked as if
    /// disabled.
    pub fn set_power_state(&self, state: PowerState) {
        if self.inner.check_owner().is_err() {
            return;
        }
        let _config = self.inner.config.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.core.set_low_power(state == PowerState::D3hot);
    }

    /// Reads region bytes through the device. Fails with
    /// [`Error::MemoryDisabled`] while memory is off. `buf` may be any
    /// memory of the process, a mapping of this device included: the copy
    /// goes through a bounce buffer outside the memory gate (the fix for the
    /// kernel's 2020 recursive-lock bug), and into `buf` through the kernel,
    /// like copy_to_user, so a buffer that cannot be written (a revoked
    /// mapping, say) gives [`Error::BadBuffer`] (EFAULT), never a signal.
    pub fn read_region(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_region_raw(region, offset, buf.as_mut_ptr(), buf.len())
    }

    /// [`Device::read_region`] into `len` bytes at `buf`, which need not be
    /// valid memory: the pwrite/pread-style entry point for buffers that
    /// come from a program (an unmapped or revoked one gives
    /// [`Error::BadBuffer`]).
    pub fn read_region_raw(
        &self,
        region: u32,
        offset: u64,
        buf: *mut u8,
        len: usize,
    ) -> Result<()> {
        let r = self.inner.region(region)?;
        region_bounds(r, region, offset, len)?;
        if !r.info.flags.read {
            return Err(Error::NotReadable(region));
        }
        let mut bounce = vec![0u8; BOUNCE.min(len)];
        for at in (0..len).step_by(BOUNCE) {
            let n = BOUNCE.min(len - at);
            let b = &mut bounce[..n];
            self.inner
                .core
                .with_memory(|| r.read_at(offset + at as u64, b))
                .map_err(|_| Error::MemoryDisabled)?
                .map_err(Error::os("region read"))?;
            let dst = buf.wrapping_add(at);
            crate::os::copy_to_user(b, dst).map_err(|errno| Error::BadBuffer {
                addr: dst as usize,
                len: n,
                errno,
            })?;
        }
        Ok(())
    }

    /// Writes region bytes through the device; see [`Device::read_region`].
    /// `data` is read through the kernel (copy_from_user) before memory is
    /// checked, so a source that is a revoked mapping gives
    /// [`Error::BadBuffer`], never a signal.
    pub fn write_region(&self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.write_region_raw(region, offset, data.as_ptr(), data.len())
    }

    /// [`Device::write_region`] from `len` bytes at `data`, which need not
    /// be valid memory; see [`Device::read_region_raw`].
    pub fn write_region_raw(
        &self,
        region: u32,
        offset: u64,
        data: *const u8,
        len: usize,
    ) -> Result<()> {
        let r = self.inner.region(region)?;
        region_bounds(r, region, offset, len)?;
        if !r.info.flags.write {
            return Err(Error::ReadOnly(region));
        }
        let mut bounce = vec![0u8; BOUNCE.min(len)];
        for at in (0..len).step_by(BOUNCE) {
            let n = BOUNCE.min(len - at);
            let b = &mut bounce[..n];
            let src = data.wrapping_add(at);
            crate::os::copy_from_user(src, b).map_err(|errno| Error::BadBuffer {
                addr: src as usize,
                len: n,
                errno,
            })?;
            self.inner
                .core
                .with_memory(|| r.write_at(offset + at as u64, b))
                .map_err(|_| Error::MemoryDisabled)??;
        }
        Ok(())
    }

    /// Bytes of BAR memory this device has committed (huge-page BARs not
    /// counted): what its faults and writes used, not its BARs' sizes.
    pub fn committed_memory(&self) -> u64 {
        self.inner.store.as_ref().map_or(0, |s| s.committed())
    }

    /// The budget the device's memory is charged to.
    pub fn memory_budget(&self) -> Option<Arc<MemoryBudget>> {
        self.inner.store.as_ref().map(|s| s.budget().clone())
    }

    /// The fault-path counters.
    pub fn stats(&self) -> Stats {
        self.inner.core.stats()
    }

    /// BUG events recorded by the `legacy` policy.
    pub fn bug_events(&self) -> Vec<BugEvent> {
        self.inner.core.bug_events()
    }

    /// Waits until no fault is being served (at most `timeout`); returns
    /// whether the service went idle. Counters read afterwards add up.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !self.inner.core.idle() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// The address space whose fault service serves this device.
    pub fn address_space(&self) -> &AddressSpace {
        &self.inner.space
    }

    /// Number of live mappings.
    pub fn mapping_count(&self) -> usize {
        // A munmap the process just made must be counted out.
        crate::mm::Mm::quiesce(self.inner.core.mm());
        self.inner.core.mappings().len()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.inner.check_owner().is_err() {
            // A forked child's copy: the service threads, the userfaultfd
            // and every mapping are the parent's, and a lock may have been
            // copied held. Touch nothing, not even on the last drop.
            self.inner.leak_in_child();
            return;
        }
        // Revoke and poison, so that threads blocked in faults, and every
        // later touch, get SIGBUS. The service goes on while a mapping of
        // the device is left (or other devices use it).
        self.inner.core.shutdown();
    }
}

/// Region copies go through a bounce buffer of this size.
const BOUNCE: usize = 64 << 10;

impl Inner {
    /// In a forked child: keeps this device's state alive for good, so
    /// that no drop in the child takes a lock that fork may have copied
    /// held or stops threads that the child does not have.
    pub(crate) fn leak_in_child(self: &Arc<Self>) {
        std::mem::forget(self.clone());
    }

    /// Fails in a forked child of the process that built the device.
    pub(crate) fn check_owner(&self) -> Result<()> {
        if std::process::id() == self.owner {
            Ok(())
        } else {
            Err(Error::ForeignProcess { owner: self.owner })
        }
    }

    fn region(&self, index: u32) -> Result<&Region> {
        self.regions
            .get(index as usize)
            .and_then(|r| r.as_ref())
            .ok_or(Error::NoSuchRegion(index))
    }
}

fn config_range(offset: u64, len: usize) -> Result<Range<usize>> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= 256 && len > 0 => Ok(offset as usize..end as usize),
        _ => Err(Error::ConfigRange { offset, len }),
    }
}

fn region_bounds(r: &Region, region: u32, offset: u64, len: usize) -> Result<()> {
    if len == 0 {
        return Err(Error::ZeroLength);
    }
    match offset.checked_add(len as u64) {
        Some(end) if end <= r.info.size => Ok(()),
        _ => Err(Error::OutOfRange {
            region,
            offset,
            len,
            size: r.info.size,
        }),
    }
}
