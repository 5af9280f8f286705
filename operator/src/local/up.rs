//! `postwarden local up` and `postwarden local reload`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{replication, scripts, Layout};
use crate::manifest;
use crate::runtime::Runtime;

use super::apply::{self, Applied};
use super::daemon::Spec;
use super::preflight;
use super::ready::{self, Ready};
use super::stack::Stack;
use super::store::Store;

/// Default `--port-base`: SMTP on 10025, submission on 10587, IMAPS on 10993.
pub const DEFAULT_PORT_BASE: u16 = 10_000;
/// How long the daemons may take to listen. Rspamd compiles its rules on a cold start: ~10 s
/// on an idle machine, minutes on a busy one.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the entrypoints look for changed files (`POSTWARDEN_WATCH_INTERVAL`): a local
/// stack is for trying things, so changes show within a second.
const WATCH_INTERVAL_SECONDS: &str = "1";
/// DIR/local-up.json: what `local reload` needs to know about the running stack.
const SETTINGS: &str = "local-up.json";
/// Offsets above the instance's base of the ports a Dovecot instance uses (see `Ports::shifted`).
const HIGHEST_PORT_OFFSET: u16 = 1346;

/// Options of `local up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub file: PathBuf,
    pub dir: PathBuf,
    pub port_base: u16,
    /// Run the daemons from this Debian root instead of the host's packages.
    pub root: Option<PathBuf>,
}

/// Options of `local reload`.
#[derive(Clone, Debug)]
pub struct ReloadOptions {
    pub dir: PathBuf,
    /// Read the resources from here instead of the file `local up` was started with.
    pub file: Option<PathBuf>,
    pub rotate_certificate: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settings {
    file: PathBuf,
    port_base: u16,
    imap_replicas: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root: Option<PathBuf>,
}

/// The runtime of `--root`, seeing DIR and this binary (the replication agent) at their paths.
fn runtime(root: Option<&Path>, dir: &Path) -> anyhow::Result<Runtime> {
    let Some(root) = root else {
        return Ok(Runtime::Host);
    };
    let mut runtime = Runtime::root(root)?.sharing(dir);
    if let Some(bin_dir) = agent_binary()?.parent() {
        runtime = runtime.sharing(bin_dir);
    }
    Ok(runtime)
}

/// This binary, which the IMAP entrypoints run as the replication agent.
fn agent_binary() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?.canonicalize()?)
}

/// Runs the stack until SIGINT or SIGTERM.
pub fn up(options: UpOptions) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(up_async(options))
}

/// Re-renders every mounted file from the resources, as the operator would update its
/// ConfigMaps and Secrets; the running daemons' entrypoints pick the changes up.
pub fn reload(options: ReloadOptions) -> anyhow::Result<()> {
    let dir = absolute(&options.dir)?;
    let settings: Settings =
        serde_json::from_slice(&std::fs::read(dir.join(SETTINGS)).with_context(|| {
            format!(
                "{} has no stack: run `postwarden local up` first",
                dir.display()
            )
        })?)?;
    let file = match options.file {
        Some(file) => absolute(&file)?,
        None => settings.file.clone(),
    };
    let inputs = manifest::load_path(&file)?;
    let md = apply::the_domain(&inputs)?;
    let replicas = imap_replicas(md);
    if replicas != settings.imap_replicas {
        anyhow::bail!(
            "imap.replicas changed from {} to {replicas}: restart `local up` to change the number of Dovecot instances",
            settings.imap_replicas
        );
    }
    let layout = Layout::local(&dir, settings.port_base, replicas);
    let store = Store::new(&dir, md.metadata.namespace.clone());
    let applied = apply::apply(
        &inputs,
        md,
        &layout,
        &store,
        apply::Options {
            rotate_certificate: options.rotate_certificate,
            runtime: runtime(settings.root.as_deref(), &dir)?,
        },
        jiff::Timestamp::now(),
    )?;
    publish(&dir, &applied)?;
    warn(&applied);
    if file != settings.file {
        // Later reloads read the file given last.
        let settings = Settings { file, ..settings };
        ready::write_atomic(&dir.join(SETTINGS), &serde_json::to_vec_pretty(&settings)?)?;
    }
    if applied.changed.is_empty() {
        println!("nothing changed");
    }
    for volume in &applied.changed {
        println!("updated {volume}");
    }
    Ok(())
}

