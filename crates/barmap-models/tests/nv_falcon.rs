//! The NVIDIA falcon model through the device-model API, driven by the
//! sequences of the kernel's VFIO selftest driver (`nv_falcon.c`) on every
//! chip it knows: identity, falcon reset and scrubbing, the FBIF set-up,
//! transfers in both directions, what stalls a transfer (an IOMMU fault,
//! bus mastering off, a missing set-up step), Hopper's FSP exchange, the
//! DMEM ports, the `id=` option, and a function-level reset.

use std::sync::Arc;

use barmap::device::pci;
use barmap_models::nv_falcon::{self, falcon, fbif, reg, Arch, Chip, NvFalcon, CHIPS};
use barmap_models::{ModelDevice, Width};

mod common;
use common::Window;

/// The IOVA of the test's one window of memory.
const WINDOW: u64 = 0x10_0000;
/// Its size.
const WINDOW_LEN: usize = 1 << 16;
/// The source buffer.
const SRC: u64 = WINDOW;
/// The destination buffer.
const DST: u64 = WINDOW + 0x8000;
/// An IOVA nothing maps.
const UNMAPPED: u64 = 0x8000_0000;

/// A GPU with bus mastering on, and what the driver knows of it.
struct Gpu {
    dev: ModelDevice,
    host: Arc<Window>,
    arch: Arch,
    base: u32,
    fbif: u32,
}

fn gpu(chip: Chip) -> Gpu {
    let dev = ModelDevice::new(NvFalcon::new(chip)).unwrap();
    let host = Window::quiet(WINDOW, WINDOW_LEN);
    dev.set_host(host.clone());
    let cmd = dev.device().command() | pci::COMMAND_MASTER;
    dev.write_config(pci::COMMAND, &cmd.to_le_bytes()).unwrap();
    let arch = Arch::of(chip.boot0).unwrap();
    let (base, fbif) = arch.falcon();
    Gpu {
        dev,
        host,
        arch,
        base,
        fbif,
    }
}

fn t4() -> Gpu {
    gpu(nv_falcon::chip_by_device(nv_falcon::DEFAULT_DEVICE).unwrap())
}

fn hopper() -> Gpu {
    gpu(nv_falcon::chip_by_device(0x2331).unwrap())
}

impl Gpu {
    fn rd(&self, off: u32) -> u32 {
        self.dev
            .read_register(0, u64::from(off), Width::B4)
            .unwrap() as u32
    }
    fn wr(&self, off: u32, v: u32) {
        self.dev
            .write_register(0, u64::from(off), Width::B4, u64::from(v))
            .unwrap()
    }
    fn f(&self, r: u32) -> u32 {
        self.base + r
    }

    /// The driver's probe: the identity it checks.
    fn probe(&self) -> Option<Arch> {
        let mut id = [0u8; 4];
        self.dev.read_config(0, &mut id).unwrap();
        let mut class = [0u8; 2];
        self.dev.read_config(0x0a, &mut class).unwrap();
        if u16::from_le_bytes([id[0], id[1]]) != 0x10de || class[1] != 0x03 {
            return None;
        }
        Arch::of(self.rd(reg::PMC_BOOT_0))
    }

    /// Polls `off` until `(v & mask) == want`, at most `tries` reads.
    fn poll(&self, off: u32, want: u32, mask: u32, tries: usize) -> Result<usize, u32> {
        let mut v = 0;
        for i in 0..tries {
            v = self.rd(off);
            if v & mask == want {
                return Ok(i + 1);
            }
        }
        Err(v)
    }

