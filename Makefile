# RainForest build, test and benchmark entry points. See README.md.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
IMAGES ?= build/images
BIN := bin
# make install puts rfm, its man pages and its bash completion under
# $(DESTDIR)$(PREFIX).
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all setup build image image-debian run test unit kvm e2e bench vet fuzz fuzz-smoke clean install

all: build

setup:
	./scripts/setup.sh

# -buildvcs=auto: rfm version names the commit it was built from, whatever
# GOFLAGS says (a checkout without git still builds).
build:
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -o $(BIN)/rfm ./cmd/rfm
	CGO_ENABLED=0 $(GO) build -o $(BIN)/rfimage ./cmd/rfimage

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	install -m 0755 $(BIN)/rfm $(DESTDIR)$(PREFIX)/bin/rfm
	$(BIN)/rfm gen-man $(DESTDIR)$(PREFIX)/share/man/man1
	$(BIN)/rfm completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/rfm

# The image carries the rfcom tool and the agent, built static and
# reproducible.
image: build
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w -buildid=' -o $(IMAGES)/tools/rfcom ./cmd/rfcom
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w -buildid=' -o $(IMAGES)/tools/rf-agent ./cmd/rf-agent
	$(BIN)/rfimage -out $(IMAGES)

# The Debian system disk as well (rfimage --image debian: mmdebstrap, as
# root; a minute or two, seconds when up to date). SSH_KEY=FILE installs
# that public key for root.
SSH_KEY ?=
image-debian: image
	$(BIN)/rfimage -out $(IMAGES) -image debian $(if $(SSH_KEY),-ssh-key $(SSH_KEY))

# Set up, build, and boot the default subOS with its console on this terminal.
run: setup image
	./scripts/hugepages.sh 600
	$(BIN)/rfm run

vet:
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# All three tiers: unit, KVM (this host's /dev/kvm with the test guest) and
# end-to-end (real Debian subOSes, nested under QEMU where the host's KVM
# cannot run Linux natively).
test: setup image image-debian vet
	./scripts/hugepages.sh 600
	RF_REQUIRE_KVM=1 RF_IMAGES=$(CURDIR)/$(IMAGES) $(GO) test -race -count=1 -timeout 60m ./...
	$(MAKE) fuzz-smoke

unit:
	$(GO) test -race -count=1 ./...

e2e: setup image image-debian
	RF_IMAGES=$(CURDIR)/$(IMAGES) $(GO) test -count=1 -v -timeout 60m ./e2e/...

bench: setup image image-debian
	./scripts/setup.sh lxc iperf3 sockperf
	./scripts/hugepages.sh 600
	RF_IMAGES=$(CURDIR)/$(IMAGES) $(GO) run ./bench/boot
	RF_IMAGES=$(CURDIR)/$(IMAGES) $(GO) run ./bench/lifecycle
	$(GO) run ./bench/ficm
	RF_IMAGES=$(CURDIR)/$(IMAGES) $(GO) run ./bench/rfcom
	RF_IMAGES=$(CURDIR)/$(IMAGES) $(GO) run ./bench/hotplug
	RF_IMAGES=$(CURDIR)/$(IMAGES) $(GO) run ./bench/hardening
	RF_IMAGES=$(CURDIR)/$(IMAGES) $(GO) run ./bench/fs
	RF_IMAGES=$(CURDIR)/$(IMAGES) $(GO) run ./bench/net

# Every fuzz target in the repository, one after another, FUZZTIME each
# (scripts/fuzz.sh: summary table; non-zero exit on a crash, the crasher
# kept in the package's testdata/fuzz as a regression test).
FUZZTIME ?= 30s
fuzz:
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

# Each target briefly beyond its committed corpus (the last step of make
# test, so CI runs it).
fuzz-smoke:
	FUZZTIME=3s FUZZMINIMIZE=1s ./scripts/fuzz.sh

clean:
	rm -rf $(BIN) build
