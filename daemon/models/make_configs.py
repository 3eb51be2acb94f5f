"""Write the config trees the package ships for single-file loads (daemon/models/configs/<family>/).

Run once by a developer (`python -m daemon.models.make_configs`), not at run time: each family's
built-in tiny model is built from code, saved, and every file except weights is kept (component
configs, scheduler config, tokenizer files; JSON/TXT only). Nothing is downloaded.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from daemon.models.builders import build
from daemon.models.loading import CONFIGS

SHIPPED = {"sd15": "tiny", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux"}
"""Family → the built-in model whose tree is shipped (PixArt: diffusers has no single-file loader)."""
KEPT_SUFFIXES = (".json", ".txt")


def write(family: str, target_root: Path = CONFIGS) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        model = build(SHIPPED[family], Path(scratch) / family)
        target = target_root / family
        if target.exists():
            shutil.rmtree(target)
        for source in sorted(model.rglob("*")):
            if source.is_file() and source.suffix in KEPT_SUFFIXES and source.name != "sai-model.json":
                destination = target / source.relative_to(model)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
    return target


def main() -> int:
    for family in sys.argv[1:] or SHIPPED:
        print(write(family))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
