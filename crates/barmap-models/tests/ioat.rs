//! The I/OAT channel model through the device-model API: identity and
//! version, channel reset, copies started by chain address and DMA count,
//! completion writeback, completion interrupts by MSI-X (masked: pending),
//! IOMMU faults that halt the channel with its error bits, the memory gate
//! (SIGBUS), and a function-level reset.

use std::sync::Arc;
use std::time::{Duration, Instant};

use barmap::device::pci;
use barmap::touch::{self, Fault};
use barmap::{Placement, Prot};
use barmap_models::ioat::{self, cfg, chan, reg, Descriptor, Ioat};
use barmap_models::{IrqIndex, ModelDevice, Width};

mod common;
use common::Window;

/// The IOVA of the test's one window of memory.
const WINDOW: u64 = 0x10_0000;
/// Its size.
const WINDOW_LEN: usize = 1 << 20;
/// Where the descriptors sit in it.
const DESC: u64 = WINDOW;
/// The source buffer.
const SRC: u64 = WINDOW + 0x1000;
/// The destination buffer.
const DST: u64 = WINDOW + 0x4_0000;
/// The completion writeback.
const CMP: u64 = WINDOW + 0x800;
/// An IOVA nothing maps.
const UNMAPPED: u64 = 0x4000_0000;

