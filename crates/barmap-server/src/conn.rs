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
use crate::proto::{self, Header, Message};

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
            let p = proto::DmaAccess {
                addr: at,
                count: chunk.len() as u64,
            }
            .encode();
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
            let mut p = proto::DmaAccess {
                addr: at,
                count: chunk.len() as u64,
            }
            .encode();
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
    let (pid, uid, gid) = crate::peer_cred(&sock).unwrap_or((0, u32::MAX, u32::MAX));
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
    let asked = proto::Version::decode(&m.payload).ok_or(libc::EINVAL)?;
    if asked.major != 0 {
        return Err(libc::ENOTSUP);
    }
    Ok(proto::Version {
        major: 0,
        minor: 0,
        caps: proto::Capabilities {
            max_msg_fds: Some(proto::MAX_MSG_FDS as u64),
            max_data_xfer_size: Some(proto::MAX_DATA_XFER as u64),
            pgsizes: Some(4096),
            max_dma_maps: Some(65535),
        },
    }
    .encode())
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
        crate::ext::DMA_UNMAP_ANY => (crate::ext::dma_unmap_any(dev, &m.payload), vec![]),
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

/// `argsz` below the layout's size is EINVAL, as the kernel's ioctls do.
fn argsz(argsz: u32, min: usize) -> Result<u32, i32> {
    if (argsz as usize) < min {
        return Err(libc::EINVAL);
    }
    Ok(argsz)
}

fn device_info(m: &Message) -> Result<Vec<u8>, i32> {
    let asked = proto::DeviceInfo::decode(&m.payload).ok_or(libc::EINVAL)?;
    argsz(asked.argsz, proto::DeviceInfo::SIZE)?;
    Ok(proto::DeviceInfo {
        argsz: proto::DeviceInfo::SIZE as u32,
        flags: proto::DEVICE_FLAGS_RESET | proto::DEVICE_FLAGS_PCI,
        num_regions: proto::NUM_REGIONS,
        num_irqs: proto::NUM_IRQS,
    }
    .encode())
}

/// `VFIO_USER_DEVICE_GET_REGION_INFO`: a memory BAR is mmappable through
/// its memfd (sent with the reply), in the areas barmap allows (a sparse
/// capability when that is not the whole BAR); register BARs and config
/// space are reached by message only.
fn region_info(dev: &ServedDevice, m: &Message) -> Result<(Vec<u8>, Option<i32>), i32> {
    let asked = proto::RegionInfo::decode(&m.payload).ok_or(libc::EINVAL)?;
    let argsz = argsz(asked.argsz, proto::RegionInfo::SIZE)?;
    let index = asked.index;
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
                let areas: Vec<(u64, u64)> = info
                    .mmap_areas
                    .iter()
                    .map(|a| (a.start, a.end - a.start))
                    .collect();
                caps = proto::encode_sparse_mmap(&areas);
            }
        }
    }
    let need = (proto::RegionInfo::SIZE + caps.len()) as u32;
    let fits = !caps.is_empty() && argsz >= need;
    if !caps.is_empty() {
        flags |= proto::REGION_FLAG_CAPS;
    }
    let mut p = proto::RegionInfo {
        argsz: need,
        flags,
        index,
        cap_offset: if fits {
            proto::RegionInfo::SIZE as u32
        } else {
            0
        },
        size,
        offset: 0, // mmap offset in the fd
    }
    .encode();
    if fits {
        p.extend_from_slice(&caps);
    }
    Ok((p, fd))
}

fn irq_info(dev: &ServedDevice, m: &Message) -> Result<Vec<u8>, i32> {
    let asked = proto::IrqInfo::decode(&m.payload).ok_or(libc::EINVAL)?;
    argsz(asked.argsz, proto::IrqInfo::SIZE)?;
    let index = asked.index;
    let (flags, count) = irq_shape(dev, index).ok_or(libc::EINVAL)?;
    Ok(proto::IrqInfo {
        argsz: proto::IrqInfo::SIZE as u32,
        flags,
        index,
        count,
    }
    .encode())
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
    let set = proto::IrqSet::decode(p).ok_or(libc::EINVAL)?;
    let (flags, index, start, count) = (set.flags, set.index, set.start, set.count);
    argsz(set.argsz, proto::IrqSet::SIZE)?;
    let data = flags & proto::IRQ_SET_DATA_TYPE_MASK;
    let action = flags & proto::IRQ_SET_ACTION_TYPE_MASK;
    let known = proto::IRQ_SET_DATA_TYPE_MASK | proto::IRQ_SET_ACTION_TYPE_MASK;
    if data.count_ones() != 1 || action.count_ones() != 1 || flags & !known != 0 {
        return Err(libc::EINVAL);
    }
    let (_, max) = irq_shape(dev, index).ok_or(libc::EINVAL)?;
    let end = start.checked_add(count).ok_or(libc::EINVAL)?;
    if end > max || (count == 0 && !(data == proto::IRQ_SET_DATA_NONE && start == 0)) {
        return Err(libc::EINVAL);
    }
    let bools: Vec<bool> = match data {
        proto::IRQ_SET_DATA_BOOL => {
            let at = proto::IrqSet::SIZE;
            let b = p.get(at..at + count as usize).ok_or(libc::EINVAL)?;
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
    let a = proto::RegionAccess::decode(&m.payload).ok_or(libc::EINVAL)?;
    if a.count as usize > proto::MAX_DATA_XFER {
        return Err(libc::EINVAL);
    }
    Ok((a.offset, a.region, a.count as usize))
}

fn region_read(dev: &ServedDevice, m: &Message) -> Result<Vec<u8>, i32> {
    let (offset, region, count) = rw_fields(m)?;
    let head = proto::RegionAccess::SIZE;
    let mut p = m.payload[..head].to_vec();
    p.resize(head + count, 0);
    dev.region_read(region, offset, &mut p[head..])?;
    Ok(p)
}

fn region_write(dev: &ServedDevice, m: &Message) -> Result<Vec<u8>, i32> {
    let (offset, region, count) = rw_fields(m)?;
    let head = proto::RegionAccess::SIZE;
    let data = m.payload.get(head..head + count).ok_or(libc::EINVAL)?;
    dev.region_write(region, offset, data)?;
    Ok(m.payload[..head].to_vec())
}

/// `VFIO_USER_REGION_WRITE_MULTI`: every write checked before the first
/// is made, then made in order.
fn region_write_multi(dev: &ServedDevice, m: &Message) -> Result<Vec<u8>, i32> {
    let writes = proto::WriteMultiEntry::decode_all(&m.payload).ok_or(libc::EINVAL)?;
    for w in writes {
        let a = w.access;
        dev.region_write(a.region, a.offset, &w.data[..a.count as usize])?;
    }
    Ok(Vec::new())
}

fn dma_map(
    dev: &ServedDevice,
    out: &Arc<Outbound>,
    client: ClientId,
    mut m: Message,
) -> Result<Vec<u8>, i32> {
    let map = proto::DmaMap::decode(&m.payload).ok_or(libc::EINVAL)?;
    argsz(map.argsz, proto::DmaMap::SIZE)?;
    let (flags, offset, iova, size) = (map.flags, map.offset, map.addr, map.size);
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
    let unmap = proto::DmaUnmap::decode(&m.payload).ok_or(libc::EINVAL)?;
    argsz(unmap.argsz, proto::DmaUnmap::SIZE)?;
    let (flags, iova, size) = (unmap.flags, unmap.addr, unmap.size);
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
    Ok(m.payload[..proto::DmaUnmap::SIZE].to_vec())
}
