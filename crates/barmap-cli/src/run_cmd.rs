//! `barmap run`: an unmodified VFIO program on barmap's emulated devices
//! (see `barmap_front::launch`).

use std::path::Path;
use std::sync::Arc;

use barmap::Policy;
use barmap_front::launch;
use barmap_front::spec::{DeviceSpec, RunSpec};
use barmap_server::{DeviceConfig, Server};

/// Arguments of `barmap run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// A device to present: `default[,memory=SIZE][,policy=P]`, `edu`
    /// (QEMU's educational device), a .toml file, or `vfio-user:SOCKET`
    /// (a device served by a vfio-user server); repeat for more (default:
    /// one default device).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Fault policy of devices that do not name one.
    #[arg(long, default_value = "prefault")]
    policy: Policy,
    /// Limit on the device memory the program's devices may commit
    /// together (K, M, G, T suffixes; default: half of MemAvailable when
    /// the first device is built). A fault past it gets SIGBUS.
    #[arg(long, value_parser = barmap_front::spec::parse_size)]
    memory_limit: Option<u64>,
    /// Print the outcome as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Serve the run's devices to every process of the program tree: this
    /// process hosts a device server on a socket inside the testbed (mode
    /// 0600), and each process of the program reaches the same devices as
    /// its client, so forked children, exec'd programs and processes that
    /// receive a VFIO fd share them, as on the kernel.
    #[arg(long, conflicts_with = "server")]
    shared: bool,
    /// Join a running `barmap serve --socket PATH`: its devices (PATH,
    /// PATH.1, ...) are the run's, with their IDs and BARs in sysfs, shared
    /// by every process of the program tree.
    #[arg(long, value_name = "PATH")]
    server: Option<std::path::PathBuf>,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    program: Vec<String>,
}

/// Runs the command; the exit status is the program's (128 + signal if a
/// signal ended it), or 1 if it exited 0 but barmap recorded BUG events
/// (each would have crashed the kernel), or 2 if the run could not start.
/// The program runs on a private testbed that is removed however the run
/// ends; SIGINT, SIGTERM and SIGHUP sent to `barmap run` are forwarded to
/// it ([`launch::run_with`]).
pub fn run(args: &RunArgs) -> i32 {
    let texts = if args.devices.is_empty() {
        vec!["default".to_string()]
    } else {
        args.devices.clone()
    };
    let mut devices = Vec::new();
    if let Some(server) = &args.server {
        if !args.devices.is_empty() {
            eprintln!("barmap run: --server takes the server's devices; no --device with it");
            return 2;
        }
        match joined_devices(server, args.policy) {
            Ok(d) => devices = d,
            Err(e) => {
                eprintln!("barmap run: --server {}: {e}", server.display());
                return 2;
            }
        }
    }
    for t in texts.iter().filter(|_| args.server.is_none()) {
        match DeviceSpec::parse(t, args.policy) {
            Ok(mut d) => {
                d.memory_limit = args.memory_limit;
                devices.push(d)
            }
            Err(e) => {
                eprintln!("barmap run: --device {t}: {e}");
                return 2;
            }
        }
    }
    let mut spec = RunSpec::new(devices);
    if let Some(server) = &args.server {
        spec.locks = Some(barmap_server::locks_dir(server).display().to_string());
    }
    let program = &args.program[0];
    if let Some(path) = launch::resolve_program(program) {
        if launch::is_static(&path) == Some(true) {
            eprintln!(
                "barmap run: warning: {} is statically linked; LD_PRELOAD cannot reach it, \
                 so it will see no VFIO devices",
                path.display()
            );
        }
    }
    for d in spec.devices.iter().filter(|d| !d.is_vf()) {
        let sriov = if d.total_vfs > 0 {
            format!(
                ", SR-IOV TotalVFs {} (VF id {:04x})",
                d.total_vfs, d.vf_device
            )
        } else {
            String::new()
        };
        let memory = if d.model == "default" {
            format!(", {} MiB memory BAR", d.memory >> 20)
        } else if let Some(socket) = d.remote_socket() {
            format!(" served at {socket}")
        } else if args.shared {
            " served by this run".to_string()
        } else {
            String::new()
        };
        eprintln!(
            "barmap run: {} group {} (/dev/vfio/{}, /dev/vfio/devices/vfio{}), {} device{memory}{sriov}, \
             policy {}",
            d.bdf, d.group, d.group, d.cdev, d.model, d.policy
        );
    }
    let output = if args.json {
        launch::Output::Stderr
    } else {
        launch::Output::Inherit
    };
    let mut hook = serve_in_testbed;
    let serve: Option<launch::ServeHook<'_>> = args.shared.then_some(&mut hook as _);
    match launch::run_served(&spec, program, &args.program[1..], output, serve) {
        Ok(out) => {
            if args.json {
                println!("{}", serde_json::to_string(&out).unwrap());
            } else {
                eprintln!(
                    "barmap run: {} {} in {:.2} s; {} BUG event(s)",
                    program,
                    match (out.exit_code, out.signal) {
                        (Some(c), _) => format!("exited with status {c}"),
                        (_, Some(s)) => format!("killed by signal {s}"),
                        _ => "ended".into(),
                    },
                    out.elapsed_s,
                    out.bugs
                );
            }
            match (out.exit_code, out.signal) {
                (Some(0), _) if out.bugs > 0 => 1,
                (Some(c), _) => c,
                (_, Some(s)) => 128 + s,
                _ => 1,
            }
        }
        Err(e) => {
            eprintln!("barmap run: {e}");
            2
        }
    }
}

