//! # barmap-server
//!
//! barmap's device server: barmap-models devices held in one process and
//! served to other processes over **vfio-user**, the protocol of QEMU's
//! `docs/interop/vfio-user.rst` that QEMU 10.1 and later implement
//! (`-device vfio-user-pci`), as do libvfio-user and rust-vmm's
//! `vfio_user` crate. `barmap serve` runs it; `barmap ctl` drives it.
//!
//! ## What a client gets
//!
//! - `VERSION` (0.0, with `max_msg_fds`, `max_data_xfer_size`, `pgsizes`,
//!   `max_dma_maps`), `DEVICE_GET_INFO` (PCI, reset; 9 regions, 5 IRQ
//!   indexes), `DEVICE_RESET`.
//! - `DEVICE_GET_REGION_INFO`: config space and register BARs by message;
//!   **memory BARs as a memfd the client mmaps** (sent with the reply, with
//!   a sparse-mmap capability when barmap allows only part of the BAR).
//! - `REGION_READ`/`WRITE` (and `WRITE_MULTI`): register accesses reach the
//!   model, config writes its config space (COMMAND, PMCSR, MSI-X control),
//!   memory BARs their memfd. While device memory is disabled, an access
//!   gets the kernel's answer: EIO, as `vfio_pci_bar_rw` gives.
//! - `GET_IRQ_INFO`/`SET_IRQS`: eventfds from the client for INTx (masked
//!   when it fires, unmasked by message), MSI, MSI-X (the emulated table's
//!   mask and pending bits), ERR and REQ; the model raises them.
//! - `DMA_MAP`/`UNMAP`: a window with the client's memory fd is reached
//!   with `pread`/`pwrite` on that fd; one without is reached by
//!   `DMA_READ`/`DMA_WRITE` messages to the client ([`host`]).
//!
//! ## Revocation
//!
//! A memory BAR is a memfd ([`bar::MemBar`]). When device memory stops
//! being accessible (COMMAND.MEM cleared, D3hot, reset, removal), the
//! server saves the contents and truncates the memfd to 0: every mapping
//! of it, in every process, gets SIGBUS on its next touch, with nothing
//! asked of the client (QEMU, a stopped process, anything). Re-enabling
//! grows it back and copies the contents back. A client that changes the
//! file's size itself (grows it while revoked, shrinks it while live) is
//! undone by the process's watcher (one inotify instance and thread, a
//! watch per BAR; [`watch`]) and counted (`tampers` in the
//! device's counters); see [`bar`]. See ARCHITECTURE.md for what is exact
//! and what is contained.
//!
//! ## Why its own message layer
//!
//! rust-vmm's `vfio_user` crate (0.1.x) was considered. Its `Server`
//! accepts one connection, serves no region file descriptors (so a client
//! cannot mmap a BAR, and there is nothing to revoke), keeps its message
//! structures private and has no server-to-client messages (no
//! `DMA_READ`/`WRITE`). The server therefore speaks the protocol through
//! `barmap-vfio-user`, the layouts and framing it shares with barmap's
//! client (`barmap-client`); tests check that rust-vmm's `Client` and
//! barmap's agree with it.

#![cfg(target_os = "linux")]
#![warn(missing_docs)]

pub mod bar;
pub mod conn;
pub mod control;
pub mod device;
pub mod ext;
pub mod host;
pub mod private_dir;
pub mod watch;

/// The protocol's layouts and framing (`barmap-vfio-user`).
pub use barmap_vfio_user as proto;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use device::{ClientInfo, DeviceStatus, ServedDevice};

/// A device to serve.
pub struct DeviceConfig {
    /// Its name (the spec text, for listings).
    pub name: String,
    /// The model.
    pub model: Box<dyn barmap_models::DeviceModel>,
    /// Refuse a second client while one is connected (EBUSY in the reply
    /// to its `VERSION`). Off by default: several clients may share a
    /// device, as processes sharing a VFIO device fd do.
    pub exclusive: bool,
}

impl std::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("name", &self.name)
            .field("exclusive", &self.exclusive)
            .finish()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket's directory is not owned by the caller, or is writable
    /// by others: anyone could replace the socket.
    #[error(
        "{0}: the socket's directory must be owned by uid {1} and not writable by group or others"
    )]
    UnsafeDirectory(PathBuf, u32),
    /// Something else at the socket's path.
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    /// Building a device failed.
    #[error("device {0}: {1}")]
    Device(String, barmap::Error),
    /// A socket call failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The server: its devices, their sockets, the control socket.
#[derive(Debug)]
pub struct Server {
    devices: Vec<Arc<ServedDevice>>,
    sockets: Vec<PathBuf>,
    control: PathBuf,
    locks: PathBuf,
    next_client: AtomicU64,
    stopping: AtomicBool,
}

/// The socket of device `index` for `--socket PATH`: PATH for the first,
/// `PATH.N` for device N after it.
pub fn device_socket(path: &Path, index: usize) -> PathBuf {
    if index == 0 {
        path.to_path_buf()
    } else {
        PathBuf::from(format!("{}.{index}", path.display()))
    }
}

/// The control socket for `--socket PATH`: `PATH.ctl`.
pub fn control_socket(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.ctl", path.display()))
}

/// The directory of the lock files for `--socket PATH`: `PATH.locks`.
/// Every client process of the server, whichever run it belongs to, opens
/// a served device's group and device fds as lock files there, so that a
/// group's single open holds across all of them (as `/dev/vfio/N` does
/// system-wide). Made when the server starts, removed when it stops.
pub fn locks_dir(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.locks", path.display()))
}

