//! The device-model API end to end: edu's registers through the API and
//! through a trapped mapping, interrupts (delivered, masked, pending),
//! DMA faults, the gate (memory off, reset), and the process's own munmap
//! of a register mapping.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use barmap::device::{caps, pci};
use barmap::touch::{self, Fault};
use barmap::{Error, Placement, Prot};
use barmap_models::edu::{self, Edu};
use barmap_models::{
    Ctx, DeviceModel, Host, IommuFault, IrqIndex, Layout, ModelDevice, ModelMapping, Width,
};

/// Surroundings that record what the device did: the signalled vectors,
/// the INTx level, and DMA over one IOVA window of its own memory.
#[derive(Default)]
struct Recorder {
    enabled: Mutex<Vec<IrqIndex>>,
    signals: Mutex<Vec<(IrqIndex, u32)>>,
    intx: AtomicBool,
    /// IOVA window: (iova, bytes, writable).
    window: Mutex<(u64, Vec<u8>, bool)>,
}

impl Recorder {
    fn enable(&self, i: IrqIndex) {
        self.enabled.lock().unwrap().push(i);
    }
    fn take(&self) -> Vec<(IrqIndex, u32)> {
        std::mem::take(&mut self.signals.lock().unwrap())
    }
    fn window(&self, iova: u64, len: usize, writable: bool) {
        *self.window.lock().unwrap() = (iova, vec![0; len], writable);
    }
}

impl Host for Recorder {
    fn signal(&self, index: IrqIndex, vector: u32) -> bool {
        self.signals.lock().unwrap().push((index, vector));
        true
    }
    fn enabled(&self, index: IrqIndex) -> bool {
        self.enabled.lock().unwrap().contains(&index)
    }
    fn set_intx(&self, level: bool) {
        if level && !self.intx.swap(true, Ordering::SeqCst) {
            self.signals.lock().unwrap().push((IrqIndex::Intx, 0));
        }
        self.intx.store(level, Ordering::SeqCst);
    }
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), IommuFault> {
        let w = self.window.lock().unwrap();
        let at = iova.checked_sub(w.0).map(|a| a as usize);
        match at {
            Some(a) if a + buf.len() <= w.1.len() => {
                buf.copy_from_slice(&w.1[a..a + buf.len()]);
                Ok(())
            }
            _ => Err(IommuFault::Unmapped {
                iova,
                len: buf.len() as u64,
            }),
        }
    }
    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), IommuFault> {
        let mut w = self.window.lock().unwrap();
        let at = iova.checked_sub(w.0).map(|a| a as usize);
        match at {
            Some(a) if a + data.len() <= w.1.len() => {
                if !w.2 {
                    return Err(IommuFault::Permission { iova, write: true });
                }
                w.1[a..a + data.len()].copy_from_slice(data);
                Ok(())
            }
            _ => Err(IommuFault::Unmapped {
                iova,
                len: data.len() as u64,
            }),
        }
    }
}

fn edu_device() -> (ModelDevice, Arc<Recorder>) {
    let dev = ModelDevice::new(Edu::default()).unwrap();
    let host = Arc::new(Recorder::default());
    dev.set_host(host.clone());
    let cmd = dev.device().command() | pci::COMMAND_MASTER;
    dev.write_config(pci::COMMAND, &cmd.to_le_bytes()).unwrap();
    (dev, host)
}

fn rd(dev: &ModelDevice, off: u64) -> u64 {
    let w = if off >= 0x80 { Width::B8 } else { Width::B4 };
    dev.read_register(0, off, w).unwrap()
}

fn wr(dev: &ModelDevice, off: u64, v: u64) {
    let w = if off >= 0x80 { Width::B8 } else { Width::B4 };
    dev.write_register(0, off, w, v).unwrap()
}

fn map(dev: &ModelDevice) -> ModelMapping {
    dev.map(0, 0, 1 << 20, Prot::ReadWrite, Placement::Anywhere)
        .unwrap()
}

