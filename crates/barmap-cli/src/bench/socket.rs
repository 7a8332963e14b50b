//! `sock_fault`, `sock_fault_wr`, `sock_refault`, `sock_pread`,
//! `sock_pwrite`, `sock_reg`: what a device costs across the socket (`barmap run --shared`, `barmap
//! serve`: a vfio-user client of barmap's device server) next to the same
//! device in-process (`barmap run`), each as a ratio to the in-process
//! path, the two taking turns repetition by repetition in one run.
//!
//! Both sides are the front end the preload hands a program's VFIO calls
//! to ([`barmap_front::Front`]), on two testbeds made by this process: one
//! with the devices built in-process (barmap's userfaultfd fault path, the
//! register trap), one whose devices a [`barmap_server::Server`] in this
//! process serves, as `barmap run --shared` does (the front end is its
//! vfio-user client, `barmap-client`, over a Unix socket). Each side opens
//! its device fds as a program does (container, group, `GET_DEVICE_FD`)
//! and sets COMMAND.MEM.
//!
//! - `sock_fault`, `sock_fault_wr`: the first touch (a read; a write) of
//!   every page of a fresh mapping of a 16 MiB memory BAR, per page.
//!   In-process, barmap's fault path fills it (the default policy, and
//!   `page`: one fault per page). Served, the client maps the server's
//!   memfd and the kernel's shmem fault fills it (a read fault maps up to
//!   16 pages already in the page cache, fault-around; a write fault maps
//!   one). Each policy is paired with a served run of its own.
//! - `sock_refault`: the first touch of every page of a live mapping right
//!   after COMMAND.MEM was cleared and set again: in-process the zap and
//!   the refill by the default policy; served the server's revocation by
//!   truncation, its restore, and the kernel's faults on the restored file.
//!   The clear and set are not timed.
//! - `sock_pread`, `sock_pwrite`: `pread`/`pwrite` of 4 bytes and of 4 KiB
//!   on the device fd's memory BAR region (vfio-pci's region read or write
//!   in-process; `REGION_READ`/`REGION_WRITE` round trips served), per
//!   access.
//! - `sock_reg`: a 4-byte load from a register of the edu model through a
//!   mapping of its BAR0, trapped and emulated (in-process: the trap calls
//!   the model; served: the trap sends a `REGION_READ`), per access.
//!
//! Access rows time batches of [`BATCH`] accesses (a clock read costs about
//! as much as an in-process access), in turns batch by batch; their median
//! is the p50 of the batches' per-access means, min..max their spread.

use std::any::Any;
use std::ffi::CString;
use std::time::Instant;

use barmap::Policy;
use barmap_front::spec::{DeviceSpec, RunSpec};
use barmap_front::testbed::Testbed;
use barmap_front::Front;
use barmap_vfio::uapi as v;

use super::report::{timing, Measurement};
use super::{Bench, Family, Results, PAGE};

/// The memory BAR the fault and region rows use.
const MEM: usize = 16 << 20;
/// The default model's memory BAR.
const MEM_BAR: u64 = barmap::DEFAULT_MEMORY_BAR as u64;
/// Accesses timed together in the access rows.
const BATCH: usize = 10;
/// Batches per side and repetition in the access rows.
const BATCHES: usize = 40;
/// What edu's identification register (BAR0 offset 0) reads.
const EDU_ID: u32 = 0x0100_00ed;
/// COMMAND's memory space enable bit.
const COMMAND_MEM: u16 = 1 << 1;

/// The device across the socket vs in-process.
pub(super) struct Socket;

/// The devices of both testbeds, in order: the default model with a
/// [`MEM`] memory BAR by the default policy, the same by `page`, and edu.
fn spec() -> Result<RunSpec, String> {
    let mem = format!("default,memory={}M", MEM >> 20);
    Ok(RunSpec::new(vec![
        DeviceSpec::parse(&mem, Policy::default())?,
        DeviceSpec::parse(&mem, Policy::Page)?,
        DeviceSpec::parse("edu", Policy::default())?,
    ]))
}

/// One side: a front end over its testbed, and the device fds it opened.
struct Side {
    front: Front,
    /// Kernel fds the front end handed out (containers, groups, devices).
    fds: Vec<i32>,
    /// Device fds by the spec's order.
    devices: Vec<i32>,
    /// The server of the served side, stopped when dropped (after the
    /// front end's connections).
    _server: Option<Box<dyn Any>>,
    _testbed: Testbed,
}

