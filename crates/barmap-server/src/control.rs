//! The control socket (`PATH.ctl`): one JSON request per line, one JSON
//! answer per line. What `barmap ctl` speaks.
//!
//! Requests: `{"cmd": "list"}`, `{"cmd": "command-mem", "device": 0,
//! "on": false}`, `{"cmd": "reset", "device": 0}`, `{"cmd": "d3hot",
//! "device": 0}`, `{"cmd": "d0", "device": 0}`, `{"cmd": "remove",
//! "device": 0}`, `{"cmd": "stats", "device": 0}`. Answers carry `"ok":
//! true` and the command's fields, or `"ok": false` and `"error"`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::Server;

/// A control request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// `list`, `command-mem`, `reset`, `d3hot`, `d0`, `remove` or `stats`.
    pub cmd: String,
    /// The device's index (default 0).
    #[serde(default)]
    pub device: usize,
    /// For `command-mem`: set (`true`) or clear COMMAND.MEM.
    #[serde(default)]
    pub on: Option<bool>,
}

/// Answers one request.
pub fn answer(server: &Server, req: &Request) -> Value {
    if req.cmd == "list" {
        let devices: Vec<_> = (0..server.devices().len())
            .map(|i| server.status(i))
            .collect();
        return json!({"ok": true, "devices": devices});
    }
    let Some(dev) = server.devices().get(req.device) else {
        return json!({"ok": false, "error": format!("no device {}", req.device)});
    };
    let cost = |c: crate::bar::Cost| json!({"bytes": c.bytes, "us": c.time.as_micros() as u64});
    match req.cmd.as_str() {
        "command-mem" => match req.on {
            Some(on) => {
                let c = dev.set_memory_enabled(on);
                json!({"ok": true, "memory_enabled": dev.model().device().memory_enabled(),
                       "revoked": dev.revoked(), "cost": cost(c)})
            }
            None => json!({"ok": false, "error": "command-mem needs on or off"}),
        },
        "reset" => match dev.reset() {
            Ok(()) => json!({"ok": true}),
            Err(e) => {
                json!({"ok": false, "error": std::io::Error::from_raw_os_error(e).to_string()})
            }
        },
        "d3hot" | "d0" => {
            let c = dev.set_d3hot(req.cmd == "d3hot");
            json!({"ok": true, "revoked": dev.revoked(), "cost": cost(c)})
        }
        "remove" => {
            let requested = dev.remove();
            server.unlink_device_socket(req.device);
            json!({"ok": true, "req_signalled": requested})
        }
        "stats" => {
            let d = dev.model().device();
            json!({"ok": true, "device": dev.counters(), "host": dev.host().counters(),
                   "barmap": d.stats(), "bugs": d.bug_events()})
        }
        other => json!({"ok": false, "error": format!("unknown command {other:?}")}),
    }
}

/// Serves one control connection: requests until end of file.
pub fn serve(server: Arc<Server>, sock: UnixStream) {
    let (pid, uid, _) = crate::peer_cred(&sock).unwrap_or((0, u32::MAX, 0));
    let Ok(mut out) = sock.try_clone() else {
        return;
    };
    for line in BufReader::new(sock).lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                if req.cmd != "list" && req.cmd != "stats" {
                    eprintln!(
                        "barmap serve: control: pid {pid} uid {uid}: {} device {}",
                        req.cmd, req.device
                    );
                }
                answer(&server, &req)
            }
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        };
        if writeln!(out, "{reply}").is_err() {
            break;
        }
    }
}

/// Sends one request to the control socket at `path` and returns the
/// answer (what `barmap ctl` does).
pub fn request(path: &std::path::Path, req: &Request) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(path)?;
    writeln!(s, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}
