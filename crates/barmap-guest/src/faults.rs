//! Counting the kernel's vfio-pci fault handlers in the guest, with kprobes
//! through tracefs, and telling which fault path the kernel took.
//!
//! One kprobe per handler the kernel has: `vfio_pci_mmap_fault` (5.8 to
//! 6.11, the `.fault` of the vma), `vfio_pci_mmap_page_fault` (6.12+, the
//! `.fault`: one 4 KiB page) and `vfio_pci_mmap_huge_fault` (6.12+, the
//! `.huge_fault`: a PMD or PUD, and also what `.fault` calls with order 0).
//! A kprobe's hit count is read from `kprobe_profile`; tracing stays off,
//! so a hit costs the probe and nothing is written to the ring buffer.

use barmap_target::scenario::FaultProbe;
use barmap_target::Placement;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;

const TRACEFS: &str = "/sys/kernel/tracing";

/// The handlers probed: (kind in reports, kernel symbol).
pub const HANDLERS: [(&str, &str); 3] = [
    ("fault", "vfio_pci_mmap_fault"),
    ("page", "vfio_pci_mmap_page_fault"),
    ("huge", "vfio_pci_mmap_huge_fault"),
];

/// The kprobe event name of a kind (`barmap_page`).
fn event(kind: &str) -> String {
    format!("barmap_{kind}")
}

/// The kprobes set on this kernel's fault handlers.
#[derive(Debug)]
pub struct Kprobes {
    kinds: Vec<&'static str>,
}

fn write(path: &str, text: &str, append: bool) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)?;
    f.write_all(text.as_bytes())
}

impl Kprobes {
    /// Mounts tracefs if needed and sets a kprobe on each handler this
    /// kernel has; `Err` says why none could be set.
    pub fn set_up() -> Result<Kprobes, String> {
        let events = format!("{TRACEFS}/kprobe_events");
        if fs::metadata(&events).is_err() {
            let _ = fs::create_dir_all(TRACEFS);
            // SAFETY: mount(2) with valid NUL-terminated strings.
            let rc = unsafe {
                libc::mount(
                    c"tracefs".as_ptr(),
                    c"/sys/kernel/tracing".as_ptr(),
                    c"tracefs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(format!(
                    "mounting tracefs: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        if fs::metadata(&events).is_err() {
            return Err("no kprobe_events in tracefs (CONFIG_KPROBE_EVENTS off?)".into());
        }
        let _ = write(&format!("{TRACEFS}/tracing_on"), "0", false);
        let mut kinds = Vec::new();
        for (kind, sym) in HANDLERS {
            // A handler this kernel does not have is refused (ENOENT/EINVAL).
            if write(&events, &format!("p:{} {sym}\n", event(kind)), true).is_ok() {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err("no vfio-pci fault handler could be probed".into());
        }
        Ok(Kprobes { kinds })
    }

    /// The kinds probed on this kernel.
    pub fn kinds(&self) -> &[&'static str] {
        &self.kinds
    }
}

impl FaultProbe for Kprobes {
    fn enable(&self, on: bool) {
        for k in &self.kinds {
            let path = format!("{TRACEFS}/events/kprobes/{}/enable", event(k));
            let _ = write(&path, if on { "1" } else { "0" }, false);
        }
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        let text = fs::read_to_string(format!("{TRACEFS}/kprobe_profile")).unwrap_or_default();
        parse_profile(&text, &self.kinds)
    }
}

/// Hit counts of our events in `kprobe_profile` text (`name hits misses`
/// per line; the name may carry its group).
pub fn parse_profile(text: &str, kinds: &[&str]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(name), Some(hits)) = (w.next(), w.next()) else {
            continue;
        };
        let name = name.rsplit('/').next().unwrap_or(name);
        if let Some(k) = kinds.iter().find(|k| event(k) == name) {
            out.insert(k.to_string(), hits.parse().unwrap_or(0));
        }
    }
    out
}

/// Which fault path a whole-BAR first touch of `pages` pages took, from the
/// handlers' hit counts: `huge` (PMD/PUD faults, no per-page ones), `page`
/// (at least one fault per page), `whole` (the 5.8-6.9 handler: a few
/// faults, each mapping the whole vma), `mixed`, or `None` without counts.
pub fn fault_path(faults: &BTreeMap<String, u64>, pages: u64) -> Option<&'static str> {
    let get = |k: &str| faults.get(k).copied().unwrap_or(0);
    let (fault, page, huge) = (get("fault"), get("page"), get("huge"));
    if faults.is_empty() || fault + page + huge == 0 {
        None
    } else if page >= pages || fault >= pages {
        Some("page")
    } else if fault > 0 && page == 0 && huge == 0 {
        Some("whole")
    } else if huge > 0 && page == 0 && fault == 0 {
        Some("huge")
    } else {
        Some("mixed")
    }
}

/// `6.12.57+deb13-cloud-amd64` -> (6, 12).
pub fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The fault path the kernel `release` is meant to take for a mapping at
/// `placement`: 6.12+ maps aligned mappings with huge faults and misaligned
/// ones page by page; before 6.10 the handler maps the whole vma. `None`
/// where there is no single intended path (6.10 and 6.11, unknown).
pub fn intended_path(release: &str, placement: Placement) -> Option<&'static str> {
    let v = release_version(release)?;
    if v >= (6, 12) {
        Some(match placement {
            Placement::Aligned => "huge",
            Placement::Misaligned => "page",
        })
    } else if v < (6, 10) {
        Some("whole")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
        v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn the_profile_is_parsed_for_our_events_only() {
        let text = "  barmap_page                                       16384               0\n\
                    \x20 barmap_huge                                          32               0\n\
                    \x20 other_probe                                           9               0\n";
        assert_eq!(
            parse_profile(text, &["page", "huge"]),
            counts(&[("page", 16384), ("huge", 32)])
        );
        assert_eq!(
            parse_profile("kprobes/barmap_fault 3 0\n", &["fault"]),
            counts(&[("fault", 3)])
        );
    }

    #[test]
    fn fault_paths_are_told_apart() {
        let pages = 16384;
        assert_eq!(
            fault_path(&counts(&[("page", 0), ("huge", 32)]), pages),
            Some("huge")
        );
        // .fault calls .huge_fault out of line: both count every page.
        assert_eq!(
            fault_path(&counts(&[("page", 16384), ("huge", 16384)]), pages),
            Some("page")
        );
        assert_eq!(fault_path(&counts(&[("fault", 3)]), pages), Some("whole"));
        assert_eq!(
            fault_path(&counts(&[("page", 10), ("huge", 30)]), pages),
            Some("mixed")
        );
        assert_eq!(
            fault_path(&counts(&[("page", 0), ("huge", 0)]), pages),
            None
        );
        assert_eq!(fault_path(&BTreeMap::new(), pages), None);
    }

    #[test]
    fn intended_paths_follow_the_kernel_version() {
        use Placement::*;
        assert_eq!(
            intended_path("6.1.0-56-cloud-amd64", Aligned),
            Some("whole")
        );
        assert_eq!(
            intended_path("6.1.0-56-cloud-amd64", Misaligned),
            Some("whole")
        );
        assert_eq!(
            intended_path("6.12.57+deb13-cloud-amd64", Aligned),
            Some("huge")
        );
        assert_eq!(
            intended_path("7.3.4+deb13-cloud-amd64", Misaligned),
            Some("page")
        );
        assert_eq!(intended_path("6.10.3", Aligned), None);
        assert_eq!(intended_path("garbage", Aligned), None);
    }
}
