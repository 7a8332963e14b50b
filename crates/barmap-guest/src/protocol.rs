//! The line protocol between the in-guest runner and the host.
//!
//! The runner (and the guest's init script) print one line per event on the
//! console, `@@barmap@@ <kind> <json>`, where the JSON object is on the same
//! line. Kernel messages share the console; the host tells them apart by the
//! printk timestamp (`[    1.234567] `) and scans them for BUG, WARNING,
//! Oops and the like.

use serde::{Deserialize, Serialize};

/// The prefix of every protocol line.
pub const MARKER: &str = "@@barmap@@";

/// Kinds of protocol lines.
pub mod kind {
    /// The runner started: kernel release and the devices it found.
    pub const HELLO: &str = "hello";
    /// A device could not be opened or a setup step failed.
    pub const SETUP_ERROR: &str = "setup_error";
    /// A scenario starts on a device.
    pub const START: &str = "start";
    /// A scenario reached a round (where the suite reports rounds).
    pub const ROUND: &str = "round";
    /// A scenario finished; the payload carries its report.
    pub const RESULT: &str = "result";
    /// The init script saw TAINT_DIE (an oops killed a task) and powers off.
    pub const TAINT: &str = "taint";
    /// The runner's own deadline passed; the guest powers off.
    pub const GUEST_TIMEOUT: &str = "guest_timeout";
    /// The runner finished with this exit code.
    pub const DONE: &str = "done";
    /// One line of output of the program running now (`{"line": ...}`).
    pub const OUTPUT: &str = "output";
}

/// Prefix of the scenario name under which a program (a selftest binary,
/// `vfio_seed`) runs: its START and RESULT lines use
/// `program:<file name>` as the scenario, so kernel failures are
/// attributed to it like to a scenario.
pub const PROGRAM_PREFIX: &str = "program:";

/// Formats a protocol line (without the newline).
pub fn line(kind: &str, payload: &serde_json::Value) -> String {
    format!("{MARKER} {kind} {payload}")
}

/// Payload of [`kind::START`], [`kind::ROUND`] and [`kind::RESULT`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScenarioLine {
    /// Device name (PCI address).
    pub device: String,
    /// Scenario name.
    pub scenario: String,
    /// Round number (ROUND only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    /// The scenario's report (RESULT only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}
