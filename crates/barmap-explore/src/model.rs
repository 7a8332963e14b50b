//! The reference model: what every operation must observe, predicted from
//! barmap's documented semantics (README, "What the process does to its
//! mappings", and the address-space tests), never by asking barmap.
//!
//! The model tracks device memory word by word per region (what mappings,
//! region writes and resets do to it), the read-only BAR's shadow, the
//! COMMAND register and power state, and per mapping the pages of its view:
//! still the device's (`Live`), foreign memory the program mapped into a
//! hole (`Foreign`), or the part an mremap grew (`Grown`), each with its
//! protection and lock state.

use std::collections::HashMap;

use serde::Serialize;

use crate::obs::{Exp, Obs, TouchObs, Val};
use crate::op::{word_of, Advice, ChildAct, Op, ProtOp, Toggle};
use crate::plan::{
    ChildPlan, ChurnRound, ChurnUnmap, Kind, MapModel, PageState, Plan, ThreadMode, T1,
};
use crate::rng::Rng;

/// The page size of every mapping the explorer makes.
pub const PAGE: usize = 4096;
/// Words per page.
pub const WORDS: usize = PAGE / 8;
/// At most this many live `Mapping`s at once.
pub const MAX_MAPPINGS: usize = 8;
/// The default device's ID register (BAR0 word 0).
pub const ID: u64 = barmap::DEFAULT_ID as u64;
/// BAR4's initial contents.
pub const INFO_PAGE: &[u8] = b"barmap info page\n";
/// Vendor and device id as `read_config(0, 4)` returns them.
pub const VENDOR_DEVICE: u64 = 0xba00_1234;
/// Touches per thread in the multi-thread operations.
pub const TOUCHES_PER_THREAD: usize = 6;

/// A deliberate error in the model, to show that the explorer catches a
/// wrong prediction and shrinks it (tests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Mutation {
    /// The correct model.
    #[default]
    None,
    /// Predicts that a reset clears the memory BAR (it keeps its data).
    ResetClearsMemory,
    /// Predicts that a forked child reads the parent's mapping (it has no
    /// view: SIGSEGV).
    ChildSeesMapping,
    /// Not a model error: the process mode's server removes the device
    /// without revoking its BARs (a broken server the explorer must
    /// catch).
    RemovalRevokesNothing,
    /// Not a model error: the process mode's server keeps a dead client's
    /// DMA windows (a DMA through them still reaches its memory).
    DeadClientsWindowsStay,
}

#[derive(Debug, Clone, Copy)]
struct DevState {
    command: u16,
    low_power: bool,
}

/// Where a word lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Loc {
    Dev(u32, u64),
    Shadow(u64),
    Foreign(u64, usize, usize),
}

/// The marker a foreign page holds in its first eight words.
pub fn marker(uid: u64, page: usize, word: usize) -> u64 {
    0xf0f0_0000_0000_0000 | (uid << 24) | ((page as u64) << 8) | word as u64
}

/// The model's configuration.
#[derive(Debug, Clone, Copy)]
pub struct ModelConfig {
    /// Size of the memory BAR (BAR2).
    pub memory: u64,
    /// Deliberate model error (tests).
    pub mutation: Mutation,
    /// Also generate the operation combinations that hit known barmap
    /// issues (see the comments naming them).
    pub known_issues: bool,
}

/// The reference model.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: ModelConfig,
    dev: Option<DevState>,
    words: HashMap<Loc, u64>,
    maps: Vec<MapModel>,
    next_uid: u64,
}

fn init_word(loc: Loc) -> u64 {
    match loc {
        Loc::Dev(0, 0) => ID,
        Loc::Dev(4, off) | Loc::Shadow(off) => {
            let mut b = [0u8; 8];
            for (i, x) in b.iter_mut().enumerate() {
                *x = INFO_PAGE.get(off as usize + i).copied().unwrap_or(0);
            }
            u64::from_le_bytes(b)
        }
        Loc::Foreign(uid, page, w) if w < 8 => marker(uid, page, w),
        _ => 0,
    }
}

/// Region sizes of the explorer's device (`Device::builder_with_memory`).
fn region_size(region: u32, memory: u64) -> Option<u64> {
    match region {
        0 => Some(64 << 10),
        2 => Some(memory),
        4 => Some(4096),
        5 => Some(256),
        _ => None,
    }
}

fn pick(n: usize, x: u32) -> usize {
    x as usize % n
}

impl Model {
    /// A model of a freshly built device with no mappings.
    pub fn new(cfg: ModelConfig) -> Self {
        Model {
            cfg,
            dev: Some(DevState {
                command: barmap::device::pci::COMMAND_MEMORY,
                low_power: false,
            }),
            words: HashMap::new(),
            maps: Vec::new(),
            next_uid: 1,
        }
    }

    /// Number of `Mapping`s held.
    pub fn mapping_slots(&self) -> usize {
        self.maps.len()
    }

    /// Whether the device was dropped (and not rebuilt).
    pub fn device_gone(&self) -> bool {
        self.dev.is_none()
    }

    fn accessible(&self) -> bool {
        self.dev
            .is_some_and(|d| d.command & barmap::device::pci::COMMAND_MEMORY != 0 && !d.low_power)
    }

