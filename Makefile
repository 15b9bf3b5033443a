# Keel: `make test` runs what CI runs; `make up` / `make down` drive the Compose stack.
.PHONY: test build release lint fmt static image redis-image up down ps logs e2e

# Whichever of `docker compose` (v2 plugin) and `docker-compose` (v1) is installed.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)
export KEEL_COMPOSE := $(COMPOSE)

test:
	bash scripts/test.sh

build:
	cargo build --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# Static release binary (glibc +crt-static) at deploy/build/keel.
static:
	bash scripts/build-static.sh

# keel:<git-rev> and keel:latest, FROM scratch (not rebuilt when keel:<rev> exists).
image:
	bash scripts/build-image.sh

# keel-redis:7 from this machine's redis-server, unless redis:7 is present.
redis-image:
	bash scripts/build-redis-image.sh

# Build binary and images, start deploy/compose.yaml, wait until every service is healthy.
up:
	bash scripts/stack.sh up

# Remove the stack's containers, networks and volumes.
down:
	bash scripts/stack.sh down

ps:
	bash scripts/stack.sh ps

logs:
	bash scripts/stack.sh logs --tail 100

# The Compose end-to-end test alone (also part of `make test` when a Docker engine is present).
e2e:
	bash scripts/e2e-compose.sh
