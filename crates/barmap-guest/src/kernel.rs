//! The guest kernels: Debian's 6.1, 6.12, 7.2 and 7.3 cloud kernels (and
//! `latest`, the newest of them), 6.1 with the seed's bug rebuilt into
//! vfio-pci, or a user's own kernel.
//!
//! A user's kernel (`--kernel PATH`) is found in any of the forms a Debian
//! package or a build tree leaves: an unpacked package root (since 7.x the
//! `linux-image-*` package is a meta package: the image is in
//! `linux-binary-*` at `usr/lib/modules/<release>/vmlinuz` and the modules
//! are in `linux-modules-*`; unpack both into one root), a
//! `usr/lib/modules/<release>` directory, a `vmlinuz` file with its modules
//! beside it, or a build tree with `arch/x86/boot/bzImage`. What is missing
//! (the image, a VFIO module or a module it depends on) is an error before
//! anything boots.

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
    /// Debian forky's cloud kernel (7.2).
    Stock72,
    /// Debian's 7.3 cloud kernel from trixie-backports (like every Debian
    /// amd64 flavour, without CONFIG_IOMMUFD).
    Stock73,
    /// The newest Debian cloud kernel of forky and trixie-backports, resolved
    /// from their metapackages when the run starts.
    Latest,
    /// Debian's 6.1 with vfio-pci rebuilt with the seed's fix reverted.
    SeedBug,
    /// A user's kernel: an unpacked package root, a
    /// `usr/lib/modules/<release>` directory, a `vmlinuz` file with its
    /// modules beside it, or a build tree.
    Path(PathBuf),
}

