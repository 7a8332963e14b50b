//! What a device sits in: the interrupt eventfds and the IOMMU tables
//! that a front end (barmap's VFIO front end, in `barmap run`) installed.
//! A model reaches them through [`crate::Ctx`], never directly.

/// A VFIO interrupt index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IrqIndex {
    /// The INTx pin.
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
}

/// A DMA that the IOMMU refused, as hardware reports it: the device model
/// sees the error, the program is not harmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IommuFault {
    /// The device is attached to no IOMMU table (no container, IOAS).
    #[error("DMA with no IOMMU domain attached")]
    NoDomain,
    /// No mapping covers the access, or it crosses the end of one.
    #[error("DMA {len} bytes at IOVA {iova:#x}: not mapped")]
    Unmapped {
        /// IOVA accessed.
        iova: u64,
        /// Bytes.
        len: u64,
    },
    /// The mapping does not allow the access (a write to a read-only map).
    #[error("DMA {} at IOVA {iova:#x}: not permitted", if *.write { "write" } else { "read" })]
    Permission {
        /// IOVA accessed.
        iova: u64,
        /// Whether it was a write.
        write: bool,
    },
    /// The program's memory behind the mapping is gone.
    #[error("DMA at IOVA {iova:#x}: the memory behind it is unmapped")]
    Gone {
        /// IOVA accessed.
        iova: u64,
    },
    /// COMMAND's bus-master bit is clear: the function may not DMA.
    #[error("DMA with bus mastering disabled")]
    BusMasterDisabled,
}

/// The side of a memory-to-memory copy that the IOMMU refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaSide {
    /// Reading the source.
    Read,
    /// Writing the destination.
    Write,
}

/// Bytes a [`Host::dma_copy`] moves per bounce through the model's buffer.
pub const COPY_CHUNK: usize = 1 << 20;

/// The interrupt and DMA side of a device's surroundings. barmap's VFIO
/// front end implements it over the eventfds of `VFIO_DEVICE_SET_IRQS` and
/// the IOMMU tables of its containers and IOASes.
pub trait Host: Send + Sync {
    /// Signals vector `vector` of `index` (its eventfd); returns whether
    /// one was signalled.
    fn signal(&self, index: IrqIndex, vector: u32) -> bool;

    /// Whether the program enabled `index` (installed an eventfd for a
    /// vector of it).
    fn enabled(&self, index: IrqIndex) -> bool;

    /// Sets the INTx line's level: asserting it signals the INTx eventfd
    /// unless INTx is masked (it masks itself when it fires); while it
    /// stays asserted, an unmask fires it again.
    fn set_intx(&self, level: bool);

    /// Reads the program's memory at `iova`.
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), IommuFault>;

    /// Writes the program's memory at `iova`.
    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), IommuFault>;

    /// Copies `len` bytes of the program's memory at `src` to `dst`. The
    /// default bounces through a buffer in chunks of [`COPY_CHUNK`] with
    /// [`Host::dma_read`] and [`Host::dma_write`]; a host that can copy
    /// in place overrides it.
    fn dma_copy(&self, src: u64, dst: u64, len: u64) -> Result<(), (DmaSide, IommuFault)> {
        let mut buf = vec![0u8; (len as usize).min(COPY_CHUNK)];
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(COPY_CHUNK);
            self.dma_read(src + done, &mut buf[..n])
                .map_err(|f| (DmaSide::Read, f))?;
            self.dma_write(dst + done, &buf[..n])
                .map_err(|f| (DmaSide::Write, f))?;
            done += n as u64;
        }
        Ok(())
    }
}

/// No surroundings: interrupts go nowhere, DMA has no domain. What a
/// device has until a front end attaches it.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHost;

impl Host for NoHost {
    fn signal(&self, _: IrqIndex, _: u32) -> bool {
        false
    }
    fn enabled(&self, _: IrqIndex) -> bool {
        false
    }
    fn set_intx(&self, _: bool) {}
    fn dma_read(&self, _: u64, _: &mut [u8]) -> Result<(), IommuFault> {
        Err(IommuFault::NoDomain)
    }
    fn dma_write(&self, _: u64, _: &[u8]) -> Result<(), IommuFault> {
        Err(IommuFault::NoDomain)
    }
}
