//! vfio-user messages on a Unix stream socket: the 16-byte header, the
//! payload, and file descriptors passed with `SCM_RIGHTS` alongside the
//! first byte of a message.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Bytes of `struct vfio_user_header`.
pub const HEADER: usize = 16;
/// Type bits of the header's flags: a command.
pub const F_COMMAND: u32 = 0x0;
/// Type bits of the header's flags: a reply.
pub const F_REPLY: u32 = 0x1;
/// Mask of the type bits.
pub const F_TYPE_MASK: u32 = 0xf;
/// The reply is an error; `error_no` says which.
pub const F_ERROR: u32 = 0x20;
/// File descriptors one message may carry, at most (libvfio-user's
/// `SERVER_MAX_FDS` is 8; barmap announces the same).
pub const MAX_FDS: usize = 8;

/// The commands barmap's client sends or serves.
#[allow(missing_docs)]
pub mod cmd {
    pub const VERSION: u16 = 1;
    pub const DMA_MAP: u16 = 2;
    pub const DMA_UNMAP: u16 = 3;
    pub const DEVICE_GET_INFO: u16 = 4;
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    pub const DEVICE_SET_IRQS: u16 = 8;
    pub const REGION_READ: u16 = 9;
    pub const REGION_WRITE: u16 = 10;
    pub const DMA_READ: u16 = 11;
    pub const DMA_WRITE: u16 = 12;
    pub const DEVICE_RESET: u16 = 13;
}

/// `struct vfio_user_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Pairs a reply with its command.
    pub id: u16,
    /// The command ([`cmd`]).
    pub cmd: u16,
    /// Bytes of the whole message, header included.
    pub size: u32,
    /// Type, no-reply and error bits.
    pub flags: u32,
    /// The errno of an error reply.
    pub error: u32,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[0..2].copy_from_slice(&self.id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.cmd.to_ne_bytes());
        b[4..8].copy_from_slice(&self.size.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.error.to_ne_bytes());
        b
    }

    fn from_bytes(b: &[u8; HEADER]) -> Header {
        Header {
            id: u16::from_ne_bytes([b[0], b[1]]),
            cmd: u16::from_ne_bytes([b[2], b[3]]),
            size: u32::from_ne_bytes(b[4..8].try_into().unwrap()),
            flags: u32::from_ne_bytes(b[8..12].try_into().unwrap()),
            error: u32::from_ne_bytes(b[12..16].try_into().unwrap()),
        }
    }

    /// Whether the message is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & F_TYPE_MASK == F_REPLY
    }
}

/// One message as received.
#[derive(Debug)]
pub struct Message {
    /// Its header.
    pub header: Header,
    /// The bytes after the header.
    pub body: Vec<u8>,
    /// Descriptors that came with it.
    pub fds: Vec<OwnedFd>,
}

/// Sends one message: `header` (its size filled in from the parts), the
/// `parts` of its payload, and `fds` with its first byte.
pub fn send(
    sock: &UnixStream,
    mut header: Header,
    parts: &[&[u8]],
    fds: &[RawFd],
) -> io::Result<()> {
    let total = HEADER + parts.iter().map(|p| p.len()).sum::<usize>();
    header.size = u32::try_from(total).map_err(|_| io::Error::from_raw_os_error(libc::EMSGSIZE))?;
    let head = header.to_bytes();
    let mut bytes: Vec<u8> = Vec::with_capacity(total);
    bytes.extend_from_slice(&head);
    for p in parts {
        bytes.extend_from_slice(p);
    }
    let mut sent = sendmsg(sock.as_raw_fd(), &bytes, fds)?;
    while sent < bytes.len() {
        sent += sendmsg(sock.as_raw_fd(), &bytes[sent..], &[])?;
    }
    Ok(())
}

/// Receives one message (blocking); `Ok(None)` at the end of the stream.
pub fn recv(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut head = [0u8; HEADER];
    let (n, fds) = recvmsg(sock.as_raw_fd(), &mut head)?;
    if n == 0 {
        return Ok(None);
    }
    read_exact(sock, &mut head[n..])?;
    let header = Header::from_bytes(&head);
    let size = header.size as usize;
    if size < HEADER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message shorter than its header",
        ));
    }
    let mut body = vec![0u8; size - HEADER];
    read_exact(sock, &mut body)?;
    Ok(Some(Message { header, body, fds }))
}

fn read_exact(sock: &UnixStream, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let (n, _) = recvmsg(sock.as_raw_fd(), buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
    }
    Ok(())
}

/// Room for [`MAX_FDS`] descriptors in a control message.
const CMSG_ROOM: usize = 64;

/// `sendmsg` of `bytes` with `fds` as `SCM_RIGHTS`; bytes sent.
fn sendmsg(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u64; CMSG_ROOM / 8];
    // SAFETY: a zeroed msghdr is valid; its pointers are set below to
    // buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as u32;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        // SAFETY: the control buffer holds CMSG_SPACE(data_len) bytes
        // (at most CMSG_ROOM for MAX_FDS descriptors), aligned for cmsghdr.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: msg points at live buffers set up above.
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

/// `recvmsg` into `buf`: bytes received and the descriptors that came with
/// them (close-on-exec).
fn recvmsg(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CMSG_ROOM / 8];
    // SAFETY: a zeroed msghdr is valid; its pointers are set below to
    // buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_ROOM;
    let n = loop {
        // SAFETY: msg points at live buffers set up above.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    Ok((n, take_fds(&msg)))
}

/// The `SCM_RIGHTS` descriptors of a received message.
fn take_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut out = Vec::new();
    // SAFETY: walks the control messages the kernel wrote into the
    // buffer `msg` names, with the kernel's own CMSG macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let n = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..n {
                    // Each received descriptor is new and ours alone.
                    out.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    out
}