    fn get(&self, loc: Loc) -> u64 {
        self.words
            .get(&loc)
            .copied()
            .unwrap_or_else(|| init_word(loc))
    }

    fn set(&mut self, loc: Loc, v: u64) {
        self.words.insert(loc, v);
    }

    fn map_by_uid(&self, uid: u64) -> &MapModel {
        self.maps
            .iter()
            .find(|m| m.uid == uid)
            .expect("planned uid")
    }

    fn map_mut(&mut self, uid: u64) -> &mut MapModel {
        self.maps
            .iter_mut()
            .find(|m| m.uid == uid)
            .expect("planned uid")
    }

    fn loc(m: &MapModel, page: usize, word: usize) -> Loc {
        match m.pages[page].kind {
            Kind::Live { off } if m.region == 4 => Loc::Shadow(off + 8 * word as u64),
            Kind::Live { off } => Loc::Dev(m.region, off + 8 * word as u64),
            _ => Loc::Foreign(m.uid, page, word),
        }
    }

    /// The outcome of a touch with memory accessible or not.
    fn touch_outcome(&self, m: &MapModel, t: &T1, accessible: bool) -> TouchObs {
        let p = m.pages[t.page];
        let allowed = !matches!(
            (p.prot, t.write.is_some()),
            (ProtOp::None, _) | (ProtOp::Read, true)
        );
        if !allowed {
            return TouchObs::Sigsegv;
        }
        match p.kind {
            Kind::Grown => TouchObs::Sigbus,
            Kind::Live { .. } if !accessible => TouchObs::Sigbus,
            _ => match t.write {
                Some(_) => TouchObs::Wrote,
                None => TouchObs::Value(self.get(Self::loc(m, t.page, t.word))),
            },
        }
    }

    /// Predicts a touch and applies its write.
    fn touch(&mut self, uid: u64, t: &T1) -> TouchObs {
        let m = self.map_by_uid(uid);
        let out = self.touch_outcome(m, t, self.accessible());
        if let (TouchObs::Wrote, Some(v)) = (&out, t.write) {
            let loc = Self::loc(m, t.page, t.word);
            self.set(loc, v);
        }
        out
    }

    fn validate_map(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        write: bool,
    ) -> Result<(), String> {
        let size = region_size(region, self.cfg.memory).ok_or("NoSuchRegion")?;
        if len == 0 {
            return Err("ZeroLength".into());
        }
        if offset % PAGE as u64 != 0 || len % PAGE != 0 {
            return Err("Unaligned".into());
        }
        if offset + len as u64 > size.next_multiple_of(PAGE as u64) {
            return Err("OutOfRange".into());
        }
        if region == 5 {
            return Err("NotMappable".into());
        }
        let areas: Vec<(u64, u64)> = if region == 0 {
            vec![(0, 0x8000), (0x9000, 0x10000)]
        } else {
            vec![(0, size)]
        };
        if !areas
            .iter()
            .any(|&(s, e)| s <= offset && offset + len as u64 <= e)
        {
            return Err("SparseArea".into());
        }
        if write && region == 4 {
            return Err("ReadOnly".into());
        }
        Ok(())
    }

    fn map_request(&self, region: u32, page: u32, pages: u32, flaw: u8) -> (u64, usize) {
        let mem_pages = (self.cfg.memory as usize / PAGE).max(1);
        let (first, n) = match region {
            2 => (pick(mem_pages, page), 1 + pick(16.min(mem_pages), pages)),
            0 => (pick(16, page), 1 + pick(8, pages)),
            4 => (pick(2, page), 1),
            _ => (0, 1),
        };
        let (mut offset, mut len) = ((first * PAGE) as u64, n * PAGE);
        match flaw {
            1 => len = 0,
            2 => offset += 8,
            3 => len += 8,
            4 => {
                offset = region_size(region, self.cfg.memory)
                    .unwrap_or(0)
                    .next_multiple_of(PAGE as u64)
            }
            _ => {}
        }
        (offset, len)
    }

    /// A page range of a view: `page` and `pages` (at least one) reduced
    /// to fit.
    fn range(m: &MapModel, page: u32, pages: u32) -> (usize, usize) {
        let vp = m.pages.len();
        let first = pick(vp, page);
        (first, 1 + pick(vp - first, pages))
    }

    fn threads_touches(
        &self,
        m: &MapModel,
        threads: u8,
        seed: u64,
        writes: bool,
    ) -> (Vec<Vec<T1>>, Vec<T1>) {
        let mut rng = Rng::new(seed);
        let vp = m.pages.len();
        let mut all = Vec::new();
        let mut finals = Vec::new();
        for t in 0..threads.clamp(1, crate::op::COLUMNS) {
            let word = word_of(t);
            let mut mine = Vec::new();
            for _ in 0..TOUCHES_PER_THREAD {
                let page = rng.below(vp as u64) as usize;
                let write = (writes && rng.chance(1, 2)).then(|| rng.next_u64());
                mine.push(T1 { page, word, write });
            }
            finals.push(T1 {
                page: mine[0].page,
                word,
                write: None,
            });
            all.push(mine);
        }
        (all, finals)
    }

