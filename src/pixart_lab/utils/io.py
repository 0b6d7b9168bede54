"""Atomic file writes: a reader never sees a half-written cache, checkpoint or metrics file."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_failure(target: Path, error: OSError) -> OSError:
    """``error`` restated for the user: the file that could not be written, why, and that the old one stands.

    ``OSError(errno, ...)`` keeps the subclass (``PermissionError`` for EACCES) and the errno (ENOSPC).
    """
    kept = f"the previous {target.name} is unchanged" if target.exists() else "nothing was written"
    return OSError(error.errno, f"cannot write {target}: {error.strerror or error}; {kept}")


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    A failed write (full disk, no permission) leaves ``target`` as it was and raises ``OSError``
    naming it.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise write_failure(target, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp_path, target)
    except OSError as e:
        raise write_failure(target, e) from e
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_stale_temporaries(target: str | os.PathLike) -> None:
    """Delete temporary files of ``target`` left by a killed writer (``atomic_path``'s ``.<name>.*.tmp``)."""
    target = Path(target)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically (sorted keys, so equal content gives equal bytes)."""
    atomic_write_bytes(target, (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode())


def atomic_save(target: str | os.PathLike, save: Callable[[Path], None]) -> None:
    """Call ``save(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        save(tmp)


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; it replaces ``target`` only if the block succeeds."""
    import shutil

    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.is_dir() and not target.exists():
        os.replace(old, target)  # a run killed between the two renames below: the previous folder is back
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as e:
        raise write_failure(target, e) from e
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as e:
        raise write_failure(target, e) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
