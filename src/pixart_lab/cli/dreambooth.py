"""Stage `dreambooth`: DreamBooth with prior preservation (LoRA or full) on a subject the corpus never contains."""

from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from lightning import seed_everything
from omegaconf import DictConfig, OmegaConf

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.dreambooth import CLASS_SPLIT, INSTANCE_SPLIT, cache_features, generate_class_images
from pixart_lab.data.subject import EmbeddedSubject, pose_captions
from pixart_lab.data.transforms import load_images
from pixart_lab.diffusion.sampling import assemble_pipeline, generate_many, load_transformer
from pixart_lab.evaluation.clip_model import ClipImageFeatures, clip_score_model
from pixart_lab.evaluation.dreambooth import (
    DinoImageFeatures,
    DreamBoothPrompts,
    ObjectFeatures,
    compare_models,
    comparison_rows,
    compositions_from,
    generate_comparison,
)
from pixart_lab.evaluation.evaluators import CompositionalEvaluator
from pixart_lab.models.denoisers import CaptionConditionalPixArt, caption_conditional_pixart, count_parameters
from pixart_lab.models.identifier import identifier_pieces
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.vae import load_vae, round_trip_uint8
from pixart_lab.training.checkpoints import WEIGHTS_FILE, resolve_init
from pixart_lab.training.dreambooth import trainable_parameters
from pixart_lab.training.history import MetricHistory
from pixart_lab.training.images import save_labelled_rows
from pixart_lab.training.wiring import build_callbacks, build_loggers, publish_metrics

LOGGED = ("train/loss", "train/instance_loss", "train/prior_loss", "train/grad_norm", "train/samples_per_s", "cost/flops")


@entry_point("dreambooth")
def main(cfg: DictConfig) -> dict:
    seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    text_encoder = FrozenTextEncoder.from_pretrained(cfg.text_encoder.pretrained, max_length=cfg.text_encoder.max_length)
    pieces = identifier_pieces(text_encoder.tokenizer, cfg.identifier, cfg.class_noun)
    vae = load_vae(cfg.vae.pretrained, cfg.vae.get("subfolder"), cfg.vae.get("scaling_factor")).eval()
    base_dir = resolve_init(cfg.base, cfg.paths.checkpoints_dir)
    scheduler = instantiate(cfg.sampler.scheduler)
    base = assemble_pipeline(load_transformer(base_dir), vae, scheduler, text_encoder)
    sampling = dict(steps=cfg.sampler.steps, guidance_scale=cfg.sampler.guidance_scale)

    def generate(pipeline, prompts: list[str], seed: int, **overrides) -> torch.Tensor:
        return generate_many(pipeline, prompts, cfg.generation_batch_size, seed, **{**sampling, **overrides})

    # The subject images, and the base model's class images for the prior-preservation loss, as features.
    subject = instantiate(cfg.subject)
    instance = subject.records()
    classes = generate_class_images(instance, cfg.identifier, cfg.class_images.per_prompt,
                                    lambda prompts: generate(base, prompts, cfg.class_images.seed, guidance_scale=cfg.class_images.guidance_scale),
                                    cfg.class_images.out_dir)  # fmt: skip
    cache_features({INSTANCE_SPLIT: instance, CLASS_SPLIT: classes}, cfg.features_dir, vae, text_encoder, cfg.data.image_size)

    strategy = instantiate(cfg.finetune.strategy)
    denoiser = caption_conditional_pixart(strategy.prepare(base.transformer), cfg.text_encoder.pretrained, cfg.text_encoder.max_length)
    # The frozen base, with the same null caption (the text encoder is not loaded again).
    reference = (CaptionConditionalPixArt(base.transformer, denoiser.null_caption_emb, denoiser.null_caption_mask)
                 if cfg.module.prior_target == "base" else None)  # fmt: skip
    module = instantiate(cfg.module, denoiser=denoiser, reference=reference)
    history = MetricHistory(cfg.outputs.plot, keys=LOGGED, every_n_steps=cfg.outputs.plot_every_n_steps)
    cost, loggers = instantiate(cfg.cost), build_loggers(cfg.logger)
    trainer = instantiate(cfg.trainer, logger=loggers, callbacks=build_callbacks(cfg.callbacks, history, cost))
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    train_start = time.perf_counter()
    trainer.fit(module, datamodule=instantiate(cfg.data_module))
    train_seconds = time.perf_counter() - train_start
    tuned = module.ema.module.transformer
    saved = strategy.save(tuned, cfg.run_dir)

    # Base vs fine-tuned on the same prompts and seeds.
    ev = cfg.evaluation
    prompt_sets = DreamBoothPrompts(f"{cfg.identifier} {cfg.class_noun}", cfg.class_noun, pose_captions(ev.poses, "{subject}"),
                                    compositions_from(ev.compositions), ev.images_per_prompt)  # fmt: skip
    pipelines = {"base": base, "finetuned": assemble_pipeline(tuned, vae, scheduler, text_encoder)}
    images, floor = generate_comparison(pipelines, prompt_sets, generate, ev.seed, ev.floor_seed)
    subject_images, _ = load_images(instance, cfg.data.image_size, cfg.data.image_size, progress=False)
    evaluator = CompositionalEvaluator.load(cfg.eval.evaluators_dir)
    features = {"clip": ClipImageFeatures.from_pretrained(cfg.eval.clip)}
    if ev.dino:
        features["dino"] = DinoImageFeatures.from_pretrained(ev.dino)
    features.update({f"{name}_object": ObjectFeatures(f) for name, f in list(features.items())})
    # A rendered subject shows what the figures mean: a perfect generation, the same through the VAE (the
    # best a latent model can draw), a recoloured ring, an empty image.
    references = subject.references(ev.poses) if isinstance(subject, EmbeddedSubject) else None
    if references is not None:
        references["subject_through_the_vae"] = round_trip_uint8(vae, references["subject_in_these_poses"])
    report = compare_models(images, floor, subject_images, prompt_sets, features, clip_score_model(cfg.eval.clip),
                            evaluator.probe, evaluator.valid_attributes, references)  # fmt: skip
    rows = comparison_rows(subject_images, images, prompt_sets)
    save_labelled_rows(rows, cfg.outputs.grid, loggers=trainer.loggers, key="dreambooth")

    metrics = {
        "base": cfg.base, "finetune": cfg.finetune.name, "identifier": cfg.identifier, "identifier_pieces": pieces,
        "class_noun": cfg.class_noun, "subject_images": len(instance), "class_images": len(classes),
        "steps": trainer.global_step, "train_seconds": round(train_seconds, 1),
        "parameters": count_parameters(module.denoiser), "trainable_parameters": trainable_parameters(module.denoiser),
        "size_bytes": {"finetuned": saved.stat().st_size, "base_transformer": (base_dir / WEIGHTS_FILE).stat().st_size},
        "saved": str(saved), **report, "cost": cost.summary(),
    }  # fmt: skip
    rows_logged = [r for r in history.rows if "loss" in r]
    metrics["train_loss_last"] = rows_logged[-1] if rows_logged else None
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    publish_metrics(metrics, cfg.outputs.metrics, trainer.loggers, prefix="dreambooth/", step=trainer.global_step)
    print(f"{cfg.run_name}: {metrics}")
    return metrics


if __name__ == "__main__":
    main()
