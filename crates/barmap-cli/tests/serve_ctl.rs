//! `barmap serve` and `barmap ctl` as commands: the server listens on a
//! 0600 socket, `ctl list --json` names the devices, `ctl command-mem off`
//! revokes, `ctl` on a missing server is exit 2, SIGTERM removes the
//! sockets, and an unsafe socket directory is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BARMAP: &str = env!("CARGO_BIN_EXE_barmap");

#[path = "../../barmap-server/tests/common/scratch.rs"]
mod scratch;

fn dir(name: &str, mode: u32) -> PathBuf {
    scratch::scratch_dir(name, mode)
}

fn serve(sock: &Path, devices: &[&str]) -> Child {
    let mut c = Command::new(BARMAP);
    c.arg("serve").arg("--socket").arg(sock);
    for d in devices {
        c.arg("--device").arg(d);
    }
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ctl = PathBuf::from(format!("{}.ctl", sock.display()));
    let t = Instant::now();
    while !ctl.exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn ctl(sock: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(BARMAP)
        .arg("ctl")
        .arg("--socket")
        .arg(sock)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

fn stop(mut child: Child) {
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn serve_listens_0600_and_ctl_lists_and_revokes() {
    let d = dir("list", 0o700);
    let sock = d.join("dev.sock");
    let server = serve(&sock, &["edu", "default,memory=1M,exclusive=on"]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(d.join("dev.sock.1").exists());
    let (code, list) = ctl(&sock, &["list"]);
    assert_eq!(code, 0, "{list}");
    assert_eq!(list["devices"][0]["id"], "1234:11e8");
    assert_eq!(list["devices"][1]["exclusive"], true);
    let (code, off) = ctl(&sock, &["--device", "1", "command-mem", "off"]);
    assert_eq!(
        (code, &off["revoked"]),
        (0, &serde_json::Value::Bool(true)),
        "{off}"
    );
    let (code, on) = ctl(&sock, &["--device", "1", "command-mem", "on"]);
    assert_eq!(
        (code, &on["revoked"]),
        (0, &serde_json::Value::Bool(false)),
        "{on}"
    );
    let (code, _) = ctl(&sock, &["--device", "7", "reset"]);
    assert_eq!(code, 1, "no device 7");
    stop(server);
    assert!(
        !sock.exists() && !d.join("dev.sock.ctl").exists(),
        "sockets removed on SIGTERM"
    );
    let (code, _) = ctl(&sock, &["list"]);
    assert_eq!(code, 2, "no server");
}

#[test]
fn serve_refuses_a_socket_directory_others_may_write() {
    let d = dir("unsafe", 0o777);
    let out = Command::new(BARMAP)
        .args(["serve", "--socket"])
        .arg(d.join("dev.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not writable by group or others"));
}
