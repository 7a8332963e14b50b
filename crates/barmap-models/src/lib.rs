//! # barmap-models
//!
//! Device models for barmap: PCI functions whose registers answer. A model
//! implements [`DeviceModel`]: it describes its BARs ([`Layout`]), each
//! either *memory* (barmap's memfd BAR and fault path, unchanged) or
//! *registers*, whose every access by the program reaches
//! [`DeviceModel::read`] or [`DeviceModel::write`] with its offset, width
//! (1, 2, 4 or 8 bytes) and value; so read-to-clear, write-1-to-clear,
//! doorbells and "reads return the complement of what was written" all
//! work, through `pread`/`pwrite` and through an mmap of the BAR
//! ([`trap`]).
//!
//! While a callback runs, the model can raise interrupts (INTx, MSI,
//! MSI-X with an emulated table and pending-bit array), DMA by IOVA
//! through the IOMMU table its device is attached to (an unmapped or
//! read-only IOVA is an [`IommuFault`] the model sees, never a crash of the
//! program), and ask for deferred work on the device's worker thread
//! ([`Ctx`]). A reset puts the model back to its power-on state with
//! barmap's gate held (accesses meanwhile wait).
//!
//! [`ModelDevice`] builds a barmap device from a model; barmap's VFIO front
//! end does so for `barmap run --device NAME[,options]` ([`by_name`]), and
//! connects it to the program's eventfds and IOMMU tables (a [`Host`]).
//!
//! ```no_run
//! use barmap_models::{Ctx, DeviceModel, Layout, ModelDevice, Width};
//!
//! /// A one-register device: reads return the complement of the last write.
//! #[derive(Default)]
//! struct Inverter(u32);
//!
//! impl DeviceModel for Inverter {
//!     fn layout(&self) -> Layout {
//!         Layout::new(0x1234, 0x0001).registers(0, 4096)
//!     }
//!     fn read(&mut self, _: &mut Ctx<'_>, _: u32, offset: u64, _: Width) -> u64 {
//!         if offset == 0 { u64::from(!self.0) } else { 0 }
//!     }
//!     fn write(&mut self, _: &mut Ctx<'_>, _: u32, offset: u64, _: Width, v: u64) {
//!         if offset == 0 { self.0 = v as u32 }
//!     }
//!     fn reset(&mut self) {
//!         self.0 = 0;
//!     }
//! }
//!
//! let dev = ModelDevice::new(Inverter::default())?;
//! dev.write_register(0, 0, Width::B4, 0x0f)?;
//! assert_eq!(dev.read_register(0, 0, Width::B4)?, 0xffff_fff0);
//! # Ok::<(), barmap::Error>(())
//! ```

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![warn(missing_docs)]

pub mod bench;
pub mod device;
pub mod dsa;
pub mod edu;
pub mod host;
pub mod igb;
pub mod ioat;
pub mod model;
mod msix;
pub mod nv_falcon;
pub mod passive;
pub mod trap;

pub use device::{ModelDevice, ModelDeviceBuilder, ModelMapping, Waker};
pub use host::{DmaSide, Host, IommuFault, IrqIndex, NoHost};
pub use model::{Ctx, DeviceModel, IrqMode, Layout, RegionKind, Store64, Width};

/// The models `barmap run --device NAME[,options]` knows.
pub const MODELS: &[&str] = &["default", "edu", "ioat", "igb", "dsa", "nv_falcon"];

