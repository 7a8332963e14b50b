//! `barmap selftests-build [--json] [--cache DIR]`: fetches Debian's
//! `linux-source-7.3` and builds the kernel's VFIO selftests, unmodified,
//! into the cache (see `barmap_guest::selftests`); prints where the binaries
//! are.

use std::path::PathBuf;
use std::time::Instant;

use barmap_guest::selftests;

/// Arguments of `barmap selftests-build`.
#[derive(clap::Args, Debug)]
pub struct SelftestsBuildArgs {
    /// Print one JSON object: {"dir", "version", "kernel", "binaries",
    /// "built", "elapsed_s"}.
    #[arg(long)]
    pub json: bool,
    /// Cache directory (default: $BARMAP_CACHE or $HOME/.cache/barmap/guest).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// Runs the build; returns the process exit code (0 on success).
pub fn run(args: &SelftestsBuildArgs) -> i32 {
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(barmap_guest::util::default_cache_dir);
    let start = Instant::now();
    let mut progress = |line: &str| eprintln!("barmap selftests-build: {line}");
    match selftests::build_vfio_selftests(&cache, &mut progress) {
        Ok(b) => {
            let elapsed = start.elapsed().as_secs_f64();
            if args.json {
                let names: Vec<&str> = selftests::BINARIES.to_vec();
                let v = serde_json::json!({
                    "dir": b.dir,
                    "version": b.version,
                    "kernel": b.kernel,
                    "binaries": names,
                    "built": b.built,
                    "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
                });
                println!("{v}");
            } else {
                println!("{}", b.dir.display());
                eprintln!(
                    "barmap selftests-build: {} binaries from {} {} ({}, {:.1} s)",
                    b.binaries.len(),
                    selftests::PACKAGE,
                    b.version,
                    if b.built { "built" } else { "cached" },
                    elapsed
                );
            }
            0
        }
        Err(e) => {
            eprintln!("barmap selftests-build: {e}");
            1
        }
    }
}
