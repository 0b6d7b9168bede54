"""Span corruption matches T5's closed-form span statistics and is exactly invertible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixart_lab.models.span_corruption import (
    collate_span_batch,
    num_noise_spans,
    random_spans_noise_mask,
    span_corrupt,
    uncorrupt,
)

SENTINELS = list(range(1099, 999, -1))  # <extra_id_0> .. <extra_id_99>, highest id first as in T5
EOS = 1


def spans(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask & ~np.concatenate([[False], mask[:-1]])))


@pytest.mark.parametrize("free_ends", [False, True])
def test_noise_tokens_and_spans_match_closed_form(free_ends):
    rng = np.random.default_rng(0)
    for length in range(2, 121):
        n_noise, n_spans = num_noise_spans(length, 0.15, 3.0)
        assert n_noise == min(max(round(length * 0.15), 1), length - 1)
        for _ in range(5):
            mask = random_spans_noise_mask(length, 0.15, 3.0, rng, free_ends=free_ends)
            assert mask.shape == (length,) and mask.dtype == bool
            assert mask.sum() == n_noise
            assert spans(mask) == n_spans


def test_noise_fraction_and_mean_span_length():
    rng = np.random.default_rng(1)
    masks = [random_spans_noise_mask(120, 0.15, 3.0, rng) for _ in range(200)]
    assert np.mean([m.mean() for m in masks]) == pytest.approx(0.15, abs=0.001)  # 18 of 120 exactly
    mean_span = sum(m.sum() for m in masks) / sum(spans(m) for m in masks)
    assert mean_span == pytest.approx(3.0, abs=0.01)  # 18 tokens in 6 spans


def test_t5_layout_starts_kept_and_ends_noisy_free_ends_reach_everywhere():
    rng = np.random.default_rng(2)
    t5 = np.stack([random_spans_noise_mask(20, 0.15, 3.0, rng) for _ in range(500)])
    free = np.stack([random_spans_noise_mask(20, 0.15, 3.0, rng, free_ends=True) for _ in range(2000)])
    assert not t5[:, 0].any() and t5[:, -1].all()
    assert t5[:, 5:15].sum() == 0  # one 3-token span, always the last three tokens
    rate = free.mean(axis=0)
    assert rate[0] > 0.02 and rate[-1] > 0.02 and (rate[3:17] > 0.1).all()


def test_span_corrupt_inverts_exactly_and_counts_sentinels():
    rng = np.random.default_rng(3)
    for length in [1, 2, 3, 7, 19, 40, 119]:
        ids = list(rng.integers(3, 900, size=length)) + [EOS]
        inputs, targets = span_corrupt(ids, SENTINELS, EOS, rng)
        n_spans = sum(t in SENTINELS for t in inputs)
        assert n_spans == num_noise_spans(length)[1]
        assert [t for t in inputs if t in SENTINELS] == SENTINELS[:n_spans]
        assert [t for t in targets if t in SENTINELS] == SENTINELS[:n_spans]
        assert inputs[-1] == EOS and targets[-1] == EOS
        assert len(inputs) + len(targets) == length + 2 * n_spans + 2
        assert uncorrupt(inputs, targets, SENTINELS, EOS) == ids[:-1]


def test_span_corrupt_matches_the_paper_example_format(monkeypatch):
    # Raffel et al. (2020), Figure 2: mask . X X . . X . over a b c d e f g
    from pixart_lab.models import span_corruption

    mask = np.array([0, 1, 1, 0, 0, 1, 0], dtype=bool)
    monkeypatch.setattr(span_corruption, "random_spans_noise_mask", lambda *args, **kwargs: mask)
    inputs, targets = span_corrupt([10, 11, 12, 13, 14, 15, 16, EOS], SENTINELS, EOS, np.random.default_rng(0))
    assert inputs == [10, 1099, 13, 14, 1098, 16, EOS]
    assert targets == [1099, 11, 12, 1098, 15, EOS]


def test_deterministic_for_a_seeded_rng():
    ids = list(range(3, 60)) + [EOS]
    a = [span_corrupt(ids, SENTINELS, EOS, np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(7)
    draws = {tuple(span_corrupt(ids, SENTINELS, EOS, rng)[0]) for _ in range(20)}
    assert len(draws) > 10


def test_too_few_sentinels_is_an_error():
    with pytest.raises(ValueError, match="sentinels"):
        span_corrupt(list(range(3, 103)), SENTINELS[:2], EOS, np.random.default_rng(0))


def test_collate_pads_inputs_with_pad_and_labels_with_ignore_index():
    batch = collate_span_batch([([5, 1099, 7, 1], [1099, 6, 1]), ([1099, 1], [1099, 9, 8, 1])], pad_id=0)
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 1099, 7, 1], [1099, 1, 0, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[1099, 6, 1, -100], [1099, 9, 8, 1]]))
    assert all(t.dtype == torch.long for t in batch.values())
