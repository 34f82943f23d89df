"""Writing outputs without ever destroying a user's files.

Every folder openhermes writes carries a marker file, `.openhermes.json`, naming the kind of
artefact and the entries openhermes put there. A folder is written under a staging name next to
the target and then moved into place, so a reader (or a kill) never sees half a result. Only what
a marker lists is ever replaced or removed: a non-empty folder without our marker is refused
(`--overwrite` writes into it anyway, and still keeps every file that is not ours). Single files
(a GGUF, a results.json) are written next to the target and renamed over it; an existing file
that openhermes did not write is refused unless `--overwrite`.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".openhermes.json"
STAGING_TAG = ".openhermes-partial-"
RENAME_EXCHANGE = 2  # renameat2 flag: swap two paths in one step (Linux >= 3.15)
AT_FDCWD = -100

# Folders written before markers existed, recognised by what only openhermes puts together there,
# so a re-run after an upgrade does not refuse its own earlier output.
LEGACY_SIGNS = {
    "run": ("log.jsonl", "tensorboard"),
    "prepared-data": ("key.txt", "report.json", "dataset_dict.json"),
}


class OutputError(Exception):
    """An output path that openhermes refuses to write, with what the user can do about it."""


def read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return None
    entries = data.get("entries")
    data["entries"] = [e for e in entries if isinstance(e, str)] if isinstance(entries, list) else []
    return data


def write_marker(folder: Path, kind: str, entries: Iterable[str]) -> None:
    from openhermes import __version__

    body = {"kind": kind, "written_by": f"openhermes {__version__}",
            "entries": sorted(set(entries) - {MARKER})}
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def _ours(folder: Path) -> tuple[str | None, set[str]]:
    """(kind, entries openhermes wrote) of an existing folder; kind None when it is not ours."""
    marker = read_marker(folder)
    if marker is not None:
        return marker["kind"], set(marker["entries"])
    for kind, signs in LEGACY_SIGNS.items():
        if all((folder / s).exists() for s in signs):
            return kind, {p.name for p in folder.iterdir()}
    return None, set()


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != MARKER and STAGING_TAG not in p.name)


def check_folder(target: Path, kind: str, overwrite: bool = False) -> None:
    """Raise OutputError unless `target` is missing, empty, or an openhermes folder of this kind."""
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} is a file; give a folder path for the output")
    if not target.exists():
        return
    names = _visible(target)
    if not names or overwrite:
        return
    found, _ = _ours(target)
    if found is None:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise OutputError(f"{target} is not empty and openhermes did not write it (it holds {shown}). "
                          f"Choose a new or empty folder, or pass --overwrite to write into it anyway "
                          f"(your files there are kept; only openhermes's own outputs are replaced).")
    if found != kind:
        raise OutputError(f"{target} holds an openhermes {found}, not a {kind}; choose another folder, "
                          f"or pass --overwrite to write the {kind} there (the {found}'s files are kept "
                          f"unless the {kind} has files of the same names)")


def claim_folder(target: Path, kind: str, overwrite: bool = False, entries: Iterable[str] = ()) -> None:
    """For outputs written piece by piece (a training run): check, create, and mark the folder,
    adding `entries` to what the marker says openhermes wrote there."""
    check_folder(target, kind, overwrite)
    target.mkdir(parents=True, exist_ok=True)
    found, old = _ours(target)
    write_marker(target, kind, (old if found == kind else set()) | set(entries))


def add_entries(target: Path, entries: Iterable[str]) -> None:
    """Record more entries in an already claimed folder's marker."""
    marker = read_marker(target)
    if marker is not None:
        write_marker(target, marker["kind"], set(marker["entries"]) | set(entries))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically where the kernel allows it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clean_stale_staging(target: Path) -> None:
    """Staging folders that a killed earlier run left next to this target."""
    prefix = f".{target.name}{STAGING_TAG}"
    for p in target.parent.glob(f"{prefix}*"):
        _remove(p)


