//! Which Mailboxes of a domain may have which addresses.
//!
//! A Mailbox claims its local part and each of its aliases (case-insensitively, at the domain
//! and every alias domain). Collisions are settled so that no edit or creation can take a
//! working mailbox away from someone else:
//!
//! 1. Two Mailboxes with one local part: the older (creation time, then name) keeps it; the
//!    other is left out of the users database entirely, since it has no address of its own.
//! 2. An alias equal to another Mailbox's local part: the alias is not delivered; the local
//!    part always wins over an alias. Its Mailbox keeps working with its other addresses.
//! 3. Two Mailboxes with one alias: the older keeps it; the newer loses only that alias.
//!
//! The outcome depends only on the Mailboxes, not on their password Secrets, so an address
//! does not change hands while a Secret is briefly missing.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::api::Mailbox;

/// Why a Mailbox (or one of its aliases) is not in the users database: the `reason` of its
/// Ready condition.
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

/// What is left out, and why, in words for a condition message (never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exclusion {
    pub reason: ExclusionReason,
    pub message: String,
}

/// How the address conflicts among one domain's Mailboxes are settled, by Mailbox name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Mailboxes left out entirely (their local part is an older Mailbox's).
    pub excluded: BTreeMap<String, Exclusion>,
    /// Aliases (lowercase) a Mailbox keeps out of the users database, each with its reason.
    pub dropped_aliases: BTreeMap<String, Vec<(String, Exclusion)>>,
}

/// Settles the claims of `mailboxes` (all of one MailDomain serving `domain`).
pub fn settle(domain: &str, mailboxes: &[&Mailbox]) -> Settlement {
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
    let mut out = Settlement::default();

    // 1. Local parts, oldest first.
    let mut local_owner: BTreeMap<String, String> = BTreeMap::new();
    for m in &ordered {
        let local = m.spec.normalized_local_part();
        match local_owner.get(&local) {
            Some(owner) => {
                out.excluded.insert(
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

    // 2. and 3. Aliases of the Mailboxes that are in, oldest first.
    let mut alias_owner: BTreeMap<String, String> = BTreeMap::new();
    for m in &ordered {
        let name = m.name_any();
        if out.excluded.contains_key(&name) {
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
        for alias in aliases {
            let taken = if let Some(owner) = local_owner.get(&alias) {
                Some(format!(
                    "alias {} is the address of Mailbox {owner}",
                    address(&alias)
                ))
            } else {
                alias_owner
                    .get(&alias)
                    .map(|owner| format!("alias {} belongs to Mailbox {owner}", address(&alias)))
            };
            match taken {
                Some(message) => out
                    .dropped_aliases
                    .entry(name.clone())
                    .or_default()
                    .push((alias, conflict(message))),
                None => {
                    alias_owner.insert(alias, name.clone());
                }
            }
        }
    }
    out
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

    pub(crate) fn mailbox(
        name: &str,
        local: &str,
        aliases: &[&str],
        created_s: Option<i64>,
    ) -> Mailbox {
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

    fn run(ms: &[Mailbox]) -> Settlement {
        settle("example.com", &ms.iter().collect::<Vec<_>>())
    }

    fn dropped(s: &Settlement, name: &str) -> Vec<String> {
        s.dropped_aliases
            .get(name)
            .into_iter()
            .flatten()
            .map(|(a, e)| format!("{a}: {}", e.message))
            .collect()
    }

    #[test]
    fn distinct_addresses_conflict_with_nothing() {
        let ms = [
            mailbox("alice", "alice", &["postmaster", "abuse", "Alice"], Some(1)),
            mailbox("bob", "bob", &[], Some(2)),
        ];
        assert_eq!(run(&ms), Settlement::default());
    }

    #[test]
    fn the_older_mailbox_keeps_a_local_part_case_insensitively() {
        let ms = [
            mailbox("newer", "Alice", &[], Some(5)),
            mailbox("older", "alice", &[], Some(1)),
            mailbox("unstored", "alice", &[], None),
        ];
        let out = run(&ms);
        assert_eq!(
            out.excluded.keys().collect::<Vec<_>>(),
            ["newer", "unstored"]
        );
        assert_eq!(
            out.excluded["newer"].reason,
            ExclusionReason::AddressConflict
        );
        assert_eq!(
            out.excluded["newer"].message,
            "address alice@example.com belongs to Mailbox older"
        );
    }

    #[test]
    fn equal_creation_times_are_ordered_by_name() {
        let ms = [
            mailbox("b", "x", &[], Some(1)),
            mailbox("a", "x", &[], Some(1)),
        ];
        assert_eq!(run(&ms).excluded.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn a_local_part_beats_an_alias_whoever_is_older() {
        for (alice_age, postmaster_age) in [(1, 9), (9, 1)] {
            let ms = [
                mailbox("alice", "alice", &["postmaster", "abuse"], Some(alice_age)),
                mailbox("postmaster", "postmaster", &[], Some(postmaster_age)),
            ];
            let out = run(&ms);
            assert!(out.excluded.is_empty());
            assert_eq!(
                dropped(&out, "alice"),
                ["postmaster: alias postmaster@example.com is the address of Mailbox postmaster"]
            );
        }
    }

    #[test]
    fn the_older_mailbox_keeps_a_shared_alias() {
        let ms = [
            mailbox("alice", "alice", &["sales"], Some(1)),
            mailbox("carol", "carol", &["SALES", "info"], Some(2)),
            mailbox("dave", "dave", &["info"], Some(3)),
        ];
        let out = run(&ms);
        assert!(out.excluded.is_empty());
        assert_eq!(
            dropped(&out, "carol"),
            ["sales: alias sales@example.com belongs to Mailbox alice"]
        );
        assert_eq!(
            dropped(&out, "dave"),
            ["info: alias info@example.com belongs to Mailbox carol"]
        );
    }

    #[test]
    fn a_mailbox_left_out_claims_nothing() {
        let ms = [
            mailbox("alice", "alice", &[], Some(1)),
            mailbox("alice2", "alice", &["team"], Some(2)),
            mailbox("bob", "bob", &["team"], Some(3)),
        ];
        let out = run(&ms);
        assert_eq!(out.excluded.keys().collect::<Vec<_>>(), ["alice2"]);
        assert!(out.dropped_aliases.is_empty());
    }
}
