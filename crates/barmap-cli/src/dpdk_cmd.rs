//! `barmap dpdk [--json] [--cache DIR]`: DPDK 24.11 from Debian trixie,
//! fetched with a private apt configuration and unpacked into barmap's
//! cache (never installed), run unmodified under `barmap run` on the I/OAT
//! channel model with DPDK's own loader and libraries:
//!
//! - `dpdk-test` with `DPDK_TEST=dmadev_autotest`: the API tests, then every
//!   device test (copy, stop_start, burst_capacity, fill) must succeed;
//!   again on version 3.4, where DPDK also runs its error_handling test
//!   (reported: it can lose a completion, see [`AUTOTEST_3_4_NOTE`]);
//! - `dpdk-test-dma-perf` with the sample configuration's parameters
//!   (`app/test-dma-perf/config.ini`: 10 MB, buffers of 64..8192 bytes
//!   doubling, ring 1024, kick batch 32) on the device, then the same sizes
//!   copied by the CPU: every size must complete; the report gives the
//!   throughput of each and their ratio;
//! - `dpdk-testpmd` on a `net_null` port with the device present: EAL,
//!   VFIO and the ioat PMD's probe and removal around a forwarding run.
//!
//! Each program runs with `--no-huge -m 128` (DPDK then DMA-maps every
//! 4 KiB page on its own: 32,768 mappings, within type1's 65,535).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use barmap::Policy;
use barmap_guest::apt::{self, Apt};
use barmap_guest::util::{self, Error, Result};
use serde::Serialize;

/// The Debian suite DPDK 24.11 comes from.
pub const SUITE: &str = "trixie";
/// The package that holds `dpdk-test`, `dpdk-test-dma-perf` and `dpdk-testpmd`.
pub const PACKAGE: &str = "dpdk-dev";
/// The packages whose dependency closure is unpacked: the programs, the
/// drivers passed with `-d`, and the C library (trixie's programs need a
/// newer one than the host may have; they run through its loader).
const ROOTS: [&str; 8] = [
    PACKAGE,
    "librte-net-e1000-25",
    "librte-bus-pci25",
    "librte-bus-vdev25",
    "librte-mempool-ring25",
    "librte-dma-ioat25",
    "librte-net-null25",
    "libc6",
];
/// The drivers DPDK loads from the `-d` directory.
pub const DRIVERS: [&str; 6] = [
    "net_e1000",
    "bus_pci",
    "bus_vdev",
    "mempool_ring",
    "dma_ioat",
    "net_null",
];
/// The device tests of `dmadev_autotest` that must succeed.
pub const DEVICE_TESTS: [&str; 4] = ["copy", "stop_start", "burst_capacity", "fill"];
/// Why `error_handling` may fail on version 3.4 without a fault of the
/// device: after an error, DPDK's `ioat_completed_status()` called with
/// `max_ops == 1` both advances past one completion the device already
/// wrote back and reports the failure in its place, so one completion is
/// never reported; on hardware the descriptor fetch after re-arming is
/// slower than the driver's next poll, here the trapped doorbell write is
/// slower than the model's copy.
///
/// In detail (DPDK 24.11, `drivers/dma/ioat/ioat_dmadev.c`), in
/// `test_individual_status_query_with_failure` with a failing descriptor
/// f of 16: `rte_dma_completed(max_ops=1)` finds the channel halted, sets
/// `failure = CHANERR`, `next_read = f + 1`, recovers (CHANERR cleared,
/// CHANCMD reset, CHAINADDR = descriptor f + 1, CHANSTS armed, the
/// completion word primed with descriptor f's address) and writes
/// DMACOUNT for the 15 - f descriptors left. The device does what the
/// datasheet says: armed, the DMACOUNT write starts it, and each
/// descriptor with the completion-update flag writes CHANCMP = its address
/// | state. The next `ioat_completed_status(max_ops=1)` computes
/// `count = last_completed + 1 - next_read`: 0 if the device has not yet
/// finished descriptor f + 1, and then the pending failure is reported
/// alone (right); 1 or more if it has, and then `next_read` advances by 1
/// (`count == max_ops`) and the failure overwrites `status[0]`, returning
/// 1: descriptor f + 1's success is consumed unreported, the test's last
/// call gets 0 and fails ("0, not 1"). Which happens depends only on
/// whether the device finished one 1 KiB copy before the driver's next
/// poll: the model's worker thread starts on the trapped DMACOUNT write and
/// usually wins; hardware fetches the descriptor over PCIe and usually
/// loses. Runs here have gone both ways (error_handling succeeded in some).
/// Delaying the model's copies to lose the race would hide a driver bug by
/// timing, so the model is left as the datasheet has it.
pub const AUTOTEST_3_4_NOTE: &str = "error_handling on 3.4: DPDK's ioat_completed_status() with \
     max_ops=1 after a recovery consumes one completion the device already wrote back and \
     reports the failure in its place (test_individual_status_query_with_failure then sees 0 \
     of 1); only the four device tests are required there";
