"""WebDataset tar shards as img2dataset writes them: ``{key}.jpg`` (or png / webp), ``{key}.txt``
(the caption) and ``{key}.json`` (metadata) per sample, consecutive in uncompressed ``.tar`` files.

Shards are named by local paths, globs, brace ranges (``shards/{00000..00099}.tar``), fsspec URLs
(``s3://bucket/{00000..00099}.tar``, ``https://...``) or ``pipe:`` commands whose stdout is the tar
(``pipe:aws s3 cp s3://bucket/00000.tar -``), as WebDataset spells them. Listing streams each shard
once, reading every caption and image header; a record's image stays in its shard as a
:class:`TarMember` (offset and size), read in place when features are extracted: nothing is
extracted to disk. Unusable samples are skipped with a counted reason, as by the other readers; a
shard that is damaged part-way keeps the samples before the damage and counts the rest as one skip.
"""

from __future__ import annotations

import atexit
import glob
import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec
from tqdm import tqdm

from pixart_lab.data.images import ImageLimits
from pixart_lab.data.readers import decode_caption, probe_size
from pixart_lab.data.records import Record, SkipReport

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard notation: ``{00000..00003}`` (zero-padded range) and ``{a,b}`` alternatives."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    if ".." in body:
        first, last = body.split("..", 1)
        if not (first.isdigit() and last.isdigit()):
            raise ValueError(f"{pattern}: a brace range needs two integers, found {{{body}}}")
        width = len(first)
        options = [f"{i:0{width}d}" for i in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def expand_shards(urls: str | list[str]) -> list[str]:
    """Every shard that ``urls`` names, in order; local globs are expanded and missing local files refused."""
    shards = []
    for pattern in [urls] if isinstance(urls, str) else list(urls):
        for url in expand_braces(str(pattern)):
            if is_remote(url):
                shards.append(url)
            elif glob.has_magic(url):
                matches = sorted(glob.glob(url))
                if not matches:
                    raise FileNotFoundError(f"no tar shard matches {url}")
                shards.extend(matches)
            elif not Path(url).is_file():
                raise FileNotFoundError(f"tar shard not found: {url}")
            else:
                shards.append(url)
    if not shards:
        raise ValueError(f"no tar shards named by {urls!r}")
    return shards


@contextmanager
def open_stream(url: str) -> Iterator[IO[bytes]]:
    """A shard's bytes as a stream: a local file, an fsspec URL, or the stdout of a ``pipe:`` command."""
    if not url.startswith("pipe:"):
        with fsspec.open(url, "rb") as f:
            yield f
        return
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty command cannot block on it
        process = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE, stderr=errors)
        try:
            yield process.stdout
        finally:
            process.stdout.close()
            status = process.wait()
            if status != 0:
                errors.seek(0)
                message = errors.read().decode(errors="replace").strip()[-300:]
                raise OSError(f"{url}: command exited with status {status}: {message}")


class _SpooledPipe:
    """The last ``pipe:`` shard read in place, spooled to one temporary file: extraction reads a
    shard's members in order, so each command runs about once per shard and bucket."""

    url: str | None = None
    path: str | None = None

    @classmethod
    def local_copy(cls, url: str) -> str:
        if cls.url != url:
            cls.clear()
            fd, path = tempfile.mkstemp(prefix="pixart_lab-shard-", suffix=".tar")
            with os.fdopen(fd, "wb") as out, open_stream(url) as stream:
                while chunk := stream.read(1 << 20):
                    out.write(chunk)
            cls.url, cls.path = url, path
        return cls.path

    @classmethod
    def clear(cls) -> None:
        if cls.path is not None:
            Path(cls.path).unlink(missing_ok=True)
        cls.url = cls.path = None


atexit.register(_SpooledPipe.clear)


@dataclass(frozen=True)
class TarMember:
    """An image inside a tar shard: its shard (path, URL or ``pipe:``), member name, data offset and size."""

    shard: str
    name: str
    offset: int
    size: int

    def read_bytes(self) -> bytes:
        """The member's bytes (a ranged read: local seek, or an fsspec range request); raises ``OSError``."""
        url = _SpooledPipe.local_copy(self.shard) if self.shard.startswith("pipe:") else self.shard
        with fsspec.open(url, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"truncated shard (read {len(data)} of {self.size} bytes)")
        return data

    def __str__(self) -> str:
        return f"{self.shard}#{self.name}"