    fn child_plan(&self, act: &ChildAct) -> ChildPlan {
        let slot = |s: u32| (!self.maps.is_empty()).then(|| &self.maps[pick(self.maps.len(), s)]);
        match *act {
            ChildAct::Touch {
                slot: s,
                page,
                col,
                write,
            } => match slot(s) {
                Some(m) => ChildPlan::Touch {
                    uid: m.uid,
                    page: pick(m.pages.len(), page),
                    word: word_of(col),
                    write: write.then_some(0x0c41_1d00),
                },
                None => ChildPlan::DropAll,
            },
            ChildAct::Map { region, page } if self.dev.is_some() => {
                let (offset, len) = self.map_request(region as u32, page, 0, 0);
                ChildPlan::Map {
                    region: region as u32,
                    offset,
                    len,
                }
            }
            ChildAct::Reset if self.dev.is_some() => ChildPlan::Reset,
            ChildAct::WriteCommand if self.dev.is_some() => ChildPlan::WriteCommand,
            ChildAct::Unmap { slot: s } if self.dev.is_some() => match slot(s) {
                Some(m) => ChildPlan::Unmap { uid: m.uid },
                None => ChildPlan::DropAll,
            },
            _ => ChildPlan::DropAll,
        }
    }

    /// Resolves `op` against the current state; `None` if it does not
    /// apply now (no mapping to act on, a range it may not be used on).
    pub fn plan(&self, op: &Op) -> Option<Plan> {
        let have_dev = self.dev.is_some();
        let slot = |s: u32| (!self.maps.is_empty()).then(|| &self.maps[pick(self.maps.len(), s)]);
        let all_live = |m: &MapModel, first: usize, n: usize| {
            m.pages[first..first + n]
                .iter()
                .all(|p| matches!(p.kind, Kind::Live { .. }))
        };
        Some(match *op {
            Op::Map {
                region,
                page,
                pages,
                write,
                flaw,
            } => {
                if !have_dev {
                    return None;
                }
                let region = region as u32;
                let (offset, len) = self.map_request(region, page, pages, flaw);
                if self.validate_map(region, offset, len, write).is_ok()
                    && self.maps.len() >= MAX_MAPPINGS
                {
                    return None;
                }
                Plan::Map {
                    region,
                    offset,
                    len,
                    write,
                    uid: self.next_uid,
                }
            }
            Op::DropMapping { slot: s } => Plan::DropMapping { uid: slot(s)?.uid },
            Op::Unmap {
                slot: s,
                page,
                pages,
                flaw,
            } => {
                let m = slot(s)?;
                if !have_dev {
                    return None;
                }
                let np = m.len / PAGE;
                let first = pick(np, page);
                let n = 1 + pick(np - first, pages);
                let (offset, len) = match flaw {
                    1 => (first * PAGE, 0),
                    2 => (first * PAGE + 8, n * PAGE),
                    3 => (m.len, PAGE),
                    _ => (first * PAGE, n * PAGE),
                };
                Plan::Unmap {
                    uid: m.uid,
                    offset,
                    len,
                }
            }
            Op::IsMapped { slot: s, page } => {
                let m = slot(s)?;
                if !have_dev {
                    return None;
                }
                Plan::IsMapped {
                    uid: m.uid,
                    offset: pick(m.len / PAGE, page) * PAGE,
                }
            }
            Op::Munmap {
                slot: s,
                page,
                pages,
            }
            | Op::MapFixedOver {
                slot: s,
                page,
                pages,
            } => {
                let m = slot(s)?;
                let (first, n) = Self::range(m, page, pages);
                if !all_live(m, first, n) {
                    return None;
                }
                if matches!(op, Op::Munmap { .. }) {
                    Plan::Munmap {
                        uid: m.uid,
                        page: first,
                        pages: n,
                    }
                } else {
                    Plan::MapFixedOver {
                        uid: m.uid,
                        page: first,
                        pages: n,
                    }
                }
            }
            Op::MremapGrow { slot: s, .. }
            | Op::MremapShrink { slot: s, .. }
            | Op::MremapMove { slot: s } => {
                let m = slot(s)?;
                let vp = m.pages.len();
                if !have_dev || m.split || !all_live(m, 0, vp) {
                    return None;
                }
                match *op {
                    // barmap issue: after mlock(2) of a mapping, an mremap
                    // grow never returns: the kernel populates the grown
                    // part of the VM_LOCKED vma before it reports the
                    // REMAP event, and barmap's fault service never
                    // answers that fault. Not generated until fixed.
                    Op::MremapGrow { .. }
                        if !self.cfg.known_issues && m.pages.iter().any(|p| p.mlocked) =>
                    {
                        return None
                    }
                    Op::MremapGrow { extra, .. } => Plan::MremapGrow {
                        uid: m.uid,
                        extra: 1 + pick(4, extra),
                    },
                    Op::MremapShrink { keep, .. } => {
                        if vp < 2 {
                            return None;
                        }
                        Plan::MremapShrink {
                            uid: m.uid,
                            keep: 1 + pick(vp - 1, keep),
                        }
                    }
                    _ => Plan::MremapMove { uid: m.uid },
                }
            }
            Op::Mprotect {
                slot: s,
                page,
                pages,
                prot,
            } => {
                let m = slot(s)?;
                let (first, n) = if pages == 0 {
                    (0, m.pages.len())
                } else {
                    Self::range(m, page, pages - 1)
                };
                let prot = if prot == ProtOp::ReadWrite && !m.writable && m.region != 4 {
                    ProtOp::Read
                } else {
                    prot
                };
                Plan::Mprotect {
                    uid: m.uid,
                    page: first,
                    pages: n,
                    prot,
                }
            }
            Op::Madvise {
                slot: s,
                page,
                pages,
                advice,
            } => {
                let m = slot(s)?;
                let (first, n) = Self::range(m, page, pages);
                let r = &m.pages[first..first + n];
                if r.iter().any(|p| p.kind == Kind::Foreign) {
                    return None;
                }
                let locked = r[0].locked;
                if r.iter().any(|p| p.locked != locked) || (!locked && advice == Advice::Remove) {
                    return None;
                }
                Plan::Madvise {
                    uid: m.uid,
                    page: first,
                    pages: n,
                    advice,
                }
            }
            Op::Mlock {
                slot: s,
                page,
                pages,
                unlock,
            } => {
                let m = slot(s)?;
                let (first, n) = Self::range(m, page, pages);
                if !unlock
                    && (!self.accessible()
                        || m.pages[first..first + n]
                            .iter()
                            .any(|p| p.kind == Kind::Grown || p.prot == ProtOp::None))
                {
                    return None;
                }
                Plan::Mlock {
                    uid: m.uid,
                    page: first,
                    pages: n,
                    unlock,
                }
            }
            Op::Touch {
                slot: s,
                page,
                col,
                write,
                api,
            } => {
                let m = slot(s)?;
                let page = pick(m.pages.len(), page);
                let api = api && !m.moved && (write.is_none() || m.writable);
                Plan::Touch {
                    uid: m.uid,
                    t: T1 {
                        page,
                        word: word_of(col),
                        write,
                    },
                    api,
                }
            }
            Op::TryAccess {
                slot: s,
                page,
                col,
                write,
            } => {
                let m = slot(s)?;
                if m.moved {
                    return None;
                }
                Plan::TryAccess {
                    uid: m.uid,
                    t: T1 {
                        page: pick(m.len / PAGE, page),
                        word: word_of(col),
                        write,
                    },
                }
            }
            Op::Concurrent {
                slot: s,
                threads,
                seed,
            } => {
                let m = slot(s)?;
                let (touches, _) = self.threads_touches(m, threads, seed, true);
                Plan::Threads {
                    uid: Some(m.uid),
                    touches,
                    finals: Vec::new(),
                    mode: ThreadMode::Plain,
                }
            }
            Op::ToggleWhileTouching {
                slot: s,
                threads,
                seed,
                toggles,
                how,
                end_on,
            } => {
                let m = slot(s)?;
                let dev = self.dev?;
                let how = if how == Toggle::Reset && m.region != 2 {
                    Toggle::Memory
                } else {
                    how
                };
                let writes = how == Toggle::Reset;
                let (touches, finals) = self.threads_touches(m, threads, seed, writes);
                let mem = barmap::device::pci::COMMAND_MEMORY;
                Plan::Threads {
                    uid: Some(m.uid),
                    touches,
                    finals,
                    mode: ThreadMode::Toggle {
                        how,
                        toggles: toggles.max(1),
                        end_on,
                        command: (dev.command & !mem, dev.command | mem),
                    },
                }
            }
            Op::Signals {
                slot: s,
                threads,
                seed,
                rounds,
            } => {
                let m = s.and_then(slot);
                let (touches, _) = match m {
                    Some(m) => self.threads_touches(m, threads, seed, true),
                    None => (Vec::new(), Vec::new()),
                };
                Plan::Threads {
                    uid: m.map(|m| m.uid),
                    touches,
                    finals: Vec::new(),
                    mode: ThreadMode::Signals {
                        rounds: rounds.max(1),
                    },
                }
            }
            Op::Fork {
                child,
                during,
                threads,
                seed,
            } => {
                let m = during.and_then(slot);
                let (touches, _) = match m {
                    Some(m) => self.threads_touches(m, threads, seed, false),
                    None => (Vec::new(), Vec::new()),
                };
                Plan::Threads {
                    uid: m.map(|m| m.uid),
                    touches,
                    finals: Vec::new(),
                    mode: ThreadMode::Fork(self.child_plan(&child)),
                }
            }
            Op::SetMemory { on } => {
                self.dev?;
                Plan::SetMemory { on }
            }
            Op::WriteCommand {
                value,
                low_byte,
                flaw,
            } => {
                self.dev?;
                let bytes = value.to_le_bytes();
                let data = if low_byte {
                    vec![bytes[0]]
                } else {
                    bytes.to_vec()
                };
                match flaw {
                    1 => Plan::WriteConfig {
                        offset: 4,
                        data: Vec::new(),
                    },
                    2 => Plan::WriteConfig { offset: 255, data },
                    _ => Plan::WriteConfig { offset: 4, data },
                }
            }
            Op::ReadCommand => {
                self.dev?;
                Plan::ReadCommand
            }
            Op::Power { d3 } => {
                self.dev?;
                Plan::Power { d3 }
            }
            Op::Reset => {
                self.dev?;
                Plan::Reset
            }
            Op::DropDevice => {
                self.dev?;
                Plan::DropDevice
            }
            Op::Rebuild => Plan::Rebuild,
            Op::RegionRead {
                region,
                word,
                words,
                flaw,
            }
            | Op::RegionWrite {
                region,
                word,
                words,
                flaw,
                ..
            } => {
                self.dev?;
                let region = [0u32, 2, 2, 2, 4, 5, 1, 7][region as usize % 8];
                let size = region_size(region, self.cfg.memory).unwrap_or(4096);
                let total = size as usize / 8;
                let first = pick(total, word);
                let n = (words as usize).min(total - first);
                let (offset, n) = match flaw {
                    1 => ((first * 8) as u64, 0),
                    2 => (size - 8, 2),
                    _ => ((first * 8) as u64, n),
                };
                if let Op::RegionWrite { seed, .. } = *op {
                    let mut rng = Rng::new(seed);
                    Plan::RegionWrite {
                        region,
                        offset,
                        data: (0..n).map(|_| rng.next_u64()).collect(),
                    }
                } else {
                    Plan::RegionRead {
                        region,
                        offset,
                        len: n * 8,
                    }
                }
            }
            Op::RegionViaMapping {
                read,
                region,
                word,
                slot: s,
                page,
                at,
                words,
            } => {
                let m = slot(s)?;
                self.dev?;
                let region = [0u32, 2, 2, 2, 4, 5, 1, 7][region as usize % 8];
                let size = region_size(region, self.cfg.memory).unwrap_or(4096);
                let total = size as usize / 8;
                let at = at as usize % WORDS;
                let n = (1 + (words.max(1) as usize - 1) % (WORDS - at)).min(total);
                let first = pick(total - n + 1, word);
                Plan::RegionViaMapping {
                    read,
                    region,
                    offset: (first * 8) as u64,
                    uid: m.uid,
                    page: pick(m.pages.len(), page),
                    word: at,
                    words: n,
                }
            }
            Op::MappingCount => {
                self.dev?;
                Plan::MappingCount
            }
            // The process mode has its own model (crate::procs).
            Op::Proc(_) => return None,
            Op::MapChurn {
                threads,
                rounds,
                pages,
                seed,
            } => {
                self.dev?;
                let mem_pages = (self.cfg.memory as usize / PAGE).max(1);
                let n = (threads as usize).clamp(2, crate::op::COLUMNS as usize);
                if mem_pages < n {
                    return None;
                }
                let pages = 1 + pick((mem_pages / n).clamp(1, 4), pages);
                let mut rng = Rng::new(seed);
                let first = rng.below((mem_pages - n * pages + 1) as u64) as usize;
                let windows = (0..n)
                    .map(|t| ((first + t * pages) * PAGE) as u64)
                    .collect();
                let rounds = (0..n)
                    .map(|_| {
                        (0..rounds.max(1))
                            .map(|_| ChurnRound {
                                word: word_of(rng.below(crate::op::COLUMNS as u64) as u8),
                                values: (0..pages).map(|_| rng.next_u64()).collect(),
                                unmap: match rng.below(4) {
                                    0 | 1 => ChurnUnmap::Munmap,
                                    2 if pages > 1 => ChurnUnmap::MunmapHalves,
                                    2 => ChurnUnmap::Munmap,
                                    _ => ChurnUnmap::Drop,
                                },
                            })
                            .collect()
                    })
                    .collect();
                Plan::MapChurn {
                    windows,
                    pages,
                    rounds,
                }
            }
        })
    }

