//! Properties and snapshots of the rendered configuration (no daemons needed).

use std::process::Command;

use super::testing::quickstart;
use super::*;
use crate::api::maildomain::MailDomain;
use crate::manifest::to_yaml;

fn k8s(md: &MailDomain) -> Layout {
    Layout::kubernetes(
        md.metadata.name.as_deref().unwrap(),
        md.metadata.namespace.as_deref().unwrap(),
        md.spec.imap.replicas as usize,
    )
}

/// `key = value` of a main.cf, last one wins like in Postfix.
fn main_cf_value(main: &str, key: &str) -> Option<String> {
    main.lines()
        .rev()
        .filter_map(|l| {
            l.split_once(" = ")
                .or_else(|| l.strip_suffix(" =").map(|k| (k, "")))
        })
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

#[test]
fn snapshot_postfix() {
    let md = quickstart();
    insta::assert_snapshot!(to_yaml(&postfix::render(&md, &k8s(&md))));
}

#[test]
fn snapshot_dovecot() {
    let md = quickstart();
    insta::assert_snapshot!(to_yaml(&dovecot::render(&md, &k8s(&md))));
}

#[test]
fn snapshot_dovecot_auth() {
    let md = quickstart();
    insta::assert_snapshot!(to_yaml(&dovecot_auth::render(&md, &k8s(&md))));
}

#[test]
fn submission_passwords_stay_in_the_mta_pod() {
    let md = quickstart();
    for layout in [
        k8s(&md),
        Layout::local(std::path::Path::new("/srv/pw"), 20000, 2),
    ] {
        let main = &postfix::render(&md, &layout)[postfix::MAIN_CF];
        let sasl = main_cf_value(main, "smtpd_sasl_path").unwrap();
        assert_eq!(sasl, format!("inet:127.0.0.1:{}", layout.ports.auth));

        let conf = &dovecot_auth::render(&md, &layout)[dovecot_auth::DOVECOT_AUTH_CONF];
        // The same passdb and userdb as the IMAP instances: one rendering, included verbatim.
        let auth = dovecot::auth_settings(&layout);
        assert!(conf.contains(&auth), "{conf}");
        assert!(dovecot::render(&md, &layout)[dovecot::DOVECOT_CONF].contains(&auth));
        for line in [
            "protocols =",
            "listen = 127.0.0.1",
            &format!("    port = {}", layout.ports.auth),
        ] {
            assert!(
                conf.contains(&format!("{line}\n")),
                "missing {line:?}: {conf}"
            );
        }
        // One listener only, and nothing else of the IMAP pods: no mail, TLS or doveadm.
        assert_eq!(conf.matches("inet_listener").count(), 1, "{conf}");
        for absent in ["ssl_server", "doveadm", "lmtp", "imap", "mail_driver"] {
            assert!(!conf.contains(absent), "{absent} in {conf}");
        }
        assert!(conf.contains(&format!(
            "base_dir = {}/dovecot\n",
            layout.auth_run_dir().display()
        )));

        // The IMAP instances no longer offer auth to the network.
        for (name, file) in dovecot::render(&md, &layout) {
            assert!(!file.contains("auth-client"), "{name}");
            assert!(!file.contains("service auth "), "{name}");
        }
    }
    let local = Layout::local(std::path::Path::new("/srv/pw"), 20000, 2);
    let ports: Vec<(u16, String)> = local.listen_ports();
    assert_eq!(
        ports
            .iter()
            .filter(|(_, name)| name.contains("auth"))
            .collect::<Vec<_>>(),
        [&(21345, "auth".to_string())],
        "one auth port, the sidecar's"
    );
}

#[test]
fn snapshot_rspamd() {
    let md = quickstart();
    insta::assert_snapshot!(to_yaml(&rspamd::render(&md, &k8s(&md))));
}

#[test]
fn snapshot_scripts() {
    let md = quickstart();
    insta::assert_snapshot!(to_yaml(&scripts::render(&md, &k8s(&md))));
}

#[test]
fn postfix_is_no_open_relay_and_submission_needs_tls_and_auth() {
    let md = quickstart();
    let files = postfix::render(&md, &k8s(&md));
    let main = &files[postfix::MAIN_CF];
    let master = &files[postfix::MASTER_CF];
    let v = |k| main_cf_value(main, k).unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(v("smtpd_relay_restrictions"), "reject_unauth_destination");
    assert_eq!(v("mynetworks"), "");
    assert_eq!(v("smtpd_tls_auth_only"), "yes");
    assert_eq!(v("smtpd_sasl_auth_enable"), "no", "no AUTH on port 25");
    assert_eq!(
        v("submission_relay_restrictions"),
        "permit_sasl_authenticated, reject"
    );
    assert!(
        v("submission_sender_restrictions").contains("reject_authenticated_sender_login_mismatch")
    );
    assert_eq!(v("smtpd_tls_mandatory_protocols"), ">=TLSv1.2");
    assert_eq!(v("smtpd_tls_protocols"), ">=TLSv1.2");
    assert_eq!(v("smtpd_sasl_type"), "dovecot");
    assert_eq!(v("smtpd_sasl_path"), "inet:127.0.0.1:12345");
    assert_eq!(
        v("virtual_transport"),
        "lmtp:inet:example-com-imap-hl.mail.svc:24"
    );
    assert_eq!(v("virtual_mailbox_domains"), "example.com");
    let mailbox_maps: Vec<String> = (0..USER_SHARDS)
        .map(|i| format!("texthash:/etc/postwarden/maps/mailboxes-{i:x}"))
        .collect();
    assert_eq!(v("virtual_mailbox_maps"), mailbox_maps.join(", "));
    assert_eq!(v("smtpd_reject_unlisted_recipient"), "yes");
    assert_eq!(v("message_size_limit"), (25 * 1024 * 1024).to_string());
    assert_eq!(
        v("smtpd_milters"),
        "unix:/run/postwarden/rspamd/milter.sock"
    );
    assert_eq!(
        v("non_smtpd_milters"),
        "unix:/run/postwarden/rspamd/milter.sock"
    );
    assert_eq!(v("milter_default_action"), "tempfail");
    assert_eq!(v("maillog_file"), "/dev/stdout");
    assert_eq!(v("smtp_tls_security_level"), "dane");
    assert!(main_cf_value(main, "relayhost").is_none());

    // Both submission ports enforce TLS and SASL; 465 is implicit TLS.
    for port in ["587", "465"] {
        let block: String = master
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(&format!("{port} ")))
            .take_while(|l| l.starts_with(port) || l.starts_with("  -o"))
            .collect();
        assert!(
            block.contains("-o smtpd_tls_security_level=encrypt"),
            "{block}"
        );
        assert!(block.contains("-o smtpd_sasl_auth_enable=yes"), "{block}");
        assert_eq!(block.contains("smtpd_tls_wrappermode=yes"), port == "465");
    }
    assert!(master.starts_with("# Generated"));
    assert!(master
        .contains("\n25               inet  n       -       n       -       1       postscreen\n"));
}

