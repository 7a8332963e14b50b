//! Debian packages for the guest, fetched with apt through a private
//! configuration under the cache directory, so that the host's own apt
//! sources, lists and installed packages are never touched.
//!
//! The mirror is the one the host's apt already uses (read from its
//! sources), or `$BARMAP_DEBIAN_MIRROR`.

use crate::util::{run, run_output, Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// The keyring Debian's archive is signed with.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Lists older than this are refreshed.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A private apt set-up for one set of Debian suites.
#[derive(Debug, Clone)]
pub struct Apt {
    root: PathBuf,
}

/// Where the host's apt fetches Debian from: (main archive, security archive).
pub fn host_mirrors() -> Result<(String, Option<String>)> {
    if let Ok(m) = std::env::var("BARMAP_DEBIAN_MIRROR") {
        let m = m.trim_end_matches('/').to_string();
        let sec = std::env::var("BARMAP_DEBIAN_SECURITY_MIRROR").ok();
        return Ok((m, sec));
    }
    let mut text = String::new();
    text += &fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            let p = e.path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "sources" || ext == "list" {
                text += "\n";
                text += &fs::read_to_string(&p).unwrap_or_default();
            }
        }
    }
    parse_mirrors(&text).ok_or_else(|| {
        Error::msg(
            "no Debian mirror found in the host's apt sources; set BARMAP_DEBIAN_MIRROR \
             (a Debian archive URL ending in /debian)",
        )
    })
}

/// Finds the Debian archive and security URIs in apt source text (one-line
/// or deb822 format).
pub fn parse_mirrors(text: &str) -> Option<(String, Option<String>)> {
    let mut main = None;
    let mut security = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') {
            continue;
        }
        let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().collect()
        } else if line.starts_with("deb ") {
            line.split_whitespace()
                .filter(|w| w.contains("://"))
                .take(1)
                .collect()
        } else {
            continue;
        };
        for u in uris {
            let u = u.trim_end_matches('/');
            if u.ends_with("/debian-security") {
                security.get_or_insert_with(|| u.to_string());
            } else if u.ends_with("/debian") {
                main.get_or_insert_with(|| u.to_string());
            }
        }
    }
    main.map(|m| (m, security))
}

