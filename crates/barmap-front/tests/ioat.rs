//! `--device ioat` through the VFIO uAPI, in this process: the 4096-byte
//! config space with CHANERR_INT, MSI-X vectors unmasked by
//! `VFIO_DEVICE_SET_IRQS` as the host kernel does, a copy through the
//! container's IOMMU table (in place) with its completion interrupt, and a
//! copy to a read-only IOVA halting the channel.

use std::time::{Duration, Instant};

use barmap_front::Front;
use barmap_models::ioat::{self, cfg, chan, Descriptor};
use barmap_vfio::uapi as v;

mod common;
use common::{eventfd_count, p, trigger_eventfd, Dir};

/// A front end with one ioat, its container (type1v2) and device fd.
fn ioat_dev() -> (Front, Dir, i32, i32) {
    common::one_device("ioat")
}

const BAR0: i64 = 0;
const CONFIG: i64 = (v::VFIO_PCI_CONFIG_REGION_INDEX as i64) << v::VFIO_PCI_OFFSET_SHIFT;

fn rd(f: &Front, d: i32, off: i64, len: usize) -> u64 {
    let mut x = 0u64;
    assert_eq!(f.pread(d, p(&mut x), len, off), Ok(len as i64));
    x
}

fn wr(f: &Front, d: i32, off: i64, mut x: u64, len: usize) {
    assert_eq!(f.pwrite(d, p(&mut x), len, off), Ok(len as i64));
}

fn ch(off: u64) -> i64 {
    BAR0 + (ioat::CHANNEL + off) as i64
}

fn wait(f: &Front, d: i32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = rd(f, d, ch(chan::CHANSTS), 8) & ioat::CHANSTS_STATUS;
        if s != ioat::CHANSTS_ACTIVE {
            return s;
        }
        assert!(Instant::now() < deadline, "the channel stayed active");
        std::thread::yield_now();
    }
}

#[test]
fn ioat_copies_through_the_iommu_table_and_interrupts_by_msix() {
    let (f, _dir, c, d) = ioat_dev();
    // Config space: 4096 bytes, CHANERR_INT readable at 0x180.
    let mut r = v::VfioRegionInfo {
        argsz: std::mem::size_of::<v::VfioRegionInfo>() as u32,
        index: v::VFIO_PCI_CONFIG_REGION_INDEX,
        ..Default::default()
    };
    f.ioctl(d, v::VFIO_DEVICE_GET_REGION_INFO, p(&mut r))
        .unwrap();
    assert_eq!(r.size, 4096);
    assert_eq!(rd(&f, d, CONFIG, 4), 0x2021_8086);
    assert_eq!(rd(&f, d, CONFIG + cfg::CHANERR_INT as i64, 4), 0);
    assert_eq!(rd(&f, d, BAR0 + ioat::reg::VER as i64, 1), 0x33);
    // MSI-X vector 0 with an eventfd: the host unmasks it in the table.
    let efd = trigger_eventfd(&f, d, v::VFIO_PCI_MSIX_IRQ_INDEX);
    let count = || eventfd_count(efd);
    // Memory and bus master on; a read-write window and a read-only page.
    wr(&f, d, CONFIG + 4, 0x6, 2);
    let mut buf = vec![0u8; 5 * 4096];
    let va = (buf.as_mut_ptr() as u64).next_multiple_of(4096);
    for (iova, at, size, flags) in [
        (
            0x10_0000u64,
            va,
            3 * 4096u64,
            v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE,
        ),
        (0x20_0000, va + 3 * 4096, 4096, v::VFIO_DMA_MAP_FLAG_READ),
    ] {
        let mut m = v::VfioDmaMap {
            argsz: 32,
            flags,
            vaddr: at,
            iova,
            size,
        };
        f.ioctl(c, v::VFIO_IOMMU_MAP_DMA, p(&mut m)).unwrap();
    }
    let put = |at: u64, data: &[u8]| {
        // SAFETY: inside `buf`, which lives to the end of the test.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), (va + at) as *mut u8, data.len()) };
    };
    let get = |at: u64, len: usize| {
        // SAFETY: inside `buf`.
        unsafe { std::slice::from_raw_parts((va + at) as *const u8, len) }.to_vec()
    };
    let start = |desc: Descriptor| {
        put(0, &desc.to_bytes());
        wr(&f, d, ch(chan::CHANCMD), u64::from(ioat::CHANCMD_RESET), 1);
        wr(&f, d, ch(chan::CHAINADDR), 0x10_0000, 8);
        let ctl = ioat::CHANCTRL_INT_REARM | ioat::CHANCTRL_ANY_ERR_ABORT_EN;
        wr(&f, d, ch(chan::CHANCTRL), u64::from(ctl), 2);
        wr(&f, d, ch(chan::DMACOUNT), 1, 2);
    };
    wr(
        &f,
        d,
        BAR0 + ioat::reg::INTRCTRL as i64,
        u64::from(ioat::INTRCTRL_MSIX_VECTOR_CONTROL),
        1,
    );
    put(0x1000, &[0xcd; 4096]);
    start(Descriptor {
        size: 4096,
        ctl: ioat::DESC_INT_EN,
        src: 0x10_1000,
        dst: 0x10_2000,
        next: 0x10_0000,
    });
    assert_eq!(wait(&f, d), ioat::CHANSTS_DONE);
    assert_eq!(get(0x2000, 4096), vec![0xcd; 4096]);
    assert_eq!(count(), 1, "the completion interrupt reached the eventfd");
    // To the read-only page: halted, destination error, the page unchanged.
    start(Descriptor {
        size: 64,
        ctl: 0,
        src: 0x10_1000,
        dst: 0x20_0000,
        next: 0x10_0000,
    });
    assert_eq!(wait(&f, d), ioat::CHANSTS_HALTED);
    assert_eq!(
        rd(&f, d, ch(chan::CHANERR), 4),
        u64::from(ioat::CHANERR_DEST_ADDR)
    );
    assert_eq!(
        rd(&f, d, CONFIG + cfg::CHANERR_INT as i64, 4),
        u64::from(ioat::CHANERR_DEST_ADDR)
    );
    assert_eq!(get(3 * 4096, 64), vec![0; 64]);
    // Vector 0 without an eventfd again: masked, the interrupt only pends.
    let mut off = v::VfioIrqSet {
        argsz: 20,
        flags: v::VFIO_IRQ_SET_DATA_NONE | v::VFIO_IRQ_SET_ACTION_TRIGGER,
        index: v::VFIO_PCI_MSIX_IRQ_INDEX,
        start: 0,
        count: 0,
    };
    f.ioctl(d, v::VFIO_DEVICE_SET_IRQS, p(&mut off)).unwrap();
    let control = BAR0 + i64::from(ioat::MSIX_TABLE) + 12;
    assert_eq!(rd(&f, d, control, 4), 1, "masked again");
    // SAFETY: closing our eventfd.
    unsafe { libc::close(efd) };
    drop(buf);
}
