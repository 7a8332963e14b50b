//! The VFIO uAPI as the front end answers it, called the way a program's
//! libc calls reach it (without the preload library: the same entry
//! points, in this process): good requests work, bad ones get the errno
//! the kernel's vfio-pci, type1 and iommufd give, and change nothing.

use barmap_front::{Errno, Front};
use barmap_vfio::iommufd as ifd;
use barmap_vfio::uapi as v;

mod common;
use common::{eventfd, eventfd_count, legacy, p, set_one, Dir};

/// A front end with one default device of 4 MiB of memory.
fn front() -> (Front, Dir) {
    common::front("default,memory=4M")
}

#[test]
fn sysfs_and_nodes_are_served_from_the_testbed() {
    let (f, dir) = front();
    assert!(f.serves("/dev/vfio/vfio") && f.serves("/dev/iommu") && f.serves("/dev/vfio/42"));
    assert!(!f.serves("/etc/hostname"));
    let vendor = f
        .redirect("/sys/bus/pci/devices/0000:ba:00.0/vendor")
        .unwrap();
    assert_eq!(std::fs::read_to_string(vendor).unwrap(), "0x1234\n");
    let group = f
        .redirect("/sys/bus/pci/devices/0000:ba:00.0/iommu_group")
        .unwrap();
    assert_eq!(
        std::fs::read_link(group).unwrap().file_name().unwrap(),
        "42"
    );
    assert!(dir
        .join("sys/bus/pci/devices/0000:ba:00.0/vfio-dev/vfio0")
        .is_dir());
    assert_eq!(
        f.open("/dev/vfio/7", 0),
        Err(Errno::ENOENT),
        "no such group"
    );
    assert_eq!(f.open("/dev/vfio/devices/vfio9", 0), Err(Errno::ENOENT));
}