fn reg(m: &ModelMapping, off: usize) -> *mut u32 {
    m.as_ptr().wrapping_add(off).cast()
}

#[test]
fn edu_identification_and_liveness_return_the_id_and_the_complement() {
    let (dev, _) = edu_device();
    assert_eq!(rd(&dev, 0x00), 0x0100_00ed);
    assert_eq!(rd(&dev, 0x04), 0, "addr4 starts at 0");
    wr(&dev, 0x04, 0x1234_5678);
    assert_eq!(rd(&dev, 0x04), 0xedcb_a987);
    wr(&dev, 0x00, 0xdead);
    assert_eq!(rd(&dev, 0x00), 0x0100_00ed, "identification is read-only");
    assert_eq!(
        dev.read_register(0, 0x00, Width::B2).unwrap(),
        0xffff,
        "below 0x80 only 4-byte accesses: others read all ones"
    );
    assert_eq!(rd(&dev, 0x40), 0xffff_ffff, "unknown offsets read all ones");
}

#[test]
fn edu_factorial_clears_its_status_bit_and_interrupts_when_asked() {
    let (dev, host) = edu_device();
    host.enable(IrqIndex::Msi);
    wr(&dev, 0x08, 10);
    assert_eq!(rd(&dev, 0x20) & edu::STATUS_COMPUTING as u64, 0);
    assert_eq!(rd(&dev, 0x08), 3_628_800);
    assert!(host.take().is_empty(), "no interrupt without status 0x80");
    wr(&dev, 0x20, 0x80);
    assert_eq!(rd(&dev, 0x20), 0x80);
    wr(&dev, 0x08, 5);
    assert_eq!(rd(&dev, 0x08), 120);
    assert_eq!(host.take(), vec![(IrqIndex::Msi, 0)]);
    assert_eq!(rd(&dev, 0x24), u64::from(edu::FACT_IRQ));
    wr(&dev, 0x20, 0);
    assert_eq!(rd(&dev, 0x20), 0, "0x80 cleared by writing it 0");
}

#[test]
fn edu_interrupt_raise_ors_status_and_acknowledge_clears_bits() {
    let (dev, host) = edu_device();
    host.enable(IrqIndex::Msi);
    wr(&dev, 0x60, 0x10);
    wr(&dev, 0x60, 0x01);
    assert_eq!(rd(&dev, 0x24), 0x11);
    assert_eq!(host.take(), vec![(IrqIndex::Msi, 0), (IrqIndex::Msi, 0)]);
    wr(&dev, 0x64, 0x10);
    assert_eq!(rd(&dev, 0x24), 0x01);
    wr(&dev, 0x64, 0x01);
    assert_eq!(rd(&dev, 0x24), 0);
    assert!(host.take().is_empty(), "acknowledge raises nothing");
}

#[test]
fn edu_intx_is_level_triggered_while_interrupt_status_is_not_zero() {
    let (dev, host) = edu_device();
    host.enable(IrqIndex::Intx);
    wr(&dev, 0x60, 0x4);
    wr(&dev, 0x60, 0x8);
    assert_eq!(host.take(), vec![(IrqIndex::Intx, 0)], "one rising edge");
    assert!(host.intx.load(Ordering::SeqCst));
    wr(&dev, 0x64, 0x4);
    assert!(host.intx.load(Ordering::SeqCst), "still 0x8 pending");
    wr(&dev, 0x64, 0x8);
    assert!(
        !host.intx.load(Ordering::SeqCst),
        "lowered when status is 0"
    );
}

