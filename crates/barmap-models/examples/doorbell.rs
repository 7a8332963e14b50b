//! A small custom device: a doorbell that counts rings, a read-to-clear
//! event register, and an interrupt per ring, driven through an mmap of
//! its register BAR (every load and store below is trapped and reaches the
//! model).
//!
//! cargo run -p barmap-models --example doorbell

use barmap::{Placement, Prot};
use barmap_models::{Ctx, DeviceModel, Layout, ModelDevice, Width};

/// Register offsets in BAR0.
const DOORBELL: u64 = 0x00; // WO: each write rings once
const RINGS: u64 = 0x04; // RO: rings so far
const EVENTS: u64 = 0x08; // RO, read-to-clear: bits of the values rung
const SCRATCH: u64 = 0x10; // RW, 64-bit

#[derive(Default)]
struct Doorbell {
    rings: u32,
    events: u32,
    scratch: u64,
}

impl DeviceModel for Doorbell {
    fn layout(&self) -> Layout {
        // One 4 KiB register BAR, one MSI vector.
        Layout::new(0x1234, 0xd00b).registers(0, 4096).msi(1)
    }

    fn read(&mut self, _ctx: &mut Ctx<'_>, _bar: u32, offset: u64, _width: Width) -> u64 {
        match offset {
            RINGS => u64::from(self.rings),
            EVENTS => u64::from(std::mem::take(&mut self.events)),
            SCRATCH => self.scratch,
            _ => 0,
        }
    }

    fn write(&mut self, ctx: &mut Ctx<'_>, _bar: u32, offset: u64, _width: Width, value: u64) {
        match offset {
            DOORBELL => {
                self.rings += 1;
                self.events |= value as u32;
                ctx.raise(0); // goes nowhere until a program enables MSI
            }
            SCRATCH => self.scratch = value,
            _ => {}
        }
    }

    fn reset(&mut self) {
        *self = Doorbell::default();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = ModelDevice::new(Doorbell::default())?;
    let map = dev.map(0, 0, 4096, Prot::ReadWrite, Placement::Anywhere)?;
    let reg32 = |off: u64| map.as_ptr().wrapping_add(off as usize).cast::<u32>();
    // SAFETY: the pointers are inside the live register mapping `map`;
    // each access is one trapped, emulated instruction.
    unsafe {
        std::ptr::write_volatile(reg32(DOORBELL), 0x1);
        std::ptr::write_volatile(reg32(DOORBELL), 0x4);
        println!("rings   {}", std::ptr::read_volatile(reg32(RINGS)));
        println!("events  {:#x}", std::ptr::read_volatile(reg32(EVENTS)));
        println!(
            "events  {:#x} (read-to-clear)",
            std::ptr::read_volatile(reg32(EVENTS))
        );
        std::ptr::write_volatile(
            map.as_ptr().add(SCRATCH as usize).cast::<u64>(),
            0xfeed_f00d_dead_beef,
        );
    }
    println!(
        "scratch {:#x} (through pread)",
        dev.read_register(0, SCRATCH, Width::B8)?
    );
    dev.reset()?;
    println!(
        "rings   {} (after reset)",
        dev.read_register(0, RINGS, Width::B4)?
    );
    Ok(())
}
