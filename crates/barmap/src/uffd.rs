//! The real backend: userfaultfd over memfd-backed MAP_SHARED views.
//!
//! A thin layer, one function per ioctl, each returning the errno; the unsafe
//! parts are the `ioctl`, `read` and `mmap` calls, each in a small function
//! that says why it is sound. [`UffdMm`] implements the fault path's [`Mm`]
//! verbs with them:
//!
//! | verb     | userfaultfd                                   |
//! |----------|-----------------------------------------------|
//! | remap    | commit, UFFDIO_CONTINUE over the range, EEXIST stops |
//! | insert   | commit, UFFDIO_CONTINUE up to a page that EEXISTs |
//! | poison   | UFFDIO_POISON (the toucher gets SIGBUS)        |
//! | zap      | MADV_DONTNEED (also clears poison markers)     |
//! | wake     | UFFDIO_WAKE                                   |
//! | unmap    | mprotect(PROT_NONE), UFFDIO_UNREGISTER, munmap |
//! | next_resident | the store's page map                     |
//!
//! "Commit" allocates the device memory behind the range in the BAR's
//! memfd ([`crate::memory::Store::commit`]) unless it is already: BAR
//! memory is committed on demand, and UFFDIO_CONTINUE cannot map a hole
//! (EFAULT).
//!
//! The userfaultfd also reports what the process itself does to a
//! registered range (`UFFD_FEATURE_EVENT_UNMAP` and `EVENT_REMAP`): a
//! munmap, a `MAP_FIXED` mapping over it, an mremap that shrinks or moves
//! it. The process's call waits until the event is read, and the service
//! hands it to the core ([`crate::fault::Core::forget`],
//! [`crate::fault::Core::moved`]) before it serves anything else, so barmap
//! never zaps or unmaps an address range that is no longer the device's.

use std::fs::OpenOptions;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use linux_raw_sys::general as sys;

use crate::error::Error;
use std::sync::Arc;

use crate::memory::Store;
use crate::mm::{Fault, Inserted, MapInfo, Mm, MmError, SpaceId, PAGE_SIZE};
use crate::space::SpaceShared;

// UFFDIO_POISON = _IOWR(0xAA, _UFFDIO_POISON, struct uffdio_poison); not in
// linux-raw-sys's ioctl table yet.
const UFFDIO_POISON: u32 =
    0xC000_AA00 | ((std::mem::size_of::<sys::uffdio_poison>() as u32) << 16) | sys::_UFFDIO_POISON;
// USERFAULTFD_IOC_NEW = _IO(0xAA, 0x00), on /dev/userfaultfd.
const USERFAULTFD_IOC_NEW: u32 = 0xAA00;
const UFFD_EVENT_PAGEFAULT: u8 = sys::UFFD_EVENT_PAGEFAULT as u8;
const UFFD_EVENT_REMAP: u8 = sys::UFFD_EVENT_REMAP as u8;
const UFFD_EVENT_UNMAP: u8 = sys::UFFD_EVENT_UNMAP as u8;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;

/// Features barmap needs from UFFDIO_API: MINOR faults on shmem, the
/// faulting thread's id, poison markers, and the process's own munmap and
/// mremap of registered ranges (not `EVENT_REMOVE`: it would turn barmap's
/// own zaps into events, and not `EVENT_FORK`: see ARCHITECTURE.md).
const REQUIRED_FEATURES: u64 = (sys::UFFD_FEATURE_MINOR_SHMEM
    | sys::UFFD_FEATURE_THREAD_ID
    | sys::UFFD_FEATURE_POISON
    | sys::UFFD_FEATURE_EVENT_UNMAP
    | sys::UFFD_FEATURE_EVENT_REMAP) as u64;
/// Features barmap asks for if the kernel has them: MINOR mode on hugetlbfs,
/// needed only by BARs backed by huge pages.
const OPTIONAL_FEATURES: u64 = sys::UFFD_FEATURE_MINOR_HUGETLBFS as u64;

/// How the userfaultfd was obtained, which decides what works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UffdAccess {
    /// The userfaultfd syscall, handling user and kernel faults (root, or
    /// vm.unprivileged_userfaultfd = 1).
    Syscall,
    /// /dev/userfaultfd (accessible to this user), handling all faults.
    DevNode,
    /// UFFD_USER_MODE_ONLY: only user-mode faults reach barmap; a kernel
    /// access (the checked probe, a read() into a mapping) of a page not yet
    /// mapped fails with EFAULT instead of being served.
    UserModeOnly,
}

