# The two commands of the README: `make run` and `make test`. Both set everything up first,
# installing exactly what the lock file pins (with hashes): what CI tested is what runs.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
PYTHON ?= python3

# The lock for this machine: the CUDA build of torch where an NVIDIA driver answers, else the CPU build.
LOCK ?= $(if $(shell nvidia-smi -L 2>/dev/null),requirements-cuda.lock,requirements.lock)
# Where `make lock` finds the CPU build of torch (the registry only has the CUDA build).
TORCH_CPU_WHEELS ?= /opt/wheels
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --extra test --extra dev --generate-hashes \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
	--override overrides.txt \
	$(if $(UPGRADE),--upgrade)

.PHONY: run test setup system-deps bench bench-gpu lint soak lock test-latest bundle

run: setup
	$(VENV)/bin/sai

test: setup system-deps lint
	$(PY) -m pytest -q -p no:cacheprovider

setup: $(STAMP)

# Every package from the lock, hashes checked, none resolved here (--no-deps): torch can never be
# replaced by another build, and a release made tomorrow changes nothing. Then the project itself.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if $(PY) -c 'import packaging' 2>/dev/null; then $(PY) -m daemon.lockfile --unlocked $(LOCK) | xargs -r $(PIP) uninstall -q -y; fi
	$(PIP) install -q --require-hashes --no-deps -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerate both locks from pyproject.toml's ranges and constraints.txt's holds, keeping today's
# pins where they still fit; `make lock UPGRADE=1` takes the newest releases the ranges allow.
lock: setup
	$(UV_COMPILE) -c constraints.txt --find-links $(TORCH_CPU_WHEELS) -o requirements.lock
	$(UV_COMPILE) -c constraints.txt -o requirements-cuda.lock

# The suite against the newest releases the ranges allow (only torch held), in its own venv:
# prints what moved against the lock, so a failure below has a name (e.g. opencv-python 5.1).
LATEST := .venv-latest
test-latest: setup
	mkdir -p $(LATEST) && echo torch==2.13.0 > $(LATEST)/constraints.txt
	$(UV_COMPILE) --upgrade -c $(LATEST)/constraints.txt --find-links $(TORCH_CPU_WHEELS) \
	  --no-header --quiet -o $(LATEST)/latest.lock
	@echo "drift against requirements.lock (locked -> latest):"
	@$(PY) -c 'import sys; from pathlib import Path; from daemon.lockfile import pins; \
	  old, new = pins(Path("requirements.lock")), pins(Path(sys.argv[1])); \
	  [print("  %s: %s -> %s" % (n, old.get(n, "-"), new.get(n, "-"))) for n in sorted(old.keys() | new.keys()) if old.get(n) != new.get(n)]' \
	  $(LATEST)/latest.lock
	$(MAKE) test VENV=$(LATEST) LOCK=$(LATEST)/latest.lock

# The offline bundle for an air-gapped server (docs/deploy.md): the project wheel, every locked wheel,
# the lock, install.sh and the unit, SHA256SUMS over all of them, signed when RELEASE_KEY names an
# Ed25519 private key (PEM). `make bundle LOCK=requirements-cuda.lock` makes the GPU server's.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BUNDLE  := secure-ai-studio-$(VERSION)-linux_x86_64-$(if $(findstring cuda,$(LOCK)),cuda,cpu)
DIST    ?= dist
STAGE   := build/bundle/$(BUNDLE)
bundle: setup
	rm -rf build/bundle build/lib && mkdir -p $(STAGE)/wheel $(STAGE)/wheelhouse $(DIST)
	$(PIP) wheel -q --no-deps --no-build-isolation -w $(STAGE)/wheel .
	$(PIP) download -q --no-deps --require-hashes --only-binary=:all: -d $(STAGE)/wheelhouse -r $(LOCK)
	cp $(LOCK) $(STAGE)/requirements.lock
	cp install.sh config/secure-ai-studio.service $(STAGE)/
	cd $(STAGE) && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS
	$(if $(RELEASE_KEY),openssl pkeyutl -sign -inkey $(RELEASE_KEY) -rawin -in $(STAGE)/SHA256SUMS -out $(STAGE)/SHA256SUMS.sig)
	tar -C build/bundle --owner=0 --group=0 --sort=name -czf $(DIST)/$(BUNDLE).tar.gz $(BUNDLE)
	@echo "$(DIST)/$(BUNDLE).tar.gz: $$(du -h $(DIST)/$(BUNDLE).tar.gz | cut -f1), $$(ls $(STAGE)/wheelhouse | wc -l) wheels"

# System tools the tests drive for real: tmux (the console in a terminal), openssl (manifest and
# release-key checks), podman and debootstrap (the container image, built from a local base),
# systemd-analyze (the unit's exposure score), promtool (the metrics exposition and the shipped
# alerting rules). Debian's prometheus package, which brings promtool, enables its server and node
# exporter on a systemd host: installed here only for promtool, they are stopped and disabled again.
# initdb and pg_ctl (a private PostgreSQL cluster for tests/fleet) come with Debian's postgresql, off
# PATH in /usr/lib/postgresql/*/bin; its own cluster service is stopped and disabled like prometheus's.
SYSTEM_TOOLS := tmux openssl podman debootstrap systemd-analyze promtool initdb pg_ctl
SYSTEM_PACKAGES := tmux openssl podman debootstrap systemd prometheus postgresql
system-deps:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || ls /usr/lib/postgresql/*/bin/$$t >/dev/null 2>&1 \
	  || echo $$t; done); [ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	    case " $$(echo $$missing) " in *" promtool "*) [ ! -d /run/systemd/system ] || \
	      systemctl disable --now -q prometheus.service prometheus-node-exporter.service 2>/dev/null || true;; esac; \
	    case " $$(echo $$missing) " in *" initdb "*) [ ! -d /run/systemd/system ] || \
	      systemctl disable --now -q postgresql.service 2>/dev/null || true;; esac; \
	  else echo "missing: $$missing (e.g. sudo apt-get install $(SYSTEM_PACKAGES))"; exit 1; fi; }

# Import contracts (layers included), then ruff and mypy, configured in pyproject.toml. Quiet when clean.
lint: setup
	@out=$$($(VENV)/bin/lint-imports 2>&1) || { echo "$$out"; exit 1; }
	@$(VENV)/bin/ruff check --quiet daemon console tests bench
	@$(VENV)/bin/mypy --no-error-summary

# Every CPU bench (each prints its ratios); the GPU check is its own target, for a box with GPUs.
bench: setup
	for b in bench/*.py; do case $$b in bench/gpu_*) continue;; esac; $(PY) $$b || exit 1; done

bench-gpu: setup
	$(PY) bench/gpu_check.py --minutes 8

# The crash suite's long run (200 jobs, 12 SIGKILLs; `make test` runs a short one). Prints its counts.
soak: setup
	SAI_SOAK=1 $(PY) -m pytest -q -s -p no:cacheprovider -m soak tests/reliability
