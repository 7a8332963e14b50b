//! The server against a raw vfio-user client written from QEMU's
//! docs/interop/vfio-user.rst: the handshake, region info with fds,
//! region access, interrupts, DMA both ways, revocation by truncation seen
//! as SIGBUS in a forked child, and clients that die.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use barmap_server::proto::{self, Fields, Header, Message};
use barmap_server::{DeviceConfig, Server};

struct Client {
    sock: UnixStream,
    next: u16,
}

impl Client {
    fn connect(path: &std::path::Path) -> Client {
        Client {
            sock: UnixStream::connect(path).expect("connect"),
            next: 1,
        }
    }

    /// Sends a command, answers the server's DMA requests from `mem` (IOVA
    /// 0 onwards) while waiting, and returns the reply.
    fn call_with(&mut self, cmd: u16, payload: &[u8], fds: &[RawFd], mem: &mut [u8]) -> Message {
        let id = self.next;
        self.next += 1;
        let h = Header {
            id,
            command: cmd,
            ..Header::default()
        };
        proto::send(self.sock.as_raw_fd(), h, payload, fds).expect("send");
        loop {
            let m = proto::recv(self.sock.as_raw_fd()).expect("recv");
            if m.header.is_reply() {
                assert_eq!(m.header.id, id);
                return m;
            }
            let addr = m.payload.u64_at(0).unwrap() as usize;
            let count = m.payload.u64_at(8).unwrap() as usize;
            let mut p = m.payload[..16].to_vec();
            match m.header.command {
                proto::DMA_READ => p.extend_from_slice(&mem[addr..addr + count]),
                proto::DMA_WRITE => {
                    mem[addr..addr + count].copy_from_slice(&m.payload[16..16 + count])
                }
                c => panic!("unexpected request {c}"),
            }
            proto::send(
                self.sock.as_raw_fd(),
                proto::reply_header(&m.header),
                &p,
                &[],
            )
            .unwrap();
        }
    }

    fn call(&mut self, cmd: u16, payload: &[u8], fds: &[RawFd]) -> Message {
        self.call_with(cmd, payload, fds, &mut [])
    }