/// A userfaultfd, API-negotiated.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    access: UffdAccess,
    /// The features enabled on this userfaultfd.
    features: u64,
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Issues `request` on `fd` with `arg`.
fn ioctl<T>(fd: RawFd, request: u32, arg: &mut T) -> Result<(), i32> {
    // SAFETY: every caller passes the struct type that `request` encodes, so
    // the kernel reads and writes exactly `size_of::<T>()` bytes of `arg`,
    // which is a valid exclusive reference for the call's duration.
    let rc = unsafe { libc::ioctl(fd, request as _, arg as *mut T) };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn uffd_range(range: &Range<usize>) -> sys::uffdio_range {
    sys::uffdio_range {
        start: range.start as u64,
        len: (range.end - range.start) as u64,
    }
}

impl Uffd {
    /// Opens a userfaultfd for this process: the syscall first, then
    /// /dev/userfaultfd, then UFFD_USER_MODE_ONLY. Fails with
    /// [`Error::UffdUnavailable`] naming the knobs when none works.
    pub fn open() -> Result<Uffd, Error> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let mut tried = Vec::new();
        // SAFETY: the userfaultfd syscall takes one int of flags and returns
        // a new fd or -1; the fd is owned by us from here on.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd >= 0 {
            // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            return Self::negotiate(fd, UffdAccess::Syscall);
        }
        tried.push(format!("userfaultfd(): {}", io::Error::last_os_error()));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/userfaultfd")
        {
            Ok(dev) => {
                // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its argument
                // value (not a pointer) and returns a new fd or -1.
                let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
                if fd >= 0 {
                    // SAFETY: a fresh fd returned by the kernel.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    return Self::negotiate(fd, UffdAccess::DevNode);
                }
                tried.push(format!("/dev/userfaultfd: {}", io::Error::last_os_error()));
            }
            Err(e) => tried.push(format!("/dev/userfaultfd: {e}")),
        }
        let user_only = flags | sys::UFFD_USER_MODE_ONLY as i32;
        // SAFETY: as above.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, user_only) };
        if fd >= 0 {
            // SAFETY: a fresh fd returned by the kernel.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            return Self::negotiate(fd, UffdAccess::UserModeOnly);
        }
        tried.push(format!(
            "userfaultfd(UFFD_USER_MODE_ONLY): {}",
            io::Error::last_os_error()
        ));
        Err(Error::UffdUnavailable(tried.join("; ")))
    }

    /// UFFDIO_API with the required and optional features; if the kernel
    /// refuses an optional one (EINVAL, which leaves the fd un-negotiated),
    /// again with the required ones alone.
    fn negotiate(fd: OwnedFd, access: UffdAccess) -> Result<Uffd, Error> {
        let api = |features: u64| {
            let mut api = sys::uffdio_api {
                api: sys::UFFD_API as u64,
                features,
                ioctls: 0,
            };
            ioctl(fd.as_raw_fd(), linux_raw_sys::ioctl::UFFDIO_API, &mut api)
        };
        let features = match api(REQUIRED_FEATURES | OPTIONAL_FEATURES) {
            Ok(()) => Ok(REQUIRED_FEATURES | OPTIONAL_FEATURES),
            Err(libc::EINVAL) => api(REQUIRED_FEATURES).map(|()| REQUIRED_FEATURES),
            Err(e) => Err(e),
        }
        .map_err(|e| {
            Error::UffdUnavailable(format!(
                "UFFDIO_API with MINOR_SHMEM|THREAD_ID|POISON|EVENT_UNMAP|EVENT_REMAP: {} \
                 (kernel 6.6 or later needed)",
                io::Error::from_raw_os_error(e)
            ))
        })?;
        Ok(Uffd {
            fd,
            access,
            features,
        })
    }

    /// Opens a userfaultfd with `UFFD_USER_MODE_ONLY`, as an unprivileged
    /// process gets it on most distributions (for tests of that mode).
    pub fn open_user_mode_only() -> Result<Uffd, Error> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | sys::UFFD_USER_MODE_ONLY as i32;
        // SAFETY: as in `open`.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(Error::UffdUnavailable(format!(
                "userfaultfd(UFFD_USER_MODE_ONLY): {}",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: a fresh fd returned by the kernel.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Self::negotiate(fd, UffdAccess::UserModeOnly)
    }

    /// Whether MINOR mode works on hugetlbfs (UFFD_FEATURE_MINOR_HUGETLBFS
    /// was granted): BARs backed by huge pages need it.
    pub fn minor_hugetlbfs(&self) -> bool {
        self.features & sys::UFFD_FEATURE_MINOR_HUGETLBFS as u64 != 0
    }

    /// How this userfaultfd was obtained.
    pub fn access(&self) -> UffdAccess {
        self.access
    }

    /// The raw fd, for polling.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Registers `range` in MISSING and MINOR mode (on a hugetlbfs view,
    /// `range` must be huge-page aligned).
    pub fn register(&self, range: Range<usize>) -> Result<(), i32> {
        let mut reg = sys::uffdio_register {
            range: uffd_range(&range),
            mode: (sys::UFFDIO_REGISTER_MODE_MISSING | sys::UFFDIO_REGISTER_MODE_MINOR) as u64,
            ioctls: 0,
        };
        ioctl(self.raw(), linux_raw_sys::ioctl::UFFDIO_REGISTER, &mut reg)?;
        let need =
            1u64 << sys::_UFFDIO_CONTINUE | 1u64 << sys::_UFFDIO_POISON | 1u64 << sys::_UFFDIO_WAKE;
        if reg.ioctls & need != need {
            let mut r = uffd_range(&range);
            let _ = ioctl(self.raw(), linux_raw_sys::ioctl::UFFDIO_UNREGISTER, &mut r);
            return Err(libc::EOPNOTSUPP);
        }
        Ok(())
    }

    /// UFFDIO_UNREGISTER of `range`: its faults stop reaching barmap and
    /// threads waiting on them are woken.
    pub fn unregister(&self, range: Range<usize>) -> Result<(), i32> {
        let mut r = uffd_range(&range);
        ioctl(self.raw(), linux_raw_sys::ioctl::UFFDIO_UNREGISTER, &mut r)
    }

    /// UFFDIO_CONTINUE over `range`: Ok(()) if all mapped; on failure the
    /// errno and the bytes mapped before it.
    pub fn continue_range(&self, range: Range<usize>) -> Result<(), (i32, usize)> {
        let mut arg = sys::uffdio_continue {
            range: uffd_range(&range),
            mode: 0,
            mapped: 0,
        };
        ioctl(self.raw(), linux_raw_sys::ioctl::UFFDIO_CONTINUE, &mut arg)
            .map_err(|e| (e, arg.mapped.max(0) as usize))
    }

    /// Whether an unmap or remap event of the process is still unread: the
    /// kernel counts such events from the moment the munmap or mremap
    /// starts (`userfaultfd_unmap_prep`, `mremap_userfaultfd_prep`, under
    /// mmap_lock) until a reader has read them (`mmap_changing`), and
    /// refuses UFFDIO_CONTINUE with EAGAIN meanwhile before it looks at the
    /// range. A zero-length CONTINUE therefore answers EAGAIN while one is
    /// pending and EINVAL otherwise, and maps nothing either way.
    pub fn events_pending(&self) -> bool {
        let mut arg = sys::uffdio_continue {
            range: sys::uffdio_range { start: 0, len: 0 },
            mode: 0,
            mapped: 0,
        };
        matches!(
            ioctl(self.raw(), linux_raw_sys::ioctl::UFFDIO_CONTINUE, &mut arg),
            Err(libc::EAGAIN)
        )
    }

    /// UFFDIO_POISON over `range`.
    pub fn poison_range(&self, range: Range<usize>) -> Result<(), (i32, usize)> {
        let mut arg = sys::uffdio_poison {
            range: uffd_range(&range),
            mode: 0,
            updated: 0,
        };
        ioctl(self.raw(), UFFDIO_POISON, &mut arg).map_err(|e| (e, arg.updated.max(0) as usize))
    }

    /// UFFDIO_WAKE over `range`.
    pub fn wake(&self, range: Range<usize>) {
        let mut r = uffd_range(&range);
        if let Err(e) = ioctl(self.raw(), linux_raw_sys::ioctl::UFFDIO_WAKE, &mut r) {
            tracing::warn!(errno = e, "UFFDIO_WAKE failed");
        }
    }

    /// Reads pending events into `out`; returns how many (0 when none is
    /// pending). Page faults are reported for `space`.
    pub fn read_events(&self, space: SpaceId, out: &mut Vec<Event>) -> Result<usize, i32> {
        const MSG: usize = std::mem::size_of::<sys::uffd_msg>();
        let mut buf = [0u8; MSG * 32];
        // SAFETY: `buf` is valid for writes of its full length.
        let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            return if e == libc::EAGAIN { Ok(0) } else { Err(e) };
        }
        let before = out.len();
        let word = |msg: &[u8], at: usize| u64::from_ne_bytes(msg[at..at + 8].try_into().unwrap());
        for msg in buf[..n as usize].chunks_exact(MSG) {
            // struct uffd_msg: event (u8) at 0, the event's arguments from 8:
            // pagefault {flags, address, ptid (u32)}, remap {from, to, len},
            // unmap {start, end}.
            match msg[0] {
                UFFD_EVENT_PAGEFAULT => out.push(Event::Fault(Fault {
                    space,
                    addr: word(msg, 16) as usize,
                    tid: u32::from_ne_bytes(msg[24..28].try_into().unwrap()),
                    write: word(msg, 8) & UFFD_PAGEFAULT_FLAG_WRITE != 0,
                })),
                UFFD_EVENT_UNMAP => out.push(Event::Unmap {
                    space,
                    range: word(msg, 8) as usize..word(msg, 16) as usize,
                }),
                UFFD_EVENT_REMAP => out.push(Event::Remap {
                    space,
                    from: word(msg, 8) as usize,
                    to: word(msg, 16) as usize,
                    len: word(msg, 24) as usize,
                }),
                other => tracing::warn!(event = other, "unexpected userfaultfd event"),
            }
        }
        Ok(out.len() - before)
    }
}