fn ioat_device() -> (ModelDevice, Arc<Window>) {
    let dev = ModelDevice::new(Ioat::default()).unwrap();
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

fn ch(off: u64) -> u64 {
    ioat::CHANNEL + off
}

fn status(dev: &ModelDevice) -> u64 {
    rd(dev, ch(chan::CHANSTS), Width::B8) & ioat::CHANSTS_STATUS
}

fn cfg32(dev: &ModelDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read_config(off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

/// Polls the status until the channel is no longer active.
fn wait(dev: &ModelDevice) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(dev);
        if s != ioat::CHANSTS_ACTIVE {
            return s;
        }
        assert!(Instant::now() < deadline, "the channel stayed active");
        std::thread::yield_now();
    }
}

/// The selftest driver's sequence: descriptor, chain address, control
/// (rearm, abort on error), count.
fn start(dev: &ModelDevice, host: &Window, d: Descriptor, count: u16) {
    host.put(DESC, &d.to_bytes());
    wr(dev, ch(chan::CHAINADDR), Width::B8, DESC);
    let ctl = ioat::CHANCTRL_INT_REARM | ioat::CHANCTRL_ANY_ERR_ABORT_EN;
    wr(dev, ch(chan::CHANCTRL), Width::B2, u64::from(ctl));
    wr(dev, ch(chan::DMACOUNT), Width::B2, u64::from(count));
}

fn copy(src: u64, dst: u64, size: u32, ctl: u32) -> Descriptor {
    Descriptor {
        size,
        ctl,
        src,
        dst,
        next: DESC,
    }
}

fn channel_reset(dev: &ModelDevice) {
    wr(
        dev,
        ch(chan::CHANCMD),
        Width::B1,
        u64::from(ioat::CHANCMD_RESET),
    );
    assert_eq!(rd(dev, ch(chan::CHANCMD), Width::B1) & 0x20, 0);
}

#[test]
fn ioat_identity_version_and_capabilities_are_what_the_driver_probes() {
    let (dev, _) = ioat_device();
    let mut id = [0u8; 4];
    dev.read_config(0, &mut id).unwrap();
    assert_eq!(id, [0x86, 0x80, 0x21, 0x20], "8086:2021");
    assert_eq!(rd(&dev, reg::VER, Width::B1), 0x33);
    assert_eq!(rd(&dev, reg::CHANCNT, Width::B1), 1);
    assert_eq!(rd(&dev, reg::XFERCAP, Width::B1), 16);
    assert_eq!(dev.config_size(), 4096, "PCIe extended config space");
    assert_eq!(cfg32(&dev, cfg::CHANERR_INT), 0);
    assert_eq!(cfg32(&dev, cfg::DMAUNCERRSTS), 0);
    assert_eq!(rd(&dev, ch(chan::DMA_COMP), Width::B2), 2);
    assert_eq!(
        rd(&dev, 0, Width::B8) >> 56,
        0,
        "an 8-byte read composes the byte registers (VER is at 8, not 7)"
    );
    assert_eq!(rd(&dev, 0, Width::B2), 0x1001, "CHANCNT and XFERCAP");
}

#[test]
fn ioat_channel_reset_clears_the_command_and_halts_the_channel() {
    let (dev, host) = ioat_device();
    assert_eq!(status(&dev), ioat::CHANSTS_HALTED, "halted at power-on");
    host.put(SRC, &[7; 64]);
    start(&dev, &host, copy(SRC, DST, 64, 0), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    wr(&dev, ch(chan::CHANCMP), Width::B8, CMP);
    channel_reset(&dev);
    assert_eq!(status(&dev), ioat::CHANSTS_HALTED);
    assert_eq!(rd(&dev, ch(chan::CHANSTS), Width::B8), ioat::CHANSTS_HALTED);
    assert_eq!(rd(&dev, ch(chan::CHAINADDR), Width::B8), 0);
    assert_eq!(rd(&dev, ch(chan::CHANCMP), Width::B8), 0);
    assert_eq!(rd(&dev, ch(chan::DMACOUNT), Width::B2), 0);
}

#[test]
fn ioat_chain_address_and_dma_count_start_a_copy_that_ends_done() {
    let (dev, host) = ioat_device();
    let data: Vec<u8> = (0..40_000u32).map(|i| (i * 13 + 5) as u8).collect();
    host.put(SRC, &data);
    start(&dev, &host, copy(SRC, DST, data.len() as u32, 0), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(host.get(DST, data.len()), data);
    let sts = rd(&dev, ch(chan::CHANSTS), Width::B8);
    assert_eq!(sts & !0x3f, DESC, "the completed descriptor's address");
    assert_eq!(rd(&dev, ch(chan::CDAR), Width::B8), DESC);
    assert!(host.take().is_empty(), "no interrupt bit, no interrupt");
    // Suspend, then the next copy: a new chain address restarts the count.
    wr(
        &dev,
        ch(chan::CHANCMD),
        Width::B1,
        u64::from(ioat::CHANCMD_SUSPEND),
    );
    assert_eq!(status(&dev), ioat::CHANSTS_SUSPENDED);
    host.put(SRC, &[0xab; 16]);
    start(&dev, &host, copy(SRC, DST + 0x1_0000, 16, 0), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(host.get(DST + 0x1_0000, 16), [0xab; 16]);
}

#[test]
fn ioat_dma_count_runs_that_many_descriptors_along_the_chain() {
    let (dev, host) = ioat_device();
    // Three descriptors, each copying 8 bytes to its own place.
    for k in 0..3u64 {
        host.put(SRC + 8 * k, &[k as u8 + 1; 8]);
        let d = Descriptor {
            size: 8,
            ctl: 0,
            src: SRC + 8 * k,
            dst: DST + 8 * k,
            next: DESC + 64 * (k + 1),
        };
        host.put(DESC + 64 * k, &d.to_bytes());
    }
    wr(&dev, ch(chan::CHAINADDR), Width::B8, DESC);
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 2);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(host.get(DST, 24), [[1u8; 8], [2; 8], [0; 8]].concat());
    assert_eq!(rd(&dev, ch(chan::CHANSTS), Width::B8) & !0x3f, DESC + 64);
    // One more: the count is cumulative from the chain address.
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 3);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(host.get(DST + 16, 8), [3; 8]);
}

#[test]
fn ioat_completion_writeback_stores_the_channel_status() {
    let (dev, host) = ioat_device();
    wr(&dev, ch(chan::CHANCMP), Width::B8, CMP);
    start(&dev, &host, copy(SRC, DST, 64, ioat::DESC_COMPL_WRITE), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    let back = u64::from_le_bytes(host.get(CMP, 8).try_into().unwrap());
    assert_eq!(back, DESC | ioat::CHANSTS_DONE);
    assert_eq!(back, rd(&dev, ch(chan::CHANSTS), Width::B8));
}

#[test]
fn ioat_completion_interrupt_is_pending_while_masked_and_delivered_unmasked() {
    let (dev, host) = ioat_device();
    wr(
        &dev,
        reg::INTRCTRL,
        Width::B1,
        u64::from(ioat::INTRCTRL_MSIX_VECTOR_CONTROL),
    );
    // Vector 0 is masked at reset: the completion only sets its pending bit.
    start(&dev, &host, copy(SRC, DST, 8, ioat::DESC_INT_EN), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert!(host.take().is_empty());
    assert!(dev.msix_pending(0));
    let pba = u64::from(ioat::MSIX_PBA);
    assert_eq!(rd(&dev, pba, Width::B8), 1);
    assert_eq!(rd(&dev, reg::ATTNSTATUS, Width::B4), 1);
    // Unmasking vector 0's control word delivers it.
    let control = u64::from(ioat::MSIX_TABLE) + 12;
    wr(&dev, control, Width::B4, 0);
    assert_eq!(host.take(), vec![(IrqIndex::Msix, 0)]);
    assert_eq!(rd(&dev, pba, Width::B8), 0);
    // Unmasked: the next completion (rearmed by the start) fires at once.
    start(&dev, &host, copy(SRC, DST, 8, ioat::DESC_INT_EN), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(host.take(), vec![(IrqIndex::Msix, 0)]);
    // Without a rearm, a second completion does not interrupt.
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 2);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert!(host.take().is_empty(), "not rearmed");
    // The host's mask (VFIO_DEVICE_SET_IRQS without an eventfd) holds it.
    dev.set_msix_masked(0, true);
    start(&dev, &host, copy(SRC, DST, 8, ioat::DESC_INT_EN), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert!(host.take().is_empty());
    dev.set_msix_masked(0, false);
    assert_eq!(host.take(), vec![(IrqIndex::Msix, 0)]);
}

#[test]
fn ioat_interrupts_need_intrctrl_enabled() {
    let (dev, host) = ioat_device();
    dev.set_msix_masked(0, false);
    start(&dev, &host, copy(SRC, DST, 8, ioat::DESC_INT_EN), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert!(host.take().is_empty(), "INTRCTRL is 0");
    wr(
        &dev,
        reg::INTRCTRL,
        Width::B1,
        u64::from(ioat::INTRCTRL_MASTER_INT_EN),
    );
    start(&dev, &host, copy(SRC, DST, 8, ioat::DESC_INT_EN), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(host.take(), vec![(IrqIndex::Msix, 0)]);
    let ctl = rd(&dev, reg::INTRCTRL, Width::B1) as u8;
    assert_eq!(
        ctl,
        ioat::INTRCTRL_MASTER_INT_EN | ioat::INTRCTRL_INT_STATUS | ioat::INTRCTRL_INT
    );
}

#[test]
fn ioat_dma_faults_halt_the_channel_with_the_error_bits_set() {
    let (dev, host) = ioat_device();
    wr(
        &dev,
        reg::INTRCTRL,
        Width::B1,
        u64::from(ioat::INTRCTRL_MSIX_VECTOR_CONTROL),
    );
    dev.set_msix_masked(0, false);
    host.put(DST, &[0x5a; 64]);
    // From an unmapped IOVA: source-address error.
    start(&dev, &host, copy(UNMAPPED, DST, 64, ioat::DESC_INT_EN), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_HALTED);
    assert_eq!(rd(&dev, ch(chan::CHANERR), Width::B4), 0x1);
    assert_eq!(cfg32(&dev, cfg::CHANERR_INT), 0x1);
    assert_eq!(host.get(DST, 64), [0x5a; 64], "nothing written");
    assert!(host.take().is_empty(), "no interrupt without ERR_INT_EN");
    // A halted channel with errors stays halted when counted again.
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 2);
    assert_eq!(status(&dev), ioat::CHANSTS_HALTED);
    // Both error registers are write-1-to-clear.
    wr(&dev, ch(chan::CHANERR), Width::B4, 0x1);
    assert_eq!(rd(&dev, ch(chan::CHANERR), Width::B4), 0);
    dev.write_config(cfg::CHANERR_INT, &1u32.to_le_bytes())
        .unwrap();
    assert_eq!(cfg32(&dev, cfg::CHANERR_INT), 0);
    channel_reset(&dev);
    // To an unmapped IOVA, then to a read-only one: destination errors.
    start(&dev, &host, copy(SRC, UNMAPPED, 64, 0), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_HALTED);
    assert_eq!(rd(&dev, ch(chan::CHANERR), Width::B4), 0x2);
    wr(&dev, ch(chan::CHANERR), Width::B4, 0x2);
    channel_reset(&dev);
    *host.read_only.lock().unwrap() = Some((DST, DST + 0x1000));
    start(&dev, &host, copy(SRC, DST, 64, 0), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_HALTED);
    assert_eq!(rd(&dev, ch(chan::CHANERR), Width::B4), 0x2);
    assert_eq!(cfg32(&dev, cfg::CHANERR_INT), 0x2);
    assert_eq!(host.get(DST, 64), [0x5a; 64]);
    // The descriptor itself unmapped: next-address error; with
    // ERR_INT_EN, an error interrupts.
    wr(&dev, ch(chan::CHANERR), Width::B4, u64::MAX);
    channel_reset(&dev);
    wr(&dev, ch(chan::CHAINADDR), Width::B8, UNMAPPED);
    let ctl = ioat::CHANCTRL_INT_REARM | ioat::CHANCTRL_ERR_INT_EN;
    wr(&dev, ch(chan::CHANCTRL), Width::B2, u64::from(ctl));
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_HALTED);
    assert_eq!(
        rd(&dev, ch(chan::CHANERR), Width::B4),
        u64::from(ioat::CHANERR_NEXT_ADDR)
    );
    assert_eq!(host.take(), vec![(IrqIndex::Msix, 0)]);
    // After clearing and a reset, the channel copies again.
    wr(&dev, ch(chan::CHANERR), Width::B4, u64::MAX);
    channel_reset(&dev);
    *host.read_only.lock().unwrap() = None;
    host.put(SRC, &[9; 64]);
    start(&dev, &host, copy(SRC, DST, 64, 0), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(host.get(DST, 64), [9; 64]);
}

#[test]
fn ioat_a_copy_larger_than_xfercap_or_of_an_unknown_operation_is_an_error() {
    let (dev, host) = ioat_device();
    start(&dev, &host, copy(SRC, DST, (1 << 16) + 1, 0), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_HALTED);
    assert_eq!(
        rd(&dev, ch(chan::CHANERR), Width::B4),
        u64::from(ioat::CHANERR_LENGTH)
    );
    wr(&dev, ch(chan::CHANERR), Width::B4, u64::MAX);
    channel_reset(&dev);
    start(&dev, &host, copy(SRC, DST, 8, 0x84 << 24), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_HALTED);
    assert_eq!(
        rd(&dev, ch(chan::CHANERR), Width::B4),
        u64::from(ioat::CHANERR_CONTROL)
    );
}

#[test]
fn ioat_register_access_while_memory_is_disabled_gets_sigbus() {
    let (dev, _) = ioat_device();
    let m = dev
        .map(
            0,
            0,
            ioat::BAR0_SIZE as usize,
            Prot::ReadWrite,
            Placement::Anywhere,
        )
        .unwrap();
    assert!(m.is_trapped());
    let sts = m
        .as_ptr()
        .wrapping_add(ch(chan::CHANSTS) as usize)
        .cast::<u64>();
    let err = m
        .as_ptr()
        .wrapping_add(ch(chan::CHANERR) as usize)
        .cast::<u32>();
    // SAFETY: aligned pointers into the live register mapping.
    assert_eq!(unsafe { touch::read_u64(sts) }, Ok(ioat::CHANSTS_HALTED));
    dev.device().set_memory_enabled(false);
    // SAFETY: as above.
    assert_eq!(unsafe { touch::read_u64(sts) }, Err(Fault::Sigbus));
    // SAFETY: as above.
    assert_eq!(unsafe { touch::write_u32(err, 0) }, Err(Fault::Sigbus));
    assert!(dev.read_register(0, ch(chan::CHANSTS), Width::B8).is_err());
    dev.device().set_memory_enabled(true);
    // SAFETY: as above.
    assert_eq!(unsafe { touch::read_u64(sts) }, Ok(ioat::CHANSTS_HALTED));
}

#[test]
fn ioat_function_reset_restores_the_reset_values() {
    let (dev, host) = ioat_device();
    wr(&dev, reg::INTRCTRL, Width::B1, 0x09);
    wr(&dev, reg::INTRDELAY, Width::B2, 0x123);
    wr(&dev, ch(chan::CHANCMP), Width::B8, CMP);
    wr(&dev, ch(chan::CHANERRMASK), Width::B4, 0xff);
    dev.write_config(cfg::CHANERRMASK_INT, &0xffu32.to_le_bytes())
        .unwrap();
    start(&dev, &host, copy(UNMAPPED, DST, 8, 0), 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_HALTED);
    assert_ne!(cfg32(&dev, cfg::CHANERR_INT), 0);
    dev.set_msix_masked(0, false);
    dev.reset().unwrap();
    for (off, w, v) in [
        (reg::INTRCTRL, Width::B1, 0),
        (reg::INTRDELAY, Width::B2, 0),
        (reg::ATTNSTATUS, Width::B4, 0),
        (reg::VER, Width::B1, 0x33),
        (ch(chan::CHANCTRL), Width::B2, 0),
        (ch(chan::DMACOUNT), Width::B2, 0),
        (ch(chan::CHANSTS), Width::B8, ioat::CHANSTS_HALTED),
        (ch(chan::CHAINADDR), Width::B8, 0),
        (ch(chan::CHANCMP), Width::B8, 0),
        (ch(chan::CDAR), Width::B8, 0),
        (ch(chan::CHANERR), Width::B4, 0),
        (ch(chan::CHANERRMASK), Width::B4, 0),
        (u64::from(ioat::MSIX_TABLE) + 12, Width::B4, 1),
    ] {
        assert_eq!(rd(&dev, off, w), v, "offset {off:#x}");
    }
    assert_eq!(cfg32(&dev, cfg::CHANERR_INT), 0);
    assert_eq!(cfg32(&dev, cfg::CHANERRMASK_INT), 0);
}

// The channel as DPDK's ioat PMD and Linux's ioatdma drive it: the armed
// state, suspend and abort, block fill, descriptor rings with null
// descriptors, and completion write-back to CHANCMP.

fn chansts(dev: &ModelDevice) -> u64 {
    rd(dev, ch(chan::CHANSTS), Width::B8)
}

fn command(dev: &ModelDevice, cmd: u8) {
    wr(dev, ch(chan::CHANCMD), Width::B1, u64::from(cmd));
}

fn completion(host: &Window) -> u64 {
    u64::from_le_bytes(host.get(CMP, 8).try_into().unwrap())
}

/// A ring of `descs` at DESC, each pointing at the next and the last back
/// at the first, as DPDK lays its ring out.
fn ring(host: &Window, descs: &[Descriptor]) {
    for (i, d) in descs.iter().enumerate() {
        let next = DESC + 64 * ((i as u64 + 1) % descs.len() as u64);
        host.put(DESC + 64 * i as u64, &Descriptor { next, ..*d }.to_bytes());
    }
}

/// DPDK's start: chain address, completion address, control (abort on
/// any error, write the completion on one).
fn dpdk_start(dev: &ModelDevice) {
    wr(dev, ch(chan::CHAINADDR), Width::B8, DESC);
    wr(dev, ch(chan::CHANCMP), Width::B8, CMP);
    let ctl = ioat::CHANCTRL_ANY_ERR_ABORT_EN | ioat::CHANCTRL_ERR_COMPLETION_EN;
    wr(dev, ch(chan::CHANCTRL), Width::B2, u64::from(ctl));
}

#[test]
fn ioat_a_chain_address_arms_a_halted_channel_and_a_count_starts_it() {
    let (dev, host) = ioat_device();
    channel_reset(&dev);
    assert_eq!(chansts(&dev), ioat::CHANSTS_HALTED, "halted, no address");
    host.put(SRC, &[9; 64]);
    ring(&host, &[copy(SRC, DST, 64, ioat::DESC_COMPL_WRITE)]);
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 1);
    assert_eq!(
        status(&dev),
        ioat::CHANSTS_HALTED,
        "a count alone does not start a halted channel"
    );
    assert_eq!(host.get(DST, 64), vec![0; 64]);
    dpdk_start(&dev);
    assert_eq!(
        chansts(&dev),
        ioat::CHANSTS_ARMED,
        "the whole register reads 4: DPDK compares all 64 bits"
    );
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 0);
    assert_eq!(
        status(&dev),
        ioat::CHANSTS_ARMED,
        "nothing counted: still armed"
    );
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(host.get(DST, 64), vec![9; 64]);
    assert_eq!(completion(&host), DESC | ioat::CHANSTS_DONE);
}

#[test]
fn ioat_a_halted_channel_with_errors_is_armed_only_after_they_are_cleared_and_it_is_reset() {
    let (dev, host) = ioat_device();
    channel_reset(&dev);
    ring(
        &host,
        &[copy(SRC, DST, 64, ioat::DESC_COMPL_WRITE | (0x7f << 24))],
    );
    dpdk_start(&dev);
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_HALTED);
    let err = rd(&dev, ch(chan::CHANERR), Width::B4);
    assert_eq!(
        err,
        u64::from(ioat::CHANERR_CONTROL),
        "an unknown operation"
    );
    wr(&dev, ch(chan::CHAINADDR), Width::B8, DESC);
    assert_eq!(
        status(&dev),
        ioat::CHANSTS_HALTED,
        "errors pending: not armed"
    );
    // DPDK's recovery: clear CHANERR, reset, chain address, poll for armed.
    wr(&dev, ch(chan::CHANERR), Width::B4, err);
    channel_reset(&dev);
    ring(&host, &[copy(SRC, DST, 64, ioat::DESC_COMPL_WRITE)]);
    dpdk_start(&dev);
    assert_eq!(chansts(&dev), ioat::CHANSTS_ARMED);
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
}

#[test]
fn ioat_suspend_stops_an_armed_or_idle_channel_and_leaves_a_halted_one_halted() {
    let (dev, host) = ioat_device();
    channel_reset(&dev);
    command(&dev, ioat::CHANCMD_SUSPEND);
    assert_eq!(status(&dev), ioat::CHANSTS_HALTED, "nothing to suspend");
    ring(&host, &[copy(SRC, DST, 64, ioat::DESC_COMPL_WRITE); 4]);
    dpdk_start(&dev);
    command(&dev, ioat::CHANCMD_SUSPEND);
    assert_eq!(
        status(&dev),
        ioat::CHANSTS_SUSPENDED,
        "armed, then suspended"
    );
    command(&dev, ioat::CHANCMD_RESUME);
    assert_eq!(
        status(&dev),
        ioat::CHANSTS_IDLE,
        "resumed with nothing counted"
    );
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 2);
    assert_eq!(wait(&dev), ioat::CHANSTS_IDLE);
    // DPDK's stop: suspend an idle channel; its start then writes the
    // chain address again, which leaves a suspended channel suspended,
    // and counts from there.
    command(&dev, ioat::CHANCMD_SUSPEND);
    assert_eq!(status(&dev), ioat::CHANSTS_SUSPENDED);
    dpdk_start(&dev);
    assert_eq!(status(&dev), ioat::CHANSTS_SUSPENDED);
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 3);
    assert_eq!(wait(&dev), ioat::CHANSTS_IDLE);
    assert_eq!(
        completion(&host),
        (DESC + 128) | ioat::CHANSTS_IDLE,
        "the third of the ring"
    );
}

#[test]
fn ioat_abort_halts_the_channel_without_an_error_and_a_chain_address_rearms_it() {
    let (dev, host) = ioat_device();
    channel_reset(&dev);
    ring(&host, &[copy(SRC, DST, 64, ioat::DESC_COMPL_WRITE); 2]);
    dpdk_start(&dev);
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    command(&dev, ioat::CHANCMD_ABORT);
    assert_eq!(status(&dev), ioat::CHANSTS_HALTED);
    assert_eq!(
        rd(&dev, ch(chan::CHANERR), Width::B4),
        0,
        "an abort is no error"
    );
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 2);
    assert_eq!(
        status(&dev),
        ioat::CHANSTS_HALTED,
        "an aborted channel runs nothing"
    );
    wr(&dev, ch(chan::CHAINADDR), Width::B8, DESC + 64);
    assert_eq!(status(&dev), ioat::CHANSTS_ARMED);
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(completion(&host), (DESC + 64) | ioat::CHANSTS_DONE);
}

