//! Everything that keeps the two Dovecot replicas of a domain in sync, in one place.
//!
//! Today this is Dovecot 2.3's replicator: the notify and replication plugins report every
//! change to the local replicator, which runs dsync against the peer's doveadm server over
//! TLS (`mail_replica = tcps:<peer>:<doveadm port>`); saves wait up to two seconds for the
//! peer, so an accepted message is normally on both replicas. Dovecot 2.4 removed the replicator, so nothing
//! outside this module knows how replication works: replacing it with an agent that runs
//! `doveadm sync` means changing only these functions.

use crate::api::maildomain::MailDomain;

use super::scripts::sh_quote;
use super::{ImapInstance, Layout};

/// True when the domain has a second Dovecot instance to replicate with.
pub fn enabled(layout: &Layout) -> bool {
    layout.imap_replicas() > 1
}

/// Mail plugins replication needs (appended to the global `mail_plugins`, before any protocol
/// block extends it).
pub fn dovecot_mail_plugins(layout: &Layout) -> &'static str {
    if enabled(layout) {
        " notify replication"
    } else {
        ""
    }
}

/// Settings shared by every instance.
pub fn dovecot_shared(_md: &MailDomain, layout: &Layout) -> String {
    if !enabled(layout) {
        return String::new();
    }
    // Mail and dsync processes run as the vmail uid, which has no user name Dovecot could own
    // the sockets with (it needs a name, not a number), so the aggregator and replicator
    // sockets are open to every local user. They live in base_dir inside this container, where
    // nothing else runs, and only let a caller ask for a user to be synced.
    r#"
# --- Replication (Dovecot 2.3 replicator, see postwarden config::replication)
replication_max_conns = 10
replication_full_sync_interval = 1 days
# Dovecot's defaults plus -T: a dsync whose connection carries nothing for 30 s is abandoned and
# the user synced again, instead of waiting 10 minutes (over tcps, 2.3's dsync can end up with
# both sides waiting for the other).
replication_dsync_parameters = -d -N -l 30 -U -T 30
plugin {
  replication_sync_timeout = 2
}
service aggregator {
  fifo_listener replication-notify-fifo {
    mode = 0666
  }
  unix_listener replication-notify {
    mode = 0666
  }
}
service replicator {
  process_min_avail = 1
  unix_listener replicator-doveadm {
    mode = 0666
  }
}
"#
    .to_string()
}

/// Settings of one instance: its peer.
pub fn dovecot_instance(_layout: &Layout, inst: &ImapInstance) -> String {
    match &inst.peer {
        Some((host, port)) => {
            let endpoint = super::dovecot::doveadm_endpoint(host, *port);
            format!("\n# --- Replication peer\nplugin {{\n  mail_replica = {endpoint}\n}}\n")
        }
        None => String::new(),
    }
}

/// Entrypoint lines run once Dovecot has started (`$CONF` is the instance's configuration,
/// `$RUN` its runtime directory): queue every user for a full sync with the peer, so a fresh or
/// long-stopped replica catches up. The user list comes from the passwd-file shards, because
/// Dovecot cannot iterate a passwd-file whose path contains variables.
pub fn entrypoint_started(_md: &MailDomain, layout: &Layout) -> String {
    if !enabled(layout) {
        return String::new();
    }
    format!(
        r#"# Replication: once Dovecot answers, queue every user for a full sync with the peer.
users_list() {{
  for f in {users}/*.passwd; do
    [ -f "$f" ] && cut -d: -f1 "$f"
  done | LC_ALL=C sort -u
}}
replicate_users() {{
  while read -r user; do
    [ -n "$user" ] && doveadm -c "$CONF" replicator replicate -f "$user" >/dev/null 2>&1 || true
  done
}}
users_list > "$RUN/replicated-users"
(
  i=0
  while [ $i -lt 60 ] && kill -0 "$PID" 2>/dev/null && ! doveadm -c "$CONF" replicator status >/dev/null 2>&1; do
    sleep 1
    i=$((i + 1))
  done
  replicate_users < "$RUN/replicated-users"
) &
"#,
        users = sh_quote(&layout.users_dir().display().to_string())
    )
}

/// Entrypoint lines run after the users database changed: users that are new since the last
/// look get a full sync right away (the others are synced on every change anyway).
pub fn entrypoint_users_changed(_md: &MailDomain, layout: &Layout) -> String {
    if !enabled(layout) {
        return String::new();
    }
    r#"    users_list > "$RUN/users.new"
    LC_ALL=C comm -13 "$RUN/replicated-users" "$RUN/users.new" | replicate_users
    mv "$RUN/users.new" "$RUN/replicated-users"
"#
    .to_string()
}
