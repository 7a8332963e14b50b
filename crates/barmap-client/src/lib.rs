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
//! read-write; it serves no `DMA_READ`/`DMA_WRITE`. The wire format is
//! `barmap-vfio-user`'s, shared with barmap's server.

#![cfg(target_os = "linux")]
#![warn(missing_docs)]

/// The protocol's layouts and framing (`barmap-vfio-user`).
pub use barmap_vfio_user as proto;
pub mod ext;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use proto::{Header, Message};

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
        let header = Header::command(id, command);
        let sent = {
            let _w = self.write.lock().unwrap();
            proto::send_parts(self.sock.as_raw_fd(), header, parts, fds)
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
                    if m.header.is_error() {
                        return Err(Error::Server(m.header.error as i32));
                    }
                    if m.header.command != command {
                        return Err(Error::Protocol(format!(
                            "reply to command {command} names command {}",
                            m.header.command
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
            let m = match proto::recv(self.sock.as_raw_fd()) {
                Ok(m) => m,
                Err(proto::RecvError::Closed) => break,
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
        let head = proto::DmaAccess::SIZE;
        let access = proto::DmaAccess::decode(&m.payload);
        let max = self.max_xfer.load(Ordering::Relaxed) as u64;
        let result: std::result::Result<Vec<u8>, i32> = match (m.header.command, access) {
            (proto::DMA_READ | proto::DMA_WRITE, None) => Err(libc::EINVAL),
            (proto::DMA_READ, Some(a)) if a.count <= max => {
                let mut data = vec![0u8; a.count as usize];
                dma.dma_read(a.addr, &mut data).map(|()| {
                    let mut out = m.payload[..head].to_vec();
                    out.extend_from_slice(&data);
                    out
                })
            }
            (proto::DMA_WRITE, Some(a)) if m.payload.len() as u64 == head as u64 + a.count => dma
                .dma_write(a.addr, &m.payload[head..])
                .map(|()| m.payload[..head].to_vec()),
            (proto::DMA_READ | proto::DMA_WRITE, _) => Err(libc::EINVAL),
            _ => Err(libc::ENOTSUP),
        };
        let (header, body) = match result {
            Ok(body) => (proto::reply_header(&m.header), body),
            Err(e) => (proto::error_header(&m.header, e), Vec::new()),
        };
        let _w = self.write.lock().unwrap();
        if let Err(e) = proto::send(self.sock.as_raw_fd(), header, &body, &[]) {
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

/// A reply's layout, or [`Error::Protocol`] when it is too short for it.
fn layout<T>(decoded: Option<T>, what: &str, reply: &Message) -> Result<T> {
    decoded.ok_or_else(|| {
        Error::Protocol(format!(
            "{what} reply too short ({} bytes)",
            reply.payload.len()
        ))
    })
}

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
        let payload = proto::Version {
            major: 0,
            minor: 1,
            caps: proto::Capabilities {
                max_msg_fds: Some(proto::MAX_MSG_FDS as u64),
                max_data_xfer_size: Some(DEFAULT_MAX_XFER as u64),
                ..proto::Capabilities::default()
            },
        }
        .encode();
        // A server busy with another client (libvfio-user serves one and
        // leaves the rest in its listen queue) never answers.
        let reply =
            self.conn
                .request_within(proto::VERSION, &[&payload], &[], Some(VERSION_WAIT))?;
        let v = match proto::Version::decode(&reply.payload) {
            Some(v) if v.major == 0 => v,
            _ => return Err(Error::Protocol("unsupported server version".into())),
        };
        if let Some(n) = v.caps.max_data_xfer_size {
            let n = (n as usize).clamp(8, DEFAULT_MAX_XFER);
            self.conn.max_xfer.store(n, Ordering::Relaxed);
        }
        Ok(())
    }

    fn device_info_request(&self) -> Result<DeviceInfo> {
        let p = proto::DeviceInfo {
            argsz: proto::DeviceInfo::SIZE as u32,
            ..proto::DeviceInfo::default()
        }
        .encode();
        let r = self.conn.request(proto::DEVICE_GET_INFO, &[&p], &[])?;
        let d = layout(proto::DeviceInfo::decode(&r.payload), "DEVICE_GET_INFO", &r)?;
        Ok(DeviceInfo {
            flags: d.flags,
            num_regions: d.num_regions,
            num_irqs: d.num_irqs,
        })
    }

    fn region_info_request(&self, index: u32) -> Result<Region> {
        let ask = |argsz: u32| -> Result<(proto::RegionInfo, Message)> {
            let p = proto::RegionInfo::request(index, argsz).encode();
            let r = self
                .conn
                .request(proto::DEVICE_GET_REGION_INFO, &[&p], &[])?;
            let info = layout(proto::RegionInfo::decode(&r.payload), "GET_REGION_INFO", &r)?;
            Ok((info, r))
        };
        let (mut info, mut r) = ask(proto::RegionInfo::SIZE as u32)?;
        if info.argsz as usize > proto::RegionInfo::SIZE {
            // The capability chain (and, with it, the file) comes when the
            // request has room for it.
            (info, r) = ask(info.argsz)?;
        }
        let mut areas = proto::decode_sparse_mmap(&info, &r.payload)
            .ok_or_else(|| Error::Protocol("capability chain past the reply".into()))?;
        let (flags, size, offset) = (info.flags, info.size, info.offset);
        let fd = r.fds.into_iter().next();
        if fd.is_some() && areas.is_empty() {
            areas.push((0, size));
        }
        Ok(Region {
            index,
            flags: flags & !proto::REGION_FLAG_CAPS,
            size,
            offset,
            fd,
            areas,
        })
    }

    fn irq_info_request(&self, index: u32) -> Result<IrqInfo> {
        let p = proto::IrqInfo {
            argsz: proto::IrqInfo::SIZE as u32,
            index,
            ..proto::IrqInfo::default()
        }
        .encode();
        let r = self.conn.request(proto::DEVICE_GET_IRQ_INFO, &[&p], &[])?;
        let q = layout(proto::IrqInfo::decode(&r.payload), "GET_IRQ_INFO", &r)?;
        Ok(IrqInfo {
            flags: q.flags,
            count: q.count,
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
            let p = proto::RegionAccess {
                offset: at,
                region: index,
                count: piece.len() as u32,
            }
            .encode();
            let r = self.conn.request(proto::REGION_READ, &[&p], &[])?;
            let head = proto::RegionAccess::SIZE;
            let data = r.payload.get(head..head + piece.len()).ok_or_else(|| {
                Error::Protocol(format!("REGION_READ answered {} bytes", r.payload.len()))
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
            let p = proto::RegionAccess {
                offset: at,
                region: index,
                count: piece.len() as u32,
            }
            .encode();
            self.conn.request(proto::REGION_WRITE, &[&p, piece], &[])?;
        }
        Ok(())
    }

    /// `VFIO_USER_DEVICE_SET_IRQS`: `flags`, `index`, `start`, `count` as
    /// in `struct vfio_irq_set`; `data` for `DATA_BOOL`; for
    /// `DATA_EVENTFD`, `fds` has one entry per vector, `-1` for a vector
    /// whose eventfd goes. The vectors go in runs (descriptors, or none)
    /// of at most [`proto::MAX_MSG_FDS`], one message each, as the protocol
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
            let p = proto::IrqSet {
                argsz: (proto::IrqSet::SIZE + data.len()) as u32,
                flags,
                index,
                start,
                count,
            }
            .encode();
            self.conn
                .request(proto::DEVICE_SET_IRQS, &[&p, data], fds)
                .map(|_| ())
        };
        if fds.is_empty() {
            return message(start, count, data, &[]);
        }
        let mut at = 0usize;
        while at < fds.len() {
            let valid = fds[at] >= 0;
            let mut end = at + 1;
            while end < fds.len() && (fds[end] >= 0) == valid && end - at < proto::MAX_MSG_FDS {
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
        let mut flags = 0;
        if read {
            flags |= proto::DMA_FLAG_READ;
        }
        if write {
            flags |= proto::DMA_FLAG_WRITE;
        }
        let p = proto::DmaMap {
            argsz: proto::DmaMap::SIZE as u32,
            flags,
            offset: fd.map_or(0, |(_, o)| o),
            addr: iova,
            size,
        }
        .encode();
        let raw: Vec<RawFd> = fd.iter().map(|(f, _)| f.as_raw_fd()).collect();
        self.conn.request(proto::DMA_MAP, &[&p], &raw)?;
        Ok(())
    }

    /// `VFIO_USER_DMA_UNMAP` of `size` bytes at `iova`.
    pub fn dma_unmap(&self, iova: u64, size: u64) -> Result<()> {
        let p = proto::DmaUnmap {
            argsz: proto::DmaUnmap::SIZE as u32,
            flags: 0,
            addr: iova,
            size,
        }
        .encode();
        self.conn.request(proto::DMA_UNMAP, &[&p], &[])?;
        Ok(())
    }

    /// `VFIO_USER_DEVICE_RESET`.
    pub fn reset(&self) -> Result<()> {
        self.conn.request(proto::DEVICE_RESET, &[], &[])?;
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
