"""PNG encoder: exact pixels in Pillow and OpenCV, metadata (iTXt, Unicode) round trip."""

from __future__ import annotations

import io
import json
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from daemon.outputs.png import encode_png, metadata_text, read_png, sai_metadata
from tests.outputs.out_helpers import image  # noqa: F401  (pytest fixtures)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 48), (256, 256)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_pixels_round_trip_exactly(image, shape: tuple[int, int], level: int) -> None:
    rgb = np.random.default_rng(shape[0] * 31 + level).integers(0, 256, (*shape, 3), dtype=np.uint8)
    data = encode_png(rgb, {"k": "v"}, level)
    back, text = read_png(data)
    assert np.array_equal(back, rgb) and text == {"k": "v"}
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # Pillow checks chunk CRCs
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(bgr[..., ::-1], rgb)


def test_compresses_smooth_images(image) -> None:
    rgb = image("smooth", 0)
    assert len(encode_png(rgb, None, 1)) < 0.8 * rgb.nbytes
    assert len(encode_png(rgb, None, 0)) > rgb.nbytes


def test_metadata_round_trip() -> None:
    fields = {"job_id": "j1", "index": 2, "params": {"steps": 20, "guidance": 7.5}, "prompt": "café ✓ 日本",
              "seed": 42, "model_id": "tiny", "negative_prompt": None}
    data = encode_png(np.zeros((8, 8, 3), np.uint8), metadata_text(fields))
    _, text = read_png(data)
    meta = sai_metadata(text)
    assert text["Software"] == "Secure AI Studio"
    assert meta["job_id"] == "j1" and meta["index"] == "2" and meta["seed"] == "42"
    assert meta["prompt"] == "café ✓ 日本" and json.loads(meta["params"]) == fields["params"]
    assert "negative_prompt" not in meta
    assert b"iTXt" in data and data.index(b"iTXt") < data.index(b"IDAT")


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), np.uint8), {"x" * 80: "too long a keyword"})
    with pytest.raises(ValueError):
        read_png(b"not a png")
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    with pytest.raises(ValueError, match="not a PNG"):
        read_png(jpeg)


def test_crc_is_checked_by_reader() -> None:
    data = bytearray(encode_png(np.zeros((8, 8, 3), np.uint8), {"a": "b"}))
    at = data.index(b"iTXt") + 6
    data[at] ^= 1
    with pytest.raises((ValueError, SyntaxError, OSError, zlib.error)), Image.open(io.BytesIO(bytes(data))) as im:
        im.verify()
