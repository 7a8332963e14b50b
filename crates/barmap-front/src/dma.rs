//! IOMMU tables: what a container or an IOAS maps, IOVA to process memory,
//! with permissions. Device models do DMA through them (an access outside
//! them, or against their permissions, is an IOMMU fault).
//!
//! # Pinning
//!
//! The kernel pins the pages behind a DMA map at `MAP_DMA` time: from then
//! on the device reaches those pages, whatever the program does to its
//! address space. If the program unmaps the buffer and maps new memory at
//! the same address, the device still writes the old pages, and the new
//! memory stays untouched. barmap cannot pin pages from user space, so it
//! does two things, by the kind of memory:
//!
//! - **Shared memory** (memfd, `MAP_SHARED|MAP_ANONYMOUS`, shmem files,
//!   any `MAP_SHARED` mapping): pinning is emulated exactly. At map time
//!   barmap makes a second mapping of the same pages (`mremap` with an old
//!   size of 0, which the kernel allows for shared mappings only), marked
//!   `MADV_DONTFORK`, and the device's DMA goes through it until the DMA
//!   unmap. The program may unmap, remap or move its own mapping; the
//!   device keeps reaching the pages it was given, as with the kernel.
//! - **Private memory** (anonymous `MAP_PRIVATE`, malloc, private file
//!   mappings): there is no second mapping of private pages to be had, so
//!   barmap translates through the program's address and watches it (see
//!   the `watch` module): populated at map time, registered on a
//!   userfaultfd of barmap's own whose unmap, remap and remove events
//!   report every way the range can go (`munmap` through libc, inside
//!   libc, or as a raw system call, `mmap(MAP_FIXED)` or `mremap` over it,
//!   `MADV_DONTNEED`), and reported by the preload's `munmap` wrapper too.
//!   A range that went is marked gone, and device DMA to it is an IOMMU
//!   fault ([`barmap_models::IommuFault::Gone`], counted in the device's
//!   `iommu_faults` and in the run's report), never a write into whatever
//!   memory is mapped there next. Where that userfaultfd cannot be had
//!   (only `UFFD_USER_MODE_ONLY`, hugetlb, private file mappings, ranges
//!   the program registered itself), only the `munmap` wrapper reports.
//!   Programs that need the kernel's exact behaviour map DMA buffers from
//!   shared memory, as QEMU and DPDK do for guest memory and hugepages.
//!
//! Why not more: user space has no way to take a reference to a private
//! page that outlives the program's mapping (`/proc/self/pagemap` gives
//! frame numbers but no access, and moving the pages away with
//! `mremap(MREMAP_DONTUNMAP)` would take them from the program), so the
//! choice for private memory is between reaching the program's current
//! memory and refusing; barmap refuses, as an IOMMU fault the device
//! model sees and the report counts.
//!
//! `VFIO_UPDATE_VADDR` is not offered (see [`crate::type1::has_extension`]):
//! its promise (the device keeps using the pinned pages while no vaddr is
//! valid) holds only for pinned memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

/// Page size of the emulated IOMMU.
pub const IOMMU_PAGE: u64 = 4096;

/// The IOVA windows the emulated IOMMU accepts (inclusive ends): everything
/// below the x86 MSI window, and above it up to 48 bits, as Intel VT-d
/// reports.
pub const IOVA_RANGES: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 48) - 1)];

/// One DMA mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapping {
    /// First IOVA.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
    /// Process virtual address of the first byte.
    pub vaddr: u64,
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

/// Why a DMA table refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaError {
    /// A bad argument (alignment, zero size, outside the IOVA windows,
    /// splitting a mapping where that is not allowed).
    Invalid,
    /// Part of the range is already mapped.
    Exists,
    /// Nothing is mapped there.
    NotFound,
    /// The IOVA range wraps past 2^64.
    Overflow,
    /// The memory is not the process's.
    Fault,
    /// A vfio-user server refused the mapping with this errno.
    Device(i32),
}

/// Where a DMA access over several mappings faulted
/// ([`DmaTable::translate_spans`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanFault {
    /// Nothing maps `iova` (`len` bytes of the access were left).
    Unmapped {
        /// The first IOVA without a mapping.
        iova: u64,
        /// The bytes of the access from there on.
        len: u64,
    },
    /// The mapping at `iova` does not allow the access.
    Permission {
        /// The first IOVA whose mapping refused.
        iova: u64,
    },
    /// The mapping at `iova` meets private memory the program unmapped.
    Gone {
        /// The first IOVA whose memory is gone.
        iova: u64,
    },
}

/// IOVA → mapping.
#[derive(Debug, Default)]
pub struct DmaTable {
    maps: BTreeMap<u64, DmaMapping>,
    /// Devices served over vfio-user attached to the table: they get each
    /// map and unmap as a message ([`crate::remote`]).
    remotes: Vec<Weak<crate::device::EmuDevice>>,
    /// By mapping IOVA: how the mapping's pages are held.
    held: BTreeMap<u64, Held>,
}

/// How the pages of one mapping are held.
#[derive(Debug)]
enum Held {
    /// Shared memory, pinned by a second mapping of the same pages.
    Pinned(Alias),
    /// Private memory, reached at the program's address and watched for
    /// unmaps.
    Watched(Watch),
    /// A BAR mapping (type1 maps pfnmaps): reached at the program's
    /// address, where barmap's fault path serves it.
    Mmio,
    /// Private memory past the watch table's size: reached at the
    /// program's address, unwatched.
    Unwatched,
    /// Not pinned yet: an IOAS without a domain, which no device reaches.
    Deferred,
}

/// How the pages of `m` are held once it is pinned: EFAULT-class
/// [`DmaError::Fault`] if they cannot be.
fn hold(m: &DmaMapping) -> Result<Held, DmaError> {
    Ok(if crate::is_bar_memory(m.vaddr, m.size) {
        Held::Mmio
    } else {
        let segments = segments_of(m.vaddr, m.size, m.write).ok_or(DmaError::Fault)?;
        let shared = segments.iter().all(|s| s.shared);
        let alias = match segments.as_slice() {
            // The common case (DPDK maps every page of one shared segment on
            // its own): one alias of the program's whole mapping, shared by
            // every DMA map inside it, so the aliases stay as few as the
            // program's mappings.
            [one] if shared => Alias::within(one, m.vaddr, m.size),
            _ if shared => {
                let spans: Vec<(u64, u64)> = segments.iter().map(|s| (s.start, s.end)).collect();
                Alias::of(m.vaddr, m.size, &spans)
            }
            _ => None,
        };
        match alias {
            Some(a) => Held::Pinned(a),
            None => Watch::new(m.vaddr, m.vaddr + m.size, m.write)
                .map_or(Held::Unwatched, Held::Watched),
        }
    })
}

