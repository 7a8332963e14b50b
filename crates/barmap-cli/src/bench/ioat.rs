//! `ioat_copy_1m`, `ioat_copy_64k` next to `memcpy_1m`, `memcpy_64k`: the
//! I/OAT channel model's copy throughput (GB/s) through descriptors vs a
//! plain `memcpy` of the same buffers, in the same run.
//!
//! The device is the front end's (`barmap run --device ioat,xfercap=20`):
//! an emulated IOMMU table maps a buffer of this process, and one
//! descriptor whose `next` points at itself is run DMACOUNT times (as the
//! kernel's selftest driver's storm does), from the DMACOUNT write to the
//! status reading done: descriptor fetch, IOVA translation of both sides
//! and the copy, on the device's worker. The baseline copies the same
//! source to the same destination as many times with `copy_from_slice`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use barmap::device::pci;
use barmap::Policy;
use barmap_front::device::EmuDevice;
use barmap_front::dma::{DmaMapping, DmaTable};
use barmap_front::spec::DeviceSpec;
use barmap_models::ioat::{self, chan, Descriptor};
use barmap_models::Width;

use super::report::{timing, Measurement};
use super::{Bench, Family, Results, MIB, PAGE};

/// Bytes copied per repetition and size.
const TOTAL: usize = 256 * MIB;
/// The IOVA the buffer is mapped at.
const IOVA: u64 = 0x1000_0000;
/// The largest copy measured.
const MAX: usize = MIB;

/// The IOAT model's copies vs memcpy.
pub(super) struct IoatCopy;

/// A page-aligned buffer: one page for the descriptor, then source and
/// destination of [`MAX`] bytes each.
struct Buffer {
    storage: Vec<u8>,
    start: usize,
}

impl Buffer {
    fn new() -> Buffer {
        let len = PAGE + 2 * MAX;
        let storage = vec![0x5au8; len + PAGE];
        let start = (storage.as_ptr() as usize).next_multiple_of(PAGE) - storage.as_ptr() as usize;
        Buffer { storage, start }
    }
    fn bytes(&mut self) -> &mut [u8] {
        let len = PAGE + 2 * MAX;
        &mut self.storage[self.start..self.start + len]
    }
    fn vaddr(&self) -> u64 {
        self.storage[self.start..].as_ptr() as u64
    }
}

struct Engine {
    dev: EmuDevice,
}

impl Engine {
    fn new(buf: &Buffer) -> Result<Engine, String> {
        let spec = DeviceSpec::parse("ioat,xfercap=20", Policy::default())?;
        let dev = EmuDevice::new(spec).map_err(|e| e.to_string())?;
        let mut table = DmaTable::default();
        table
            .map(DmaMapping {
                iova: IOVA,
                size: (PAGE + 2 * MAX) as u64,
                vaddr: buf.vaddr(),
                read: true,
                write: true,
            })
            .map_err(|e| format!("DMA map: {e:?}"))?;
        *dev.dma.lock().unwrap() = Some(Arc::new(Mutex::new(table)));
        let cmd = pci::COMMAND_MEMORY | pci::COMMAND_MASTER;
        dev.model()
            .ok_or("not a model")?
            .write_config(pci::COMMAND, &cmd.to_le_bytes())
            .map_err(|e| e.to_string())?;
        let e = Engine { dev };
        e.wr(chan::CHANCMD, Width::B1, u64::from(ioat::CHANCMD_RESET))?;
        Ok(e)
    }

    fn wr(&self, off: u64, w: Width, v: u64) -> Result<(), String> {
        self.dev
            .model()
            .ok_or("not a model")?
            .write_register(0, ioat::CHANNEL + off, w, v)
            .map_err(|e| e.to_string())
    }

    fn status(&self) -> Result<u64, String> {
        let sts = self
            .dev
            .model()
            .ok_or("not a model")?
            .read_register(0, ioat::CHANNEL + chan::CHANSTS, Width::B8)
            .map_err(|e| e.to_string())?;
        Ok(sts & ioat::CHANSTS_STATUS)
    }

    /// Runs `count` copies of `size` bytes through the self-linked
    /// descriptor at the buffer's start; the time until the status is done.
    fn run(&self, buf: &mut Buffer, size: usize, count: u16) -> Result<Duration, String> {
        let d = Descriptor {
            size: size as u32,
            ctl: 0,
            src: IOVA + PAGE as u64,
            dst: IOVA + (PAGE + MAX) as u64,
            next: IOVA,
        };
        buf.bytes()[..64].copy_from_slice(&d.to_bytes());
        self.wr(chan::CHAINADDR, Width::B8, IOVA)?;
        self.wr(
            chan::CHANCTRL,
            Width::B2,
            u64::from(ioat::CHANCTRL_ANY_ERR_ABORT_EN),
        )?;
        let t = Instant::now();
        self.wr(chan::DMACOUNT, Width::B2, u64::from(count))?;
        let s = loop {
            let s = self.status()?;
            if s != ioat::CHANSTS_ACTIVE {
                break s;
            }
            std::thread::yield_now();
        };
        let elapsed = t.elapsed();
        if s != ioat::CHANSTS_DONE {
            return Err(format!("ioat: the channel ended in status {s}"));
        }
        self.wr(chan::CHANCMD, Width::B1, u64::from(ioat::CHANCMD_SUSPEND))?;
        Ok(elapsed)
    }
}

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64().max(1e-9) / 1e9
}

/// `count` copies of `size` bytes from the source to the destination.
fn memcpy_run(buf: &mut Buffer, size: usize, count: usize) -> Duration {
    let b = buf.bytes();
    let (head, dst) = b.split_at_mut(PAGE + MAX);
    let src = &head[PAGE..PAGE + size];
    let t = Instant::now();
    for _ in 0..count {
        dst[..size].copy_from_slice(src);
        std::hint::black_box(&mut dst[..size]);
    }
    t.elapsed()
}

impl Family for IoatCopy {
    fn run(&self, b: &Bench, r: &mut Results) -> Result<(), String> {
        b.progress("ioat: the DMA engine model's copies vs memcpy");
        let mut buf = Buffer::new();
        let engine = Engine::new(&buf)?;
        for (label, size) in [("1m", MIB), ("64k", 64 << 10)] {
            let count = TOTAL / size;
            let mut dma = Vec::new();
            let mut plain = Vec::new();
            for rep in 0..=b.reps {
                let t_dma = engine.run(&mut buf, size, count as u16)?;
                let t_plain = memcpy_run(&mut buf, size, count);
                if rep > 0 {
                    dma.push(gbps(TOTAL, t_dma));
                    plain.push(gbps(TOTAL, t_plain));
                }
            }
            let base_name = format!("memcpy_{label}");
            let base = timing(&base_name, "GB/s", &plain);
            let judged = Measurement {
                ratio: Some(timing("", "GB/s", &dma).median / base.median.max(1e-9)),
                ratio_to: Some(base_name.clone()),
                ..timing(&format!("ioat_copy_{label}"), "GB/s", &dma)
            };
            r.measurements.push(base);
            r.measurements.push(judged);
        }
        Ok(())
    }
}
