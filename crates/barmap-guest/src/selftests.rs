//! The kernel's VFIO selftests (`tools/testing/selftests/vfio`), fetched
//! from Debian's `linux-source-7.3` (trixie-backports) and built unmodified
//! into the cache, as real VFIO-uAPI clients for barmap's emulated devices.
//!
//! [`build_vfio_selftests`] downloads the package with a private apt (see
//! [`crate::apt`]), unpacks the source tarball (leaving out the parts the
//! selftests do not need, see [`EXCLUDED_DIRS`]), runs `make headers` at the
//! top of the tree and then `make -C tools/testing/selftests/vfio
//! OUTPUT=...`. The binaries are dynamically linked against glibc and
//! libuuid, so that an `LD_PRELOAD` library reaches their libc calls.
//!
//! Layout under the cache (`$BARMAP_CACHE`, default
//! `$HOME/.cache/barmap/guest`):
//!
//! ```text
//! apt/trixie-backports/           private apt lists and the .deb
//! selftests/linux-source-<ver>/   the unpacked tree (with `make headers` done)
//! selftests/vfio-<ver>/           OUTPUT: the seven binaries and their objects
//! ```
//!
//! A completed step leaves a stamp file holding the package version, so a
//! second call with a warm cache only checks the stamps and the binaries.

use crate::apt::{self, Apt};
use crate::util::{run, run_output, Error, Result};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian source package of the kernel whose selftests are built
/// (7.2's copy does not build: it calls `calloc_assert`, never defined).
pub const PACKAGE: &str = "linux-source-7.3";

/// The Debian suite that carries [`PACKAGE`].
pub const SUITE: &str = "trixie-backports";

/// The selftest binaries `make -C tools/testing/selftests/vfio` produces
/// (`TEST_GEN_PROGS` of its Makefile).
pub const BINARIES: [&str; 7] = [
    "vfio_dma_mapping_test",
    "vfio_dma_mapping_mmio_test",
    "vfio_iommufd_setup_test",
    "vfio_pci_device_test",
    "vfio_pci_device_init_perf_test",
    "vfio_pci_driver_test",
    "vfio_pci_sriov_uapi_test",
];

/// Top-level directories of the source tree that are not unpacked: neither
/// `make headers` nor the selftests read them (the selftests' `lib/drivers`
/// symlink into `drivers/dma` and `drivers/net/ethernet/intel/igb`, so
/// `drivers` stays). Other architectures are left out too (see
/// [`KEPT_ARCH`]).
pub const EXCLUDED_DIRS: [&str; 6] = ["Documentation", "sound", "fs", "net", "samples", "rust"];

/// The only architecture directory unpacked under `arch/`.
pub const KEPT_ARCH: &str = "x86";

/// Host packages the build needs: (what is checked, package). A leading
/// `/` names a file that must exist, anything else a command on `PATH`.
/// `make headers` needs only make and a C compiler (no flex, bison, bc or
/// rsync); the selftests link with `-luuid`.
pub const HOST_DEPS: [(&str, &str); 6] = [
    ("make", "make"),
    ("gcc", "gcc"),
    ("xz", "xz-utils"),
    ("dpkg-deb", "dpkg"),
    ("/usr/include/stdio.h", "libc6-dev"),
    ("/usr/include/uuid/uuid.h", "uuid-dev"),
];

/// A finished build of the VFIO selftests.
#[derive(Debug, Clone, Serialize)]
pub struct SelftestBuild {
    /// The directory holding the seven binaries (the make `OUTPUT`).
    pub dir: PathBuf,
    /// The Debian version of [`PACKAGE`] the binaries were built from.
    pub version: String,
    /// The upstream kernel version of that package (`7.3.4`).
    pub kernel: String,
    /// The unpacked kernel source tree (the selftests' sources are under
    /// `tools/testing/selftests/vfio`).
    pub source: PathBuf,
    /// The binaries' full paths, in [`BINARIES`] order.
    pub binaries: Vec<PathBuf>,
    /// Whether anything was built by this call (false: the cache was warm).
    pub built: bool,
}