/// A second mapping of a shared range's pages, made at DMA map time: of
/// its own ([`Alias::of`]), or a window of the alias of the whole program
/// mapping it lies in ([`Alias::within`]).
#[derive(Debug)]
struct Alias {
    addr: usize,
    len: usize,
    /// The alias of a whole program mapping this one is a window of, kept
    /// alive while the window is; None if this alias is a mapping of its own.
    whole: Option<Arc<VmaAlias>>,
}

impl Drop for Alias {
    fn drop(&mut self) {
        if self.whole.is_none() {
            // SAFETY: our own mapping, made by `Alias::of`; nothing else uses it.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        }
    }
}

/// A second mapping of one whole shared mapping of the program, shared by
/// every DMA map inside it; unmapped when the last of them goes.
#[derive(Debug)]
struct VmaAlias {
    addr: usize,
    len: usize,
}

impl Drop for VmaAlias {
    fn drop(&mut self) {
        // SAFETY: our own mapping, made by `Alias::within`; only windows
        // that are gone (this is their last reference) used it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// The program mapping an alias was made of: its range and the identity of
/// what it maps (device, inode, offset), so that a mapping the program
/// replaced at the same addresses gets an alias of its own.
type VmaKey = (u64, u64, u64, u64, u64);

/// Aliases of whole program mappings, by the mapping they were made of.
static VMA_ALIASES: Mutex<BTreeMap<VmaKey, Weak<VmaAlias>>> = Mutex::new(BTreeMap::new());

impl Alias {
    /// A window `vaddr..vaddr+len` of the alias of `seg`, the program's
    /// shared mapping that holds it (made on first use); None if the
    /// kernel refuses the alias.
    fn within(seg: &Segment, vaddr: u64, len: u64) -> Option<Alias> {
        let key = (seg.start, seg.end, seg.dev, seg.ino, seg.offset);
        let mut cache = VMA_ALIASES.lock().unwrap();
        cache.retain(|_, w| w.strong_count() > 0);
        let whole = match cache.get(&key).and_then(Weak::upgrade) {
            Some(a) => a,
            None => {
                let vlen = (seg.end - seg.start) as usize;
                // SAFETY: mremap with an old size of 0 maps the same shared
                // pages again at a place the kernel picks; the program's
                // mapping is left as it is.
                let r = unsafe {
                    libc::mremap(
                        seg.start as *mut libc::c_void,
                        0,
                        vlen,
                        libc::MREMAP_MAYMOVE,
                    )
                };
                if r == libc::MAP_FAILED {
                    return None;
                }
                // SAFETY: madvise on our own new mapping (a forked child
                // does not get it, as it does not get the kernel's pins).
                unsafe { libc::madvise(r, vlen, libc::MADV_DONTFORK) };
                let a = Arc::new(VmaAlias {
                    addr: r as usize,
                    len: vlen,
                });
                cache.insert(key, Arc::downgrade(&a));
                a
            }
        };
        Some(Alias {
            addr: whole.addr + (vaddr - seg.start) as usize,
            len: len as usize,
            whole: Some(whole),
        })
    }

    /// A second mapping of `vaddr..vaddr+len`, all of it shared memory
    /// (`segments`: the program's mappings that cover it, in order), or
    /// None if the kernel refuses one of them.
    fn of(vaddr: u64, len: u64, segments: &[(u64, u64)]) -> Option<Alias> {
        let len = len as usize;
        // SAFETY: a fresh anonymous reservation, placed by the kernel.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let alias = Alias {
            addr: base as usize,
            len,
            whole: None,
        };
        for &(start, end) in segments {
            let (from, to) = (start.max(vaddr), end.min(vaddr + len as u64));
            let at = alias.addr + (from - vaddr) as usize;
            // SAFETY: mremap with an old size of 0 maps the same shared
            // pages again, here over our own reservation (MREMAP_FIXED);
            // the program's mapping is left as it is.
            let r = unsafe {
                libc::mremap(
                    from as *mut libc::c_void,
                    0,
                    (to - from) as usize,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    at as *mut libc::c_void,
                )
            };
            if r == libc::MAP_FAILED {
                return None; // `alias` unmaps what was made
            }
        }
        // SAFETY: madvise on our own mapping: a forked child does not get
        // it (the kernel's pinned pages are not the child's either).
        unsafe { libc::madvise(base, len, libc::MADV_DONTFORK) };
        Some(alias)
    }
}

/// A private range watched for the program's unmaps (see [`watch`]).
#[derive(Debug)]
struct Watch {
    slot: usize,
    id: u64,
    /// Whether barmap's userfaultfd watches the range too.
    uffd: bool,
}

impl Watch {
    /// Watches `start..end` (private memory just mapped for DMA, for a
    /// device that may write it if `write`); None if every slot is taken.
    fn new(start: u64, end: u64, write: bool) -> Option<Watch> {
        let (slot, id) = watch::take(start, end)?;
        let uffd = watch::register(start, end, write);
        Some(Watch { slot, id, uffd })
    }

