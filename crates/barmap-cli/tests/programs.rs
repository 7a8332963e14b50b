//! Programs as they meet barmap: each C program in `tests/programs/` is a
//! plain VFIO program (libc and the kernel's uAPI headers only) that
//! proves one behaviour of `barmap run`, through real fds, threads, signal
//! handlers and child processes. This test builds each with the system's
//! C compiler and runs it under `barmap run`, on every policy where the
//! policy matters; a program passes when it exits 0 and prints `PASS`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const POLICIES: [&str; 4] = ["whole", "page", "huge", "prefault"];

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs")
}

fn barmap() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_barmap"))
}

/// The preload library beside the barmap binary, built if it is not there
/// yet (`cargo test` builds the binary but not the cdylib).
fn preload() -> &'static Path {
    static PRELOAD: OnceLock<PathBuf> = OnceLock::new();
    PRELOAD.get_or_init(|| {
        let dir = barmap().parent().unwrap().to_path_buf();
        let so = dir.join("libbarmap_preload.so");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "barmap-preload"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let st = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build -p barmap-preload");
        assert!(st.success(), "building barmap-preload failed");
        assert!(so.exists(), "{} missing after the build", so.display());
        so
    })
}

/// `name.c` built into the test's scratch directory.
fn build(name: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("programs");
    std::fs::create_dir_all(&out).unwrap();
    let exe = out.join(name);
    let src = source_dir().join(format!("{name}.c"));
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O1", "-g", "-pthread", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(source_dir())
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("the C compiler (cc) runs");
    assert!(st.success(), "{} does not compile", src.display());
    exe
}

/// Output of one run of `name` under `barmap run` with `args` before `--`.
struct Run {
    code: Option<i32>,
    text: String,
}

fn run(name: &str, args: &[&str]) -> Run {
    run_env(name, args, &[])
}

fn run_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let exe = build(name);
    let out = Command::new(barmap())
        .arg("run")
        .args(args)
        .arg("--")
        .arg(&exe)
        .env("BARMAP_PRELOAD", preload())
        .envs(env.iter().copied())
        .output()
        .expect("barmap run starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        code: out.status.code(),
        text,
    }
}

/// Runs `name` and requires it to pass.
fn passes(name: &str, args: &[&str]) {
    let r = run(name, args);
    assert!(
        r.code == Some(0) && r.text.contains("PASS"),
        "{name} under barmap run {args:?}: exit {:?}\n{}",
        r.code,
        r.text
    );
}

/// Runs `name` once per correct policy.
fn passes_on_every_policy(name: &str, extra: &[&str]) {
    for p in POLICIES {
        let mut args = vec!["--policy", p];
        args.extend_from_slice(extra);
        passes(name, &args);
    }
}

#[test]
fn harness_passes_a_passing_program_and_fails_a_failing_one() {
    passes("harness_self_check", &[]);
    let r = run_env("harness_self_check", &[], &[("BT_FAIL", "1")]);
    assert_eq!(r.code, Some(1), "{}", r.text);
    assert!(
        r.text.contains("FAIL a check that is told to fail"),
        "{}",
        r.text
    );
}

// --- fds and child tasks ---

#[test]
fn a_vfork_or_clone_vm_child_leaves_the_parents_revocation_working() {
    passes_on_every_policy(
        "a_vfork_or_clone_vm_child_leaves_the_parents_revocation_working",
        &[],
    );
}

#[test]
fn device_fd_read_and_write_use_the_file_position() {
    passes("device_fd_read_and_write_use_the_file_position", &[]);
}

#[test]
fn inherited_and_received_vfio_fds_fail_and_never_report_success() {
    passes(
        "inherited_and_received_vfio_fds_fail_and_never_report_success",
        &[],
    );
}

#[test]
fn a_closed_vfio_fd_number_reused_by_another_file_is_that_file() {
    passes(
        "a_closed_vfio_fd_number_reused_by_another_file_is_that_file",
        &[],
    );
}

// --- igb ---

#[test]
fn igb_loopback_frames_arrive_intact_with_an_msix_interrupt() {
    passes(
        "igb_loopback_frames_arrive_intact_with_an_msix_interrupt",
        &["--device", "igb"],
    );
}
