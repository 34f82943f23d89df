"""The kept samples of a preparation, on disk: memory does not grow with the data set.

Token ids (int32) and a trained flag per token (uint8) are appended to two files as samples come; in memory
each sample keeps only its length, trained-token count, data set and arrangement (a dozen bytes) and the offset
of where it came from, whose text is on disk too (disk_strings.py). Reads go through `os.pread`, not a memory
map, so the pages read stay in the page cache (which the kernel reclaims) rather than in the process's resident
memory.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

import numpy as np

from openhermes.data.disk_strings import DiskStrings
from openhermes.data.tokenize import IGNORE, Sample


class SampleStore:
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self._ids = open(folder / "input_ids.int32", "w+b")  # noqa: SIM115 - closed by close()
        self._trained = open(folder / "trained.uint8", "w+b")  # noqa: SIM115
        self.lengths = array("i")
        self.n_trained = array("i")
        self.starts = array("q", [0])  # token offset of each sample, and the end
        self.set_index = array("H")  # which data set: an index into self.sets
        self.variant_index = array("H")  # LimaRP arrangement copy: an index into self.variants (0 = the row)
        self.wheres = DiskStrings(folder)  # where each sample came from, on disk
        self.sets: list[str] = []
        self.variants: list[str] = [""]
        self._numbers: dict[tuple[str, str], int] = {("variant", ""): 0}

    def __len__(self) -> int:
        return len(self.lengths)

    def add(self, sample: Sample) -> int:
        trained = sample.labels != IGNORE
        # Labels are the ids where trained and IGNORE elsewhere (tokenize.py), so one flag per token keeps them.
        if not np.array_equal(sample.labels[trained], sample.input_ids[trained]):
            raise AssertionError(f"{sample.where}: a trained label differs from its token")
        self._ids.write(np.ascontiguousarray(sample.input_ids, dtype=np.int32).tobytes())
        self._trained.write(trained.astype(np.uint8).tobytes())
        i = len(self.lengths)
        self.lengths.append(len(sample))
        self.n_trained.append(sample.n_trained)
        self.starts.append(self.starts[-1] + len(sample))
        self.set_index.append(self._number("set", self.sets, sample.dataset))
        self.variant_index.append(self._number("variant", self.variants, sample.variant))
        self.wheres.append(sample.where)
        return i

    def _number(self, kind: str, names: list[str], name: str) -> int:
        n = self._numbers.get((kind, name))
        if n is None:
            n = self._numbers[(kind, name)] = len(names)
            names.append(name)
        return n

    def dataset(self, i: int) -> str:
        return self.sets[self.set_index[i]]

    def variant(self, i: int) -> str:
        return self.variants[self.variant_index[i]]

    def finish(self) -> None:
        """Done adding: flush, so that reads see every sample."""
        self._ids.flush()
        self._trained.flush()

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of sample i, as int32 arrays."""
        start, n = self.starts[i], self.lengths[i]
        ids = np.frombuffer(os.pread(self._ids.fileno(), 4 * n, 4 * start), dtype=np.int32)
        trained = np.frombuffer(os.pread(self._trained.fileno(), n, start), dtype=np.uint8).astype(bool)
        return ids, np.where(trained, ids, np.int32(IGNORE)).astype(np.int32)

    def close(self) -> None:
        self._ids.close()
        self._trained.close()
        self.wheres.close()