    /// Whether part of `va..va+len` was unmapped by the program.
    fn gone(&self, va: u64, len: u64) -> bool {
        watch::gone(self.slot, self.id, va, va.saturating_add(len))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some((start, end)) = watch::release(self.slot, self.id) {
            if self.uffd {
                watch::unregister(start, end);
            }
        }
    }
}

/// The program unmapped `addr..addr+len` (its `munmap` returned 0): the
/// private DMA-mapped memory in that range is gone, and device DMA to it
/// is an IOMMU fault from now on (shared memory stays pinned).
pub fn process_unmapped(addr: usize, len: usize) {
    watch::mark_gone(addr as u64, (addr as u64).saturating_add(len as u64));
}

/// Private DMA memory, watched for the program's unmaps.
///
/// The watched ranges live in a fixed table ([`SLOTS`] slots), so that
/// marking a range gone never allocates: the userfaultfd's event thread
/// does it while the unmapping thread waits for it, and that thread may
/// hold the allocator's locks (a `free` that trims the heap).
///
/// Two ways in:
/// - the `munmap` wrapper of the preload library ([`process_unmapped`]);
/// - barmap's own userfaultfd (`UFFD_FEATURE_EVENT_UNMAP`, `EVENT_REMAP`,
///   `EVENT_REMOVE`), on which each watched range is registered in MISSING
///   mode after being populated (the kernel faults in every page when it
///   pins them too). It reports every way the range can go: `munmap`
///   inside libc or as a raw system call, `mmap(MAP_FIXED)` or `mremap`
///   over it, `madvise(MADV_DONTNEED)`. Its thread serves the MISSING
///   faults that follow a `MADV_DONTNEED` or `MADV_FREE` with zero pages,
///   as the kernel would. It is used where the kernel allows it: a
///   userfaultfd that takes faults of the kernel too (no
///   `UFFD_USER_MODE_ONLY`, which would turn the program's own system
///   calls on such pages into EFAULT), and memory that supports MISSING
///   registration with zero pages (anonymous or shmem; not hugetlb, not
///   private file mappings, not ranges the program registered itself).
mod watch {
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, OnceLock};

    use linux_raw_sys::general as sys;
    use linux_raw_sys::ioctl as io;

    /// Watched ranges at most (DMA mappings of private memory).
    pub const SLOTS: usize = 512;
    /// Gone parts recorded per range; more, and the whole range is gone.
    const PARTS: usize = 8;
    const PAGE: u64 = 4096;

    #[derive(Clone, Copy)]
    struct Slot {
        /// 0: free.
        id: u64,
        start: u64,
        end: u64,
        parts: [(u64, u64); PARTS],
        nparts: usize,
        all: bool,
    }

    const FREE: Slot = Slot {
        id: 0,
        start: 0,
        end: 0,
        parts: [(0, 0); PARTS],
        nparts: 0,
        all: false,
    };

    static TABLE: Mutex<[Slot; SLOTS]> = Mutex::new([FREE; SLOTS]);
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

    fn table() -> std::sync::MutexGuard<'static, [Slot; SLOTS]> {
        TABLE.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free slot for `start..end`: its index and id.
    pub fn take(start: u64, end: u64) -> Option<(usize, u64)> {
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut t = table();
        let i = t.iter().position(|s| s.id == 0)?;
        t[i] = Slot {
            id,
            start,
            end,
            ..FREE
        };
        Some((i, id))
    }

    /// Frees the slot; returns its range.
    pub fn release(slot: usize, id: u64) -> Option<(u64, u64)> {
        let mut t = table();
        let s = &mut t[slot];
        (s.id == id).then(|| {
            let r = (s.start, s.end);
            *s = FREE;
            r
        })
    }

    /// Set while the event thread holds events it has read (which let the
    /// unmapping threads go on) and not yet marked.
    static IN_FLIGHT: AtomicBool = AtomicBool::new(false);

    /// Whether part of `a..e` in the slot's range is gone. Waits for the
    /// events already read to be marked: an unmap that has returned to the
    /// program is always seen.
    pub fn gone(slot: usize, id: u64, a: u64, e: u64) -> bool {
        while IN_FLIGHT.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let t = table();
        let s = &t[slot];
        s.id == id && (s.all || s.parts[..s.nparts].iter().any(|&(ps, pe)| ps < e && a < pe))
    }

    /// Marks `a..e` gone in every watched range it meets. Never allocates.
    pub fn mark_gone(a: u64, e: u64) {
        let mut t = table();
        for s in t
            .iter_mut()
            .filter(|s| s.id != 0 && s.start < e && a < s.end)
        {
            if s.nparts == PARTS {
                s.all = true;
            } else {
                s.parts[s.nparts] = (a.max(s.start), e.min(s.end));
                s.nparts += 1;
            }
        }
    }

    /// Whether a watched range other than those being released covers
    /// part of `a..e`: its parts, into `out` (at most its length).
    fn covered(a: u64, e: u64, out: &mut [(u64, u64)]) -> usize {
        let t = table();
        let mut n = 0;
        for s in t.iter().filter(|s| s.id != 0 && s.start < e && a < s.end) {
            if n == out.len() {
                return usize::MAX;
            }
            out[n] = (s.start.max(a), s.end.min(e));
            n += 1;
        }
        n
    }

    /// barmap's userfaultfd for private DMA memory, if the kernel gives
    /// one that takes the kernel's faults too, and its thread runs. Only
    /// the process that made it uses it: a userfaultfd acts on the address
    /// space it was made in, and a forked child has no event thread.
    fn uffd() -> Option<RawFd> {
        static FD: OnceLock<(u32, Option<RawFd>)> = OnceLock::new();
        let (pid, fd) = *FD.get_or_init(|| (std::process::id(), make()));
        fd.filter(|_| pid == std::process::id())
    }

    fn make() -> Option<RawFd> {
        {
            let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
            // SAFETY: the userfaultfd system call; a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as RawFd;
            if fd < 0 {
                return None;
            }
            let mut api = sys::uffdio_api {
                api: sys::UFFD_API as u64,
                features: (sys::UFFD_FEATURE_EVENT_UNMAP
                    | sys::UFFD_FEATURE_EVENT_REMAP
                    | sys::UFFD_FEATURE_EVENT_REMOVE) as u64,
                ioctls: 0,
            };
            let spawned = ioctl(fd, io::UFFDIO_API, &mut api) == 0
                && std::thread::Builder::new()
                    .name("barmap-dma-watch".into())
                    .spawn(move || serve(fd))
                    .is_ok();
            if !spawned {
                // SAFETY: our own fd, used by nothing else.
                unsafe { libc::close(fd) };
                return None;
            }
            Some(fd)
        }
    }

    fn ioctl<T>(fd: RawFd, req: u32, arg: &mut T) -> i32 {
        // SAFETY: a userfaultfd ioctl with a pointer to its argument
        // structure, which lives across the call.
        unsafe { libc::ioctl(fd, req as libc::c_ulong, arg as *mut T) }
    }

    fn range(a: u64, e: u64) -> sys::uffdio_range {
        sys::uffdio_range {
            start: a,
            len: e - a,
        }
    }

