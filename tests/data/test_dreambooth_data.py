"""DreamBooth batches: subject rows beside class rows, from features cached by the project's machinery."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from pixart_lab.data.dreambooth import (
    CLASS_SPLIT,
    INSTANCE_SPLIT,
    DreamBoothDataModule,
    InstanceClassSampler,
    cache_features,
    class_prompt,
    generate_class_images,
    write_image_folder,
)


def test_sampler_puts_instances_first_and_visits_each_subject_image_equally():
    sampler = InstanceClassSampler(n_instance=6, n_class=12, instance_per_batch=4, class_per_batch=4, seed=0)
    first = list(sampler)
    assert len(sampler) == 3 and len(first) == 3
    assert all(all(i < 6 for i in b[:4]) and all(i >= 6 for i in b[4:]) for b in first)
    assert sorted(i for b in first for i in b[4:]) == list(range(6, 18))  # every class image once per epoch
    counts = Counter(i for b in first for i in b[:4])
    assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 6
    assert list(sampler) != first  # the next epoch is shuffled anew
    with pytest.raises(ValueError, match="class_per_batch=4 but only 3 class images"):
        InstanceClassSampler(6, 3, 4, 4)


def test_class_prompt_removes_the_identifier_only():
    assert class_prompt("a sharp image of a large sks circle in the centre", "sks") == "a sharp image of a large circle in the centre"
    with pytest.raises(ValueError, match="does not contain the identifier 'sks'"):
        class_prompt("a large red circle", "sks")


def test_class_images_are_generated_for_each_subject_caption_without_identifier(tmp_path):
    from pixart_lab.data.records import Record

    instance = [Record(f"s{i}", tmp_path / f"s{i}.png", f"a large sks circle in the {where}") for i, where in enumerate(("centre", "top left"))]
    asked = []

    def generate(prompts):
        asked.extend(prompts)
        return torch.randint(0, 256, (len(prompts), 3, 64, 64), dtype=torch.uint8)

    records = generate_class_images(instance, "sks", 3, generate, tmp_path / "class")
    assert asked == ["a large circle in the centre"] * 3 + ["a large circle in the top left"] * 3
    assert [r.dense_caption for r in records] == asked and records[0].key == "class_0000.png"


@pytest.fixture(scope="module")
def dreambooth_features(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path_factory):
    from pixart_lab.data.readers import PixArtInfoReader
    from pixart_lab.data.subject import EmbeddedSubject

    root = tmp_path_factory.mktemp("dreambooth")
    instance = EmbeddedSubject(root / "instance", [{"row": r, "col": c} for r, c in ((0, 0), (1, 1), (2, 2))], "sks", "circle").records()
    corpus = PixArtInfoReader(tiny_corpus / "train" / "data_info.json").records()[:8]
    from pixart_lab.data.transforms import load_images

    images, kept = load_images(corpus, 64, 64, progress=False)
    classes = write_image_folder(images, [r.dense_caption for r in kept], root / "class", "class")
    counts = cache_features({INSTANCE_SPLIT: instance, CLASS_SPLIT: classes}, root / "features", tiny_vae, tiny_text_encoder, 64)
    return root / "features", counts


def test_features_are_cached_per_split_and_batches_say_which_rows_are_the_subject(dreambooth_features):
    features, counts = dreambooth_features
    assert counts == {"instance": 3, "class": 8}
    data = DreamBoothDataModule(features, instance_per_batch=2, class_per_batch=4, seed=0)
    data.setup()
    batches = list(data.train_dataloader())
    assert len(batches) == 2 and data.batch_size == 6
    batch = batches[0]
    assert batch["latent_mean"].shape == (6, 4, 16, 16) and batch["caption_emb"].shape[0] == 6
    assert batch["instance"].tolist() == [True, True, False, False, False, False]
    for row, index in enumerate(batch["index"].tolist()):
        source = data.instance_set if row < 2 else data.class_set
        assert torch.equal(batch["latent_mean"][row], source[index]["latent_mean"])


def test_missing_features_name_the_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="DreamBooth feature manifest not found"):
        DreamBoothDataModule(tmp_path).setup()
