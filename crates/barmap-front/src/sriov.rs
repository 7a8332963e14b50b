//! SR-IOV: physical functions with the SR-IOV extended capability, their
//! virtual functions, and the VF token of vfio-pci.
//!
//! Any model becomes an SR-IOV physical function with the option
//! `sriov=N` (`--device igb,sriov=2`): its config space gains the SR-IOV
//! extended capability (TotalVFs and InitialVFs N, NumVFs, the First VF
//! Offset and VF Stride, the VF Device ID) and its sysfs directory
//! `sriov_totalvfs`, `sriov_numvfs`, `sriov_offset`, `sriov_stride`,
//! `sriov_vf_device` and `sriov_drivers_autoprobe`. The VF Device ID is
//! the model's own VF where the real device has one (igb, the 82576:
//! 0x10ca), else the PF's device ID.
//!
//! Writing `sriov_numvfs` does what `sriov_numvfs_store` and vfio-pci's
//! `sriov_configure` do (drivers/pci/iov.c, drivers/vfio/pci/vfio_pci.c,
//! as loaded with `enable_sriov=1`): not a number is EINVAL, more than
//! TotalVFs ERANGE, the same count nothing, a new non-zero count while
//! VFs are enabled EBUSY; enabling creates the VFs as PCI functions of
//! their own (their sysfs directories with `physfn`, the PF's
//! `virtfnN`, each bound to vfio-pci through `driver_override`, in an
//! IOMMU group of its own, with a vfio cdev), and 0 removes them, after
//! waiting, as the kernel's VF removal waits, until no process has a VF
//! open. A VF is the PF's model (a fresh instance; an igb VF joins no
//! wire) presenting the VF Device ID and no INTx pin: enough for the VF
//! token uAPI and a driver of the PF's registers, not the register set of
//! a real VF (igbvf). The capability's offset and stride are barmap's
//! choice: PF `ba:NN.0`'s VFs are `0000:BB:00.0` onwards with stride 1 on
//! bus `BB` = `bb + NN`, so that the VFs of several PFs never meet.
//!
//! The VF token is the kernel's (`vfio_pci_core_match_token_uuid`): a
//! UUID that the PF holds from its binding (random at first), set by
//! `VFIO_DEVICE_FEATURE_PCI_VF_TOKEN` on the PF or by opening the PF with
//! a token while no VF is open. Opening a VF needs the PF's token (else
//! EACCES); opening the PF while a VF is open needs it too; a token given
//! to a function that is neither is EINVAL. The token and the count of
//! open VFs live in the testbed, so they hold across the program's
//! processes as they do across the kernel's users: the token in a file,
//! the open VFs as shared `flock`s that each VF device fd holds on the
//! PF's users file, released when the last copy of that fd is closed.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use barmap_models::{Ctx, DeviceModel, Layout, Width};

use crate::spec::DeviceSpec;
use crate::Errno;

/// The most VFs a physical function may have here (TotalVFs).
pub const MAX_VFS: u16 = 64;
/// Where the SR-IOV capability sits in extended config space when the
/// model has none of its own.
const CAP_AT: u64 = 0x100;
/// Where it sits after a model's own extended capabilities.
const CAP_AT_AFTER: u64 = 0x300;
/// Size of the SR-IOV capability.
const CAP_LEN: u64 = 0x40;
/// `PCI_EXT_CAP_ID_SRIOV`.
const CAP_ID_SRIOV: u32 = 0x10;

/// The VF Device ID of `model`'s VFs: the real device's, where the model
/// is of a device with SR-IOV (igb: the 82576's 0x10ca), else the PF's.
pub fn vf_device_id(model: &str, pf_device: u16) -> u16 {
    match model {
        "igb" => 0x10ca,
        _ => pf_device,
    }
}

/// The routing ID of the PF at position `pf` of a run (`0000:ba:NN.0`).
fn pf_rid(pf: u32) -> u32 {
    0xba00 + (pf << 3)
}

