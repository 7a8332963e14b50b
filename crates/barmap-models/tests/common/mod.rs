//! What the model tests share: a device's surroundings with one IOVA
//! window of memory.

#![allow(dead_code)] // each test binary uses its own part

use std::sync::{Arc, Mutex};

use barmap_models::{Host, IommuFault, IrqIndex};

/// Surroundings with one IOVA window of memory (writable, or with a
/// read-only range) and a record of the interrupts signalled.
pub struct Window {
    /// The window's first IOVA.
    base: u64,
    /// Whether MSI-X is enabled (else no interrupt index is).
    msix: bool,
    /// Whether an interrupt fails the test at once (a device that has none).
    quiet: bool,
    signals: Mutex<Vec<(IrqIndex, u32)>>,
    /// (read-only range start, end): writes there are permission faults.
    pub read_only: Mutex<Option<(u64, u64)>>,
    mem: Mutex<Vec<u8>>,
}

impl Window {
    /// `len` bytes at IOVA `base`, MSI-X enabled.
    pub fn new(base: u64, len: usize) -> Arc<Window> {
        Arc::new(Window {
            base,
            msix: true,
            quiet: false,
            signals: Mutex::new(Vec::new()),
            read_only: Mutex::new(None),
            mem: Mutex::new(vec![0; len]),
        })
    }

    /// `len` bytes at IOVA `base`, for a device that raises no interrupt:
    /// one fails the test.
    pub fn quiet(base: u64, len: usize) -> Arc<Window> {
        let mut w = Arc::into_inner(Window::new(base, len)).unwrap();
        w.msix = false;
        w.quiet = true;
        Arc::new(w)
    }

    /// The interrupts signalled since the last call.
    pub fn take(&self) -> Vec<(IrqIndex, u32)> {
        std::mem::take(&mut self.signals.lock().unwrap())
    }

    /// The MSI-X vectors signalled since the last call (any other
    /// interrupt fails the test).
    pub fn take_msix(&self) -> Vec<u32> {
        self.take()
            .into_iter()
            .map(|(index, vector)| {
                assert_eq!(index, IrqIndex::Msix);
                vector
            })
            .collect()
    }

    /// The offset in the window of `len` bytes at `iova`, if inside.
    pub fn at(&self, iova: u64, len: usize) -> Option<usize> {
        let a = usize::try_from(iova.checked_sub(self.base)?).ok()?;
        (a.checked_add(len)? <= self.mem.lock().unwrap().len()).then_some(a)
    }

    /// Writes `data` at `iova` (inside the window).
    pub fn put(&self, iova: u64, data: &[u8]) {
        let a = self.at(iova, data.len()).unwrap();
        self.mem.lock().unwrap()[a..a + data.len()].copy_from_slice(data);
    }

    /// Reads `len` bytes at `iova` (inside the window).
    pub fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        let a = self.at(iova, len).unwrap();
        self.mem.lock().unwrap()[a..a + len].to_vec()
    }

    /// The little-endian `u32` at `iova`.
    pub fn u32_at(&self, iova: u64) -> u32 {
        u32::from_le_bytes(self.get(iova, 4).try_into().unwrap())
    }
}

impl Host for Window {
    fn signal(&self, index: IrqIndex, vector: u32) -> bool {
        assert!(!self.quiet, "the device raised {index:?} vector {vector}");
        self.signals.lock().unwrap().push((index, vector));
        true
    }
    fn enabled(&self, index: IrqIndex) -> bool {
        self.msix && index == IrqIndex::Msix
    }
    fn set_intx(&self, _: bool) {}
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), IommuFault> {
        let len = buf.len() as u64;
        let a = self
            .at(iova, buf.len())
            .ok_or(IommuFault::Unmapped { iova, len })?;
        buf.copy_from_slice(&self.mem.lock().unwrap()[a..a + buf.len()]);
        Ok(())
    }
    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), IommuFault> {
        let len = data.len() as u64;
        let a = self
            .at(iova, data.len())
            .ok_or(IommuFault::Unmapped { iova, len })?;
        if let Some((s, e)) = *self.read_only.lock().unwrap() {
            if iova < e && iova + len > s {
                return Err(IommuFault::Permission { iova, write: true });
            }
        }
        self.mem.lock().unwrap()[a..a + data.len()].copy_from_slice(data);
        Ok(())
    }
}
