//! What `stat` says about the VFIO device nodes: character devices, with
//! the kernel's modes and the major:minor numbers that the testbed's sysfs
//! names, for the node paths and for the fds that [`Front::open`] gave out.
//!
//! Programs check these: QEMU opens `/dev/vfio/devices/vfioN`, `fstat`s
//! the fd and requires `S_ISCHR` with the `st_rdev` that sysfs
//! `vfio-dev/vfioN/dev` names. The answer names the testbed's placeholder
//! file of the node: the preload library stats it (for the inode, owner
//! and times, the same for the path and for every fd of the node) and
//! then sets the type, mode and device numbers from here.
//!
//! The numbers: `/dev/vfio/vfio` is the misc device 10:196 (`VFIO_MINOR`,
//! fixed in the kernel); `/dev/iommu` is a misc device with a dynamic
//! minor, here [`IOMMU_MISC_MINOR`]; groups and device cdevs have dynamic
//! majors: a cdev's numbers are read from the testbed's
//! `sys/bus/pci/devices/<bdf>/vfio-dev/vfioN/dev`, a group's are
//! [`GROUP_MAJOR`]:N.

use std::path::PathBuf;

use crate::files::File;
use crate::paths::{self, Node, Route};
use crate::Front;

/// The misc major (`MISC_MAJOR`).
pub const MISC_MAJOR: u32 = 10;
/// `/dev/vfio/vfio`'s minor (`VFIO_MINOR`).
pub const VFIO_MINOR: u32 = 196;
/// `/dev/iommu`'s minor (the kernel gives it a dynamic misc minor).
pub const IOMMU_MISC_MINOR: u32 = 124;
/// The major of `/dev/vfio/N` (the kernel allocates it dynamically; the
/// minor is the group's index, here its number).
pub const GROUP_MAJOR: u32 = 510;
/// The major of `/dev/vfio/devices/vfioN` when the testbed names none.
pub const CDEV_MAJOR: u32 = 511;

/// A VFIO node as `stat` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStat {
    /// The testbed's placeholder of the node (stat it for the rest).
    pub placeholder: PathBuf,
    /// `st_mode`: `S_IFCHR` and the permission bits of the kernel's node.
    pub mode: u32,
    /// Major device number (`st_rdev`).
    pub major: u32,
    /// Minor device number (`st_rdev`).
    pub minor: u32,
}

impl NodeStat {
    /// `st_rdev` as glibc's `makedev` encodes it.
    pub fn rdev(&self) -> u64 {
        libc::makedev(self.major, self.minor)
    }
}

/// Parses a sysfs `dev` file ("M:m\n").
fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (ma, mi) = text.trim().split_once(':')?;
    Some((ma.parse().ok()?, mi.parse().ok()?))
}

impl Front {
    fn node_stat(&self, node: Node) -> Option<NodeStat> {
        let tb = self.testbed();
        let (placeholder, perm, major, minor) = match node {
            Node::Container => (tb.join("dev/vfio/vfio"), 0o666, MISC_MAJOR, VFIO_MINOR),
            Node::Iommufd => (tb.join("dev/iommu"), 0o660, MISC_MAJOR, IOMMU_MISC_MINOR),
            Node::Group(n) => {
                self.spec
                    .devices
                    .iter()
                    .find(|d| d.group == n && self.present(d))?;
                (tb.join(format!("dev/vfio/{n}")), 0o600, GROUP_MAJOR, n)
            }
            Node::Cdev(n) => {
                let d = self
                    .spec
                    .devices
                    .iter()
                    .find(|d| d.cdev == n && self.present(d))?;
                let sysfs = tb.join(format!(
                    "sys/bus/pci/devices/{}/vfio-dev/vfio{n}/dev",
                    d.bdf
                ));
                let (major, minor) = std::fs::read_to_string(sysfs)
                    .ok()
                    .and_then(|t| parse_dev(&t))
                    .unwrap_or((CDEV_MAJOR, n));
                (
                    tb.join(format!("dev/vfio/devices/vfio{n}")),
                    0o600,
                    major,
                    minor,
                )
            }
        };
        Some(NodeStat {
            placeholder,
            mode: libc::S_IFCHR | perm,
            major,
            minor,
        })
    }

    /// What `stat(path)` reports for a VFIO node of this testbed
    /// (`/dev/vfio/vfio`, `/dev/iommu`, `/dev/vfio/N`,
    /// `/dev/vfio/devices/vfioN`), or None for any other path (including
    /// a group or cdev that no device of the testbed has).
    pub fn stat_of_node(&self, path: &str) -> Option<NodeStat> {
        match paths::route(path, self.testbed(), true) {
            Route::Node(node) => self.node_stat(node),
            _ => None,
        }
    }

    /// What `fstat(fd)` reports for an fd that [`Front::open`] gave out:
    /// the node it was opened from. None for any other fd, and for a
    /// device fd from `VFIO_GROUP_GET_DEVICE_FD` (an anonymous inode on
    /// the kernel, no device node).
    pub fn stat_of_fd(&self, fd: i32) -> Option<NodeStat> {
        self.stat_of_file(&self.file(fd)?)
    }

    /// What `fstat` reports for an fd of `file` (see [`Front::stat_of_fd`]).
    pub fn stat_of_file(&self, file: &File) -> Option<NodeStat> {
        let node = match file {
            File::Container(_) => Node::Container,
            File::Iommufd(_) => Node::Iommufd,
            File::Group(g) => Node::Group(g.device().spec.group),
            File::Device(d) if d.is_cdev() => Node::Cdev(d.dev.spec.cdev),
            File::Device(_) | File::NumVfs(_) => return None,
        };
        self.node_stat(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_dev_files_parse() {
        assert_eq!(parse_dev("511:3\n"), Some((511, 3)));
        assert_eq!(parse_dev("x:3"), None);
        assert_eq!(parse_dev("5113"), None);
    }
}
