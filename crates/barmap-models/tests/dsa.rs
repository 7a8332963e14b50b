//! The DSA model through the device-model API: identity, commands and
//! their errors, descriptors submitted by 64-byte stores to the portals
//! (memmove, batch), completion records written by DMA, page faults that
//! complete partially with the faulting address, and software errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use barmap::device::pci;
use barmap_models::dsa::{self, cmd, cmdsts, flag, op, reg, status, Descriptor};
use barmap_models::{IrqIndex, ModelDevice, Store64, Width};

mod common;
use common::Window;

/// The IOVA of the test's one window of memory.
const WINDOW: u64 = 0x10_0000;
/// Its size.
const WINDOW_LEN: usize = 1 << 20;
/// The source buffer.
const SRC: u64 = WINDOW + 0x1000;
/// The destination buffer.
const DST: u64 = WINDOW + 0x4_0000;
/// Completion records.
const CMP: u64 = WINDOW + 0x800;
/// A batch's descriptor list.
const LIST: u64 = WINDOW + 0x8_0000;
/// An IOVA nothing maps.
const UNMAPPED: u64 = 0x4000_0000;

fn dsa_device() -> (ModelDevice, Arc<Window>) {
    let model = barmap_models::by_name("dsa", &[]).unwrap();
    let dev = ModelDevice::builder_boxed(model).build().unwrap();
    let host = Window::new(WINDOW, WINDOW_LEN);
    dev.set_host(host.clone());
    let cmd = dev.device().command() | pci::COMMAND_MASTER;
    dev.write_config(pci::COMMAND, &cmd.to_le_bytes()).unwrap();
    (dev, host)
}

fn rd(dev: &ModelDevice, off: u64, w: Width) -> u64 {
    dev.read_register(0, off, w).unwrap()
}

fn wr(dev: &ModelDevice, off: u64, w: Width, v: u64) {
    dev.write_register(0, off, w, v).unwrap()
}

fn command(dev: &ModelDevice, code: u32, operand: u32) -> u32 {
    wr(dev, reg::CMD, Width::B4, u64::from(code << 20 | operand));
    rd(dev, reg::CMDSTS, Width::B4) as u32
}

/// The selftest driver's configuration: work queue `wq` (dedicated or
/// shared, 16 entries) in group 0 with engine 0.
fn configure(dev: &ModelDevice, wq: u64, dedicated: bool) {
    let at = dsa::WQCFG + 64 * wq;
    wr(dev, at, Width::B4, 16);
    wr(dev, at + 8, Width::B4, u64::from(dedicated) | 1 << 4);
    wr(dev, at + 12, Width::B4, 16 | 10 << 5);
    let wqs = rd(dev, dsa::GRPCFG, Width::B8);
    wr(dev, dsa::GRPCFG, Width::B8, wqs | 1 << wq);
    wr(dev, dsa::GRPCFG + 32, Width::B8, 1);
}

fn enabled(dev: &ModelDevice) {
    assert_eq!(command(dev, cmd::RESET_DEVICE, 0), 0);
    configure(dev, 0, true);
    assert_eq!(command(dev, cmd::ENABLE_DEVICE, 0), 0);
    assert_eq!(command(dev, cmd::ENABLE_WQ, 0), 0);
}

fn memmove(src: u64, dst: u64, size: u32, completion: u64) -> Descriptor {
    Descriptor {
        flags: flag::CRAV | flag::RCR,
        opcode: op::MEMMOVE,
        completion,
        src,
        dst,
        size,
        int_handle: 0,
    }
}

fn submit(dev: &ModelDevice, wq: u64, d: &Descriptor, how: Store64) -> bool {
    dev.write64(2, wq * 4 * dsa::PORTAL_SIZE, &d.to_bytes(), how)
        .unwrap()
}

