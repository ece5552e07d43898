# Set-up and everyday commands. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, so that nothing else pulls a torch of its own choosing. With an NVIDIA
# driver: pip's default torch, a CUDA build. Without: 2.13.0, which resolves to a small
# CPU build on machines that keep one in their local wheel store.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)

.PHONY: demo test check-install bench clean

$(VENV)/installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/installed
	$(BIN)/gpufocus demo gpufocus-demo

test: $(VENV)/installed
	$(BIN)/python -m pytest -q

# The package on its own: the wheel with its runtime dependencies only (no extras) in a
# clean venv, as a user's `pip install .` gets it; then the command must start and fuse.
CHECK := build/check-install
check-install:
	rm -rf $(CHECK) && mkdir -p $(CHECK)
	$(PYTHON) -m venv $(CHECK)/venv
	$(CHECK)/venv/bin/pip install --quiet "$(TORCH)"
	$(CHECK)/venv/bin/pip install --quiet .
	$(CHECK)/venv/bin/pip check
	cd $(CHECK) && venv/bin/gpufocus --help >/dev/null && venv/bin/gpufocus --version
	cd $(CHECK) && venv/bin/gpufocus synth stack --frames 3 --size 96x64 && venv/bin/gpufocus fuse stack -o fused.png
	test -s $(CHECK)/fused.png

bench: $(VENV)/installed
	mkdir -p bench/out
	$(BIN)/gpufocus bench --markdown bench/out/bench.md --json bench/out/bench.json --chart bench/out/bench.png
	$(BIN)/python bench/bench_fusion.py e2e

clean:
	rm -rf $(VENV) gpufocus-demo bench/out *.egg-info
