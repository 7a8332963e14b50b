//! `--device edu` through the VFIO uAPI, in this process: the device fd's
//! region and IRQ info as vfio-pci reports QEMU's edu, registers through
//! pread/pwrite and a trapped mmap, an MSI through the program's eventfd,
//! and DMA through the container's IOMMU table with its permissions.

use barmap_front::{Errno, Front};
use barmap_vfio::uapi as v;

mod common;
use common::{eventfd_count, p, trigger_eventfd, Dir};

/// A front end with one edu, its container (type1v2) and device fd.
fn edu() -> (Front, Dir, i32, i32) {
    common::one_device("edu")
}

const BAR0: i64 = 0;
const CONFIG: i64 = (v::VFIO_PCI_CONFIG_REGION_INDEX as i64) << v::VFIO_PCI_OFFSET_SHIFT;

fn rd32(f: &Front, d: i32, off: i64) -> Result<u32, Errno> {
    let mut x = 0u32;
    f.pread(d, p(&mut x), 4, off)?;
    Ok(x)
}

fn wr(f: &Front, d: i32, off: i64, mut x: u64, len: usize) {
    assert_eq!(f.pwrite(d, p(&mut x), len, off), Ok(len as i64));
}

#[test]
fn edu_regions_and_irqs_are_reported_as_vfio_pci_reports_qemus_edu() {
    let (f, _dir, _c, d) = edu();
    let mut r = v::VfioRegionInfo {
        argsz: std::mem::size_of::<v::VfioRegionInfo>() as u32,
        index: 0,
        ..Default::default()
    };
    f.ioctl(d, v::VFIO_DEVICE_GET_REGION_INFO, p(&mut r))
        .unwrap();
    assert_eq!(r.size, 1 << 20);
    assert_eq!(
        r.flags,
        v::VFIO_REGION_INFO_FLAG_READ
            | v::VFIO_REGION_INFO_FLAG_WRITE
            | v::VFIO_REGION_INFO_FLAG_MMAP,
        "no capability chain: edu has no MSI-X table"
    );
    for (index, count) in [
        (v::VFIO_PCI_INTX_IRQ_INDEX, 1),
        (v::VFIO_PCI_MSI_IRQ_INDEX, 1),
        (v::VFIO_PCI_MSIX_IRQ_INDEX, 0),
    ] {
        let mut q = v::VfioIrqInfo {
            argsz: 16,
            index,
            ..Default::default()
        };
        f.ioctl(d, v::VFIO_DEVICE_GET_IRQ_INFO, p(&mut q)).unwrap();
        assert_eq!(q.count, count, "index {index}");
    }
    assert_eq!(rd32(&f, d, CONFIG), Ok(0x11e8_1234));
    let sysfs =
        std::fs::read_to_string(_dir.0.join("sys/bus/pci/devices/0000:ba:00.0/device")).unwrap();
    assert_eq!(sysfs, "0x11e8\n");
}

#[test]
fn edu_registers_answer_through_pread_pwrite_and_the_mapping() {
    let (f, _dir, _c, d) = edu();
    assert_eq!(rd32(&f, d, BAR0), Ok(0x0100_00ed));
    wr(&f, d, BAR0 + 4, 0x1357_9bdf, 4);
    assert_eq!(rd32(&f, d, BAR0 + 4), Ok(!0x1357_9bdf));
    let at = f
        .mmap(
            0,
            1 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            d,
            BAR0,
        )
        .unwrap();
    // SAFETY: registers inside the live BAR0 mapping; each access traps.
    unsafe {
        assert_eq!(
            std::ptr::read_volatile((at + 4) as *const u32),
            !0x1357_9bdf
        );
        std::ptr::write_volatile((at + 8) as *mut u32, 7);
        assert_eq!(std::ptr::read_volatile((at + 8) as *const u32), 5040);
    }
    // Memory off: the region access fails with EIO, as vfio-pci's.
    let mut cmd = 0u16;
    f.pread(d, p(&mut cmd), 2, CONFIG + 4).unwrap();
    wr(&f, d, CONFIG + 4, u64::from(cmd & !2), 2);
    assert_eq!(rd32(&f, d, BAR0), Err(Errno::EIO));
    wr(&f, d, CONFIG + 4, u64::from(cmd | 2), 2);
    assert_eq!(rd32(&f, d, BAR0), Ok(0x0100_00ed));
    // A reset puts the registers back.
    f.ioctl(d, v::VFIO_DEVICE_RESET, 0).unwrap();
    assert_eq!(rd32(&f, d, BAR0 + 8), Ok(0));
}

