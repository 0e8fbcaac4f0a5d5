# Makefile for pg-invalidator.
#
#   make build   bin/pg-invalidator, static (CGO_ENABLED=0), version from git describe
#   make test    go vet, gofmt check, docker-compose.yml check, cross builds, then every test
#   make crossbuild  build the binary for macOS and Windows (CGO_ENABLED=0), to check it compiles there
#   make test-containers
#                the packages that share PostgreSQL and Redis (those whose TestMain
#                calls testenv.Main) again, through testcontainers
#   make matrix  a subset of the tests against PostgreSQL 15, 17 and 18, Redis 8.0
#                and Valkey 8.0, 8.1 and 9.1, in local Debian images (.ci/matrix)
#   make image   the Docker image pg-invalidator:$(VERSION)
#   make demo    build, then run the self-contained demo (throwaway PostgreSQL and Redis)
#   make bench   the bench program, then the Go benchmarks of mapping/ and invalidator/
#   make race    the race scenarios: stale sets and standby reads, each remedy off and on (bench race)
#   make chaos   a fault every few seconds for CHAOS_TIME (default 10m; CI runs 2m) under a cache-aside load,
#                then the invariants: no stale entry, nothing acknowledged before Redis applied it, /readyz
#                not 200 while nothing is applied (bench chaos); CHAOS_SEED=N replays a run's faults
#   make fuzz    30 s of fuzzing the key template parser
#   make clean   remove build and test output
#
# `make test` starts PostgreSQL and Redis from the local binaries
# (apt-get install postgresql redis-server), unless DATABASE_URL and REDIS_URL
# are both set, in which case it uses those servers. TEST_BACKEND overrides the
# choice (env, local or testcontainers); see docs/testing.md.

# Go may not be on PATH (CI, fresh shells); this is where it is installed here.
export PATH := /usr/local/go/bin:$(PATH)
# bash, for pipefail in the test recipe.
SHELL := /bin/bash

GO      ?= go
BIN     := bin/pg-invalidator
MAIN    := ./cmd/pg-invalidator
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

# Every test package starts its own PostgreSQL; -p 2 matches the 2 cores.
TESTFLAGS ?= -count=1 -timeout 30m -p 2
FUZZTIME  ?= 30s
# Where `make test` keeps the verbose test output it summarises.
TESTLOG   ?= bin/test.log
# `make chaos`: how long faults are injected (the run takes about a minute more),
# and the seed of a run to replay (empty: a new one, printed first and last).
CHAOS_TIME ?= 10m
CHAOS_SEED ?=
# internal/testenv's backend for `make test`: never testcontainers unless asked.
TEST_BACKEND ?= $(if $(and $(DATABASE_URL),$(REDIS_URL)),env,local)
# `make image`: its name, the docker CLI, and extra build flags (.ci/app-image
# passes local base images as GO_IMAGE and RUNTIME_IMAGE build arguments).
IMAGE   ?= pg-invalidator:$(VERSION)
DOCKER  ?= docker
DOCKER_BUILD_FLAGS ?=

# The systems besides Linux the binary must build for, as GOOS/GOARCH.
CROSS     ?= darwin/arm64 windows/amd64

.PHONY: all build test test-containers matrix vet fmtcheck composecheck crossbuild demo bench race chaos fuzz image clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) $(MAIN)

# The quick checks run first, so that the test summary is the last thing printed.
test: vet fmtcheck composecheck crossbuild
	@mkdir -p $(dir $(TESTLOG))
	@set -o pipefail; \
	PGINV_TEST_BACKEND=$(TEST_BACKEND) $(GO) test -v $(TESTFLAGS) ./... 2>&1 | tee $(TESTLOG); rc=$$?; \
	pass=$$(grep -cE '^ *--- PASS' $(TESTLOG)); \
	fail=$$(grep -cE '^ *--- FAIL' $(TESTLOG)); \
	skip=$$(grep -cE '^ *--- SKIP' $(TESTLOG)); \
	badpkg=$$(grep -E '^FAIL[[:space:]]' $(TESTLOG) | awk '{print $$2}' | sort -u | tr '\n' ' '); \
	echo; \
	if [ $$rc -ne 0 ]; then echo "failed packages: $${badpkg:-(see above)}"; fi; \
	echo "tests: $$pass passed, $$fail failed, $$skip skipped"; \
	exit $$rc

