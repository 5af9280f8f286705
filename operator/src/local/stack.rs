//! The set of daemons of one local stack: started together, ready together, stopped in reverse.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use futures::future::{select_all, FutureExt};

use super::daemon::{Daemon, Spec};

/// How long a daemon may take to stop before it is killed. Rspamd and the Postfix master
/// wait for their children; both finish well within this.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Running daemons, in start order.
pub struct Stack {
    daemons: Vec<Daemon>,
}

impl Stack {
    /// Starts every daemon at once: none needs another to start listening. If one cannot be
    /// started, those already running are stopped.
    pub async fn spawn(specs: Vec<Spec>) -> anyhow::Result<Self> {
        let mut stack = Stack {
            daemons: Vec::new(),
        };
        for spec in specs {
            match Daemon::spawn(spec) {
                Ok(d) => stack.daemons.push(d),
                Err(e) => {
                    stack.stop().await;
                    return Err(e);
                }
            }
        }
        Ok(stack)
    }

    /// Waits until every daemon listens and returns how long each took; the first failure (an
    /// exit, or `timeout`) is returned instead. The caller stops the stack on failure.
    pub async fn wait_ready(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Vec<(String, Duration)>> {
        let deadline = Instant::now() + timeout;
        let waits = self.daemons.iter_mut().map(|d| async move {
            let took = d.wait_ready(deadline).await?;
            Ok((d.name().to_string(), took))
        });
        futures::future::join_all(waits).await.into_iter().collect()
    }

    /// `(name, pid of its main process)` of every daemon.
    pub fn main_pids(&self) -> Vec<(String, u32)> {
        self.daemons
            .iter()
            .filter_map(|d| d.main_pid().map(|p| (d.name().to_string(), p)))
            .collect()
    }

    /// Resolves when any daemon exits on its own, naming it.
    pub async fn first_exit(&mut self) -> (String, std::io::Result<ExitStatus>) {
        if self.daemons.is_empty() {
            return futures::future::pending().await;
        }
        let waits = self.daemons.iter_mut().map(|d| {
            let name = d.name().to_string();
            async move { (name, d.exited().await) }.boxed()
        });
        select_all(waits).await.0
    }

    /// Stops one daemon and starts it again from the same spec, as the kubelet restarts a
    /// container; returns once it listens again, with how long that took.
    pub async fn restart(&mut self, name: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let i = self
            .daemons
            .iter()
            .position(|d| d.name() == name)
            .ok_or_else(|| anyhow::anyhow!("no daemon {name}"))?;
        let old = self.daemons.remove(i);
        let spec = old.spec().clone();
        old.stop(STOP_GRACE).await?;
        self.daemons.insert(i, Daemon::spawn(spec)?);
        self.daemons[i].wait_ready(started + timeout).await?;
        Ok(started.elapsed())
    }

    /// Stops the daemon started last first (Postfix: no new mail while the rest goes down),
    /// then all others at once, reporting (not failing on) stragglers.
    pub async fn stop(&mut self) {
        async fn stop_one(d: Daemon) {
            let name = d.name().to_string();
            let started = Instant::now();
            match d.stop(STOP_GRACE).await {
                Ok(()) => println!(
                    "  {name} stopped in {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => eprintln!("warning: stopping {name}: {e:#}"),
            }
        }
        if let Some(last) = self.daemons.pop() {
            stop_one(last).await;
        }
        futures::future::join_all(self.daemons.drain(..).map(stop_one)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::daemon::alive;

    fn listener(dir: &std::path::Path, name: &str) -> Spec {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = format!(
            "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',{port}))\ns.listen()\ntime.sleep(60)\n"
        );
        Spec {
            name: name.into(),
            program: crate::local::preflight::find_program("python3").unwrap(),
            args: vec!["-c".into(), script.into()],
            ports: vec![port],
            env: vec![],
            log: dir.join(format!("{name}.log")),
            main_pid_file: None,
        }
    }

    #[tokio::test]
    async fn starts_waits_for_and_stops_every_daemon() {
        let dir = std::env::temp_dir().join(format!(
            "postwarden-stack-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let specs = vec![listener(&dir, "first"), listener(&dir, "second")];
        let mut stack = Stack::spawn(specs).await.unwrap();
        let ready = stack.wait_ready(Duration::from_secs(30)).await.unwrap();
        let names: Vec<&str> = ready.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
        let pids = stack.main_pids();
        assert_eq!(pids.len(), 2);
        stack.stop().await;
        for (name, pid) in pids {
            assert!(!alive(pid), "{name} stopped");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
