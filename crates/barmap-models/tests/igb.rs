//! The 82576 (igb) model through the device-model API: identity, NVM reads
//! through EERD with the checksum, the PHY over MDIC, a reset through
//! CTRL.RST, frames sent and received in MAC and PHY loopback through an
//! IOMMU window (advanced and legacy descriptors, filtering, MSI-X through
//! IVAR with auto-clear and auto-mask), read-to-clear statistics, an
//! IOMMU fault that stops a queue until a function-level reset, and two
//! ports on a wire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use barmap::device::pci;
use barmap_models::igb::{self, q, reg, stat, Igb};
use barmap_models::{ModelDevice, Width};

mod common;
use common::Window;

/// The IOVA of the test's one window of memory.
const WINDOW: u64 = 0x10_0000;
/// Its size.
const WINDOW_LEN: usize = 1 << 20;
/// The transmit ring (16 descriptors).
const TX_RING: u64 = WINDOW;
/// The receive ring (16 descriptors).
const RX_RING: u64 = WINDOW + 0x1000;
/// Transmit buffers.
const TX_BUF: u64 = WINDOW + 0x1_0000;
/// Receive buffers (2 KiB each).
const RX_BUF: u64 = WINDOW + 0x4_0000;
/// An IOVA nothing maps.
const UNMAPPED: u64 = 0x4000_0000;
/// Descriptors per ring.
const RING: u32 = 16;

fn igb_device(model: Igb) -> (ModelDevice, Arc<Window>) {
    let dev = ModelDevice::new(model).unwrap();
    let host = Window::new(WINDOW, WINDOW_LEN);
    dev.set_host(host.clone());
    let cmd = dev.device().command() | pci::COMMAND_MASTER;
    dev.write_config(pci::COMMAND, &cmd.to_le_bytes()).unwrap();
    // MSI-X enabled, every vector unmasked (as VFIO_DEVICE_SET_IRQS and
    // the program's table writes would).
    for v in 0..u32::from(igb::MSIX_VECTORS) {
        dev.set_msix_masked(v, false);
    }
    (dev, host)
}

fn rd(dev: &ModelDevice, off: u64) -> u32 {
    dev.read_register(0, off, Width::B4).unwrap() as u32
}

fn wr(dev: &ModelDevice, off: u64, v: u32) {
    dev.write_register(0, off, Width::B4, u64::from(v)).unwrap()
}

fn nvm_word(dev: &ModelDevice, addr: u32) -> u16 {
    wr(dev, reg::EERD, (addr << 2) | igb::EERD_START);
    let v = rd(dev, reg::EERD);
    assert_ne!(v & igb::EERD_DONE, 0, "EERD done");
    (v >> 16) as u16
}

fn mdic(dev: &ModelDevice, phy: u32, regnum: u32, op: u32, data: u16) -> u32 {
    wr(
        dev,
        reg::MDIC,
        op | (phy << 21) | (regnum << 16) | u32::from(data),
    );
    rd(dev, reg::MDIC)
}

/// The selftest driver's bring-up: reset, PHY loopback at 1000 full,
/// forced link, one ring pair of [`RING`] descriptors, `srrctl`, RCTL
/// `rctl`, MSI-X vector 0 for receive queue 0 with auto-clear and
/// auto-mask.
fn bring_up(dev: &ModelDevice, srrctl: u32, rctl: u32) {
    bring_up_port(dev, srrctl, rctl, true);
}

