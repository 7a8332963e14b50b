//! # barmap
//!
//! The Linux vfio-pci BAR mmap fault path, in user space, on real page
//! tables. A BAR's memory is a memfd; a [`Mapping`] is a MAP_SHARED view of
//! it registered with a userfaultfd, so nothing is mapped until a thread
//! touches it; fault service threads map pages under a memory-enable gate
//! (the kernel's `memory_lock`); clearing COMMAND.MEM, a reset or low power
//! zaps every mapping, and a touch while memory is off gets a real SIGBUS.
//!
//! ```no_run
//! use barmap::{Device, Prot, DEFAULT_MEMORY_BAR};
//!
//! let device = Device::new_default()?;
//! let map = device.map(DEFAULT_MEMORY_BAR, 0, 1 << 20, Prot::ReadWrite)?;
//! map.write_u64(0, 42); // faults the page in
//! device.set_memory_enabled(false); // zaps it
//! assert!(map.touch_u64(0).is_err()); // a real SIGBUS, caught
//! device.set_memory_enabled(true);
//! assert_eq!(map.read_u64(0), 42); // faulted back in, data intact
//! # Ok::<(), barmap::Error>(())
//! ```
//!
//! Layout (see ARCHITECTURE.md): [`fault`] is the backend-agnostic fault
//! path, written against the [`mm::Mm`] trait and the [`sync`] facade;
//! [`uffd`] and [`os`] are the real backend; [`device`] and [`mapping`] the
//! emulated PCI function; [`model`] (feature `check`) compiles the same
//! fault path over shuttle and a simulated MM for model checking.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![warn(missing_docs)]

pub mod device;
pub mod error;
pub mod fault;
pub mod mapping;
pub mod memory;
pub mod mm;
pub mod os;
pub mod policy;
pub mod service;
pub mod space;
pub mod stats;
pub mod sync;
pub mod target_impl;
pub mod uffd;

#[cfg(feature = "check")]
pub mod model;

pub use barmap_target::{touch, Prot};
pub use device::{
    Device, DeviceBuilder, Interrupts, Placement, PowerState, RegionFlags, RegionInfo, RegionSpec,
    DEFAULT_ID, DEFAULT_MEMORY_BAR,
};
pub use error::{Error, Result};
pub use fault::{Answer, BugEvent, GateState};
pub use mapping::Mapping;
pub use memory::MemoryBudget;
pub use policy::Policy;
pub use service::{fill_sched, set_fill_sched, FillSched, WaitMode};
pub use space::{AddressSpace, SpaceStats};
pub use stats::Stats;
pub use uffd::UffdAccess;