/// The routing ID of VF `k` of the PF at position `pf`.
fn vf_rid(pf: u32, k: u16) -> u32 {
    ((0xbb + pf) << 8) + u32::from(k)
}

/// First VF Offset of the PF at position `pf` (the stride is 1).
pub fn vf_offset(pf: u32) -> u16 {
    (vf_rid(pf, 0) - pf_rid(pf)) as u16
}

/// The PCI address of VF `k` of the PF at position `pf`.
pub fn vf_bdf(pf: u32, k: u16) -> String {
    let rid = vf_rid(pf, k);
    format!(
        "0000:{:02x}:{:02x}.{}",
        rid >> 8,
        (rid >> 3) & 0x1f,
        rid & 7
    )
}

/// The position of the PF `bdf` in a run (`0000:ba:NN.0`).
fn pf_position(bdf: &str) -> u32 {
    bdf.get(8..10)
        .and_then(|d| u32::from_str_radix(d, 16).ok())
        .unwrap_or(0)
}

/// NumVFs of each PF of this process, by address, as the config space's
/// capability reports it (kept by [`set_numvfs`]).
static NUMVFS: Mutex<Vec<(String, u16)>> = Mutex::new(Vec::new());

/// Records that the PF `bdf` has `n` VFs enabled.
pub fn set_numvfs(bdf: &str, n: u16) {
    let mut all = NUMVFS.lock().unwrap();
    match all.iter_mut().find(|(b, _)| b == bdf) {
        Some(e) => e.1 = n,
        None => all.push((bdf.to_string(), n)),
    }
}

fn numvfs_of(bdf: &str) -> u16 {
    NUMVFS
        .lock()
        .unwrap()
        .iter()
        .find(|(b, _)| b == bdf)
        .map_or(0, |e| e.1)
}

/// A model as an SR-IOV physical function: the model, and the SR-IOV
/// extended capability in its config space.
pub struct PhysFn {
    inner: Box<dyn DeviceModel>,
    bdf: String,
    total: u16,
    offset: u16,
    vf_device: u16,
    /// Whether the model has extended config space of its own.
    has_ext: bool,
    /// Where the capability is, and whether it follows the model's own
    /// extended capabilities (decided at the first config read).
    at: Option<(u64, bool)>,
    /// The testbed whose `sriov_numvfs` NumVFs reads, when the PF is
    /// served to the run's processes (`barmap run --shared`); None: this
    /// process's record ([`set_numvfs`]).
    testbed: Option<PathBuf>,
}

impl std::fmt::Debug for PhysFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhysFn")
            .field("bdf", &self.bdf)
            .field("total", &self.total)
            .finish()
    }
}

impl PhysFn {
    /// `inner` as the PF that `spec` describes.
    pub fn new(inner: Box<dyn DeviceModel>, spec: &DeviceSpec) -> PhysFn {
        let has_ext = inner.layout().config_size > 256;
        PhysFn {
            inner,
            bdf: spec.bdf.clone(),
            total: spec.total_vfs,
            offset: vf_offset(pf_position(&spec.bdf)),
            vf_device: spec.vf_device,
            has_ext,
            at: None,
            testbed: None,
        }
    }

    /// The PF served by a device server to the processes of the run whose
    /// testbed is `testbed`: NumVFs (and VF Enable) follow that testbed's
    /// `sriov_numvfs`, which any of the run's processes may write.
    pub fn served_in(mut self, testbed: &Path) -> PhysFn {
        self.testbed = Some(testbed.to_path_buf());
        self
    }

