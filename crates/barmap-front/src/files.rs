//! The objects behind the program's fds: a legacy container, a group, a
//! device (opened through a group or its cdev) and an iommufd.

use std::sync::{Arc, Mutex};

use barmap_vfio::uapi as v;

use crate::device::{self, EmuDevice};
use crate::dma::DmaTable;
use crate::iommufd::Iommufd;
use crate::{type1, user, Errno};

/// What an fd of the program is.
#[derive(Debug, Clone)]
pub enum File {
    /// `/dev/vfio/vfio`.
    Container(Arc<Container>),
    /// `/dev/vfio/N`.
    Group(Arc<Group>),
    /// A device fd.
    Device(Arc<DeviceFile>),
    /// `/dev/iommu`.
    Iommufd(Arc<Iommufd>),
}

/// A legacy VFIO container.
#[derive(Debug, Default)]
pub struct Container {
    state: Mutex<ContainerState>,
}

#[derive(Debug, Default)]
struct ContainerState {
    iommu: Option<u64>,
    groups: usize,
    dma: Arc<Mutex<DmaTable>>,
}

impl Container {
    /// Serves an ioctl on the container.
    pub fn ioctl(&self, req: u64, arg: usize) -> Result<i64, Errno> {
        match req as libc::c_ulong {
            v::VFIO_GET_API_VERSION => Ok(i64::from(v::VFIO_API_VERSION)),
            v::VFIO_CHECK_EXTENSION => Ok(i64::from(type1::has_extension(arg as u64))),
            v::VFIO_SET_IOMMU => {
                let mut s = self.state.lock().unwrap();
                let t = arg as u64;
                if s.groups == 0 || s.iommu.is_some() {
                    return Err(Errno::EINVAL);
                }
                if t != v::VFIO_TYPE1_IOMMU && t != v::VFIO_TYPE1V2_IOMMU {
                    return Err(Errno::ENODEV);
                }
                s.iommu = Some(t);
                Ok(0)
            }
            req @ (v::VFIO_IOMMU_GET_INFO | v::VFIO_IOMMU_MAP_DMA | v::VFIO_IOMMU_UNMAP_DMA) => {
                let (iommu, dma) = {
                    let s = self.state.lock().unwrap();
                    (s.iommu, s.dma.clone())
                };
                let Some(t) = iommu else {
                    return Err(Errno::EINVAL);
                };
                match req {
                    v::VFIO_IOMMU_GET_INFO => type1::get_info(&dma, arg),
                    v::VFIO_IOMMU_MAP_DMA => type1::map_dma(&dma, arg, true),
                    _ => type1::unmap_dma(&dma, arg, t == v::VFIO_TYPE1V2_IOMMU),
                }
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    fn ready(&self) -> bool {
        self.state.lock().unwrap().iommu.is_some()
    }
}

/// What a group is attached to.
#[derive(Debug, Clone)]
enum Attached {
    Legacy(Arc<Container>),
    Iommufd(Arc<Iommufd>),
}

/// An open group (one device per group).
#[derive(Debug)]
pub struct Group {
    dev: Arc<EmuDevice>,
    container: Mutex<Option<Attached>>,
}

impl Group {
    /// The group of `dev`.
    pub fn new(dev: Arc<EmuDevice>) -> Group {
        Group {
            dev,
            container: Mutex::new(None),
        }
    }

    /// The group's device.
    pub fn device(&self) -> &Arc<EmuDevice> {
        &self.dev
    }

    /// Serves an ioctl on the group; `lookup` finds the file behind an fd
    /// (for SET_CONTAINER), `new_fd` gives a new fd to a device file.
    pub fn ioctl(
        &self,
        req: u64,
        arg: usize,
        lookup: &dyn Fn(i32) -> Option<File>,
        new_fd: &dyn Fn(File) -> Result<i32, Errno>,
    ) -> Result<i64, Errno> {
        match req as libc::c_ulong {
            v::VFIO_GROUP_GET_STATUS => {
                let mut st: v::VfioGroupStatus = user::read_struct(arg, 8)?;
                if st.argsz < 8 {
                    return Err(Errno::EINVAL);
                }
                st.flags = v::VFIO_GROUP_FLAGS_VIABLE;
                if self.container.lock().unwrap().is_some() {
                    st.flags |= v::VFIO_GROUP_FLAGS_CONTAINER_SET;
                }
                user::write_struct(arg, &st, 8)?;
                Ok(0)
            }
            v::VFIO_GROUP_SET_CONTAINER => {
                let b = user::read(arg, 4)?;
                let fd = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                let mut c = self.container.lock().unwrap();
                if c.is_some() {
                    return Err(Errno::EINVAL);
                }
                let attached = match lookup(fd) {
                    Some(File::Container(k)) => {
                        let mut s = k.state.lock().unwrap();
                        s.groups += 1;
                        *self.dev.dma.lock().unwrap() = Some(s.dma.clone());
                        drop(s);
                        Attached::Legacy(k)
                    }
                    Some(File::Iommufd(i)) => {
                        *self.dev.dma.lock().unwrap() = Some(i.compat_ioas());
                        Attached::Iommufd(i)
                    }
                    // Any other fd (or none) is not a container.
                    _ => return Err(Errno::EINVAL),
                };
                *c = Some(attached);
                Ok(0)
            }
            v::VFIO_GROUP_UNSET_CONTAINER => {
                let mut c = self.container.lock().unwrap();
                match c.take() {
                    None => Err(Errno::EINVAL),
                    Some(a) => {
                        if let Attached::Legacy(k) = &a {
                            let mut s = k.state.lock().unwrap();
                            s.groups -= 1;
                            if s.groups == 0 {
                                s.iommu = None;
                                s.dma.lock().unwrap().clear();
                            }
                        }
                        *self.dev.dma.lock().unwrap() = None;
                        Ok(0)
                    }
                }
            }
            v::VFIO_GROUP_GET_DEVICE_FD => {
                let ready = match &*self.container.lock().unwrap() {
                    Some(Attached::Legacy(k)) => k.ready(),
                    Some(Attached::Iommufd(i)) => i.compat_type().is_some(),
                    None => false,
                };
                if !ready {
                    return Err(Errno::EINVAL);
                }
                let name = read_cstr(arg, 64)?;
                if name != self.dev.spec.bdf {
                    return Err(Errno::ENODEV);
                }
                let file = DeviceFile::open(self.dev.clone(), false);
                new_fd(File::Device(Arc::new(file))).map(i64::from)
            }
            _ => Err(Errno::ENOTTY),
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.container.get_mut().unwrap().is_some() {
            // Closing the group detaches it, as the kernel does.
            let _ = self.ioctl(v::VFIO_GROUP_UNSET_CONTAINER, 0, &|_| None, &|_| {
                Err(Errno::EINVAL)
            });
        }
        *self.dev.open.lock().unwrap() &= !GROUP_OPEN;
    }
}

/// The group-open bit of [`EmuDevice::open`].
pub const GROUP_OPEN: u32 = 1 << 31;

fn read_cstr(addr: usize, max: usize) -> Result<String, Errno> {
    let mut out = Vec::new();
    for i in 0..max {
        let b = user::read(addr + i, 1)?[0];
        if b == 0 {
            return String::from_utf8(out).map_err(|_| Errno::EINVAL);
        }
        out.push(b);
    }
    Err(Errno::EINVAL)
}

/// An open device fd.
#[derive(Debug)]
pub struct DeviceFile {
    /// The device.
    pub dev: Arc<EmuDevice>,
    /// Opened as `/dev/vfio/devices/vfioN`: needs `BIND_IOMMUFD` first.
    cdev: bool,
    bound: Mutex<Option<(Arc<Iommufd>, u32)>>,
}

impl DeviceFile {
    /// A new device fd of `dev`.
    pub fn open(dev: Arc<EmuDevice>, cdev: bool) -> DeviceFile {
        *dev.open.lock().unwrap() += 1;
        DeviceFile {
            dev,
            cdev,
            bound: Mutex::new(None),
        }
    }

    /// Whether the fd was opened as `/dev/vfio/devices/vfioN`.
    pub fn is_cdev(&self) -> bool {
        self.cdev
    }

    /// Serves an ioctl on the device fd.
    pub fn ioctl(
        &self,
        req: u64,
        arg: usize,
        lookup: &dyn Fn(i32) -> Option<File>,
    ) -> Result<i64, Errno> {
        let req = req as libc::c_ulong;
        if self.cdev {
            match req {
                v::VFIO_DEVICE_BIND_IOMMUFD => return self.bind(arg, lookup),
                v::VFIO_DEVICE_ATTACH_IOMMUFD_PT => return self.attach(arg),
                v::VFIO_DEVICE_DETACH_IOMMUFD_PT => return self.detach(arg),
                _ if self.bound.lock().unwrap().is_none() => return Err(Errno::EINVAL),
                _ => {}
            }
        }
        let dev = &self.dev;
        match req {
            v::VFIO_DEVICE_GET_INFO => device::get_info(arg),
            v::VFIO_DEVICE_GET_REGION_INFO => device::get_region_info(dev, arg),
            v::VFIO_DEVICE_GET_IRQ_INFO => device::get_irq_info(dev, arg),
            v::VFIO_DEVICE_SET_IRQS => dev.set_irqs(arg),
            v::VFIO_DEVICE_RESET => device::reset(dev),
            _ => Err(Errno::ENOTTY),
        }
    }

    fn bind(&self, arg: usize, lookup: &dyn Fn(i32) -> Option<File>) -> Result<i64, Errno> {
        const MINSZ: usize = 16;
        let mut b: v::VfioDeviceBindIommufd = user::read_struct(arg, MINSZ)?;
        if (b.argsz as usize) < MINSZ || b.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let mut bound = self.bound.lock().unwrap();
        if bound.is_some() {
            return Err(Errno::EINVAL);
        }
        let Some(File::Iommufd(i)) = lookup(b.iommufd) else {
            return Err(Errno::EBADF);
        };
        b.out_devid = i.bind(&self.dev);
        user::write_struct(arg, &b, MINSZ)?;
        *bound = Some((i, b.out_devid));
        Ok(0)
    }

    fn attach(&self, arg: usize) -> Result<i64, Errno> {
        const MINSZ: usize = 12;
        let a: v::VfioDeviceAttachIommufdPt = user::read_struct(arg, MINSZ)?;
        if (a.argsz as usize) < MINSZ || a.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let bound = self.bound.lock().unwrap();
        let Some((i, devid)) = &*bound else {
            return Err(Errno::EINVAL);
        };
        // Attach, or replace an attachment; pt_id comes back as the HWPT.
        let (table, hwpt) = i.attach(*devid, a.pt_id)?;
        if let Err(e) = user::write(arg + 8, &hwpt.to_ne_bytes()) {
            i.detach(*devid);
            *self.dev.dma.lock().unwrap() = None;
            return Err(e);
        }
        *self.dev.dma.lock().unwrap() = Some(table);
        Ok(0)
    }

    fn detach(&self, arg: usize) -> Result<i64, Errno> {
        let argsz = user::read_u32(arg)?;
        if argsz < 8 {
            return Err(Errno::EINVAL);
        }
        let bound = self.bound.lock().unwrap();
        let Some((i, devid)) = &*bound else {
            return Err(Errno::EINVAL);
        };
        i.detach(*devid);
        *self.dev.dma.lock().unwrap() = None;
        Ok(0)
    }
}

impl Drop for DeviceFile {
    fn drop(&mut self) {
        if let Some((i, devid)) = self.bound.get_mut().unwrap().take() {
            i.unbind(devid);
            *self.dev.dma.lock().unwrap() = None;
        }
        let mut open = self.dev.open.lock().unwrap();
        *open -= 1;
        if *open & !GROUP_OPEN == 0 {
            // The last device fd: vfio-pci disables interrupts on release.
            self.dev.irqs.lock().unwrap().clear();
        }
    }
}
