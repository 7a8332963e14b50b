//! A device's worker thread is the device's, not the program's: it runs on
//! every CPU the process may use, whatever the pinning of the thread that
//! created the device.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use barmap_models::{Ctx, DeviceModel, Layout, ModelDevice, Width};

/// A model whose work reports the CPUs its worker may run on.
struct Affinity(Mutex<mpsc::Sender<usize>>);

fn allowed_cpus() -> usize {
    // SAFETY: cpu_set_t is plain data, filled by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        libc::CPU_COUNT(&set) as usize
    }
}

fn pin_to_cpu0() {
    // SAFETY: as above; CPU 0 is always allowed on the test machines.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

impl DeviceModel for Affinity {
    fn layout(&self) -> Layout {
        Layout::new(0x1234, 0x0002).registers(0, 4096)
    }
    fn read(&mut self, _: &mut Ctx<'_>, _: u32, _: u64, _: Width) -> u64 {
        0
    }
    fn write(&mut self, ctx: &mut Ctx<'_>, _: u32, _: u64, _: Width, _: u64) {
        ctx.kick();
    }
    fn reset(&mut self) {}
    fn work(&mut self, _: &mut Ctx<'_>) {
        let _ = self.0.lock().unwrap().send(allowed_cpus());
    }
}

#[test]
fn a_device_worker_runs_on_every_cpu_though_its_creator_is_pinned() {
    let all = allowed_cpus();
    let (tx, rx) = mpsc::channel();
    let seen = std::thread::spawn(move || {
        pin_to_cpu0();
        assert_eq!(allowed_cpus(), 1);
        let dev = ModelDevice::new(Affinity(Mutex::new(tx))).unwrap();
        dev.write_register(0, 0, Width::B4, 1).unwrap();
        let seen = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(dev);
        seen
    })
    .join()
    .unwrap();
    assert_eq!(seen, all, "the worker may run wherever the process may");
}
