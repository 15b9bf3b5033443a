#!/usr/bin/env bash
# The test command: what `make test` and CI run. Installs Redis if missing; every test that needs
# Redis starts its own private redis-server on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --workspace --all-targets "$@"
