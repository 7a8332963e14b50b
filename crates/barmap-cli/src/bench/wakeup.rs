//! The wake-up baselines a fault round trip is judged against: two threads
//! handing one byte back and forth, through the kernel (pipes) or by
//! spinning on an atomic.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::hist::new_hist;

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is valid for two ints; pipe2 fills them with new fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: two fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn write_byte(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    let b = 1u8;
    // SAFETY: writes one byte from a valid buffer to an fd we own.
    unsafe { libc::write(fd.as_raw_fd(), (&b as *const u8).cast(), 1) };
}

fn read_byte(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = 0u8;
    // SAFETY: reads one byte into a valid buffer from an fd we own.
    unsafe { libc::read(fd.as_raw_fd(), (&mut b as *mut u8).cast(), 1) == 1 }
}

/// Blocking ping-pong over two pipes: each round trip is two thread
/// wake-ups in the kernel, as a poll()ing fault round trip is.
pub(super) fn wakeup_pipe(rounds: usize) -> Result<Histogram<u64>, String> {
    let (ping_r, ping_w) = pipe()?;
    let (pong_r, pong_w) = pipe()?;
    let mut hist = new_hist();
    std::thread::scope(|s| {
        s.spawn(|| {
            while read_byte(&ping_r) {
                write_byte(&pong_w);
            }
        });
        for i in 0..rounds + rounds / 10 {
            let t = Instant::now();
            write_byte(&ping_w);
            read_byte(&pong_r);
            let ns = t.elapsed().as_nanos() as u64;
            if i >= rounds / 10 {
                let _ = hist.record(ns.max(1));
            }
        }
        drop(ping_w); // ends the echo thread (read returns 0)
    });
    Ok(hist)
}

/// Spinning hand-off over an atomic (no kernel wake-up), bounded in time.
pub(super) fn wakeup_spin(rounds: usize) -> Histogram<u64> {
    let flag = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let mut hist = new_hist();
    let deadline = Instant::now() + Duration::from_millis(300);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut expect = 1;
            while !stop.load(Ordering::Relaxed) {
                if flag.load(Ordering::Acquire) == expect {
                    flag.store(expect + 1, Ordering::Release);
                    expect += 2;
                }
                std::hint::spin_loop();
            }
        });
        let mut v = 1;
        for _ in 0..rounds {
            if Instant::now() > deadline {
                break;
            }
            let t = Instant::now();
            flag.store(v, Ordering::Release);
            while flag.load(Ordering::Acquire) != v + 1 {
                std::hint::spin_loop();
            }
            let _ = hist.record((t.elapsed().as_nanos() as u64).max(1));
            v += 2;
        }
        stop.store(true, Ordering::Relaxed);
    });
    hist
}