    /// Where the capability sits: at 0x100 when the model has no
    /// extended capability list (no extended config space, or a zero
    /// header at 0x100: the capability then takes 0x100..0x140 of it),
    /// else at 0x300, linked from the model's last capability.
    fn placement(&mut self, ctx: &mut Ctx<'_>) -> (u64, bool) {
        if let Some(p) = self.at {
            return p;
        }
        let listed = self.has_ext && self.inner.config_read(ctx, CAP_AT, Width::B4) != 0;
        let p = if listed {
            (CAP_AT_AFTER, true)
        } else {
            (CAP_AT, false)
        };
        self.at = Some(p);
        p
    }

    /// The capability's dword at `off` (from its start).
    fn cap_dword(&self, off: u64) -> u32 {
        let numvfs = match &self.testbed {
            Some(tb) => numvfs(tb, &self.bdf),
            None => numvfs_of(&self.bdf),
        };
        match off {
            0x00 => CAP_ID_SRIOV | 1 << 16,
            // SR-IOV Control: VF Enable and VF MSE while VFs exist.
            0x08 if numvfs > 0 => 0x9,
            0x0c => u32::from(self.total) | u32::from(self.total) << 16,
            0x10 => u32::from(numvfs),
            0x14 => u32::from(self.offset) | 1 << 16,
            0x18 => u32::from(self.vf_device) << 16,
            // Supported page sizes (4K to 4M, as the 82576 has) and the
            // system page size (4K).
            0x1c => 0x553,
            0x20 => 1,
            _ => 0,
        }
    }

    /// Whether the model's extended capability header at `off` is the
    /// last of its list (to link the SR-IOV capability after it).
    fn is_last_header(&mut self, ctx: &mut Ctx<'_>, off: u64) -> bool {
        let mut at = CAP_AT;
        for _ in 0..64 {
            let h = self.inner.config_read(ctx, at, Width::B4) as u32;
            let next = u64::from(h >> 20) & !3;
            if at == off {
                return h != 0 && next == 0;
            }
            if next < CAP_AT || next == at {
                return false;
            }
            at = next;
        }
        false
    }
}

fn width_mask(w: Width) -> u64 {
    w.mask()
}

impl DeviceModel for PhysFn {
    fn layout(&self) -> Layout {
        self.inner.layout().extended_config()
    }

    fn read(&mut self, ctx: &mut Ctx<'_>, region: u32, offset: u64, width: Width) -> u64 {
        self.inner.read(ctx, region, offset, width)
    }

    fn write(&mut self, ctx: &mut Ctx<'_>, region: u32, offset: u64, width: Width, value: u64) {
        self.inner.write(ctx, region, offset, width, value)
    }

    fn reset(&mut self) {
        self.inner.reset()
    }

    fn config_read(&mut self, ctx: &mut Ctx<'_>, offset: u64, width: Width) -> u64 {
        let (at, chained) = self.placement(ctx);
        if (at..at + CAP_LEN).contains(&offset) {
            let rel = offset - at;
            let dword = u64::from(self.cap_dword(rel & !3));
            return (dword >> ((rel & 3) * 8)) & width_mask(width);
        }
        if !self.has_ext {
            return 0;
        }
        let v = self.inner.config_read(ctx, offset, width);
        // The model's last extended capability links to the SR-IOV one.
        let head = offset & !3;
        if chained && offset + width.bytes() as u64 > head + 2 && self.is_last_header(ctx, head) {
            let h = self.inner.config_read(ctx, head, Width::B4) as u32;
            let linked = u64::from((h & 0x000f_ffff) | (at as u32) << 20);
            return (linked >> ((offset & 3) * 8)) & width_mask(width);
        }
        v
    }

    fn config_write(&mut self, ctx: &mut Ctx<'_>, offset: u64, width: Width, value: u64) {
        // The capability is read-only to the user, as vfio-pci presents it.
        let (at, _) = self.placement(ctx);
        if self.has_ext && !(at..at + CAP_LEN).contains(&offset) {
            self.inner.config_write(ctx, offset, width, value)
        }
    }

    fn work(&mut self, ctx: &mut Ctx<'_>) {
        self.inner.work(ctx)
    }
}

