//! Starting, watching and stopping one daemon process of the local stack.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// What to run and when it counts as up.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Short name for messages and the log file, e.g. `dovecot-1`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Every TCP port on 127.0.0.1 that must accept connections before the daemon is ready.
    pub ports: Vec<u16>,
    /// Environment added to the inherited one.
    pub env: Vec<(String, String)>,
    /// File receiving the process's stdout and stderr.
    pub log: PathBuf,
    /// Pid file of the daemon's main process when the started process is a wrapper (an
    /// entrypoint script, which stops its daemon on SIGTERM the way the daemon wants: Postfix
    /// through SIGTERM to the master in `pid/master.pid`): reported as the daemon's pid, and
    /// checked to be gone after a stop.
    pub main_pid_file: Option<PathBuf>,
}

/// A started daemon.
pub struct Daemon {
    spec: Spec,
    child: Child,
    started: Instant,
}

impl Daemon {
    /// Starts the daemon in its own process group, so a Ctrl-C in the terminal reaches only
    /// `local up`, which then stops the daemons in order.
    pub fn spawn(spec: Spec) -> anyhow::Result<Self> {
        if let Some(parent) = spec.log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let child = Command::new(&spec.program)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", spec.name, spec.program.display()))?;
        Ok(Self {
            spec,
            child,
            started: Instant::now(),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Pid of the process that was started.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Pid of the daemon's main process: from its pid file, else the started process.
    pub fn main_pid(&self) -> Option<u32> {
        match &self.spec.main_pid_file {
            Some(file) => read_pid(file),
            None => self.pid(),
        }
    }

    /// Waits until every port listens; fails with the log's tail when the process exits first
    /// or `deadline` passes. Returns how long the daemon took since it was started.
    pub async fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<Duration> {
        let mut pending = self.spec.ports.clone();
        loop {
            let listening = listening_ports().await;
            pending.retain(|p| !listening.contains(p));
            if pending.is_empty() {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}) before listening on {:?}{}",
                    self.spec.name,
                    pending,
                    log_tail(&self.spec.log)
                );
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} did not listen on {:?} in time{}",
                    self.spec.name,
                    pending,
                    log_tail(&self.spec.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resolves when the process exits on its own.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Sends SIGTERM and waits up to `grace`, then kills the process group. A main process that
    /// outlives its wrapper is killed too, and reported.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        let main = self.main_pid();
        let deadline = Instant::now() + grace;
        if self.child.try_wait()?.is_none() {
            if let Some(pid) = self.child.id() {
                signal(pid as i32, libc::SIGTERM);
            }
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                if let Some(pgid) = self.child.id() {
                    signal(-(pgid as i32), libc::SIGKILL);
                }
                self.child.wait().await?;
                anyhow::bail!(
                    "{} did not stop within {grace:?} and was killed",
                    self.spec.name
                );
            }
        }
        // The wrapper is gone; its daemon must follow (it may have left the process group).
        let Some(main) = main.filter(|&p| Some(p) != self.child.id()) else {
            return Ok(());
        };
        while alive(main) {
            if Instant::now() >= deadline {
                signal(main as i32, libc::SIGKILL);
                anyhow::bail!(
                    "{} (pid {main}) outlived its entrypoint and was killed",
                    self.spec.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Ports with a listening TCP socket on 127.0.0.1 or any address. Read from /proc/net/tcp
/// rather than by connecting, so the daemons do not log a probe as an aborted session.
async fn listening_ports() -> std::collections::HashSet<u16> {
    match tokio::fs::read_to_string("/proc/net/tcp").await {
        Ok(table) => parse_listening(&table),
        Err(_) => std::collections::HashSet::new(),
    }
}

/// The listening ports in a /proc/net/tcp table (`local_address` is `HEXIP:HEXPORT`, state
/// `0A` is LISTEN).
fn parse_listening(table: &str) -> std::collections::HashSet<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            let (ip, port) = local.split_once(':')?;
            let loopback_or_any = ip == "0100007F" || ip == "00000000";
            (state == "0A" && loopback_or_any)
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

/// Sends `sig` to `pid` (a negative pid names a process group).
pub fn signal(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// True while `pid` names a process that has not exited (zombies count as exited).
pub fn alive(pid: u32) -> bool {
    if !signal(pid as i32, 0) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// A pid file as daemons write it (Postfix pads it with spaces).
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The last lines of a log, formatted to follow an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    if tail.is_empty() {
        return format!(" (nothing in {})", path.display());
    }
    format!(
        "; last lines of {}:\n  {}",
        path.display(),
        tail.join("\n  ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "postwarden-daemon-{name}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn python_listener(dir: &Path, name: &str, port: u16) -> Spec {
        let script = format!(
            "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',{port}))\ns.listen()\nprint('listening',flush=True)\ntime.sleep(60)\n"
        );
        Spec {
            name: name.into(),
            program: super::super::preflight::find_program("python3").unwrap(),
            args: vec!["-c".into(), script.into()],
            ports: vec![port],
            env: vec![],
            log: dir.join(format!("{name}.log")),
            main_pid_file: None,
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn listening_sockets_are_read_from_the_kernel_table() {
        let table = "  sl  local_address rem_address   st tx_queue\n\
   0: 0100007F:4E4E 00000000:0000 0A 00000000:00000000\n\
   1: 0100007F:4E4F 0100007F:9C40 01 00000000:00000000\n\
   2: 00000000:07E8 00000000:0000 0A 00000000:00000000\n\
   3: 0200007F:4E50 00000000:0000 0A 00000000:00000000\n";
        let ports = parse_listening(table);
        assert_eq!(ports, [0x4E4E, 0x07E8].into_iter().collect());
    }

    #[tokio::test]
    async fn a_listening_process_is_ready_and_stops_on_sigterm() {
        let dir = scratch("ready");
        let mut d = Daemon::spawn(python_listener(&dir, "listener", free_port())).unwrap();
        d.wait_ready(Instant::now() + Duration::from_secs(20))
            .await
            .unwrap();
        d.stop(Duration::from_secs(10)).await.unwrap();
        assert!(std::fs::read_to_string(dir.join("listener.log"))
            .unwrap()
            .contains("listening"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_early_exit_is_reported_with_the_log() {
        let dir = scratch("exit");
        let spec = Spec {
            name: "broken".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo fatal: bad config >&2; exit 3".into()],
            ports: vec![free_port()],
            env: vec![],
            log: dir.join("broken.log"),
            main_pid_file: None,
        };
        let mut d = Daemon::spawn(spec).unwrap();
        let err = d
            .wait_ready(Instant::now() + Duration::from_secs(20))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken exited"), "{err}");
        assert!(err.contains("fatal: bad config"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A wrapper like the entrypoints: starts the "daemon" (`sleep`), writes its pid file, and
    /// on SIGTERM runs `on_term` before waiting for it.
    fn wrapper(dir: &Path, on_term: &str) -> (Spec, PathBuf) {
        let pidfile = dir.join("master.pid");
        let script = format!(
            "sleep 60 & echo \"   $!\" > {pid}; trap '{on_term}' TERM; wait; wait",
            pid = pidfile.display()
        );
        let spec = Spec {
            name: "wrapped".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            ports: vec![],
            env: vec![],
            log: dir.join("wrapped.log"),
            main_pid_file: Some(pidfile.clone()),
        };
        (spec, pidfile)
    }

    async fn started(spec: Spec, pidfile: &Path) -> (Daemon, u32) {
        let d = Daemon::spawn(spec).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while read_pid(pidfile).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let inner = read_pid(pidfile).expect("pid file written");
        assert_eq!(d.main_pid(), Some(inner));
        (d, inner)
    }

    #[tokio::test]
    async fn a_wrapper_stops_its_daemon_on_sigterm() {
        let dir = scratch("wrapper");
        let (spec, pidfile) = wrapper(&dir, "kill $!");
        let (d, inner) = started(spec, &pidfile).await;
        d.stop(Duration::from_secs(10)).await.unwrap();
        assert!(!alive(inner), "the daemon is gone");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_daemon_outliving_its_wrapper_is_killed_and_reported() {
        let dir = scratch("orphan");
        let (spec, pidfile) = wrapper(&dir, "exit 0");
        let (d, inner) = started(spec, &pidfile).await;
        let err = d
            .stop(Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("outlived its entrypoint"), "{err}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(inner) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(inner), "the daemon was killed");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