fn errno(what: &str) -> impl Fn(barmap_front::Errno) -> String + '_ {
    move |e| format!("{what}: errno {}", e.0)
}

/// The offset of `at` in region `index` of a device fd.
fn region(index: u64, at: u64) -> i64 {
    ((index << v::VFIO_PCI_OFFSET_SHIFT) | at) as i64
}

impl Side {
    /// The devices of [`spec`], in-process (`served` false) or served by a
    /// server in this process, with their fds open and COMMAND.MEM set.
    fn new(served: bool) -> Result<Side, String> {
        let spec = spec()?;
        let mut server = None;
        let (testbed, spec) = Testbed::new_with(&spec, |dir| {
            if !served {
                return Ok(None);
            }
            let (spec, guard) =
                crate::run_cmd::serve_in_testbed(dir, &spec).map_err(std::io::Error::other)?;
            server = Some(guard);
            Ok(Some(spec))
        })
        .map_err(|e| format!("testbed: {e}"))?;
        let front = Front::new(testbed.path()).map_err(|e| format!("front end: {e}"))?;
        let mut side = Side {
            front,
            fds: Vec::new(),
            devices: Vec::new(),
            _server: server,
            _testbed: testbed,
        };
        for d in &spec.devices {
            let fd = side.open(d)?;
            side.devices.push(fd);
            let cmd = side.command(fd)?;
            side.set_command(fd, cmd | COMMAND_MEM)?;
        }
        Ok(side)
    }

    /// Container, group and device fd of `d`, the legacy way; the device fd.
    fn open(&mut self, d: &DeviceSpec) -> Result<i32, String> {
        let f = &self.front;
        let mut c = f
            .open("/dev/vfio/vfio", libc::O_RDWR)
            .map_err(errno("open the container"))?;
        self.fds.push(c);
        let g = f
            .open(&format!("/dev/vfio/{}", d.group), libc::O_RDWR)
            .map_err(errno("open the group"))?;
        self.fds.push(g);
        f.ioctl(g, v::VFIO_GROUP_SET_CONTAINER, &mut c as *mut i32 as usize)
            .map_err(errno("VFIO_GROUP_SET_CONTAINER"))?;
        f.ioctl(c, v::VFIO_SET_IOMMU, v::VFIO_TYPE1V2_IOMMU as usize)
            .map_err(errno("VFIO_SET_IOMMU"))?;
        let name = CString::new(d.bdf.as_str()).map_err(|e| e.to_string())?;
        let fd = f
            .ioctl(g, v::VFIO_GROUP_GET_DEVICE_FD, name.as_ptr() as usize)
            .map_err(errno("VFIO_GROUP_GET_DEVICE_FD"))? as i32;
        self.fds.push(fd);
        Ok(fd)
    }

    fn command(&self, fd: i32) -> Result<u16, String> {
        let mut cmd = 0u16;
        let at = region(u64::from(v::VFIO_PCI_CONFIG_REGION_INDEX), 4);
        self.front
            .pread(fd, &mut cmd as *mut u16 as usize, 2, at)
            .map_err(errno("read COMMAND"))?;
        Ok(cmd)
    }

    fn set_command(&self, fd: i32, cmd: u16) -> Result<(), String> {
        let at = region(u64::from(v::VFIO_PCI_CONFIG_REGION_INDEX), 4);
        self.front
            .pwrite(fd, &cmd as *const u16 as usize, 2, at)
            .map_err(errno("write COMMAND"))?;
        Ok(())
    }

    /// COMMAND.MEM cleared and set again on device fd `fd`: in-process the
    /// zap and re-enable, served the revocation and the restore.
    fn revoke_restore(&self, fd: i32) -> Result<(), String> {
        let cmd = self.command(fd)?;
        self.set_command(fd, cmd & !COMMAND_MEM)?;
        self.set_command(fd, cmd | COMMAND_MEM)
    }

    /// A read-write shared mapping of `len` bytes of BAR `bar` of `fd`.
    fn map(&self, fd: i32, bar: u64, len: usize) -> Result<usize, String> {
        self.front
            .mmap(
                0,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                region(bar, 0),
            )
            .map_err(errno("mmap of the BAR"))
    }

    /// Unmaps what [`Side::map`] made, as the program's munmap does (the
    /// kernel's, then the front end's record).
    fn unmap(&self, addr: usize, len: usize) {
        // SAFETY: a mapping this side made and nothing else uses.
        unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        self.front.munmapped(addr, len);
    }

