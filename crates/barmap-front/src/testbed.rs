//! The testbed directory that `barmap run` lays out: the sysfs view of the
//! emulated devices as vfio-pci-bound PCI functions, and placeholders for
//! the device nodes (so that `stat` and `access` find them). The front end
//! redirects the program's accesses to these paths ([`crate::paths`]).
//!
//! The testbed trusts no one. Each run makes its own directory, atomically
//! and never reusing a name (`mkdtemp` under `$TMPDIR` if that is an
//! absolute path to a directory, else `/tmp`; mode 0700, checked to be owned by the
//! process's user), and writes into it a random token, which it also gives
//! the program in [`TOKEN_ENV`]. A directory is used as a testbed only if
//! it passes [`check`]: it is not a symbolic link, it is owned by the
//! process's effective user (or root), its mode is 0700, and it holds this
//! run's token, which also names the directory (device, inode and birth
//! time), so that a directory made again at the same path after the run
//! is refused, even with a copy of the token. Everything in it is opened relative to the
//! checked directory, without following symbolic links; reports are
//! created, never overwritten ([`write_report`]). The testbed is removed
//! when its [`Testbed`] is dropped.

use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use barmap_models::{Layout, RegionKind};

use crate::spec::{RunSpec, SPEC_FILE};

/// `IORESOURCE_MEM | IORESOURCE_MEM_64`, and `IORESOURCE_PREFETCH`.
const RES_MEM: u64 = 0x0000_0200 | 0x0010_0000;
const RES_PREFETCH: u64 = 0x0000_2000;

/// Environment variable carrying the run's token to the program.
pub const TOKEN_ENV: &str = "BARMAP_TESTBED_TOKEN";
/// File name of the token inside the testbed.
pub const TOKEN_FILE: &str = "barmap-token";
/// Where a process whose testbed is gone or refused looks up VFIO paths:
/// a path that names nothing and that no one can create, so that every
/// lookup fails with ENOENT, as on a machine without the devices.
pub const GONE: &str = "/proc/self/barmap-testbed-gone";
/// The largest file read from a testbed (spec, token, report).
const MAX_READ: u64 = 16 << 20;

/// Tokens of the testbeds this process made (so that a front end in the
/// launching process, as in tests, finds them without the environment).
static MADE: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());
/// A testbed named to this process was refused ([`refused`]).
static REFUSED: AtomicBool = AtomicBool::new(false);

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    Ok(CString::new(p.as_os_str().as_bytes())?)
}

fn refuse(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: not this run's testbed: {why}", path.display()),
    )
}

/// An open directory, the base of the `*at` calls that work inside it.
#[derive(Debug)]
struct Dir(OwnedFd);