/// The buffer sizes of the sample configuration (`buf_size=64,8192,2,MUL`).
pub const BUF_SIZES: [u32; 8] = [64, 128, 256, 512, 1024, 2048, 4096, 8192];
/// The DPDK runtime-file prefix, apart from any other DPDK on the host.
const FILE_PREFIX: &str = "barmap-dpdk";

/// Arguments of `barmap dpdk`.
#[derive(clap::Args, Debug)]
pub struct DpdkArgs {
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Cache directory (default: $BARMAP_CACHE or $HOME/.cache/barmap/guest).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Fault policy of the ioat device.
    #[arg(long, default_value = "prefault")]
    policy: Policy,
    /// Seconds each dma-perf size runs (the sample configuration's 2).
    #[arg(long, default_value_t = 2)]
    seconds: u32,
    /// Only DPDK's multi-process mode: a primary (`dpdk-test`) and a
    /// secondary (`dpdk-test --proc-type=secondary` running
    /// `dmadev_autotest`) on one ioat device under `barmap run --shared`,
    /// on 2 MiB huge pages (reserved as root and given back, on a private
    /// hugetlbfs mount).
    #[arg(long)]
    multi_process: bool,
}

/// DPDK's multi-process mode on one device ([`DpdkArgs::multi_process`]):
/// the secondary gets the primary's container and group fds over DPDK's
/// IPC socket, opens the device through them, and runs `dmadev_autotest`
/// (the DMA API tests and the device tests) on it.
fn multi_process(dpdk: &Dpdk, policy: Policy, logs: &Path) -> Result<AutotestReport> {
    let _huge = crate::selftests_run::HugePages::reserve();
    let huge = logs.join("huge");
    let fifo = logs.join("primary.in");
    let primary = logs.join("multi-process-primary.log");
    let secondary = logs.join("multi-process-secondary.log");
    let eal = format!(
        "--huge-dir {} --file-prefix {FILE_PREFIX}-mp -m 16 --no-telemetry -d {} -a $BARMAP_BDF",
        huge.display(),
        dpdk.drivers.display()
    );
    let script = format!(
        "mkdir -p {h} && mount -t hugetlbfs -o pagesize=2M none {h} || exit 3
         rm -f {f}; mkfifo {f} || exit 3
         {cmd} -l 0,1 {eal} < {f} > {p} 2>&1 & P=$!
         exec 3> {f}
         n=0; while [ ! -S /var/run/dpdk/{FILE_PREFIX}-mp/mp_socket ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
         DPDK_TEST=dmadev_autotest {cmd} -l 0,1 {eal} --proc-type=secondary > {s} 2>&1; r=$?
         echo quit >&3; exec 3>&-; wait $P
         umount {h}; rm -f {f}
         cat {s}; exit $r",
        h = huge.display(),
        f = fifo.display(),
        p = primary.display(),
        s = secondary.display(),
        cmd = dpdk.command("dpdk-test"),
    );
    let outcome = barmap_run_with(
        &["ioat"],
        true,
        policy,
        &script,
        &[],
        &logs.join("multi-process.log"),
        Duration::from_secs(600),
    )?;
    let text = read(&secondary);
    let cases = parse_autotest(&text);
    let device_ok = DEVICE_TESTS.iter().all(|t| {
        cases
            .iter()
            .any(|c| c.name == *t && c.verdict == "succeeded" && c.suite.contains("instance"))
    });
    let ok = device_ok
        && outcome.code == Some(0)
        && text.contains("Test OK")
        && !cases.iter().any(|c| c.verdict == "failed");
    Ok(AutotestReport {
        device: "ioat (secondary process)".into(),
        ok,
        outcome,
        cases,
    })
}

/// DPDK unpacked in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct Dpdk {
    /// The Debian version of [`PACKAGE`].
    pub version: String,
    /// The unpack's root (`usr/bin/dpdk-test` under it).
    pub root: PathBuf,
    /// The directory passed with `-d` (links to [`DRIVERS`]).
    pub drivers: PathBuf,
}