    /// Hopper's FSP exchange: one message on channel 2, its answer.
    fn fsp_rpc(&self, words: &[u32]) -> Vec<u32> {
        let emem = 2 * nv_falcon::FSP_CHANNEL_SIZE;
        let (port, data) = (reg::FSP_EMEMC + 16, reg::FSP_EMEMC + 20);
        let (head, tail) = (reg::FSP_QUEUE_HEAD + 16, reg::FSP_QUEUE_HEAD + 20);
        let (mhead, mtail) = (reg::FSP_MSG_QUEUE_HEAD + 16, reg::FSP_MSG_QUEUE_HEAD + 20);
        assert_eq!(self.rd(head), self.rd(tail), "command queue empty");
        self.wr(port, emem | nv_falcon::MEMC_AINCR | nv_falcon::MEMC_AINCW);
        for w in words {
            self.wr(data, *w);
        }
        self.wr(tail, emem + 4 * (words.len() as u32 - 1));
        self.wr(head, emem);
        assert_eq!(self.rd(head), self.rd(tail), "the FSP took the command");
        let (h, t) = (self.rd(mhead), self.rd(mtail));
        assert_ne!(h, t, "an answer is queued");
        let n = (t - h + 4) / 4;
        self.wr(port, emem | nv_falcon::MEMC_AINCR | nv_falcon::MEMC_AINCW);
        let answer = (0..n).map(|_| self.rd(data)).collect();
        self.wr(mtail, h);
        answer
    }

    /// The driver's init, as `nv_falcon_init` does it.
    fn init(&self) {
        if self.arch >= Arch::Hopper {
            assert_eq!(self.rd(reg::FSP_BOOT_COMPLETE), 0xff);
            let msg = [0xc000_0000, 0x7e | (0x10de << 8) | (0x22 << 24), 1];
            let answer = self.fsp_rpc(&msg);
            assert_eq!(answer.len(), 5);
            assert_eq!(answer[1] >> 24, nv_falcon::NVDM_RESPONSE);
            assert_eq!(answer[3], nv_falcon::NVDM_FBDMA);
            assert_eq!(answer[4], 0, "FBDMA enabled");
            assert_ne!(self.rd(0x8443c0) >> 16, 0xbadf, "OFA DMA supported");
        }
        if self.arch >= Arch::Turing {
            let boot = if self.arch >= Arch::Hopper {
                (reg::FSP_BOOT_COMPLETE, 0xff)
            } else {
                (reg::BOOT_COMPLETE, 0x3ff)
            };
            assert_eq!(self.rd(boot.0), boot.1);
            assert_eq!(self.rd(reg::MEM_CLEAR), 1);
        }
        self.disable();
        self.enable();
        self.wr(self.f(falcon::DMEMC), 0);
        let tc = self.rd(self.fbif + fbif::TRANSCFG);
        self.wr(self.fbif + fbif::TRANSCFG, (tc & !3) | 5);
        self.wr(self.fbif + fbif::CTL2, 1);
        let ctl = self.rd(self.fbif + fbif::CTL);
        self.wr(self.fbif + fbif::CTL, ctl | 0x90);
        let dmactl = self.rd(self.f(falcon::DMACTL));
        self.wr(self.f(falcon::DMACTL), dmactl & !1);
    }

    fn pmc_mask(&self) -> u32 {
        self.arch.pmc_mask()
    }

    /// `falcon_disable`.
    fn disable(&self) {
        if self.arch >= Arch::Hopper {
            return;
        }
        if self.pmc_mask() != 0 {
            let v = self.rd(reg::PMC_ENABLE);
            self.wr(reg::PMC_ENABLE, v & !self.pmc_mask());
        } else {
            self.wr(self.f(falcon::ENGINE_RESET), 1);
        }
    }

    /// `falcon_enable`: up again, core selected, scrubbing waited for.
    fn enable(&self) {
        if self.arch >= Arch::Hopper {
            return;
        }
        if self.arch == Arch::Ada && self.rd(self.f(falcon::MAILBOX_TEST)) == nv_falcon::PRI_ERROR {
            self.wr(self.f(falcon::ENGINE_RESET), 1);
        }
        if self.pmc_mask() != 0 {
            let v = self.rd(reg::PMC_ENABLE);
            self.wr(reg::PMC_ENABLE, v | self.pmc_mask());
        } else {
            self.wr(self.f(falcon::ENGINE_RESET), 0);
        }
        let cs = self.rd(self.f(falcon::CORE_SELECT));
        self.wr(self.f(falcon::CORE_SELECT), cs & !0x30);
        let reads = self
            .poll(self.f(falcon::DMACTL), 0, nv_falcon::DMACTL_SCRUBBING, 10)
            .expect("scrubbing ends");
        assert_eq!(reads, 2, "scrubbing is seen once after a falcon reset");
    }