    /// Populates `start..end` (the kernel faults in the pages it pins) and
    /// registers it on barmap's userfaultfd; false if that cannot be done
    /// (the range then is watched through `munmap` only).
    pub fn register(start: u64, end: u64, write: bool) -> bool {
        let Some(fd) = uffd() else {
            return false;
        };
        let advice = if write {
            sys::MADV_POPULATE_WRITE
        } else {
            sys::MADV_POPULATE_READ
        };
        // SAFETY: madvise on the program's range, which it just gave for
        // DMA: faults its pages in, changes nothing else.
        if unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                (end - start) as usize,
                advice as i32,
            )
        } != 0
        {
            return false;
        }
        let mut reg = sys::uffdio_register {
            range: range(start, end),
            mode: sys::UFFDIO_REGISTER_MODE_MISSING as u64,
            ioctls: 0,
        };
        if ioctl(fd, io::UFFDIO_REGISTER, &mut reg) != 0 {
            return false;
        }
        if reg.ioctls & (1u64 << sys::_UFFDIO_ZEROPAGE) == 0 {
            // No zero pages for it (hugetlb): its faults could not be served.
            let mut r = range(start, end);
            ioctl(fd, io::UFFDIO_UNREGISTER, &mut r);
            return false;
        }
        true
    }

    /// Unregisters what of `start..end` no other watched range covers,
    /// mapping by mapping (the program may have replaced parts of it).
    pub fn unregister(start: u64, end: u64) {
        let Some(fd) = uffd() else {
            return;
        };
        let mut others = [(0u64, 0u64); 32];
        let n = covered(start, end, &mut others);
        if n == usize::MAX {
            return; // left registered: its faults are still served
        }
        let mut keep = others[..n].to_vec();
        keep.sort_unstable();
        let mut free = Vec::new();
        let mut at = start;
        for (a, e) in keep {
            if a > at {
                free.push((at, a));
            }
            at = at.max(e);
        }
        if at < end {
            free.push((at, end));
        }
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        for line in maps.lines() {
            let Some((s, e)) = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(s, e)| {
                    Some((
                        u64::from_str_radix(s, 16).ok()?,
                        u64::from_str_radix(e, 16).ok()?,
                    ))
                })
            else {
                continue;
            };
            for &(fa, fe) in &free {
                let (a, b) = (s.max(fa), e.min(fe));
                if a < b {
                    let mut r = range(a, b);
                    ioctl(fd, io::UFFDIO_UNREGISTER, &mut r);
                }
            }
        }
    }

    /// The event thread: unmaps, moves and removals mark ranges gone;
    /// missing pages get zero pages. Never allocates.
    fn serve(fd: RawFd) {
        const MSG: usize = std::mem::size_of::<sys::uffd_msg>();
        let mut buf = [0u8; MSG * 16];
        loop {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one pollfd that lives across the call.
            if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
                continue;
            }
            // Reading an unmap event lets the unmapping thread return:
            // DMA translations wait until it is marked.
            IN_FLIGHT.store(true, Ordering::SeqCst);
            // SAFETY: reads into `buf`, valid for its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                IN_FLIGHT.store(false, Ordering::SeqCst);
                continue;
            }
            let word = |m: &[u8], at: usize| u64::from_ne_bytes(m[at..at + 8].try_into().unwrap());
            for m in buf[..n as usize].chunks_exact(MSG) {
                // struct uffd_msg: the event at 0, its arguments from 8:
                // pagefault {flags, address}, remap {from, to, len},
                // remove and unmap {start, end}.
                match u32::from(m[0]) {
                    sys::UFFD_EVENT_PAGEFAULT => zero_page(fd, word(m, 16) & !(PAGE - 1)),
                    sys::UFFD_EVENT_REMAP => {
                        let from = word(m, 8);
                        mark_gone(from, from.saturating_add(word(m, 24)));
                    }
                    sys::UFFD_EVENT_UNMAP | sys::UFFD_EVENT_REMOVE => {
                        mark_gone(word(m, 8), word(m, 16))
                    }
                    _ => {}
                }
            }
            IN_FLIGHT.store(false, Ordering::SeqCst);
        }
    }

    /// Serves a MISSING fault at `page` with a zero page, as the kernel
    /// would for anonymous or shmem memory.
    fn zero_page(fd: RawFd, page: u64) {
        let mut z = sys::uffdio_zeropage {
            range: range(page, page + PAGE),
            mode: 0,
            zeropage: 0,
        };
        if ioctl(fd, io::UFFDIO_ZEROPAGE, &mut z) == 0 {
            return;
        }
        let mut r = range(page, page + PAGE);
        // SAFETY: reads the thread's errno.
        match unsafe { *libc::__errno_location() } {
            // Mapped meanwhile: wake the thread that waits for it.
            libc::EEXIST => {
                ioctl(fd, io::UFFDIO_WAKE, &mut r);
            }
            // The mm is changing (a fork, a remap): the fault is retried.
            libc::EAGAIN => {}
            // Anything else: stop watching that page; the unregister wakes
            // the thread, whose fault then takes the kernel's usual path.
            _ => {
                ioctl(fd, io::UFFDIO_UNREGISTER, &mut r);
            }
        }
    }
}

