# Restore: puts the mail of a snapshot back into the running cluster without discarding anything
# that arrived or changed after the snapshot. Per user: a fresh copy of the live account is taken
# from a replica (backup -R), the snapshot's messages are imported into it alongside (new UIDs,
# flags and folders kept), copies of messages that still exist are dropped (same GUID), and a
# two-way sync hands the additions back to the replica, merging whatever changed meanwhile.
# (One-way `sync -1` is avoided: Dovecot 2.3 loops without bound on deleted folders with it.)
RESTORE_SNAPSHOT=${RESTORE_SNAPSHOT:-latest}
RESTORE_MAILBOX=${RESTORE_MAILBOX:-}
RESTORE_ROOT="$SCRATCH_DIR/restore"
LIVE_ROOT="$SCRATCH_DIR/live"

fail() {
  log "restore failed: $1"
  emit_result "{\"result\":\"Failed\",\"mailboxes\":${restored:-0},\"failedMailboxes\":${failed:-0},\"messages\":${added:-0},\"snapshot\":$(json_str "${snapshot:-}"),\"message\":$(json_str "$1")}"
  exit 1
}

# Total number of messages in every folder of the local copy at HOME of USER.
message_count() {
  doveadm_as "$1" "$2" -f flow "mailbox status" messages '*' 2>>"$LOG" \
    | grep -o 'messages=[0-9]*' | cut -d= -f2 | awk '{ n += $1 } END { print n + 0 }'
}

restic_open || fail "restic repository unavailable: $(last_error)"

selector=$RESTORE_SNAPSHOT
mark
if [ "$selector" = latest ]; then
  # Snapshots are listed oldest first; partial ones count too (they hold every mailbox they name).
  info=$(restic snapshots --json --host "$BACKUP_HOST" 2>>"$LOG" | sed 's/},{/}\n{/g' | tail -n 1)
else
  info=$(restic snapshots --json "$selector" 2>>"$LOG")
fi
snapshot=$(json_field short_id "$info")
snapshot_id=$(json_field id "$info")
[ -n "$snapshot_id" ] || fail "snapshot $selector not found: $(last_error)"
log "restoring from snapshot $snapshot"

rm -rf "$RESTORE_ROOT" "$LIVE_ROOT"
mkdir -p "$RESTORE_ROOT" "$LIVE_ROOT"
# The backup stores the scratch directory relative to its parent, so every snapshot holds
# /mail/<user>/Maildir whatever the scratch path was.
include=()
[ -z "$RESTORE_MAILBOX" ] || include=(--include "/mail/$RESTORE_MAILBOX")
mark
restic restore "$snapshot_id" --target "$RESTORE_ROOT" "${include[@]}" >/dev/null 2>>"$LOG" \
  || fail "restic restore failed: $(last_error)"
snap_mail="$RESTORE_ROOT/mail"

if [ -n "$RESTORE_MAILBOX" ]; then
  [ -d "$snap_mail/$RESTORE_MAILBOX/Maildir" ] || fail "snapshot $snapshot holds no mailbox $RESTORE_MAILBOX"
  users=$RESTORE_MAILBOX
else
  users=$(ls -1 "$snap_mail" 2>/dev/null)
fi

restored=0
failed=0
added=0
first_failure=""
for user in $users; do
  live="$LIVE_ROOT/$user"
  if doveadm_remote "$live" "$user" backup -R \
    && before=$(message_count "$live" "$user") \
    && doveadm_as "$live" "$user" import -s "maildir:$snap_mail/$user/Maildir" "" all 2>>"$LOG" \
    && doveadm_as "$live" "$user" deduplicate mailbox '*' all 2>>"$LOG" \
    && after=$(message_count "$live" "$user") \
    && doveadm_remote "$live" "$user" sync; then
    restored=$((restored + 1))
    added=$((added + after - before))
    log "$user: $((after - before)) message(s) restored"
  else
    failed=$((failed + 1))
    first_failure=${first_failure:-"$user: $(last_error)"}
  fi
done

rm -rf "$RESTORE_ROOT" "$LIVE_ROOT"
[ "$failed" -eq 0 ] || fail "$failed mailbox(es) could not be restored, first: $first_failure"
emit_result "{\"result\":\"Succeeded\",\"mailboxes\":$restored,\"failedMailboxes\":0,\"messages\":$added,\"snapshot\":$(json_str "$snapshot"),\"message\":\"\"}"