    fn reset_effects(&mut self) {
        self.words.remove(&Loc::Dev(0, 0));
        self.words.retain(|l, _| !matches!(l, Loc::Shadow(_)));
        if self.cfg.mutation == Mutation::ResetClearsMemory {
            self.words.retain(|l, _| !matches!(l, Loc::Dev(2, _)));
        }
    }

    fn cut(&mut self, uid: u64, first: usize, n: usize) {
        let m = self.map_mut(uid);
        for p in &mut m.pages[first..first + n] {
            *p = PageState {
                kind: Kind::Foreign,
                prot: ProtOp::ReadWrite,
                locked: false,
                mlocked: false,
            };
        }
        m.split = true;
    }

    fn child_obs(&self, c: &ChildPlan) -> Obs {
        let api = |r: Result<Val, &str>| Obs::Api(r.map_err(|e| e.to_string()));
        match c {
            ChildPlan::Touch {
                uid,
                page,
                word,
                write,
            } => {
                let m = self.map_by_uid(*uid);
                let t = T1 {
                    page: *page,
                    word: *word,
                    write: *write,
                };
                let p = m.pages[*page];
                let out = match p.kind {
                    Kind::Foreign => self.touch_outcome(m, &t, true),
                    _ if self.cfg.mutation == Mutation::ChildSeesMapping => {
                        self.touch_outcome(m, &t, self.accessible())
                    }
                    // No view in the child (MADV_DONTFORK), whatever the
                    // protection: the address is simply not mapped.
                    _ => TouchObs::Sigsegv,
                };
                Obs::Touch(out)
            }
            ChildPlan::Map {
                region,
                offset,
                len,
            } => match self.validate_map(*region, *offset, *len, false) {
                Err(e) => Obs::Api(Err(e)),
                Ok(()) => api(Err("ForeignProcess")),
            },
            ChildPlan::Reset | ChildPlan::WriteCommand | ChildPlan::Unmap { .. } => {
                api(Err("ForeignProcess"))
            }
            ChildPlan::DropAll => api(Ok(Val::Unit)),
        }
    }

