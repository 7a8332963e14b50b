//! What one trapped register access costs, next to a plain load: the
//! measurement behind the choice of mechanism (ARCHITECTURE.md), for
//! `barmap bench` and `cargo bench -p barmap-models`.

use std::time::Instant;

use barmap::{Placement, Prot};

use crate::model::{Ctx, DeviceModel, Layout, Width};
use crate::ModelDevice;

/// Nanoseconds per access of each kind, over `iterations` accesses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrapCost {
    /// Accesses timed per kind.
    pub iterations: u64,
    /// A plain 4-byte load from ordinary memory.
    pub plain_load_ns: f64,
    /// A 4-byte load from a register mapping: SIGSEGV, decode, model call,
    /// register write-back, return.
    pub trapped_load_ns: f64,
    /// A 4-byte store to a register mapping.
    pub trapped_store_ns: f64,
    /// A 4-byte register read through the API (no trap: the gate and the
    /// model call alone).
    pub direct_read_ns: f64,
}

/// A scratch register: reads return the last write.
struct Scratch(u64);

impl DeviceModel for Scratch {
    fn layout(&self) -> Layout {
        Layout::new(0x1234, 0xbe00).registers(0, 4096)
    }
    fn read(&mut self, _: &mut Ctx<'_>, _: u32, _: u64, _: Width) -> u64 {
        self.0
    }
    fn write(&mut self, _: &mut Ctx<'_>, _: u32, _: u64, _: Width, v: u64) {
        self.0 = v;
    }
    fn reset(&mut self) {
        self.0 = 0;
    }
}

fn per_op(iterations: u64, f: impl FnMut()) -> f64 {
    let mut f = f;
    let t = Instant::now();
    for _ in 0..iterations {
        f();
    }
    t.elapsed().as_nanos() as f64 / iterations as f64
}

/// Measures a trapped register load and store against a plain load, over
/// `iterations` accesses each, on a device of its own.
pub fn trap_cost(iterations: u64) -> barmap::Result<TrapCost> {
    let iterations = iterations.max(1);
    let dev = ModelDevice::new(Scratch(7))?;
    let map = dev.map(0, 0, 4096, Prot::ReadWrite, Placement::Anywhere)?;
    let reg = map.as_ptr().cast::<u32>();
    let plain = Box::new(7u32);
    let plain_ptr: *const u32 = &*plain;
    // SAFETY: `plain_ptr` points at a live u32 owned by this function.
    let plain_load_ns = per_op(iterations, || unsafe {
        std::hint::black_box(std::ptr::read_volatile(plain_ptr));
    });
    // SAFETY: `reg` is the first register of a live register mapping; the
    // access traps and is emulated.
    let trapped_load_ns = per_op(iterations, || unsafe {
        std::hint::black_box(std::ptr::read_volatile(reg));
    });
    // SAFETY: as above, a store.
    let trapped_store_ns = per_op(iterations, || unsafe {
        std::ptr::write_volatile(reg, 9);
    });
    let direct_read_ns = per_op(iterations, || {
        std::hint::black_box(dev.read_register(0, 0, Width::B4).ok());
    });
    drop(map);
    Ok(TrapCost {
        iterations,
        plain_load_ns,
        trapped_load_ns,
        trapped_store_ns,
        direct_read_ns,
    })
}
