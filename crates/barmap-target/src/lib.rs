//! The device interface ([`target`]), fault-tolerant memory access
//! ([`touch`]) and the scenario suite ([`scenario`]) that barmap's emulated
//! device and the kernel's vfio-pci are both measured with.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![warn(missing_docs)]

pub mod scenario;
pub mod target;
pub mod touch;

pub use target::{
    ErrorClass, Layout, Placement, Prot, Reservation, Target, TargetError, TargetMapping,
};