    /// Predicts what `plan` observes, in order, and applies its effects.
    pub fn step(&mut self, plan: &Plan) -> Vec<Exp> {
        use Exp::Is;
        let ok = || Is(Obs::Api(Ok(Val::Unit)));
        let err = |e: &str| Is(Obs::Api(Err(e.to_string())));
        let mem_bit = barmap::device::pci::COMMAND_MEMORY;
        match plan {
            Plan::Map {
                region,
                offset,
                len,
                write,
                uid,
            } => match self.validate_map(*region, *offset, *len, *write) {
                Err(e) => vec![err(&e)],
                Ok(()) => {
                    self.next_uid += 1;
                    let prot = if *write {
                        ProtOp::ReadWrite
                    } else {
                        ProtOp::Read
                    };
                    self.maps.push(MapModel {
                        uid: *uid,
                        region: *region,
                        offset: *offset,
                        len: *len,
                        writable: *write,
                        pages: (0..len / PAGE)
                            .map(|i| PageState {
                                kind: Kind::Live {
                                    off: offset + (i * PAGE) as u64,
                                },
                                prot,
                                locked: true,
                                mlocked: false,
                            })
                            .collect(),
                        moved: false,
                        split: false,
                    });
                    vec![ok()]
                }
            },
            Plan::DropMapping { uid } => {
                self.maps.retain(|m| m.uid != *uid);
                vec![ok()]
            }
            Plan::Unmap { uid, offset, len } => {
                let m = self.map_by_uid(*uid);
                if *len == 0 {
                    return vec![err("ZeroLength")];
                }
                if offset % PAGE != 0 || len % PAGE != 0 {
                    return vec![err("Unaligned")];
                }
                if offset + len > m.len {
                    return vec![err("NotMapped")];
                }
                let (first, n) = (offset / PAGE, len / PAGE);
                let live = !m.moved
                    && m.pages[first..first + n]
                        .iter()
                        .all(|p| matches!(p.kind, Kind::Live { .. }));
                if !live {
                    return vec![err("NotMapped")];
                }
                self.cut(*uid, first, n);
                vec![ok()]
            }
            Plan::IsMapped { uid, offset } => {
                let m = self.map_by_uid(*uid);
                let live = !m.moved && matches!(m.pages[offset / PAGE].kind, Kind::Live { .. });
                vec![Is(Obs::Api(Ok(Val::Bool(live))))]
            }
            Plan::Munmap { uid, page, pages } | Plan::MapFixedOver { uid, page, pages } => {
                self.cut(*uid, *page, *pages);
                vec![Is(Obs::Sys(Ok(())))]
            }
            Plan::MremapGrow { uid, extra } => {
                let m = self.map_mut(*uid);
                let p0 = m.pages[0];
                m.pages.extend((0..*extra).map(|_| PageState {
                    kind: Kind::Grown,
                    ..p0
                }));
                m.moved = true;
                vec![Is(Obs::Sys(Ok(())))]
            }
            Plan::MremapShrink { uid, keep } => {
                let n = self.map_by_uid(*uid).pages.len();
                self.cut(*uid, *keep, n - keep);
                vec![Is(Obs::Sys(Ok(())))]
            }
            Plan::MremapMove { uid } => {
                self.map_mut(*uid).moved = true;
                vec![Is(Obs::Sys(Ok(())))]
            }
            Plan::Mprotect {
                uid,
                page,
                pages,
                prot,
            } => {
                let m = self.map_mut(*uid);
                let whole = *page == 0 && *pages == m.pages.len();
                for p in &mut m.pages[*page..page + pages] {
                    p.prot = *prot;
                }
                m.split |= !whole;
                vec![Is(Obs::Sys(Ok(())))]
            }
            Plan::Madvise {
                uid, page, advice, ..
            } => {
                let locked = self.map_by_uid(*uid).pages[*page].locked;
                let refused = locked && *advice != Advice::DontNeedLocked;
                vec![Is(Obs::Sys(if refused {
                    Err(libc::EINVAL)
                } else {
                    Ok(())
                }))]
            }
            Plan::Mlock {
                uid,
                page,
                pages,
                unlock,
            } => {
                let m = self.map_mut(*uid);
                let whole = *page == 0 && *pages == m.pages.len();
                for p in &mut m.pages[*page..page + pages] {
                    p.locked = !unlock;
                    p.mlocked = !unlock;
                }
                m.split |= !whole;
                vec![Is(Obs::Sys(Ok(())))]
            }
            Plan::Touch { uid, t, .. } => vec![Is(Obs::Touch(self.touch(*uid, t)))],
            Plan::TryAccess { uid, t } => {
                let m = self.map_by_uid(*uid);
                if t.write.is_some() && !m.writable {
                    return vec![err("ReadOnly")];
                }
                if self.dev.is_none() {
                    return vec![err("DeviceGone")];
                }
                match self.touch(*uid, t) {
                    TouchObs::Value(v) => vec![Is(Obs::Api(Ok(Val::U64(v))))],
                    TouchObs::Wrote => vec![ok()],
                    _ => vec![err("Fault(14)")],
                }
            }
            Plan::Threads {
                uid,
                touches,
                finals,
                mode,
            } => self.step_threads(*uid, touches, finals, mode),
            Plan::SetMemory { on } => {
                let d = self.dev.as_mut().expect("planned with a device");
                if *on {
                    d.command |= mem_bit;
                } else {
                    d.command &= !mem_bit;
                }
                vec![Is(Obs::Api(Ok(Val::Bool(self.accessible()))))]
            }
            Plan::WriteConfig { offset, data } => {
                let d = self.dev.as_mut().expect("planned with a device");
                if data.is_empty() || *offset as usize + data.len() > 256 {
                    return vec![
                        err("ConfigRange"),
                        Is(Obs::Api(Ok(Val::U64(d.command as u64)))),
                    ];
                }
                let mut bytes = d.command.to_le_bytes();
                for (i, v) in data.iter().enumerate() {
                    let at = *offset as usize + i;
                    let mask = match at {
                        4 => 0x47,
                        5 => 0x05,
                        _ => 0,
                    };
                    if (4..6).contains(&at) {
                        let b = &mut bytes[at - 4];
                        *b = (*b & !mask) | (v & mask);
                    }
                }
                d.command = u16::from_le_bytes(bytes);
                vec![ok(), Is(Obs::Api(Ok(Val::U64(d.command as u64))))]
            }
            Plan::ReadCommand => {
                let d = self.dev.expect("planned with a device");
                vec![
                    Is(Obs::Api(Ok(Val::U64(d.command as u64)))),
                    Is(Obs::Api(Ok(Val::U64(VENDOR_DEVICE)))),
                ]
            }
            Plan::Power { d3 } => {
                self.dev.as_mut().expect("planned with a device").low_power = *d3;
                vec![Is(Obs::Api(Ok(Val::Bool(self.accessible()))))]
            }
            Plan::Reset => {
                self.reset_effects();
                vec![ok()]
            }
            Plan::DropDevice => {
                self.dev = None;
                vec![ok()]
            }
            Plan::Rebuild => {
                let next_uid = self.next_uid;
                *self = Model::new(self.cfg);
                self.next_uid = next_uid;
                vec![ok()]
            }
            Plan::RegionRead {
                region,
                offset,
                len,
            } => {
                let Some(size) = region_size(*region, self.cfg.memory) else {
                    return vec![err("NoSuchRegion")];
                };
                if *len == 0 {
                    return vec![err("ZeroLength")];
                }
                if offset + *len as u64 > size {
                    return vec![err("OutOfRange")];
                }
                if !self.accessible() {
                    return vec![err("MemoryDisabled")];
                }
                let words = (0..len / 8)
                    .map(|i| self.get(Loc::Dev(*region, offset + 8 * i as u64)))
                    .collect();
                vec![Is(Obs::Api(Ok(Val::Words(words))))]
            }
            Plan::RegionWrite {
                region,
                offset,
                data,
            } => {
                let Some(size) = region_size(*region, self.cfg.memory) else {
                    return vec![err("NoSuchRegion")];
                };
                if data.is_empty() {
                    return vec![err("ZeroLength")];
                }
                if offset + 8 * data.len() as u64 > size {
                    return vec![err("OutOfRange")];
                }
                if *region == 4 {
                    return vec![err("ReadOnly")];
                }
                if !self.accessible() {
                    return vec![err("MemoryDisabled")];
                }
                for (i, v) in data.iter().enumerate() {
                    self.set(Loc::Dev(*region, offset + 8 * i as u64), *v);
                }
                vec![ok()]
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
                if region_size(*region, self.cfg.memory).is_none() {
                    return vec![err("NoSuchRegion")];
                }
                let m = self.map_by_uid(*uid);
                let p = m.pages[*page];
                let acc = self.accessible();
                let buffer_ok = |write: bool| match p.kind {
                    Kind::Grown => false,
                    Kind::Live { .. } if !acc => false,
                    _ => match p.prot {
                        ProtOp::None => false,
                        ProtOp::Read => !write,
                        ProtOp::ReadWrite => true,
                    },
                };
                let locs: Vec<Loc> = (0..*words).map(|i| Self::loc(m, *page, word + i)).collect();
                let dev: Vec<Loc> = (0..*words)
                    .map(|i| Loc::Dev(*region, offset + 8 * i as u64))
                    .collect();
                if *read {
                    if !acc {
                        return vec![err("MemoryDisabled")];
                    }
                    if !buffer_ok(true) {
                        return vec![err("BadBuffer(14)")];
                    }
                    let vals: Vec<u64> = dev.iter().map(|l| self.get(*l)).collect();
                    for (l, v) in locs.iter().zip(vals) {
                        self.set(*l, v);
                    }
                } else {
                    if *region == 4 {
                        return vec![err("ReadOnly")];
                    }
                    if !buffer_ok(false) {
                        return vec![err("BadBuffer(14)")];
                    }
                    if !acc {
                        return vec![err("MemoryDisabled")];
                    }
                    let vals: Vec<u64> = locs.iter().map(|l| self.get(*l)).collect();
                    for (l, v) in dev.iter().zip(vals) {
                        self.set(*l, v);
                    }
                }
                vec![ok()]
            }
            Plan::MappingCount => {
                let live =
                    |m: &&MapModel| m.pages.iter().any(|p| matches!(p.kind, Kind::Live { .. }));
                let n = self.maps.iter().filter(live).count() as u64;
                // `Device::mapping_count` lets the process's unmap events
                // land first, so a mapping cut away entirely is not counted.
                vec![Exp::Is(Obs::Api(Ok(Val::U64(n))))]
            }
            Plan::MapChurn {
                windows,
                pages,
                rounds,
            } => self.step_churn(windows, *pages, rounds),
        }
    }

