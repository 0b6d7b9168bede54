"""A callback that draws a grid of fixed prompts (or classes) from the EMA weights every N steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
from diffusers import SchedulerMixin

from pixart_lab.diffusion.sampling import generate
from pixart_lab.training.compute_cost import excluded_from_cost
from pixart_lab.training.ema_pipeline import EmaPipeline
from pixart_lab.training.images import save_grid
from pixart_lab.utils.io import atomic_write_bytes


class SampleGrid(L.Callback):
    """PNG grids ``out_dir/step_XXXXXX.png`` (and to W&B), the last one also at ``final_path``.

    Same seed and conditions at every step, so grids show how one fixed set of samples evolves.
    Drawing is measurement, not training: its time is left out of the run's cost.
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
        noise_schedule: Mapping | None = None,
    ):
        self.conditions = list(conditions)
        self.pipeline = EmaPipeline(vae, scheduler, text_encoder, text_max_length, noise_schedule, id2label)
        self.out_dir, self.final_path = Path(out_dir), final_path
        self.every_n_steps, self.steps, self.guidance_scale, self.seed = every_n_steps, steps, guidance_scale, seed
        self.size, self.nrow = tuple(size) if size else (None, None), nrow

    def draw(self, pl_module: L.LightningModule, path: Path, loggers: Sequence = ()) -> Path:
        images = generate(self.pipeline(pl_module), self.conditions, self.steps, self.guidance_scale, self.seed, *self.size)
        return save_grid(images, path, min(self.nrow, len(images)), loggers, key="samples")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != trainer.max_steps:
            with excluded_from_cost(trainer):
                self.draw(pl_module, self.out_dir / f"step_{step:06d}.png", trainer.loggers)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        with excluded_from_cost(trainer):
            path = self.draw(pl_module, self.out_dir / f"step_{trainer.global_step:06d}.png", trainer.loggers)
        if self.final_path:
            atomic_write_bytes(self.final_path, path.read_bytes())
