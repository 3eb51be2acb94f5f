# The two commands of the README: `make run` and `make test`. Both set everything up first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: run test setup system-deps bench lint soak

run: setup
	$(VENV)/bin/sai

test: setup system-deps lint
	$(PY) -m pytest -q -p no:cacheprovider

setup: $(STAMP)

# torch first, pinned: the CPU build on machines without CUDA, the CUDA build on GPU servers.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

# System tools the tests drive for real: tmux (the console in a terminal), openssl (manifest checks).
system-deps:
	@command -v tmux >/dev/null && command -v openssl >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux openssl >/dev/null; \
	  else echo "install tmux and openssl (e.g. sudo apt-get install tmux openssl)"; exit 1; fi; }

lint: setup
	$(VENV)/bin/lint-imports

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# The crash suite's long run (200 jobs, 12 SIGKILLs; `make test` runs a short one). Prints its counts.
soak: setup
	SAI_SOAK=1 $(PY) -m pytest -q -s -p no:cacheprovider -m soak tests/reliability
