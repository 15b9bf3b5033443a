#!/usr/bin/env bash
# The test command: what `make test` and CI run. Installs Redis if missing; every test that needs
# Redis starts its own private redis-server on a free port. Then the Compose end-to-end test
# (scripts/e2e-compose.sh): skipped without a Docker engine unless KEEL_REQUIRE_DOCKER=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --workspace --all-targets "$@"
# The peer benchmark's report logic (standard library only; the peers themselves run by hand).
python3 -m unittest discover -s docs/bench/peers -p 'test_*.py'
bash -n scripts/bench-jobs-peers.sh
bash scripts/e2e-compose.sh
