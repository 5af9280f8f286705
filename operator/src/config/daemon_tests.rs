//! The rendered configuration, checked by the real Debian daemons (Postfix, Dovecot, Rspamd).
//! A missing daemon fails these tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use super::testing::{quickstart, quickstart_mailboxes};
use super::*;
use crate::api::maildomain::MailDomain;
use crate::runtime::Runtime;
use crate::userdb::{self, shard_file_name};

/// The runtime these tests run the daemons in (`POSTWARDEN_ROOT`, else the host's packages),
/// seeing the test directory `dir` at its path.
pub(crate) fn runtime(dir: &Path) -> Runtime {
    Runtime::from_env()
        .expect("POSTWARDEN_ROOT names a Debian root")
        .sharing(dir)
}

/// `program` of the daemons' runtime, seeing the test tree of `layout`.
pub(crate) fn daemon(layout: &Layout, program: &str) -> Command {
    runtime(&layout.root).command(program)
}

/// The postwarden binary next to this test binary (cargo builds it for the CLI tests): the
/// IMAP entrypoint runs it as the replication agent.
pub(crate) fn agent_binary() -> String {
    let exe = std::env::current_exe().expect("test binary");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("postwarden"))
        .filter(|p| p.is_file())
        .expect("target/<profile>/postwarden is built (cargo test builds it)");
    bin.display().to_string()
}

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

