//! The cost of revoking a served memory BAR by truncation, per page and
//! per mapping, next to barmap's in-process zap (`Device` with COMMAND.MEM
//! cleared: `MADV_DONTNEED` of every live mapping under the gate).
//!
//! Rows, each the median of 5 reps after a warm-up:
//! - `distinct`: M live mappings of 1 MiB at distinct offsets of the BAR,
//!   every page touched (M MiB of data): revoke = save the data into a
//!   second memfd + truncate; restore = grow + copy back; repopulate =
//!   touch every page again (minor faults from the page cache);
//! - `shared`: M mappings of the same 1 MiB (as M processes mapping one
//!   BAR would have; truncation walks the file's mappings whatever process
//!   holds them), every page touched: per-mapping cost with 1 MiB of data;
//! - `zap`: barmap's in-process zap of M distinct populated 1 MiB mappings.
//!
//!
//! Then a register read of the edu model across the socket (one
//! `VFIO_USER_REGION_READ` round trip) against the same read in-process
//! (`ModelDevice::read_register`).
//!
//! `cargo run --release -p barmap-server --example revoke_cost [MAX_M]`

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use barmap::{Device, Prot, RegionSpec};
use barmap_server::bar::MemBar;

const MIB: usize = 1 << 20;
const PAGES_PER_MIB: usize = MIB / 4096;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn map_shared(fd: i32, offset: usize) -> *mut u8 {
    // SAFETY: a fresh shared mapping of a memfd we hold; checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MIB,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            offset as i64,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

fn touch_all(maps: &[*mut u8]) {
    for &p in maps {
        for i in 0..PAGES_PER_MIB {
            // SAFETY: each mapping is 1 MiB, live while this runs.
            unsafe { p.add(i * 4096).write_volatile(i as u8) };
        }
    }
}

/// (revoke, restore, repopulate) medians for M mappings of `bar`.
fn truncation(m: usize, shared: bool) -> (Duration, Duration, Duration, u64) {
    let size = if shared { MIB } else { m * MIB };
    let bar = MemBar::new("bench", size as u64, &[], true).unwrap();
    let maps: Vec<*mut u8> = (0..m)
        .map(|i| {
            map_shared(
                bar.client_fd().as_raw_fd(),
                if shared { 0 } else { i * MIB },
            )
        })
        .collect();
    touch_all(&maps);
    let (mut rv, mut rs, mut rp) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for rep in 0..6 {
        let c = bar.revoke().unwrap();
        let r = bar.restore().unwrap();
        let t = Instant::now();
        touch_all(&maps);
        let p = t.elapsed();
        if rep > 0 {
            rv.push(c.time);
            rs.push(r.time);
            rp.push(p);
            bytes = c.bytes;
        }
    }
    for p in maps {
        // SAFETY: unmapping our own 1 MiB mappings.
        unsafe { libc::munmap(p.cast(), MIB) };
    }
    (median(rv), median(rs), median(rp), bytes)
}

/// barmap's in-process zap of M distinct populated mappings.
fn zap(m: usize) -> Duration {
    let dev = Device::builder()
        .region(
            2,
            RegionSpec::memory((m * MIB).next_power_of_two() as u64).bits64(),
        )
        .build()
        .unwrap();
    let maps: Vec<_> = (0..m)
        .map(|i| dev.map(2, (i * MIB) as u64, MIB, Prot::ReadWrite).unwrap())
        .collect();
    let ptrs: Vec<*mut u8> = maps.iter().map(|m| m.as_ptr()).collect();
    touch_all(&ptrs);
    dev.wait_idle(Duration::from_secs(10));
    let mut z = Vec::new();
    for rep in 0..6 {
        let t = Instant::now();
        dev.set_memory_enabled(false);
        let d = t.elapsed();
        dev.set_memory_enabled(true);
        touch_all(&ptrs);
        dev.wait_idle(Duration::from_secs(10));
        if rep > 0 {
            z.push(d);
        }
    }
    median(z)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median ns of one edu register read across the socket and in-process.
fn region_access() -> (f64, f64) {
    use barmap_server::proto;
    let dir = std::env::temp_dir().join(format!("barmap-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let path = dir.join("edu.sock");
    let server = barmap_server::Server::new(
        &path,
        vec![barmap_server::DeviceConfig {
            name: "edu".into(),
            model: barmap_models::by_name("edu", &[]).unwrap(),
            exclusive: false,
        }],
    )
    .unwrap();
    server.start().unwrap();
    let sock = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let fd = sock.as_raw_fd();
    let call = |cmd: u16, p: &[u8]| {
        let h = proto::Header {
            command: cmd,
            ..Default::default()
        };
        proto::send(fd, h, p, &[]).unwrap();
        proto::recv(fd).unwrap()
    };
    call(proto::VERSION, &[0, 0, 0, 0, b'{', b'}', 0]);
    let mut read = Vec::new();
    proto::put_u64(&mut read, 0);
    proto::put_u32(&mut read, 0);
    proto::put_u32(&mut read, 4);
    let n = 20000;
    let t = Instant::now();
    for _ in 0..n {
        call(proto::REGION_READ, &read);
    }
    let socket = t.elapsed().as_nanos() as f64 / n as f64;
    let dev = barmap_models::ModelDevice::new(barmap_models::edu::Edu::default()).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(dev.read_register(0, 0, barmap_models::Width::B4).unwrap());
    }
    let local = t.elapsed().as_nanos() as f64 / n as f64;
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
    (socket, local)
}

fn main() {
    let (socket, local) = region_access();
    println!("| register read (edu, 4 bytes) | across the socket | in-process | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| mean of 20000 | {:.1} us | {:.0} ns | {:.0} |",
        socket / 1e3,
        local,
        socket / local
    );
    println!();
    let max: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    println!("| kind | mappings M | data | revoke (save + truncate) | restore (grow + copy) | repopulate | revoke per mapping | revoke per page | in-process zap | zap per mapping | zap per page | revoke / zap |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut m = 1;
    while m <= max {
        let (rv, rs, rp, bytes) = truncation(m, false);
        let z = zap(m);
        let pages = (m * PAGES_PER_MIB) as f64;
        println!(
            "| distinct | {m} | {} MiB | {:.0} us | {:.0} us | {:.0} us | {:.1} us | {:.0} ns | {:.0} us | {:.1} us | {:.0} ns | {:.1} |",
            bytes >> 20,
            us(rv),
            us(rs),
            us(rp),
            us(rv) / m as f64,
            us(rv) * 1e3 / pages,
            us(z),
            us(z) / m as f64,
            us(z) * 1e3 / pages,
            us(rv) / us(z),
        );
        let (rv, rs, rp, bytes) = truncation(m, true);
        println!(
            "| shared | {m} | {} MiB | {:.0} us | {:.0} us | {:.0} us | {:.1} us | {:.0} ns | - | - | - | - |",
            bytes >> 20,
            us(rv),
            us(rs),
            us(rp),
            us(rv) / m as f64,
            us(rv) * 1e3 / pages,
        );
        m *= 4;
    }
}
