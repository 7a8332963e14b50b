//! The devices' counters, written to the testbed at exit.

use barmap_front::Front;

use crate::guarded;

pub(crate) fn register_report() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain extern "C" fn without arguments.
        unsafe { libc::atexit(write_report) };
    });
}

extern "C" fn write_report() {
    let _ = guarded(|| {
        let Some(f) = Front::get() else { return };
        let path = f
            .testbed()
            .join(format!("report-{}.json", std::process::id()));
        let _ = std::fs::write(path, f.report().to_string());
    });
}
