//! Where the daemons find their files and each other.
//!
//! The renderers write every path and address from a [`Layout`]. In Kubernetes the layout is
//! [`Layout::kubernetes`]: fixed mount points and Service DNS names. `postwarden local up` uses
//! [`Layout::local`], the same tree under one directory on 127.0.0.1 with shifted ports. This is
//! the only mechanism by which the rendered configuration differs between the two.

use std::path::{Path, PathBuf};

/// Number of Secrets the users database is spread over. Dovecot picks the shard from the first
/// hex digit of the MD5 of the lowercase user name (`%1Mu`), so this is fixed at 16.
pub const USER_SHARDS: usize = 16;

/// Address of listeners only the containers of the same pod may reach (the auth sidecar): pods
/// share their loopback interface, nothing else reaches it.
pub const LOOPBACK: &str = "127.0.0.1";

/// TCP ports of every service, as seen by clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports {
    pub smtp: u16,
    pub submissions: u16,
    pub submission: u16,
    pub imap: u16,
    pub imaps: u16,
    pub lmtp: u16,
    /// The MTA pod's auth-only Dovecot, Postfix's SASL server: on [`LOOPBACK`] only, so
    /// passwords never cross the pod network.
    pub auth: u16,
    /// doveadm server (replication and backup), authenticated by the shared doveadm password.
    pub doveadm: u16,
    /// Rspamd's controller (statistics, /metrics).
    pub rspamd_controller: u16,
    /// Dovecot's OpenMetrics exporter.
    pub dovecot_metrics: u16,
    /// The replication agent's metrics (`postwarden replicate`, next to each Dovecot).
    pub replication_metrics: u16,
    /// The continuity agent's metrics and state (`postwarden continuity`, in the MTA pod).
    pub continuity_metrics: u16,
}

impl Ports {
    /// Every port with the name of its service.
    pub fn named(&self) -> [(&'static str, u16); 12] {
        [
            ("smtp", self.smtp),
            ("submissions", self.submissions),
            ("submission", self.submission),
            ("imap", self.imap),
            ("imaps", self.imaps),
            ("lmtp", self.lmtp),
            ("auth", self.auth),
            ("doveadm", self.doveadm),
            ("rspamd-controller", self.rspamd_controller),
            ("dovecot-metrics", self.dovecot_metrics),
            ("replication-metrics", self.replication_metrics),
            ("continuity-metrics", self.continuity_metrics),
        ]
    }

    /// The standard ports, used inside pods.
    pub fn standard() -> Self {
        Self {
            smtp: 25,
            submissions: 465,
            submission: 587,
            imap: 143,
            imaps: 993,
            lmtp: 24,
            auth: 12345,
            doveadm: 12346,
            rspamd_controller: 11334,
            dovecot_metrics: 9900,
            replication_metrics: 9901,
            continuity_metrics: 9902,
        }
    }

    /// Every port shifted by `base` (`base + 25` for SMTP, ...), for running on one host.
    pub fn shifted(base: u16) -> Self {
        let s = Self::standard();
        Self {
            smtp: base + s.smtp,
            submissions: base + s.submissions,
            submission: base + s.submission,
            imap: base + s.imap,
            imaps: base + s.imaps,
            lmtp: base + s.lmtp,
            auth: base + 1000 + 345,
            doveadm: base + 1000 + 346,
            rspamd_controller: base + 1000 + 334,
            dovecot_metrics: base + 900,
            replication_metrics: base + 901,
            continuity_metrics: base + 902,
        }
    }
}

/// Paths and endpoints the rendered configuration refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Root of everything; `/` in Kubernetes.
    pub root: PathBuf,
    /// Address the daemons listen on (`*` in pods, `127.0.0.1` locally).
    pub listen: String,
    pub ports: Ports,
    /// Host names (or addresses) of the Dovecot instances, index = replica ordinal.
    pub imap_hosts: Vec<String>,
    /// Host name of the Dovecot Service Postfix delivers to (LMTP).
    pub imap_service_host: String,
    /// Ports of each Dovecot instance when they differ per instance (local runs); index = ordinal.
    pub imap_instance_ports: Vec<Ports>,
    /// True when every Dovecot instance runs on this one host (local runs): each instance then
    /// gets its own run and mail directory (see [`Layout::imap_instance`]).
    pub instances_share_host: bool,
    /// Directory for daemon log files; `None` logs to stdout/stderr (the container log).
    pub log_dir: Option<PathBuf>,
    /// DNS resolver (`ip:port`) Rspamd queries for SPF/DKIM/DMARC; `None` uses /etc/resolv.conf.
    pub resolver: Option<String>,
    /// Next hop for all outbound mail (Postfix `relayhost` syntax); `None` delivers straight to
    /// each recipient domain's MX.
    pub relayhost: Option<String>,
}

