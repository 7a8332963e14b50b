//! The client against a scripted server: a server's error reply is its
//! errno (and the connection stays usable), and a server that goes away
//! is ENODEV for every request from then on.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use barmap_client::{Error, NoDma, Remote};

/// Reads one message: (id, command, body).
fn recv(s: &mut UnixStream) -> (u16, u16, Vec<u8>) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let size = u32::from_ne_bytes(h[4..8].try_into().unwrap()) as usize;
    let mut body = vec![0u8; size - 16];
    s.read_exact(&mut body).unwrap();
    (
        u16::from_ne_bytes([h[0], h[1]]),
        u16::from_ne_bytes([h[2], h[3]]),
        body,
    )
}

/// Sends a reply to `id`/`cmd`: `error` set means an error reply.
fn reply(s: &mut UnixStream, id: u16, cmd: u16, error: u32, body: &[u8]) {
    let flags: u32 = 1 | if error != 0 { 0x20 } else { 0 };
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_ne_bytes());
    m.extend_from_slice(&cmd.to_ne_bytes());
    m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&error.to_ne_bytes());
    m.extend_from_slice(body);
    s.write_all(&m).unwrap();
}

#[test]
fn a_server_error_is_its_errno_and_a_closed_server_is_enodev() {
    let dir = std::env::temp_dir().join(format!("barmap-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // VERSION: 0.1, no capabilities.
        let (id, cmd, _) = recv(&mut s);
        assert_eq!(cmd, 1);
        let mut v = vec![0, 0, 1, 0];
        v.extend_from_slice(b"{}\0");
        reply(&mut s, id, cmd, 0, &v);
        // DEVICE_GET_INFO: a PCI device, one region (config), no irqs.
        let (id, cmd, _) = recv(&mut s);
        assert_eq!(cmd, 4);
        let mut info = Vec::new();
        for w in [16u32, 2, 1, 0] {
            info.extend_from_slice(&w.to_ne_bytes());
        }
        reply(&mut s, id, cmd, 0, &info);
        // DEVICE_GET_REGION_INFO 0: 256 bytes, read-write.
        let (id, cmd, _) = recv(&mut s);
        assert_eq!(cmd, 5);
        let mut r = vec![0u8; 32];
        r[0..4].copy_from_slice(&32u32.to_ne_bytes());
        r[4..8].copy_from_slice(&3u32.to_ne_bytes());
        r[16..24].copy_from_slice(&256u64.to_ne_bytes());
        reply(&mut s, id, cmd, 0, &r);
        // REGION_READ: refused with EACCES (a header only, no data).
        let (id, cmd, _) = recv(&mut s);
        assert_eq!(cmd, 9);
        reply(&mut s, id, cmd, libc::EACCES as u32, &[]);
        // REGION_READ again: answered.
        let (id, cmd, body) = recv(&mut s);
        assert_eq!(cmd, 9);
        let mut r = body[..16].to_vec();
        r.extend_from_slice(&[0xab; 4]);
        reply(&mut s, id, cmd, 0, &r);
        // Then the server goes away.
    });
    let remote = Remote::connect(&path, Arc::new(NoDma)).unwrap();
    assert_eq!(remote.info().num_regions, 1);
    assert_eq!(remote.region(0).unwrap().size, 256);
    let mut buf = [0u8; 4];
    let e = remote.read(0, 0, &mut buf).unwrap_err();
    assert!(matches!(e, Error::Server(libc::EACCES)), "{e:?}");
    assert_eq!(e.errno(), libc::EACCES);
    remote.read(0, 0, &mut buf).unwrap();
    assert_eq!(buf, [0xab; 4]);
    server.join().unwrap();
    let e = remote.read(0, 0, &mut buf).unwrap_err();
    assert_eq!(e.errno(), libc::ENODEV, "{e:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_that_never_answers_the_version_is_enodev_after_the_wait() {
    let dir = std::env::temp_dir().join(format!("barmap-client-busy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s");
    let _ = std::fs::remove_file(&path);
    // Listening, never accepting: a server busy with its one client.
    let _listener = UnixListener::bind(&path).unwrap();
    let start = std::time::Instant::now();
    let e = Remote::connect(&path, Arc::new(NoDma)).unwrap_err();
    assert_eq!(e.errno(), libc::ENODEV, "{e:?}");
    assert!(start.elapsed() >= barmap_client::VERSION_WAIT);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Answers VERSION, DEVICE_GET_INFO (no regions, one irq index) and its
/// GET_IRQ_INFO, as a minimal server does.
fn greet(s: &mut UnixStream) {
    let (id, cmd, _) = recv(s);
    assert_eq!(cmd, 1);
    reply(s, id, cmd, 0, &[0, 0, 1, 0, b'{', b'}', 0]);
    let (id, cmd, _) = recv(s);
    assert_eq!(cmd, 4);
    let mut info = Vec::new();
    for w in [16u32, 2, 0, 1] {
        info.extend_from_slice(&w.to_ne_bytes());
    }
    reply(s, id, cmd, 0, &info);
    let (id, cmd, _) = recv(s);
    assert_eq!(cmd, 7);
    let mut q = Vec::new();
    for w in [16u32, 1, 0, 4] {
        q.extend_from_slice(&w.to_ne_bytes());
    }
    reply(s, id, cmd, 0, &q);
}

#[test]
fn set_irqs_sends_one_message_per_run_of_eventfds_or_none() {
    let dir = std::env::temp_dir().join(format!("barmap-client-irqs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        greet(&mut s);
        // (start, count) of each SET_IRQS message.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (id, cmd, body) = recv(&mut s);
            assert_eq!(cmd, 8);
            let w = |at: usize| u32::from_ne_bytes(body[at..at + 4].try_into().unwrap());
            seen.push((w(12), w(16)));
            reply(&mut s, id, cmd, 0, &[]);
        }
        seen
    });
    let remote = Remote::connect(&path, Arc::new(NoDma)).unwrap();
    assert_eq!(remote.irq(0).map(|q| q.count), Some(4));
    // SAFETY: eventfd with no flags; the fd is closed below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    let flags = (1 << 2) | (1 << 5); // DATA_EVENTFD | ACTION_TRIGGER
    remote
        .set_irqs(flags, 0, 0, 4, &[], &[efd, efd, -1, efd])
        .unwrap();
    assert_eq!(server.join().unwrap(), vec![(0, 2), (2, 1), (3, 1)]);
    // SAFETY: our own eventfd.
    unsafe { libc::close(efd) };
    let _ = std::fs::remove_dir_all(&dir);
}
