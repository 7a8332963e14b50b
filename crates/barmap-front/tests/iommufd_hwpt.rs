//! iommufd as VMMs use it (QEMU 10 and later): `IOMMU_GET_HW_INFO`, a
//! paging HWPT allocated per device over an IOAS, attach and replace
//! through the cdev, `IOMMU_DESTROY` while things hold an object, and the
//! IOAS map and unmap rules that a domain brings (pinning), each with the
//! errno and in the order of drivers/iommu/iommufd/{main.c,
//! hw_pagetable.c, device.c, ioas.c, io_pagetable.c} and
//! drivers/vfio/device_cdev.c.

use barmap_front::iommufd::{
    IommuHwInfo, IommuHwptAlloc, IOMMU_GET_HW_INFO, IOMMU_HWPT_ALLOC,
    IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED,
};
use barmap_front::{Errno, Front};
use barmap_vfio::iommufd as ifd;
use barmap_vfio::uapi as v;

mod common;
use common::p;

const E2BIG: Errno = Errno(libc::E2BIG);

/// An iommufd, a cdev bound to it, and an IOAS: `(iommufd, device fd,
/// device id, ioas id)`.
fn bound(f: &Front) -> (i32, i32, u32, u32) {
    let i = f.open("/dev/iommu", 0).unwrap();
    let d = f.open("/dev/vfio/devices/vfio0", 0).unwrap();
    let mut bind = v::VfioDeviceBindIommufd {
        argsz: 16,
        flags: 0,
        iommufd: i,
        out_devid: 0,
        ..Default::default()
    };
    f.ioctl(d, v::VFIO_DEVICE_BIND_IOMMUFD, p(&mut bind))
        .unwrap();
    let ioas = ioas_alloc(f, i);
    (i, d, bind.out_devid, ioas)
}

fn ioas_alloc(f: &Front, i: i32) -> u32 {
    let mut a = ifd::IommuIoasAlloc {
        size: 12,
        ..Default::default()
    };
    f.ioctl(i, ifd::IOMMU_IOAS_ALLOC, p(&mut a)).unwrap();
    a.out_ioas_id
}

fn hwpt_cmd(dev_id: u32, pt_id: u32) -> IommuHwptAlloc {
    IommuHwptAlloc {
        size: std::mem::size_of::<IommuHwptAlloc>() as u32,
        dev_id,
        pt_id,
        ..Default::default()
    }
}

fn hwpt_alloc(f: &Front, i: i32, dev_id: u32, pt_id: u32) -> Result<u32, Errno> {
    let mut c = hwpt_cmd(dev_id, pt_id);
    f.ioctl(i, IOMMU_HWPT_ALLOC, p(&mut c))?;
    Ok(c.out_hwpt_id)
}

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: the pt_id the kernel writes back.
fn attach(f: &Front, d: i32, pt_id: u32) -> Result<u32, Errno> {
    let mut a = v::VfioDeviceAttachIommufdPt {
        argsz: 12,
        flags: 0,
        pt_id,
        ..Default::default()
    };
    f.ioctl(d, v::VFIO_DEVICE_ATTACH_IOMMUFD_PT, p(&mut a))?;
    Ok(a.pt_id)
}

fn destroy(f: &Front, i: i32, id: u32) -> Result<i64, Errno> {
    let mut c = ifd::IommuDestroy { size: 8, id };
    f.ioctl(i, ifd::IOMMU_DESTROY, p(&mut c))
}

fn map(
    f: &Front,
    i: i32,
    ioas: u32,
    va: u64,
    len: u64,
    iova: u64,
    flags: u32,
) -> Result<i64, Errno> {
    let mut m = ifd::IommuIoasMap {
        size: 40,
        flags: flags | ifd::IOMMU_IOAS_MAP_FIXED_IOVA,
        ioas_id: ioas,
        __reserved: 0,
        user_va: va,
        length: len,
        iova,
    };
    f.ioctl(i, ifd::IOMMU_IOAS_MAP, p(&mut m))
}

fn unmap(f: &Front, i: i32, ioas: u32, iova: u64, length: u64) -> Result<u64, Errno> {
    let mut u = ifd::IommuIoasUnmap {
        size: 24,
        ioas_id: ioas,
        iova,
        length,
    };
    f.ioctl(i, ifd::IOMMU_IOAS_UNMAP, p(&mut u))
        .map(|_| u.length)
}