/// Waits for the completion record at `at`: (status, bytes or
/// descriptors completed, fault address).
fn record(host: &Window, at: u64) -> (u8, u32, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = host.get(at, 32);
        if r[0] != 0 {
            let bytes = u32::from_le_bytes(r[4..8].try_into().unwrap());
            let addr = u64::from_le_bytes(r[8..16].try_into().unwrap());
            return (r[0], bytes, addr);
        }
        assert!(Instant::now() < deadline, "no completion record");
        std::thread::yield_now();
    }
}

#[test]
fn dsa_identity_and_device_ids_are_those_the_selftest_driver_accepts() {
    let (dev, _) = dsa_device();
    let mut id = [0u8; 4];
    dev.read_config(0, &mut id).unwrap();
    assert_eq!(id, [0x86, 0x80, 0x25, 0x0b], "8086:0b25");
    for (name, want) in [("11fb", 0x11fbu16), ("0x1212", 0x1212)] {
        let m = barmap_models::by_name("dsa", &[("id".into(), name.into())]).unwrap();
        assert_eq!(m.layout().device, want);
    }
    assert!(barmap_models::by_name("dsa", &[("id".into(), "0b26".into())]).is_err());
    assert!(barmap_models::by_name("dsa", &[("xfer".into(), "32".into())]).is_err());
}

#[test]
fn commands_check_their_order_and_the_configuration() {
    let (dev, _) = dsa_device();
    assert_eq!(command(&dev, cmd::ENABLE_WQ, 0), cmdsts::DEV_NOTEN);
    assert_eq!(command(&dev, cmd::DISABLE_DEVICE, 0), cmdsts::DIS_DEV_EN);
    assert_eq!(command(&dev, cmd::ENABLE_DEVICE, 0), 0);
    assert_eq!(command(&dev, cmd::ENABLE_DEVICE, 0), cmdsts::DEV_ENABLED);
    assert_eq!(command(&dev, cmd::ENABLE_WQ, 0), cmdsts::WQ_SIZE, "size 0");
    assert_eq!(command(&dev, cmd::ENABLE_WQ, 8), cmdsts::INVAL_WQIDX);
    assert_eq!(command(&dev, 31, 0), cmdsts::INVAL_CMD);
    assert_eq!(rd(&dev, reg::GENSTS, Width::B4) & 3, 1, "enabled");
    enabled(&dev);
    assert_eq!(command(&dev, cmd::ENABLE_WQ, 0), cmdsts::WQ_ENABLED);
    assert_eq!(
        rd(&dev, dsa::WQCFG + 24, Width::B4) >> 30,
        1,
        "WQ 0 enabled"
    );
    assert_eq!(command(&dev, cmd::RESET_DEVICE, 0), 0);
    assert_eq!(rd(&dev, reg::GENSTS, Width::B4) & 3, 0, "disabled");
    assert_eq!(rd(&dev, dsa::WQCFG, Width::B4), 0, "configuration reset");
}

#[test]
fn a_memmove_copies_by_dma_and_writes_its_completion_record_and_interrupt() {
    let (dev, host) = dsa_device();
    enabled(&dev);
    dev.set_msix_masked(1, false);
    let data: Vec<u8> = (0..0x8000u32).map(|i| (i * 7) as u8).collect();
    host.put(SRC, &data);
    let mut d = memmove(SRC, DST, 0x8000, CMP);
    d.flags |= flag::RCI;
    d.int_handle = 1;
    assert!(submit(&dev, 0, &d, Store64::Movdir64b));
    assert_eq!(record(&host, CMP).0, status::SUCCESS);
    assert_eq!(host.get(DST, 0x8000), data);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host.take().contains(&(IrqIndex::Msix, 1)) {
        assert!(Instant::now() < deadline, "no interrupt on vector 1");
        std::thread::yield_now();
    }
    assert_eq!(rd(&dev, reg::SWERR, Width::B8) & 1, 0);
}

