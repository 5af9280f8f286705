//! Replication among three Dovecot 2.4 instances started from the rendered configuration, each
//! with its agent (the IMAP entrypoint runs this crate's binary as `postwarden replicate`):
//! deliveries on any instance reach the others, a killed replica catches up when it is back,
//! and a replica cut off from its peers, still taking mail, converges both ways once the link
//! returns. The daemons come from the tests' runtime (`POSTWARDEN_ROOT`).

use std::fs;
use std::io::Read as _;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::daemon_tests::{
    agent_binary, eventually, lmtp_deliver, local_tree, runtime, wait_for_port, Entrypoint,
};
use crate::config::replication::{self, AgentConfig};
use crate::config::{scripts, Layout};

const REPLICAS: usize = 3;
const BOB: &str = "bob@example.com";
/// Generous: a sync normally lands in well under a second, but a failed one backs off up to 30 s.
const CONVERGE_SECONDS: u64 = 90;

/// Starts instance `ordinal`'s entrypoint (Dovecot and its agent) and waits for LMTP.
fn start(layout: &Layout, ordinal: usize, agent: &str) -> Entrypoint {
    // Dovecot's stats process (its unprivileged user) must reach the agent's socket below it.
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&layout.root, fs::Permissions::from_mode(0o755)).unwrap();
    let log = layout.root.join(format!("imap-{ordinal}.console.log"));
    let mut sh = runtime(&layout.root)
        .sharing(Path::new(agent).parent().unwrap())
        .command("sh");
    sh.arg(layout.config_dir().join(scripts::IMAP_ENTRYPOINT));
    let entry = Entrypoint::spawn(
        sh,
        &[
            ("POSTWARDEN_ORDINAL", &ordinal.to_string()),
            ("POSTWARDEN_AGENT", agent),
        ],
        &log,
    );
    wait_for_port(
        layout.imap_instance(ordinal).ports.lmtp,
        "Dovecot LMTP",
        &log,
    );
    wait_for_port(
        layout.imap_instance(ordinal).ports.replication_metrics,
        "replication agent",
        &log,
    );
    entry
}

/// Subjects of bob's messages on instance `ordinal`, sorted (read from the Maildir files).
fn bodies(layout: &Layout, ordinal: usize) -> Vec<String> {
    let maildir = layout
        .imap_instance(ordinal)
        .mail_dir
        .join("example.com/bob/Maildir");
    let mut found = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let mut text = String::new();
            if fs::File::open(entry.path())
                .and_then(|mut f| f.read_to_string(&mut text))
                .is_ok()
            {
                if let Some(body) = text.split("\r\n\r\n").nth(1).or(text.split("\n\n").nth(1)) {
                    found.push(body.trim().to_string());
                }
            }
        }
    }
    found.sort();
    found
}

fn deliver(layout: &Layout, ordinal: usize, body: &str) {
    let replies = lmtp_deliver(layout.imap_instance(ordinal).ports.lmtp, BOB, body);
    assert!(replies.contains("250 2.0.0 <bob@example.com>"), "{replies}");
}

