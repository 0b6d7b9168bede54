"""Keeping the regenerated corpus and ``data.dvc`` in agreement, through DVC's own API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml


class CorpusMismatchError(RuntimeError):
    """The regenerated corpus does not hash to what the .dvc file records."""


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """DVC resolves targets and outputs against the current directory: run inside the repository."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def recorded_hashes(dvc_file: Path) -> list[str]:
    return [out.get("md5", "") for out in yaml.safe_load(dvc_file.read_text()).get("outs", [])]


def sync_with_dvc_file(dvc_file: str | Path, on_mismatch: str = "error") -> str:
    """Hash the workspace output of ``dvc_file`` with DVC, fill DVC's cache, compare with the record.

    Returns ``"clean"`` (already cached and equal), ``"cached"`` (equal; cache filled) or
    ``"updated"`` (different and ``on_mismatch == "update"``: the .dvc file now records the new data).
    Otherwise a difference raises ``CorpusMismatchError`` and the .dvc file is left as it was.
    """
    from dvc.repo import Repo

    dvc_file = Path(dvc_file).resolve()
    if not dvc_file.is_file():
        raise FileNotFoundError(f"{dvc_file} not found")
    recorded_text = dvc_file.read_text()
    expected = recorded_hashes(dvc_file)
    with working_directory(dvc_file.parent), Repo() as repo:
        target = os.path.relpath(dvc_file, repo.root_dir)
        if not repo.status(targets=[target]):
            return "clean"
        # `dvc commit` hashes the workspace and stores it in the cache; it rewrites the .dvc file
        # if the hash differs, which is how a difference is detected with DVC's own hashing.
        repo.commit(target, force=True)
    found = recorded_hashes(dvc_file)
    if found == expected:
        return "cached"
    if on_mismatch == "update":
        return "updated"
    dvc_file.write_text(recorded_text)
    raise CorpusMismatchError(
        f"the generated data hashes to {found}, but {dvc_file.name} records {expected}: the generator "
        "code, its configuration or a library (Pillow, numpy) changed. If intended, re-run with "
        "on_mismatch=update and commit the new .dvc file."
    )