/// A port base whose every port is free now (tests run in parallel with other work on the host).
pub(crate) fn free_port_base(replicas: usize) -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for i in 0..200u64 {
        let base = 12000 + ((seed + i * 7919) % 100) as u16 * 100;
        let layout = Layout::local(Path::new("/nonexistent"), base, replicas);
        let free = layout
            .listen_ports()
            .iter()
            .all(|(port, _)| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port base found");
}

pub(crate) fn local_tree(replicas: usize) -> (Option<tempfile::TempDir>, MailDomain, Layout) {
    let dir = tempfile::Builder::new()
        .prefix("postwarden-config-")
        .tempdir()
        .expect("tempdir");
    let md = quickstart();
    let layout = Layout::local(dir.path(), free_port_base(replicas), replicas);
    write_tree(&md, &layout, &quickstart_mailboxes());
    // Set POSTWARDEN_KEEP_TEST_DIR to inspect the rendered tree after the test.
    if std::env::var_os("POSTWARDEN_KEEP_TEST_DIR").is_some() {
        eprintln!("keeping {}", dir.keep().display());
        return (None, md, layout);
    }
    (Some(dir), md, layout)
}

/// `postfix check` and `postconf -n`/`-M` without a warning on the rendered configuration (the
/// queue, data and log directories created first). `postfix check` is silent without a tty; its
/// exit status is what counts. postconf reports unknown parameters and syntax errors of main.cf
/// and master.cf.
fn assert_postfix_accepts(layout: &Layout) {
    for d in [
        layout.queue_dir(),
        layout.postfix_data_dir(),
        layout.log_dir.clone().expect("local layouts log to files"),
    ] {
        fs::create_dir_all(d).unwrap();
    }
    let config = layout.config_dir();
    run_ok(
        daemon(layout, "postfix")
            .arg("-c")
            .arg(&config)
            .arg("check"),
    );
    for flag in ["-n", "-M"] {
        let out = run_ok(daemon(layout, "postconf").arg("-c").arg(&config).arg(flag));
        assert!(!out.contains("warning"), "{out}");
    }
}

#[test]
fn postfix_accepts_the_rendered_configuration() {
    let (_dir, _md, layout) = local_tree(2);
    assert_postfix_accepts(&layout);
}

#[test]
fn dovecot_accepts_every_instance_configuration() {
    let (_dir, _md, layout) = local_tree(2);
    for ordinal in 0..2 {
        let conf = layout
            .config_dir()
            .join(dovecot::instance_file_name(ordinal));
        let out = run_ok(daemon(&layout, "doveconf").arg("-c").arg(&conf).arg("-n"));
        assert!(!out.contains("Warning"), "{out}");
    }
}

#[test]
fn every_option_variant_passes_the_daemons_checks() {
    use crate::api::maildomain::RegionRole;
    let dir = tempfile::Builder::new()
        .prefix("postwarden-config-")
        .tempdir()
        .expect("tempdir");
    let mut md = quickstart();
    md.spec.alias_domains = vec!["example.org".into()];
    md.spec.mta.proxy_protocol = true;
    md.spec.imap.proxy_protocol = true;
    md.spec.imap.replicas = 1;
    md.spec.spam.enabled = false;
    md.spec.region.role = RegionRole::Secondary;
    md.spec.region.peer_hostname = Some("mx1.example.com".into());
    let layout = Layout::local(dir.path(), free_port_base(1), 1);
    write_tree(&md, &layout, &quickstart_mailboxes());
    assert_postfix_accepts(&layout);
    let config = layout.config_dir();
    let conf = config.join(dovecot::instance_file_name(0));
    let out = run_ok(daemon(&layout, "doveconf").arg("-c").arg(&conf).arg("-n"));
    assert!(out.contains("haproxy = yes"), "{out}");
    run_ok(
        daemon(&layout, "rspamadm")
            .arg("configtest")
            .arg("-c")
            .arg(config.join(rspamd::RSPAMD_CONF)),
    );
}

#[test]
fn the_continuity_configuration_passes_the_daemons_checks() {
    let dir = tempfile::Builder::new()
        .prefix("postwarden-config-")
        .tempdir()
        .expect("tempdir");
    let md = super::testing::continuity_inputs().domains.remove(0);
    let layout = Layout::local(dir.path(), free_port_base(1), 1);
    write_tree(&md, &layout, &quickstart_mailboxes());
    // What the MTA entrypoint does before Postfix starts: the holding transport map in place.
    let config = layout.config_dir();
    fs::create_dir_all(layout.continuity_dir()).unwrap();
    fs::copy(
        config.join(continuity::TRANSPORT_HOLD),
        layout.continuity_dir().join(continuity::TRANSPORT_MAP),
    )
    .unwrap();
    assert_postfix_accepts(&layout);
    // The maps answer as the design says: a copy address goes to the held transport, the
    // provider's address relays, nobody may address a copy.
    let map = format!(
        "regexp:{}",
        layout
            .continuity_dir()
            .join(continuity::TRANSPORT_MAP)
            .display()
    );
    let out = run_ok(
        daemon(&layout, "postmap")
            .arg("-c")
            .arg(&config)
            .arg("-q")
            .arg("alice+postwarden-continuity@contoso.com")
            .arg(&map),
    );
    assert!(out.starts_with("retry:4.3.0"), "{out}");
    let conf = config.join(dovecot::instance_file_name(0));
    let out = run_ok(daemon(&layout, "doveconf").arg("-c").arg(&conf).arg("-n"));
    assert!(out.contains("autoexpunge = 2592000 secs"), "{out}");
    assert!(out.contains("sieve_script continuity_once"), "{out}");
    // The copies' Sieve script compiles with the extensions it requires.
    let compiled = dir.path().join("once.svbin");
    run_ok(
        daemon(&layout, "sievec")
            .arg("-c")
            .arg(&conf)
            .arg(config.join(continuity::ONCE_SCRIPT))
            .arg(&compiled),
    );
    assert!(compiled.metadata().unwrap().len() > 0);
}

#[test]
fn dovecot_accepts_the_auth_sidecar_configuration() {
    let (_dir, _md, layout) = local_tree(1);
    let conf = layout.config_dir().join(dovecot_auth::DOVECOT_AUTH_CONF);
    let out = run_ok(daemon(&layout, "doveconf").arg("-c").arg(&conf).arg("-n"));
    assert!(!out.contains("Warning"), "{out}");
    assert!(out.contains("protocols = \n"), "{out}");
    // The one network listener is the auth-client one, on loopback.
    let listen = run_ok(
        daemon(&layout, "doveconf")
            .arg("-c")
            .arg(&conf)
            .args(["-h", "listen"]),
    );
    assert_eq!(listen.trim(), LOOPBACK);
}

/// One request of Dovecot's auth-client protocol as Postfix makes it: PLAIN for a client at
/// 127.0.0.2 over a TLS-secured session, giving up after Postfix's 10 s. True on `OK`.
fn sasl_plain(port: u16, user: &str, password: &str) -> bool {
    use base64::Engine as _;
    use std::io::{BufRead, BufReader, Write as _};
    let stream = std::net::TcpStream::connect((LOOPBACK, port)).expect("auth connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    write!(w, "VERSION\t1\t2\nCPID\t{}\n", std::process::id()).unwrap();
    let mut line = String::new();
    while line != "DONE\n" {
        line.clear();
        assert!(reader.read_line(&mut line).expect("auth handshake") > 0);
    }
    let resp = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    writeln!(
        w,
        "AUTH\t1\tPLAIN\tservice=smtp\tsecured\trip=127.0.0.2\tresp={resp}"
    )
    .unwrap();
    line.clear();
    reader.read_line(&mut line).expect("auth reply");
    assert!(
        line.starts_with("OK\t1") || line.starts_with("FAIL\t1"),
        "{line}"
    );
    line.starts_with("OK\t1")
}

/// The quickstart's mailboxes and a suspended `carol@example.com` (password `carol-pw`).
fn with_suspended_carol() -> Vec<userdb::ResolvedMailbox> {
    let mut mailboxes = quickstart_mailboxes();
    let mut carol = mailboxes[0].clone();
    carol.local_part = "carol".into();
    carol.aliases.clear();
    carol.password_hash =
        userdb::hash_password("carol-pw", super::testing::SALT_KEY, "carol@example.com").unwrap();
    carol.suspended = true;
    mailboxes.push(carol);
    mailboxes
}

#[test]
fn auth_sidecar_runs_unprivileged_on_loopback_and_picks_up_user_changes() {
    use std::os::unix::fs::PermissionsExt;
    let (_guard, md, layout) = local_tree(1);
    let mut mailboxes = with_suspended_carol();
    write_tree(&md, &layout, &mailboxes);

    // As in the pod: Dovecot's user, no capability at all, its own writable runtime directory
    // (the pod's emptyDir) and log directory; everything else read-only to it.
    fs::set_permissions(&layout.root, fs::Permissions::from_mode(0o755)).unwrap();
    let log_dir = layout.log_dir.clone().unwrap();
    for dir in [layout.auth_run_dir(), log_dir.clone()] {
        fs::create_dir_all(&dir).unwrap();
        run_ok(daemon(&layout, "chown").arg(dovecot_auth::USER).arg(&dir));
    }
    let mut cmd = daemon(&layout, "setpriv");
    cmd.args([
        "--reuid",
        dovecot_auth::USER,
        "--regid",
        dovecot_auth::USER,
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "sh",
    ])
    .arg(layout.config_dir().join(scripts::AUTH_ENTRYPOINT));
    let log = log_dir.join("auth-entrypoint.log");
    let entry = Entrypoint::spawn(cmd, &[], &log);
    let port = layout.ports.auth;
    wait_for_port(port, "Dovecot auth sidecar", &log);
    // Loopback only: nothing listens on the wildcard address for this port.
    let tcp = fs::read_to_string("/proc/net/tcp").unwrap();
    let wildcard = format!("00000000:{port:04X} ");
    assert!(!tcp.contains(&wildcard), "{tcp}");

    assert!(sasl_plain(
        port,
        "Alice@Example.COM",
        "correct-horse-battery-staple"
    ));
    assert!(!sasl_plain(port, "alice@example.com", "wrong"));
    assert!(!sasl_plain(port, "carol@example.com", "carol-pw"));
    // Failures from one address do not pile up delays past Postfix's patience.
    for n in 0..3 {
        assert!(!sasl_plain(port, &format!("nobody{n}@example.com"), "x"));
    }
    assert!(sasl_plain(
        port,
        "alice@example.com",
        "correct-horse-battery-staple"
    ));

    mailboxes.last_mut().unwrap().suspended = false;
    let db = userdb::build(&md.spec, &mailboxes);
    let shard = userdb::shard_of("carol@example.com");
    fs::write(
        layout.users_dir().join(shard_file_name(shard)),
        &db.shards[shard],
    )
    .unwrap();
    eventually(15, "carol can authenticate after the change", || {
        sasl_plain(port, "carol@example.com", "carol-pw")
    });
    // Dovecot may see the new file before the watcher does; the flush follows either way.
    eventually(10, "the entrypoint flushes the auth cache", || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("flushing the auth cache"))
    });

    let status = entry.stop();
    assert!(
        status.success(),
        "entrypoint exit {status:?}: {}",
        fs::read_to_string(&log).unwrap()
    );
    eventually(10, "the sidecar stopped", || {
        std::net::TcpStream::connect((LOOPBACK, port)).is_err()
    });
}