impl Dir {
    /// Opens the directory `path`; a symbolic link there is refused.
    fn open_nofollow(path: &Path) -> io::Result<Dir> {
        let c = cpath(path)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: open of a NUL-terminated path; a new fd or -1.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), flags) })?;
        // SAFETY: the fd is new and ours alone.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `openat(self, rel, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
    fn open_at(&self, rel: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        let c = CString::new(rel)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: openat on our directory fd with a NUL-terminated
        // relative path; a new fd or -1.
        let fd = cvt(unsafe { libc::openat(self.0.as_raw_fd(), c.as_ptr(), flags, mode) })?;
        // SAFETY: the fd is new and ours alone.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The directory's own `fstat`.
    fn stat(&self) -> io::Result<libc::stat> {
        fstat(&self.0)
    }

    /// `fstatat(self, name, AT_SYMLINK_NOFOLLOW)`.
    fn stat_at(&self, name: &str) -> io::Result<libc::stat> {
        let c = CString::new(name)?;
        // SAFETY: a zeroed stat is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat on our fd, a NUL-terminated name and a stat buffer.
        cvt(unsafe {
            libc::fstatat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(st)
    }

    /// The subdirectory `name` (not a symbolic link).
    fn sub(&self, name: &str) -> io::Result<Dir> {
        Ok(Dir(self.open_at(
            name,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?))
    }

    /// Makes `rel` and its missing parents (mode 0755; the testbed's own
    /// 0700 keeps everyone else out).
    fn mkdir_all(&self, rel: &str) -> io::Result<()> {
        let mut at = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            let c = CString::new(at.as_str())?;
            // SAFETY: mkdirat on our fd with a NUL-terminated relative path.
            match cvt(unsafe { libc::mkdirat(self.0.as_raw_fd(), c.as_ptr(), 0o755) }) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates the file `rel` with `bytes` (mode `mode`); an existing name
    /// or a symbolic link there is an error (EEXIST), never followed.
    fn create(&self, rel: &str, bytes: &[u8], mode: libc::mode_t) -> io::Result<()> {
        let fd = self.open_at(rel, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)?;
        fs::File::from(fd).write_all(bytes)
    }

    /// Replaces the contents of the existing regular file `rel` with
    /// `text`, in place (an open of it reads the new contents, as a sysfs
    /// attribute does).
    fn overwrite(&self, rel: &str, text: &str) -> io::Result<()> {
        let fd = self.open_at(rel, libc::O_WRONLY | libc::O_TRUNC, 0)?;
        fs::File::from(fd).write_all(text.as_bytes())
    }

    /// Creates the file `rel` with `text` (mode 0644).
    fn write(&self, rel: &str, text: &str) -> io::Result<()> {
        self.create(rel, text.as_bytes(), 0o644)
    }

    /// Makes the symbolic link `rel` to `target`.
    fn symlink(&self, target: &str, rel: &str) -> io::Result<()> {
        let (t, r) = (CString::new(target)?, CString::new(rel)?);
        // SAFETY: symlinkat with two NUL-terminated strings and our fd.
        cvt(unsafe { libc::symlinkat(t.as_ptr(), self.0.as_raw_fd(), r.as_ptr()) }).map(drop)
    }

    /// The contents of the regular file `name` (not a symbolic link).
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let fd = self.open_at(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        let st = fstat(&fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} is not a regular file"),
            ));
        }
        let mut out = Vec::new();
        fs::File::from(fd).take(MAX_READ).read_to_end(&mut out)?;
        Ok(out)
    }

    /// The names in the directory, other than `.` and `..`.
    fn names(&self) -> io::Result<Vec<String>> {
        // SAFETY: dup of our fd; a new fd or -1.
        let fd = cvt(unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: fdopendir takes the new fd (closed by closedir below).
        let d = unsafe { libc::fdopendir(fd) };
        if d.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so the fd is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        // SAFETY: rewinddir of the stream we opened (the dup shares the
        // file position with our fd).
        unsafe { libc::rewinddir(d) };
        let mut names = Vec::new();
        loop {
            // SAFETY: readdir of our open stream; null at the end.
            let e = unsafe { libc::readdir(d) };
            if e.is_null() {
                break;
            }
            // SAFETY: d_name of a returned entry is NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
            if let Ok(n) = name.to_str() {
                if n != "." && n != ".." {
                    names.push(n.to_string());
                }
            }
        }
        // SAFETY: closes the stream and its fd, once.
        unsafe { libc::closedir(d) };
        Ok(names)
    }

    /// `unlinkat(self, name, flags)`.
    fn unlink(&self, name: &str, flags: libc::c_int) -> io::Result<()> {
        let c = CString::new(name)?;
        // SAFETY: unlinkat on our fd with a NUL-terminated name.
        cvt(unsafe { libc::unlinkat(self.0.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
    }

    /// Removes everything in the directory (never following a symbolic
    /// link), down to `depth` levels.
    fn empty(&self, depth: u32) -> io::Result<()> {
        for name in self.names()? {
            let st = self.stat_at(&name)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                if depth > 0 {
                    self.sub(&name)?.empty(depth - 1)?;
                }
                self.unlink(&name, libc::AT_REMOVEDIR)?;
            } else {
                self.unlink(&name, 0)?;
            }
        }
        Ok(())
    }
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat of an open fd into a stat buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The directory's identity as the token names it: device, inode and
/// birth time (a file system may give a new directory the inode number of
/// one just removed, as ext4 does; the birth time tells them apart).
fn identity(dir: &Dir) -> io::Result<String> {
    // SAFETY: a zeroed statx is a valid out-buffer.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx of our open fd itself (empty path, AT_EMPTY_PATH) into
    // a statx buffer.
    cvt(unsafe {
        libc::statx(
            dir.0.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_INO | libc::STATX_BTIME,
            &mut stx,
        )
    })?;
    let mut id = format!(
        "-{:x}:{:x}-{:x}",
        stx.stx_dev_major, stx.stx_dev_minor, stx.stx_ino
    );
    if stx.stx_mask & libc::STATX_BTIME != 0 {
        id += &format!("-{}.{:09}", stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec);
    }
    Ok(id)
}

/// A fresh token for the directory `dir`: 128 random bits and the
/// directory's identity.
fn new_token(dir: &Dir) -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut got = 0;
    while got < bytes.len() {
        // SAFETY: getrandom into the unfilled tail of our buffer.
        let n = unsafe { libc::getrandom(bytes[got..].as_mut_ptr().cast(), bytes.len() - got, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        got += n as usize;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex + &identity(dir)?)
}

/// The token of the testbed at `path`: this process's own, if it made
/// it, else the one the program was given in [`TOKEN_ENV`].
fn token_for(path: &Path) -> Option<String> {
    let made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = made.iter().find(|(p, _)| p == path) {
        return Some(t.clone());
    }
    drop(made);
    std::env::var(TOKEN_ENV).ok()
}

/// Checks the open directory `dir` (opened from `path`) against `token`.
fn check_dir(path: &Path, dir: &Dir, token: &str) -> io::Result<()> {
    let st = dir.stat()?;
    if st.st_uid != euid() && st.st_uid != 0 {
        return Err(refuse(
            path,
            format_args!(
                "owned by uid {}, neither this process's user ({}) nor root",
                st.st_uid,
                euid()
            ),
        ));
    }
    if st.st_mode & 0o7777 != 0o700 {
        return Err(refuse(
            path,
            format_args!("mode {:04o}, not 0700", st.st_mode & 0o7777),
        ));
    }
    if !token.ends_with(&identity(dir)?) {
        return Err(refuse(path, "another directory than the one the run made"));
    }
    let theirs = dir.read(TOKEN_FILE).map_err(|e| refuse(path, e))?;
    if theirs != token.as_bytes() {
        return Err(refuse(path, "its token is not this run's"));
    }
    Ok(())
}

/// Opens the testbed at `path` if it is the directory this run made and
/// still owns ([`check`]).
fn open_checked(path: &Path) -> io::Result<Dir> {
    let dir = match Dir::open_nofollow(path) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: the testbed is gone (the run that made it has ended)",
                    path.display()
                ),
            ))
        }
        // O_NOFOLLOW | O_DIRECTORY on a symbolic link: ENOTDIR (or ELOOP).
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Err(refuse(path, "a symbolic link, or not a directory"))
        }
        Err(e) => return Err(refuse(path, e)),
    };
    let Some(token) = token_for(path) else {
        return Err(refuse(
            path,
            format_args!("no {TOKEN_ENV} in the environment"),
        ));
    };
    check_dir(path, &dir, &token)?;
    Ok(dir)
}