impl DmaTable {
    /// Every mapping, by IOVA.
    pub fn mappings(&self) -> Vec<DmaMapping> {
        self.maps.values().copied().collect()
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Checks a map request the way the kernel does (alignment, windows,
    /// overlap, then that the memory can be pinned: mapped in the process,
    /// readable, and writable for a map the device may write) and records
    /// it, holding its pages (see the module's notes on pinning).
    pub fn map(&mut self, m: DmaMapping) -> Result<(), DmaError> {
        self.map_with(m, true)
    }

    fn map_with(&mut self, m: DmaMapping, pin: bool) -> Result<(), DmaError> {
        if m.size == 0 || m.iova % IOMMU_PAGE != 0 || m.size % IOMMU_PAGE != 0 {
            return Err(DmaError::Invalid);
        }
        if m.vaddr % IOMMU_PAGE != 0 {
            return Err(DmaError::Invalid);
        }
        let Some(last) = m.iova.checked_add(m.size - 1) else {
            return Err(DmaError::Overflow);
        };
        if m.vaddr.checked_add(m.size - 1).is_none() {
            return Err(DmaError::Overflow);
        }
        if !IOVA_RANGES
            .iter()
            .any(|&(lo, hi)| lo <= m.iova && last <= hi)
        {
            return Err(DmaError::Invalid);
        }
        if self.overlaps(m.iova, m.size) {
            return Err(DmaError::Exists);
        }
        let held = if pin { hold(&m)? } else { Held::Deferred };
        for (k, r) in self.remote_devices().iter().enumerate() {
            if let Err(e) = r.remote().map_or(Ok(()), |r| r.dma_map(&m)) {
                // The server refused: the ones that took it let it go.
                for done in &self.remote_devices()[..k] {
                    if let Some(d) = done.remote() {
                        d.dma_unmap(m.iova, m.size);
                    }
                }
                return Err(DmaError::Device(e.0));
            }
        }
        self.maps.insert(m.iova, m);
        self.held.insert(m.iova, held);
        Ok(())
    }

    /// The vfio-user devices attached, alive.
    fn remote_devices(&self) -> Vec<Arc<crate::device::EmuDevice>> {
        self.remotes.iter().filter_map(Weak::upgrade).collect()
    }

    /// Attaches a device served over vfio-user: every mapping so far goes
    /// to its server (one the server refuses is logged; the kernel's
    /// attach would have failed the same way, at the IOMMU map).
    pub fn attach_remote(&mut self, dev: &Arc<crate::device::EmuDevice>) {
        self.remotes.retain(|w| w.strong_count() > 0);
        self.remotes.push(Arc::downgrade(dev));
        if let Some(r) = dev.remote() {
            for m in self.maps.values() {
                if let Err(e) = r.dma_map(m) {
                    tracing::warn!(
                        iova = m.iova,
                        errno = e.0,
                        "vfio-user DMA_MAP at attach failed"
                    );
                }
            }
        }
    }

    /// Detaches a device served over vfio-user: its server unmaps all.
    pub fn detach_remote(&mut self, dev: &crate::remote::RemoteDevice) {
        self.remotes.retain(|w| {
            w.upgrade()
                .is_some_and(|d| d.remote().is_some_and(|r| !std::ptr::eq(r, dev)))
        });
        for m in self.maps.values() {
            dev.dma_unmap(m.iova, m.size);
        }
    }

    /// Records `m` with every check of [`DmaTable::map`] but the pinning:
    /// an IOAS without a domain pins nothing yet (`iopt_map_user_pages`
    /// fills only the domains there are), and no device can reach it.
    pub fn map_deferred(&mut self, m: DmaMapping) -> Result<(), DmaError> {
        self.map_with(m, false)
    }

    /// Pins every mapping recorded by [`DmaTable::map_deferred`] (the
    /// first domain is being filled); EFAULT-class [`DmaError::Fault`] if
    /// one cannot be, with nothing pinned.
    pub fn pin_deferred(&mut self) -> Result<(), DmaError> {
        let deferred: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| matches!(h, Held::Deferred))
            .map(|(iova, _)| *iova)
            .collect();
        let mut holds = Vec::new();
        for iova in &deferred {
            holds.push((*iova, hold(&self.maps[iova])?));
        }
        for (iova, h) in holds {
            self.held.insert(iova, h);
        }
        Ok(())
    }

    /// Whether any mapping meets `iova..iova+size`.
    pub fn overlaps(&self, iova: u64, size: u64) -> bool {
        let end = iova.saturating_add(size);
        if self.maps.range(iova..end).next().is_some() {
            return true;
        }
        self.maps
            .range(..iova)
            .next_back()
            .is_some_and(|(_, m)| m.iova + m.size > iova)
    }

    fn remove(&mut self, iova: u64) -> u64 {
        if let Some(m) = self.maps.get(&iova) {
            for d in self.remote_devices() {
                if let Some(r) = d.remote() {
                    r.dma_unmap(m.iova, m.size);
                }
            }
        }
        self.held.remove(&iova);
        self.maps.remove(&iova).map_or(0, |m| m.size)
    }

    /// type1 v1 unmap (`vfio_dma_do_unmap` without `v2`): every mapping
    /// whose first IOVA lies in `iova..iova+size` goes, whole (even where
    /// it extends past the range); if the range starts inside a mapping,
    /// nothing is unmapped. Returns the bytes unmapped.
    pub fn unmap_v1(&mut self, iova: u64, size: u64) -> u64 {
        let last = iova.saturating_add(size - 1);
        let starts_inside = self
            .maps
            .range(..iova)
            .next_back()
            .is_some_and(|(_, m)| m.iova + m.size > iova);
        if starts_inside {
            return 0;
        }
        let inside: Vec<u64> = self.maps.range(iova..=last).map(|(k, _)| *k).collect();
        inside.into_iter().map(|k| self.remove(k)).sum()
    }

    /// Unmaps every mapping inside `iova..iova+size` (a mapping that only
    /// partly overlaps is an error when `no_split`, as type1v2 and iommufd
    /// refuse to split); returns the bytes unmapped.
    pub fn unmap(&mut self, iova: u64, size: u64, no_split: bool) -> Result<u64, DmaError> {
        let end = iova.checked_add(size).ok_or(DmaError::Overflow)?;
        if no_split {
            let cut_start = self
                .maps
                .range(..iova)
                .next_back()
                .is_some_and(|(_, m)| m.iova + m.size > iova);
            let cut_end = self
                .maps
                .range(iova..end)
                .next_back()
                .is_some_and(|(_, m)| m.iova + m.size > end);
            if cut_start || cut_end {
                return Err(DmaError::Invalid);
            }
        }
        let inside: Vec<u64> = self
            .maps
            .range(iova..end)
            .filter(|(_, m)| m.iova + m.size <= end)
            .map(|(k, _)| *k)
            .collect();
        Ok(inside.into_iter().map(|k| self.remove(k)).sum())
    }

    /// Unmaps, at every device attached, the window of exactly `size`
    /// bytes at `iova` that another process sharing this IOAS mapped (it is
    /// not in this table: that process's memory is not this one's).
    pub fn unmap_peer(&self, iova: u64, size: u64) {
        for d in self.remote_devices() {
            if let Some(r) = d.remote() {
                r.dma_unmap_any(iova, size);
            }
        }
    }

    /// Unmaps everything; returns the bytes unmapped.
    pub fn clear(&mut self) -> u64 {
        let bytes = self.maps.values().map(|m| m.size).sum();
        for d in self.remote_devices() {
            if let Some(r) = d.remote() {
                for m in self.maps.values() {
                    r.dma_unmap(m.iova, m.size);
                }
            }
        }
        self.maps.clear();
        self.held.clear();
        bytes
    }

    /// Translates a DMA access of `len` bytes at `iova` (`write` for a
    /// device write): the process address, or None for an IOMMU fault
    /// (unmapped, crossing the end of a mapping, or against its
    /// permissions).
    /// A pinned mapping translates to barmap's second mapping of its
    /// pages; private memory that the program unmapped translates to
    /// nothing ([`DmaTable::is_gone`] tells that fault apart).
    pub fn translate(&self, iova: u64, len: u64, write: bool) -> Option<u64> {
        let (_, m) = self.maps.range(..=iova).next_back()?;
        let end = iova.checked_add(len)?;
        if end > m.iova + m.size || (write && !m.write) || (!write && !m.read) {
            return None;
        }
        let off = iova - m.iova;
        match self.held.get(&m.iova) {
            Some(Held::Pinned(a)) => Some(a.addr as u64 + off),
            Some(Held::Watched(w)) if w.gone(m.vaddr + off, len) => None,
            _ => Some(m.vaddr + off),
        }
    }

    /// Translates a DMA access of `len` bytes at `iova` that may run from
    /// one mapping into the next, as an IOMMU translates page by page: a
    /// transfer over IOVA-contiguous mappings (DPDK without huge pages maps
    /// every 4 KiB page on its own) is one transfer. Each mapping's part is
    /// translated as [`DmaTable::translate`] does; returns the process
    /// ranges in order, as (address, bytes), or where the walk faulted.
    pub fn translate_spans(
        &self,
        iova: u64,
        len: u64,
        write: bool,
    ) -> Result<Vec<(u64, u64)>, SpanFault> {
        let end = iova
            .checked_add(len)
            .ok_or(SpanFault::Unmapped { iova, len })?;
        let mut spans = Vec::new();
        let mut at = iova;
        while at < end {
            let m = self
                .maps
                .range(..=at)
                .next_back()
                .map(|(_, m)| m)
                .filter(|m| at < m.iova + m.size)
                .ok_or(SpanFault::Unmapped {
                    iova: at,
                    len: end - at,
                })?;
            let n = (m.iova + m.size).min(end) - at;
            match self.translate(at, n, write) {
                Some(va) => spans.push((va, n)),
                None if self.is_gone(at, n) => return Err(SpanFault::Gone { iova: at }),
                None => return Err(SpanFault::Permission { iova: at }),
            }
            at += n;
        }
        Ok(spans)
    }

    /// Whether a DMA access of `len` bytes at `iova` meets private memory
    /// that the program unmapped after mapping it for DMA.
    pub fn is_gone(&self, iova: u64, len: u64) -> bool {
        let Some((_, m)) = self.maps.range(..=iova).next_back() else {
            return false;
        };
        if iova >= m.iova + m.size {
            return false;
        }
        let off = iova - m.iova;
        matches!(self.held.get(&m.iova), Some(Held::Watched(w)) if w.gone(m.vaddr + off, len))
    }

    /// A free, `align`-aligned IOVA range of `size` bytes in the windows
    /// (iommufd's automatic IOVA allocation).
    pub fn find_free(&self, size: u64, align: u64) -> Option<u64> {
        self.find_free_besides(size, align, &[])
    }

    /// Like [`DmaTable::find_free`], with the ranges `others` (IOVA, size:
    /// what other processes sharing the IOAS mapped) taken too.
    pub fn find_free_besides(&self, size: u64, align: u64, others: &[(u64, u64)]) -> Option<u64> {
        for &(lo, hi) in &IOVA_RANGES {
            let mut at = lo.max(IOMMU_PAGE).next_multiple_of(align);
            loop {
                let last = at.checked_add(size - 1)?;
                if last > hi {
                    break;
                }
                let own = self
                    .maps
                    .range(..at + size)
                    .next_back()
                    .filter(|(_, m)| m.iova + m.size > at)
                    .map(|(_, m)| m.iova + m.size);
                let other = others
                    .iter()
                    .filter(|&&(i, n)| i < at + size && at < i.saturating_add(n))
                    .map(|&(i, n)| i.saturating_add(n))
                    .max();
                match own.max(other) {
                    None => return Some(at),
                    Some(end) => at = end.next_multiple_of(align),
                }
            }
        }
        None
    }
}

/// One of the program's mappings, as `/proc/self/maps` lists it.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: u64,
    end: u64,
    shared: bool,
    offset: u64,
    dev: u64,
    ino: u64,
}

