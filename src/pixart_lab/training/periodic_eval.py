"""A callback that evaluates the EMA weights every N steps: quality against training compute.

PixArt-alpha's central figure (Fig. 2) plots quality against training cost; the curves of every
curriculum stage and of the SD-class baseline come from here. Each evaluation generates from a
small fixed held-out set (same conditions and seed every time) and records FID, CLIP score and
compositional accuracy beside the run's FLOPs, dollars and CO2 so far (its own and the
curriculum's), in a CSV for ``dvc plots`` and the report, and in the experiment loggers. Evaluation
time is measurement, left out of the run's cost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from diffusers import DiTPipeline, SchedulerMixin

from pixart_lab.diffusion.sampling import generate_many
from pixart_lab.evaluation.compositional import TASKS
from pixart_lab.evaluation.suite import HeldOutHalves, QualitySuite, RecordSource
from pixart_lab.training.compute_cost import ComputeCost, excluded_from_cost
from pixart_lab.training.ema_pipeline import EmaPipeline
from pixart_lab.training.history import write_csv

log = logging.getLogger(__name__)

COST_COLUMNS = ("flops", "usd", "emissions_kg_co2", "device_hours")
CURVE_COLUMNS = (
    "step",
    *COST_COLUMNS,
    *(f"curriculum_{c}" for c in COST_COLUMNS),
    "fid", "fid_floor", "clip_score", "compositional", "compositional_shuffled",
    *(f"compositional_{task}" for task in TASKS),
)  # fmt: skip


class PeriodicEvaluation(L.Callback):
    """Every ``every_n_steps`` steps and at the end: the quality suite on the EMA network.

    ``heldout`` reads the held-out split; ``fid_images`` per half, ``compositional_per_task``
    prompts of each GenEval task; sampling as configured (``steps``, ``guidance_scale``, ``size``).
    """

    def __init__(
        self,
        heldout: RecordSource,
        image_size: int,
        fid: Mapping[str, Any],
        clip: str | None,
        evaluators_dir: str,
        vae: str,
        scheduler: SchedulerMixin,
        csv_path: str,
        every_n_steps: int = 250,
        fid_images: int = 200,
        compositional_per_task: int = 8,
        text_encoder: str | None = None,
        text_max_length: int = 120,
        noise_schedule: Mapping | None = None,
        steps: int = 20,
        guidance_scale: float = 4.5,
        size: Sequence[int] | None = None,
        batch_size: int = 50,
        seed: int = 0,
    ):
        self.heldout, self.image_size, self.fid_cfg, self.clip = heldout, image_size, dict(fid), clip
        self.evaluators_dir, self.compositional_per_task = evaluators_dir, compositional_per_task
        self.pipeline = EmaPipeline(vae, scheduler, text_encoder, text_max_length, noise_schedule)
        self.csv_path, self.every_n_steps, self.fid_images = Path(csv_path), every_n_steps, fid_images
        self.sampling = dict(steps=steps, guidance_scale=guidance_scale)
        self.size, self.batch_size, self.seed = tuple(size) if size else (None, None), batch_size, seed
        self.rows: list[dict[str, float]] = []  # carried in checkpoints: a resumed run keeps its curve
        self._suite: QualitySuite | None = None
        self._floor: float | None = None

    def suite(self) -> QualitySuite:
        if self._suite is None:
            halves = HeldOutHalves.load(self.heldout.records(), self.fid_images, self.image_size)
            self._suite = QualitySuite(halves, self.fid_cfg, self.clip, self.evaluators_dir, self.compositional_per_task)
            self._floor = self._suite.floor()
        return self._suite

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Run the suite on the EMA network now; log, record and return the row."""
        pipeline = self.pipeline(pl_module)
        text_conditioned = not isinstance(pipeline, DiTPipeline)
        size = dict(zip(("height", "width"), self.size)) if text_conditioned else {}
        generate = lambda conditions: generate_many(  # noqa: E731
            pipeline, conditions, self.batch_size, seed=self.seed, progress=False, **self.sampling, **size
        )
        metrics, _ = self.suite()(generate, text_conditioned)
        row: dict[str, float] = {"step": trainer.global_step, "fid": metrics["fid"], "fid_floor": self._floor}
        if "clip_score" in metrics:
            row["clip_score"] = metrics["clip_score"]
        if "compositional" in metrics:
            row["compositional"] = metrics["compositional"]["overall"]
            row["compositional_shuffled"] = metrics["compositional_shuffled"]["overall"]
            row.update({f"compositional_{task}": v for task, v in metrics["compositional"]["tasks"].items()})
        cost = next((c for c in trainer.callbacks if isinstance(c, ComputeCost)), None)
        if cost is not None:
            snapshot = cost.snapshot()
            row.update({k: snapshot[k] for k in COST_COLUMNS})
            row.update({f"curriculum_{k}": snapshot[f"curriculum_{k}"] for k in COST_COLUMNS})
        return row

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate this step (once) and rewrite the CSV, rows restored from a checkpoint included."""
        if not self.rows or self.rows[-1]["step"] != trainer.global_step:
            with excluded_from_cost(trainer):
                row = self.evaluate(trainer, pl_module)
            self.rows.append(row)
            for logger in trainer.loggers:
                logger.log_metrics({f"eval/{k}": v for k, v in row.items() if k != "step" and v is not None}, step=trainer.global_step)
            log.info("step %d: %s", trainer.global_step, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
        write_csv(self.csv_path, self.rows, CURVE_COLUMNS)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and trainer.is_global_zero:
            self._record(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._record(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])
