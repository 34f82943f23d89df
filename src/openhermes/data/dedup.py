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

from openhermes.data.disk_strings import DiskStrings
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


class FirstSeen:
    """uint64 key -> the id first stored under it, in sorted numpy runs (12 bytes a key: the dicts of bytes keys
    this replaces held ~250 bytes a key, 1 GB at a million rows) plus a dict of the keys added since the last run.
    Ours because no library here offers a compact first-wins hash set with batched lookups."""

    RUN = 1 << 16  # keys gathered in the dict before they become a sorted run

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, ids); each key is stored once
        self.recent: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.recent) + sum(len(k) for k, _ in self.runs)

    def in_runs(self, keys: np.ndarray) -> np.ndarray:
        """The id stored under each key in the sorted runs, -1 where none (one vectorized pass per run)."""
        found = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_ids in self.runs:
            pos = np.minimum(np.searchsorted(run_keys, keys), len(run_keys) - 1)
            hit = run_keys[pos] == keys
            found[hit] = run_ids[pos[hit]]
        return found

    def get(self, key: int, in_runs: int) -> int | None:
        return in_runs if in_runs >= 0 else self.recent.get(key)

    def add(self, key: int, id_: int) -> None:
        self.recent[key] = id_

    def settle(self) -> None:
        """Between batches: a full dict becomes a sorted run; runs of like size merge (so there are few)."""
        if len(self.recent) < self.RUN:
            return
        keys = np.fromiter(self.recent.keys(), dtype=np.uint64, count=len(self.recent))
        ids = np.fromiter(self.recent.values(), dtype=np.int64, count=len(self.recent))
        self.recent = {}
        self.runs.append((keys, ids))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (k1, i1), (k2, i2) = self.runs.pop(), self.runs.pop()
            keys, ids = np.concatenate([k2, k1]), np.concatenate([i2, i1])
            self.runs.append((keys, ids))
        keys, ids = self.runs[-1]
        order = np.argsort(keys, kind="stable")
        self.runs[-1] = (keys[order], ids[order])


class Deduplicator:
    """Keeps the first of each set of duplicates, across every data set given to it.

    A sample is known by 64-bit keys: one for its token ids and labels (exact duplicates), one per LSH band of
    its signature (near duplicates). Two different samples share a key by chance with odds ~n²/2^64 (1 in 3e7
    at a million samples)."""

    def __init__(self, near_threshold: float | None = 0.9, num_perm: int = 64):
        self.num_perm = num_perm
        self.bands: list[tuple[int, int]] = []
        if near_threshold:
            from datasketch import MinHashLSH

            # datasketch picks the banding (b bands of r rows) that best separates pairs above the
            # threshold from those below. Its index keeps every key of every bucket in sets; we need
            # only the first sample in a bucket (FirstSeen).
            lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
            self.bands = list(lsh.hashranges)
        self.exact = FirstSeen()
        self.buckets = FirstSeen()  # every band's keys, each band hashed with its own seed
        self.names = DiskStrings()  # where each id's sample came from, for the report (on disk)

    @property
    def near(self) -> bool:
        return bool(self.bands)

    def keys(self, samples: list[Sample]) -> list[tuple[int, tuple[int, ...] | None]]:
        """(exact key, band keys or None) per sample; thread-safe (worker threads call it per chunk)."""
        sigs = signatures([s.input_ids for s in samples], self.num_perm) if self.near else [None] * len(samples)
        out = []
        for s, sig in zip(samples, sigs, strict=True):
            h = xxhash.xxh3_64(s.input_ids.tobytes())
            h.update(s.labels.tobytes())
            bands = None if sig is None else tuple(
                xxhash.xxh3_64_intdigest(sig[a:b].tobytes(), seed=i) for i, (a, b) in enumerate(self.bands))
            out.append((h.intdigest(), bands))
        return out

    def check_many(self, keys: list[tuple[int, tuple[int, ...] | None]],
                   wheres: list[str]) -> list[tuple[str, str] | None]:
        """(reason, detail) for each sample that duplicates one seen before, else None (and remember it),
        in order: the first of two duplicates is the one kept."""
        exact = np.fromiter((k for k, _ in keys), dtype=np.uint64, count=len(keys))
        exact_old = self.exact.in_runs(exact)
        banded = [b for _, b in keys if b is not None]  # none without near-dedup
        band_keys = np.array(banded, dtype=np.uint64)
        band_old = self.buckets.in_runs(band_keys.ravel()).reshape(band_keys.shape)
        out: list[tuple[str, str] | None] = []
        row = 0
        for j, ((key, bands), where) in enumerate(zip(keys, wheres, strict=True)):
            first = self.exact.get(key, int(exact_old[j]))
            if bands is not None:
                row += 1
            if first is not None:
                out.append(("exact duplicate", f"same as {self.names[first]}"))
                continue
            id_ = len(self.names)
            self.names.append(where)
            self.exact.add(key, id_)
            if bands is None:
                out.append(None)
                continue
            similar = next((f for b, k in enumerate(bands)
                            if (f := self.buckets.get(k, int(band_old[row - 1, b]))) is not None), None)
            if similar is not None:
                out.append(("near duplicate", f"similar to {self.names[similar]}"))
                continue
            for k in bands:
                self.buckets.add(k, id_)
            out.append(None)
        self.exact.settle()
        self.buckets.settle()
        return out