impl Dpdk {
    fn lib(&self) -> PathBuf {
        self.root.join("usr/lib/x86_64-linux-gnu")
    }

    /// A shell command line that runs DPDK program `bin` through the
    /// unpack's own loader and libraries.
    fn command(&self, bin: &str) -> String {
        let lib = self.lib();
        format!(
            "{} --library-path {} {}",
            lib.join("ld-linux-x86-64.so.2").display(),
            lib.display(),
            self.root.join("usr/bin").join(bin).display()
        )
    }

    /// The EAL arguments every run shares (`$BARMAP_BDF` is expanded by
    /// the shell inside `barmap run`).
    fn eal(&self) -> String {
        format!(
            "--no-huge -m 128 -l 0,1 --file-prefix {FILE_PREFIX} --no-telemetry -d {}",
            self.drivers.display()
        )
    }
}

fn keep(name: &str) -> bool {
    (name.starts_with("lib") && !name.ends_with("-dev"))
        || name == "zlib1g"
        || name == "ibverbs-providers"
}

fn sanitize(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn complete(base: &Path, version: &str) -> Option<Dpdk> {
    let dir = base.join(sanitize(version));
    let root = dir.join("root");
    let drivers = dir.join("drivers");
    // An unpack made before a driver joined the list is not complete.
    let ok = std::fs::read_to_string(dir.join(".barmap-complete")).ok()? == version
        && root.join("usr/bin/dpdk-test").is_file()
        && DRIVERS
            .iter()
            .all(|d| drivers.join(format!("librte_{d}.so")).exists());
    ok.then(|| Dpdk {
        version: version.to_string(),
        root,
        drivers,
    })
}

/// Fetches DPDK into `cache` (idempotent: a complete unpack of the
/// candidate version is reused; offline, any complete unpack is).
pub fn fetch(cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<Dpdk> {
    let base = cache.join("dpdk");
    let (main, _) = apt::host_mirrors()?;
    let apt = Apt::new(
        &cache.join("apt").join(SUITE),
        &[format!("{main} {SUITE} main")],
    )?;
    let version = match apt.update().and_then(|()| apt.candidate_version(PACKAGE)) {
        Ok(v) => v,
        Err(e) => {
            let found = std::fs::read_dir(&base).ok().and_then(|d| {
                d.flatten().find_map(|e| {
                    let v = std::fs::read_to_string(e.path().join(".barmap-complete")).ok()?;
                    complete(&base, &v)
                })
            });
            return found.ok_or_else(|| e.context(&format!("dpdk: apt-get update / {PACKAGE}")));
        }
    };
    if let Some(d) = complete(&base, &version) {
        return Ok(d);
    }
    let dir = base.join(sanitize(&version));
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&root)?;
    progress(&format!("resolving {PACKAGE} {version} from {SUITE}"));
    let mut all: Vec<String> = ROOTS.iter().map(|s| s.to_string()).collect();
    let mut front = all.clone();
    while !front.is_empty() {
        let next: Vec<String> = apt
            .depends(&front)?
            .into_iter()
            .filter(|p| keep(p) && !all.contains(p))
            .collect();
        all.extend(next.iter().cloned());
        front = next;
    }
    progress(&format!("downloading and unpacking {} packages", all.len()));
    for p in &all {
        let deb = apt.download(p, None)?;
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
            .map_err(|e| e.context(&format!("unpacking {p}")))?;
    }
    let drivers = dir.join("drivers");
    std::fs::create_dir_all(&drivers)?;
    let pmds = root.join("usr/lib/x86_64-linux-gnu/dpdk/pmds-25.0");
    for d in DRIVERS {
        let target = pmds.join(format!("librte_{d}.so.25"));
        if !target.exists() {
            return Err(Error::msg(format!(
                "dpdk: the unpack has no driver {}",
                target.display()
            )));
        }
        std::os::unix::fs::symlink(&target, drivers.join(format!("librte_{d}.so")))?;
    }
    std::fs::write(dir.join(".barmap-complete"), &version)?;
    complete(&base, &version).ok_or_else(|| Error::msg("dpdk: the unpack does not check"))
}

/// How one program under `barmap run` ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Its exit code (none: killed, or stopped by the time limit).
    pub code: Option<i32>,
    /// Whether the time limit stopped it.
    pub timed_out: bool,
    /// Seconds it ran.
    pub elapsed_s: f64,
    /// Where its output is.
    pub log: PathBuf,
}

