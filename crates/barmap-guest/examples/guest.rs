//! A stand-alone `barmap guest` (same options), for trying the host side
//! without the full CLI.

use clap::Parser;

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    args: barmap_guest::GuestArgs,
}

fn main() {
    std::process::exit(barmap_guest::host_main(&Cmd::parse().args));
}