/// An event read from a userfaultfd.
#[derive(Debug, Clone)]
pub enum Event {
    /// A thread touched a registered page that is not mapped.
    Fault(Fault),
    /// The process unmapped `range` (munmap, `MAP_FIXED` over it, the tail
    /// of a shrinking mremap).
    Unmap {
        /// Address space.
        space: SpaceId,
        /// The unmapped addresses.
        range: Range<usize>,
    },
    /// The process moved `len` bytes at `from` to `to` (mremap).
    Remap {
        /// Address space.
        space: SpaceId,
        /// Old start.
        from: usize,
        /// New start.
        to: usize,
        /// Bytes moved (the old length; a grown part is not the device's).
        len: usize,
    },
}

/// The fault path's [`Mm`] for one device, over its address space's
/// userfaultfd.
///
/// Every device of an [`crate::space::AddressSpace`] has one; they share the
/// space's userfaultfd, its event reader and its routes from address ranges
/// to devices, which [`Mm::track`] keeps equal to the device's registry.
#[derive(Debug)]
pub struct UffdMm {
    space: Arc<SpaceShared>,
    /// This device's key in the space's routes.
    key: u64,
    /// The core this backend serves, for the routes (set once, when the
    /// device joins its space).
    core: std::sync::OnceLock<std::sync::Weak<crate::fault::Core<UffdMm>>>,
    /// Per BAR index: the store its mappings view and the offset of the
    /// BAR's range in it; `None` for a BAR whose memory is all allocated
    /// up front (huge pages) or that the device does not have.
    stores: Vec<Option<(Arc<Store>, u64)>>,
}

