//! fork: the child has no view of device memory, and its copies of
//! barmap's objects touch nothing of the parent's.

use super::*;

/// Forks; the child runs `child` (async-signal-safe work only, or work on
/// its own copy of barmap's objects) and `_exit`s with its result; returns
/// the child's wait status, failing the test if the child does not end.
fn fork_and_wait(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `child` and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child without running the parent's destructors
        // or atexit handlers a second time.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return status;
        }
        if Instant::now() > deadline {
            // SAFETY: kill our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("forked child did not finish within 20 s (a hang)");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn fork_child_touch_fails_and_its_drop_leaves_the_parent_served() {
    let _serial = serial();
    for policy in CORRECT {
        let mut dev = Some(device(policy));
        let d = dev.as_ref().unwrap();
        let mut m = Some(
            d.map(DEFAULT_MEMORY_BAR, 0, 2 * MIB, Prot::ReadWrite)
                .unwrap(),
        );
        fill(m.as_ref().unwrap(), 7);
        let addr = m.as_ref().unwrap().addr();
        // Install the touch module's handler before forking.
        assert_eq!(read_at(addr), Ok(7));
        // The child inherits no view of the BAR: its touch is SIGSEGV,
        // never a read of device memory that bypasses the gate.
        let status = fork_and_wait(|| match read_at(addr) {
            Err(Fault::Sigsegv) => 0,
            Err(Fault::Sigbus) => 2,
            Ok(_) => 3,
        });
        assert!(
            libc::WIFEXITED(status),
            "{policy}: child status {status:#x}"
        );
        assert_eq!(libc::WEXITSTATUS(status), 0, "{policy}: child touch");
        // The child drops its copies of the mapping and of the device, as a
        // Rust program returning from main does; nothing of that may reach
        // the parent's service, userfaultfd or eventfd.
        let status = fork_and_wait(|| {
            drop(m.take());
            match dev.take() {
                Some(d) => {
                    assert!(matches!(
                        d.map(DEFAULT_MEMORY_BAR, 0, PAGE, Prot::Read),
                        Err(Error::ForeignProcess { .. })
                    ));
                    drop(d);
                    0
                }
                None => 4,
            }
        });
        assert!(
            libc::WIFEXITED(status),
            "{policy}: child status {status:#x}"
        );
        assert_eq!(libc::WEXITSTATUS(status), 0, "{policy}: child drop");
        let d = dev.as_ref().unwrap();
        let m = m.as_ref().unwrap();
        let fresh = d
            .map(DEFAULT_MEMORY_BAR, 2 << 20, 2 * MIB, Prot::ReadWrite)
            .unwrap();
        let fresh_addr = fresh.addr();
        assert_eq!(
            within("fault after child drop", move || read_at(fresh_addr)),
            Ok(0)
        );
        d.set_memory_enabled(false);
        assert_eq!(m.touch_u64(0), Err(Fault::Sigbus), "{policy}");
        d.set_memory_enabled(true);
        assert_eq!(m.touch_u64(PAGE), Ok(7 ^ PAGE as u64), "{policy}");
    }
}

#[test]
fn fork_while_faults_are_in_flight_leaves_the_child_nothing_that_waits() {
    let _serial = serial();
    for policy in CORRECT {
        let dev = Arc::new(device(policy));
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let (dev, stop) = (dev.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) {
                    let m = dev
                        .map(DEFAULT_MEMORY_BAR, 0, 4 * MIB, Prot::ReadWrite)
                        .unwrap();
                    for off in (0..m.len()).step_by(64 * PAGE) {
                        let _ = m.touch_u64(off);
                    }
                    if rounds % 4 == 0 {
                        dev.set_memory_enabled(false);
                        dev.set_memory_enabled(true);
                    }
                    rounds += 1;
                }
            })
        };
        let mut dev = Some(dev);
        for _ in 0..20 {
            let m = dev
                .as_ref()
                .unwrap()
                .map(DEFAULT_MEMORY_BAR, 4 << 20, PAGE, Prot::ReadWrite)
                .unwrap();
            let mut m = Some(m);
            let status = fork_and_wait(|| {
                // A lock may have been copied held: the drops must not wait.
                drop(m.take());
                drop(dev.take());
                0
            });
            assert!(
                libc::WIFEXITED(status),
                "{policy}: child status {status:#x}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
    }
}
