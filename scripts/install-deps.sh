#!/usr/bin/env bash
# Installs what a new machine lacks to build and test Keel: redis-server, redis-cli, sic.
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# A real IRC client for the chat server's tests (crates/keel-chat/tests/real_client.rs).
command -v sic >/dev/null 2>&1 || need+=(sic)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]} ..."
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
redis-server --version
