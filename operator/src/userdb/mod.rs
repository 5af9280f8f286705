//! The users database: Dovecot passwd-file shards and the Postfix address maps, built from the
//! Mailboxes of one MailDomain. Pure: resolved mailboxes in, file contents out.
//!
//! Passwords are stored only as SHA512-CRYPT (or ready ARGON2ID) hashes. The salt of a hash the
//! operator computes is derived from the password itself (see [`hash_password`]), so a resync
//! with unchanged passwords reproduces the same bytes and writes nothing.

mod password;

use std::collections::{BTreeMap, BTreeSet};

use md5::{Digest, Md5};

use crate::api::maildomain::MailDomainSpec;
use crate::config::USER_SHARDS;

pub use password::{hash_password, PasswordError};

/// Numeric uid and gid that own all mail (the `vmail` user of the mail images).
pub const VMAIL_UID: u32 = 5000;

/// Name of the Postfix map of existing mailboxes (`virtual_mailbox_maps`).
pub const MAP_MAILBOXES: &str = "mailboxes";
/// Name of the Postfix map of aliases, alias domains and forwards (`virtual_alias_maps`).
pub const MAP_ALIASES: &str = "aliases";
/// Name of the Postfix map of which login may send as which address (`smtpd_sender_login_maps`).
pub const MAP_SENDERS: &str = "senders";
/// Continuity only: each address of a Mailbox and the address its emergency-inbox copy goes to
/// (`recipient_bcc_maps`, see [`continuity_copy_address`]).
pub const MAP_CONTINUITY_COPY: &str = "continuity-copy";
/// Continuity only: the further accepted recipients of `spec.continuity.recipients`.
pub const MAP_CONTINUITY_RECIPIENTS: &str = "continuity-recipients";

/// The address extension that marks an emergency-inbox copy (`bob+<this>@example.com`):
/// Postfix routes it to Dovecot or holds it, Dovecot delivers it to bob's INBOX.
pub const CONTINUITY_COPY_EXTENSION: &str = "postwarden-continuity";

/// Where the emergency-inbox copy of mail for the mailbox `address` goes.
pub fn continuity_copy_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}+{CONTINUITY_COPY_EXTENSION}@{domain}"),
        None => format!("{address}+{CONTINUITY_COPY_EXTENSION}"),
    }
}

/// One Mailbox with everything the users database needs, its password already hashed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedMailbox {
    pub local_part: String,
    /// `{SHA512-CRYPT}...` or `{ARGON2ID}...`, as returned by [`hash_password`].
    pub password_hash: String,
    /// Further local parts delivered to this mailbox.
    pub aliases: Vec<String>,
    /// Addresses that receive every message for this mailbox.
    pub forward_to: Vec<String>,
    /// Keep a copy in the mailbox when forwarding.
    pub keep_copy: bool,
    pub quota_bytes: Option<u64>,
    /// Logins refused; mail still accepted.
    pub suspended: bool,
}

/// The rendered users database.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UsersDb {
    /// [`USER_SHARDS`] passwd-file contents; index = shard (file `<index as hex>.passwd`).
    pub shards: Vec<String>,
    /// Postfix `texthash:` maps by file name: each of [`MAP_MAILBOXES`], [`MAP_ALIASES`] and
    /// [`MAP_SENDERS`] split into [`USER_SHARDS`] files by the shard of the key
    /// ([`map_file_name`]), so each shard's ConfigMap stays far below the API's 1 MiB limit.
    pub maps: BTreeMap<String, String>,
}

impl UsersDb {
    /// The map files of shard `index` (for its ConfigMap).
    pub fn map_shard(&self, index: usize) -> BTreeMap<String, String> {
        MAPS.iter()
            .chain(&CONTINUITY_MAPS)
            .map(|m| map_file_name(m, index))
            .filter_map(|file| Some((file.clone(), self.maps.get(&file)?.clone())))
            .collect()
    }

    /// Puts `addresses` (one per line; blank lines and `#` comments skipped) into the map of
    /// further continuity recipients. Returns the lines that are not addresses.
    pub fn set_continuity_recipients(&mut self, addresses: &str) -> Vec<String> {
        let mut keys = BTreeSet::new();
        let mut bad = Vec::new();
        for line in addresses.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if crate::api::validate::is_email_address(line) {
                keys.insert(line.to_ascii_lowercase());
            } else {
                bad.push(line.to_string());
            }
        }
        add_sharded(
            &mut self.maps,
            MAP_CONTINUITY_RECIPIENTS,
            keys.iter()
                .map(|k| (k.as_str(), "OK".to_string()))
                .collect(),
        );
        bad
    }
}

/// Every Postfix map, by base name.
pub const MAPS: [&str; 3] = [MAP_MAILBOXES, MAP_ALIASES, MAP_SENDERS];
/// The maps only a domain with `spec.continuity` has.
pub const CONTINUITY_MAPS: [&str; 2] = [MAP_CONTINUITY_COPY, MAP_CONTINUITY_RECIPIENTS];

/// File of shard `index` of map `map` (`aliases-a`); a key is in the shard of [`shard_of`].
pub fn map_file_name(map: &str, index: usize) -> String {
    format!("{map}-{index:x}")
}

/// File name of shard `index` in the users directory (what Dovecot's `%1Mu.passwd` expands to).
pub fn shard_file_name(index: usize) -> String {
    format!("{index:x}.passwd")
}

