//! Programs as they meet barmap: each C program in `tests/programs/` is a
//! plain VFIO program (libc and the kernel's uAPI headers only) that
//! proves one behaviour of `barmap run`, through real fds, threads, signal
//! handlers and child processes. This test builds each with the system's
//! C compiler and runs it under `barmap run`, on every policy where the
//! policy matters; a program passes when it exits 0 and prints `PASS`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[path = "../../barmap/tests/common/memory_cgroup.rs"]
mod memory_cgroup;
use memory_cgroup::MemoryCgroup;

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

// --- the testbed ---

/// A fresh empty scratch directory for one test, to serve as `$TMPDIR`.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("testbed-scratch")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The testbed a program printed (`testbed <path>`).
fn testbed_of(text: &str) -> PathBuf {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("testbed "))
        .unwrap_or_else(|| panic!("no testbed line in\n{text}"));
    PathBuf::from(line.trim())
}

/// The entries of `dir`.
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Waits up to 30 s for the file `path` to contain `DONE`; its text.
fn wait_for_done(path: &Path) -> String {
    for _ in 0..300 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains("DONE") {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "{} never said DONE:\n{}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

#[test]
fn the_testbed_is_private_and_fresh_per_run() {
    let tmp = scratch("private");
    let t = tmp.to_str().unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = run_env(
            "the_testbed_is_private_and_fresh_per_run",
            &[],
            &[("TMPDIR", t)],
        );
        assert!(r.code == Some(0) && r.text.contains("PASS"), "{}", r.text);
        let tb = testbed_of(&r.text);
        assert_eq!(tb.parent(), Some(tmp.as_path()), "made under $TMPDIR");
        assert!(!tb.exists(), "{} left behind", tb.display());
        seen.push(tb);
    }
    assert_ne!(seen[0], seen[1], "two runs share a testbed");
    assert_eq!(entries(&tmp), Vec::<PathBuf>::new(), "left in $TMPDIR");
}

#[test]
fn a_program_that_cannot_be_started_leaves_no_testbed() {
    let tmp = scratch("cannot-start");
    let out = Command::new(barmap())
        .args(["run", "--", "/nonexistent/program"])
        .env("BARMAP_PRELOAD", preload())
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("starting /nonexistent/program"));
    assert_eq!(entries(&tmp), Vec::<PathBuf>::new(), "left in $TMPDIR");
}

#[test]
fn a_program_that_outlives_the_run_finds_no_testbed() {
    let tmp = scratch("outlives");
    let result = tmp.with_extension("result");
    let _ = std::fs::remove_file(&result);
    let r = run_env(
        "a_program_that_outlives_the_run_finds_no_testbed",
        &[],
        &[
            ("TMPDIR", tmp.to_str().unwrap()),
            ("BT_RESULT", result.to_str().unwrap()),
        ],
    );
    assert!(r.code == Some(0) && r.text.contains("PASS"), "{}", r.text);
    let tb = testbed_of(&r.text);
    let text = wait_for_done(&result);
    assert!(
        !text.contains("FAIL") && text.contains("PASS"),
        "the process that outlived the run:\n{text}"
    );
    for who in [
        "a child that outlived the run",
        "a program started after the run",
    ] {
        assert!(
            text.contains(&format!("ok {who}: open /dev/vfio/vfio is ENOENT")),
            "{text}"
        );
    }
    assert!(
        !tb.exists(),
        "a report or anything else recreated the testbed"
    );
    assert_eq!(entries(&tmp), Vec::<PathBuf>::new(), "left in $TMPDIR");
}