    /// ns per page of the first touch (a read, or a write) of every page of
    /// a fresh mapping of device `dev`'s memory BAR.
    fn fault(&self, dev: usize, write: bool) -> Result<f64, String> {
        let addr = self.map(self.devices[dev], MEM_BAR, MEM)?;
        let t = touch(addr, MEM, write);
        self.unmap(addr, MEM);
        Ok(t)
    }

    /// ns per page of the first touch of every page of a live mapping of
    /// device `dev`'s memory BAR right after a revocation and restore.
    fn refault(&self, dev: usize, addr: usize) -> Result<f64, String> {
        self.revoke_restore(self.devices[dev])?;
        Ok(touch(addr, MEM, false))
    }

    /// ns per access of one batch of `pread` (`write` false) or `pwrite`
    /// of `buf.len()` bytes at the start of device 0's memory BAR.
    fn access(&self, buf: &mut [u8], write: bool) -> Result<f64, String> {
        let (fd, len, at) = (self.devices[0], buf.len(), region(MEM_BAR, 0));
        let t = Instant::now();
        for _ in 0..BATCH {
            let r = if write {
                self.front.pwrite(fd, buf.as_ptr() as usize, len, at)
            } else {
                self.front.pread(fd, buf.as_mut_ptr() as usize, len, at)
            };
            if r != Ok(len as i64) {
                return Err(format!("region access of {len} bytes: {r:?}"));
            }
        }
        Ok(t.elapsed().as_nanos() as f64 / BATCH as f64)
    }

    /// ns per load of one batch of 4-byte loads from edu's identification
    /// register through `addr`, a mapping of its BAR0.
    fn register(addr: usize) -> Result<f64, String> {
        let t = Instant::now();
        for _ in 0..BATCH {
            // SAFETY: a live mapping of edu's BAR0, whose loads the
            // register trap emulates; volatile, as device memory is read.
            let id = unsafe { (addr as *const u32).read_volatile() };
            if id != EDU_ID {
                return Err(format!("edu's identification register read {id:#x}"));
            }
        }
        Ok(t.elapsed().as_nanos() as f64 / BATCH as f64)
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        for &fd in self.fds.iter().rev() {
            // SAFETY: fds the front end handed out to this side, closed once,
            // as the program's close does (the kernel's, then the front end's).
            unsafe { libc::close(fd) };
            self.front.close(fd);
        }
    }
}

/// Reads (or writes) the first word of every page of `len` bytes at
/// `addr`; ns per page.
fn touch(addr: usize, len: usize, write: bool) -> f64 {
    let pages = len / PAGE;
    let t = Instant::now();
    for i in 0..pages {
        let p = (addr + i * PAGE) as *mut u64;
        // SAFETY: page `i` of a live read-write mapping of a memory BAR
        // with memory enabled; volatile, as device memory is accessed.
        unsafe {
            if write {
                p.write_volatile(i as u64);
            } else {
                std::hint::black_box(p.read_volatile());
            }
        }
    }
    t.elapsed().as_nanos() as f64 / pages as f64
}

/// `BATCHES` batches per repetition, `reps` repetitions after one
/// repetition of warm-up, each batch timed by `both` on the in-process
/// side then on the served one: the two series, per access.
fn turns(
    reps: usize,
    mut both: impl FnMut() -> Result<(f64, f64), String>,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let (mut l, mut s) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        for _ in 0..BATCHES {
            let (a, b) = both()?;
            if rep > 0 {
                l.push(a);
                s.push(b);
            }
        }
    }
    Ok((l, s))
}

/// The in-process and served rows of one measurement: the served one
/// judged against the in-process one.
fn pair(
    r: &mut Results,
    name: &str,
    local: &[f64],
    served: &[f64],
    policy: Option<Policy>,
    size: usize,
    against: &str,
) {
    let mut l = timing(name, "ns", local);
    l.mode = Some("local".into());
    l.policy = policy.map(|p| p.name().to_string());
    let mut s: Measurement = timing(name, "ns", served);
    s.mode = Some("served".into());
    s.ratio = Some(s.median / l.median.max(1e-3));
    s.ratio_to = Some(format!("{against}, in turns"));
    for m in [&mut l, &mut s] {
        m.size_bytes = Some(size);
    }
    r.measurements.push(l);
    r.measurements.push(s);
}