/// [`bring_up`], with the PHY in loopback or not.
fn bring_up_port(dev: &ModelDevice, srrctl: u32, rctl: u32, phy_loopback: bool) {
    wr(dev, reg::CTRL, rd(dev, reg::CTRL) | igb::CTRL_RST);
    assert_ne!(rd(dev, reg::EECD) & igb::EECD_AUTO_RD, 0);
    assert_eq!(rd(dev, reg::CTRL) & igb::CTRL_RST, 0, "RST self-clears");
    wr(dev, reg::IMC, !0);
    let mut bmcr = 0x0040 | 0x0100; // 1000, full duplex
    if phy_loopback {
        bmcr |= igb::BMCR_LOOPBACK;
    }
    let m = mdic(dev, 1, igb::MII_BMCR, igb::MDIC_OP_WRITE, bmcr);
    assert_eq!(m & (igb::MDIC_READY | igb::MDIC_ERROR), igb::MDIC_READY);
    wr(
        dev,
        reg::CTRL,
        rd(dev, reg::CTRL) | igb::CTRL_SLU | (3 << 11),
    );
    wr(dev, reg::TXQ0 + q::BAL, TX_RING as u32);
    wr(dev, reg::TXQ0 + q::BAH, 0);
    wr(dev, reg::TXQ0 + q::LEN, RING * 16);
    wr(dev, reg::TXQ0 + q::H, 0);
    wr(dev, reg::TXQ0 + q::T, 0);
    wr(dev, reg::TXQ0 + q::DCTL, igb::DCTL_ENABLE);
    // Queue 0's receive registers at their old offsets (0x2800).
    wr(dev, reg::RXQ0_ALIAS + q::BAL, RX_RING as u32);
    wr(dev, reg::RXQ0_ALIAS + q::BAH, 0);
    wr(dev, reg::RXQ0_ALIAS + q::LEN, RING * 16);
    wr(dev, reg::RXQ0_ALIAS + q::H, 0);
    wr(dev, reg::RXQ0_ALIAS + q::T, 0);
    wr(dev, reg::RXQ0_ALIAS + q::SRRCTL, srrctl);
    wr(dev, reg::RXQ0 + q::DCTL, igb::DCTL_ENABLE);
    wr(dev, reg::RCTL, rctl);
    wr(dev, reg::TCTL, igb::TCTL_EN | igb::TCTL_PSP);
    wr(dev, reg::GPIE, igb::GPIE_MSIX_MODE | igb::GPIE_EIAME);
    wr(dev, reg::EIAC, 1);
    wr(dev, reg::EIAM, 1);
    wr(dev, reg::IVAR0, igb::IVAR_VALID);
    wr(dev, reg::EIMS, 1);
}

/// Queues `frame` at transmit slot `slot` (advanced data descriptor,
/// FCS inserted) and a receive buffer at receive slot `slot`, then rings
/// both tails.
fn send(dev: &ModelDevice, host: &Window, slot: u32, frame: &[u8], advanced: bool) {
    let buf = TX_BUF + u64::from(slot) * 0x800;
    host.put(buf, frame);
    let len = frame.len() as u32;
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&buf.to_le_bytes());
    let cmd = if advanced {
        len | (3 << 20) | (1 << 24) | (1 << 25) | (1 << 27) | (1 << 29)
    } else {
        len | (1 << 24) | (1 << 25) | (1 << 27) // EOP, IFCS, RS
    };
    d[8..12].copy_from_slice(&cmd.to_le_bytes());
    d[12..16].copy_from_slice(&((len << 14) * u32::from(advanced)).to_le_bytes());
    host.put(TX_RING + u64::from(slot) * 16, &d);
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&(RX_BUF + u64::from(slot) * 0x800).to_le_bytes());
    host.put(RX_RING + u64::from(slot) * 16, &r);
    wr(dev, reg::RXQ0 + q::T, (slot + 1) % RING);
    wr(dev, reg::TXQ0 + q::T, (slot + 1) % RING);
}

/// Waits for the transmit head to reach `head`.
fn wait_tx_head(dev: &ModelDevice, head: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rd(dev, reg::TXQ0 + q::H) != head {
        assert!(
            Instant::now() < deadline,
            "the transmit queue did not advance"
        );
        std::thread::yield_now();
    }
}

fn frame(dst: [u8; 6], len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&igb::DEFAULT_MAC);
    f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f
}

const LOOPBACK_RCTL: u32 = igb::RCTL_EN | igb::RCTL_BAM | igb::RCTL_SECRC;

