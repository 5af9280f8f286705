#!/usr/bin/env bash
# Builds (once) and prints the path of a Debian 13 (trixie) root holding the mail daemons the
# images ship: Postfix 3.10, Dovecot 2.4, Rspamd 3.12, restic. A Debian 12 machine runs those
# daemons from this root (chroot or unshare into it) without touching its own packages.
#
#   e2e/debian13-root.sh            # build if needed, print the root's path
#   e2e/debian13-root.sh versions   # the daemon versions the root holds
#
# The root is cached under ${POSTWARDEN_CACHE:-~/.cache/postwarden}/debian13-root/<key>, the key
# a hash of the package list and of this recipe, so a warm machine reuses it and a changed list
# builds a new one. Needs root and mmdebstrap (e2e/install-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=trixie
MIRROR="${POSTWARDEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What the mail images install (images/mail-*/Dockerfile), plus the stock stack of the benchmark;
# like the mail-mta image, only the binary of prometheus-postfix-exporter (a hook below).
PACKAGES=(
  postfix dovecot-core dovecot-imapd dovecot-lmtpd dovecot-sieve rspamd restic
  publicsuffix opendkim opendkim-tools openssl ca-certificates iproute2 procps
)

cache="${POSTWARDEN_CACHE:-${HOME:-/root}/.cache/postwarden}/debian13-root"
key="$( (printf '%s\n' "$SUITE" "$MIRROR" "${PACKAGES[@]}"; cat "$0") | sha256sum | cut -c1-16)"
root="$cache/$key"

build() {
  [ -f "$root/.complete" ] && return 0
  command -v mmdebstrap >/dev/null || { echo "debian13-root: mmdebstrap is needed (apt-get install mmdebstrap)" >&2; exit 1; }
  [ "$(id -u)" -eq 0 ] || { echo "debian13-root: run as root (the daemons' files keep their owners)" >&2; exit 1; }
  mkdir -p "$cache"
  local tmp="$cache/.build-$key.$$"
  rm -rf "$tmp"
  local started=$SECONDS
  # Postfix's debconf questions answered as the images do: no configuration, the daemons get
  # theirs from the rendered files.
  mmdebstrap --quiet --variant=apt --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --essential-hook='printf "postfix postfix/main_mailer_type select No configuration\npostfix postfix/mailname string localhost\n" | chroot "$1" debconf-set-selections' \
    --customize-hook='chroot "$1" sh -c "cd /tmp && apt-get download -qq prometheus-postfix-exporter && dpkg-deb --fsys-tarfile prometheus-postfix-exporter_*.deb | tar -x -C / ./usr/bin/prometheus-postfix-exporter && rm -f prometheus-postfix-exporter_*.deb"' \
    --customize-hook='chroot "$1" apt-get clean' \
    "$SUITE" "$tmp" \
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" >&2
  touch "$tmp/.complete"
  rm -rf "$root"
  mv "$tmp" "$root"
  # Older roots of other keys are no longer wanted.
  find "$cache" -mindepth 1 -maxdepth 1 -not -name "$key" -exec rm -rf {} +
  echo "debian13-root: built $root in $((SECONDS - started)) s ($(du -sm "$root" | cut -f1) MB)" >&2
}

versions() {
  printf 'debian %s\n' "$(cat "$root/etc/debian_version")"
  printf 'postfix %s\n' "$(chroot "$root" postconf -dh mail_version)"
  printf 'dovecot %s\n' "$(chroot "$root" dovecot --version)"
  printf 'rspamd %s\n' "$(chroot "$root" rspamd --version | sed -n 's/^Rspamd daemon version //p')"
  printf 'restic %s\n' "$(chroot "$root" restic version | cut -d' ' -f2)"
}

build
case "${1:-path}" in
  path) echo "$root" ;;
  versions) versions ;;
  *) echo "usage: $0 [path|versions]" >&2; exit 2 ;;
esac