    /// Every thread's rounds in order: the map, then per page the write
    /// and the read back (SIGBUS both while memory is not accessible),
    /// then what the unmap returns. No thread touches another's window,
    /// so each round is exact.
    fn step_churn(
        &mut self,
        windows: &[u64],
        pages: usize,
        rounds: &[Vec<ChurnRound>],
    ) -> Vec<Exp> {
        let accessible = self.accessible();
        let mut out = Vec::new();
        for (base, mine) in windows.iter().zip(rounds) {
            for r in mine {
                out.push(Exp::Is(Obs::Api(Ok(Val::Unit))));
                for (p, v) in r.values.iter().enumerate() {
                    let loc = Loc::Dev(2, base + (p * PAGE) as u64 + 8 * r.word as u64);
                    if accessible {
                        self.set(loc, *v);
                        out.push(Exp::Is(Obs::Touch(TouchObs::Wrote)));
                        out.push(Exp::Is(Obs::Touch(TouchObs::Value(*v))));
                    } else {
                        out.push(Exp::Is(Obs::Touch(TouchObs::Sigbus)));
                        out.push(Exp::Is(Obs::Touch(TouchObs::Sigbus)));
                    }
                }
                let unmaps = match r.unmap {
                    ChurnUnmap::Munmap => 1,
                    ChurnUnmap::MunmapHalves if pages > 1 => 2,
                    ChurnUnmap::MunmapHalves => 1,
                    ChurnUnmap::Drop => 0,
                };
                for _ in 0..unmaps {
                    out.push(Exp::Is(Obs::Sys(Ok(()))));
                }
            }
        }
        out
    }

