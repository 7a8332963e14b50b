//! # barmap-client
//!
//! A device served by a vfio-user server (libvfio-user and the programs
//! built on it, SPDK's targets, rust-vmm's `vfio_user` servers,
//! `barmap serve`), reached over the server's Unix socket. barmap's front
//! end presents it to a VFIO program as `barmap run --device
//! vfio-user:PATH`; this crate is the protocol side only and holds no
//! server code.
//!
//! - [`Remote::connect`] negotiates the version, then reads the device's
//!   info, every region's info (with the file descriptor a server offers
//!   for mmap and the sparse-mmap areas) and every interrupt index's info.
//! - Each request waits for its reply; a reply with the error bit set is
//!   [`Error::Server`] with the server's errno, which the front end
//!   returns to the program as the kernel would return its own.
//! - A reader thread pairs replies with requests by message id and serves
//!   the server's own requests: `DMA_READ` and `DMA_WRITE` into memory
//!   the program mapped for DMA without a file descriptor, through the
//!   [`DmaAccess`] the front end gives it.
//! - The server closing the socket is [`Error::Gone`] (`ENODEV`) for every
//!   request from then on, as a surprise removal is on the kernel.
//!
//! Why not rust-vmm's `vfio_user` crate's `Client` (0.1.7): it reads each
//! reply as the success layout without looking at the error bit, so a
//! server's error is lost (a `REGION_READ` that libvfio-user's sample
//! server refuses returns `Ok` with zeros); it maps every DMA region
//! read-write; it serves no `DMA_READ`/`DMA_WRITE`. The wire format here
//! follows libvfio-user's `include/vfio-user.h`.

#![cfg(target_os = "linux")]
#![warn(missing_docs)]

pub mod ext;
pub mod wire;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use wire::{cmd, Header, Message};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed (connect, send, receive).
    #[error("vfio-user socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error.
    #[error("vfio-user server answered errno {0}")]
    Server(i32),
    /// The server closed the connection: the device is gone.
    #[error("vfio-user server closed the connection")]
    Gone,
    /// The server's reply does not follow the protocol.
    #[error("vfio-user protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// The errno a VFIO program gets for this failure: the server's own
    /// errno, `ENODEV` once the device is gone, `EIO` for a broken
    /// exchange.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Server(e) if *e > 0 => *e,
            Error::Server(_) => libc::EIO,
            Error::Gone => libc::ENODEV,
            Error::Io(e) => match e.raw_os_error() {
                Some(libc::EPIPE) | Some(libc::ECONNRESET) => libc::ENODEV,
                _ => libc::EIO,
            },
            Error::Protocol(_) => libc::EIO,
        }
    }
}

/// What a request returns.
pub type Result<T> = std::result::Result<T, Error>;

/// The program's memory, for the server's `DMA_READ` and `DMA_WRITE`
/// requests (DMA regions mapped without a file descriptor). The error is
/// an errno for the server.
pub trait DmaAccess: Send + Sync {
    /// Reads `buf.len()` bytes at `iova`.
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> std::result::Result<(), i32>;
    /// Writes `data` at `iova`.
    fn dma_write(&self, iova: u64, data: &[u8]) -> std::result::Result<(), i32>;
}

/// No DMA without a file descriptor: every server request is `EFAULT`.
#[derive(Debug, Default)]
pub struct NoDma;

impl DmaAccess for NoDma {
    fn dma_read(&self, _: u64, _: &mut [u8]) -> std::result::Result<(), i32> {
        Err(libc::EFAULT)
    }
    fn dma_write(&self, _: u64, _: &[u8]) -> std::result::Result<(), i32> {
        Err(libc::EFAULT)
    }
}

/// `VFIO_DEVICE_GET_INFO` as the server answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Regions.
    pub num_regions: u32,
    /// Interrupt indexes.
    pub num_irqs: u32,
}