impl FromStr for KernelChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "6.1" => KernelChoice::Stock61,
            "6.12" => KernelChoice::Stock612,
            "7.2" => KernelChoice::Stock72,
            "7.3" => KernelChoice::Stock73,
            "latest" => KernelChoice::Latest,
            "seed-bug" => KernelChoice::SeedBug,
            p if Path::new(p).exists() => KernelChoice::Path(PathBuf::from(p)),
            other => {
                return Err(format!(
                "unknown kernel {other:?}: use 6.1, 6.12, 7.2, 7.3, latest, seed-bug or an existing \
                 path (an unpacked kernel package, a usr/lib/modules/<release> directory or a \
                 vmlinuz file)"
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
            KernelChoice::Stock72 => "7.2".into(),
            KernelChoice::Stock73 => "7.3".into(),
            KernelChoice::Latest => "latest".into(),
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

/// Modules that must be there, as files or built in (`modules.builtin`).
pub const REQUIRED: [&str; 4] = ["vfio", "vfio_iommu_type1", "vfio_pci_core", "vfio_pci"];

/// The Debian suite of forky's kernel (`--kernel 7.2`).
pub const FORKY: &str = "forky";

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
        KernelChoice::Stock72 => debian_kernel(cache, FORKY, forky_sources()?, choice),
        KernelChoice::Stock73 => {
            let sources = crate::selftests::sources()?;
            debian_kernel(cache, crate::selftests::SUITE, sources, choice)
        }
        KernelChoice::Latest => {
            let (suite, sources) = newest_suite(cache)?;
            eprintln!("barmap guest: latest is {suite}'s kernel");
            debian_kernel(cache, suite, sources, choice)
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
    let modules = checked_modules(
        &root,
        &cache.join("kernels").join(format!("{release}.plain")),
    )?;
    Ok(PreparedKernel {
        label: choice.label(),
        release: Some(release),
        bzimage,
        modules,
        expect: choice.expectation(),
    })
}

/// Source entries for Debian forky on the host's mirror.
pub fn forky_sources() -> Result<Vec<String>> {
    let (main, _) = apt::host_mirrors()?;
    Ok(vec![format!("{main} {FORKY} main")])
}

/// The suite whose cloud kernel is the newest: forky or trixie-backports.
fn newest_suite(cache: &Path) -> Result<(&'static str, Vec<String>)> {
    let mut best: Option<(Vec<u64>, &'static str, Vec<String>)> = None;
    let suites = [
        (FORKY, forky_sources()?),
        (crate::selftests::SUITE, crate::selftests::sources()?),
    ];
    for (suite, sources) in suites {
        let apt = Apt::new(&cache.join("apt").join(suite), &sources)?;
        apt.update()?;
        let version = apt.candidate_version("linux-image-cloud-amd64")?;
        let key = version_key(&version);
        eprintln!("barmap guest: {suite}: linux-image-cloud-amd64 {version}");
        if best.as_ref().is_none_or(|(k, _, _)| key > *k) {
            best = Some((key, suite, sources));
        }
    }
    best.map(|(_, s, src)| (s, src))
        .ok_or_else(|| Error::msg("no Debian suite has a cloud kernel"))
}

/// `7.3.4-1~bpo13+1` -> [7, 3, 4]: the upstream version, for comparisons.
pub fn version_key(debian: &str) -> Vec<u64> {
    crate::selftests::upstream_version(debian)
        .unwrap_or("")
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn user_kernel(path: &Path, cache: &Path, choice: &KernelChoice) -> Result<PreparedKernel> {
    let found = locate(path)?;
    let key = found
        .modules_root
        .canonicalize()?
        .display()
        .to_string()
        .replace('/', "_");
    let modules = checked_modules(
        &found.modules_root,
        &cache.join("kernels").join(format!("user{key}.plain")),
    )
    .map_err(|e| e.context(&format!("--kernel {}", path.display())))?;
    Ok(PreparedKernel {
        label: choice.label(),
        release: found.release,
        bzimage: found.image,
        modules,
        expect: choice.expectation(),
    })
}

/// Where a user's kernel image and its modules are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The kernel image (bzImage or vmlinuz).
    pub image: PathBuf,
    /// The tree the VFIO modules are searched in.
    pub modules_root: PathBuf,
    /// The release, where the layout names it (`usr/lib/modules/<release>`).
    pub release: Option<String>,
}

/// Directories under a package root that hold `<release>` directories.
const MODULE_DIRS: [&str; 2] = ["usr/lib/modules", "lib/modules"];

/// Finds the kernel image and the modules' tree of `path`: an unpacked
/// package root, a `usr/lib/modules/<release>` directory, a `vmlinuz` file
/// (modules beside it, or in `../lib/modules/<release>` for
/// `boot/vmlinuz-<release>`), or a build tree. The error says what is
/// missing.
pub fn locate(path: &Path) -> Result<Located> {
    if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let release = name.strip_prefix("vmlinuz-").map(str::to_string);
        // boot/vmlinuz-REL of a package root: its modules are in the root.
        let root_modules = release.as_ref().and_then(|r| {
            MODULE_DIRS
                .iter()
                .map(|m| dir.join("..").join(m).join(r))
                .find(|d| d.is_dir())
        });
        let release = release.or_else(|| {
            (name == "vmlinuz")
                .then(|| dir.file_name().and_then(|n| n.to_str()).map(str::to_string))
                .flatten()
        });
        return Ok(Located {
            image: path.to_path_buf(),
            modules_root: root_modules.unwrap_or(dir),
            release,
        });
    }
    if !path.is_dir() {
        return Err(Error::msg(format!(
            "--kernel {}: neither a file nor a directory",
            path.display()
        )));
    }
    // A build tree or a directory with a bzImage.
    for c in ["bzImage", "arch/x86/boot/bzImage", "boot/bzImage"] {
        if path.join(c).is_file() {
            return Ok(Located {
                image: path.join(c),
                modules_root: path.to_path_buf(),
                release: None,
            });
        }
    }
    // usr/lib/modules/<release> itself.
    if path.join("vmlinuz").is_file() {
        return locate(&path.join("vmlinuz"));
    }
    // A package root: usr/lib/modules/<release>/vmlinuz (7.x linux-binary),
    // or boot/vmlinuz-<release> (6.x linux-image).
    for m in MODULE_DIRS {
        let mut releases: Vec<PathBuf> = fs::read_dir(path.join(m))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("vmlinuz").is_file())
                    .collect()
            })
            .unwrap_or_default();
        releases.sort();
        if let Some(r) = releases.pop() {
            return locate(&r.join("vmlinuz"));
        }
    }
    if let Some(v) = find_vmlinuz(&path.join("boot")).or_else(|| find_vmlinuz(path)) {
        let mut l = locate(&v)?;
        if l.modules_root == path.join("boot") {
            l.modules_root = path.to_path_buf();
        }
        return Ok(l);
    }
    let hint = if MODULE_DIRS.iter().any(|m| path.join(m).is_dir()) {
        "; the modules are there but not the image: since 7.x Debian's kernel is in \
         linux-binary-<release>, not in the linux-image-<release> meta package: unpack \
         linux-binary-<release> into the same directory"
    } else {
        "; since 7.x Debian's kernel is in linux-binary-<release> and its modules in \
         linux-modules-<release> (linux-image-<release> is a meta package): unpack both into \
         one directory"
    };
    Err(Error::msg(format!(
        "--kernel {}: no kernel image (looked for bzImage, arch/x86/boot/bzImage, vmlinuz, \
         usr/lib/modules/<release>/vmlinuz, boot/vmlinuz-<release>){hint}",
        path.display()
    )))
}

/// Module names listed as built in (`modules.builtin`) anywhere under `root`.
fn builtin_modules(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if e.file_name() == "modules.builtin" {
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                out.extend(text.lines().map(|l| module_stem(Path::new(l.trim()))));
            }
        }
    }
    out
}