#[test]
fn master_cf_never_chroots_and_keeps_postlog() {
    let md = quickstart();
    let master = &postfix::render(&md, &k8s(&md))[postfix::MASTER_CF];
    let services: Vec<Vec<&str>> = master
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(' '))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(services.len() > 20);
    for s in &services {
        assert_eq!(s[4], "n", "chroot of {s:?}");
    }
    assert!(services
        .iter()
        .any(|s| s[0] == "postlog" && s[1] == "unix-dgram"));
}

#[test]
fn alias_domains_size_limit_and_proxy_protocol_follow_the_spec() {
    let mut md = quickstart();
    md.spec.alias_domains = vec!["example.org".into(), "example.net".into()];
    md.spec.mta.message_size_limit =
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("10Mi".into());
    md.spec.mta.proxy_protocol = true;
    md.spec.imap.proxy_protocol = true;
    let layout = k8s(&md);
    let files = postfix::render(&md, &layout);
    let main = &files[postfix::MAIN_CF];
    assert_eq!(
        main_cf_value(main, "virtual_mailbox_domains").unwrap(),
        "example.com, example.org, example.net"
    );
    assert_eq!(
        main_cf_value(main, "message_size_limit").unwrap(),
        "10485760"
    );
    assert_eq!(
        main_cf_value(main, "postscreen_upstream_proxy_protocol").unwrap(),
        "haproxy"
    );
    let master = &files[postfix::MASTER_CF];
    assert_eq!(
        master
            .matches("-o smtpd_upstream_proxy_protocol=haproxy")
            .count(),
        2
    );

    let dove = dovecot::render(&md, &layout);
    let inst = &dove[&dovecot::instance_file_name(0)];
    assert_eq!(inst.matches("haproxy = yes").count(), 2, "{inst}");
    assert!(inst.contains("haproxy_trusted_networks"));

    md.spec.mta.proxy_protocol = false;
    let main = &postfix::render(&md, &layout)[postfix::MAIN_CF];
    assert!(!main.contains("proxy_protocol"));
}