/// Checks that `path` is the testbed this run made and still owns: a
/// directory, not a symbolic link, owned by the process's effective user
/// (or root), mode 0700, holding the run's token (this process's, if it
/// made the testbed, else [`TOKEN_ENV`]). A testbed that is gone is a
/// `NotFound` error; one that fails a check is `PermissionDenied`.
pub fn check(path: &Path) -> io::Result<()> {
    open_checked(path).map(drop)
}

/// The contents of the regular file `name` of the testbed at `path`,
/// after [`check`], without following a symbolic link.
pub fn read_file(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    open_checked(path)?.read(name)
}

/// The testbed named to this process is refused ([`refused`]).
pub(crate) fn mark_refused() {
    REFUSED.store(true, Ordering::Relaxed);
}

/// Writes `bytes` as the new file `name` (mode 0600) of the testbed at
/// `path`, after [`check`]: relative to the checked directory, never
/// following a symbolic link and never overwriting (an existing `name` is
/// EEXIST).
pub fn write_report(path: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    if name.contains('/') {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    open_checked(path)?.create(name, bytes, 0o600)
}

/// Opens the testbed at `path` for a lookup through it, after [`check`]:
/// the path `/proc/self/fd/N` that names the checked directory, and its fd
/// `N` (keep it open until the lookup is done). A lookup under that path
/// reaches this directory, never one made at the same path after the
/// check. Without /proc, the base is `path` itself.
pub fn lookup_base(path: &Path) -> io::Result<(PathBuf, OwnedFd)> {
    static PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let dir = open_checked(path)?;
    let base = if *PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        PathBuf::from(format!("/proc/self/fd/{}", dir.0.as_raw_fd()))
    } else {
        path.to_path_buf()
    };
    Ok((base, dir.0))
}

