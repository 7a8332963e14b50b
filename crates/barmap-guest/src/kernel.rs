//! The guest kernels: Debian's 6.1, 6.12 and 7.3 cloud kernels, 6.1 with
//! the seed's bug rebuilt into vfio-pci, or a user's own kernel.

use crate::apt::{self, Apt};
use crate::util::{Error, Result};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// Which kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelChoice {
    /// Debian bookworm's cloud kernel (the 5.14 fault-path design).
    Stock61,
    /// Debian's 6.12 cloud kernel from bookworm-backports (huge faults).
    Stock612,
    /// Debian's 7.3 cloud kernel from trixie-backports (the newest Debian
    /// kernel; like every Debian amd64 flavour, without CONFIG_IOMMUFD).
    Stock73,
    /// Debian's 6.1 with vfio-pci rebuilt with the seed's fix reverted.
    SeedBug,
    /// A directory with a bzImage (or vmlinuz*) and its modules.
    Path(PathBuf),
}

impl FromStr for KernelChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "6.1" => KernelChoice::Stock61,
            "6.12" => KernelChoice::Stock612,
            "7.3" => KernelChoice::Stock73,
            "seed-bug" => KernelChoice::SeedBug,
            p if Path::new(p).exists() => KernelChoice::Path(PathBuf::from(p)),
            other => {
                return Err(format!(
                "unknown kernel {other:?}: use 6.1, 6.12, 7.3, seed-bug or an existing directory"
            ))
            }
        })
    }
}

impl KernelChoice {
    /// The label used in reports.
    pub fn label(&self) -> String {
        match self {
            KernelChoice::Stock61 => "6.1".into(),
            KernelChoice::Stock612 => "6.12".into(),
            KernelChoice::Stock73 => "7.3".into(),
            KernelChoice::SeedBug => "seed-bug".into(),
            KernelChoice::Path(p) => p.display().to_string(),
        }
    }

    /// What a correct harness must see on this kernel.
    pub fn expectation(&self) -> Expectation {
        match self {
            KernelChoice::SeedBug => Expectation::CaughtBug,
            _ => Expectation::Pass,
        }
    }
}

/// What a kernel's run is expected to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expectation {
    /// Every scenario passes and the kernel logs no failure.
    Pass,
    /// The kernel BUGs (the seed's bug) and the run reports it as caught.
    CaughtBug,
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct PreparedKernel {
    /// Report label (6.1, 6.12, seed-bug or the path).
    pub label: String,
    /// The kernel release (ABI name), when known before boot.
    pub release: Option<String>,
    /// The bzImage.
    pub bzimage: PathBuf,
    /// Uncompressed modules in load order.
    pub modules: Vec<PathBuf>,
    /// What the run should show.
    pub expect: Expectation,
}

/// The VFIO modules in load order; missing ones are built in or absent in
/// that release (vfio_virqfd is part of vfio.ko since 6.2).
pub const MODULE_ORDER: [&str; 6] = [
    "irqbypass",
    "vfio",
    "vfio_virqfd",
    "vfio_iommu_type1",
    "vfio_pci_core",
    "vfio_pci",
];

/// Modules that must be found (as files) for a Debian kernel.
const REQUIRED: [&str; 4] = ["vfio", "vfio_iommu_type1", "vfio_pci_core", "vfio_pci"];

/// Source entries for Debian bookworm (main, updates, security) on the
/// host's mirror.
pub fn bookworm_sources() -> Result<Vec<String>> {
    let (main, security) = apt::host_mirrors()?;
    let mut s = vec![
        format!("{main} bookworm main"),
        format!("{main} bookworm-updates main"),
    ];
    if let Some(sec) = security {
        s.push(format!("{sec} bookworm-security main"));
    }
    Ok(s)
}

