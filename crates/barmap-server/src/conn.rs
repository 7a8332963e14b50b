//! One client connection: the version handshake, then each command the
//! client sends, in order, on a thread of its own; replies and the
//! server's own requests (`VFIO_USER_DMA_READ`/`WRITE`) share the socket.
//!
//! Two threads per connection: a reader that takes every message off the
//! socket (the client's commands go to the handler in order, replies to
//! the server's DMA requests go to whichever thread waits for them), and
//! the handler, which runs the commands. A model may DMA by message from
//! any thread, the handler's own included, because the reply never has to
//! pass through the thread that waits for it.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::device::{ClientInfo, ServedDevice};
use crate::host::{Backing, ClientId, DmaWindow};
use crate::proto::{self, Fields, Header, Message};

/// How long the server waits for a client's answer to a DMA request; the
/// DMA then fails as an IOMMU fault the model sees.
///
/// Shorter than QEMU's default reply time-out (`x-msg-timeout`, 5 s) on
/// purpose: QEMU serves `DMA_READ`/`WRITE` on its main loop under the BQL,
/// and a vCPU holds the BQL while it waits for a register read. A model
/// that DMAs by message holds its state lock meanwhile, so such a read
/// waits for the DMA, which waits for the main loop, which waits for the
/// vCPU: a cycle that only a time-out breaks. Breaking it here first
/// costs the device one DMA fault; breaking it in QEMU costs the
/// connection (its late replies then arrive unexpected). With QEMU, give
/// the guest shared memory (`memory-backend-memfd,share=on`): DMA then
/// goes through the fd and never by message.
pub const DMA_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The sending side of a connection, shared by the handler and by any
/// thread that DMAs by message.
#[derive(Debug)]
pub struct Outbound {
    sock: UnixStream,
    send: Mutex<()>,
    next_id: AtomicU16,
    replies: Mutex<(HashMap<u16, Option<Message>>, bool)>, // (waiting, closed)
    arrived: Condvar,
}

impl Outbound {
    fn new(sock: UnixStream) -> Outbound {
        Outbound {
            sock,
            send: Mutex::new(()),
            next_id: AtomicU16::new(0x8000),
            replies: Mutex::new((HashMap::new(), false)),
            arrived: Condvar::new(),
        }
    }

    /// Sends one message.
    pub fn send(&self, header: Header, payload: &[u8], fds: &[i32]) -> io::Result<()> {
        let _g = self.send.lock().unwrap();
        proto::send(self.sock.as_raw_fd(), header, payload, fds)
    }

