# sciops.fleet — build, test and try the collection.
#
#   make test    everything CI runs: system tools, venv, unit, sanity, lint, integration, molecule, build
#   make help    the other targets

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
COLLECTIONS := $(CURDIR)/build/collections
SANITY_TREE := $(CURDIR)/build/sanity/ansible_collections/sciops/fleet
PYVER = $(shell $(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VERSION := $(shell sed -n 's/^version: *//p' galaxy.yml)

export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help test demo system-deps venv collection-link unit integration sanity lint molecule build install-check sweep clean

help:
	@echo "make demo          the main job on the embedded default (no registry server, no root)"
	@echo "make test          run everything CI runs (installs what it needs; root on Debian)"
	@echo "make system-deps   install the system tools (docker-registry, rpm, squashfs-tools, ...)"
	@echo "make venv          create $(VENV) with the pinned Python dependencies"
	@echo "make unit | integration | sanity | lint | molecule | build | install-check"
	@echo "make sweep         tear down test fleets and registries left by a killed run"

test: system-deps venv sweep unit sanity lint integration molecule install-check
	@echo "make test: all steps passed"

system-deps:
	bash tools/install-system-deps.sh

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# The checkout, importable and runnable as sciops.fleet (a symlink: edits are live).
collection-link: venv
	mkdir -p $(COLLECTIONS)/ansible_collections/sciops
	ln -sfn $(CURDIR) $(COLLECTIONS)/ansible_collections/sciops/fleet

# The main job on the embedded default: an OCI layout as registry, three local directories as nodes.
demo: collection-link
	$(BIN)/ansible-playbook -i inventories/demo playbooks/demo.yml -e demo_dir=$(CURDIR)/build/demo
	@echo "demo: version matrices in build/demo/status-after-upgrade.html and build/demo/status-after-rollback.html"

sweep: venv
	$(BIN)/python tests/testbed sweep

unit: collection-link
	$(BIN)/python -m pytest tests/unit

integration: collection-link
	$(BIN)/python -m pytest tests/integration --durations=30

# ansible-test needs a tree at ansible_collections/sciops/fleet with its own git index: a copy of the
# files git tracks (and new, unignored ones).
sanity: venv
	rm -rf $(SANITY_TREE)
	mkdir -p $(SANITY_TREE)
	git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C $(SANITY_TREE)
	cd $(SANITY_TREE) && git init -q && git add -A
	$(BIN)/python tools/ansible_test_get_pip.py
	cd $(SANITY_TREE) && $(BIN)/ansible-test sanity --requirements --python $(PYVER) --color no

# ansible-lint installs the collection under test into $HOME/.ansible/collections and would then lint
# against that copy on later runs; a fresh HOME of its own keeps it on the checkout as it is now.
lint: collection-link
	rm -rf build/lint-home
	mkdir -p build/lint-home
	HOME=$(CURDIR)/build/lint-home $(BIN)/ansible-lint --offline

molecule: collection-link
	$(BIN)/molecule test --all

build: venv
	mkdir -p build/dist
	$(BIN)/ansible-galaxy collection build --force --output-path build/dist .

# The built tarball installs into an empty collections path, carries its license text, and its modules
# document themselves.
install-check: build
	rm -rf build/install-check
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/install-check $(BIN)/ansible-galaxy collection install \
	  --offline --force -p build/install-check build/dist/sciops-fleet-$(VERSION).tar.gz
	test -f build/install-check/ansible_collections/sciops/fleet/MANIFEST.json
	test -f build/install-check/ansible_collections/sciops/fleet/LICENSES/GPL-3.0-or-later.txt
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/install-check $(BIN)/ansible-doc -t role sciops.fleet.node_base \
	  | grep -q node_base_state_root

clean: sweep
	rm -rf build .pytest_cache
