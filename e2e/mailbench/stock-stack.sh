#!/usr/bin/env bash
# A stock Debian 13 mail stack — Postfix 3.10 + OpenDKIM + Dovecot 2.4 as Debian configures them —
# on 127.0.0.1, the baseline the benchmark measures the rendered stack against.
#
#   stock-stack.sh up DIR PORT_BASE    start it (inside the Debian 13 root: run.py enters it)
#   stock-stack.sh down DIR            stop what `up` started, by the PIDs it recorded
#
# Ports: PORT_BASE+25 (smtpd, STARTTLS offered), PORT_BASE+993 (IMAPS). Postfix reaches Dovecot's
# LMTP and OpenDKIM over UNIX sockets, as Debian's recipes set them up. Users alice@example.com and
# bob@example.com, password in DIR/ready. What differs from Debian's defaults, and why, is written
# to DIR/DEVIATIONS.txt.
set -euo pipefail

DOMAIN=example.com
PASSWORD=stock-bench-password
MAIL_UID=5000

die() { echo "stock-stack: $*" >&2; exit 1; }

down() {
  local d=$1 pid
  [ -f "$d/pids" ] || return 0
  while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$d/pids"
  for _ in $(seq 100); do
    local alive=0
    while read -r pid; do [ -d "/proc/$pid" ] && alive=1; done <"$d/pids"
    [ $alive = 0 ] && break
    sleep 0.1
  done
  while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$d/pids"
  rm -f "$d/pids" "$d/ready"
}

case "${1:-}" in
  down) [ $# = 2 ] || die "usage: $0 down DIR"; down "$2"; exit 0 ;;
  up) [ $# = 3 ] || die "usage: $0 up DIR PORT_BASE" ;;
  *) die "usage: $0 up DIR PORT_BASE | down DIR" ;;
