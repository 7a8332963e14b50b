//! `barmap run`: an unmodified VFIO program on barmap's emulated devices
//! (see `barmap_front::launch`).

use barmap::Policy;
use barmap_front::launch;
use barmap_front::spec::{DeviceSpec, RunSpec};

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
    for t in &texts {
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
    let spec = RunSpec::new(devices);
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
    match launch::run_with(&spec, program, &args.program[1..], output) {
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
