import pytest
import torch
from torchmetrics.multimodal.clip_score import CLIPScore

from pixart_lab.evaluation.clip_model import (
    ClipImageFeatures,
    EvaluatorMissingError,
    build_clip,
    clip_score_model,
    load_clip,
    pixel_values,
    save_clip,
)


@pytest.fixture(scope="module")
def tiny_clip(tiny_text_encoder):
    torch.manual_seed(0)
    return build_clip(tiny_text_encoder.tokenizer, image_size=32, patch_size=8, width=32, layers=1, heads=2, projection_dim=16)


def test_batched_pixel_values_equal_the_processor_on_same_size_images(tiny_clip):
    _, processor = tiny_clip
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    expected = processor(images=list(images), return_tensors="pt").pixel_values
    torch.testing.assert_close(pixel_values(processor, images), expected, atol=1e-5, rtol=0)
    # A wide image is resized whole (no centre crop), so its left third stays in the left third.
    wide = torch.zeros(1, 3, 32, 96, dtype=torch.uint8)
    wide[..., :32] = 255
    left = pixel_values(processor, wide)[0, 0]
    assert left[:, :8].mean() > left[:, -8:].mean() + 2


def test_clip_score_through_torchmetrics_matches_the_cosine(tiny_clip, tmp_path):
    model, processor = tiny_clip
    save_clip(model, processor, tmp_path / "clip")
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    texts = ["a sharp image of a red circle", "blue square", "two large green stars"]
    metric = CLIPScore(model_name_or_path=clip_score_model(tmp_path / "clip"))
    metric.update(list(images), texts)
    reloaded, proc = load_clip(tmp_path / "clip")
    with torch.no_grad():
        img = reloaded.get_image_features(pixel_values=pixel_values(proc, images)).pooler_output
        tokens = proc.tokenizer(texts, padding=True, return_tensors="pt")
        txt = reloaded.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
    cosine = torch.nn.functional.cosine_similarity(img, txt)
    expected = (100 * cosine).mean().clamp(min=0)  # torchmetrics clips the mean, not each score
    torch.testing.assert_close(metric.compute(), expected, atol=1e-3, rtol=0)


def test_image_features_are_the_projection_of_the_image_tower(tiny_clip):
    model, processor = tiny_clip
    features = ClipImageFeatures(model, processor)
    out = features(torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8))
    assert out.shape == (5, 16) and features.num_features == 16


def test_missing_clip_names_the_path_and_the_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EvaluatorMissingError) as err:
        load_clip(tmp_path / "nowhere" / "clip")
    assert str(err.value) == (
        f"CLIP evaluator '{tmp_path / 'nowhere' / 'clip'}' is not available: no such file or folder. Check eval.clip, "
        "or download the weights once where there is network access (`hf download openai/clip-vit-large-patch14`) "
        "and set eval.clip to the downloaded folder. For the embedded CLIP, run the train_evaluators stage."
    )
