//! The vfio-user wire format, as QEMU's `docs/interop/vfio-user.rst`
//! (QEMU 10.1 and later) defines it: a 16-byte header, the command's
//! payload, and file descriptors as `SCM_RIGHTS` ancillary data on the
//! message's first byte. Everything is in the host's byte order.
//!
//! This module only frames and encodes; what a command does is
//! [`crate::conn`]'s.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `VFIO_USER_VERSION`: the first message, proposing a version and
/// capabilities.
pub const VERSION: u16 = 1;
/// `VFIO_USER_DMA_MAP`: client memory the device may reach.
pub const DMA_MAP: u16 = 2;
/// `VFIO_USER_DMA_UNMAP`.
pub const DMA_UNMAP: u16 = 3;
/// `VFIO_USER_DEVICE_GET_INFO`.
pub const DEVICE_GET_INFO: u16 = 4;
/// `VFIO_USER_DEVICE_GET_REGION_INFO`.
pub const DEVICE_GET_REGION_INFO: u16 = 5;
/// `VFIO_USER_DEVICE_GET_REGION_IO_FDS` (not offered: ENOTTY).
pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
/// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
pub const DEVICE_GET_IRQ_INFO: u16 = 7;
/// `VFIO_USER_DEVICE_SET_IRQS`.
pub const DEVICE_SET_IRQS: u16 = 8;
/// `VFIO_USER_REGION_READ`.
pub const REGION_READ: u16 = 9;
/// `VFIO_USER_REGION_WRITE`.
pub const REGION_WRITE: u16 = 10;
/// `VFIO_USER_DMA_READ` (server to client).
pub const DMA_READ: u16 = 11;
/// `VFIO_USER_DMA_WRITE` (server to client).
pub const DMA_WRITE: u16 = 12;
/// `VFIO_USER_DEVICE_RESET`.
pub const DEVICE_RESET: u16 = 13;
/// `VFIO_USER_REGION_WRITE_MULTI`: coalesced writes of at most 8 bytes.
pub const REGION_WRITE_MULTI: u16 = 15;

/// Header flags: the type bits' value of a command.
pub const FLAG_COMMAND: u32 = 0x0;
/// Header flags: the type bits' value of a reply.
pub const FLAG_REPLY: u32 = 0x1;
/// Header flags: the type bits.
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Header flags: the sender wants no reply.
pub const FLAG_NO_REPLY: u32 = 0x10;
/// Header flags: the reply reports an error (the header's `error`).
pub const FLAG_ERROR: u32 = 0x20;

/// Bytes of the header.
pub const HEADER_SIZE: usize = 16;
/// The largest `count` of one region or DMA read or write this server
/// accepts and announces (`max_data_xfer_size`, the protocol's default).
pub const MAX_DATA_XFER: usize = 1 << 20;
/// The most file descriptors one message may carry (`max_msg_fds`).
pub const MAX_MSG_FDS: usize = 8;
/// The largest message accepted: a maximal transfer and its headers, or a
/// `SET_IRQS` with its booleans (far smaller).
pub const MAX_MESSAGE: usize = MAX_DATA_XFER + 64;

/// The PCI regions (`VFIO_PCI_NUM_REGIONS`): BARs 0 to 5, ROM, config, VGA.
pub const NUM_REGIONS: u32 = 9;
/// Config space's region index (`VFIO_PCI_CONFIG_REGION_INDEX`).
pub const CONFIG_REGION: u32 = 7;
/// Interrupt indexes (`VFIO_PCI_NUM_IRQS`): INTx, MSI, MSI-X, ERR, REQ.
pub const NUM_IRQS: u32 = 5;
/// `VFIO_PCI_INTX_IRQ_INDEX`.
pub const IRQ_INTX: u32 = 0;
/// `VFIO_PCI_MSI_IRQ_INDEX`.
pub const IRQ_MSI: u32 = 1;
/// `VFIO_PCI_MSIX_IRQ_INDEX`.
pub const IRQ_MSIX: u32 = 2;
/// `VFIO_PCI_ERR_IRQ_INDEX`.
pub const IRQ_ERR: u32 = 3;
/// `VFIO_PCI_REQ_IRQ_INDEX`: the device asks to be released.
pub const IRQ_REQ: u32 = 4;

/// `VFIO_DEVICE_FLAGS_RESET`.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `VFIO_DEVICE_FLAGS_PCI`.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_READ`.
pub const REGION_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const REGION_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
pub const REGION_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_REGION_INFO_FLAG_CAPS`.
pub const REGION_FLAG_CAPS: u32 = 1 << 3;
/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
pub const CAP_SPARSE_MMAP: u16 = 1;
/// `VFIO_IRQ_INFO_EVENTFD`.
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// `VFIO_IRQ_INFO_MASKABLE`.
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// `VFIO_IRQ_INFO_AUTOMASKED`.
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// `VFIO_IRQ_INFO_NORESIZE`.
pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;
/// `VFIO_IRQ_SET_DATA_NONE`.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_BOOL`.
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_MASK`.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// `VFIO_IRQ_SET_ACTION_UNMASK`.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// `VFIO_DMA_MAP_FLAG_READ`.
pub const DMA_FLAG_READ: u32 = 1 << 0;
/// `VFIO_DMA_MAP_FLAG_WRITE`.
pub const DMA_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_DMA_UNMAP_FLAG_ALL`: every mapping (address and size 0).
pub const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Message ID, echoed by the reply.
    pub id: u16,
    /// Command.
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// Type, no-reply and error bits.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

