//! `barmap ctl`: drives a `barmap serve` from outside through its control
//! socket: lists devices and the clients that hold them, clears and sets
//! COMMAND.MEM, resets, enters D3hot, requests removal, reads counters
//! and BUG events.

use std::path::PathBuf;

use barmap_server::control::{request, Request};

/// Arguments of `barmap ctl`.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The server's `--socket PATH` (the control socket is `PATH.ctl`), or
    /// the control socket itself.
    #[arg(long)]
    socket: PathBuf,
    /// Which device (its index in `barmap serve --device` order).
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
    /// `list`, `command-mem on|off`, `reset`, `d3hot`, `d0`, `remove`,
    /// `stats`.
    #[arg(required = true, num_args = 1..=2)]
    command: Vec<String>,
}

/// Sends the command; exit status 0 if the server did it, 1 if it refused,
/// 2 if it could not be reached.
pub fn run(args: &CtlArgs) -> i32 {
    let path = if args.socket.to_string_lossy().ends_with(".ctl") {
        args.socket.clone()
    } else {
        barmap_server::control_socket(&args.socket)
    };
    let on = match (
        args.command[0].as_str(),
        args.command.get(1).map(String::as_str),
    ) {
        ("command-mem", Some("on")) => Some(true),
        ("command-mem", Some("off")) => Some(false),
        ("command-mem", _) => {
            eprintln!("barmap ctl: command-mem takes on or off");
            return 2;
        }
        (_, None) => None,
        (c, Some(x)) => {
            eprintln!("barmap ctl: {c} takes no argument {x:?}");
            return 2;
        }
    };
    let req = Request {
        cmd: args.command[0].clone(),
        device: args.device,
        on,
    };
    let answer = match request(&path, &req) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("barmap ctl: {}: {e}", path.display());
            return 2;
        }
    };
    let ok = answer["ok"].as_bool() == Some(true);
    if args.json {
        println!("{answer}");
    } else if !ok {
        eprintln!(
            "barmap ctl: {}",
            answer["error"].as_str().unwrap_or("failed")
        );
    } else if req.cmd == "list" {
        for d in answer["devices"].as_array().into_iter().flatten() {
            println!(
                "device {} {} [{}] on {}: COMMAND {:#06x}, memory {}{}{}",
                d["index"],
                d["name"].as_str().unwrap_or(""),
                d["id"].as_str().unwrap_or(""),
                d["socket"].as_str().unwrap_or(""),
                d["command"].as_u64().unwrap_or(0),
                if d["memory_enabled"].as_bool() == Some(true) {
                    "enabled"
                } else {
                    "disabled"
                },
                if d["revoked"].as_bool() == Some(true) {
                    ", BARs revoked"
                } else {
                    ""
                },
                if d["removed"].as_bool() == Some(true) {
                    ", removed"
                } else {
                    ""
                },
            );
            for c in d["clients"].as_array().into_iter().flatten() {
                println!(
                    "  client {}: pid {} uid {} gid {}",
                    c["id"], c["pid"], c["uid"], c["gid"]
                );
            }
        }
    } else if req.cmd == "stats" {
        println!("device: {}", answer["device"]);
        println!("host:   {}", answer["host"]);
        println!("barmap: {}", answer["barmap"]);
        println!("bugs:   {}", answer["bugs"]);
    } else {
        let mut a = answer.clone();
        if let Some(o) = a.as_object_mut() {
            o.remove("ok");
        }
        println!("barmap ctl: {} done {a}", args.command.join(" "));
    }
    if ok {
        0
    } else {
        1
    }
}