impl Apt {
    /// A private apt under `root` that reads the given one-line source entries.
    pub fn new(root: &Path, sources: &[String]) -> Result<Self> {
        for d in ["lists/partial", "cache/archives/partial", "debs"] {
            fs::create_dir_all(root.join(d))?;
        }
        let mut text = String::new();
        for s in sources {
            text += &format!("deb [signed-by={KEYRING}] {s}\n");
        }
        let path = root.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            fs::write(&path, text)?;
            // New sources: the old lists do not describe them.
            let _ = fs::remove_file(root.join("lists/.barmap-updated"));
        }
        Ok(Apt {
            root: root.to_path_buf(),
        })
    }

    fn options(&self) -> Vec<String> {
        let r = self.root.display();
        vec![
            format!("-oDir::Etc::SourceList={r}/sources.list"),
            "-oDir::Etc::SourceParts=/nonexistent".into(),
            format!("-oDir::State::Lists={r}/lists"),
            format!("-oDir::Cache={r}/cache"),
            "-oAPT::Sandbox::User=root".into(),
            "-oDebug::NoLocking=1".into(),
        ]
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.args(self.options());
        c
    }

    /// Runs `apt-get update` on the private lists unless they are fresh.
    pub fn update(&self) -> Result<()> {
        let stamp = self.root.join("lists/.barmap-updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh {
            return Ok(());
        }
        let mut c = self.cmd("apt-get");
        c.args(["-q", "update"]);
        run(&mut c).map_err(|e| e.context("apt-get update (is the Debian archive reachable?)"))?;
        fs::write(stamp, b"")?;
        Ok(())
    }

    /// The package a metapackage depends on whose name starts with `prefix`
    /// (`linux-image-cloud-amd64` -> `linux-image-6.1.0-56-cloud-amd64`).
    pub fn resolve_dependency(&self, meta: &str, prefix: &str) -> Result<String> {
        let mut c = self.cmd("apt-cache");
        c.args(["depends", meta]);
        let out = run_output(&mut c)?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with(prefix))
            .map(str::to_string)
            .ok_or_else(|| Error::msg(format!("{meta} has no dependency starting with {prefix}")))
    }

    /// The packages that `packages` depend on (Depends and Pre-Depends,
    /// every alternative; virtual packages left out), each name once.
    pub fn depends(&self, packages: &[String]) -> Result<Vec<String>> {
        let mut c = self.cmd("apt-cache");
        c.args([
            "depends",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ])
        .args(packages);
        let out = run_output(&mut c)?;
        let mut found: Vec<String> = Vec::new();
        for line in out.lines() {
            let l = line.trim().trim_start_matches('|');
            let Some(dep) = l
                .strip_prefix("Depends:")
                .or_else(|| l.strip_prefix("PreDepends:"))
            else {
                continue;
            };
            let dep = dep.trim();
            if dep.starts_with('<') {
                continue; // virtual
            }
            let name = dep.split(':').next().unwrap_or(dep).to_string();
            if !found.contains(&name) {
                found.push(name);
            }
        }
        Ok(found)
    }

    /// The candidate version of `package`.
    pub fn candidate_version(&self, package: &str) -> Result<String> {
        let mut c = self.cmd("apt-cache");
        c.args(["policy", package]);
        let out = run_output(&mut c)?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .find(|v| *v != "(none)")
            .map(str::to_string)
            .ok_or_else(|| Error::msg(format!("no candidate version of {package}")))
    }

    /// Downloads `package` (optionally `=version`) into the cache and returns
    /// the .deb path; a .deb already there is reused.
    pub fn download(&self, package: &str, version: Option<&str>) -> Result<PathBuf> {
        let debs = self.root.join("debs");
        let find = || -> Option<PathBuf> {
            let prefix = format!("{package}_");
            let mut found: Vec<PathBuf> = fs::read_dir(&debs)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    n.starts_with(&prefix)
                        && n.ends_with(".deb")
                        && version
                            .is_none_or(|v| n.contains(&format!("_{}_", v.replace(':', "%3a"))))
                })
                .collect();
            found.sort();
            found.pop()
        };
        if let Some(p) = find() {
            return Ok(p);
        }
        let spec = match version {
            Some(v) => format!("{package}={v}"),
            None => package.to_string(),
        };
        let mut c = self.cmd("apt-get");
        c.args(["-q", "download", &spec]).current_dir(&debs);
        run(&mut c).map_err(|e| e.context(&format!("apt-get download {spec}")))?;
        find().ok_or_else(|| Error::msg(format!("apt-get download {spec} left no .deb")))
    }
}

/// Unpacks a .deb into `dest` with `dpkg-deb -x` unless `dest` already holds
/// a completed unpack.
pub fn unpack(deb: &Path, dest: &Path) -> Result<()> {
    let done = dest.join(".barmap-unpacked");
    let name = deb
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    if fs::read_to_string(&done).ok().as_deref() == Some(name.as_str()) {
        return Ok(());
    }
    fs::create_dir_all(dest)?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))?;
    fs::write(done, name)?;
    Ok(())
}

/// Makes sure a host command exists, installing `package` with the host's
/// apt if it does not (QEMU needs its shared libraries, so it is installed
/// rather than unpacked).
pub fn ensure_host_tool(tool: &str, package: &str) -> Result<()> {
    if which(tool).is_some() {
        return Ok(());
    }
    eprintln!("barmap guest: installing {package} (provides {tool})");
    let mut c = Command::new("apt-get");
    c.args(["-q", "-y", "install", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive");
    if run(&mut c).is_err() {
        run(Command::new("apt-get").args(["-q", "update"]))?;
        run(&mut c).map_err(|e| e.context(&format!("apt-get install {package}")))?;
    }
    which(tool)
        .map(drop)
        .ok_or_else(|| Error::msg(format!("{tool} not found after installing {package}")))
}

/// The full path of `tool` on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_found_in_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security/\nSuites: bookworm-security\n";
        assert_eq!(
            parse_mirrors(deb822),
            Some((
                "http://mirror.example/debian".into(),
                Some("http://mirror.example/debian-security".into())
            ))
        );
        let one = "# deb http://old.example/debian sid main\n\
                   deb [arch=amd64] http://m.example/debian/ bookworm main\n";
        assert_eq!(
            parse_mirrors(one),
            Some(("http://m.example/debian".into(), None))
        );
        assert_eq!(
            parse_mirrors("deb http://x.example/ubuntu jammy main"),
            None
        );
    }
}