#[test]
fn container_and_group_answer_like_vfio() {
    let (f, _dir) = front();
    let c = f.open("/dev/vfio/vfio", 0).unwrap();
    assert_eq!(f.ioctl(c, v::VFIO_GET_API_VERSION, 0), Ok(0));
    assert_eq!(
        f.ioctl(c, v::VFIO_CHECK_EXTENSION, v::VFIO_TYPE1V2_IOMMU as usize),
        Ok(1)
    );
    assert_eq!(
        f.ioctl(c, v::VFIO_CHECK_EXTENSION, v::VFIO_NOIOMMU_IOMMU as usize),
        Ok(0)
    );
    assert_eq!(
        f.ioctl(c, v::VFIO_SET_IOMMU, v::VFIO_TYPE1V2_IOMMU as usize),
        Err(Errno::EINVAL),
        "no group in the container yet"
    );
    assert_eq!(
        f.ioctl(c, 0x3b99, 0),
        Err(Errno::EINVAL),
        "unknown ioctl before SET_IOMMU (vfio_fops_unl_ioctl)"
    );
    let g = f.open("/dev/vfio/42", 0).unwrap();
    assert_eq!(
        f.open("/dev/vfio/42", 0),
        Err(Errno::EBUSY),
        "one open per group"
    );
    let mut st = v::VfioGroupStatus { argsz: 4, flags: 0 };
    assert_eq!(
        f.ioctl(g, v::VFIO_GROUP_GET_STATUS, p(&mut st)),
        Err(Errno::EINVAL)
    );
    st.argsz = 8;
    f.ioctl(g, v::VFIO_GROUP_GET_STATUS, p(&mut st)).unwrap();
    assert_eq!(st.flags, v::VFIO_GROUP_FLAGS_VIABLE);
    let name = c"0000:ba:00.0";
    assert_eq!(
        f.ioctl(g, v::VFIO_GROUP_GET_DEVICE_FD, name.as_ptr() as usize),
        Err(Errno::EINVAL),
        "no container"
    );
    let bad_name = c"0000:ba:01.0";
    assert_eq!(
        f.ioctl(g, v::VFIO_GROUP_GET_DEVICE_FD, bad_name.as_ptr() as usize),
        Err(Errno::ENODEV),
        "the name is looked up before the container"
    );
    let mut not_a_container = g;
    assert_eq!(
        f.ioctl(g, v::VFIO_GROUP_SET_CONTAINER, p(&mut not_a_container)),
        Err(Errno(libc::EBADFD))
    );
    let mut not_an_fd = 9999;
    assert_eq!(
        f.ioctl(g, v::VFIO_GROUP_SET_CONTAINER, p(&mut not_an_fd)),
        Err(Errno::EBADF)
    );
    assert_eq!(
        f.ioctl(g, v::VFIO_GROUP_UNSET_CONTAINER, 0),
        Err(Errno::EINVAL)
    );
    let mut cfd = c;
    f.ioctl(g, v::VFIO_GROUP_SET_CONTAINER, p(&mut cfd))
        .unwrap();
    assert_eq!(
        f.ioctl(g, v::VFIO_GROUP_SET_CONTAINER, p(&mut cfd)),
        Err(Errno::EINVAL),
        "already set"
    );
    assert_eq!(f.ioctl(c, v::VFIO_SET_IOMMU, 99), Err(Errno::ENODEV));
    f.ioctl(c, v::VFIO_SET_IOMMU, v::VFIO_TYPE1V2_IOMMU as usize)
        .unwrap();
    assert_eq!(
        f.ioctl(c, v::VFIO_SET_IOMMU, v::VFIO_TYPE1V2_IOMMU as usize),
        Err(Errno::EINVAL),
        "already set"
    );
    let wrong = c"0000:ba:01.0";
    assert_eq!(
        f.ioctl(g, v::VFIO_GROUP_GET_DEVICE_FD, wrong.as_ptr() as usize),
        Err(Errno::ENODEV)
    );
    assert_eq!(
        f.ioctl(g, v::VFIO_GROUP_GET_DEVICE_FD, 8),
        Err(Errno::EFAULT),
        "bad pointer"
    );
    let d = f
        .ioctl(g, v::VFIO_GROUP_GET_DEVICE_FD, name.as_ptr() as usize)
        .unwrap();
    assert!(d > 0);
    st.argsz = 8;
    f.ioctl(g, v::VFIO_GROUP_GET_STATUS, p(&mut st)).unwrap();
    assert_eq!(
        st.flags,
        v::VFIO_GROUP_FLAGS_VIABLE | v::VFIO_GROUP_FLAGS_CONTAINER_SET
    );
}