esac
D=$2 PB=$3
[ "$(id -u)" = 0 ] || die "run as root"
[ ${#D} -le 60 ] || die "DIR is too long for the UNIX socket paths below it"
SMTP=$((PB + 25)) IMAPS=$((PB + 993))
rm -rf "$D"
mkdir -p "$D"/{tls,dkim,opendkim,postfix/etc,postfix/spool,postfix/data,dovecot/run,dovecot/state,mail}
: >"$D/pids"
trap '[ -f "$D/ready" ] || down "$D"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj "/CN=mail.$DOMAIN" \
  -addext "subjectAltName=DNS:mail.$DOMAIN" -keyout "$D/tls/key.pem" -out "$D/tls/cert.pem" 2>/dev/null
cp "$D/tls/cert.pem" "$D/ca.pem"

# OpenDKIM: Debian's /etc/opendkim.conf plus the key to sign with (mail From example.com, sent by
# its InternalHosts, 127.0.0.1 by default).
opendkim-genkey -D "$D/dkim" -d $DOMAIN -s stock -b 2048
chown -R opendkim:opendkim "$D/dkim"
chown opendkim:postfix "$D/opendkim"
chmod 750 "$D/opendkim"
{
  grep -vE '^(#|$|Socket|PidFile|UserID)' /etc/opendkim.conf
  cat <<EOF
UserID opendkim:postfix
Socket local:$D/opendkim/opendkim.sock
PidFile $D/opendkim/opendkim.pid
Domain $DOMAIN
Selector stock
KeyFile $D/dkim/stock.private
RequireSafeKeys false
EOF
} >"$D/opendkim/opendkim.conf"
setsid opendkim -f -x "$D/opendkim/opendkim.conf" </dev/null >"$D/opendkim/log" 2>&1 &
echo $! >>"$D/pids"

# Postfix: main.cf as Debian's postinst writes it for "Internet Site", then the virtual domain.
PF=$D/postfix
cat /usr/share/postfix/main.cf.debian /usr/share/postfix/main.cf.tls >"$PF/etc/main.cf"
postconf -c "$PF/etc" -e \
  "myhostname=mail.$DOMAIN" \
  "mydestination=\$myhostname, localhost.localdomain, localhost" \
  "smtpd_relay_restrictions=permit_mynetworks permit_sasl_authenticated defer_unauth_destination" \
  "mynetworks=127.0.0.0/8" "mailbox_size_limit=0" "recipient_delimiter=+" \
  "inet_interfaces=127.0.0.1" "inet_protocols=ipv4" "alias_maps=" "alias_database=" \
  "queue_directory=$PF/spool" "data_directory=$PF/data" "maillog_file=$PF/maillog" "maillog_file_prefixes=$PF" \
  "smtpd_tls_cert_file=$D/tls/cert.pem" "smtpd_tls_key_file=$D/tls/key.pem" \
  "virtual_mailbox_domains=$DOMAIN" "virtual_mailbox_maps=texthash:$PF/etc/vmailbox" \
  "virtual_transport=lmtp:unix:private/dovecot-lmtp" "lmtp_destination_concurrency_limit=10" \
  "smtpd_milters=unix:$D/opendkim/opendkim.sock" "non_smtpd_milters=\$smtpd_milters"
printf '%s OK\n' "alice@$DOMAIN" "bob@$DOMAIN" >"$PF/etc/vmailbox"
{
  echo "127.0.0.1:$SMTP inet n - n - - smtpd"
  # Debian's unix services, unchrooted (a chroot would need copies of /etc under the queue).
  grep -E '^[a-z]' /etc/postfix/master.cf | grep -vE '^(smtp +inet|maildrop|uucp|ifmail|bsmtp|scalemail-backend|mailman) ' |
    awk '{ $5 = "n"; print }'
} >"$PF/etc/master.cf"
chown postfix "$PF/data"
postfix -c "$PF/etc" check >/dev/null

# Dovecot: Debian's /etc/dovecot with virtual users in a passwd-file instead of system users.
DV=$D/dovecot
cp -a /etc/dovecot "$DV/etc"
sed -i 's/^!include auth-system.conf.ext/#&/' "$DV/etc/conf.d/10-auth.conf"
hash=$(doveadm pw -s SHA512-CRYPT -p "$PASSWORD")
printf '%s:%s::::::\n' "alice@$DOMAIN" "$hash" "bob@$DOMAIN" "$hash" >"$DV/users"
chgrp dovecot "$DV/users"
chmod 640 "$DV/users"
chown $MAIL_UID:$MAIL_UID "$D/mail"
cat >"$DV/etc/local.conf" <<EOF
instance_name = stock-$PB
base_dir = $DV/run
state_dir = $DV/state
log_path = $DV/dovecot.log
listen = 127.0.0.1
ssl_server_cert_file = $D/tls/cert.pem
ssl_server_key_file = $D/tls/key.pem
first_valid_uid = $MAIL_UID
mail_driver = maildir
mail_home = $D/mail/%{user | domain}/%{user | username}
mail_path = ~/Maildir
mail_inbox_path =
passdb passwd-file {
  passwd_file_path = $DV/users
  default_password_scheme = SHA512-CRYPT
}
userdb passwd-file {
  passwd_file_path = $DV/users
  fields {
    uid:default = $MAIL_UID
    gid:default = $MAIL_UID
  }
}
# Debian's 20-lmtp.conf drops the domain; these users are full addresses.
protocol lmtp {
  auth_username_format = %{user | lower}
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = $IMAPS
  }
}
service pop3-login {
  inet_listener pop3 {
    port = 0
  }
  inet_listener pop3s {
    port = 0
  }
}
service submission-login {
  inet_listener submission {
    port = 0
  }
  inet_listener submissions {
    port = 0
  }
}
service lmtp {
  unix_listener $PF/spool/private/dovecot-lmtp {
    mode = 0600
    user = postfix
    group = postfix
  }
}
EOF
doveconf -c "$DV/etc/dovecot.conf" -n >"$DV/doveconf-n.txt"
setsid dovecot -F -c "$DV/etc/dovecot.conf" </dev/null >"$DV/out" 2>&1 &
echo $! >>"$D/pids"

for _ in $(seq 100); do
  [ -S "$PF/spool/private/dovecot-lmtp" ] && [ -S "$D/opendkim/opendkim.sock" ] && break
  sleep 0.1
done
[ -S "$PF/spool/private/dovecot-lmtp" ] || die "Dovecot's LMTP socket is missing: $(cat "$DV/out" "$DV/dovecot.log" 2>/dev/null)"
[ -S "$D/opendkim/opendkim.sock" ] || die "OpenDKIM's socket is missing: $(cat "$D/opendkim/log")"
postfix -c "$PF/etc" start
for _ in $(seq 100); do [ -s "$PF/spool/pid/master.pid" ] && break; sleep 0.1; done
tr -d ' ' <"$PF/spool/pid/master.pid" >>"$D/pids"
for port in $SMTP $IMAPS; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null || die "nothing listens on $port"
done

cat >"$D/DEVIATIONS.txt" <<EOF
Postfix: main.cf of Debian's postinst ("Internet Site"); queue, data and log under DIR; 127.0.0.1 only;
  no aliases; the TLS certificate of DIR; example.com as a virtual mailbox domain delivered by LMTP over
  private/dovecot-lmtp, at most 10 at once (Dovecot 2.4's lmtp_user_concurrency_limit: with Postfix's
  default 20 half the load to one user is deferred for minutes); OpenDKIM as milter. master.cf: Debian's, smtp on port $SMTP, chroot off.
Dovecot: Debian's /etc/dovecot; system users off, a passwd-file (SHA512-CRYPT) with uid $MAIL_UID instead;
  LMTP looks users up by full address; Maildir under DIR/mail; only IMAPS (port $IMAPS) and the LMTP socket in Postfix's private/ listen.
OpenDKIM: Debian's /etc/opendkim.conf; socket, PID file and a 2048-bit RSA key under DIR;
  RequireSafeKeys off (DIR may sit below a world-writable directory such as /tmp).
EOF
cat >"$D/ready" <<EOF
SMTP_PORT=$SMTP
IMAPS_PORT=$IMAPS
CAFILE=$D/ca.pem
HOSTNAME=mail.$DOMAIN
PASSWORD=$PASSWORD
EOF
echo "stock-stack: ready on 127.0.0.1:$SMTP (SMTP) and :$IMAPS (IMAPS)" >&2
