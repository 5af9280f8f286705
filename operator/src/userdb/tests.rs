use super::*;
use crate::config::testing::{quickstart, quickstart_mailboxes, SALT_KEY};
use sha_crypt::{PasswordVerifier, ShaCrypt};

fn mailbox(local: &str) -> ResolvedMailbox {
    ResolvedMailbox {
        local_part: local.into(),
        password_hash: hash_password("secret password", SALT_KEY, &format!("{local}@example.com"))
            .unwrap(),
        aliases: vec![],
        forward_to: vec![],
        keep_copy: true,
        quota_bytes: None,
        suspended: false,
    }
}

/// The entries of map `name` over all its shard files, sorted.
fn map_lines(db: &UsersDb, name: &str) -> Vec<String> {
    let mut lines: Vec<String> = (0..USER_SHARDS)
        .flat_map(|i| db.maps[&map_file_name(name, i)].lines())
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn every_map_entry_is_in_the_file_of_its_keys_shard() {
    let db = build(&quickstart().spec, &quickstart_mailboxes());
    assert_eq!(
        db.maps.len(),
        MAPS.len() * USER_SHARDS,
        "every shard file exists"
    );
    for (file, text) in &db.maps {
        let (map, shard) = file.rsplit_once('-').unwrap();
        assert!(MAPS.contains(&map), "{file}");
        let shard = usize::from_str_radix(shard, 16).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let key = line.split_once(' ').unwrap().0;
            assert_eq!(shard_of(key), shard, "{file}: {line}");
        }
    }
    assert_eq!(db.map_shard(3).len(), MAPS.len());
    assert_eq!(db.map_shard(3)["aliases-3"], db.maps["aliases-3"]);
}

#[test]
fn hash_is_sha512_crypt_and_verifies() {
    let h = hash_password("correct-horse", SALT_KEY, "alice@example.com").unwrap();
    let crypt = h.strip_prefix("{SHA512-CRYPT}").expect("scheme prefix");
    assert!(crypt.starts_with("$6$"), "{h}");
    ShaCrypt::SHA512
        .verify_password(b"correct-horse", crypt)
        .expect("verifies");
    assert!(ShaCrypt::SHA512.verify_password(b"wrong", crypt).is_err());
}

#[test]
fn hash_is_deterministic_and_salted_per_address_password_and_key() {
    let a = hash_password("pw", SALT_KEY, "alice@example.com").unwrap();
    assert_eq!(
        a,
        hash_password("pw", SALT_KEY, "alice@example.com").unwrap()
    );
    // The address is normalized like Dovecot's user names.
    assert_eq!(
        a,
        hash_password("pw", SALT_KEY, "Alice@Example.com").unwrap()
    );
    let salt = |h: &str| h.split('$').nth(3).unwrap().to_string();
    for other in [
        hash_password("pw", SALT_KEY, "bob@example.com").unwrap(),
        hash_password("pw2", SALT_KEY, "alice@example.com").unwrap(),
        hash_password("pw", b"another key", "alice@example.com").unwrap(),
    ] {
        assert_ne!(salt(&a), salt(&other));
    }
}

#[test]
fn ready_hashes_pass_unchanged_and_weak_schemes_are_refused() {
    let sha = "{SHA512-CRYPT}$6$abcdefghijklmnop$0123456789abcdefghij";
    assert_eq!(hash_password(sha, SALT_KEY, "a@example.com").unwrap(), sha);
    let argon = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
    assert_eq!(
        hash_password(argon, SALT_KEY, "a@example.com").unwrap(),
        argon
    );
    for weak in [
        "{PLAIN}secret",
        "{MD5-CRYPT}$1$x$y",
        "{SHA}abc",
        "{SSHA256}abc",
        "{CRYPT}ab",
    ] {
        let err = hash_password(weak, SALT_KEY, "a@example.com").unwrap_err();
        assert!(matches!(err, PasswordError::WeakScheme(_)), "{weak}: {err}");
        assert!(err.to_string().contains("not accepted"), "{err}");
    }
    for bad in [
        "{SHA512-CRYPT}plain",
        "{SHA512-CRYPT}$6$salt$hash:with:colons",
        "{ARGON2ID}$argon2i$v=19$m=1,t=1,p=1$salt$hash",
    ] {
        assert!(
            matches!(
                hash_password(bad, SALT_KEY, "a@example.com"),
                Err(PasswordError::MalformedHash(..))
            ),
            "{bad}"
        );
    }
    assert_eq!(
        hash_password("", SALT_KEY, "a@example.com"),
        Err(PasswordError::Empty)
    );
    assert_eq!(
        hash_password("pw", b"", "a@example.com"),
        Err(PasswordError::NoSaltKey)
    );
}