    fn step_threads(
        &mut self,
        uid: Option<u64>,
        touches: &[Vec<T1>],
        finals: &[T1],
        mode: &ThreadMode,
    ) -> Vec<Exp> {
        let mut out = Vec::new();
        match mode {
            ThreadMode::Toggle {
                how,
                end_on,
                command,
                ..
            } => {
                let uid = uid.expect("a toggle touches a mapping");
                let now = self.accessible();
                let d = self.dev.expect("planned with a device");
                let mem = d.command & barmap::device::pci::COMMAND_MEMORY != 0;
                let states: Vec<bool> = match how {
                    Toggle::Memory | Toggle::Command => vec![now, false, !d.low_power],
                    Toggle::Power => vec![now, false, mem],
                    Toggle::Reset => vec![now],
                };
                if *how == Toggle::Reset {
                    // Faults during a reset wait and are then served: every
                    // touch is exact, writes included.
                    for mine in touches {
                        for t in mine {
                            out.push(Exp::Is(Obs::Touch(self.touch(uid, t))));
                        }
                    }
                    self.reset_effects();
                } else {
                    let m = self.map_by_uid(uid);
                    for mine in touches {
                        for t in mine {
                            let mut set: Vec<Obs> = Vec::new();
                            for &s in &states {
                                let o = Obs::Touch(self.touch_outcome(m, t, s));
                                if !set.contains(&o) {
                                    set.push(o);
                                }
                            }
                            out.push(Exp::OneOf(set));
                        }
                    }
                    let dev = self.dev.as_mut().expect("planned with a device");
                    match how {
                        Toggle::Memory => {
                            if *end_on {
                                dev.command |= barmap::device::pci::COMMAND_MEMORY;
                            } else {
                                dev.command &= !barmap::device::pci::COMMAND_MEMORY;
                            }
                        }
                        Toggle::Command => {
                            dev.command = if *end_on { command.1 } else { command.0 };
                        }
                        Toggle::Power => dev.low_power = !end_on,
                        Toggle::Reset => {}
                    }
                }
                for t in finals {
                    out.push(Exp::Is(Obs::Touch(self.touch(uid, t))));
                }
            }
            ThreadMode::Plain | ThreadMode::Signals { .. } => {
                if let Some(uid) = uid {
                    for mine in touches {
                        for t in mine {
                            out.push(Exp::Is(Obs::Touch(self.touch(uid, t))));
                        }
                    }
                }
            }
            ThreadMode::Fork(child) => {
                if let Some(uid) = uid {
                    for mine in touches {
                        for t in mine {
                            out.push(Exp::Is(Obs::Touch(self.touch(uid, t))));
                        }
                    }
                }
                out.push(Exp::Is(Obs::Child(Box::new(self.child_obs(child)))));
            }
        }
        out
    }
}
