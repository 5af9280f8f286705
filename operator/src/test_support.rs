//! Helpers shared by unit tests of several modules.

use std::collections::BTreeSet;

/// Asserts that an OpenMetrics exposition exports exactly the sample names listed in `listed`
/// (one per line, `#` comments): the chart's lists of the names its alerts and dashboards may
/// query (`charts/postwarden/<file>`).
pub fn assert_exports_exactly(exposition: &str, listed: &str, file: &str) {
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
        .collect();
    let listed: BTreeSet<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(exported, listed, "update charts/postwarden/{file}");
}