    fn version(&mut self) -> Message {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(br#"{"capabilities":{"max_msg_fds":8}}"#);
        p.push(0);
        self.call(proto::VERSION, &p, &[])
    }

    fn region_info(&mut self, index: u32) -> Message {
        let mut p = Vec::new();
        proto::put_u32(&mut p, 64);
        proto::put_u32(&mut p, 0);
        proto::put_u32(&mut p, index);
        p.resize(32, 0);
        self.call(proto::DEVICE_GET_REGION_INFO, &p, &[])
    }

    fn rw(&mut self, cmd: u16, region: u32, offset: u64, data: &[u8], count: usize) -> Message {
        let mut p = Vec::new();
        proto::put_u64(&mut p, offset);
        proto::put_u32(&mut p, region);
        proto::put_u32(&mut p, count as u32);
        p.extend_from_slice(data);
        self.call(cmd, &p, &[])
    }

    fn read32(&mut self, region: u32, offset: u64) -> Result<u32, u32> {
        let m = self.rw(proto::REGION_READ, region, offset, &[], 4);
        if m.header.flags & proto::FLAG_ERROR != 0 {
            return Err(m.header.error);
        }
        Ok(m.payload.u32_at(16).unwrap())
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), u32> {
        let m = self.rw(proto::REGION_WRITE, region, offset, data, data.len());
        if m.header.flags & proto::FLAG_ERROR != 0 {
            return Err(m.header.error);
        }
        Ok(())
    }
}

#[path = "common/scratch.rs"]
mod scratch;

fn temp_dir(name: &str) -> PathBuf {
    scratch::scratch_dir(name, 0o700)
}

fn server(name: &str, models: &[&str], exclusive: bool) -> (Arc<Server>, PathBuf) {
    let dir = temp_dir(name);
    let path = dir.join("dev.sock");
    let configs = models
        .iter()
        .map(|m| {
            let (name, opts) = match *m {
                "default" => (
                    "default",
                    vec![("memory".to_string(), (1u64 << 20).to_string())],
                ),
                n => (n, vec![]),
            };
            DeviceConfig {
                name: m.to_string(),
                model: barmap_models::by_name(name, &opts).unwrap(),
                exclusive,
            }
        })
        .collect();
    let s = Server::new(&path, configs).unwrap();
    s.start().unwrap();
    (s, path)
}

const COMMAND: u64 = 4;

#[test]
fn version_reply_is_0_0_with_capabilities_as_json() {
    let (s, path) = server("version", &["edu"], false);
    let mut c = Client::connect(&path);
    let m = c.version();
    assert_eq!(m.header.flags & proto::FLAG_ERROR, 0);
    assert_eq!(&m.payload[..4], &[0, 0, 0, 0]);
    assert_eq!(*m.payload.last().unwrap(), 0, "NUL-terminated");
    let json: serde_json::Value =
        serde_json::from_slice(&m.payload[4..m.payload.len() - 1]).unwrap();
    assert_eq!(json["capabilities"]["max_msg_fds"], 8);
    assert_eq!(json["capabilities"]["pgsizes"], 4096);
    let info = c.call(
        proto::DEVICE_GET_INFO,
        &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
    );
    assert_eq!(
        info.payload.u32_at(4),
        Some(proto::DEVICE_FLAGS_RESET | proto::DEVICE_FLAGS_PCI)
    );
    assert_eq!(info.payload.u32_at(8), Some(9));
    assert_eq!(info.payload.u32_at(12), Some(5));
    s.stop();
}

#[test]
fn a_major_version_other_than_0_is_refused() {
    let (s, path) = server("major", &["edu"], false);
    let mut c = Client::connect(&path);
    let m = c.call(proto::VERSION, &[1, 0, 0, 0, b'{', b'}', 0], &[]);
    assert_ne!(m.header.flags & proto::FLAG_ERROR, 0);
    s.stop();
}

#[test]
fn register_accesses_reach_the_model_and_config_space_is_the_devices() {
    let (s, path) = server("regs", &["edu"], false);
    let mut c = Client::connect(&path);
    c.version();
    assert_eq!(c.read32(0, 0), Ok(barmap_models::edu::ID));
    c.write(0, 4, &0x1234_5678u32.to_ne_bytes()).unwrap();
    assert_eq!(c.read32(0, 4), Ok(!0x1234_5678u32));
    assert_eq!(c.read32(proto::CONFIG_REGION, 0), Ok(0x11e8_1234));
    let info = c.region_info(0);
    assert_eq!(
        info.payload.u32_at(4),
        Some(proto::REGION_FLAG_READ | proto::REGION_FLAG_WRITE)
    );
    assert!(
        info.fds.is_empty(),
        "register BARs are reached by message only"
    );
    // Out of range: EINVAL; no such region: EINVAL.
    assert_eq!(c.read32(0, 1 << 20), Err(libc::EINVAL as u32));
    assert_eq!(c.read32(9, 0), Err(libc::EINVAL as u32));
    s.stop();
}

/// Maps `len` bytes of `fd` shared, read-write.
fn map(fd: RawFd, len: usize) -> *mut u8 {
    // SAFETY: a fresh shared mapping of a file we hold; checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

fn clear_memory(c: &mut Client, on: bool) {
    let cmd = c.read32(proto::CONFIG_REGION, COMMAND).unwrap() as u16;
    let new = if on { cmd | 2 } else { cmd & !2 };
    c.write(proto::CONFIG_REGION, COMMAND, &new.to_ne_bytes())
        .unwrap();
}

#[test]
fn clearing_command_mem_revokes_a_forked_childs_mapping_with_sigbus_and_restores_contents() {
    let (s, path) = server("revoke", &["default"], false);
    let mut c = Client::connect(&path);
    c.version();
    let info = c.region_info(2);
    assert_ne!(info.payload.u32_at(4).unwrap() & proto::REGION_FLAG_MMAP, 0);
    let fd = info
        .fds
        .into_iter()
        .next()
        .expect("a memory BAR comes with its memfd");
    let size = info.payload.u64_at(16).unwrap() as usize;
    let mut go = [0i32; 2];
    let mut ready = [0i32; 2];
    // SAFETY: pipes into local arrays.
    unsafe {
        assert_eq!(libc::pipe(go.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
    }
    // SAFETY: the child only maps, touches, reads and writes pipes and
    // exits: async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let p = map(fd.as_raw_fd(), size);
        // SAFETY: p maps size bytes; volatile so each touch happens.
        unsafe {
            p.add(4096).write_volatile(0x5a);
            libc::write(ready[1], b"r".as_ptr().cast(), 1);
            let mut b = 0u8;
            libc::read(go[0], (&mut b as *mut u8).cast(), 1);
            p.add(4096).write_volatile(0x5b); // revoked: SIGBUS
            libc::_exit(0);
        }
    }
    let mut b = 0u8;
    // SAFETY: reading one byte from our pipe.
    unsafe { libc::read(ready[0], (&mut b as *mut u8).cast(), 1) };
    clear_memory(&mut c, false);
    assert!(s.devices()[0].revoked());
    // By message while disabled: EIO, vfio_pci_bar_rw's answer.
    assert_eq!(c.read32(2, 4096), Err(libc::EIO as u32));
    // SAFETY: wake the child, then reap it.
    let status = unsafe {
        libc::write(go[1], b"g".as_ptr().cast(), 1);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        st
    };
    assert!(libc::WIFSIGNALED(status), "child status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGBUS);
    clear_memory(&mut c, true);
    assert!(!s.devices()[0].revoked());
    assert_eq!(
        c.read32(2, 4096).map(|v| v & 0xff),
        Ok(0x5a),
        "contents restored"
    );
    let p = map(fd.as_raw_fd(), size);
    // SAFETY: a fresh mapping of the restored BAR.
    assert_eq!(unsafe { p.add(4096).read_volatile() }, 0x5a);
    s.stop();
}

#[test]
fn a_killed_client_leaves_the_server_serving_others() {
    let (s, path) = server("killed", &["edu"], false);
    let mut survivor = Client::connect(&path);
    survivor.version();
    let mut ready = [0i32; 2];
    // SAFETY: a pipe into a local array.
    assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
    // SAFETY: the child connects, handshakes, writes, says so and waits to
    // be killed.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut c = Client::connect(&path);
        c.version();
        c.write(0, 4, &7u32.to_ne_bytes()).unwrap();
        // SAFETY: one byte to our pipe, then sleep until killed.
        unsafe {
            libc::write(ready[1], b"r".as_ptr().cast(), 1);
            libc::pause();
            libc::_exit(0)
        };
    }
    let mut b = 0u8;
    // SAFETY: one byte from our pipe.
    unsafe { libc::read(ready[0], (&mut b as *mut u8).cast(), 1) };
    let t0 = std::time::Instant::now();
    let pids: Vec<i32> = s.devices()[0].clients().iter().map(|c| c.pid).collect();
    assert!(pids.contains(&pid), "SO_PEERCRED names the child: {pids:?}");
    // SAFETY: kill and reap our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    while s.devices()[0].clients().len() > 1 && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(s.devices()[0].clients().len(), 1);
    assert_eq!(
        survivor.read32(0, 4),
        Ok(!7u32),
        "the device kept its state"
    );
    assert_eq!(survivor.read32(0, 0), Ok(barmap_models::edu::ID));
    s.stop();
}

#[test]
fn an_exclusive_device_refuses_a_second_client_with_ebusy() {
    let (s, path) = server("exclusive", &["edu"], true);
    let mut first = Client::connect(&path);
    assert_eq!(first.version().header.flags & proto::FLAG_ERROR, 0);
    let mut second = Client::connect(&path);
    let m = second.version();
    assert_ne!(m.header.flags & proto::FLAG_ERROR, 0);
    assert_eq!(m.header.error, libc::EBUSY as u32);
    s.stop();
}

fn memfd(size: usize) -> OwnedFd {
    // SAFETY: a new memfd, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"dma".as_ptr(), 0)) };
    // SAFETY: sizing our memfd.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), size as i64) }, 0);
    fd
}

fn dma_map(c: &mut Client, iova: u64, size: u64, fd: Option<RawFd>) -> Message {
    let mut p = Vec::new();
    proto::put_u32(&mut p, 32);
    proto::put_u32(&mut p, proto::DMA_FLAG_READ | proto::DMA_FLAG_WRITE);
    proto::put_u64(&mut p, 0);
    proto::put_u64(&mut p, iova);
    proto::put_u64(&mut p, size);
    let fds: Vec<RawFd> = fd.into_iter().collect();
    c.call(proto::DMA_MAP, &p, &fds)
}

/// edu's DMA (synchronous inside the command write): RAM at `src` to edu's
/// buffer and back to RAM at `dst`.
fn edu_copy(c: &mut Client, src: u64, dst: u64, mem: &mut [u8]) {
    let w64 = |c: &mut Client, off: u64, v: u64, mem: &mut [u8]| {
        let mut p = Vec::new();
        proto::put_u64(&mut p, off);
        proto::put_u32(&mut p, 0);
        proto::put_u32(&mut p, 8);
        proto::put_u64(&mut p, v);
        let m = c.call_with(proto::REGION_WRITE, &p, &[], mem);
        assert_eq!(m.header.flags & proto::FLAG_ERROR, 0);
    };
    use barmap_models::edu::{DMA_RUN, DMA_START, DMA_TO_RAM};
    for (from, to, cmd) in [
        (src, DMA_START, DMA_RUN),
        (DMA_START, dst, DMA_RUN | DMA_TO_RAM),
    ] {
        w64(c, 0x80, from, mem);
        w64(c, 0x88, to, mem);
        w64(c, 0x90, 64, mem);
        w64(c, 0x98, cmd, mem);
    }
}

#[test]
fn dma_reaches_client_memory_through_its_fd_and_by_message_without_one() {
    let (s, path) = server("dma", &["edu"], false);
    let mut c = Client::connect(&path);
    c.version();
    // Bus master on.
    let cmd = c.read32(proto::CONFIG_REGION, COMMAND).unwrap() as u16;
    c.write(proto::CONFIG_REGION, COMMAND, &(cmd | 4).to_ne_bytes())
        .unwrap();
    // With an fd: IOVA 0x10000.
    let fd = memfd(8192);
    assert_eq!(
        dma_map(&mut c, 0x10000, 8192, Some(fd.as_raw_fd()))
            .header
            .flags
            & proto::FLAG_ERROR,
        0
    );
    let pattern: Vec<u8> = (0..64u8).collect();
    barmap_server::bar::pwrite_all(fd.as_raw_fd(), &pattern, 0).unwrap();
    edu_copy(&mut c, 0x10000, 0x11000, &mut []);
    let mut back = vec![0u8; 64];
    barmap_server::bar::pread_all(fd.as_raw_fd(), &mut back, 0x1000).unwrap();
    assert_eq!(back, pattern, "copied through the client's memfd");
    // Without: IOVA 0 to 8 KiB, answered from `mem` by this client.
    assert_eq!(
        dma_map(&mut c, 0, 8192, None).header.flags & proto::FLAG_ERROR,
        0
    );
    let mut mem = vec![0u8; 8192];
    mem[..64].copy_from_slice(&pattern);
    edu_copy(&mut c, 0, 0x1000, &mut mem);
    assert_eq!(
        &mem[0x1000..0x1040],
        &pattern[..],
        "copied by DMA_READ and DMA_WRITE messages"
    );
    // Overlap: EEXIST.
    let m = dma_map(&mut c, 0x1000, 4096, None);
    assert_eq!(m.header.error, libc::EEXIST as u32);
    assert_eq!(s.devices()[0].host().counters().dma_messages, 2);
    s.stop();
}

#[test]
fn msi_raised_by_the_model_signals_the_clients_eventfd() {
    let (s, path) = server("msi", &["edu"], false);
    let mut c = Client::connect(&path);
    c.version();
    // SAFETY: a new eventfd, owned here.
    let efd = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_NONBLOCK)) };
    let mut p = Vec::new();
    proto::put_u32(&mut p, 24);
    proto::put_u32(
        &mut p,
        proto::IRQ_SET_DATA_EVENTFD | proto::IRQ_SET_ACTION_TRIGGER,
    );
    proto::put_u32(&mut p, proto::IRQ_MSI);
    proto::put_u32(&mut p, 0);
    proto::put_u32(&mut p, 1);
    let m = c.call(proto::DEVICE_SET_IRQS, &p, &[efd.as_raw_fd()]);
    assert_eq!(m.header.flags & proto::FLAG_ERROR, 0);
    c.write(0, 0x60, &1u32.to_ne_bytes()).unwrap();
    let mut v = 0u64;
    // SAFETY: reading 8 bytes from our eventfd.
    let n = unsafe { libc::read(efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    assert_eq!((n, v), (8, 1));
    s.stop();
}

fn ctl(s: &Server, cmd: &str, on: Option<bool>) -> serde_json::Value {
    let req = barmap_server::control::Request {
        cmd: cmd.into(),
        device: 0,
        on,
    };
    barmap_server::control::request(s.control(), &req).unwrap()
}

/// Whether touching `p` SIGBUSes, tried in a forked child.
fn touch_sigbuses(p: *mut u8) -> bool {
    // SAFETY: the child touches one byte and exits; the parent reaps it.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            p.write_volatile(1);
            libc::_exit(0);
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGBUS
    }
}

#[test]
fn control_socket_lists_clients_and_d3hot_reset_and_command_mem_revoke_every_mapping() {
    let (s, path) = server("control", &["default"], false);
    let mut c = Client::connect(&path);
    c.version();
    let info = c.region_info(2);
    let fd = info.fds.into_iter().next().unwrap();
    let p = map(fd.as_raw_fd(), 1 << 20);
    let list = ctl(&s, "list", None);
    let pid = std::process::id() as i64;
    assert_eq!(list["devices"][0]["clients"][0]["pid"].as_i64(), Some(pid));
    assert!(!touch_sigbuses(p), "live before");
    for (cmd, on, back, back_on) in [
        ("command-mem", Some(false), "command-mem", Some(true)),
        ("d3hot", None, "d0", None),
    ] {
        let a = ctl(&s, cmd, on);
        assert_eq!(a["ok"], true, "{a}");
        assert_eq!(a["revoked"], true, "{a}");
        assert!(touch_sigbuses(p), "{cmd}: revoked");
        assert_eq!(
            c.read32(2, 0),
            Err(libc::EIO as u32),
            "{cmd}: by message, EIO"
        );
        assert_eq!(ctl(&s, back, back_on)["ok"], true);
        assert!(!touch_sigbuses(p), "{back}: restored");
    }
    assert_eq!(ctl(&s, "reset", None)["ok"], true);
    assert!(!touch_sigbuses(p), "live again after the reset");
    let stats = ctl(&s, "stats", None);
    assert!(
        stats["device"]["revocations"].as_u64().unwrap() >= 3,
        "{stats}"
    );
    assert_eq!(stats["bugs"].as_array().map(Vec::len), Some(0));
    s.stop();
}

#[test]
fn removal_signals_req_revokes_and_disconnects_and_refuses_new_clients() {
    let (s, path) = server("remove", &["default"], false);
    let mut c = Client::connect(&path);
    c.version();
    let fd = c.region_info(2).fds.into_iter().next().unwrap();
    let p = map(fd.as_raw_fd(), 1 << 20);
    // SAFETY: a new eventfd, owned here.
    let req = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_NONBLOCK)) };
    let mut m = Vec::new();
    proto::put_u32(&mut m, 24);
    proto::put_u32(
        &mut m,
        proto::IRQ_SET_DATA_EVENTFD | proto::IRQ_SET_ACTION_TRIGGER,
    );
    proto::put_u32(&mut m, proto::IRQ_REQ);
    proto::put_u32(&mut m, 0);
    proto::put_u32(&mut m, 1);
    assert_eq!(
        c.call(proto::DEVICE_SET_IRQS, &m, &[req.as_raw_fd()])
            .header
            .flags
            & proto::FLAG_ERROR,
        0
    );
    let a = ctl(&s, "remove", None);
    assert_eq!(a["req_signalled"], 1, "{a}");
    let mut v = 0u64;
    // SAFETY: reading 8 bytes from our eventfd.
    assert_eq!(
        unsafe { libc::read(req.as_raw_fd(), (&mut v as *mut u64).cast(), 8) },
        8
    );
    assert!(touch_sigbuses(p), "the BAR is gone from every mapping");
    // The connection was shut down: end of file.
    assert!(matches!(
        proto::recv(c.sock.as_raw_fd()),
        Err(proto::RecvError::Closed)
    ));
    assert!(UnixStream::connect(&path).is_err(), "the socket is gone");
    s.stop();
}