/// Runs `script` with `sh -c` under `barmap run --device ioat`, its output
/// into `log`, stopped (its whole process group) after `limit`.
fn barmap_run(
    devices: &[&str],
    policy: Policy,
    script: &str,
    env: &[(&str, &str)],
    log: &Path,
    limit: Duration,
) -> Result<Outcome> {
    barmap_run_with(devices, false, policy, script, env, log, limit)
}

/// [`barmap_run`], with `barmap run --shared` if `shared`.
fn barmap_run_with(
    devices: &[&str],
    shared: bool,
    policy: Policy,
    script: &str,
    env: &[(&str, &str)],
    log: &Path,
    limit: Duration,
) -> Result<Outcome> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let out = std::fs::File::create(log)?;
    let mut c = Command::new(exe);
    c.arg("run");
    if shared {
        c.arg("--shared");
    }
    for d in devices {
        c.args(["--device", d]);
    }
    c.args(["--policy", &policy.to_string(), "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    let start = Instant::now();
    let mut child = c.spawn()?;
    let pid = child.id() as i32;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Outcome {
                code: st.code(),
                timed_out: false,
                elapsed_s: start.elapsed().as_secs_f64(),
                log: log.to_path_buf(),
            });
        }
        if start.elapsed() > limit {
            if pid > 0 {
                // SAFETY: kill(2) on the process group this function
                // created (pid > 0, so -pid names exactly that group).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.wait();
            // The program may outlive `barmap run` for a moment (it holds
            // DPDK's runtime lock until it is gone): wait for the group.
            let gone = Instant::now();
            // SAFETY: signal 0 only asks whether the group still exists.
            while pid > 0
                && unsafe { libc::kill(-pid, 0) } == 0
                && gone.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Ok(Outcome {
                code: None,
                timed_out: true,
                elapsed_s: start.elapsed().as_secs_f64(),
                log: log.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `+ TestCase [ N] : NAME VERDICT` line of DPDK's unit tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestCase {
    /// The suite it belongs to ("DMA API Test Suite", "DMA dev instance testsuite").
    pub suite: String,
    /// Its name.
    pub name: String,
    /// succeeded, failed, skipped or unsupported.
    pub verdict: String,
}

/// The test cases reported in `dmadev_autotest`'s output.
pub fn parse_autotest(text: &str) -> Vec<TestCase> {
    let mut suite = String::new();
    let mut cases = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(s) = l.strip_prefix("+ Test Suite :") {
            suite = s.trim().to_string();
        } else if let Some(rest) = l.strip_prefix("+ TestCase [") {
            let Some((_, after)) = rest.split_once("] :") else {
                continue;
            };
            let mut words = after.split_whitespace();
            if let (Some(name), Some(verdict)) = (words.next(), words.next()) {
                cases.push(TestCase {
                    suite: suite.clone(),
                    name: name.to_string(),
                    verdict: verdict.to_string(),
                });
            }
        }
    }
    cases
}

/// One size of a dma-perf case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerfLine {
    /// The case (1: the device, 2: the CPU's memcpy).
    pub case: u32,
    /// Bytes per operation.
    pub buf_size: u32,
    /// Cycles per operation.
    pub cycles: f64,
    /// Gbit/s.
    pub gbps: f64,
    /// Millions of operations per second.
    pub mops: f64,
}

/// The per-size results in dma-perf's output.
pub fn parse_dma_perf(text: &str) -> Vec<PerfLine> {
    let mut case = 0;
    let mut pending: Option<(u32, f64)> = None;
    let mut lines = Vec::new();
    let num = |s: &str| {
        s.split_whitespace()
            .next()
            .and_then(|w| w.parse::<f64>().ok())
    };
    for line in text.lines() {
        let l = line.trim();
        if let Some(n) = l.strip_prefix("Running case") {
            case = n.trim().parse().unwrap_or(0);
        } else if let Some(rest) = l.strip_prefix("Average Cycles/op:") {
            let cycles = rest.split(',').next().and_then(num);
            let size = rest
                .split_once("Buffer Size:")
                .and_then(|(_, s)| num(s))
                .map(|s| s as u32);
            pending = cycles.zip(size).map(|(c, s)| (s, c));
        } else if let Some(rest) = l.strip_prefix("Average Bandwidth:") {
            let gbps = num(rest);
            let mops = rest.split_once("MOps:").and_then(|(_, s)| num(s));
            if let (Some((buf_size, cycles)), Some(gbps), Some(mops)) = (pending.take(), gbps, mops)
            {
                lines.push(PerfLine {
                    case,
                    buf_size,
                    cycles,
                    gbps,
                    mops,
                });
            }
        }
    }
    lines
}

/// The dma-perf configuration: the sample's DMA case on the device, and
/// its CPU case on the same sizes, on lcore 1.
pub fn dma_perf_config(dpdk: &Dpdk, seconds: u32) -> String {
    let eal = dpdk.eal();
    let first = BUF_SIZES[0];
    let last = BUF_SIZES[BUF_SIZES.len() - 1];
    format!(
        "[case1]\ntype=DMA_MEM_COPY\nmem_size=10\nbuf_size={first},{last},2,MUL\n\
         dma_ring_size=1024\nkick_batch=32\nsrc_numa_node=0\ndst_numa_node=0\ncache_flush=0\n\
         test_seconds={seconds}\nlcore_dma0=lcore=1,dev=@BDF@,dir=mem2mem\n\
         eal_args={eal} -a @BDF@\n\n\
         [case2]\ntype=CPU_MEM_COPY\nmem_size=10\nbuf_size={first},{last},2,MUL\n\
         src_numa_node=0\ndst_numa_node=0\ncache_flush=0\ntest_seconds={seconds}\nlcore=1\n\
         eal_args={eal} --no-pci\n"
    )
}

/// dmadev_autotest's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct AutotestReport {
    pub(crate) device: String,
    pub(crate) ok: bool,
    pub(crate) outcome: Outcome,
    pub(crate) cases: Vec<TestCase>,
}

