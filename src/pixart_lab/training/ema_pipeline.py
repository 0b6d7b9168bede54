"""A diffusers pipeline around a training module's EMA network, for grids and evaluation during a fit."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
from diffusers import DiffusionPipeline, SchedulerMixin

from pixart_lab.diffusion.sampling import assemble_pipeline, with_noise_schedule
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.vae import load_vae


class EmaPipeline:
    """Assembles the pipeline of ``pl_module.ema``'s network with the project's VAE and text encoder.

    The VAE and text encoder are loaded once, on first use; ``noise_schedule`` (the training
    objective's ``num_train_timesteps`` / ``beta_*``) puts the sampler on the schedule the network
    was trained with.
    """

    def __init__(
        self,
        vae: str,
        scheduler: SchedulerMixin,
        text_encoder: str | None = None,
        text_max_length: int = 120,
        noise_schedule: Mapping | None = None,
        id2label: Mapping[int, str] | None = None,
    ):
        self.vae_path, self.text_encoder_path, self.text_max_length = vae, text_encoder, text_max_length
        self.scheduler = with_noise_schedule(scheduler, noise_schedule)
        self.id2label = id2label
        self._components: tuple | None = None

    def _load_components(self) -> tuple:
        if self._components is None:
            text_encoder = None
            if self.text_encoder_path:
                text_encoder = FrozenTextEncoder.from_pretrained(self.text_encoder_path, max_length=self.text_max_length)
            self._components = (load_vae(self.vae_path).eval(), text_encoder)
        return self._components

    def __call__(self, pl_module: L.LightningModule) -> DiffusionPipeline:
        vae, text_encoder = self._load_components()
        if text_encoder is not None:
            text_encoder.to(pl_module.device)
        network = pl_module.ema.module.network
        return assemble_pipeline(network, vae.to(pl_module.device), self.scheduler, text_encoder, self.id2label)