impl UffdMm {
    /// A backend for a new device of `space`.
    /// `stores`: per BAR index, the store its mappings view and the BAR's
    /// offset in it (see [`UffdMm`]).
    pub(crate) fn new(space: Arc<SpaceShared>, stores: Vec<Option<(Arc<Store>, u64)>>) -> Self {
        let key = space.new_device_key();
        UffdMm {
            space,
            key,
            core: std::sync::OnceLock::new(),
            stores,
        }
    }

    /// The store behind `map` and the file range behind `range` of it.
    fn backing(&self, map: &MapInfo, range: &Range<usize>) -> Option<(&Store, Range<u64>)> {
        let (store, base) = self.stores.get(map.region as usize)?.as_ref()?;
        let at = base + map.offset_of(range.start);
        Some((store, at..at + (range.end - range.start) as u64))
    }

    /// Commits the device memory behind `range` of `map`.
    fn commit(&self, map: &MapInfo, range: &Range<usize>) -> Result<(), MmError> {
        let Some((store, file)) = self.backing(map, range) else {
            return Ok(());
        };
        store.commit(file).map_err(|e| match e {
            Error::MemoryLimit { .. } => MmError::OverLimit,
            Error::Os { errno, .. } => MmError::Os(errno),
            _ => MmError::Os(libc::EIO),
        })
    }

