//! Fault policies: how much a fault maps, and how it is serialised.

use std::fmt;
use std::str::FromStr;

/// How a fault on a mapping is served. The historical kernel designs are here
/// so the seed's race can be reproduced and the fixes compared on one harness.
///
/// "Page" below is the mapping's page size: 4 KiB, or 2 MiB on a BAR backed
/// by huge pages ([`crate::RegionSpec::huge_pages`]), where `page` therefore
/// maps a whole 2 MiB page per fault like `huge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Linux 5.8 (11c4cd07ba11), kept only to reproduce the seed: the mapping
    /// is recorded as filled and the tracking lock dropped *before* the
    /// whole-mapping fill; a fill that meets a present page is the kernel's
    /// BUG_ON, reported as a BUG event; a failed fill leaves a stale record.
    Legacy,
    /// Linux 5.14 (6a45ece4c9af), the seed's fix: the tracking lock is held
    /// across the whole-mapping fill, a mapping already recorded is not
    /// filled again, and a failed fill is undone and not recorded.
    Whole,
    /// Linux 6.10 (aac6db75a9fc): one page per fault, reentrant by nature.
    Page,
    /// Linux 6.12 (f9e54c3a2f5b) with 6.13/6.15's alignment rules: the 2 MiB
    /// chunk around the fault where address and device offset are aligned
    /// and the chunk lies inside the mapping, else the page.
    Huge,
    /// barmap's default: the faulting 2 MiB chunk first (the faulting thread
    /// resumes as soon as it is mapped), then the rest of the mapping chunk by
    /// chunk, claimed through a shared cursor so that several service threads
    /// fill one mapping in parallel; reentrant like `page`, no global lock.
    #[default]
    Prefault,
}

impl Policy {
    /// Every policy, oldest design first.
    pub const ALL: [Policy; 5] = [
        Policy::Legacy,
        Policy::Whole,
        Policy::Page,
        Policy::Huge,
        Policy::Prefault,
    ];

    /// The policy's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Legacy => "legacy",
            Policy::Whole => "whole",
            Policy::Page => "page",
            Policy::Huge => "huge",
            Policy::Prefault => "prefault",
        }
    }

    /// Whether the policy keeps the kernel's 5.x tracking list ("vma_list").
    pub fn tracks_filled(self) -> bool {
        matches!(self, Policy::Legacy | Policy::Whole)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown policy name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown policy {0:?} (expected legacy, whole, page, huge or prefault)")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s || (s == "default" && *p == Policy::default()))
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

/// A deliberate bug, one per invariant the model checker asserts, to show
/// that each invariant can fail and that the checker catches it (a checker
/// that cannot fail proves nothing). Never set outside the checker's tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mutation {
    /// `whole` forgets to look for its record before filling: a second fault
    /// refills over present pages (the seed's BUG).
    WholeNoRecheck,
    /// A disable does not zap: pages stay present while memory is off.
    SkipZap,
    /// An enable does not clear poison: a touch after enable gets SIGBUS.
    KeepPoison,
    /// The simulated MM maps the wrong device page (a wrong value read).
    WrongPfn,
    /// A full unmap leaves its record in the tracking list (a stale entry).
    UnmapKeepsTracked,
    /// A fault on an address no longer mapped is not woken: the faulting
    /// thread sleeps forever (a fault never answered, a deadlock).
    SkipStaleWake,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 6] = [
        Mutation::WholeNoRecheck,
        Mutation::SkipZap,
        Mutation::KeepPoison,
        Mutation::WrongPfn,
        Mutation::UnmapKeepsTracked,
        Mutation::SkipStaleWake,
    ];
}
