//! A stand-alone in-guest runner (`guest_run guest-run [ARGS]`), for trying
//! the guest side without the full CLI: point `BARMAP_GUEST_BIN` at a
//! static build of this example.

use clap::Parser;

#[derive(Parser)]
enum Cmd {
    /// Runs the suite on every device bound to vfio-pci.
    GuestRun(barmap_guest::GuestRunArgs),
}

fn main() {
    let Cmd::GuestRun(args) = Cmd::parse();
    std::process::exit(barmap_guest::guest_run(&args));
}