const RW: u32 = ifd::IOMMU_IOAS_MAP_READABLE | ifd::IOMMU_IOAS_MAP_WRITEABLE;

/// Anonymous memory of `pages` pages with protection `prot`, unmapped at
/// drop.
struct Mem(u64, usize);

impl Mem {
    fn new(pages: usize, prot: i32) -> Mem {
        let len = pages * 4096;
        // SAFETY: a fresh anonymous mapping; checked below.
        let a = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        assert_ne!(a, libc::MAP_FAILED);
        Mem(a as u64, len)
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.0 as *mut libc::c_void, self.1) };
    }
}

/// Where the device's DMA to `iova` lands, through the IOAS its HWPT is
/// over (None: an IOMMU fault).
fn dma_target(f: &Front, iova: u64) -> Option<u64> {
    let dev = f.devices().pop().unwrap();
    let slot = dev.dma.lock().unwrap();
    let table = slot.as_ref()?;
    let t = table.lock().unwrap();
    t.translate(iova, 4, true)
}

#[test]
fn get_hw_info_reports_no_driver_data_and_checks_in_the_kernels_order() {
    let (f, _dir) = common::front("default,memory=4M");
    let (i, _d, dev, ioas) = bound(&f);
    let mut data = [0xffu8; 64];
    let mut c = IommuHwInfo {
        size: std::mem::size_of::<IommuHwInfo>() as u32,
        dev_id: dev,
        data_len: data.len() as u32,
        data_uptr: data.as_mut_ptr() as u64,
        ..Default::default()
    };
    f.ioctl(i, IOMMU_GET_HW_INFO, p(&mut c)).unwrap();
    // SAFETY: a union of two u32s; any value is valid.
    let out_type = unsafe { c.__bindgen_anon_1.out_data_type };
    assert_eq!(out_type, 0, "IOMMU_HW_INFO_TYPE_NONE");
    assert_eq!(c.data_len, 0, "the driver has no data");
    assert!(data.iter().all(|&b| b == 0), "the user's buffer is zeroed");
    assert_eq!(c.out_capabilities, IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED);
    assert_eq!(c.out_max_pasid_log2, 0);
    // QEMU's first call: no buffer at all.
    let mut q = IommuHwInfo {
        size: std::mem::size_of::<IommuHwInfo>() as u32,
        dev_id: dev,
        ..Default::default()
    };
    f.ioctl(i, IOMMU_GET_HW_INFO, p(&mut q)).unwrap();
    let before = f.digest();
    let bad = |c: IommuHwInfo| {
        let mut c = c;
        f.ioctl(i, IOMMU_GET_HW_INFO, p(&mut c))
    };
    assert_eq!(
        bad(IommuHwInfo { size: 31, ..q }),
        Err(Errno::EINVAL),
        "below the first version"
    );
    assert_eq!(
        bad(IommuHwInfo {
            flags: 2,
            dev_id: 999,
            ..q
        }),
        Err(Errno::EOPNOTSUPP),
        "flags before the device"
    );
    assert_eq!(
        bad(IommuHwInfo {
            __reserved: [0, 1, 0],
            ..q
        }),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(bad(IommuHwInfo { dev_id: 999, ..q }), Err(Errno::ENOENT));
    assert_eq!(
        bad(IommuHwInfo { dev_id: ioas, ..q }),
        Err(Errno::ENOENT),
        "an IOAS is no device"
    );
    assert_eq!(
        bad(IommuHwInfo {
            data_len: 8,
            data_uptr: 8,
            ..q
        }),
        Err(Errno::EFAULT),
        "the buffer is cleared"
    );
    assert_eq!(
        f.ioctl(i, IOMMU_GET_HW_INFO, 8),
        Err(Errno::EFAULT),
        "the size is read first"
    );
    // A larger structure from a newer header: zeros past what the kernel
    // knows are fine, anything else is E2BIG.
    let mut big = [0u64; 8];
    big[0] = 64; // size; flags 0
    big[1] = u64::from(dev);
    f.ioctl(i, IOMMU_GET_HW_INFO, p(&mut big)).unwrap();
    big[7] = 1;
    assert_eq!(f.ioctl(i, IOMMU_GET_HW_INFO, p(&mut big)), Err(E2BIG));
    assert_eq!(before, f.digest(), "failed calls change nothing");
}

#[test]
fn hwpt_alloc_checks_in_the_kernels_order_and_failures_leave_no_object() {
    let (f, _dir) = common::front("default,memory=4M");
    let (i, _d, dev, ioas) = bound(&f);
    let before = f.digest();
    let bad = |c: IommuHwptAlloc| {
        let mut c = c;
        f.ioctl(i, IOMMU_HWPT_ALLOC, p(&mut c))
    };
    let ok = hwpt_cmd(dev, ioas);
    assert_eq!(bad(IommuHwptAlloc { size: 23, ..ok }), Err(Errno::EINVAL));
    assert_eq!(
        bad(IommuHwptAlloc {
            __reserved: 1,
            dev_id: 99,
            ..ok
        }),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        bad(IommuHwptAlloc {
            data_len: 8,
            dev_id: 99,
            ..ok
        }),
        Err(Errno::EINVAL),
        "data with type NONE"
    );
    assert_eq!(
        bad(IommuHwptAlloc {
            data_type: 1,
            dev_id: 99,
            ..ok
        }),
        Err(Errno::EINVAL),
        "a type without data"
    );
    assert_eq!(
        bad(IommuHwptAlloc {
            dev_id: 99,
            pt_id: 99,
            ..ok
        }),
        Err(Errno::ENOENT),
        "the device first"
    );
    assert_eq!(
        bad(IommuHwptAlloc { dev_id: ioas, ..ok }),
        Err(Errno::ENOENT),
        "an IOAS is no device"
    );
    assert_eq!(
        bad(IommuHwptAlloc { pt_id: 99, ..ok }),
        Err(Errno::EINVAL),
        "no such pt: EINVAL, not ENOENT"
    );
    assert_eq!(
        bad(IommuHwptAlloc { pt_id: dev, ..ok }),
        Err(Errno::EINVAL),
        "a device is no pt"
    );
    for flags in [1, 2, 4, 8, 16] {
        assert_eq!(
            bad(IommuHwptAlloc { flags, ..ok }),
            Err(Errno::EOPNOTSUPP),
            "flags {flags}"
        );
    }
    assert_eq!(
        bad(IommuHwptAlloc {
            data_type: 1,
            data_len: 8,
            ..ok
        }),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        f.ioctl(i, IOMMU_HWPT_ALLOC, 0x7fff_ffff_f000),
        Err(Errno::EFAULT)
    );
    assert_eq!(before, f.digest(), "failed calls change nothing");
    let hwpt = hwpt_alloc(&f, i, dev, ioas).unwrap();
    assert_eq!(hwpt, ioas + 1, "ids are allocated lowest first");
    assert_eq!(
        bad(IommuHwptAlloc { pt_id: hwpt, ..ok }),
        Err(Errno::EOPNOTSUPP),
        "no nesting over a paging HWPT"
    );
    // The response cannot be written: the new HWPT is destroyed again.
    let with_hwpt = f.digest();
    let ro = Mem::new(1, libc::PROT_READ | libc::PROT_WRITE);
    // SAFETY: our own page, filled with a valid command.
    unsafe { std::ptr::write(ro.0 as *mut IommuHwptAlloc, ok) };
    // SAFETY: our own page.
    assert_eq!(
        unsafe { libc::mprotect(ro.0 as *mut _, 4096, libc::PROT_READ) },
        0
    );
    assert_eq!(
        f.ioctl(i, IOMMU_HWPT_ALLOC, ro.0 as usize),
        Err(Errno::EFAULT)
    );
    assert_eq!(with_hwpt, f.digest());
    assert_eq!(destroy(&f, i, hwpt), Ok(0), "not attached: destroyable");
    assert_eq!(destroy(&f, i, hwpt), Err(Errno::ENOENT));
}

#[test]
fn attach_to_a_hwpt_then_again_replaces_and_destroy_is_ebusy_while_attached() {
    let (f, _dir) = common::front("default,memory=4M");
    let (i, d, dev, ioas1) = bound(&f);
    let ioas2 = ioas_alloc(&f, i);
    let mem = Mem::new(2, libc::PROT_READ | libc::PROT_WRITE);
    map(&f, i, ioas1, mem.0, 4096, 0x10_0000, RW).unwrap();
    map(&f, i, ioas2, mem.0 + 4096, 4096, 0x10_0000, RW).unwrap();
    // QEMU 10: a HWPT per device over its IOAS, then attach to it.
    let h1 = hwpt_alloc(&f, i, dev, ioas1).unwrap();
    assert_eq!(attach(&f, d, h1), Ok(h1));
    assert_eq!(dma_target(&f, 0x10_0000), Some(mem.0));
    assert_eq!(destroy(&f, i, h1), Err(Errno::EBUSY), "attached HWPT");
    assert_eq!(
        destroy(&f, i, ioas1),
        Err(Errno::EBUSY),
        "an IOAS with a HWPT"
    );
    assert_eq!(destroy(&f, i, dev), Err(Errno::EBUSY), "a bound device");
    // Attach again = replace: to a HWPT over the other IOAS.
    let h2 = hwpt_alloc(&f, i, dev, ioas2).unwrap();
    assert_eq!(attach(&f, d, h2), Ok(h2));
    assert_eq!(
        dma_target(&f, 0x10_0000),
        Some(mem.0 + 4096),
        "DMA goes through the new IOAS"
    );
    assert_eq!(attach(&f, d, h2), Ok(h2), "replace with the same HWPT");
    assert_eq!(attach(&f, d, 999), Err(Errno::ENOENT));
    assert_eq!(attach(&f, d, dev), Err(Errno::EINVAL), "a device is no pt");
    assert_eq!(
        dma_target(&f, 0x10_0000),
        Some(mem.0 + 4096),
        "failed replaces change nothing"
    );
    assert_eq!(destroy(&f, i, h1), Ok(0), "the replaced HWPT is free");
    // Attach to an IOAS: its automatic HWPT, whose id comes back.
    let auto = attach(&f, d, ioas1).unwrap();
    assert!(auto != ioas1 && auto != h2);
    assert_eq!(dma_target(&f, 0x10_0000), Some(mem.0));
    assert_eq!(
        attach(&f, d, ioas1),
        Ok(auto),
        "the same automatic HWPT again"
    );
    assert_eq!(destroy(&f, i, auto), Err(Errno::EBUSY));
    // Replacing it drops it: it was the IOAS's own.
    assert_eq!(attach(&f, d, h2), Ok(h2));
    assert_eq!(
        destroy(&f, i, auto),
        Err(Errno::ENOENT),
        "the automatic HWPT went with its device"
    );
    assert_eq!(destroy(&f, i, ioas1), Ok(0));
    // Detach: the HWPT is free, the device has no DMA.
    let mut det = [8u32, 0];
    f.ioctl(
        d,
        v::VFIO_DEVICE_DETACH_IOMMUFD_PT,
        det.as_mut_ptr() as usize,
    )
    .unwrap();
    assert_eq!(dma_target(&f, 0x10_0000), None);
    assert_eq!(destroy(&f, i, h2), Ok(0));
    assert_eq!(destroy(&f, i, ioas2), Ok(0));
}

#[test]
fn closing_the_cdev_detaches_and_frees_the_hwpt() {
    let (f, _dir) = common::front("default,memory=4M");
    let (i, d, dev, ioas) = bound(&f);
    let h = hwpt_alloc(&f, i, dev, ioas).unwrap();
    attach(&f, d, h).unwrap();
    assert_eq!(destroy(&f, i, h), Err(Errno::EBUSY));
    f.close(d);
    assert_eq!(destroy(&f, i, h), Ok(0));
    assert_eq!(destroy(&f, i, ioas), Ok(0));
}

#[test]
fn ioas_map_needs_a_permission_and_pins_only_with_a_domain() {
    let (f, _dir) = common::front("default,memory=4M");
    let (i, _d, dev, ioas) = bound(&f);
    let ro = Mem::new(1, libc::PROT_READ);
    let none = Mem::new(1, libc::PROT_NONE);
    let rw = Mem::new(1, libc::PROT_READ | libc::PROT_WRITE);
    assert_eq!(
        map(&f, i, ioas, rw.0, 4096, 0x1000, 0),
        Err(Errno::EINVAL),
        "neither READ nor WRITE"
    );
    assert_eq!(
        map(&f, i, 999, rw.0, 4096, 0x1000, 0),
        Err(Errno::EINVAL),
        "the permissions before the IOAS"
    );
    assert_eq!(
        map(&f, i, ioas, rw.0, u64::MAX, 0x1000, 0),
        Err(Errno::EOVERFLOW),
        "the overflow check comes first"
    );
    // No domain: nothing is pinned yet, as on the kernel.
    map(&f, i, ioas, ro.0, 4096, 0x1000, RW).unwrap();
    // The first HWPT fills its domain: the read-only page cannot be
    // pinned for writing.
    let before = f.digest();
    assert_eq!(hwpt_alloc(&f, i, dev, ioas), Err(Errno::EFAULT));
    assert_eq!(before, f.digest());
    unmap(&f, i, ioas, 0x1000, 4096).unwrap();
    let _h = hwpt_alloc(&f, i, dev, ioas).unwrap();
    // With a domain, map pins at once.
    let before = f.digest();
    assert_eq!(
        map(&f, i, ioas, ro.0, 4096, 0x1000, RW),
        Err(Errno::EFAULT),
        "writable over read-only"
    );
    assert_eq!(
        map(
            &f,
            i,
            ioas,
            none.0,
            4096,
            0x1000,
            ifd::IOMMU_IOAS_MAP_READABLE
        ),
        Err(Errno::EFAULT),
        "PROT_NONE"
    );
    assert_eq!(before, f.digest(), "failed maps change nothing");
    map(
        &f,
        i,
        ioas,
        ro.0,
        4096,
        0x1000,
        ifd::IOMMU_IOAS_MAP_READABLE,
    )
    .unwrap();
    map(&f, i, ioas, rw.0, 4096, 0x2000, RW).unwrap();
}

#[test]
fn ioas_unmap_of_part_of_an_area_is_enoent_and_unmaps_the_areas_before_it() {
    let (f, _dir) = common::front("default,memory=4M");
    let (i, _d, _dev, ioas) = bound(&f);
    let mem = Mem::new(4, libc::PROT_READ | libc::PROT_WRITE);
    map(&f, i, ioas, mem.0, 8192, 0x10_0000, RW).unwrap();
    map(&f, i, ioas, mem.0 + 8192, 8192, 0x20_0000, RW).unwrap();
    let before = f.digest();
    assert_eq!(
        unmap(&f, i, ioas, 0x10_0000, 4096),
        Err(Errno::ENOENT),
        "the first half"
    );
    assert_eq!(
        unmap(&f, i, ioas, 0x10_1000, 4096),
        Err(Errno::ENOENT),
        "the second half"
    );
    assert_eq!(before, f.digest(), "nothing unmapped");
    assert_eq!(
        unmap(&f, i, ioas, 0x30_0000, 4096),
        Err(Errno::ENOENT),
        "nothing there"
    );
    assert_eq!(unmap(&f, i, ioas, 0x10_0000, 0), Err(Errno::EINVAL));
    assert_eq!(
        unmap(&f, i, ioas, 0x10_0000, u64::MAX),
        Err(Errno::EOVERFLOW)
    );
    assert_eq!(
        unmap(&f, i, ioas, u64::MAX - 4095, 8192),
        Err(Errno::EOVERFLOW)
    );
    // QEMU unmaps everything in two halves: the upper one is empty.
    assert_eq!(unmap(&f, i, ioas, 1 << 63, 1 << 63), Err(Errno::ENOENT));
    // The first area whole and half of the second: the first goes, then
    // ENOENT (iopt_unmap_iova_range stops at the second).
    assert_eq!(unmap(&f, i, ioas, 0x10_0000, 0x10_1000), Err(Errno::ENOENT));
    assert_eq!(
        unmap(&f, i, ioas, 0x10_0000, 8192),
        Err(Errno::ENOENT),
        "already gone"
    );
    assert_eq!(unmap(&f, i, ioas, 0, 1 << 63), Ok(8192));
    assert_eq!(
        unmap(&f, i, ioas, 0, u64::MAX),
        Ok(0),
        "unmap-all of nothing succeeds"
    );
}