/// Whether a testbed named to this process (by [`crate::spec::RunSpec::load`])
/// was refused: gone, or not this run's. The process then sees no VFIO
/// devices ([`GONE`]).
pub fn refused() -> bool {
    REFUSED.load(Ordering::Relaxed)
}

/// Where testbeds are made: `$TMPDIR` if it is an absolute path to a
/// directory, else `/tmp` (as glibc's temporary files choose).
fn temp_root() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(t) if Path::new(&t).is_absolute() && Path::new(&t).is_dir() => PathBuf::from(t),
        _ => PathBuf::from("/tmp"),
    }
}

/// Makes the directory `dir` (opened from `path`, owned by this process's
/// user) exactly mode 0700 (mkdtemp's mode less the umask may be less),
/// gives it `token`, and registers the token in this process.
fn make_private(path: &Path, dir: &Dir, token: &str) -> io::Result<()> {
    // SAFETY: fchmod of our open directory.
    cvt(unsafe { libc::fchmod(dir.0.as_raw_fd(), 0o700) })?;
    dir.create(TOKEN_FILE, token.as_bytes(), 0o600)?;
    MADE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path.to_path_buf(), token.to_string()));
    check_dir(path, dir, token)
}

/// Lays out `spec` in the existing empty directory `dir`, which must be
/// owned by this process's user and not a symbolic link: it is made
/// private (mode 0700) and given a token that only this process knows,
/// so that front ends in this process (tests) take it for a testbed, and
/// no program does. The caller removes it. `barmap run` uses
/// [`Testbed::new`].
pub fn create(dir: &Path, spec: &RunSpec) -> io::Result<()> {
    let d = Dir::open_nofollow(dir)?;
    let st = d.stat()?;
    if st.st_uid != euid() {
        return Err(refuse(dir, "owned by another user"));
    }
    make_private(dir, &d, &new_token(&d)?)?;
    lay_out(&d, spec)
}

/// A testbed this process made: a private directory, laid out for a
/// [`RunSpec`], removed when dropped.
#[derive(Debug)]
pub struct Testbed {
    path: PathBuf,
    dir: Dir,
    token: String,
    /// The directory's device and inode.
    id: (u64, u64),
}

impl Testbed {
    /// Makes a fresh private directory (mkdtemp under `$TMPDIR` or
    /// `/tmp`, mode 0700, owned by this process's user, a new token) and
    /// lays out `spec` in it.
    pub fn new(spec: &RunSpec) -> io::Result<Testbed> {
        Testbed::new_with(spec, |_| Ok(None)).map(|(tb, _)| tb)
    }

