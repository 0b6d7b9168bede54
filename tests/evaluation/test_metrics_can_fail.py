"""Every metric must be able to fail: degraded or mismatched inputs score clearly worse than real ones."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixart_lab.evaluation.clip_model import ClipImageFeatures, TensorFeatures
from pixart_lab.evaluation.evaluator_training import clip_embeddings, retrieval_recall_at_1
from pixart_lab.evaluation.metrics import clip_score, colour_shuffled, frechet_distance

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_fid_of_colour_shuffled_images_is_far_above_the_real_vs_real_floor(evaluator_corpus, trained_clip):
    # Blur needs the full evaluator (150 steps of CLIP do not yet separate sharp from blurry):
    # see test_the_embedded_evaluators_pass_their_validation.
    _, _, heldout, _ = evaluator_corpus
    features = ClipImageFeatures(*trained_clip)
    a, b = heldout[:200], heldout[200:400]
    floor = frechet_distance(b, a, features)
    assert frechet_distance(a, a, features) < 1e-3 < floor
    assert frechet_distance(b, colour_shuffled(a), features) > 5 * floor


def test_clip_score_of_mismatched_captions_is_below_matched_ones(evaluator_corpus, trained_clip):
    _, _, heldout, records = evaluator_corpus
    model, processor = trained_clip
    captions = [r.dense_caption for r in records]
    load = lambda: (TensorFeatures(model), processor)  # noqa: E731
    matched = clip_score(heldout, captions, load)
    mismatched = clip_score(heldout, captions[1:] + captions[:1], load)
    assert matched > mismatched + 5, (matched, mismatched)


def test_retrieval_beats_chance_among_fifty(evaluator_corpus, trained_clip):
    _, _, heldout, records = evaluator_corpus
    image_emb, text_emb = clip_embeddings(*trained_clip, heldout, [r.dense_caption for r in records])
    recall = retrieval_recall_at_1(image_emb, text_emb, pool=50)
    assert min(recall.values()) > 5 / 50, recall  # chance is 1/50


@pytest.mark.slow
def test_the_embedded_evaluators_pass_their_validation(tmp_path):
    """The train_evaluators stage as `dvc repro` runs it (default profile, ~7 min on 2 cores)."""
    out = subprocess.run(
        [sys.executable, "-m", "pixart_lab.cli.train_evaluators", f"paths.models_dir={tmp_path}/models",
         f"paths.metrics_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs", f"hydra.run.dir={tmp_path}/hydra",
         f"evaluators.tokenizer={REPO_ROOT}/models/text_encoder/tokenizer", f"paths.data_dir={REPO_ROOT}/data"],
        capture_output=True, text=True, timeout=1800, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    v = json.loads((tmp_path / "evaluators.json").read_text())
    assert min(v["clip"]["recall_at_1"].values()) > 0.8
    assert set(v["probe"]["valid_attributes"]) >= {"shape", "colour", "count", "position"}
    floor = v["fid"]["real_vs_real_floor"]
    assert v["fid"]["blurred_sigma_3.0"] > 3 * floor and v["fid"]["colour_shuffled"] > 10 * floor
    assert v["clip_score"]["matched"] > v["clip_score"]["mismatched"] + 30
    composition = v["compositional"]
    assert composition["real_images"]["overall"] > 0.95
    assert composition["shuffled_prompts"]["overall"] < composition["chance"]["overall"] + 0.05 < 0.2
