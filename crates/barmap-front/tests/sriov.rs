//! The SR-IOV capability in the config space of a physical function
//! (`--device MODEL,sriov=N`): found by walking the extended capability
//! list from 0x100, where it is alone (igb's config space has none;
//! ioat's has registers but no capability list, which keep working).

mod common;

use barmap_vfio::uapi as v;
use common::p;

const CONFIG: i64 = (v::VFIO_PCI_CONFIG_REGION_INDEX as i64) << v::VFIO_PCI_OFFSET_SHIFT;

fn rd32(f: &barmap_front::Front, d: i32, off: u32) -> u32 {
    let mut x = 0u32;
    assert_eq!(f.pread(d, p(&mut x), 4, CONFIG + i64::from(off)), Ok(4));
    x
}

/// The extended capabilities' (offset, ID), in list order.
fn ext_caps(f: &barmap_front::Front, d: i32) -> Vec<(u32, u16)> {
    let (mut at, mut out) = (0x100u32, Vec::new());
    while at >= 0x100 && out.len() < 64 {
        let h = rd32(f, d, at);
        if h == 0 {
            break;
        }
        out.push((at, h as u16));
        at = h >> 20;
    }
    out
}

#[test]
fn the_sriov_capability_leaves_a_models_extended_registers_working() {
    let (f, _dir, _c, d) = common::one_device("ioat,sriov=4");
    assert_eq!(ext_caps(&f, d), vec![(0x100, 0x10)]);
    // TotalVFs 4 (and InitialVFs), NumVFs 0, the VF device ID is the PF's.
    assert_eq!(rd32(&f, d, 0x100 + 0x0c), 4 << 16 | 4);
    assert_eq!(rd32(&f, d, 0x100 + 0x10), 0);
    let pf_device = rd32(&f, d, 0) >> 16;
    assert_eq!(rd32(&f, d, 0x100 + 0x18) >> 16, pf_device);
    // ioat's CHANERRMASK_INT (config 0x184) still reads back what is
    // written, and the capability ignores writes.
    let mask = barmap_models::ioat::cfg::CHANERRMASK_INT as i64;
    let mut x = 0x5a5a_0000u32;
    assert_eq!(f.pwrite(d, p(&mut x), 4, CONFIG + mask), Ok(4));
    assert_eq!(rd32(&f, d, mask as u32), 0x5a5a_0000);
    let mut y = 0xffff_ffffu32;
    assert_eq!(f.pwrite(d, p(&mut y), 4, CONFIG + 0x10c), Ok(4));
    assert_eq!(rd32(&f, d, 0x10c), 4 << 16 | 4);
}

#[test]
fn the_sriov_capability_alone_sits_at_0x100() {
    let (f, _dir, _c, d) = common::one_device("igb,sriov=2");
    let caps = ext_caps(&f, d);
    assert_eq!(caps, vec![(0x100, 0x10)]);
    assert_eq!(rd32(&f, d, 0x100 + 0x18) >> 16, 0x10ca);
    // First VF Offset and stride: the VF at 0000:bb:00.0 from ba:00.0.
    assert_eq!(rd32(&f, d, 0x100 + 0x14), 1 << 16 | 0x100);
}