#[test]
fn edu_dma_moves_data_both_ways_and_interrupts_when_done() {
    let (dev, host) = edu_device();
    host.enable(IrqIndex::Msi);
    host.window(0x10_0000, 8192, true);
    for (i, b) in host.window.lock().unwrap().1[..4096].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    wr(&dev, 0x80, 0x10_0000);
    wr(&dev, 0x88, edu::DMA_START);
    wr(&dev, 0x90, 4096);
    wr(&dev, 0x98, edu::DMA_RUN);
    assert_eq!(rd(&dev, 0x98) & edu::DMA_RUN, 0, "finished");
    assert!(host.take().is_empty());
    wr(&dev, 0x80, edu::DMA_START);
    wr(&dev, 0x88, 0x10_1000);
    wr(
        &dev,
        0x98,
        edu::DMA_RUN | edu::DMA_TO_RAM | edu::DMA_IRQ_ON_DONE,
    );
    assert_eq!(host.take(), vec![(IrqIndex::Msi, 0)]);
    assert_eq!(rd(&dev, 0x24), u64::from(edu::DMA_IRQ));
    let w = host.window.lock().unwrap();
    assert_eq!(w.1[..4096], w.1[4096..]);
}

#[test]
fn edu_dma_to_a_read_only_or_unmapped_iova_is_a_fault_that_changes_nothing() {
    let (dev, host) = edu_device();
    host.window(0x10_0000, 4096, false);
    host.window.lock().unwrap().1.fill(0x5a);
    // RAM (read-only, but readable) to edu works.
    wr(&dev, 0x80, 0x10_0000);
    wr(&dev, 0x88, edu::DMA_START);
    wr(&dev, 0x90, 16);
    wr(&dev, 0x98, edu::DMA_RUN);
    // edu to the read-only RAM: refused, RAM unchanged.
    host.window.lock().unwrap().1.fill(0);
    wr(&dev, 0x80, edu::DMA_START);
    wr(&dev, 0x88, 0x10_0000);
    wr(&dev, 0x98, edu::DMA_RUN | edu::DMA_TO_RAM);
    assert!(host.window.lock().unwrap().1.iter().all(|&b| b == 0));
    assert_eq!(
        rd(&dev, 0x98) & edu::DMA_RUN,
        0,
        "the engine finishes anyway"
    );
    // From an unmapped IOVA: the edu buffer keeps what it had.
    wr(&dev, 0x80, 0x90_0000);
    wr(&dev, 0x88, edu::DMA_START);
    wr(&dev, 0x98, edu::DMA_RUN);
    host.window(0x20_0000, 4096, true);
    wr(&dev, 0x80, edu::DMA_START);
    wr(&dev, 0x88, 0x20_0000);
    wr(&dev, 0x98, edu::DMA_RUN | edu::DMA_TO_RAM);
    assert_eq!(host.window.lock().unwrap().1[..16], [0x5a; 16]);
    // Bus mastering off: DMA is refused as well.
    let cmd = dev.device().command() & !pci::COMMAND_MASTER;
    dev.write_config(pci::COMMAND, &cmd.to_le_bytes()).unwrap();
    host.window.lock().unwrap().1.fill(0);
    wr(&dev, 0x98, edu::DMA_RUN | edu::DMA_TO_RAM);
    assert!(host.window.lock().unwrap().1.iter().all(|&b| b == 0));
}

#[test]
fn edu_registers_through_a_trapped_mapping_behave_as_through_the_api() {
    let (dev, _) = edu_device();
    let m = map(&dev);
    assert!(m.is_trapped());
    // SAFETY: pointers into the live register mapping; each access traps.
    unsafe {
        assert_eq!(std::ptr::read_volatile(reg(&m, 0x00)), 0x0100_00ed);
        std::ptr::write_volatile(reg(&m, 0x04), 0x0f0f_0f0f);
        assert_eq!(std::ptr::read_volatile(reg(&m, 0x04)), 0xf0f0_f0f0);
        std::ptr::write_volatile(reg(&m, 0x08), 6);
        assert_eq!(std::ptr::read_volatile(reg(&m, 0x08)), 720);
        let dma = m.as_ptr().add(0x80).cast::<u64>();
        std::ptr::write_volatile(dma, 0x0123_4567_89ab);
        assert_eq!(std::ptr::read_volatile(dma), 0x0123_4567_89ab);
        let byte = m.as_ptr().add(0x00);
        assert_eq!(std::ptr::read_volatile(byte), 0xff, "1-byte load: all ones");
        let signed = std::ptr::read_volatile(m.as_ptr().add(0x04).cast::<i16>());
        assert_eq!(signed, -1, "2-byte load: all ones, sign-extended");
    }
    assert_eq!(
        rd(&dev, 0x04),
        0xf0f0_f0f0,
        "the mapping and the API see one device"
    );
}