/// The program's mappings that cover `vaddr..vaddr+size`, in order, if
/// the kernel could pin the range: every page mapped (no hole), readable,
/// and writable too when the device may write (the kernel pins with
/// `FOLL_WRITE` then). None means EFAULT.
fn segments_of(vaddr: u64, size: u64, write: bool) -> Option<Vec<Segment>> {
    match procmap::segments_of(vaddr, size, write) {
        Ok(found) => found,
        // A kernel without PROCMAP_QUERY (before 6.11): read the whole list.
        Err(()) => segments_of_listed(vaddr, size, write),
    }
}

/// [`segments_of`] by reading all of `/proc/self/maps` (a walk of every
/// mapping of the process: the fallback, costly with many mappings).
fn segments_of_listed(vaddr: u64, size: u64, write: bool) -> Option<Vec<Segment>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let end = vaddr + size;
    let mut at = vaddr;
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        if e <= at || s >= end {
            continue;
        }
        let p = perms.as_bytes();
        if s > at || p.len() < 4 || p[0] != b'r' || (write && p[1] != b'w') {
            return None;
        }
        let offset = f
            .next()
            .and_then(|o| u64::from_str_radix(o, 16).ok())
            .unwrap_or(0);
        let dev = f
            .next()
            .and_then(|d| d.split_once(':'))
            .and_then(|(a, b)| {
                Some((u64::from_str_radix(a, 16).ok()? << 20) | u64::from_str_radix(b, 16).ok()?)
            })
            .unwrap_or(0);
        let ino = f.next().and_then(|i| i.parse().ok()).unwrap_or(0);
        out.push(Segment {
            start: s,
            end: e,
            shared: p[3] == b's',
            offset,
            dev,
            ino,
        });
        at = e;
        if at >= end {
            return Some(out);
        }
    }
    None
}

