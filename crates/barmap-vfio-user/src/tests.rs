//! Round trips of every layout and of framing over a socket pair, and the
//! messages framing must refuse.

use super::*;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

fn pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().expect("socketpair")
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd returns a new descriptor owned here (checked >= 0).
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd is new and ours.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn header_round_trips_and_reports_reply_error_and_no_reply() {
    let h = Header {
        id: 0xbeef,
        command: DMA_UNMAP,
        size: 40,
        flags: FLAG_REPLY | FLAG_ERROR | FLAG_NO_REPLY,
        error: libc::EINVAL as u32,
    };
    assert_eq!(Header::decode(&h.encode()), h);
    assert!(h.is_reply() && h.is_error() && h.no_reply());
    let c = Header::command(7, REGION_READ);
    assert!(!c.is_reply() && !c.is_error() && !c.no_reply());
    let e = error_header(&c, libc::EIO);
    assert_eq!((e.id, e.command), (7, REGION_READ));
    assert!(e.is_reply() && e.is_error());
    assert_eq!(e.error, libc::EIO as u32);
    assert!(!reply_header(&c).is_error());
}

#[test]
fn every_fixed_layout_round_trips_and_refuses_a_short_payload() {
    let d = DeviceInfo {
        argsz: 16,
        flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
        num_regions: NUM_REGIONS,
        num_irqs: NUM_IRQS,
    };
    assert_eq!(d.encode().len(), DeviceInfo::SIZE);
    assert_eq!(DeviceInfo::decode(&d.encode()), Some(d));
    assert_eq!(DeviceInfo::decode(&d.encode()[..15]), None);

    let r = RegionInfo {
        argsz: 80,
        flags: REGION_FLAG_READ | REGION_FLAG_MMAP,
        index: 2,
        cap_offset: 32,
        size: 1 << 20,
        offset: 4096,
    };
    assert_eq!(r.encode().len(), RegionInfo::SIZE);
    assert_eq!(RegionInfo::decode(&r.encode()), Some(r));
    assert_eq!(RegionInfo::decode(&r.encode()[..31]), None);

    let q = IrqInfo {
        argsz: 16,
        flags: IRQ_INFO_EVENTFD,
        index: IRQ_MSIX,
        count: 64,
    };
    assert_eq!(IrqInfo::decode(&q.encode()), Some(q));
    assert_eq!(IrqInfo::decode(&q.encode()[..12]), None);

    let s = IrqSet {
        argsz: 24,
        flags: IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
        index: IRQ_MSI,
        start: 1,
        count: 4,
    };
    assert_eq!(s.encode().len(), IrqSet::SIZE);
    assert_eq!(IrqSet::decode(&s.encode()), Some(s));
    assert_eq!(IrqSet::decode(&s.encode()[..19]), None);

    let a = RegionAccess {
        offset: 0x1000,
        region: CONFIG_REGION,
        count: 4,
    };
    assert_eq!(RegionAccess::decode(&a.encode()), Some(a));
    assert_eq!(RegionAccess::decode(&a.encode()[..15]), None);

    let m = DmaMap {
        argsz: 32,
        flags: DMA_FLAG_READ | DMA_FLAG_WRITE,
        offset: 8192,
        addr: 0x10_0000,
        size: 0x2000,
    };
    assert_eq!(m.encode().len(), DmaMap::SIZE);
    assert_eq!(DmaMap::decode(&m.encode()), Some(m));
    assert_eq!(DmaMap::decode(&m.encode()[..31]), None);

    let u = DmaUnmap {
        argsz: 24,
        flags: DMA_UNMAP_FLAG_ALL,
        addr: 0,
        size: 0,
    };
    assert_eq!(DmaUnmap::decode(&u.encode()), Some(u));
    assert_eq!(DmaUnmap::decode(&u.encode()[..23]), None);

    let x = DmaAccess {
        addr: 0xdead_0000,
        count: 64,
    };
    assert_eq!(DmaAccess::decode(&x.encode()), Some(x));
    assert_eq!(DmaAccess::decode(&x.encode()[..8]), None);
}

