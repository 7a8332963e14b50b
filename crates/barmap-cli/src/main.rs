//! The `barmap` command: a thin layer over the library.
//!
//! - `barmap demo`: the seed scenario on the default device;
//! - `barmap storm`: N threads hammering fresh mappings, per policy;
//! - `barmap check`: the model checker over the shipped fault path;
//! - `barmap bench`: the fault path's costs, as ratios to native;
//! - `barmap fuzz`: the state-machine explorer against a reference model;
//! - `barmap guest`: the same scenarios against the kernel's vfio-pci;
//! - `barmap run`: an unmodified VFIO program on barmap's devices;
//! - `barmap dpdk`: DPDK's own tests on the ioat model;
//! - `barmap serve`, `barmap ctl`: devices served over vfio-user, driven
//!   from outside.
//! - `barmap conformance`: every real driver on every model, a matrix.

use clap::{Parser, Subcommand};

mod bench;
mod check;
mod conformance_cmd;
mod ctl_cmd;
mod demo;
mod dpdk_cmd;
mod fuzz;
mod guest_cmd;
mod run_cmd;
mod selftests_cmd;
mod selftests_run;
mod serve_cmd;
mod storm;
mod util;

/// barmap: the vfio-pci BAR mmap fault path in user space, on userfaultfd.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The seed scenario on the default device: concurrent first touch,
    /// memory disable (SIGBUS), re-enable, reset while threads fault.
    Demo(demo::DemoArgs),
    /// N threads first-touch a fresh mapping per round, optionally while
    /// memory is toggled; counts wrong values, unexpected SIGBUS and BUGs.
    Storm(storm::StormArgs),
    /// Model-check the fault path (the shipped code over a simulated MM).
    Check(check::CheckArgs),
    /// Measure the fault path: populate vs native, fault round trip, storm,
    /// zap, service-thread sweep.
    Bench(bench::BenchArgs),
    /// Randomized state-machine test: the API and the process's
    /// address-space operations against a reference model.
    Fuzz(fuzz::FuzzArgs),
    /// Run the scenario suite against the kernel's vfio-pci in a QEMU guest.
    Guest(guest_cmd::GuestArgs),
    /// Run an unmodified VFIO program on barmap's emulated devices.
    Run(run_cmd::RunArgs),
    /// Inside the guest: run the suite on the devices bound to vfio-pci.
    #[command(hide = true, name = "guest-run")]
    GuestRun(guest_cmd::GuestRunArgs),
    /// The kernel's VFIO selftests, built unmodified, under `barmap run`.
    Selftests(selftests_run::SelftestsArgs),
    /// Fetch and build the kernel's VFIO selftests into the cache.
    #[command(name = "selftests-build")]
    SelftestsBuild(selftests_cmd::SelftestsBuildArgs),
    /// DPDK 24.11 (Debian trixie) on the ioat model: dmadev_autotest,
    /// dma-perf at every size of its sample config, testpmd.
    Dpdk(dpdk_cmd::DpdkArgs),
    /// Serve barmap's devices over vfio-user (QEMU's vfio-user-pci, any
    /// vfio-user client), memory BARs revocable in every client.
    Serve(serve_cmd::ServeArgs),
    /// Drive a `barmap serve` from outside: list, command-mem on|off,
    /// reset, d3hot, d0, remove, stats.
    Ctl(ctl_cmd::CtlArgs),
    /// Every real driver available on every registered model: the kernel's
    /// selftests, DPDK, a guest's driver through QEMU's vfio-pci, QEMU's
    /// own model of the device; a matrix of pass, fail and skip.
    Conformance(conformance_cmd::ConformanceArgs),
    /// Touches revoked device memory without a safety net: dies by SIGBUS.
    #[command(hide = true, name = "sigbus-child")]
    SigbusChild,
}

fn main() {
    let cli = Cli::parse();
    // The checker provokes BUGs on purpose: quiet unless asked.
    let default = if matches!(cli.command, Command::Check(_)) {
        "off"
    } else {
        "error"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BARMAP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Storm(args) => storm::run(&args),
        Command::Check(args) => check::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Guest(args) => guest_cmd::host_main(args),
        Command::GuestRun(args) => guest_cmd::in_guest_main(args),
        Command::Run(args) => run_cmd::run(&args),
        Command::SelftestsBuild(args) => selftests_cmd::run(&args),
        Command::Selftests(args) => selftests_run::run(&args),
        Command::Dpdk(args) => dpdk_cmd::run(&args),
        Command::Serve(args) => serve_cmd::run(&args),
        Command::Ctl(args) => ctl_cmd::run(&args),
        Command::Conformance(args) => conformance_cmd::run(&args),

        Command::SigbusChild => demo::sigbus_child(),
    };
    std::process::exit(code);
}
