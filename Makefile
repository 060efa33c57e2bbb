# The two commands a user needs: `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export RUST_BACKTRACE ?= 1

.PHONY: all setup build images run run-process stop logs test lint unit e2e analysis bench clean

all: build

## build: debug binaries, the static release binaries and both images
build: images

## setup: the Debian packages the build and tests need (protoc, etcd, Node, Docker), if missing
setup:
	bash scripts/setup.sh

## images: static binaries in FROM-scratch images lb-server:latest and lb-balancer:latest
images: setup
	bash scripts/images.sh

## run: the balancer and its replicas as Docker containers on localhost:5000
run: setup
	bash scripts/up.sh

## run-process: the balancer on localhost:5000 with replicas as local processes (no Docker)
run-process: setup
	$(CARGO) build --release -p server -p load_balancer
	./target/release/load_balancer --runtime process --listen 127.0.0.1:$${LB_PORT:-5000}

## stop: remove the deployment and every replica container it started
stop:
	bash scripts/down.sh

## logs: follow the balancer's and the replicas' logs
logs:
	bash scripts/logs.sh

## test: formatting, lints, unit and property tests, end-to-end tests
test: setup lint unit e2e

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: setup
	$(CARGO) test --workspace --lib --bins

e2e: images
	bash scripts/difftest-env.sh
	$(CARGO) build --workspace --bins
	$(CARGO) test -p e2e --tests

## analysis: experiments A-1 to A-5 against a real deployment (RUNTIME=process without Docker)
analysis: setup
	bash scripts/analysis.sh

## bench: this balancer vs nginx vs HAProxy on the same backends, then ring micro-benchmarks
bench:
	bash scripts/bench.sh
	$(CARGO) bench -p load_balancer --bench ring

## clean: build output, the fuzzers' own target directory (about 2 GB) included
clean:
	$(CARGO) clean
	rm -rf fuzz/target

## fuzz: bounded fuzzing of admin bodies, ring operations and HTTP/1 framing (FUZZ_SECONDS each, default 60)
.PHONY: fuzz
fuzz:
	bash scripts/fuzz.sh
