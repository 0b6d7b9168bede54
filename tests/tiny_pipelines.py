"""Tiny diffusers pipelines from the tiny denoisers, and demo models around them."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf
from tiny_models import tiny_denoiser

from pixart_lab.demo.generator import DemoModel, sampler_choices, size_choices
from pixart_lab.diffusion.sampling import assemble_pipeline

CONF = Path(__file__).resolve().parents[1] / "conf"
RATIOS = (0.5, 0.75, 1.0, 1.33, 2.0)


def configured_samplers() -> dict:
    """``conf/demo.yaml: samplers`` completed from ``conf/sampler``, as Hydra composes them."""
    labels = OmegaConf.load(CONF / "demo.yaml").samplers
    return {name: {**labels[name], **OmegaConf.load(CONF / "sampler" / f"{name}.yaml")} for name in labels}


def tiny_pipeline(kind: str, vae, text_encoder):
    """``dit`` (stage 1, two named classes) | ``pixart`` (stage 2) | ``pixart_ms`` (stage 3), DPM-Solver++."""
    scheduler = instantiate(OmegaConf.load(CONF / "sampler" / "dpm_solver.yaml").scheduler)
    transformer = tiny_denoiser(kind, text_encoder).transformer.eval()
    if kind == "dit":
        return assemble_pipeline(transformer, vae, scheduler, id2label={0: "red circle", 10: "blue square"})
    return assemble_pipeline(transformer, vae, scheduler, text_encoder)


def demo_model(pipeline, source: str = "tiny") -> DemoModel:
    return DemoModel(pipeline, sampler_choices(configured_samplers()), size_choices(pipeline, RATIOS), source=source)