/// The shard Dovecot looks `address` up in: the first hex digit of the MD5 of the lowercase
/// address (Dovecot's `%1Mu`).
pub fn shard_of(address: &str) -> usize {
    let digest = Md5::digest(address.to_ascii_lowercase().as_bytes());
    usize::from(digest[0] >> 4)
}

/// Builds the shards and maps. Output is sorted and deterministic, whatever the input order.
/// Two mailboxes claiming the same address are a conflict the caller reports; here one of them
/// (the smallest) keeps the login and an alias claimed twice goes to both, so nothing panics.
pub fn build(md: &MailDomainSpec, mailboxes: &[ResolvedMailbox]) -> UsersDb {
    let domain = md.domain.to_ascii_lowercase();
    let alias_domains: Vec<String> = md
        .alias_domains
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .filter(|d| *d != domain)
        .collect();

    // Sorted first, so which of two clashing mailboxes wins does not depend on input order.
    let mut sorted: Vec<&ResolvedMailbox> = mailboxes.iter().collect();
    sorted.sort();
    let mut users: BTreeMap<String, &ResolvedMailbox> = BTreeMap::new();
    for m in sorted {
        let address = format!("{}@{domain}", m.local_part.to_ascii_lowercase());
        users.entry(address).or_insert(m);
    }

    let mut shards = vec![String::new(); USER_SHARDS];
    let mut mailbox_map = BTreeSet::new();
    let mut aliases: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut senders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();

    for (address, m) in &users {
        shards[shard_of(address)].push_str(&passwd_line(address, m));
        mailbox_map.insert(address.clone());

        let local = m.local_part.to_ascii_lowercase();
        let mut own_local_parts = vec![local.clone()];
        own_local_parts.extend(m.aliases.iter().map(|a| a.to_ascii_lowercase()));

        for (i, lp) in own_local_parts.iter().enumerate() {
            for d in std::iter::once(&domain).chain(&alias_domains) {
                let addr = format!("{lp}@{d}");
                senders
                    .entry(addr.clone())
                    .or_default()
                    .insert(address.clone());
                // The mailbox's own canonical address only needs an entry when it forwards.
                if i == 0 && *d == domain {
                    continue;
                }
                aliases.entry(addr).or_default().insert(address.clone());
            }
        }

        if !m.forward_to.is_empty() {
            let targets = aliases.entry(address.clone()).or_default();
            if m.keep_copy {
                targets.insert(address.clone());
            }
            targets.extend(m.forward_to.iter().map(|f| f.trim().to_string()));
        }
    }

    let mut maps = BTreeMap::new();
    let mut add = |map: &str, entries: Vec<(&str, String)>| add_sharded(&mut maps, map, entries);
    add(
        MAP_MAILBOXES,
        mailbox_map
            .iter()
            .map(|a| (a.as_str(), "OK".into()))
            .collect(),
    );
    add(MAP_ALIASES, set_entries(&aliases));
    add(MAP_SENDERS, set_entries(&senders));
    if md.continuity.is_some() {
        // An address owned by exactly one mailbox gets that mailbox's copy address; forwards
        // and addresses two mailboxes claim get no emergency-inbox copy.
        let copies: Vec<(&str, String)> = senders
            .iter()
            .filter(|(_, owners)| owners.len() == 1)
            .filter_map(|(addr, owners)| {
                let owner = owners.iter().next()?;
                Some((addr.as_str(), continuity_copy_address(owner)))
            })
            .collect();
        add(MAP_CONTINUITY_COPY, copies);
        add(MAP_CONTINUITY_RECIPIENTS, Vec::new());
    }
    UsersDb { shards, maps }
}

/// Inserts `map` split by the shard of its keys, every shard file present even when empty.
fn add_sharded(maps: &mut BTreeMap<String, String>, map: &str, entries: Vec<(&str, String)>) {
    let mut parts = vec![Vec::new(); USER_SHARDS];
    for (key, value) in entries {
        parts[shard_of(key)].push((key, value));
    }
    for (index, part) in parts.into_iter().enumerate() {
        maps.insert(map_file_name(map, index), render_map(part.into_iter()));
    }
}

/// `user:password:uid:gid:gecos:home:shell:extra` with uid, gid and home left to the userdb's
/// defaults, the quota as a userdb field and a refused login for suspended mailboxes (whose
/// userdb entry stays, so mail is still delivered).
fn passwd_line(address: &str, m: &ResolvedMailbox) -> String {
    let mut extra = Vec::new();
    if m.suspended {
        // `fail` makes the auth server refuse the login, so IMAP and Postfix SASL are both
        // refused; `nologin` would only be enforced by Dovecot's own login processes.
        extra.push("fail".to_string());
    }
    if let Some(q) = m.quota_bytes {
        extra.push(format!("userdb_quota_storage_size={q}"));
    }
    format!("{address}:{}::::::{}\n", m.password_hash, extra.join(" "))
}

fn render_map<'a>(entries: impl Iterator<Item = (&'a str, String)>) -> String {
    let mut out = String::from("# Generated by postwarden; do not edit.\n");
    for (k, v) in entries {
        out.push_str(k);
        out.push(' ');
        out.push_str(&v);
        out.push('\n');
    }
    out
}

/// `key value, value...` entries of a map whose values are sets.
fn set_entries(map: &BTreeMap<String, BTreeSet<String>>) -> Vec<(&str, String)> {
    map.iter()
        .map(|(k, v)| {
            let joined: Vec<&str> = v.iter().map(String::as_str).collect();
            (k.as_str(), joined.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests;