    /// Commits, then fills. A hole where the store counts committed memory
    /// (the process punched it through a mapping with `MADV_REMOVE`) is
    /// EFAULT: allocated again once, uncharged.
    fn commit_and_fill(&self, map: &MapInfo, range: Range<usize>) -> Result<Inserted, MmError> {
        self.commit(map, &range)?;
        match self.fill(range.clone(), map.page_size) {
            Err(MmError::Os(libc::EFAULT)) => {
                if let Some((store, file)) = self.backing(map, &range) {
                    store.recommit(file).map_err(MmError::Os)?;
                }
                self.fill(range, map.page_size)
            }
            other => other,
        }
    }

    pub(crate) fn set_core(&self, core: std::sync::Weak<crate::fault::Core<UffdMm>>) {
        let _ = self.core.set(core);
    }

    /// The device's key in its address space.
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// The userfaultfd.
    pub fn uffd(&self) -> &Uffd {
        self.space.uffd()
    }

    /// CONTINUE over `range`, retrying partial progress, until done or a
    /// present page stops it. One UFFDIO_CONTINUE cannot cross a vma
    /// boundary (ENOENT), and the process may have split the mapping (an
    /// mprotect of part of it): on ENOENT the range is filled in halves.
    fn fill(&self, range: Range<usize>, unit: usize) -> Result<Inserted, MmError> {
        let mut at = range.start;
        while at < range.end {
            match self.uffd().continue_range(at..range.end) {
                Ok(()) => at = range.end,
                // Partial progress; the next call says why it stopped.
                Err((libc::EAGAIN, mapped)) if mapped > 0 => at += mapped,
                // The address space is changing (an mremap in flight): let
                // the thread retry once it is done.
                Err((libc::EAGAIN, _)) if at == range.start => return Err(MmError::Again),
                Err((libc::EEXIST, _)) => {
                    return Ok(Inserted {
                        mapped: (at - range.start) / PAGE_SIZE,
                        stopped_at_present: true,
                    })
                }
                Err((libc::ENOENT, _)) if range.end - at > unit => {
                    let mid = at + (range.end - at) / 2 / unit * unit;
                    let first = match self.fill(at..mid, unit) {
                        Err(MmError::Gone) if at == range.start => return Err(MmError::Gone),
                        Err(MmError::Gone) | Err(MmError::Again) => {
                            return Ok(Inserted {
                                mapped: (at - range.start) / PAGE_SIZE,
                                stopped_at_present: true,
                            })
                        }
                        other => other?,
                    };
                    let done = (at - range.start) / PAGE_SIZE + first.mapped;
                    if first.stopped_at_present {
                        return Ok(Inserted {
                            mapped: done,
                            stopped_at_present: true,
                        });
                    }
                    return match self.fill(mid..range.end, unit) {
                        Ok(second) => Ok(Inserted {
                            mapped: done + second.mapped,
                            stopped_at_present: second.stopped_at_present,
                        }),
                        // The rest is not fillable now: report a stop, so
                        // that a fault behind it is served on its own.
                        Err(MmError::Gone) | Err(MmError::Again) => Ok(Inserted {
                            mapped: done,
                            stopped_at_present: true,
                        }),
                        Err(e) => Err(e),
                    };
                }
                Err((libc::ENOENT, _)) if at == range.start => return Err(MmError::Gone),
                Err((libc::ENOENT, _)) | Err((libc::EAGAIN, _)) => {
                    return Ok(Inserted {
                        mapped: (at - range.start) / PAGE_SIZE,
                        stopped_at_present: true,
                    })
                }
                Err((e, _)) => return Err(MmError::Os(e)),
            }
        }
        Ok(Inserted {
            mapped: (range.end - range.start) / PAGE_SIZE,
            stopped_at_present: false,
        })
    }
}