#[test]
fn a_recreated_testbed_with_a_report_symlink_is_not_followed() {
    let tmp = scratch("recreated");
    let result = tmp.with_extension("result");
    let target = tmp.with_extension("target");
    let _ = std::fs::remove_file(&result);
    std::fs::write(&target, "untouched\n").unwrap();
    let r = run_env(
        "a_recreated_testbed_with_a_report_symlink_is_not_followed",
        &[],
        &[
            ("TMPDIR", tmp.to_str().unwrap()),
            ("BT_RESULT", result.to_str().unwrap()),
            ("BT_TARGET", target.to_str().unwrap()),
        ],
    );
    let tb = testbed_of(&r.text);
    let text = wait_for_done(&result);
    let written = std::fs::read_to_string(&target).unwrap();
    let links: Vec<PathBuf> = entries(&tb)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("report-"))
        .collect();
    let all_links = links.iter().all(|p| {
        std::fs::symlink_metadata(p)
            .unwrap()
            .file_type()
            .is_symlink()
    });
    let _ = std::fs::remove_dir_all(&tb);
    assert_eq!(
        written, "untouched\n",
        "a report was written through the link"
    );
    assert!(r.code == Some(0) && r.text.contains("PASS"), "{}", r.text);
    assert!(!text.contains("FAIL") && text.contains("PASS"), "{text}");
    assert!(
        text.contains("ok the child whose front end started during the run: the testbed made again is refused"),
        "{text}"
    );
    assert_eq!(links.len(), 2, "{text}");
    assert!(all_links, "a report replaced a link");
}