#[test]
fn a_read_only_bar_comes_as_a_read_only_fd_and_refuses_writes_by_message() {
    let (s, path) = server("readonly", &["default"], false);
    let mut c = Client::connect(&path);
    c.version();
    let info = c.region_info(4);
    assert_eq!(
        info.payload.u32_at(4).unwrap() & proto::REGION_FLAG_WRITE,
        0
    );
    let fd = info.fds.into_iter().next().expect("mappable read-only");
    // SAFETY: trying a writable shared mapping of the fd we were given.
    let w = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_eq!(w, libc::MAP_FAILED, "no writable view of a read-only BAR");
    // SAFETY: ftruncate of the fd we were given must fail: it is O_RDONLY.
    assert_ne!(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) }, 0);
    // SAFETY: a read-only shared mapping, checked.
    let r = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(r, libc::MAP_FAILED);
    // SAFETY: 16 bytes of the 4 KiB mapping.
    let head = unsafe { std::slice::from_raw_parts(r as *const u8, 16) };
    assert_eq!(head, b"barmap info page");
    assert_eq!(c.write(4, 0, &[0; 4]), Err(libc::EINVAL as u32));
    assert_eq!(c.read32(4, 0), Ok(u32::from_ne_bytes(*b"barm")));
    s.stop();
}

/// The explorer's process mode, serving a fresh device after each removal,
/// ran out of file descriptors: a removal unlinks the device's socket, and
/// `stop` wakes each accept loop by connecting to its socket, so the
/// removed device's loop never ended and kept the server, its devices and
/// their memfds alive. Now the unlink wakes the loop, which ends for a
/// removed device.
#[test]
fn stopping_a_server_after_a_removal_frees_the_device() {
    let (s, path) = server("remove-free", &["default"], false);
    let mut c = Client::connect(&path);
    c.version();
    let dev = Arc::downgrade(&s.devices()[0]);
    let a = ctl(&s, "remove", None);
    assert_eq!(a["ok"], true, "{a}");
    s.stop();
    drop(s);
    drop(c);
    let t0 = std::time::Instant::now();
    while dev.upgrade().is_some() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "the removed device is still held 5 s after stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
