//! `barmap guest` and the hidden `barmap guest-run`: glue between the CLI
//! and the barmap-guest crate, which does the work.

pub use barmap_guest::{GuestArgs, GuestRunArgs};

/// `barmap guest --kernel 6.1|6.12|seed-bug|PATH [--scenario S] [--rounds N]
/// [--json]`: boots each kernel in QEMU, runs the scenario suite against its
/// vfio-pci and reports. Returns the process exit code.
pub fn host_main(args: GuestArgs) -> i32 {
    barmap_guest::host_main(&args)
}

/// `barmap guest-run`: the in-guest runner the guest's init starts.
/// Returns the process exit code.
pub fn in_guest_main(args: GuestRunArgs) -> i32 {
    barmap_guest::guest_run(&args)
}
