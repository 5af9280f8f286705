//! Backups of a MailDomain's mail, and their restore.
//!
//! A CronJob (built in [`crate::resources::backup`]) runs [`script::BACKUP_SCRIPT`] in the
//! mail-imap image: it copies every mailbox from an IMAP replica over the doveadm protocol
//! (never mounting the replicas' volumes) and stores the copy as an encrypted restic snapshot on
//! a PersistentVolumeClaim or in S3-compatible storage, then applies the retention policy. Its
//! last output line ([`result::RunResult`]) is the Pod's termination message, from which
//! [`observe`] derives `status.lastBackup`, the BackupHealthy condition, an Event and metrics.
//! `postwarden backup restore` builds a Job running [`script::RESTORE_SCRIPT`], which imports a
//! snapshot's messages alongside the live ones.

pub mod command;
pub mod observe;
pub mod result;
pub mod schedule;
pub mod script;

#[cfg(test)]
mod daemon_tests;
