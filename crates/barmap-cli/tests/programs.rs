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
#[allow(dead_code)]
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

// ----- BAR sizes and device memory -----------------------------------------

/// Runs `name` under `barmap run` with `args`, the run inside a new memory
/// cgroup of 1 GiB below this process's (cgroup v1, as root), so that a
/// regression that commits a huge BAR up front is stopped there instead of
/// taking the machine's memory. Without such a cgroup (not root, cgroup v2
/// only) the run is bounded by `--memory-limit` alone.
fn run_in_memory_cgroup(name: &str, args: &[&str]) -> Run {
    let exe = build(name);
    let mut cmd = Command::new(barmap());
    cmd.arg("run")
        .args(args)
        .arg("--")
        .arg(&exe)
        .env("BARMAP_PRELOAD", preload());
    let cgroup = memory_cgroup(1 << 30);
    if let Some(dir) = &cgroup {
        let procs = std::ffi::CString::new(format!("{}/cgroup.procs", dir.display())).unwrap();
        // SAFETY: the closure runs in the forked child before exec and
        // calls only async-signal-safe functions (open, write, close) on
        // data prepared before the fork.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0\n".as_ptr().cast(), 2) != 2 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    } else {
        eprintln!("no memory cgroup: {name} runs bounded by --memory-limit only");
    }
    let out = cmd.output().expect("barmap run starts");
    if let Some(dir) = cgroup {
        let _ = std::fs::remove_dir(dir);
    }
    Run {
        code: out.status.code(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A fresh cgroup-v1 memory cgroup of `limit` bytes below this process's.
fn memory_cgroup(limit: u64) -> Option<PathBuf> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    })?;
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new("/sys/fs/cgroup/memory")
        .join(path.trim_start_matches('/'))
        .join(format!("barmap-programs-{}-{n}", std::process::id()));
    std::fs::create_dir(&dir).ok()?;
    if std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).is_err() {
        let _ = std::fs::remove_dir(&dir);
        return None;
    }
    Some(dir)
}

#[test]
fn a_bar_size_that_is_not_a_power_of_two_or_too_large_is_refused() {
    for (memory, why) in [
        ("3M", "not a power of two"),
        ("0", "not a power of two"),
        ("128T", "larger than a 64-bit memory BAR"),
        // 2^63 bytes.
        ("8388608T", "larger than a 64-bit memory BAR"),
    ] {
        let device = format!("default,memory={memory}");
        let r = run_in_memory_cgroup("harness_self_check", &["--device", &device]);
        assert_eq!(r.code, Some(2), "{device}: {}", r.text);
        assert!(
            r.text.contains(why) && r.text.contains("BAR2") && !r.text.contains("PASS"),
            "{device}: {}",
            r.text
        );
    }
    let toml = Path::new(env!("CARGO_TARGET_TMPDIR")).join("three_mib.toml");
    std::fs::write(&toml, "model = \"default\"\nmemory = \"3M\"\n").unwrap();
    let r = run_in_memory_cgroup("harness_self_check", &["--device", toml.to_str().unwrap()]);
    assert_eq!(r.code, Some(2), "{}", r.text);
    assert!(r.text.contains("not a power of two"), "{}", r.text);
}

#[test]
fn a_128_gib_bar_touched_sparsely_costs_what_it_touches() {
    for p in POLICIES {
        let r = run_in_memory_cgroup(
            "a_128_gib_bar_touched_sparsely_costs_what_it_touches",
            &[
                "--device",
                "default,memory=128G",
                "--memory-limit",
                "512M",
                "--policy",
                p,
            ],
        );
        assert!(
            r.code == Some(0) && r.text.contains("PASS"),
            "policy {p}: exit {:?}\n{}",
            r.code,
            r.text
        );
    }
}

#[test]
fn a_touch_past_the_memory_limit_gets_sigbus() {
    for p in POLICIES {
        let r = run_in_memory_cgroup(
            "a_touch_past_the_memory_limit_gets_sigbus",
            &[
                "--device",
                "default,memory=1G",
                "--memory-limit",
                "8M",
                "--policy",
                p,
                "--json",
            ],
        );
        assert!(
            r.code == Some(0) && r.text.contains("PASS"),
            "policy {p}: exit {:?}\n{}",
            r.code,
            r.text
        );
        // The run's report counts the refused fill.
        assert!(
            r.text.contains("\"over_limit\":1") || r.text.contains("\"over_limit\": 1"),
            "policy {p}: no over_limit count in the report\n{}",
            r.text
        );
    }
}
