//! The operations the explorer performs, and their generation from a seed.
//!
//! An operation names its targets by raw numbers (a mapping slot, a page,
//! a word), which the model resolves against the state when the operation
//! runs ([`crate::model::Model::plan`]): any subsequence of a generated
//! sequence is itself a valid sequence, which is what shrinking needs.

use serde::Serialize;

use crate::model::Model;
use crate::rng::Rng;

/// Protection for `mprotect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProtOp {
    /// PROT_NONE.
    None,
    /// PROT_READ.
    Read,
    /// PROT_READ | PROT_WRITE.
    ReadWrite,
}

/// Advice for `madvise`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Advice {
    /// MADV_DONTNEED.
    DontNeed,
    /// MADV_REMOVE.
    Remove,
    /// MADV_COLD.
    Cold,
    /// MADV_DONTNEED_LOCKED.
    DontNeedLocked,
}

impl Advice {
    /// The `madvise` constant.
    pub fn raw(self) -> i32 {
        match self {
            Advice::DontNeed => libc::MADV_DONTNEED,
            Advice::Remove => libc::MADV_REMOVE,
            Advice::Cold => libc::MADV_COLD,
            Advice::DontNeedLocked => libc::MADV_DONTNEED_LOCKED,
        }
    }
}

/// How a toggle-while-touching operation revokes and restores memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Toggle {
    /// `set_memory_enabled(false/true)`.
    Memory,
    /// Config writes of COMMAND.
    Command,
    /// `set_power_state(D3hot/D0)`.
    Power,
    /// `reset()` (memory stays as it is).
    Reset,
}

/// What a forked child does before it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ChildAct {
    /// Touches a word of a mapping's view (a write if `write`).
    Touch {
        /// Mapping slot.
        slot: u32,
        /// Page of the view.
        page: u32,
        /// Word column (see [`word_of`]).
        col: u8,
        /// Write instead of read.
        write: bool,
    },
    /// `Device::map` (read-only) of a valid or invalid request.
    Map {
        /// BAR index (possibly one the device lacks).
        region: u8,
        /// Page selector.
        page: u32,
    },
    /// `Device::reset`.
    Reset,
    /// A config write of COMMAND.
    WriteCommand,
    /// `Mapping::unmap` of a mapping's first page.
    Unmap {
        /// Mapping slot.
        slot: u32,
    },
    /// Drops the child's copies of every mapping and of the device.
    DropAll,
}

