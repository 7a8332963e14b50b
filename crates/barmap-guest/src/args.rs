//! Command-line arguments of `barmap guest` (host) and `barmap guest-run`
//! (inside the guest), as clap `Args` for the CLI to embed.

use crate::kernel::KernelChoice;
use std::path::PathBuf;

/// `barmap guest`: run the scenario suite against the kernel's vfio-pci in
/// QEMU guests and report.
#[derive(Debug, Clone, clap::Args)]
pub struct GuestArgs {
    /// Kernel to boot: 6.1 (bookworm), 6.12 (bookworm-backports), 7.2
    /// (forky), 7.3 (trixie-backports), latest (the newest of forky and
    /// trixie-backports), seed-bug, or PATH: an unpacked kernel package
    /// (since 7.x unpack linux-binary-<release> and linux-modules-<release>
    /// into one directory), a usr/lib/modules/<release> directory, a
    /// vmlinuz file with its modules beside it, or a build tree with
    /// arch/x86/boot/bzImage. The VFIO modules (vfio, vfio_iommu_type1,
    /// vfio-pci-core, vfio-pci and what they depend on) must be there or
    /// built in. Repeat for several; default: 6.1, 6.12, latest and seed-bug.
    #[arg(long = "kernel", value_name = "6.1|6.12|7.2|7.3|latest|seed-bug|PATH")]
    pub kernels: Vec<KernelChoice>,
    /// Run only this scenario (repeatable); default: all.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Rounds per scenario (fresh mappings for first-touch, toggles for
    /// toggle-storm).
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Touching threads per scenario.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds before a guest is killed (boot and all scenarios).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Cache directory (default: $BARMAP_CACHE or $HOME/.cache/barmap/guest).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Also run the kernel's VFIO selftests (built as for `barmap
    /// selftests`) in the guest, each against ivshmem-plain and against edu
    /// (ivshmem's 256-byte BAR0 defeats the selftest library's BAR mapping),
    /// and each under `barmap run` on the host beside them. Without
    /// `--scenario`, the suite is not run.
    #[arg(long)]
    pub selftests: bool,
    /// Run only this selftest binary (repeatable; implies `--selftests`).
    /// `NAME@igb` runs it against the guest's igb alone (QEMU 8.0 and
    /// later), and under `barmap run --device igb` on the host.
    #[arg(long = "selftest", value_name = "NAME[@igb]")]
    pub selftest_names: Vec<String>,
    /// Run this dynamically linked VFIO program (for example
    /// `examples/vfio_seed`) in the guest with the ivshmem device's BDF in
    /// `BARMAP_BDF` and `VFIO_SELFTESTS_BDF`, and under `barmap run` on the
    /// host beside it (repeatable). Without `--scenario`, the suite is not run.
    ///
    /// `PATH@edu` runs it against the guest's edu device instead, and under
    /// `barmap run --device edu` on the host; `PATH@igb` against QEMU's
    /// igb (QEMU 8.0 and later: see `--qemu`), and under `barmap run
    /// --device igb`.
    #[arg(long = "program", value_name = "PATH[@edu|@igb]")]
    pub programs: Vec<PathBuf>,
    /// The QEMU binary to boot guests with (default `qemu-system-x86_64`
    /// on the PATH). QEMU's igb needs 8.0 or later.
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// A directory where that QEMU finds its firmware (its `-L`;
    /// repeatable), for a QEMU unpacked outside the system's paths.
    #[arg(long = "qemu-data", value_name = "DIR")]
    pub qemu_data: Vec<PathBuf>,
}

impl GuestArgs {
    /// Whether programs (selftests or `--program`) run in the guest.
    pub fn runs_programs(&self) -> bool {
        self.selftests || !self.selftest_names.is_empty() || !self.programs.is_empty()
    }
}

/// `barmap guest-run`: the in-guest side (run by the guest's init).
#[derive(Debug, Clone, clap::Args)]
pub struct GuestRunArgs {
    /// Run only this scenario (repeatable); default: all.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Rounds per scenario.
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Touching threads per scenario.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Seconds before one scenario counts as hung.
    #[arg(long, default_value_t = 120)]
    pub watchdog: u64,
    /// Run on these PCI devices only (default: every device bound to vfio-pci).
    #[arg(long = "device", value_name = "BDF")]
    pub devices: Vec<String>,
    /// Run this program (a path in the guest, `PATH[@VENDOR:DEVICE]`)
    /// against the device with that PCI ID, by default ivshmem-plain
    /// (repeatable); then the suite runs only if `--scenario` is given.
    #[arg(long = "program", value_name = "PATH")]
    pub programs: Vec<String>,
    /// Seconds before one program counts as hung (it is killed).
    #[arg(long, default_value_t = 300)]
    pub program_timeout: u64,
}