    /// Like [`Testbed::new`], with `serve` called on the fresh directory
    /// before anything is laid out in it: the spec it returns, if any, is
    /// laid out instead of `spec` (`barmap run --shared`, whose server's
    /// sockets live in the testbed), and returned.
    pub fn new_with(
        spec: &RunSpec,
        serve: impl FnOnce(&Path) -> io::Result<Option<RunSpec>>,
    ) -> io::Result<(Testbed, RunSpec)> {
        let root = temp_root();
        let tb = Testbed::make(&root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("a private directory in {}: {e}", root.display()),
            )
        })?;
        let spec = serve(&tb.path)?.unwrap_or_else(|| spec.clone());
        lay_out(&tb.dir, &spec)?;
        Ok((tb, spec))
    }

    /// An empty testbed with its token, in `root`.
    fn make(root: &Path) -> io::Result<Testbed> {
        let mut template = cpath(&root.join("barmap-run-XXXXXX"))?.into_bytes_with_nul();
        // SAFETY: mkdtemp rewrites the trailing XXXXXX of our
        // NUL-terminated buffer in place; null on failure.
        if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
            return Err(io::Error::last_os_error());
        }
        template.pop();
        let path = PathBuf::from(OsString::from_vec(template));
        let dir = Dir::open_nofollow(&path)?;
        let st = dir.stat()?;
        if st.st_uid != euid() || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(refuse(&path, "replaced after mkdtemp made it"));
        }
        let tb = Testbed {
            token: new_token(&dir)?,
            path,
            dir,
            id: (st.st_dev, st.st_ino),
        };
        make_private(&tb.path, &tb.dir, &tb.token)?;
        Ok(tb)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token that the program gets in [`TOKEN_ENV`].
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The reports the program's processes wrote (`report-*.json`,
    /// regular files only, in name order), parsed; files that are not
    /// JSON are skipped.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<String> = self
            .dir
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with("report-") && n.ends_with(".json"))
            .collect();
        names.sort();
        names
            .iter()
            .filter_map(|n| self.dir.read(n).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// Removes the name of the directory if it still names this
    /// directory (and it is empty).
    fn unlink_own_name(&self) -> io::Result<()> {
        let (Some(parent), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Ok(());
        };
        let parent = Dir(OwnedFd::from(fs::File::open(parent)?));
        let name = name.to_str().ok_or(io::ErrorKind::InvalidInput)?;
        let st = parent.stat_at(name)?;
        if (st.st_dev, st.st_ino) != self.id {
            return Ok(());
        }
        parent.unlink(name, libc::AT_REMOVEDIR)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        MADE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _)| p != &self.path);
        // The token first: from here on no process takes the directory
        // for its testbed, so nothing new is written in it.
        let _ = self.dir.unlink(TOKEN_FILE, 0);
        for _ in 0..8 {
            let _ = self.dir.empty(16);
            match self.unlink_own_name() {
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => continue,
                _ => break,
            }
        }
    }
}

/// Lays out `spec` in the testbed directory `dir` (empty, private):
/// every name is created relative to `dir`, never reusing or following
/// what is there.
fn lay_out(dir: &Dir, spec: &RunSpec) -> io::Result<()> {
    dir.write(
        SPEC_FILE,
        &serde_json::to_string_pretty(spec).map_err(io::Error::other)?,
    )?;
    let devices = "sys/bus/pci/devices";
    let driver = "sys/bus/pci/drivers/vfio-pci";
    let groups = "sys/kernel/iommu_groups";
    for d in [devices, driver, groups] {
        dir.mkdir_all(d)?;
    }
    for m in [
        "vfio",
        "vfio_pci",
        "vfio_pci_core",
        "vfio_iommu_type1",
        "iommufd",
    ] {
        dir.mkdir_all(&format!("sys/module/{m}"))?;
    }
    // vfio-pci as loaded with enable_sriov=1 (SR-IOV PFs configure
    // their VFs through sriov_numvfs).
    dir.mkdir_all("sys/module/vfio_pci/parameters")?;
    dir.write("sys/module/vfio_pci/parameters/enable_sriov", "Y\n")?;
    dir.mkdir_all("dev/vfio/devices")?;
    dir.write("dev/vfio/vfio", "")?;
    dir.write("dev/iommu", "")?;
    for d in spec.devices.iter().filter(|d| !d.is_vf()) {
        lay_out_function(dir, d)?;
        if d.total_vfs > 0 {
            lay_out_sriov(dir, d)?;
        }
    }
    Ok(())
}