#[test]
fn rspamd_accepts_the_rendered_configuration() {
    let (_dir, _md, layout) = local_tree(1);
    let conf = layout.config_dir().join(rspamd::RSPAMD_CONF);
    run_ok(
        daemon(&layout, "rspamadm")
            .arg("configtest")
            .arg("-c")
            .arg(&conf),
    );
}

/// A started entrypoint; TERM on drop so a failing test leaves no daemon behind.
pub(crate) struct Entrypoint {
    child: std::process::Child,
}

impl Entrypoint {
    pub(crate) fn start(layout: &Layout, script: &Path, env: &[(&str, &str)], log: &Path) -> Self {
        let mut sh = daemon(layout, "sh");
        sh.arg(script);
        Self::spawn(sh, env, log)
    }

    /// Runs `cmd` (an entrypoint, possibly behind a privilege-dropping wrapper).
    /// The entrypoint leads a process group of its own, so [`Self::kill`] takes its daemon and
    /// everything it started down at once, as a crashing pod would.
    pub(crate) fn spawn(mut cmd: Command, env: &[(&str, &str)], log: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        let out = fs::File::create(log).expect("log file");
        let child = cmd
            .process_group(0)
            .envs(env.iter().copied())
            .env("POSTWARDEN_WATCH_INTERVAL", "1")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start entrypoint");
        Self { child }
    }

