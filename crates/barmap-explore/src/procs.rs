//! The explorer's process mode: one device (and an edu, for DMA) served
//! by `barmap_server` in the explorer's own process, reached by separate
//! client processes.
//!
//! A client is a process forked by the explorer that connects to the
//! device's socket as a vfio-user client (one thread, one request at a
//! time, see [`barmap_vfio_user`]) and
//! takes the memory BAR's file descriptor from the region info; or a
//! child forked by a client, which inherits its connection, its file
//! descriptor and its mapping. The explorer drives each client over a
//! `SOCK_SEQPACKET` pair: map the BAR, touch or write words (also in a
//! loop while memory is revoked, reset or put in D3hot by the explorer or
//! by another client), read and write by message, pass the BAR's file
//! descriptor to another client over `SCM_RIGHTS`, fork, exit, or be
//! SIGKILLed (also in the middle of its loop), or tamper with the BAR's
//! file itself (grow it while revoked, shrink it or punch a hole while
//! live, `pwrite` it), as a hostile client can. A client registers an
//! eventfd of its own for the device request interrupt (`SET_IRQS` on
//! `VFIO_PCI_REQ_IRQ_INDEX`) and reads it. The explorer requests the
//! device's removal at any moment (also while a client writes in its
//! loop), as `barmap ctl remove` does: the server signals the registered
//! eventfd once, revokes every BAR, shuts every connection down and unlinks
//! the socket (a surprise removal; vfio-pci instead signals again every
//! 10 s and waits until the user releases the device). The episode then
//! goes on with the same clients until [`POp::Replug`], which counts the
//! clients still alive, kills them and serves a fresh device.
//!
//! The reference model ([`ProcModel`]) holds the BAR's words and the
//! device's COMMAND.MEM and power state, and predicts every observation:
//! a word read equals the last write by any process, a touch while memory
//! is disabled is SIGBUS in every process, the contents come back when
//! memory is re-enabled, a killed client changes nothing for the others
//! (the words it was writing hold the old value or one it wrote), and the
//! server keeps serving (every wait is bounded; a client that does not
//! answer in time is a failure). After a tamper, the explorer waits
//! (bounded) for the server's watcher to set the file's size back, and the
//! model predicts the tamper events it counted and the words: a tamper
//! while revoked changes nothing (every touch is SIGBUS again, the contents
//! after re-enable are the model's); while live, a shrink or a punched hole
//! zeroes the words it took and a `pwrite` is a write. A removal signals
//! the eventfd of the last registration whose connection a live client
//! still holds (so the child that inherited it reads 1); when it returns,
//! a touch in every process that maps the BAR is SIGBUS, and stays so;
//! later requests by message, config writes and `DEVICE_RESET` fail with
//! ENODEV (the connection is gone), the explorer's reset too, a new client
//! cannot connect (ENOENT), the server holds no connection, the device
//! keeps its words, nothing hangs, and no client dies but those the
//! explorer kills.
//!
//! DMA: the same server serves an edu (`barmap_models::edu`, its DMA
//! registers in BAR0 0x80..0x98, a trapped register BAR reached by
//! message, a 4 KiB buffer at device address 0x40000) beside the default
//! device, whose memory BAR the ops above keep using; every client
//! connects to both. A client `DMA_MAP`s a window of its own on its edu
//! connection: a memfd of 4 KiB filled from a seed, passed with the
//! request (read-write), so the server reaches it with `pread`/`pwrite`
//! (`barmap_server::host::Backing::File`) and never sends the one-threaded
//! client a `DMA_READ`/`DMA_WRITE`; the memfd comes to the explorer over
//! the control socket, so the explorer reads what the device wrote. Each
//! window has a slot of its own (an IOVA, below the edu's 28-bit DMA
//! mask, never reused before a replug; the page after each is never
//! mapped). A client unmaps its windows; the edu DMAs between its buffer
//! and any window of the episode (live, unmapped, or of a dead client) or
//! an IOVA nobody mapped, started by a client's register writes by
//! message or by the explorer through the device. The model holds the
//! edu's buffer and each window's bytes and predicts the status, the
//! IOMMU faults the server counts and the target window after each DMA: a
//! live window transfers, an unmapped one (or an IOVA nobody mapped) is
//! one fault and changes nothing. A window's connection goes when its
//! last holder (the client, or a child it forked) exits or is killed, when
//! the server reads its end of file: a DMA between the death and that
//! read is either whole outcome (see `ProcModel::step_dma`); a check
//! waits for the edu's connections to go, then predicts the windows the
//! server holds, the buffer (the explorer DMAs it into a window of its
//! own) and every window's bytes, so no other client's window changes.
//! `Mutation::DeadClientsWindowsStay` breaks the server: a dead client's
//! windows come back once the server forgot them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use barmap_server::private_dir::PrivateDir;
use barmap_vfio_user as proto;

use crate::obs::{Exp, Obs, TouchObs, Val};
use crate::rng::{splitmix, Rng};

/// The memory BAR of the served default device.
const BAR: u32 = 2;
/// Most clients alive at once.
const MAX_CLIENTS: usize = 6;
/// The edu's DMA buffer: its device address and size.
const EDU_BUF: u64 = barmap_models::edu::DMA_START;
/// Bytes of the edu's buffer and of each client's DMA window.
const WIN: usize = barmap_models::edu::DMA_SIZE as usize;
/// The IOVA of DMA window slot 0; slot `k` is at `DMA_BASE + k *
/// DMA_STRIDE` (below the edu's 28-bit DMA mask), and the page after each
/// window is never mapped.
const DMA_BASE: u64 = 0x10_0000;
/// The distance between window slots.
const DMA_STRIDE: u64 = 0x2000;
/// Slots per episode (a slot is never reused before a replug, so a dead
/// client's window the server has not forgotten yet never meets a new one).
const DMA_SLOTS: u32 = 30_000;
/// The IOVA of the explorer's own window, through which it reads the
/// edu's buffer.
const EXPLORER_IOVA: u64 = 0x8_0000;
/// The server's client id of the explorer's window.
const EXPLORER_CLIENT: u64 = u64::MAX - 1;
/// The server's client id under which a broken server keeps a dead
/// client's windows.
const ZOMBIE_CLIENT: u64 = u64::MAX - 2;

/// A change of the device's state, by the explorer or by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Act {
    /// COMMAND.MEM cleared (a config write by a client).
    MemOff,
    /// COMMAND.MEM set.
    MemOn,
    /// Function-level reset (`DEVICE_RESET` by a client).
    Reset,
    /// D3hot (the explorer only).
    D3,
    /// D0 (the explorer only).
    D0,
}

/// What disturbs a client's write loop, from another process, while it
/// runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Disturb {
    /// Nothing.
    None,
    /// COMMAND.MEM cleared, then set.
    Toggle,
    /// A reset.
    Reset,
    /// D3hot, then D0 (the explorer).
    Power,
    /// The looping client is SIGKILLed.
    Kill,
    /// The explorer requests the device's removal (the REQ interrupt,
    /// then the device is gone).
    Remove,
}

