//! The `seed-bug` kernel: Debian's 6.1 with drivers/vfio/pci rebuilt out of
//! tree from linux-source-6.1 against the matching headers, with the
//! test-only patch under `guest/patches/` applied (the seed's fix reverted).

use crate::apt::{self, Apt};
use crate::util::{run, Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The test-only kernel patch (GPL-2.0, the kernel's licence), embedded so
/// that the barmap binary needs no source tree at run time.
pub const PATCH: &str =
    include_str!("../guest/patches/0001-seed-bug-revert-vfio-pci-concurrent-fault-fix.patch");

/// The modules the rebuild produces.
const OUTPUTS: [&str; 2] = ["vfio-pci-core.ko", "vfio-pci.ko"];

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Builds (or reuses) the patched vfio-pci modules for kernel `release`.
pub fn build(apt: &Apt, cache: &Path, release: &str) -> Result<Vec<PathBuf>> {
    let work = cache.join("seed-bug").join(release);
    let out_dir = work.join("modules");
    let stamp = work.join("built-with");
    let key = format!("{release} patch {:016x}\n", fnv1a(PATCH.as_bytes()));
    let outputs: Vec<PathBuf> = OUTPUTS.iter().map(|n| out_dir.join(n)).collect();
    if fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str())
        && outputs.iter().all(|p| p.is_file())
    {
        return Ok(outputs);
    }
    eprintln!("barmap guest: building seed-bug vfio-pci for {release}");
    let headers_pkg = format!("linux-headers-{release}");
    let image_version = apt.candidate_version(&format!("linux-image-{release}"))?;
    let common = apt.resolve_dependency(&headers_pkg, "linux-headers-")?;
    let kbuild = apt.resolve_dependency(&headers_pkg, "linux-kbuild-")?;
    let series = kbuild.trim_start_matches("linux-kbuild-").to_string();
    let source_pkg = format!("linux-source-{series}");

    // Headers, common headers and kbuild in one private root; their links
    // are relative, except the Makefile's include of the common headers.
    let root = work.join("root");
    for pkg in [&headers_pkg, &common, &kbuild] {
        let deb = apt.download(pkg, Some(&image_version))?;
        apt::unpack(&deb, &root.join(pkg))?;
        copy_tree(&root.join(pkg), &root.join("merged"))?;
    }
    let merged = root.join("merged");
    let kdir = merged.join("usr/src").join(&headers_pkg);
    let makefile = kdir.join("Makefile");
    let text = fs::read_to_string(&makefile)?;
    let fixed = text.replace(
        "include /usr/src/",
        &format!("include {}/usr/src/", merged.display()),
    );
    fs::write(&makefile, fixed)?;

    // The vfio/pci sources from linux-source, straight out of the .deb.
    let src_deb = apt.download(&source_pkg, Some(&image_version))?;
    let tree = work.join("src");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;
    let top = format!("linux-source-{series}");
    let script = format!(
        "dpkg-deb --fsys-tarfile \"$1\" | tar -xO ./usr/src/{top}.tar.xz | tar -xJ -C \"$2\" {top}/drivers/vfio/pci"
    );
    run(Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(&src_deb)
        .arg(&tree))
    .map_err(|e| e.context("extracting drivers/vfio/pci from linux-source"))?;
    let srcroot = tree.join(&top);
    let patch_file = work.join("seed-bug.patch");
    fs::write(&patch_file, PATCH)?;
    run(Command::new("patch")
        .args(["-p1", "--forward", "--batch", "-i"])
        .arg(&patch_file)
        .current_dir(&srcroot))
    .map_err(|e| e.context("applying the seed-bug patch"))?;

    let moddir = srcroot.join("drivers/vfio/pci");
    run(Command::new("make")
        .arg("-C")
        .arg(&kdir)
        .arg(format!("M={}", moddir.display()))
        .args(["-j2", "modules"]))
    .map_err(|e| e.context("building vfio-pci out of tree (needs gcc and make)"))?;
    fs::create_dir_all(&out_dir)?;
    for (name, dest) in OUTPUTS.iter().zip(&outputs) {
        fs::copy(moddir.join(name), dest)
            .map_err(|e| Error::msg(format!("{name} was not built: {e}")))?;
    }
    fs::write(stamp, key)?;
    Ok(outputs)
}

/// Copies a tree, recreating symlinks as symlinks (cp -a semantics).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to))
}
