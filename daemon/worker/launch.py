"""How the daemon starts a worker process, so that nothing around the daemon can run code in it.

- An isolated interpreter (`-I`): neither the current directory nor the script's directory goes on
  `sys.path`, `PYTHON*` variables and the user's site-packages are ignored. The package is found
  where the daemon found it: the installed distribution (an editable install's finder lives in
  site-packages too), plus the absolute entries of the daemon's own `sys.path` (a daemon run as
  `python -m` from a checkout imports from there already; nothing new is trusted).
- A fixed working directory, `/`: relative paths in the spec are made absolute first.
- An environment built from an allow-list: locale, `PATH`, `HOME`, temp dir, the GPU runtime's
  variables and the offline switches; never `SAI_*` (the passphrase) or anything else the daemon
  was started with.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WORKDIR = "/"
MODULE = "daemon.worker.main"
PATH_FIELDS = ("path", "config_dir", "state_dir")

PASSED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "XDG_CACHE_HOME",
                    "HF_HOME", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"})
PASSED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "PYTORCH_")

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
"""The hub switched off: in the worker's environment, and set again by the worker before diffusers loads."""

FIXED = {
    **OFFLINE,
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's whole environment: the allowed variables of `environ`, then the fixed ones."""
    passed = {k: v for k, v in environ.items() if k in PASSED or k.startswith(PASSED_PREFIXES)}
    return {**passed, **FIXED}


def import_path(daemon_path: list[str]) -> list[str]:
    """The absolute entries of the daemon's `sys.path` (relative ones would mean the working directory)."""
    return [entry for entry in daemon_path if os.path.isabs(entry)]


def absolute_spec(spec: dict[str, Any], cwd: str) -> dict[str, Any]:
    """`spec` with its relative paths resolved against the daemon's working directory `cwd`."""
    fixed = dict(spec)
    for name in PATH_FIELDS:
        value = fixed.get(name)
        if isinstance(value, str) and value and not value.startswith("~") and not os.path.isabs(value):
            fixed[name] = str(Path(cwd) / value)
    return fixed


def command(spec: dict[str, Any]) -> list[str]:
    """argv of the worker for `spec` (a JSON argument), to run in WORKDIR with `child_environment`."""
    full = {**absolute_spec(spec, os.getcwd()), "sys_path": import_path(sys.path)}
    return [sys.executable, "-I", "-W", "ignore", "-m", MODULE, json.dumps(full)]
