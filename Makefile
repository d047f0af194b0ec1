# The two commands the README starts with. Each sets up what it needs in .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU-only PyTorch: the tests compare GPT-2 against transformers' PyTorch model. A plain `pip install torch`
# would pull several GB of CUDA wheels, so torch is pinned to the CPU build that this machine kind provides.
TORCH ?= torch==2.13.0

.PHONY: demo test lint setup test-fast test-device board-up board-down test-board clean

$(BIN)/liteship: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[convert,device,dev]"
	touch $@

setup: $(BIN)/liteship

## make demo: build a classifier, GPT-2 and BiT here, convert each in every mode, run and bench them on this host
demo: setup
	$(BIN)/liteship demo --workdir liteship-demo

## make test: lint, the whole suite (slow tests included), then the runtime tests again with no TensorFlow installed
test: setup
	$(MAKE) lint
	$(BIN)/python -m pytest -q
	$(MAKE) test-device

## make lint: ruff (pyflakes and import order, configured in pyproject.toml) over the whole repository
lint: setup
	$(BIN)/ruff check .

## make test-fast: skip the slow tests
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

## make test-device: the runtime tests in a device-like venv (base install only: numpy + LiteRT, no TensorFlow),
## on bundles converted beforehand with the full install. Also on tflite-runtime 2.14 when it can be installed.
test-device: setup
	bash .ci/device-like-tests

## make board-up: an emulated aarch64 board (Debian 12 arm64 under qemu-user) with its own sshd on loopback; root.
## Then: `. /var/tmp/liteship-board/env` and `liteship bench BUNDLE --device ssh:board`. The first run builds and
## caches the rootfs (minutes); later ones unpack the cache. `make board-down` ends it.
## ARCH=armhf: a 32-bit armv7l board instead (Debian 12 armhf, tflite-runtime 2.14), in /var/tmp/liteship-board-armhf.
BOARD_ARCH ?= $(or $(ARCH),arm64)
board-up:
	bash .ci/board-up $(BOARD_ARCH)

board-down:
	bash .ci/board-down $(BOARD_ARCH)

## make test-board: the runtime tests inside that board on its backends, then `pytest -m device` against it
test-board: setup
	bash .ci/board-tests $(BOARD_ARCH)

clean:
	rm -rf $(VENV) .venv-device .venv-tflite-runtime liteship-demo
