//! The continuity configuration: Postfix relays to the provider and copies to the emergency
//! inboxes, the agent's switch, and refused specs (no daemons needed; the mail path's
//! test_continuity.py runs it in the real daemons).

use super::testing::continuity_inputs;
use super::*;
use crate::api::maildomain::MailDomain;
use crate::api::validate;
use crate::manifest::to_yaml;

fn example() -> MailDomain {
    continuity_inputs().domains.remove(0)
}

fn layout(md: &MailDomain) -> Layout {
    Layout::kubernetes(md.metadata.name.as_deref().unwrap(), "mail", 1)
}

fn value<'a>(main: &'a str, key: &str) -> &'a str {
    main.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} not set"))
}

#[test]
fn snapshot_continuity() {
    let md = example();
    let mut files = postfix::render(&md, &layout(&md));
    files.extend(continuity::render(&md, &layout(&md)));
    files.extend(continuity::imap_files(&md));
    let layout = layout(&md);
    files.insert(
        "dovecot-0.conf (continuity part)".into(),
        continuity::dovecot_settings(&md, &layout, &layout.imap_instance(0)),
    );
    files.insert(
        "imap-entrypoint.sh (continuity part)".into(),
        continuity::imap_entrypoint_prepare(&md),
    );
    insta::assert_snapshot!(to_yaml(&files));
}