#[test]
fn ioat_fill_writes_the_pattern_of_the_source_field_over_the_destination() {
    let (dev, host) = ioat_device();
    assert_eq!(
        rd(&dev, reg::DMA_CAP, Width::B4),
        u64::from(ioat::DMA_CAP_FILL_BLOCK),
        "block fill is advertised"
    );
    channel_reset(&dev);
    host.put(DST, &[0xee; 128]);
    let pattern = 0x1122_3344_5566_7788u64;
    let ctl = ioat::DESC_COMPL_WRITE | (u32::from(ioat::OP_FILL) << 24);
    ring(&host, &[copy(pattern, DST + 4, 100, ctl)]);
    dpdk_start(&dev);
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 1);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(rd(&dev, ch(chan::CHANERR), Width::B4), 0);
    let got = host.get(DST, 128);
    let want: Vec<u8> = (0..100).map(|i| pattern.to_le_bytes()[i % 8]).collect();
    assert_eq!(&got[4..104], &want[..]);
    assert_eq!(&got[..4], &[0xee; 4], "nothing before");
    assert_eq!(&got[104..], &[0xee; 24], "nothing after");
}

#[test]
fn ioat_a_ring_with_a_null_descriptor_completes_in_order_and_wraps() {
    let (dev, host) = ioat_device();
    channel_reset(&dev);
    host.put(SRC, &(0..=255u8).collect::<Vec<_>>());
    let w = ioat::DESC_COMPL_WRITE;
    let null = Descriptor {
        size: 1,
        ctl: w | ioat::DESC_NULL,
        src: UNMAPPED,
        dst: UNMAPPED,
        next: 0,
    };
    ring(
        &host,
        &[copy(SRC, DST, 64, w), null, copy(SRC + 64, DST + 64, 64, w)],
    );
    dpdk_start(&dev);
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 2);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(
        completion(&host),
        (DESC + 64) | ioat::CHANSTS_DONE,
        "the null descriptor completes (its IOVAs are never touched)"
    );
    assert_eq!(host.get(DST + 64, 64), vec![0; 64], "the third has not run");
    // More counted: on from the third, around the ring to the first.
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 4);
    assert_eq!(wait(&dev), ioat::CHANSTS_DONE);
    assert_eq!(completion(&host), DESC | ioat::CHANSTS_DONE);
    assert_eq!(
        chansts(&dev),
        DESC | ioat::CHANSTS_DONE,
        "CHANSTS is what was written back"
    );
    assert_eq!(host.get(DST, 128), (0..128u8).collect::<Vec<_>>());
}