#[test]
fn dovecot_enforces_tls_and_reads_secrets_from_files() {
    let md = quickstart();
    let files = dovecot::render(&md, &k8s(&md));
    let shared = &files[dovecot::DOVECOT_CONF];
    for line in [
        "ssl = required",
        "ssl_min_protocol = TLSv1.2",
        "auth_allow_cleartext = no",
        "auth_username_format = %{user | lower}",
        "  default_password_scheme = SHA512-CRYPT",
        "  passwd_file_path = /etc/postwarden/users/%{user | md5 | hexlify | substr(0, 1)}.passwd",
        "mail_uid = 5000",
        "quota \"User quota\" {",
        "doveadm_password = </etc/postwarden/secrets/doveadm-password",
        "ssl_server_key_file = /etc/postwarden/tls/tls.key",
    ] {
        assert!(shared.contains(&format!("{line}\n")), "missing {line:?}");
    }
    assert!(
        !shared.contains("replicat"),
        "no replicator setting: {shared}"
    );
    assert_eq!(files.len(), 3, "shared file and one per replica");
    let one = &files[&dovecot::instance_file_name(1)];
    // Dovecot 2.4 wants the configuration version before anything else.
    assert!(one
        .lines()
        .find(|l| !l.starts_with('#'))
        .is_some_and(|l| l == "dovecot_config_version = 2.4.0"));
    assert!(one.contains("!include /etc/postwarden/config/dovecot.conf\n"));
    assert!(one.contains("base_dir = /run/postwarden/dovecot\n"));
    assert!(one.contains("mail_home = /var/mail/%{user | domain}/%{user | username}\n"));
    assert!(one.contains("unix_path = /run/postwarden/replication-events\n"));

    // Each replica's agent syncs with every other replica's doveadm server.
    let agents = replication::render(&md, &k8s(&md));
    let agent: replication::AgentConfig =
        serde_json::from_str(&agents[&replication::agent_file_name(1)]).unwrap();
    assert_eq!(
        agent.peers,
        [replication::Peer {
            name: "imap-0".into(),
            endpoint: "tcps:example-com-imap-0.example-com-imap-hl.mail.svc:12346".into(),
            agent: "example-com-imap-0.example-com-imap-hl.mail.svc:9901".into(),
            syncs: false,
        }]
    );
    assert_eq!(agent.metrics_listen, "0.0.0.0:9901");
}

#[test]
fn every_replica_replicates_with_every_other() {
    let mut md = quickstart();
    md.spec.imap.replicas = 3;
    let layout = Layout::local(std::path::Path::new("/srv/pw"), 10000, 3);
    let agents = replication::render(&md, &layout);
    assert_eq!(agents.len(), 3);
    for ordinal in 0..3 {
        let agent: replication::AgentConfig =
            serde_json::from_str(&agents[&replication::agent_file_name(ordinal)]).unwrap();
        let peers: Vec<&str> = agent.peers.iter().map(|p| p.name.as_str()).collect();
        let expected: Vec<String> = (0..3)
            .filter(|&o| o != ordinal)
            .map(|o| format!("imap-{o}"))
            .collect();
        assert_eq!(peers, expected);
        // One side of each pair syncs: the lower ordinal.
        for peer in &agent.peers {
            let other: usize = peer.name.trim_start_matches("imap-").parse().unwrap();
            assert_eq!(peer.syncs, ordinal < other, "{ordinal} with {other}");
        }
        assert_eq!(
            agent.dovecot_config,
            std::path::Path::new(&format!(
                "/srv/pw/etc/postwarden/config/dovecot-{ordinal}.conf"
            ))
        );
    }
}

#[test]
fn one_dovecot_replica_has_no_replication() {
    let mut md = quickstart();
    md.spec.imap.replicas = 1;
    let files = dovecot::render(&md, &k8s(&md));
    assert_eq!(files.len(), 2);
    let all: String = files.values().cloned().collect();
    assert!(!all.contains("replication"), "{all}");
    assert!(replication::render(&md, &k8s(&md)).is_empty());
    let entry = &scripts::render(&md, &k8s(&md))[scripts::IMAP_ENTRYPOINT];
    assert!(!entry.contains("postwarden replicate") && !entry.contains("\"$AGENT\""));
}

#[test]
fn local_layout_instances_get_their_own_dirs_and_ports() {
    let md = quickstart();
    let layout = Layout::local(std::path::Path::new("/srv/pw"), 20000, 2);
    let files = dovecot::render(&md, &layout);
    let zero = &files[&dovecot::instance_file_name(0)];
    let one = &files[&dovecot::instance_file_name(1)];
    assert!(zero.contains("base_dir = /srv/pw/run/postwarden/imap-0/dovecot\n"));
    assert!(
        one.contains("mail_home = /srv/pw/var/mail/imap-1/%{user | domain}/%{user | username}\n")
    );
    assert!(zero.contains("port = 20993\n") && one.contains("port = 30993\n"));
    let agents = replication::render(&md, &layout);
    assert!(agents[&replication::agent_file_name(0)].contains("\"tcps:127.0.0.1:31346\""));
    assert!(agents[&replication::agent_file_name(1)].contains("\"tcps:127.0.0.1:21346\""));
    assert!(zero.contains("log_path = /srv/pw/var/log/dovecot-0.log\n"));
    let ports: Vec<u16> = layout.listen_ports().iter().map(|(p, _)| *p).collect();
    assert!(ports.contains(&20025) && ports.contains(&31346) && ports.contains(&21334));
    let main = &postfix::render(&md, &layout)[postfix::MAIN_CF];
    assert_eq!(
        main_cf_value(main, "relayhost").unwrap(),
        "[127.0.0.1]:21025"
    );
    assert_eq!(
        main_cf_value(main, "smtp_tls_security_level").unwrap(),
        "may"
    );
    assert!(main.contains("maillog_file_prefixes = /var, /dev/stdout, /srv/pw/var/log\n"));
    let rspamd = &rspamd::render(&md, &layout)[rspamd::RSPAMD_CONF];
    assert!(rspamd.contains("nameserver = [\"127.0.0.1:21053\"];"));
}

