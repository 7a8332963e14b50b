//! Helpers shared by the front end's device tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

pub mod kernel_errnos;

use barmap::Policy;
use barmap_front::spec::{DeviceSpec, RunSpec};
use barmap_front::{testbed, Front};
use barmap_vfio::uapi as v;

/// A testbed directory, removed at drop.
pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The address of `v`, as an ioctl argument.
pub fn p<T>(v: &mut T) -> usize {
    v as *mut T as usize
}

impl std::ops::Deref for Dir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

/// A front end over a fresh testbed with one device of `model` (a
/// `--device` spec), and the testbed's directory.
pub fn front(model: &str) -> (Front, Dir) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "barmap-front-{}-{}-{}",
        model.split(',').next().unwrap_or(model),
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = RunSpec::new(vec![DeviceSpec::parse(model, Policy::Prefault).unwrap()]);
    testbed::create(&dir, &spec).unwrap();
    (Front::new(&dir).unwrap(), Dir(dir))
}

/// Container, group (set to the container, type1v2) and device fd, the
/// legacy way: `(container, group, device)`.
pub fn legacy(f: &Front) -> (i32, i32, i32) {
    let c = f.open("/dev/vfio/vfio", 0).unwrap();
    let g = f.open("/dev/vfio/42", 0).unwrap();
    let mut cfd = c;
    f.ioctl(g, v::VFIO_GROUP_SET_CONTAINER, p(&mut cfd))
        .unwrap();
    f.ioctl(c, v::VFIO_SET_IOMMU, v::VFIO_TYPE1V2_IOMMU as usize)
        .unwrap();
    let d = f
        .ioctl(
            g,
            v::VFIO_GROUP_GET_DEVICE_FD,
            c"0000:ba:00.0".as_ptr() as usize,
        )
        .unwrap() as i32;
    (c, g, d)
}

/// A front end with one device of `model` (a `--device` spec), its
/// container (type1v2) and device fd: `(front, dir, container, device)`.
pub fn one_device(model: &str) -> (Front, Dir, i32, i32) {
    let (f, dir) = front(model);
    let (c, _, d) = legacy(&f);
    (f, dir, c, d)
}

/// `VFIO_DEVICE_SET_IRQS` for vector 0 of IRQ `index` with one eventfd.
#[repr(C)]
pub struct SetOne {
    /// The header.
    pub hdr: v::VfioIrqSet,
    /// The eventfd.
    pub fd: i32,
}

/// A [`SetOne`] that gives vector 0 of IRQ `index` the eventfd `fd`
/// (DATA_EVENTFD | ACTION_TRIGGER).
pub fn set_one(index: u32, fd: i32) -> SetOne {
    SetOne {
        hdr: v::VfioIrqSet {
            argsz: 24,
            flags: v::VFIO_IRQ_SET_DATA_EVENTFD | v::VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 1,
        },
        fd,
    }
}

/// A fresh non-blocking eventfd.
pub fn eventfd() -> i32 {
    // SAFETY: a plain eventfd for the test.
    unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) }
}

/// Gives vector 0 of IRQ `index` of device fd `d` a fresh non-blocking
/// eventfd (`VFIO_DEVICE_SET_IRQS`, DATA_EVENTFD | ACTION_TRIGGER) and
/// returns it.
pub fn trigger_eventfd(f: &Front, d: i32, index: u32) -> i32 {
    let efd = eventfd();
    f.ioctl(d, v::VFIO_DEVICE_SET_IRQS, p(&mut set_one(index, efd)))
        .unwrap();
    efd
}

/// Takes the eventfd's count (0 if it was not signalled).
pub fn eventfd_count(efd: i32) -> u64 {
    let mut n = 0u64;
    // SAFETY: reads 8 bytes into a u64 from the test's eventfd.
    let r = unsafe { libc::read(efd, p(&mut n) as *mut _, 8) };
    if r == 8 {
        n
    } else {
        0
    }
}
