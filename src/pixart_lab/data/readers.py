"""Readers that turn a user's data (or the embedded corpus) into ``Record`` lists.

Three layouts, one interface (``records()`` plus a ``SkipReport``):
- ``FolderReader``: images with same-named ``.txt`` captions (the common fine-tuning layout);
- ``PixArtInfoReader``: PixArt's ``data_info.json`` (list of {path, prompt, ratio, height, width});
  the embedded corpus is written in this layout, with extra keys;
- ``ClassFolderReader``: an ImageNet-style ``root/<class>/<image>`` tree for stage 1.
Unusable entries are skipped with a counted reason, never raised.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pixart_lab.data.images import BadImageError, ImageLimits, ImageSource, open_image
from pixart_lab.data.records import Record, SkipReport

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def read_caption(path: Path) -> str:
    """Read a caption file as UTF-8 and collapse whitespace; raise ``ValueError`` with the reason."""
    return decode_caption(path.read_bytes())


def decode_caption(data: bytes) -> str:
    """A caption's bytes as UTF-8 text, whitespace collapsed; raise ``ValueError`` with the reason."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"caption is not valid UTF-8 (byte {e.start})") from e
    text = " ".join(text.split())
    if not text:
        raise ValueError("empty caption")
    return text


def probe_size(path: ImageSource, limits: ImageLimits = ImageLimits(), data: bytes | None = None) -> tuple[int, int]:
    """(height, width) from the image header (of ``data`` when given: ``path``'s bytes, already read);
    raise ``ValueError`` naming why it is unusable."""
    try:
        with open_image(path, limits, data) as im:
            return im.height, im.width
    except BadImageError as e:
        raise ValueError(e.reason) from e


class FolderReader:
    """``root/**/name.{png,jpg,...}`` with captions in ``root/**/name.txt``."""

    def __init__(self, root: str | Path, limits: ImageLimits = ImageLimits()):
        self.root, self.limits = Path(root), limits
        self.report = SkipReport(source=str(self.root))
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")

    def records(self) -> list[Record]:
        out = []
        for image_path in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            key = str(image_path.relative_to(self.root))
            caption_path = image_path.with_suffix(".txt")
            try:
                if not caption_path.is_file():
                    raise ValueError("missing caption file")
                caption = read_caption(caption_path)
                height, width = probe_size(image_path, self.limits)
            except ValueError as e:
                self.report.skip(key, str(e))
                continue
            self.report.keep()
            out.append(Record(key=key, image_path=image_path, dense_caption=caption, height=height, width=width))
        return out


class PixArtInfoReader:
    """PixArt's ``data_info.json``; image paths are relative to ``image_root`` (default: the json's folder)."""

    def __init__(
        self, info_path: str | Path, image_root: str | Path | None = None, key_prefix: str = "", limits: ImageLimits = ImageLimits()
    ):
        self.info_path, self.limits = Path(info_path), limits
        if not self.info_path.is_file():
            raise FileNotFoundError(f"data_info.json not found: {self.info_path}")
        self.image_root = Path(image_root) if image_root is not None else self.info_path.parent
        self.key_prefix = key_prefix
        self.report = SkipReport(source=str(self.info_path))

    def records(self) -> list[Record]:
        try:
            entries = json.loads(self.info_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.info_path}: not a valid data_info.json ({e})") from e
        if not isinstance(entries, list):
            raise ValueError(f"{self.info_path}: expected a JSON list of entries, found {type(entries).__name__}")
        out = []
        for i, entry in enumerate(entries):
            key = self.key_prefix + str(entry.get("path", f"#{i}")) if isinstance(entry, dict) else f"#{i}"
            try:
                out.append(self._record(entry, key))
            except ValueError as e:
                self.report.skip(key, str(e))
                continue
            self.report.keep()
        return out

    def _record(self, entry: Any, key: str) -> Record:
        if not isinstance(entry, dict) or "path" not in entry:
            raise ValueError("entry without 'path'")
        prompt = " ".join(str(entry.get("prompt") or "").split())
        if not prompt:
            raise ValueError("empty caption")
        image_path = self.image_root / entry["path"]
        if "height" in entry and "width" in entry:
            if not image_path.is_file():
                raise ValueError("missing image file")
            height, width = int(entry["height"]), int(entry["width"])
        else:
            height, width = probe_size(image_path, self.limits)
        return Record(
            key=key,
            image_path=image_path,
            dense_caption=prompt,
            sparse_caption=entry.get("sparse_prompt"),
            label=entry.get("label"),
            aesthetic=entry.get("aesthetic"),
            height=height,
            width=width,
            scene=entry.get("scene"),
        )


class ClassFolderReader:
    """ImageNet-style ``root/<class_name>/<image>``; labels are indices of the sorted class names."""

    def __init__(self, root: str | Path, caption_template: str = "{name}", limits: ImageLimits = ImageLimits()):
        self.root, self.limits = Path(root), limits
        if not self.root.is_dir():
            raise FileNotFoundError(f"class-folder root not found: {self.root}")
        self.caption_template = caption_template
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root}: no class sub-folders found")
        self.report = SkipReport(source=str(self.root))

    def records(self) -> list[Record]:
        out = []
        for label, name in enumerate(self.classes):
            for image_path in sorted((self.root / name).iterdir()):
                if image_path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                key = f"{name}/{image_path.name}"
                try:
                    height, width = probe_size(image_path, self.limits)
                except ValueError as e:
                    self.report.skip(key, str(e))
                    continue
                self.report.keep()
                caption = self.caption_template.format(name=name.replace("_", " "))
                out.append(Record(key, image_path, caption, label=label, height=height, width=width))
        return out
