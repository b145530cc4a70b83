# virtdlm: make unit | plugin | check | test | bench | lint | clean
# Every target installs what it needs into .venv (Python) on first use.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PYTEST  := $(PY) -m pytest
CC      ?= cc
CFLAGS_DRIVER := -std=gnu11 -O2 -g -fPIC -shared -fvisibility=hidden \
                 -Wall -Wextra -Werror -Wformat=2 -Wshadow
DRIVER_C   := $(sort $(wildcard plugin/driver/*.c))
DRIVER_SRC := $(DRIVER_C) $(wildcard plugin/driver/*.h)

.PHONY: all deps unit plugin guest install-plugin check local-lab local-lab-stop lab lab-status lab-destroy lab-clean lab-test test bench lint clean venv replay record campaign bench-lab

all: plugin unit

# Debian packages (compiler, libdlm3, libvirt, QEMU); a no-op when present.
deps:
	scripts/install-deps

$(VENV)/.stamp: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

build/dlm.so: $(DRIVER_SRC)
	mkdir -p build
	$(CC) $(CFLAGS_DRIVER) -o $@ $(DRIVER_C) -ldl

plugin: build/dlm.so

# The writer guest (guest/writer): a boot-sector program, and the boot disk every writer
# domain shares (lab.guest.writer builds it, so its size is defined once).
build/writer.bin: guest/writer/writer.S
	mkdir -p build
	as --32 -o build/writer.o $<
	ld -m elf_i386 -Ttext 0x7c00 --oformat binary -e _start -o $@ build/writer.o

build/writer-boot.img: build/writer.bin lab/guest/writer.py
	PYTHONPATH=. $(PYTHON) -m lab.guest.writer boot-image $@

guest: build/writer-boot.img

# Install dlm.so into libvirt's lock-driver directory (asked of libvirt's pkg-config file,
# else found next to lockd.so) and the example config (never overwriting an existing one).
LOCK_DRIVER_DIR ?= $(shell d=$$(pkg-config --variable=libdir libvirt 2>/dev/null); \
	if [ -n "$$d" ]; then echo "$$d/libvirt/lock-driver"; else \
	dirname "$$(find /usr/lib /usr/lib64 -name lockd.so -path '*lock-driver*' 2>/dev/null | head -n1)"; fi)
install-plugin: build/dlm.so
	@test -d "$(LOCK_DRIVER_DIR)" || { echo "libvirt's lock-driver directory not found (set LOCK_DRIVER_DIR=...)"; exit 1; }
	install -m 0755 build/dlm.so "$(DESTDIR)$(LOCK_DRIVER_DIR)/dlm.so"
	test -e "$(DESTDIR)/etc/libvirt/qemu-dlm.conf" || install -D -m 0644 plugin/conf/qemu-dlm.conf "$(DESTDIR)/etc/libvirt/qemu-dlm.conf"
	@echo "installed $(LOCK_DRIVER_DIR)/dlm.so; set lock_manager = \"dlm\" in /etc/libvirt/qemu.conf"

# Fast tests: no VMs, no root daemons; the backend contract suite runs on the model.
unit: venv plugin
	$(PYTEST) tests/unit -q

# The single-host tier: a private libvirtd with dlm.so and real QEMU (TCG), model backend.
check: venv plugin guest
	$(PYTEST) tests/blackbox/local -q -rA

local-lab: venv plugin
	$(PY) -m lab.local start

local-lab-stop: venv
	$(PY) -m lab.local stop

# The two-node Vagrant lab (Corosync, DLM, NFS, libvirt + plugin). Safe to run twice.
lab: venv plugin
	$(PY) -m lab.cluster up

lab-status: venv
	$(PY) -m lab.cluster status

lab-destroy: venv
	$(PY) -m lab.cluster destroy

# lab-destroy, and also drop the cached box (the next make lab rebuilds it).
lab-clean: venv
	$(PY) -m lab.cluster clean
	rm -rf /var/lib/virtdlm/boxes

# The lab tier: the two-node lab is brought up first (a no-op when it is up and
# provisioned from this tree), so its progress shows; then the backend contract suite on
# the kernel DLM and the two-node black-box suite (tables 5-1/5-2, lifecycle, faults, the
# control run, node failure). Reports: .lab/reports/cluster.html, cluster.json, junit.xml.
REPORTS := .lab/reports
lab-test: venv plugin lab
	mkdir -p $(REPORTS)
	$(PYTEST) tests/lab tests/blackbox/cluster -v -rA \
		--junitxml=$(REPORTS)/junit.xml -o junit_family=xunit1

# Scenarios (docs/scenarios.md): replay a file on the lab, record what people do with virsh,
# run a seeded fault campaign that shrinks what it finds into scenarios/found/.
SCENARIO ?=
OUT ?=
SEED ?= 1
STEPS ?= 40
LOCK_MANAGER ?= dlm
CAMPAIGN_FLAGS ?=
WAITS ?= 0
replay: venv plugin lab
	@test -n "$(SCENARIO)" || { echo "usage: make replay SCENARIO=FILE"; exit 2; }
	$(PY) -m lab.scenario replay $(SCENARIO)

record: venv
	@test -n "$(OUT)" || { echo "usage: make record OUT=FILE"; exit 2; }
	$(PY) -m lab.scenario record --out $(OUT) --waits $(WAITS)

campaign: venv plugin lab
	$(PY) -m lab.scenario campaign --seed $(SEED) --steps $(STEPS) \
		--lock-manager $(LOCK_MANAGER) $(CAMPAIGN_FLAGS)

# Every tier; exit code 5 (no tests collected) is a failure.
test: deps unit check lab-test

bench: venv plugin
	$(PY) bench/daemon_bench.py
	$(PY) bench/start_overhead.py

# The cost of a node: make lab, the every-node cases and memory per node, for 2 and 3 nodes
# side by side (destroys and rebuilds the lab twice; the three-node lab is left up).
bench-lab: venv plugin
	$(PY) bench/lab_cost.py

lint: venv
	$(VENV)/bin/ruff check plugin lab tests bench
	$(VENV)/bin/ruff format --check plugin lab tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