/// Lays out one PCI function bound to vfio-pci: its sysfs directory, its
/// IOMMU group, its driver link and its node placeholders.
fn lay_out_function(dir: &Dir, d: &crate::spec::DeviceSpec) -> io::Result<()> {
    let devices = "sys/bus/pci/devices";
    let driver = "sys/bus/pci/drivers/vfio-pci";
    let groups = "sys/kernel/iommu_groups";
    let layout = if let Some(ids) = &d.served_ids {
        // Asked from the device's server before the program started.
        ids.layout()
    } else if d.model == crate::spec::REMOTE_MODEL {
        // Served over vfio-user: the server is not asked here (a
        // libvfio-user server takes one client, the program), so sysfs
        // shows no IDs and no BARs; config space and region info come
        // from the server once the program opens the device.
        Layout::new(0, 0)
    } else {
        d.model()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .layout()
    };
    let at = format!("{devices}/{}", d.bdf);
    dir.mkdir_all(&format!("{at}/vfio-dev/vfio{}", d.cdev))?;
    dir.write(
        &format!("{at}/vfio-dev/vfio{}/dev", d.cdev),
        &format!("511:{}\n", d.cdev),
    )?;
    dir.write(
        &format!("{at}/vendor"),
        &format!("0x{:04x}\n", layout.vendor),
    )?;
    dir.write(
        &format!("{at}/device"),
        &format!("0x{:04x}\n", layout.device),
    )?;
    dir.write(&format!("{at}/subsystem_vendor"), "0x1af4\n")?;
    dir.write(&format!("{at}/subsystem_device"), "0x1100\n")?;
    dir.write(&format!("{at}/class"), &format!("0x{:06x}\n", layout.class))?;
    dir.write(
        &format!("{at}/revision"),
        &format!("0x{:02x}\n", layout.revision),
    )?;
    dir.write(&format!("{at}/numa_node"), "-1\n")?;
    dir.write(&format!("{at}/irq"), "0\n")?;
    dir.write(&format!("{at}/enable"), "1\n")?;
    dir.write(&format!("{at}/resource"), &resource_lines(&layout))?;
    dir.symlink(
        "../../../../bus/pci/drivers/vfio-pci",
        &format!("{at}/driver"),
    )?;
    dir.symlink(
        &format!("../../../../kernel/iommu_groups/{}", d.group),
        &format!("{at}/iommu_group"),
    )?;
    dir.symlink(
        &format!("../../devices/{}", d.bdf),
        &format!("{driver}/{}", d.bdf),
    )?;
    let g = format!("{groups}/{}", d.group);
    dir.mkdir_all(&format!("{g}/devices"))?;
    dir.symlink(
        &format!("../../../../bus/pci/devices/{}", d.bdf),
        &format!("{g}/devices/{}", d.bdf),
    )?;
    dir.write(&format!("{g}/type"), "DMA\n")?;
    dir.write(&format!("dev/vfio/{}", d.group), "")?;
    dir.write(&format!("dev/vfio/devices/vfio{}", d.cdev), "")?;
    Ok(())
}

