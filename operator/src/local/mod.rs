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
