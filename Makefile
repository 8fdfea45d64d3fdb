# musicd: build, run, test against real servers, benchmark, lint.
# `make help` lists the targets. Everything here also works from a fresh clone on a fresh Debian
# machine with Go installed: `make test` installs and starts the servers it needs.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GIT_REV  := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
GIT_SHA  := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X main.version=$(GIT_REV) -X main.commit=$(GIT_SHA)
BIN      := bin/musicd

# `make bench BENCH=journal` runs one group (the top-level benchmark's name, any case).
BENCH     ?=
BENCHTIME ?= 1s
BENCH_RE  := $(if $(BENCH),(?i)^Benchmark$(BENCH)$$,.)
# `make test KEEP_SERVICES=1` leaves the servers running afterwards (faster reruns).
KEEP_SERVICES ?=
TEST_FLAGS ?= -race -count=1 -timeout 20m

.PHONY: help build run test test-only bench lint services-install services-up services-down services-status clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

build: ## build bin/musicd
	go build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/musicd

run: build ## run musicd in embedded mode (no servers needed); ARGS='--api.listen=...' passes flags
	./$(BIN) $(ARGS)

test: services-install ## install and start the servers, run every test with -race, stop the servers
	deploy/dev/up.sh || { deploy/dev/down.sh; exit 1; }
	status=0; go test $(TEST_FLAGS) ./... || status=$$?; \
	if [ -z "$(KEEP_SERVICES)" ]; then deploy/dev/down.sh; fi; \
	exit $$status

test-only: ## run every test against servers that are already up (make services-up)
	go test $(TEST_FLAGS) ./...

bench: services-up ## run the benchmarks (BENCH=group for one group); table on stdout, JSON in bench/results.jsonl
	@mkdir -p bench
	go test -run '^$$' -bench '$(BENCH_RE)' -benchtime $(BENCHTIME) ./... | tee bench/last-run.txt \
		| go run ./cmd/benchreport -git $(GIT_REV) -out bench/results.jsonl

lint: ## gofmt and go vet
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...

services-install: ## install Cassandra, ZooKeeper, MariaDB and NATS (idempotent)
	deploy/dev/install.sh

services-up: ## start the servers on 127.0.0.1 (idempotent; returns at once when they are up)
	deploy/dev/up.sh

services-down: ## stop the servers started by services-up (by PID)
	deploy/dev/down.sh

services-status: ## show which servers are up
	deploy/dev/status.sh

clean: ## remove build output
	rm -rf bin