#[test]
fn a_register_access_while_memory_is_disabled_gets_sigbus_and_pread_fails() {
    let (dev, _) = edu_device();
    let m = map(&dev);
    // SAFETY: 4-byte aligned pointer into the live mapping.
    assert_eq!(unsafe { touch::read_u32(reg(&m, 0)) }, Ok(0x0100_00ed));
    dev.device().set_memory_enabled(false);
    // SAFETY: as above.
    assert_eq!(unsafe { touch::read_u32(reg(&m, 0)) }, Err(Fault::Sigbus));
    // SAFETY: as above.
    assert_eq!(
        unsafe { touch::write_u32(reg(&m, 4), 1) },
        Err(Fault::Sigbus)
    );
    assert!(matches!(
        dev.read_register(0, 0, Width::B4),
        Err(Error::MemoryDisabled)
    ));
    dev.device().set_memory_enabled(true);
    assert_eq!(
        rd(&dev, 0x04),
        0,
        "the refused write never reached the model"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { touch::read_u32(reg(&m, 0)) }, Ok(0x0100_00ed));
    dev.device().set_power_state(barmap::PowerState::D3hot);
    // SAFETY: as above.
    assert_eq!(
        unsafe { touch::read_u32(reg(&m, 0)) },
        Err(Fault::Sigbus),
        "low power"
    );
    dev.device().set_power_state(barmap::PowerState::D0);
}

/// A register whose reset blocks until told to finish, and which records
/// whether an access reached it meanwhile.
struct Slow {
    value: u32,
    in_reset: Option<mpsc::Sender<()>>,
    finish: Arc<Mutex<mpsc::Receiver<()>>>,
    reached_during_reset: Arc<AtomicBool>,
    resetting: bool,
}

impl DeviceModel for Slow {
    fn layout(&self) -> Layout {
        Layout::new(0x1234, 0x5100).registers(0, 4096)
    }
    fn read(&mut self, _: &mut Ctx<'_>, _: u32, _: u64, _: Width) -> u64 {
        if self.resetting {
            self.reached_during_reset.store(true, Ordering::SeqCst);
        }
        u64::from(self.value)
    }
    fn write(&mut self, _: &mut Ctx<'_>, _: u32, _: u64, _: Width, v: u64) {
        self.value = v as u32;
    }
    fn reset(&mut self) {
        self.resetting = true;
        if let Some(tx) = &self.in_reset {
            let _ = tx.send(());
        }
        // The model's lock is held here, so an access cannot be observed
        // from inside: it is the gate that must hold it back.
        let _ = self.finish.lock().unwrap().recv();
        self.value = 0x5e7;
        self.resetting = false;
    }
}