#[test]
fn rspamd_thresholds_dkim_paths_and_spam_switch() {
    let mut md = quickstart();
    md.spec.spam.reject_score = 20;
    md.spec.spam.add_header_score = 7;
    let layout = k8s(&md);
    let files = rspamd::render(&md, &layout);
    let modules = &files[rspamd::RSPAMD_MODULES_CONF];
    assert!(modules.contains("reject = 20;\n  add_header = 7;"));
    assert!(modules.contains("selector_map = \"/etc/postwarden/dkim/selectors.map\";"));
    assert!(modules.contains("path = \"/etc/postwarden/dkim/$domain.$selector.key\";"));
    assert!(modules.contains("sign_authenticated = true;"));
    assert!(modules.contains("sign_local = false;"));
    for off in ["rbl", "fuzzy_check", "surbl", "asn", "emails"] {
        assert!(
            modules.contains(&format!("\n{off} {{\n  enabled = false;\n}}")),
            "{off}"
        );
    }
    assert!(!modules.contains("want_spam"));
    let top = &files[rspamd::RSPAMD_CONF];
    assert!(top.contains("bind_socket = \"/run/postwarden/rspamd/milter.sock mode=0666\";"));
    assert!(top.contains("bind_socket = \"*:11334\";"));
    // No password in a ConfigMap: read-only commands need none, and the privileged ones are
    // locked by a value that is not a password at all (its salt is not base32, which Rspamd
    // refuses before hashing; an empty salt would make Rspamd accept anything).
    let passwords: Vec<&str> = top
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("password"))
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(
        passwords,
        [format!(
            "enable_password = \"{}\";",
            rspamd::PRIVILEGED_COMMANDS_DISABLED
        )]
    );
    let salt = rspamd::PRIVILEGED_COMMANDS_DISABLED
        .split('$')
        .nth(2)
        .unwrap();
    const RSPAMD_BASE32: &str = "ybndrfg8ejkmcpqxot1uwisza345h769";
    assert!(!salt.is_empty() && salt.chars().any(|c| !RSPAMD_BASE32.contains(c)));
    assert!(
        !top.contains("secure_ip ="),
        "loopback gets no privileges either"
    );
    assert!(!top.contains("redis"));

    md.spec.spam.enabled = false;
    let modules = &rspamd::render(&md, &layout)[rspamd::RSPAMD_MODULES_CONF];
    assert!(modules.contains("reject = null;"));
    assert!(modules.contains("want_spam = yes;"));
    assert!(modules.contains("dkim_signing {"), "outbound still signed");
}

#[test]
fn entrypoints_are_valid_posix_sh() {
    let md = quickstart();
    for layout in [
        k8s(&md),
        Layout::local(std::path::Path::new("/srv/p w"), 20000, 2),
    ] {
        for (name, script) in scripts::render(&md, &layout) {
            assert!(script.starts_with("#!/bin/sh\n"), "{name}");
            let out = Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // dash is Debian's /bin/sh; a bashism would fail there.
            assert!(!script.contains("[["), "{name}");
        }
    }
}

#[test]
fn mta_and_imap_file_sets_are_disjoint_and_hold_no_secrets() {
    let md = quickstart();
    let layout = k8s(&md);
    let mta = mta_files(&md, &layout);
    let imap = imap_files(&md, &layout);
    assert!(mta.keys().all(|k| !imap.contains_key(k)));
    for sidecar in [dovecot_auth::DOVECOT_AUTH_CONF, scripts::AUTH_ENTRYPOINT] {
        assert!(mta.contains_key(sidecar), "{sidecar}");
    }
    for (name, content) in mta.iter().chain(&imap) {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
            "{name} is not a ConfigMap key"
        );
        assert!(!content.contains("PRIVATE KEY"), "{name}");
        assert!(!content.contains("{SHA512-CRYPT}"), "{name}");
    }
}