impl Header {
    /// Decodes the 16 header bytes.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Header {
        Header {
            id: u16::from_ne_bytes([b[0], b[1]]),
            command: u16::from_ne_bytes([b[2], b[3]]),
            size: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.command.to_ne_bytes());
        b[4..8].copy_from_slice(&self.size.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.error.to_ne_bytes());
        b
    }

    /// Whether this is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_TYPE_MASK == FLAG_REPLY
    }

    /// Whether the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }
}

/// One received message: header, payload and the fds that came with it.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The bytes after the header.
    pub payload: Vec<u8>,
    /// File descriptors passed with it (closed when dropped).
    pub fds: Vec<OwnedFd>,
}

/// Little helpers to read fixed fields out of a payload.
pub trait Fields {
    /// The `u32` at `at`, if the payload has it.
    fn u32_at(&self, at: usize) -> Option<u32>;
    /// The `u64` at `at`, if the payload has it.
    fn u64_at(&self, at: usize) -> Option<u64>;
}

impl Fields for [u8] {
    fn u32_at(&self, at: usize) -> Option<u32> {
        self.get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64_at(&self, at: usize) -> Option<u64> {
        self.get(at..at + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    }
}

/// Appends `v` in the host's byte order.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// Appends `v` in the host's byte order.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// Why a message could not be received.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The peer closed the connection between messages.
    #[error("connection closed")]
    Closed,
    /// The header's size is below 16 or above [`MAX_MESSAGE`]: the stream
    /// cannot be resynchronised.
    #[error("message size {0} out of range")]
    BadSize(u32),
    /// The socket failed (or closed inside a message).
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// Receives one message from the stream socket `fd`: the header with its
/// ancillary fds (at most [`MAX_MSG_FDS`]; more are closed, and the
/// message fails as truncated), then the rest of the payload.
pub fn recv(fd: RawFd) -> Result<Message, RecvError> {
    let mut head = [0u8; HEADER_SIZE];
    let (n, fds, truncated) = recvmsg_fds(fd, &mut head)?;
    if n == 0 {
        return Err(RecvError::Closed);
    }
    read_exact(fd, &mut head[n..])?;
    if truncated {
        return Err(RecvError::Io(io::Error::from_raw_os_error(libc::EMSGSIZE)));
    }
    let header = Header::decode(&head);
    let size = header.size as usize;
    if !(HEADER_SIZE..=MAX_MESSAGE).contains(&size) {
        return Err(RecvError::BadSize(header.size));
    }
    let mut payload = vec![0u8; size - HEADER_SIZE];
    read_exact(fd, &mut payload)?;
    Ok(Message {
        header,
        payload,
        fds,
    })
}

/// Sends one message (header's size set here) with `fds` attached.
pub fn send(fd: RawFd, mut header: Header, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    header.size = (HEADER_SIZE + payload.len()) as u32;
    let head = header.encode();
    let mut first = true;
    let mut bufs: [&[u8]; 2] = [&head, payload];
    while !bufs[0].is_empty() || !bufs[1].is_empty() {
        let n = sendmsg_fds(fd, &bufs, if first { fds } else { &[] })?;
        first = false;
        let mut left = n;
        for b in bufs.iter_mut() {
            let k = left.min(b.len());
            *b = &b[k..];
            left -= k;
        }
    }
    Ok(())
}

/// The reply to `to` with `payload`.
pub fn reply_header(to: &Header) -> Header {
    Header {
        id: to.id,
        command: to.command,
        size: 0,
        flags: FLAG_REPLY,
        error: 0,
    }
}

/// An error reply to `to`: header only, errno `errno`.
pub fn error_header(to: &Header, errno: i32) -> Header {
    Header {
        flags: FLAG_REPLY | FLAG_ERROR,
        error: errno as u32,
        ..reply_header(to)
    }
}

fn read_exact(fd: RawFd, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid writable memory of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf = &mut buf[n as usize..];
    }
    Ok(())
}

const CMSG_SPACE: usize = 128; // room for MAX_MSG_FDS descriptors and more

/// One `recvmsg` into `buf`: bytes read, the fds that came with them, and
/// whether the ancillary data was truncated.
fn recvmsg_fds(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let mut cmsg = [0u64; CMSG_SPACE / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_SPACE;
    let n = loop {
        // SAFETY: msg points at iov and cmsg, both live for the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // bounded by msg_controllen; each SCM_RIGHTS payload is an array of
    // fds now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > MAX_MSG_FDS;
    Ok((n, fds, truncated))
}

fn sendmsg_fds(fd: RawFd, bufs: &[&[u8]; 2], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        })
        .collect();
    let mut cmsg = [0u64; CMSG_SPACE / 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    if !fds.is_empty() {
        assert!(fds.len() <= MAX_MSG_FDS, "at most {MAX_MSG_FDS} fds");
        // SAFETY: CMSG_SPACE/LEN compute sizes; the buffer holds
        // MAX_MSG_FDS fds, checked above.
        unsafe {
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE((fds.len() * 4) as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c) as *mut RawFd,
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: msg points at iov (borrowing bufs) and cmsg, live for
        // the call. MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The peer's credentials (`SO_PEERCRED`): pid, uid, gid at connect time.
pub fn peer_cred(fd: &impl AsRawFd) -> io::Result<(i32, u32, u32)> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the call and sized for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid, cred.gid))
}