    /// Sends a request and waits for its reply.
    fn request(&self, command: u16, payload: &[u8]) -> io::Result<Message> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.replies.lock().unwrap().0.insert(id, None);
        let header = Header {
            id,
            command,
            flags: proto::FLAG_COMMAND,
            ..Header::default()
        };
        if let Err(e) = self.send(header, payload, &[]) {
            self.replies.lock().unwrap().0.remove(&id);
            return Err(e);
        }
        let mut r = self.replies.lock().unwrap();
        let deadline = std::time::Instant::now() + DMA_REPLY_TIMEOUT;
        loop {
            if let Some(Some(_)) = r.0.get(&id) {
                let m = r.0.remove(&id).flatten().expect("present");
                if m.header.flags & proto::FLAG_ERROR != 0 {
                    return Err(io::Error::from_raw_os_error(m.header.error as i32));
                }
                return Ok(m);
            }
            let now = std::time::Instant::now();
            if r.1 || now >= deadline {
                r.0.remove(&id);
                return Err(io::Error::from_raw_os_error(if r.1 {
                    libc::ENOTCONN
                } else {
                    libc::ETIMEDOUT
                }));
            }
            r = self.arrived.wait_timeout(r, deadline - now).unwrap().0;
        }
    }

    /// `VFIO_USER_DMA_READ`: reads client memory at `iova`.
    pub fn dma_read(&self, iova: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, chunk) in buf.chunks_mut(proto::MAX_DATA_XFER).enumerate() {
            let at = iova + (i * proto::MAX_DATA_XFER) as u64;
            let mut p = Vec::with_capacity(16);
            proto::put_u64(&mut p, at);
            proto::put_u64(&mut p, chunk.len() as u64);
            let m = self.request(proto::DMA_READ, &p)?;
            let data = m
                .payload
                .get(16..16 + chunk.len())
                .ok_or(io::ErrorKind::InvalidData)?;
            chunk.copy_from_slice(data);
        }
        Ok(())
    }

    /// `VFIO_USER_DMA_WRITE`: writes client memory at `iova`.
    pub fn dma_write(&self, iova: u64, data: &[u8]) -> io::Result<()> {
        for (i, chunk) in data.chunks(proto::MAX_DATA_XFER).enumerate() {
            let at = iova + (i * proto::MAX_DATA_XFER) as u64;
            let mut p = Vec::with_capacity(16 + chunk.len());
            proto::put_u64(&mut p, at);
            proto::put_u64(&mut p, chunk.len() as u64);
            p.extend_from_slice(chunk);
            self.request(proto::DMA_WRITE, &p)?;
        }
        Ok(())
    }

    fn deliver(&self, m: Message) {
        let mut r = self.replies.lock().unwrap();
        if let Some(slot) = r.0.get_mut(&m.header.id) {
            *slot = Some(m);
            self.arrived.notify_all();
        }
    }

    fn close(&self) {
        self.replies.lock().unwrap().1 = true;
        self.arrived.notify_all();
    }
}