# Through testcontainers, with the local test image on a private Docker engine
# when none answers (as root; see .ci/with-docker), or with the images in
# PGINV_TEST_POSTGRES_IMAGE and PGINV_TEST_REDIS_IMAGE on the engine you have.
test-containers:
	@bash .ci/with-docker bash .ci/test-containers

# The version matrix (.ci/matrix): PostgreSQL 15, 17 and 18, Redis 8.0 and
# Valkey 8.0, 8.1 and 9.1, in local Debian images; MATRIX_CELLS picks cells.
matrix:
	@bash .ci/with-docker bash .ci/matrix

vet:
	$(GO) vet ./...

# gofmt -l on every Go file outside testdata/ and vendor/; fails listing the unformatted ones.
fmtcheck:
	@files=$$(find . -name '*.go' -not -path './.git/*' -not -path './vendor/*' -not -path '*/testdata/*' -print0 | xargs -0 -r gofmt -l); \
	if [ -n "$$files" ]; then echo "gofmt: these files are not formatted (run gofmt -w on them):"; echo "$$files"; exit 1; fi; \
	echo "gofmt: ok"

# Offline validation of docker-compose.yml (needs no Docker engine). Required in CI.
composecheck:
	@if command -v docker-compose >/dev/null 2>&1; then \
		docker-compose -f docker-compose.yml config -q && echo "docker-compose.yml: ok"; \
	elif [ "$${CI:-}" = true ]; then \
		echo "docker-compose is not installed, and CI=true needs it to validate docker-compose.yml" >&2; exit 1; \
	else \
		echo "note: docker-compose is not installed; docker-compose.yml not validated (apt-get install docker-compose)"; \
	fi

# Compiles the binary for each of $(CROSS) and throws it away: the demo links
# internal/localsvc, whose process handling differs by system.
crossbuild:
	@out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	for target in $(CROSS); do \
		CGO_ENABLED=0 GOOS=$${target%/*} GOARCH=$${target#*/} $(GO) build -o "$$out/pg-invalidator" $(MAIN) || \
			{ echo "crossbuild: $$target failed" >&2; exit 1; }; \
		echo "crossbuild: $$target ok"; \
	done

demo: build
	./$(BIN) demo

bench:
	@if [ -d bench ]; then $(GO) run ./bench; else echo "note: no ./bench program yet; only the Go benchmarks run"; fi
	$(GO) test -run='^$$' -bench=. -benchmem ./mapping/ ./config/ ./invalidator/

# The race scenarios (bench/race.go): about 2 minutes; RACEFLAGS, such as
# -duration 3s, make a quick run that leaves bench/results/race/latest.json alone.
race:
	$(GO) run ./bench race $(RACEFLAGS)

# The chaos run (bench/chaos.go): private servers, the daemon under faults;
# its report, the last line of which sums it up, and the logs go to
# bench/results/local/chaos/<date>/. Fails unless every invariant held.
chaos:
	$(GO) run ./bench chaos -time $(CHAOS_TIME) $(if $(CHAOS_SEED),-seed $(CHAOS_SEED))

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzParseTemplate -fuzztime=$(FUZZTIME) ./mapping/

# Needs a Docker engine; .ci/app-image runs it on CI's private one.
image:
	$(DOCKER) build --build-arg VERSION=$(VERSION) $(DOCKER_BUILD_FLAGS) -t $(IMAGE) .

clean:
	rm -rf bin/ pg-invalidator *.prof *.test