/// Runs the signal program under `barmap run`, sends `sig` to the barmap
/// run process once the program is ready, and requires the program's
/// handler to see it, the run to end normally and the testbed to be gone.
fn signal_reaches_the_program(sig: i32) {
    use std::io::BufRead;
    let tmp = scratch(&format!("signal-{sig}"));
    let exe = build("sigterm_to_barmap_run_reaches_the_program_and_removes_the_testbed");
    let mut child = Command::new(barmap())
        .arg("run")
        .arg("--")
        .arg(&exe)
        .env("BARMAP_PRELOAD", preload())
        .env("TMPDIR", &tmp)
        .env("BT_SIGNAL", sig.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("barmap run starts");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    while !text.contains("READY") {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text += &line;
    }
    assert!(
        text.contains("READY"),
        "the program never got ready:\n{text}"
    );
    let tb = testbed_of(&text);
    assert!(tb.is_dir(), "the testbed exists while the program runs");
    let pid = i32::try_from(child.id()).unwrap();
    assert!(pid > 0);
    // SAFETY: a signal to the barmap run process this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    text += &rest;
    assert!(
        text.contains(&format!("ok the program's handler of signal {sig} ran"))
            && text.contains("PASS"),
        "{text}{err}"
    );
    assert_eq!(status.code(), Some(0), "{text}{err}");
    assert!(err.contains("exited with status 0"), "{err}");
    assert!(!tb.exists(), "{} left behind", tb.display());
    assert_eq!(entries(&tmp), Vec::<PathBuf>::new(), "left in $TMPDIR");
}

#[test]
fn sigterm_to_barmap_run_reaches_the_program_and_removes_the_testbed() {
    signal_reaches_the_program(libc::SIGTERM);
}

#[test]
fn sigint_and_sighup_to_barmap_run_reach_the_program_and_remove_the_testbed() {
    signal_reaches_the_program(libc::SIGINT);
    signal_reaches_the_program(libc::SIGHUP);
}

// --- lifetimes and errnos ---

/// Runs `name` under `barmap run --json` with `args`, requires it to pass,
/// and returns the run's report of the first device.
fn passes_with_report(name: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let r = run(name, &all);
    assert!(
        r.code == Some(0) && r.text.contains("PASS"),
        "{name} under barmap run {all:?}: exit {:?}\n{}",
        r.code,
        r.text
    );
    let line = r
        .text
        .lines()
        .find(|l| l.starts_with('{') && l.contains("\"reports\""))
        .unwrap_or_else(|| panic!("{name}: no JSON outcome in\n{}", r.text));
    let out: serde_json::Value = serde_json::from_str(line).unwrap();
    out["reports"][0]["devices"][0].clone()
}

#[test]
fn group_unset_container_with_an_open_device_is_ebusy() {
    passes("group_unset_container_with_an_open_device_is_ebusy", &[]);
}

#[test]
fn closing_the_group_keeps_dma_maps_until_the_last_device_fd_closes() {
    passes(
        "closing_the_group_keeps_dma_maps_until_the_last_device_fd_closes",
        &[],
    );
}

#[test]
fn map_dma_needs_read_or_write_and_a_writable_buffer_for_write() {
    passes(
        "map_dma_needs_read_or_write_and_a_writable_buffer_for_write",
        &[],
    );
}

#[test]
fn type1v1_unmap_of_a_first_page_unmaps_the_whole_mapping() {
    passes(
        "type1v1_unmap_of_a_first_page_unmaps_the_whole_mapping",
        &[],
    );
}

#[test]
fn intx_trigger_while_msix_is_enabled_is_einval() {
    passes("intx_trigger_while_msix_is_enabled_is_einval", &[]);
}

#[test]
fn container_and_group_errnos_follow_the_kernels_order() {
    passes("container_and_group_errnos_follow_the_kernels_order", &[]);
}

#[test]
fn update_vaddr_is_not_offered_and_its_flags_get_the_kernels_answer() {
    passes(
        "update_vaddr_is_not_offered_and_its_flags_get_the_kernels_answer",
        &[],
    );
}

#[test]
fn dma_to_unmapped_private_memory_is_an_iommu_fault_never_a_write_into_new_memory() {
    let dev = passes_with_report(
        "dma_to_unmapped_private_memory_is_an_iommu_fault_never_a_write_into_new_memory",
        &["--device", "edu"],
    );
    assert_eq!(
        dev["iommu_faults"]["gone"], 4,
        "each DMA after its buffer went is reported as an IOMMU fault: {dev}"
    );
}

#[test]
fn dma_to_remapped_shared_memory_reaches_the_pages_pinned_at_map_time() {
    let dev = passes_with_report(
        "dma_to_remapped_shared_memory_reaches_the_pages_pinned_at_map_time",
        &["--device", "edu"],
    );
    assert_eq!(
        dev["iommu_faults"]["gone"], 0,
        "pinned pages never fault: {dev}"
    );
}

// --- signals ---

#[test]
fn program_sigbus_handler_installed_before_mapping_catches_register_access_with_memory_off() {
    passes(
        "program_sigbus_handler_installed_before_mapping_catches_register_access_with_memory_off",
        &["--device", "edu"],
    );
}

#[test]
fn null_dereference_reaches_the_program_sigsegv_handler() {
    passes(
        "null_dereference_reaches_the_program_sigsegv_handler",
        &["--device", "edu"],
    );
}

#[test]
fn signal_and_sigset_after_mapping_keep_the_trap() {
    passes(
        "signal_and_sigset_after_mapping_keep_the_trap",
        &["--device", "edu"],
    );
}

#[test]
fn sa_onstack_stack_overflow_handler_runs_on_the_alternate_stack() {
    passes(
        "sa_onstack_stack_overflow_handler_runs_on_the_alternate_stack",
        &["--device", "edu"],
    );
}

#[test]
fn sa_resethand_handler_runs_once_then_default() {
    passes(
        "sa_resethand_handler_runs_once_then_default",
        &["--device", "edu"],
    );
}

#[test]
fn a_thread_blocking_sigsegv_touches_a_register() {
    passes(
        "a_thread_blocking_sigsegv_touches_a_register",
        &["--device", "edu"],
    );
}

#[test]
fn sigaction_reports_the_program_own_handler_as_old() {
    passes(
        "sigaction_reports_the_program_own_handler_as_old",
        &["--device", "edu"],
    );
}

// ----- Concurrent mappings: threads mapping, unmapping and dup2'ing at once -----

/// Runs `name` with `env` on every correct policy and requires it to pass.
fn passes_on_every_policy_with(name: &str, env: &[(&str, &str)]) {
    for p in POLICIES {
        let r = run_env(name, &["--policy", p], env);
        assert!(
            r.code == Some(0) && r.text.contains("PASS"),
            "{name} under barmap run --policy {p} with {env:?}: exit {:?}\n{}",
            r.code,
            r.text
        );
    }
}

#[test]
fn two_threads_mapping_windows_never_get_sigbus() {
    passes_on_every_policy("two_threads_mapping_windows_never_get_sigbus", &[]);
}

#[test]
fn eight_threads_mapping_windows_never_get_sigbus() {
    passes_on_every_policy_with(
        "two_threads_mapping_windows_never_get_sigbus",
        &[("BT_THREADS", "8"), ("BT_MS", "1000")],
    );
}

#[test]
fn dup2_over_a_device_fd_while_threads_map_never_gets_sigbus() {
    passes_on_every_policy(
        "dup2_over_a_device_fd_while_threads_map_never_gets_sigbus",
        &[],
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
    let cgroup = MemoryCgroup::new("barmap-programs", 1 << 30);
    match &cgroup {
        Some(cgroup) => cgroup.confine(&mut cmd),
        None => eprintln!("no memory cgroup: {name} runs bounded by --memory-limit only"),
    }
    let out = cmd.output().expect("barmap run starts");
    drop(cgroup);
    Run {
        code: out.status.code(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
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

// --- iommufd ---

#[test]
fn fstat_of_vfio_nodes_reports_char_devices_matching_sysfs() {
    passes(
        "fstat_of_vfio_nodes_reports_char_devices_matching_sysfs",
        &[],
    );
}

#[test]
fn iommufd_hwpt_alloc_attach_replace_as_qemu_does() {
    passes("iommufd_hwpt_alloc_attach_replace_as_qemu_does", &[]);
}

#[test]
fn ioas_map_and_unmap_refuse_what_the_kernel_refuses() {
    passes("ioas_map_and_unmap_refuse_what_the_kernel_refuses", &[]);
}

// --- igb ---

#[test]
fn igb_loopback_frames_arrive_intact_with_an_msix_interrupt() {
    passes(
        "igb_loopback_frames_arrive_intact_with_an_msix_interrupt",
        &["--device", "igb"],
    );
}

// --- DMA maps at scale ---

#[test]
fn per_page_dma_maps_of_one_shared_segment_add_one_alias_not_one_per_page() {
    passes(
        "per_page_dma_maps_of_one_shared_segment_add_one_alias_not_one_per_page",
        &[],
    );
}

// DSA and the SIGILL path

#[test]
fn movdir64b_and_enqcmd_to_dsa_portals_are_emulated_as_one_64_byte_store() {
    passes(
        "movdir64b_and_enqcmd_to_dsa_portals_are_emulated_as_one_64_byte_store",
        &["--device", "dsa"],
    );
}

#[test]
fn a_sigill_elsewhere_reaches_the_program_sigill_handler() {
    passes(
        "a_sigill_elsewhere_reaches_the_program_sigill_handler",
        &["--device", "edu"],
    );
}

#[test]
fn a_sigill_without_a_handler_kills_the_program_by_sigill() {
    let r = run(
        "a_sigill_without_a_handler_kills_the_program_by_sigill",
        &["--device", "edu"],
    );
    assert!(
        r.code == Some(128 + libc::SIGILL) && r.text.contains("ok about to execute ud2"),
        "exit {:?}\n{}",
        r.code,
        r.text
    );
    assert!(!r.text.contains("FAIL"), "{}", r.text);
}

// NVIDIA falcon

#[test]
fn nv_falcon_dma_to_a_read_only_or_unmapped_iova_never_completes_and_writes_nothing() {
    passes(
        "nv_falcon_dma_to_a_read_only_or_unmapped_iova_never_completes_and_writes_nothing",
        &["--device", "nv_falcon"],
    );
}

// SR-IOV and the VF token

#[test]
fn sriov_numvfs_creates_and_removes_vfs_with_the_kernels_errnos() {
    passes(
        "sriov_numvfs_creates_and_removes_vfs_with_the_kernels_errnos",
        &["--device", "igb,sriov=2"],
    );
}

#[test]
fn a_vf_opened_without_the_pfs_token_is_eacces() {
    passes(
        "a_vf_opened_without_the_pfs_token_is_eacces",
        &["--device", "igb,sriov=2"],
    );
}

#[test]
fn a_pf_with_an_open_vf_opens_only_with_the_current_token() {
    passes(
        "a_pf_with_an_open_vf_opens_only_with_the_current_token",
        &["--device", "igb,sriov=2"],
    );
}

#[test]
fn the_vf_token_feature_sets_only_on_a_pf() {
    passes(
        "the_vf_token_feature_sets_only_on_a_pf",
        &["--device", "igb,sriov=2", "--device", "default"],
    );
}

#[test]
fn sriov_numvfs_written_through_stdio_is_stored_at_close() {
    passes(
        "sriov_numvfs_written_through_stdio_is_stored_at_close",
        &["--device", "igb,sriov=2"],
    );
}

// --- vfio-user client ---
//
// Third-party vfio-user servers, built by `.ci/vfio-user-servers` into
// ~/.cache/barmap/vfio-user (or $BARMAP_VFIO_USER_SERVERS), serve a device
// that a plain VFIO program reaches under `barmap run --device
// vfio-user:SOCKET`. rust-vmm's `vfio_user` gpio example comes from
// crates.io; libvfio-user's samples are built here from a clone of
// libvfio-user in that directory (`libvfio-user/`, pinned; the script's
// header says how to fill it), and their tests skip, saying why, when the
// clone is not there. A test skips only when its server cannot be had.

/// The servers' directory.
fn vfio_user_dir() -> Option<PathBuf> {
    std::env::var_os("BARMAP_VFIO_USER_SERVERS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/barmap/vfio-user"))
        })
}

/// libvfio-user's samples, built from the clone in the cache by
/// `.ci/vfio-user-servers libvfio-user` (once per test run; reused while
/// the sources are unchanged): `Err` says why they cannot be had.
fn libvfio_user_samples() -> &'static Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = vfio_user_dir().ok_or("no $HOME")?;
        let src = std::env::var_os("BARMAP_LIBVFIO_USER_SRC")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("libvfio-user"));
        if !src.join("samples/server.c").exists() {
            return Err(format!(
                "no libvfio-user clone in {} (git clone https://github.com/nutanix/libvfio-user \
                 there, at the commit .ci/vfio-user-servers pins)",
                src.display()
            ));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/vfio-user-servers");
        let out = Command::new(&script)
            .arg("libvfio-user")
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("building libvfio-user's samples failed:\n{text}"));
        }
        if let Some(line) = text.lines().find(|l| l.contains("skipped")) {
            return Err(line.to_string());
        }
        Ok(())
    })
}