#[test]
fn mail_is_relayed_as_addressed_and_copied_only_for_mailboxes() {
    let md = example();
    let files = postfix::render(&md, &layout(&md));
    let main = &files[postfix::MAIN_CF];
    assert_eq!(value(main, "relay_domains"), "contoso.com");
    assert_eq!(value(main, "virtual_mailbox_domains"), "");
    // The provider resolves its own aliases: nothing rewrites the recipient here.
    assert_eq!(value(main, "virtual_alias_maps"), "");
    assert_eq!(
        value(main, "relay_transport"),
        "upstream:[contoso-com.mail.protection.outlook.com]:25"
    );
    assert!(value(main, "recipient_bcc_maps").contains("continuity-copy-0"));
    assert!(value(main, "relay_recipient_maps").contains("continuity-recipients-f"));
    assert_eq!(value(main, "maximal_queue_lifetime"), "604800s");
    // Nobody addresses a copy directly, on port 25 or submission.
    for key in [
        "smtpd_recipient_restrictions",
        "submission_recipient_restrictions",
    ] {
        assert!(
            value(main, key)
                .starts_with("check_recipient_access regexp:{{/[+]postwarden-continuity@/ 550"),
            "{key}"
        );
    }
    let master = &files[postfix::MASTER_CF];
    assert!(master.contains("upstream  unix"));
    assert!(master.contains("-o smtp_tls_security_level=secure"));

    let users = crate::userdb::build(&md.spec, &super::testing::quickstart_mailboxes());
    let copies: String = users
        .maps
        .iter()
        .filter(|(k, _)| k.starts_with("continuity-copy-"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(copies.contains("alice@contoso.com alice+postwarden-continuity@contoso.com"));
}

#[test]
fn dns_keeps_the_provider_as_first_mx_and_its_spf_include() {
    let md = example();
    assert_eq!(
        crate::dns::records::mx_hosts(&md.spec),
        [
            (10, "contoso-com.mail.protection.outlook.com".to_string()),
            (20, "mx2.contoso.com".to_string())
        ]
    );
    let records = crate::dns::records::records(&md, &[]);
    assert!(records
        .iter()
        .any(|r| r.record_type == "TXT" && r.value.contains("include:spf.protection.outlook.com")));
}

#[test]
fn the_two_transport_maps_differ_only_in_where_copies_go() {
    let md = example();
    let files = continuity::render(&md, &layout(&md));
    let deliver = &files[continuity::TRANSPORT_DELIVER];
    let hold = &files[continuity::TRANSPORT_HOLD];
    assert!(
        deliver.contains("/[+]postwarden-continuity@/ lmtp:inet:contoso-com-imap-hl.mail.svc:24")
    );
    assert!(hold.contains("/[+]postwarden-continuity@/ retry:4.3.0 "));
    let agent: continuity::AgentConfig =
        serde_json::from_str(&files[continuity::AGENT_CONFIG]).unwrap();
    assert_eq!(
        agent.upstreams,
        ["contoso-com.mail.protection.outlook.com:25"]
    );
    assert!(agent.verify_tls && !agent.manual && !agent.active);
    assert_eq!(
        agent.deliver_map,
        layout(&md).config_dir().join(continuity::TRANSPORT_DELIVER)
    );
}

#[test]
fn without_continuity_nothing_of_it_is_rendered() {
    let md = super::testing::quickstart();
    let l = layout(&md);
    assert!(continuity::render(&md, &l).is_empty());
    let main = &postfix::render(&md, &l)[postfix::MAIN_CF];
    assert!(!main.contains("recipient_bcc_maps"));
    assert!(!main.contains("postwarden-continuity"));
    let users = crate::userdb::build(&md.spec, &super::testing::quickstart_mailboxes());
    assert!(!users.maps.keys().any(|k| k.starts_with("continuity")));
}

#[test]
fn refused_specs_name_the_field() {
    let spec = |patch: &str| {
        let mut md = example();
        let mut v = serde_json::to_value(&md.spec).unwrap();
        let p: serde_json::Value = serde_json::from_str(patch).unwrap();
        merge(&mut v, &p);
        md.spec = serde_json::from_value(v).unwrap();
        validate::maildomain("contoso-com", &md.spec)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        spec(r#"{"continuity":{"upstream":{"hosts":["mx2.contoso.com"]}}}"#),
        ["spec.continuity.upstream.hosts[0]"]
    );
    assert_eq!(
        spec(r#"{"continuity":{"upstream":{"hosts":["contoso.com"]}}}"#),
        ["spec.continuity.upstream.hosts[0]"]
    );
    assert_eq!(
        spec(r#"{"continuity":{"spoolRetention":"800h"}}"#),
        ["spec.continuity.spoolRetention"]
    );
    assert_eq!(
        spec(r#"{"continuity":{"spoolRetention":"10m"}}"#),
        ["spec.continuity.spoolRetention"]
    );
    assert_eq!(
        spec(r#"{"continuity":{"emergencyInbox":{"retention":"9000h"}}}"#),
        ["spec.continuity.emergencyInbox.retention"]
    );
    assert_eq!(
        spec(r#"{"region":{"role":"Secondary","peerHostname":"mx1.contoso.com"}}"#),
        ["spec.continuity"]
    );
    assert_eq!(
        spec(r#"{"continuity":{"upstream":{"hosts":["Not A Host"]}}}"#),
        ["spec.continuity.upstream.hosts[0]"]
    );
    assert!(validate::maildomain("contoso-com", &example().spec).is_ok());
}

#[test]
fn recipients_from_the_config_map_are_accepted_and_bad_lines_refused() {
    let inputs = continuity_inputs();
    let md = &inputs.domains[0];
    let text = inputs.continuity_recipients(md).unwrap().unwrap();
    let mut users = crate::userdb::build(&md.spec, &[]);
    assert!(users.set_continuity_recipients(&text).is_empty());
    let all: String = users.maps.values().map(String::as_str).collect();
    assert!(all.contains("sales@contoso.com OK") && all.contains("helpdesk@contoso.com OK"));
    let err = crate::plan::continuity_recipients(
        &mut users,
        Some(&Ok("ok@contoso.com\nnot an address\n".to_string())),
    )
    .unwrap_err();
    assert!(err.to_string().contains("\"not an address\""), "{err}");
    let missing =
        crate::plan::continuity_recipients(&mut users, Some(&Err("ConfigMap x not found".into())))
            .unwrap_err();
    assert!(missing
        .to_string()
        .starts_with("spec.continuity.recipients.configMapRef"));
}

fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}
