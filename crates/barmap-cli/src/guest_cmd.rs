//! `barmap guest` and the hidden `barmap guest-run`: glue between the CLI
//! and the barmap-guest crate, which does the work. The glue adds the
//! differential column: every scenario also runs on barmap's emulated
//! device, shaped like the guest's ivshmem BAR (64 MiB of memory).

use std::sync::Arc;

use barmap::Device;
use barmap_front::kselftest::{self, BinaryResult};
use barmap_front::spec::{DeviceSpec, RunSpec};
pub use barmap_guest::{GuestArgs, GuestRunArgs};
use barmap_target::scenario::{self, Options, Report, Scenario};

/// `barmap guest --kernel 6.1|6.12|seed-bug|PATH [--scenario S] [--rounds N]
/// [--json]`: boots each kernel in QEMU, runs the scenario suite against its
/// vfio-pci, runs it on barmap beside it, and reports. Returns the exit code.
pub fn host_main(args: GuestArgs) -> i32 {
    let _huge = args
        .runs_programs()
        .then(crate::selftests_run::HugePages::reserve);
    barmap_guest::host_main_side_by_side(&args, Some(&emulate), Some(&emulate_program))
}

/// The same binary under `barmap run` on one emulated device shaped like
/// the guest's ivshmem BAR (64 MiB of memory), or barmap's edu for a
/// program that runs against the guest's edu alone.
fn emulate_program(binary: &std::path::Path, devices: &[&str]) -> Option<BinaryResult> {
    let model = if devices == [barmap_guest::programs::ids::EDU] {
        "edu"
    } else {
        "default,memory=64M"
    };
    let spec = DeviceSpec::parse(model, barmap::Policy::Prefault)
        .map(|d| RunSpec::new(vec![d]))
        .map_err(|e| eprintln!("barmap guest: {e}"))
        .ok()?;
    let log = std::env::temp_dir().join(format!(
        "barmap-guest-host-{}-{}.log",
        std::process::id(),
        binary.file_name()?.to_string_lossy()
    ));
    let r = kselftest::run_binary(&spec, binary, &log)
        .map_err(|e| eprintln!("barmap guest: barmap run {}: {e}", binary.display()))
        .ok();
    let _ = std::fs::remove_file(&log);
    r
}

fn emulate(s: Scenario, options: &Options) -> Option<Report> {
    match Device::builder_with_memory(64 << 20).build() {
        Ok(device) => Some(scenario::run(Arc::new(device), s, options)),
        Err(e) => {
            eprintln!("barmap guest: no emulated device for the differential column: {e}");
            None
        }
    }
}

/// `barmap guest-run`: the in-guest runner the guest's init starts.
/// Returns the process exit code.
pub fn in_guest_main(args: GuestRunArgs) -> i32 {
    barmap_guest::guest_run(&args)
}