    /// TERM, then the exit status of the entrypoint.
    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        self.terminate();
        self.child.wait().expect("wait")
    }

    /// SIGKILL to the entrypoint's whole process group: nothing gets to clean up.
    pub(crate) fn kill(mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for Entrypoint {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `port` on 127.0.0.1 accepts connections.
pub(crate) fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not listen on {port}:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Waits until `check` holds, up to `secs`.
pub(crate) fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// One LMTP transaction; returns the server's replies.
pub(crate) fn lmtp_deliver(port: u16, rcpt: &str, body: &str) -> String {
    use std::io::{BufRead, BufReader, Write as _};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("lmtp connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut replies = String::new();
    let mut read_reply = |reader: &mut BufReader<std::net::TcpStream>| loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("lmtp read");
        replies.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            break;
        }
    };
    read_reply(&mut reader);
    for cmd in [
        "LHLO test.example.net".to_string(),
        "MAIL FROM:<sender@example.net>".into(),
        format!("RCPT TO:<{rcpt}>"),
        "DATA".into(),
    ] {
        write!(w, "{cmd}\r\n").unwrap();
        read_reply(&mut reader);
    }
    write!(w, "Subject: test\r\n\r\n{body}\r\n.\r\n").unwrap();
    read_reply(&mut reader);
    write!(w, "QUIT\r\n").unwrap();
    replies
}

#[test]
fn dovecot_refuses_suspended_logins_delivers_their_mail_and_picks_up_user_changes() {
    let (_guard, md, layout) = local_tree(1);
    let mut mailboxes = with_suspended_carol();
    write_tree(&md, &layout, &mailboxes);

    let config = layout.config_dir();
    let conf = config.join(dovecot::instance_file_name(0));
    let log = layout.root.join("imap-entrypoint.log");
    let entry = Entrypoint::start(
        &layout,
        &config.join(scripts::IMAP_ENTRYPOINT),
        &[("POSTWARDEN_ORDINAL", "0")],
        &log,
    );
    let ports = layout.imap_instance(0).ports;
    wait_for_port(ports.lmtp, "Dovecot LMTP", &log);

    let auth = |user: &str, pw: &str| {
        run(daemon(&layout, "doveadm")
            .arg("-c")
            .arg(&conf)
            .args(["auth", "test", user, pw]))
        .status
        .success()
    };
    // Our SHA512-CRYPT hashes verify in Dovecot; user names are matched case-insensitively.
    assert!(auth("alice@example.com", "correct-horse-battery-staple"));
    assert!(auth("Alice@Example.COM", "correct-horse-battery-staple"));
    assert!(!auth("alice@example.com", "wrong"));
    // Suspended: the right password is refused, but the user exists for delivery.
    assert!(!auth("carol@example.com", "carol-pw"));
    let user = run_ok(
        daemon(&layout, "doveadm")
            .arg("-c")
            .arg(&conf)
            .args(["user", "carol@example.com"]),
    );
    assert!(user.contains("uid\t5000"), "{user}");
    let replies = lmtp_deliver(ports.lmtp, "carol@example.com", "kept while suspended");
    assert!(
        replies.contains("250 2.0.0 <carol@example.com>"),
        "{replies}"
    );
    // The quota from the users database applies.
    let quota = run_ok(daemon(&layout, "doveadm").arg("-c").arg(&conf).args([
        "quota",
        "get",
        "-u",
        "alice@example.com",
    ]));
    assert!(quota.contains("2097152"), "{quota}");

    // Lifting the suspension is a users database change, applied without a restart.
    mailboxes.last_mut().unwrap().suspended = false;
    let db = userdb::build(&md.spec, &mailboxes);
    let shard = userdb::shard_of("carol@example.com");
    fs::write(
        layout.users_dir().join(shard_file_name(shard)),
        &db.shards[shard],
    )
    .unwrap();
    eventually(15, "carol can log in after the change", || {
        auth("carol@example.com", "carol-pw")
    });

    let status = entry.stop();
    assert!(status.success(), "entrypoint exit {status:?}");
    eventually(10, "Dovecot stopped", || {
        std::net::TcpStream::connect(("127.0.0.1", ports.lmtp)).is_err()
    });
}

/// An SMTP dialogue: the greeting, then one reply per command (multi-line replies joined).
fn smtp_dialogue(port: u16, commands: &[&str]) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write as _};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("smtp connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut read_reply = || {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("smtp read");
            reply.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return reply;
            }
        }
    };
    let mut replies = vec![read_reply()];
    for cmd in commands {
        write!(w, "{cmd}\r\n").unwrap();
        replies.push(read_reply());
    }
    replies
}

