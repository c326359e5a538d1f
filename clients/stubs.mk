# Polyglot client stubs and example clients (see clients/README.md).
# Included from the main Makefile: `include clients/stubs.mk`.
#
#   make stubs           stubs + example client for every language whose toolchain is present
#   make stubs-<lang>    one language: python node go cpp java ruby
#   make clients-deps    install the toolchains (Debian apt + npm; for CI; idempotent)
#   make clients-test    start a real server, run every built example client against it
#   make buf-lint        buf lint of protos/ (config: buf.yaml)
#   make buf-breaking    protos/ against the 0.1.0 release image (BUF_AGAINST=... to change)
#   make buf-baseline    rewrite the release image (only when cutting a release)
#   make clean-stubs     remove everything the targets above generated
#
# Generated code lives in clients/<lang>/gen/ (git-ignored, never edited).
# Nothing here reaches the network except clients-deps (apt, npm registry).

PY ?= .venv/bin/python
RECGEN ?= .venv/bin/recgen
MODELS ?= models

CLIENTS_PROTO_DIR := protos
CLIENTS_PROTO := protos/recgen/v1/recommender.proto
CLIENTS_LANGS := python node go cpp java ruby

# --- toolchain detection ------------------------------------------------------
# $(call clients_missing,cmd ...): the commands of the list that are not on PATH.
clients_missing = $(strip $(foreach c,$(1),$(if $(shell command -v $(c) 2>/dev/null),,$(c))))
CLIENTS_GOCODE := /usr/share/gocode
CLIENTS_NODE := clients/node
CLIENTS_NODE_BIN := $(CLIENTS_NODE)/node_modules/.bin
CLIENTS_JAVA_DIR := /usr/share/java

CLIENTS_MISSING_python := $(if $(wildcard $(PY)),,$(PY))
CLIENTS_MISSING_node := $(call clients_missing,node npm)
CLIENTS_MISSING_go := $(call clients_missing,go protoc protoc-gen-go protoc-gen-go-grpc) \
	$(if $(wildcard $(CLIENTS_GOCODE)/src/google.golang.org/grpc/clientconn.go),,golang-google-grpc-dev) \
	$(if $(wildcard $(CLIENTS_GOCODE)/src/github.com/golang/protobuf/ptypes/any.go),,golang-github-golang-protobuf-1-5-dev)
CLIENTS_MISSING_cpp := $(call clients_missing,protoc grpc_cpp_plugin g++ pkg-config) \
	$(if $(shell pkg-config --exists grpc++ protobuf 2>/dev/null && echo y),,libgrpc++-dev)
CLIENTS_MISSING_java := $(call clients_missing,protoc grpc_java_plugin javac java) \
	$(if $(wildcard $(CLIENTS_JAVA_DIR)/grpc-stub.jar),,libgrpc-java)
CLIENTS_MISSING_ruby := $(call clients_missing,protoc grpc_ruby_plugin ruby) \
	$(if $(wildcard /usr/lib/*/rubygems-integration/*/gems/grpc-*/src/ruby/lib/grpc.rb /var/lib/gems/*/gems/grpc-*/src/ruby/lib/grpc.rb),,ruby-grpc)
CLIENTS_PRESENT := $(foreach l,$(CLIENTS_LANGS),$(if $(strip $(CLIENTS_MISSING_$(l))),,$(l)))

.PHONY: stubs clients-deps clients-test clients-status buf-lint buf-breaking buf-baseline clean-stubs \
	$(addprefix stubs-,$(CLIENTS_LANGS))

stubs: $(addprefix stubs-,$(CLIENTS_PRESENT))
	@$(foreach l,$(filter-out $(CLIENTS_PRESENT),$(CLIENTS_LANGS)),echo "stubs: skipped $(l) (missing: $(strip $(CLIENTS_MISSING_$(l)))); run 'make clients-deps'";)

