# Backup: copies every mailbox from a Dovecot replica over the doveadm protocol (dsync, the
# replicas' volumes are never mounted) into a scratch maildir, stores it as one encrypted restic
# snapshot, then applies the retention policy. The users are read from the users database shards.
USERS_DIR=${USERS_DIR:-/etc/postwarden/users}
KEEP_DAILY=${KEEP_DAILY:-7}
KEEP_WEEKLY=${KEEP_WEEKLY:-4}
KEEP_MONTHLY=${KEEP_MONTHLY:-6}
BACKUP_TIME=${BACKUP_TIME:-}
MAIL_ROOT="$SCRATCH_DIR/mail"

# fail MESSAGE [SNAPSHOT]: reports a failed run and exits non-zero.
fail() {
  log "backup failed: $1"
  emit_result "{\"result\":\"Failed\",\"mailboxes\":${copied:-0},\"failedMailboxes\":${failed:-0},\"bytes\":${bytes:-0},\"totalBytes\":${total:-0},\"snapshot\":$(json_str "${2:-}"),\"message\":$(json_str "$1")}"
  exit 1
}

users=$(cat "$USERS_DIR"/*.passwd 2>/dev/null | grep -v '^[[:space:]]*#' | cut -d: -f1 | grep . | sort -u) \
  || users=""
[ -d "$USERS_DIR" ] || fail "users database $USERS_DIR is missing"

rm -rf "$MAIL_ROOT"
mkdir -p "$MAIL_ROOT"
copied=0
failed=0
first_failure=""
for user in $users; do
  # backup -R makes the local side an exact copy of the replica; the replica is only read.
  if doveadm_remote "$MAIL_ROOT/$user" "$user" backup -R; then
    copied=$((copied + 1))
  else
    failed=$((failed + 1))
    first_failure=${first_failure:-"$user: $(last_error)"}
  fi
done
log "copied $copied mailbox(es), $failed failed"
[ "$copied" -gt 0 ] || [ "$failed" -eq 0 ] || fail "no mailbox could be copied, first: $first_failure"

restic_open init || fail "restic repository unavailable: $(last_error)"

tag=complete
[ "$failed" -eq 0 ] || tag=partial
mark
summary=$(cd "$SCRATCH_DIR" && restic backup --json --host "$BACKUP_HOST" --tag "postwarden,$tag" \
  ${BACKUP_TIME:+--time "$BACKUP_TIME"} mail 2>>"$LOG" | grep '"message_type":"summary"' | tail -n 1)
# Reported by its short id, as `restic snapshots` names it (restic 0.18 reports the full id).
snapshot=$(json_field snapshot_id "$summary" | cut -c1-8)
[ -n "$snapshot" ] || fail "restic backup failed: $(last_error)"
bytes=$(json_num data_added "$summary")
total=$(json_num total_bytes_processed "$summary")
log "snapshot $snapshot: $bytes bytes added, $total bytes of mail"

if [ "$failed" -gt 0 ]; then
  # A partial snapshot is kept (it holds every mailbox that could be read) but is not subject to
  # the retention policy, so it never displaces a complete one; only the last few are kept.
  restic forget --host "$BACKUP_HOST" --group-by host --tag partial --keep-last 3 >/dev/null 2>>"$LOG" || true
  fail "$failed mailbox(es) could not be copied, first: $first_failure" "$snapshot"
fi

# Retention over complete snapshots only; the newest is always kept.
mark
restic forget --host "$BACKUP_HOST" --group-by host --tag complete --keep-last 1 \
  --keep-daily "$KEEP_DAILY" --keep-weekly "$KEEP_WEEKLY" --keep-monthly "$KEEP_MONTHLY" \
  --prune >/dev/null 2>>"$LOG" || fail "retention failed: $(last_error)" "$snapshot"

rm -rf "$MAIL_ROOT"
emit_result "{\"result\":\"Succeeded\",\"mailboxes\":$copied,\"failedMailboxes\":0,\"bytes\":${bytes:-0},\"totalBytes\":${total:-0},\"snapshot\":$(json_str "$snapshot"),\"message\":\"\"}"
