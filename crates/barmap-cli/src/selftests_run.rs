//! `barmap selftests`: the kernel's own VFIO selftests, built unmodified
//! from Debian's linux-source, run under `barmap run` in every IOMMU mode
//! they cover; the judge of barmap's VFIO front end is code nobody here
//! wrote.

use std::path::PathBuf;

use barmap::Policy;
use barmap_front::kselftest::{self, BinaryResult};
use barmap_front::spec::{DeviceSpec, RunSpec};
use barmap_guest::selftests;

/// Arguments of `barmap selftests`.
#[derive(clap::Args, Debug)]
pub struct SelftestsArgs {
    /// Run only these binaries (default: all that build).
    #[arg(long = "binary")]
    binaries: Vec<String>,
    /// Fault policy of the device.
    #[arg(long, default_value = "prefault")]
    policy: Policy,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Cache directory (default: $BARMAP_CACHE or $HOME/.cache/barmap/guest).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Run each binary as `barmap run --shared` does: its devices served
    /// to every process of it (the harness forks per test) by a device
    /// server in this process. SR-IOV binaries are left out (the server
    /// serves no SR-IOV).
    #[arg(long)]
    shared: bool,
}

/// Huge pages for the DMA-mapping tests' hugetlb variants (2 MiB and
/// 1 GiB), reserved as root and given back afterwards.
pub(crate) struct HugePages(Vec<(PathBuf, String)>);

impl HugePages {
    /// Reserves them (where the host lets it); dropping gives them back.
    pub(crate) fn reserve() -> HugePages {
        let mut old = Vec::new();
        for (path, want) in [
            (
                "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
                16u64,
            ),
            (
                "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",
                1,
            ),
        ] {
            let p = PathBuf::from(path);
            let Ok(before) = std::fs::read_to_string(&p) else {
                continue;
            };
            let have: u64 = before.trim().parse().unwrap_or(0);
            if have < want && std::fs::write(&p, want.to_string()).is_ok() {
                old.push((p, before.trim().to_string()));
            }
        }
        HugePages(old)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        for (p, v) in &self.0 {
            let _ = std::fs::write(p, v);
        }
    }
}

/// The devices a selftest binary runs on, each in a run of its own:
/// `vfio_pci_driver_test` needs a device its library has a driver for, and
/// runs on each such model (the I/OAT channel, the 82576 NIC, the DSA, the
/// NVIDIA falcon DMA engine); the others test the VFIO uAPI on barmap's
/// default device.
pub(crate) fn devices_for(binary: &str) -> &'static [&'static str] {
    match binary {
        "vfio_pci_driver_test" => &["ioat", "igb", "dsa", "nv_falcon"],
        // An SR-IOV physical function (the 82576 with two VFs).
        "vfio_pci_sriov_uapi_test" => &["igb,sriov=2"],
        _ => &["default"],
    }
}

/// Runs the command: 0 if every binary passed (tests may skip themselves).
pub fn run(args: &SelftestsArgs) -> i32 {
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(barmap_guest::util::default_cache_dir);
    let mut progress = |line: &str| eprintln!("barmap selftests: {line}");
    let build = match selftests::build_vfio_selftests(&cache, &mut progress) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("barmap selftests: {e}");
            return 1;
        }
    };
    let _huge = HugePages::reserve();
    let logs = cache.join("selftests-logs");
    let _ = std::fs::create_dir_all(&logs);
    let mut results: Vec<(&str, BinaryResult)> = Vec::new();
    for name in selftests::BINARIES {
        if !args.binaries.is_empty() && !args.binaries.iter().any(|b| b == name) {
            continue;
        }
        for (i, device) in devices_for(name).iter().enumerate() {
            if args.shared && device.contains("sriov") {
                eprintln!("barmap selftests: --shared: {name} on {device} left out (SR-IOV)");
                continue;
            }
            let spec = match DeviceSpec::parse(device, args.policy) {
                Ok(d) => RunSpec::new(vec![d]),
                Err(e) => {
                    eprintln!("barmap selftests: {e}");
                    return 2;
                }
            };
            // The first device's log keeps the binary's name.
            let log = match i {
                0 => logs.join(format!("{name}.log")),
                _ => logs.join(format!("{name}-{}.log", device.replace(',', "-"))),
            };
            eprintln!(
                "barmap selftests: running {name} on {device} (log {})",
                log.display()
            );
            let mut hook = crate::run_cmd::serve_in_testbed;
            let serve: Option<barmap_front::launch::ServeHook<'_>> =
                args.shared.then_some(&mut hook as _);
            match kselftest::run_binary_served(&spec, &build.dir.join(name), &log, serve) {
                Ok(r) => results.push((device, r)),
                Err(e) => {
                    eprintln!("barmap selftests: {name}: {e}");
                    return 1;
                }
            }
        }
    }
    let ok = results.iter().all(|(_, r)| r.ok());
    if args.json {
        let v = serde_json::json!({
            "source": format!("{} {}", selftests::PACKAGE, build.version),
            "policy": args.policy.to_string(),
            "ok": ok,
            "binaries": results.iter().map(|(device, r)| {
                let mut v = serde_json::to_value(r).expect("a result serializes");
                v["device"] = serde_json::Value::from(*device);
                v
            }).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "{:<34} {:<9} {:>5} {:>5} {:>5} {:>6}  verdict",
            "binary", "device", "pass", "fail", "skip", "secs"
        );
        for (device, r) in &results {
            let t = r.totals.unwrap_or_default();
            println!(
                "{:<34} {:<9} {:>5} {:>5} {:>5} {:>6.2}  {}",
                r.name,
                device,
                t.pass,
                t.fail,
                t.skip,
                r.elapsed_s,
                if r.ok() { "ok" } else { "FAIL" }
            );
            for m in r.modes.iter().filter(|m| m.mode != "-") {
                println!(
                    "    {:<30} {:<9} {:>5} {:>5} {:>5}",
                    m.mode, "", m.totals.pass, m.totals.fail, m.totals.skip
                );
            }
            for n in r.notes.iter().filter(|n| !n.starts_with("barmap run:")) {
                println!("    {n}");
            }
        }
    }
    if ok {
        0
    } else {
        1
    }
}
