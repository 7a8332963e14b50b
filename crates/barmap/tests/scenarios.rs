//! The shared scenario suite (the one the QEMU guest runs against vfio-pci)
//! on barmap's emulated device, for every correct policy.

use std::sync::Arc;
use std::time::Duration;

use barmap::{Device, Policy};
use barmap_target::scenario::{self, Options, Scenario};

fn suite(policy: Policy) {
    let device = Arc::new(
        Device::builder_with_memory(16 << 20)
            .policy(policy)
            .build()
            .expect("device"),
    );
    let options = Options {
        rounds: 20,
        threads: 16,
        map_len: 4 << 20,
        watchdog: Duration::from_secs(60),
        ..Options::default()
    };
    for s in Scenario::ALL {
        let report = scenario::run(device.clone(), s, &options);
        assert!(report.passed, "{policy} {}: {:#?}", s.name(), report);
        assert!(report.skipped.is_none(), "{policy} {}: skipped", s.name());
        assert!(report.touches > 0, "{policy} {}: nothing touched", s.name());
    }
    assert!(device.wait_idle(Duration::from_secs(10)));
    let stats = device.stats();
    assert_eq!(stats.bugs, 0, "{policy}: {stats:?}");
    assert_eq!(
        stats.faults,
        stats.outcomes(),
        "{policy}: counters add up: {stats:?}"
    );
    assert_eq!(device.mapping_count(), 0, "{policy}: every mapping dropped");
}

#[test]
fn scenario_suite_passes_with_whole() {
    suite(Policy::Whole);
}

#[test]
fn scenario_suite_passes_with_page() {
    suite(Policy::Page);
}

#[test]
fn scenario_suite_passes_with_huge() {
    suite(Policy::Huge);
}

#[test]
fn scenario_suite_passes_with_prefault() {
    suite(Policy::Prefault);
}
