"""Near-duplicate photos: a perceptual hash per photo and the groups of photos whose hashes are close.

The same photo saved twice at another size, re-encoded, slightly brightened or re-cropped is not
byte-identical, so the sha256 check in `plantid.data.scan` misses it, yet it leaks from train to
test just the same. Each photo gets a 64-bit perceptual hash (``imagehash.phash``: the signs of the
lowest 8x8 DCT frequencies of a 32x32 grey thumbnail, compared with their median), and two photos
whose hashes differ in at most ``max_distance`` bits are near duplicates, provided their mean colours
are also within ``MAX_MEAN_COLOUR_DIFF`` per channel: phash sees only grey levels, so without that gate
a red and a blue picture of the same layout would match (generated test photos did). Groups are the
connected components of that relation, so a chain of close pairs is one group.

The distance (``NEAR_DUPLICATE_DISTANCE``) and the colour gate were read off the two shared data
sets' closest pairs (docs/decisions.md, 2026-12-01 "Near duplicates: phash within 10 bits and a
colour gate of 48 levels"). Raise the distance to catch heavier crops at the price of grouping
look-alikes; ``0`` keeps only identical hashes; a negative value turns the search off.
"""

from __future__ import annotations

from typing import Sequence

import imagehash
import numpy as np
from PIL import Image

NEAR_DUPLICATE_DISTANCE = 10  # bits of 64: every pair this close in the shared sets was one photo
MAX_MEAN_COLOUR_DIFF = 48  # per RGB channel, of 255: loose on purpose, against phash's colour blindness
_THUMB = 32  # imagehash.phash's own working size for hash_size=8
_BLOCK_ELEMENTS = 4_000_000  # pairwise distances computed per block (32 MB of uint64)
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def perceptual_hash(pixels: np.ndarray) -> tuple[str, list[int]]:
    """The 64-bit phash of decoded RGB uint8 pixels (16 hex digits) and their mean colour ``[r, g, b]``.

    Works on the pixels the scan already decoded (no second read or decode). The photo is first
    reduced to phash's 32x32 thumbnail with PIL's two-step bilinear reduction instead of phash's own
    full-size Lanczos resize: 2.3 times cheaper on 96 px leaves, hashes within 4 bits of phash's
    (0.3 on average), and the same near-duplicate pairs on both shared data sets. The mean colour is
    taken from that thumbnail too.
    """
    img = Image.fromarray(pixels, mode="RGB")
    if img.size != (_THUMB, _THUMB):
        img = img.resize((_THUMB, _THUMB), Image.Resampling.BILINEAR, reducing_gap=2.0)
    bits = imagehash.phash(img.convert("L")).hash  # 8x8 booleans, row-major like str(ImageHash)
    return np.packbits(bits).tobytes().hex(), [int(v) for v in img.reduce(_THUMB).getpixel((0, 0))]


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element (numpy >= 2 has it built in; a byte table otherwise)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)


def close_pairs(
    hashes: Sequence[str], max_distance: int, colours: Sequence[Sequence[int]] | None = None
) -> list[tuple[int, int, int]]:
    """All index pairs ``(i, j, distance)`` with ``i < j`` whose hashes differ in at most ``max_distance`` bits.

    With ``colours`` (one ``[r, g, b]`` per hash), a pair also needs mean colours within
    ``MAX_MEAN_COLOUR_DIFF`` on every channel. Exact all-pairs comparison in blocks (about a second
    per 20,000 photos); empty hashes are skipped.
    """
    if max_distance < 0:
        return []
    idx = np.array([i for i, h in enumerate(hashes) if h], dtype=np.int64)
    if len(idx) < 2:
        return []
    packed = np.array([int(hashes[i], 16) for i in idx], dtype=np.uint64)
    n = len(packed)
    block = max(1, _BLOCK_ELEMENTS // n)
    rgb = None if colours is None else np.array([colours[i] for i in idx], dtype=np.int16).reshape(n, 3)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, n, block):
        rows = packed[start : start + block]
        dist = _popcount(rows[:, None] ^ packed[None, :])
        ii, jj = np.nonzero(dist <= max_distance)
        keep = jj > ii + start
        ii, jj = ii[keep], jj[keep]
        if rgb is not None:  # the colour gate, on the few hash matches only
            same_colour = (np.abs(rgb[ii + start] - rgb[jj]) <= MAX_MEAN_COLOUR_DIFF).all(axis=1)
            ii, jj = ii[same_colour], jj[same_colour]
        for i, j in zip(ii, jj):
            pairs.append((int(idx[i + start]), int(idx[j]), int(dist[i, j])))
    return pairs


def group_near_duplicates(
    hashes: Sequence[str],
    max_distance: int = NEAR_DUPLICATE_DISTANCE,
    colours: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """Indices of photos grouped by hash distance and colour gate (connected components of size >= 2), sorted.

    Why components: if A is a re-crop of B and B a re-encode of C, all three must stay on one side
    of the split.
    """
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in close_pairs(hashes, max_distance, colours):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for i in range(len(hashes)):
        members.setdefault(find(i), []).append(i)
    return sorted(g for g in members.values() if len(g) > 1)
