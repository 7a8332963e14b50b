//! The devices' counters, written to the testbed at exit.

use barmap_front::{testbed, Front};

use crate::guarded;

pub(crate) fn register_report() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain extern "C" fn without arguments.
        unsafe { libc::atexit(write_report) };
    });
}

/// Writes `report-<pid>.json` into the testbed, if it is still this run's
/// ([`testbed::write_report`]: checked, created relative to the checked
/// directory, never through a symbolic link, never over an existing
/// file). A process that outlives the run writes nothing.
extern "C" fn write_report() {
    let _ = guarded(|| {
        let Some(f) = Front::get() else { return };
        let name = format!("report-{}.json", std::process::id());
        let _ = testbed::write_report(f.testbed(), &name, f.report().to_string().as_bytes());
    });
}
