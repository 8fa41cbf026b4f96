"""Real, learnable test photos: class k has a dominant colour, per-image noise and a lighter patch.

Test support, not part of the installed package; tests/conftest.py builds its fixtures on it and
tests import it as ``tests.support.images`` (conftest puts the repository root on sys.path).

* ``class_pixels(k, width, height, rng)``: an RGB uint8 array of class k;
* ``jpeg_bytes(pixels, **save)``: those pixels as JPEG bytes (quality 92 unless given);
* ``write_class_image(path, k, size, rng)``: one square JPEG of class k on disk;
* ``make_image_folder(root, classes, per_class, size, seed)``: ``root/<class>/<class>_<i>.jpg``.

Every file differs (distinct sha256) and a small network separates the classes within a few steps.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

PALETTE = [
    (220, 40, 40),
    (40, 200, 60),
    (40, 70, 220),
    (230, 210, 40),
    (200, 50, 200),
    (40, 200, 210),
    (240, 140, 30),
    (120, 120, 120),
]


def class_colour(index: int) -> tuple[int, int, int]:
    """The dominant colour of class number `index` (deterministic beyond the palette too)."""
    if index < len(PALETTE):
        return PALETTE[index]
    digest = hashlib.sha256(f"class-colour-{index}".encode()).digest()
    return digest[0], digest[1], digest[2]


def class_pixels(class_index: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Pixels of a photo of class `class_index`: its colour + Gaussian noise + a lighter square patch."""
    img = np.array(class_colour(class_index), dtype=np.float32) + rng.normal(0.0, 18.0, size=(height, width, 3))
    side = max(2, min(width, height) // 4)
    y, x = rng.integers(0, np.array([height - side + 1, width - side + 1]))
    img[y : y + side, x : x + side] += 50.0
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, **save: object) -> bytes:
    """`pixels` (H x W x 3 uint8) encoded as a JPEG, as an upload or a file would carry them."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG", **{"quality": 92, **save})
    return buffer.getvalue()


def write_class_image(path: Path, class_index: int, size: int, rng: np.random.Generator) -> Path:
    """One real size x size JPEG of class `class_index` at `path` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(class_pixels(class_index, size, size, rng)))
    return path


def make_image_folder(
    root: Path,
    classes: Sequence[str] = ("a", "b", "c"),
    per_class: int = 12,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write ``root/<class>/<class>_<i>.jpg``, `per_class` photos of each class (class k: colour k)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(classes):
        rng = np.random.default_rng([seed, k])
        for i in range(per_class):
            write_class_image(root / name / f"{name}_{i:03d}.jpg", k, size, rng)
    return root


def png_bomb(width: int, height: int | None = None) -> bytes:
    """A valid 1-bit grey PNG of width x height pixels (height = width when None) whose all-zero rows
    compress to a few KB: what a decompression bomb looks like to a decoder that trusts its header."""
    height = width if height is None else height

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + the packed bits of one row
    deflate = zlib.compressobj(9)
    pixels = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