#[test]
fn igb_identity_and_bars_are_the_82576s() {
    let (dev, _) = igb_device(Igb::default());
    let mut id = [0u8; 4];
    dev.read_config(0, &mut id).unwrap();
    assert_eq!(id, [0x86, 0x80, 0xc9, 0x10], "8086:10c9");
    assert!(dev.is_registers(0));
    assert!(dev.is_registers(igb::MSIX_BAR));
    let l = dev.layout();
    assert_eq!(l.interrupts.msix_vectors, igb::MSIX_VECTORS);
    let s = rd(&dev, reg::STATUS);
    assert_eq!(s & igb::STATUS_LU, 0, "no link at power-on");
    assert_ne!(s & igb::STATUS_GIO_MASTER_ENABLE, 0);
}

#[test]
fn igb_nvm_holds_the_mac_address_and_sums_to_0xbaba() {
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let (dev, _) = igb_device(Igb::new(mac));
    let words: Vec<u16> = (0..igb::NVM_WORDS as u32)
        .map(|a| nvm_word(&dev, a))
        .collect();
    assert_eq!(&words[..3], &[0x1102, 0x3322, 0x5544]);
    let sum = words.iter().fold(0u16, |s, w| s.wrapping_add(*w));
    assert_eq!(sum, igb::NVM_SUM);
    assert_eq!(rd(&dev, reg::RAL0), 0x3322_1102, "RAL0 loaded from the NVM");
    assert_eq!(rd(&dev, reg::RAH0), 0x8000_5544, "RAH0 with address valid");
    let eecd = rd(&dev, reg::EECD);
    assert_ne!(eecd & igb::EECD_PRES, 0);
    assert_ne!(eecd & igb::EECD_AUTO_RD, 0);
    wr(&dev, reg::EECD, igb::EECD_REQ);
    assert_ne!(
        rd(&dev, reg::EECD) & igb::EECD_GNT,
        0,
        "a request is granted"
    );
}

#[test]
fn igb_phy_answers_over_mdic_and_its_loopback_brings_the_link_up() {
    let (dev, _) = igb_device(Igb::default());
    let id1 = mdic(&dev, 1, 2, igb::MDIC_OP_READ, 0);
    let id2 = mdic(&dev, 1, 3, igb::MDIC_OP_READ, 0);
    assert_eq!(id1 & (igb::MDIC_READY | igb::MDIC_ERROR), igb::MDIC_READY);
    assert_eq!((id1 & 0xffff) << 16 | (id2 & 0xffff), igb::PHY_ID);
    let bad = mdic(&dev, 2, 2, igb::MDIC_OP_READ, 0);
    assert_ne!(bad & igb::MDIC_ERROR, 0, "no PHY at address 2");
    let bmsr = mdic(&dev, 1, igb::MII_BMSR, igb::MDIC_OP_READ, 0);
    assert_eq!(bmsr & u32::from(igb::BMSR_LSTATUS), 0);
    mdic(&dev, 1, 0, igb::MDIC_OP_WRITE, igb::BMCR_LOOPBACK | 0x0140);
    let bmcr = mdic(&dev, 1, 0, igb::MDIC_OP_READ, 0);
    assert_eq!(bmcr & 0xffff, u32::from(igb::BMCR_LOOPBACK | 0x0140));
    let bmsr = mdic(&dev, 1, igb::MII_BMSR, igb::MDIC_OP_READ, 0);
    assert_ne!(bmsr & u32::from(igb::BMSR_LSTATUS), 0);
    assert_ne!(rd(&dev, reg::STATUS) & igb::STATUS_LU, 0);
    assert_ne!(
        rd(&dev, reg::ICR) & igb::ICR_LSC,
        0,
        "the link change is a cause"
    );
    assert_eq!(rd(&dev, reg::ICR), 0, "ICR clears on read");
}