#[test]
fn a_register_access_during_a_reset_waits_and_sees_the_reset_value() {
    let (in_tx, in_rx) = mpsc::channel();
    let (fin_tx, fin_rx) = mpsc::channel();
    let reached = Arc::new(AtomicBool::new(false));
    let dev = Arc::new(
        ModelDevice::new(Slow {
            value: 0,
            in_reset: Some(in_tx),
            finish: Arc::new(Mutex::new(fin_rx)),
            reached_during_reset: reached.clone(),
            resetting: false,
        })
        .unwrap(),
    );
    dev.write_register(0, 0, Width::B4, 7).unwrap();
    let m = Arc::new(
        dev.map(0, 0, 4096, Prot::ReadWrite, Placement::Anywhere)
            .unwrap(),
    );
    let resetter = {
        let dev = dev.clone();
        std::thread::spawn(move || dev.reset().unwrap())
    };
    in_rx.recv().unwrap(); // the reset holds the gate now
    let done = Arc::new(AtomicU64::new(0));
    let reader = {
        let (m, done) = (m.clone(), done.clone());
        std::thread::spawn(move || {
            // SAFETY: a pointer into the live register mapping.
            let v = unsafe { touch::read_u32(m.as_ptr().cast()) };
            done.store(1, Ordering::SeqCst);
            v
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let finished_early = done.load(Ordering::SeqCst) == 1;
    fin_tx.send(()).unwrap();
    resetter.join().unwrap();
    assert_eq!(
        reader.join().unwrap(),
        Ok(0x5e7),
        "the reset value, after the reset"
    );
    assert!(
        !finished_early,
        "the access did not complete while the reset ran"
    );
    assert!(!reached.load(Ordering::SeqCst));
}

#[test]
fn edu_reset_restores_every_register() {
    let (dev, host) = edu_device();
    host.enable(IrqIndex::Msi);
    wr(&dev, 0x04, 1);
    wr(&dev, 0x20, 0x80);
    wr(&dev, 0x60, 0x3);
    wr(&dev, 0x80, 0x1000);
    dev.reset().unwrap();
    for (off, v) in [
        (0x04, 0),
        (0x08, 0),
        (0x20, 0),
        (0x24, 0),
        (0x80, 0),
        (0x98, 0),
    ] {
        assert_eq!(rd(&dev, off), v, "offset {off:#x}");
    }
}

#[test]
fn an_address_the_process_unmapped_and_reused_is_never_emulated() {
    let (dev, _) = edu_device();
    let m = map(&dev);
    let addr = m.addr();
    // SAFETY: the program's own munmap of the mapping's first page, then
    // anonymous memory (inaccessible) in its place.
    let reused = unsafe {
        assert_eq!(libc::munmap(addr as *mut _, 4096), 0);
        libc::mmap(
            addr as *mut _,
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(reused as usize, addr);
    // SAFETY: a pointer into the reused page: an ordinary SIGSEGV.
    assert_eq!(
        unsafe { touch::read_u32(addr as *const u32) },
        Err(Fault::Sigsegv)
    );
    // SAFETY: the page is ours; made readable, it is plain memory.
    unsafe {
        libc::mprotect(addr as *mut _, 4096, libc::PROT_READ);
        assert_eq!(touch::read_u32(addr as *const u32), Ok(0));
        libc::munmap(addr as *mut _, 4096);
    }
    // The rest of the mapping still traps.
    // SAFETY: inside the live second page of the mapping.
    assert_eq!(unsafe { touch::read_u32(reg(&m, 0x1000)) }, Ok(0xffff_ffff));
}

/// A device with eight MSI-X vectors whose table and PBA are in its
/// register BAR; writing a vector number to 0x0 raises it.
struct Msix;

impl DeviceModel for Msix {
    fn layout(&self) -> Layout {
        Layout::new(0x1234, 0x5101)
            .registers(0, 16384)
            .msix(8, 0, 0x2000, 0x3000)
    }
    fn read(&mut self, _: &mut Ctx<'_>, _: u32, _: u64, _: Width) -> u64 {
        0
    }
    fn write(&mut self, ctx: &mut Ctx<'_>, _: u32, off: u64, _: Width, v: u64) {
        if off == 0 {
            ctx.raise(v as u32);
        }
    }
    fn reset(&mut self) {}
}

#[test]
fn msix_vectors_are_delivered_when_unmasked_and_pending_while_masked() {
    let dev = ModelDevice::new(Msix).unwrap();
    let host = Arc::new(Recorder::default());
    host.enable(IrqIndex::Msix);
    dev.set_host(host.clone());
    let ctl_at = caps::MSIX as u64 + 2;
    let control = |v: u64| 0x2000 + 16 * v + 12;
    // Vectors are masked at reset: raising 3 only sets its pending bit.
    dev.write_register(0, 0, Width::B4, 3).unwrap();
    assert!(host.take().is_empty());
    assert!(dev.msix_pending(3));
    assert_eq!(dev.read_register(0, 0x3000, Width::B8).unwrap(), 1 << 3);
    // Unmasking delivers it and clears the bit.
    dev.write_register(0, control(3), Width::B4, 0).unwrap();
    assert_eq!(host.take(), vec![(IrqIndex::Msix, 3)]);
    assert_eq!(dev.read_register(0, 0x3000, Width::B8).unwrap(), 0);
    // Unmasked: delivered at once.
    dev.write_register(0, 0, Width::B4, 3).unwrap();
    assert_eq!(host.take(), vec![(IrqIndex::Msix, 3)]);
    // The function mask holds it pending until cleared.
    let mut ctl = [0u8; 2];
    dev.device().read_config(ctl_at, &mut ctl).unwrap();
    let masked = u16::from_le_bytes(ctl) | 0x8000 | 0x4000;
    dev.write_config(ctl_at, &masked.to_le_bytes()).unwrap();
    dev.write_register(0, 0, Width::B4, 3).unwrap();
    assert!(host.take().is_empty());
    assert!(dev.msix_pending(3));
    dev.write_config(ctl_at, &(masked & !0x4000).to_le_bytes())
        .unwrap();
    assert_eq!(host.take(), vec![(IrqIndex::Msix, 3)]);
    // Table entries read back; an out-of-range vector is dropped.
    dev.write_register(0, 0x2000, Width::B8, 0xfee0_0000)
        .unwrap();
    assert_eq!(
        dev.read_register(0, 0x2000, Width::B8).unwrap(),
        0xfee0_0000
    );
    dev.write_register(0, 0, Width::B4, 9).unwrap();
    assert!(host.take().is_empty());
    // A reset masks every vector again and clears pending bits.
    dev.write_register(0, control(5), Width::B4, 1).unwrap();
    dev.write_register(0, 0, Width::B4, 5).unwrap();
    assert!(dev.msix_pending(5));
    dev.reset().unwrap();
    assert!(!dev.msix_pending(5));
    assert_eq!(dev.read_register(0, control(3), Width::B4).unwrap(), 1);
}

#[test]
fn register_reads_through_the_api_split_like_the_kernels_region_access() {
    let (dev, _) = edu_device();
    wr(&dev, 0x80, 0x1111);
    wr(&dev, 0x88, 0x2222);
    // 0x7c..0x90: 4 bytes at 0x7c (no register: all ones), then 8 at 0x80
    // and 8 at 0x88.
    let mut buf = [0u8; 20];
    dev.read(0, 0x7c, &mut buf).unwrap();
    assert_eq!(
        u32::from_le_bytes(buf[0..4].try_into().unwrap()),
        0xffff_ffff
    );
    assert_eq!(u64::from_le_bytes(buf[4..12].try_into().unwrap()), 0x1111);
    assert_eq!(u64::from_le_bytes(buf[12..20].try_into().unwrap()), 0x2222);
    // 8 bytes at 0: one 8-byte access, which edu answers with all ones
    // below 0x80 (as the kernel's 8-byte region access meets QEMU's).
    let mut id = [0u8; 8];
    dev.read(0, 0, &mut id).unwrap();
    assert_eq!(id, [0xff; 8]);
    dev.read(0, 0, &mut id[..4]).unwrap();
    assert_eq!(u32::from_le_bytes(id[..4].try_into().unwrap()), 0x0100_00ed);
    assert!(matches!(
        dev.read(0, (1 << 20) - 4, &mut [0u8; 8]),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.read_register(0, 2, Width::B4),
        Err(Error::InvalidSpec(_))
    ));
}
