"""T5's span-corruption pre-training objective, as pure functions.

Raffel et al. (2020), "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", Section 3.3.4 ("Corrupting Spans") and the final objective of Section 3.7: a
fraction ``noise_density`` = 0.15 of the tokens is dropped in spans of mean length
``mean_noise_span_length`` = 3; each dropped span is replaced in the input by one sentinel
``<extra_id_k>`` and the target lists, for each span, its sentinel followed by the dropped tokens
(Figure 2 of the paper). The mask follows ``random_spans_noise_mask`` of the T5 code base
(t5.data.preprocessors), so span counts and lengths are exact, not sampled per token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
LABEL_PAD_ID = -100  # ignored by torch.nn.CrossEntropyLoss and by transformers' T5 loss


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of a uniformly random split of ``num_items`` into ``num_segments`` non-empty segments."""
    if num_segments < 1 or num_items < num_segments:
        raise ValueError(f"cannot split {num_items} tokens into {num_segments} non-empty spans")
    first_in_segment = np.zeros(num_items, dtype=np.int64)
    first_in_segment[1 + rng.permutation(num_items - 1)[: num_segments - 1]] = 1
    return np.bincount(np.cumsum(first_in_segment), minlength=num_segments)


def num_noise_spans(
    length: int, noise_density: float = NOISE_DENSITY, mean_span: float = MEAN_NOISE_SPAN_LENGTH
) -> tuple[int, int]:
    """(number of noise tokens, number of noise spans) for a sequence of ``length`` tokens.

    Closed form of T5's ``random_spans_noise_mask``: round(length x density) tokens, at least one and
    at most length - 1, in round(tokens / mean_span) spans, at least one.
    """
    length = max(length, 2)
    n_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    n_spans = max(int(round(n_noise / mean_span)), 1)
    return n_noise, n_spans


def random_spans_noise_mask(
    length: int,
    noise_density: float,
    mean_span: float,
    rng: np.random.Generator,
    free_ends: bool = False,
) -> np.ndarray:
    """Boolean mask of ``length`` marking noise spans as in T5 (Raffel et al., 2020, Section 3.3.4).

    The noise tokens (count from :func:`num_noise_spans`) are split into ``n`` spans of random
    non-zero length and interleaved with the kept tokens. T5 splits the kept tokens into ``n``
    non-empty runs and starts with one, so its mask always starts with a kept token and ends on a
    noise span. ``free_ends=True`` splits the kept tokens into ``n + 1`` runs whose first and last
    may be empty, so a span can fall anywhere, the sequence ends included; counts are unchanged.
    """
    if length <= 0:
        return np.zeros(0, dtype=bool)
    orig_length = length
    length = max(length, 2)
    n_noise, n_spans = num_noise_spans(length, noise_density, mean_span)
    n_keep = length - n_noise
    noise_lengths = _random_segmentation(n_noise, n_spans, rng)
    if free_ends:
        keep_lengths = _random_segmentation(n_keep + 2, n_spans + 1, rng)
        keep_lengths[0] -= 1
        keep_lengths[-1] -= 1
    else:
        keep_lengths = np.append(_random_segmentation(n_keep, n_spans, rng), 0)
    span_lengths = np.zeros(2 * n_spans + 1, dtype=np.int64)
    span_lengths[0::2] = keep_lengths
    span_lengths[1::2] = noise_lengths
    is_noise = np.arange(2 * n_spans + 1) % 2 == 1
    return np.repeat(is_noise, span_lengths)[:orig_length]


def span_corrupt(
    ids: Sequence[int],
    sentinel_ids: Sequence[int],
    eos_id: int,
    rng: np.random.Generator,
    noise_density: float = NOISE_DENSITY,
    mean_span: float = MEAN_NOISE_SPAN_LENGTH,
    free_ends: bool = True,
) -> tuple[list[int], list[int]]:
    """One span-corruption example (Raffel et al., 2020, Section 3.3.4, Figure 2).

    ``ids`` is a tokenised caption; a trailing ``eos_id`` is stripped and re-appended to both
    outputs, as T5 appends EOS after preprocessing. ``sentinel_ids[k]`` replaces the k-th noise
    span (T5: ``<extra_id_0>``, ``<extra_id_1>``, ...). Returns ``(inputs, targets)``::

        ids      a  b  c  d  e  f  g
        mask     .  X  X  .  .  X  .
        inputs   a <0> d  e <1> g </s>
        targets <0> b  c <1> f </s>

    ``free_ends`` (default here, see :func:`random_spans_noise_mask`): T5 pre-trains on 512-token
    chunks of packed text, where it is immaterial that its mask always ends on a noise span. Our
    examples are single captions of ~5-30 tokens, i.e. one span each, and T5's layout would
    always hide a caption's last words and never its middle ("left of", the second colour).
    """
    ids = list(ids)
    if ids and ids[-1] == eos_id:
        ids = ids[:-1]
    mask = random_spans_noise_mask(len(ids), noise_density, mean_span, rng, free_ends=free_ends)
    n_spans = int(np.count_nonzero(mask & ~np.concatenate([[False], mask[:-1]])))
    if n_spans > len(sentinel_ids):
        raise ValueError(
            f"span_corrupt: {len(ids)} tokens give {n_spans} noise spans but only {len(sentinel_ids)} "
            "sentinels; shorten the sequence or add extra_ids"
        )
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    for i, (token, noisy) in enumerate(zip(ids, mask)):
        if noisy:
            if i == 0 or not mask[i - 1]:
                span += 1
                inputs.append(int(sentinel_ids[span]))
                targets.append(int(sentinel_ids[span]))
            targets.append(int(token))
        else:
            inputs.append(int(token))
    inputs.append(int(eos_id))
    targets.append(int(eos_id))
    return inputs, targets


def uncorrupt(inputs: Sequence[int], targets: Sequence[int], sentinel_ids: Sequence[int], eos_id: int) -> list[int]:
    """Invert :func:`span_corrupt`: put each span of ``targets`` back at its sentinel in ``inputs``.

    Returns the original ids without EOS. Used to check the objective and to read predictions.
    """
    sentinels = {int(s) for s in sentinel_ids}
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for token in targets:
        token = int(token)
        if token == eos_id:
            break
        if token in sentinels:
            current = spans.setdefault(token, [])
        elif current is not None:
            current.append(token)
    out: list[int] = []
    for token in inputs:
        token = int(token)
        if token == eos_id:
            break
        out.extend(spans.get(token, [])) if token in sentinels else out.append(token)
    return out


def collate_span_batch(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int = 0,
    label_pad_id: int = LABEL_PAD_ID,
) -> dict[str, torch.Tensor]:
    """Pad ``(inputs, targets)`` pairs to the longest of the batch.

    Returns ``input_ids`` and ``attention_mask`` (pad = ``pad_id`` / 0) and ``labels`` padded with
    ``label_pad_id``; ``T5ForConditionalGeneration`` derives the decoder inputs from ``labels`` by
    shifting right with ``<pad>`` as the start token.
    """
    if not examples:
        raise ValueError("collate_span_batch: empty batch")
    n = len(examples)
    in_len = max(len(x) for x, _ in examples)
    out_len = max(len(y) for _, y in examples)
    input_ids = torch.full((n, in_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, in_len), dtype=torch.long)
    labels = torch.full((n, out_len), label_pad_id, dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        input_ids[row, : len(x)] = torch.as_tensor(list(x), dtype=torch.long)
        attention_mask[row, : len(x)] = 1
        labels[row, : len(y)] = torch.as_tensor(list(y), dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
