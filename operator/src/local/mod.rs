//! `postwarden local`: the mail stack of one MailDomain on this machine, in the real Debian
//! Postfix, Dovecot and Rspamd, from exactly the files the operator renders for Kubernetes.
//!
//! The only difference from a pod is the [`Layout`](crate::config::Layout): the same file tree
//! under one directory, 127.0.0.1 and shifted ports. Files are written the way the kubelet
//! mounts ConfigMaps and Secrets ([`volume`]), so the daemons' reload watchers see the same
//! atomic `..data` swaps they see in a cluster.

pub mod apply;
pub mod daemon;
pub mod preflight;
pub mod ready;
pub mod stack;
pub mod store;
pub mod up;
pub mod volume;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `postwarden local exec`: replaces this process with `command` run in the daemons' runtime
/// (the `root` directory when given, sharing `share`), so its exit status is the program's.
pub fn exec(root: Option<&Path>, share: &[PathBuf], command: &[OsString]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let mut runtime = match root {
        Some(dir) => crate::runtime::Runtime::root(dir)?,
        None => crate::runtime::Runtime::Host,
    };
    for dir in share {
        runtime = runtime.sharing(&std::path::absolute(dir)?);
    }
    let (program, args) = command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no program to run"))?;
    let mut cmd = runtime.command(&program.to_string_lossy());
    cmd.args(args);
    Err(anyhow::anyhow!(
        "cannot run {}: {}",
        program.to_string_lossy(),
        cmd.exec()
    ))
}