/// One step of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Op {
    /// `Device::map`; `flaw` 0 is a well-formed request, 1 zero length,
    /// 2 an unaligned offset, 3 an unaligned length, 4 past the end.
    Map {
        /// BAR index: 0, 2 (most often), 4, 5, or one the device lacks.
        region: u8,
        /// First page selector.
        page: u32,
        /// Length selector (pages).
        pages: u32,
        /// A writable mapping.
        write: bool,
        /// Deliberate defect of the request.
        flaw: u8,
    },
    /// Drops a `Mapping`.
    DropMapping {
        /// Mapping slot.
        slot: u32,
    },
    /// `Mapping::unmap`; `flaw` 1 zero length, 2 unaligned, 3 past the end.
    Unmap {
        /// Mapping slot.
        slot: u32,
        /// First page.
        page: u32,
        /// Pages.
        pages: u32,
        /// Deliberate defect.
        flaw: u8,
    },
    /// `Mapping::is_mapped`.
    IsMapped {
        /// Mapping slot.
        slot: u32,
        /// Page.
        page: u32,
    },
    /// libc `munmap` of part of a mapping (foreign memory is then mapped
    /// at the hole, and must never be touched by barmap).
    Munmap {
        /// Mapping slot.
        slot: u32,
        /// First page.
        page: u32,
        /// Pages.
        pages: u32,
    },
    /// `mmap(MAP_FIXED)` of anonymous memory over part of a mapping.
    MapFixedOver {
        /// Mapping slot.
        slot: u32,
        /// First page.
        page: u32,
        /// Pages.
        pages: u32,
    },
    /// `mremap` grow (moved to a fresh range).
    MremapGrow {
        /// Mapping slot.
        slot: u32,
        /// Extra pages selector.
        extra: u32,
    },
    /// `mremap` shrink in place.
    MremapShrink {
        /// Mapping slot.
        slot: u32,
        /// Pages kept selector.
        keep: u32,
    },
    /// `mremap` move to a fresh range.
    MremapMove {
        /// Mapping slot.
        slot: u32,
    },
    /// `mprotect` of the whole view (`pages` 0) or of part of it.
    Mprotect {
        /// Mapping slot.
        slot: u32,
        /// First page.
        page: u32,
        /// Pages (0: the whole view).
        pages: u32,
        /// New protection.
        prot: ProtOp,
    },
    /// `madvise`.
    Madvise {
        /// Mapping slot.
        slot: u32,
        /// First page.
        page: u32,
        /// Pages.
        pages: u32,
        /// Advice.
        advice: Advice,
    },
    /// `mlock` or `munlock`.
    Mlock {
        /// Mapping slot.
        slot: u32,
        /// First page.
        page: u32,
        /// Pages.
        pages: u32,
        /// munlock instead.
        unlock: bool,
    },
    /// One touch of a word: through the fault-tolerant accessors on the
    /// raw address, or (`api`) through `Mapping::touch_u64`.
    Touch {
        /// Mapping slot.
        slot: u32,
        /// Page of the view.
        page: u32,
        /// Word column (see [`word_of`]).
        col: u8,
        /// A value to write, or a read.
        write: Option<u64>,
        /// Through the `Mapping` accessors.
        api: bool,
    },
    /// `Mapping::try_read` / `try_write` of one word.
    TryAccess {
        /// Mapping slot.
        slot: u32,
        /// Page.
        page: u32,
        /// Word column.
        col: u8,
        /// A value to write, or a read.
        write: Option<u64>,
    },
    /// Several threads touch distinct words of one mapping at once.
    Concurrent {
        /// Mapping slot.
        slot: u32,
        /// Threads.
        threads: u8,
        /// Seed of the touches.
        seed: u64,
    },
    /// Threads read while memory is revoked and restored; ends enabled or
    /// disabled as `end_on` says (a reset toggle keeps the state).
    ToggleWhileTouching {
        /// Mapping slot.
        slot: u32,
        /// Threads.
        threads: u8,
        /// Seed of the touches.
        seed: u64,
        /// Off/on rounds.
        toggles: u8,
        /// How memory is revoked.
        how: Toggle,
        /// Final state.
        end_on: bool,
    },
    /// Signals to every thread of the process (optionally while threads
    /// touch a mapping).
    Signals {
        /// Mapping slot touched meanwhile, if any.
        slot: Option<u32>,
        /// Threads.
        threads: u8,
        /// Seed of the touches.
        seed: u64,
        /// Rounds of signals.
        rounds: u8,
    },
    /// fork: the child acts and reports through a pipe; optionally while
    /// threads of the parent touch a mapping.
    Fork {
        /// The child's action.
        child: ChildAct,
        /// A mapping slot touched by parent threads meanwhile.
        during: Option<u32>,
        /// Threads touching meanwhile.
        threads: u8,
        /// Seed of the touches.
        seed: u64,
    },
    /// `set_memory_enabled`.
    SetMemory {
        /// Enable.
        on: bool,
    },
    /// A config write; `flaw` 1 zero length, 2 past the header.
    WriteCommand {
        /// COMMAND's new value.
        value: u16,
        /// Write only the low byte.
        low_byte: bool,
        /// Deliberate defect.
        flaw: u8,
    },
    /// `Device::command` and the vendor/device id through `read_config`.
    ReadCommand,
    /// `set_power_state`.
    Power {
        /// D3hot, else D0.
        d3: bool,
    },
    /// `Device::reset`.
    Reset,
    /// Drops the device (its mappings stay, revoked for good).
    DropDevice,
    /// Drops every mapping and the device, and builds a fresh one.
    Rebuild,
    /// `read_region`; `flaw` 1 zero length, 2 past the end.
    RegionRead {
        /// Region selector.
        region: u8,
        /// Word offset selector.
        word: u32,
        /// Words.
        words: u16,
        /// Deliberate defect.
        flaw: u8,
    },
    /// `write_region`; see [`Op::RegionRead`].
    RegionWrite {
        /// Region selector.
        region: u8,
        /// Word offset selector.
        word: u32,
        /// Words.
        words: u16,
        /// Seed of the data.
        seed: u64,
        /// Deliberate defect.
        flaw: u8,
    },
    /// `read_region_raw` / `write_region_raw` with a mapping's view as the
    /// buffer (within one page).
    RegionViaMapping {
        /// Region read into the mapping (else written from it).
        read: bool,
        /// Region selector.
        region: u8,
        /// Region word offset selector.
        word: u32,
        /// Mapping slot of the buffer.
        slot: u32,
        /// Page of the buffer.
        page: u32,
        /// First word of the buffer in the page.
        at: u16,
        /// Words.
        words: u16,
    },
    /// `Device::mapping_count`.
    MappingCount,
    /// Several threads at once, each in a loop: map its own window of the
    /// memory BAR at an address the kernel chooses, write and read back
    /// every page, unmap it (libc munmap whole or in two halves, or
    /// barmap's own unmap). The kernel hands the addresses one thread just
    /// unmapped to the next thread's mapping, so the process's unmap
    /// events race new mappings at the same addresses.
    MapChurn {
        /// Threads (at least two run).
        threads: u8,
        /// Map/touch/unmap rounds per thread.
        rounds: u8,
        /// Window length selector (pages).
        pages: u32,
        /// Seed of the windows, the values and the ways of unmapping.
        seed: u64,
    },
    /// A step of the process mode ([`crate::procs`]).
    Proc(crate::procs::POp),
}

