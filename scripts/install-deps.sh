#!/usr/bin/env bash
# Installs what a new machine lacks to build and test Keel: redis-server, redis-cli,
# and for the chat server's tests and bench: sic, chromium, ngircd.
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# A real IRC client for the chat server's tests (crates/keel-chat/tests/real_client.rs).
command -v sic >/dev/null 2>&1 || need+=(sic)
# Headless Chromium drives the chat web client (crates/keel-chat/tests/browser.rs).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# ngircd: the baseline of `keel bench chat`.
command -v ngircd >/dev/null 2>&1 || need+=(ngircd)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]} ..."
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
redis-server --version
