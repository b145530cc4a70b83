# virtdlm: make unit | plugin | check | test | bench | lint | clean
# Every target installs what it needs into .venv (Python) on first use.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PYTEST  := $(PY) -m pytest
CC      ?= cc
CFLAGS_DRIVER := -std=gnu11 -O2 -g -fPIC -shared -fvisibility=hidden \
                 -Wall -Wextra -Werror -Wformat=2 -Wshadow
DRIVER_SRC := $(wildcard plugin/driver/*.c) $(wildcard plugin/driver/*.h)

.PHONY: all deps unit plugin check test bench lint clean venv

all: plugin unit

# Debian packages (compiler, libdlm3, libvirt, QEMU); a no-op when present.
deps:
	scripts/install-deps

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

build/dlm.so: $(DRIVER_SRC)
	mkdir -p build
	$(CC) $(CFLAGS_DRIVER) -o $@ plugin/driver/dlm_driver.c -ldl

plugin: build/dlm.so

# Fast tests: no VMs, no root daemons; the backend contract suite runs on the model.
unit: venv plugin
	$(PYTEST) tests/unit -q

# Every tier that exists; exit code 5 (no tests collected) is a failure.
test: deps unit

bench: venv
	$(PY) bench/daemon_bench.py

lint: venv
	$(VENV)/bin/ruff check plugin tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
