# GPU serving and the GPU check (docs/gpu.md; included by the Makefile).
#
# serve-gpu: `recgen serve --device cuda` from its own environment, .venv-gpu, built from
# requirements-gpu.txt: onnxruntime-gpu IN PLACE OF onnxruntime (both provide the `onnxruntime`
# module: never side by side), then recgen itself with --no-deps. The CPU default (.venv, `make
# serve`) is untouched. The model repository is exported with the CPU environment as usual.
#
# gpu-check: every GPU figure of issue #19 in one run (tools/gpu_check; JSON under var/gpu-check).
# Without a GPU it is the CPU rehearsal: the CUDA arms say why they are skipped and the rest runs.
# GPU_CHECK_ARGS=--quick: batches 1 and 8, 8 new tokens (~3-6 min on 2 busy cores).
# gpu-wheels: the wheels the GPU machine lacks, downloaded here (network) and split into parts
# of at most 60 MiB in call folders with a sha256 manifest (.cache/gpu-wheels/carry/call-NN).
# gpu-check-base: the small MF-only model version the check's load test adds its LLM to.
# gpu-device-rehearsal: every device call of docs/gpu.md run here against a fake stash folder.
.PHONY: serve-gpu gpu-check gpu-wheels gpu-check-base gpu-device-rehearsal

VENV_GPU := .venv-gpu
PY_GPU := $(VENV_GPU)/bin/python
GPU_BASE := .cache/gpu-check/base
GPU_CHECK_ARGS ?=
GPU_CHECK_OUT ?= var/gpu-check

$(VENV_GPU)/.installed: requirements-gpu.txt pyproject.toml
	test -d $(VENV_GPU) || $(PYTHON) -m venv $(VENV_GPU)
	$(PY_GPU) -m pip install -q --upgrade pip
	$(PY_GPU) -m pip install -q -r requirements-gpu.txt grpcio-tools==1.85.1
	$(PY_GPU) -m pip install -q --no-deps -e .
	@if $(PY_GPU) -m pip show -q onnxruntime 2>/dev/null; then \
		echo "$(VENV_GPU) has the CPU onnxruntime beside onnxruntime-gpu: remove $(VENV_GPU) and retry"; exit 1; fi
	$(PY_GPU) -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()"
	touch $@

# The stubs come from the GPU environment's own grpcio-tools when the CPU one never made them.
serve-gpu: $(VENV_GPU)/.installed $(MODELS)/.exported
	test -f recgen/v1/recommender_pb2.py || $(PY_GPU) -m grpc_tools.protoc -I protos --python_out=. \
		--pyi_out=. --grpc_python_out=. $(PROTOS)
	LD_LIBRARY_PATH="$$($(PY_GPU) -m tools.gpu_check.cuda_env)" \
		$(VENV_GPU)/bin/recgen serve --models $(MODELS) --port $(PORT) --workers $(WORKERS) --device cuda

$(GPU_BASE)/.done: | install data
	rm -rf $(GPU_BASE)
	$(RECGEN) export --models $(GPU_BASE) --wheels $(WHEELS) --no-llm --no-encoder --no-context \
		--factors 16 --iterations 4 --reg 0.1 --alpha 2.0 --quiet
	touch $@

gpu-check-base: $(GPU_BASE)/.done

gpu-check: install $(GPU_BASE)/.done
	$(PY) -m tools.gpu_check --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

gpu-wheels: install
	$(PY) -m tools.gpu_check.wheels download --req requirements-gpu.txt --dest .cache/gpu-wheels/whl
	$(PY) -m tools.gpu_check.wheels split --src .cache/gpu-wheels/whl --carry .cache/gpu-wheels/carry
	$(PY) -m tools.gpu_check.wheels plan --carry .cache/gpu-wheels/carry

GPU_REHEARSAL_STASH ?= /tmp/recgen-gpu-rehearsal
gpu-device-rehearsal: install $(GPU_BASE)/.done
	rm -rf $(GPU_REHEARSAL_STASH)
	@test -d .cache/gpu-wheels/carry || { echo "run make gpu-wheels first"; exit 1; }
	for d in .cache/gpu-wheels/carry/call-*; do \
		GPU_STASH=$(GPU_REHEARSAL_STASH) GPU_REHEARSAL=1 PYTHON=$(PY) bash tools/gpu_check/device.sh $${d##*call-} || exit 1; \
	done
