#!/usr/bin/env bash
# Runs every test tier: unit and snapshot tests, the mail path in real daemons, and the
# Kubernetes API suite. Needs the tools from e2e/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked

# The mail path: the rendered configuration in real Postfix, Dovecot and Rspamd (`local up`).
e2e/mailpath/run.sh
