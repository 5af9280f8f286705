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

    /// Stops every daemon, last started first, reporting (not failing on) stragglers.
    pub async fn stop(&mut self) {
        while let Some(d) = self.daemons.pop() {
            let name = d.name().to_string();
            if let Err(e) = d.stop(STOP_GRACE).await {
                eprintln!("warning: stopping {name}: {e:#}");
            }
        }
    }
}
