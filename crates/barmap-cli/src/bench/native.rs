//! The native baseline: a memfd holding the pattern, viewed without
//! userfaultfd, as the kernel faults it in by itself.

use std::os::fd::OwnedFd;

use super::dev::errno_str;
use super::report::ms;
use super::touch::{touch_all, write_pattern, View};

/// A fully allocated memfd holding the pattern, viewed without userfaultfd.
pub(super) struct Native {
    fd: OwnedFd,
}

/// A plain MAP_SHARED view of the native memfd, unmapped on drop.
pub(super) struct NativeView(pub(super) View);

impl Drop for NativeView {
    fn drop(&mut self) {
        let _ = barmap::os::unmap(self.0.addr..self.0.addr + self.0.len);
    }
}

impl Native {
    /// A memfd of `size` bytes holding the pattern.
    pub(super) fn new(size: usize) -> Result<Native, String> {
        let fd = barmap::os::memfd("barmap-bench-native", size as u64)
            .map_err(|e| errno_str("memfd", e))?;
        write_pattern(size, |off, b| {
            barmap::os::pwrite_all(&fd, off, b).map_err(|e| errno_str("pwrite", e))
        })?;
        Ok(Native { fd })
    }

    /// The same on a hugetlbfs memfd (2 MiB huge pages; `size` a multiple of
    /// 2 MiB). hugetlbfs has no `pwrite`: the pattern goes in through a view.
    pub(super) fn new_hugetlb(size: usize) -> Result<Native, String> {
        let fd = barmap::os::memfd_hugetlb("barmap-bench-native-hugetlb", size as u64)
            .map_err(|e| errno_str("hugetlbfs memfd", e))?;
        let native = Native { fd };
        let v = native.view(size)?;
        write_pattern(size, |off, b| {
            assert!(off as usize + b.len() <= v.0.len);
            // SAFETY: the view is live until `v` drops below, and the range
            // is inside it (asserted).
            unsafe { barmap::os::view_write(v.0.addr, off as usize, b) };
            Ok(())
        })?;
        drop(v);
        Ok(native)
    }

    /// A readable MAP_SHARED view of the first `len` bytes, placed on a
    /// 2 MiB boundary as barmap places its mappings.
    pub(super) fn view(&self, len: usize) -> Result<NativeView, String> {
        let start = barmap::os::map_shared(&self.fd, 0, len)
            .map_err(|e| errno_str("mmap of the memfd", e))?;
        if let Err(e) = barmap::os::protect(start..start + len, true) {
            let _ = barmap::os::unmap(start..start + len);
            return Err(errno_str("mprotect", e));
        }
        Ok(NativeView(View { addr: start, len }))
    }
}

/// The floor: `MADV_POPULATE_READ` of a fresh native view of `len` bytes
/// (the kernel filling the page tables by itself, no touch, no fault
/// round trip), `reps + 1` times (the first is a warm-up); times in ms.
pub(super) fn populate_floor(native: &Native, len: usize, reps: usize) -> Result<Vec<f64>, String> {
    let mut times = Vec::new();
    for rep in 0..=reps {
        let v = native.view(len)?;
        let started = std::time::Instant::now();
        // SAFETY: madvise on the whole of a view this function owns.
        let rc =
            unsafe { libc::madvise(v.0.addr as *mut libc::c_void, len, libc::MADV_POPULATE_READ) };
        let t = started.elapsed();
        if rc != 0 {
            return Err(errno_str(
                "MADV_POPULATE_READ",
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ));
        }
        drop(v);
        if rep > 0 {
            times.push(ms(t));
        }
    }
    Ok(times)
}

/// Touches every page of a fresh native view of `len` bytes with `threads`
/// threads, `reps + 1` times (the first is a warm-up); returns the times in
/// ms and the wrong reads.
pub(super) fn populate_native(
    native: &Native,
    len: usize,
    threads: usize,
    reps: usize,
) -> Result<(Vec<f64>, u64), String> {
    let mut times = Vec::new();
    let mut errors = 0;
    for rep in 0..=reps {
        let v = native.view(len)?;
        let (t, bad) = touch_all(v.0, 0, threads, false);
        drop(v);
        if rep > 0 {
            times.push(ms(t));
            errors += bad;
        }
    }
    Ok((times, errors))
}