clients-status:
	@$(foreach l,$(CLIENTS_LANGS),printf '%-7s %s\n' $(l) "$(if $(strip $(CLIENTS_MISSING_$(l))),missing: $(strip $(CLIENTS_MISSING_$(l))),ok)";)

# --- toolchains (CI) ----------------------------------------------------------
# Debian 12 packages only; Go in GOPATH mode from Debian's gocode tree (never
# the module proxy). golang-github-golang-protobuf-1-5-dev must be named, or apt
# picks 1.3 and the Go client panics on the oneof. Node.js is taken from the
# system when present (apt's `npm` would conflict with a NodeSource node).
CLIENTS_SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
CLIENTS_APT := protobuf-compiler pkg-config \
	golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev \
	golang-github-golang-protobuf-1-5-dev \
	g++ protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev \
	libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java libnetty-java libperfmark-java \
	libgeronimo-annotation-1.3-spec-java \
	ruby ruby-grpc ruby-google-protobuf \
	$(if $(shell command -v javac 2>/dev/null),,default-jdk-headless) \
	$(if $(shell command -v node 2>/dev/null),,nodejs npm)
CLIENTS_NPM_FLAGS := --no-audit --no-fund --loglevel=error

clients-deps:
	@missing=; for p in $(CLIENTS_APT); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "clients-deps: apt packages already installed"; else \
		echo "clients-deps: installing$$missing"; \
		$(CLIENTS_SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(CLIENTS_SUDO) apt-get install -y -qq --no-install-recommends \
			$$missing >/dev/null; \
	fi
	@cd $(CLIENTS_NODE) && if [ node_modules/.installed -nt package-lock.json ] && [ node_modules/.installed -nt package.json ]; then \
		echo "clients-deps: clients/node/node_modules up to date"; else \
		echo "clients-deps: npm ci (clients/node)"; npm ci $(CLIENTS_NPM_FLAGS) >/dev/null && touch node_modules/.installed; fi

# --- Python: the main Makefile's `proto` target writes recgen/v1 -------------
stubs-python: proto

# --- TypeScript / Node.js: static stubs (protoc-gen-es) + connect-node ---------
# buf compiles the protos itself, so Node needs neither protoc nor grpc-tools.

$(CLIENTS_NODE)/node_modules/.installed: $(CLIENTS_NODE)/package.json $(CLIENTS_NODE)/package-lock.json
	cd $(CLIENTS_NODE) && npm ci $(CLIENTS_NPM_FLAGS)
	touch $@

$(CLIENTS_NODE)/gen/src/recgen/v1/recommender_pb.ts: $(CLIENTS_PROTO) $(CLIENTS_NODE)/buf.gen.yaml buf.yaml \
		$(CLIENTS_NODE)/node_modules/.installed
	rm -rf $(CLIENTS_NODE)/gen/src
	$(CLIENTS_NODE_BIN)/buf generate --template $(CLIENTS_NODE)/buf.gen.yaml

$(CLIENTS_NODE)/gen/dist/example.js: $(CLIENTS_NODE)/example.ts $(CLIENTS_NODE)/tsconfig.json \
		$(CLIENTS_NODE)/gen/src/recgen/v1/recommender_pb.ts
	$(CLIENTS_NODE_BIN)/tsc -p $(CLIENTS_NODE)/tsconfig.json

stubs-node: $(CLIENTS_NODE)/gen/dist/example.js

# --- Go: protoc-gen-go + protoc-gen-go-grpc, GOPATH mode ------------------------
# go_package is github.com/recgen/recgen/clients/go/recgenv1, so the stubs land
# in the GOPATH clients/go/gen (first) and Debian's gocode tree supplies grpc.
CLIENTS_GO := clients/go
CLIENTS_GO_ENV := GO111MODULE=off GOPROXY=off GOFLAGS= GOTOOLCHAIN=local \
	GOPATH=$(abspath $(CLIENTS_GO)/gen):$(CLIENTS_GOCODE)
CLIENTS_GO_PKG := $(CLIENTS_GO)/gen/src/github.com/recgen/recgen/clients/go/recgenv1

$(CLIENTS_GO_PKG)/recommender.pb.go: $(CLIENTS_PROTO)
	rm -rf $(CLIENTS_GO)/gen/src && mkdir -p $(CLIENTS_GO)/gen/src
	protoc -I $(CLIENTS_PROTO_DIR) --go_out=$(CLIENTS_GO)/gen/src --go-grpc_out=$(CLIENTS_GO)/gen/src $(CLIENTS_PROTO)

$(CLIENTS_GO)/gen/bin/example: $(CLIENTS_GO)/example.go $(CLIENTS_GO_PKG)/recommender.pb.go
	mkdir -p $(@D)
	cd $(CLIENTS_GO) && $(CLIENTS_GO_ENV) go build -o gen/bin/example example.go

stubs-go: $(CLIENTS_GO)/gen/bin/example

# --- C++: protoc + grpc_cpp_plugin, g++ with pkg-config -------------------------
CLIENTS_CPP := clients/cpp
CLIENTS_CPP_GEN := $(CLIENTS_CPP)/gen/recgen/v1/recommender.pb.cc $(CLIENTS_CPP)/gen/recgen/v1/recommender.grpc.pb.cc
CXXFLAGS_CLIENTS ?= -std=c++17 -O1

$(CLIENTS_CPP_GEN) &: $(CLIENTS_PROTO)
	mkdir -p $(CLIENTS_CPP)/gen
	protoc -I $(CLIENTS_PROTO_DIR) --cpp_out=$(CLIENTS_CPP)/gen --grpc_out=$(CLIENTS_CPP)/gen \
		--plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin) $(CLIENTS_PROTO)