    /// One transfer (`nv_falcon_dma`); whether it completed.
    fn dma(&self, addr: u64, size: u32, write: bool) -> bool {
        self.wr(reg::DMA_ADDR_TOP, ((addr >> 47) & 0x1ffff) as u32);
        self.wr(self.f(falcon::DMATRFBASE1), ((addr >> 40) & 0x7f) as u32);
        self.wr(self.f(falcon::DMATRFBASE), (addr >> 8) as u32);
        self.wr(self.f(falcon::DMATRFFBOFFS), (addr & 0xff) as u32);
        self.wr(self.f(falcon::DMATRFMOFFS), 0);
        let mut cmd = (size.trailing_zeros() - 2) << 8;
        if write {
            cmd |= nv_falcon::CMD_WRITE;
        }
        self.wr(self.f(falcon::DMATRFCMD), cmd);
        self.poll(self.f(falcon::DMATRFCMD), 2, 2, 3).is_ok()
    }

    /// `nv_falcon_memcpy_wait`: chunks of powers of two inside 256-byte
    /// blocks, each a read into DMEM and a write out of it.
    fn memcpy(&self, mut src: u64, mut dst: u64, mut len: u64) -> bool {
        let block = |a: u64| match a & 0xff {
            0 => 256,
            o => 1 << o.trailing_zeros(),
        };
        while len > 0 {
            let chunk = (1u64 << (63 - len.leading_zeros()))
                .min(block(src))
                .min(block(dst));
            if !self.dma(src, chunk as u32, false) || !self.dma(dst, chunk as u32, true) {
                return false;
            }
            src += chunk;
            dst += chunk;
            len -= chunk;
        }
        true
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

#[test]
fn nv_falcon_identity_is_what_the_driver_probes_on_every_chip() {
    for c in CHIPS {
        let g = gpu(*c);
        let mut b = [0u8; 4];
        g.dev.read_config(0, &mut b).unwrap();
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), c.device, "{}", c.name);
        let mut rev = [0u8; 1];
        g.dev.read_config(0x08, &mut rev).unwrap();
        assert_eq!(
            rev[0], c.boot0 as u8,
            "{}: revision is PMC_BOOT_0's",
            c.name
        );
        assert_eq!(g.probe(), Some(g.arch), "{}", c.name);
        assert_eq!(g.rd(reg::PMC_BOOT_0), c.boot0);
    }
    assert_eq!(t4().arch, Arch::Turing);
}

#[test]
fn nv_falcon_the_driver_copies_through_dmem_on_every_chip() {
    for c in CHIPS {
        let g = gpu(*c);
        g.init();
        let data = pattern(1024, c.device as u8);
        g.host.put(SRC, &data);
        assert!(g.memcpy(SRC, DST, 1024), "{}", c.name);
        assert_eq!(g.host.get(DST, 1024), data, "{}", c.name);
        // Unaligned ends and a chunk of every size from 4 to 256.
        let data = pattern(1020, 3);
        g.host.put(SRC + 4, &data);
        assert!(g.memcpy(SRC + 4, DST + 0x804, 1020), "{}", c.name);
        assert_eq!(g.host.get(DST + 0x804, 1020), data, "{}", c.name);
        // init_remove: ten times down and up again, then still copying.
        for _ in 0..10 {
            g.disable();
            g.init();
        }
        assert!(g.memcpy(SRC, DST, 256), "{}", c.name);
        g.disable();
        if g.arch < Arch::Hopper {
            assert_eq!(g.rd(g.f(falcon::DMATRFCMD)), nv_falcon::PRI_ERROR);
        }
    }
}

