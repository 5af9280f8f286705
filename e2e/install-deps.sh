#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12 or 13: mmdebstrap for the Debian 13 root the
# mail daemons run from (e2e/debian13-root.sh; the host needs no mail daemon of its own), and the
# Python tools of the Kubernetes API and manifest tests.
# Needs root (or sudo). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=0
for bin in openssl ip unshare setpriv mmdebstrap; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || [ -x "/usr/bin/$bin" ] || missing=1
done
if [ "$missing" = 1 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    openssl ca-certificates iproute2 util-linux mmdebstrap >/dev/null
fi

# The Kubernetes control plane of the operator suite is built from source (e2e/controlplane.sh).
if ! command -v go >/dev/null 2>&1; then
  echo "install-deps: Go 1.24 or newer is needed to build the test control plane (e2e/controlplane/go.mod)" >&2
  exit 1
fi

if [ -f e2e/requirements.txt ]; then
  python3 -m pip install --quiet --disable-pip-version-check -r e2e/requirements.txt
fi

# promtool checks and unit-tests the chart's alert rules. It ships in Debian's prometheus
# package; only the promtool binary is extracted (no Prometheus service is installed or started).
if ! command -v promtool >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  if ! (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null); then
    $SUDO apt-get update -qq
    (cd "$tmp" && apt-get download -qq prometheus)
  fi
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  $SUDO install -m 0755 "$tmp/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
fi

# The Postfix queue exporter of the mail-mta image, for e2e/test_observability.py: like the
# image, only the binary of Debian's package (the package would pull in systemd-sysv and rsyslog).
if ! command -v prometheus-postfix-exporter >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  if ! (cd "$tmp" && apt-get download -qq prometheus-postfix-exporter 2>/dev/null); then
    $SUDO apt-get update -qq
    (cd "$tmp" && apt-get download -qq prometheus-postfix-exporter)
  fi
  dpkg-deb --fsys-tarfile "$tmp"/prometheus-postfix-exporter_*.deb | tar -x -C "$tmp" ./usr/bin/prometheus-postfix-exporter
  $SUDO install -m 0755 "$tmp/usr/bin/prometheus-postfix-exporter" /usr/local/bin/prometheus-postfix-exporter
  rm -rf "$tmp"
fi