#[test]
fn a_page_fault_completes_partially_with_the_address_and_direction() {
    let (dev, host) = dsa_device();
    enabled(&dev);
    let end = WINDOW + WINDOW_LEN as u64;
    // The source runs 0x1000 bytes past the window: one page copied.
    assert!(submit(
        &dev,
        0,
        &memmove(end - 0x1000, DST, 0x3000, CMP),
        Store64::Movdir64b
    ));
    assert_eq!(record(&host, CMP), (status::PAGE_FAULT_NOBOF, 0x1000, end));
    host.put(CMP, &[0; 32]);
    assert!(submit(
        &dev,
        0,
        &memmove(SRC, UNMAPPED, 0x1000, CMP),
        Store64::Movdir64b
    ));
    assert_eq!(
        record(&host, CMP),
        (status::PAGE_FAULT_NOBOF | status::WRITE, 0, UNMAPPED)
    );
    assert_eq!(
        rd(&dev, reg::SWERR, Width::B8) & 1,
        0,
        "reported by the record"
    );
}

#[test]
fn a_batch_runs_its_list_and_counts_the_descriptors_that_succeeded() {
    let (dev, host) = dsa_device();
    enabled(&dev);
    host.put(SRC, &[0x5a; 0x1000]);
    let mut list = Vec::new();
    for (i, src) in [SRC, UNMAPPED, SRC].into_iter().enumerate() {
        let mut d = memmove(src, DST + 0x1000 * i as u64, 0x1000, CMP + 0x40);
        d.flags &= !flag::RCR;
        list.extend_from_slice(&d.to_bytes());
    }
    host.put(LIST, &list);
    let batch = Descriptor {
        flags: flag::CRAV | flag::RCR,
        opcode: op::BATCH,
        completion: CMP,
        src: LIST,
        size: 3,
        ..Descriptor::default()
    };
    assert!(submit(&dev, 0, &batch, Store64::Movdir64b));
    assert_eq!(record(&host, CMP), (status::BATCH_FAIL, 2, 0));
    assert_eq!(record(&host, CMP + 0x40).0, status::PAGE_FAULT_NOBOF);
    assert_eq!(host.get(DST + 0x2000, 0x1000), vec![0x5a; 0x1000]);
}

#[test]
fn stores_a_work_queue_cannot_take_are_logged_in_swerr_and_enqcmd_is_told_to_retry() {
    let (dev, host) = dsa_device();
    enabled(&dev);
    let d = memmove(SRC, DST, 0x1000, CMP);
    assert!(
        !submit(&dev, 0, &d, Store64::Enqcmd),
        "ENQCMD to a dedicated queue"
    );
    let swerr = rd(&dev, reg::SWERR, Width::B8);
    assert_eq!(swerr & 0xf, 0xd, "valid, descriptor and queue index valid");
    assert_eq!((swerr >> 8) & 0xff, u64::from(dsa::swerr::WQ_MODE));
    assert!(!submit(&dev, 3, &d, Store64::Movdir64b), "a disabled queue");
    assert_eq!(rd(&dev, reg::SWERR, Width::B8) & 3, 3, "overflow");
    assert_eq!(rd(&dev, reg::INTCAUSE, Width::B4) & 1, 1);
    wr(&dev, reg::SWERR, Width::B8, 3);
    assert_eq!(rd(&dev, reg::SWERR, Width::B8) & 3, 0, "write 1 to clear");
    // No record address: an error goes to SWERR.
    let mut bad = memmove(SRC, DST, 0, 0);
    bad.flags = 0;
    assert!(submit(&dev, 0, &bad, Store64::Movdir64b));
    let deadline = Instant::now() + Duration::from_secs(5);
    while rd(&dev, reg::SWERR, Width::B8) & 1 == 0 {
        assert!(Instant::now() < deadline, "no software error");
        std::thread::yield_now();
    }
    let swerr = rd(&dev, reg::SWERR, Width::B8);
    assert_eq!((swerr >> 8) & 0xff, u64::from(status::XFER_ERANGE));
    assert_eq!(host.get(CMP, 1), [0]);
}
