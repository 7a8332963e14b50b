//! A thin, honest VFIO client for vfio-pci devices.
//!
//! Every operation that reaches the kernel returns the kernel's answer: an
//! [`std::io::Error`] carrying the errno, never a retry, a default or a
//! swallowed failure. That is what a conformance harness needs: the scenario
//! suite compares the *class* of each failure between barmap's emulated device
//! and the kernel's vfio-pci, so the errno must survive intact.
//!
//! What is here:
//! - the legacy container/group interface with the type1 IOMMU
//!   ([`Container`], [`Group`]);
//! - device and region information, including the capability chain with
//!   sparse mmap areas ([`DeviceInfo`], [`RegionInfo`], [`caps`]);
//! - BAR mmap through the device fd, optionally at a 2 MiB-aligned address
//!   ([`BarMapping`]);
//! - config space and region access with `pread`/`pwrite`;
//! - `VFIO_DEVICE_RESET` where the device says it supports it;
//! - an implementation of [`barmap_target::Target`] for [`VfioDevice`].
//!
//! iommufd and the vfio cdev interface are not implemented: Debian's 6.1 has
//! neither, and its 6.12 cloud flavour builds without `CONFIG_IOMMUFD`.

#![cfg(target_os = "linux")]
#![warn(missing_docs)]

pub mod caps;
mod container;
mod device;
pub mod iommufd;
mod mapping;
mod target_impl;
pub mod uapi;

pub use container::{Container, Group};
pub use device::{DeviceInfo, RegionInfo, VfioDevice};
pub use mapping::BarMapping;
pub use target_impl::error_class;
