#!/bin/bash
# Shared part of the Postwarden backup and restore scripts. Everything that differs between a
# pod and a test (paths, replica addresses) comes from the environment; the text is the same.
set -uo pipefail
umask 077

: "${DOVEADM_SERVERS:?DOVEADM_SERVERS must list the replicas doveadm servers as tcps:HOST:PORT}"
: "${DOVEADM_PASSWORD_FILE:?DOVEADM_PASSWORD_FILE must name the file holding the doveadm password}"
: "${RESTIC_REPOSITORY:?RESTIC_REPOSITORY must be set}"
: "${RESTIC_PASSWORD_FILE:?RESTIC_PASSWORD_FILE must name the file holding the repository key}"
: "${BACKUP_HOST:?BACKUP_HOST must name the host recorded in the snapshots}"
export RESTIC_REPOSITORY RESTIC_PASSWORD_FILE
DOVEADM_CA_FILE=${DOVEADM_CA_FILE:-}
DOVEADM_TIMEOUT=${DOVEADM_TIMEOUT:-3600}
# A dsync whose connection carries nothing for this long is given up and tried again: over
# tcps, Dovecot 2.3's dsync can end up with both sides waiting for the other (seen as a stall
# in state recv_mailbox_tree); a new connection goes through.
DSYNC_STALL_SECONDS=${DSYNC_STALL_SECONDS:-120}
DSYNC_ATTEMPTS=${DSYNC_ATTEMPTS:-2}
MAIL_SEPARATOR=${MAIL_SEPARATOR:-/}
SCRATCH_DIR=${SCRATCH_DIR:-/var/lib/postwarden-backup}
RESULT_FILE=${RESULT_FILE:-/dev/termination-log}
export RESTIC_CACHE_DIR=${RESTIC_CACHE_DIR:-$SCRATCH_DIR/restic-cache}
export TZ=UTC

LOG="$SCRATCH_DIR/run.log"
DOVEADM_CONF="$SCRATCH_DIR/doveadm.conf"

log() { printf '%s %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }

# A JSON string literal of $1: quotes and backslashes escaped, control characters dropped.
json_str() {
  printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | cut -c1-400)"
}

# Commands write their errors to $LOG. mark starts a step; last_error is the step's error: its
# first "Fatal:" or "Error:" line (restic, doveadm), else its last line.
LOG_MARK=0
mark() {
  LOG_MARK=$(wc -l < "$LOG")
}
last_error() {
  local lines first
  lines=$(tail -n "+$((LOG_MARK + 1))" "$LOG" 2>/dev/null | grep -v '^[[:space:]]*$')
  first=$(printf '%s\n' "$lines" | grep -E '(^|: )(Fatal|Error): ' | head -n 1)
  if [ -n "$first" ]; then
    printf '%s' "$first"
  else
    printf '%s\n' "$lines" | tail -n 1
  fi
}

# Writes the commands' errors to the log (stderr), then the final result line to stdout and to
# RESULT_FILE (the termination message).
emit_result() {
  local line="$1"
  cat "$LOG" >&2 2>/dev/null || true
  printf '%s\n' "$line"
  if [ -n "$RESULT_FILE" ]; then
    printf '%s\n' "$line" > "$RESULT_FILE" 2>/dev/null || log "cannot write $RESULT_FILE"
  fi
}

# The doveadm client: each user is a plain maildir under a directory of the scratch volume, and
# every command that names a replica (tcps:HOST:PORT) runs there over the doveadm protocol,
# authenticated by the shared doveadm password. No userdb lookups happen locally: the user comes
# from USER and its home from HOME.
write_doveadm_conf() {
  mkdir -p "$SCRATCH_DIR/run" "$SCRATCH_DIR/state"
  {
    echo "dovecot_config_version = 2.4.0"
    echo "dovecot_storage_version = 2.4.0"
    echo "base_dir = $SCRATCH_DIR/run"
    echo "state_dir = $SCRATCH_DIR/state"
    echo "log_path = /dev/stderr"
    echo "mail_driver = maildir"
    # No userdb: each command's HOME (doveadm_as) is the user's home.
    echo "mail_home = %{env:HOME}"
    echo "mail_path = %{home}/Maildir"
    echo "doveadm_password = <$DOVEADM_PASSWORD_FILE"
    # TLS always (the servers accept nothing else); like the replicas' own dsync connections,
    # the certificate is verified only against a given CA, since a publicly issued one cannot
    # name pod hosts. The password authenticates; the NetworkPolicy admits only backup pods.
    if [ -n "$DOVEADM_CA_FILE" ]; then
      echo "ssl_client_ca_file = $DOVEADM_CA_FILE"
    else
      echo "ssl_client_require_valid_cert = no"
    fi
    echo "namespace inbox {"
    echo "  inbox = yes"
    echo "  separator = $MAIL_SEPARATOR"
    echo "}"
  } > "$DOVEADM_CONF"
}

# doveadm HOME USER [-f FORMATTER] COMMAND ARGS...: one doveadm mail command as USER with mail
# under HOME, without a userdb (the job has none). A two-word COMMAND is passed as one word
# ("mailbox status").
doveadm_as() {
  local home="$1" user="$2" format=() cmd
  shift 2
  if [ "$1" = "-f" ]; then
    format=(-f "$2")
    shift 2
  fi
  cmd="$1"
  shift
  mkdir -p "$home"
  # shellcheck disable=SC2086 # a two-word command splits into its words
  USER="$user" HOME="$home" timeout "$DOVEADM_TIMEOUT" \
    doveadm -c "$DOVEADM_CONF" "${format[@]}" $cmd --no-userdb-lookup "$@"
}

# doveadm_remote HOME USER DSYNC-ARGS...: runs `doveadm DSYNC-ARGS... SERVER` (a sync or a
# backup) against the first replica that answers, in DOVEADM_SERVERS order, for up to
# DSYNC_ATTEMPTS rounds.
doveadm_remote() {
  local home="$1" user="$2" host attempt
  shift 2
  for attempt in $(seq 1 "$DSYNC_ATTEMPTS"); do
    for host in $DOVEADM_SERVERS; do
      mark
      if doveadm_as "$home" "$user" "$@" -T "$DSYNC_STALL_SECONDS" "$host" 2>>"$LOG"; then
        return 0
      fi
      log "doveadm $1 of $user via $host failed (attempt $attempt): $(last_error)"
    done
  done
  return 1
}

# A numeric field of a restic JSON line.
json_num() {
  printf '%s' "$2" | grep -o "\"$1\":[0-9]*" | head -n 1 | cut -d: -f2
}
# A string field of a restic JSON line.
json_field() {
  printf '%s' "$2" | grep -o "\"$1\":\"[^\"]*\"" | head -n 1 | cut -d: -f2- | tr -d '"'
}

# restic_open [init]: checks that the repository opens with the key (creating the repository
# first when asked and there is none yet) and removes stale locks of runs that were killed.
restic_open() {
  mark
  mkdir -p "$RESTIC_CACHE_DIR"
  local err
  if ! err=$(restic cat config 2>&1 >/dev/null); then
    printf '%s\n' "$err" >> "$LOG"
    case "$err" in
      *"Is there a repository at the following location?"*) [ "${1:-}" = init ] || return 1 ;;
      *) return 1 ;;
    esac
    log "initialising the repository"
    mark
    restic init >/dev/null 2>>"$LOG" || return 1
  fi
  restic unlock >/dev/null 2>>"$LOG" || true
}

mkdir -p "$SCRATCH_DIR"
: > "$LOG"
write_doveadm_conf
