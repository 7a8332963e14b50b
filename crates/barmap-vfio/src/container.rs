//! The legacy VFIO container (`/dev/vfio/vfio`) and group (`/dev/vfio/N`)
//! interface with the type1 IOMMU.

use crate::uapi::{
    VfioGroupStatus, VFIO_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_GET_API_VERSION,
    VFIO_GROUP_FLAGS_VIABLE, VFIO_GROUP_GET_DEVICE_FD, VFIO_GROUP_GET_STATUS,
    VFIO_GROUP_SET_CONTAINER, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU,
};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Issues an ioctl whose argument is a plain integer; returns the kernel's
/// non-negative result or the errno.
pub(crate) fn ioctl_val(
    fd: &impl AsRawFd,
    req: libc::c_ulong,
    arg: libc::c_ulong,
) -> io::Result<i32> {
    // SAFETY: the argument is passed by value; the kernel reads no memory
    // through it for the requests used with this helper.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Issues an ioctl whose argument points to `arg`; returns the kernel's
/// non-negative result or the errno.
///
/// # Safety
/// `req` must be a request that reads and writes at most `size_of::<T>()`
/// bytes at the pointer, or `arg` must be the head of a buffer as long as the
/// `argsz` it declares.
pub(crate) unsafe fn ioctl_ptr<T>(
    fd: &impl AsRawFd,
    req: libc::c_ulong,
    arg: *mut T,
) -> io::Result<i32> {
    let rc = libc::ioctl(fd.as_raw_fd(), req, arg);
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// A VFIO container: one IOMMU context shared by the groups attached to it.
#[derive(Debug)]
pub struct Container {
    file: File,
}

impl Container {
    /// Opens `/dev/vfio/vfio` and checks the API version.
    pub fn open() -> io::Result<Self> {
        Self::open_path(Path::new("/dev/vfio/vfio"))
    }

    /// Opens a container at `path` (normally `/dev/vfio/vfio`).
    pub fn open_path(path: &Path) -> io::Result<Self> {
        let file = open_rw(path)?;
        let version = ioctl_val(&file, VFIO_GET_API_VERSION, 0)?;
        if version != VFIO_API_VERSION {
            return Err(io::Error::other(format!(
                "VFIO API version {version}, this client speaks {VFIO_API_VERSION}"
            )));
        }
        Ok(Container { file })
    }

    /// Whether the container supports extension `ext` (an IOMMU model).
    pub fn check_extension(&self, ext: libc::c_ulong) -> io::Result<bool> {
        ioctl_val(&self.file, VFIO_CHECK_EXTENSION, ext).map(|r| r > 0)
    }

    /// Selects the type1 IOMMU (v2 where available). Needs a group attached.
    pub fn set_type1_iommu(&self) -> io::Result<()> {
        let model = if self.check_extension(VFIO_TYPE1V2_IOMMU)? {
            VFIO_TYPE1V2_IOMMU
        } else {
            VFIO_TYPE1_IOMMU
        };
        ioctl_val(&self.file, VFIO_SET_IOMMU, model).map(drop)
    }
}

impl AsRawFd for Container {
    fn as_raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

/// A VFIO group (`/dev/vfio/N`): the unit of isolation the IOMMU provides.
#[derive(Debug)]
pub struct Group {
    file: File,
    id: u32,
}

impl Group {
    /// Opens `/dev/vfio/<id>`.
    pub fn open(id: u32) -> io::Result<Self> {
        Self::open_path(&Path::new("/dev/vfio").join(id.to_string()), id)
    }

    /// Opens a group node at `path` whose number is `id`.
    pub fn open_path(path: &Path, id: u32) -> io::Result<Self> {
        Ok(Group {
            file: open_rw(path)?,
            id,
        })
    }

    /// The IOMMU group number of the PCI device `bdf` (from sysfs).
    pub fn id_of_pci_device(bdf: &str) -> io::Result<u32> {
        let link = std::fs::read_link(
            Path::new("/sys/bus/pci/devices")
                .join(bdf)
                .join("iommu_group"),
        )?;
        link.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                io::Error::other(format!("unexpected iommu_group link {}", link.display()))
            })
    }

    /// The group number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `VFIO_GROUP_GET_STATUS` flags.
    pub fn status(&self) -> io::Result<u32> {
        let mut st = VfioGroupStatus {
            argsz: std::mem::size_of::<VfioGroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: GET_STATUS writes one vfio_group_status, which `st` is.
        unsafe { ioctl_ptr(&self.file, VFIO_GROUP_GET_STATUS, &mut st)? };
        Ok(st.flags)
    }

    /// Whether every device of the group is bound to a VFIO driver.
    pub fn is_viable(&self) -> io::Result<bool> {
        Ok(self.status()? & VFIO_GROUP_FLAGS_VIABLE != 0)
    }

    /// Attaches the group to `container`.
    pub fn set_container(&self, container: &Container) -> io::Result<()> {
        let mut fd: libc::c_int = container.as_raw_fd();
        // SAFETY: SET_CONTAINER reads one int (the container fd).
        unsafe { ioctl_ptr(&self.file, VFIO_GROUP_SET_CONTAINER, &mut fd) }.map(drop)
    }

    /// Opens the device named `name` (a PCI address such as `0000:00:03.0`).
    pub fn device_fd(&self, name: &str) -> io::Result<OwnedFd> {
        let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: GET_DEVICE_FD reads a NUL-terminated string, which `cname` is.
        let fd = unsafe {
            ioctl_ptr(
                &self.file,
                VFIO_GROUP_GET_DEVICE_FD,
                cname.as_ptr() as *mut libc::c_char,
            )?
        };
        // SAFETY: on success the kernel returned a new fd that nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_a_group_that_does_not_exist_reports_enoent() {
        let dir = std::env::temp_dir().join(format!("barmap-vfio-test-{}", std::process::id()));
        let err = Group::open_path(&dir.join("4242"), 4242).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn the_group_of_a_device_that_does_not_exist_reports_enoent() {
        let err = Group::id_of_pci_device("ffff:ff:1f.7").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn a_group_ioctl_on_a_file_that_is_not_vfio_reports_enotty() {
        let file = File::open("/dev/null").unwrap();
        let group = Group { file, id: 0 };
        assert_eq!(
            group.status().unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
        let err = group.device_fd("0000:00:03.0").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }

    #[test]
    fn a_container_on_a_file_that_is_not_vfio_reports_enotty() {
        let err = Container::open_path(Path::new("/dev/null")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }

    #[test]
    fn a_device_name_with_a_nul_byte_is_rejected_with_einval() {
        let file = File::open("/dev/null").unwrap();
        let group = Group { file, id: 0 };
        let err = group.device_fd("00\0").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