/// Serves one accepted connection to `dev` until the client goes.
pub fn serve(dev: Arc<ServedDevice>, sock: UnixStream, id: ClientId) {
    let (pid, uid, gid) = proto::peer_cred(&sock).unwrap_or((0, u32::MAX, u32::MAX));
    let info = ClientInfo { id, pid, uid, gid };
    let keep = match sock.try_clone() {
        Ok(s) => OwnedFd::from(s),
        Err(_) => return,
    };
    let reader = match sock.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let out = Arc::new(Outbound::new(sock));
    // The handshake, before the client counts as attached.
    let first = match proto::recv(reader.as_raw_fd()) {
        Ok(m) => m,
        Err(_) => return,
    };
    if first.header.command != proto::VERSION || first.header.is_reply() {
        let _ = out.send(proto::error_header(&first.header, libc::EINVAL), &[], &[]);
        return;
    }
    if let Err(errno) = dev.attach(info.clone(), keep) {
        tracing::warn!(
            "{}: client pid {pid} uid {uid} refused: {}",
            dev.name,
            io::Error::from_raw_os_error(errno)
        );
        let _ = out.send(proto::error_header(&first.header, errno), &[], &[]);
        return;
    }
    eprintln!(
        "barmap serve: {}: client {id} connected: pid {pid} uid {uid} gid {gid}",
        dev.name
    );
    let ok = match version(&first) {
        Ok(reply) => out
            .send(proto::reply_header(&first.header), &reply, &[])
            .is_ok(),
        Err(errno) => {
            let _ = out.send(proto::error_header(&first.header, errno), &[], &[]);
            false
        }
    };
    if ok {
        let (tx, rx) = mpsc::channel::<Message>();
        let handler = {
            let (dev, out) = (dev.clone(), out.clone());
            std::thread::Builder::new()
                .name(format!("barmap-client-{id}"))
                .spawn(move || {
                    for m in rx {
                        handle(&dev, &out, id, m);
                    }
                })
        };
        if let Ok(handler) = handler {
            loop {
                match proto::recv(reader.as_raw_fd()) {
                    Ok(m) if m.header.is_reply() => out.deliver(m),
                    Ok(m) => {
                        if tx.send(m).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            out.close();
            drop(tx);
            let _ = handler.join();
        }
    }
    out.close();
    dev.detach(id);
    eprintln!("barmap serve: {}: client {id} (pid {pid}) gone", dev.name);
}

/// The server's answer to `VFIO_USER_VERSION`: major 0, minor 0 (what
/// QEMU 10.1 and later propose), the capabilities it supports.
fn version(m: &Message) -> Result<Vec<u8>, i32> {
    let major = m.payload.get(0..2).ok_or(libc::EINVAL)?;
    if u16::from_ne_bytes([major[0], major[1]]) != 0 {
        return Err(libc::ENOTSUP);
    }
    let caps = serde_json::json!({
        "capabilities": {
            "max_msg_fds": proto::MAX_MSG_FDS,
            "max_data_xfer_size": proto::MAX_DATA_XFER,
            "pgsizes": 4096,
            "max_dma_maps": 65535,
        }
    });
    let mut reply = Vec::new();
    reply.extend_from_slice(&0u16.to_ne_bytes());
    reply.extend_from_slice(&0u16.to_ne_bytes());
    reply.extend_from_slice(caps.to_string().as_bytes());
    reply.push(0);
    Ok(reply)
}

/// Runs one command and sends its reply (unless the client asked for
/// none).
fn handle(dev: &ServedDevice, out: &Arc<Outbound>, client: ClientId, m: Message) {
    dev.count_message();
    let h = m.header;
    let (result, fds): (Result<Vec<u8>, i32>, Vec<i32>) = match h.command {
        proto::DEVICE_GET_INFO => (device_info(&m), vec![]),
        proto::DEVICE_GET_REGION_INFO => match region_info(dev, &m) {
            Ok((p, fd)) => (Ok(p), fd.into_iter().collect()),
            Err(e) => (Err(e), vec![]),
        },
        proto::DEVICE_GET_IRQ_INFO => (irq_info(dev, &m), vec![]),
        proto::DEVICE_SET_IRQS => (set_irqs(dev, client, m), vec![]),
        proto::REGION_READ => (region_read(dev, &m), vec![]),
        proto::REGION_WRITE => (region_write(dev, &m), vec![]),
        proto::REGION_WRITE_MULTI => (region_write_multi(dev, &m), vec![]),
        proto::DMA_MAP => (dma_map(dev, out, client, m), vec![]),
        proto::DMA_UNMAP => (dma_unmap(dev, client, &m), vec![]),
        proto::DEVICE_RESET => (dev.reset().map(|()| Vec::new()), vec![]),
        crate::ext::REGION_WRITE64 => (crate::ext::region_write64(dev, &m.payload), vec![]),
        proto::VERSION => (Err(libc::EINVAL), vec![]),
        _ => (Err(libc::ENOTTY), vec![]),
    };
    if h.no_reply() {
        return;
    }
    let sent = match result {
        Ok(payload) => out.send(proto::reply_header(&h), &payload, &fds),
        Err(errno) => out.send(proto::error_header(&h, errno), &[], &[]),
    };
    if sent.is_err() {
        // The reader sees the closed socket and ends the connection.
        // SAFETY: shutdown of our own socket.
        unsafe { libc::shutdown(out.sock.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

fn argsz(m: &Message, min: u32) -> Result<u32, i32> {
    let a = m.payload.u32_at(0).ok_or(libc::EINVAL)?;
    if a < min {
        return Err(libc::EINVAL);
    }
    Ok(a)
}

fn device_info(m: &Message) -> Result<Vec<u8>, i32> {
    argsz(m, 16)?;
    let mut p = Vec::new();
    proto::put_u32(&mut p, 16);
    proto::put_u32(&mut p, proto::DEVICE_FLAGS_RESET | proto::DEVICE_FLAGS_PCI);
    proto::put_u32(&mut p, proto::NUM_REGIONS);
    proto::put_u32(&mut p, proto::NUM_IRQS);
    Ok(p)
}

/// `VFIO_USER_DEVICE_GET_REGION_INFO`: a memory BAR is mmappable through
/// its memfd (sent with the reply), in the areas barmap allows (a sparse
/// capability when that is not the whole BAR); register BARs and config
/// space are reached by message only.
fn region_info(dev: &ServedDevice, m: &Message) -> Result<(Vec<u8>, Option<i32>), i32> {
    let argsz = argsz(m, 32)?;
    let index = m.payload.u32_at(8).ok_or(libc::EINVAL)?;
    let size = dev.region_size(index).ok_or(libc::EINVAL)?;
    let mut flags = 0;
    let mut caps = Vec::new();
    let mut fd = None;
    if size > 0 {
        flags = proto::REGION_FLAG_READ | proto::REGION_FLAG_WRITE;
    }
    if let (Some(bar), Some(info)) = (dev.mem_bar(index), dev.model().device().region_info(index)) {
        if !info.flags.write {
            flags &= !proto::REGION_FLAG_WRITE;
        }
        if info.flags.mmap {
            flags |= proto::REGION_FLAG_MMAP;
            fd = Some(bar.client_fd().as_raw_fd());
            let whole = info.mmap_areas.len() == 1 && info.mmap_areas[0] == (0..size);
            if !whole {
                // struct vfio_region_info_cap_sparse_mmap after the info.
                caps.extend_from_slice(&proto::CAP_SPARSE_MMAP.to_ne_bytes());
                caps.extend_from_slice(&1u16.to_ne_bytes());
                proto::put_u32(&mut caps, 0);
                proto::put_u32(&mut caps, info.mmap_areas.len() as u32);
                proto::put_u32(&mut caps, 0);
                for a in &info.mmap_areas {
                    proto::put_u64(&mut caps, a.start);
                    proto::put_u64(&mut caps, a.end - a.start);
                }
            }
        }
    }
    let need = 32 + caps.len() as u32;
    let fits = !caps.is_empty() && argsz >= need;
    if !caps.is_empty() {
        flags |= proto::REGION_FLAG_CAPS;
    }
    let mut p = Vec::new();
    proto::put_u32(&mut p, need);
    proto::put_u32(&mut p, flags);
    proto::put_u32(&mut p, index);
    proto::put_u32(&mut p, if fits { 32 } else { 0 });
    proto::put_u64(&mut p, size);
    proto::put_u64(&mut p, 0); // mmap offset in the fd
    if fits {
        p.extend_from_slice(&caps);
    }
    Ok((p, fd))
}

fn irq_info(dev: &ServedDevice, m: &Message) -> Result<Vec<u8>, i32> {
    argsz(m, 16)?;
    let index = m.payload.u32_at(8).ok_or(libc::EINVAL)?;
    let (flags, count) = irq_shape(dev, index).ok_or(libc::EINVAL)?;
    let mut p = Vec::new();
    proto::put_u32(&mut p, 16);
    proto::put_u32(&mut p, flags);
    proto::put_u32(&mut p, index);
    proto::put_u32(&mut p, count);
    Ok(p)
}

/// An interrupt index's flags and vector count, as vfio-pci reports them.
fn irq_shape(dev: &ServedDevice, index: u32) -> Option<(u32, u32)> {
    let l = dev.model().layout();
    Some(match index {
        proto::IRQ_INTX => (
            proto::IRQ_INFO_EVENTFD | proto::IRQ_INFO_MASKABLE | proto::IRQ_INFO_AUTOMASKED,
            u32::from(l.intx),
        ),
        proto::IRQ_MSI => (
            proto::IRQ_INFO_EVENTFD | proto::IRQ_INFO_NORESIZE,
            u32::from(l.interrupts.msi_vectors),
        ),
        proto::IRQ_MSIX => (
            proto::IRQ_INFO_EVENTFD | proto::IRQ_INFO_NORESIZE,
            u32::from(l.interrupts.msix_vectors),
        ),
        proto::IRQ_ERR | proto::IRQ_REQ => (proto::IRQ_INFO_EVENTFD, 1),
        _ => return None,
    })
}

/// `VFIO_USER_DEVICE_SET_IRQS`, validated as
/// `vfio_set_irqs_validate_and_prepare` does: one data type, one action,
/// the range inside the index; eventfds come as ancillary data, one per
/// vector (none de-assigns the range).
fn set_irqs(dev: &ServedDevice, client: ClientId, m: Message) -> Result<Vec<u8>, i32> {
    let p = &m.payload;
    let (flags, index, start, count) = (
        p.u32_at(4).ok_or(libc::EINVAL)?,
        p.u32_at(8).ok_or(libc::EINVAL)?,
        p.u32_at(12).ok_or(libc::EINVAL)?,
        p.u32_at(16).ok_or(libc::EINVAL)?,
    );
    argsz(&m, 20)?;
    let data = flags & 0x7;
    let action = flags & 0x38;
    if data.count_ones() != 1 || action.count_ones() != 1 || flags & !0x3f != 0 {
        return Err(libc::EINVAL);
    }
    let (_, max) = irq_shape(dev, index).ok_or(libc::EINVAL)?;
    let end = start.checked_add(count).ok_or(libc::EINVAL)?;
    if end > max || (count == 0 && !(data == proto::IRQ_SET_DATA_NONE && start == 0)) {
        return Err(libc::EINVAL);
    }
    let bools: Vec<bool> = match data {
        proto::IRQ_SET_DATA_BOOL => {
            let b = p.get(20..20 + count as usize).ok_or(libc::EINVAL)?;
            b.iter().map(|&x| x != 0).collect()
        }
        _ => vec![true; count as usize],
    };
    let host = dev.host();
    match (action, data) {
        (proto::IRQ_SET_ACTION_TRIGGER, proto::IRQ_SET_DATA_EVENTFD) => {
            let fds: Vec<Option<OwnedFd>> = match m.fds.len() {
                0 => (0..count).map(|_| None).collect(),
                n if n == count as usize => m.fds.into_iter().map(Some).collect(),
                _ => return Err(libc::EINVAL),
            };
            let enable: Vec<bool> = fds.iter().map(Option::is_some).collect();
            host.set_eventfds(index, start, fds, client);
            if index == proto::IRQ_MSIX {
                // As the kernel does when the program enables a vector.
                for (i, on) in enable.into_iter().enumerate() {
                    dev.model().set_msix_masked(start + i as u32, !on);
                }
            }
        }
        (proto::IRQ_SET_ACTION_TRIGGER, _) if count == 0 => {
            host.clear_index(index);
            if index == proto::IRQ_MSIX {
                for v in 0..max {
                    dev.model().set_msix_masked(v, true);
                }
            }
        }
        (proto::IRQ_SET_ACTION_TRIGGER, _) => {
            for (i, on) in bools.into_iter().enumerate() {
                if on {
                    host.signal_raw(index, start + i as u32);
                }
            }
        }
        (proto::IRQ_SET_ACTION_MASK | proto::IRQ_SET_ACTION_UNMASK, d)
            if index == proto::IRQ_INTX && d != proto::IRQ_SET_DATA_EVENTFD =>
        {
            if bools.first().copied().unwrap_or(false) {
                host.set_intx_masked(action == proto::IRQ_SET_ACTION_MASK);
            }
        }
        // vfio-pci has no masking of MSI, MSI-X, ERR or REQ, and this
        // server no unmask eventfd (irqfd) for INTx.
        _ => return Err(libc::ENOTTY),
    }
    Ok(Vec::new())
}

fn rw_fields(m: &Message) -> Result<(u64, u32, usize), i32> {
    let offset = m.payload.u64_at(0).ok_or(libc::EINVAL)?;
    let region = m.payload.u32_at(8).ok_or(libc::EINVAL)?;
    let count = m.payload.u32_at(12).ok_or(libc::EINVAL)? as usize;
    if count > proto::MAX_DATA_XFER {
        return Err(libc::EINVAL);
    }
    Ok((offset, region, count))
}

fn region_read(dev: &ServedDevice, m: &Message) -> Result<Vec<u8>, i32> {
    let (offset, region, count) = rw_fields(m)?;
    let mut p = m.payload[..16].to_vec();
    p.resize(16 + count, 0);
    dev.region_read(region, offset, &mut p[16..])?;
    Ok(p)
}

fn region_write(dev: &ServedDevice, m: &Message) -> Result<Vec<u8>, i32> {
    let (offset, region, count) = rw_fields(m)?;
    let data = m.payload.get(16..16 + count).ok_or(libc::EINVAL)?;
    dev.region_write(region, offset, data)?;
    Ok(m.payload[..16].to_vec())
}

/// `VFIO_USER_REGION_WRITE_MULTI`: `wr_cnt`, then writes of 24 bytes
/// each (offset, region, count, 8 bytes of data).
fn region_write_multi(dev: &ServedDevice, m: &Message) -> Result<Vec<u8>, i32> {
    let n = m.payload.u64_at(0).ok_or(libc::EINVAL)? as usize;
    for i in 0..n {
        let at = 8 + i * 24;
        let offset = m.payload.u64_at(at).ok_or(libc::EINVAL)?;
        let region = m.payload.u32_at(at + 8).ok_or(libc::EINVAL)?;
        let count = m.payload.u32_at(at + 12).ok_or(libc::EINVAL)? as usize;
        if count > 8 {
            return Err(libc::EINVAL);
        }
        let data = m
            .payload
            .get(at + 16..at + 16 + count)
            .ok_or(libc::EINVAL)?;
        dev.region_write(region, offset, data)?;
    }
    Ok(Vec::new())
}

fn dma_map(
    dev: &ServedDevice,
    out: &Arc<Outbound>,
    client: ClientId,
    mut m: Message,
) -> Result<Vec<u8>, i32> {
    argsz(&m, 32)?;
    let p = &m.payload;
    let flags = p.u32_at(4).ok_or(libc::EINVAL)?;
    let offset = p.u64_at(8).ok_or(libc::EINVAL)?;
    let iova = p.u64_at(16).ok_or(libc::EINVAL)?;
    let size = p.u64_at(24).ok_or(libc::EINVAL)?;
    if flags & !(proto::DMA_FLAG_READ | proto::DMA_FLAG_WRITE) != 0 || m.fds.len() > 1 {
        return Err(libc::EINVAL);
    }
    let backing = match m.fds.pop() {
        Some(fd) => Backing::File(fd, offset),
        None => Backing::Messages(Arc::downgrade(out)),
    };
    dev.host().dma_map(DmaWindow {
        iova,
        size,
        flags,
        client,
        backing,
    })?;
    Ok(Vec::new())
}

fn dma_unmap(dev: &ServedDevice, client: ClientId, m: &Message) -> Result<Vec<u8>, i32> {
    argsz(m, 24)?;
    let flags = m.payload.u32_at(4).ok_or(libc::EINVAL)?;
    let iova = m.payload.u64_at(8).ok_or(libc::EINVAL)?;
    let size = m.payload.u64_at(16).ok_or(libc::EINVAL)?;
    if flags & !proto::DMA_UNMAP_FLAG_ALL != 0 {
        return Err(libc::EINVAL);
    }
    if flags & proto::DMA_UNMAP_FLAG_ALL != 0 {
        if iova != 0 || size != 0 {
            return Err(libc::EINVAL);
        }
        dev.host().dma_unmap_all(client);
    } else {
        dev.host().dma_unmap(client, iova, size)?;
    }
    Ok(m.payload[..24].to_vec())
}
