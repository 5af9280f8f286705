//! Records in zone-file (RFC 1035 master file) syntax.

use crate::api::maildomain::DnsRecord;

/// The records as zone-file lines with absolute owner names, each record's comment written as
/// `;` lines above it.
pub fn zone_file(records: &[DnsRecord]) -> String {
    let owner = |r: &DnsRecord| format!("{}.", r.name);
    let width = records.iter().map(|r| owner(r).len()).max().unwrap_or(0);
    let type_width = records
        .iter()
        .map(|r| r.record_type.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in records {
        if let Some(comment) = &r.comment {
            out.push('\n');
            for line in comment.lines() {
                out.push_str(format!("; {line}").trim_end());
                out.push('\n');
            }
        }
        out.push_str(&format!(
            "{:width$} {:>6} IN {:type_width$} {}\n",
            owner(r),
            r.ttl,
            r.record_type,
            r.value,
        ));
    }
    out
}
