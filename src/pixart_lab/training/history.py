"""A callback that keeps a metric history and writes it as a CSV for ``dvc plots``."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from pixart_lab.utils.io import atomic_write_bytes


def write_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts) as a CSV with ``columns`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


class MetricHistory(L.Callback):
    """Record logged values of ``keys``: training ones every ``every_n_steps`` steps, ``val/`` ones
    after each validation (at the step it ran); write them as one CSV at the end.

    Column names drop the ``train/`` prefix, so ``train/loss`` becomes ``loss`` (DVC plots' y-axis);
    other prefixes stay, joined by ``_`` (``val/loss`` becomes ``val_loss``). The rows are saved in
    checkpoints, so a resumed run writes the whole history; values are rounded only in the CSV.
    """

    def __init__(self, path: str | Path, keys: Sequence[str] = ("train/loss",), every_n_steps: int = 10):
        self.path, self.keys, self.every_n_steps = Path(path), list(keys), every_n_steps
        self.rows: list[dict] = []

    @staticmethod
    def column(key: str) -> str:
        return key.removeprefix("train/").replace("/", "_")

    def _record(self, trainer: L.Trainer, keys: Sequence[str]) -> None:
        metrics = trainer.callback_metrics
        values = {self.column(k): float(metrics[k]) for k in keys if k in metrics}
        if not values:
            return
        if self.rows and self.rows[-1]["step"] == trainer.global_step:
            self.rows[-1].update(values)
        else:
            self.rows.append({"step": trainer.global_step, **values})

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 or step == trainer.max_steps:
            self._record(trainer, [k for k in self.keys if not k.startswith("val/")])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, [k for k in self.keys if k.startswith("val/")])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            rows = [{k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for row in self.rows]
            write_csv(self.path, rows, ["step", *map(self.column, self.keys)])

    def state_dict(self) -> dict:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = [dict(row) for row in state_dict["rows"]]