impl Mm for UffdMm {
    fn remap(&self, map: &MapInfo, range: Range<usize>) -> Result<(), MmError> {
        let unit = map.page_size;
        // All of it, before anything is mapped: a whole-mapping fill past
        // the limit maps nothing.
        self.commit(map, &range)?;
        let mut at = range.start;
        while at < range.end {
            let ins = self.commit_and_fill(map, at..range.end)?;
            if !ins.stopped_at_present {
                return Ok(());
            }
            // `fill` stops at a present page, and also where the rest could
            // not be filled in one piece (a vma boundary, or a part the
            // process is unmapping): one unit alone tells which (a present
            // page, or Gone/Again from `?`).
            let stop = at + ins.mapped * PAGE_SIZE;
            if self
                .commit_and_fill(map, stop..stop + unit)?
                .stopped_at_present
            {
                return Err(MmError::Exists {
                    done: (stop - range.start) / PAGE_SIZE,
                });
            }
            at = stop + unit;
        }
        Ok(())
    }

    fn insert(&self, map: &MapInfo, range: Range<usize>) -> Result<Inserted, MmError> {
        self.commit_and_fill(map, range)
    }

    fn next_resident(&self, map: &MapInfo, from: usize) -> Option<Range<usize>> {
        let from = from.max(map.start);
        if from >= map.end() {
            return None;
        }
        let Some((store, file)) = self.backing(map, &(from..map.end())) else {
            return Some(from..map.end()); // allocated up front
        };
        // A run longer than a chunk is reported a chunk at a time: the
        // prefault walk asks once per chunk, and a search to the end of a
        // fully committed BAR on every ask costs more than the fill.
        let run = store.next_committed_within(file.clone(), crate::mm::HUGE_SIZE as u64)?;
        // Back to addresses, in whole units of the mapping.
        let unit = map.page_size as u64;
        let start = from + (run.start - file.start) as usize;
        let end = from + (run.end - file.start).next_multiple_of(unit) as usize;
        Some(map.unit_at(start).start..end.min(map.end()))
    }

    fn poison(&self, _map: &MapInfo, range: Range<usize>) -> Result<(), MmError> {
        let mut at = range.start;
        while at < range.end {
            match self.uffd().poison_range(at..range.end) {
                Ok(()) => return Ok(()),
                Err((libc::EAGAIN, done)) if done > 0 => at += done,
                Err((libc::EEXIST, _)) => {
                    return Err(MmError::Exists {
                        done: (at - range.start) / PAGE_SIZE,
                    })
                }
                Err((libc::ENOENT, _)) => return Err(MmError::Gone),
                Err((e, _)) => return Err(MmError::Os(e)),
            }
        }
        Ok(())
    }

    fn zap(&self, _map: &MapInfo, range: Range<usize>) -> Result<(), MmError> {
        crate::os::zap(range).map_err(MmError::Os)
    }

    fn wake(&self, _space: SpaceId, range: Range<usize>) {
        self.uffd().wake(range)
    }

    fn unmap(&self, _map: &MapInfo, range: Range<usize>) -> Result<(), MmError> {
        // Inaccessible first (a touch from here on is SIGSEGV, as after the
        // munmap), then unregistered (waiting faults are woken and retry into
        // that SIGSEGV; no UNMAP event will make the munmap wait for the
        // service), then unmapped.
        crate::os::protect_none(range.clone()).map_err(MmError::Os)?;
        if let Err(e) = self.uffd().unregister(range.clone()) {
            tracing::warn!(errno = e, "UFFDIO_UNREGISTER before munmap failed");
        }
        crate::os::unmap(range).map_err(MmError::Os)
    }

    fn begin_long_fill(&self) -> bool {
        crate::service::raise_fill_priority() != crate::service::FillSched::Normal
    }

    fn end_long_fill(&self) {
        crate::service::restore_fill_priority();
    }

    fn quiesce(&self) {
        self.space.quiesce();
    }

    fn settle(&self) {
        self.space.settle();
    }

    fn with_events_held(&self, f: &mut dyn FnMut()) {
        self.space.with_events_held(f)
    }

    fn track(&self, _space: SpaceId, removed: Option<usize>, added: &[Range<usize>]) {
        let Some(core) = self.core.get() else {
            return; // not attached yet: nothing is mapped
        };
        self.space.track(self.key, core, removed, added);
    }

    fn poison_stray(&self, space: SpaceId, page: usize) -> bool {
        // Under the space's routes: no device of the space can start
        // tracking (and then register) `page` meanwhile. If another device
        // owns it, the fault was routed a moment before that device took
        // the range: wake it to retry there.
        let routes = self.space.routes_read();
        if routes.owner_of(page).is_some() {
            return false;
        }
        crate::mm::poison_unit(self, space, page)
    }
}

impl Drop for UffdMm {
    fn drop(&mut self) {
        self.space.detach(self.key);
    }
}