#[test]
fn igb_ctrl_rst_returns_registers_to_their_reset_values() {
    let (dev, _) = igb_device(Igb::default());
    wr(&dev, reg::RCTL, LOOPBACK_RCTL);
    wr(&dev, reg::EIMS, 0x3);
    wr(&dev, reg::RAL0 + 8, 0x1234_5678);
    wr(&dev, reg::CTRL, igb::CTRL_SLU);
    assert_ne!(rd(&dev, reg::STATUS) & igb::STATUS_LU, 0);
    wr(&dev, reg::CTRL, igb::CTRL_RST);
    assert_eq!(rd(&dev, reg::RCTL), 0);
    assert_eq!(rd(&dev, reg::EIMS), 0);
    assert_eq!(rd(&dev, reg::RAL0 + 8), 0);
    assert_eq!(rd(&dev, reg::STATUS) & igb::STATUS_LU, 0);
    assert_eq!(
        rd(&dev, reg::RAH0),
        0x8000_5634,
        "the NVM's address reloaded"
    );
}

#[test]
fn igb_loopback_frames_arrive_with_write_back_and_interrupt_once() {
    let (dev, host) = igb_device(Igb::default());
    bring_up(
        &dev,
        igb::SRRCTL_DESCTYPE_ADV_ONEBUF,
        LOOPBACK_RCTL | igb::RCTL_LBM_MAC,
    );
    let f = frame([0xff; 6], 100, b'x');
    send(&dev, &host, 0, &f, true);
    wait_tx_head(&dev, 1);
    assert_eq!(host.get(RX_BUF, 100), f, "the frame, CRC stripped");
    let status = host.u32_at(RX_RING + 8);
    assert_eq!(status & 3, 3, "DD and EOP written back");
    assert_eq!(host.u32_at(RX_RING + 12) & 0xffff, 100, "length");
    assert_eq!(host.u32_at(TX_RING + 12) & 1, 1, "transmit DD on RS");
    assert_eq!(rd(&dev, reg::RXQ0 + q::H), 1);
    assert_eq!(host.take_msix(), vec![0], "RX queue 0 -> IVAR -> vector 0");
    assert_eq!(rd(&dev, reg::EICR), 0, "EIAC cleared the cause");
    assert_eq!(rd(&dev, reg::EIMS), 0, "EIAM masked the vector");

    // Masked: the cause waits in EICR; EIMS delivers it.
    send(&dev, &host, 1, &frame([0xff; 6], 60, b'y'), true);
    wait_tx_head(&dev, 2);
    assert!(host.take_msix().is_empty());
    wr(&dev, reg::EIMS, 1);
    assert_eq!(host.take_msix(), vec![0]);
    // A write of 1s clears EICR; EICS raises the vector.
    wr(&dev, reg::EIMS, 1);
    wr(&dev, reg::EICS, 1);
    assert_eq!(host.take_msix(), vec![0]);
}

#[test]
fn igb_phy_loopback_with_legacy_descriptors_keeps_the_crc_and_pads() {
    let (dev, host) = igb_device(Igb::default());
    bring_up(&dev, 0, igb::RCTL_EN | igb::RCTL_BAM); // legacy, no SECRC, no LBM
    let f = frame([0xff; 6], 42, b'z');
    send(&dev, &host, 0, &f, false);
    wait_tx_head(&dev, 1);
    let mut padded = f.clone();
    padded.resize(60, 0);
    let fcs = igb::crc32(&padded);
    assert_eq!(host.get(RX_BUF, 60), padded);
    assert_eq!(host.get(RX_BUF + 60, 4), fcs.to_le_bytes());
    let len = u16::from_le_bytes(host.get(RX_RING + 8, 2).try_into().unwrap());
    assert_eq!(len, 64, "padded to 60 bytes, plus the FCS");
    assert_eq!(
        host.get(RX_RING + 12, 1)[0] & 3,
        3,
        "legacy status: DD, EOP"
    );
}

