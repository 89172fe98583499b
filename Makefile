# Set-up and everyday commands. `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build from the local disk; on a CUDA machine: make install TORCH_SPEC="torch"
TORCH_SPEC ?= torch==2.13.0
# what `make install` / `make serve` install: the server and every extra the docs' examples use (index
# build/search, Parquet, int8, export to Qdrant/Milvus, Ray, PEFT adapters, LangChain/LlamaIndex, shell
# completion). A leaner server: make serve EXTRAS=server,index. GPU extras (gpu, flash, index-gpu) are opt-in.
EXTRAS ?= server,index,pipeline,int8,qdrant,milvus,ray,peft,langchain,llama-index,completion
HOST ?= 127.0.0.1
PORT ?= 50051
HTTP_PORT ?= 8080
SERVE_ARGS ?=
# Infinity, the peer scripts/bench.py compares against, in its own environment: it pins numpy<2
INFINITY_VENV ?= .venv-infinity
INFINITY_SPEC ?= infinity-emb[server,torch]==0.0.78
# sentence-transformers' ONNX / ONNX-int8 paths, the peer of quantize=int8: optimum pins an older transformers
ST_ONNX_VENV ?= .venv-st-onnx
ST_ONNX_SPEC ?= sentence-transformers[onnx]

.PHONY: install install-dev serve test lint typecheck protos bench dist infinity-venv st-onnx-venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# runtime: the server and the extras above (torch pinned first, so pip does not pull a CUDA build)
$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

# development: the server extra and everything the tests need (test, lint and type-check tools, build and
# twine for tests/test_packaging.py, triton: kernels run in its interpreter, ray, the stores' clients)
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# gRPC on $(HOST):$(PORT) and OpenAI/TEI-compatible HTTP on $(HOST):8080 (SERVE_ARGS="--no-http": gRPC only)
serve: install
	$(BIN)/embedsvc serve --host $(HOST) --port $(PORT) --http-port $(HTTP_PORT) $(SERVE_ARGS)

lint: install-dev
	$(BIN)/ruff check embedsvc kernels tests scripts setup.py
	$(BIN)/ruff format --check embedsvc kernels tests scripts setup.py

typecheck: install-dev
	$(BIN)/mypy

# two workers, a test file each at a time (module fixtures such as one server per file stay on one worker):
# the suite waits on servers and subprocesses as much as it computes
test: install-dev lint typecheck
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/pytest -q -n 2 --dist loadfile --durations=30

protos: install-dev
	$(BIN)/python scripts/gen_protos.py

bench: install-dev
	$(BIN)/python scripts/bench.py

# the wheel and sdist users install (dist/), checked by twine; tests/test_packaging.py installs and runs them
dist: install-dev
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

$(INFINITY_VENV)/.installed:
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(INFINITY_VENV)/bin/pip install -q "$(INFINITY_SPEC)" "$(TORCH_SPEC)"
	touch $@

# then `make bench` includes Infinity under the same load
infinity-venv: $(INFINITY_VENV)/.installed

$(ST_ONNX_VENV)/.installed:
	$(PYTHON) -m venv $(ST_ONNX_VENV)
	$(ST_ONNX_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(ST_ONNX_VENV)/bin/pip install -q "$(ST_ONNX_SPEC)" "$(TORCH_SPEC)"
	touch $@

# then `make bench` compares quantize=int8 with sentence-transformers' ONNX-int8 export
st-onnx-venv: $(ST_ONNX_VENV)/.installed

clean:
	rm -rf $(VENV) $(INFINITY_VENV) $(ST_ONNX_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
