"""Exact duplicate rows over whole columns: which rows repeat an earlier row in every key.

Each row is hashed to one uint64 and the hashes sorted, in bounded blocks; neighbours are then
compared on the keys themselves, so the answer is exact (hash collisions are settled by an exact
sort of the few rows involved). The first row of each set of equal rows, in file order, is the
one that is not a repeat.

This module knows nothing of files, ids or datasets: the keys are integer columns, and which
columns and what counts as equal (a timestamp compares as a number) is export.cleaning's choice.
"""

from __future__ import annotations

import numpy as np

_ROWS = 1 << 20  # rows per block when hashing and comparing sorted neighbours
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio) for the row hash


def _same_as_previous(keys: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """(n-1,) bool: row order[j+1] equals row order[j] in every key; a block at a time, so no
    sorted copy of a key is ever made."""
    same = np.ones(max(len(order) - 1, 0), bool)
    for start in range(0, len(same), _ROWS):
        rows = order[start : start + _ROWS + 1]
        for k in keys:
            v = k[rows]
            same[start : start + len(rows) - 1] &= v[1:] == v[:-1]
    return same


def _repeats_exact(keys: list[np.ndarray]) -> np.ndarray:
    order = np.lexsort(keys)  # stable: equal rows stay in file order
    repeat = np.zeros(len(order), bool)
    repeat[order[1:][_same_as_previous(keys, order)]] = True
    return repeat


def _repeats(keys: list[np.ndarray]) -> np.ndarray:
    """(n,) bool: True where a row equals an earlier row in every key.

    Each row becomes one uint64: a hash of its keys above, its row number below. A plain sort of
    those (SIMD, ~10x an argsort) puts rows with one hash together, in file order, so the first of
    each run is the one kept. Neighbours are then compared on the keys themselves; the few runs
    where a truncated hash collided are settled by an exact lexsort of their rows alone.
    """
    n = len(keys[0])
    bits = max(1, (n - 1).bit_length())  # for the row number
    packed = np.empty(n, np.uint64)
    for start in range(0, n, _ROWS):  # in blocks, here and below: no (n,) temporaries
        block = packed[start : start + _ROWS]
        block[:] = 0
        for k in keys:
            block ^= k[start : start + _ROWS].astype(np.uint64)
            block *= _MIX
            block ^= block >> np.uint64(29)
        block >>= np.uint64(bits)
        block <<= np.uint64(bits)
        block |= np.arange(start, start + len(block), dtype=np.uint64)
    packed.sort()
    same_hash = np.empty(max(n - 1, 0), bool)
    for start in range(0, len(same_hash), _ROWS):
        v = packed[start : start + _ROWS + 1] >> np.uint64(bits)
        same_hash[start : start + len(v) - 1] = v[1:] == v[:-1]
    packed &= np.uint64((1 << bits) - 1)
    order = packed.view(np.int64)  # (n,) rows, by hash then file order
    same = _same_as_previous(keys, order) & same_hash
    repeat = np.zeros(n, bool)
    collided = same_hash & ~same  # one hash, different rows
    if collided.any():  # ~n²/2^(65-bits) pairs: a few dozen at 10M rows
        run = np.empty(n, np.int32)  # hash run of each sorted position, non-decreasing
        run[0] = 0
        np.cumsum(~same_hash, out=run[1:])
        bad = np.unique(run[1:][collided])
        lo, hi = np.searchsorted(run, bad, "left"), np.searchsorted(run, bad, "right")
        del run
        positions = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
        same[positions[positions > 0] - 1] = False
        rows = np.sort(order[positions])
        repeat[rows[_repeats_exact([k[rows] for k in keys])]] = True
    repeat[order[1:][same]] = True
    return repeat