/// Makes the lock directory `dir`, mode 0700; one left by a server that
/// was killed is taken again if it is a directory of ours that nobody
/// else may write.
fn make_locks_dir(dir: &Path) -> Result<(), ServeError> {
    let io = |e| ServeError::Io(dir.to_path_buf(), e);
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(dir).map_err(io)?;
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
                return Err(ServeError::UnsafeDirectory(dir.to_path_buf(), uid));
            }
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}

/// Creates a listening socket at `path`, mode 0600, in a directory the
/// caller owns and nobody else may write; a stale socket is replaced.
fn listen(path: &Path) -> Result<UnixListener, ServeError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |e| ServeError::Io(path.to_path_buf(), e);
    let meta = std::fs::metadata(dir).map_err(|e| ServeError::Io(dir.to_path_buf(), e))?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid || meta.mode() & 0o022 != 0 && meta.mode() & libc::S_ISVTX == 0 {
        return Err(ServeError::UnsafeDirectory(dir.to_path_buf(), uid));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path).map_err(io)?
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    // SAFETY: umask only changes this process's file creation mask; the
    // socket is created 0600 with no window where others may connect.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(old) };
    let l = l.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

impl Server {
    /// Builds the devices and binds their sockets (see [`device_socket`],
    /// [`control_socket`]); serving starts with [`Server::start`].
    pub fn new(socket: &Path, configs: Vec<DeviceConfig>) -> Result<Arc<Server>, ServeError> {
        let mut devices = Vec::new();
        for c in configs {
            let d = ServedDevice::new(&c.name, c.model, c.exclusive)
                .map_err(|e| ServeError::Device(c.name.clone(), e))?;
            devices.push(Arc::new(d));
        }
        Ok(Arc::new(Server {
            sockets: (0..devices.len())
                .map(|i| device_socket(socket, i))
                .collect(),
            control: control_socket(socket),
            locks: locks_dir(socket),
            devices,
            next_client: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        }))
    }

    /// Binds every socket and starts a thread accepting on each; returns
    /// once all listen.
    pub fn start(self: &Arc<Self>) -> Result<(), ServeError> {
        // Before any socket exists: a client's first open finds it.
        make_locks_dir(&self.locks)?;
        let mut listeners = Vec::new();
        for p in &self.sockets {
            listeners.push(listen(p)?);
        }
        let control = listen(&self.control)?;
        for (i, l) in listeners.into_iter().enumerate() {
            let s = self.clone();
            std::thread::Builder::new()
                .name(format!("barmap-accept-{i}"))
                .spawn(move || s.accept_loop(i, l))
                .map_err(|e| ServeError::Io(self.sockets[i].clone(), e))?;
        }
        let s = self.clone();
        std::thread::Builder::new()
            .name("barmap-control".into())
            .spawn(move || {
                for c in control.incoming() {
                    if s.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(c) = c {
                        let s = s.clone();
                        let _ = std::thread::Builder::new()
                            .name("barmap-ctl".into())
                            .spawn(move || control::serve(s, c));
                    }
                }
            })
            .map_err(|e| ServeError::Io(self.control.clone(), e))?;
        Ok(())
    }

    fn accept_loop(self: Arc<Self>, index: usize, l: UnixListener) {
        for c in l.incoming() {
            // A removed device accepts no one: its loop ends (and drops
            // the listener) once woken.
            if self.stopping.load(Ordering::SeqCst) || self.devices[index].is_removed() {
                break;
            }
            let Ok(c) = c else { continue };
            let dev = self.devices[index].clone();
            let id = self.next_client.fetch_add(1, Ordering::Relaxed);
            let _ = std::thread::Builder::new()
                .name(format!("barmap-conn-{id}"))
                .spawn(move || conn::serve(dev, c, id));
        }
    }

    /// The devices.
    pub fn devices(&self) -> &[Arc<ServedDevice>] {
        &self.devices
    }

    /// Device `index`'s socket.
    pub fn socket(&self, index: usize) -> &Path {
        &self.sockets[index]
    }

    /// The control socket.
    pub fn control(&self) -> &Path {
        &self.control
    }

    /// The directory of the clients' lock files ([`locks_dir`]).
    pub fn locks(&self) -> &Path {
        &self.locks
    }

    /// What the control socket reports of device `index`.
    pub fn status(&self, index: usize) -> DeviceStatus {
        self.devices[index].status(index, self.sockets[index].display().to_string())
    }

    /// Removes device `index`'s socket file (after a removal), waking its
    /// accept loop first so that it ends ([`Server::stop`] finds it by
    /// the file).
    pub fn unlink_device_socket(&self, index: usize) {
        let _ = std::os::unix::net::UnixStream::connect(&self.sockets[index]);
        let _ = std::fs::remove_file(&self.sockets[index]);
    }

    /// Stops accepting, removes the socket files, and shuts down every
    /// client connection.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for p in self.sockets.iter().chain(std::iter::once(&self.control)) {
            // Wake the accept loop, then remove the file.
            let _ = std::os::unix::net::UnixStream::connect(p);
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(&self.locks);
        for d in &self.devices {
            d.shutdown_clients();
        }
    }
}

/// The peer's credentials (`SO_PEERCRED`): pid, uid, gid at connect time.
pub fn peer_cred(fd: &impl std::os::fd::AsRawFd) -> std::io::Result<(i32, u32, u32)> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the call and sized for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid, cred.gid))
}
