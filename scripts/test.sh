#!/usr/bin/env bash
# Run the test suite (installing first, idempotently). Root runs everything; others skip the
# tests that need mounts, namespaces or cgroups, each with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --install-only
exec .venv/bin/python -m pytest "$@"