/// A milter that accepts everything: it negotiates away every callback, so Postfix sends only
/// macros (no reply) and, at the end of a message, expects one "accept".
fn accept_all_milter(socket: &Path) {
    use std::io::{Read, Write as _};
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(socket.parent().expect("socket directory")).expect("mkdir");
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("milter socket");
    // Postfix's smtpd runs as the postfix user, as Rspamd's socket allows.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || loop {
                let mut len = [0u8; 4];
                if conn.read_exact(&mut len).is_err() {
                    return;
                }
                let mut packet = vec![0u8; u32::from_be_bytes(len) as usize];
                if conn.read_exact(&mut packet).is_err() {
                    return;
                }
                let reply: Option<Vec<u8>> = match packet.first() {
                    // Option negotiation: version 6, no actions, no callbacks (SMFIP_NO*).
                    Some(b'O') => Some(
                        [
                            &[b'O'][..],
                            &6u32.to_be_bytes(),
                            &0u32.to_be_bytes(),
                            &0x1ffu32.to_be_bytes(),
                        ]
                        .concat(),
                    ),
                    Some(b'E') => Some(vec![b'a']),
                    _ => None,
                };
                if let Some(r) = reply {
                    let mut out = (r.len() as u32).to_be_bytes().to_vec();
                    out.extend(r);
                    if conn.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[test]
fn postfix_refuses_relay_and_unknown_recipients_and_reloads_changed_maps() {
    let (_guard, _md, layout) = local_tree(1);
    let config = layout.config_dir();
    let log = layout.root.join("mta-entrypoint.log");
    let entry = Entrypoint::start(&layout, &config.join(scripts::MTA_ENTRYPOINT), &[], &log);
    let ports = layout.ports.clone();
    accept_all_milter(&layout.milter_socket());
    wait_for_port(ports.smtp, "Postfix", &log);
    wait_for_port(ports.submission, "Postfix submission", &log);

    // Port 25 (through postscreen): only our domains, only existing recipients, no AUTH.
    let r = smtp_dialogue(
        ports.smtp,
        &[
            "EHLO client.example.net",
            "MAIL FROM:<someone@example.net>",
            "RCPT TO:<victim@example.org>",
            "RCPT TO:<nobody@example.com>",
            "RCPT TO:<postmaster@example.com>",
            "RCPT TO:<sales@example.com>",
            "QUIT",
        ],
    );
    assert!(r[0].starts_with("220"), "{r:?}");
    assert!(!r[1].contains("AUTH"), "no AUTH on port 25: {}", r[1]);
    assert!(r[1].contains("STARTTLS"), "{}", r[1]);
    assert!(
        r[3].starts_with("554 5.7.1") && r[3].contains("Relay access denied"),
        "{}",
        r[3]
    );
    assert!(r[4].starts_with("550 5.1.1"), "{}", r[4]);
    assert!(r[5].starts_with("250"), "{}", r[5]);
    assert!(r[6].starts_with("550 5.1.1"), "{}", r[6]);

    // Submission offers AUTH only after STARTTLS and refuses mail before it.
    let r = smtp_dialogue(
        ports.submission,
        &[
            "EHLO client.example.net",
            "MAIL FROM:<alice@example.com>",
            "QUIT",
        ],
    );
    assert!(
        r[1].contains("STARTTLS") && !r[1].contains("AUTH"),
        "{}",
        r[1]
    );
    assert!(r[2].starts_with("530"), "{}", r[2]);

    // A new alias in the mounted maps is live after the entrypoint's reload (in the file of
    // the address's shard).
    let shard = crate::userdb::shard_of("sales@example.com");
    let aliases = layout.maps_dir().join(crate::userdb::map_file_name(
        crate::userdb::MAP_ALIASES,
        shard,
    ));
    let mut text = fs::read_to_string(&aliases).unwrap();
    text.push_str("sales@example.com alice@example.com\n");
    fs::write(&aliases, text).unwrap();
    eventually(20, "the new alias is accepted", || {
        let r = smtp_dialogue(
            ports.smtp,
            &[
                "EHLO client.example.net",
                "MAIL FROM:<someone@example.net>",
                "RCPT TO:<sales@example.com>",
                "QUIT",
            ],
        );
        r[3].starts_with("250")
    });

    let status = entry.stop();
    assert!(
        status.success(),
        "{status:?}: {}",
        fs::read_to_string(&log).unwrap()
    );
    eventually(10, "Postfix stopped", || {
        std::net::TcpStream::connect(("127.0.0.1", ports.smtp)).is_err()
    });

    // The queue volume outlives the pod: the pid file left on it (here naming a live process,
    // as pid numbers repeat in a new pod) must not keep Postfix from starting again.
    fs::write(
        layout.queue_dir().join("pid/master.pid"),
        format!("{:>10}\n", std::process::id()),
    )
    .unwrap();
    let entry = Entrypoint::start(&layout, &config.join(scripts::MTA_ENTRYPOINT), &[], &log);
    wait_for_port(ports.smtp, "Postfix after a restart", &log);
    assert!(entry.stop().success());
}
