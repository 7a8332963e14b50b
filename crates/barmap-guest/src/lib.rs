//! `barmap guest`: the scenario suite against the kernel's real vfio-pci.
//!
//! On the host ([`host_main`]): fetch a Debian cloud kernel (6.1, 6.12, 7.x) with
//! apt into a cache, or rebuild 6.1's vfio-pci with the seed's bug
//! (`seed-bug`, patch under `guest/patches/`), build a static barmap, make
//! an initramfs, boot QEMU (TCG, emulated VT-d, edu and ivshmem-plain), and
//! parse the console ([`console`]) into per-scenario results
//! ([`report`]). In the guest ([`guest_run`]): open every device bound to
//! vfio-pci and run the suite on it, printing protocol lines
//! ([`protocol`]).

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![warn(missing_docs)]

pub mod apt;
pub mod args;
pub mod console;
pub mod faults;
mod guest;
mod host;
pub mod initramfs;
pub mod kernel;
pub mod programs;
pub mod protocol;
pub mod qemu;
pub mod report;
pub mod seedbug;
pub mod selftests;
pub mod util;

pub use args::{GuestArgs, GuestRunArgs};
pub use guest::{guest_run, vfio_devices};
pub use host::{host_main, host_main_side_by_side, host_main_with, run_side_by_side, Emulate};
