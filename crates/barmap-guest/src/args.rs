//! Command-line arguments of `barmap guest` (host) and `barmap guest-run`
//! (inside the guest), as clap `Args` for the CLI to embed.

use crate::kernel::KernelChoice;
use std::path::PathBuf;

/// `barmap guest`: run the scenario suite against the kernel's vfio-pci in
/// QEMU guests and report.
#[derive(Debug, Clone, clap::Args)]
pub struct GuestArgs {
    /// Kernel to boot: 6.1, 6.12, seed-bug or a directory with a bzImage and
    /// its modules. Repeat for several; default: 6.1, 6.12 and seed-bug.
    #[arg(long = "kernel", value_name = "6.1|6.12|seed-bug|PATH")]
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
}
