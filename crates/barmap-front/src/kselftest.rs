//! Running the kernel's VFIO selftests under `barmap run` and reading their
//! verdicts (the kselftest harness's `# Totals:` line).

use std::path::Path;

use crate::launch;
use crate::spec::RunSpec;

/// The harness's closing counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Tests passed.
    pub pass: u32,
    /// Tests failed.
    pub fail: u32,
    /// Expected failures.
    pub xfail: u32,
    /// Unexpected passes.
    pub xpass: u32,
    /// Tests skipped (by the test itself).
    pub skip: u32,
    /// Harness errors.
    pub error: u32,
}

/// Parses `# Totals: pass:N fail:N xfail:N xpass:N skip:N error:N`; a
/// binary that skipped as a whole (`1..0 # SKIP reason`) counts one skip.
pub fn parse_totals(output: &str) -> Option<Totals> {
    for line in output.lines().rev() {
        if let Some(rest) = line.trim().strip_prefix("# Totals:") {
            let mut t = Totals::default();
            for kv in rest.split_whitespace() {
                let (k, v) = kv.split_once(':')?;
                let v: u32 = v.parse().ok()?;
                match k {
                    "pass" => t.pass = v,
                    "fail" => t.fail = v,
                    "xfail" => t.xfail = v,
                    "xpass" => t.xpass = v,
                    "skip" => t.skip = v,
                    "error" => t.error = v,
                    _ => {}
                }
            }
            return Some(t);
        }
    }
    output
        .lines()
        .any(|l| l.trim().starts_with("1..0 # SKIP"))
        .then_some(Totals {
            skip: 1,
            ..Totals::default()
        })
}

/// The IOMMU modes the selftests' fixtures take as variants
/// (`FIXTURE_VARIANT_ADD_ALL_IOMMU_MODES`), in the library's order.
pub const IOMMU_MODES: [&str; 5] = [
    "vfio_type1_iommu",
    "vfio_type1v2_iommu",
    "iommufd_compat_type1",
    "iommufd_compat_type1v2",
    "iommufd",
];

/// One IOMMU mode's share of a binary's results.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModeTotals {
    /// The mode ([`IOMMU_MODES`]), or `-` for tests without one.
    pub mode: String,
    /// Passed, failed and skipped tests of the mode (`pass`, `fail`,
    /// `skip`; the other counts stay 0).
    pub totals: Totals,
}

/// The IOMMU mode a variant name stands for: the mode itself or the mode
/// followed by `_` and more (`iommufd_anonymous_hugetlb_2mb`), the
/// longest that fits.
fn mode_of(variant: &str) -> Option<&'static str> {
    IOMMU_MODES
        .iter()
        .filter(|m| {
            variant == **m
                || variant
                    .strip_prefix(**m)
                    .is_some_and(|r| r.starts_with('_'))
        })
        .max_by_key(|m| m.len())
        .copied()
}

/// Counts the harness's `ok N name` / `not ok N name` lines per IOMMU
/// mode, the mode read from the test's variant (`fixture.mode[_more].test`); `ok`
/// with `# SKIP` is a skip. Modes in [`IOMMU_MODES`] order, then `-`.
pub fn per_mode(output: &str) -> Vec<ModeTotals> {
    let mut out: Vec<ModeTotals> = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        let (passed, rest) = if let Some(r) = line.strip_prefix("ok ") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("not ok ") {
            (false, r)
        } else {
            continue;
        };
        let Some(name) = rest.split_whitespace().nth(1) else {
            continue;
        };
        let mode = name.split('.').find_map(mode_of).unwrap_or("-");
        let i = match out.iter().position(|m| m.mode == mode) {
            Some(i) => i,
            None => {
                out.push(ModeTotals {
                    mode: mode.to_string(),
                    totals: Totals::default(),
                });
                out.len() - 1
            }
        };
        let t = &mut out[i].totals;
        if !passed {
            t.fail += 1;
        } else if line.contains("# SKIP") {
            t.skip += 1;
        } else {
            t.pass += 1;
        }
    }
    let rank = |m: &str| IOMMU_MODES.iter().position(|x| *x == m).unwrap_or(99);
    out.sort_by_key(|m| rank(&m.mode));
    out
}