/// Fetches, unpacks and prepares `choice` under `cache`.
pub fn prepare(choice: &KernelChoice, cache: &Path) -> Result<PreparedKernel> {
    match choice {
        KernelChoice::Stock61 => debian_kernel(cache, "bookworm", bookworm_sources()?, choice),
        KernelChoice::Stock612 => {
            let (main, _) = apt::host_mirrors()?;
            let sources = vec![format!("{main} bookworm-backports main")];
            debian_kernel(cache, "bookworm-backports", sources, choice)
        }
        KernelChoice::Stock73 => {
            let sources = crate::selftests::sources()?;
            debian_kernel(cache, crate::selftests::SUITE, sources, choice)
        }
        KernelChoice::SeedBug => {
            for (tool, pkg) in [("gcc-12", "gcc-12"), ("make", "make"), ("patch", "patch")] {
                apt::ensure_host_tool(tool, pkg)?;
            }
            let mut k = debian_kernel(cache, "bookworm", bookworm_sources()?, choice)?;
            let apt = Apt::new(&cache.join("apt").join("bookworm"), &bookworm_sources()?)?;
            let release = k.release.clone().unwrap_or_default();
            let rebuilt = crate::seedbug::build(&apt, cache, &release)?;
            for m in k.modules.iter_mut() {
                let stem = module_stem(m);
                if let Some(r) = rebuilt.iter().find(|r| module_stem(r) == stem) {
                    *m = r.clone();
                }
            }
            Ok(k)
        }
        KernelChoice::Path(dir) => user_kernel(dir, cache, choice),
    }
}

fn debian_kernel(
    cache: &Path,
    suite: &str,
    sources: Vec<String>,
    choice: &KernelChoice,
) -> Result<PreparedKernel> {
    let apt = Apt::new(&cache.join("apt").join(suite), &sources)?;
    apt.update()?;
    let image = apt.resolve_dependency("linux-image-cloud-amd64", "linux-image-")?;
    let release = image.trim_start_matches("linux-image-").to_string();
    let deb = apt.download(&image, None)?;
    let root = cache.join("kernels").join(&release);
    apt::unpack(&deb, &root)?;
    let find = |root: &Path| {
        [
            root.join("boot").join(format!("vmlinuz-{release}")),
            root.join("usr/boot").join(format!("vmlinuz-{release}")),
            root.join("usr/lib/modules").join(&release).join("vmlinuz"),
        ]
        .into_iter()
        .find(|p| p.is_file())
    };
    if find(&root).is_none() {
        // Since 7.x the image package is empty: the kernel is in
        // linux-binary-REL and the modules in linux-modules-REL.
        for part in ["linux-binary-", "linux-modules-"] {
            let d = apt.download(&format!("{part}{release}"), None)?;
            apt::unpack(&d, &root)?;
        }
    }
    let bzimage = find(&root)
        .ok_or_else(|| Error::msg(format!("no vmlinuz-{release} in {}", deb.display())))?;
    let modules = collect_modules(
        &root,
        &cache.join("kernels").join(format!("{release}.plain")),
    )?;
    for req in REQUIRED {
        if !modules.iter().any(|m| module_stem(m) == req) {
            return Err(Error::msg(format!(
                "{req}.ko not found in {}",
                deb.display()
            )));
        }
    }
    Ok(PreparedKernel {
        label: choice.label(),
        release: Some(release),
        bzimage,
        modules,
        expect: choice.expectation(),
    })
}

fn user_kernel(dir: &Path, cache: &Path, choice: &KernelChoice) -> Result<PreparedKernel> {
    let candidates = [
        dir.join("bzImage"),
        dir.join("arch/x86/boot/bzImage"),
        dir.join("boot/bzImage"),
    ];
    let bzimage = candidates
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| find_vmlinuz(dir).or_else(|| find_vmlinuz(&dir.join("boot"))))
        .ok_or_else(|| Error::msg(format!("no bzImage or vmlinuz* in {}", dir.display())))?;
    let key = dir.canonicalize()?.display().to_string().replace('/', "_");
    let modules = collect_modules(dir, &cache.join("kernels").join(format!("user{key}.plain")))?;
    Ok(PreparedKernel {
        label: choice.label(),
        release: None,
        bzimage,
        modules,
        expect: choice.expectation(),
    })
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz"))
        })
        .collect();
    v.sort();
    v.pop()
}

