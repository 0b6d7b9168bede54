"""The caption stage with a tiny BLIP built here: one caption per image, resumable, PixArt's layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from pixart_lab.cli.caption import caption
from pixart_lab.data.captioning import Captioner, caption_folder, write_data_info
from pixart_lab.data.readers import FolderReader, PixArtInfoReader

from tiny_captioner import WORDS, build_tiny_captioner

CONF = str(Path(__file__).resolve().parents[2] / "conf")


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    return build_tiny_captioner(tmp_path_factory.mktemp("captioner") / "blip")


@pytest.fixture(scope="module")
def captioner(tiny_blip) -> Captioner:
    return Captioner(tiny_blip, max_new_tokens=6, device="cpu")


def user_images(root: Path) -> list[Path]:
    """Seven images in train/ and heldout/, different sizes and colours; one already captioned by hand."""
    paths = []
    for i, (split, colour, size) in enumerate([("train", "red", (40, 30)), ("train", "blue", (64, 64)), ("train", "green", (20, 50)),
                                               ("train", "yellow", (33, 33)), ("train", "white", (80, 40)),
                                               ("heldout", "black", (30, 30)), ("heldout", "purple", (50, 25))]):  # fmt: skip
        path = root / split / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, colour).save(path)
        paths.append(path)
    (root / "train" / "img1.txt").write_text("a hand-written caption\n")
    return paths


def test_every_image_gets_one_caption_and_a_rerun_writes_nothing(captioner, tmp_path):
    paths = user_images(tmp_path)
    (tmp_path / "train" / "broken.png").write_bytes(b"not an image")
    summary = caption_folder(tmp_path, captioner, batch_size=3, progress=False)
    assert (summary["images"], summary["already_captioned"], summary["captioned"], summary["skipped"]) == (8, 1, 6, 1)
    assert summary["report"]["by_reason"] == {"unreadable image (UnidentifiedImageError)": 1}
    for path in paths:
        words = path.with_suffix(".txt").read_text().split()
        assert words and set(words) <= set(WORDS) | {"a", "hand-written", "caption"}
    assert (tmp_path / "train" / "img1.txt").read_text() == "a hand-written caption\n"  # never overwritten
    assert not list(tmp_path.rglob("*.tmp"))

    before = {p: p.with_suffix(".txt").read_text() for p in paths}
    again = caption_folder(tmp_path, captioner, batch_size=3, progress=False)
    assert (again["captioned"], again["already_captioned"]) == (0, 7)
    assert {p: p.with_suffix(".txt").read_text() for p in paths} == before


def test_captions_are_deterministic_per_image_whatever_the_batch(captioner, tmp_path):
    paths = user_images(tmp_path)
    images = [Image.open(p).convert("RGB") for p in paths]
    captions = captioner(images)
    assert captions == [captioner([image])[0] for image in images]
    assert len(set(captions)) >= 3  # the captions depend on the image


def test_a_killed_run_is_completed_by_a_rerun(captioner, tmp_path):
    paths = user_images(tmp_path)
    calls = []

    def dies_in_the_second_batch(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a kill between two batches leaves behind
        return captioner(images)

    with pytest.raises(KeyboardInterrupt):
        caption_folder(tmp_path, dies_in_the_second_batch, batch_size=2, progress=False)
    done = [p for p in paths if p.with_suffix(".txt").is_file()]
    assert len(done) == 1 + 2 and not list(tmp_path.rglob("*.tmp"))  # the hand-written one and the first batch
    summary = caption_folder(tmp_path, captioner, batch_size=2, progress=False)
    assert (summary["captioned"], summary["already_captioned"]) == (4, 3)
    assert all(p.with_suffix(".txt").read_text().strip() for p in paths)


def test_an_echoed_prompt_is_removed(tiny_blip, tmp_path):
    prompted = Captioner(tiny_blip, prompt="a photo of", max_new_tokens=4, device="cpu")
    image = Image.new("RGB", (32, 32), "red")
    plain = Captioner(tiny_blip, max_new_tokens=4, device="cpu")([image])[0]
    text = prompted([image])[0]
    assert not text.startswith("a photo of") and 1 <= len(text.split()) <= 4 and text != plain


def test_caption_stage_writes_both_layouts_that_the_readers_take(tiny_blip, tmp_path):
    paths = user_images(tmp_path / "mine")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("caption", ["data=folder", f"data.root={tmp_path}/mine", f"captioner.model={tiny_blip}",
                                  "captioner.prompt=null", "captioner.dtype=null", "captioner.max_new_tokens=5",
                                  "batch_size=4", "data_info=true", f"paths.metrics_dir={tmp_path}/metrics"])  # fmt: skip
    summary = caption(cfg)
    assert summary["captioned"] == 6 and json.loads((tmp_path / "metrics" / "caption.json").read_text())["images"] == 7
    records = FolderReader(tmp_path / "mine" / "train").records() + FolderReader(tmp_path / "mine" / "heldout").records()
    assert len(records) == len(paths)
    info = PixArtInfoReader(tmp_path / "mine" / "train" / "data_info.json").records()
    assert {r.key: r.dense_caption for r in info} == {r.key: r.dense_caption for r in records if r.key.startswith("img") and r.image_path.parent.name == "train"}
    assert summary["data_info"] == [str(tmp_path / "mine" / s / "data_info.json") for s in ("heldout", "train")]
    assert write_data_info(tmp_path / "mine") == [tmp_path / "mine" / s / "data_info.json" for s in ("heldout", "train")]