/// One region as the server describes it.
#[derive(Debug)]
pub struct Region {
    /// Region index.
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*` as the server gave them.
    pub flags: u32,
    /// Bytes.
    pub size: u64,
    /// Offset of the region in [`Region::fd`] (for mmap).
    pub offset: u64,
    /// The file the server offers for mapping the region, if any.
    pub fd: Option<OwnedFd>,
    /// The parts that may be mapped (offset, size), from the sparse-mmap
    /// capability; the whole region when the server offered a file and no
    /// areas.
    pub areas: Vec<(u64, u64)>,
}

impl Region {
    /// Whether `offset..offset+len` lies inside one mappable area.
    pub fn mappable(&self, offset: u64, len: u64) -> bool {
        self.fd.is_some()
            && self
                .areas
                .iter()
                .any(|&(s, n)| s <= offset && offset.saturating_add(len) <= s + n)
    }
}

/// `VFIO_DEVICE_GET_IRQ_INFO` as the server answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// Vectors.
    pub count: u32,
}

/// Replies not yet taken, by message id; `dead` once the reader stopped.
#[derive(Debug, Default)]
struct Pending {
    replies: HashMap<u16, Option<Message>>,
    dead: bool,
}

/// The connection: the socket, the writer's lock, the replies.
struct Conn {
    sock: UnixStream,
    write: Mutex<()>,
    next_id: AtomicU16,
    pending: Mutex<Pending>,
    arrived: Condvar,
    max_xfer: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("sock", &self.sock).finish()
    }
}

/// How long [`Remote::connect`] waits for the server's version reply.
pub const VERSION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Data a request carries at most per message until the server says
/// otherwise (the protocol's default `max_data_xfer_size`).
const DEFAULT_MAX_XFER: usize = 1 << 20;

impl Conn {
    /// Sends `cmd` with `parts` and `fds` and waits for its reply.
    fn request(&self, command: u16, parts: &[&[u8]], fds: &[RawFd]) -> Result<Message> {
        self.request_within(command, parts, fds, None)
    }

    /// [`Conn::request`], giving up after `limit` ([`Error::Gone`]).
    fn request_within(
        &self,
        command: u16,
        parts: &[&[u8]],
        fds: &[RawFd],
        limit: Option<std::time::Duration>,
    ) -> Result<Message> {
        let deadline = limit.map(|l| std::time::Instant::now() + l);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut p = self.pending.lock().unwrap();
            if p.dead {
                return Err(Error::Gone);
            }
            p.replies.insert(id, None);
        }
        let header = Header {
            id,
            cmd: command,
            size: 0,
            flags: wire::F_COMMAND,
            error: 0,
        };
        let sent = {
            let _w = self.write.lock().unwrap();
            wire::send(&self.sock, header, parts, fds)
        };
        if let Err(e) = sent {
            self.pending.lock().unwrap().replies.remove(&id);
            return Err(e.into());
        }
        let mut p = self.pending.lock().unwrap();
        loop {
            if let Some(slot) = p.replies.get_mut(&id) {
                if let Some(m) = slot.take() {
                    p.replies.remove(&id);
                    drop(p);
                    if m.header.flags & wire::F_ERROR != 0 {
                        return Err(Error::Server(m.header.error as i32));
                    }
                    if m.header.cmd != command {
                        return Err(Error::Protocol(format!(
                            "reply to command {command} names command {}",
                            m.header.cmd
                        )));
                    }
                    return Ok(m);
                }
            }
            if p.dead {
                p.replies.remove(&id);
                return Err(Error::Gone);
            }
            p = match deadline {
                None => self.arrived.wait(p).unwrap(),
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        p.replies.remove(&id);
                        return Err(Error::Gone);
                    }
                    self.arrived.wait_timeout(p, left).unwrap().0
                }
            };
        }
    }

    /// The reader: replies to their waiters, the server's requests to
    /// `dma`. Ends at the end of the stream or on an error, waking every
    /// waiter with [`Error::Gone`].
    fn read_loop(self: Arc<Self>, dma: Arc<dyn DmaAccess>) {
        loop {
            let m = match wire::recv(&self.sock) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "vfio-user connection ended");
                    break;
                }
            };
            if m.header.is_reply() {
                let mut p = self.pending.lock().unwrap();
                if let Some(slot) = p.replies.get_mut(&m.header.id) {
                    *slot = Some(m);
                    self.arrived.notify_all();
                }
                continue;
            }
            self.serve(&m, dma.as_ref());
        }
        self.pending.lock().unwrap().dead = true;
        self.arrived.notify_all();
    }

    /// Answers one request of the server's.
    fn serve(&self, m: &Message, dma: &dyn DmaAccess) {
        let word = |at: usize| {
            m.body
                .get(at..at + 8)
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
        };
        let (addr, count) = (word(0).unwrap_or(0), word(8).unwrap_or(0));
        let max = self.max_xfer.load(Ordering::Relaxed) as u64;
        let result: std::result::Result<Vec<u8>, i32> = match m.header.cmd {
            _ if m.body.len() < 16 => Err(libc::EINVAL),
            cmd::DMA_READ if count <= max => {
                let mut data = vec![0u8; count as usize];
                dma.dma_read(addr, &mut data).map(|()| {
                    let mut out = m.body[..16].to_vec();
                    out.extend_from_slice(&data);
                    out
                })
            }
            cmd::DMA_WRITE if m.body.len() as u64 == 16 + count => dma
                .dma_write(addr, &m.body[16..])
                .map(|()| m.body[..16].to_vec()),
            cmd::DMA_READ | cmd::DMA_WRITE => Err(libc::EINVAL),
            _ => Err(libc::ENOTSUP),
        };
        let (flags, error, body) = match result {
            Ok(body) => (wire::F_REPLY, 0, body),
            Err(e) => (wire::F_REPLY | wire::F_ERROR, e as u32, Vec::new()),
        };
        let header = Header {
            id: m.header.id,
            cmd: m.header.cmd,
            size: 0,
            flags,
            error,
        };
        let _w = self.write.lock().unwrap();
        if let Err(e) = wire::send(&self.sock, header, &[&body], &[]) {
            tracing::debug!(error = %e, "vfio-user: replying to the server failed");
        }
    }
}

/// A device served over vfio-user.
#[derive(Debug)]
pub struct Remote {
    conn: Arc<Conn>,
    info: DeviceInfo,
    regions: Vec<Region>,
    irqs: Vec<IrqInfo>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
        .ok_or_else(|| Error::Protocol(format!("reply too short ({} bytes)", b.len())))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_ne_bytes(s.try_into().unwrap()))
        .ok_or_else(|| Error::Protocol(format!("reply too short ({} bytes)", b.len())))
}

/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
const CAP_SPARSE_MMAP: u16 = 1;
/// `VFIO_REGION_INFO_FLAG_CAPS`.
const REGION_FLAG_CAPS: u32 = 1 << 3;
/// Bytes of `struct vfio_region_info`.
const REGION_INFO: usize = 32;

impl Remote {
    /// Connects to the server at `path`, negotiates the version and reads
    /// the device's description. `dma` serves the server's DMA requests.
    pub fn connect(path: &Path, dma: Arc<dyn DmaAccess>) -> Result<Remote> {
        let sock = UnixStream::connect(path)?;
        let conn = Arc::new(Conn {
            sock,
            write: Mutex::new(()),
            next_id: AtomicU16::new(0),
            pending: Mutex::new(Pending::default()),
            arrived: Condvar::new(),
            max_xfer: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_XFER),
        });
        let reader = conn.clone();
        std::thread::Builder::new()
            .name("barmap-vfio-user".into())
            .spawn(move || reader.read_loop(dma))?;
        let mut remote = Remote {
            conn,
            info: DeviceInfo {
                flags: 0,
                num_regions: 0,
                num_irqs: 0,
            },
            regions: Vec::new(),
            irqs: Vec::new(),
        };
        remote.negotiate()?;
        remote.info = remote.device_info_request()?;
        for i in 0..remote.info.num_regions {
            let r = remote.region_info_request(i)?;
            remote.regions.push(r);
        }
        for i in 0..remote.info.num_irqs {
            let q = remote.irq_info_request(i)?;
            remote.irqs.push(q);
        }
        Ok(remote)
    }

    /// `VFIO_USER_VERSION`: version 0.1, with barmap's limits; the
    /// server's `max_data_xfer_size` bounds each region access after.
    fn negotiate(&mut self) -> Result<()> {
        let caps = serde_json::json!({
            "capabilities": {
                "max_msg_fds": wire::MAX_FDS,
                "max_data_xfer_size": DEFAULT_MAX_XFER,
            }
        });
        let mut payload = Vec::new();
        payload.extend_from_slice(&0u16.to_ne_bytes());
        payload.extend_from_slice(&1u16.to_ne_bytes());
        payload.extend_from_slice(caps.to_string().as_bytes());
        payload.push(0);
        // A server busy with another client (libvfio-user serves one and
        // leaves the rest in its listen queue) never answers.
        let reply = self
            .conn
            .request_within(cmd::VERSION, &[&payload], &[], Some(VERSION_WAIT))?;
        let b = &reply.body;
        if b.len() < 4 || u16::from_ne_bytes([b[0], b[1]]) != 0 {
            return Err(Error::Protocol("unsupported server version".into()));
        }
        let text = String::from_utf8_lossy(&b[4..]);
        let text = text.trim_end_matches('\0');
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            if let Some(n) = v["capabilities"]["max_data_xfer_size"].as_u64() {
                let n = (n as usize).clamp(8, DEFAULT_MAX_XFER);
                self.conn.max_xfer.store(n, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn device_info_request(&self) -> Result<DeviceInfo> {
        let mut p = [0u8; 16];
        p[0..4].copy_from_slice(&16u32.to_ne_bytes());
        let r = self.conn.request(cmd::DEVICE_GET_INFO, &[&p], &[])?;
        Ok(DeviceInfo {
            flags: u32_at(&r.body, 4)?,
            num_regions: u32_at(&r.body, 8)?,
            num_irqs: u32_at(&r.body, 12)?,
        })
    }

    fn region_info_request(&self, index: u32) -> Result<Region> {
        let ask = |argsz: u32| -> Result<Message> {
            let mut p = [0u8; REGION_INFO];
            p[0..4].copy_from_slice(&argsz.to_ne_bytes());
            p[8..12].copy_from_slice(&index.to_ne_bytes());
            self.conn.request(cmd::DEVICE_GET_REGION_INFO, &[&p], &[])
        };
        let mut r = ask(REGION_INFO as u32)?;
        let needed = u32_at(&r.body, 0)?;
        if needed as usize > REGION_INFO {
            // The capability chain (and, with it, the file) comes when the
            // request has room for it.
            r = ask(needed)?;
        }
        let b = &r.body;
        let flags = u32_at(b, 4)?;
        let cap_offset = u32_at(b, 12)? as usize;
        let size = u64_at(b, 16)?;
        let offset = u64_at(b, 24)?;
        let mut areas = Vec::new();
        let mut at = if flags & REGION_FLAG_CAPS != 0 {
            cap_offset
        } else {
            0
        };
        let mut hops = 0;
        while at != 0 && hops < 16 {
            let id = b
                .get(at..at + 2)
                .map(|s| u16::from_ne_bytes([s[0], s[1]]))
                .ok_or_else(|| Error::Protocol("capability past the reply".into()))?;
            let next = u32_at(b, at + 4)? as usize;
            if id == CAP_SPARSE_MMAP {
                let n = u32_at(b, at + 8)? as usize;
                for k in 0..n.min(64) {
                    let e = at + 16 + 16 * k;
                    areas.push((u64_at(b, e)?, u64_at(b, e + 8)?));
                }
            }
            at = next;
            hops += 1;
        }
        let fd = r.fds.into_iter().next();
        if fd.is_some() && areas.is_empty() {
            areas.push((0, size));
        }
        Ok(Region {
            index,
            flags: flags & !REGION_FLAG_CAPS,
            size,
            offset,
            fd,
            areas,
        })
    }

    fn irq_info_request(&self, index: u32) -> Result<IrqInfo> {
        let mut p = [0u8; 16];
        p[0..4].copy_from_slice(&16u32.to_ne_bytes());
        p[8..12].copy_from_slice(&index.to_ne_bytes());
        let r = self.conn.request(cmd::DEVICE_GET_IRQ_INFO, &[&p], &[])?;
        Ok(IrqInfo {
            flags: u32_at(&r.body, 4)?,
            count: u32_at(&r.body, 12)?,
        })
    }

    /// The connection's socket, for a forked child to close its copy of
    /// it (the child talks to the server over a connection of its own; a
    /// copy left open would keep this connection, and what the server
    /// holds for it, alive after this process is gone).
    pub fn socket_fd(&self) -> RawFd {
        self.conn.sock.as_raw_fd()
    }

    /// The device's info.
    pub fn info(&self) -> DeviceInfo {
        self.info
    }

    /// Region `index`, if the server has it.
    pub fn region(&self, index: u32) -> Option<&Region> {
        self.regions.get(index as usize)
    }

    /// Interrupt index `index`, if the server has it.
    pub fn irq(&self, index: u32) -> Option<IrqInfo> {
        self.irqs.get(index as usize).copied()
    }

    /// `VFIO_USER_REGION_READ` of `buf.len()` bytes at `offset` of region
    /// `index`, in pieces of at most the server's transfer size.
    pub fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let max = self.conn.max_xfer.load(Ordering::Relaxed);
        for (k, piece) in buf.chunks_mut(max).enumerate() {
            let at = offset + (k * max) as u64;
            let mut p = [0u8; 16];
            p[0..8].copy_from_slice(&at.to_ne_bytes());
            p[8..12].copy_from_slice(&index.to_ne_bytes());
            p[12..16].copy_from_slice(&(piece.len() as u32).to_ne_bytes());
            let r = self.conn.request(cmd::REGION_READ, &[&p], &[])?;
            let data = r.body.get(16..16 + piece.len()).ok_or_else(|| {
                Error::Protocol(format!("REGION_READ answered {} bytes", r.body.len()))
            })?;
            piece.copy_from_slice(data);
        }
        Ok(())
    }

    /// `VFIO_USER_REGION_WRITE` of `data` at `offset` of region `index`.
    pub fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let max = self.conn.max_xfer.load(Ordering::Relaxed);
        for (k, piece) in data.chunks(max).enumerate() {
            let at = offset + (k * max) as u64;
            let mut p = [0u8; 16];
            p[0..8].copy_from_slice(&at.to_ne_bytes());
            p[8..12].copy_from_slice(&index.to_ne_bytes());
            p[12..16].copy_from_slice(&(piece.len() as u32).to_ne_bytes());
            self.conn.request(cmd::REGION_WRITE, &[&p, piece], &[])?;
        }
        Ok(())
    }

    /// `VFIO_USER_DEVICE_SET_IRQS`: `flags`, `index`, `start`, `count` as
    /// in `struct vfio_irq_set`; `data` for `DATA_BOOL`; for
    /// `DATA_EVENTFD`, `fds` has one entry per vector, `-1` for a vector
    /// whose eventfd goes. The vectors go in runs (descriptors, or none)
    /// of at most [`wire::MAX_FDS`], one message each, as the protocol
    /// wants one descriptor per vector or none at all.
    pub fn set_irqs(
        &self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &[u8],
        fds: &[RawFd],
    ) -> Result<()> {
        let message = |start: u32, count: u32, data: &[u8], fds: &[RawFd]| {
            let argsz = (20 + data.len()) as u32;
            let mut p = [0u8; 20];
            p[0..4].copy_from_slice(&argsz.to_ne_bytes());
            p[4..8].copy_from_slice(&flags.to_ne_bytes());
            p[8..12].copy_from_slice(&index.to_ne_bytes());
            p[12..16].copy_from_slice(&start.to_ne_bytes());
            p[16..20].copy_from_slice(&count.to_ne_bytes());
            self.conn
                .request(cmd::DEVICE_SET_IRQS, &[&p, data], fds)
                .map(|_| ())
        };
        if fds.is_empty() {
            return message(start, count, data, &[]);
        }
        let mut at = 0usize;
        while at < fds.len() {
            let valid = fds[at] >= 0;
            let mut end = at + 1;
            while end < fds.len() && (fds[end] >= 0) == valid && end - at < wire::MAX_FDS {
                end += 1;
            }
            let run = &fds[at..end];
            message(
                start + at as u32,
                run.len() as u32,
                &[],
                if valid { run } else { &[] },
            )?;
            at = end;
        }
        Ok(())
    }

    /// `VFIO_USER_DMA_MAP` of `size` bytes at `iova`: with `fd` (the
    /// memory's file and the offset of the first byte in it) the server
    /// maps the memory itself; without, it reaches it through `DMA_READ`
    /// and `DMA_WRITE` requests.
    pub fn dma_map(
        &self,
        iova: u64,
        size: u64,
        read: bool,
        write: bool,
        fd: Option<(&OwnedFd, u64)>,
    ) -> Result<()> {
        let flags = u32::from(read) | (u32::from(write) << 1);
        let mut p = [0u8; 32];
        p[0..4].copy_from_slice(&32u32.to_ne_bytes());
        p[4..8].copy_from_slice(&flags.to_ne_bytes());
        p[8..16].copy_from_slice(&fd.map_or(0, |(_, o)| o).to_ne_bytes());
        p[16..24].copy_from_slice(&iova.to_ne_bytes());
        p[24..32].copy_from_slice(&size.to_ne_bytes());
        let raw: Vec<RawFd> = fd.iter().map(|(f, _)| f.as_raw_fd()).collect();
        self.conn.request(cmd::DMA_MAP, &[&p], &raw)?;
        Ok(())
    }

    /// `VFIO_USER_DMA_UNMAP` of `size` bytes at `iova`.
    pub fn dma_unmap(&self, iova: u64, size: u64) -> Result<()> {
        let mut p = [0u8; 24];
        p[0..4].copy_from_slice(&24u32.to_ne_bytes());
        p[8..16].copy_from_slice(&iova.to_ne_bytes());
        p[16..24].copy_from_slice(&size.to_ne_bytes());
        self.conn.request(cmd::DMA_UNMAP, &[&p], &[])?;
        Ok(())
    }

    /// `VFIO_USER_DEVICE_RESET`.
    pub fn reset(&self) -> Result<()> {
        self.conn.request(cmd::DEVICE_RESET, &[], &[])?;
        Ok(())
    }
}

impl Drop for Remote {
    /// Closes the connection: the reader sees the end of the stream and
    /// stops; the server releases what this client held.
    fn drop(&mut self) {
        let _ = self.conn.sock.shutdown(std::net::Shutdown::Both);
    }
}
