"""Dense captions for a user's images, written by a vision-language model (PixArt-alpha Sec. 2.4).

PixArt-alpha's text-image alignment learns from information-dense captions: it had LLaVA re-caption
SAM and its aesthetic data ("Describe this image and its style in a very detailed manner") instead of
training on sparse alt-text. :class:`Captioner` is any transformers image-text-to-text model (LLaVA,
BLIP-2, Florence-2, BLIP, a vision encoder-decoder, ...) with an optional prompt;
:func:`caption_folder` captions every image under a folder into ``name.txt`` beside it (the layout
``data=folder`` reads), in batches, resumably: each caption file is written atomically, images that
already have one are skipped, so a killed run re-run finishes the rest.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pixart_lab.data.readers import IMAGE_SUFFIXES, read_caption
from pixart_lab.data.records import SkipReport
from pixart_lab.utils.device import pick_device
from pixart_lab.utils.hub import download_hint, dtype_kwargs, load_pretrained
from pixart_lab.utils.io import atomic_write_bytes, write_json

log = logging.getLogger(__name__)

LLAVA = "llava-hf/llava-1.5-7b-hf"  # the captioner family PixArt-alpha used


class Captioner:
    """A transformers image-text-to-text model and its processor: PIL images in, one caption each out.

    ``prompt`` is the model's instruction (LLaVA: a chat turn with ``<image>``; Florence-2: a task token
    such as ``<MORE_DETAILED_CAPTION>``; BLIP / BLIP-2: an optional caption prefix, or None). A model
    that echoes its prompt has the echo removed. Generation is greedy unless ``num_beams`` > 1.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        prompt: str | None = None,
        max_new_tokens: int = 160,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        dtype: str | None = None,
        device: str | None = "auto",
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        def load(local_only: bool):
            processor = AutoProcessor.from_pretrained(model, local_files_only=local_only)
            network = AutoModelForImageTextToText.from_pretrained(model, local_files_only=local_only, **dtype_kwargs(dtype))
            return processor, network

        self.processor, self.model = load_pretrained("Captioner", model, download_hint(model, "captioner.model", LLAVA), load)
        self.device = pick_device(device)
        self.model.to(self.device).eval()
        self.prompt = prompt
        self.generation = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_beams=num_beams, do_sample=False)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if prompt and tokenizer is not None and not self.model.config.is_encoder_decoder:
            tokenizer.padding_side = "left"  # a decoder continues the prompt: pad before it, not after

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        text = {"text": [self.prompt] * len(images), "padding": True} if self.prompt else {}
        inputs = self.processor(images=list(images), return_tensors="pt", **text).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        output = self.model.generate(**inputs, **self.generation)
        captions = self.processor.batch_decode(output, skip_special_tokens=True)
        if self.prompt and "input_ids" in inputs:  # drop the prompt where the model repeats it
            prompts = self.processor.batch_decode(inputs["input_ids"], skip_special_tokens=True)
            captions = [c[len(p) :] if c.startswith(p) else c for c, p in zip(captions, prompts)]
        return [" ".join(c.split()) for c in captions]


def caption_path(image: Path) -> Path:
    """Where an image's caption lives: ``name.txt`` beside ``name.png`` (what ``FolderReader`` reads)."""
    return image.with_suffix(".txt")


def has_caption(image: Path) -> bool:
    try:
        read_caption(caption_path(image))
    except (OSError, ValueError):
        return False
    return True


def list_images(root: Path) -> list[Path]:
    """Every image under ``root`` (recursively, hidden folders excluded), sorted."""
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )  # fmt: skip


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def caption_folder(
    root: str | os.PathLike, captioner, batch_size: int = 8, overwrite: bool = False, progress: bool = True
) -> dict:
    """Caption every image under ``root`` that has no caption yet (all of them with ``overwrite``).

    ``captioner`` maps a list of PIL images to a list of captions. Unreadable images and empty
    captions are skipped and counted (``report``); nothing already written is touched unless
    ``overwrite``. Returns the counts and the skip report.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    images = list_images(root)
    todo = images if overwrite else [p for p in images if not has_caption(p)]
    report = SkipReport(source=str(root))
    start, written = time.perf_counter(), 0
    bar = tqdm(total=len(todo), desc=f"caption {root}", unit="img", disable=not progress)
    for batch in _batches(todo, batch_size):
        opened: list[tuple[Path, Image.Image]] = []
        for path in batch:
            try:
                opened.append((path, _open_rgb(path)))
            except (UnidentifiedImageError, OSError) as e:
                report.skip(str(path.relative_to(root)), f"unreadable image ({type(e).__name__})")
        captions = captioner([image for _, image in opened]) if opened else []
        for (path, _), caption in zip(opened, captions):
            if not caption.strip():
                report.skip(str(path.relative_to(root)), "the model wrote an empty caption")
                continue
            atomic_write_bytes(caption_path(path), (caption.strip() + "\n").encode())
            report.keep()
            written += 1
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - start
    return {
        "images": len(images),
        "already_captioned": len(images) - len(todo),
        "captioned": written,
        "skipped": report.total_skipped,
        "seconds": round(seconds, 1),
        "images_per_second": round(written / seconds, 2) if written else None,
        "report": report.as_dict(),
    }


def write_data_info(root: str | os.PathLike) -> list[Path]:
    """PixArt's ``data_info.json`` (``[{path, prompt, ratio, height, width}]``) in every folder under
    ``root`` that holds captioned images, paths relative to that folder (the ``data=pixart_info`` layout)."""
    root = Path(root)
    by_folder: dict[Path, list[dict]] = {}
    for image in list_images(root):
        if not has_caption(image):
            continue
        try:
            with Image.open(image) as opened:
                width, height = opened.size
        except (UnidentifiedImageError, OSError):
            continue
        entry = {"path": image.name, "prompt": read_caption(caption_path(image)), "ratio": height / width,
                 "height": height, "width": width}  # fmt: skip
        by_folder.setdefault(image.parent, []).append(entry)
    for folder, entries in by_folder.items():
        write_json(folder / "data_info.json", entries)
    return sorted(folder / "data_info.json" for folder in by_folder)
