"""Exact and near-duplicate removal on tokenized samples.

Duplicates are judged on what training would see: exact duplicates are samples with the same
token ids and labels; near duplicates have MinHash signatures of their token 3-grams that
LSH banding (datasketch's choice of bands) finds above the Jaccard threshold. Working on token ids needs no second
pass over the text (word splitting and hashing every word cost more than tokenizing).

Signatures are computed for a whole chunk of samples at once (`signatures`, thread-safe, numpy);
the index is then asked in input order (`Deduplicator.check`), so the first of two duplicates is
always the one kept, however the chunks were scheduled.
"""

from __future__ import annotations

import numpy as np
import xxhash

from openhermes.data.tokenize import Sample

MIN_GRAMS = 8  # fewer token 3-grams than this: too short for a meaningful similarity, exact match only
_EMPTY = np.uint64(1 << 63)
_BIN_SPAN = np.uint64(1 << 32)  # bin values are 32-bit, so C = 2^32 keeps borrowed values apart


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a well-mixed 64-bit hash of each gram."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def signatures(ids: list[np.ndarray], num_perm: int = 64) -> list[np.ndarray | None]:
    """One-permutation MinHash with rotation densification (Li, Owen & Zhang 2012; Shrivastava &
    Li 2014) of each sample's token 3-grams; None for a sample with fewer than MIN_GRAMS grams.

    Ours rather than datasketch's MinHash: that one hashes every gram num_perm times, one sample at
    a time in Python, which cost more than tokenizing; this hashes each gram once for a whole chunk.
    Two signatures agree in a position with probability equal to the sets' Jaccard similarity, which
    is what LSH banding expects of its input."""
    n = len(ids)
    if n == 0:
        return []
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=n)
    flat = np.concatenate(ids).astype(np.uint64)
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    with np.errstate(over="ignore"):
        grams = (flat[:-2] * np.uint64(1_000_003) + flat[1:-1]) * np.uint64(1_000_003) + flat[2:]
    inside = owner[:-2] == owner[2:]  # a gram never spans two samples
    h = _mix64(grams[inside])
    owner = owner[:-2][inside]
    # The high half picks the bin, the low half is the value kept: the minimum per (sample, bin).
    table = np.full(n * num_perm, _EMPTY, dtype=np.uint64)
    bins = ((h >> np.uint64(32)) % np.uint64(num_perm)).astype(np.int64)
    np.minimum.at(table, owner * num_perm + bins, h & np.uint64(0xFFFFFFFF))
    table = table.reshape(n, num_perm)
    # Rotation densification: an empty bin takes the next non-empty bin to its right (circularly),
    # plus C per step, so two samples' empty bins agree exactly when their donors do.
    dense = table.copy()
    for j in range(2 * num_perm - 2, -1, -1):
        col, right = j % num_perm, (j + 1) % num_perm
        empty = table[:, col] == _EMPTY
        donor = dense[empty, right]
        dense[empty, col] = np.where(donor >= _EMPTY, _EMPTY, donor + _BIN_SPAN)
    grams_per_sample = np.bincount(owner, minlength=n)
    return [dense[i] if grams_per_sample[i] >= MIN_GRAMS else None for i in range(n)]


class Deduplicator:
    """Keeps the first of each set of duplicates, across every data set given to it."""

    def __init__(self, near_threshold: float | None = 0.9, num_perm: int = 64):
        self.seen: dict[bytes, str] = {}
        self.num_perm = num_perm
        self.bands: list[tuple[int, int]] = []
        if near_threshold:
            from datasketch import MinHashLSH

            # datasketch picks the banding (b bands of r rows) that best separates pairs above the
            # threshold from those below. Its index keeps every key of every bucket in sets; we need
            # only the first row in a bucket, so a dict per band does (a fifth of the time).
            lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
            self.bands = list(lsh.hashranges)
        self.buckets: list[dict[bytes, str]] = [{} for _ in self.bands]

    @property
    def near(self) -> bool:
        return bool(self.bands)

    def check(self, sample: Sample, signature: np.ndarray | None) -> tuple[str, str] | None:
        """(reason, detail) when `sample` duplicates one seen before, else None (and remember it)."""
        h = xxhash.xxh3_128(sample.input_ids.tobytes())
        h.update(sample.labels.tobytes())
        digest = h.digest()
        if digest in self.seen:
            return "exact duplicate", f"same as {self.seen[digest]}"
        self.seen[digest] = sample.where
        if not self.bands or signature is None:
            return None
        keys = [signature[a:b].tobytes() for a, b in self.bands]
        for bucket, key in zip(self.buckets, keys, strict=True):
            if (first := bucket.get(key)) is not None:
                return "near duplicate", f"similar to {first}"
        for bucket, key in zip(self.buckets, keys, strict=True):
            bucket[key] = sample.where
        return None