/// How a client tampers with the BAR's file (its fd, not its mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Tamper {
    /// `ftruncate` to the BAR's size (a grow while revoked).
    Grow,
    /// `ftruncate` to the start of the word's page (while revoked, to
    /// anything but 0, a grow).
    Shrink,
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` of the word's page.
    Punch,
    /// `pwrite` of a value at the word (while revoked, a grow).
    Pwrite(u64),
}

/// One step of the process mode. Clients are named by selectors resolved
/// against the clients alive when the step runs (any subsequence is a
/// valid sequence, for shrinking).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum POp {
    /// The explorer forks a new client, which connects and takes the BAR's
    /// file descriptor.
    Spawn,
    /// A client forks a child (its connection, fd and mapping inherited).
    Fork {
        /// Client selector.
        c: u8,
    },
    /// A client mmaps the BAR (shared, read-write) from the fd it holds.
    Map {
        /// Client selector.
        c: u8,
    },
    /// A client munmaps its mapping.
    Unmap {
        /// Client selector.
        c: u8,
    },
    /// A client touches a word of its mapping.
    Touch {
        /// Client selector.
        c: u8,
        /// Word selector.
        word: u32,
        /// A value to write, or a read.
        write: Option<u64>,
    },
    /// A client writes `words` words `rounds` times through its mapping
    /// while another process disturbs the device.
    Loop {
        /// Client selector.
        c: u8,
        /// First word selector.
        word: u32,
        /// Words (1..=8).
        words: u8,
        /// Rounds.
        rounds: u16,
        /// Seed of the values.
        seed: u64,
        /// The disturbance.
        disturb: Disturb,
        /// The client that disturbs (else the explorer; Power and Kill are
        /// the explorer's).
        by: Option<u8>,
        /// Spin iterations before the disturbance.
        delay: u16,
    },
    /// A client reads a word by message (`REGION_READ`).
    MsgRead {
        /// Client selector.
        c: u8,
        /// Word selector.
        word: u32,
    },
    /// A client writes a word by message (`REGION_WRITE`).
    MsgWrite {
        /// Client selector.
        c: u8,
        /// Word selector.
        word: u32,
        /// Value.
        value: u64,
    },
    /// A client passes its BAR fd to another over `SCM_RIGHTS` (through
    /// the explorer), which keeps it in place of its own.
    PassFd {
        /// Sending client selector.
        from: u8,
        /// Receiving client selector.
        to: u8,
    },
    /// The explorer (`by` None) or a connected client changes the device's
    /// state.
    Config {
        /// The client, or the explorer.
        by: Option<u8>,
        /// What.
        act: Act,
    },
    /// A client exits.
    Exit {
        /// Client selector.
        c: u8,
    },
    /// A client is SIGKILLed.
    Kill {
        /// Client selector.
        c: u8,
    },
    /// A client tampers with the BAR's file through the fd it holds; the
    /// explorer then waits for the server to set the size back.
    Tamper {
        /// Client selector.
        c: u8,
        /// Word selector (where a shrink, punch or pwrite lands).
        word: u32,
        /// What it does.
        how: Tamper,
    },
    /// The explorer reads words through the device's own view, and counts
    /// the connections the server holds.
    Check {
        /// Word selector.
        word: u32,
    },
    /// A connected client registers a new eventfd of its own for the
    /// device request interrupt (`SET_IRQS`, `VFIO_PCI_REQ_IRQ_INDEX`,
    /// trigger); a child it forks later inherits it.
    ReqRegister {
        /// Client selector.
        c: u8,
    },
    /// A client reads (non-blocking) the request eventfd it holds: the
    /// count signalled since the last read, 0 if none.
    ReqRead {
        /// Client selector.
        c: u8,
    },
    /// The explorer requests the device's removal, as `barmap ctl remove`
    /// does: the REQ interrupt to the client that registered for it, then
    /// the device is gone (every BAR revoked, every connection shut down,
    /// its socket unlinked). Then every client that has the BAR mapped
    /// touches it.
    Remove,
    /// After a removal, the explorer counts the clients still alive, kills
    /// them, and serves a fresh device (a new model) for the rest of the
    /// episode.
    Replug,
    /// A connected client creates a memfd of one window's size, fills it
    /// from `seed`, and `DMA_MAP`s it with the fd (read-write) at the next
    /// free slot's IOVA on its edu connection; the memfd is shared with
    /// the explorer.
    DmaMap {
        /// Client selector.
        c: u8,
        /// Seed of the window's contents.
        seed: u64,
    },
    /// A connected client `DMA_UNMAP`s one of its live windows.
    DmaUnmap {
        /// Client selector.
        c: u8,
        /// Window selector (among the client's live windows).
        w: u16,
    },
    /// The edu DMAs between its buffer and a window (any window of the
    /// episode, live, unmapped or of a dead client, or an IOVA nobody
    /// mapped), started by register writes by message from a connected
    /// client or by the explorer through the device directly.
    Dma {
        /// The client that starts it, or the explorer.
        by: Option<u8>,
        /// Window selector (one past the windows: an IOVA never mapped).
        w: u16,
        /// From the buffer to the window (else from the window to the
        /// buffer).
        to_ram: bool,
        /// Offset in the window.
        woff: u16,
        /// Offset in the buffer.
        boff: u16,
        /// Length selector.
        len: u16,
    },
}

impl POp {
    /// The operation's kind, for per-kind counts.
    pub fn kind(&self) -> &'static str {
        match self {
            POp::Spawn => "proc_spawn",
            POp::Fork { .. } => "proc_fork",
            POp::Map { .. } => "proc_map",
            POp::Unmap { .. } => "proc_unmap",
            POp::Touch { .. } => "proc_touch",
            POp::Loop {
                disturb: Disturb::Kill,
                ..
            } => "proc_loop_killed",
            POp::Loop {
                disturb: Disturb::Remove,
                ..
            } => "proc_loop_removed",
            POp::Loop { .. } => "proc_loop",
            POp::MsgRead { .. } => "proc_msg_read",
            POp::MsgWrite { .. } => "proc_msg_write",
            POp::PassFd { .. } => "proc_pass_fd",
            POp::Config { by: None, .. } => "proc_config_explorer",
            POp::Config { .. } => "proc_config_client",
            POp::Exit { .. } => "proc_exit",
            POp::Kill { .. } => "proc_kill",
            POp::Check { .. } => "proc_check",
            POp::ReqRegister { .. } => "proc_req_register",
            POp::ReqRead { .. } => "proc_req_read",
            POp::Remove => "proc_remove",
            POp::Replug => "proc_replug",
            POp::DmaMap { .. } => "proc_dma_map",
            POp::DmaUnmap { .. } => "proc_dma_unmap",
            POp::Dma { to_ram: true, .. } => "proc_dma_to_window",
            POp::Dma { to_ram: false, .. } => "proc_dma_from_window",
            POp::Tamper { how, .. } => match how {
                Tamper::Grow => "proc_tamper_grow",
                Tamper::Shrink => "proc_tamper_shrink",
                Tamper::Punch => "proc_tamper_punch",
                Tamper::Pwrite(_) => "proc_tamper_pwrite",
            },
        }
    }

    /// Simpler variants, for shrinking.
    pub fn simpler(&self) -> Vec<POp> {
        let mut out = Vec::new();
        let mut push = |o: POp| {
            if &o != self && !out.contains(&o) {
                out.push(o);
            }
        };
        match self.clone() {
            POp::Loop {
                c,
                word,
                words,
                rounds,
                seed,
                disturb,
                by,
                delay,
            } => {
                let base = POp::Loop {
                    c,
                    word,
                    words,
                    rounds,
                    seed,
                    disturb,
                    by,
                    delay,
                };
                let with = |f: &dyn Fn(&mut POp)| {
                    let mut v = base.clone();
                    f(&mut v);
                    v
                };
                push(with(&|v| {
                    if let POp::Loop { words, .. } = v {
                        *words = 1
                    }
                }));
                push(with(&|v| {
                    if let POp::Loop { by, .. } = v {
                        *by = None
                    }
                }));
                push(with(&|v| {
                    if let POp::Loop { rounds, .. } = v {
                        *rounds = (*rounds / 2).max(1)
                    }
                }));
                push(with(&|v| {
                    if let POp::Loop { delay, .. } = v {
                        *delay = 0
                    }
                }));
                push(with(&|v| {
                    if let POp::Loop { c, .. } = v {
                        *c = 0
                    }
                }));
            }
            POp::Touch { c, word, write } => {
                push(POp::Touch { c: 0, word, write });
                push(POp::Touch { c, word: 0, write });
            }
            POp::Config { by: Some(_), act } => push(POp::Config { by: None, act }),
            POp::Tamper { c, word, how } => {
                push(POp::Tamper { c: 0, word, how });
                push(POp::Tamper { c, word: 0, how });
            }
            POp::Dma {
                by,
                w,
                to_ram,
                woff,
                boff,
                len,
            } => {
                let d = |by, woff, boff, len| POp::Dma {
                    by,
                    w,
                    to_ram,
                    woff,
                    boff,
                    len,
                };
                push(d(None, woff, boff, len));
                push(d(by, 0, boff, len));
                push(d(by, woff, 0, len));
                push(d(by, woff, boff, 0));
            }
            _ => {}
        }
        out
    }
}

/// Generates one operation for the model's state.
pub fn generate(rng: &mut Rng, m: &ProcModel) -> POp {
    let n = m.clients.len();
    if m.removed && (n == 0 || rng.chance(1, 12)) {
        return POp::Replug;
    }
    if n == 0 || (n < 2 && rng.chance(1, 3)) {
        return POp::Spawn;
    }
    if rng.chance(1, 150) {
        return POp::Remove;
    }
    let c = rng.below(16) as u8;
    let word = if rng.chance(9, 10) {
        // A few hot words over several pages, so reads meet writes.
        (rng.below(48) * 523) as u32
    } else {
        rng.next_u32()
    };
    if rng.chance(1, 10) {
        let w = rng.below(1 + m.windows.len() as u64 + 1) as u16;
        return match rng.below(10) {
            0..=2 => POp::DmaMap {
                c,
                seed: rng.next_u64(),
            },
            3 => POp::DmaUnmap {
                c,
                w: rng.below(8) as u16,
            },
            _ => POp::Dma {
                by: rng.chance(1, 2).then(|| rng.below(16) as u8),
                w,
                to_ram: rng.chance(1, 2),
                woff: rng.below(WIN as u64) as u16,
                boff: rng.below(WIN as u64) as u16,
                len: rng.next_u32() as u16,
            },
        };
    }
    let act = |rng: &mut Rng, client: bool| {
        let k = rng.below(if client { 3 } else { 5 });
        [Act::MemOff, Act::MemOn, Act::Reset, Act::D3, Act::D0][k as usize]
    };
    match rng.below(100) {
        0..=3 => POp::Tamper {
            c,
            word,
            how: match rng.below(4) {
                0 => Tamper::Grow,
                1 => Tamper::Shrink,
                2 => Tamper::Punch,
                _ => Tamper::Pwrite(rng.next_u64()),
            },
        },
        4 => POp::ReqRegister { c },
        5 => POp::ReqRead { c },
        6..=29 => POp::Touch {
            c,
            word,
            write: rng.chance(1, 2).then(|| rng.next_u64()),
        },
        30..=37 => POp::Map { c },
        38..=39 => POp::Unmap { c },
        40..=47 => POp::MsgRead { c, word },
        48..=53 => POp::MsgWrite {
            c,
            word,
            value: rng.next_u64(),
        },
        54..=63 => {
            let disturb = [
                Disturb::None,
                Disturb::Toggle,
                Disturb::Toggle,
                Disturb::Reset,
                Disturb::Power,
                Disturb::Kill,
                Disturb::Remove,
            ][{
                let kinds = if rng.chance(1, 15) { 7 } else { 6 };
                rng.below(kinds) as usize
            }];
            POp::Loop {
                c,
                word,
                words: 1 + rng.below(8) as u8,
                rounds: 1 + rng.below(400) as u16,
                seed: rng.next_u64(),
                disturb,
                by: rng.chance(1, 2).then(|| rng.below(16) as u8),
                delay: rng.below(2000) as u16,
            }
        }
        64..=67 => POp::PassFd {
            from: c,
            to: rng.below(16) as u8,
        },
        68..=75 => POp::Config {
            by: None,
            act: act(rng, false),
        },
        76..=81 => POp::Config {
            by: Some(c),
            act: act(rng, true),
        },
        82..=84 => POp::Fork { c },
        85..=86 => POp::Exit { c },
        87..=89 => POp::Kill { c },
        90..=92 => POp::Check { word },
        _ if n < MAX_CLIENTS => POp::Spawn,
        _ => POp::Touch {
            c,
            word,
            write: None,
        },
    }
}

/// What the model knows of one client.
#[derive(Debug, Clone)]
pub struct ClientModel {
    /// The connection it may send messages on (a client it forked has
    /// none of its own).
    conn: Option<u32>,
    /// The connection its open file keeps alive.
    holds: u32,
    /// It holds a BAR fd.
    fd: bool,
    /// It has the BAR mapped.
    mapped: bool,
    /// The request eventfd it holds (its own or inherited), by id.
    efd: Option<u32>,
}

/// Where a client's DMA window stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WinState {
    /// Mapped, its connection held by a live client.
    Live,
    /// Its connection's last holder is gone; the server forgets the
    /// window when it reads the connection's end of file, which may not
    /// have happened yet.
    Dying,
    /// Unmapped, or forgotten with its connection.
    Gone,
}

/// One DMA window of the episode, in the order they were mapped.
#[derive(Debug, Clone)]
struct Window {
    /// Its slot (the IOVA).
    slot: u32,
    /// The connection that mapped it.
    conn: u32,
    state: WinState,
    /// The window's bytes (its memfd).
    bytes: Vec<u8>,
}

/// The reference model of the process mode.
#[derive(Debug, Clone)]
pub struct ProcModel {
    words: usize,
    mem: Vec<u64>,
    mem_on: bool,
    d3: bool,
    clients: Vec<ClientModel>,
    next_conn: u32,
    /// The device was removed.
    removed: bool,
    /// The registration for the request interrupt: the connection that
    /// made it and the eventfd.
    req: Option<(u32, u32)>,
    /// Each eventfd's count not yet read, by id.
    efd_counts: Vec<u64>,
    /// A deliberate model error (tests of the explorer itself): predicts
    /// that a reset clears the memory BAR.
    mutate_reset: bool,
    /// The edu's DMA buffer.
    buf: Vec<u8>,
    /// Every DMA window mapped in the episode.
    windows: Vec<Window>,
}

/// An operation with its clients resolved to indexes of the clients alive.
#[derive(Debug, Clone)]
pub struct PPlan {
    op: POp,
    c: usize,
    other: Option<usize>,
    word: usize,
}

impl ProcModel {
    /// A fresh device with `memory` bytes of BAR, all zero, memory
    /// enabled, D0, no clients.
    pub fn new(memory: u64, mutate_reset: bool) -> ProcModel {
        let words = (memory / 8) as usize;
        ProcModel {
            words,
            mem: vec![0; words],
            mem_on: true,
            d3: false,
            clients: Vec::new(),
            next_conn: 0,
            removed: false,
            req: None,
            efd_counts: Vec::new(),
            mutate_reset,
            buf: vec![0; WIN],
            windows: Vec::new(),
        }
    }

    /// Whether the device was removed (the episode goes on with its
    /// clients until a [`POp::Replug`]).
    pub fn removed(&self) -> bool {
        self.removed
    }

    fn enabled(&self) -> bool {
        self.mem_on && !self.d3 && !self.removed
    }

    /// Whether a live client keeps connection `conn` open.
    fn held(&self, conn: u32) -> bool {
        self.clients.iter().any(|c| c.holds == conn)
    }

    /// The removal's REQ interrupt: the count `remove` reports (exact while
    /// the registering connection is held; 0 or 1 once its last holder is
    /// gone, as the server may not have read its end of file yet), and
    /// the signal to its eventfd.
    fn request(&mut self) -> Exp {
        let one = |v| Obs::Api(Ok(Val::U64(v)));
        match self.req.take() {
            Some((conn, efd)) if self.held(conn) => {
                self.efd_counts[efd as usize] += 1;
                Exp::Is(one(1))
            }
            Some(_) => Exp::OneOf(vec![one(0), one(1)]),
            None => Exp::Is(one(0)),
        }
    }

    /// The windows that go with client `i` if it dies: its connection's
    /// live windows, unless another live client still holds it.
    fn orphaned(&self, i: usize) -> Vec<usize> {
        let conn = self.clients[i].holds;
        let others = self
            .clients
            .iter()
            .enumerate()
            .any(|(j, c)| j != i && c.holds == conn);
        if others {
            return Vec::new();
        }
        (0..self.windows.len())
            .filter(|&k| self.windows[k].conn == conn && self.windows[k].state == WinState::Live)
            .collect()
    }

    /// Removes client `i`; its orphaned windows are dying.
    fn remove_client(&mut self, i: usize) {
        for k in self.orphaned(i) {
            self.windows[k].state = WinState::Dying;
        }
        self.clients.remove(i);
    }

    /// The windows the server holds once it has read every dead
    /// connection's end of file (the explorer's own included).
    fn windows_held(&self) -> u64 {
        1 + self
            .windows
            .iter()
            .filter(|w| w.state == WinState::Live)
            .count() as u64
    }

    /// A DMA's target IOVA, window offset, buffer offset and length.
    fn dma_args(&self, w: usize, woff: u16, boff: u16, len: u16) -> (u64, usize, usize, usize) {
        let iova = match self.windows.get(w) {
            Some(win) => slot_iova(win.slot),
            // The page after slot 0's window: never mapped.
            None => DMA_BASE + WIN as u64,
        };
        let (woff, boff) = (woff as usize % WIN, boff as usize % WIN);
        let room = WIN - woff.max(boff);
        (iova, woff, boff, 1 + len as usize % room)
    }

    fn loop_word(&self, first: usize, j: usize) -> usize {
        (first + j * 515) % self.words
    }

    /// Resolves `op` against the state; `None` if it does not apply.
    pub fn plan(&self, op: &POp) -> Option<PPlan> {
        let n = self.clients.len();
        let pick = |s: u8| (n > 0).then(|| s as usize % n);
        let connected = |i: usize| self.clients[i].conn.is_some();
        let mut p = PPlan {
            op: op.clone(),
            c: 0,
            other: None,
            word: 0,
        };
        match *op {
            POp::Spawn => (n < MAX_CLIENTS).then_some(())?,
            POp::Fork { c } => {
                p.c = pick(c)?;
                (n < MAX_CLIENTS).then_some(())?
            }
            POp::Map { c } => {
                p.c = pick(c)?;
                let cl = &self.clients[p.c];
                (cl.fd && !cl.mapped).then_some(())?
            }
            POp::Unmap { c } => {
                p.c = pick(c)?;
                self.clients[p.c].mapped.then_some(())?
            }
            POp::Touch { c, word, .. } => {
                p.c = pick(c)?;
                p.word = word as usize % self.words;
                self.clients[p.c].mapped.then_some(())?
            }
            POp::Loop {
                c,
                word,
                disturb,
                by,
                ..
            } => {
                p.c = pick(c)?;
                p.word = word as usize % self.words;
                self.clients[p.c].mapped.then_some(())?;
                (disturb != Disturb::Remove || !self.removed).then_some(())?;
                if let (Some(b), Disturb::Toggle | Disturb::Reset) = (by, disturb) {
                    let b = pick(b)?;
                    if b != p.c && connected(b) && !self.removed {
                        p.other = Some(b);
                    }
                }
            }
            POp::MsgRead { c, word } | POp::MsgWrite { c, word, .. } => {
                p.c = pick(c)?;
                p.word = word as usize % self.words;
                connected(p.c).then_some(())?
            }
            POp::PassFd { from, to } => {
                p.c = pick(from)?;
                let to = pick(to)?;
                (self.clients[p.c].fd && to != p.c).then_some(())?;
                p.other = Some(to);
            }
            POp::Config { by, act } => {
                if let Some(b) = by {
                    p.c = pick(b)?;
                    (connected(p.c) && matches!(act, Act::MemOff | Act::MemOn | Act::Reset))
                        .then_some(())?;
                    p.other = Some(p.c);
                }
            }
            POp::Exit { c } | POp::Kill { c } => p.c = pick(c)?,
            POp::Check { word } => p.word = word as usize % self.words,
            POp::ReqRegister { c } => {
                p.c = pick(c)?;
                connected(p.c).then_some(())?
            }
            POp::ReqRead { c } => {
                p.c = pick(c)?;
                self.clients[p.c].efd.is_some().then_some(())?
            }
            POp::Remove => (!self.removed).then_some(())?,
            POp::Replug => self.removed.then_some(())?,
            POp::Tamper { c, word, .. } => {
                p.c = pick(c)?;
                p.word = word as usize % self.words;
                self.clients[p.c].fd.then_some(())?
            }
            POp::DmaMap { c, .. } => {
                p.c = pick(c)?;
                (connected(p.c) && (self.windows.len() as u32) < DMA_SLOTS).then_some(())?
            }
            POp::DmaUnmap { c, w } => {
                p.c = pick(c)?;
                let conn = self.clients[p.c].conn?;
                let mine: Vec<usize> = (0..self.windows.len())
                    .filter(|&k| {
                        self.windows[k].conn == conn && self.windows[k].state == WinState::Live
                    })
                    .collect();
                p.word = *mine.get(w as usize % mine.len().max(1))?;
            }
            POp::Dma { by, w, .. } => {
                p.word = w as usize % (self.windows.len() + 1);
                if let Some(b) = by {
                    let b = pick(b)?;
                    if connected(b) {
                        p.other = Some(b);
                    }
                }
            }
        }
        Some(p)
    }

    fn apply(&mut self, act: Act) {
        match act {
            Act::MemOff => self.mem_on = false,
            Act::MemOn => self.mem_on = true,
            Act::D3 => self.d3 = true,
            Act::D0 => self.d3 = false,
            Act::Reset => {
                if self.mutate_reset {
                    self.mem.iter_mut().for_each(|w| *w = 0);
                }
            }
        }
    }

    /// The page of word `w`: its first word and the word past it.
    fn page_of(&self, w: usize) -> (usize, usize) {
        let first = w / 512 * 512;
        (first, (first + 512).min(self.words))
    }

    /// Applies a tamper at word `w`; returns the tamper events the server
    /// counts for it (the file's size changed away from what the BAR's
    /// state says: 0 while revoked, the BAR's size while live).
    fn tamper(&mut self, how: Tamper, w: usize) -> u64 {
        let (first, end) = self.page_of(w);
        if !self.enabled() {
            // Every change is undone; the saved contents are untouched.
            return match how {
                Tamper::Grow | Tamper::Pwrite(_) => 1,
                Tamper::Shrink => u64::from(first > 0),
                Tamper::Punch => 0,
            };
        }
        match how {
            Tamper::Grow => 0,
            Tamper::Shrink => {
                // What the shrink cut off reads as zero once the size is
                // set back.
                self.mem[first..].iter_mut().for_each(|v| *v = 0);
                1
            }
            Tamper::Punch => {
                self.mem[first..end].iter_mut().for_each(|v| *v = 0);
                0
            }
            Tamper::Pwrite(v) => {
                self.mem[w] = v;
                0
            }
        }
    }

    /// The connections the server holds: those live clients keep open,
    /// none once the device is removed.
    fn connections(&self) -> u64 {
        if self.removed {
            return 0;
        }
        self.edu_connections() as u64
    }

    /// The connections the edu holds: those live clients keep open (the
    /// default device's removal leaves the edu alone).
    fn edu_connections(&self) -> usize {
        let mut held: Vec<u32> = self.clients.iter().map(|c| c.holds).collect();
        held.sort_unstable();
        held.dedup();
        held.len()
    }

    /// Checks the observations of `plan` and moves the model on; the
    /// expectations, and whether the observations met them.
    pub fn step(&mut self, plan: &PPlan, obs: &[Obs]) -> (Vec<Exp>, bool) {
        let ok = || Exp::Is(Obs::Api(Ok(Val::Unit)));
        let err = |e: i32| Exp::Is(Obs::Api(Err(format!("errno {e}"))));
        let exp: Vec<Exp> = match plan.op {
            // The removed device's socket is unlinked: connecting fails.
            POp::Spawn if self.removed => vec![err(1000 + libc::ENOENT)],
            POp::Spawn => {
                let conn = self.next_conn;
                self.next_conn += 1;
                self.clients.push(ClientModel {
                    conn: Some(conn),
                    holds: conn,
                    fd: true,
                    mapped: false,
                    efd: None,
                });
                vec![ok()]
            }
            POp::Fork { .. } => {
                let parent = &self.clients[plan.c];
                let child = ClientModel {
                    conn: None,
                    holds: parent.holds,
                    fd: parent.fd,
                    mapped: parent.mapped,
                    efd: parent.efd,
                };
                self.clients.push(child);
                vec![ok()]
            }
            POp::Map { .. } => {
                self.clients[plan.c].mapped = true;
                vec![ok()]
            }
            POp::Unmap { .. } => {
                self.clients[plan.c].mapped = false;
                vec![ok()]
            }
            POp::Touch { write, .. } => {
                let t = if !self.enabled() {
                    TouchObs::Sigbus
                } else if let Some(v) = write {
                    self.mem[plan.word] = v;
                    TouchObs::Wrote
                } else {
                    TouchObs::Value(self.mem[plan.word])
                };
                vec![Exp::Is(Obs::Touch(t))]
            }
            // Every connection was shut down: the client's request finds
            // the socket closed (its transport's ENODEV).
            POp::MsgRead { .. } | POp::MsgWrite { .. } if self.removed => vec![err(libc::ENODEV)],
            POp::MsgRead { .. } => vec![Exp::Is(Obs::Api(if self.enabled() {
                Ok(Val::U64(self.mem[plan.word]))
            } else {
                Err(format!("errno {}", libc::EIO))
            }))],
            POp::MsgWrite { value, .. } => vec![Exp::Is(Obs::Api(if self.enabled() {
                self.mem[plan.word] = value;
                Ok(Val::Unit)
            } else {
                Err(format!("errno {}", libc::EIO))
            }))],
            POp::PassFd { .. } => {
                let to = plan.other.expect("resolved");
                self.clients[to].fd = true;
                vec![ok()]
            }
            POp::Config { by: Some(_), .. } if self.removed => vec![err(libc::ENODEV)],
            // The server's reset of a removed device: ENODEV.
            POp::Config {
                act: Act::Reset, ..
            } if self.removed => vec![err(libc::ENODEV)],
            POp::Config { act, .. } => {
                self.apply(act);
                vec![ok()]
            }
            POp::ReqRegister { .. } if self.removed => vec![err(libc::ENODEV)],
            POp::ReqRegister { .. } => {
                let id = self.efd_counts.len() as u32;
                self.efd_counts.push(0);
                let cl = &mut self.clients[plan.c];
                cl.efd = Some(id);
                self.req = Some((cl.holds, id));
                vec![ok()]
            }
            POp::ReqRead { .. } => {
                let id = self.clients[plan.c].efd.expect("planned") as usize;
                let n = std::mem::take(&mut self.efd_counts[id]);
                vec![Exp::Is(Obs::Api(Ok(Val::U64(n))))]
            }
            POp::Remove => {
                let mut e = vec![self.request()];
                self.removed = true;
                // Every mapping is revoked: SIGBUS in every process.
                for c in &self.clients {
                    if c.mapped {
                        e.push(Exp::Is(Obs::Touch(TouchObs::Sigbus)));
                    }
                }
                e
            }
            POp::Replug => {
                // Nobody died but the clients the explorer killed.
                let e = vec![Exp::Is(Obs::Api(Ok(Val::U64(self.clients.len() as u64))))];
                *self = ProcModel::new(self.words as u64 * 8, self.mutate_reset);
                e
            }
            POp::Exit { .. } | POp::Kill { .. } => {
                self.remove_client(plan.c);
                vec![Exp::Is(Obs::Api(Ok(Val::Unit)))]
            }
            POp::Check { .. } => {
                let mut e = vec![Exp::Is(Obs::Api(Ok(Val::U64(self.connections()))))];
                e.push(Exp::Is(Obs::Api(Ok(Val::U64(self.mem[plan.word])))));
                // The explorer waited for the server to read every dead
                // connection's end of file: the dying windows are gone.
                for w in &mut self.windows {
                    if w.state == WinState::Dying {
                        w.state = WinState::Gone;
                    }
                }
                let u = |v| Exp::Is(Obs::Api(Ok(Val::U64(v))));
                e.push(u(self.windows_held()));
                e.push(u(digest(&self.buf)));
                for w in &self.windows {
                    e.push(u(digest(&w.bytes)));
                }
                e
            }
            POp::DmaMap { seed, .. } => {
                let conn = self.clients[plan.c].conn.expect("planned");
                self.windows.push(Window {
                    slot: self.windows.len() as u32,
                    conn,
                    state: WinState::Live,
                    bytes: window_bytes(seed),
                });
                vec![ok()]
            }
            POp::DmaUnmap { .. } => {
                self.windows[plan.word].state = WinState::Gone;
                vec![ok()]
            }
            POp::Dma {
                to_ram,
                woff,
                boff,
                len,
                ..
            } => return self.step_dma(plan, to_ram, woff, boff, len, obs),
            POp::Tamper { how, .. } => {
                // The calls succeed; then the tamper events the server
                // counted (a change of the file's size it set back), then
                // the word as the device holds it.
                let events = self.tamper(how, plan.word);
                vec![
                    ok(),
                    Exp::Is(Obs::Api(Ok(Val::U64(events)))),
                    Exp::Is(Obs::Api(Ok(Val::U64(self.mem[plan.word])))),
                ]
            }
            POp::Loop {
                words,
                rounds,
                seed,
                disturb,
                ..
            } => return self.step_loop(plan, words, rounds, seed, disturb, obs),
        };
        let same = exp.len() == obs.len() && exp.iter().zip(obs).all(|(e, o)| e.admits(o));
        (exp, same)
    }

    /// A DMA's observations: the register writes' status, the IOMMU
    /// faults it cost (the server's count), the target window's digest
    /// (its memfd, 0 for an IOVA never mapped).
    ///
    /// A live window: the transfer happens, no fault. A window unmapped,
    /// or an IOVA nobody mapped: one fault, nothing changes (the edu
    /// transfers nothing and counts it). A dying window (its last holder
    /// was just killed or exited): as the kernel has it, a process's
    /// files are released when it dies, but the server learns of it only
    /// when its thread reads the connection's end of file, so a DMA
    /// before that still reaches the window (the memfd lives while the
    /// server holds it, as pinned pages outlive the process until the
    /// IOMMU mapping goes) and one after faults: exactly one of the two,
    /// whole (a window is forgotten under the table's write lock, which a
    /// transfer holds for reading), never a partial transfer.
    fn step_dma(
        &mut self,
        plan: &PPlan,
        to_ram: bool,
        woff: u16,
        boff: u16,
        len: u16,
        obs: &[Obs],
    ) -> (Vec<Exp>, bool) {
        let (_, woff, boff, n) = self.dma_args(plan.word, woff, boff, len);
        let u = |v| Obs::Api(Ok(Val::U64(v)));
        let state = self
            .windows
            .get(plan.word)
            .map_or(WinState::Gone, |w| w.state);
        let before = self.windows.get(plan.word).map(|w| w.bytes.clone());
        let mut after_buf = self.buf.clone();
        let mut after = before.clone();
        if let Some(win) = &mut after {
            if to_ram {
                win[woff..woff + n].copy_from_slice(&self.buf[boff..boff + n]);
            } else {
                after_buf[boff..boff + n].copy_from_slice(&win[woff..woff + n]);
            }
        }
        let d = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, |b| digest(b));
        let done = [u(0), u(d(&after))];
        let fault = [u(1), u(d(&before))];
        let ok = Exp::Is(Obs::Api(Ok(Val::Unit)));
        let mut exp = vec![ok];
        match state {
            WinState::Live => exp.extend(done.iter().cloned().map(Exp::Is)),
            WinState::Gone => exp.extend(fault.iter().cloned().map(Exp::Is)),
            WinState::Dying => {
                // Either whole outcome, as the fault count says.
                let faulted = obs.get(1) == Some(&u(1));
                exp.push(Exp::OneOf(vec![u(0), u(1)]));
                exp.push(Exp::Is(if faulted {
                    fault[1].clone()
                } else {
                    done[1].clone()
                }));
            }
        }
        let same = exp.len() == obs.len() && exp.iter().zip(obs).all(|(e, o)| e.admits(o));
        if same && obs.get(1) == Some(&u(0)) {
            self.buf = after_buf;
            if let (Some(w), Some(a)) = (self.windows.get_mut(plan.word), after) {
                w.bytes = a;
            }
        }
        (exp, same)
    }

    fn step_loop(
        &mut self,
        plan: &PPlan,
        words: u8,
        rounds: u16,
        seed: u64,
        disturb: Disturb,
        obs: &[Obs],
    ) -> (Vec<Exp>, bool) {
        let words = words as usize;
        let enabled_before = self.enabled();
        let first = if disturb == Disturb::Reset && self.removed {
            // The explorer's reset of a removed device (a client's is not
            // planned once removed).
            Obs::Api(Err(format!("errno {}", libc::ENODEV)))
        } else {
            Obs::Api(Ok(Val::Unit))
        };
        let mut exp = vec![Exp::Is(first)];
        match disturb {
            Disturb::None | Disturb::Kill => {}
            Disturb::Toggle => self.mem_on = true,
            Disturb::Reset if self.removed => {}
            Disturb::Reset => self.apply(Act::Reset),
            Disturb::Power => self.d3 = false,
            Disturb::Remove => {
                // The count `remove` reports is not observed here; its
                // signal is (by a later read of the eventfd).
                let _ = self.request();
                self.removed = true;
            }
        }
        if disturb == Disturb::Kill {
            self.remove_client(plan.c);
        }
        // Then one observation per word: for a loop that finished, how many
        // rounds of it last succeeded (0: none), then the word as the device
        // holds it.
        let mut ok = exp[0].admits(obs.first().unwrap_or(&Obs::Broken(String::new())));
        for j in 0..words {
            let w = self.loop_word(plan.word, j);
            let old = self.mem[w];
            let values: Vec<u64> = (0..rounds as usize)
                .map(|r| loop_value(seed, j, r))
                .collect();
            if disturb == Disturb::Kill {
                // Killed at any moment: the old value or one it wrote.
                let mut any: Vec<Obs> = vec![Obs::Api(Ok(Val::U64(old)))];
                any.extend(values.iter().map(|&v| Obs::Api(Ok(Val::U64(v)))));
                let e = Exp::OneOf(any);
                let o = obs.get(1 + j);
                ok &= o.is_some_and(|o| e.admits(o));
                if let Some(Obs::Api(Ok(Val::U64(v)))) = o {
                    self.mem[w] = *v;
                }
                exp.push(e);
                continue;
            }
            // The last round that succeeded, as the client reported it.
            let last = match obs.get(1 + 2 * j) {
                Some(Obs::Api(Ok(Val::U64(l)))) => *l as usize,
                _ => usize::MAX,
            };
            let last_exp = if disturb == Disturb::None {
                Exp::Is(Obs::Api(Ok(Val::U64(if enabled_before {
                    rounds as u64
                } else {
                    0
                }))))
            } else {
                Exp::OneOf(
                    (0..=rounds as u64)
                        .map(|l| Obs::Api(Ok(Val::U64(l))))
                        .collect(),
                )
            };
            ok &= obs.get(1 + 2 * j).is_some_and(|o| last_exp.admits(o));
            exp.push(last_exp);
            if (1..=rounds as usize).contains(&last) {
                self.mem[w] = values[last - 1];
            }
            let e = Exp::Is(Obs::Api(Ok(Val::U64(self.mem[w]))));
            ok &= obs.get(2 + 2 * j).is_some_and(|o| e.admits(o));
            exp.push(e);
        }
        ok &= exp.len() == obs.len();
        (exp, ok)
    }
}

/// The IOVA of window slot `slot`.
fn slot_iova(slot: u32) -> u64 {
    DMA_BASE + slot as u64 * DMA_STRIDE
}

/// A new window's contents, from `seed`.
fn window_bytes(seed: u64) -> Vec<u8> {
    (0..WIN / 8)
        .flat_map(|k| splitmix(seed ^ k as u64).to_ne_bytes())
        .collect()
}

/// A digest of a window's or the buffer's bytes.
fn digest(b: &[u8]) -> u64 {
    b.chunks(8).fold(0x9e37_79b9_7f4a_7c15, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        splitmix(h ^ u64::from_ne_bytes(w))
    })
}

/// The value a loop seeded `seed` writes to its word `j` in round `r`.
pub fn loop_value(seed: u64, j: usize, r: usize) -> u64 {
    splitmix(seed ^ ((j as u64) << 32) ^ r as u64)
}

// ---- The system under test: a served device and client processes. ----

mod cmd {
    pub const MAP: u64 = 0;
    pub const UNMAP: u64 = 1;
    pub const TOUCH: u64 = 2;
    pub const LOOP: u64 = 3;
    pub const FORK: u64 = 4;
    pub const GIVE_FD: u64 = 5;
    pub const TAKE_FD: u64 = 6;
    pub const CONFIG: u64 = 7;
    pub const MSG_READ: u64 = 8;
    pub const MSG_WRITE: u64 = 9;
    pub const EXIT: u64 = 10;
    pub const TAMPER: u64 = 11;
    pub const REQ_REGISTER: u64 = 12;
    pub const REQ_READ: u64 = 13;
    pub const DMA_MAP: u64 = 14;
    pub const DMA_UNMAP: u64 = 15;
    pub const DMA_RUN: u64 = 16;
    /// The loop's first message: it has started.
    pub const STARTED: u64 = 100;
}

/// One client process as the explorer holds it.
struct Proc {
    pid: i32,
    pidfd: OwnedFd,
    ctl: OwnedFd,
    /// The explorer's own child (reaped with waitpid).
    direct: bool,
}

/// The served device and its clients.
pub struct ProcSut {
    server: Arc<barmap_server::Server>,
    /// The server's socket directory (private, removed when dropped, after
    /// the server stopped).
    dir: PrivateDir,
    socket: PathBuf,
    clients: Vec<Proc>,
    timeout: Duration,
    memory: u64,
    /// A deliberately broken server (tests of the explorer itself): its
    /// removal signals REQ and shuts the connections down but revokes
    /// nothing.
    broken_removal: bool,
    /// A deliberately broken server: once it has forgotten a dead
    /// client's DMA windows, they are back (a DMA through them goes on).
    broken_dma: bool,
    /// Each window's memfd, shared by the client that mapped it, in the
    /// model's order.
    windows: Vec<OwnedFd>,
    /// The explorer's own window (the edu's buffer is read through it).
    mine: OwnedFd,
}

fn sendmsg(sock: RawFd, words: &[u64], fd: Option<RawFd>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer in it refers to locals
    // that outlive the call.
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        }
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message: its words and the fd it carried. `Ok(None)` at
/// end of file.
fn recvmsg(sock: RawFd) -> std::io::Result<Option<(Vec<u64>, Option<OwnedFd>)>> {
    let mut buf = [0u8; 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: as in sendmsg; the cmsg walk stays inside cbuf as the
    // kernel filled it.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(None);
        }
        let mut fd = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let words = buf[..n as usize]
            .chunks_exact(8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
            .collect();
        Ok(Some((words, fd)))
    }
}

fn poll_in(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: one pollfd on the stack.
        let rc = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if rc > 0 {
            return true;
        }
        if rc == 0 || Instant::now() >= deadline {
            return false;
        }
    }
}

fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut sv = [0i32; 2];
    // SAFETY: socketpair fills the array with two new fds, owned below.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) })
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Moves `ctl` to fd 3 and closes every fd above it: a client holds only
/// its control socket and what it opens itself.
fn child_fds(ctl: RawFd) {
    // SAFETY: fd-table operations in a freshly forked child.
    unsafe {
        if ctl != 3 {
            libc::dup2(ctl, 3);
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
    }
}

/// A client's vfio-user connection, driven from its one thread: each
/// request waits for its reply (the client maps no DMA, so the server
/// sends no requests of its own). A client process never starts a thread:
/// it was forked from a process whose threads (the server's) start and end
/// all the time, and a lock one of them held at the fork (in the C
/// library, or Rust's own thread bookkeeping) stays held in the child
/// forever, so a thread the child starts could wait for it for good.
struct Wire {
    sock: std::os::unix::net::UnixStream,
    next: u16,
}

impl Wire {
    fn connect(path: &Path) -> Result<Wire, i32> {
        let err = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let sock = std::os::unix::net::UnixStream::connect(path).map_err(err)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(err)?;
        let mut w = Wire { sock, next: 1 };
        let version = proto::Version {
            major: 0,
            minor: 0,
            caps: proto::Capabilities {
                max_msg_fds: Some(8),
                ..proto::Capabilities::default()
            },
        };
        w.call(proto::VERSION, &version.encode())?;
        Ok(w)
    }

    fn call(&mut self, command: u16, payload: &[u8]) -> Result<proto::Message, i32> {
        self.call_fds(command, payload, &[])
    }

    /// As [`Wire::call`], passing `fds` with the request.
    fn call_fds(
        &mut self,
        command: u16,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<proto::Message, i32> {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        let h = proto::Header {
            id,
            command,
            ..proto::Header::default()
        };
        proto::send(self.sock.as_raw_fd(), h, payload, fds).map_err(|_| libc::ENODEV)?;
        let m = proto::recv(self.sock.as_raw_fd()).map_err(|_| libc::ENODEV)?;
        if m.header.id != id {
            return Err(libc::EPROTO);
        }
        if m.header.flags & proto::FLAG_ERROR != 0 {
            return Err(m.header.error as i32);
        }
        Ok(m)
    }

    /// The size of region `index` and the fd the server offers for it.
    fn region(&mut self, index: u32) -> Result<(u64, Option<OwnedFd>), i32> {
        let p = proto::RegionInfo::request(index, 64).encode();
        let m = self.call(proto::DEVICE_GET_REGION_INFO, &p)?;
        let size = proto::RegionInfo::decode(&m.payload)
            .ok_or(libc::EPROTO)?
            .size;
        Ok((size, m.fds.into_iter().next()))
    }

    fn rw(
        &mut self,
        write: bool,
        region: u32,
        offset: u64,
        data: &[u8],
        count: usize,
    ) -> Result<Vec<u8>, i32> {
        let mut p = proto::RegionAccess {
            offset,
            region,
            count: count as u32,
        }
        .encode();
        p.extend_from_slice(data);
        let cmd = if write {
            proto::REGION_WRITE
        } else {
            proto::REGION_READ
        };
        let m = self.call(cmd, &p)?;
        Ok(m.payload
            .get(proto::RegionAccess::SIZE..)
            .unwrap_or_default()
            .to_vec())
    }

    fn read(&mut self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), i32> {
        let d = self.rw(false, region, offset, &[], buf.len())?;
        if d.len() < buf.len() {
            return Err(libc::EPROTO);
        }
        buf.copy_from_slice(&d[..buf.len()]);
        Ok(())
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), i32> {
        self.rw(true, region, offset, data, data.len()).map(|_| ())
    }

    fn reset(&mut self) -> Result<(), i32> {
        self.call(proto::DEVICE_RESET, &[]).map(|_| ())
    }

    /// `DMA_UNMAP` of the window at `iova`.
    fn dma_unmap(&mut self, iova: u64) -> Result<(), i32> {
        let u = proto::DmaUnmap {
            argsz: proto::DmaUnmap::SIZE as u32,
            flags: 0,
            addr: iova,
            size: WIN as u64,
        };
        self.call(proto::DMA_UNMAP, &u.encode()).map(|_| ())
    }

    /// Registers `efd` as the trigger of the request interrupt.
    fn register_req(&mut self, efd: RawFd) -> Result<(), i32> {
        let set = proto::IrqSet {
            argsz: proto::IrqSet::SIZE as u32,
            flags: proto::IRQ_SET_DATA_EVENTFD | proto::IRQ_SET_ACTION_TRIGGER,
            index: proto::IRQ_REQ,
            start: 0,
            count: 1,
        };
        self.call_fds(proto::DEVICE_SET_IRQS, &set.encode(), &[efd])
            .map(|_| ())
    }
}

/// A client process's state.
struct Client {
    remote: Option<Wire>,
    /// Its connection to the edu.
    edu: Option<Wire>,
    fd: Option<OwnedFd>,
    /// The request eventfd it registered (or inherited).
    efd: Option<OwnedFd>,
    map: *mut u64,
    size: u64,
}

fn reply(words: &[u64], fd: Option<RawFd>) {
    if sendmsg(3, words, fd).is_err() {
        // SAFETY: leaving the client process.
        unsafe { libc::_exit(3) };
    }
}

fn errno_reply(r: Result<(), i32>) -> Vec<u64> {
    match r {
        Ok(()) => vec![0],
        Err(e) => vec![e as u64],
    }
}

fn touch(addr: *mut u64, write: Option<u64>) -> (u64, u64) {
    // SAFETY: addr lies in the client's shared mapping of the BAR (the
    // model only touches mapped words); the accessors survive SIGBUS.
    match unsafe {
        match write {
            Some(v) => barmap_target::touch::write_u64(addr, v).map(|()| None),
            None => barmap_target::touch::read_u64(addr).map(Some),
        }
    } {
        Ok(Some(v)) => (0, v),
        Ok(None) => (1, 0),
        Err(barmap_target::touch::Fault::Sigbus) => (2, 0),
        Err(barmap_target::touch::Fault::Sigsegv) => (3, 0),
    }
}

impl Client {
    fn word(&self, w: u64) -> *mut u64 {
        // SAFETY: the model resolves words inside the BAR.
        unsafe { self.map.add(w as usize) }
    }

    fn config(&mut self, act: u64) -> Vec<u64> {
        let Some(r) = &mut self.remote else {
            return vec![libc::ENODEV as u64];
        };
        if act == 2 {
            return errno_reply(r.reset());
        }
        let mut b = [0u8; 2];
        if let Err(e) = r.read(proto::CONFIG_REGION, 4, &mut b) {
            return vec![e as u64];
        }
        let cmd = u16::from_ne_bytes(b);
        let new = if act == 1 { cmd | 2 } else { cmd & !2 };
        errno_reply(r.write(proto::CONFIG_REGION, 4, &new.to_ne_bytes()))
    }

    /// A memfd of one window filled from `seed`, `DMA_MAP`ped with its fd
    /// at `iova` on the edu connection (so the server reaches it with
    /// `pread`/`pwrite` and never asks this one-threaded client).
    fn dma_map(&mut self, iova: u64, seed: u64) -> Result<OwnedFd, i32> {
        let r = self.edu.as_mut().ok_or(libc::ENODEV)?;
        let f =
            memfd("barmap-explore-window").map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        barmap_server::bar::pwrite_all(f.as_raw_fd(), &window_bytes(seed), 0)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let map = proto::DmaMap {
            argsz: proto::DmaMap::SIZE as u32,
            flags: proto::DMA_FLAG_READ | proto::DMA_FLAG_WRITE,
            offset: 0,
            addr: iova,
            size: WIN as u64,
        };
        r.call_fds(proto::DMA_MAP, &map.encode(), &[f.as_raw_fd()])?;
        Ok(f)
    }

    /// Registers a new eventfd for the request interrupt; it replaces the
    /// one held before only if the server took it.
    fn register_req(&mut self) -> Result<(), i32> {
        let Some(r) = &mut self.remote else {
            return Err(libc::ENODEV);
        };
        // SAFETY: eventfd returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(libc::EMFILE);
        }
        // SAFETY: a new fd, ours.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        r.register_req(efd.as_raw_fd())?;
        self.efd = Some(efd);
        Ok(())
    }

    /// The count of the request eventfd (0 if none was signalled).
    fn read_req(&mut self) -> Result<u64, i32> {
        let fd = self.efd.as_ref().ok_or(libc::EBADF)?.as_raw_fd();
        let mut b = [0u8; 8];
        // SAFETY: an 8-byte read into a local buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 8) };
        if n == 8 {
            return Ok(u64::from_ne_bytes(b));
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Ok(0),
            e => Err(e.unwrap_or(libc::EIO)),
        }
    }

    /// Serves the explorer's commands until told to exit.
    fn serve(mut self) -> ! {
        loop {
            let (m, fd) = match recvmsg(3) {
                Ok(Some(x)) => x,
                // SAFETY: leaving the client process.
                _ => unsafe { libc::_exit(0) },
            };
            let arg = |i: usize| m.get(i).copied().unwrap_or(0);
            match arg(0) {
                cmd::MAP => {
                    let fd = self.fd.as_ref().map_or(-1, |f| f.as_raw_fd());
                    // SAFETY: a new shared mapping of the BAR's fd.
                    let p = unsafe {
                        libc::mmap(
                            std::ptr::null_mut(),
                            self.size as usize,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_SHARED,
                            fd,
                            0,
                        )
                    };
                    if p == libc::MAP_FAILED {
                        reply(
                            &[std::io::Error::last_os_error().raw_os_error().unwrap_or(1) as u64],
                            None,
                        );
                    } else {
                        self.map = p.cast();
                        reply(&[0], None);
                    }
                }
                cmd::UNMAP => {
                    // SAFETY: our own mapping.
                    unsafe { libc::munmap(self.map.cast(), self.size as usize) };
                    self.map = std::ptr::null_mut();
                    reply(&[0], None);
                }
                cmd::TOUCH => {
                    let (k, v) = touch(self.word(arg(1)), (arg(2) == 1).then(|| arg(3)));
                    reply(&[0, k, v], None);
                }
                cmd::LOOP => {
                    let (first, words, rounds, seed) = (arg(1), arg(2), arg(3), arg(4));
                    let mut last = vec![0u64; words as usize];
                    for r in 0..rounds as usize {
                        for (j, l) in last.iter_mut().enumerate() {
                            let w = (first as usize + j * 515) % (self.size as usize / 8);
                            let (k, _) = touch(self.word(w as u64), Some(loop_value(seed, j, r)));
                            if k == 1 {
                                *l = r as u64 + 1;
                            }
                        }
                        if r == 0 {
                            reply(&[cmd::STARTED], None);
                        }
                    }
                    let mut out = vec![0];
                    out.extend(last);
                    reply(&out, None);
                }
                cmd::FORK => {
                    let Ok((mine, theirs)) = seqpacket_pair() else {
                        reply(&[libc::EMFILE as u64], None);
                        continue;
                    };
                    // SAFETY: the child continues this loop with its own
                    // control socket; it never returns into the caller.
                    let pid = unsafe { libc::fork() };
                    if pid == 0 {
                        // SAFETY: fd-table operations in the new child: its
                        // control socket becomes fd 3 (the parent's goes).
                        unsafe { libc::dup2(theirs.as_raw_fd(), 3) };
                        drop(theirs);
                        drop(mine);
                        // The parent's connection is kept open (held), never
                        // used: its replies go to whoever reads first.
                        if let Some(r) = self.remote.take() {
                            std::mem::forget(r);
                        }
                        if let Some(r) = self.edu.take() {
                            std::mem::forget(r);
                        }
                        self.serve();
                    }
                    drop(theirs);
                    if pid < 0 {
                        reply(&[libc::EAGAIN as u64], None);
                    } else {
                        reply(&[0, pid as u64], Some(mine.as_raw_fd()));
                    }
                }
                cmd::TAMPER => {
                    let fd = self.fd.as_ref().map_or(-1, |f| f.as_raw_fd());
                    let r = tamper_fd(fd, self.size, arg(1), arg(2), arg(3));
                    reply(&errno_reply(r), None);
                }
                cmd::GIVE_FD => match &self.fd {
                    Some(f) => reply(&[0], Some(f.as_raw_fd())),
                    None => reply(&[libc::EBADF as u64], None),
                },
                cmd::TAKE_FD => {
                    let ok = fd.is_some();
                    if ok {
                        self.fd = fd;
                    }
                    reply(&[if ok { 0 } else { libc::EBADF as u64 }], None);
                }
                cmd::CONFIG => {
                    let r = self.config(arg(1));
                    reply(&r, None);
                }
                cmd::MSG_READ => {
                    let mut b = [0u8; 8];
                    let r = match &mut self.remote {
                        Some(r) => r.read(BAR, arg(1) * 8, &mut b),
                        None => Err(libc::ENODEV),
                    };
                    match r {
                        Ok(()) => reply(&[0, u64::from_ne_bytes(b)], None),
                        Err(e) => reply(&[e as u64], None),
                    }
                }
                cmd::REQ_REGISTER => {
                    let r = self.register_req();
                    reply(&errno_reply(r), None);
                }
                cmd::REQ_READ => {
                    let r = self.read_req();
                    match r {
                        Ok(n) => reply(&[0, n], None),
                        Err(e) => reply(&[e as u64], None),
                    }
                }
                cmd::DMA_MAP => match self.dma_map(arg(1), arg(2)) {
                    Ok(f) => reply(&[0], Some(f.as_raw_fd())),
                    Err(e) => reply(&[e as u64], None),
                },
                cmd::DMA_UNMAP => {
                    let r = match &mut self.edu {
                        Some(r) => r.dma_unmap(arg(1)),
                        None => Err(libc::ENODEV),
                    };
                    reply(&errno_reply(r), None);
                }
                cmd::DMA_RUN => {
                    let r = match &mut self.edu {
                        Some(r) => edu_dma(r, [arg(1), arg(2), arg(3), arg(4)]),
                        None => Err(libc::ENODEV),
                    };
                    reply(&errno_reply(r), None);
                }
                cmd::MSG_WRITE => {
                    let r = match &mut self.remote {
                        Some(r) => r.write(BAR, arg(1) * 8, &arg(2).to_ne_bytes()),
                        None => Err(libc::ENODEV),
                    };
                    reply(&errno_reply(r), None);
                }
                // SAFETY: leaving the client process without running
                // destructors, as a process's exit closes its files.
                _ => unsafe { libc::_exit(0) },
            }
        }
    }
}

/// A client's tamper with the BAR's file `fd` of `size` bytes: `kind` 0
/// grows it to `size`, 1 shrinks it to the start of word `w`'s page, 2
/// punches that page, 3 pwrites `v` at word `w`.
fn tamper_fd(fd: RawFd, size: u64, kind: u64, w: u64, v: u64) -> Result<(), i32> {
    let page = (w * 8) & !4095;
    // SAFETY: system calls on the client's own fd with a local buffer.
    let r = unsafe {
        match kind {
            0 => libc::ftruncate(fd, size as libc::off_t) as isize,
            1 => libc::ftruncate(fd, page as libc::off_t) as isize,
            2 => libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                page as libc::off_t,
                4096,
            ) as isize,
            _ => {
                let b = v.to_ne_bytes();
                let n = libc::pwrite(fd, b.as_ptr().cast(), 8, (w * 8) as libc::off_t);
                if n == 8 {
                    0
                } else {
                    -1
                }
            }
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(())
}

/// A memfd of one window's size.
fn memfd(name: &str) -> std::io::Result<OwnedFd> {
    let f = barmap_server::bar::memfd(name, WIN as u64)?;
    Ok(f)
}

/// Starts an edu DMA by writing its registers through `r`: source,
/// destination, count, command.
fn edu_dma(r: &mut Wire, regs: [u64; 4]) -> Result<(), i32> {
    for (k, v) in regs.iter().enumerate() {
        r.write(0, 0x80 + 8 * k as u64, &v.to_ne_bytes())?;
    }
    Ok(())
}

/// The edu's registers for a DMA between its buffer at `boff` and `iova`.
fn dma_regs(to_ram: bool, iova: u64, boff: usize, n: usize) -> [u64; 4] {
    use barmap_models::edu::{DMA_RUN, DMA_TO_RAM};
    let buf = EDU_BUF + boff as u64;
    if to_ram {
        [buf, iova, n as u64, DMA_RUN | DMA_TO_RAM]
    } else {
        [iova, buf, n as u64, DMA_RUN]
    }
}

/// The body of a client forked by the explorer: connect, take the BAR's
/// fd, say so, serve.
fn client_main(socket: &Path, ctl: RawFd) -> ! {
    child_fds(ctl);
    barmap_target::touch::install();
    // SAFETY: a client reaps the children it forks by itself.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    // The reply says what failed: 1000 + errno (connecting, the version
    // exchange or the device's description), 2000 no memory BAR, 3000 no
    // fd for it, 4000 a panic, 5000 + errno connecting to the edu.
    let r = std::panic::catch_unwind(|| {
        let mut remote = Wire::connect(socket).map_err(|e| 1000 + e as u64)?;
        let (size, fd) = remote.region(BAR).map_err(|_| 2000u64)?;
        let fd = fd.ok_or(3000u64)?;
        let edu =
            Wire::connect(&barmap_server::device_socket(socket, 1)).map_err(|e| 5000 + e as u64)?;
        Ok::<_, u64>(Client {
            remote: Some(remote),
            edu: Some(edu),
            fd: Some(fd),
            efd: None,
            map: std::ptr::null_mut(),
            size,
        })
    });
    match r {
        Ok(Ok(c)) => {
            reply(&[0], None);
            c.serve()
        }
        Ok(Err(code)) => {
            reply(&[code], None);
            // SAFETY: leaving the client process.
            unsafe { libc::_exit(2) }
        }
        Err(_) => {
            reply(&[4000], None);
            // SAFETY: leaving the client process.
            unsafe { libc::_exit(2) }
        }
    }
}

fn api(r: Result<Val, String>) -> Obs {
    Obs::Api(r)
}

impl ProcSut {
    /// Serves a fresh default device with a `memory`-byte BAR;
    /// `broken_removal` breaks the server's removal (it revokes nothing),
    /// for tests of the explorer.
    pub fn new(
        memory: u64,
        timeout: Duration,
        broken_removal: bool,
        broken_dma: bool,
    ) -> Result<ProcSut, String> {
        let (server, dir, socket) = Self::serve(memory)?;
        let mine = Self::map_mine(&server)?;
        Ok(ProcSut {
            server,
            dir,
            socket,
            clients: Vec::new(),
            timeout,
            memory,
            broken_removal,
            broken_dma,
            windows: Vec::new(),
            mine,
        })
    }

    /// Lets the edu master the bus and maps the explorer's own window.
    fn map_mine(server: &barmap_server::Server) -> Result<OwnedFd, String> {
        let edu = &server.devices()[1];
        let mut b = [0u8; 2];
        edu.region_read(proto::CONFIG_REGION, 4, &mut b)
            .map_err(|e| format!("edu COMMAND: errno {e}"))?;
        let command = u16::from_ne_bytes(b) | 0x6;
        edu.region_write(proto::CONFIG_REGION, 4, &command.to_ne_bytes())
            .map_err(|e| format!("edu COMMAND: errno {e}"))?;
        let f = memfd("barmap-explore-buffer").map_err(|e| e.to_string())?;
        let dup = f.try_clone().map_err(|e| e.to_string())?;
        edu.host()
            .dma_map(barmap_server::host::DmaWindow {
                iova: EXPLORER_IOVA,
                size: WIN as u64,
                flags: proto::DMA_FLAG_READ | proto::DMA_FLAG_WRITE,
                client: EXPLORER_CLIENT,
                backing: barmap_server::host::Backing::File(dup, 0),
            })
            .map_err(|e| format!("the explorer's window: errno {e}"))?;
        Ok(f)
    }

    fn serve(memory: u64) -> Result<(Arc<barmap_server::Server>, PrivateDir, PathBuf), String> {
        let dir = PrivateDir::new("barmap-explore").map_err(|e| format!("temp dir: {e}"))?;
        let socket = dir.path().join("dev.sock");
        let model = barmap_models::by_name("default", &[("memory".into(), memory.to_string())])?;
        let edu = barmap_models::by_name("edu", &[])?;
        let server = barmap_server::Server::new(
            &socket,
            vec![
                barmap_server::DeviceConfig {
                    name: "default".into(),
                    model,
                    exclusive: false,
                },
                barmap_server::DeviceConfig {
                    name: "edu".into(),
                    model: edu,
                    exclusive: false,
                },
            ],
        )
        .map_err(|e| e.to_string())?;
        server.start().map_err(|e| e.to_string())?;
        Ok((server, dir, socket))
    }

    /// Requests the device's removal as `barmap ctl remove` does; the
    /// count of REQ interrupts signalled.
    fn remove(&self) -> u64 {
        let d = self.dev();
        if self.broken_removal {
            // (The socket stays: the accept loop of a device not marked
            // removed would never end.)
            let n = d.host().signal_raw(proto::IRQ_REQ, 0);
            d.shutdown_clients();
            return u64::from(n);
        }
        let n = d.remove();
        self.server.unlink_device_socket(0);
        n as u64
    }

    /// Counts the clients alive, kills them, and serves a fresh device.
    fn replug(&mut self) -> Result<Obs, String> {
        let alive = self
            .clients
            .iter()
            .filter(|p| !poll_in(p.pidfd.as_raw_fd(), Duration::ZERO))
            .count();
        while !self.clients.is_empty() {
            self.kill(self.clients.len() - 1)?;
        }
        self.server.stop();
        let (server, dir, socket) = Self::serve(self.memory)?;
        self.mine = Self::map_mine(&server)?;
        self.windows.clear();
        (self.server, self.dir, self.socket) = (server, dir, socket);
        Ok(api(Ok(Val::U64(alive as u64))))
    }

    fn dev(&self) -> &barmap_server::ServedDevice {
        &self.server.devices()[0]
    }

    fn edu(&self) -> &barmap_server::ServedDevice {
        &self.server.devices()[1]
    }

    /// The digest of window `k`'s memfd.
    fn window_digest(&self, f: &OwnedFd) -> Result<u64, String> {
        let mut b = vec![0u8; WIN];
        barmap_server::bar::pread_all(f.as_raw_fd(), &mut b, 0).map_err(|e| e.to_string())?;
        Ok(digest(&b))
    }

    /// A broken server's answer to client `c`'s death: once the server has
    /// forgotten the windows that die with it, they are back.
    fn after_death(&self, model: &ProcModel, c: usize) -> Result<(), String> {
        let orphans = model.orphaned(c);
        if !self.broken_dma || orphans.is_empty() {
            return Ok(());
        }
        use barmap_models::Host;
        let host = self.edu().host();
        let t0 = Instant::now();
        // Until the server has forgotten every one of them (a probe of a
        // byte of each: an IOMMU fault).
        while orphans.iter().any(|&k| {
            host.dma_read(slot_iova(model.windows[k].slot), &mut [0u8])
                .is_ok()
        }) {
            if t0.elapsed() > self.timeout {
                return Err("the server kept a dead client's windows".into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        for k in orphans {
            let f = self.windows[k].try_clone().map_err(|e| e.to_string())?;
            host.dma_map(barmap_server::host::DmaWindow {
                iova: slot_iova(model.windows[k].slot),
                size: WIN as u64,
                flags: proto::DMA_FLAG_READ | proto::DMA_FLAG_WRITE,
                client: ZOMBIE_CLIENT,
                backing: barmap_server::host::Backing::File(f, 0),
            })
            .map_err(|e| format!("errno {e}"))?;
        }
        Ok(())
    }

    fn call(
        &self,
        i: usize,
        words: &[u64],
        fd: Option<RawFd>,
    ) -> Result<(Vec<u64>, Option<OwnedFd>), String> {
        let ctl = self.clients[i].ctl.as_raw_fd();
        sendmsg(ctl, words, fd).map_err(|e| format!("client {i}: send: {e}"))?;
        self.wait_reply(i)
    }

    fn wait_reply(&self, i: usize) -> Result<(Vec<u64>, Option<OwnedFd>), String> {
        let ctl = self.clients[i].ctl.as_raw_fd();
        if !poll_in(ctl, self.timeout) {
            return Err(format!(
                "client {i} did not answer within {:?} (a hang)",
                self.timeout
            ));
        }
        match recvmsg(ctl) {
            Ok(Some(x)) => Ok(x),
            Ok(None) => Err(format!("client {i} died")),
            Err(e) => Err(format!("client {i}: recv: {e}")),
        }
    }

    fn status(r: &[u64]) -> Result<Val, String> {
        match r.first() {
            Some(0) => Ok(Val::Unit),
            Some(e) => Err(format!("errno {e}")),
            None => Err("empty reply".into()),
        }
    }

    fn spawn(&mut self, removed: bool) -> Result<Obs, String> {
        let (mine, theirs) = seqpacket_pair().map_err(|e| e.to_string())?;
        // SAFETY: the child runs client_main, which never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let r = std::panic::catch_unwind(|| client_main(&self.socket, theirs.as_raw_fd()));
            let _ = r;
            // SAFETY: leaving the child.
            unsafe { libc::_exit(101) };
        }
        drop(theirs);
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        let pidfd = pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
        self.clients.push(Proc {
            pid,
            pidfd,
            ctl: mine,
            direct: true,
        });
        let i = self.clients.len() - 1;
        let t0 = Instant::now();
        let (r, _) = self.wait_reply(i)?;
        if r.first() != Some(&0) {
            // The client exits after saying what failed.
            self.gone(i)?;
            if removed {
                // The removed device's answer, as the model predicts it.
                return Ok(api(Self::status(&r)));
            }
        }
        Ok(api(Self::status(&r).map_err(|e| {
            format!("{e} (client pid {pid}, after {:?})", t0.elapsed())
        })))
    }

    /// Waits (bounded) for client `i` to be gone, reaps it if it is ours,
    /// and forgets it.
    fn gone(&mut self, i: usize) -> Result<(), String> {
        let p = self.clients.remove(i);
        if !poll_in(p.pidfd.as_raw_fd(), self.timeout) {
            // SAFETY: our client; do not leave it behind.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
            return Err(format!(
                "client pid {} did not end within {:?}",
                p.pid, self.timeout
            ));
        }
        if p.direct {
            // SAFETY: reaping our own child, which has exited.
            unsafe { libc::waitpid(p.pid, std::ptr::null_mut(), 0) };
        }
        Ok(())
    }

    fn kill(&mut self, i: usize) -> Result<(), String> {
        // SAFETY: SIGKILL through the pidfd of a process we started.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.clients[i].pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        self.gone(i)
    }

    fn act(&self, by: Option<usize>, act: Act) -> Result<Obs, String> {
        match by {
            Some(i) => {
                let code = match act {
                    Act::MemOff => 0,
                    Act::MemOn => 1,
                    _ => 2,
                };
                let (r, _) = self.call(i, &[cmd::CONFIG, code], None)?;
                Ok(api(Self::status(&r)))
            }
            None => {
                let d = self.dev();
                let r = match act {
                    Act::MemOff => {
                        d.set_memory_enabled(false);
                        Ok(())
                    }
                    Act::MemOn => {
                        d.set_memory_enabled(true);
                        Ok(())
                    }
                    Act::D3 => {
                        d.set_d3hot(true);
                        Ok(())
                    }
                    Act::D0 => {
                        d.set_d3hot(false);
                        Ok(())
                    }
                    Act::Reset => d.reset(),
                };
                Ok(api(r.map(|()| Val::Unit).map_err(|e| format!("errno {e}"))))
            }
        }
    }

    fn device_word(&self, w: usize) -> Obs {
        let mut b = [0u8; 8];
        match self.dev().mem_bar(BAR) {
            Some(bar) => match bar.read(w as u64 * 8, &mut b) {
                Ok(()) => api(Ok(Val::U64(u64::from_ne_bytes(b)))),
                Err(e) => api(Err(e.to_string())),
            },
            None => api(Err("no memory BAR".into())),
        }
    }

    /// Runs `plan`; its observations (a broken run as [`Obs::Broken`]).
    pub fn exec(&mut self, plan: &PPlan, model: &ProcModel) -> Vec<Obs> {
        match self.exec_inner(plan, model) {
            Ok(o) => o,
            Err(e) => vec![Obs::Broken(e)],
        }
    }

    fn exec_inner(&mut self, plan: &PPlan, model: &ProcModel) -> Result<Vec<Obs>, String> {
        let c = plan.c;
        Ok(match plan.op {
            POp::Spawn => vec![self.spawn(model.removed())?],
            POp::Fork { .. } => {
                let (r, fd) = self.call(c, &[cmd::FORK], None)?;
                let (Some(0), Some(pid), Some(ctl)) = (r.first(), r.get(1), fd) else {
                    return Ok(vec![api(Self::status(&r))]);
                };
                let pid = *pid as i32;
                let pidfd = pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
                self.clients.push(Proc {
                    pid,
                    pidfd,
                    ctl,
                    direct: false,
                });
                vec![api(Ok(Val::Unit))]
            }
            POp::Map { .. } => vec![api(Self::status(&self.call(c, &[cmd::MAP], None)?.0))],
            POp::Unmap { .. } => vec![api(Self::status(&self.call(c, &[cmd::UNMAP], None)?.0))],
            POp::Touch { write, .. } => {
                let w = [
                    cmd::TOUCH,
                    plan.word as u64,
                    write.is_some() as u64,
                    write.unwrap_or(0),
                ];
                let (r, _) = self.call(c, &w, None)?;
                let t = match r.get(1) {
                    Some(0) => TouchObs::Value(r[2]),
                    Some(1) => TouchObs::Wrote,
                    Some(2) => TouchObs::Sigbus,
                    _ => TouchObs::Sigsegv,
                };
                vec![Obs::Touch(t)]
            }
            POp::MsgRead { .. } => {
                let (r, _) = self.call(c, &[cmd::MSG_READ, plan.word as u64], None)?;
                vec![api(
                    Self::status(&r).map(|_| Val::U64(r.get(1).copied().unwrap_or(0)))
                )]
            }
            POp::MsgWrite { value, .. } => {
                let (r, _) = self.call(c, &[cmd::MSG_WRITE, plan.word as u64, value], None)?;
                vec![api(Self::status(&r))]
            }
            POp::PassFd { .. } => {
                let to = plan.other.expect("resolved");
                let (r, fd) = self.call(c, &[cmd::GIVE_FD], None)?;
                let Some(fd) = fd else {
                    return Ok(vec![api(Self::status(&r).and(Err("no fd".into())))]);
                };
                let (r, _) = self.call(to, &[cmd::TAKE_FD], Some(fd.as_raw_fd()))?;
                vec![api(Self::status(&r))]
            }
            POp::Config { act, .. } => vec![self.act(plan.other, act)?],
            POp::Exit { .. } => {
                sendmsg(self.clients[c].ctl.as_raw_fd(), &[cmd::EXIT], None)
                    .map_err(|e| format!("exit: {e}"))?;
                self.gone(c)?;
                self.after_death(model, c)?;
                vec![api(Ok(Val::Unit))]
            }
            POp::Kill { .. } => {
                self.kill(c)?;
                self.after_death(model, c)?;
                vec![api(Ok(Val::Unit))]
            }
            POp::DmaMap { seed, .. } => {
                let iova = slot_iova(model.windows.len() as u32);
                let (r, fd) = self.call(c, &[cmd::DMA_MAP, iova, seed], None)?;
                match fd {
                    Some(f) if r.first() == Some(&0) => {
                        self.windows.push(f);
                        vec![api(Ok(Val::Unit))]
                    }
                    _ => vec![api(Self::status(&r).and(Err("no fd".into())))],
                }
            }
            POp::DmaUnmap { .. } => {
                let iova = slot_iova(model.windows[plan.word].slot);
                vec![api(Self::status(
                    &self.call(c, &[cmd::DMA_UNMAP, iova], None)?.0,
                ))]
            }
            POp::Dma {
                to_ram,
                woff,
                boff,
                len,
                ..
            } => {
                let (iova, woff, boff, n) = model.dma_args(plan.word, woff, boff, len);
                let regs = dma_regs(to_ram, iova + woff as u64, boff, n);
                let before = self.edu().host().counters().dma_faults;
                let first = match plan.other {
                    Some(i) => {
                        let mut m = vec![cmd::DMA_RUN];
                        m.extend(regs);
                        api(Self::status(&self.call(i, &m, None)?.0))
                    }
                    None => {
                        let mut r = Ok(());
                        for (k, v) in regs.iter().enumerate() {
                            r = r.and_then(|()| {
                                self.edu()
                                    .region_write(0, 0x80 + 8 * k as u64, &v.to_ne_bytes())
                            });
                        }
                        api(r.map(|()| Val::Unit).map_err(|e| format!("errno {e}")))
                    }
                };
                let faults = self.edu().host().counters().dma_faults - before;
                let d = match self.windows.get(plan.word) {
                    Some(f) => self.window_digest(f)?,
                    None => 0,
                };
                vec![first, api(Ok(Val::U64(faults))), api(Ok(Val::U64(d)))]
            }
            POp::ReqRegister { .. } => {
                vec![api(Self::status(
                    &self.call(c, &[cmd::REQ_REGISTER], None)?.0,
                ))]
            }
            POp::ReqRead { .. } => {
                let (r, _) = self.call(c, &[cmd::REQ_READ], None)?;
                vec![api(
                    Self::status(&r).map(|_| Val::U64(r.get(1).copied().unwrap_or(0)))
                )]
            }
            POp::Remove => {
                let mut out = vec![api(Ok(Val::U64(self.remove())))];
                // Every mapping is revoked when removal returns: a touch in
                // every process that maps the BAR.
                for (i, cl) in model.clients.iter().enumerate() {
                    if cl.mapped {
                        let (r, _) = self.call(i, &[cmd::TOUCH, 0, 0, 0], None)?;
                        out.push(Obs::Touch(match r.get(1) {
                            Some(0) => TouchObs::Value(r[2]),
                            Some(1) => TouchObs::Wrote,
                            Some(2) => TouchObs::Sigbus,
                            _ => TouchObs::Sigsegv,
                        }));
                    }
                }
                out
            }
            POp::Replug => vec![self.replug()?],
            POp::Tamper { how, .. } => {
                let bar = self.dev().mem_bar(BAR).ok_or("no memory BAR")?;
                let before = bar.tampers();
                let (kind, v) = match how {
                    Tamper::Grow => (0, 0),
                    Tamper::Shrink => (1, 0),
                    Tamper::Punch => (2, 0),
                    Tamper::Pwrite(v) => (3, v),
                };
                let (r, _) = self.call(c, &[cmd::TAMPER, kind, plan.word as u64, v], None)?;
                let first = api(Self::status(&r));
                // The server's answer: the size as the BAR's state says
                // (read under the lock the watcher fixes it under, so its
                // count is in as well).
                let bar = self.dev().mem_bar(BAR).ok_or("no memory BAR")?;
                let want = if bar.is_revoked() { 0 } else { bar.size() };
                let t0 = Instant::now();
                while bar.file_len().map_err(|e| e.to_string())? != want {
                    if t0.elapsed() > self.timeout {
                        return Err(format!(
                            "the server did not set the BAR's size back within {:?}",
                            self.timeout
                        ));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                vec![
                    first,
                    api(Ok(Val::U64(bar.tampers() - before))),
                    self.device_word(plan.word),
                ]
            }
            POp::Check { .. } => {
                let want = model.connections() as usize;
                let t0 = Instant::now();
                // A killed client's connection ends when the server reads
                // its end of file: wait for it, bounded.
                let mut n = self.dev().clients().len();
                while n != want && t0.elapsed() < self.timeout.min(Duration::from_secs(5)) {
                    std::thread::sleep(Duration::from_millis(1));
                    n = self.dev().clients().len();
                }
                let mut out = vec![api(Ok(Val::U64(n as u64))), self.device_word(plan.word)];
                // The edu's windows, once the server has read every dead
                // connection's end of file (bounded): it forgets a
                // connection, then its windows.
                let t0 = Instant::now();
                let bound = self.timeout.min(Duration::from_secs(5));
                while self.edu().clients().len() > model.edu_connections() && t0.elapsed() < bound {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let host = self.edu().host();
                let want = model.windows_held() as usize;
                let t0 = Instant::now();
                let mut n = host.dma_windows();
                while n > want && t0.elapsed() < Duration::from_millis(200) {
                    std::thread::sleep(Duration::from_millis(1));
                    n = host.dma_windows();
                }
                out.push(api(Ok(Val::U64(n as u64))));
                // The buffer, through the explorer's window.
                let regs = dma_regs(true, EXPLORER_IOVA, 0, WIN);
                for (k, v) in regs.iter().enumerate() {
                    self.edu()
                        .region_write(0, 0x80 + 8 * k as u64, &v.to_ne_bytes())
                        .map_err(|e| format!("edu DMA: errno {e}"))?;
                }
                out.push(api(Ok(Val::U64(self.window_digest(&self.mine)?))));
                for f in &self.windows {
                    out.push(api(Ok(Val::U64(self.window_digest(f)?))));
                }
                out
            }
            POp::Loop {
                words,
                rounds,
                seed,
                disturb,
                delay,
                ..
            } => {
                let m = [
                    cmd::LOOP,
                    plan.word as u64,
                    words as u64,
                    rounds as u64,
                    seed,
                ];
                sendmsg(self.clients[c].ctl.as_raw_fd(), &m, None)
                    .map_err(|e| format!("loop: {e}"))?;
                let (r, _) = self.wait_reply(c)?;
                if r.first() != Some(&cmd::STARTED) {
                    return Err(format!("loop: {r:?} instead of started"));
                }
                for _ in 0..delay {
                    std::hint::spin_loop();
                }
                let by = plan.other;
                let mut out = Vec::new();
                let mut first = api(Ok(Val::Unit));
                let mut note = |o: Obs| {
                    if o != api(Ok(Val::Unit)) {
                        first = o;
                    }
                };
                match disturb {
                    Disturb::None => {}
                    Disturb::Toggle => {
                        note(self.act(by, Act::MemOff)?);
                        note(self.act(by, Act::MemOn)?);
                    }
                    Disturb::Reset => note(self.act(by, Act::Reset)?),
                    Disturb::Power => {
                        note(self.act(None, Act::D3)?);
                        note(self.act(None, Act::D0)?);
                    }
                    Disturb::Remove => {
                        self.remove();
                    }
                    Disturb::Kill => {
                        self.kill(c)?;
                        self.after_death(model, c)?;
                        out.push(first);
                        for j in 0..words as usize {
                            out.push(self.device_word(model.loop_word(plan.word, j)));
                        }
                        return Ok(out);
                    }
                }
                let (r, _) = self.wait_reply(c)?;
                out.push(first);
                for j in 0..words as usize {
                    out.push(api(Ok(Val::U64(r.get(1 + j).copied().unwrap_or(u64::MAX)))));
                    out.push(self.device_word(model.loop_word(plan.word, j)));
                }
                out
            }
        })
    }
}

impl Drop for ProcSut {
    fn drop(&mut self) {
        while !self.clients.is_empty() {
            let _ = self.kill(self.clients.len() - 1);
        }
        self.server.stop();
    }
}

/// The BAR size the process mode serves (kept small: every revocation
/// copies it).
pub fn memory(cfg_memory: u64) -> u64 {
    cfg_memory.clamp(64 << 10, 1 << 20)
}