/// Source entries for [`SUITE`] on the host's Debian mirror.
pub fn sources() -> Result<Vec<String>> {
    let (main, _) = apt::host_mirrors()?;
    Ok(vec![format!("{main} {SUITE} main")])
}

/// The upstream kernel version in a Debian package version
/// (`7.3.4-1~bpo13+1` -> `7.3.4`), or `None` if it does not look like one.
pub fn upstream_version(debian: &str) -> Option<&str> {
    let v = debian.split_once(':').map_or(debian, |(_, v)| v);
    let v = v.split(['-', '~', '+']).next()?;
    let ok = !v.is_empty()
        && v.split('.').count() >= 2
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(v)
}

/// A version as a file-name component (`:` and `~` replaced).
pub fn version_dir_component(debian: &str) -> String {
    debian.replace([':', '~', '/'], "_")
}

/// The tar arguments that leave out [`EXCLUDED_DIRS`] and every `arch/`
/// subdirectory but [`KEPT_ARCH`] from a tarball whose top directory is
/// `top` (`arch` entries are given as exclusions of the known architectures
/// listed in `arches`).
pub fn tar_excludes(top: &str, arches: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = EXCLUDED_DIRS
        .iter()
        .map(|d| format!("--exclude={top}/{d}"))
        .collect();
    v.extend(
        arches
            .iter()
            .filter(|a| **a != KEPT_ARCH)
            .map(|a| format!("--exclude={top}/arch/{a}")),
    );
    v
}

/// Architecture directories of the kernel tree (those of 7.3), used to
/// leave all but [`KEPT_ARCH`] out of the unpack.
pub const ARCHES: [&str; 21] = [
    "alpha",
    "arc",
    "arm",
    "arm64",
    "csky",
    "hexagon",
    "loongarch",
    "m68k",
    "microblaze",
    "mips",
    "nios2",
    "openrisc",
    "parisc",
    "powerpc",
    "riscv",
    "s390",
    "sh",
    "sparc",
    "um",
    "x86",
    "xtensa",
];

fn stamp_ok(path: &Path, version: &str) -> bool {
    fs::read_to_string(path).ok().as_deref() == Some(version)
}

fn step<T>(name: &str, r: Result<T>) -> Result<T> {
    r.map_err(|e| e.context(&format!("selftests: {name}")))
}

