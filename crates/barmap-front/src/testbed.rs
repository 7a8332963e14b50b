//! The testbed directory that `barmap run` lays out: the sysfs view of the
//! emulated devices as vfio-pci-bound PCI functions, and placeholders for
//! the device nodes (so that `stat` and `access` find them). The front end
//! redirects the program's accesses to these paths ([`crate::paths`]).

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

use barmap_models::{Layout, RegionKind};

use crate::spec::{RunSpec, SPEC_FILE};

/// `IORESOURCE_MEM | IORESOURCE_MEM_64`, and `IORESOURCE_PREFETCH`.
const RES_MEM: u64 = 0x0000_0200 | 0x0010_0000;
const RES_PREFETCH: u64 = 0x0000_2000;

fn write(path: &Path, text: &str) -> io::Result<()> {
    fs::write(path, text)
}

/// Lays out `spec` under `dir` (which must exist and be empty).
pub fn create(dir: &Path, spec: &RunSpec) -> io::Result<()> {
    write(
        &dir.join(SPEC_FILE),
        &serde_json::to_string_pretty(spec).map_err(io::Error::other)?,
    )?;
    let sys = dir.join("sys");
    let devices = sys.join("bus/pci/devices");
    let driver = sys.join("bus/pci/drivers/vfio-pci");
    let groups = sys.join("kernel/iommu_groups");
    for d in [&devices, &driver, &groups] {
        fs::create_dir_all(d)?;
    }
    for m in [
        "vfio",
        "vfio_pci",
        "vfio_pci_core",
        "vfio_iommu_type1",
        "iommufd",
    ] {
        fs::create_dir_all(sys.join("module").join(m))?;
    }
    let dev = dir.join("dev");
    fs::create_dir_all(dev.join("vfio/devices"))?;
    write(&dev.join("vfio/vfio"), "")?;
    write(&dev.join("iommu"), "")?;
    for d in &spec.devices {
        let layout = d
            .model()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .layout();
        let at = devices.join(&d.bdf);
        fs::create_dir_all(at.join(format!("vfio-dev/vfio{}", d.cdev)))?;
        write(
            &at.join(format!("vfio-dev/vfio{}/dev", d.cdev)),
            &format!("511:{}\n", d.cdev),
        )?;
        write(&at.join("vendor"), &format!("0x{:04x}\n", layout.vendor))?;
        write(&at.join("device"), &format!("0x{:04x}\n", layout.device))?;
        write(&at.join("subsystem_vendor"), "0x1af4\n")?;
        write(&at.join("subsystem_device"), "0x1100\n")?;
        write(&at.join("class"), &format!("0x{:06x}\n", layout.class))?;
        write(
            &at.join("revision"),
            &format!("0x{:02x}\n", layout.revision),
        )?;
        write(&at.join("numa_node"), "-1\n")?;
        write(&at.join("irq"), "0\n")?;
        write(&at.join("enable"), "1\n")?;
        write(&at.join("resource"), &resource_lines(&layout))?;
        symlink("../../../../bus/pci/drivers/vfio-pci", at.join("driver"))?;
        symlink(
            format!("../../../../kernel/iommu_groups/{}", d.group),
            at.join("iommu_group"),
        )?;
        symlink(format!("../../devices/{}", d.bdf), driver.join(&d.bdf))?;
        let g = groups.join(d.group.to_string()).join("devices");
        fs::create_dir_all(&g)?;
        symlink(
            format!("../../../../bus/pci/devices/{}", d.bdf),
            g.join(&d.bdf),
        )?;
        write(&groups.join(d.group.to_string()).join("type"), "DMA\n")?;
        write(&dev.join("vfio").join(d.group.to_string()), "")?;
        write(&dev.join(format!("vfio/devices/vfio{}", d.cdev)), "")?;
    }
    Ok(())
}

/// The `resource` file of a model's layout: its six BARs (the default
/// model: BAR0 64 KiB, BAR2 the memory BAR, 64-bit prefetchable, BAR4
/// 4 KiB, BAR5 256 bytes), then the ROM and the unused bridge windows, as
/// zeros.
fn resource_lines(layout: &Layout) -> String {
    let mut bars = [(0u64, 0u64); 6];
    for (i, kind) in &layout.regions {
        let (size, flags) = match kind {
            RegionKind::Memory(spec) if spec.prefetchable => (spec.size, RES_MEM | RES_PREFETCH),
            RegionKind::Memory(spec) => (spec.size, RES_MEM),
            RegionKind::Registers { size, .. } => (*size, RES_MEM),
        };
        if let Some(slot) = bars.get_mut(*i as usize) {
            *slot = (size, flags);
        }
    }
    let mut addr: u64 = 0xe000_0000;
    let mut out = String::new();
    for (size, flags) in bars {
        if size == 0 {
            out += "0x0000000000000000 0x0000000000000000 0x0000000000000000\n";
            continue;
        }
        addr = addr.next_multiple_of(size);
        out += &format!(
            "0x{:016x} 0x{:016x} 0x{:016x}\n",
            addr,
            addr + size - 1,
            flags
        );
        addr += size;
    }
    for _ in 6..13 {
        out += "0x0000000000000000 0x0000000000000000 0x0000000000000000\n";
    }
    out
}