async fn up_async(options: UpOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let inputs = manifest::load_path(&options.file)?;
    let md = apply::the_domain(&inputs)?;
    let replicas = imap_replicas(md);
    check_port_base(options.port_base, replicas)?;

    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = absolute(&options.dir)?;
    let layout = Layout::local(&dir, options.port_base, replicas);
    let runtime = runtime(options.root.as_deref(), &dir)?;
    preflight::find_programs(&runtime, preflight::PROGRAMS)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "`local up` needs root, like the packaged mail services: Postfix and Dovecot start as root and drop privileges themselves (run it with sudo)"
        );
    }
    preflight::check_ports_free(&listening_ports(&layout))?;
    let versions = runtime.versions()?;
    versions.check()?;
    println!(
        "daemons from {}: Postfix {}, Dovecot {}",
        runtime.base().display(),
        versions.postfix,
        versions.dovecot
    );
    prepare_dir(&dir)?;

    let store = Store::new(&dir, md.metadata.namespace.clone());
    let applied = apply::apply(
        &inputs,
        md,
        &layout,
        &store,
        apply::Options {
            runtime: runtime.clone(),
            ..apply::Options::default()
        },
        jiff::Timestamp::now(),
    )?;
    warn(&applied);
    let settings = Settings {
        file: absolute(&options.file)?,
        port_base: options.port_base,
        imap_replicas: replicas,
        root: options.root.as_deref().map(absolute).transpose()?,
    };
    ready::write_atomic(&dir.join(SETTINGS), &serde_json::to_vec_pretty(&settings)?)?;

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let specs = daemon_specs(&layout, &runtime, replicas)?;
    let mut stack = Stack::spawn(specs).await?;
    let started_up = tokio::select! {
        ready = stack.wait_ready(READY_TIMEOUT) => ready,
        _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted while starting")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated while starting")),
    };
    let daemon_ready = match started_up {
        Ok(took) => took,
        Err(e) => {
            stack.stop().await;
            return Err(e);
        }
    };
    let ready_seconds = started.elapsed().as_secs_f64();

    publish(&dir, &applied)?;
    let summary = Ready {
        ready_seconds,
        daemon_ready_seconds: daemon_ready
            .iter()
            .map(|(name, took)| (name.clone(), took.as_secs_f64()))
            .collect(),
        daemons: stack.main_pids().into_iter().collect(),
        ports: listening_ports(&layout).into_iter().collect(),
    };
    ready::write_atomic(
        &dir.join(ready::READY),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    print_ready(md, &layout, &dir, ready_seconds, &daemon_ready);

    // SIGUSR1 restarts the MTA (Postfix and the agents its entrypoint runs), as a Kubernetes
    // MTA container restart does, while Dovecot and Rspamd keep running.
    let mut restart_mta = signal(SignalKind::user_defined1())?;
    let outcome = loop {
        tokio::select! {
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
            _ = restart_mta.recv() => {
                println!("restarting {MTA_DAEMON}");
                match stack.restart(MTA_DAEMON, READY_TIMEOUT).await {
                    Ok(took) => {
                        println!("  {MTA_DAEMON} listening again after {:.1} s", took.as_secs_f64());
                        let summary = Ready { daemons: stack.main_pids().into_iter().collect(), ..summary.clone() };
                        ready::write_atomic(&dir.join(ready::READY), &serde_json::to_vec_pretty(&summary)?)?;
                    }
                    Err(e) => break Err(e.context(format!("restarting {MTA_DAEMON}"))),
                }
            }
            (name, status) = stack.first_exit() => break Err(anyhow::anyhow!(
                "{name} exited unexpectedly ({}); see {}",
                status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                layout.log_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
            )),
        }
    };
    let _ = std::fs::remove_file(dir.join(ready::READY));
    println!("stopping");
    let stopping = Instant::now();
    stack.stop().await;
    println!("stopped in {:.1} s", stopping.elapsed().as_secs_f64());
    outcome
}