#[test]
fn type1_dma_maps_are_checked_and_recorded() {
    let (f, _dir) = front();
    let (c, _g, _d) = legacy(&f);
    let buf = vec![0u8; 3 << 20];
    let va = (buf.as_ptr() as u64).next_multiple_of(4096);
    let mut m = v::VfioDmaMap {
        argsz: 32,
        flags: v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE,
        vaddr: va,
        iova: 0x10_0000,
        size: 1 << 20,
    };
    f.ioctl(c, v::VFIO_IOMMU_MAP_DMA, p(&mut m)).unwrap();
    assert_eq!(
        f.ioctl(c, v::VFIO_IOMMU_MAP_DMA, p(&mut m)),
        Err(Errno::EEXIST)
    );
    for (what, mut bad, errno) in [
        (
            "short argsz",
            v::VfioDmaMap { argsz: 16, ..m },
            Errno::EINVAL,
        ),
        (
            "unknown flag",
            v::VfioDmaMap {
                flags: 1 << 9,
                iova: 0x4000_0000,
                ..m
            },
            Errno::EINVAL,
        ),
        (
            "unaligned iova",
            v::VfioDmaMap {
                iova: 0x4000_0800,
                ..m
            },
            Errno::EINVAL,
        ),
        (
            "zero size",
            v::VfioDmaMap {
                iova: 0x4000_0000,
                size: 0,
                ..m
            },
            Errno::EINVAL,
        ),
        (
            "MSI window",
            v::VfioDmaMap {
                iova: 0xfee0_0000,
                size: 4096,
                ..m
            },
            Errno::EINVAL,
        ),
        (
            "unmapped memory",
            v::VfioDmaMap {
                iova: 0x4000_0000,
                vaddr: 0x1000,
                size: 4096,
                ..m
            },
            Errno::EFAULT,
        ),
    ] {
        assert_eq!(
            f.ioctl(c, v::VFIO_IOMMU_MAP_DMA, p(&mut bad)),
            Err(errno),
            "{what}"
        );
    }
    // type1v2 does not split a mapping.
    let mut u = v::VfioDmaUnmap {
        argsz: 24,
        flags: 0,
        iova: 0x10_0000,
        size: 4096,
    };
    assert_eq!(
        f.ioctl(c, v::VFIO_IOMMU_UNMAP_DMA, p(&mut u)),
        Err(Errno::EINVAL)
    );
    let mut all = v::VfioDmaUnmap {
        argsz: 24,
        flags: v::VFIO_DMA_UNMAP_FLAG_ALL,
        iova: 1,
        size: 0,
    };
    assert_eq!(
        f.ioctl(c, v::VFIO_IOMMU_UNMAP_DMA, p(&mut all)),
        Err(Errno::EINVAL)
    );
    u.size = 1 << 20;
    f.ioctl(c, v::VFIO_IOMMU_UNMAP_DMA, p(&mut u)).unwrap();
    assert_eq!(u.size, 1 << 20, "bytes unmapped");
    // GET_INFO with a capability chain: too small says how much it needs.
    let mut info = [0u64; 32];
    info[0] = 16; // argsz 16, flags 0
    f.ioctl(c, v::VFIO_IOMMU_GET_INFO, info.as_mut_ptr() as usize)
        .unwrap();
    let flags = (info[0] >> 32) as u32;
    assert!(flags & v::VFIO_IOMMU_INFO_PGSIZES != 0);
    info[0] = 24;
    f.ioctl(c, v::VFIO_IOMMU_GET_INFO, info.as_mut_ptr() as usize)
        .unwrap();
    let needed = info[0] as u32;
    assert!(needed > 24, "the chain needs {needed} bytes");
    info[0] = u64::from(needed);
    f.ioctl(c, v::VFIO_IOMMU_GET_INFO, info.as_mut_ptr() as usize)
        .unwrap();
    let cap_offset = info[2] as u32;
    assert_eq!(cap_offset, 24);
    let cap_id = info[3] as u16;
    assert_eq!(cap_id, v::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
}

#[test]
fn device_fd_regions_irqs_and_region_access() {
    let (f, _dir) = front();
    let (_c, _g, d) = legacy(&f);
    let mut info = v::VfioDeviceInfo {
        argsz: 24,
        ..Default::default()
    };
    f.ioctl(d, v::VFIO_DEVICE_GET_INFO, p(&mut info)).unwrap();
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    assert_eq!(
        info.flags,
        v::VFIO_DEVICE_FLAGS_PCI | v::VFIO_DEVICE_FLAGS_RESET
    );
    let mut r = v::VfioRegionInfo {
        argsz: 32,
        index: 9,
        ..Default::default()
    };
    assert_eq!(
        f.ioctl(d, v::VFIO_DEVICE_GET_REGION_INFO, p(&mut r)),
        Err(Errno::EINVAL)
    );
    r = v::VfioRegionInfo {
        argsz: 16,
        index: 2,
        ..Default::default()
    };
    assert_eq!(
        f.ioctl(d, v::VFIO_DEVICE_GET_REGION_INFO, p(&mut r)),
        Err(Errno::EINVAL)
    );
    r = v::VfioRegionInfo {
        argsz: 32,
        index: 2,
        ..Default::default()
    };
    f.ioctl(d, v::VFIO_DEVICE_GET_REGION_INFO, p(&mut r))
        .unwrap();
    assert_eq!(r.size, 4 << 20);
    assert_eq!(r.offset, 2 << 40);
    assert_eq!(r.flags, 0x7, "READ | WRITE | MMAP");
    // BAR0 holds the MSI-X table and may be mapped whole: a capability
    // chain with MSIX_MAPPABLE, and a short argsz learns its size.
    r = v::VfioRegionInfo {
        argsz: 32,
        index: 0,
        ..Default::default()
    };
    f.ioctl(d, v::VFIO_DEVICE_GET_REGION_INFO, p(&mut r))
        .unwrap();
    assert!(r.flags & v::VFIO_REGION_INFO_FLAG_CAPS != 0 && r.argsz == 40 && r.cap_offset == 0);
    let mut big = [0u64; 16];
    big[0] = u64::from(r.argsz); // argsz, flags 0
    big[1] = 0; // index 0
    f.ioctl(d, v::VFIO_DEVICE_GET_REGION_INFO, big.as_mut_ptr() as usize)
        .unwrap();
    assert_eq!(big[1] >> 32, 32, "cap_offset");
    assert_eq!(big[4] as u16, v::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE);
    assert_eq!(big[4] >> 32, 0, "last capability");
    // Config space: vendor through pread; COMMAND.MEM off makes BAR reads EIO.
    let cfg = (v::VFIO_PCI_CONFIG_REGION_INDEX as i64) << 40;
    let mut vendor = [0u8; 2];
    f.pread(d, vendor.as_mut_ptr() as usize, 2, cfg).unwrap();
    assert_eq!(u16::from_le_bytes(vendor), 0x1234);
    let mut word = [0u8; 8];
    let bar2 = 2i64 << 40;
    f.pread(d, word.as_mut_ptr() as usize, 8, bar2).unwrap();
    assert_eq!(f.pread(d, 8, 8, bar2), Err(Errno::EFAULT), "bad buffer");
    assert_eq!(
        f.pread(d, word.as_mut_ptr() as usize, 8, bar2 + (4 << 20)),
        Err(Errno::EINVAL)
    );
    let off = [0u8; 2];
    f.pwrite(d, off.as_ptr() as usize, 2, cfg + 4).unwrap();
    assert_eq!(
        f.pread(d, word.as_mut_ptr() as usize, 8, bar2),
        Err(Errno::EIO)
    );
    let on = 2u16.to_le_bytes();
    f.pwrite(d, on.as_ptr() as usize, 2, cfg + 4).unwrap();
    f.pread(d, word.as_mut_ptr() as usize, 8, bar2).unwrap();
    // IRQ info and SET_IRQS: DATA_NONE|TRIGGER fires the eventfd at once.
    let mut irq = v::VfioIrqInfo {
        argsz: 16,
        index: v::VFIO_PCI_MSIX_IRQ_INDEX,
        ..Default::default()
    };
    f.ioctl(d, v::VFIO_DEVICE_GET_IRQ_INFO, p(&mut irq))
        .unwrap();
    assert!(irq.count >= 1 && irq.flags & v::VFIO_IRQ_INFO_EVENTFD != 0);
    irq.index = 5;
    assert_eq!(
        f.ioctl(d, v::VFIO_DEVICE_GET_IRQ_INFO, p(&mut irq)),
        Err(Errno::EINVAL)
    );
    let efd = eventfd();
    let mut set = set_one(v::VFIO_PCI_MSIX_IRQ_INDEX, efd);
    f.ioctl(d, v::VFIO_DEVICE_SET_IRQS, p(&mut set)).unwrap();
    // MSI while MSI-X is enabled: refused.
    set.hdr.index = v::VFIO_PCI_MSI_IRQ_INDEX;
    assert_eq!(
        f.ioctl(d, v::VFIO_DEVICE_SET_IRQS, p(&mut set)),
        Err(Errno::EINVAL)
    );
    set.hdr.index = v::VFIO_PCI_MSIX_IRQ_INDEX;
    set.hdr.count = 99;
    assert_eq!(
        f.ioctl(d, v::VFIO_DEVICE_SET_IRQS, p(&mut set)),
        Err(Errno::EINVAL),
        "past the vectors"
    );
    set.hdr.count = 1;
    set.hdr.flags =
        v::VFIO_IRQ_SET_DATA_EVENTFD | v::VFIO_IRQ_SET_DATA_BOOL | v::VFIO_IRQ_SET_ACTION_TRIGGER;
    assert_eq!(
        f.ioctl(d, v::VFIO_DEVICE_SET_IRQS, p(&mut set)),
        Err(Errno::EINVAL),
        "two data types"
    );
    set.hdr = v::VfioIrqSet {
        argsz: 20,
        flags: v::VFIO_IRQ_SET_DATA_NONE | v::VFIO_IRQ_SET_ACTION_TRIGGER,
        index: v::VFIO_PCI_MSIX_IRQ_INDEX,
        start: 0,
        count: 1,
    };
    f.ioctl(d, v::VFIO_DEVICE_SET_IRQS, p(&mut set)).unwrap();
    assert_eq!(
        eventfd_count(efd),
        1,
        "the eventfd fired before the ioctl returned"
    );
    assert_eq!(f.ioctl(d, v::VFIO_DEVICE_RESET, 0), Ok(0));
    assert_eq!(f.ioctl(d, 0x3b99, 0), Err(Errno::ENOTTY));
}

#[test]
fn iommufd_ioas_and_the_cdev_bind_attach() {
    let (f, _dir) = front();
    let i = f.open("/dev/iommu", 0).unwrap();
    let d = f.open("/dev/vfio/devices/vfio0", 0).unwrap();
    let mut info = v::VfioDeviceInfo {
        argsz: 24,
        ..Default::default()
    };
    assert_eq!(
        f.ioctl(d, v::VFIO_DEVICE_GET_INFO, p(&mut info)),
        Err(Errno::EINVAL),
        "a cdev must be bound first"
    );
    let mut bind = v::VfioDeviceBindIommufd {
        argsz: 16,
        flags: 0,
        iommufd: d,
        out_devid: 0,
        ..Default::default()
    };
    assert_eq!(
        f.ioctl(d, v::VFIO_DEVICE_BIND_IOMMUFD, p(&mut bind)),
        Err(Errno::EBADF)
    );
    bind.iommufd = i;
    f.ioctl(d, v::VFIO_DEVICE_BIND_IOMMUFD, p(&mut bind))
        .unwrap();
    let mut alloc = ifd::IommuIoasAlloc {
        size: 12,
        flags: 0,
        out_ioas_id: 0,
    };
    f.ioctl(i, ifd::IOMMU_IOAS_ALLOC, p(&mut alloc)).unwrap();
    let ioas = alloc.out_ioas_id;
    alloc.flags = 1;
    assert_eq!(
        f.ioctl(i, ifd::IOMMU_IOAS_ALLOC, p(&mut alloc)),
        Err(Errno::EOPNOTSUPP)
    );
    let mut attach = v::VfioDeviceAttachIommufdPt {
        argsz: 12,
        flags: 0,
        pt_id: 999,
        ..Default::default()
    };
    assert_eq!(
        f.ioctl(d, v::VFIO_DEVICE_ATTACH_IOMMUFD_PT, p(&mut attach)),
        Err(Errno::ENOENT)
    );
    attach.pt_id = ioas;
    f.ioctl(d, v::VFIO_DEVICE_ATTACH_IOMMUFD_PT, p(&mut attach))
        .unwrap();
    f.ioctl(d, v::VFIO_DEVICE_GET_INFO, p(&mut info)).unwrap();
    // IOVA ranges: too small an array is EMSGSIZE with the count.
    let mut ranges = [ifd::IommuIovaRange::default(); 4];
    let mut q = ifd::IommuIoasIovaRanges {
        size: 32,
        ioas_id: ioas,
        num_iovas: 0,
        __reserved: 0,
        allowed_iovas: ranges.as_mut_ptr() as u64,
        out_iova_alignment: 0,
    };
    assert_eq!(
        f.ioctl(i, ifd::IOMMU_IOAS_IOVA_RANGES, p(&mut q)),
        Err(Errno::EMSGSIZE)
    );
    assert_eq!(q.num_iovas, 2);
    f.ioctl(i, ifd::IOMMU_IOAS_IOVA_RANGES, p(&mut q)).unwrap();
    assert_eq!(ranges[0].start, 0);
    // Map: automatic IOVA, then fixed, overlap, overflow.
    let buf = vec![0u8; 3 << 20];
    let va = (buf.as_ptr() as u64).next_multiple_of(4096);
    let mut m = ifd::IommuIoasMap {
        size: 40,
        flags: ifd::IOMMU_IOAS_MAP_READABLE | ifd::IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        __reserved: 0,
        user_va: va,
        length: 1 << 20,
        iova: 0,
    };
    f.ioctl(i, ifd::IOMMU_IOAS_MAP, p(&mut m)).unwrap();
    let auto = m.iova;
    assert!(auto != 0 && auto % 4096 == 0);
    m.flags |= ifd::IOMMU_IOAS_MAP_FIXED_IOVA;
    assert_eq!(
        f.ioctl(i, ifd::IOMMU_IOAS_MAP, p(&mut m)),
        Err(Errno::EEXIST)
    );
    m.iova = u64::MAX - 4095;
    assert_eq!(
        f.ioctl(i, ifd::IOMMU_IOAS_MAP, p(&mut m)),
        Err(Errno::EOVERFLOW)
    );
    m.iova = 0x4000_0000;
    m.ioas_id = 777;
    assert_eq!(
        f.ioctl(i, ifd::IOMMU_IOAS_MAP, p(&mut m)),
        Err(Errno::ENOENT)
    );
    let mut destroy = ifd::IommuDestroy { size: 8, id: ioas };
    assert_eq!(
        f.ioctl(i, ifd::IOMMU_DESTROY, p(&mut destroy)),
        Err(Errno::EBUSY),
        "attached"
    );
    let mut u = ifd::IommuIoasUnmap {
        size: 24,
        ioas_id: ioas,
        iova: 0,
        length: u64::MAX,
    };
    f.ioctl(i, ifd::IOMMU_IOAS_UNMAP, p(&mut u)).unwrap();
    assert_eq!(u.length, 1 << 20);
    u = ifd::IommuIoasUnmap {
        size: 24,
        ioas_id: ioas,
        iova: auto,
        length: 4096,
    };
    assert_eq!(
        f.ioctl(i, ifd::IOMMU_IOAS_UNMAP, p(&mut u)),
        Err(Errno::ENOENT)
    );
    destroy.id = 4242;
    assert_eq!(
        f.ioctl(i, ifd::IOMMU_DESTROY, p(&mut destroy)),
        Err(Errno::ENOENT)
    );
}

#[test]
fn bar_mmap_is_a_revocable_barmap_mapping() {
    let (f, _dir) = front();
    let (_c, _g, d) = legacy(&f);
    let len = 1 << 20;
    assert_eq!(
        f.mmap(0, len, libc::PROT_READ, libc::MAP_PRIVATE, d, 2 << 40),
        Err(Errno::EINVAL),
        "private mapping"
    );
    assert_eq!(
        f.mmap(0, len, libc::PROT_READ, libc::MAP_SHARED, d, 7 << 40),
        Err(Errno::EINVAL),
        "config space is not mmappable"
    );
    assert_eq!(
        f.mmap(0, 8 << 20, libc::PROT_READ, libc::MAP_SHARED, d, 2 << 40),
        Err(Errno::EINVAL),
        "past the BAR"
    );
    assert_eq!(
        f.mmap(
            0,
            0x2000,
            libc::PROT_READ,
            libc::MAP_SHARED,
            d,
            (5 << 40) | 0x1000
        ),
        Err(Errno::EINVAL),
        "BAR5 may not be mmapped"
    );
    let a = f
        .mmap(
            0,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            d,
            2 << 40,
        )
        .unwrap();
    // SAFETY: a live read-write mapping of `len` bytes.
    unsafe { (a as *mut u64).write_volatile(0xfeed) };
    let cfg = (v::VFIO_PCI_CONFIG_REGION_INDEX as i64) << 40;
    let off = [0u8; 2];
    f.pwrite(d, off.as_ptr() as usize, 2, cfg + 4).unwrap();
    // SAFETY: the touch module turns the SIGBUS into an error.
    let revoked = unsafe { barmap::touch::read_u64(a as *const u64) };
    assert_eq!(revoked, Err(barmap::touch::Fault::Sigbus));
    let on = 2u16.to_le_bytes();
    f.pwrite(d, on.as_ptr() as usize, 2, cfg + 4).unwrap();
    // SAFETY: as above.
    assert_eq!(
        unsafe { barmap::touch::read_u64(a as *const u64) },
        Ok(0xfeed)
    );
    // SAFETY: the program's own munmap of its mapping.
    assert_eq!(unsafe { libc::munmap(a as *mut libc::c_void, len) }, 0);
    f.munmapped(a, len);
}

#[test]
fn device_dma_goes_through_the_iommu_table_with_its_permissions() {
    let (f, _dir) = front();
    let (c, _g, _d) = legacy(&f);
    let dev = f.devices().pop().unwrap();
    let mut buf = vec![0u8; 4 * 4096];
    let va = (buf.as_mut_ptr() as u64).next_multiple_of(4096);
    let mut m = v::VfioDmaMap {
        argsz: 32,
        flags: v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE,
        vaddr: va,
        iova: 0x10_0000,
        size: 4096,
    };
    f.ioctl(c, v::VFIO_IOMMU_MAP_DMA, p(&mut m)).unwrap();
    m.flags = v::VFIO_DMA_MAP_FLAG_READ;
    m.vaddr = va + 4096;
    m.iova = 0x20_0000;
    f.ioctl(c, v::VFIO_IOMMU_MAP_DMA, p(&mut m)).unwrap();
    dev.dma_write(0x10_0010, b"barmap").unwrap();
    // SAFETY: the buffer is ours; the device wrote through its mapping.
    let seen = unsafe { std::slice::from_raw_parts((va + 0x10) as *const u8, 6) };
    assert_eq!(seen, b"barmap");
    let mut back = [0u8; 6];
    dev.dma_read(0x10_0010, &mut back).unwrap();
    assert_eq!(&back, b"barmap");
    use barmap_front::device::IommuFault;
    assert_eq!(
        dev.dma_write(0x20_0000, b"x"),
        Err(IommuFault::Permission {
            iova: 0x20_0000,
            write: true
        })
    );
    assert_eq!(
        dev.dma_read(0x30_0000, &mut back),
        Err(IommuFault::Unmapped {
            iova: 0x30_0000,
            len: 6
        })
    );
    assert_eq!(
        dev.dma_read(0x10_0ffc, &mut back),
        Err(IommuFault::Unmapped {
            iova: 0x10_0ffc,
            len: 6
        }),
        "crosses the end of the mapping"
    );
    // The next IOVA page mapped on its own, from a process page that does
    // not follow: one access runs across both (DPDK without huge pages
    // maps every page on its own, and its buffers cross pages).
    m.flags = v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE;
    m.vaddr = va + 2 * 4096;
    m.iova = 0x10_1000;
    f.ioctl(c, v::VFIO_IOMMU_MAP_DMA, p(&mut m)).unwrap();
    dev.dma_write(0x10_0ffd, b"across").unwrap();
    // SAFETY: as above.
    let (end, start) = unsafe {
        (
            std::slice::from_raw_parts((va + 0xffd) as *const u8, 3),
            std::slice::from_raw_parts((va + 2 * 4096) as *const u8, 3),
        )
    };
    assert_eq!((end, start), (&b"acr"[..], &b"oss"[..]));
    dev.dma_read(0x10_0ffd, &mut back).unwrap();
    assert_eq!(&back, b"across");
    assert_eq!(
        dev.dma_read(0x10_1ffc, &mut back),
        Err(IommuFault::Unmapped {
            iova: 0x10_1ffc,
            len: 6
        }),
        "runs past the last of the two"
    );
}
