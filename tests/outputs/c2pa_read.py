"""Read a file's C2PA manifest with c2pa-python's own Reader, offline, as a third party would:
`python -m tests.outputs.c2pa_read FILE [ANCHORS.pem]` prints {state, failure, success, manifest}
as JSON. Run under `unshare -n` by the tests, so the reading is proven to need no network. It
uses c2pa directly (not daemon.outputs.credentials), so the check does not lean on our reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import c2pa


def read(path: Path, anchors: Path | None) -> dict[str, object]:
    settings: dict[str, object] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if anchors is not None:
        settings["trust"] = {"trust_anchors": anchors.read_text()}
    context = c2pa.Context(c2pa.Settings.from_dict(settings))
    with path.open("rb") as stream:
        try:
            reader = c2pa.Reader.try_create("image/png", stream, None, context)
        except c2pa.C2paError as exc:
            return {"state": None, "error": str(exc)}
        if reader is None:
            return {"state": None, "error": "no manifest"}
        results = reader.get_validation_results() or {}
        active = results.get("activeManifest", {})
        return {"state": str(reader.get_validation_state()),
                "failure": [item["code"] for item in active.get("failure", [])],
                "success": [item["code"] for item in active.get("success", [])],
                "manifest": json.loads(reader.json())}


if __name__ == "__main__":
    print(json.dumps(read(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)))
