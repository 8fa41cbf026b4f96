"""Reading one photo the same way everywhere: training, evaluation, prediction, export, serving.

This module is the single definition of how a file becomes pixels (decode, EXIF orientation,
RGB conversion, resize). Everything downstream works on the uint8 HxWx3 array it returns,
so there is no train/serve skew.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from pillow_heif import register_heif_opener

# HEIC/HEIF (the iPhone camera's default) through pillow-heif; AVIF is read by Pillow itself (>= 11.3)
register_heif_opener()

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".heic", ".heif",
                              ".avif"})
HIDDEN_NAMES = frozenset({"thumbs.db", "desktop.ini"})
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own default bomb limit, made explicit and enforced as an error
MAX_FILE_BYTES = 512 * 1024 * 1024  # a larger file is not a photo we can train on or predict
# The only Pillow plugins plantid lets decode a file: the formats its docs name. Every other plugin
# (TGA, PCX, ICO, SGI, DDS, JPEG 2000, SPIDER, ...) is old parser code no photo needs, and EPS would
# start Ghostscript. Pillow picks by the file's header, never by its name.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "HEIF", "AVIF", "BMP", "TIFF", "GIF")
PHOTO_FORMAT_NAMES = "JPEG, PNG, WebP, HEIC, AVIF, BMP, TIFF or GIF"


class BadImageError(ValueError):
    """A file that cannot be used as a photo; `reason` is a short human explanation."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = str(path) if path is not None else "<upload>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image plus what was done to get there (for scan notes)."""

    pixels: np.ndarray  # uint8, H x W x 3
    original_mode: str
    original_size: tuple[int, int]  # (width, height) as stored in the file
    notes: tuple[str, ...]


def is_hidden(path: Path) -> bool:
    """True for dot-files and OS litter (.DS_Store, Thumbs.db) that are never photos."""
    return path.name.startswith(".") or path.name.lower() in HIDDEN_NAMES


def is_image_name(path: Path) -> bool:
    """True when the file name has an image extension we accept and is not hidden."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(path)


def decode_image(source: str | os.PathLike | bytes) -> DecodedImage:
    """Fully decode a photo from a path or bytes into RGB uint8 pixels.

    EXIF orientation is applied; palette, grayscale, RGBA, CMYK and 16-bit images are converted
    to RGB (alpha composited on white). Raises BadImageError for empty, truncated, non-image
    or oversized (decompression bomb) input. Only the photo formats plantid documents are
    decoded, told from the file's header before the rest is read; a file over MAX_FILE_BYTES is
    refused from its size alone, so a huge file costs a stat, not its size in memory.
    """
    path = None if isinstance(source, (bytes, bytearray, memoryview)) else Path(source)
    if path is not None:
        try:
            size = path.stat().st_size
            if size == 0:
                raise BadImageError(path, "empty file (0 bytes)")
            if size > MAX_FILE_BYTES:
                raise BadImageError(path, f"file too large ({size / 2**20:.0f} MB > {MAX_FILE_BYTES // 2**20} MB): "
                                          "not a photo plantid reads")
            stream = open(path, "rb")
        except OSError as exc:
            raise BadImageError(path, f"unreadable ({exc.strerror or exc})") from None
    else:
        if not len(source):
            raise BadImageError(None, "empty file (0 bytes)")
        stream = io.BytesIO(source)  # shares the caller's bytes: no copy of an upload
    with stream:
        return _decode_stream(stream, path)


def _decode_stream(stream, path: Path | None) -> DecodedImage:
    try:
        # PIL warns (1x-2x its limit) or raises (beyond 2x) for huge images; the explicit check below
        # turns every oversized image into a BadImageError without touching the (process-global,
        # not thread-safe) warnings filters.
        with Image.open(stream, formats=PHOTO_FORMATS) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise BadImageError(
                    path, f"too large ({width}x{height} pixels > {MAX_IMAGE_PIXELS}): possible decompression bomb"
                )
            img.load()
            original_mode = img.mode
            notes: list[str] = []
            orientation = img.getexif().get(0x0112, 1)
            oriented = ImageOps.exif_transpose(img) if orientation != 1 else img
            if orientation != 1:
                notes.append(f"EXIF orientation {orientation} applied")
            rgb = _to_rgb(oriented, notes)
            pixels = np.asarray(rgb, dtype=np.uint8).copy()
    except BadImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise BadImageError(path, "too large: possible decompression bomb") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(path, f"not an image (unrecognised format; plantid reads {PHOTO_FORMAT_NAMES})") from None
    except MemoryError:
        raise BadImageError(path, "too large to decode in the memory available") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            raise BadImageError(path, "truncated image data") from None
        raise BadImageError(path, f"cannot decode ({msg})") from None
    return DecodedImage(pixels=pixels, original_mode=original_mode, original_size=(width, height), notes=tuple(notes))


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, recording the conversion in `notes`."""
    mode = img.mode
    if mode == "RGB":
        return img
    notes.append(f"converted {mode} to RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(img, dtype=np.float64)
        hi = max(float(arr.max()), 1.0)
        scale = 255.0 / (65535.0 if hi > 255 else 255.0)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
        return img.convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def resize_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize RGB uint8 pixels to size x size (bilinear with antialiasing, aspect not kept).

    The seed pipeline stretches every photo to a square (96 -> 224); doing the same for any
    input keeps prediction identical to training.
    """
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels
    img = Image.fromarray(pixels, mode="RGB").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


def load_image(source: str | os.PathLike | bytes, size: int) -> np.ndarray:
    """Decode a photo and resize it to the model's input: uint8 array of shape (size, size, 3).

    This is the preprocessing shared by the cache (training), prediction, export and serving.
    """
    return resize_pixels(decode_image(source).pixels, size)