/// Installs a host package with apt-get when the file or command it
/// provides is missing (see [`HOST_DEPS`]).
pub fn ensure_host_deps(progress: &mut dyn FnMut(&str)) -> Result<()> {
    let present = |what: &str| {
        if what.starts_with('/') {
            Path::new(what).exists()
        } else {
            apt::which(what).is_some()
        }
    };
    let missing: Vec<&str> = HOST_DEPS
        .iter()
        .filter(|(what, _)| !present(what))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    progress(&format!("installing {}", missing.join(" ")));
    let mut c = Command::new("apt-get");
    c.args(["-q", "-y", "install", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    if run(&mut c).is_err() {
        run(Command::new("apt-get").args(["-q", "update"]))?;
        run(&mut c)?;
    }
    if let Some((what, pkg)) = HOST_DEPS.iter().find(|(what, _)| !present(what)) {
        return Err(Error::msg(format!("{what} missing after installing {pkg}")));
    }
    Ok(())
}

/// Fetches `linux-source-7.3` and builds the VFIO selftests under `cache`;
/// returns where the binaries are. Idempotent: with a warm cache it only
/// refreshes the private apt lists when older than a day, checks the stamps
/// and the binaries, and returns. `progress` receives one line per step.
/// Errors name the step that failed (`selftests: make headers: ...`).
pub fn build_vfio_selftests(cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<SelftestBuild> {
    let base = cache.join("selftests");
    let apt = step(
        "apt set-up",
        sources().and_then(|s| Apt::new(&cache.join("apt").join(SUITE), &s)),
    )?;
    let version = match apt.update().and_then(|()| apt.candidate_version(PACKAGE)) {
        Ok(v) => v,
        Err(e) => match newest_complete(&base) {
            // Offline, but a build exists: use it.
            Some(b) => {
                progress(&format!("apt unavailable ({e}); using the cached build"));
                return Ok(b);
            }
            None => return Err(e.context(&format!("selftests: apt-get update / {PACKAGE}"))),
        },
    };
    let comp = version_dir_component(&version);
    let source = base.join(format!("linux-source-{comp}"));
    let out = base.join(format!("vfio-{comp}"));
    if let Some(b) = complete(&source, &out, &version) {
        return Ok(b);
    }
    step("host build dependencies", ensure_host_deps(progress))?;

    let tree_stamp = base.join(format!(".linux-source-{comp}.unpacked"));
    if !(stamp_ok(&tree_stamp, &version) && source.join("Makefile").is_file()) {
        progress(&format!("downloading {PACKAGE} {version}"));
        let deb = step("apt-get download", apt.download(PACKAGE, Some(&version)))?;
        progress("unpacking the source tarball");
        step("unpack", unpack_tree(&deb, &base, &source))?;
        fs::write(&tree_stamp, &version)?;
    }
    let headers_stamp = source.join(".barmap-headers");
    if !(stamp_ok(&headers_stamp, &version) && source.join("usr/include/linux/vfio.h").is_file()) {
        progress("make headers");
        let mut c = Command::new("make");
        c.arg("-C")
            .arg(&source)
            .arg(format!("-j{}", jobs()))
            .arg("headers");
        step("make headers", run(&mut c))?;
        fs::write(&headers_stamp, &version)?;
    }
    progress("make -C tools/testing/selftests/vfio");
    // The Makefile writes dependency files into OUTPUT without creating it.
    fs::create_dir_all(&out)?;
    let mut c = Command::new("make");
    c.arg("-C")
        .arg(source.join("tools/testing/selftests/vfio"))
        .arg(format!("-j{}", jobs()))
        .arg(format!("OUTPUT={}", out.display()));
    step("make -C tools/testing/selftests/vfio", run(&mut c))?;
    for b in BINARIES {
        let p = out.join(b);
        if !p.is_file() {
            return Err(Error::msg(format!(
                "selftests: the build left no {}",
                p.display()
            )));
        }
        step("check dynamic linking", check_dynamic(&p))?;
    }
    fs::write(out.join(".barmap-built"), &version)?;
    let mut b = complete(&source, &out, &version)
        .ok_or_else(|| Error::msg("selftests: build finished but its stamp does not check"))?;
    b.built = true;
    Ok(b)
}

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A build that is complete (stamp and every binary present), if any.
fn complete(source: &Path, out: &Path, version: &str) -> Option<SelftestBuild> {
    if !stamp_ok(&out.join(".barmap-built"), version) {
        return None;
    }
    let binaries: Vec<PathBuf> = BINARIES.iter().map(|b| out.join(b)).collect();
    binaries.iter().all(|p| p.is_file()).then(|| SelftestBuild {
        dir: out.to_path_buf(),
        version: version.to_string(),
        kernel: upstream_version(version).unwrap_or(version).to_string(),
        source: source.to_path_buf(),
        binaries,
        built: false,
    })
}

/// The newest complete build under `base` (for use without network).
fn newest_complete(base: &Path) -> Option<SelftestBuild> {
    let mut found: Vec<SelftestBuild> = fs::read_dir(base)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let comp = name.strip_prefix("vfio-")?.to_string();
            let version = fs::read_to_string(e.path().join(".barmap-built")).ok()?;
            complete(
                &base.join(format!("linux-source-{comp}")),
                &e.path(),
                &version,
            )
        })
        .collect();
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    found.pop()
}

/// Unpacks the .deb's `usr/src/linux-source-7.3.tar.xz` into `source`
/// (through a temporary directory, renamed when complete).
fn unpack_tree(deb: &Path, base: &Path, source: &Path) -> Result<()> {
    let tmp = base.join("unpack.tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(tmp.join("deb"))?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(tmp.join("deb")))?;
    let tarball = tmp.join("deb/usr/src").join(format!("{PACKAGE}.tar.xz"));
    if !tarball.is_file() {
        return Err(Error::msg(format!(
            "{} holds no usr/src/{PACKAGE}.tar.xz",
            deb.display()
        )));
    }
    let mut c = Command::new("tar");
    c.arg("-xJf")
        .arg(&tarball)
        .arg("-C")
        .arg(&tmp)
        .args(tar_excludes(PACKAGE, &ARCHES));
    run(&mut c)?;
    fs::remove_dir_all(tmp.join("deb"))?;
    let top = tmp.join(PACKAGE);
    if !top.join("Makefile").is_file() {
        return Err(Error::msg(format!("the tarball has no {PACKAGE}/Makefile")));
    }
    let _ = fs::remove_dir_all(source);
    fs::rename(&top, source)?;
    fs::remove_dir_all(&tmp)?;
    Ok(())
}

/// Fails unless `file` reports a dynamically linked executable: an
/// `LD_PRELOAD` library does not reach a static binary.
pub fn check_dynamic(path: &Path) -> Result<()> {
    let out = run_output(Command::new("file").arg("-L").arg(path))?;
    if is_dynamic_file_output(&out) {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "{} is not dynamically linked: {}",
            path.display(),
            out.trim()
        )))
    }
}