#[test]
fn ioat_an_error_writes_back_the_last_good_descriptor_with_the_halted_status() {
    let (dev, host) = ioat_device();
    channel_reset(&dev);
    let w = ioat::DESC_COMPL_WRITE;
    ring(&host, &[copy(SRC, DST, 64, w), copy(UNMAPPED, DST, 64, w)]);
    dpdk_start(&dev);
    wr(&dev, ch(chan::DMACOUNT), Width::B2, 2);
    assert_eq!(wait(&dev), ioat::CHANSTS_HALTED);
    assert_eq!(
        rd(&dev, ch(chan::CHANERR), Width::B4),
        u64::from(ioat::CHANERR_SRC_ADDR)
    );
    assert_eq!(
        completion(&host),
        DESC | ioat::CHANSTS_HALTED,
        "DPDK counts the completions up to the failed one from this"
    );
}

#[test]
fn ioat_version_3_4_is_an_option_and_3_3_the_default() {
    let opt = |v: &str| vec![("version".to_string(), v.to_string())];
    let read_ver = |m: Box<dyn barmap_models::DeviceModel>| {
        let dev = ModelDevice::builder_boxed(m).build().unwrap();
        rd(&dev, reg::VER, Width::B1)
    };
    assert_eq!(read_ver(barmap_models::by_name("ioat", &[]).unwrap()), 0x33);
    assert_eq!(
        read_ver(barmap_models::by_name("ioat", &opt("3.4")).unwrap()),
        0x34
    );
    assert!(barmap_models::by_name("ioat", &opt("3.5")).is_err());
    let dev = ModelDevice::new(Ioat::with_version(16, ioat::VERSION_3_4)).unwrap();
    dev.reset().unwrap();
    assert_eq!(
        rd(&dev, reg::VER, Width::B1),
        0x34,
        "a reset keeps the version"
    );
}