/// Where one Dovecot instance (StatefulSet ordinal) keeps its state and listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImapInstance {
    pub ordinal: usize,
    /// Host name (or address) other components reach this instance at.
    pub host: String,
    pub ports: Ports,
    /// Dovecot base_dir and state_dir live under here.
    pub run_dir: PathBuf,
    /// Mail storage of this instance.
    pub mail_dir: PathBuf,
    /// Every other instance, which this one replicates with: (ordinal, host, doveadm port).
    pub peers: Vec<(usize, String, u16)>,
}

impl Layout {
    /// The layout inside the pods of the MailDomain `name` in `namespace`.
    pub fn kubernetes(name: &str, namespace: &str, imap_replicas: usize) -> Self {
        let names = crate::names::DomainNames::new(name);
        let headless = names.imap_headless();
        let imap_hosts = (0..imap_replicas)
            .map(|i| format!("{}-{i}.{headless}.{namespace}.svc", names.imap()))
            .collect();
        Self {
            root: PathBuf::from("/"),
            listen: "*".into(),
            ports: Ports::standard(),
            imap_hosts,
            imap_service_host: format!("{headless}.{namespace}.svc"),
            imap_instance_ports: vec![Ports::standard(); imap_replicas],
            instances_share_host: false,
            log_dir: None,
            resolver: None,
            relayhost: None,
        }
    }

    /// Everything under `dir` on 127.0.0.1, ports shifted by `port_base`. The second Dovecot
    /// instance (ordinal 1) gets ports shifted by a further 10,000. Logs go to `dir/var/log`.
    /// Nothing leaves the loopback interface: Rspamd asks the DNS resolver at
    /// `127.0.0.1:port_base+1053` and Postfix relays all outbound mail to `127.0.0.1:port_base+1025`
    /// (a test may listen on either; when nothing does, lookups fail and mail stays queued).
    pub fn local(dir: &Path, port_base: u16, imap_replicas: usize) -> Self {
        let instance_ports = (0..imap_replicas)
            .map(|i| Ports::shifted(port_base + (i as u16) * 10_000))
            .collect();
        Self {
            root: dir.to_path_buf(),
            listen: "127.0.0.1".into(),
            ports: Ports::shifted(port_base),
            imap_hosts: vec!["127.0.0.1".into(); imap_replicas],
            imap_service_host: "127.0.0.1".into(),
            imap_instance_ports: instance_ports,
            instances_share_host: true,
            log_dir: Some(dir.join("var/log")),
            resolver: Some(format!("127.0.0.1:{}", port_base + 1053)),
            relayhost: Some(format!("[127.0.0.1]:{}", port_base + 1025)),
        }
    }

    /// Every TCP port the stack listens on, with the listening service (`imap-1 imaps`, ...),
    /// sorted and without duplicates: what must be free before a local run starts.
    pub fn listen_ports(&self) -> Vec<(u16, String)> {
        const IMAP: [&str; 6] = [
            "imap",
            "imaps",
            "lmtp",
            "doveadm",
            "dovecot-metrics",
            "replication-metrics",
        ];
        let mut ports: Vec<(u16, String)> = self
            .ports
            .named()
            .into_iter()
            .filter(|(name, _)| !IMAP.contains(name))
            .map(|(name, port)| (port, name.to_string()))
            .collect();
        for ordinal in 0..self.imap_replicas().max(1) {
            let inst = self.imap_instance(ordinal);
            ports.extend(
                inst.ports
                    .named()
                    .into_iter()
                    .filter(|(name, _)| IMAP.contains(name))
                    .map(|(name, port)| (port, format!("imap-{ordinal} {name}"))),
            );
        }
        ports.sort();
        ports.dedup_by_key(|(port, _)| *port);
        ports
    }

    /// Number of Dovecot instances.
    pub fn imap_replicas(&self) -> usize {
        self.imap_hosts.len()
    }