/// The third-party server `name`, if it can be had; else why not.
fn vfio_user_server(name: &str) -> Result<PathBuf, String> {
    if matches!(name, "libvfio-user-server" | "gpio-pci-idio-16") {
        libvfio_user_samples().clone()?;
    }
    let path = vfio_user_dir().ok_or("no $HOME")?.join(name);
    match path.exists() {
        true => Ok(path),
        false => Err(format!(
            "the vfio-user server {name} was not built (run .ci/vfio-user-servers)"
        )),
    }
}

/// Starts `server` with `args` (where `{}` stands for the socket path),
/// waits for its socket, runs `program` under `barmap run --device
/// vfio-user:SOCKET` and requires it to pass. Skips with the reason if the
/// server was not built.
fn passes_against_vfio_user_server(server: &str, args: &[&str], program: &str) {
    let bin = match vfio_user_server(server) {
        Ok(bin) => bin,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    // A short path: a socket's name holds 108 bytes.
    // One directory per test: tests of one server run side by side.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("barmap-vu-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("s");
    let sock = socket.to_str().unwrap();
    let mut child = Command::new(&bin)
        .args(args.iter().map(|a| a.replace("{}", sock)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let device = format!("vfio-user:{sock}");
    let r = run(program, &["--device", &device]);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        r.code == Some(0) && r.text.contains("PASS"),
        "{program} against {server}: exit {:?}\n{}\nserver stderr:\n{}",
        r.code,
        r.text,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_libvfio_user_server_serves_config_bars_irqs_and_dma() {
    passes_against_vfio_user_server(
        "libvfio-user-server",
        &["{}"],
        "a_libvfio_user_server_serves_config_bars_irqs_and_dma",
    );
}

#[test]
fn libvfio_user_gpio_pins_count_writes_through_region_access() {
    passes_against_vfio_user_server(
        "gpio-pci-idio-16",
        &["{}"],
        "libvfio_user_gpio_pins_count_writes_through_region_access",
    );
}

#[test]
fn rust_vmm_vfio_user_gpio_signals_intx_on_every_third_read() {
    passes_against_vfio_user_server(
        "vfio-user-gpio",
        &["--socket-path", "{}"],
        "rust_vmm_vfio_user_gpio_signals_intx_on_every_third_read",
    );
}

#[test]
fn a_libvfio_user_device_dmas_into_an_ioas_through_the_cdev() {
    passes_against_vfio_user_server(
        "libvfio-user-server",
        &["{}"],
        "a_libvfio_user_device_dmas_into_an_ioas_through_the_cdev",
    );
}

// --- conformance: the igb differential's program ---

/// `examples/igb_loopback.c`, the program `barmap conformance` runs on
/// QEMU's igb and on barmap's, passes every check on barmap's igb: its
/// transcript is the one the guest's must equal.
#[test]
fn the_igb_differential_program_passes_every_check_on_barmaps_igb() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/igb_loopback.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("programs");
    std::fs::create_dir_all(&out).unwrap();
    let exe = out.join("igb_loopback_example");
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-pthread", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("the C compiler (cc) runs");
    assert!(st.success(), "{} does not compile", src.display());
    let r = Command::new(barmap())
        .args(["run", "--device", "igb", "--"])
        .arg(&exe)
        .env("BARMAP_PRELOAD", preload())
        .output()
        .expect("barmap run starts");
    let text = String::from_utf8_lossy(&r.stdout);
    let checked: Vec<&str> = text.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(r.status.code(), Some(0), "{text}");
    assert!(!checked.iter().any(|l| l.ends_with(" FAIL")), "{text}");
    assert_eq!(
        checked.iter().filter(|l| l.ends_with(" ok")).count(),
        54,
        "{text}"
    );
    assert!(text.contains("54 checks, 0 failed"), "{text}");
}

// --- barmap's vfio-user client against barmap's server ---
//
// `barmap serve` holds the device; the program reaches it under `barmap
// run --device vfio-user:SOCKET`, through barmap-client, both sides
// speaking barmap-vfio-user.

/// A `barmap serve --device SPEC...` on a fresh socket, stopped when
/// dropped.
struct Served {
    child: std::process::Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Served {
    fn start(devices: &[&str]) -> Served {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A short path: a socket's name holds 108 bytes.
        let dir = std::env::temp_dir().join(format!("bm-serve-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let socket = dir.join("s");
        let mut cmd = Command::new(barmap());
        cmd.arg("serve").arg("--socket").arg(&socket);
        for d in devices {
            cmd.args(["--device", d]);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("barmap serve starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(socket.exists(), "barmap serve made no socket");
        Served { child, dir, socket }
    }

    fn device(&self) -> String {
        format!("vfio-user:{}", self.socket.display())
    }

    fn ctl(&self, args: &[&str]) {
        let st = Command::new(barmap())
            .arg("ctl")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("barmap ctl runs");
        assert!(st.success(), "barmap ctl {args:?} failed");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `program` against a `barmap serve --device DEVICE` and requires it
/// to pass.
fn passes_against_barmap_serve(device: &str, program: &str) {
    let s = Served::start(&[device]);
    let r = run(program, &["--device", &s.device()]);
    assert!(
        r.code == Some(0) && r.text.contains("PASS"),
        "{program} against barmap serve --device {device}: exit {:?}\n{}",
        r.code,
        r.text
    );
}

#[test]
fn barmap_serve_edu_reaches_a_program_through_the_vfio_user_client() {
    passes_against_barmap_serve(
        "edu",
        "barmap_serve_edu_reaches_a_program_through_the_vfio_user_client",
    );
}

#[test]
fn barmap_serve_ioat_copies_and_signals_msix_through_the_vfio_user_client() {
    passes_against_barmap_serve(
        "ioat",
        "barmap_serve_ioat_copies_and_signals_msix_through_the_vfio_user_client",
    );
}

#[test]
fn a_command_mem_clear_at_barmap_serve_sigbuses_a_vfio_user_clients_mapping() {
    let name = "a_command_mem_clear_at_barmap_serve_sigbuses_a_vfio_user_clients_mapping";
    let s = Served::start(&["default,memory=64K"]);
    let ready = s.dir.join("ready");
    let revoked = s.dir.join("revoked");
    let exe = build(name);
    let child = Command::new(barmap())
        .args(["run", "--device", &s.device(), "--"])
        .arg(&exe)
        .env("BARMAP_PRELOAD", preload())
        .env("BARMAP_READY", &ready)
        .env("BARMAP_REVOKED", &revoked)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("barmap run starts");
    let wait_for = |p: &Path| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !p.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        p.exists()
    };
    // The program's own clear first, then barmap ctl's from outside.
    if wait_for(&ready) {
        s.ctl(&["command-mem", "off"]);
        if wait_for(&revoked) {
            s.ctl(&["command-mem", "on"]);
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.code() == Some(0) && text.contains("PASS"),
        "{name}: {:?}\n{text}",
        out.status
    );
    assert!(
        text.contains("ok barmap ctl command-mem off: the mapping SIGBUSes"),
        "the clear from outside was not exercised:\n{text}"
    );
}

// Devices shared by processes (`barmap run --shared`): every process of the
// program tree reaches the run's devices through the launcher's device
// server, as on the kernel.

#[test]
fn a_forked_childs_and_an_exec_d_programs_calls_reach_the_parents_device() {
    passes(
        "a_forked_childs_and_an_exec_d_programs_calls_reach_the_parents_device",
        &["--shared"],
    );
}

#[test]
fn an_fd_received_over_scm_rights_works() {
    passes("an_fd_received_over_scm_rights_works", &["--shared"]);
}

#[test]
fn a_clear_in_any_process_revokes_the_mappings_of_all_of_them() {
    passes(
        "a_clear_in_any_process_revokes_the_mappings_of_all_of_them",
        &["--shared"],
    );
}

#[test]
fn a_second_open_of_a_held_group_is_ebusy_system_wide() {
    passes(
        "a_second_open_of_a_held_group_is_ebusy_system_wide",
        &["--shared"],
    );
}

#[test]
fn a_killed_client_leaves_the_device_and_the_other_clients_working() {
    passes(
        "a_killed_client_leaves_the_device_and_the_other_clients_working",
        &["--shared"],
    );
}

/// `barmap run --server PATH` joins a running `barmap serve`: its devices
/// are in sysfs with the IDs and BARs the server gives (ioat's 8086:2021
/// and its 16 KiB BAR0; the default device's 64 KiB BAR0 and 1 MiB
/// prefetchable BAR2), and a forked child's and an exec'd program's calls
/// reach the device the parent opened.
#[test]
fn run_server_joins_a_running_server_with_its_ids_and_bars_and_shares_its_devices() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("join-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let sock = dir.join("s");
    let mut server = Command::new(barmap())
        .args(["serve", "--socket"])
        .arg(&sock)
        .args(["--device", "ioat", "--device", "default,memory=1M"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("barmap serve starts");
    let ctl = dir.join("s.ctl");
    for _ in 0..200 {
        if ctl.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let run = |program: &[&std::ffi::OsStr]| {
        let out = Command::new(barmap())
            .arg("run")
            .arg("--server")
            .arg(&sock)
            .arg("--")
            .args(program)
            .env("BARMAP_PRELOAD", preload())
            .output()
            .expect("barmap run starts");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let script = "for b in 0000:ba:00.0 0000:ba:01.0; do d=/sys/bus/pci/devices/$b; \
                  echo $b $(cat $d/vendor $d/device) $(head -3 $d/resource | tr '\\n' ' '); done";
    let (code, ids) = run(&["sh".as_ref(), "-c".as_ref(), script.as_ref()]);
    let exe = build("a_forked_childs_and_an_exec_d_programs_calls_reach_the_parents_device");
    let (shared_code, shared) = run(&[exe.as_os_str(), "0000:ba:01.0".as_ref(), "43".as_ref()]);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(0), "{ids}");
    assert!(
        ids.contains("0000:ba:00.0 0x8086 0x2021 0x00000000e0000000 0x00000000e0003fff"),
        "ioat's IDs and BAR0 from the server:\n{ids}"
    );
    assert!(
        ids.contains("0000:ba:01.0 0x1234 0xba00")
            && ids.contains("0x00000000e0100000 0x00000000e01fffff 0x0000000000102200"),
        "the default device's IDs and prefetchable 1 MiB BAR2 from the server:\n{ids}"
    );
    assert!(
        shared_code == Some(0) && shared.contains("PASS"),
        "fork and exec on a joined server's device:\n{shared}"
    );
}

#[test]
fn received_container_and_group_fds_open_the_device_as_dpdks_secondary_does() {
    passes(
        "received_container_and_group_fds_open_the_device_as_dpdks_secondary_does",
        &["--shared"],
    );
}

// --- a client that tampers with a served BAR's memfd ---
//
// A program that finds the memfd barmap's client received and changes its
// size undoes no revocation: `barmap serve`'s watcher sets it back.

#[test]
fn a_tampered_bar_memfd_is_revoked_again_and_restores_the_devices_contents() {
    passes_against_barmap_serve(
        "default,memory=64K",
        "a_tampered_bar_memfd_is_revoked_again_and_restores_the_devices_contents",
    );
}

// iommufd and the group's single open across processes and across runs
// joining one server (`barmap run --shared`, `--server`).

/// `barmap run --server PATH` with `args` after `--`, its sync directory
/// `dir`, left running.
fn join_run(sock: &Path, exe: &Path, args: &[&str]) -> std::process::Child {
    Command::new(barmap())
        .arg("run")
        .arg("--server")
        .arg(sock)
        .arg("--")
        .arg(exe)
        .args(args)
        .env("BARMAP_PRELOAD", preload())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("barmap run starts")
}

fn finished(child: std::process::Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn a_group_held_by_one_run_is_ebusy_in_another_run_of_the_same_server() {
    let name = "a_group_held_by_one_run_is_ebusy_in_another_run_of_the_same_server";
    let s = Served::start(&["edu"]);
    let exe = build(name);
    let sync = s.dir.join("sync");
    std::fs::create_dir_all(&sync).unwrap();
    let sync = sync.to_str().unwrap();
    let holder = join_run(&s.socket, &exe, &["hold", sync]);
    let prober = finished(join_run(&s.socket, &exe, &["probe", sync]));
    let holder = finished(holder);
    let again = finished(join_run(&s.socket, &exe, &["again", sync]));
    for (role, r) in [("hold", holder), ("probe", prober), ("again", again)] {
        assert!(
            r.code == Some(0) && r.text.contains("PASS"),
            "{name} {role}: exit {:?}\n{}",
            r.code,
            r.text
        );
    }
}

#[test]
fn an_iommufd_and_ioas_received_over_scm_rights_map_dma_for_the_device() {
    passes(
        "an_iommufd_and_ioas_received_over_scm_rights_map_dma_for_the_device",
        &["--shared", "--device", "edu"],
    );
}

#[test]
fn a_forked_child_unmaps_the_parents_iommufd_mapping() {
    passes(
        "a_forked_child_unmaps_the_parents_iommufd_mapping",
        &["--shared", "--device", "edu"],
    );
}

#[test]
fn an_exec_d_program_maps_into_an_inherited_iommufds_ioas() {
    passes(
        "an_exec_d_program_maps_into_an_inherited_iommufds_ioas",
        &["--shared", "--device", "edu"],
    );
}

#[test]
fn a_released_shared_iommufd_leaves_no_mapping_of_a_process_that_held_it() {
    passes(
        "a_released_shared_iommufd_leaves_no_mapping_of_a_process_that_held_it",
        &["--shared", "--device", "edu"],
    );
}

// Forked children and register mappings under `--shared`: a BAR mapping
// survives fork, as vfio-pci's vma does; a register BAR's, trapped by
// barmap, reaches the device through the child's own connection.

#[test]
fn a_forked_childs_inherited_register_mapping_reaches_the_parents_device() {
    passes(
        "a_forked_childs_inherited_register_mapping_reaches_the_parents_device",
        &["--shared", "--device", "edu"],
    );
}

// SR-IOV under `--shared`: the VFs, the VF token and NumVFs are the run's,
// seen alike by every process of the program tree.

#[test]
fn a_vf_enabled_in_one_process_opens_in_its_child_with_the_pfs_token() {
    passes(
        "a_vf_enabled_in_one_process_opens_in_its_child_with_the_pfs_token",
        &["--shared", "--device", "igb,sriov=2"],
    );
}

/// The in-process SR-IOV programs pass unchanged with the devices served.
#[test]
fn sriov_numvfs_and_the_vf_token_keep_the_kernels_errnos_when_served() {
    for name in [
        "sriov_numvfs_creates_and_removes_vfs_with_the_kernels_errnos",
        "a_vf_opened_without_the_pfs_token_is_eacces",
        "a_pf_with_an_open_vf_opens_only_with_the_current_token",
        "sriov_numvfs_written_through_stdio_is_stored_at_close",
    ] {
        passes(name, &["--shared", "--device", "igb,sriov=2"]);
    }
    passes(
        "the_vf_token_feature_sets_only_on_a_pf",
        &["--shared", "--device", "igb,sriov=2", "--device", "default"],
    );
}