/// One buffer size of dma-perf: the device against memcpy.
#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub(crate) buf_size: u32,
    pub(crate) dma_gbps: Option<f64>,
    pub(crate) dma_mops: Option<f64>,
    pub(crate) cpu_gbps: Option<f64>,
    /// The device's throughput over memcpy's.
    pub(crate) ratio: Option<f64>,
}

/// dma-perf's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct PerfReport {
    pub(crate) ok: bool,
    pub(crate) outcome: Outcome,
    pub(crate) sizes: Vec<SizeReport>,
}

/// testpmd's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct TestpmdReport {
    pub(crate) ok: bool,
    pub(crate) outcome: Outcome,
    pub(crate) rx_packets: Option<u64>,
    pub(crate) tx_packets: Option<u64>,
}

fn accumulated(text: &str, key: &str) -> Option<u64> {
    let at = text.find("Accumulated forward statistics")?;
    let rest = &text[at..];
    let i = rest.find(key)?;
    rest[i + key.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn read(log: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned()
}

/// `dmadev_autotest` on `device`: every test in `required` must succeed
/// (and, when `strict`, the program must pass as a whole).
pub(crate) fn autotest(
    dpdk: &Dpdk,
    device: &str,
    policy: Policy,
    required: &[&str],
    strict: bool,
    log: &Path,
) -> Result<AutotestReport> {
    let script = format!(
        "exec {} {} -a $BARMAP_BDF",
        dpdk.command("dpdk-test"),
        dpdk.eal()
    );
    let outcome = barmap_run(
        &[device],
        policy,
        &script,
        &[("DPDK_TEST", "dmadev_autotest")],
        log,
        Duration::from_secs(300),
    )?;
    let text = read(&outcome.log);
    let cases = parse_autotest(&text);
    let device_ok = required.iter().all(|t| {
        cases
            .iter()
            .any(|c| c.name == *t && c.verdict == "succeeded" && c.suite.contains("instance"))
    });
    let whole = outcome.code == Some(0)
        && text.contains("Test OK")
        && !cases.iter().any(|c| c.verdict == "failed");
    let ok = device_ok && (whole || !strict);
    Ok(AutotestReport {
        device: device.to_string(),
        ok,
        outcome,
        cases,
    })
}

pub(crate) fn dma_perf(
    dpdk: &Dpdk,
    policy: Policy,
    seconds: u32,
    logs: &Path,
) -> Result<PerfReport> {
    let template = logs.join("dma-perf.ini.in");
    std::fs::write(&template, dma_perf_config(dpdk, seconds))?;
    let ini = logs.join("dma-perf.ini");
    let script = format!(
        "sed \"s/@BDF@/$BARMAP_BDF/g\" {} > {} && exec {} --config {} --result {}",
        template.display(),
        ini.display(),
        dpdk.command("dpdk-test-dma-perf"),
        ini.display(),
        logs.join("dma-perf.csv").display()
    );
    let limit = Duration::from_secs(120 + 2 * BUF_SIZES.len() as u64 * (u64::from(seconds) + 10));
    let outcome = barmap_run(
        &["ioat"],
        policy,
        &script,
        &[],
        &logs.join("dma-perf.log"),
        limit,
    )?;
    let text = read(&outcome.log);
    let lines = parse_dma_perf(&text);
    let find = |case: u32, size: u32| lines.iter().find(|l| l.case == case && l.buf_size == size);
    let sizes: Vec<SizeReport> = BUF_SIZES
        .iter()
        .map(|&s| {
            let d = find(1, s);
            let c = find(2, s);
            SizeReport {
                buf_size: s,
                dma_gbps: d.map(|l| l.gbps),
                dma_mops: d.map(|l| l.mops),
                cpu_gbps: c.map(|l| l.gbps),
                ratio: d
                    .zip(c)
                    .filter(|(_, c)| c.gbps > 0.0)
                    .map(|(d, c)| d.gbps / c.gbps),
            }
        })
        .collect();
    // Each case runs in a child process, which reports its status; the
    // parent's buffered output is copied into each child, so lines repeat.
    let statuses: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Case process exited. status"))
        .map(str::trim)
        .collect();
    let ok = outcome.code == Some(0)
        && statuses.len() >= 2
        && statuses.iter().all(|s| *s == "0")
        && sizes.iter().all(|s| s.dma_gbps.is_some_and(|g| g > 0.0));
    Ok(PerfReport { ok, outcome, sizes })
}

pub(crate) fn testpmd(dpdk: &Dpdk, policy: Policy, logs: &Path) -> Result<TestpmdReport> {
    // Not interactive, stdin at EOF: testpmd forwards, then stops at once.
    let script = format!(
        "exec {} {} -a $BARMAP_BDF --vdev net_null0 -- --nb-cores=1 --total-num-mbufs=2048 < /dev/null",
        dpdk.command("dpdk-testpmd"),
        dpdk.eal()
    );
    let outcome = barmap_run(
        &["ioat"],
        policy,
        &script,
        &[],
        &logs.join("testpmd.log"),
        Duration::from_secs(120),
    )?;
    let text = read(&outcome.log);
    let rx_packets = accumulated(&text, "RX-packets:");
    let tx_packets = accumulated(&text, "TX-packets:");
    let ok = outcome.code == Some(0)
        && text.contains("Bye...")
        && text.contains("ioat_dmadev_probe")
        && rx_packets.is_some_and(|n| n > 0)
        && rx_packets == tx_packets;
    Ok(TestpmdReport {
        ok,
        outcome,
        rx_packets,
        tx_packets,
    })
}

/// The seed's own client: `dpdk-testpmd` with DPDK's igb PMD on two
/// barmap igb ports joined by a wire, io forwarding with `--tx-first` on
/// two forwarding lcores for `seconds`; the frames each port sent are the
/// ones the other received, but for what is still on the wire or in a ring
/// when testpmd stops.
pub(crate) fn testpmd_igb(
    dpdk: &Dpdk,
    policy: Policy,
    seconds: u64,
    logs: &Path,
) -> Result<TestpmdReport> {
    // testpmd forwards until its stdin reaches EOF, `seconds` from now.
    let script = format!(
        "sleep {seconds} | exec {} --no-huge -m 128 --lcores 0@0,1@1,2@0 --file-prefix {FILE_PREFIX} \
         --no-telemetry -d {} -a 0000:ba:00.0 -a 0000:ba:01.0 -- --forward-mode=io --tx-first \
         --nb-cores=2 --total-num-mbufs=16384",
        dpdk.command("dpdk-testpmd"),
        dpdk.drivers.display()
    );
    let outcome = barmap_run(
        &[
            "igb,wire=testpmd,mac=02:00:00:00:00:01",
            "igb,wire=testpmd,mac=02:00:00:00:00:02",
        ],
        policy,
        &script,
        &[],
        &logs.join("testpmd-igb.log"),
        Duration::from_secs(seconds + 120),
    )?;
    let text = read(&outcome.log);
    let rx_packets = accumulated(&text, "RX-packets:");
    let tx_packets = accumulated(&text, "TX-packets:");
    // In flight at the stop: at most a ring (1024 descriptors) per port
    // and the wire's queue (1024 frames) per direction.
    let in_flight = |rx: u64, tx: u64| rx <= tx && tx - rx <= 4 * 1024;
    let ok = outcome.code == Some(0)
        && text.contains("Bye...")
        && text.matches("Link up").count() >= 2
        && rx_packets.is_some_and(|n| n > 0)
        && matches!((rx_packets, tx_packets), (Some(r), Some(t)) if in_flight(r, t));
    Ok(TestpmdReport {
        ok,
        outcome,
        rx_packets,
        tx_packets,
    })
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"))
}

/// Runs the command: 0 if every program passed.
pub fn run(args: &DpdkArgs) -> i32 {
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(barmap_guest::util::default_cache_dir);
    let mut progress = |line: &str| eprintln!("barmap dpdk: {line}");
    let dpdk = match fetch(&cache, &mut progress) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("barmap dpdk: {e}");
            return 1;
        }
    };
    let logs = match crate::util::run_log_dir(&cache, "dpdk-logs") {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!(
                "barmap dpdk: a log directory under {}: {e}",
                cache.display()
            );
            return 1;
        }
    };
    progress(&format!("DPDK {} in {}", dpdk.version, dpdk.root.display()));
    if args.multi_process {
        progress("primary and secondary on one ioat device (barmap run --shared)");
        return match multi_process(&dpdk, args.policy, &logs) {
            Ok(r) => {
                if args.json {
                    println!("{}", serde_json::to_string(&r).unwrap());
                } else {
                    for c in &r.cases {
                        println!("secondary: {:<34} {:<28} {}", c.suite, c.name, c.verdict);
                    }
                    println!(
                        "barmap dpdk: multi-process {} in {:.1} s (logs in {})",
                        if r.ok { "PASS" } else { "FAIL" },
                        r.outcome.elapsed_s,
                        logs.display()
                    );
                }
                i32::from(!r.ok)
            }
            Err(e) => {
                eprintln!("barmap dpdk: {e}");
                1
            }
        };
    }
    progress("dmadev_autotest");
    let auto = autotest(
        &dpdk,
        "ioat",
        args.policy,
        &DEVICE_TESTS,
        true,
        &logs.join("dmadev_autotest.log"),
    );
    progress("dmadev_autotest on version 3.4 (error handling advertised)");
    let auto34 = autotest(
        &dpdk,
        "ioat,version=3.4",
        args.policy,
        &DEVICE_TESTS,
        false,
        &logs.join("dmadev_autotest-3.4.log"),
    );
    progress("dpdk-test-dma-perf");
    let perf = dma_perf(&dpdk, args.policy, args.seconds, &logs);
    progress("dpdk-testpmd");
    let pmd = testpmd(&dpdk, args.policy, &logs);
    progress("dpdk-testpmd on two igb ports joined by a wire");
    let igb = testpmd_igb(&dpdk, args.policy, 20, &logs);
    let (auto, auto34, perf, pmd, igb) = match (auto, auto34, perf, pmd, igb) {
        (Ok(a), Ok(b), Ok(p), Ok(t), Ok(i)) => (a, b, p, t, i),
        (a, b, p, t, i) => {
            for e in [a.err(), b.err(), p.err(), t.err(), i.err()]
                .into_iter()
                .flatten()
            {
                eprintln!("barmap dpdk: {e}");
            }
            return 1;
        }
    };
    let ok = auto.ok && auto34.ok && perf.ok && pmd.ok && igb.ok;
    if args.json {
        let v = serde_json::json!({
            "source": format!("{PACKAGE} {} ({SUITE})", dpdk.version),
            "policy": args.policy.to_string(),
            "ok": ok,
            "dmadev_autotest": auto,
            "dmadev_autotest_3_4": auto34,
            "dmadev_autotest_3_4_note": AUTOTEST_3_4_NOTE,
            "dma_perf": perf,
            "testpmd": pmd,
            "testpmd_igb": igb,
        });
        println!("{v}");
    } else {
        let mut s = String::new();
        let _ = writeln!(s, "DPDK {} ({SUITE}) on the ioat model", dpdk.version);
        for a in [&auto, &auto34] {
            let _ = writeln!(
                s,
                "dmadev_autotest on {}: {} ({:.1} s, exit {})",
                a.device,
                if a.ok { "ok" } else { "FAIL" },
                a.outcome.elapsed_s,
                a.outcome.code.map_or("-".into(), |c| c.to_string())
            );
            for c in a.cases.iter().filter(|c| c.suite.contains("instance")) {
                let _ = writeln!(s, "    {:<20} {}", c.name, c.verdict);
            }
        }
        let _ = writeln!(
            s,
            "dma-perf: {} ({:.1} s)\n    {:>6} {:>10} {:>9} {:>10} {:>8}",
            if perf.ok { "ok" } else { "FAIL" },
            perf.outcome.elapsed_s,
            "bytes",
            "dma Gbps",
            "dma MOps",
            "cpu Gbps",
            "dma/cpu"
        );
        for z in &perf.sizes {
            let _ = writeln!(
                s,
                "    {:>6} {:>10} {:>9} {:>10} {:>8}",
                z.buf_size,
                opt(z.dma_gbps, 3),
                opt(z.dma_mops, 3),
                opt(z.cpu_gbps, 3),
                opt(z.ratio, 4)
            );
        }
        let _ = writeln!(
            s,
            "testpmd (net_null, ioat probed): {} (rx {} tx {} packets)",
            if pmd.ok { "ok" } else { "FAIL" },
            pmd.rx_packets.map_or("-".into(), |n| n.to_string()),
            pmd.tx_packets.map_or("-".into(), |n| n.to_string())
        );
        let _ = writeln!(
            s,
            "testpmd (igb PMD, two igb ports on a wire, io forwarding): {} (rx {} tx {} packets)",
            if igb.ok { "ok" } else { "FAIL" },
            igb.rx_packets.map_or("-".into(), |n| n.to_string()),
            igb.tx_packets.map_or("-".into(), |n| n.to_string())
        );
        let _ = writeln!(s, "logs: {}", logs.display());
        print!("{s}");
    }
    if ok {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autotest_cases_are_read_with_their_suite() {
        let text = " + Test Suite : DMA API Test Suite\n\
                    + TestCase [ 7] : test_dma_reconfigure skipped\n\
                    + TestCase [ 8] : test_dma_stats succeeded\n\
                    + Test Suite : DMA dev instance testsuite\n\
                    Ops submitted: 1\tOps completed: 1\tErrors: 0\n\
                    + TestCase [ 2] : stop_start succeeded\n\
                    + TestCase [ 4] : error_handling skipped\n";
        let c = parse_autotest(text);
        assert_eq!(c.len(), 4);
        assert_eq!(c[1].name, "test_dma_stats");
        assert_eq!(c[1].suite, "DMA API Test Suite");
        assert_eq!(c[2].name, "stop_start");
        assert_eq!(c[2].verdict, "succeeded");
        assert_eq!(c[2].suite, "DMA dev instance testsuite");
    }

    #[test]
    fn dma_perf_lines_are_read_per_case_and_size() {
        let text = "Running case 1\n\
            Average Cycles/op: 181070, Buffer Size: 4096 B, Buffer Number: 1280, Memory: 10.00 MB, Frequency: 2.596 Ghz.\n\
            Average Bandwidth: 0.470 Gbps, MOps: 0.014\n\
            Average Cycles/op per worker: 181070.0, Total Bandwidth: 0.470 Gbps, Total MOps: 0.014\n\
            Running case 2\n\
            Average Cycles/op: 2063, Buffer Size: 4096 B, Buffer Number: 1280, Memory: 10.00 MB, Frequency: 2.596 Ghz.\n\
            Average Bandwidth: 41.224 Gbps, MOps: 1.258\n";
        let l = parse_dma_perf(text);
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[0],
            PerfLine {
                case: 1,
                buf_size: 4096,
                cycles: 181070.0,
                gbps: 0.47,
                mops: 0.014
            }
        );
        assert_eq!(l[1].case, 2);
        assert_eq!(l[1].gbps, 41.224);
    }

    #[test]
    fn testpmd_totals_come_from_the_accumulated_statistics() {
        let text = "  RX-packets: 5 RX-dropped: 0\n\
                    +++ Accumulated forward statistics for all ports+++\n\
                    RX-packets: 86208          RX-dropped: 0             RX-total: 86208\n\
                    TX-packets: 86207          TX-dropped: 0             TX-total: 86207\n";
        assert_eq!(accumulated(text, "RX-packets:"), Some(86208));
        assert_eq!(accumulated(text, "TX-packets:"), Some(86207));
    }

    #[test]
    fn the_closure_keeps_shared_libraries_only() {
        assert!(keep("librte-eal25"));
        assert!(keep("libc6"));
        assert!(keep("zlib1g"));
        assert!(!keep("libdpdk-dev"));
        assert!(!keep("python3"));
        assert!(!keep("adduser"));
    }
}
