#!/usr/bin/env bash
# Runs every test tier: unit and snapshot tests, the mail path in real daemons, and the
# Kubernetes API suite. Needs the tools from e2e/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every tier runs the mail daemons the images ship (Postfix 3.10, Dovecot 2.4, Rspamd 3.12) from a
# Debian 13 root (e2e/debian13-root.sh; cached after the first build, about 20 s), whatever
# release this machine runs. Set POSTWARDEN_ROOT empty on a Debian 13 host to use its packages.
if [ -z "${POSTWARDEN_ROOT+set}" ]; then
  POSTWARDEN_ROOT="$(e2e/debian13-root.sh path)"
  export POSTWARDEN_ROOT
fi
cargo test --workspace --locked
cargo build --locked

# The Helm chart, install.yaml, examples, alert rules and dashboard, validated offline, and the
# Postfix queue exporter against a real Postfix queue.
python3 -m pytest -q -p no:cacheprovider e2e/test_manifests.py e2e/test_observability.py

# The mail path: the rendered configuration in real Postfix, Dovecot and Rspamd (`local up`),
# driven by real clients.
e2e/mailpath/run.sh

# The Debian 13 root the images' daemons come from: the releases it holds, and the rendered MTA
# configuration parsed by its Postfix.
python3 -m pytest -q -p no:cacheprovider e2e/test_debian13_root.py

# Kubernetes API tier: the operator binary against a real control plane built from source
# (e2e/controlplane.sh; cached after the first build), or against the cluster KUBECONFIG points at.
# The suite runs target/debug/postwarden.
[ -n "${KUBECONFIG:-}" ] || e2e/controlplane.sh build >/dev/null
python3 -m pytest -q -p no:cacheprovider e2e/test_admission.py e2e/test_operator.py
