#!/usr/bin/env bash
# Runs every test tier: unit and snapshot tests, the mail path in real daemons, and the
# Kubernetes API suite. Needs the tools from e2e/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked

# The mail path: the rendered configuration in real Postfix, Dovecot and Rspamd (`local up`).
e2e/mailpath/run.sh

# Kubernetes API tier: the emulator's own tests, then the operator binary against it
# (or against the cluster KUBECONFIG points at). The suite runs target/debug/postwarden.
cargo build --locked
python3 -m pytest -q e2e/