    /// The Dovecot instance with this StatefulSet ordinal. In pods every instance has the same
    /// paths (its own volumes); on one host each gets `imap-<ordinal>` below the run and mail dirs.
    pub fn imap_instance(&self, ordinal: usize) -> ImapInstance {
        let (run_dir, mail_dir) = if self.instances_share_host {
            let sub = format!("imap-{ordinal}");
            (self.run_dir().join(&sub), self.mail_dir().join(&sub))
        } else {
            (self.run_dir(), self.mail_dir())
        };
        let peers = (0..self.imap_replicas())
            .filter(|&p| p != ordinal)
            .map(|p| {
                (
                    p,
                    self.imap_hosts[p].clone(),
                    self.instance_ports(p).doveadm,
                )
            })
            .collect();
        ImapInstance {
            ordinal,
            host: self
                .imap_hosts
                .get(ordinal)
                .cloned()
                .unwrap_or_else(|| self.imap_service_host.clone()),
            ports: self.instance_ports(ordinal),
            run_dir,
            mail_dir,
            peers,
        }
    }

    fn instance_ports(&self, ordinal: usize) -> Ports {
        self.imap_instance_ports
            .get(ordinal)
            .cloned()
            .unwrap_or_else(|| self.ports.clone())
    }

    /// The log file of `daemon` (e.g. `postfix`, `dovecot-0`), or `None` for stdout/stderr.
    pub fn log_file(&self, daemon: &str) -> Option<PathBuf> {
        self.log_dir
            .as_ref()
            .map(|d| d.join(format!("{daemon}.log")))
    }

    fn under(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    /// Rendered configuration files (from the ConfigMaps).
    pub fn config_dir(&self) -> PathBuf {
        self.under("etc/postwarden/config")
    }
    /// `tls.crt`, `tls.key`, `ca.crt` (from the TLS Secret).
    pub fn tls_dir(&self) -> PathBuf {
        self.under("etc/postwarden/tls")
    }
    /// The users database shards `<hex>.passwd` (from the users Secrets).
    pub fn users_dir(&self) -> PathBuf {
        self.under("etc/postwarden/users")
    }
    /// Postfix address maps (from the maps ConfigMap).
    pub fn maps_dir(&self) -> PathBuf {
        self.under("etc/postwarden/maps")
    }
    /// DKIM private keys and the selector map (from the DKIM Secret).
    pub fn dkim_dir(&self) -> PathBuf {
        self.under("etc/postwarden/dkim")
    }
    /// Internal shared secrets (from the internal Secret).
    pub fn secrets_dir(&self) -> PathBuf {
        self.under("etc/postwarden/secrets")
    }
    /// Mail storage (Dovecot, on the per-pod volume).
    pub fn mail_dir(&self) -> PathBuf {
        self.under("var/mail")
    }
    /// Postfix queue (on the per-pod volume).
    pub fn queue_dir(&self) -> PathBuf {
        self.under("var/spool/postfix")
    }
    /// Runtime state: sockets, pid files, Dovecot base_dir.
    pub fn run_dir(&self) -> PathBuf {
        self.under("run/postwarden")
    }
    /// `address:port` an agent binds its HTTP listener to: every address in pods, the
    /// layout's own locally.
    pub fn agent_listen(&self, port: u16) -> String {
        let address = if self.listen == "*" {
            "0.0.0.0"
        } else {
            self.listen.as_str()
        };
        format!("{address}:{port}")
    }
    /// The continuity agent's state (which way emergency-inbox copies go, the upstream's last
    /// answers), on the queue volume so it outlives the pod like the spool it describes.
    pub fn continuity_dir(&self) -> PathBuf {
        self.under("var/spool/continuity")
    }
    /// Postfix `data_directory` (TLS and postscreen caches; rebuilt after a restart).
    pub fn postfix_data_dir(&self) -> PathBuf {
        self.run_dir().join("postfix")
    }
    /// The auth sidecar's Dovecot base_dir and state_dir (sockets, pid file), apart from every
    /// IMAP instance's so a local run can start them all on one host.
    pub fn auth_run_dir(&self) -> PathBuf {
        self.run_dir().join("dovecot-auth")
    }
    /// Rspamd's pid file, caches and statistics (rebuilt after a restart).
    pub fn rspamd_run_dir(&self) -> PathBuf {
        self.run_dir().join("rspamd")
    }
    /// Rspamd's milter socket, in the run volume Postfix and Rspamd share (nothing outside the
    /// pod sees it). A UNIX socket, not loopback TCP: over TCP every message waited ~40 ms at
    /// the end of DATA for a delayed ACK (Nagle meeting Rspamd's reply split over several
    /// writes); over the socket the whole milter exchange takes ~5 ms.
    pub fn milter_socket(&self) -> PathBuf {
        self.rspamd_run_dir().join("milter.sock")
    }
}