/// A model as an SR-IOV virtual function: the VF Device ID (which
/// vfio-pci presents in a VF's config space), no INTx pin (VFs have
/// none).
pub struct VirtFn {
    inner: Box<dyn DeviceModel>,
    device: u16,
}

impl std::fmt::Debug for VirtFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtFn")
            .field("device", &self.device)
            .finish()
    }
}

impl VirtFn {
    /// `inner` as a VF with device ID `device`.
    pub fn new(inner: Box<dyn DeviceModel>, device: u16) -> VirtFn {
        VirtFn { inner, device }
    }
}

impl DeviceModel for VirtFn {
    fn layout(&self) -> Layout {
        let mut l = self.inner.layout();
        l.device = self.device;
        l.intx = false;
        l
    }

    fn read(&mut self, ctx: &mut Ctx<'_>, region: u32, offset: u64, width: Width) -> u64 {
        self.inner.read(ctx, region, offset, width)
    }

    fn write(&mut self, ctx: &mut Ctx<'_>, region: u32, offset: u64, width: Width, value: u64) {
        self.inner.write(ctx, region, offset, width, value)
    }

    fn reset(&mut self) {
        self.inner.reset()
    }

    fn config_read(&mut self, ctx: &mut Ctx<'_>, offset: u64, width: Width) -> u64 {
        self.inner.config_read(ctx, offset, width)
    }

    fn config_write(&mut self, ctx: &mut Ctx<'_>, offset: u64, width: Width, value: u64) {
        self.inner.config_write(ctx, offset, width, value)
    }

    fn work(&mut self, ctx: &mut Ctx<'_>) {
        self.inner.work(ctx)
    }
}

// ----- the VF token -------------------------------------------------------

/// A UUID, in the byte order of its string form.
pub type Uuid = [u8; 16];

/// `uuid_parse`: 36 characters, dashes at 8, 13, 18 and 23, hex digits
/// elsewhere (only the first 36 bytes are looked at).
pub fn parse_uuid(s: &[u8]) -> Option<Uuid> {
    if s.len() < 36 {
        return None;
    }
    let s = &s[..36];
    for (i, &c) in s.iter().enumerate() {
        let dash = matches!(i, 8 | 13 | 18 | 23);
        if dash != (c == b'-') || (!dash && !c.is_ascii_hexdigit()) {
            return None;
        }
    }
    let hex: Vec<u8> = s.iter().copied().filter(|&c| c != b'-').collect();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).ok()?;
        *b = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// `vfio_pci_core_match`: the name a `VFIO_GROUP_GET_DEVICE_FD` gives,
/// against the device at `bdf`. `Ok(None)`: not this device (ENODEV if
/// no device matches); `Ok(Some(token))`: this device, with the
/// `vf_token=UUID` option if it had one. After the address only spaces
/// and one `vf_token=` may follow: anything else, a second token, or a
/// token that is not a UUID is EINVAL.
pub fn match_name(name: &[u8], bdf: &str) -> Result<Option<Option<Uuid>>, Errno> {
    let Some(rest) = name.strip_prefix(bdf.as_bytes()) else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(Some(None));
    }
    if rest[0] != b' ' {
        return Ok(None);
    }
    let mut token = None;
    let mut at = rest;
    while let Some(&c) = at.first() {
        if c == b' ' {
            at = &at[1..];
            continue;
        }
        match at.strip_prefix(b"vf_token=") {
            Some(u) if token.is_none() => {
                token = Some(parse_uuid(u).ok_or(Errno::EINVAL)?);
                at = &u[36..];
            }
            _ => return Err(Errno::EINVAL),
        }
    }
    Ok(Some(token))
}

/// The SR-IOV state files of the PF `pf_bdf` in the testbed.
fn state_path(testbed: &Path, pf_bdf: &str, what: &str) -> PathBuf {
    testbed.join("sriov").join(format!("{pf_bdf}.{what}"))
}