#[test]
fn igb_filters_unicast_by_receive_address_unless_promiscuous() {
    let (dev, host) = igb_device(Igb::default());
    bring_up(
        &dev,
        igb::SRRCTL_DESCTYPE_ADV_ONEBUF,
        LOOPBACK_RCTL | igb::RCTL_LBM_MAC,
    );
    let other = [0x02, 0, 0, 0, 0, 9];
    send(&dev, &host, 0, &frame(other, 80, 1), true);
    wait_tx_head(&dev, 1);
    assert_eq!(rd(&dev, reg::RXQ0 + q::H), 0, "not for us: filtered");
    send(&dev, &host, 1, &frame(igb::DEFAULT_MAC, 80, 2), true);
    wait_tx_head(&dev, 2);
    assert_eq!(rd(&dev, reg::RXQ0 + q::H), 1, "our address (RAL0/RAH0)");
    assert_eq!(host.get(RX_BUF, 80), frame(igb::DEFAULT_MAC, 80, 2));
    wr(
        &dev,
        reg::RCTL,
        LOOPBACK_RCTL | igb::RCTL_LBM_MAC | igb::RCTL_UPE,
    );
    send(&dev, &host, 2, &frame(other, 80, 3), true);
    wait_tx_head(&dev, 3);
    assert_eq!(rd(&dev, reg::RXQ0 + q::H), 2, "promiscuous");
}

#[test]
fn igb_statistics_count_frames_and_clear_on_read() {
    let (dev, host) = igb_device(Igb::default());
    bring_up(
        &dev,
        igb::SRRCTL_DESCTYPE_ADV_ONEBUF,
        LOOPBACK_RCTL | igb::RCTL_LBM_MAC,
    );
    for slot in 0..3 {
        send(&dev, &host, slot, &frame([0xff; 6], 100, 7), true);
    }
    wait_tx_head(&dev, 3);
    assert_eq!(rd(&dev, stat::GPTC), 3);
    assert_eq!(rd(&dev, stat::GPTC), 0, "read to clear");
    assert_eq!(rd(&dev, stat::TPR), 3);
    assert_eq!(rd(&dev, stat::GPRC), 3);
    assert_eq!(rd(&dev, stat::BPRC), 3);
    assert_eq!(rd(&dev, stat::GORCL), 3 * 104, "octets with the FCS");
    assert_eq!(
        rd(&dev, stat::GORCL),
        3 * 104,
        "the low half alone does not clear"
    );
    assert_eq!(rd(&dev, stat::GORCH), 0);
    assert_eq!(
        rd(&dev, stat::GORCL),
        0,
        "the high half's read cleared the pair"
    );
    assert_eq!(rd(&dev, stat::GOTCL), 3 * 104);
    // No receive descriptor left: the frame is missed and counted.
    host.put(TX_BUF, &frame([0xff; 6], 100, 8));
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&TX_BUF.to_le_bytes());
    let cmd = 100 | (3 << 20) | (1 << 24) | (1 << 25) | (1 << 29);
    d[8..12].copy_from_slice(&(cmd as u32).to_le_bytes());
    host.put(TX_RING + 3 * 16, &d);
    wr(&dev, reg::TXQ0 + q::T, 4);
    wait_tx_head(&dev, 4);
    assert_eq!(rd(&dev, stat::MPC), 1);
    assert_eq!(rd(&dev, reg::RXQ0 + q::RQDPC), 1);
    assert_eq!(rd(&dev, stat::TPR), 0);
}

#[test]
fn igb_an_unmapped_buffer_stops_the_queue_until_a_function_reset() {
    let (dev, host) = igb_device(Igb::default());
    bring_up(
        &dev,
        igb::SRRCTL_DESCTYPE_ADV_ONEBUF,
        LOOPBACK_RCTL | igb::RCTL_LBM_MAC,
    );
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&UNMAPPED.to_le_bytes());
    let cmd: u32 = 64 | (3 << 20) | (1 << 24) | (1 << 25) | (1 << 27) | (1 << 29);
    d[8..12].copy_from_slice(&cmd.to_le_bytes());
    host.put(TX_RING, &d);
    wr(&dev, reg::RXQ0 + q::T, 1);
    wr(&dev, reg::TXQ0 + q::T, 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        rd(&dev, reg::TXQ0 + q::H),
        0,
        "the queue stopped at the fault"
    );
    assert_eq!(host.u32_at(TX_RING + 12), 0, "no write-back");
    assert!(host.take_msix().is_empty(), "no interrupt");
    dev.reset().unwrap();
    for v in 0..u32::from(igb::MSIX_VECTORS) {
        dev.set_msix_masked(v, false);
    }
    assert_eq!(rd(&dev, reg::TXQ0 + q::T), 0, "FLR cleared the rings");
    bring_up(
        &dev,
        igb::SRRCTL_DESCTYPE_ADV_ONEBUF,
        LOOPBACK_RCTL | igb::RCTL_LBM_MAC,
    );
    send(&dev, &host, 0, &frame([0xff; 6], 64, 5), true);
    wait_tx_head(&dev, 1);
    assert_eq!(host.get(RX_BUF, 64), frame([0xff; 6], 64, 5));
}

