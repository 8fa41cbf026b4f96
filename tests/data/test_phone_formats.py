"""HEIC (the iPhone camera's default) and AVIF photos are read everywhere a JPEG is: scan, the
training cache's decode, predict's folder listing and the upload check all go through one decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantid.data.images import decode_image, is_image_name, load_image
from tests.support.images import class_pixels


@pytest.mark.parametrize("suffix, save_format", [(".heic", "HEIF"), (".avif", "AVIF")])
def test_phone_formats_are_written_then_read_back_like_a_jpeg(tmp_path: Path, suffix: str, save_format: str):
    pixels = class_pixels(2, 64, 48, np.random.default_rng(0))
    path = tmp_path / f"leaf{suffix}"
    Image.fromarray(pixels).save(path, format=save_format, quality=90)
    assert is_image_name(path)
    decoded = decode_image(path)
    assert decoded.pixels.shape == (48, 64, 3) and decoded.original_size == (64, 48)
    # lossy, but the same photo: close to the pixels it was made from
    assert np.abs(decoded.pixels.astype(int) - pixels.astype(int)).mean() < 12
    assert load_image(path.read_bytes(), 32).shape == (32, 32, 3)  # an upload: bytes, not a path


def test_scan_and_predict_listing_take_heic(tmp_path: Path):
    from plantid.data.scan import scan_folder
    from plantid.infer.cli_predict import expand_inputs

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(class_pixels(i, 40, 40, np.random.default_rng(i))).save(tmp_path / label / f"{i}.heic",
                                                                                  format="HEIF")
    report = scan_folder(tmp_path)
    assert not report.bad and len(report.entries) == 4
    assert len(expand_inputs([str(tmp_path)])) == 4