#[test]
fn nv_falcon_a_falcon_reset_scrubs_dmem_and_clears_the_dma_setup() {
    let g = t4();
    g.init();
    let port = g.f(falcon::DMEMC);
    g.wr(port, nv_falcon::MEMC_AINCW);
    for w in [0x1111_1111u32, 0x2222_2222] {
        g.wr(port + 4, w);
    }
    g.disable();
    assert_eq!(g.rd(g.f(falcon::ENGINE_RESET)), 1);
    assert_eq!(g.rd(g.f(falcon::DMACTL)), nv_falcon::PRI_ERROR);
    g.wr(g.f(falcon::DMATRFBASE), 0x1234); // dropped while in reset
    g.wr(g.f(falcon::ENGINE_RESET), 0);
    let dmactl = g.rd(g.f(falcon::DMACTL));
    assert_eq!(
        dmactl,
        nv_falcon::DMACTL_SCRUBBING | nv_falcon::DMACTL_REQUIRE_CTX
    );
    assert_eq!(g.rd(g.f(falcon::DMACTL)), nv_falcon::DMACTL_REQUIRE_CTX);
    assert_eq!(g.rd(g.f(falcon::DMATRFBASE)), 0);
    assert_eq!(g.rd(g.fbif + fbif::CTL), 0);
    g.wr(port, nv_falcon::MEMC_AINCR);
    assert_eq!([g.rd(port + 4), g.rd(port + 4)], [0, 0], "DMEM scrubbed");
}

#[test]
fn nv_falcon_pmc_enable_gates_the_falcon_up_to_gp100() {
    let g = gpu(nv_falcon::chip_by_device(0x118a).unwrap()); // Kepler
    g.init();
    assert_eq!(
        g.pmc_mask(),
        nv_falcon::PMC_ENABLE_PWR | nv_falcon::PMC_ENABLE_HUB
    );
    let on = g.rd(reg::PMC_ENABLE);
    g.wr(reg::PMC_ENABLE, on & !nv_falcon::PMC_ENABLE_HUB);
    assert_eq!(g.rd(g.f(falcon::DMACTL)), nv_falcon::PRI_ERROR, "HUB too");
    g.wr(reg::PMC_ENABLE, on);
    assert_eq!(g.rd(g.f(falcon::DMACTL)) & 0x7, 0x7, "came up reset");
}

#[test]
fn nv_falcon_each_missing_init_step_stalls_the_transfer() {
    let g = t4();
    g.host.put(SRC, &pattern(64, 1));
    // Power-on: DMACTL requires a context; with the FBIF set up, that
    // alone stalls the transfer.
    g.wr(g.fbif + fbif::CTL, 0x90);
    g.wr(g.fbif + fbif::TRANSCFG, 5);
    assert!(!g.dma(SRC, 64, false), "require-context set");
    assert_eq!(g.rd(g.f(falcon::DMATRFCMD)) & nv_falcon::CMD_IDLE, 0);
    let dmactl = g.rd(g.f(falcon::DMACTL));
    g.wr(g.f(falcon::DMACTL), dmactl & !1);
    assert!(g.dma(SRC, 64, false));
    // Each FBIF step, alone undone.
    g.wr(g.fbif + fbif::CTL, 0x10);
    assert!(
        !g.dma(SRC, 64, false),
        "FBIF_CTL does not allow physical DMA"
    );
    g.wr(g.fbif + fbif::CTL, 0x90);
    assert!(g.dma(SRC, 64, false));
    g.wr(g.fbif + fbif::TRANSCFG, 4);
    assert!(!g.dma(SRC, 64, false), "context 0 targets video memory");
    g.wr(g.fbif + fbif::TRANSCFG, 1);
    assert!(!g.dma(SRC, 64, false), "context 0 is virtual");
    g.wr(g.fbif + fbif::TRANSCFG, 6);
    assert!(g.dma(SRC, 64, false), "non-coherent system memory");
    g.wr(g.fbif + fbif::TRANSCFG, 5);
    // A transfer not aligned to its size, or of an invalid size, stalls.
    assert!(!g.dma(SRC + 4, 64, false));
    g.wr(g.f(falcon::DMATRFCMD), 7 << 8);
    assert_eq!(g.rd(g.f(falcon::DMATRFCMD)) & nv_falcon::CMD_IDLE, 0);
    // IMEM transfers are not modelled.
    g.wr(g.f(falcon::DMATRFCMD), (6 << 8) | nv_falcon::CMD_IMEM);
    assert_eq!(g.rd(g.f(falcon::DMATRFCMD)) & nv_falcon::CMD_IDLE, 0);
    assert!(g.dma(SRC, 64, true), "the next command runs");
    assert_eq!(g.host.get(SRC, 64), pattern(64, 1));
}

