//! Which Mailboxes of a domain may have which addresses.
//!
//! A Mailbox claims its local part and each of its aliases (case-insensitively, at the domain
//! and every alias domain). When claims collide, one Mailbox keeps its addresses and the other
//! is left out of the users database entirely, with a reason its condition can show:
//!
//! 1. Two local parts: the older Mailbox keeps it (creation time, then name).
//! 2. An alias equal to another Mailbox's local part: the alias's owner is left out. A local
//!    part always beats an alias, so adding an alias can never take a working mailbox away
//!    from someone else.
//! 3. Two aliases: the older Mailbox keeps it.
//!
//! The outcome depends only on the Mailboxes, not on their password Secrets, so an address
//! does not change hands while a Secret is briefly missing.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::api::Mailbox;

/// Why a Mailbox is not in the users database (the `reason` of its Ready condition).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExclusionReason {
    /// Its address or an alias is another Mailbox's.
    AddressConflict,
    /// The referenced password Secret or key does not exist.
    PasswordSecretMissing,
    /// The password value cannot be used (empty, or a hash in a weak scheme).
    PasswordInvalid,
}

impl ExclusionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExclusionReason::AddressConflict => "AddressConflict",
            ExclusionReason::PasswordSecretMissing => "PasswordSecretMissing",
            ExclusionReason::PasswordInvalid => "PasswordInvalid",
        }
    }
}

/// A Mailbox left out, and why, in words for its condition message (never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exclusion {
    pub reason: ExclusionReason,
    pub message: String,
}

/// The Mailboxes among `mailboxes` (all of one MailDomain serving `domain`) that lose an
/// address conflict, by Mailbox name.
pub fn conflicts(domain: &str, mailboxes: &[&Mailbox]) -> BTreeMap<String, Exclusion> {
    let mut ordered: Vec<&Mailbox> = mailboxes.to_vec();
    ordered.sort_by(|a, b| {
        let created = |m: &Mailbox| m.metadata.creation_timestamp.as_ref().map(|t| t.0);
        // Objects not yet stored (no timestamp) are the newest.
        (created(a).is_none(), created(a), a.name_any()).cmp(&(
            created(b).is_none(),
            created(b),
            b.name_any(),
        ))
    });
    let address = |local: &str| format!("{local}@{domain}");
    let mut excluded = BTreeMap::new();

    // 1. Local parts, oldest first.
    let mut local_owner: BTreeMap<String, String> = BTreeMap::new();
    for m in &ordered {
        let local = m.spec.normalized_local_part();
        match local_owner.get(&local) {
            Some(owner) => {
                excluded.insert(
                    m.name_any(),
                    conflict(format!(
                        "address {} belongs to Mailbox {owner}",
                        address(&local)
                    )),
                );
            }
            None => {
                local_owner.insert(local, m.name_any());
            }
        }
    }

    // 2. and 3. Aliases of the Mailboxes still in, oldest first.
    let mut alias_owner: BTreeMap<String, String> = BTreeMap::new();
    for m in &ordered {
        let name = m.name_any();
        if excluded.contains_key(&name) {
            continue;
        }
        let own = m.spec.normalized_local_part();
        let aliases: BTreeSet<String> = m
            .spec
            .aliases
            .iter()
            .map(|a| a.to_ascii_lowercase())
            .filter(|a| *a != own)
            .collect();
        let taken = aliases.iter().find_map(|a| {
            let owner = local_owner.get(a).or_else(|| alias_owner.get(a))?;
            Some(format!("alias {} belongs to Mailbox {owner}", address(a)))
        });
        match taken {
            Some(message) => {
                excluded.insert(name, conflict(message));
            }
            None => {
                for a in aliases {
                    alias_owner.insert(a, name.clone());
                }
            }
        }
    }
    excluded
}

fn conflict(message: String) -> Exclusion {
    Exclusion {
        reason: ExclusionReason::AddressConflict,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn mailbox(name: &str, local: &str, aliases: &[&str], created_s: Option<i64>) -> Mailbox {
        let mut m = Mailbox::new(
            name,
            serde_json::from_value(serde_json::json!({
                "domainRef": {"name": "example-com"},
                "localPart": local,
                "aliases": aliases,
                "passwordSecretRef": {"name": format!("{name}-password")},
            }))
            .unwrap(),
        );
        m.metadata.creation_timestamp =
            created_s.map(|s| Time(Timestamp::from_second(1_700_000_000 + s).unwrap()));
        m
    }

    fn run(ms: &[Mailbox]) -> BTreeMap<String, Exclusion> {
        conflicts("example.com", &ms.iter().collect::<Vec<_>>())
    }

    #[test]
    fn distinct_addresses_conflict_with_nothing() {
        let ms = [
            mailbox("alice", "alice", &["postmaster", "abuse", "Alice"], Some(1)),
            mailbox("bob", "bob", &[], Some(2)),
        ];
        assert!(run(&ms).is_empty());
    }

    #[test]
    fn the_older_mailbox_keeps_a_local_part_case_insensitively() {
        let ms = [
            mailbox("newer", "Alice", &[], Some(5)),
            mailbox("older", "alice", &[], Some(1)),
            mailbox("unstored", "alice", &[], None),
        ];
        let out = run(&ms);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["newer", "unstored"]);
        assert_eq!(out["newer"].reason, ExclusionReason::AddressConflict);
        assert_eq!(
            out["newer"].message,
            "address alice@example.com belongs to Mailbox older"
        );
    }

    #[test]
    fn equal_creation_times_are_ordered_by_name() {
        let ms = [
            mailbox("b", "x", &[], Some(1)),
            mailbox("a", "x", &[], Some(1)),
        ];
        assert_eq!(run(&ms).keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn an_alias_never_takes_another_mailboxs_local_part_even_when_older() {
        let ms = [
            mailbox("alice", "alice", &["bob"], Some(1)),
            mailbox("bob", "bob", &[], Some(9)),
        ];
        let out = run(&ms);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(
            out["alice"].message,
            "alias bob@example.com belongs to Mailbox bob"
        );
    }

    #[test]
    fn the_older_mailbox_keeps_a_shared_alias() {
        let ms = [
            mailbox("alice", "alice", &["sales"], Some(1)),
            mailbox("carol", "carol", &["SALES", "info"], Some(2)),
            // dave may have `info`: carol, who is out, claims nothing.
            mailbox("dave", "dave", &["info"], Some(3)),
        ];
        let out = run(&ms);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["carol"]);
        assert_eq!(
            out["carol"].message,
            "alias sales@example.com belongs to Mailbox alice"
        );
    }

    #[test]
    fn a_mailbox_that_lost_its_local_part_claims_no_aliases() {
        let ms = [
            mailbox("alice", "alice", &[], Some(1)),
            mailbox("alice2", "alice", &["team"], Some(2)),
            mailbox("bob", "bob", &["team"], Some(3)),
        ];
        assert_eq!(run(&ms).keys().collect::<Vec<_>>(), ["alice2"]);
    }
}