/// The SR-IOV attributes of a physical function (drivers/pci/iov.c's
/// `sriov_*` files, no VFs yet) and its state files: the VF token
/// (random, as vfio-pci makes it at the binding), the users file that
/// open VFs hold locked shared, the lock of `sriov_numvfs` changes.
fn lay_out_sriov(dir: &Dir, d: &crate::spec::DeviceSpec) -> io::Result<()> {
    let at = format!("sys/bus/pci/devices/{}", d.bdf);
    let pos = d
        .bdf
        .get(8..10)
        .and_then(|x| u32::from_str_radix(x, 16).ok());
    let offset = crate::sriov::vf_offset(pos.unwrap_or(0));
    dir.write(
        &format!("{at}/sriov_totalvfs"),
        &format!("{}\n", d.total_vfs),
    )?;
    dir.write(&format!("{at}/sriov_numvfs"), "0\n")?;
    dir.write(&format!("{at}/sriov_offset"), &format!("{offset}\n"))?;
    dir.write(&format!("{at}/sriov_stride"), "1\n")?;
    dir.write(
        &format!("{at}/sriov_vf_device"),
        &format!("{:x}\n", d.vf_device),
    )?;
    dir.write(&format!("{at}/sriov_drivers_autoprobe"), "1\n")?;
    dir.mkdir_all("sriov")?;
    let state = |what: &str| format!("sriov/{}.{what}", d.bdf);
    dir.create(&state("token"), &crate::sriov::initial_token(), 0o600)?;
    dir.create(&state("users"), b"", 0o600)?;
    dir.create(&state("lock"), b"", 0o600)?;
    Ok(())
}

/// Creates the VFs `vfs` of the PF `pf` in the testbed at `path`: each a
/// function of its own (bound to vfio-pci through `driver_override`, as
/// vfio-pci's bus notifier sets it, with `physfn`), the PF's `virtfnN`
/// links, and the PF's `sriov_numvfs`.
pub fn add_vfs(
    path: &Path,
    pf: &crate::spec::DeviceSpec,
    vfs: &[&crate::spec::DeviceSpec],
) -> io::Result<()> {
    let dir = open_checked(path)?;
    let devices = "sys/bus/pci/devices";
    for (k, vf) in vfs.iter().enumerate() {
        lay_out_function(&dir, vf)?;
        let at = format!("{devices}/{}", vf.bdf);
        dir.write(&format!("{at}/driver_override"), "vfio-pci\n")?;
        dir.symlink(&format!("../{}", pf.bdf), &format!("{at}/physfn"))?;
        dir.symlink(
            &format!("../{}", vf.bdf),
            &format!("{devices}/{}/virtfn{k}", pf.bdf),
        )?;
    }
    dir.overwrite(
        &format!("{devices}/{}/sriov_numvfs", pf.bdf),
        &format!("{}\n", vfs.len()),
    )
}

