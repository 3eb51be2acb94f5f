"""RPC method handlers, one module per area; importing this package registers them all."""

import importlib
import pkgutil

from daemon.api import registry


def load_all() -> dict[str, registry.Method]:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "registry":
            importlib.import_module(f"{__name__}.{info.name}")
    return registry.METHODS
