//! Operations resolved against the model's state: the concrete targets
//! that the system under test runs and the model predicts, and the state of
//! each mapping's pages.

use serde::Serialize;

use crate::op::{Advice, ProtOp, Toggle};

/// Where a page of a mapping's view stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Still a view of the device at this BAR offset.
    Live {
        /// BAR offset of the page.
        off: u64,
    },
    /// Anonymous memory the program mapped where the mapping was cut.
    Foreign,
    /// The part an mremap grew: never device memory (SIGBUS).
    Grown,
}

/// One page of a view.
#[derive(Debug, Clone, Copy)]
pub struct PageState {
    /// What is mapped there.
    pub kind: Kind,
    /// Its protection.
    pub prot: ProtOp,
    /// Whether its vma is `VM_LOCKED`.
    pub locked: bool,
    /// Locked by `mlock` (populated, not just lock-on-fault).
    pub mlocked: bool,
}

/// A `Mapping` as the model sees it.
#[derive(Debug, Clone)]
pub struct MapModel {
    /// Unique id (the SUT's key).
    pub uid: u64,
    /// BAR index.
    pub region: u32,
    /// BAR offset of the first byte.
    pub offset: u64,
    /// `Mapping::len` (the original length).
    pub len: usize,
    /// Made with `Prot::ReadWrite`.
    pub writable: bool,
    /// The pages of the view (longer than `len` after a grow).
    pub pages: Vec<PageState>,
    /// The view was moved by mremap (it no longer starts at `addr()`).
    pub moved: bool,
    /// The view is more than one vma (partial mprotect/mlock, holes).
    pub split: bool,
}

/// A touch of one thread: view page, word, value to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct T1 {
    /// Page of the view.
    pub page: usize,
    /// Word in the page.
    pub word: usize,
    /// Value to write, or a read.
    pub write: Option<u64>,
}

/// What parent threads do around a multi-thread operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ThreadMode {
    /// Nothing else.
    Plain,
    /// The main thread revokes and restores memory meanwhile.
    Toggle {
        /// How.
        how: Toggle,
        /// Off/on rounds.
        toggles: u8,
        /// Final state.
        end_on: bool,
        /// COMMAND values for `Toggle::Command`: off, on.
        command: (u16, u16),
    },
    /// The main thread signals every thread meanwhile.
    Signals {
        /// Rounds.
        rounds: u8,
    },
    /// The main thread forks meanwhile.
    Fork(ChildPlan),
}

/// A forked child's action, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ChildPlan {
    /// Touch a view word.
    Touch {
        /// Mapping.
        uid: u64,
        /// Page of the view.
        page: usize,
        /// Word.
        word: usize,
        /// Write this value, or read.
        write: Option<u64>,
    },
    /// `Device::map(region, offset, len, Prot::Read)`.
    Map {
        /// BAR.
        region: u32,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// `Device::reset`.
    Reset,
    /// A config write of COMMAND.
    WriteCommand,
    /// `Mapping::unmap(0, PAGE)`.
    Unmap {
        /// Mapping.
        uid: u64,
    },
    /// Drop every barmap object.
    DropAll,
}

/// How a [`Plan::MapChurn`] thread unmaps its window at the end of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ChurnUnmap {
    /// libc `munmap` of the whole view (an UNMAP event), then the
    /// `Mapping` is dropped with nothing left to undo.
    Munmap,
    /// libc `munmap` of the first page, then of the rest (two events).
    MunmapHalves,
    /// Dropping the `Mapping`: barmap's own unmap (no event).
    Drop,
}

/// One round of one [`Plan::MapChurn`] thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChurnRound {
    /// The word written and read back in every page of the window.
    pub word: usize,
    /// Per page, the value written.
    pub values: Vec<u64>,
    /// How the window is unmapped.
    pub unmap: ChurnUnmap,
}

