# napari-foram: two commands get you going (see README.md).
#   make demo   set up everything on a fresh machine, then run the simulated-microscope demo
#   make test   set up what the tests need (test extras, Xvfb), then run the whole suite
#
# Both create .venv if it is missing and install torch first, on its own: with the range
# alone pip would resolve torch together with napari's tree and could pick a different
# build; installing it first lets a machine's local wheels (or a chosen CUDA build) win.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= 'torch>=2.2' 'torchvision>=0.17'
OUT    ?= demo-out
PYTEST_ARGS ?=
# The suite runs on this many pytest-xdist workers, a test file per worker at a time (a
# file's module fixtures are built once); 0 runs it in one process, as a bare `pytest`.
TEST_WORKERS ?= 2
# ImageNet VGG16 weights: a file named by NAPARI_FORAM_VGG16_WEIGHTS is used first. Where
# the project's shared folder holds the Keras weights (our machines and CI), point the
# variable at them, so the demo and the suite run the real ImageNet path; a value already
# in the environment wins. Elsewhere torch hub's cache (or a download) is used.
SHARED_VGG16 := $(wildcard $(CURDIR)/../shared/weights/vgg16_imagenet_features.safetensors)
ifneq ($(SHARED_VGG16),)
NAPARI_FORAM_VGG16_WEIGHTS ?= $(abspath $(SHARED_VGG16))
export NAPARI_FORAM_VGG16_WEIGHTS
endif
# Debian packages for napari under a virtual X server (Mesa and most xcb libraries are
# usually present already; these are the ones a bare image lacks).
APT_PACKAGES := xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0

.PHONY: demo test setup setup-test xvfb lint typecheck bench sample-data clean

# With a display the demo opens napari; without one it runs headless, after the xvfb
# target (its screenshot uses a private Xvfb). The choice is made by make itself, not by a
# recursive $(MAKE) in the recipe, so `make -n demo` only prints what it would run.
HAVE_DISPLAY := $(strip $(DISPLAY)$(WAYLAND_DISPLAY))

demo: $(VENV)/.setup-demo $(if $(HAVE_DISPLAY),,xvfb)
	$(BIN)/napari-foram demo $(if $(HAVE_DISPLAY),,--headless )--out $(OUT)

# Lint, types and the import layers first (seconds), then the suite; all must pass.
test: $(VENV)/.setup-test xvfb
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

setup: $(VENV)/.setup-demo
setup-test: $(VENV)/.setup-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install $(TORCH)
	@touch $@

$(VENV)/.setup-demo: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -e '.[pyqt6]'
	@touch $@

$(VENV)/.setup-test: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -e '.[pyqt6,dev]'
	@touch $@ $(VENV)/.setup-demo

# Xvfb gives napari an X server and OpenGL (Mesa) without a screen. Installed with apt
# when missing and we are root; otherwise we say what to install.
xvfb:
	@if ! command -v Xvfb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
		else \
			echo "Xvfb is missing: install it (Debian/Ubuntu: sudo apt-get install $(APT_PACKAGES))"; \
		fi; \
	fi

lint: $(VENV)/.setup-test
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

typecheck: $(VENV)/.setup-test
	$(BIN)/mypy

bench: $(VENV)/.setup-demo
	$(BIN)/napari-foram bench --json bench/latest.json

sample-data: $(VENV)/.setup-demo
	$(BIN)/python scripts/make_sample_data.py

clean:
	rm -rf $(OUT) build dist .pytest_cache .mypy_cache .ruff_cache
