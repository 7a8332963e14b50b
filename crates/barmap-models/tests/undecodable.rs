//! An access to a register mapping that the emulator cannot decode is
//! reported with its disassembly and gets SIGBUS (in a child process: the
//! signal ends it).

use std::process::Command;

use barmap::{Placement, Prot};
use barmap_models::edu::Edu;
use barmap_models::ModelDevice;

const CHILD: &str = "BARMAP_UNDECODABLE_CHILD";

#[test]
fn an_undecodable_register_access_is_reported_and_gets_sigbus() {
    if std::env::var_os(CHILD).is_some() {
        let dev = ModelDevice::new(Edu::default()).unwrap();
        let m = dev
            .map(0, 0, 1 << 20, Prot::ReadWrite, Placement::Anywhere)
            .unwrap();
        // SAFETY: a read-modify-write of a register in the live mapping;
        // the emulator refuses it, and the process dies of SIGBUS.
        unsafe {
            std::arch::asm!("add dword ptr [{0}], 1", in(reg) m.as_ptr().add(4));
        }
        unreachable!("the access above must not complete");
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "an_undecodable_register_access_is_reported_and_gets_sigbus",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("add dword ptr [") && stderr.contains("cannot be emulated"),
        "the report names the instruction: {stderr}"
    );
}