/// The devices of the running server at `path` (device sockets `path`,
/// `path.1`, ... while they exist), each asked for its IDs and BARs.
fn joined_devices(path: &Path, policy: Policy) -> Result<Vec<DeviceSpec>, String> {
    let mut out = Vec::new();
    for i in 0.. {
        let socket = barmap_server::device_socket(path, i);
        let is_socket = std::fs::metadata(&socket)
            .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            .unwrap_or(false);
        if !is_socket {
            if i == 0 {
                return Err("no device socket there".into());
            }
            break;
        }
        let text = format!("{}{}", barmap_front::spec::REMOTE_PREFIX, socket.display());
        let mut d = DeviceSpec::parse(&text, policy)?;
        d.served_ids = Some(barmap_front::remote::ask_ids(&socket)?);
        d.served = d.remote_socket().map(str::to_string);
        out.push(d);
    }
    Ok(out)
}

/// Stops the run's own server when dropped.
struct Hosted(Arc<Server>);

impl Drop for Hosted {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// `barmap run --shared`: a device server in this process for the run's
/// devices, its sockets in the testbed `dir` (`dir/vfio-user.sock`, `.1`,
/// ..., control `.ctl`: 0600 in a 0700 directory); devices given as
/// `vfio-user:PATH` stay the other server's.
#[allow(clippy::type_complexity)]
pub(crate) fn serve_in_testbed(
    dir: &Path,
    spec: &RunSpec,
) -> Result<(RunSpec, Box<dyn std::any::Any>), String> {
    let base = dir.join("vfio-user.sock");
    let mut configs = Vec::new();
    let mut served = spec.clone();
    for d in served.devices.iter_mut() {
        if d.remote_socket().is_some() {
            continue;
        }
        let model = d.model_in(Some(dir))?;
        let socket = barmap_server::device_socket(&base, configs.len());
        configs.push(DeviceConfig {
            name: d.bdf.clone(),
            model,
            exclusive: false,
        });
        d.served = Some(socket.display().to_string());
    }
    let server = Server::new(&base, configs).map_err(|e| e.to_string())?;
    server.start().map_err(|e| e.to_string())?;
    served.locks = Some(server.locks().display().to_string());
    Ok((served, Box::new(Hosted(server))))
}