fn imap_replicas(md: &crate::api::MailDomain) -> usize {
    md.spec
        .imap
        .replicas
        .clamp(1, crate::api::validate::MAX_IMAP_REPLICAS) as usize
}

fn check_port_base(base: u16, replicas: usize) -> anyhow::Result<()> {
    let highest = u32::from(base) + (replicas as u32 - 1) * 10_000 + u32::from(HIGHEST_PORT_OFFSET);
    if highest > u32::from(u16::MAX) {
        anyhow::bail!(
            "--port-base {base} is too high: with {replicas} IMAP instance(s) ports up to {highest} would be needed (at most 65535)"
        );
    }
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.exists() {
        return Ok(path.canonicalize()?);
    }
    Ok(std::env::current_dir()?.join(path))
}

/// Makes DIR traversable for the daemons' unprivileged users, and refuses a DIR they cannot
/// reach (e.g. below a home directory of mode 0700).
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    let mut perms = std::fs::metadata(dir)?.permissions();
    perms.set_mode(perms.mode() | 0o755);
    std::fs::set_permissions(dir, perms)?;
    for ancestor in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor)?.permissions().mode();
        if mode & 0o001 == 0 {
            anyhow::bail!(
                "{} (mode {:o}) is not searchable by the mail users (postfix, dovecot, uid {}): choose a --dir outside it, e.g. under /tmp or /srv",
                ancestor.display(),
                mode & 0o7777,
                crate::userdb::VMAIL_UID
            );
        }
    }
    let _ = std::fs::remove_file(dir.join(ready::READY));
    Ok(())
}

/// Every port the stack listens on, by service.
fn listening_ports(layout: &Layout) -> Vec<(String, u16)> {
    let p = &layout.ports;
    let mut out = vec![
        ("smtp".to_string(), p.smtp),
        ("submission".to_string(), p.submission),
        ("submissions".to_string(), p.submissions),
        ("rspamd-controller".to_string(), p.rspamd_controller),
        ("auth".to_string(), p.auth),
    ];
    for ordinal in 0..layout.imap_replicas() {
        let i = layout.imap_instance(ordinal).ports;
        out.extend([
            (format!("imap-{ordinal}"), i.imap),
            (format!("imaps-{ordinal}"), i.imaps),
            (format!("lmtp-{ordinal}"), i.lmtp),
            (format!("doveadm-{ordinal}"), i.doveadm),
        ]);
        if replication::enabled(layout) {
            out.push((
                format!("replication-metrics-{ordinal}"),
                i.replication_metrics,
            ));
        }
    }
    out
}

/// The entrypoints of the pods' containers, run as they run there.
/// The daemon SIGUSR1 restarts.
const MTA_DAEMON: &str = "postfix";