/// Lines of the output that say why tests skipped or failed.
pub fn notable_lines(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.starts_with("not ok") || l.contains("# SKIP"))
        .map(|l| l.to_string())
        .collect()
}

/// One binary's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BinaryResult {
    /// The binary's file name.
    pub name: String,
    /// Its totals, if it printed them.
    pub totals: Option<Totals>,
    /// Exit status (kselftest: 0 pass, 1 fail, 4 skip).
    pub exit_code: Option<i32>,
    /// Failed and skipped test lines.
    pub notes: Vec<String>,
    /// Passes, failures and skips per IOMMU mode.
    pub modes: Vec<ModeTotals>,
    /// BUG events barmap reported.
    pub bugs: u64,
    /// Seconds.
    pub elapsed_s: f64,
}

impl BinaryResult {
    /// Whether the binary passed: no failure or error, and the harness
    /// closed normally (or skipped as a whole, exit 4).
    pub fn ok(&self) -> bool {
        match self.totals {
            Some(t) => t.fail == 0 && t.error == 0 && matches!(self.exit_code, Some(0 | 4)),
            None => false,
        }
    }
}

/// Runs `binary` under a testbed for `spec`, its output in `log`.
pub fn run_binary(spec: &RunSpec, binary: &Path, log: &Path) -> Result<BinaryResult, String> {
    run_binary_served(spec, binary, log, None)
}

/// [`run_binary`], the devices served to every process of the binary by
/// `serve` if given (`barmap selftests --shared`).
pub fn run_binary_served(
    spec: &RunSpec,
    binary: &Path,
    log: &Path,
    serve: Option<launch::ServeHook<'_>>,
) -> Result<BinaryResult, String> {
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = launch::run_served(
        spec,
        &binary.to_string_lossy(),
        &[],
        launch::Output::File(log),
        serve,
    )?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut totals = parse_totals(&text);
    let mut notes = notable_lines(&text);
    let modes = per_mode(&text);
    if totals.is_none() && out.exit_code == Some(4) {
        // KSFT_SKIP before the harness started: the binary said why.
        totals = Some(Totals {
            skip: 1,
            ..Totals::default()
        });
        notes.extend(text.lines().map(str::to_string));
    }
    Ok(BinaryResult {
        name,
        totals,
        exit_code: out.exit_code,
        notes,
        modes,
        bugs: out.bugs,
        elapsed_s: out.elapsed_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_whole_binary_skips() {
        let t = parse_totals("ok 1 x\n# Totals: pass:5 fail:1 xfail:0 xpass:0 skip:2 error:0\n");
        assert_eq!(
            t,
            Some(Totals {
                pass: 5,
                fail: 1,
                skip: 2,
                ..Totals::default()
            })
        );
        assert_eq!(
            parse_totals("TAP version 13\n1..0 # SKIP SR-IOV may not be supported\n"),
            Some(Totals {
                skip: 1,
                ..Totals::default()
            })
        );
        assert_eq!(parse_totals("crashed\n"), None);
    }

    #[test]
    fn results_are_counted_per_iommu_mode() {
        let out = "ok 1 t.vfio_type1_iommu.a\nnot ok 2 t.iommufd.a\n\
                   ok 3 t.iommufd.b # SKIP no\nok 4 t.iommufd_compat_type1_anonymous.c\n\
                   ok 5 plain\nok 6 t.iommufd_compat_type1v2_x.d\n";
        let m = per_mode(out);
        let names: Vec<&str> = m.iter().map(|m| m.mode.as_str()).collect();
        assert_eq!(
            names,
            [
                "vfio_type1_iommu",
                "iommufd_compat_type1",
                "iommufd_compat_type1v2",
                "iommufd",
                "-"
            ]
        );
        assert_eq!(
            (m[3].totals.pass, m[3].totals.fail, m[3].totals.skip),
            (0, 1, 1)
        );
        assert_eq!(m[0].totals.pass, 1);
    }
}