$(CLIENTS_CPP)/gen/bin/example: $(CLIENTS_CPP)/example.cc $(CLIENTS_CPP_GEN)
	mkdir -p $(@D)
	g++ $(CXXFLAGS_CLIENTS) -I $(CLIENTS_CPP)/gen -o $@ $(CLIENTS_CPP)/example.cc $(CLIENTS_CPP_GEN) \
		$$(pkg-config --cflags --libs grpc++ protobuf)

stubs-cpp: $(CLIENTS_CPP)/gen/bin/example

# --- Java (no Maven): protoc + grpc_java_plugin, javac with Debian's jars -------
# netty-all.jar is empty in Debian: the individual netty-* jars are listed.
# The geronimo jar supplies javax.annotation.Generated.
CLIENTS_JAVA := clients/java
CLIENTS_JAVA_JARS := grpc-api grpc-core grpc-context grpc-stub grpc-protobuf grpc-protobuf-lite grpc-netty \
	protobuf guava perfmark-api error-prone-annotations geronimo-annotation-1.3-spec \
	netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks netty-common \
	netty-handler netty-handler-proxy netty-resolver netty-transport netty-transport-native-unix-common
CLIENTS_JAVA_CP := $(subst $(eval) ,:,$(strip $(foreach j,$(CLIENTS_JAVA_JARS),$(wildcard $(CLIENTS_JAVA_DIR)/$(j).jar))))

$(CLIENTS_JAVA)/gen/src/.generated: $(CLIENTS_PROTO)
	rm -rf $(CLIENTS_JAVA)/gen/src && mkdir -p $(CLIENTS_JAVA)/gen/src
	protoc -I $(CLIENTS_PROTO_DIR) --java_out=$(CLIENTS_JAVA)/gen/src --grpc-java_out=$(CLIENTS_JAVA)/gen/src \
		--plugin=protoc-gen-grpc-java=$$(command -v grpc_java_plugin) $(CLIENTS_PROTO)
	touch $@