impl Op {
    /// The operation's kind, for per-kind counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Map { .. } => "map",
            Op::DropMapping { .. } => "drop_mapping",
            Op::Unmap { .. } => "unmap",
            Op::IsMapped { .. } => "is_mapped",
            Op::Munmap { .. } => "munmap",
            Op::MapFixedOver { .. } => "map_fixed_over",
            Op::MremapGrow { .. } => "mremap_grow",
            Op::MremapShrink { .. } => "mremap_shrink",
            Op::MremapMove { .. } => "mremap_move",
            Op::Mprotect { .. } => "mprotect",
            Op::Madvise { .. } => "madvise",
            Op::Mlock { .. } => "mlock",
            Op::Touch { .. } => "touch",
            Op::TryAccess { .. } => "try_access",
            Op::Concurrent { .. } => "concurrent_touch",
            Op::ToggleWhileTouching { .. } => "toggle_while_touching",
            Op::Signals { .. } => "signals",
            Op::Fork { .. } => "fork",
            Op::SetMemory { .. } => "set_memory",
            Op::WriteCommand { .. } => "write_command",
            Op::ReadCommand => "read_command",
            Op::Power { .. } => "power",
            Op::Reset => "reset",
            Op::DropDevice => "drop_device",
            Op::Rebuild => "rebuild",
            Op::RegionRead { .. } => "region_read",
            Op::RegionWrite { .. } => "region_write",
            Op::RegionViaMapping { .. } => "region_via_mapping",
            Op::MappingCount => "mapping_count",
            Op::MapChurn { .. } => "map_churn",
            Op::Proc(p) => p.kind(),
        }
    }
}

impl Op {
    /// Simpler variants of this operation for shrinking: the first mapping
    /// slot, the first page, one page, one thread, one toggle.
    pub fn simpler(&self) -> Vec<Op> {
        if let Op::Proc(p) = self {
            return p.simpler().into_iter().map(Op::Proc).collect();
        }
        let mut out = Vec::new();
        let mut push = |o: Op| {
            if &o != self && !out.contains(&o) {
                out.push(o);
            }
        };
        let mut v = self.clone();
        match &mut v {
            Op::DropMapping { slot }
            | Op::IsMapped { slot, .. }
            | Op::MremapGrow { slot, .. }
            | Op::MremapShrink { slot, .. }
            | Op::MremapMove { slot }
            | Op::Touch { slot, .. }
            | Op::TryAccess { slot, .. }
            | Op::RegionViaMapping { slot, .. }
            | Op::Munmap { slot, .. }
            | Op::MapFixedOver { slot, .. }
            | Op::Mprotect { slot, .. }
            | Op::Madvise { slot, .. }
            | Op::Mlock { slot, .. }
            | Op::Unmap { slot, .. }
            | Op::Concurrent { slot, .. }
            | Op::ToggleWhileTouching { slot, .. } => *slot = 0,
            Op::Fork { during, .. } => *during = None,
            Op::Signals { slot, .. } => *slot = None,
            _ => {}
        }
        push(v);
        let mut v = self.clone();
        match &mut v {
            Op::Touch { page, .. }
            | Op::TryAccess { page, .. }
            | Op::IsMapped { page, .. }
            | Op::RegionViaMapping { page, .. } => *page = 0,
            Op::Munmap { page, pages, .. }
            | Op::MapFixedOver { page, pages, .. }
            | Op::Madvise { page, pages, .. }
            | Op::Mlock { page, pages, .. }
            | Op::Unmap { page, pages, .. }
            | Op::Map { page, pages, .. } => {
                *page = 0;
                *pages = 0;
            }
            Op::Concurrent { threads, .. } | Op::Signals { threads, .. } => *threads = 1,
            Op::MapChurn {
                threads,
                rounds,
                pages,
                ..
            } => {
                *threads = 2;
                *rounds = (*rounds).min(4);
                *pages = 0;
            }
            Op::ToggleWhileTouching {
                threads, toggles, ..
            } => {
                *threads = 1;
                *toggles = 1;
            }
            _ => {}
        }
        push(v);
        out
    }
}