#[test]
fn shard_matches_dovecot_first_hex_digit_of_md5() {
    // md5("alice@example.com") = c160f8cc69a4f0bf2b0362752353d060
    assert_eq!(shard_of("alice@example.com"), 0xc);
    assert_eq!(shard_of("ALICE@example.com"), 0xc);
    // md5("bob@example.com") = 4b9bb80620f03eb3719e0a061c14283d
    assert_eq!(shard_of("bob@example.com"), 0x4);
    let db = build(&quickstart().spec, &quickstart_mailboxes());
    assert_eq!(db.shards.len(), USER_SHARDS);
    assert!(db.shards[0xc].starts_with("alice@example.com:{SHA512-CRYPT}$6$"));
    assert!(db.shards[0x4].starts_with("bob@example.com:{SHA512-CRYPT}$6$"));
    let others: usize = (0..USER_SHARDS)
        .filter(|i| ![0x4, 0xc].contains(i))
        .map(|i| db.shards[i].len())
        .sum();
    assert_eq!(others, 0);
    assert_eq!(shard_file_name(0xc), "c.passwd");
}

#[test]
fn quickstart_maps_route_aliases_and_forwards() {
    let db = build(&quickstart().spec, &quickstart_mailboxes());
    assert_eq!(
        map_lines(&db, MAP_MAILBOXES),
        ["alice@example.com OK", "bob@example.com OK"]
    );
    assert_eq!(
        map_lines(&db, MAP_ALIASES),
        [
            "abuse@example.com alice@example.com",
            // bob forwards and keeps a copy (keepCopy defaults to true).
            "bob@example.com bob@example.com, bob@example.net",
            "postmaster@example.com alice@example.com",
        ]
    );
    assert!(
        map_lines(&db, MAP_SENDERS).contains(&"postmaster@example.com alice@example.com".into())
    );
    assert!(db.shards[0xc].ends_with(":userdb_quota_storage_size=2147483648\n"));
}

#[test]
fn alias_domains_reach_the_same_mailboxes() {
    let mut spec = quickstart().spec;
    spec.alias_domains = vec!["example.org".into()];
    let mut alice = mailbox("alice");
    alice.aliases = vec!["Info".into()];
    let db = build(&spec, &[alice]);
    assert_eq!(
        map_lines(&db, MAP_ALIASES),
        [
            "alice@example.org alice@example.com",
            "info@example.com alice@example.com",
            "info@example.org alice@example.com",
        ]
    );
    assert_eq!(
        map_lines(&db, MAP_SENDERS),
        [
            "alice@example.com alice@example.com",
            "alice@example.org alice@example.com",
            "info@example.com alice@example.com",
            "info@example.org alice@example.com",
        ]
    );
}

#[test]
fn forward_without_copy_and_suspended_login() {
    let mut carol = mailbox("carol");
    carol.forward_to = vec!["carol@example.net".into(), "c2@example.net".into()];
    carol.keep_copy = false;
    carol.suspended = true;
    let db = build(&quickstart().spec, &[carol]);
    assert_eq!(
        map_lines(&db, MAP_ALIASES),
        ["carol@example.com c2@example.net, carol@example.net"]
    );
    // Still a mailbox (mail accepted), but the passdb refuses the login.
    assert_eq!(map_lines(&db, MAP_MAILBOXES), ["carol@example.com OK"]);
    let line = &db.shards[shard_of("carol@example.com")];
    assert!(line.trim_end().ends_with("::::::fail"), "{line}");
}

#[test]
fn duplicates_do_not_panic_and_output_is_sorted_and_deterministic() {
    let mut a = mailbox("alice");
    a.aliases = vec!["team".into()];
    let mut b = mailbox("bob");
    b.aliases = vec!["team".into()];
    let dup = mailbox("ALICE");
    let db1 = build(&quickstart().spec, &[a.clone(), b.clone(), dup.clone()]);
    let db2 = build(&quickstart().spec, &[dup, b, a]);
    assert_eq!(db1, db2);
    assert!(map_lines(&db1, MAP_ALIASES)
        .iter()
        .any(|l| l.starts_with("team@example.com ") && l.contains("bob@example.com")));
    for map in db1.maps.values() {
        let lines: Vec<&str> = map.lines().filter(|l| !l.starts_with('#')).collect();
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(lines, sorted);
    }
    assert_eq!(db1.shards[shard_of("alice@example.com")].lines().count(), 1);
}