#[test]
fn nv_falcon_iommu_faults_stall_the_transfer_and_touch_nothing() {
    let g = t4();
    g.init();
    let before = pattern(256, 9);
    g.host.put(DST, &before);
    g.host.put(SRC, &pattern(256, 2));
    // memcpy_from_unmapped_iova: the read stalls, the write never starts.
    assert!(!g.memcpy(UNMAPPED, DST, 256));
    assert_eq!(g.host.get(DST, 256), before);
    // memcpy_to_unmapped_iova: the read completes, the write stalls.
    assert!(!g.memcpy(SRC, UNMAPPED, 256));
    // mix_and_match: the next copy works without a reset.
    assert!(g.memcpy(SRC, DST, 256));
    assert_eq!(g.host.get(DST, 256), pattern(256, 2));
    // Bus mastering off: every transfer stalls.
    let cmd = g.dev.device().command() & !pci::COMMAND_MASTER;
    g.dev
        .write_config(pci::COMMAND, &cmd.to_le_bytes())
        .unwrap();
    g.host.put(SRC, &pattern(256, 5));
    assert!(!g.memcpy(SRC, DST, 256));
    assert_eq!(g.host.get(DST, 256), pattern(256, 2));
}

#[test]
fn nv_falcon_hopper_ofa_is_locked_until_the_fsp_enables_fbdma() {
    let g = hopper();
    assert_eq!(g.arch, Arch::Hopper);
    assert_eq!(g.base, nv_falcon::OFA);
    assert_eq!(g.rd(0x8443c0), nv_falcon::PRI_ERROR);
    g.wr(g.f(falcon::DMATRFBASE), 0x55);
    assert_eq!(g.rd(g.f(falcon::DMATRFBASE)), nv_falcon::PRI_ERROR);
    // A command the FSP does not know gets an error status.
    let answer = g.fsp_rpc(&[0xc000_0000, 0x7e | (0x10de << 8) | (0x99 << 24), 1]);
    assert_eq!(answer[3], 0x99);
    assert_ne!(answer[4], 0);
    // So does FBDMA with another sub-command, and a message without its
    // start and end bits.
    let answer = g.fsp_rpc(&[0xc000_0000, 0x7e | (0x10de << 8) | (0x22 << 24), 2]);
    assert_ne!(answer[4], 0);
    let answer = g.fsp_rpc(&[0x8000_0000, 0x7e | (0x10de << 8) | (0x22 << 24), 1]);
    assert_ne!(answer[4], 0);
    assert_eq!(g.rd(0x8443c0), nv_falcon::PRI_ERROR);
    g.init();
    assert_eq!(g.rd(g.f(falcon::DMATRFBASE)), 0);
    g.host.put(SRC, &pattern(512, 4));
    assert!(g.memcpy(SRC, DST, 512));
    assert_eq!(g.host.get(DST, 512), pattern(512, 4));
}