fn daemon_specs(layout: &Layout, runtime: &Runtime, replicas: usize) -> anyhow::Result<Vec<Spec>> {
    let sh = runtime
        .find_program("sh")
        .unwrap_or_else(|| PathBuf::from("/bin/sh"));
    let agent = agent_binary()?.display().to_string();
    let config = layout.config_dir();
    let console = |name: &str| {
        layout
            .root
            .join(format!("var/log/postwarden/{name}.console.log"))
    };
    let env = |extra: &[(&str, String)]| {
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            (
                "POSTWARDEN_WATCH_INTERVAL".to_string(),
                WATCH_INTERVAL_SECONDS.to_string(),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    };
    let sh = sh.as_path();
    let p = &layout.ports;
    let mut specs = vec![Spec {
        name: "rspamd".into(),
        program: sh.to_path_buf(),
        args: vec![config.join(scripts::RSPAMD_ENTRYPOINT).into()],
        ports: vec![p.rspamd_controller],
        env: env(&[]),
        log: console("rspamd"),
        main_pid_file: None,
    }];
    for ordinal in 0..replicas {
        let inst = layout.imap_instance(ordinal);
        let i = &inst.ports;
        specs.push(Spec {
            name: format!("dovecot-{ordinal}"),
            program: sh.to_path_buf(),
            args: vec![config.join(scripts::IMAP_ENTRYPOINT).into()],
            ports: if replication::enabled(layout) {
                vec![i.imap, i.imaps, i.lmtp, i.doveadm, i.replication_metrics]
            } else {
                vec![i.imap, i.imaps, i.lmtp, i.doveadm]
            },
            env: env(&[
                ("POSTWARDEN_ORDINAL", ordinal.to_string()),
                ("POSTWARDEN_AGENT", agent.clone()),
            ]),
            log: console(&format!("dovecot-{ordinal}")),
            main_pid_file: Some(inst.run_dir.join("dovecot/master.pid")),
        });
    }
    // The MTA pod's auth sidecar: Postfix's SASL server.
    specs.push(Spec {
        name: "dovecot-auth".into(),
        program: sh.to_path_buf(),
        args: vec![config.join(scripts::AUTH_ENTRYPOINT).into()],
        ports: vec![p.auth],
        env: env(&[]),
        log: console("dovecot-auth"),
        main_pid_file: Some(layout.auth_run_dir().join("dovecot/master.pid")),
    });
    specs.push(Spec {
        name: MTA_DAEMON.into(),
        program: sh.to_path_buf(),
        args: vec![config.join(scripts::MTA_ENTRYPOINT).into()],
        ports: vec![p.smtp, p.submission, p.submissions],
        env: env(&[("POSTWARDEN_AGENT", agent.clone())]),
        log: console("postfix"),
        main_pid_file: Some(layout.queue_dir().join("pid/master.pid")),
    });
    for spec in &mut specs {
        let (program, args) = runtime.wrap(&spec.program, std::mem::take(&mut spec.args));
        spec.program = program;
        spec.args = args;
    }
    Ok(specs)
}

fn warn(applied: &Applied) {
    for warning in &applied.warnings {
        eprintln!("warning: {warning}");
    }
}

/// DIR/ca.crt and DIR/dns.txt.
fn publish(dir: &Path, applied: &Applied) -> anyhow::Result<()> {
    ready::write_atomic(&dir.join(ready::CA_CRT), applied.trust_bundle.as_bytes())?;
    ready::write_atomic(&dir.join(ready::DNS_TXT), applied.dns_zone.as_bytes())?;
    Ok(())
}

fn print_ready(
    md: &crate::api::MailDomain,
    layout: &Layout,
    dir: &Path,
    seconds: f64,
    daemon_ready: &[(String, Duration)],
) {
    let p = &layout.ports;
    let host = md.spec.mail_hostname();
    let mut imap = BTreeMap::new();
    for ordinal in 0..layout.imap_replicas() {
        let i = layout.imap_instance(ordinal).ports;
        imap.insert(ordinal, format!("{} (STARTTLS), {} (TLS)", i.imap, i.imaps));
    }
    println!(
        "ready in {seconds:.1} s: {} served as {host} on 127.0.0.1",
        md.spec.domain
    );
    println!("  SMTP        {}", p.smtp);
    println!(
        "  submission  {} (STARTTLS), {} (TLS)",
        p.submission, p.submissions
    );
    for (ordinal, ports) in imap {
        println!("  IMAP #{ordinal}     {ports}");
    }
    if let Some(c) = &md.spec.continuity {
        println!(
            "  continuity  upstream {} port {}; state http://{}:{}/status",
            c.upstream.hosts.join(", "),
            c.upstream.port,
            layout.listen,
            p.continuity_metrics
        );
    }
    println!("  trust       {}", dir.join(ready::CA_CRT).display());
    println!("  DNS records {}", dir.join(ready::DNS_TXT).display());
    println!("  logs        {}", dir.join("var/log").display());
    let each: Vec<String> = daemon_ready
        .iter()
        .map(|(name, took)| format!("{name} {:.1} s", took.as_secs_f64()))
        .collect();
    println!("  listening after: {}", each.join(", "));
    println!("Ctrl-C stops every daemon.");
}
