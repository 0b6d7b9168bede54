import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixart_lab.data.buckets import aspect_ratio_table
from pixart_lab.data.corpus import (
    DATA_INFO_KEYS,
    SPLITS,
    TRAINING_SPLITS,
    CorpusConfig,
    CorpusError,
    generate_corpus,
)
from pixart_lab.data.scene import (
    COLOURS,
    Scene,
    class_label,
    class_name,
    dense_caption,
    reserved_for_evaluation,
    scene_signature,
)

# 40 images; chunksize 4 so that the two-worker run really interleaves chunks across processes.
TINY = {"n_train": 20, "n_heldout": 8, "n_aesthetic": 12, "chunksize": 4}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_info(root: Path, split: str) -> list[dict]:
    return json.loads((root / split / "data_info.json").read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "one_worker"
    summary = generate_corpus(root, CorpusConfig(workers=1, **TINY), progress=False)
    assert summary["counts"] == {"train": 20, "heldout": 8, "aesthetic": 12}
    assert summary["rendered"] == 40 and summary["reused"] == 0
    return root


def test_bytes_do_not_depend_on_worker_count(corpus, tmp_path):
    generate_corpus(tmp_path / "two", CorpusConfig(workers=2, **TINY), progress=False)
    one, two = tree_bytes(corpus), tree_bytes(tmp_path / "two")
    assert len([k for k in one if k.endswith(".png")]) == 40
    assert one.keys() == two.keys()
    assert [k for k in one if one[k] != two[k]] == []


def test_layout_and_data_info_entries(corpus):
    for split in SPLITS:
        info = load_info(corpus, split)
        assert [e["path"] for e in info] == [f"images/{i:06d}.png" for i in range(len(info))]
        for e in info:
            assert tuple(sorted(e)) == tuple(sorted(DATA_INFO_KEYS))
            with Image.open(corpus / split / e["path"]) as image:
                assert image.mode == "RGB" and image.size == (e["width"], e["height"])
            scene = Scene.from_dict(e["scene"])
            assert (scene.width, scene.height) == (e["width"], e["height"])
            assert e["ratio"] == e["height"] / e["width"]
            # the template's words or free ones, never a caption reserved for evaluation in a training split
            assert e["prompt"] == dense_caption(scene) or all(f"{o.colour} {o.shape}" in e["prompt"] for o in scene.objects)
            assert not (split in TRAINING_SPLITS and reserved_for_evaluation(scene)), e["prompt"]
            assert e["signature"] == scene_signature(scene)
            assert e["label"] == class_label(scene) and e["class_name"] == class_name(e["label"])
            assert e["quality"] == scene.quality
    assert {(e["height"], e["width"]) for e in load_info(corpus, "train")} == {(48, 48)}
    assert {(e["height"], e["width"]) for e in load_info(corpus, "heldout")} == {(48, 48)}


def test_aesthetic_split_uses_several_buckets_and_scores_clean_highest(corpus):
    info = load_info(corpus, "aesthetic")
    buckets = set(aspect_ratio_table(96, CorpusConfig().aspect_ratios, 8).values())
    sizes = {(e["height"], e["width"]) for e in info}
    assert sizes <= buckets and len(sizes) >= 3
    everything = info + load_info(corpus, "train")
    clean = [e["aesthetic"] for e in everything if e["quality"] == "clean"]
    degraded = [e["aesthetic"] for e in everything if e["quality"] != "clean"]
    assert clean and degraded and min(clean) > max(degraded)


def test_images_show_the_captioned_colour(corpus):
    checked = 0
    entries = [(split, e) for split in ("train", "aesthetic") for e in load_info(corpus, split)]
    for split, e in entries:
        if e["quality"] != "clean":
            continue
        pixels = np.asarray(Image.open(corpus / split / e["path"])).astype(int)
        for o in e["scene"]["objects"]:
            if o["size"] == "large" and o["shape"] in ("circle", "square"):
                x, y = round(o["cx"] * e["width"] - 0.5), round(o["cy"] * e["height"] - 0.5)
                assert np.abs(pixels[y, x] - COLOURS[o["colour"]]).max() <= 10, (e["path"], o)
                checked += 1
    assert checked >= 3


def test_splits_are_distinct_streams(corpus):
    train, heldout = load_info(corpus, "train"), load_info(corpus, "heldout")
    assert [e["prompt"] for e in train[:8]] != [e["prompt"] for e in heldout]


def test_manifest_is_portable_and_complete(corpus):
    text = (corpus / "manifest.json").read_text()
    manifest = json.loads(text)
    assert str(corpus) not in text and "workers" not in text
    assert manifest["counts"] == {"train": 20, "heldout": 8, "aesthetic": 12}
    assert manifest["config"]["seed"] == 0 and manifest["vocabulary"]["num_classes"] == 24


def test_rerun_renders_only_missing_files_and_cleans_leftovers(corpus, tmp_path):
    root = tmp_path / "resume"
    generate_corpus(root, CorpusConfig(workers=1, **TINY), progress=False)
    (root / "train/images/000003.png").unlink()
    (root / "aesthetic/images/000011.png").unlink()
    (root / "train/images/.000005.png.abc.tmp").write_bytes(b"half a png")  # a killed write
    (root / "heldout/images/000099.png").write_bytes(b"beyond n_heldout")  # from a bigger run
    summary = generate_corpus(root, CorpusConfig(workers=1, **TINY), progress=False)
    assert summary["rendered"] == 2 and summary["reused"] == 38
    assert tree_bytes(root) == tree_bytes(corpus)


def test_changed_content_config_is_refused(corpus, tmp_path):
    root = tmp_path / "changed"
    generate_corpus(root, CorpusConfig(workers=1, **TINY), progress=False)
    with pytest.raises(CorpusError, match="seed: 0 -> 1"):
        generate_corpus(root, CorpusConfig(workers=1, **{**TINY, "seed": 1}), progress=False)
    # Counts may change: a smaller corpus is a prefix of the bigger one.
    generate_corpus(root, CorpusConfig(workers=1, **{**TINY, "n_train": 10}), progress=False)
    assert load_info(root, "train") == load_info(corpus, "train")[:10]
    assert len(list((root / "train/images").iterdir())) == 10


def test_interrupted_run_leaves_only_whole_files_and_resumes(corpus, tmp_path, monkeypatch):
    import pixart_lab.data.corpus as corpus_module

    real_render, calls = corpus_module.render_scene, []

    def render_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) > 15:
            raise KeyboardInterrupt  # stands in for a kill in the middle of the run
        return real_render(*args, **kwargs)

    monkeypatch.setattr(corpus_module, "render_scene", render_then_die)
    root = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(root, CorpusConfig(workers=1, **TINY), progress=False)
    assert not (root / "manifest.json").exists()
    written = tree_bytes(root)
    assert len(written) == 15 and all(written[k] == tree_bytes(corpus)[k] for k in written)

    monkeypatch.setattr(corpus_module, "render_scene", real_render)
    summary = generate_corpus(root, CorpusConfig(workers=1, **TINY), progress=False)
    assert summary["rendered"] == 25
    assert tree_bytes(root) == tree_bytes(corpus)


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="n_train|train"):
        CorpusConfig(n_train=-1)
    with pytest.raises(ValueError, match="supersample"):
        CorpusConfig(supersample=0)