impl Family for Socket {
    fn run(&self, b: &Bench, r: &mut Results) -> Result<(), String> {
        b.progress("socket: a device in-process and across the socket, in turns");
        let local = Side::new(false)?;
        let served = Side::new(true)?;
        let reps = b.reps;

        // A fault: a fresh mapping's first touch (a read, then a write),
        // per page. One warm-up each (the first touch of the BAR commits
        // its memory).
        for (write, name) in [(false, "sock_fault"), (true, "sock_fault_wr")] {
            for (dev, policy) in [(0, Policy::default()), (1, Policy::Page)] {
                let (mut l, mut s) = (Vec::new(), Vec::new());
                for rep in 0..=reps {
                    let (a, c) = (local.fault(dev, write)?, served.fault(0, write)?);
                    if rep > 0 {
                        l.push(a);
                        s.push(c);
                    }
                }
                pair(
                    r,
                    name,
                    &l,
                    &s,
                    Some(policy),
                    MEM,
                    &format!("in-process {policy} policy"),
                );
            }
        }

        // The first touch after a revocation and restore, per page.
        let (la, sa) = (
            local.map(local.devices[0], MEM_BAR, MEM)?,
            served.map(served.devices[0], MEM_BAR, MEM)?,
        );
        let (mut l, mut s) = (Vec::new(), Vec::new());
        let mut failed = None;
        for rep in 0..=reps {
            match (local.refault(0, la), served.refault(0, sa)) {
                (Ok(a), Ok(c)) if rep > 0 => {
                    l.push(a);
                    s.push(c);
                }
                (Ok(_), Ok(_)) => {}
                (Err(e), _) | (_, Err(e)) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        local.unmap(la, MEM);
        served.unmap(sa, MEM);
        if let Some(e) = failed {
            return Err(e);
        }
        let policy = Policy::default();
        pair(
            r,
            "sock_refault",
            &l,
            &s,
            Some(policy),
            MEM,
            &format!("in-process zap and {policy} policy"),
        );

        // A region access, per access.
        for write in [false, true] {
            for len in [4, PAGE] {
                let (mut lb, mut sb) = (vec![0x5au8; len], vec![0x5au8; len]);
                let (l, s) = turns(reps, || {
                    Ok((
                        local.access(&mut lb, write)?,
                        served.access(&mut sb, write)?,
                    ))
                })?;
                let name = if write { "sock_pwrite" } else { "sock_pread" };
                pair(r, name, &l, &s, None, len, "in-process region access");
            }
        }

        // A trapped register access, per access.
        let bar0 = 1 << 20;
        let (la, sa) = (
            local.map(local.devices[2], 0, bar0)?,
            served.map(served.devices[2], 0, bar0)?,
        );
        let ran = turns(reps, || Ok((Side::register(la)?, Side::register(sa)?)));
        local.unmap(la, bar0);
        served.unmap(sa, bar0);
        let (l, s) = ran?;
        pair(r, "sock_reg", &l, &s, None, 4, "in-process trapped load");
        drop(local);
        drop(served);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BenchArgs, MIB};
    use super::*;

    /// The family measures every row on both sides (an access or a load
    /// that fails or reads a wrong value ends it with an error) and judges
    /// each served figure against the in-process one of its turn.
    #[test]
    fn every_served_row_is_judged_against_the_in_process_row_of_its_turn() {
        let b = Bench::new(&BenchArgs {
            size: 2 * MIB,
            threads: 1,
            json: false,
            plot: None,
            reps: 1,
            families: vec!["socket".into()],
        })
        .unwrap();
        let mut r = Results::default();
        Socket.run(&b, &mut r).unwrap();
        let names: Vec<&str> = r.measurements.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "sock_fault",
                "sock_fault",
                "sock_fault",
                "sock_fault",
                "sock_fault_wr",
                "sock_fault_wr",
                "sock_fault_wr",
                "sock_fault_wr",
                "sock_refault",
                "sock_refault",
                "sock_pread",
                "sock_pread",
                "sock_pread",
                "sock_pread",
                "sock_pwrite",
                "sock_pwrite",
                "sock_pwrite",
                "sock_pwrite",
                "sock_reg",
                "sock_reg",
            ]
        );
        for pair in r.measurements.chunks(2) {
            let (l, s) = (&pair[0], &pair[1]);
            assert_eq!(l.mode.as_deref(), Some("local"), "{}", l.name);
            assert_eq!(s.mode.as_deref(), Some("served"), "{}", s.name);
            assert_eq!(l.size_bytes, s.size_bytes, "{}", l.name);
            assert!(l.median > 0.0 && s.median > 0.0, "{}", l.name);
            assert_eq!(s.ratio, Some(s.median / l.median), "{}", s.name);
            assert!(l.ratio.is_none(), "{}", l.name);
        }
    }
}