/// The token a PF starts with: random, as `uuid_gen` at the binding.
pub fn initial_token() -> Uuid {
    let mut b = [0u8; 16];
    // SAFETY: getrandom into our buffer; a short read leaves zeros.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// An open of a state file, locked (`flock` `op`); unlocked at close.
fn locked(path: &Path, write: bool, op: libc::c_int) -> Result<std::fs::File, Errno> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
    loop {
        // SAFETY: flock on our own open file.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(f);
        }
        let e = crate::last_errno();
        if e.0 != libc::EINTR {
            return Err(e);
        }
    }
}

/// Whether a VF of the PF is open anywhere (`vf_token->users`): the
/// users file cannot be locked exclusively while a VF fd holds its
/// shared lock.
fn vfs_in_use(testbed: &Path, pf_bdf: &str) -> Result<bool, Errno> {
    match locked(
        &state_path(testbed, pf_bdf, "users"),
        false,
        libc::LOCK_EX | libc::LOCK_NB,
    ) {
        Ok(_) => Ok(false),
        Err(e) if e.0 == libc::EWOULDBLOCK => Ok(true),
        Err(e) => Err(e),
    }
}

/// Waits until no VF of the PF is open anywhere (the kernel's removal of
/// a VF waits for its users to release it).
fn wait_vfs_unused(testbed: &Path, pf_bdf: &str) -> Result<(), Errno> {
    locked(&state_path(testbed, pf_bdf, "users"), false, libc::LOCK_EX).map(drop)
}

