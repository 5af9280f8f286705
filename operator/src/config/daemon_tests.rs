//! The rendered configuration, checked by the real Debian daemons (Postfix, Dovecot, Rspamd).
//! A missing daemon fails these tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use super::testing::{quickstart, quickstart_mailboxes};
use super::*;
use crate::api::maildomain::MailDomain;
use crate::userdb::{self, shard_file_name};

/// Writes everything a local run needs below `dir`: config, users, maps, TLS, secrets, DKIM.
pub(crate) fn write_tree(md: &MailDomain, layout: &Layout, mailboxes: &[userdb::ResolvedMailbox]) {
    let mut files = mta_files(md, layout);
    files.extend(imap_files(md, layout));
    write_files(&layout.config_dir(), &files);

    let db = userdb::build(&md.spec, mailboxes);
    let shards: BTreeMap<String, String> = db
        .shards
        .iter()
        .enumerate()
        .map(|(i, c)| (shard_file_name(i), c.clone()))
        .collect();
    write_files(&layout.users_dir(), &shards);
    write_files(&layout.maps_dir(), &db.maps);

    let cert = rcgen::generate_simple_self_signed(vec![hostname(&md.spec)]).expect("cert");
    write_files(
        &layout.tls_dir(),
        &BTreeMap::from([
            ("tls.crt".to_string(), cert.cert.pem()),
            ("tls.key".to_string(), cert.signing_key.serialize_pem()),
        ]),
    );
    write_files(
        &layout.secrets_dir(),
        &BTreeMap::from([(
            secret_files::DOVEADM_PASSWORD.to_string(),
            "doveadm-test-password".to_string(),
        )]),
    );
    write_files(
        &layout.dkim_dir(),
        &BTreeMap::from([(
            dkim_files::SELECTORS_MAP.to_string(),
            format!("{} pw1\n", md.spec.domain),
        )]),
    );
}

fn write_files(dir: &Path, files: &BTreeMap<String, String>) {
    fs::create_dir_all(dir).expect("mkdir");
    for (name, content) in files {
        fs::write(dir.join(name), content).expect("write");
    }
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is the daemon installed?): {e}"));
    out
}

pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn local_tree(replicas: usize) -> (Option<tempfile::TempDir>, MailDomain, Layout) {
    let dir = tempfile::Builder::new()
        .prefix("postwarden-config-")
        .tempdir()
        .expect("tempdir");
    let md = quickstart();
    let layout = Layout::local(dir.path(), 30000, replicas);
    write_tree(&md, &layout, &quickstart_mailboxes());
    // Set POSTWARDEN_KEEP_TEST_DIR to inspect the rendered tree after the test.
    if std::env::var_os("POSTWARDEN_KEEP_TEST_DIR").is_some() {
        eprintln!("keeping {}", dir.keep().display());
        return (None, md, layout);
    }
    (Some(dir), md, layout)
}

#[test]
fn postfix_accepts_the_rendered_configuration() {
    let (_dir, _md, layout) = local_tree(2);
    fs::create_dir_all(layout.queue_dir()).unwrap();
    fs::create_dir_all(layout.postfix_data_dir()).unwrap();
    fs::create_dir_all(layout.log_dir.as_ref().unwrap()).unwrap();
    let config = layout.config_dir();
    // `postfix check` is silent without a tty; its exit status is what counts. postconf -n
    // reports unknown parameters and syntax errors of main.cf and master.cf.
    run_ok(Command::new("postfix").arg("-c").arg(&config).arg("check"));
    let warnings = run_ok(Command::new("postconf").arg("-c").arg(&config).arg("-n"));
    assert!(!warnings.contains("warning"), "{warnings}");
    let master = run_ok(Command::new("postconf").arg("-c").arg(&config).arg("-M"));
    assert!(!master.contains("warning"), "{master}");
}

#[test]
fn dovecot_accepts_every_instance_configuration() {
    let (_dir, _md, layout) = local_tree(2);
    for ordinal in 0..2 {
        let conf = layout
            .config_dir()
            .join(dovecot::instance_file_name(ordinal));
        let out = run_ok(Command::new("doveconf").arg("-c").arg(&conf).arg("-n"));
        assert!(!out.contains("Warning"), "{out}");
    }
}

#[test]
fn rspamd_accepts_the_rendered_configuration() {
    let (_dir, _md, layout) = local_tree(1);
    let conf = layout.config_dir().join(rspamd::RSPAMD_CONF);
    run_ok(
        Command::new("rspamadm")
            .arg("configtest")
            .arg("-c")
            .arg(&conf),
    );
}