#[test]
fn edu_interrupts_reach_the_programs_eventfd_and_dma_honours_the_iommu_table() {
    let (f, _dir, c, d) = edu();
    let efd = trigger_eventfd(&f, d, v::VFIO_PCI_MSI_IRQ_INDEX);
    let count = || eventfd_count(efd);
    wr(&f, d, BAR0 + 0x60, 0x40, 4);
    assert_eq!(count(), 1, "MSI delivered");
    wr(&f, d, BAR0 + 0x64, 0x40, 4);
    // Bus master on, two pages: one read-write at 0x10_0000, one read-only
    // at 0x20_0000.
    let mut cmd = 0u16;
    f.pread(d, p(&mut cmd), 2, CONFIG + 4).unwrap();
    wr(&f, d, CONFIG + 4, u64::from(cmd | 4), 2);
    let mut buf = vec![0u8; 3 * 4096];
    let va = (buf.as_mut_ptr() as u64).next_multiple_of(4096);
    for (iova, at, flags) in [
        (
            0x10_0000,
            va,
            v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE,
        ),
        (0x20_0000, va + 4096, v::VFIO_DMA_MAP_FLAG_READ),
    ] {
        let mut m = v::VfioDmaMap {
            argsz: 32,
            flags,
            vaddr: at,
            iova,
            size: 4096,
        };
        f.ioctl(c, v::VFIO_IOMMU_MAP_DMA, p(&mut m)).unwrap();
    }
    let ro = |i: usize| {
        // SAFETY: inside `buf`, which lives to the end of the test.
        unsafe { std::ptr::read_volatile((va as usize + 4096 + i) as *const u8) }
    };
    // SAFETY: inside `buf`.
    unsafe { std::ptr::write_bytes((va + 4096) as *mut u8, 0xab, 64) };
    // Read-only page to edu, then edu to the read-write page.
    for (src, dst, cmd) in [
        (0x20_0000u64, 0x40000u64, 1u64),
        (0x40000, 0x10_0000, 1 | 2 | 4),
    ] {
        wr(&f, d, BAR0 + 0x80, src, 8);
        wr(&f, d, BAR0 + 0x88, dst, 8);
        wr(&f, d, BAR0 + 0x90, 64, 8);
        wr(&f, d, BAR0 + 0x98, cmd, 8);
    }
    // SAFETY: inside `buf`.
    let rw = unsafe { std::slice::from_raw_parts(va as *const u8, 64) };
    assert!(
        rw.iter().all(|&b| b == 0xab),
        "round trip through the IOMMU"
    );
    assert_eq!(count(), 1, "DMA completion interrupt");
    // edu to the read-only page: an IOMMU fault, the page unchanged.
    wr(&f, d, BAR0 + 0x80, 0x40000, 8);
    // SAFETY: inside `buf`.
    unsafe { std::ptr::write_bytes(va as *mut u8, 0x11, 64) };
    wr(&f, d, BAR0 + 0x80, 0x10_0000, 8);
    wr(&f, d, BAR0 + 0x88, 0x40000, 8);
    wr(&f, d, BAR0 + 0x98, 1, 8); // edu now holds 0x11s
    wr(&f, d, BAR0 + 0x80, 0x40000, 8);
    wr(&f, d, BAR0 + 0x88, 0x20_0000, 8);
    wr(&f, d, BAR0 + 0x98, 1 | 2, 8);
    assert!(
        (0..64).all(|i| ro(i) == 0xab),
        "a read-only IOVA is never written"
    );
    // An unmapped IOVA: nothing happens to the program.
    wr(&f, d, BAR0 + 0x88, 0x90_0000, 8);
    wr(&f, d, BAR0 + 0x98, 1 | 2, 8);
    assert_eq!(
        rd32(&f, d, BAR0),
        Ok(0x0100_00ed),
        "the device still answers"
    );
    // SAFETY: closing our eventfd.
    unsafe { libc::close(efd) };
    drop(buf);
}
