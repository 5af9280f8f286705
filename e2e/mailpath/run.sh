#!/usr/bin/env bash
# The mail-path suite: `postwarden local up` in real Postfix, Dovecot and Rspamd, driven by real
# clients (smtplib, imaplib, ssl, dkimpy). Extra arguments go to pytest.
#
# Where the machine allows it (root, or unprivileged user namespaces), the suite runs in a network
# namespace of its own that has only a loopback interface: nothing the daemons do can reach
# another host, and lookups that would leave the machine fail at once instead of timing out.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${POSTWARDEN_BIN:-}" ]; then
  cargo build --quiet --locked --bin postwarden
  export POSTWARDEN_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/postwarden"
fi
# The daemons come from the Debian 13 root (e2e/debian13-root.sh, built once and cached) unless
# POSTWARDEN_ROOT names another; set it empty on a Debian 13 host to use the host's packages.
if [ -z "${POSTWARDEN_ROOT+set}" ]; then
  POSTWARDEN_ROOT="$(e2e/debian13-root.sh path)"
  export POSTWARDEN_ROOT
fi
# The suite needs no pytest plugins; plugins installed for other suites must not interfere.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
cmd=(python3 -m pytest -p no:cacheprovider -q -rfE e2e/mailpath "$@")

if unshare --net true 2>/dev/null; then
  exec unshare --net sh -c 'ip link set lo up 2>/dev/null || true; exec "$@"' sh "${cmd[@]}"
fi
echo "note: cannot create a network namespace; running on the host's loopback" >&2
exec "${cmd[@]}"
