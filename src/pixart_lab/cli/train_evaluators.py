"""Stage `train_evaluators`: train the CLIP evaluator and the attribute probe, and show they can fail.

Validation on held-out corpus images: retrieval R@1, per-attribute probe accuracy (attributes under
the bar are not scored), the real-vs-real FID floor, and each metric on inputs that must score
badly (blurred / colour-shuffled images, mismatched captions, shuffled compositional prompts).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning import seed_everything
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.transforms import load_images
from pixart_lab.evaluation.attribute_probe import CellProbe, attribute_accuracy
from pixart_lab.evaluation.clip_model import ClipImageFeatures, build_clip, clip_score_model, save_clip
from pixart_lab.evaluation.compositional import (
    build_prompt_set,
    chance_accuracy,
    compositional_accuracy,
    shuffled_within_task,
    signatures,
)
from pixart_lab.evaluation.evaluator_training import (
    AttributeProbeModule,
    ContrastiveCLIP,
    clip_dataset,
    clip_embeddings,
    probe_dataset,
    retrieval_recall_at_1,
)
from pixart_lab.evaluation.evaluators import save_probe
from pixart_lab.evaluation.metrics import FidReference, blurred, clip_score, colour_shuffled, render_scenes
from pixart_lab.training.wiring import build_callbacks, build_loggers
from pixart_lab.utils.io import write_json


def fit(cfg: DictConfig, module, dataset, steps: int, batch_size: int, name: str) -> None:
    """Train ``module`` for ``steps`` batches with the configured trainer, loggers and callbacks."""
    loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, drop_last=True)
    loggers = build_loggers(OmegaConf.merge(cfg.logger, {"csv": {"name": name}, "wandb": {"name": name}}))
    trainer = instantiate(cfg.trainer, max_steps=steps, logger=loggers, callbacks=build_callbacks(cfg.callbacks))
    trainer.fit(module, loader)


def by_quality(accuracy_fn, images: torch.Tensor, records) -> dict[str, dict[str, float]]:
    """``accuracy_fn(images, scenes)`` for each rendering quality of the held-out records."""
    out = {}
    for quality in sorted({r.scene["quality"] for r in records}):
        idx = [i for i, r in enumerate(records) if r.scene["quality"] == quality]
        out[quality] = accuracy_fn(images[idx], [records[i].scene for i in idx])
    return out


def rounded(d):
    if isinstance(d, dict):
        return {k: rounded(v) for k, v in d.items()}
    return round(d, 4) if isinstance(d, float) else d


@entry_point("train_evaluators")
def main(cfg: DictConfig) -> dict:
    seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    ev, size = cfg.evaluators, cfg.data.image_size
    train_images, train = load_images(instantiate(cfg.data.splits.train).records(), size, size)
    heldout_images, heldout = load_images(instantiate(cfg.data.splits.heldout).records(), size, size)
    out = Path(ev.out_dir)

    tokenizer = AutoTokenizer.from_pretrained(ev.tokenizer)
    clip, processor = build_clip(tokenizer, **ev.clip.model)
    clip_data = clip_dataset(clip, processor, train_images, [r.dense_caption for r in train])
    fit(cfg, ContrastiveCLIP(clip, **ev.clip.optim), clip_data, ev.clip.steps, ev.clip.batch_size, "train_clip")
    probe = CellProbe(**ev.probe.model)
    probe_data = probe_dataset(train_images, [r.scene for r in train])
    fit(cfg, AttributeProbeModule(probe, **ev.probe.optim), probe_data, ev.probe.steps, ev.probe.batch_size, "train_probe")
    clip.eval(), probe.eval()
    save_clip(clip, processor, out / "clip")
    save_probe(probe, out / "probe", OmegaConf.to_container(ev.probe.model))

    val = ev.validation
    captions = [r.dense_caption for r in heldout]
    image_emb, text_emb = clip_embeddings(clip, processor, heldout_images, captions)
    accuracy = lambda images, scenes: attribute_accuracy(probe, images, scenes)  # noqa: E731
    probe_accuracy = accuracy(heldout_images, [r.scene for r in heldout])
    per_quality = by_quality(accuracy, heldout_images, heldout)
    # The bar applies on images like the ones the metric judges: prompts ask for sharp scenes.
    gate = per_quality[val.gate_quality] if val.gate_quality else probe_accuracy
    valid = sorted(k for k, v in gate.items() if v >= val.min_attribute_accuracy)

    # Real-vs-real floor: two disjoint held-out halves; degraded copies of half A must score far above it.
    half = min(val.fid_half, len(heldout_images) // 2)
    a, b = heldout_images[:half], heldout_images[half : 2 * half]
    fid_to_b = FidReference(b, ClipImageFeatures(clip, processor))
    fid = {
        "images_per_set": half,
        "real_vs_real_floor": fid_to_b(a),
        **{f"blurred_sigma_{s}": fid_to_b(blurred(a, s)) for s in val.blur_sigmas},
        "colour_shuffled": fid_to_b(colour_shuffled(a)),
    }
    clip_fn = clip_score_model(out / "clip")
    clip_scores = {
        "matched": clip_score(a, captions[:half], clip_fn),
        "mismatched": clip_score(a, captions[1 : half + 1], clip_fn),  # each image with the next caption
    }

    # Prompt graphs must be absent from every split a curriculum stage trains on.
    trained_on = [r for split in val.training_splits for r in instantiate(cfg.data.splits[split]).records()]
    prompts = build_prompt_set(signatures(trained_on), val.prompts_per_task, val.prompt_seed, size)
    rendered = probe.read(render_scenes([p.scene for p in prompts], seed=val.prompt_seed))
    order = shuffled_within_task(prompts)
    compositional = {
        "real_images": compositional_accuracy(prompts, rendered, valid),
        "shuffled_prompts": compositional_accuracy(prompts, [rendered[j] for j in order], valid),
        "chance": chance_accuracy(prompts, rendered, valid),
    }

    validation = rounded({
        "clip": {
            "retrieval_pool": val.retrieval_pool,
            "recall_at_1": retrieval_recall_at_1(image_emb, text_emb, val.retrieval_pool),
            "parameters": sum(p.numel() for p in clip.parameters()),
        },
        "probe": {
            "min_attribute_accuracy": val.min_attribute_accuracy,
            "heldout_accuracy": probe_accuracy,
            "by_quality": per_quality,
            "gate_quality": val.gate_quality,
            "valid_attributes": valid,
            "not_reported": sorted(set(probe_accuracy) - set(valid)),
            "parameters": sum(p.numel() for p in probe.parameters()),
        },
        "fid": fid,
        "clip_score": clip_scores,
        "compositional": compositional,
        "heldout_images": len(heldout),
        "prompts": len(prompts),
    })  # fmt: skip
    write_json(out / "validation.json", validation)
    write_json(out / "compositional_prompts.json", [p.to_dict() for p in prompts])
    metrics = {**validation, "seconds": round(time.perf_counter() - start, 1)}
    write_json(cfg.outputs.metrics, metrics)
    print(f"evaluators: R@1 {validation['clip']['recall_at_1']}, probe {probe_accuracy}, FID {fid}, CLIP score {clip_scores}")
    return metrics


if __name__ == "__main__":
    main()