@dataclass
class Sample:
    """One sample's members as the tar lists them: extension -> (tar header, bytes)."""

    key: str
    members: dict[str, tuple[tarfile.TarInfo, bytes]]


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the name up to the first dot of its last part, the rest the extension."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


class _StrictTarInfo(tarfile.TarInfo):
    """Headers that refuse damage: ``tarfile`` ends an archive silently at an invalid or truncated header
    after the first, which would drop the rest of a shard without a word."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as e:
            raise tarfile.SubsequentHeaderError(f"{e} at byte {tar.offset}") from None


def iter_samples(url: str) -> Iterator[Sample]:
    """The samples of one shard, in order (consecutive members sharing a key); a damaged shard raises
    ``tarfile.TarError`` or ``OSError`` after the samples before the damage."""
    with open_stream(url) as stream, tarfile.open(fileobj=stream, mode="r|", tarinfo=_StrictTarInfo) as tar:
        current: Sample | None = None
        for info in tar:
            tar.members = []  # a stream is read once: keep no list of every header
            if not info.isfile():
                continue
            key, extension = split_member_name(info.name)
            data = tar.extractfile(info).read()
            if len(data) != info.size:
                raise tarfile.ReadError(f"member {info.name} truncated (read {len(data)} of {info.size} bytes)")
            if current is not None and current.key != key:
                yield current
                current = None
            current = current or Sample(key, {})
            current.members[extension] = (info, data)
        if current is not None:
            yield current


class WebDatasetReader:
    """img2dataset / WebDataset tar shards; captions from ``.txt`` (else the json's ``caption``), and
    ``label`` / ``aesthetic`` from the json where present."""

    def __init__(
        self, urls: str | list[str], key_prefix: str = "", caption_key: str = "caption", limits: ImageLimits = ImageLimits()
    ):
        self.shards = expand_shards(urls)
        self.key_prefix, self.caption_key, self.limits = key_prefix, caption_key, limits
        self.report = SkipReport(source=str(urls))

    def records(self) -> list[Record]:
        out = []
        for url in tqdm(self.shards, desc="read shards", unit="shard", mininterval=2, disable=len(self.shards) < 2):
            samples = iter_samples(url)
            kept_before = len(out)
            try:
                for sample in samples:
                    key = self.key_prefix + sample.key
                    try:
                        out.append(self._record(url, key, sample))
                    except ValueError as e:
                        self.report.skip(key, str(e))
                        continue
                    self.report.keep()
            except (tarfile.TarError, OSError, EOFError) as e:
                # The key names the shard, the samples kept before the damage and the error.
                where = f"{url} (after {len(out) - kept_before} samples kept: {e})"
                self.report.skip(where, f"damaged tar shard, its remaining samples skipped ({type(e).__name__})")
        return out

    def _record(self, url: str, key: str, sample: Sample) -> Record:
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in sample.members), None)
        if image_ext is None:
            raise ValueError(f"no image member ({', '.join(IMAGE_EXTENSIONS)})")
        meta = self._metadata(sample)
        if "txt" in sample.members:
            caption = decode_caption(sample.members["txt"][1])
        elif isinstance(meta.get(self.caption_key), str):
            caption = decode_caption(meta[self.caption_key].encode())
        else:
            raise ValueError("missing caption (.txt member or json 'caption')")
        info, data = sample.members[image_ext]
        member = TarMember(url, info.name, info.offset_data, info.size)
        height, width = probe_size(member, self.limits, data)
        label, aesthetic = meta.get("label"), meta.get("aesthetic")
        return Record(
            key=key,
            image_path=member,
            dense_caption=caption,
            label=int(label) if isinstance(label, int) else None,
            aesthetic=float(aesthetic) if isinstance(aesthetic, (int, float)) else None,
            height=height,
            width=width,
        )

    @staticmethod
    def _metadata(sample: Sample) -> dict[str, Any]:
        if "json" not in sample.members:
            return {}
        try:
            meta = json.loads(sample.members["json"][1].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"unreadable json metadata ({type(e).__name__})") from e
        if not isinstance(meta, dict):
            raise ValueError(f"json metadata is not an object (found {type(meta).__name__})")
        return meta


def write_shard(path: str | Path, samples: list[dict[str, bytes]], keys: list[str] | None = None) -> Path:
    """Write ``samples`` ({extension: bytes}) as an img2dataset-style tar (keys ``000000000`` on):
    test fixtures and the benchmark's synthetic shards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = keys or [f"{i:09d}" for i in range(len(samples))]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, sample in zip(keys, samples):
            for extension, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, fileobj=io.BytesIO(data))
    return path