/// The model called `name`, configured by `options` (`key=value` pairs):
/// `default` (barmap's default device: options `memory=SIZE`, the memory
/// BAR's size in bytes, 256 MiB if not given), `edu` (QEMU's educational device, no options) or
/// `ioat` (an Intel I/OAT DMA channel: option `xfercap=N`, copies of up to
/// 2^N bytes per descriptor, 12..=30, default 16; option `version=3.3` or
/// `version=3.4`, default 3.3) or `igb` (an Intel 82576 Ethernet port:
/// option `mac=XX:XX:XX:XX:XX:XX`, its unicast address, default
/// 52:54:00:12:34:56; option `wire=NAME`, the two ports naming one wire
/// are connected back to back) or `dsa` (an Intel DSA: option `id=HHHH`,
/// its device id, 0b25 (default), 11fb or 1212; option `xfer=N`, transfers
/// of up to 2^N bytes per descriptor, 12..=31, default 16) or `nv_falcon`
/// (an NVIDIA GPU's falcon DMA engine: option `id=0xDDDD`, the PCI device
/// ID of one of [`nv_falcon::CHIPS`], default 0x1eb8, the Tesla T4).
pub fn by_name(name: &str, options: &[(String, String)]) -> Result<Box<dyn DeviceModel>, String> {
    let unknown = |k: &str| Err(format!("unknown option {k:?} for device model {name:?}"));
    match name {
        "default" => {
            let mut memory = 256 << 20;
            for (k, v) in options {
                match k.as_str() {
                    "memory" => {
                        memory = v
                            .parse()
                            .map_err(|_| format!("memory={v}: not a size in bytes"))?
                    }
                    _ => return unknown(k),
                }
            }
            Ok(Box::new(passive::DefaultDevice::new(memory)))
        }
        "edu" => match options.first() {
            Some((k, _)) => unknown(k),
            None => Ok(Box::new(edu::Edu::default())),
        },
        "ioat" => {
            let mut xfercap = ioat::DEFAULT_XFERCAP;
            let mut version = ioat::VERSION;
            for (k, v) in options {
                match k.as_str() {
                    "version" => {
                        version = match v.as_str() {
                            "3.3" | "0x33" => ioat::VERSION,
                            "3.4" | "0x34" => ioat::VERSION_3_4,
                            _ => return Err(format!("version={v}: not 3.3 or 3.4")),
                        }
                    }
                    "xfercap" => {
                        xfercap = v
                            .parse()
                            .ok()
                            .filter(|n| (12..=30).contains(n))
                            .ok_or_else(|| format!("xfercap={v}: not a number from 12 to 30"))?
                    }
                    _ => return unknown(k),
                }
            }
            Ok(Box::new(ioat::Ioat::with_version(xfercap, version)))
        }
        "igb" => {
            let mut mac = igb::DEFAULT_MAC;
            let mut wire = None;
            for (k, v) in options {
                match k.as_str() {
                    "mac" => mac = parse_mac(v)?,
                    "wire" if !v.is_empty() => wire = Some(v.clone()),
                    _ => return unknown(k),
                }
            }
            let port = igb::Igb::new(mac);
            Ok(Box::new(match wire {
                Some(name) => port.with_wire(&name),
                None => port,
            }))
        }
        "dsa" => {
            let mut id = dsa::DEVICE_SPR0;
            let mut xfer = dsa::DEFAULT_XFER_SHIFT;
            for (k, v) in options {
                match k.as_str() {
                    "id" => {
                        id = u16::from_str_radix(v.trim_start_matches("0x"), 16)
                            .ok()
                            .filter(|d| dsa::DEVICES.contains(d))
                            .ok_or_else(|| format!("id={v}: not 0b25, 11fb or 1212"))?
                    }
                    "xfer" => {
                        xfer = v
                            .parse()
                            .ok()
                            .filter(|n| (12..=31).contains(n))
                            .ok_or_else(|| format!("xfer={v}: not a number from 12 to 31"))?
                    }
                    _ => return unknown(k),
                }
            }
            Ok(Box::new(dsa::Dsa::new(id, xfer)))
        }
        "nv_falcon" => {
            let mut chip = nv_falcon::chip_by_device(nv_falcon::DEFAULT_DEVICE);
            for (k, v) in options {
                match k.as_str() {
                    "id" => {
                        let hex = v.strip_prefix("0x").unwrap_or(v);
                        chip = u16::from_str_radix(hex, 16)
                            .ok()
                            .and_then(nv_falcon::chip_by_device);
                        if chip.is_none() {
                            let known: Vec<String> = nv_falcon::CHIPS
                                .iter()
                                .map(|c| format!("{:#06x} ({})", c.device, c.name))
                                .collect();
                            return Err(format!(
                                "id={v}: not a GPU the model knows ({})",
                                known.join(", ")
                            ));
                        }
                    }
                    _ => return unknown(k),
                }
            }
            let chip = chip.expect("the default chip is listed");
            Ok(Box::new(nv_falcon::NvFalcon::new(chip)))
        }
        _ => Err(format!(
            "unknown device model {name:?} (known: {})",
            MODELS.join(", ")
        )),
    }
}

/// Parses a unicast MAC address `XX:XX:XX:XX:XX:XX`.
fn parse_mac(v: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac={v}: not a unicast MAC address XX:XX:XX:XX:XX:XX");
    let mut mac = [0u8; 6];
    let mut parts = v.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}
