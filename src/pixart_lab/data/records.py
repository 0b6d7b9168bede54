"""The common currency of every data source: a captioned image record, and the skip report."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class ImageMember(Protocol):
    """An image stored inside a larger file (a member of a tar shard): read whole on demand, named by
    ``str()`` in reports."""

    def read_bytes(self) -> bytes: ...


@dataclass(frozen=True)
class Record:
    """One training example as any reader yields it.

    ``dense_caption`` is the information-dense caption (PixArt's VLM caption); ``sparse_caption``
    an alt-text-like one where the source has it. ``label`` is the class for stage 1,
    ``aesthetic`` the score used to pick the stage-3 subset, ``scene`` the scene graph (embedded
    corpus only) used by the evaluators. ``image_path`` is a file, or a member of a shard (WebDataset
    tars) that is read in place rather than extracted.
    """

    key: str
    image_path: Path | ImageMember
    dense_caption: str
    sparse_caption: str | None = None
    label: int | None = None
    aesthetic: float | None = None
    height: int | None = None
    width: int | None = None
    scene: dict[str, Any] | None = None


@dataclass
class SkipReport:
    """The data report: skipped inputs by reason and kept ones converted on the way (CMYK, 16 bit,
    transparency, EXIF rotation, truncated captions) by conversion, each with a few example keys.
    Nothing is lost or changed silently."""

    source: str = ""
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5
    converted: Counter = field(default_factory=Counter)
    conversion_examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, key: str, reason: str) -> None:
        """Record that ``key`` was skipped because of ``reason`` and log it with the running count."""
        self.skipped[reason] += 1
        self._example(self.examples, reason, key)
        log.warning("%s: %s; skipped (%d so far)", key, reason, self.total_skipped)

    def convert(self, key: str, what: str) -> None:
        """Record that ``key`` was kept after conversion ``what`` (logged at INFO)."""
        self.converted[what] += 1
        self._example(self.conversion_examples, what, key)
        log.info("%s: %s", key, what)

    def _example(self, examples: dict[str, list[str]], reason: str, key: str) -> None:
        keys = examples.setdefault(reason, [])
        if len(keys) < self.max_examples:
            keys.append(key)

    def keep(self) -> None:
        self.kept += 1

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kept": self.kept,
            "skipped": self.total_skipped,
            "by_reason": dict(sorted(self.skipped.items())),
            "examples": self.examples,
            "converted": dict(sorted(self.converted.items())),
            "conversion_examples": self.conversion_examples,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkipReport:
        """The report ``as_dict`` wrote (counts exact, examples as kept)."""
        return cls(
            source=data.get("source", ""),
            kept=data.get("kept", 0),
            skipped=Counter(data.get("by_reason", {})),
            examples={k: list(v) for k, v in data.get("examples", {}).items()},
            converted=Counter(data.get("converted", {})),
            conversion_examples={k: list(v) for k, v in data.get("conversion_examples", {}).items()},
        )

    def write(self, path: str | Path) -> None:
        from pixart_lab.utils.io import write_json

        write_json(path, self.as_dict())

    def merge(self, other: SkipReport) -> None:
        self.kept += other.kept
        self.skipped.update(other.skipped)
        self.converted.update(other.converted)
        for mine_by_reason, theirs_by_reason in ((self.examples, other.examples), (self.conversion_examples, other.conversion_examples)):
            for reason, keys in theirs_by_reason.items():
                for key in keys:
                    self._example(mine_by_reason, reason, key)

    def __str__(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)


class RecordSource(Protocol):
    """What every reader provides: an ordered, deterministic stream of records plus a skip report."""

    report: SkipReport

    def records(self) -> list[Record]: ...
