"""A callback that draws a grid of fixed prompts (or classes) from the EMA weights every N steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
from diffusers import SchedulerMixin

from pixart_lab.diffusion.sampling import assemble_pipeline, generate
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.vae import load_vae
from pixart_lab.training.images import save_grid
from pixart_lab.utils.io import atomic_write_bytes


class SampleGrid(L.Callback):
    """PNG grids ``out_dir/step_XXXXXX.png`` (and to W&B), the last one also at ``final_path``.

    Same seed and conditions at every step, so grids show how one fixed set of samples evolves.
    """

    def __init__(
        self,
        conditions: Sequence[str] | Sequence[int],
        vae: str,
        scheduler: SchedulerMixin,
        out_dir: str,
        final_path: str | None = None,
        text_encoder: str | None = None,
        text_max_length: int = 120,
        id2label: Mapping[int, str] | None = None,
        every_n_steps: int = 500,
        steps: int = 20,
        guidance_scale: float = 4.5,
        seed: int = 0,
        size: Sequence[int] | None = None,
        nrow: int = 8,
    ):
        self.conditions, self.vae_path, self.scheduler = list(conditions), vae, scheduler
        self.out_dir, self.final_path = Path(out_dir), final_path
        self.text_encoder_path, self.text_max_length, self.id2label = text_encoder, text_max_length, id2label
        self.every_n_steps, self.steps, self.guidance_scale, self.seed = every_n_steps, steps, guidance_scale, seed
        self.size, self.nrow = tuple(size) if size else (None, None), nrow
        self._components: tuple | None = None

    def _load_components(self) -> tuple:
        if self._components is None:
            text_encoder = None
            if self.text_encoder_path:
                text_encoder = FrozenTextEncoder.from_pretrained(self.text_encoder_path, max_length=self.text_max_length)
            self._components = (load_vae(self.vae_path).eval(), text_encoder)
        return self._components

    def draw(self, pl_module: L.LightningModule, path: Path, loggers: Sequence = ()) -> Path:
        vae, text_encoder = self._load_components()
        transformer = pl_module.ema.module.transformer
        pipeline = assemble_pipeline(transformer, vae.to(pl_module.device), self.scheduler, text_encoder, self.id2label)
        if text_encoder is not None:
            text_encoder.to(pl_module.device)
        images = generate(pipeline, self.conditions, self.steps, self.guidance_scale, self.seed, *self.size)
        return save_grid(images, path, min(self.nrow, len(images)), loggers, key="samples")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != trainer.max_steps:
            self.draw(pl_module, self.out_dir / f"step_{step:06d}.png", trainer.loggers)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        path = self.draw(pl_module, self.out_dir / f"step_{trainer.global_step:06d}.png", trainer.loggers)
        if self.final_path:
            atomic_write_bytes(self.final_path, path.read_bytes())
