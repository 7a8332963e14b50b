//! `barmap guest` and the hidden `barmap guest-run`: glue between the CLI
//! and the barmap-guest crate, which does the work. The glue adds the
//! differential column: every scenario also runs on barmap's emulated
//! device, shaped like the guest's ivshmem BAR (64 MiB of memory).

use std::collections::BTreeMap;
use std::sync::Arc;

use barmap::Device;
use barmap_front::kselftest::{self, BinaryResult};
use barmap_front::spec::{DeviceSpec, RunSpec};
pub use barmap_guest::{GuestArgs, GuestRunArgs};
use barmap_target::scenario::{self, FaultProbe, Options, Report, Scenario};
use barmap_target::{ErrorClass, Layout, Placement, Prot, Reservation, Target, TargetError};

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
/// the guest's ivshmem BAR (64 MiB of memory), or barmap's edu or igb for
/// a program that runs against the guest's edu or igb alone.
pub(crate) fn emulate_program(binary: &std::path::Path, devices: &[&str]) -> Option<BinaryResult> {
    use barmap_guest::programs::ids;
    let model = match devices {
        [d] if *d == ids::EDU => "edu",
        [d] if *d == ids::IGB => "igb",
        _ => "default,memory=64M",
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
        Ok(device) => {
            let device = Arc::new(device);
            let options = Options {
                fault_probe: Some(Arc::new(Counters(device.clone()))),
                ..options.clone()
            };
            Some(scenario::run(Arc::new(Placed(device)), s, &options))
        }
        Err(e) => {
            eprintln!("barmap guest: no emulated device for the differential column: {e}");
            None
        }
    }
}

/// barmap's emulated device with mappings placed where the scenario asks
/// (over a reservation, with `MAP_FIXED`), as on the kernel.
struct Placed(Arc<Device>);

impl Target for Placed {
    type Mapping = barmap::Mapping;

    fn name(&self) -> String {
        self.0.name()
    }
    fn layout(&self) -> Layout {
        self.0.layout()
    }
    fn map(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        prot: Prot,
    ) -> Result<barmap::Mapping, TargetError> {
        Target::map(&*self.0, region, offset, len, prot)
    }
    fn map_placed(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        prot: Prot,
        placement: Placement,
    ) -> Result<barmap::Mapping, TargetError> {
        let r = Reservation::new(len, placement)
            .map_err(|e| TargetError::new(ErrorClass::Other, format!("reservation: {e}")))?;
        let m = self
            .0
            .map_at(region, offset, len, prot, barmap::Placement::Fixed(r.addr));
        r.release(m.is_ok());
        m.map_err(Into::into)
    }
    fn set_memory_enabled(&self, enabled: bool) -> Result<(), TargetError> {
        Target::set_memory_enabled(&*self.0, enabled)
    }
    fn reset(&self) -> Result<(), TargetError> {
        Target::reset(&*self.0)
    }
    fn read_region(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        Target::read_region(&*self.0, region, offset, buf)
    }
    fn write_region(&self, region: u32, offset: u64, buf: &[u8]) -> Result<(), TargetError> {
        Target::write_region(&*self.0, region, offset, buf)
    }
}

/// barmap's own fault counters, for whole-bar's fault column.
struct Counters(Arc<Device>);

impl FaultProbe for Counters {
    fn enable(&self, _on: bool) {}
    fn counts(&self) -> BTreeMap<String, u64> {
        self.0.wait_idle(std::time::Duration::from_secs(5));
        let s = self.0.stats();
        BTreeMap::from([
            ("faults".to_string(), s.faults),
            ("fills".to_string(), s.fills),
            ("pages_filled".to_string(), s.pages_filled),
        ])
    }
}

/// `barmap guest-run`: the in-guest runner the guest's init starts.
/// Returns the process exit code.
pub fn in_guest_main(args: GuestRunArgs) -> i32 {
    barmap_guest::guest_run(&args)
}
