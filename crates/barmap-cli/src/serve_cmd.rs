//! `barmap serve`: barmap's devices served over vfio-user to other
//! processes (QEMU's `vfio-user-pci`, barmap's own client), with a control
//! socket for `barmap ctl` (see `barmap_server`).

use std::path::PathBuf;

use barmap::Policy;
use barmap_front::spec::DeviceSpec;
use barmap_server::{DeviceConfig, Server};

/// Arguments of `barmap serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The vfio-user socket of the first device (`PATH.1`, `PATH.2`... for
    /// the next ones, `PATH.ctl` for control). Created mode 0600; its
    /// directory must be owned by the caller and writable by nobody else.
    #[arg(long)]
    socket: PathBuf,
    /// A device, as `barmap run --device` takes it (`default[,memory=SIZE]`,
    /// `edu`, `ioat[,xfercap=N]`, `igb[,mac=...]`, a .toml file), plus
    /// `exclusive=on` to refuse a second client while one is connected;
    /// repeat for more (default: one default device).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Print the sockets as one JSON object on stdout once listening.
    #[arg(long)]
    json: bool,
}

/// Splits `exclusive=on|off` out of a device spec.
fn split_exclusive(text: &str) -> Result<(String, bool), String> {
    let mut exclusive = false;
    let mut rest = Vec::new();
    for part in text.split(',') {
        match part.trim().split_once('=') {
            Some(("exclusive", v)) => {
                exclusive = match v {
                    "on" | "1" | "true" => true,
                    "off" | "0" | "false" => false,
                    _ => return Err(format!("exclusive={v}: not on or off")),
                }
            }
            _ => rest.push(part),
        }
    }
    Ok((rest.join(","), exclusive))
}

/// Runs the server until SIGINT or SIGTERM; exit status 0, or 2 if it
/// could not start.
pub fn run(args: &ServeArgs) -> i32 {
    let texts = if args.devices.is_empty() {
        vec!["default".to_string()]
    } else {
        args.devices.clone()
    };
    // Before any thread exists, so that every thread inherits the mask and
    // the signals wait for sigwait below.
    let signals = block_signals();
    let mut configs = Vec::new();
    for t in &texts {
        let made = split_exclusive(t).and_then(|(spec, exclusive)| {
            let d = DeviceSpec::parse(&spec, Policy::default())?;
            Ok(DeviceConfig {
                name: t.clone(),
                model: d.model()?,
                exclusive,
            })
        });
        match made {
            Ok(c) => configs.push(c),
            Err(e) => {
                eprintln!("barmap serve: --device {t}: {e}");
                return 2;
            }
        }
    }
    let server = match Server::new(&args.socket, configs).and_then(|s| s.start().map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("barmap serve: {e}");
            return 2;
        }
    };
    let sockets: Vec<String> = (0..server.devices().len())
        .map(|i| server.socket(i).display().to_string())
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"sockets": sockets, "control": server.control().display().to_string()})
        );
    } else {
        for (i, s) in sockets.iter().enumerate() {
            println!("barmap serve: device {i} ({}) on {s}", texts[i]);
        }
        println!("barmap serve: control on {}", server.control().display());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let signal = wait_for(&signals);
    eprintln!("barmap serve: signal {signal}: stopping");
    server.stop();
    0
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and every
/// thread it creates later); returns the set for [`wait_for`].
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset; blocking
    // signals has no other effect than deferring them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the blocked signals of `set`; returns its number.
fn wait_for(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: set is a valid, initialised signal set; sig is a local.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