/// The mapping that holds an address, asked of the kernel one at a time
/// with `PROCMAP_QUERY` (Linux 6.11) on `/proc/self/maps`: a DMA map costs
/// a lookup, not a walk of the process's mappings (DPDK without huge pages
/// makes tens of thousands of maps).
mod procmap {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Mutex;

    use super::Segment;

    /// `struct procmap_query` of `linux/fs.h`.
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        size: u64,
        query_flags: u64,
        query_addr: u64,
        vma_start: u64,
        vma_end: u64,
        vma_flags: u64,
        vma_page_size: u64,
        vma_offset: u64,
        inode: u64,
        dev_major: u32,
        dev_minor: u32,
        vma_name_size: u32,
        build_id_size: u32,
        vma_name_addr: u64,
        build_id_addr: u64,
    }

    /// `_IOWR('f', 17, struct procmap_query)`.
    const PROCMAP_QUERY: u64 =
        (3 << 30) | ((std::mem::size_of::<Query>() as u64) << 16) | (0x66 << 8) | 17;
    const READABLE: u64 = 0x01;
    const WRITABLE: u64 = 0x02;
    const SHARED: u64 = 0x08;

    /// An open `/proc/self/maps` of this process (reopened in a forked
    /// child, whose own list it must be).
    static MAPS: Mutex<Option<(u32, OwnedFd)>> = Mutex::new(None);

    /// The covering mappings, Ok(None) for EFAULT; Err if the kernel
    /// cannot be asked.
    pub(super) fn segments_of(
        vaddr: u64,
        size: u64,
        write: bool,
    ) -> Result<Option<Vec<Segment>>, ()> {
        let mut maps = MAPS.lock().unwrap();
        let pid = std::process::id();
        if maps.as_ref().is_none_or(|(p, _)| *p != pid) {
            // SAFETY: a NUL-terminated path; a new fd or -1.
            let fd = unsafe {
                libc::open(
                    c"/proc/self/maps".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(());
            }
            // SAFETY: `fd` was just opened and is ours alone.
            *maps = Some((pid, unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let fd = maps.as_ref().map(|(_, f)| f.as_raw_fd()).ok_or(())?;
        let end = vaddr.checked_add(size).ok_or(())?;
        let (mut at, mut out) = (vaddr, Vec::new());
        while at < end {
            let mut q = Query {
                size: std::mem::size_of::<Query>() as u64,
                query_addr: at,
                ..Query::default()
            };
            // SAFETY: PROCMAP_QUERY reads and writes one `Query`, whose size
            // it is told; no name or build id buffer is given.
            if unsafe { libc::ioctl(fd, PROCMAP_QUERY as _, &mut q as *mut Query) } != 0 {
                return match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::ENOENT) => Ok(None), // a hole
                    _ => Err(()),
                };
            }
            if q.vma_start > at
                || q.vma_flags & READABLE == 0
                || (write && q.vma_flags & WRITABLE == 0)
            {
                return Ok(None);
            }
            out.push(Segment {
                start: q.vma_start,
                end: q.vma_end,
                shared: q.vma_flags & SHARED != 0,
                offset: q.vma_offset,
                dev: (u64::from(q.dev_major) << 20) | u64::from(q.dev_minor),
                ino: q.inode,
            });
            at = q.vma_end;
        }
        Ok(Some(out))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_kernels_answer_is_the_listed_one() {
            let page = 4096usize;
            // SAFETY: fresh anonymous mappings of our own, unmapped below.
            let (rw, sh) = unsafe {
                (
                    libc::mmap(
                        std::ptr::null_mut(),
                        4 * page,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    ),
                    libc::mmap(
                        std::ptr::null_mut(),
                        4 * page,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    ),
                )
            };
            assert!(rw != libc::MAP_FAILED && sh != libc::MAP_FAILED);
            // SAFETY: our own mapping: one read-only page, one hole.
            unsafe {
                libc::mprotect(
                    (rw as usize + page) as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                );
                libc::munmap((rw as usize + 3 * page) as *mut libc::c_void, page);
            }
            let key = |v: Option<Vec<super::Segment>>| {
                v.map(|v| {
                    v.iter()
                        .map(|s| (s.start, s.end, s.shared, s.offset, s.dev, s.ino))
                        .collect::<Vec<_>>()
                })
            };
            for (addr, len, write) in [
                (rw as u64, page as u64, true),
                (rw as u64, 2 * page as u64, true),
                (rw as u64, 3 * page as u64, false),
                (rw as u64, 4 * page as u64, false),
                (sh as u64 + page as u64, 2 * page as u64, true),
            ] {
                let asked =
                    super::segments_of(addr, len, write).expect("PROCMAP_QUERY (Linux 6.11)");
                assert_eq!(
                    key(asked),
                    key(super::super::segments_of_listed(addr, len, write)),
                    "{addr:#x}+{len:#x} write {write}"
                );
            }
            // SAFETY: our own mappings.
            unsafe {
                libc::munmap(rw, 3 * page);
                libc::munmap(sh, 4 * page);
            }
        }

        #[test]
        fn the_query_has_the_kernels_size_and_number() {
            assert_eq!(std::mem::size_of::<super::Query>(), 104);
            assert_eq!(super::PROCMAP_QUERY, 0xC068_6611);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> (Vec<u8>, u64) {
        let v = vec![0u8; 8 * 4096 + 4096];
        let a = (v.as_ptr() as u64).next_multiple_of(4096);
        (v, a)
    }

    #[test]
    fn map_checks_alignment_overlap_and_windows() {
        let (_v, a) = buf();
        let mut t = DmaTable::default();
        let m = |iova, size| DmaMapping {
            iova,
            size,
            vaddr: a,
            read: true,
            write: false,
        };
        assert_eq!(t.map(m(0x1000, 0x2000)), Ok(()));
        assert_eq!(t.map(m(0x2000, 0x1000)), Err(DmaError::Exists));
        assert_eq!(t.map(m(0x1001, 0x1000)), Err(DmaError::Invalid));
        assert_eq!(t.map(m(0x10_0000, 0)), Err(DmaError::Invalid));
        assert_eq!(t.map(m(0xfee0_0000, 0x1000)), Err(DmaError::Invalid));
        assert_eq!(t.map(m(u64::MAX - 0xfff, 0x2000)), Err(DmaError::Overflow));
        assert_eq!(t.translate(0x1800, 8, false), Some(a + 0x800));
        assert_eq!(t.translate(0x1800, 8, true), None, "read-only");
        assert_eq!(t.translate(0x2ffc, 8, false), None, "crosses the end");
        assert_eq!(
            t.translate_spans(0x1800, 8, false),
            Ok(vec![(a + 0x800, 8)])
        );
        assert_eq!(
            t.translate_spans(0x2ffc, 8, false),
            Err(SpanFault::Unmapped {
                iova: 0x3000,
                len: 4
            }),
            "runs past the last mapping"
        );
        assert_eq!(
            t.translate_spans(0x1800, 8, true),
            Err(SpanFault::Permission { iova: 0x1800 })
        );
        assert_eq!(t.unmap(0x1000, 0x1000, true), Err(DmaError::Invalid));
        assert_eq!(t.unmap(0x0, 0x10_0000, true), Ok(0x2000));
        assert!(t.is_empty());
        let mut t = DmaTable::default();
        assert_eq!(
            t.map(DmaMapping {
                vaddr: 0x1000,
                ..m(0x1000, 0x1000)
            }),
            Err(DmaError::Fault)
        );
    }

    #[test]
    fn an_access_runs_across_iova_contiguous_mappings_of_scattered_pages() {
        let (_v, a) = buf();
        let mut t = DmaTable::default();
        // Three pages, each mapped on its own; the process pages are not
        // in IOVA order, and the last one is read-only.
        for (i, (va, write)) in [(a + 0x3000, true), (a, true), (a + 0x5000, false)]
            .into_iter()
            .enumerate()
        {
            t.map(DmaMapping {
                iova: 0x10_0000 + 0x1000 * i as u64,
                size: 0x1000,
                vaddr: va,
                read: true,
                write,
            })
            .unwrap();
        }
        assert_eq!(
            t.translate_spans(0x10_0f00, 0x1200, false),
            Ok(vec![(a + 0x3f00, 0x100), (a, 0x1000), (a + 0x5000, 0x100)])
        );
        assert_eq!(
            t.translate_spans(0x10_0f00, 0x200, true),
            Ok(vec![(a + 0x3f00, 0x100), (a, 0x100)])
        );
        assert_eq!(
            t.translate_spans(0x10_0f00, 0x1200, true),
            Err(SpanFault::Permission { iova: 0x10_2000 })
        );
        assert_eq!(
            t.translate_spans(0x10_2f00, 0x200, false),
            Err(SpanFault::Unmapped {
                iova: 0x10_3000,
                len: 0x100
            })
        );
        assert_eq!(t.translate(0x10_0f00, 0x200, false), None);
    }

    #[test]
    fn free_ranges_skip_mappings() {
        let (_v, a) = buf();
        let mut t = DmaTable::default();
        let at = t.find_free(0x2000, 0x1000).unwrap();
        t.map(DmaMapping {
            iova: at,
            size: 0x2000,
            vaddr: a,
            read: true,
            write: true,
        })
        .unwrap();
        let next = t.find_free(0x1000, 0x1000).unwrap();
        assert!(next >= at + 0x2000);
    }

    fn rw(iova: u64, size: u64, vaddr: u64) -> DmaMapping {
        DmaMapping {
            iova,
            size,
            vaddr,
            read: true,
            write: true,
        }
    }

    #[test]
    fn v1_unmap_takes_whole_mappings_that_start_in_the_range() {
        let (_v, a) = buf();
        let mut t = DmaTable::default();
        t.map(rw(0x10_0000, 0x4000, a)).unwrap();
        t.map(rw(0x20_0000, 0x4000, a)).unwrap();
        assert_eq!(t.unmap_v1(0x10_1000, 0x1000), 0, "starts inside: nothing");
        assert_eq!(
            t.unmap_v1(0x10_0000, 0x1000),
            0x4000,
            "the first page: all of it"
        );
        assert_eq!(t.unmap_v1(0xf_f000, 0x10_2000), 0x4000, "reaches the start");
        assert!(t.is_empty());
    }

    fn anon(prot: i32, flags: i32) -> u64 {
        // SAFETY: a fresh mapping for the test, unmapped by the test.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), 0x4000, prot, flags, -1, 0) };
        assert_ne!(p, libc::MAP_FAILED);
        p as u64
    }

    #[test]
    fn maps_are_checked_against_the_memorys_protection() {
        let ro = anon(libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS);
        let none = anon(libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS);
        let mut t = DmaTable::default();
        assert_eq!(t.map(rw(0x1000, 0x4000, ro)), Err(DmaError::Fault));
        assert_eq!(t.map(rw(0x1000, 0x4000, none)), Err(DmaError::Fault));
        let read_only = DmaMapping {
            write: false,
            ..rw(0x1000, 0x4000, ro)
        };
        assert_eq!(t.map(read_only), Ok(()));
        assert!(t.translate(0x1000, 8, false).is_some());
    }

    #[test]
    fn shared_memory_stays_pinned_and_unmapped_private_memory_is_gone() {
        let shared = anon(
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        );
        let private = anon(
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        );
        let mut t = DmaTable::default();
        t.map(rw(0x10_0000, 0x4000, shared)).unwrap();
        t.map(rw(0x20_0000, 0x4000, private)).unwrap();
        let alias = t.translate(0x10_0000, 8, true).unwrap();
        assert_ne!(alias, shared, "DMA goes through barmap's second mapping");
        // SAFETY: writes 8 bytes into the test's own shared mapping, then
        // reads them through the alias of the same pages.
        unsafe {
            *(shared as *mut u64) = 0x5eed;
            assert_eq!(*(alias as *const u64), 0x5eed);
            libc::munmap(shared as *mut libc::c_void, 0x4000);
            libc::munmap(private as *mut libc::c_void, 0x4000);
        }
        process_unmapped(shared as usize, 0x4000);
        process_unmapped(private as usize, 0x4000);
        assert_eq!(
            t.translate(0x10_0000, 8, false),
            Some(alias),
            "the program's unmap leaves the pinned pages"
        );
        // SAFETY: the alias is mapped until the DMA unmap.
        assert_eq!(unsafe { *(alias as *const u64) }, 0x5eed);
        assert_eq!(t.translate(0x20_0000, 8, true), None);
        assert!(t.is_gone(0x20_0000, 8), "private memory is gone");
        assert_eq!(t.unmap(0, 1 << 30, true), Ok(0x8000));
    }
}
