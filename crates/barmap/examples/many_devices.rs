//! Many devices in one process: builds N default-layout devices (1 MiB
//! memory BAR each) with M mappings each, touches every mapping, disables
//! one device, and prints what it cost: threads, open fds and RSS, as one
//! JSON line.
//!
//! `cargo run --release --example many_devices -p barmap -- 1000 10`

use barmap::{Device, Prot, DEFAULT_MEMORY_BAR};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<(), barmap::Error> {
    let mut args = std::env::args().skip(1);
    let devices: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let per: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let (threads0, fds0, rss0) = (count("/proc/self/task"), count("/proc/self/fd"), rss_kib());
    let started = std::time::Instant::now();
    let mut all = Vec::with_capacity(devices);
    for _ in 0..devices {
        let dev = Device::builder_with_memory(1 << 20).build()?;
        let maps = (0..per)
            .map(|i| {
                dev.map(
                    DEFAULT_MEMORY_BAR,
                    ((i % 16) * 65536) as u64,
                    65536,
                    Prot::ReadWrite,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        for m in &maps {
            m.write_u64(0, 1);
        }
        all.push((dev, maps));
    }
    let built = started.elapsed();
    all[0].0.set_memory_enabled(false);
    let revoked_one = all[0].1.iter().all(|m| m.touch_u64(0).is_err());
    let others_ok = all[1..]
        .iter()
        .all(|(_, maps)| maps[0].touch_u64(0) == Ok(1));
    println!(
        "{{\"devices\":{devices},\"mappings_per_device\":{per},\"threads\":{},\"fds\":{},\"rss_mib\":{:.1},\"build_s\":{:.2},\"disable_revokes_only_its_own\":{}}}",
        count("/proc/self/task") - threads0,
        count("/proc/self/fd") - fds0,
        (rss_kib() - rss0) as f64 / 1024.0,
        built.as_secs_f64(),
        revoked_one && others_ok
    );
    Ok(())
}
