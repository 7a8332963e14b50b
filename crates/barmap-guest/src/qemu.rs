//! Booting the guest under QEMU's software emulation and reading its console.

use crate::console::{ConsoleParser, Transcript};
use crate::util::{Error, Result};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How to boot one guest.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The kernel image.
    pub bzimage: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Where the whole console is written.
    pub console_log: PathBuf,
    /// The guest is killed after this long.
    pub timeout: Duration,
    /// Size of ivshmem-plain's memory backend, MiB (at least 64).
    pub ivshmem_mib: u64,
    /// The QEMU binary (default `qemu-system-x86_64` on the PATH).
    pub qemu: Option<PathBuf>,
    /// Directories QEMU searches for its firmware (`-L`), for a QEMU
    /// unpacked outside the system's paths.
    pub data_dirs: Vec<PathBuf>,
    /// Add QEMU's own 82576 (`-device igb`, QEMU 8.0 and later), alone
    /// behind a root port, its network backend none.
    pub igb: bool,
}

/// What a boot produced.
#[derive(Debug)]
pub struct VmOutcome {
    /// The parsed console.
    pub transcript: Transcript,
    /// Host wall time from spawning QEMU to its exit.
    pub wall: Duration,
    /// Host wall time until the runner's hello line (boot time).
    pub boot: Option<Duration>,
    /// Why the host had to kill QEMU, if it did.
    pub killed: Option<String>,
    /// QEMU's stderr, if it said anything.
    pub qemu_stderr: String,
}

/// Time QEMU gets to exit after the guest said it is done or tainted, or the
/// kernel reported a fatal failure.
const GRACE: Duration = Duration::from_secs(15);

/// The guest CPU model: `$BARMAP_QEMU_CPU`, else `qemu64,-cx16`.
///
/// Without CMPXCHG16B: with it, Debian's 6.12 guests under bookworm's QEMU
/// 7.2 TCG crashed in about one boot in four (double faults with garbage
/// EFLAGS in the SLUB fast path, NULL dereferences, a spurious #DB
/// warning), at boot as well as during scenarios; without it, none did in
/// our runs. The cause is not proven; the 6.1 and seed-bug results are the
/// same either way.
pub fn cpu_model() -> String {
    std::env::var("BARMAP_QEMU_CPU").unwrap_or_else(|_| "qemu64,-cx16".into())
}

/// The guest kernel's command line. `oops=panic panic=-1`: an oops (the
/// seed's BUG) panics and the panic restarts at once, which `-no-reboot`
/// turns into QEMU's exit: the report is on the console and the guest is
/// gone, instead of a power-off that a task killed while holding a
/// page-table lock can wedge.
pub const CMDLINE: &str = "console=ttyS0 intel_iommu=on loglevel=5 oops=panic panic=-1";

/// The I/O port of QEMU's isa-debug-exit device (a write exits QEMU).
pub const EXIT_PORT: u16 = 0xf4;

/// The QEMU command line for `cfg`.
pub fn command(cfg: &VmConfig) -> Command {
    let mut c = Command::new(
        cfg.qemu
            .clone()
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64")),
    );
    for d in &cfg.data_dirs {
        c.arg("-L").arg(d);
    }
    c.args(["-accel", "tcg", "-machine", "q35,kernel-irqchip=split"])
        .args(["-device", "intel-iommu,intremap=on"])
        .args(["-m", "1G", "-smp", "2", "-nographic", "-no-reboot"])
        .args(["-cpu", &cpu_model()])
        .arg("-kernel")
        .arg(&cfg.bzimage)
        .arg("-initrd")
        .arg(&cfg.initrd)
        .args(["-append", CMDLINE])
        // The guest's init leaves through this port (QEMU exits at once),
        // so that a guest whose CPUs a dead task wedged cannot hang at
        // power-off.
        .args([
            "-device",
            &format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x04"),
        ])
        .args(["-device", "edu"])
        .args([
            "-object",
            &format!(
                "memory-backend-memfd,id=barmap-ivshmem,size={}M,share=on",
                cfg.ivshmem_mib.max(64)
            ),
        ])
        // Alone behind a root port, so that VFIO_DEVICE_RESET can reset it
        // with a secondary bus reset (ivshmem has no FLR).
        .args(["-device", "pcie-root-port,id=barmap-rp,chassis=1,slot=1"])
        .args([
            "-device",
            "ivshmem-plain,memdev=barmap-ivshmem,bus=barmap-rp",
        ]);
    if cfg.igb {
        // Behind a root port of its own (its FLR resets it alone); a
        // backend-less NIC: frames leave only by the device's loopback.
        c.args(["-device", "pcie-root-port,id=barmap-rp2,chassis=2,slot=2"])
            .args(["-nic", "none"])
            .args(["-device", "igb,bus=barmap-rp2"]);
    }
    c
}

/// Boots the guest, parses its console as it arrives, and enforces the timeout.
pub fn run(cfg: &VmConfig) -> Result<VmOutcome> {
    let started = Instant::now();
    let mut child = command(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::msg(format!("starting qemu-system-x86_64: {e}")))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&buf);
                    if tx
                        .send(s.trim_end_matches(['\n', '\r']).to_string())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut log = std::io::BufWriter::new(fs::File::create(&cfg.console_log)?);
    let mut parser = ConsoleParser::new();
    let mut boot = None;
    let mut deadline = started + cfg.timeout;
    let mut ending = false;
    let mut killed = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            killed = Some(if ending {
                format!(
                    "stopped by the host: still running {}s after the end or a fatal kernel report",
                    GRACE.as_secs()
                )
            } else {
                format!(
                    "killed by the host watchdog after {}s",
                    cfg.timeout.as_secs()
                )
            });
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                parser.feed(&line);
                let t = parser.transcript();
                if boot.is_none() && t.hello.is_some() {
                    boot = Some(started.elapsed());
                }
                // After a fatal kernel report the guest may never power off
                // (a dead task can hold a page-table lock and wedge both
                // CPUs): give it the grace period, then stop it.
                let fatal = t.kernel_events.iter().any(|e| e.kind.is_fatal());
                if !ending && (t.done.is_some() || t.taint.is_some() || t.guest_timeout || fatal) {
                    ending = true;
                    deadline = deadline.min(Instant::now() + GRACE);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = log.flush();
    let _ = child.wait();
    let _ = reader.join();
    let qemu_stderr = err_reader.join().unwrap_or_default();
    Ok(VmOutcome {
        transcript: parser.finish(),
        wall: started.elapsed(),
        boot,
        killed,
        qemu_stderr,
    })
}