/// A VF device fd's access: while it lives, the VF counts as open
/// (`vf_token->users`), in every process.
#[derive(Debug)]
pub struct VfUser(#[allow(dead_code)] OwnedFd);

/// The PF's token, locked for reading or writing.
fn token_file(testbed: &Path, pf_bdf: &str, write: bool) -> Result<std::fs::File, Errno> {
    let op = if write { libc::LOCK_EX } else { libc::LOCK_SH };
    locked(&state_path(testbed, pf_bdf, "token"), write, op)
}

fn read_token(f: &mut std::fs::File) -> Result<Uuid, Errno> {
    let mut t = [0u8; 16];
    f.rewind().map_err(|_| Errno::EIO)?;
    f.read_exact(&mut t).map_err(|_| Errno::EIO)?;
    Ok(t)
}

/// `vfio_pci_core_match_token_uuid` for opening `dev` (group
/// `GET_DEVICE_FD`, or cdev `BIND_IOMMUFD`) with `uuid`, in the kernel's
/// order; for a VF, the hold that counts it open.
pub fn check_token(
    testbed: &Path,
    dev: &DeviceSpec,
    uuid: Option<&Uuid>,
) -> Result<Option<VfUser>, Errno> {
    if let Some((pf, _)) = &dev.physfn {
        // The PF is bound to vfio-pci and created its VFs through
        // sriov_configure: a token is required and must be the PF's.
        let uuid = uuid.ok_or(Errno::EACCES)?;
        let mut t = token_file(testbed, pf, false)?;
        if read_token(&mut t)? != *uuid {
            return Err(Errno::EACCES);
        }
        let users = locked(&state_path(testbed, pf, "users"), false, libc::LOCK_SH)?;
        drop(t);
        return Ok(Some(VfUser(OwnedFd::from(users))));
    }
    if dev.total_vfs > 0 {
        let mut t = token_file(testbed, &dev.bdf, true)?;
        if vfs_in_use(testbed, &dev.bdf)? {
            let uuid = uuid.ok_or(Errno::EACCES)?;
            if read_token(&mut t)? != *uuid {
                return Err(Errno::EACCES);
            }
        } else if let Some(u) = uuid {
            write_token(&mut t, u)?;
        }
        return Ok(None);
    }
    match uuid {
        Some(_) => Err(Errno::EINVAL),
        None => Ok(None),
    }
}

fn write_token(f: &mut std::fs::File, u: &Uuid) -> Result<(), Errno> {
    f.rewind().map_err(|_| Errno::EIO)?;
    f.write_all(u).map_err(|_| Errno::EIO)
}

/// `VFIO_DEVICE_FEATURE_PCI_VF_TOKEN` on `dev` (`vfio_pci_core_feature_token`):
/// ENOTTY but on a PF; SET only (GET: EINVAL; PROBE of SET: 0); 16
/// bytes of UUID (fewer: EINVAL; unreadable: EFAULT).
pub fn feature_token(
    testbed: &Path,
    dev: &DeviceSpec,
    flags: u32,
    data: usize,
    len: usize,
) -> Result<i64, Errno> {
    if dev.total_vfs == 0 {
        return Err(Errno::ENOTTY);
    }
    check_feature(flags, len, FEATURE_SET, 16)?;
    if flags & FEATURE_PROBE != 0 {
        return Ok(0);
    }
    let b = crate::user::read(data, 16)?;
    let mut u = [0u8; 16];
    u.copy_from_slice(&b);
    let mut t = token_file(testbed, &dev.bdf, true)?;
    write_token(&mut t, &u)?;
    Ok(0)
}

/// `VFIO_DEVICE_FEATURE_GET`.
pub const FEATURE_GET: u32 = 1 << 16;
/// `VFIO_DEVICE_FEATURE_SET`.
pub const FEATURE_SET: u32 = 1 << 17;
/// `VFIO_DEVICE_FEATURE_PROBE`.
pub const FEATURE_PROBE: u32 = 1 << 18;
/// `VFIO_DEVICE_FEATURE_PCI_VF_TOKEN`.
pub const FEATURE_PCI_VF_TOKEN: u32 = 0;

/// `vfio_check_feature`: GET or SET the feature does not support is
/// EINVAL; PROBE is answered (Ok) before the size; without PROBE one of
/// GET or SET is needed and `len` must be at least `min`.
fn check_feature(flags: u32, len: usize, supported: u32, min: usize) -> Result<(), Errno> {
    if flags & (FEATURE_GET | FEATURE_SET) & !supported != 0 {
        return Err(Errno::EINVAL);
    }
    if flags & FEATURE_PROBE != 0 {
        return Ok(());
    }
    if flags & (FEATURE_GET | FEATURE_SET) == 0 || len < min {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

// ----- sriov_numvfs -------------------------------------------------------

/// `kstrtou16(buf, 0)`: decimal, `0x` hex or `0` octal, an optional `+`
/// and one trailing newline.
pub fn parse_u16(buf: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(buf).ok()?;
    let s = s.strip_suffix('\n').unwrap_or(s);
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u16::from_str_radix(digits, radix).ok()
}

/// The PF's `sriov_numvfs`, as the testbed has it now.
pub fn numvfs(testbed: &Path, pf_bdf: &str) -> u16 {
    crate::testbed::read_file(
        testbed,
        &format!("sys/bus/pci/devices/{pf_bdf}/sriov_numvfs"),
    )
    .ok()
    .and_then(|b| parse_u16(&b))
    .unwrap_or(0)
}

/// A write of `buf` to the PF's `sriov_numvfs` (`sriov_numvfs_store`):
/// what changed, or the kernel's errno (nothing changed). `vfs` are the
/// run's VFs of this PF, in order.
pub fn store_numvfs(
    testbed: &Path,
    pf: &DeviceSpec,
    vfs: &[&DeviceSpec],
    buf: &[u8],
) -> Result<Change, Errno> {
    let n = parse_u16(buf).ok_or(Errno::EINVAL)?;
    if n > pf.total_vfs {
        return Err(Errno(libc::ERANGE));
    }
    // device_lock: one change at a time, across processes.
    let _lock = locked(&state_path(testbed, &pf.bdf, "lock"), false, libc::LOCK_EX)?;
    let now = numvfs(testbed, &pf.bdf);
    if n == now {
        return Ok(Change::None);
    }
    let io = |e: std::io::Error| Errno(e.raw_os_error().unwrap_or(libc::EIO));
    if n == 0 {
        wait_vfs_unused(testbed, &pf.bdf)?;
        crate::testbed::remove_vfs(testbed, pf, vfs).map_err(io)?;
        set_numvfs(&pf.bdf, 0);
        return Ok(Change::Disabled);
    }
    if now != 0 {
        return Err(Errno::EBUSY);
    }
    crate::testbed::add_vfs(testbed, pf, &vfs[..n as usize]).map_err(io)?;
    set_numvfs(&pf.bdf, n);
    Ok(Change::Enabled(n))
}

/// What a write to `sriov_numvfs` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing (the count it had).
    None,
    /// VFs created.
    Enabled(u16),
    /// Every VF removed.
    Disabled,
}

/// An open `sriov_numvfs` of a PF, for writing (see
/// [`crate::Front::open_attr`]): the front end's own copy of the memfd
/// the program got, which collects what stdio wrote past the wrappers.
#[derive(Debug)]
pub struct NumVfsAttr {
    /// The PF's position in the run's devices.
    pub pf: usize,
    memfd: OwnedFd,
}

impl NumVfsAttr {
    /// The attribute of the PF at `pf`, over `memfd`.
    pub fn new(pf: usize, memfd: OwnedFd) -> NumVfsAttr {
        NumVfsAttr { pf, memfd }
    }
}

impl Drop for NumVfsAttr {
    /// The last fd is closed: what stdio wrote into the memfd is stored.
    fn drop(&mut self) {
        let mut buf = [0u8; 64];
        // SAFETY: pread of our own fd into our buffer.
        let n = unsafe {
            libc::pread(
                self.memfd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        if n <= 0 {
            return;
        }
        let Some(f) = crate::Front::get() else {
            return;
        };
        if let Err(e) = f.write_numvfs(self.pf, &buf[..n as usize]) {
            eprintln!(
                "barmap: a buffered write to sriov_numvfs failed: {}",
                std::io::Error::from_raw_os_error(e.0)
            );
        }
    }
}

/// The PF address whose `sriov_numvfs` `path` names, if it does.
pub fn numvfs_attr_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/sys/bus/pci/devices/")?;
    let (bdf, attr) = rest.split_once('/')?;
    (attr.trim_end_matches('/') == "sriov_numvfs").then_some(bdf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tokens_parse_as_the_kernel_parses_them() {
        let bdf = "0000:bb:00.0";
        let u = "52ac9bff-3a88-4fbd-901a-0d767c3b6c97";
        let want = parse_uuid(u.as_bytes()).unwrap();
        assert_eq!(want[0], 0x52);
        assert_eq!(want[15], 0x97);
        assert_eq!(match_name(bdf.as_bytes(), bdf), Ok(Some(None)));
        let with = format!("{bdf} vf_token={u}");
        assert_eq!(match_name(with.as_bytes(), bdf), Ok(Some(Some(want))));
        let spaced = format!("{bdf}   vf_token={u}  ");
        assert_eq!(match_name(spaced.as_bytes(), bdf), Ok(Some(Some(want))));
        assert_eq!(match_name(b"0000:bb:00.1", bdf), Ok(None));
        assert_eq!(match_name(b"0000:bb:00.0x", bdf), Ok(None));
        for bad in [
            format!("{bdf} vf_token={u} vf_token={u}"),
            format!("{bdf} vf_token={u}x"),
            format!("{bdf} vf_token=52ac9bff"),
            format!("{bdf} vf_token=52ac9bff-3a88-4fbd-901a-0d767c3b6cZZ"),
            format!("{bdf} colour=red"),
        ] {
            assert_eq!(match_name(bad.as_bytes(), bdf), Err(Errno::EINVAL), "{bad}");
        }
    }

    #[test]
    fn numvfs_parses_as_kstrtou16() {
        assert_eq!(parse_u16(b"1"), Some(1));
        assert_eq!(parse_u16(b"2\n"), Some(2));
        assert_eq!(parse_u16(b"0x10"), Some(16));
        assert_eq!(parse_u16(b"010"), Some(8));
        assert_eq!(parse_u16(b"+3"), Some(3));
        for bad in [&b""[..], b"-1", b" 1", b"1 ", b"65536", b"x", b"1\n\n"] {
            assert_eq!(parse_u16(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn vf_addresses_follow_offset_and_stride() {
        assert_eq!(vf_bdf(0, 0), "0000:bb:00.0");
        assert_eq!(vf_bdf(0, 9), "0000:bb:01.1");
        assert_eq!(vf_bdf(1, 0), "0000:bc:00.0");
        for pf in 0..4 {
            let rid = pf_rid(pf) + u32::from(vf_offset(pf));
            assert_eq!(rid, vf_rid(pf, 0));
        }
    }

    /// A model with two extended capabilities of its own (0x100 -> 0x140)
    /// and a register at 0x180.
    struct Listed(u32);

    impl DeviceModel for Listed {
        fn layout(&self) -> Layout {
            Layout::new(0x1234, 0x5678)
                .registers(0, 4096)
                .extended_config()
        }
        fn read(&mut self, _: &mut Ctx<'_>, _: u32, _: u64, _: Width) -> u64 {
            0
        }
        fn write(&mut self, _: &mut Ctx<'_>, _: u32, _: u64, _: Width, _: u64) {}
        fn reset(&mut self) {}
        fn config_read(&mut self, _: &mut Ctx<'_>, offset: u64, width: Width) -> u64 {
            let dword: u32 = match offset & !3 {
                0x100 => 0x0001 | 1 << 16 | 0x140 << 20,
                0x140 => 0x000b | 1 << 16,
                0x180 => self.0,
                _ => 0,
            };
            (u64::from(dword) >> ((offset & 3) * 8)) & width.mask()
        }
        fn config_write(&mut self, _: &mut Ctx<'_>, offset: u64, _: Width, value: u64) {
            if offset == 0x180 {
                self.0 = value as u32;
            }
        }
    }

    #[test]
    fn the_capability_is_linked_after_a_models_own_list() {
        let spec = DeviceSpec::parse("edu,sriov=3", barmap::Policy::Prefault).unwrap();
        let dev = barmap_models::ModelDevice::new(PhysFn::new(Box::new(Listed(7)), &spec)).unwrap();
        let rd = |off: u64| {
            let mut b = [0u8; 4];
            dev.read_config(off, &mut b).unwrap();
            u32::from_le_bytes(b)
        };
        let mut chain = Vec::new();
        let mut at = 0x100u64;
        while at >= 0x100 && chain.len() < 8 {
            let h = rd(at);
            chain.push((at, h & 0xffff));
            at = u64::from(h >> 20);
        }
        assert_eq!(chain, [(0x100, 1), (0x140, 0xb), (0x300, 0x10)]);
        assert_eq!(rd(0x300 + 0x0c), 3 << 16 | 3);
        // A two-byte read of the last header's upper half sees the link too.
        let mut half = [0u8; 2];
        dev.read_config(0x142, &mut half).unwrap();
        assert_eq!(u16::from_le_bytes(half) >> 4, 0x300);
        // The model's own register is the model's, the capability read-only.
        dev.write_config(0x180, &9u32.to_le_bytes()).unwrap();
        assert_eq!(rd(0x180), 9);
        dev.write_config(0x30c, &0u32.to_le_bytes()).unwrap();
        assert_eq!(rd(0x30c), 3 << 16 | 3);
    }
}