/// An operation resolved against the state: concrete targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Plan {
    /// `Device::map`; `uid` names the mapping if it succeeds.
    Map {
        /// BAR.
        region: u32,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Writable.
        write: bool,
        /// Id of the new mapping.
        uid: u64,
    },
    /// Drop a mapping.
    DropMapping {
        /// Mapping.
        uid: u64,
    },
    /// `Mapping::unmap(offset, len)`.
    Unmap {
        /// Mapping.
        uid: u64,
        /// Offset.
        offset: usize,
        /// Length.
        len: usize,
    },
    /// `Mapping::is_mapped(offset)`.
    IsMapped {
        /// Mapping.
        uid: u64,
        /// Offset.
        offset: usize,
    },
    /// libc munmap of view pages, then foreign memory there.
    Munmap {
        /// Mapping.
        uid: u64,
        /// First page.
        page: usize,
        /// Pages.
        pages: usize,
    },
    /// MAP_FIXED anonymous memory over view pages.
    MapFixedOver {
        /// Mapping.
        uid: u64,
        /// First page.
        page: usize,
        /// Pages.
        pages: usize,
    },
    /// mremap grow by `extra` pages, moved to a fresh range.
    MremapGrow {
        /// Mapping.
        uid: u64,
        /// Extra pages.
        extra: usize,
    },
    /// mremap shrink in place to `keep` pages (foreign memory in the tail).
    MremapShrink {
        /// Mapping.
        uid: u64,
        /// Pages kept.
        keep: usize,
    },
    /// mremap move to a fresh range.
    MremapMove {
        /// Mapping.
        uid: u64,
    },
    /// mprotect of view pages.
    Mprotect {
        /// Mapping.
        uid: u64,
        /// First page.
        page: usize,
        /// Pages.
        pages: usize,
        /// Protection.
        prot: ProtOp,
    },
    /// madvise of view pages.
    Madvise {
        /// Mapping.
        uid: u64,
        /// First page.
        page: usize,
        /// Pages.
        pages: usize,
        /// Advice.
        advice: Advice,
    },
    /// mlock/munlock of view pages.
    Mlock {
        /// Mapping.
        uid: u64,
        /// First page.
        page: usize,
        /// Pages.
        pages: usize,
        /// munlock.
        unlock: bool,
    },
    /// One touch.
    Touch {
        /// Mapping.
        uid: u64,
        /// The touch.
        t: T1,
        /// Through `Mapping::touch_u64`/`touch_write_u64`.
        api: bool,
    },
    /// `Mapping::try_read`/`try_write` of one word.
    TryAccess {
        /// Mapping.
        uid: u64,
        /// The access.
        t: T1,
    },
    /// Threads touch (each its own words) while the main thread does
    /// `mode`; `finals` are one more touch per thread after it.
    Threads {
        /// Mapping touched, if any.
        uid: Option<u64>,
        /// Per thread, its touches.
        touches: Vec<Vec<T1>>,
        /// Per thread, a touch after the main thread is done.
        finals: Vec<T1>,
        /// The main thread's part.
        mode: ThreadMode,
    },
    /// `set_memory_enabled`.
    SetMemory {
        /// Enable.
        on: bool,
    },
    /// `write_config(offset, data)`.
    WriteConfig {
        /// Offset.
        offset: u64,
        /// Bytes.
        data: Vec<u8>,
    },
    /// `command()` and `read_config(0, 4)`.
    ReadCommand,
    /// `set_power_state`.
    Power {
        /// D3hot.
        d3: bool,
    },
    /// `reset()`.
    Reset,
    /// Drop the device.
    DropDevice,
    /// Drop everything, build a new device.
    Rebuild,
    /// `read_region`.
    RegionRead {
        /// BAR.
        region: u32,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// `write_region`.
    RegionWrite {
        /// BAR.
        region: u32,
        /// Offset.
        offset: u64,
        /// Words (the length is 8 per word).
        data: Vec<u64>,
    },
    /// Region access with a view as the buffer.
    RegionViaMapping {
        /// `read_region_raw` into the view (else `write_region_raw` from it).
        read: bool,
        /// BAR.
        region: u32,
        /// BAR offset.
        offset: u64,
        /// Mapping of the buffer.
        uid: u64,
        /// Page of the view.
        page: usize,
        /// First word in the page.
        word: usize,
        /// Words.
        words: usize,
    },
    /// `mapping_count()`.
    MappingCount,
    /// Threads at once, each looping over its rounds: `Device::map` of
    /// its window of BAR2 (read-write, at an address the kernel chooses),
    /// a write then a read of `word` in every page, the unmap.
    MapChurn {
        /// Per thread, the BAR2 offset of its window.
        windows: Vec<u64>,
        /// Window length in pages.
        pages: usize,
        /// Per thread, its rounds.
        rounds: Vec<Vec<ChurnRound>>,
    },
}
