"""The demo's tiny models: a stage-3-like PixArt-MS in memory and exported as a pipeline folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_pipelines import demo_model, tiny_pipeline

from pixart_lab.demo.generator import DemoModel
from pixart_lab.diffusion.sampling import export_pipeline


@pytest.fixture(scope="session")
def tiny_ms_model(tiny_vae, tiny_text_encoder) -> DemoModel:
    return demo_model(tiny_pipeline("pixart_ms", tiny_vae, tiny_text_encoder))


@pytest.fixture(scope="session")
def tiny_pipeline_folder(tiny_vae, tiny_text_encoder, tmp_path_factory) -> Path:
    """A stage-3-like pipeline exported as a diffusers folder, as `pixart-lab demo source=` takes it."""
    pipeline = tiny_pipeline("pixart_ms", tiny_vae, tiny_text_encoder)
    return export_pipeline(pipeline, tmp_path_factory.mktemp("demo") / "pixart_tiny")