#[test]
fn write_multi_round_trips_and_refuses_short_or_wide_entries() {
    let e = |offset, count| WriteMultiEntry {
        access: RegionAccess {
            offset,
            region: 0,
            count,
        },
        data: [1, 2, 3, 4, 5, 6, 7, 8],
    };
    let all = vec![e(0, 4), e(8, 8)];
    let p = WriteMultiEntry::encode_all(&all);
    assert_eq!(p.len(), 8 + 2 * WriteMultiEntry::SIZE);
    assert_eq!(WriteMultiEntry::decode_all(&p), Some(all));
    assert_eq!(WriteMultiEntry::decode_all(&p[..p.len() - 1]), None);
    assert_eq!(
        WriteMultiEntry::decode_all(&WriteMultiEntry::encode_all(&[e(0, 9)])),
        None
    );
    // A count far beyond the payload is refused, not allocated for.
    let mut huge = Vec::new();
    put_u64(&mut huge, u64::MAX);
    assert_eq!(WriteMultiEntry::decode_all(&huge), None);
}

#[test]
fn version_and_capabilities_round_trip_and_garbage_leaves_them_unset() {
    let v = Version {
        major: 0,
        minor: 1,
        caps: Capabilities {
            max_msg_fds: Some(8),
            max_data_xfer_size: Some(1 << 20),
            pgsizes: Some(4096),
            max_dma_maps: None,
        },
    };
    let p = v.encode();
    assert_eq!(*p.last().unwrap(), 0, "the JSON is NUL-terminated");
    assert_eq!(Version::decode(&p), Some(v.clone()));
    assert!(!v.caps.to_json().contains("max_dma_maps"));
    assert_eq!(Version::decode(&[0, 0]), None);
    let junk = Version::decode(&[0, 0, 1, 0, b'{', b'x']).unwrap();
    assert_eq!(junk.minor, 1);
    assert_eq!(junk.caps, Capabilities::default());
    let typed = Capabilities::parse(r#"{"capabilities":{"max_msg_fds":"8"}}"#);
    assert_eq!(typed.max_msg_fds, None);
}

#[test]
fn sparse_mmap_capability_round_trips_and_a_looping_chain_is_refused() {
    let areas = [(0u64, 0x1000u64), (0x3000, 0x1000)];
    let cap = encode_sparse_mmap(&areas);
    let info = RegionInfo {
        argsz: (RegionInfo::SIZE + cap.len()) as u32,
        flags: REGION_FLAG_CAPS | REGION_FLAG_MMAP,
        index: 0,
        cap_offset: RegionInfo::SIZE as u32,
        size: 0x4000,
        offset: 0,
    };
    let mut p = info.encode();
    p.extend_from_slice(&cap);
    assert_eq!(decode_sparse_mmap(&info, &p), Some(areas.to_vec()));
    // Without the caps flag there are none.
    let plain = RegionInfo {
        flags: REGION_FLAG_MMAP,
        ..info
    };
    assert_eq!(decode_sparse_mmap(&plain, &p), Some(vec![]));
    // Cut short, or next pointing at itself: refused.
    assert_eq!(decode_sparse_mmap(&info, &p[..p.len() - 4]), None);
    let mut looped = p.clone();
    looped[32 + 4..32 + 8].copy_from_slice(&32u32.to_ne_bytes());
    assert_eq!(decode_sparse_mmap(&info, &looped), None);
    // A chain pointing into the region info itself is refused.
    let inside = RegionInfo {
        cap_offset: 8,
        ..info
    };
    assert_eq!(decode_sparse_mmap(&inside, &p), None);
}

#[test]
fn a_message_with_parts_and_fds_round_trips_over_a_socket() {
    let (a, b) = pair();
    let efd = eventfd();
    let h = Header::command(3, DEVICE_SET_IRQS);
    let set = IrqSet {
        argsz: 20,
        flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
        index: IRQ_MSI,
        start: 0,
        count: 1,
    };
    send_parts(
        a.as_raw_fd(),
        h,
        &[&set.encode(), &[], b"xy"],
        &[efd.as_raw_fd()],
    )
    .unwrap();
    let m = recv(b.as_raw_fd()).unwrap();
    assert_eq!(m.header.size as usize, HEADER_SIZE + IrqSet::SIZE + 2);
    assert_eq!((m.header.id, m.header.command), (3, DEVICE_SET_IRQS));
    assert_eq!(IrqSet::decode(&m.payload), Some(set));
    assert_eq!(&m.payload[20..], b"xy");
    assert_eq!(m.fds.len(), 1);
    // The received fd is the same eventfd: a write on one is read on the
    // other.
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
    let w = unsafe { libc::write(efd.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
    assert_eq!(w, 8);
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64 from a descriptor we own.
    let r = unsafe { libc::read(m.fds[0].as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    assert_eq!((r, v), (8, 1));
    // Close between messages: Closed.
    drop(a);
    assert!(matches!(recv(b.as_raw_fd()), Err(RecvError::Closed)));
}

#[test]
fn a_maximal_transfer_round_trips_across_partial_sends() {
    let (a, b) = pair();
    let data: Vec<u8> = (0..MAX_DATA_XFER).map(|i| i as u8).collect();
    let access = RegionAccess {
        offset: 0,
        region: 0,
        count: data.len() as u32,
    };
    let reader = std::thread::spawn(move || recv(b.as_raw_fd()).unwrap());
    send_parts(
        a.as_raw_fd(),
        Header::command(1, REGION_WRITE),
        &[&access.encode(), &data],
        &[],
    )
    .unwrap();
    let m = reader.join().unwrap();
    assert_eq!(RegionAccess::decode(&m.payload), Some(access));
    assert!(m.payload[16..] == data[..]);
}

#[test]
fn sending_an_oversized_message_or_too_many_fds_is_refused_and_sends_nothing() {
    let (a, b) = pair();
    let big = vec![0u8; MAX_MESSAGE];
    let e = send(a.as_raw_fd(), Header::command(1, REGION_WRITE), &big, &[]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE));
    let fds: Vec<OwnedFd> = (0..=MAX_MSG_FDS).map(|_| eventfd()).collect();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let e = send(a.as_raw_fd(), Header::command(1, DMA_MAP), &[], &raw).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    b.set_nonblocking(true).unwrap();
    let mut x = [0u8; 1];
    // SAFETY: reads at most 1 byte into a live buffer.
    let n = unsafe { libc::recv(b.as_raw_fd(), x.as_mut_ptr().cast(), 1, 0) };
    assert_eq!(n, -1, "nothing was sent");
}

/// Writes raw bytes (a forged header) on `s`.
fn raw(s: &UnixStream, bytes: &[u8]) {
    use std::io::Write;
    (&*s).write_all(bytes).unwrap();
}

#[test]
fn a_header_size_below_the_header_or_above_the_limit_is_refused() {
    for size in [0u32, 15, (MAX_MESSAGE + 1) as u32, u32::MAX] {
        let (a, b) = pair();
        let h = Header {
            size,
            ..Header::command(1, VERSION)
        };
        raw(&a, &h.encode());
        match recv(b.as_raw_fd()) {
            Err(RecvError::BadSize(s)) => assert_eq!(s, size),
            other => panic!("size {size}: {other:?}"),
        }
    }
}

#[test]
fn a_message_cut_short_is_an_error_not_a_message() {
    // Inside the header.
    let (a, b) = pair();
    raw(&a, &Header::command(1, VERSION).encode()[..10]);
    drop(a);
    match recv(b.as_raw_fd()) {
        Err(RecvError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("{other:?}"),
    }
    // Inside the payload.
    let (a, b) = pair();
    let h = Header {
        size: (HEADER_SIZE + 32) as u32,
        ..Header::command(1, DMA_MAP)
    };
    raw(&a, &h.encode());
    raw(&a, &[0u8; 20]);
    drop(a);
    match recv(b.as_raw_fd()) {
        Err(RecvError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_message_with_more_fds_than_the_limit_is_refused_and_its_fds_closed() {
    let (a, b) = pair();
    // The write end of a pipe, passed MAX_MSG_FDS + 1 times: once every
    // copy is closed, the read end sees end of file.
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills two new descriptors, owned below.
    assert_eq!(
        unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    // SAFETY: both are new and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let raw_fds = vec![wr.as_raw_fd(); MAX_MSG_FDS + 1];
    let h = Header {
        size: HEADER_SIZE as u32,
        ..Header::command(1, DMA_MAP)
    }
    .encode();
    // Past send's own check, as a foreign peer would.
    sendmsg_fds(a.as_raw_fd(), &[&h], &raw_fds).unwrap();
    drop(wr);
    assert!(matches!(recv(b.as_raw_fd()), Err(RecvError::TooManyFds)));
    let mut x = [0u8; 1];
    // SAFETY: reads at most 1 byte into a live buffer; the read end is
    // blocking, so a leaked write end would hang here rather than pass.
    let n = unsafe { libc::read(rd.as_raw_fd(), x.as_mut_ptr().cast(), 1) };
    assert_eq!(n, 0, "every received copy of the write end was closed");
}