/// Waits for receive queue 0's head of `dev` to reach `head`.
fn wait_rx_head(dev: &ModelDevice, head: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rd(dev, reg::RXQ0 + q::H) != head {
        assert!(
            Instant::now() < deadline,
            "the receive queue did not advance"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn igb_two_ports_on_a_wire_exchange_frames_that_wait_for_descriptors() {
    let mac_b = [0x02, 0, 0, 0, 0, 0x0b];
    let (a, host_a) = igb_device(Igb::new([0x02, 0, 0, 0, 0, 0x0a]).with_wire("igb-test-wire"));
    let (b, host_b) = igb_device(Igb::new(mac_b).with_wire("igb-test-wire"));
    let rctl = igb::RCTL_EN | igb::RCTL_SECRC; // no loopback, exact unicast
    bring_up_port(&a, igb::SRRCTL_DESCTYPE_ADV_ONEBUF, rctl, false);
    bring_up_port(&b, igb::SRRCTL_DESCTYPE_ADV_ONEBUF, rctl, false);
    assert_ne!(
        rd(&a, reg::STATUS) & igb::STATUS_LU,
        0,
        "plugged in: link up"
    );
    // B posts one receive descriptor; A sends two frames to B.
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&RX_BUF.to_le_bytes());
    host_b.put(RX_RING, &r);
    wr(&b, reg::RXQ0 + q::T, 1);
    send(&a, &host_a, 0, &frame(mac_b, 70, 1), true);
    send(&a, &host_a, 1, &frame(mac_b, 90, 2), true);
    wait_tx_head(&a, 2);
    wait_rx_head(&b, 1);
    assert_eq!(host_b.get(RX_BUF, 70), frame(mac_b, 70, 1));
    assert_eq!(rd(&a, reg::RXQ0 + q::H), 0, "A itself received nothing");
    // The second frame waits on the wire until B posts a descriptor.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rd(&b, reg::RXQ0 + q::H), 1);
    r[0..8].copy_from_slice(&(RX_BUF + 0x800).to_le_bytes());
    host_b.put(RX_RING + 16, &r);
    wr(&b, reg::RXQ0 + q::T, 2);
    wait_rx_head(&b, 2);
    assert_eq!(host_b.get(RX_BUF + 0x800, 90), frame(mac_b, 90, 2));
    assert_eq!(rd(&b, stat::GPRC), 2);
    assert_eq!(rd(&b, stat::MPC), 0, "nothing missed");
    assert_eq!(rd(&a, stat::GPTC), 2);
}

#[test]
fn igb_rss_steers_a_udp_frame_by_its_toeplitz_hash_through_reta() {
    let (dev, host) = igb_device(Igb::default());
    bring_up(
        &dev,
        igb::SRRCTL_DESCTYPE_ADV_ONEBUF,
        LOOPBACK_RCTL | igb::RCTL_LBM_MAC,
    );
    // Queue 1's ring right after queue 0's, one descriptor posted.
    let ring1 = RX_RING + 0x800;
    let buf1 = RX_BUF + 0x8000;
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&buf1.to_le_bytes());
    host.put(ring1, &r);
    let q1 = reg::RXQ0 + 0x40;
    wr(&dev, q1 + q::BAL, ring1 as u32);
    wr(&dev, q1 + q::LEN, RING * 16);
    wr(&dev, q1 + q::SRRCTL, igb::SRRCTL_DESCTYPE_ADV_ONEBUF);
    wr(&dev, q1 + q::DCTL, igb::DCTL_ENABLE);
    wr(&dev, q1 + q::T, 1);
    // RSS over IPv4 and UDP ports, the verification suite's key, every
    // RETA entry pointing at queue 1.
    let key: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];
    for (i, k) in key.chunks(4).enumerate() {
        wr(
            &dev,
            reg::RSSRK + 4 * i as u64,
            u32::from_le_bytes(k.try_into().unwrap()),
        );
    }
    for i in 0..32 {
        wr(&dev, reg::RETA + 4 * i, 0x0101_0101);
    }
    wr(&dev, reg::MRQC, 2 | (1 << 17) | (1 << 22));
    // 66.9.149.187:2794 -> 161.142.100.80:1766, UDP.
    let mut f = frame([0xff; 6], 80, 0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[23] = 17;
    f[26..30].copy_from_slice(&[66, 9, 149, 187]);
    f[30..34].copy_from_slice(&[161, 142, 100, 80]);
    f[34..36].copy_from_slice(&2794u16.to_be_bytes());
    f[36..38].copy_from_slice(&1766u16.to_be_bytes());
    send(&dev, &host, 0, &f, true);
    wait_tx_head(&dev, 1);
    assert_eq!(rd(&dev, q1 + q::H), 1, "steered to queue 1");
    assert_eq!(rd(&dev, reg::RXQ0 + q::H), 0, "not queue 0");
    assert_eq!(host.get(buf1, 80), f);
    assert_eq!(
        host.u32_at(ring1 + 4),
        0x51cc_c178,
        "the RSS hash written back"
    );
    let pkt_info = host.u32_at(ring1) & 0xffff;
    assert_eq!(pkt_info & 0xf, 7, "RSS type: UDP over IPv4");
    assert_eq!(pkt_info >> 4, 0x21, "packet type: IPv4, UDP");
    // A frame that is not IP has no hash: queue 0.
    send(&dev, &host, 1, &frame([0xff; 6], 80, 9), true);
    wait_tx_head(&dev, 2);
    assert_eq!(
        rd(&dev, reg::RXQ0 + q::H),
        1,
        "queue 0 took the other frame"
    );
    assert_eq!(rd(&dev, q1 + q::H), 1, "queue 1 did not");
}

#[test]
fn igb_legacy_causes_interrupt_through_ims_and_icr_clears_on_read() {
    let (dev, host) = igb_device(Igb::default());
    // Not in GPIE's MSI-X mode: ICR & IMS raise the one vector.
    wr(&dev, reg::ICS, igb::ICR_LSC);
    assert!(host.take_msix().is_empty(), "masked by IMS");
    wr(&dev, reg::IMS, igb::ICR_LSC);
    assert_eq!(host.take_msix(), vec![0], "IMS enables the pending cause");
    let icr = rd(&dev, reg::ICR);
    assert_eq!(icr, igb::ICR_LSC | igb::ICR_INT_ASSERTED);
    assert_eq!(rd(&dev, reg::ICR), 0, "read to clear");
    wr(&dev, reg::IMC, igb::ICR_LSC);
    wr(&dev, reg::ICS, igb::ICR_LSC);
    assert!(host.take_msix().is_empty(), "IMC masked it again");
    assert_eq!(rd(&dev, reg::IMS), 0);
}

#[test]
fn igb_a_one_byte_write_to_eicr_clears_only_the_bits_it_names() {
    let (dev, _) = igb_device(Igb::default());
    wr(&dev, reg::EICS, 0x0101);
    assert_eq!(rd(&dev, reg::EIMS), 0);
    dev.write_register(0, reg::EICR, Width::B1, 0x01).unwrap();
    assert_eq!(rd(&dev, reg::EICR), 0x0100, "bit 8 was not written");
}