/// Removes the VFs `vfs` of the PF `pf` from the testbed at `path` (the
/// ones that exist), and sets the PF's `sriov_numvfs` to 0.
pub fn remove_vfs(
    path: &Path,
    pf: &crate::spec::DeviceSpec,
    vfs: &[&crate::spec::DeviceSpec],
) -> io::Result<()> {
    let dir = open_checked(path)?;
    let devices = "sys/bus/pci/devices";
    for (k, vf) in vfs.iter().enumerate().rev() {
        let _ = dir.unlink(&format!("{devices}/{}/virtfn{k}", pf.bdf), 0);
        let at = format!("{devices}/{}", vf.bdf);
        for (p, is_dir) in [
            (at.clone(), true),
            (format!("sys/kernel/iommu_groups/{}", vf.group), true),
            (format!("sys/bus/pci/drivers/vfio-pci/{}", vf.bdf), false),
            (format!("dev/vfio/{}", vf.group), false),
            (format!("dev/vfio/devices/vfio{}", vf.cdev), false),
        ] {
            if is_dir {
                if let Ok(sub) = dir.sub(&p) {
                    sub.empty(8)?;
                    dir.unlink(&p, libc::AT_REMOVEDIR)?;
                }
            } else {
                match dir.unlink(&p, 0) {
                    Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                    _ => {}
                }
            }
        }
    }
    dir.overwrite(&format!("{devices}/{}/sriov_numvfs", pf.bdf), "0\n")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DeviceSpec;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn spec() -> RunSpec {
        RunSpec::new(vec![DeviceSpec::parse(
            "default,memory=4M",
            barmap::Policy::Prefault,
        )
        .unwrap()])
    }

    #[test]
    fn each_testbed_is_a_fresh_private_directory_removed_at_drop() {
        let (a, b) = (
            Testbed::new(&spec()).unwrap(),
            Testbed::new(&spec()).unwrap(),
        );
        assert_ne!(a.path(), b.path());
        assert_ne!(a.token(), b.token());
        for t in [&a, &b] {
            let m = fs::symlink_metadata(t.path()).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.permissions().mode() & 0o7777, 0o700);
            assert_eq!(m.uid(), euid());
            check(t.path()).unwrap();
            assert_eq!(RunSpec::load(t.path()).unwrap(), spec());
        }
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
        assert_eq!(check(&path).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_directory_laid_out_in_place_is_private_and_known_to_this_process_only() {
        let path = temp_root().join(format!("barmap-create-{}", std::process::id()));
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let made = create(&path, &spec());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        let loaded = RunSpec::load(&path);
        fs::remove_dir_all(&path).unwrap();
        made.unwrap();
        assert_eq!(mode, 0o700);
        assert_eq!(loaded.unwrap(), spec());
    }

    #[test]
    fn a_directory_made_again_at_the_path_is_refused_even_with_the_token() {
        let t = Testbed::new(&spec()).unwrap();
        let (path, token) = (t.path().to_path_buf(), t.token().to_string());
        let spec_text = t.dir.read(SPEC_FILE).unwrap();
        drop(t);
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(path.join(TOKEN_FILE), &token).unwrap();
        fs::write(path.join(SPEC_FILE), spec_text).unwrap();
        let dir = Dir::open_nofollow(&path).unwrap();
        let e = check_dir(&path, &dir, &token).unwrap_err();
        fs::remove_dir_all(&path).unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    }

    #[test]
    fn a_testbed_with_another_mode_token_or_a_symlink_is_refused() {
        let t = Testbed::new(&spec()).unwrap();
        let dir = Dir::open_nofollow(t.path()).unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check(t.path()).is_err());
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o700)).unwrap();
        check(t.path()).unwrap();
        let other = format!("{}{}", "0".repeat(32), identity(&dir).unwrap());
        assert!(check_dir(t.path(), &dir, &other).is_err());
        let link = t.path().with_extension("link");
        symlink(t.path(), &link).unwrap();
        let e = check(&link).unwrap_err();
        fs::remove_file(&link).unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    }

    #[test]
    fn reports_are_created_never_through_a_symlink_nor_over_a_file() {
        let t = Testbed::new(&spec()).unwrap();
        let target = t.path().with_extension("target");
        fs::write(&target, "untouched").unwrap();
        symlink(&target, t.path().join("report-1.json")).unwrap();
        let through = write_report(t.path(), "report-1.json", b"{}");
        let after = fs::read_to_string(&target).unwrap();
        fs::remove_file(&target).unwrap();
        assert_eq!(through.unwrap_err().raw_os_error(), Some(libc::EEXIST));
        assert_eq!(after, "untouched");
        write_report(t.path(), "report-2.json", br#"{"pid":2}"#).unwrap();
        let again = write_report(t.path(), "report-2.json", b"{}");
        assert_eq!(again.unwrap_err().raw_os_error(), Some(libc::EEXIST));
        assert!(write_report(t.path(), "../report-3.json", b"{}").is_err());
        assert_eq!(t.reports(), vec![serde_json::json!({ "pid": 2 })]);
    }
}