#[test]
fn nv_falcon_dmem_ports_read_and_write_with_auto_increment() {
    let g = t4();
    g.init();
    let (c, d) = (g.f(falcon::DMEMC + 8), g.f(falcon::DMEMC + 12)); // port 1
    g.wr(c, 0x100 | nv_falcon::MEMC_AINCW);
    for w in [10u32, 20, 30] {
        g.wr(d, w);
    }
    assert_eq!(g.rd(c) & 0xffff, 0x10c);
    g.wr(c, 0x100 | nv_falcon::MEMC_AINCR);
    assert_eq!([g.rd(d), g.rd(d), g.rd(d)], [10, 20, 30]);
    g.wr(c, 0x104);
    assert_eq!([g.rd(d), g.rd(d)], [20, 20], "no auto-increment");
    // A transfer from DMEM offset 0x100 writes what the port wrote.
    g.wr(g.f(falcon::DMATRFMOFFS), 0x100);
    g.wr(reg::DMA_ADDR_TOP, 0);
    g.wr(g.f(falcon::DMATRFBASE1), 0);
    g.wr(g.f(falcon::DMATRFBASE), (DST >> 8) as u32);
    g.wr(g.f(falcon::DMATRFFBOFFS), 0);
    g.wr(g.f(falcon::DMATRFCMD), (1 << 8) | nv_falcon::CMD_WRITE);
    assert_ne!(g.rd(g.f(falcon::DMATRFCMD)) & nv_falcon::CMD_IDLE, 0);
    assert_eq!(g.host.get(DST, 8), [10, 0, 0, 0, 20, 0, 0, 0]);
}

#[test]
fn nv_falcon_narrow_and_wide_accesses_compose_the_32_bit_registers() {
    let g = t4();
    g.init();
    let r = u64::from(g.f(falcon::DMATRFBASE));
    g.dev.write_register(0, r + 2, Width::B2, 0xbeef).unwrap();
    assert_eq!(g.rd(r as u32), 0xbeef_0000);
    assert_eq!(g.dev.read_register(0, r + 3, Width::B1).unwrap(), 0xbe);
    g.dev
        .write_register(0, r, Width::B8, 0x0000_0044_1234_5678)
        .unwrap();
    assert_eq!(g.rd(r as u32), 0x1234_5678);
    assert_eq!(g.rd(r as u32 + 4), 0x44, "DMATRFMOFFS");
}

#[test]
fn nv_falcon_function_reset_restores_power_on() {
    let g = hopper();
    g.init();
    assert_ne!(g.rd(0x8443c0), nv_falcon::PRI_ERROR);
    g.dev.reset().unwrap();
    assert_eq!(g.rd(0x8443c0), nv_falcon::PRI_ERROR, "FBDMA off again");
    let g = t4();
    g.init();
    g.dev.reset().unwrap();
    assert_eq!(g.rd(g.f(falcon::DMACTL)), nv_falcon::DMACTL_REQUIRE_CTX);
    assert_eq!(g.rd(g.fbif + fbif::CTL), 0);
    assert_eq!(g.rd(g.f(falcon::ENGINE_RESET)), 0);
    assert_ne!(g.rd(g.f(falcon::DMATRFCMD)) & nv_falcon::CMD_IDLE, 0);
}

#[test]
fn nv_falcon_the_id_option_chooses_the_chip() {
    let opt = |v: &str| vec![("id".to_string(), v.to_string())];
    let m = barmap_models::by_name("nv_falcon", &[]).unwrap();
    assert_eq!(m.layout().device, nv_falcon::DEFAULT_DEVICE);
    let m = barmap_models::by_name("nv_falcon", &opt("0x2331")).unwrap();
    assert_eq!(m.layout().device, 0x2331);
    let m = barmap_models::by_name("nv_falcon", &opt("27b8")).unwrap();
    assert_eq!(m.layout().class, 0x03_02_00);
    let e = barmap_models::by_name("nv_falcon", &opt("0x1234"))
        .err()
        .unwrap();
    assert!(e.contains("0x1eb8 (Tesla T4)"), "{e}");
    assert!(barmap_models::by_name("nv_falcon", &opt("zz")).is_err());
    let e = barmap_models::by_name("nv_falcon", &[("version".into(), "1".into())])
        .err()
        .unwrap();
    assert!(e.contains("unknown option"), "{e}");
}