/// The `depends=` list in a module's `.modinfo` ("irqbypass,vfio").
pub fn module_depends(module: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(at) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &module[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(|d| d.trim().replace('-', "_"))
        .filter(|d| !d.is_empty())
        .collect()
}

/// [`collect_modules`], then checks that every [`REQUIRED`] module and
/// every module they depend on is there (as a file or built in): the error
/// names what is missing.
pub fn checked_modules(root: &Path, plain: &Path) -> Result<Vec<PathBuf>> {
    let modules = collect_modules(root, plain)?;
    let builtin = builtin_modules(root);
    let have = |name: &str| {
        modules.iter().any(|m| module_stem(m) == name) || builtin.iter().any(|b| b == name)
    };
    let mut missing: Vec<String> = REQUIRED
        .iter()
        .filter(|r| !have(r))
        .map(|r| r.to_string())
        .collect();
    for m in &modules {
        let bytes = fs::read(m)?;
        for dep in module_depends(&bytes) {
            if !have(&dep) && !missing.contains(&dep) {
                missing.push(format!("{dep} (needed by {})", module_stem(m)));
            }
        }
    }
    if missing.is_empty() {
        Ok(modules)
    } else {
        Err(Error::msg(format!(
            "VFIO module(s) missing under {}: {} (neither a .ko file nor listed in \
             modules.builtin; since 7.x Debian ships them in linux-modules-<release>)",
            root.display(),
            missing.join(", ")
        )))
    }
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
        assert_eq!("7.2".parse::<KernelChoice>(), Ok(KernelChoice::Stock72));
        assert_eq!("7.3".parse::<KernelChoice>(), Ok(KernelChoice::Stock73));
        assert_eq!("latest".parse::<KernelChoice>(), Ok(KernelChoice::Latest));
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

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!(
                "barmap-guest-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }

        fn file(&self, rel: &str, data: &[u8]) -> PathBuf {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, data).unwrap();
            p
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const REL: &str = "7.3.4+deb13-cloud-amd64";

    /// The VFIO modules of a Debian 7.x linux-modules package, with their
    /// `.modinfo` dependencies, under `dir` (relative to the scratch root).
    fn vfio_modules(s: &Scratch, dir: &str, leave_out: &[&str]) {
        let mods = [
            ("virt/lib/irqbypass.ko", ""),
            ("drivers/vfio/vfio.ko", ""),
            ("drivers/vfio/vfio_iommu_type1.ko", "vfio"),
            ("drivers/vfio/pci/vfio-pci-core.ko", "irqbypass,vfio"),
            ("drivers/vfio/pci/vfio-pci.ko", "vfio-pci-core,vfio"),
        ];
        for (path, deps) in mods {
            if leave_out.iter().any(|l| module_stem(Path::new(path)) == *l) {
                continue;
            }
            let modinfo = format!("license=GPL\0depends={deps}\0name=x\0");
            s.file(&format!("{dir}/kernel/{path}"), modinfo.as_bytes());
        }
    }

    fn prepared(path: &Path) -> Result<PreparedKernel> {
        let cache = path.join(".cache");
        prepare(&KernelChoice::Path(path.to_path_buf()), &cache)
    }

    fn stems(k: &PreparedKernel) -> Vec<String> {
        k.modules.iter().map(|m| module_stem(m)).collect()
    }

    const ALL5: [&str; 5] = [
        "irqbypass",
        "vfio",
        "vfio_iommu_type1",
        "vfio_pci_core",
        "vfio_pci",
    ];

    #[test]
    fn a_7x_package_root_is_found() {
        // linux-binary and linux-modules unpacked into one root.
        let s = Scratch::new("root7");
        let moddir = format!("usr/lib/modules/{REL}");
        let image = s.file(&format!("{moddir}/vmlinuz"), b"kernel");
        vfio_modules(&s, &moddir, &[]);
        s.file("usr/share/doc/linux-image/changelog", b"");
        let k = prepared(&s.0).unwrap();
        assert_eq!(k.bzimage, image);
        assert_eq!(k.release.as_deref(), Some(REL));
        assert_eq!(stems(&k), ALL5);
    }

    #[test]
    fn a_modules_release_directory_is_found() {
        let s = Scratch::new("moddir");
        let moddir = format!("usr/lib/modules/{REL}");
        let image = s.file(&format!("{moddir}/vmlinuz"), b"kernel");
        vfio_modules(&s, &moddir, &[]);
        let k = prepared(&s.0.join(&moddir)).unwrap();
        assert_eq!(k.bzimage, image);
        assert_eq!(k.release.as_deref(), Some(REL));
        assert_eq!(stems(&k), ALL5);
    }

    #[test]
    fn a_vmlinuz_file_with_its_modules_beside_it_is_found() {
        let s = Scratch::new("vmlinuz");
        let image = s.file("k/vmlinuz", b"kernel");
        vfio_modules(&s, "k", &[]);
        let k = prepared(&image).unwrap();
        assert_eq!(k.bzimage, image);
        assert_eq!(stems(&k), ALL5);
    }

    #[test]
    fn a_6x_package_root_with_boot_vmlinuz_is_found() {
        let s = Scratch::new("root6");
        let rel = "6.1.0-56-cloud-amd64";
        let image = s.file(&format!("boot/vmlinuz-{rel}"), b"kernel");
        vfio_modules(&s, &format!("lib/modules/{rel}"), &[]);
        let k = prepared(&s.0).unwrap();
        assert_eq!(k.bzimage, image);
        assert_eq!(stems(&k), ALL5);
        // The image file itself finds the modules in ../lib/modules/<rel>.
        let l = locate(&image).unwrap();
        assert!(l.modules_root.ends_with(format!("lib/modules/{rel}")));
        assert_eq!(l.release.as_deref(), Some(rel));
    }

    #[test]
    fn a_meta_package_root_without_the_image_is_an_error_naming_the_image() {
        let s = Scratch::new("meta");
        s.file("usr/share/doc/linux-image-7.3/changelog.gz", b"");
        let e = prepared(&s.0).unwrap_err().to_string();
        assert!(e.contains("no kernel image"), "{e}");
        assert!(e.contains("linux-binary"), "{e}");
        // Modules alone (linux-modules unpacked, linux-binary not).
        let s = Scratch::new("modsonly");
        vfio_modules(&s, &format!("usr/lib/modules/{REL}"), &[]);
        let e = prepared(&s.0).unwrap_err().to_string();
        assert!(e.contains("no kernel image"), "{e}");
        assert!(e.contains("unpack linux-binary"), "{e}");
    }

    #[test]
    fn each_missing_vfio_module_is_named_before_booting() {
        for missing in REQUIRED {
            let s = Scratch::new(&format!("missing-{missing}"));
            let moddir = format!("usr/lib/modules/{REL}");
            s.file(&format!("{moddir}/vmlinuz"), b"kernel");
            vfio_modules(&s, &moddir, &[missing]);
            let e = prepared(&s.0).unwrap_err().to_string();
            assert!(e.contains("VFIO module(s) missing"), "{e}");
            assert!(
                e.split(':').nth(2).unwrap().contains(missing),
                "{missing}: {e}"
            );
        }
        // An image without any module (linux-modules not unpacked).
        let s = Scratch::new("nomods");
        s.file(&format!("usr/lib/modules/{REL}/vmlinuz"), b"kernel");
        let e = prepared(&s.0).unwrap_err().to_string();
        assert!(
            e.contains("vfio, vfio_iommu_type1, vfio_pci_core, vfio_pci"),
            "{e}"
        );
        assert!(e.contains("linux-modules"), "{e}");
    }

    #[test]
    fn a_missing_dependency_is_named_and_built_in_modules_count() {
        let s = Scratch::new("dep");
        let moddir = format!("usr/lib/modules/{REL}");
        s.file(&format!("{moddir}/vmlinuz"), b"kernel");
        vfio_modules(&s, &moddir, &["irqbypass"]);
        let e = prepared(&s.0).unwrap_err().to_string();
        assert!(e.contains("irqbypass (needed by vfio_pci_core)"), "{e}");
        // Built in, it is not missing.
        s.file(
            &format!("{moddir}/modules.builtin"),
            b"kernel/virt/lib/irqbypass.ko\nkernel/drivers/vfio/vfio.ko\n",
        );
        fs::remove_file(s.0.join(format!("{moddir}/kernel/drivers/vfio/vfio.ko"))).unwrap();
        let k = prepared(&s.0).unwrap();
        assert_eq!(stems(&k), ["vfio_iommu_type1", "vfio_pci_core", "vfio_pci"]);
    }

    #[test]
    fn module_dependencies_are_read_from_modinfo() {
        assert_eq!(
            module_depends(b"\x7fELF...license=GPL\0depends=irqbypass,vfio\0name=vfio_pci_core\0"),
            ["irqbypass", "vfio"]
        );
        assert!(module_depends(b"depends=\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn debian_versions_compare_by_upstream_version() {
        assert!(version_key("7.3.4-1~bpo13+1") > version_key("7.2.12-1"));
        assert!(version_key("7.10.1-1") > version_key("7.9.3-1"));
        assert_eq!(version_key("6.12.57-1~bpo12+1"), [6, 12, 57]);
    }
}