/// Word columns per page that touches use: the first eight words and the
/// last eight (so page ends are covered too).
pub const COLUMNS: u8 = 16;

/// The word index in a page of column `col`.
pub fn word_of(col: u8) -> usize {
    let c = (col % COLUMNS) as usize;
    if c < 8 {
        c
    } else {
        496 + c
    }
}

/// Generates the next operation. The model's state only biases the choice
/// (more maps when there are none, a rebuild after a device drop).
pub fn generate(rng: &mut Rng, model: &Model, threads: u8) -> Op {
    let slot = rng.next_u32();
    let page = rng.next_u32();
    let pages = rng.next_u32();
    let col = rng.below(COLUMNS as u64) as u8;
    let seed = rng.next_u64();
    let maps = model.mapping_slots();
    if model.device_gone() {
        // Mostly touch what is left, then build a new device.
        return match rng.below(20) {
            0..=2 => Op::Rebuild,
            3..=9 => Op::Touch {
                slot,
                page,
                col,
                write: rng.chance(1, 2).then_some(seed),
                api: false,
            },
            10 => Op::TryAccess {
                slot,
                page,
                col,
                write: rng.chance(1, 2).then_some(seed),
            },
            11 => Op::DropMapping { slot },
            12 => Op::Munmap { slot, page, pages },
            13 => Op::Madvise {
                slot,
                page,
                pages,
                advice: Advice::DontNeedLocked,
            },
            14 => Op::Mprotect {
                slot,
                page,
                pages: pages % 3,
                prot: [ProtOp::None, ProtOp::Read, ProtOp::ReadWrite][rng.below(3) as usize],
            },
            15 => fork_op(rng, slot, page, col, threads),
            16 => Op::Signals {
                slot: Some(slot),
                threads,
                seed,
                rounds: 1 + rng.below(3) as u8,
            },
            _ => Op::Concurrent {
                slot,
                threads,
                seed,
            },
        };
    }
    let map_weight = if maps == 0 {
        40
    } else if maps < 4 {
        6
    } else {
        2
    };
    let total = 100 + map_weight;
    let r = rng.below(total);
    if r >= 100 {
        let region = [2, 2, 2, 2, 2, 2, 0, 0, 4, 5, 1, 3][rng.below(12) as usize];
        return Op::Map {
            region,
            page,
            pages,
            write: rng.chance(4, 5),
            flaw: if rng.chance(1, 8) {
                1 + rng.below(4) as u8
            } else {
                0
            },
        };
    }
    match r {
        0..=29 => Op::Touch {
            slot,
            page,
            col,
            write: rng.chance(2, 5).then_some(seed),
            api: rng.chance(1, 4),
        },
        30..=32 => Op::TryAccess {
            slot,
            page,
            col,
            write: rng.chance(1, 2).then_some(seed),
        },
        33..=35 => Op::SetMemory {
            on: rng.chance(3, 5),
        },
        36 => Op::WriteCommand {
            value: [0u16, 2, 4, 6, 7, 0x47, 0x406, 0xffff, 0x0002][rng.below(9) as usize],
            low_byte: rng.chance(1, 3),
            flaw: if rng.chance(1, 6) {
                1 + rng.below(2) as u8
            } else {
                0
            },
        },
        37 => Op::ReadCommand,
        38 => Op::Power {
            d3: rng.chance(1, 2),
        },
        39..=40 => Op::Reset,
        41 => {
            if rng.chance(1, 4) {
                Op::DropDevice
            } else {
                Op::Rebuild
            }
        }
        42..=44 => Op::DropMapping { slot },
        45..=46 => Op::Unmap {
            slot,
            page,
            pages: pages % 4,
            flaw: if rng.chance(1, 5) {
                1 + rng.below(3) as u8
            } else {
                0
            },
        },
        47 => Op::IsMapped { slot, page },
        48..=49 => Op::Munmap {
            slot,
            page,
            pages: pages % 4,
        },
        50 => Op::MapFixedOver {
            slot,
            page,
            pages: pages % 4,
        },
        51 => Op::MremapGrow { slot, extra: pages },
        52 => Op::MremapShrink { slot, keep: pages },
        53 => Op::MremapMove { slot },
        54..=57 => Op::Mprotect {
            slot,
            page,
            pages: if rng.chance(1, 2) { 0 } else { 1 + pages % 4 },
            prot: [
                ProtOp::None,
                ProtOp::Read,
                ProtOp::ReadWrite,
                ProtOp::ReadWrite,
            ][rng.below(4) as usize],
        },
        58..=59 => Op::Madvise {
            slot,
            page,
            pages: pages % 4,
            advice: [
                Advice::DontNeed,
                Advice::Remove,
                Advice::Cold,
                Advice::DontNeedLocked,
            ][rng.below(4) as usize],
        },
        60..=61 => Op::Mlock {
            slot,
            page,
            pages: pages % 4,
            unlock: rng.chance(1, 2),
        },
        62..=65 => Op::Concurrent {
            slot,
            threads,
            seed,
        },
        66..=68 => Op::ToggleWhileTouching {
            slot,
            threads,
            seed,
            toggles: 1 + rng.below(4) as u8,
            how: [
                Toggle::Memory,
                Toggle::Command,
                Toggle::Power,
                Toggle::Reset,
            ][rng.below(4) as usize],
            end_on: rng.chance(3, 4),
        },
        69 => Op::Signals {
            slot: rng.chance(2, 3).then_some(slot),
            threads,
            seed,
            rounds: 1 + rng.below(3) as u8,
        },
        70..=71 => fork_op(rng, slot, page, col, threads),
        72..=78 => Op::RegionRead {
            region: rng.below(8) as u8,
            word: page,
            words: 1 + (pages % 64) as u16,
            flaw: if rng.chance(1, 8) {
                1 + rng.below(2) as u8
            } else {
                0
            },
        },
        79..=87 => Op::RegionWrite {
            region: rng.below(8) as u8,
            word: page,
            words: 1 + (pages % 64) as u16,
            seed,
            flaw: if rng.chance(1, 8) {
                1 + rng.below(2) as u8
            } else {
                0
            },
        },
        88..=93 => Op::RegionViaMapping {
            read: rng.chance(1, 2),
            region: rng.below(8) as u8,
            word: rng.next_u32(),
            slot,
            page,
            at: rng.below(512) as u16,
            words: 1 + rng.below(64) as u16,
        },
        94..=96 => Op::MapChurn {
            threads: threads.max(2),
            rounds: 1 + rng.below(16) as u8,
            pages,
            seed,
        },
        _ => Op::MappingCount,
    }
}

fn fork_op(rng: &mut Rng, slot: u32, page: u32, col: u8, threads: u8) -> Op {
    let child = match rng.below(8) {
        0..=3 => ChildAct::Touch {
            slot,
            page,
            col,
            write: rng.chance(1, 3),
        },
        4 => ChildAct::Map {
            region: [2, 2, 0, 4, 5, 1][rng.below(6) as usize],
            page,
        },
        5 => {
            if rng.chance(1, 2) {
                ChildAct::Reset
            } else {
                ChildAct::WriteCommand
            }
        }
        6 => ChildAct::Unmap { slot },
        _ => ChildAct::DropAll,
    };
    Op::Fork {
        child,
        during: rng.chance(1, 3).then(|| rng.next_u32()),
        threads,
        seed: rng.next_u64(),
    }
}
