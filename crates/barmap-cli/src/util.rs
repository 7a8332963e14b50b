//! Small helpers shared by the subcommands.

use std::path::{Path, PathBuf};

pub use barmap_front::spec::parse_size;

/// How many earlier runs' log directories a command keeps beside the new one.
const KEPT_RUNS: usize = 8;

/// A fresh directory for one run's logs, `cache/what/SECONDS-PID-N` (0700,
/// made here, never one that exists: two runs at once, or a planted
/// directory, never share or reuse logs), with all but the newest
/// [`KEPT_RUNS`] earlier ones removed.
pub fn run_log_dir(cache: &Path, what: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = cache.join(what);
    std::fs::create_dir_all(&parent)?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = loop {
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("{secs}-{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            other => break other.map(|()| dir)?,
        }
    };
    let mut old: Vec<(u64, PathBuf)> = std::fs::read_dir(&parent)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path() != dir && e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (t, rest) = name.split_once('-')?;
            rest.split('-').next()?.parse::<u32>().ok()?;
            Some((t.parse().ok()?, e.path()))
        })
        .collect();
    old.sort();
    let excess = old.len().saturating_sub(KEPT_RUNS);
    for (_, path) in old.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(path);
    }
    Ok(dir)
}

/// The first word of page `page` of the memory BAR, as the CLI writes it.
pub fn pattern(page: usize) -> u64 {
    0x5eed_0000_0000_0000 | page as u64
}

/// Writes [`pattern`] into the first word of every page of `len` bytes of
/// `region`, in one region write (fast, and through the device, not a map).
pub fn write_pattern(device: &barmap::Device, region: u32, len: usize) -> barmap::Result<()> {
    let mut buf = vec![0u8; len];
    for page in 0..len / 4096 {
        buf[page * 4096..page * 4096 + 8].copy_from_slice(&pattern(page).to_le_bytes());
    }
    device.write_region(region, 0, &buf)
}

#[cfg(test)]
mod tests {
    use super::{parse_size, run_log_dir, KEPT_RUNS};

    #[test]
    fn each_run_gets_its_own_log_directory_and_old_ones_are_pruned() {
        let root = std::env::temp_dir().join(format!("barmap-log-dirs-{}", std::process::id()));
        std::fs::create_dir(&root).unwrap();
        let cache = Cache(root);
        let a = run_log_dir(cache.path(), "logs").unwrap();
        let b = run_log_dir(cache.path(), "logs").unwrap();
        assert_ne!(a, b);
        for i in 0..KEPT_RUNS + 3 {
            std::fs::create_dir(cache.path().join(format!("logs/{i}-1"))).unwrap();
        }
        std::fs::create_dir(cache.path().join("logs/not-a-run")).unwrap();
        let c = run_log_dir(cache.path(), "logs").unwrap();
        let left: Vec<_> = std::fs::read_dir(cache.path().join("logs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        // The newest KEPT_RUNS earlier runs, the new one, and what is no run.
        assert_eq!(left.len(), KEPT_RUNS + 2, "{left:?}");
        assert!(c.exists() && left.contains(&"not-a-run".to_string()));
        assert!(!left.contains(&"0-1".to_string()));
    }

    /// A directory removed when the test ends.
    struct Cache(std::path::PathBuf);

    impl Cache {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Cache {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3T"), Ok(3 << 40));
        assert!(parse_size("3X").is_err());
        assert!(parse_size("x").is_err());
    }
}
