//! Starting, watching and stopping one daemon process of the local stack.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// How a daemon is told to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM to the process that was started.
    Terminate,
    /// SIGTERM to the pid written in this file. Postfix's `start-fg` runs the master under a
    /// wrapper script; only the master itself shuts the mail system down cleanly.
    PidFile(PathBuf),
}

/// What to run and when it counts as up.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Short name for messages and the log file, e.g. `dovecot-1`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Every TCP port on 127.0.0.1 that must accept connections before the daemon is ready.
    pub ports: Vec<u16>,
    /// File receiving the process's stdout and stderr.
    pub log: PathBuf,
    pub stop: Stop,
}

/// A started daemon.
pub struct Daemon {
    spec: Spec,
    child: Child,
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
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", spec.name, spec.program.display()))?;
        Ok(Self { spec, child })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Pid of the process that was started.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until every port accepts a connection; fails with the log's tail when the
    /// process exits first or `deadline` passes.
    pub async fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let mut pending = self.spec.ports.clone();
        loop {
            let mut still = Vec::new();
            for port in pending {
                let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    still.push(port);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
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

    /// Asks the daemon to stop and waits up to `grace`, then kills its whole process group.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let target = match &self.spec.stop {
            Stop::Terminate => self.child.id(),
            Stop::PidFile(path) => read_pid(path).or(self.child.id()),
        };
        if let Some(pid) = target {
            signal(pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
            return Ok(());
        }
        if let Some(pgid) = self.child.id() {
            signal(-(pgid as i32), libc::SIGKILL);
        }
        self.child.wait().await?;
        anyhow::bail!(
            "{} did not stop within {grace:?} and was killed",
            self.spec.name
        )
    }
}

/// Sends `sig` to `pid` (a negative pid names a process group).
pub fn signal(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
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
            log: dir.join(format!("{name}.log")),
            stop: Stop::Terminate,
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
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
            log: dir.join("broken.log"),
            stop: Stop::Terminate,
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

    #[tokio::test]
    async fn stop_signals_the_pid_in_the_pid_file() {
        let dir = scratch("pidfile");
        // The started process is a wrapper that exits once the real daemon (its child) stops,
        // like postfix-script around the Postfix master.
        let pidfile = dir.join("master.pid");
        let spec = Spec {
            name: "wrapped".into(),
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!("sleep 60 & echo \"   $!\" > {}; wait", pidfile.display()).into(),
            ],
            ports: vec![],
            log: dir.join("wrapped.log"),
            stop: Stop::PidFile(pidfile.clone()),
        };
        let mut d = Daemon::spawn(spec).unwrap();
        d.wait_ready(Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while read_pid(&pidfile).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let inner = read_pid(&pidfile).expect("pid file written");
        let started = Instant::now();
        d.stop(Duration::from_secs(10)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!signal(inner as i32, 0), "the inner process is gone");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