/// Waits until every instance holds exactly `want` (no duplicates); returns how long it took.
fn converged(layout: &Layout, want: &[&str]) -> Duration {
    let started = Instant::now();
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = started + Duration::from_secs(CONVERGE_SECONDS);
    loop {
        let all: Vec<Vec<String>> = (0..REPLICAS).map(|o| bodies(layout, o)).collect();
        if all.iter().all(|b| *b == want) {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge on {want:?}: {all:?}\n{}",
            logs(layout)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn logs(layout: &Layout) -> String {
    (0..REPLICAS)
        .map(|o| {
            let console = layout.root.join(format!("imap-{o}.console.log"));
            format!(
                "--- imap-{o} console\n{}",
                fs::read_to_string(console).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn metrics(layout: &Layout, ordinal: usize) -> String {
    use std::io::Write as _;
    let port = layout.imap_instance(ordinal).ports.replication_metrics;
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("agent metrics");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn three_replicas_converge_and_a_killed_one_catches_up_when_restarted() {
    let (_guard, _md, layout) = local_tree(REPLICAS);
    let agent = agent_binary();
    let mut entries: Vec<Option<Entrypoint>> = (0..REPLICAS)
        .map(|o| Some(start(&layout, o, &agent)))
        .collect();

    // The start-up sweeps are done before the first delivery: what follows is event-driven.
    eventually(30, "the start-up sweeps are done", || {
        (0..REPLICAS).all(|o| {
            let m = metrics(&layout, o);
            (0..REPLICAS).filter(|&p| p != o).all(|p| {
                sample(
                    &m,
                    &format!("postwarden_replication_queue_length{{peer=\"imap-{p}\"}}"),
                ) == 0.0
            })
        })
    });
    deliver(&layout, 0, "one");
    let took = converged(&layout, &["one"]);
    eprintln!("a delivery on imap-0 reached both peers in {took:?}");
    assert!(
        sample(&metrics(&layout, 0), "postwarden_replication_events_total") >= 1.0,
        "Dovecot reported the delivery to the agent"
    );
    deliver(&layout, 2, "two");
    let took = converged(&layout, &["one", "two"]);
    eprintln!("a delivery on imap-2 reached both peers in {took:?}");

    // imap-2 dies with everything it started; mail keeps arriving on the others.
    entries[2].take().unwrap().kill();
    eventually(10, "imap-2 is down", || {
        TcpStream::connect(("127.0.0.1", layout.imap_instance(2).ports.lmtp)).is_err()
    });
    // One after the other: a delivery to one replica while a sync of the same user with it
    // runs, with a change on the syncing side too, can leave a message doubled with Dovecot
    // 2.4.1's dsync (seen about once in eight runs under load); that case is not covered here.
    deliver(&layout, 0, "three");
    eventually(30, "three reaches imap-1", || {
        bodies(&layout, 1).contains(&"three".to_string())
    });
    deliver(&layout, 1, "four");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(bodies(&layout, 0) == bodies(&layout, 1) && bodies(&layout, 0).len() == 4) {
        assert!(
            Instant::now() < deadline,
            "imap-0 and imap-1 do not agree: {:?} {:?}\n{}",
            bodies(&layout, 0),
            bodies(&layout, 1),
            logs(&layout)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eventually(30, "the agents count failed syncs to imap-2", || {
        sample(
            &metrics(&layout, 0),
            "postwarden_replication_syncs_total{peer=\"imap-2\",result=\"failed\"}",
        ) > 0.0
    });
    let lag = sample(
        &metrics(&layout, 0),
        "postwarden_replication_lag_seconds{peer=\"imap-2\"}",
    );
    assert!(lag > 0.0, "imap-2 lacks a change: lag {lag}");

    // Back: its agent's start-up sweep and the others' retries bring it up to date.
    let restarted = Instant::now();
    entries[2] = Some(start(&layout, 2, &agent));
    converged(&layout, &["four", "one", "three", "two"]);
    eprintln!(
        "the restarted imap-2 caught up {:?} after its start",
        restarted.elapsed()
    );
    eventually(30, "no lag is left", || {
        (0..REPLICAS).all(|o| {
            let m = metrics(&layout, o);
            (0..REPLICAS).filter(|&p| p != o).all(|p| {
                sample(
                    &m,
                    &format!("postwarden_replication_lag_seconds{{peer=\"imap-{p}\"}}"),
                ) == 0.0
            })
        })
    });
    for entry in entries.into_iter().flatten() {
        assert!(entry.stop().success());
    }
}

/// A TCP forwarder whose link the test can cut (refusing and dropping every connection) and
/// restore: the network between a replica and its peers.
struct Link {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Link {
    fn to(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut guard = o.lock().unwrap();
                guard.push(client.try_clone().unwrap());
                guard.push(server.try_clone().unwrap());
                drop(guard);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { port, cut, open }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Points every agent's connection to or from imap-2 (doveadm and agent) through a [`Link`].
fn route_imap2_through_links(layout: &Layout) -> Vec<Link> {
    let mut links = Vec::new();
    for ordinal in 0..REPLICAS {
        let file = layout
            .config_dir()
            .join(replication::agent_file_name(ordinal));
        let mut config: AgentConfig =
            serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
        for peer in &mut config.peers {
            let crosses = ordinal == 2 || peer.name == "imap-2";
            if !crosses {
                continue;
            }
            let doveadm: u16 = peer.endpoint.rsplit(':').next().unwrap().parse().unwrap();
            let link = Link::to(doveadm);
            peer.endpoint = format!("tcps:127.0.0.1:{}", link.port);
            links.push(link);
            let agent: u16 = peer.agent.rsplit(':').next().unwrap().parse().unwrap();
            let link = Link::to(agent);
            peer.agent = format!("127.0.0.1:{}", link.port);
            links.push(link);
        }
        fs::write(&file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    }
    links
}

#[test]
fn a_replica_cut_off_from_its_peers_converges_both_ways_when_the_link_returns() {
    let (_guard, _md, layout) = local_tree(REPLICAS);
    let links = route_imap2_through_links(&layout);
    let agent = agent_binary();
    let entries: Vec<Entrypoint> = (0..REPLICAS).map(|o| start(&layout, o, &agent)).collect();
    deliver(&layout, 1, "before");
    converged(&layout, &["before"]);

    for link in &links {
        link.set_cut(true);
    }
    // Both sides of the partition take mail.
    deliver(&layout, 2, "island");
    deliver(&layout, 0, "mainland");
    eventually(30, "the mainland agrees", || {
        bodies(&layout, 0) == ["before", "mainland"] && bodies(&layout, 1) == ["before", "mainland"]
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(bodies(&layout, 2), ["before", "island"], "the link was cut");
    assert_eq!(
        bodies(&layout, 0),
        ["before", "mainland"],
        "the link was cut"
    );
    let failed = sample(
        &metrics(&layout, 2),
        "postwarden_replication_syncs_total{peer=\"imap-0\",result=\"failed\"}",
    );
    assert!(failed > 0.0, "imap-2's agent counts its failed syncs");

    let restored = Instant::now();
    for link in &links {
        link.set_cut(false);
    }
    converged(&layout, &["before", "island", "mainland"]);
    eprintln!(
        "after the link returned, all three replicas converged in {:?}",
        restored.elapsed()
    );
    for entry in entries {
        assert!(entry.stop().success());
    }
}
