#!/usr/bin/env bash
# Builds the three release images, tagged with the crate version (the chart's appVersion and
# the operator's default mail image tags):
#   ghcr.io/postwarden/postwarden, ghcr.io/postwarden/mail-mta, ghcr.io/postwarden/mail-imap
# REGISTRY=registry.example/mail images/build.sh   builds under another prefix.
set -euo pipefail
cd "$(dirname "$0")/.."
registry="${REGISTRY:-ghcr.io/postwarden}"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
docker build -f images/operator/Dockerfile -t "$registry/postwarden:$version" .
docker build --build-arg "POSTWARDEN_IMAGE=$registry/postwarden:$version" \
  -t "$registry/mail-mta:$version" images/mail-mta
docker build --build-arg "POSTWARDEN_IMAGE=$registry/postwarden:$version" \
  -t "$registry/mail-imap:$version" images/mail-imap