/// "vfio-pci-core.ko.xz" -> "vfio_pci_core".
pub fn module_stem(p: &Path) -> String {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let stem = name.split(".ko").next().unwrap_or(name);
    stem.replace('-', "_")
}

/// Finds the VFIO modules under `root` (not following symlinks) and returns
/// them in load order, decompressing .ko.xz/.ko.zst/.ko.gz into `plain`.
pub fn collect_modules(root: &Path, plain: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && MODULE_ORDER.contains(&module_stem(&p).as_str()) {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if n.contains(".ko") {
                    found.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    for name in MODULE_ORDER {
        let Some(p) = found.iter().find(|p| module_stem(p) == name) else {
            continue;
        };
        out.push(decompress_module(p, plain)?);
    }
    Ok(out)
}

fn decompress_module(p: &Path, plain: &Path) -> Result<PathBuf> {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let tool = if name.ends_with(".ko") {
        return Ok(p.to_path_buf());
    } else if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        return Err(Error::msg(format!(
            "unknown module compression: {}",
            p.display()
        )));
    };
    fs::create_dir_all(plain)?;
    let dest = plain.join(format!("{}.ko", name.split(".ko").next().unwrap_or(name)));
    if fs::metadata(&dest).map_or(true, |m| m.len() == 0) {
        let out = Command::new(tool)
            .arg("-dc")
            .arg(p)
            .output()
            .map_err(|e| Error::msg(format!("{tool} -dc {}: {e}", p.display())))?;
        if !out.status.success() || out.stdout.is_empty() {
            return Err(Error::msg(format!(
                "{tool} -dc {}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let tmp = dest.with_extension("tmp");
        fs::write(&tmp, &out.stdout)?;
        fs::rename(&tmp, &dest)?;
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_choices_parse_and_unknown_names_are_rejected() {
        assert_eq!("6.1".parse::<KernelChoice>(), Ok(KernelChoice::Stock61));
        assert_eq!("6.12".parse::<KernelChoice>(), Ok(KernelChoice::Stock612));
        assert_eq!("7.3".parse::<KernelChoice>(), Ok(KernelChoice::Stock73));
        assert_eq!(
            "seed-bug".parse::<KernelChoice>(),
            Ok(KernelChoice::SeedBug)
        );
        assert!("5.4".parse::<KernelChoice>().is_err());
        assert_eq!(KernelChoice::SeedBug.expectation(), Expectation::CaughtBug);
    }

    #[test]
    fn module_stems_ignore_dashes_and_compression() {
        assert_eq!(
            module_stem(Path::new("a/vfio-pci-core.ko.xz")),
            "vfio_pci_core"
        );
        assert_eq!(
            module_stem(Path::new("vfio_iommu_type1.ko")),
            "vfio_iommu_type1"
        );
    }

    #[test]
    fn modules_are_collected_in_load_order() {
        let dir = std::env::temp_dir().join(format!("barmap-guest-mods-{}", std::process::id()));
        let sub = dir.join("kernel/drivers/vfio/pci");
        fs::create_dir_all(&sub).unwrap();
        for n in [
            "vfio-pci.ko",
            "vfio-pci-core.ko",
            "../vfio.ko",
            "../vfio_iommu_type1.ko",
            "../../../unrelated.ko",
        ] {
            fs::write(sub.join(n), b"x").unwrap();
        }
        let mods = collect_modules(&dir, &dir.join("plain")).unwrap();
        let stems: Vec<String> = mods.iter().map(|m| module_stem(m)).collect();
        assert_eq!(
            stems,
            ["vfio", "vfio_iommu_type1", "vfio_pci_core", "vfio_pci"]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