@contextmanager
def folder_lock(target: Path, note_after_s: float = 5) -> Iterator[None]:
    """An exclusive lock on `target` for a writer that others may race to the same folder (a shared cache):
    filelock's fcntl lock, which NFS honours, in a file beside the folder. Says once on stderr when it waits."""
    import sys

    from filelock import FileLock, Timeout

    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f".{target.name}.lock"))
    try:
        lock.acquire(timeout=note_after_s)
    except Timeout:
        print(f"waiting for another process writing {target} (the lock {lock.lock_file})", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def staging_folder(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_TAG}", dir=target.parent))


def install_folder(staging: Path, target: Path, kind: str) -> None:
    """Move a finished staging folder into place. If the target holds only what openhermes wrote,
    the two are swapped in one step; otherwise our entries move in one by one and the rest stay."""
    entries = {p.name for p in staging.iterdir()} - {MARKER}
    write_marker(staging, kind, entries)
    if not target.exists():
        os.rename(staging, target)
        return
    found, old = _ours(target)
    foreign = set(_visible(target)) - (old if found is not None else set())
    if not foreign:
        if _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now the old folder
            return
        old_place = staging.with_name(staging.name + "-old")
        os.rename(target, old_place)
        os.rename(staging, target)
        shutil.rmtree(old_place, ignore_errors=True)
        return
    # A folder that also holds the user's files: replace our entries only.
    for name in sorted(entries):
        dest = target / name
        if dest.exists() or dest.is_symlink():
            _remove(dest)
        os.rename(staging / name, dest)
    for name in sorted(old - entries - foreign):
        _remove(target / name)
    write_marker(target, kind, entries)
    shutil.rmtree(staging, ignore_errors=True)


def folder_size(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def raise_if_no_space(e: BaseException, target: Path, written: int) -> None:
    """A full disk as one line naming the folder and the space (an OutputError); another error is left to the
    caller. Not every writer says ENOSPC: safetensors' Rust writer says "os error 28", and numpy's tofile (under
    gguf's writer) only "N requested and M written", with no errno: then the free space tells."""
    disk = shutil.disk_usage(target.parent)
    full = (isinstance(e, OSError) and e.errno == errno.ENOSPC or "os error 28" in str(e)
            or isinstance(e, OSError) and e.errno is None and disk.free < 2**20 and "written" in str(e))
    if full:
        raise OutputError(f"no space left on the device of {target.parent} ({_human(disk.total)} in all, "
                          f"{_human(disk.free)} free): {target.name} needs more than the {_human(written)} written "
                          "before it filled; nothing was left behind. Free some space or give another --out") from None


def _human(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def write_folder(target: str | Path, kind: str, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Write a whole output folder: `fill(staging)` writes the files, then they move into place."""
    target = Path(target)
    check_folder(target, kind, overwrite)
    staging = staging_folder(target)
    try:
        fill(staging)
        install_folder(staging, target, kind)
    except BaseException as e:
        written = folder_size(staging) if isinstance(e, Exception) else 0
        shutil.rmtree(staging, ignore_errors=True)
        raise_if_no_space(e, target, written)
        raise
    return target


def check_file(target: Path, is_ours: Callable[[Path], bool], what: str, overwrite: bool = False) -> None:
    """Raise OutputError unless `target` is missing or a file openhermes wrote (or `overwrite`)."""
    if target.is_dir():
        raise OutputError(f"{target} is a folder; give a file path for the {what}")
    if target.exists() and not overwrite and not is_ours(target):
        raise OutputError(f"{target} exists and openhermes did not write it; choose another path, or pass "
                          f"--overwrite to replace that file")


def write_file(target: str | Path, fill: Callable[[Path], None], is_ours: Callable[[Path], bool],
               what: str, overwrite: bool = False) -> Path:
    """Write one file next to `target` and rename it over; refuse to replace a file we did not write."""
    target = Path(target)
    check_file(target, is_ours, what, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(target)  # what a killed earlier run left (its partial file, a quantizer's f16)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}{STAGING_TAG}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fill(tmp)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, target)
    except BaseException as e:
        written = sum(p.stat().st_size for p in target.parent.glob(f"{tmp.name}*")) if isinstance(e, Exception) else 0
        _clean_stale_staging(target)  # the partial file and what fill put beside it
        raise_if_no_space(e, target, written)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
