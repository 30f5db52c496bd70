# gym-backup: every command a developer or CI needs. `make` alone lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp
# The committed render comes from .env.example alone, never from this shell's environment.
CLEAN_ENV := env -i PATH="$$PATH" HOME="$$HOME" LANG=C.UTF-8

# command:Debian package, for what the scripts run on this host (RUN_TOOLS: all `make run`
# needs) and what only the tests add (TEST_TOOLS: rclone for the off-site copies, sshd serving the
# tests' SFTP targets, promtool and node_exporter checking the metrics). Looked up with the sbin
# folders on PATH, as a user's PATH may lack them (sshd is /usr/sbin/sshd).
RUN_TOOLS := pg_dump:postgresql-client psql:postgresql-client pg_ctlcluster:postgresql \
	redis-server:redis-server redis-cli:redis-tools redis-check-rdb:redis-tools \
	gpg:gnupg gpgconf:gnupg pigz:pigz zstd:zstd flock:util-linux tar:tar gzip:gzip \
	sha256sum:coreutils runuser:util-linux timeout:coreutils
TEST_TOOLS := strace:strace git:git promtool:prometheus \
	prometheus-node-exporter:prometheus-node-exporter apprise:apprise curl:curl \
	rclone:rclone sshd:openssh-server
# package:service of the test tools that start a system service when installed: the tests run
# their own, so a service this install added is stopped and disabled again (one that was there
# before is left alone).
TEST_SERVICES := prometheus:prometheus prometheus-node-exporter:prometheus-node-exporter \
	openssh-server:ssh
# The locale the tests run the scripts (and a PostgreSQL server) in, to prove nothing depends on
# the language: generated from the locales package's data.
TEST_LOCALE := de_DE.UTF-8
TEST_LOCALE_SOURCE := de_DE
# The Python code ruff and mypy check: the product, the development tools, the tests, the benches.
PY_DIRS := generator devtools tests bench

.PHONY: help
help: ## Show the targets
	@if [ -t 1 ]; then bold=$$'\033[1m' plain=$$'\033[0m'; else bold='' plain=''; fi; \
	awk -v bold="$$bold" -v plain="$$plain" 'BEGIN {FS = ":.*## "} \
	  /^[a-zA-Z_-]+:.*## / {printf "  %s%-16s%s %s\n", bold, $$1, plain, $$2}' $(MAKEFILE_LIST)

# apt_install TOOLS [locale]: install the packages of the missing TOOLS (command:package), and
# with "locale" the tests' locale too.
define apt_install
	@missing=(); \
	PATH="$$PATH:/usr/local/sbin:/usr/sbin:/sbin"; \
	for pair in $(1); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing+=("$${pair##*:}"); \
	done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv); \
	[ -e /usr/share/zoneinfo/America/Argentina/Buenos_Aires ] || missing+=(tzdata); \
	if [ "$(2)" = locale ]; then \
	  [ -e /usr/share/i18n/locales/$(TEST_LOCALE_SOURCE) ] || missing+=(locales); \
	fi; \
	if [ $${#missing[@]} -gt 0 ]; then \
	  pkgs=$$(printf '%s\n' "$${missing[@]}" | sort -u | tr '\n' ' '); \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "missing system packages: $$pkgs; install them with: sudo apt-get install $$pkgs" >&2; exit 1; \
	  fi; \
	  echo "==> apt-get install $$pkgs"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null; \
	  for pair in $(TEST_SERVICES); do \
	    case " $$pkgs " in *" $${pair%%:*} "*) ;; *) continue ;; esac; \
	    [ -d /run/systemd/system ] || continue; \
	    echo "==> systemctl disable --now $${pair##*:} (installed for the tests, which start their own)"; \
	    systemctl disable --now "$${pair##*:}" >/dev/null 2>&1 || true; \
	  done; \
	fi; \
	if [ "$(2)" = locale ] && ! locale -a 2>/dev/null | grep -qix '$(subst .UTF-8,.utf-\?8,$(TEST_LOCALE))'; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "note: the locale tests need $(TEST_LOCALE); as root run: localedef -i $(TEST_LOCALE_SOURCE) -f UTF-8 $(TEST_LOCALE)" >&2; \
	  else \
	    echo "==> localedef $(TEST_LOCALE)"; \
	    localedef -i $(TEST_LOCALE_SOURCE) -f UTF-8 $(TEST_LOCALE); \
	  fi; \
	fi
endef

.PHONY: system-deps
system-deps: ## Install the missing system packages of the scripts and the tests (apt, as root)
	$(call apt_install,$(RUN_TOOLS) $(TEST_TOOLS),locale)

.PHONY: run-deps
run-deps: ## Install the missing system packages `make run` needs (apt, as root)
	$(call apt_install,$(RUN_TOOLS),)

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing gym-backup with its dev tools"
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

.PHONY: install
install: system-deps $(STAMP) ## Set up everything: system packages and the venv

.PHONY: run
run: run-deps $(STAMP) ## The main job: real servers, sample gym data, a full encrypted backup, list
	$(BIN)/python -m devtools.demo

.PHONY: test
# The tests run on every core (pytest-xdist, -n auto): each worker starts its own throwaway servers.
test: install lint check-generated ## Lint, check the committed render, unit and integration tests
	$(BIN)/pytest -q -m "not container" -n auto

.PHONY: test-container
test-container: install ## The container tests (Debian flavour); starts a Docker engine as root
	tests/container/with-docker.sh $(BIN)/pytest -q -m container tests/container

.PHONY: lint
lint: install ## ruff and mypy --strict; shellcheck, shfmt and hadolint on the scripts and Dockerfile
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy --strict
	$(BIN)/shellcheck -s bash docker/backup/*.sh tests/container/*.sh tests/container/standins/*/*.sh
	$(BIN)/shfmt -i 2 -ci -d docker/backup/*.sh
	$(BIN)/hadolint docker/backup/Dockerfile

.PHONY: fmt
fmt: install ## Format the Python code and fix what ruff can
	$(BIN)/ruff format $(PY_DIRS)
	$(BIN)/ruff check --fix $(PY_DIRS)

.PHONY: generate
generate: install ## Render docker/backup/ from .env.example
	$(CLEAN_ENV) $(BIN)/gym-backup generate --env .env.example --out docker/backup

.PHONY: docs
docs: install ## Write the README's settings table and .env.example from generator/config.py
	$(BIN)/python -m devtools.settings_docs

.PHONY: check-generated
check-generated: generate ## Fail if docker/backup/ differs from a fresh render
	git diff --exit-code -- docker/backup
	@untracked=$$(git ls-files --others --exclude-standard -- docker/backup); \
	if [ -n "$$untracked" ]; then echo "not committed: $$untracked" >&2; exit 1; fi

# make bench BENCH_SCALE=large: about 1 GB of dump, 1 M Redis keys and 500 MB of files (small is a
# tenth of it; a number is a fraction of large). BENCH_RUNS: runs per case (the median counts).
BENCH_SCALE ?= small
BENCH_RUNS ?= 3
.PHONY: bench
bench: install ## Time the CLI's start; backups and restores beside the limit and the usual pipeline
	$(BIN)/python bench/cli_startup.py
	BENCH_SCALE='$(BENCH_SCALE)' BENCH_RUNS='$(BENCH_RUNS)' $(BIN)/python -m bench.main

.PHONY: clean
clean: ## Remove the venv, caches and the demo's output
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache dist build
