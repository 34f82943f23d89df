"""A list of strings kept in an unnamed temporary file: memory holds one 8-byte end offset per string.

Each kept sample's origin ("file:line") is needed only for the rare report line (a duplicate's "same as", a row
left out by the mix); held as Python strings they were ~100 bytes a row of resident memory at a million rows.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from pathlib import Path


class DiskStrings:
    def __init__(self, folder: Path | None = None):
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - unlinked at once, gone when closed
        self._ends = array("q")
        self._unflushed = False

    def __len__(self) -> int:
        return len(self._ends)

    def append(self, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        self._file.write(data)
        self._ends.append((self._ends[-1] if self._ends else 0) + len(data))
        self._unflushed = True

    def __getitem__(self, i: int) -> str:
        if self._unflushed:
            self._file.flush()
            self._unflushed = False
        if i < 0:
            i += len(self._ends)
        end = self._ends[i]
        start = self._ends[i - 1] if i > 0 else 0
        return os.pread(self._file.fileno(), end - start, start).decode("utf-8", "surrogatepass")

    def close(self) -> None:
        self._file.close()