/// Whether a line of `file` output describes a dynamically linked ELF.
pub fn is_dynamic_file_output(s: &str) -> bool {
    s.contains("ELF") && s.contains("dynamically linked") && !s.contains("statically linked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_versions_come_from_debian_versions() {
        assert_eq!(upstream_version("7.3.4-1~bpo13+1"), Some("7.3.4"));
        assert_eq!(upstream_version("1:7.3-2"), Some("7.3"));
        assert_eq!(upstream_version("7"), None);
        assert_eq!(upstream_version("abc-1"), None);
        assert_eq!(version_dir_component("7.3.4-1~bpo13+1"), "7.3.4-1_bpo13+1");
    }

    #[test]
    fn the_unpack_keeps_x86_and_drivers() {
        let ex = tar_excludes(PACKAGE, &ARCHES);
        assert!(ex.contains(&"--exclude=linux-source-7.3/Documentation".to_string()));
        assert!(ex.contains(&"--exclude=linux-source-7.3/arch/arm64".to_string()));
        assert!(!ex.iter().any(|e| e.ends_with("/arch/x86")));
        assert!(!ex.iter().any(|e| e.ends_with("/drivers")));
        assert_eq!(ex.len(), EXCLUDED_DIRS.len() + ARCHES.len() - 1);
    }

    #[test]
    fn file_output_tells_dynamic_from_static() {
        let dynamic = "vfio_pci_device_test: ELF 64-bit LSB pie executable, x86-64, version 1 \
                       (SYSV), dynamically linked, interpreter /lib64/ld-linux-x86-64.so.2";
        let stat = "barmap: ELF 64-bit LSB pie executable, x86-64, static-pie linked";
        let old_static = "x: ELF 64-bit LSB executable, x86-64, statically linked";
        assert!(is_dynamic_file_output(dynamic));
        assert!(!is_dynamic_file_output(stat));
        assert!(!is_dynamic_file_output(old_static));
        assert!(!is_dynamic_file_output("x: POSIX shell script"));
    }

    #[test]
    fn a_warm_cache_is_recognised_without_network() {
        let base = std::env::temp_dir().join(format!("barmap-selftests-{}", std::process::id()));
        let out = base.join("vfio-7.3.4-1_bpo13+1");
        fs::create_dir_all(&out).unwrap();
        for b in BINARIES {
            fs::write(out.join(b), b"x").unwrap();
        }
        assert!(newest_complete(&base).is_none(), "no stamp yet");
        fs::write(out.join(".barmap-built"), "7.3.4-1~bpo13+1").unwrap();
        let b = newest_complete(&base).unwrap();
        assert_eq!(b.version, "7.3.4-1~bpo13+1");
        assert_eq!(b.binaries.len(), 7);
        assert!(!b.built);
        fs::remove_file(out.join("vfio_pci_driver_test")).unwrap();
        assert!(newest_complete(&base).is_none(), "a binary is missing");
        fs::remove_dir_all(&base).unwrap();
    }
}