$(CLIENTS_JAVA)/gen/classes/Example.class: $(CLIENTS_JAVA)/Example.java $(CLIENTS_JAVA)/gen/src/.generated
	rm -rf $(CLIENTS_JAVA)/gen/classes && mkdir -p $(CLIENTS_JAVA)/gen/classes
	javac -nowarn -encoding UTF-8 -cp "$(CLIENTS_JAVA_CP)" -d $(CLIENTS_JAVA)/gen/classes \
		$(CLIENTS_JAVA)/Example.java $$(find $(CLIENTS_JAVA)/gen/src -name '*.java')
	@printf '%s\n' '#!/bin/sh' 'exec java -cp "$$(dirname "$$0")/classes:$(CLIENTS_JAVA_CP)" Example "$$@"' \
		> $(CLIENTS_JAVA)/gen/example && chmod +x $(CLIENTS_JAVA)/gen/example

stubs-java: $(CLIENTS_JAVA)/gen/classes/Example.class

# --- Ruby: protoc + grpc_ruby_plugin ---------------------------------------------
CLIENTS_RUBY := clients/ruby

$(CLIENTS_RUBY)/gen/recgen/v1/recommender_services_pb.rb: $(CLIENTS_PROTO)
	rm -rf $(CLIENTS_RUBY)/gen && mkdir -p $(CLIENTS_RUBY)/gen
	protoc -I $(CLIENTS_PROTO_DIR) --ruby_out=$(CLIENTS_RUBY)/gen --grpc_out=$(CLIENTS_RUBY)/gen \
		--plugin=protoc-gen-grpc=$$(command -v grpc_ruby_plugin) $(CLIENTS_PROTO)

stubs-ruby: $(CLIENTS_RUBY)/gen/recgen/v1/recommender_services_pb.rb

# --- end to end ----------------------------------------------------------------
# One real server (port 0, temporary state, one worker), every built example
# against it; a table language -> PASS / FAIL / SKIPPED; non-zero if any FAIL.
# CLIENTS_REQUIRE (CI): languages that must not be skipped, e.g. "python node go cpp java ruby".
CLIENTS_REQUIRE ?=
CLIENTS_TEST_ARGS ?=

clients-test: stubs $(MODELS)/.exported
	$(PY) clients/run_clients_test.py --recgen $(RECGEN) --models $(MODELS) --python $(PY) \
		$(foreach l,$(filter-out $(CLIENTS_PRESENT),$(CLIENTS_LANGS)),--skip '$(l):toolchain missing: $(strip $(CLIENTS_MISSING_$(l)))') \
		$(if $(strip $(CLIENTS_REQUIRE)),--require '$(strip $(CLIENTS_REQUIRE))') $(CLIENTS_TEST_ARGS)

# --- buf ----------------------------------------------------------------------------
# buf comes from npm (clients/node devDependencies) and runs offline.
# buf-breaking compares the working protos with the image of release 0.1.0,
# committed as protos/recgen.v1.binpb (public API only: the worker API is
# internal and ships with the gateway). Against git instead, e.g.:
#   make buf-breaking BUF_AGAINST='.git#branch=main,subdir=protos'
CLIENTS_BUF := $(CLIENTS_NODE_BIN)/buf
BUF_AGAINST ?= protos/recgen.v1.binpb

buf-lint: $(CLIENTS_NODE)/node_modules/.installed
	$(CLIENTS_BUF) lint

buf-breaking: $(CLIENTS_NODE)/node_modules/.installed
	$(CLIENTS_BUF) breaking $(CLIENTS_PROTO_DIR) --against '$(BUF_AGAINST)'

buf-baseline: $(CLIENTS_NODE)/node_modules/.installed
	$(CLIENTS_BUF) build $(CLIENTS_PROTO_DIR) --path protos/recgen/v1 -o protos/recgen.v1.binpb

clean-stubs:
	rm -rf $(foreach l,$(CLIENTS_LANGS),clients/$(l)/gen) $(CLIENTS_NODE)/node_modules
