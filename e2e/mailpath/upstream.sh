#!/usr/bin/env bash
# A stand-in for a hosted provider's inbound MX (what spec.continuity.upstream names): a second,
# plain Postfix on 127.0.0.1 with STARTTLS that stores every message it accepts in one Maildir.
# Run it where the stack's daemons run (inside the Debian 13 root: `postwarden local exec`).
#
#   upstream.sh up DIR PORT        start it, accepting mail for every recipient but "gone@"
#   upstream.sh accept DIR         accept again
#   upstream.sh defer DIR          answer every RCPT with 451 4.3.2 Temporary server error
#   upstream.sh stop DIR           stop listening (Postfix stopped, queue kept)
#   upstream.sh start DIR          start listening again (in the mode it had)
#
# Delivered messages: DIR/mail/new/*; `gone@<any domain>` is refused with 550 5.1.1 in every mode,
# as a provider refuses a deleted user.
set -euo pipefail

die() { echo "upstream: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 up DIR PORT | accept|defer|stop|start DIR"
cmd=$1 D=$2
CONF=$D/etc

restrictions() {
  local mode=$1 defer=
  [ "$mode" = defer ] && defer='check_client_access static:{451 4.3.2 Temporary server error}, '
  postconf -c "$CONF" -e \
    "smtpd_recipient_restrictions=check_recipient_access regexp:{{/^gone@/ 550 5.1.1 <gone>: Recipient address rejected: User unknown}}, ${defer}permit"
  echo "$mode" >"$D/mode"
}

case "$cmd" in
  up)
    [ $# = 3 ] || die "usage: $0 up DIR PORT"
    PORT=$3
    rm -rf "$D"
    mkdir -p "$CONF" "$D/spool" "$D/data" "$D/mail" "$D/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=upstream.provider.test" -keyout "$D/tls/key.pem" -out "$D/tls/cert.pem" 2>/dev/null
    : >"$CONF/main.cf"
    postconf -c "$CONF" -e \
      "compatibility_level=3.6" "myhostname=upstream.provider.test" "mydestination=" \
      "inet_interfaces=127.0.0.1" "inet_protocols=ipv4" "mynetworks=127.0.0.0/8" \
      "queue_directory=$D/spool" "data_directory=$D/data" \
      "maillog_file=$D/maillog" "maillog_file_prefixes=$D" \
      "alias_maps=" "alias_database=" "local_recipient_maps=" \
      "smtpd_relay_restrictions=permit_mynetworks, reject_unauth_destination" \
      "virtual_mailbox_domains=static:all" "virtual_mailbox_base=$D" "virtual_mailbox_maps=static:mail/" \
      "virtual_uid_maps=static:$(id -u postfix)" "virtual_gid_maps=static:$(id -g postfix)" \
      "virtual_minimum_uid=1" "virtual_mailbox_limit=0" "message_size_limit=0" \
      "smtpd_tls_security_level=may" "smtpd_tls_chain_files=$D/tls/key.pem, $D/tls/cert.pem"
    cat >"$CONF/master.cf" <<EOF
127.0.0.1:$PORT inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
    chown postfix "$D/data" "$D/mail"
    restrictions accept
    postfix -c "$CONF" check
    postfix -c "$CONF" start
    ;;
  accept | defer)
    restrictions "$cmd"
    if postfix -c "$CONF" status >/dev/null 2>&1; then postfix -c "$CONF" reload; fi
    ;;
  stop) postfix -c "$CONF" stop ;;
  start) postfix -c "$CONF" start ;;
  *) die "unknown command $cmd" ;;
esac
